"""stic.data.formats: reading the reference code's pairs, and writing stic, reference, trl and llamafactory."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from stic.data import formats as convert
from stic.data.formats import (
    detect_format,
    llamafactory_dataset_info,
    pair_from_reference,
    pair_to_reference,
    read_pairs_any,
    unique_ids,
    write_pairs_as,
)
from stic.data.prompts import BAD_PROMPTS, GOOD_PROMPT, PLAIN_PROMPTS
from stic.data.schemas import PairRecord, RecordError
from stic.runtime.images import load_image
from stic.tools import convert as convert_cli


def reference_record(
    image: str, corrupted: bool, hallu, prompt: str = PLAIN_PROMPTS[0], n: int = 0
):
    user = f"<image>\n{prompt}"
    return {
        "image": image,
        "image_corruption": corrupted,
        "hallu_prompt": hallu,
        "chosen": [
            {"role": "user", "content": user},
            {"role": "assistant", "content": f"A careful description {n}."},
        ],
        "rejected": [
            {"role": "user", "content": user},
            {"role": "assistant", "content": f"An imagined description {n}."},
        ],
    }


@pytest.fixture
def reference_rows() -> list[dict]:
    rows = [
        reference_record("img_0000.png", False, BAD_PROMPTS[0], n=0),
        reference_record("img_0001.png", True, "", PLAIN_PROMPTS[3], n=1),
        reference_record("img_0000.png", True, None, PLAIN_PROMPTS[5], n=2),  # same image again
        reference_record("img_0002.png", False, BAD_PROMPTS[7], n=3),
    ]
    rows[3]["note"] = "a key stic does not know"
    return rows


def native_pairs() -> list[PairRecord]:
    """Pairs as stage 1a writes them: one per rejected kind."""
    common = {"chosen_prompt": GOOD_PROMPT, "model": "tiny", "sampling": {"temperature": 0.2}}
    return [
        PairRecord(
            id="img_0000.png",
            image="img_0000.png",
            prompt=PLAIN_PROMPTS[1],
            chosen="A square.",
            rejected="A square and a cat.",
            rejected_kind="bad_prompt",
            rejected_prompt=BAD_PROMPTS[2],
            **common,
        ),
        PairRecord(
            id="img_0001.png",
            image="img_0001.png",
            prompt=PLAIN_PROMPTS[2],
            chosen="A circle.",
            rejected="A blur.",
            rejected_kind="corrupt_lowres",
            rejected_prompt=PLAIN_PROMPTS[6],
            corruption={"name": "lowres", "short_side": 20},
            chosen_finish="length",
            **common,
        ),
        PairRecord(
            id="img_0002.png",
            image="img_0002.png",
            prompt=PLAIN_PROMPTS[4],
            chosen="A triangle.",
            rejected="A green triangle.",
            rejected_kind="corrupt_color",
            rejected_prompt=PLAIN_PROMPTS[0],
            corruption={"name": "color", "brightness": 1.2, "hue": -0.1},
            **common,
        ),
    ]


# --- ids and the reference format ---------------------------------------------------------------


def test_unique_ids_number_repeats_and_never_shadow_another_image():
    assert unique_ids(["a", "b", "a", "a", "a#2"]) == ["a", "b", "a#3", "a#4", "a#2"]
    assert unique_ids(["x", "x"]) == ["x", "x#2"]
    assert unique_ids(["x", "y"], reserved=["x", "x#2"]) == ["x#3", "y"]


def test_reference_records_map_to_pairs(tmp_path, reference_rows):
    path = tmp_path / "ref.json"
    path.write_text(json.dumps(reference_rows))
    pairs = read_pairs_any(path)
    assert [p.id for p in pairs] == [
        "img_0000.png",
        "img_0001.png",
        "img_0000.png#2",
        "img_0002.png",
    ]
    assert [p.image for p in pairs] == [
        "img_0000.png",
        "img_0001.png",
        "img_0000.png",
        "img_0002.png",
    ]
    bad, corrupt_claimed = pairs[0], pairs[1]
    assert bad.rejected_kind == "bad_prompt" and bad.rejected_prompt == BAD_PROMPTS[0]
    assert bad.prompt == PLAIN_PROMPTS[0]  # placeholder stripped
    assert bad.chosen == "A careful description 0." and bad.rejected == "An imagined description 0."
    assert bad.chosen_prompt == GOOD_PROMPT and bad.corruption is None
    # The reference code never corrupted these images: no corruption is claimed for them.
    assert corrupt_claimed.rejected_kind == "imported" and corrupt_claimed.corruption is None
    assert corrupt_claimed.rejected_prompt == ""
    assert corrupt_claimed.source == {
        "format": "stic-reference",
        "image_corruption": True,
        "hallu_prompt": "",
    }
    assert pairs[2].source["hallu_prompt"] is None
    assert pairs[3].source["extra"] == {"note": "a key stic does not know"}


def test_reference_to_stic_to_reference_gives_back_the_same_records(tmp_path, reference_rows):
    source = tmp_path / "ref.json"
    source.write_text(json.dumps(reference_rows))
    write_pairs_as(read_pairs_any(source, "stic-reference"), tmp_path / "pairs.jsonl", "stic")
    stic_pairs = read_pairs_any(tmp_path / "pairs.jsonl")  # detected as stic
    write_pairs_as(stic_pairs, tmp_path / "back.json", "stic-reference")
    assert json.loads((tmp_path / "back.json").read_text()) == reference_rows
    write_pairs_as(stic_pairs, tmp_path / "back.jsonl", "stic-reference")
    lines = (tmp_path / "back.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == reference_rows


def test_reference_jsonl_with_and_without_image_placeholder(tmp_path):
    with_placeholder = reference_record("a.png", False, BAD_PROMPTS[1], "Describe it.")
    without = reference_record("b.png", False, BAD_PROMPTS[1], "Describe it.")
    for side in ("chosen", "rejected"):
        without[side][0]["content"] = "Describe it."  # reference-code defect 3
    path = tmp_path / "ref.jsonl"
    path.write_text(json.dumps(with_placeholder) + "\n\n" + json.dumps(without) + "\n")
    pairs = read_pairs_any(path)
    assert [p.prompt for p in pairs] == ["Describe it.", "Describe it."]
    # Written back, both carry the placeholder so the image reaches the reference trainer.
    assert pair_to_reference(pairs[1]) == {
        **without,
        "chosen": with_placeholder["chosen"],
        "rejected": with_placeholder["rejected"],
        "image": "b.png",
    }


def test_native_pairs_to_reference():
    rows = [pair_to_reference(p) for p in native_pairs()]
    assert [r["image_corruption"] for r in rows] == [False, True, True]
    assert [r["hallu_prompt"] for r in rows] == [BAD_PROMPTS[2], "", ""]
    assert rows[0]["chosen"][0] == {"role": "user", "content": f"<image>\n{PLAIN_PROMPTS[1]}"}
    assert rows[1]["rejected"][1] == {"role": "assistant", "content": "A blur."}
    assert set(rows[0]) == {"image", "image_corruption", "hallu_prompt", "chosen", "rejected"}


def _broken(change) -> dict:
    row = reference_record("a.png", False, BAD_PROMPTS[0])
    change(row)
    return row


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.pop("image_corruption"), "missing field 'image_corruption'"),
        (lambda r: r.update(image_corruption="yes"), "'image_corruption' must be bool"),
        (lambda r: r.update(image=""), "field 'image' is empty"),
        (lambda r: r.update(hallu_prompt=None), "'hallu_prompt' must be str"),
        (lambda r: r.pop("hallu_prompt"), "missing field 'hallu_prompt'"),
        (lambda r: r["chosen"].append(r["chosen"][1]), "field 'chosen' must hold a user turn"),
        (
            lambda r: r["rejected"][1].update(role="user"),
            "rejected[1]: expected 'role': 'assistant'",
        ),
        (lambda r: r["chosen"][1].pop("content"), "chosen[1]: missing field 'content'"),
        (lambda r: r["rejected"][0].update(content="Other?"), "a pair has one prompt"),
    ],
)
def test_reference_errors_name_the_record_and_field(tmp_path, change, message):
    good = reference_record("ok.png", True, None)
    path = tmp_path / "ref.json"
    path.write_text(json.dumps([good, _broken(change)]))
    with pytest.raises(RecordError, match=r"ref\.json\[1\]") as caught:
        read_pairs_any(path, "stic-reference")
    assert message in str(caught.value)
    jsonl = tmp_path / "ref.jsonl"
    jsonl.write_text(json.dumps(good) + "\n" + json.dumps(_broken(change)) + "\n")
    with pytest.raises(RecordError, match=r"ref\.jsonl:2"):
        read_pairs_any(jsonl, "stic-reference")


# --- format detection ---------------------------------------------------------------------------


def test_detect_format_from_the_first_record(tmp_path, reference_rows):
    assert detect_format(native_pairs()[0].to_dict()) == "stic"
    assert detect_format(reference_rows[0]) == "stic-reference"
    assert detect_format({"chosen": [], "rejected": []}) == "stic-reference"
    lf = convert.pair_to_llamafactory(native_pairs()[0], "img_0000.png")
    assert detect_format(lf) == "llamafactory"
    with pytest.raises(RecordError, match=r"x\.json\[0\]: cannot tell the pair format.*'question'"):
        detect_format({"question": "?"}, "x.json[0]")
    with pytest.raises(RecordError, match="a JSON list"):
        detect_format([1, 2])


def test_read_pairs_any_errors(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(RecordError, match="no records"):
        read_pairs_any(tmp_path / "empty.jsonl")
    (tmp_path / "odd.jsonl").write_text('{"question": "?"}\n')
    with pytest.raises(RecordError, match=r"odd\.jsonl:1: cannot tell"):
        read_pairs_any(tmp_path / "odd.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"image": 1}\n{oops\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: not valid JSON"):
        read_pairs_any(tmp_path / "bad.jsonl")
    with pytest.raises(ValueError, match="unknown pair format 'trl'"):
        read_pairs_any(tmp_path / "odd.jsonl", "trl")
    with pytest.raises(FileNotFoundError):
        read_pairs_any(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="is a folder"):
        read_pairs_any(tmp_path)


def test_stic_format_round_trip_and_its_own_validation(tmp_path):
    pairs = native_pairs()
    write_pairs_as(pairs, tmp_path / "p.jsonl", "stic")
    assert read_pairs_any(tmp_path / "p.jsonl", "stic") == pairs
    row = pairs[0].to_dict() | {"rejected_kind": "made_up"}
    (tmp_path / "bad.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(RecordError, match=r"bad\.jsonl:1: field 'rejected_kind'"):
        read_pairs_any(tmp_path / "bad.jsonl")


# --- llamafactory -------------------------------------------------------------------------------


def test_llamafactory_export_round_trip_and_dataset_info(tmp_path, image_dir):
    pairs = native_pairs()
    out = tmp_path / "lf" / "stic_pairs.json"
    write_pairs_as(pairs, out, "llamafactory", image_dir)
    rows = json.loads(out.read_text())
    assert rows[0]["conversations"] == [{"from": "human", "value": "<image>" + PLAIN_PROMPTS[1]}]
    assert rows[0]["chosen"] == {"from": "gpt", "value": "A square."}
    assert rows[0]["rejected"] == {"from": "gpt", "value": "A square and a cat."}
    assert rows[1]["images"] == [str((image_dir / "img_0001.png").resolve())]
    assert all(Path(r["images"][0]).is_absolute() and Path(r["images"][0]).is_file() for r in rows)
    assert read_pairs_any(out, images_root=image_dir) == pairs  # detected; stic_meta restores all
    assert read_pairs_any(out) == pairs  # the meta holds the relative image path

    write_pairs_as(pairs, tmp_path / "rel.jsonl", "llamafactory")  # no images folder: relative
    relative = [json.loads(line) for line in (tmp_path / "rel.jsonl").read_text().splitlines()]
    assert [r["images"] for r in relative] == [[p.image] for p in pairs]
    assert read_pairs_any(tmp_path / "rel.jsonl", "llamafactory") == pairs

    assert llamafactory_dataset_info("stic_pairs", "stic_pairs.json") == {
        "stic_pairs": {
            "file_name": "stic_pairs.json",
            "formatting": "sharegpt",
            "ranking": True,
            "columns": {
                "messages": "conversations",
                "chosen": "chosen",
                "rejected": "rejected",
                "images": "images",
            },
        }
    }


def test_llamafactory_from_elsewhere(tmp_path, image_dir):
    def record(image):
        return {
            "conversations": [{"from": "human", "value": "<image>What is shown?"}],
            "chosen": {"from": "gpt", "value": "A shape."},
            "rejected": {"from": "gpt", "value": "A horse."},
            "images": image,
        }

    absolute = str((image_dir / "img_0003.png").resolve())
    path = tmp_path / "foreign.json"
    path.write_text(json.dumps([record([absolute]), record("img_0003.png"), record(["b.png"])]))
    pairs = read_pairs_any(path, images_root=image_dir)
    assert [p.id for p in pairs] == ["img_0003.png", "img_0003.png#2", "b.png"]
    assert {p.image for p in pairs[:2]} == {"img_0003.png"}
    assert pairs[0].prompt == "What is shown?" and pairs[0].rejected_kind == "imported"
    assert pairs[0].source == {"format": "llamafactory"}
    with pytest.raises(RecordError, match=r"foreign\.json\[0\]: image .* is an absolute path"):
        read_pairs_any(path)
    ours = convert.pair_to_llamafactory(native_pairs()[2], "/elsewhere/img_0002.png")
    path.write_text(json.dumps([ours, record("img_0002.png"), record("img_0002.png")]))
    assert [p.id for p in read_pairs_any(path)] == [
        "img_0002.png",
        "img_0002.png#2",
        "img_0002.png#3",
    ]
    path.write_text(json.dumps([ours, ours]))
    with pytest.raises(RecordError, match=r"foreign\.json\[1\]: duplicate id 'img_0002.png'"):
        read_pairs_any(path)
    path.write_text(json.dumps([record(["a.png", "b.png"])]))
    with pytest.raises(RecordError, match=r"\[0\]: field 'images' must hold exactly one path"):
        read_pairs_any(path)
    two_turns = record(["a.png"]) | {"conversations": [{"from": "human", "value": "?"}] * 3}
    path.write_text(json.dumps([two_turns]))
    with pytest.raises(RecordError, match="'conversations' must hold one human turn"):
        read_pairs_any(path)


# --- trl ----------------------------------------------------------------------------------------


def _check_trl_rows(dataset, pairs, image_dir):
    assert dataset.column_names == ["id", "prompt", "chosen", "rejected", "images"]
    assert len(dataset) == len(pairs)
    for row, pair in zip(dataset, pairs, strict=True):
        assert row["id"] == pair.id
        (user,) = row["prompt"]
        assert user["role"] == "user"
        assert [item["type"] for item in user["content"]] == ["image", "text"]
        assert user["content"][1]["text"] == pair.prompt
        assert row["chosen"] == [
            {"role": "assistant", "content": [{"type": "text", "text": pair.chosen}]}
        ]
        assert row["rejected"] == [
            {"role": "assistant", "content": [{"type": "text", "text": pair.rejected}]}
        ]
        (image,) = row["images"]
        expected = load_image(image_dir / pair.image)
        assert image.mode == "RGB" and image.size == expected.size
        assert image.tobytes() == expected.tobytes()  # stored losslessly


def test_trl_export_folder_and_parquet_open_with_datasets(tmp_path, image_dir):
    import datasets

    pairs = native_pairs()
    write_pairs_as(pairs, tmp_path / "trl_pairs", "trl", image_dir)
    _check_trl_rows(datasets.load_from_disk(str(tmp_path / "trl_pairs")), pairs, image_dir)
    write_pairs_as(pairs, tmp_path / "trl_pairs.parquet", "trl", image_dir)
    loaded = datasets.load_dataset(
        "parquet", data_files=str(tmp_path / "trl_pairs.parquet"), cache_dir=str(tmp_path / "c")
    )["train"]
    _check_trl_rows(loaded, pairs, image_dir)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "trl_pairs", "trl_pairs.parquet"]


def test_trl_export_refuses_what_it_cannot_write(tmp_path, image_dir):
    pairs = native_pairs()
    with pytest.raises(ValueError, match="needs|embeds the images"):
        write_pairs_as(pairs, tmp_path / "t", "trl")
    with pytest.raises(ValueError, match="not '.json'"):
        write_pairs_as(pairs, tmp_path / "t.json", "trl", image_dir)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        write_pairs_as(pairs, tmp_path / "full", "trl", image_dir)
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    missing = [PairRecord(**{**pairs[0].to_dict(), "id": "gone", "image": "gone.png"})]
    with pytest.raises(FileNotFoundError, match="pair 'gone': image file not found"):
        write_pairs_as(missing, tmp_path / "t", "trl", image_dir)
    assert not (tmp_path / "t").exists()
    broken_dir = tmp_path / "broken_images"
    broken_dir.mkdir()
    (broken_dir / "img_0000.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="pair 'img_0000.png': .*not a recognised image"):
        write_pairs_as(pairs[:1], tmp_path / "t", "trl", broken_dir)
    assert not (tmp_path / "t").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_trl_export_trains_one_dpo_step(tmp_path, image_dir, tiny_model_factory):
    trl = pytest.importorskip("trl")
    import datasets
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model_dir = tiny_model_factory("llava")
    write_pairs_as(native_pairs(), tmp_path / "trl_pairs", "trl", image_dir)
    dataset = datasets.load_from_disk(str(tmp_path / "trl_pairs"))
    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    processor = AutoProcessor.from_pretrained(model_dir)
    # transformers >= 5.2x renamed gradient_checkpointing (TRL turns it on by default).
    names = {f.name for f in dataclasses.fields(trl.DPOConfig)}
    checkpointing = (
        "activation_checkpointing"
        if "activation_checkpointing" in names
        else "gradient_checkpointing"
    )
    no_checkpointing = {checkpointing: False}
    args = trl.DPOConfig(
        output_dir=str(tmp_path / "run"),
        max_steps=1,
        per_device_train_batch_size=2,
        max_length=None,  # never cut image tokens
        report_to="none",
        save_strategy="no",
        bf16=False,
        **no_checkpointing,
        use_cpu=True,
        dataloader_num_workers=0,
    )
    trainer = trl.DPOTrainer(
        model=model, args=args, train_dataset=dataset, processing_class=processor
    )
    # The collator turns our rows into model inputs with the image in them.
    batch = trainer.data_collator([dict(dataset[0]), dict(dataset[1])])
    image_token = model.config.image_token_id
    assert batch["pixel_values"].shape[0] == 4  # 2 pairs x (chosen, rejected)
    assert ((batch["input_ids"] == image_token).sum(dim=1) > 0).all()
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    result = trainer.train()
    assert result.global_step == 1
    # A finite DPO loss (log 2 at the first step, where policy == reference, plus nothing
    # infinite from a mis-masked image or answer token) and finite weights after the update.
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert math.isfinite(result.training_loss) and all(math.isfinite(v) for v in losses)
    assert result.training_loss > 0
    changed = [n for n, p in model.named_parameters() if n in before and not p.equal(before[n])]
    assert changed
    assert all(torch.isfinite(p).all() for p in model.parameters()), "non-finite weights"


# --- command line -------------------------------------------------------------------------------


def test_cli_reference_to_stic_and_back(tmp_path, reference_rows, capsys):
    source = tmp_path / "ref.json"
    source.write_text(json.dumps(reference_rows))
    out = tmp_path / "pairs.jsonl"
    assert (
        convert_cli.main(["--from", "stic-reference", "--to", "stic", str(source), str(out)]) == 0
    )
    assert "4 pairs" in capsys.readouterr().out
    assert len(read_pairs_any(out, "stic")) == 4
    assert convert_cli.main(["--to", "stic-reference", str(out), str(tmp_path / "back.json")]) == 0
    assert json.loads((tmp_path / "back.json").read_text()) == reference_rows


def test_cli_llamafactory_prints_the_dataset_info_entry(tmp_path, image_dir, capsys):
    write_pairs_as(native_pairs(), tmp_path / "pairs.jsonl", "stic")
    out = tmp_path / "stic_dpo.json"
    argv = [
        "--to",
        "llamafactory",
        str(tmp_path / "pairs.jsonl"),
        str(out),
        "--images",
        str(image_dir),
    ]
    assert convert_cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "3 pairs" in printed and "dataset_info.json" in printed
    entry = json.loads("{" + printed.split("dataset_info.json:\n", 1)[1] + "}")
    assert entry == llamafactory_dataset_info("stic_dpo", "stic_dpo.json")
    assert Path(json.loads(out.read_text())[0]["images"][0]).is_absolute()


def test_cli_trl(tmp_path, image_dir, capsys):
    write_pairs_as(native_pairs(), tmp_path / "pairs.jsonl", "stic")
    argv = ["--to", "trl", str(tmp_path / "pairs.jsonl"), str(tmp_path / "d.parquet")]
    assert convert_cli.main(argv) == 2
    assert "needs --images" in capsys.readouterr().err
    assert convert_cli.main([*argv, "--images", str(image_dir)]) == 0
    assert (tmp_path / "d.parquet").is_file()


def test_cli_errors(tmp_path, capsys):
    bad = tmp_path / "ref.json"
    bad.write_text(json.dumps([reference_record("a.png", "no", None)]))
    assert convert_cli.main(["--to", "stic", str(bad), str(tmp_path / "o.jsonl")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("stic convert: error: ") and "ref.json[0]" in err
    assert "'image_corruption'" in err
    assert not (tmp_path / "o.jsonl").exists()
    assert convert_cli.main(["--to", "yaml", str(bad), "o"]) == 2
    assert convert_cli.main(["--to", "stic", str(tmp_path / "missing.json"), "o"]) == 1
    assert "no such file" in capsys.readouterr().err
    assert convert_cli.main(["--help"]) == 0
    assert "stic convert --from stic-reference" in capsys.readouterr().out


def test_cli_refuses_out_equal_to_in_however_spelled(tmp_path, reference_rows, capsys, monkeypatch):
    source = tmp_path / "ref.json"
    source.write_text(json.dumps(reference_rows))
    before = source.read_bytes()
    monkeypatch.chdir(tmp_path)
    for out in (str(source), "ref.json", "./sub/../ref.json"):
        argv = ["--from", "stic-reference", "--to", "stic", str(source), out, "--overwrite"]
        assert convert_cli.main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("stic convert: error: OUT ") and "is IN" in err
        assert err.count("\n") == 1
    assert source.read_bytes() == before


def test_cli_refuses_an_existing_out_unless_overwrite(tmp_path, reference_rows, capsys):
    source = tmp_path / "ref.json"
    source.write_text(json.dumps(reference_rows))
    out = tmp_path / "mine.jsonl"
    out.write_text("my only copy\n")
    argv = ["--from", "stic-reference", "--to", "stic", str(source), str(out)]
    assert convert_cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "already exists" in err and "--overwrite" in err and err.count("\n") == 1
    assert out.read_text() == "my only copy\n"
    assert convert_cli.main([*argv, "--overwrite"]) == 0
    assert len(read_pairs_any(out, "stic")) == 4
    # A folder where a file goes is refused even with --overwrite.
    (tmp_path / "folder").mkdir()
    assert convert_cli.main([*argv[:-1], str(tmp_path / "folder"), "--overwrite"]) == 1
    assert "is a folder" in capsys.readouterr().err


def test_cli_refuses_out_inside_the_images_folder(tmp_path, image_dir, capsys):
    write_pairs_as(native_pairs(), tmp_path / "pairs.jsonl", "stic")
    out = image_dir / "lf.json"
    argv = ["--to", "llamafactory", str(tmp_path / "pairs.jsonl"), str(out), "--images"]
    assert convert_cli.main([*argv, str(image_dir)]) == 1
    assert "lies inside --images" in capsys.readouterr().err
    assert not out.exists()


def test_cli_trl_overwrite_replaces_a_saved_data_set_and_nothing_else(tmp_path, image_dir, capsys):
    import datasets

    write_pairs_as(native_pairs(), tmp_path / "pairs.jsonl", "stic")
    out = tmp_path / "trl_pairs"
    argv = ["--to", "trl", str(tmp_path / "pairs.jsonl"), str(out), "--images", str(image_dir)]
    assert convert_cli.main(argv) == 0
    assert convert_cli.main(argv) == 1
    assert "--overwrite" in capsys.readouterr().err
    write_pairs_as(native_pairs()[:1], tmp_path / "one.jsonl", "stic")
    argv[2] = str(tmp_path / "one.jsonl")
    assert convert_cli.main([*argv, "--overwrite"]) == 0, capsys.readouterr().err
    assert len(datasets.load_from_disk(str(out))) == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # nothing left aside
    (out / "keep.txt").write_text("mine")
    assert convert_cli.main([*argv, "--overwrite"]) == 1
    assert "not a saved data set (e.g. keep.txt)" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"


def test_cli_refuses_an_out_another_run_is_writing(tmp_path, reference_rows, capsys):
    from stic.runtime.locks import lock_path, output_lock

    source = tmp_path / "ref.json"
    source.write_text(json.dumps(reference_rows))
    out = tmp_path / "pairs.jsonl"
    argv = ["--from", "stic-reference", "--to", "stic", str(source), str(out)]
    with output_lock(out):
        assert convert_cli.main(argv) == 1
    assert "is being written by another stic run" in capsys.readouterr().err
    assert not out.exists()
    assert convert_cli.main(argv) == 0
    assert not lock_path(out).exists()


def test_pure_transform_of_one_reference_record():
    row = reference_record("cat.jpg", False, BAD_PROMPTS[4], PLAIN_PROMPTS[6])
    pair = pair_from_reference(row, "r[0]", "cat.jpg")
    assert pair_to_reference(pair) == row
