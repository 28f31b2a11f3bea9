"""ChartQA (test, 2,500 questions: 1,250 human-written, 1,250 augmented): relaxed accuracy.

Formats read:
- original: ``test/test_human.json`` and ``test/test_augmented.json`` (lists of ``{"imgname",
  "query", "label"}``) with the charts in ``test/png/`` (``--images`` names that folder);
- hub: ``lmms-lab/ChartQA`` split ``test`` (``type`` = ``human_test``/``augmented_test``,
  ``question``, ``answer``, ``image``).

ChartQA has no question ids: an item's id is ``human_<k>`` or ``augmented_<k>``, its position
among the questions of its kind in file order (the same in both formats when the hub rows keep
the release order).

Prompt: LLaVA-1.5's short-answer family (LLaVA-1.5 has no ChartQA script).

Score (ChartQA's relaxed accuracy, as lmms-eval's ``relaxed_correctness`` computes it): the
prediction and the answer are compared as they are, unstripped. When both parse as numbers
(Python's ``float``, after trailing ``%`` signs are removed, which divides by 100) and the answer
is not 0, right when |pred - answer| / |answer| <= 0.05; otherwise right on a case-insensitive
exact match. Quirks kept, because the official rule has them: ``float`` reads surrounding
whitespace, ``1_00``, ``1e2`` and full-width digits, so ``" 100"`` is right for ``100``, while a
text answer with a leading space or a trailing newline after ``%`` is wrong; ``inf`` and ``nan``
are numbers that are never within 5% (so ``nan`` is wrong even against ``nan``).
``tests/data/test_official_chartqa.py`` holds the official verdicts this reproduces.

Metrics: ``relaxed_accuracy`` overall, ``human`` and ``augmented``; ``relaxed_accuracy_stripped``
is a second metric, not the official one: the same rule on prediction and answer stripped of
surrounding whitespace (what stic scored before; see docs/benchmarks.md's deviations table).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from stic.data.benchmarks.aggregate import by_category, mean_score, percent
from stic.data.benchmarks.records import (
    BenchItem,
    BenchmarkDataError,
    ImageRef,
    Judge,
)
from stic.data.benchmarks.tables import (
    bad_record,
    checked,
    find_file,
    image_file,
    image_from_cell,
    read_hub_rows,
)
from stic.data.prompts import SHORT_ANSWER_INSTRUCTION
from stic.runtime.files import read_json

NAME = "chartqa"
MAX_NEW_TOKENS = 128  # LLaVA-1.5's short-answer default
METRICS = ("relaxed_accuracy", "human", "augmented", "relaxed_accuracy_stripped")
PRIMARY = "relaxed_accuracy"
PROTOCOL = "LLaVA-1.5 short answer: '{question}\\n" + SHORT_ANSWER_INSTRUCTION + "'"
MAX_RELATIVE_ERROR = 0.05
KINDS = ("human", "augmented")
HEADLINE = "official: lmms-eval relaxed_correctness on the unstripped reply"


def _number(text: str) -> float | None:
    """``text`` as the official rule reads a number: ``float`` of it, and ``x%`` as x / 100."""
    try:
        if text.endswith("%"):
            return float(text.rstrip("%")) / 100
        return float(text)
    except ValueError:
        return None


def relaxed_correct(prediction: str, answer: str, strip: bool = False) -> bool:
    """ChartQA's rule (see the module docstring); ``strip`` first strips both sides (the
    ``relaxed_accuracy_stripped`` metric). Non-finite numbers compare False, never raise."""
    if strip:
        prediction, answer = prediction.strip(), answer.strip()
    predicted, target = _number(prediction), _number(answer)
    if predicted is not None and target:
        return abs(predicted - target) / abs(target) <= MAX_RELATIVE_ERROR
    return prediction.lower() == answer.lower()


def _item(kind: str, k: int, question: str, answer: str, image: ImageRef) -> BenchItem:
    return BenchItem(
        id=f"{kind}_{k}",
        image=image,
        question=question,
        answers=(answer,),
        categories={"type": (kind,)},
    )


def _text(where: object, record: str, row: object, key: str) -> str:
    """``row[key]`` as a non-empty string, else one line naming file, record and problem.
    (Questions and answers need only be strings: an empty answer is scored as officially.)"""
    value = checked(NAME, where, record, row, key, (str,))
    if not value.strip():
        raise bad_record(NAME, where, record, f"{key!r} is empty")
    return value


def _hub_items(data: Path, rows: list[dict]) -> list[BenchItem]:
    if not rows:
        raise BenchmarkDataError(f"{NAME}: {data}: holds no records")
    counts = dict.fromkeys(KINDS, 0)
    items = []
    for n, row in enumerate(rows):
        record = f"#{n}"
        kind = checked(NAME, data, record, row, "type", (str,)).removesuffix("_test")
        if kind not in counts:
            raise bad_record(
                NAME, data, record, f"type {row['type']!r} is not human_test or augmented_test"
            )
        question = checked(NAME, data, record, row, "question", (str,))
        answer = checked(NAME, data, record, row, "answer", (str,))
        try:
            image = image_from_cell(row["image"], data, NAME, record)
        except BenchmarkDataError as error:
            if "image path" in str(error):  # a path that leaves the data folder: say so
                raise
            raise bad_record(NAME, data, record, "has no image") from None
        items.append(_item(kind, counts[kind], question, answer, image))
        counts[kind] += 1
    return items


def _original_rows(path: Path) -> list:
    try:
        rows = read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BenchmarkDataError(f"{NAME}: {path}: not valid JSON ({e})") from e
    if not isinstance(rows, list):
        raise BenchmarkDataError(
            f"{NAME}: {path}: is a JSON {type(rows).__name__}, not a list of questions"
        )
    if not rows:
        raise BenchmarkDataError(f"{NAME}: {path}: holds no records")
    return rows


def read(data: str | Path, images: str | Path | None = None) -> list[BenchItem]:
    data = Path(data)
    rows = read_hub_rows(data, NAME, split="test", columns=("type", "question", "answer", "image"))
    if rows is not None:
        return _hub_items(data, rows)
    human = find_file(
        data, ["test_human.json"], NAME, "give the ChartQA folder holding test/test_human.json"
    )
    augmented = human.parent / "test_augmented.json"
    if not augmented.is_file():
        raise BenchmarkDataError(f"{NAME}: {human.parent} lacks test_augmented.json")
    images = Path(images) if images is not None else human.parent / "png"
    items = []
    for kind, path in (("human", human), ("augmented", augmented)):
        for k, row in enumerate(_original_rows(path)):
            record = f"#{k}"
            question = checked(NAME, path, record, row, "query", (str,))
            answer = checked(NAME, path, record, row, "label", (str,))
            image = image_file(
                NAME, path, f"{kind}_{k}", images, _text(path, record, row, "imgname")
            )
            items.append(_item(kind, k, question, answer, image))
    return items


def prompt(item: BenchItem) -> str:
    return f"{item.question}\n{SHORT_ANSWER_INSTRUCTION}"


def score(pairs: Sequence[tuple[BenchItem, str]], judge: Judge | None = None) -> list[dict]:
    return [
        {
            "id": item.id,
            "prediction": prediction,
            "extracted": prediction,
            "answer": item.answers[0],
            "score": float(relaxed_correct(prediction, item.answers[0])),
            "score_stripped": float(relaxed_correct(prediction, item.answers[0], strip=True)),
            "categories": {k: list(v) for k, v in item.categories.items()},
        }
        for item, prediction in pairs
    ]


def _stripped(rows: Sequence[dict]) -> float:
    return percent(sum(row["score_stripped"] for row in rows), len(rows))


def metrics_of(rows: Sequence[dict]) -> dict:
    return {
        "relaxed_accuracy": mean_score(rows),
        "relaxed_accuracy_stripped": _stripped(rows),
    }


def summarize(rows: Sequence[dict]) -> dict:
    categories = by_category(rows, metrics_of)
    per_kind = categories.get("type", {})
    metrics = {
        "relaxed_accuracy": mean_score(rows),
        **{kind: per_kind.get(kind, {}).get("relaxed_accuracy", 0.0) for kind in KINDS},
        "relaxed_accuracy_stripped": _stripped(rows),
    }
    return {
        "metrics": metrics,
        "categories": categories,
        "headline": {
            "relaxed_accuracy": HEADLINE,
            "relaxed_accuracy_stripped": "stic: the same rule on stripped reply and answer",
        },
    }
