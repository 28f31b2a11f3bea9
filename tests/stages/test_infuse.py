"""Stage 2a (stic.stages.infuse): descriptions joined to samples by id, the first human turn rewritten."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

import stic.modeling.backends
import stic.stages.infuse
from stic.config import InfuseConfig
from stic.data.prompts import PLAIN_PROMPTS
from stic.data.schemas import InstructSample, read_instruct
from stic.modeling.generation import Generation
from stic.runtime.files import atomic_write_json, read_jsonl
from stic.runtime.manifests import read_manifest, write_manifest
from stic.stages.infuse import description_prompt, infuse_sample, join_descriptions, run_infuse
from stic.testing import make_images


def _raw(sample_id: str, image: str | None, question: str = "What is shown?") -> dict:
    first = f"<image>\n{question}" if image else question
    data = {
        "id": sample_id,
        "conversations": [
            {"from": "human", "value": first},
            {"from": "gpt", "value": f"Answer for {sample_id}."},
            {"from": "human", "value": "And the colour?"},
            {"from": "gpt", "value": "Red."},
        ],
    }
    if image:
        data["image"] = image
    return data


def _sample(sample_id: str, image: str | None = "x.png", question: str = "What is shown?"):
    return InstructSample.from_dict(_raw(sample_id, image, question))


# --- pure functions ---------------------------------------------------------------------------


def test_infuse_sample_rewrites_only_the_first_human_turn():
    sample = _sample("a", question="How many dogs?")
    out = infuse_sample(sample, "Two dogs on grass.", PLAIN_PROMPTS[0])
    assert out.conversations[0].speaker == "human"
    assert out.conversations[0].value == (
        "<image>\nImage description:\nTwo dogs on grass.\n\nHow many dogs?"
    )
    assert out.conversations[1:] == sample.conversations[1:]
    assert out.id == sample.id and out.image == sample.image
    assert out.infusion == {"description": "Two dogs on grass.", "prompt": PLAIN_PROMPTS[0]}
    # The input is a value: unchanged.
    assert sample.conversations[0].value == "<image>\nHow many dogs?"
    assert out.to_dict()["stic_infusion"]["description"] == "Two dogs on grass."


def test_infuse_sample_without_the_placeholder_prefixes_the_turn():
    sample = InstructSample.from_dict(
        {
            "id": "b",
            "image": "x.png",
            "conversations": [
                {"from": "human", "value": "How many dogs?\n<image>"},
                {"from": "gpt", "value": "Two."},
            ],
        }
    )
    out = infuse_sample(sample, "D.", PLAIN_PROMPTS[1])
    assert out.conversations[0].value == "Image description:\nD.\n\nHow many dogs?\n<image>"
    assert out.conversations[1].value == "Two."


def test_join_descriptions_matches_by_id_not_position():
    """Reference-code defect 5: descriptions were joined to samples by list position."""
    samples = [_sample(i) for i in ("s3", "s1", "text", "s2")]
    samples[2] = _sample("text", image=None)
    # Built in another order, and with one id the samples do not have.
    descriptions = {
        "s2": {"description": "desc two", "prompt": PLAIN_PROMPTS[2]},
        "zz": {"description": "stray", "prompt": PLAIN_PROMPTS[0]},
        "s1": {"description": "desc one", "prompt": PLAIN_PROMPTS[1]},
        "s3": {"description": "desc three", "prompt": PLAIN_PROMPTS[3]},
    }
    out = join_descriptions(samples, descriptions)
    assert [s.id for s in out] == ["s3", "s1", "text", "s2"]
    expected = {"s3": "desc three", "s1": "desc one", "s2": "desc two"}
    for sample in out:
        if sample.id == "text":
            assert sample == samples[2]
            continue
        description = expected[sample.id]
        assert sample.infusion["description"] == description
        assert sample.conversations[0].value == (
            f"<image>\nImage description:\n{description}\n\nWhat is shown?"
        )
        assert sample.infusion["prompt"] == descriptions[sample.id]["prompt"]


def test_description_prompt_is_deterministic_per_seed_and_id():
    ids = [f"sample-{i}" for i in range(64)]
    first = [description_prompt(i, 3) for i in ids]
    assert first == [description_prompt(i, 3) for i in ids]
    assert all(p in PLAIN_PROMPTS for p in first)
    assert len(set(first)) > 3
    assert first != [description_prompt(i, 4) for i in ids]
    # Independent of the order it is asked in.
    assert {i: description_prompt(i, 3) for i in reversed(ids)} == dict(
        zip(ids, first, strict=True)
    )


# --- run_infuse ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def instruct_data(tmp_path_factory) -> tuple[Path, Path, list[dict]]:
    """Shuffled instruction data: ids out of order, a shared image, a text-only sample."""
    root = tmp_path_factory.mktemp("infuse_data")
    images = root / "images"
    make_images(images, 4, seed=41)
    raw = [
        _raw("q-17", "img_0002.png", "What colour is the shape?"),
        _raw("a-03", "img_0000.png", "Where is the circle?"),
        _raw("text-1", None, "What is two plus two?"),
        _raw("m-99", "img_0003.png", "Is there a square?"),
        _raw("b-42", "img_0001.png", "Count the shapes."),
        _raw("c-05", "img_0002.png", "Is it noisy?"),
    ]
    atomic_write_json(root / "instruct.json", raw)
    return root / "instruct.json", images, raw


def _config(model, data, images, out, **overrides) -> InfuseConfig:
    values = dict(
        model=str(model),
        data=str(data),
        images=str(images),
        out=str(out),
        batch_size=4,
        max_new_tokens=6,
        seed=5,
    )
    values.update(overrides)
    return InfuseConfig(**values)


def _check_output(out: Path, raw: list[dict], seed: int) -> dict[str, str]:
    """The output keeps the input order; each image sample carries its own description."""
    written = json.loads(out.read_text())
    assert isinstance(written, list)
    assert [s["id"] for s in written] == [r["id"] for r in raw]
    partial = {row["id"]: row for row in read_jsonl(out.with_name(out.name + ".partial.jsonl"))}
    infused = read_instruct(out)
    for original, sample in zip(raw, infused, strict=True):
        if original.get("image") is None:
            assert sample.to_dict() == original
            assert sample.id not in partial
            continue
        description = partial[sample.id]["description"]
        question = original["conversations"][0]["value"].removeprefix("<image>\n")
        assert sample.conversations[0].value == (
            f"<image>\nImage description:\n{description}\n\n{question}"
        )
        assert [t.to_dict() for t in sample.conversations[1:]] == original["conversations"][1:]
        assert sample.image == original["image"]
        assert sample.infusion == {
            "description": description,
            "prompt": description_prompt(sample.id, seed),
        }
        assert partial[sample.id]["prompt"] == description_prompt(sample.id, seed)
    return {sid: row["description"] for sid, row in partial.items()}


def test_each_sample_gets_the_description_of_its_own_image(instruct_data, tmp_path, monkeypatch):
    """With a fake generator that names the image it was shown, the join is checkable."""
    data, images, raw = instruct_data
    seen = []

    def fake_generate(model, processor, requests, *, max_new_tokens, temperature=0.0, **_):
        seen.append([r.prompt for r in requests])
        return [
            Generation(f"an image of size {r.image.size[0]}x{r.image.size[1]}", "stop", 5)
            for r in requests
        ]

    class FakeModel:
        def eval(self):
            return self

    monkeypatch.setattr(stic.modeling.backends, "generate", fake_generate)
    for batch_size in (1, 4):
        out = tmp_path / f"b{batch_size}" / "infused.json"
        config = _config("fake/model", data, images, out, batch_size=batch_size)
        summary = run_infuse(config, model=FakeModel(), processor=None)
        assert (
            summary.items == 5
            and summary.details["infused"] == 5
            and summary.details["text_only"] == 1
        )
        descriptions = _check_output(out, raw, config.seed)
        for original in raw:
            if original.get("image"):
                with Image.open(images / original["image"]) as image:
                    size = image.size
                assert descriptions[original["id"]] == f"an image of size {size[0]}x{size[1]}"
    # Both runs asked the same prompts for the same samples.
    assert [len(call) for call in seen] == [1] * 5 + [4, 1]
    assert sorted(p for call in seen[:5] for p in call) == sorted(
        p for call in seen[5:] for p in call
    )


@pytest.fixture(scope="module")
def llava(tiny_model_factory) -> Path:
    return tiny_model_factory("llava")


def test_real_model_writes_infused_data_in_input_order(llava, instruct_data, tmp_path):
    data, images, raw = instruct_data
    out = tmp_path / "infused.json"
    config = _config(llava, data, images, out)
    summary = run_infuse(config)
    assert (summary.items, summary.made, summary.bad_items) == (5, 5, {})
    assert summary.details["infused"] == 5 and summary.details["text_only"] == 1
    _check_output(out, raw, config.seed)
    manifest = read_manifest(out)
    assert manifest["stage"] == "infuse" and manifest["status"] == "complete"
    # A complete rerun is skipped and rewrites nothing.
    before = out.read_bytes()
    mtime = out.stat().st_mtime_ns
    assert run_infuse(config).details["infused"] == 5
    assert out.read_bytes() == before and out.stat().st_mtime_ns == mtime


def test_resume_reuses_descriptions_from_the_partial_file(llava, instruct_data, tmp_path):
    data, images, raw = instruct_data
    out = tmp_path / "infused.json"
    partial = tmp_path / "infused.json.partial.jsonl"
    config = _config(llava, data, images, out)
    kept = {
        "id": "m-99",
        "description": "PRE-WRITTEN description, kept verbatim.",
        "prompt": description_prompt("m-99", config.seed),
        "finish": "stop",
    }
    # What a run killed after its first description leaves: a running manifest and the partial file.
    write_manifest(out, "infuse", config, "running")
    partial.write_text(json.dumps(kept) + "\n")
    run_infuse(config)
    rows = read_jsonl(partial)
    assert [r["id"] for r in rows].count("m-99") == 1
    assert rows[0] == kept
    assert sorted(r["id"] for r in rows) == sorted(r["id"] for r in raw if r.get("image"))
    infused = {s.id: s for s in read_instruct(out)}
    assert infused["m-99"].conversations[0].value == (
        "<image>\nImage description:\nPRE-WRITTEN description, kept verbatim.\n\nIs there a square?"
    )
    _check_output(out, raw, config.seed)


def test_torn_partial_line_is_dropped_and_redone(llava, instruct_data, tmp_path):
    data, images, raw = instruct_data
    out = tmp_path / "infused.json"
    partial = tmp_path / "infused.json.partial.jsonl"
    config = _config(llava, data, images, out)
    good = {"id": "a-03", "description": "kept", "prompt": "p", "finish": "stop"}
    write_manifest(out, "infuse", config, "running")
    partial.write_text(json.dumps(good) + "\n" + '{"id": "b-42", "descrip')
    run_infuse(config)
    rows = read_jsonl(partial)
    assert rows[0] == good
    assert [r["id"] for r in rows].count("b-42") == 1
    assert len(rows) == 5


def test_rerun_without_limit_infuses_the_samples_a_limited_run_left_out(
    llava, instruct_data, tmp_path
):
    """`limit` is a runtime field (not in the config hash): a complete limited run must not make
    the full run a no-op."""
    data, images, raw = instruct_data
    out = tmp_path / "infused.json"
    config = _config(llava, data, images, out)
    first = run_infuse(replace(config, limit=2))
    assert first.details["infused"] + first.details["text_only"] == 2
    assert len(read_instruct(out)) == 2
    run_infuse(config)
    assert [s.id for s in read_instruct(out)] == [r["id"] for r in raw]
    _check_output(out, raw, config.seed)
