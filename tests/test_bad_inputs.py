"""Bad input, one class per test: the run goes on, every good image is still processed, and the
bad one is either refused with a clear one-line reason or converted and used.

Image classes run stage 1a (``run_pairs``) on the tiny LLaVA model over a folder of two good
images plus the bad one. Data-file classes run eval, infuse, dpo and sft on records whose image
path leaves the image folder, or that break the schema.
"""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

import stic.modeling.models
import stic.stages.training
from stic.cli import main
from stic.config import DPOConfig, EvalConfig, InfuseConfig, PairsConfig, SFTConfig
from stic.data.schemas import RecordError
from stic.runtime.images import load_image
from stic.stages.dpo import run_dpo
from stic.stages.evaluate import run_eval
from stic.stages.infuse import run_infuse
from stic.stages.pairs import run_pairs
from stic.stages.runner import StageSummary
from stic.stages.sft import run_sft

GOOD = ("a_good.png", "z_good.jpg")  # the bad file's name sorts between them


@pytest.fixture(scope="module")
def llava(tiny_model_factory) -> Path:
    return tiny_model_factory("llava")


def _good_images(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(GOOD):
        image = Image.new("RGB", (40, 30), (200, 40 * i, 90))
        ImageDraw.Draw(image).ellipse((5, 5, 25, 20), fill=(10, 120, 240))
        image.save(folder / name)
    return folder


def _run(llava: Path, images: Path, out: Path) -> StageSummary:
    config = PairsConfig(
        model=str(llava), images=str(images), out=str(out), max_new_tokens=4, batch_size=4
    )
    return run_pairs(config)


def _record_ids(out: Path) -> list[str]:
    text = out.read_bytes().decode("utf-8")  # must be valid UTF-8 throughout
    return sorted(json.loads(line)["id"] for line in text.splitlines())


def _assert_skipped_with_reason(summary: StageSummary, name: str, *words: str) -> None:
    assert name in summary.bad_items, f"{name} not reported; skipped: {summary.bad_items}"
    reason = summary.bad_items[name]
    assert "\n" not in reason and reason.strip()
    assert name in reason
    for word in words:
        assert word in reason, f"{word!r} not in {reason!r}"


def _assert_good_ones_processed(summary: StageSummary, out: Path, extra: tuple = ()) -> None:
    assert _record_ids(out) == sorted(GOOD + extra)
    assert summary.made == len(GOOD) + len(extra)


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _noise(size: int = 48) -> Image.Image:
    return Image.frombytes("RGB", (size, size), os.urandom(size * size * 3))


# --- files that are refused -------------------------------------------------------------------


def _zero_byte(path: Path) -> None:
    path.write_bytes(b"")


def _truncated_jpeg(path: Path) -> None:
    buffer = io.BytesIO()
    _noise().save(buffer, format="JPEG", quality=90)
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])


