"""POPE (object hallucination, COCO val2014): three splits of 3,000 yes/no questions.

Formats read:
- original: ``coco_pope_{split}.json`` (one JSON object a line: ``question_id``, ``image``
  (a COCO val2014 file name), ``text``, ``label``) plus the COCO val2014 image folder
  (``--images``; default ``val2014/`` beside the file);
- hub: the ``lmms-lab/POPE`` parquet shards of split ``test`` (columns ``question_id``,
  ``question``, ``answer``, ``image``, ``category``; ``category`` selects the split).

Item ids are POPE's ``question_id`` (unique within a split, not across splits).

Scoring follows LLaVA's ``eval_pope.py``: keep the text before the first period, drop commas,
split on single spaces (the reply is not stripped: ``"No\\n"`` is one word, not ``No``); the
answer is "no" if a word is ``no``, ``not`` or ``No``, else "yes". Per
split: accuracy, precision, recall, F1 (positive class: yes) and ``yes_ratio``, the share of
PREDICTED yes (lmms-eval v0.7.2 reports the ground truth's share under that name).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from stic.data.benchmarks.aggregate import percent
from stic.data.benchmarks.records import BenchItem, BenchmarkDataError, Judge
from stic.data.benchmarks.tables import (
    checked,
    find_file,
    image_file,
    image_from_cell,
    one_of,
    read_hub_rows,
    read_json_lines,
    unique_ids,
)
from stic.data.prompts import SHORT_ANSWER_INSTRUCTION

SPLITS = ("adversarial", "popular", "random")
MAX_NEW_TOKENS = 128  # LLaVA-1.5's model_vqa_loader default, used for its POPE run
METRICS = ("accuracy", "precision", "recall", "f1", "yes_ratio")
PRIMARY = "f1"
PROTOCOL = "LLaVA-1.5 short-answer prompt: '{question}\\n" + SHORT_ANSWER_INSTRUCTION + "'"


LABELS = ("yes", "no")
IMAGES_HINT = "the COCO val2014 image folder"


def _qid(name: str, where, number: int, row) -> str:
    return str(checked(name, where, f"#{number}", row, "question_id", (int, str)))


def read(data: str | Path, images: str | Path | None, split: str) -> list[BenchItem]:
    """The questions of one POPE split, from the hub parquet or the original JSON lines.

    Every record is checked: ``question_id`` an integer or string, unique in the split; the
    question and image name strings; the label exactly ``yes`` or ``no`` (LLaVA's script counts
    any other label as yes, so a ``No`` or ``maybe`` would be scored silently wrong).
    """
    name = f"pope_{split}"
    data = Path(data)
    rows = read_hub_rows(
        data, name, split="test", columns=("question_id", "question", "answer", "image", "category")
    )
    if rows is not None:
        kept = [
            (n, row)
            for n, row in enumerate(rows)
            if checked(name, data, f"row {n}", row, "category", (str,)) == split
        ]
        if not kept:
            raise BenchmarkDataError(f"{name}: {data} has no rows with category {split!r}")
        ids = [_qid(name, data, n, row) for n, row in kept]
        unique_ids(name, data, ids)
        return [
            BenchItem(
                id=qid,
                image=image_from_cell(row["image"], data, name, qid),
                question=checked(name, data, qid, row, "question", (str,)),
                answers=(one_of(name, data, qid, row, "answer", LABELS),),
                meta={"split": split},
            )
            for qid, (_, row) in zip(ids, kept, strict=True)
        ]
    path = find_file(
        data,
        [f"coco_pope_{split}.json", f"coco_pope_{split}.jsonl"],
        name,
        "give the POPE question file or its folder",
    )
    images = Path(images) if images is not None else path.parent / "val2014"
    rows = read_json_lines(path, name)
    ids = [_qid(name, path, n, row) for n, row in enumerate(rows, start=1)]
    unique_ids(name, path, ids)
    return [
        BenchItem(
            id=qid,
            image=image_file(
                name, path, qid, images, checked(name, path, qid, row, "image", (str,))
            ),
            question=checked(name, path, qid, row, "text", (str,)),
            answers=(one_of(name, path, qid, row, "label", LABELS),),
            meta={"split": split},
        )
        for qid, row in zip(ids, rows, strict=True)
    ]


def prompt(item: BenchItem) -> str:
    return f"{item.question}\n{SHORT_ANSWER_INSTRUCTION}"


def extract_yes_no(prediction: str) -> str:
    """ "yes" or "no" by LLaVA's POPE rule (see the module docstring).

    "Yes, there is." -> "yes"; "No." -> "no"; "There is not a dog" -> "no"; "NO" -> "yes" (the
    rule looks for the words ``no``, ``No`` and ``not`` only).
    """
    text = prediction  # not stripped, as officially: "No\n" is the word "No\n", not "No"
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if {"no", "No", "not"} & set(words) else "yes"


def score(pairs: Sequence[tuple[BenchItem, str]], judge: Judge | None = None) -> list[dict]:
    rows = []
    for item, prediction in pairs:
        extracted = extract_yes_no(prediction)
        rows.append(
            {
                "id": item.id,
                "prediction": prediction,
                "extracted": extracted,
                "answer": item.answers[0],
                "score": float(extracted == item.answers[0]),
                "categories": {},
            }
        )
    return rows


def metrics_of(rows: Sequence[dict]) -> dict:
    """Accuracy, precision, recall, F1 and the predicted-yes share, in percent."""
    tp = sum(r["extracted"] == "yes" and r["answer"] == "yes" for r in rows)
    fp = sum(r["extracted"] == "yes" and r["answer"] == "no" for r in rows)
    fn = sum(r["extracted"] == "no" and r["answer"] == "yes" for r in rows)
    tn = sum(r["extracted"] == "no" and r["answer"] == "no" for r in rows)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": percent(tp + tn, len(rows)),
        "precision": percent(precision, 1),
        "recall": percent(recall, 1),
        "f1": percent(f1, 1),
        "yes_ratio": percent(tp + fp, len(rows)),
    }


def summarize(rows: Sequence[dict]) -> dict:
    return {"metrics": metrics_of(rows), "categories": {}}
