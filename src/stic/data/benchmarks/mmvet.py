"""MM-Vet (218 questions): open-ended answers graded 0-1 by a judge, averaged per capability.

Formats read:
- original: ``mm-vet.json`` (``{"v1_0": {"imagename", "capability", "question", "answer"}}``)
  and ``images/`` (``--images``);
- hub: ``lmms-lab/MMVet`` split ``test`` (``question_id``, ``question``, ``answer``,
  ``capability``, ``image``).

Prompt: the raw question (LLaVA-1.5's open-ended protocol), up to 1024 new tokens.

Score (MM-Vet's ``mm-vet_evaluator.py``): a judge compares the prediction with the ground truth
(which may use ``<AND>``/``<OR>``) and completes a few-shot table with a correctness score from
0.0 to 1.0. Its reply is read as the evaluator reads it: the text before the first space,
stripped, parsed by ``float()`` (so ".7", "1e-1" and "0.5 because ..." are read; "0.6\nbecause",
"Correctness: 0.6" and "0.5," are not) and within [0, 1]; stic also refuses a score that is not
finite ("nan", which the evaluator would keep). A refused reply is asked again as the evaluator
asks it: with an instruction to give the digit appended, at temperature 0, 0.5, 1.0, 1.5; after
five refused replies the item scores 0.0 (counted in the mean, as the evaluator counts it) and
is counted in ``judge_failed``; ``score_judged_only`` leaves those items out. Score = 100 x
mean, rounded to 1 decimal as the evaluator rounds it, overall and per capability (an item
counts toward each of its capabilities). The few-shot prompt is ours, written to the structure
of MM-Vet's (see docs/benchmarks.md); its version is recorded with the results.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from stic.data.benchmarks.aggregate import by_category
from stic.data.benchmarks.records import (
    BenchItem,
    BenchmarkDataError,
    ImageRef,
    Judge,
    JudgePrompt,
)
from stic.data.benchmarks.tables import (
    bad_record,
    checked,
    find_file,
    image_file,
    image_from_cell,
    read_hub_rows,
    unique_ids,
)
from stic.runtime.files import read_json

NAME = "mmvet"
IMAGES_HINT = "the MM-Vet images folder"
MAX_NEW_TOKENS = 1024  # LLaVA's model_vqa default for open-ended answers
METRICS = ("score", "score_judged_only")
PRIMARY = "score"
JUDGE = "required"
JUDGE_PROMPT_VERSION = "stic-mmvet-v1"
PROTOCOL = "LLaVA-1.5 open-ended: the raw question"

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


CAPABILITIES = ("rec", "ocr", "know", "gen", "spat", "math")  # MM-Vet's six


def _capabilities(where, key: str, record: dict) -> tuple[str, ...]:
    """The record's capabilities: a list (original) or a comma-separated string (hub)."""
    value = checked(NAME, where, key, record, "capability", (list, str))
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not value or not all(isinstance(c, str) for c in value):
        raise bad_record(NAME, where, key, f"capability {value!r:.60} is not a list of names")
    unknown = [c for c in value if c not in CAPABILITIES]
    if unknown:
        raise bad_record(NAME, where, key, f"capability {unknown[0]!r} not in {CAPABILITIES}")
    return tuple(dict.fromkeys(value))  # the evaluator counts an item once per capability


def _item(where, key: str, record: dict, image: ImageRef) -> BenchItem:
    return BenchItem(
        id=key,
        image=image,
        question=checked(NAME, where, key, record, "question", (str,)),
        answers=(checked(NAME, where, key, record, "answer", (str,)),),
        categories={"capability": _capabilities(where, key, record)},
    )


def read(data: str | Path, images: str | Path | None = None) -> list[BenchItem]:
    data = Path(data)
    needed = ("question_id", "question", "answer", "capability", "image")
    rows = read_hub_rows(data, NAME, split="test", columns=needed)
    if rows is not None:
        ids = [
            str(checked(NAME, data, f"#{n}", row, "question_id", (str, int)))
            for n, row in enumerate(rows)
        ]
        unique_ids(NAME, data, ids)
        return [
            _item(data, key, row, image_from_cell(row["image"], data, NAME, key))
            for key, row in zip(ids, rows, strict=True)
        ]
    path = find_file(data, ["mm-vet.json"], NAME, "give the MM-Vet folder")
    document = read_json(path)
    if not isinstance(document, dict):
        raise BenchmarkDataError(f"{NAME}: {path} is not a JSON object of questions")
    unique_ids(NAME, path, list(document))
    images = Path(images) if images is not None else path.parent / "images"
    items = [
        _item(
            path,
            key,
            record,
            image_file(
                NAME, path, key, images, checked(NAME, path, key, record, "imagename", (str,))
            ),
        )
        for key, record in document.items()
    ]
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
    user = "\n".join(lines)
    return JudgePrompt(
        system="",  # the evaluator sends the table as the only (user) message
        user=user,
        temperature=0.0,
        max_tokens=3,  # the evaluator's limit: a longer reply could hold what 3 tokens cut off
        attempts=JUDGE_ATTEMPTS,
        reask_user=user + REASK_SUFFIX,
        reask_temperatures=REASK_TEMPERATURES,
    )


JUDGE_ATTEMPTS = 5  # replies the evaluator reads before it gives up with 0.0
REASK_TEMPERATURES = (0.0, 0.5, 1.0, 1.5)  # the temperature of its 1st..4th re-ask
REASK_SUFFIX = "\nAnswer with the correctness score only, a number from 0.0 to 1.0: "
FAILED_SCORE = 0.0  # what the evaluator records for an item it could not grade


def parse_correctness(reply: str) -> float:
    """The score as MM-Vet's evaluator reads a reply (the text before the first space, stripped,
    as a float in [0, 1]), and finite; ValueError otherwise."""
    value = float(reply.split(" ")[0].strip())  # ValueError on a non-number
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"score {value!r} outside [0, 1]: {reply[:60]!r}")
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
            "score": FAILED_SCORE if verdict.value is None else verdict.value,
            "categories": {k: list(v) for k, v in item.categories.items()},
            "judge_raw": verdict.raw,
        }
        if verdict.value is None:
            row["judge_failed"] = verdict.error
        rows.append(row)
    return rows


def _percent(rows: Sequence[dict]) -> float | None:
    """100 x mean score, rounded to 1 decimal as the evaluator's numpy rounding does (half to
    even on the binary value of 10x); None for no rows."""
    if not rows:
        return None
    total = 0.0
    for row in rows:  # summed in order, as the evaluator sums
        total += row["score"]
    return round(total / len(rows) * 100 * 10) / 10


def metrics_of(rows: Sequence[dict]) -> dict:
    return {
        "score": _percent(rows),
        "score_judged_only": _percent([r for r in rows if "judge_failed" not in r]),
    }


def summarize(rows: Sequence[dict]) -> dict:
    metrics = {**metrics_of(rows), "judge_failed": sum("judge_failed" in r for r in rows)}
    return {"metrics": metrics, "categories": by_category(rows, metrics_of)}
