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

Score (ChartQA's relaxed accuracy): when prediction and answer both parse as numbers (a trailing
``%`` divides by 100) and the answer is not 0, right when |pred - answer| / |answer| <= 0.05;
otherwise right on a case-insensitive exact match. Overall, human and augmented.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from stic.data.benchmarks.aggregate import by_category, mean_score
from stic.data.benchmarks.records import (
    BenchItem,
    BenchmarkDataError,
    ImageRef,
    Judge,
)
from stic.data.benchmarks.tables import find_file, image_file, image_from_cell, read_hub_rows
from stic.data.prompts import SHORT_ANSWER_INSTRUCTION
from stic.runtime.files import read_json

NAME = "chartqa"
MAX_NEW_TOKENS = 128  # LLaVA-1.5's short-answer default
METRICS = ("relaxed_accuracy", "human", "augmented")
PRIMARY = "relaxed_accuracy"
PROTOCOL = "LLaVA-1.5 short answer: '{question}\\n" + SHORT_ANSWER_INSTRUCTION + "'"
MAX_RELATIVE_ERROR = 0.05
KINDS = ("human", "augmented")


def _number(text: str) -> float | None:
    try:
        if text.endswith("%"):
            return float(text[:-1]) / 100
        return float(text)
    except ValueError:
        return None


def relaxed_correct(prediction: str, answer: str) -> bool:
    """ChartQA's rule (see the module docstring); both sides are stripped of surrounding spaces."""
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
        answers=(str(answer),),
        categories={"type": (kind,)},
    )


def read(data: str | Path, images: str | Path | None = None) -> list[BenchItem]:
    data = Path(data)
    rows = read_hub_rows(data, NAME, split="test", columns=("type", "question", "answer", "image"))
    if rows is not None:
        counts = dict.fromkeys(KINDS, 0)
        items = []
        for n, row in enumerate(rows):
            kind = row["type"].removesuffix("_test")
            if kind not in counts:
                raise BenchmarkDataError(
                    f"{NAME}: row {n} has type {row['type']!r}, not human_test/augmented_test"
                )
            items.append(
                _item(
                    kind,
                    counts[kind],
                    row["question"],
                    row["answer"],
                    image_from_cell(row["image"], data, NAME, str(n)),
                )
            )
            counts[kind] += 1
        return items
    human = find_file(
        data, ["test_human.json"], NAME, "give the ChartQA folder holding test/test_human.json"
    )
    augmented = human.parent / "test_augmented.json"
    if not augmented.is_file():
        raise BenchmarkDataError(f"{NAME}: {human.parent} lacks test_augmented.json")
    images = Path(images) if images is not None else human.parent / "png"
    items = []
    for kind, path in (("human", human), ("augmented", augmented)):
        for k, row in enumerate(read_json(path)):
            items.append(
                _item(
                    kind,
                    k,
                    row["query"],
                    row["label"],
                    image_file(NAME, path, f"{kind}_{k}", images, row["imgname"]),
                )
            )
    return items


def prompt(item: BenchItem) -> str:
    return f"{item.question}\n{SHORT_ANSWER_INSTRUCTION}"


def score(pairs: Sequence[tuple[BenchItem, str]], judge: Judge | None = None) -> list[dict]:
    return [
        {
            "id": item.id,
            "prediction": prediction,
            "extracted": prediction.strip(),
            "answer": item.answers[0],
            "score": float(relaxed_correct(prediction, item.answers[0])),
            "categories": {k: list(v) for k, v in item.categories.items()},
        }
        for item, prediction in pairs
    ]


def metrics_of(rows: Sequence[dict]) -> dict:
    return {"relaxed_accuracy": mean_score(rows)}


def summarize(rows: Sequence[dict]) -> dict:
    categories = by_category(rows, metrics_of)
    per_kind = categories.get("type", {})
    metrics = {
        "relaxed_accuracy": mean_score(rows),
        **{kind: per_kind.get(kind, {}).get("relaxed_accuracy", 0.0) for kind in KINDS},
    }
    return {"metrics": metrics, "categories": categories}
