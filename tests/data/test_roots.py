"""Image paths of user data stay inside their declared root, for every reader.

Escape forms: an absolute path, ``..`` that climbs out, and a symbolic link (inside the root)
whose target lies outside. Each is refused with one line naming the record; a path inside the
root (a link included) is read. Hub tables whose image cells hold a path resolve it against
the data folder, never the current directory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stic.data.benchmarks import BenchmarkDataError, read_benchmark
from stic.data.schemas import RecordError, read_eval_items, read_instruct
from stic.runtime.images import resolve_image_path, scan_images
from stic.stages.batches import load_batch_images
from stic.stages.training import require_images
from tests.data.bench_fixtures import write_json, write_jsonl, write_png

TEN = ["stop"] * 10


# Each builder writes one question whose image path is ``image`` (the file name as the record
# holds it) and returns (data, images root, what the record is called in errors).
def _scienceqa(tmp, image):
    problems = {
        "7": {"question": "q?", "choices": ["a", "b"], "answer": 0, "hint": "", "image": image}
    }
    write_json(tmp / "sqa" / "problems.json", problems)
    write_json(tmp / "sqa" / "pid_splits.json", {"test": ["7"]})
    # ScienceQA's files sit at <pid>/<image>: the root is the images folder, the record "7/..."
    return tmp / "sqa", tmp / "sqa" / "images" / "test" / "7", "record 7"


def _textvqa(tmp, image):
    stem = image.removesuffix(".jpg")
    row = {"question_id": 5, "question": "q?", "image_id": stem, "answers": TEN}
    write_json(tmp / "tv" / "TextVQA_0.5.1_val.json", {"data": [row]})
    return tmp / "tv", tmp / "tv" / "train_images", "record 5"


def _chartqa(tmp, image):
    write_json(tmp / "cq" / "test_human.json", [{"imgname": image, "query": "q?", "label": "1"}])
    write_json(
        tmp / "cq" / "test_augmented.json", [{"imgname": image, "query": "q?", "label": "2"}]
    )
    return tmp / "cq", tmp / "cq" / "png", "record human_0"


def _mathvista(tmp, image):
    problem = {
        "question": "q?",
        "answer": "1",
        "question_type": "free_form",
        "answer_type": "integer",
        "image": image,
        "query": "q?",
        "precision": None,
        "unit": None,
        "choices": None,
        "metadata": {"task": "math word problem"},
    }
    write_json(tmp / "mv" / "data" / "testmini.json", {"3": problem})
    return tmp / "mv" / "data", tmp / "mv" / "data", "record 3"


def _llava_bench(tmp, image):
    root = tmp / "lb"
    write_jsonl(
        root / "questions.jsonl",
        [{"question_id": 0, "image": image, "text": "q?", "category": "conv"}],
    )
    write_jsonl(root / "answers_gpt4.jsonl", [{"question_id": 0, "text": "a"}])
    write_jsonl(root / "context.jsonl", [{"image": image, "caption": "c"}])
    return root, root / "images", "record 0"


def _mmvet(tmp, image):
    record = {"imagename": image, "question": "q?", "answer": "a", "capability": ["rec"]}
    write_json(tmp / "mmvet" / "mm-vet.json", {"v1_0": record})
    return tmp / "mmvet", tmp / "mmvet" / "images", "record v1_0"


def _pope(tmp, image):
    row = {"question_id": 9, "image": image, "text": "q?", "label": "yes"}
    write_jsonl(tmp / "pope" / "coco_pope_random.json", [row])
    return tmp / "pope", tmp / "pope" / "val2014", "record 9"


ORIGINAL = {
    "scienceqa_img": _scienceqa,
    "textvqa": _textvqa,
    "chartqa": _chartqa,
    "mathvista_testmini": _mathvista,
    "llava_bench_wild": _llava_bench,
    "mmvet": _mmvet,
    "pope_random": _pope,
}


def _escape(tmp: Path, root: Path, form: str) -> str:
    """The image path of escape ``form`` for a record whose images live in ``root``."""
    outside = write_png(tmp / "outside" / "secret.jpg")
    if form == "absolute":
        return str(outside)
    if form == "dotdot":
        depth = len(root.relative_to(tmp).parts)
        return "/".join([".."] * depth) + "/outside/secret.jpg"
    root.mkdir(parents=True, exist_ok=True)
    (root / "link.jpg").symlink_to(outside)
    return "link.jpg"


@pytest.mark.parametrize("form", ["absolute", "dotdot", "symlink"])
@pytest.mark.parametrize("name", sorted(ORIGINAL))
def test_original_form_refuses_paths_leaving_the_root(tmp_path, name, form):
    data, root, record = ORIGINAL[name](tmp_path, "probe.jpg")  # where the root is
    image = _escape(tmp_path, root, form)
    data, root, record = ORIGINAL[name](tmp_path, image)
    for need_images in (True, False):  # refused by bench score as well, which reads no pixel
        with pytest.raises(BenchmarkDataError) as excinfo:
            read_benchmark(name, data, need_images=need_images)
        message = str(excinfo.value)
        assert "\n" not in message and record in message
        assert "absolute" in message if form == "absolute" else "image folder" in message


@pytest.mark.parametrize("name", sorted(ORIGINAL))
def test_original_form_reads_paths_inside_the_root(tmp_path, name):
    data, root, _ = ORIGINAL[name](tmp_path, "sub/pic.jpg")
    write_png(root / "sub" / "real.jpg")
    (root / "sub" / "pic.jpg").symlink_to(root / "sub" / "real.jpg")  # a link that stays inside
    item = read_benchmark(name, data)[0]  # ChartQA: a human and an augmented record
    assert Path(item.image.path) == root / "sub" / "pic.jpg"
    assert item.image.load().size == (8, 8)


# Hub tables: one row per benchmark, image cell {bytes: None, path: ...}.
def _hub_row(name: str, image: str) -> tuple[str, dict]:
    cell = {"bytes": None, "path": image}
    rows = {
        "scienceqa_img": (
            "ScienceQA-IMG/test-00000-of-00001.parquet",
            {"image": cell, "question": "q?", "choices": ["a", "b"], "answer": 0, "hint": ""},
        ),
        "textvqa": (
            "data/validation-00000-of-00001.parquet",
            {"question_id": "1", "question": "q?", "image": cell, "answers": TEN},
        ),
        "chartqa": (
            "data/test-00000-of-00001.parquet",
            {"type": "human_test", "question": "q?", "answer": "1", "image": cell},
        ),
        "mmbench_en_dev": (
            "en/dev-00000-of-00001.parquet",
            {
                "index": 0,
                "question": "q?",
                "A": "a",
                "B": "b",
                "answer": "A",
                "category": "c",
                "image": cell,
            },
        ),
        "mathvista_testmini": (
            "data/testmini-00000-of-00001.parquet",
            {
                "pid": "1",
                "question": "q?",
                "answer": "1",
                "question_type": "free_form",
                "answer_type": "integer",
                "query": "q?",
                "image": cell,
            },
        ),
        "llava_bench_wild": (
            "data/train-00000-of-00001.parquet",
            {
                "question_id": "0",
                "question": "q?",
                "image": cell,
                "caption": "c",
                "gpt_answer": "a",
                "category": "conv",
            },
        ),
        "mmvet": (
            "data/test-00000-of-00001.parquet",
            {
                "question_id": "v1_0",
                "question": "q?",
                "answer": "a",
                "capability": "rec",
                "image": cell,
            },
        ),
        "pope_random": (
            "data/test-00000-of-00001.parquet",
            {
                "question_id": "1",
                "question": "q?",
                "answer": "yes",
                "image": cell,
                "category": "random",
            },
        ),
    }
    return rows[name]


def _hub(tmp: Path, name: str, image: str) -> Path:
    shard, row = _hub_row(name, image)
    path = tmp / "hub" / shard
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist([row]), path)
    return tmp / "hub"


HUB = sorted(ORIGINAL) + ["mmbench_en_dev"]


@pytest.mark.parametrize("name", sorted(HUB))
def test_hub_paths_resolve_against_the_data_folder(tmp_path, monkeypatch, name):
    data = _hub(tmp_path, name, "pics/a.jpg")
    write_png(data / "pics" / "a.jpg")
    elsewhere = tmp_path / "cwd"
    write_png(elsewhere / "pics" / "a.jpg", shade=200)  # what a cwd-relative reading would find
    monkeypatch.chdir(elsewhere)
    (item,) = read_benchmark(name, data)
    assert Path(item.image.path) == data / "pics" / "a.jpg"
    assert item.image.load().getpixel((0, 0))[0] == 0  # the data folder's picture


@pytest.mark.parametrize("form", ["absolute", "dotdot", "symlink"])
@pytest.mark.parametrize("name", sorted(HUB))
def test_hub_paths_leaving_the_data_folder_refused(tmp_path, name, form):
    image = _escape(tmp_path, tmp_path / "hub", form)
    data = _hub(tmp_path, name, image)
    with pytest.raises(BenchmarkDataError) as excinfo:
        read_benchmark(name, data, need_images=False)
    assert "\n" not in str(excinfo.value) and "image path" in str(excinfo.value)


# Pairs, instruction data and VQA files: the training stages check every record's image
# (require_images, also used for DPO's pairs) and the generation stages load each through
# resolve_image_path; the same three forms are refused there.
@pytest.mark.parametrize("form", ["absolute", "dotdot", "symlink"])
def test_record_readers_refuse_paths_leaving_the_root(tmp_path, form):
    root = tmp_path / "images"
    image = _escape(tmp_path, root, form)
    with pytest.raises(ValueError, match="absolute" if form == "absolute" else "image folder"):
        resolve_image_path(root, image)
    turns = [{"from": "human", "value": "<image>q"}, {"from": "gpt", "value": "a"}]
    sft = write_json(tmp_path / "sft.json", [{"id": "s1", "image": image, "conversations": turns}])
    samples = read_instruct(sft)
    with pytest.raises(RecordError) as excinfo:
        require_images(str(root), [(f"{sft}[0]", s.image) for s in samples])
    assert str(excinfo.value).startswith(f"{sft}[0]: image path") and "\n" not in str(excinfo.value)
    vqa = write_jsonl(
        tmp_path / "vqa.jsonl", [{"id": "q1", "image": image, "question": "q?", "answer": "a"}]
    )

    class Stage:  # what load_batch_images reads of a generation stage
        load_image = None
        image_of = staticmethod(lambda item: item.image)
        item_id = staticmethod(lambda item: item.id)

    bad: dict[str, str] = {}
    kept, _ = load_batch_images(Stage, read_eval_items(vqa), str(root), bad)
    assert kept == [] and "image path" in bad["q1"]


def test_image_scan_leaves_out_links_that_lead_outside(tmp_path):
    root = tmp_path / "images"
    write_png(root / "inside.jpg")
    (root / "same.jpg").symlink_to(root / "inside.jpg")
    _escape(tmp_path, root, "symlink")
    scan = scan_images(root)
    assert scan.ids == ["inside.jpg", "same.jpg"]
    assert "outside the image folder" in scan.skipped["link.jpg"]


def test_bench_score_needs_no_images(tmp_path, capsys):
    from stic.tools.bench_score import main

    data, root, _ = _pope(tmp_path, "COCO_val2014_1.jpg")
    assert not root.exists()
    with pytest.raises(BenchmarkDataError, match="1 of 1 images not found"):
        read_benchmark("pope_random", data)  # generation needs them
    predictions = write_jsonl(tmp_path / "p.jsonl", [{"id": "9", "prediction": "Yes"}])
    out = tmp_path / "out" / "pope_random.json"
    args = ["--benchmark", "pope_random", "--data", str(data), "--predictions", str(predictions)]
    assert main([*args, "--out", str(out)]) == 0
    assert json.loads(out.read_text())["metrics"]["accuracy"] == 100.0
    assert os.listdir(tmp_path / "out")


def test_image_folder_that_is_itself_a_link_is_fine(tmp_path):
    # A common layout: val2014 -> /datasets/coco/val2014. The root is resolved too.
    write_png(tmp_path / "datasets" / "coco" / "COCO_val2014_1.jpg")
    data, root, _ = _pope(tmp_path, "COCO_val2014_1.jpg")
    root.symlink_to(tmp_path / "datasets" / "coco")
    (item,) = read_benchmark("pope_random", data)
    assert item.image.load().size == (8, 8)
