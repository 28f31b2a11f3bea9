"""Evaluation (stic.stages.evaluate): prompts, describe-and-respond, scoring and the results file."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import stic.modeling.backends
import stic.stages.evaluate
from stic.config import EvalConfig
from stic.data.prompts import DAR_DESCRIBE_PROMPT, question_prompt
from stic.modeling.generation import Generation
from stic.runtime.images import load_image
from stic.runtime.manifests import read_manifest
from stic.stages.evaluate import run_eval
from stic.testing import make_images

# (item, what the fake model answers, whether that answer is right)
ITEMS = [
    ({"id": "q1", "image": "img_0000.png", "question": "How many shapes?", "answer": "two"}, "2", True),
    ({"id": "q2", "image": "img_0001.png", "question": "What colour?", "answer": "red"}, "Blue.", False),
    (
        {
            "id": "mc1",
            "image": "img_0002.png",
            "question": "What is shown?",
            "choices": ["a shape", "a person", "a car"],
            "answer": "B",
        },
        "(B) a person",
        True,
    ),
    (
        {
            "id": "mc2",
            "image": "img_0000.png",
            "question": "Which colour dominates?",
            "choices": ["green", "blue"],
            "answer": "A",
        },
        "B",
        False,
    ),
    ({"id": "q3", "image": "img_0001.png", "question": "Is it a picture?", "answer": "yes"}, "Yes.", True),
]  # fmt: skip
ANSWERS = {item["question"]: answer for item, answer, _ in ITEMS}


@pytest.fixture(scope="module")
def vqa(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("vqa")
    make_images(root / "images", 3, seed=51)
    (root / "vqa.jsonl").write_text("".join(json.dumps(item) + "\n" for item, _, _ in ITEMS))
    return root / "vqa.jsonl", root / "images"


class FakeModel:
    def eval(self):
        return self


@pytest.fixture
def scripted(monkeypatch):
    """The HF backend's generate replaced: describes by image size, answers by the question."""
    calls: list[dict] = []

    def fake_generate(model, processor, requests, **kwargs):
        calls.append({"requests": list(requests), **kwargs})
        out = []
        for request in requests:
            if request.prompt == DAR_DESCRIBE_PROMPT:
                w, h = request.image.size
                out.append(Generation(f"DESC {w}x{h}", "stop", 3))
            else:
                question = next(q for q in ANSWERS if q in request.prompt)
                out.append(Generation(ANSWERS[question], "stop", 2))
        return out

    monkeypatch.setattr(stic.modeling.backends, "generate", fake_generate)
    return calls


def _config(data, images, out, **overrides) -> EvalConfig:
    values = dict(
        model="fake/model",
        data=str(data),
        images=str(images),
        out=str(out),
        batch_size=8,
        max_new_tokens=7,
        dar_max_new_tokens=9,
    )
    values.update(overrides)
    return EvalConfig(**values)


def _pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.uint8)


def test_plain_eval_prompts_scoring_and_results(vqa, tmp_path, scripted):
    data, images = vqa
    out = tmp_path / "results.json"
    summary = run_eval(_config(data, images, out), model=FakeModel(), processor=None)
    assert len(scripted) == 1
    call = scripted[0]
    # Greedy: no temperature (generate's default is 0) or an explicit 0.
    assert call.get("temperature", 0) == 0
    assert call["max_new_tokens"] == 7
    for (item, _, _), request in zip(ITEMS, call["requests"], strict=True):
        assert request.prompt == question_prompt(item["question"], item.get("choices"))
        assert np.array_equal(_pixels(request.image), _pixels(load_image(images / item["image"])))
    assert summary.details["n"] == 5 and summary.details["correct"] == 3
    assert summary.details["accuracy"] == pytest.approx(0.6)
    results = json.loads(out.read_text())
    assert results["accuracy"] == pytest.approx(0.6) and results["n"] == 5
    assert results["dar"] is False and results["adapter"] is None
    by_id = {r["id"]: r for r in results["items"]}
    for item, answer, right in ITEMS:
        record = by_id[item["id"]]
        assert record["prediction"] == answer
        assert record["correct"] is right
        assert record["answer"] == item["answer"]
        assert record["question"] == item["question"]
        assert "description" not in record
    assert read_manifest(out)["status"] == "complete"


def test_multiple_choice_prompt_letters_the_choices(vqa, tmp_path, scripted):
    data, images = vqa
    run_eval(_config(data, images, tmp_path / "r.json"), model=FakeModel(), processor=None)
    prompts = {r.prompt.split("\n")[0]: r.prompt for r in scripted[0]["requests"]}
    assert prompts["What is shown?"] == (
        "What is shown?\nA. a shape\nB. a person\nC. a car\n"
        "Answer with the option's letter from the given choices directly."
    )
    assert prompts["How many shapes?"] == (
        "How many shapes?\nAnswer the question using a single word or phrase."
    )


