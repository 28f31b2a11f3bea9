"""MM-Vet (218 questions): open-ended answers graded 0-1 by a judge, averaged per capability.

Formats read:
- original: ``mm-vet.json`` (``{"v1_0": {"imagename", "capability", "question", "answer"}}``)
  and ``images/`` (``--images``);
- hub: ``lmms-lab/MMVet`` split ``test`` (``question_id``, ``question``, ``answer``,
  ``capability``, ``image``).

Prompt: the raw question (LLaVA-1.5's open-ended protocol), up to 1024 new tokens.

Score (MM-Vet's evaluator): a judge compares the prediction with the ground truth (which may use
``<AND>``/``<OR>``) and completes a few-shot table with a correctness score from 0.0 to 1.0; the
first token of its reply must parse as a number in [0, 1], else it is asked again (at a higher
temperature). Score = 100 x mean, overall and per capability (an item counts toward each of its
capabilities). The few-shot prompt is ours, written to the structure of MM-Vet's (see
docs/benchmarks.md); its version is recorded with the results.
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
    JudgePrompt,
    check_image_files,
)
from stic.data.benchmarks.tables import find_file, image_from_cell, read_hub_rows
from stic.runtime.files import read_json

NAME = "mmvet"
MAX_NEW_TOKENS = 1024  # LLaVA's model_vqa default for open-ended answers
METRICS = ("score",)
PRIMARY = "score"
JUDGE = "required"
JUDGE_PROMPT_VERSION = "stic-mmvet-v1"
PROTOCOL = "LLaVA-1.5 open-ended: the raw question"

JUDGE_SYSTEM = "You grade answers against a ground truth."
JUDGE_INSTRUCTION = (
    "Give the prediction a correctness score against the ground truth. In a ground truth, "
    "<AND> means every listed element must appear in the prediction for it to be fully right; "
    "<OR> means any one of them is enough. Scores go from 0.0 (entirely wrong) to 1.0 (entirely "
    "right) in steps of 0.1. Fill in only the last cell of the table: the score of the last row."
)
# Worked examples in the table format (ours): exact, partial, and wrong answers.
_EXAMPLES = (
    ("How many apples are on the plate?", "4", "There are four apples.", "1.0"),
    ("What is written on the sign?", "STOP", "The sign says SLOW.", "0.0"),
    ("Which colors does the flag have?", "red <AND> white", "The flag is red.", "0.5"),
    ("What animal is shown?", "dog <OR> puppy", "It is a puppy playing.", "1.0"),
    ("What is x in the equation?", "x = 7", "Solving gives x = 7.5", "0.0"),
    ("Who painted this?", "Vincent van Gogh", "It looks like a Van Gogh painting.", "1.0"),
)


def _capabilities(value) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return tuple(value or ())


def read(data: str | Path, images: str | Path | None = None) -> list[BenchItem]:
    data = Path(data)
    needed = ("question_id", "question", "answer", "capability", "image")
    rows = read_hub_rows(data, NAME, split="test", columns=needed)
    if rows is not None:
        return [
            BenchItem(
                id=str(row["question_id"]),
                image=image_from_cell(row["image"], None, NAME, str(row["question_id"])),
                question=row["question"],
                answers=(str(row["answer"]),),
                categories={"capability": _capabilities(row["capability"])},
            )
            for row in rows
        ]
    path = find_file(data, ["mm-vet.json"], NAME, "give the MM-Vet folder")
    document = read_json(path)
    if not isinstance(document, dict):
        raise BenchmarkDataError(f"{NAME}: {path} is not a JSON object of questions")
    images = Path(images) if images is not None else path.parent / "images"
    items = [
        BenchItem(
            id=key,
            image=ImageRef(path=str(images / record["imagename"])),
            question=record["question"],
            answers=(str(record["answer"]),),
            categories={"capability": _capabilities(record["capability"])},
        )
        for key, record in document.items()
    ]
    check_image_files(NAME, items, images, "the MM-Vet images folder")
    return items


def prompt(item: BenchItem) -> str:
    return item.question


def _cell(text: str) -> str:
    return text.replace("\n", "<br>").replace("|", "/")


def judge_prompt(item: BenchItem, prediction: str) -> JudgePrompt:
    lines = [
        JUDGE_INSTRUCTION,
        "",
        "Question | Ground truth | Prediction | Correctness",
        "--- | --- | --- | ---",
    ]
    lines += [" | ".join(example) for example in _EXAMPLES]
    lines.append(f"{_cell(item.question)} | {_cell(item.answers[0])} | {_cell(prediction)} | ")
    return JudgePrompt(system=JUDGE_SYSTEM, user="\n".join(lines), temperature=0.0, max_tokens=16)


def parse_correctness(reply: str) -> float:
    """The reply's first token as a number in [0, 1]; ValueError otherwise."""
    tokens = reply.strip().split()
    if not tokens:
        raise ValueError("empty reply")
    value = float(tokens[0])
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"score {value} outside [0, 1]")
    return value


def score(pairs: Sequence[tuple[BenchItem, str]], judge: Judge | None = None) -> list[dict]:
    if judge is None:
        raise ValueError(f"{NAME} is scored by a judge model")
    verdicts = judge.ask([judge_prompt(item, pred) for item, pred in pairs], parse_correctness)
    rows = []
    for (item, prediction), verdict in zip(pairs, verdicts, strict=True):
        row = {
            "id": item.id,
            "prediction": prediction,
            "extracted": prediction,
            "answer": item.answers[0],
            "score": verdict.value,
            "categories": {k: list(v) for k, v in item.categories.items()},
            "judge_raw": verdict.raw,
        }
        if verdict.value is None:
            row["judge_failed"] = verdict.error
        rows.append(row)
    return rows


def metrics_of(rows: Sequence[dict]) -> dict:
    return {"score": mean_score(rows)}


def summarize(rows: Sequence[dict]) -> dict:
    metrics = {**metrics_of(rows), "judge_failed": sum("judge_failed" in r for r in rows)}
    return {"metrics": metrics, "categories": by_category(rows, metrics_of)}