def _truncated_png(path: Path) -> None:
    data = _png_bytes(_noise())
    path.write_bytes(data[: len(data) // 2])


def _text_named_jpg(path: Path) -> None:
    path.write_text("name,colour\nbox,red\n")


REFUSED = {
    "zero_byte": ("m_empty.jpg", _zero_byte, ("empty file",)),
    "truncated_jpeg": ("m_cut.jpg", _truncated_jpeg, ("truncated",)),
    "truncated_png": ("m_cut.png", _truncated_png, ("truncated",)),
    "text_named_jpg": ("m_notes.jpg", _text_named_jpg, ("not a recognised image",)),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_unreadable_file_is_skipped_with_a_reason(llava, tmp_path, case):
    name, make, words = REFUSED[case]
    images = _good_images(tmp_path / "images")
    make(images / name)
    out = tmp_path / "pairs.jsonl"
    summary = _run(llava, images, out)
    _assert_skipped_with_reason(summary, name, *words)
    _assert_good_ones_processed(summary, out)
    assert summary.items == 3


def _png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (its data is for 1x1)."""
    data = bytearray(_png_bytes(Image.new("L", (1, 1))))
    header = struct.pack(">II", width, height) + bytes(data[24:29])  # keep depth, colour type...
    data[16:29] = header
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + header))
    return bytes(data)


@pytest.mark.parametrize("scale", [1.2, 2.5])  # over the warning limit; over the error limit
def test_decompression_bomb_is_skipped_with_a_reason(llava, tmp_path, scale):
    side = int((Image.MAX_IMAGE_PIXELS * scale) ** 0.5) + 1
    images = _good_images(tmp_path / "images")
    (images / "m_bomb.png").write_bytes(_png_declaring(side, side))
    assert (images / "m_bomb.png").stat().st_size < 1000  # nothing large is made or decoded
    out = tmp_path / "pairs.jsonl"
    summary = _run(llava, images, out)
    _assert_skipped_with_reason(summary, "m_bomb.png", "too large", "decompression-bomb limit")
    assert f"{side * side:,} pixels" in summary.bad_items["m_bomb.png"]
    _assert_good_ones_processed(summary, out)


# --- images that are valid after conversion to RGB ---------------------------------------------


def _cmyk(path: Path) -> None:
    Image.new("CMYK", (16, 12), (0, 255, 255, 0)).save(path, format="JPEG", quality=95)  # red


def _gray16(path: Path) -> None:
    image = Image.new("I;16", (16, 12), 65535)
    image.paste(0, (0, 0, 8, 12))
    image.save(path)


def _palette_transparent(path: Path) -> None:
    image = Image.new("P", (16, 12), 0)
    image.putpalette([0, 0, 0, 0, 160, 0] + [0, 0, 0] * 254)
    image.paste(1, (8, 0, 16, 12))
    image.save(path, transparency=0)


def _rgba(path: Path) -> None:
    image = Image.new("RGBA", (16, 12), (0, 0, 255, 255))
    image.paste((0, 0, 0, 0), (0, 0, 8, 12))  # left half fully transparent black
    image.save(path)


def _one_pixel(path: Path) -> None:
    Image.new("RGB", (1, 1), (250, 120, 0)).save(path)


# name, maker, (size, {pixel: expected RGB}) of the image load_image gives
CONVERTED = {
    "cmyk": ("m_cmyk.jpg", _cmyk, ((16, 12), {})),
    "gray16": ("m_gray16.png", _gray16, ((16, 12), {(1, 1): (0, 0, 0), (12, 1): (255,) * 3})),
    "palette_transparency": (
        "m_palette.png",
        _palette_transparent,
        ((16, 12), {(1, 1): (255, 255, 255), (12, 1): (0, 160, 0)}),
    ),
    "rgba": ("m_rgba.png", _rgba, ((16, 12), {(1, 1): (255, 255, 255), (12, 1): (0, 0, 255)})),
    "one_pixel": ("m_dot.png", _one_pixel, ((1, 1), {(0, 0): (250, 120, 0)})),
}


@pytest.mark.parametrize("case", list(CONVERTED))
def test_unusual_but_valid_image_is_converted_and_processed(llava, tmp_path, case):
    name, make, (size, pixels) = CONVERTED[case]
    images = _good_images(tmp_path / "images")
    make(images / name)
    image = load_image(images / name)
    assert image.mode == "RGB" and image.size == size
    for xy, rgb in pixels.items():
        assert image.getpixel(xy) == rgb
    if case == "cmyk":  # JPEG: compare loosely; no ink in C/M/Y except M+Y = red
        red, green, blue = image.getpixel((8, 6))
        assert red > 220 and green < 40 and blue < 40
    out = tmp_path / "pairs.jsonl"
    summary = _run(llava, images, out)
    assert summary.bad_items == {}
    _assert_good_ones_processed(summary, out, extra=(name,))


# --- entries of the folder that cannot become image ids ---------------------------------------


@pytest.mark.skipif(os.name == "nt", reason="POSIX file names are bytes")
def test_file_name_that_is_not_utf8_is_skipped_with_a_reason(llava, tmp_path):
    """Needs pairs.py to report ``scan_images(...).skipped`` in its summary (see the reply)."""
    images = _good_images(tmp_path / "images")
    try:
        with open(os.fsencode(images) + b"/m_bad\xff.png", "wb") as f:
            f.write(_png_bytes(Image.new("RGB", (8, 8), (1, 2, 3))))
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    out = tmp_path / "pairs.jsonl"
    summary = _run(llava, images, out)  # must not crash writing the id as UTF-8
    _assert_good_ones_processed(summary, out)  # the output is valid UTF-8
    _assert_skipped_with_reason(summary, "m_bad\\xff.png", "not valid UTF-8")
    json.dumps(summary.to_dict(), ensure_ascii=False).encode("utf-8")


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_symlink_loops_end_the_listing_and_are_skipped_with_a_reason(llava, tmp_path):
    """Needs pairs.py to report ``scan_images(...).skipped`` in its summary (see the reply)."""
    images = _good_images(tmp_path / "images")
    (images / "sub").mkdir()
    try:
        (images / "m_loop.jpg").symlink_to("m_loop.jpg")
        (images / "sub" / "up").symlink_to("..", target_is_directory=True)
    except OSError:
        pytest.skip("symlinks not permitted here")
    out = tmp_path / "pairs.jsonl"
    summary = _run(llava, images, out)
    _assert_good_ones_processed(summary, out)
    _assert_skipped_with_reason(summary, "m_loop.jpg", "symbolic link loop")
    _assert_skipped_with_reason(summary, "sub/up", "symbolic link to a folder, not followed")


def test_empty_folder_is_a_clear_error_with_a_nonzero_exit(llava, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    (images / "README.txt").write_text("images go here")
    out = tmp_path / "pairs.jsonl"
    code = main(["pairs", "--model", str(llava), "--images", str(images), "--out", str(out)])
    err = capsys.readouterr().err
    assert code != 0
    assert f"no images found under {images}" in err
    assert "Traceback" not in err
    assert not out.exists()


def test_cli_run_over_every_refused_class_reports_each_on_one_line(llava, tmp_path, capsys):
    images = _good_images(tmp_path / "images")
    for name, make, _ in REFUSED.values():
        make(images / name)
    (images / "m_bomb.png").write_bytes(_png_declaring(20000, 20000))
    out = tmp_path / "pairs.jsonl"
    argv = ["pairs", "--model", str(llava), "--images", str(images), "--out", str(out)]
    code = main(argv + ["--max-new-tokens", "4", "--batch-size", "4"])
    captured = capsys.readouterr()
    assert code == 0
    skipped_lines = [line for line in captured.err.splitlines() if "left out " in line]
    expected = [name for name, _, _ in REFUSED.values()] + ["m_bomb.png"]
    for name in expected:
        assert sum(name in line for line in skipped_lines) == 1, (name, skipped_lines)
    summary = json.loads(captured.out.split("pairs -> ", 1)[1].split(": ", 1)[1])
    assert summary["made"] == 2 and summary["bad_items"] == len(expected)
    assert _record_ids(out) == sorted(GOOD)


# --- data files: image paths that leave the folder, schema errors -----------------------------


@pytest.fixture
def roots(tmp_path) -> tuple[Path, Path]:
    """(image folder with the two good images, a real image OUTSIDE that folder)."""
    images = _good_images(tmp_path / "images")
    outside = tmp_path / "outside.jpg"
    Image.new("RGB", (8, 8), (9, 9, 9)).save(outside)
    return images, outside


def _escaping_paths(outside: Path) -> dict[str, str]:
    return {"parent": "../outside.jpg", "absolute": str(outside)}


def _no_model_work(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the data file was checked")

    monkeypatch.setattr(stic.modeling.models, "load_model", refuse)
    monkeypatch.setattr(stic.stages.training, "load_model", refuse)


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _vqa(item_id: str, image) -> dict:
    return {"id": item_id, "image": image, "question": "Is there a shape?", "answer": "yes"}


def test_eval_skips_items_whose_image_leaves_the_folder(llava, roots, tmp_path):
    images, outside = roots
    escaping = _escaping_paths(outside)
    rows = [_vqa("good", GOOD[0])] + [_vqa(f"bad-{k}", v) for k, v in escaping.items()]
    data = _write_jsonl(tmp_path / "vqa.jsonl", rows)
    config = EvalConfig(
        model=str(llava),
        data=str(data),
        images=str(images),
        out=str(tmp_path / "results.json"),
        max_new_tokens=2,
    )
    summary = run_eval(config)
    assert summary.details["n"] == 1
    assert set(summary.bad_items) == {"bad-parent", "bad-absolute"}
    assert "escapes the image folder" in summary.bad_items["bad-parent"]
    assert "is absolute" in summary.bad_items["bad-absolute"]
    assert all("\n" not in reason for reason in summary.bad_items.values())


def _sample(sample_id: str, image) -> dict:
    return {
        "id": sample_id,
        "image": image,
        "conversations": [
            {"from": "human", "value": "<image>\nWhat is shown?"},
            {"from": "gpt", "value": "A shape."},
        ],
    }


def test_infuse_skips_samples_whose_image_leaves_the_folder(llava, roots, tmp_path):
    images, outside = roots
    escaping = _escaping_paths(outside)
    samples = [_sample("good", GOOD[0])] + [_sample(f"bad-{k}", v) for k, v in escaping.items()]
    data = tmp_path / "instruct.json"
    data.write_text(json.dumps(samples))
    out = tmp_path / "infused.json"
    config = InfuseConfig(
        model=str(llava), data=str(data), images=str(images), out=str(out), max_new_tokens=2
    )
    summary = run_infuse(config)
    assert summary.details["infused"] == 1
    assert set(summary.bad_items) == {"bad-parent", "bad-absolute"}
    assert "escapes the image folder" in summary.bad_items["bad-parent"]
    assert "is absolute" in summary.bad_items["bad-absolute"]
    written = {s["id"]: s for s in json.loads(out.read_text())}
    assert "stic_infusion" not in written["bad-parent"]  # passed on unchanged, not described


def _pair(pair_id: str, image) -> dict:
    return {
        "id": pair_id,
        "image": image,
        "prompt": "Describe the image.",
        "chosen": "A blue ellipse.",
        "rejected": "A cat.",
        "rejected_kind": "bad_prompt",
    }


def _dpo_config(llava, pairs: Path, images: Path, out: Path) -> DPOConfig:
    return DPOConfig(
        model=str(llava),
        pairs=str(pairs),
        images=str(images),
        out=str(out),
        max_steps=1,
        batch_size=1,
        grad_accum=1,
        lora_r=2,
        lora_alpha=4,
    )


@pytest.mark.parametrize("kind", ["parent", "absolute", "missing"])
def test_dpo_refuses_a_pair_whose_image_is_unusable_before_loading_the_model(
    llava, roots, tmp_path, monkeypatch, kind
):
    """Needs run_dpo to check image paths up front (see the reply): today the collator finds
    the bad path midway through training, after the model is loaded."""
    images, outside = roots
    bad = {**_escaping_paths(outside), "missing": "not_there.png"}[kind]
    pairs = _write_jsonl(
        tmp_path / "pairs.jsonl", [_pair("p1", GOOD[0]), _pair("p2", bad), _pair("p3", GOOD[1])]
    )
    _no_model_work(monkeypatch)
    with pytest.raises(ValueError) as error:
        run_dpo(_dpo_config(llava, pairs, images, tmp_path / "dpo"))
    message = str(error.value)
    # The record is named by its line, or by its (unique) id where the reader keeps no lines.
    assert message.startswith((f"{pairs}:2: ", f"{pairs}: pair 'p2'")), message
    reason = {"parent": "escapes the image folder", "absolute": "is absolute"}.get(
        kind, "not found"
    )
    assert reason in message and bad in message
    assert "'p1'" not in message and "'p3'" not in message and f"{pairs}:1" not in message


def test_sft_refuses_a_sample_whose_image_leaves_the_folder_before_loading_the_model(
    llava, roots, tmp_path, monkeypatch
):
    """Needs run_sft to check image paths up front (see the reply)."""
    images, outside = roots
    data = tmp_path / "infused.json"
    data.write_text(json.dumps([_sample("s0", GOOD[0]), _sample("s1", "../outside.jpg")]))
    _no_model_work(monkeypatch)
    config = SFTConfig(
        model=str(llava),
        adapter=str(tmp_path / "adapter"),
        data=str(data),
        images=str(images),
        out=str(tmp_path / "sft"),
        max_steps=1,
    )
    with pytest.raises(ValueError, match=rf"{data}\[1\]: .*escapes the image folder"):
        run_sft(config)


# Each: the bad record (second of three), and what the error must say about it.
SCHEMA_ERRORS = {
    "missing_field": (lambda r: {k: v for k, v in r.items() if k != "id"}, "missing field 'id'"),
    "wrong_type": (lambda r: {**r, "image": ["a.png"]}, "field 'image' must be str"),
    "duplicate_id": (lambda r: {**r, "id": "r1"}, "duplicate id 'r1'"),
    "not_json": (lambda r: '{"id": "r2", "image": ', "not valid JSON"),
}


@pytest.mark.parametrize("stage", ["eval", "dpo", "infuse"])
@pytest.mark.parametrize("error", list(SCHEMA_ERRORS))
def test_bad_record_is_an_error_naming_it_before_any_model_work(
    llava, roots, tmp_path, monkeypatch, stage, error
):
    """JSONL files (eval, dpo) name the line; the JSON list of infuse names the index, or for a
    syntax error the file and line (needs files.read_json to say so; see the reply)."""
    images, _ = roots
    spoil, words = SCHEMA_ERRORS[error]
    make = {"eval": _vqa, "dpo": _pair, "infuse": _sample}[stage]
    rows = [make("r1", GOOD[0]), spoil(make("r2", GOOD[0])), make("r3", GOOD[1])]
    out = tmp_path / "out"
    if stage == "infuse":
        data = tmp_path / "data.json"
        if error == "not_json":
            text = json.dumps(rows[:1], indent=1)
            data.write_text(text[: text.rindex("}") + 1] + ',\n {"id": "r2", "image": \n')
            where = f"{data}:"  # then the line (and column) of the syntax error
        else:
            data.write_text(json.dumps(rows))
            where = f"{data}[1]: "
        config = InfuseConfig(model=str(llava), data=str(data), images=str(images), out=str(out))
        run = run_infuse
    else:
        data = _write_jsonl(tmp_path / "data.jsonl", rows)
        where = f"{data}:2: "
        if stage == "eval":
            config = EvalConfig(model=str(llava), data=str(data), images=str(images), out=str(out))
            run = run_eval
        else:
            config, run = _dpo_config(llava, data, images, out), run_dpo
    _no_model_work(monkeypatch)
    with pytest.raises(ValueError) as raised:
        run(config)
    message = str(raised.value)
    assert message.startswith(where) and words in message, message
    assert isinstance(raised.value, RecordError) or error == "not_json"
    assert not out.exists()