def test_instruction_override(vqa, tmp_path, scripted):
    data, images = vqa
    run_eval(
        _config(data, images, tmp_path / "r.json", instruction=""),
        model=FakeModel(),
        processor=None,
    )
    prompts = [r.prompt for r in scripted[0]["requests"]]
    assert prompts[0] == "How many shapes?"
    assert prompts[2] == "What is shown?\nA. a shape\nB. a person\nC. a car"


def test_describe_and_respond_passes_the_image_in_both_steps(vqa, tmp_path, scripted):
    """Reference-code defect 4: the description step was run without the image."""
    data, images = vqa
    out = tmp_path / "dar.json"
    summary = run_eval(_config(data, images, out, dar=True), model=FakeModel(), processor=None)
    assert len(scripted) == 2
    describe, answer = scripted
    assert describe["max_new_tokens"] == 9 and answer["max_new_tokens"] == 7
    assert describe.get("temperature", 0) == 0 and answer.get("temperature", 0) == 0
    assert all(r.prompt == DAR_DESCRIBE_PROMPT for r in describe["requests"])
    assert DAR_DESCRIBE_PROMPT == "Detail the composition and subjects within the frame."
    by_id = {r["id"]: r for r in json.loads(out.read_text())["items"]}
    for (item, _, _), step1, step2 in zip(
        ITEMS, describe["requests"], answer["requests"], strict=True
    ):
        clean = _pixels(load_image(images / item["image"]))
        assert step1.image is not None and step2.image is not None
        assert np.array_equal(_pixels(step1.image), clean)
        assert np.array_equal(_pixels(step2.image), clean)
        description = f"DESC {step1.image.size[0]}x{step1.image.size[1]}"
        assert step2.prompt == (
            f"Image description:\n{description}\n\n"
            + question_prompt(item["question"], item.get("choices"))
        )
        assert by_id[item["id"]]["description"] == description
    assert (
        summary.details["n"] == 5
        and summary.details["correct"] == 3
        and summary.details["dar"] is True
    )


def test_missing_image_is_skipped_and_not_counted(vqa, tmp_path, scripted):
    data, images = vqa
    rows = [item for item, _, _ in ITEMS] + [
        {"id": "gone", "image": "missing.png", "question": "How many shapes?", "answer": "2"}
    ]
    data = tmp_path / "vqa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = run_eval(
        _config(data, images, tmp_path / "r.json"), model=FakeModel(), processor=None
    )
    assert summary.details["n"] == 5 and summary.details["correct"] == 3
    assert list(summary.bad_items) == ["gone"]
    assert "missing.png" in summary.bad_items["gone"]


def test_rerun_without_limit_answers_the_items_a_limited_run_left_out(vqa, tmp_path, scripted):
    """`limit` is a runtime field (not in the config hash): a complete limited run must not make
    the full run return the limited result."""
    data, images = vqa
    config = _config(data, images, tmp_path / "r.json")
    assert run_eval(replace(config, limit=2), model=FakeModel(), processor=None).details["n"] == 2
    summary = run_eval(config, model=FakeModel(), processor=None)
    assert summary.details["n"] == 5
    assert json.loads((tmp_path / "r.json").read_text())["n"] == 5


@pytest.mark.parametrize("dar", [False, True])
def test_real_model_results_file(tiny_model_factory, vqa, tmp_path, dar):
    data, images = vqa
    out = tmp_path / "results.json"
    config = _config(
        data, images, out, model=str(tiny_model_factory("llava")), dar=dar, batch_size=3
    )
    summary = run_eval(config)
    results = json.loads(out.read_text())
    assert results["n"] == summary.details["n"] == len(ITEMS)
    assert results["correct"] == sum(r["correct"] for r in results["items"])
    assert results["accuracy"] == pytest.approx(results["correct"] / results["n"])
    assert [r["id"] for r in results["items"]] == [item["id"] for item, _, _ in ITEMS]
    for record in results["items"]:
        assert isinstance(record["prediction"], str)
        assert isinstance(record["correct"], bool)
        assert ("description" in record) is dar
        if dar:
            assert isinstance(record["description"], str)
    manifest = read_manifest(out)
    assert manifest["stage"] == "eval" and manifest["status"] == "complete"
    assert manifest["config"]["dar"] is dar
    # Greedy decoding: a second run from scratch gives the same predictions.
    again = tmp_path / "again.json"
    run_eval(replace(config, out=str(again), batch_size=1))
    assert [r["prediction"] for r in json.loads(again.read_text())["items"]] == [
        r["prediction"] for r in results["items"]
    ]
