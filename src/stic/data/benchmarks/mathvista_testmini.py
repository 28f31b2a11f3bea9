"""MathVista testmini (1,000 problems): answer extraction by rules, optionally by a judge.

Formats read:
- original: ``testmini.json`` (pid -> record, or a list of records; also ``annot_testmini.json``)
  with ``question``, ``image`` (``images/<pid>.jpg``), ``choices`` (list or null), ``unit``,
  ``precision``, ``answer``, ``question_type`` (``multi_choice``/``free_form``), ``answer_type``
  (``integer``/``float``/``text``/``list``), ``metadata``; images are found relative to
  ``--images``, then beside the JSON file;
- hub: ``AI4Math/MathVista`` split ``testmini`` (same fields; the picture in ``decoded_image``).

Prompt: LLaVA-1.5 has none; lmms-eval's "format" prompt: the question, `` (Unit: u)`` if any,
the choices as ``A. c`` lines, then by type the option-letter instruction / "Answer the question
using a single integer number." / "... a single floating-point number with one (two) decimal
place(s)." / "Answer the question using a Python list." / the short-answer instruction.

Score (MathVista's ``calculate_score``): an extracted answer is normalised by type (choice: a
letter maps to its option; integer: ``str(int(float(x)))``; float: ``str(round(float(x),
precision))``; list: ``str(list)``) and is right when equal to the answer as strings. Extraction
by rules (:func:`extract_by_rules`): the reply is a choice text, a letter, a number (unit and
thousands commas removed), a Python list, or contains exactly one ``The answer is X``. With a
judge, the replies the rules cannot read are extracted by the judge (MathVista's method: its
extraction prompt with examples). ``accuracy`` is rules only; ``accuracy_judged`` adds the judge.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence
from pathlib import Path

from stic.data.benchmarks.aggregate import by_category, percent
from stic.data.benchmarks.records import (
    BenchItem,
    BenchmarkDataError,
    ImageRef,
    Judge,
    JudgePrompt,
    check_image_files,
    existing_file,
    is_blank,
)
from stic.data.benchmarks.tables import find_file, image_from_cell, read_hub_rows
from stic.data.prompts import CHOICE_INSTRUCTION, CHOICE_LETTERS, SHORT_ANSWER_INSTRUCTION
from stic.runtime.files import read_json

NAME = "mathvista_testmini"
MAX_NEW_TOKENS = 1024  # lmms-eval's MathVista limit
METRICS = ("accuracy", "accuracy_judged")
PRIMARY = "accuracy"
JUDGE = "optional"
JUDGE_PROMPT_VERSION = "stic-mathvista-extract-v1"
PROTOCOL = "lmms-eval MathVista 'format' prompt: question, (Unit: u), 'A. ...' choices, an answer-type instruction"

_ANSWER_IS = re.compile(r"answer is[:\s]*\(?\"?([^\"\n]+?)\"?\)?\s*\.?\s*$", re.IGNORECASE)
_LETTER = re.compile(r"^\(?([A-Z])\)?[.:)]?$")


def _item(pid: str, record: dict, image: ImageRef) -> BenchItem:
    metadata = record.get("metadata") or {}
    choices = record.get("choices")
    precision = record.get("precision")
    categories = {}
    if metadata.get("task"):
        categories["task"] = (metadata["task"],)
    if metadata.get("skills"):
        categories["skill"] = tuple(metadata["skills"])
    return BenchItem(
        id=pid,
        image=image,
        question=record["question"],
        answers=(str(record["answer"]),),
        choices=tuple(str(c) for c in choices) if choices else None,
        categories=categories,
        meta={
            "question_type": record["question_type"],
            "answer_type": record["answer_type"],
            "unit": None if is_blank(record.get("unit")) else record["unit"],
            "precision": None if is_blank(precision) else int(float(precision)),
            "query": record.get("query"),
        },
    )


def read(data: str | Path, images: str | Path | None = None) -> list[BenchItem]:
    data = Path(data)
    needed = ("pid", "question", "answer", "question_type", "answer_type")
    rows = read_hub_rows(data, NAME, split="testmini", columns=needed)
    if rows is not None:
        return [
            _item(
                str(row["pid"]),
                row,
                image_from_cell(
                    row.get("decoded_image") or row["image"],
                    data if data.is_dir() else data.parent,
                    NAME,
                    str(row["pid"]),
                ),
            )
            for row in rows
        ]
    path = find_file(
        data, ["testmini.json", "annot_testmini.json"], NAME, "give the MathVista data folder"
    )
    document = read_json(path)
    records = (
        document.items() if isinstance(document, dict) else ((str(r["pid"]), r) for r in document)
    )
    roots = [Path(images)] if images is not None else []
    roots += [path.parent, path.parent.parent]
    items = []
    for pid, record in records:
        for key in ("question", "answer", "image", "question_type", "answer_type"):
            if key not in record:
                raise BenchmarkDataError(f"{NAME}: {path}: problem {pid} lacks {key!r}")
        relative = Path(record["image"])
        candidates = [root / relative for root in roots] + [root / relative.name for root in roots]
        found = existing_file(candidates) or candidates[0]
        items.append(_item(str(pid), record, ImageRef(path=str(found))))
    check_image_files(NAME, items, roots[0], "the folder holding MathVista's images/")
    return items


def _instruction(item: BenchItem) -> str:
    answer_type, precision = item.meta["answer_type"], item.meta["precision"]
    if item.meta["question_type"] == "multi_choice":
        return CHOICE_INSTRUCTION
    if answer_type == "integer":
        return "Answer the question using a single integer number."
    if answer_type == "float":
        places = "one decimal place" if precision in (None, 1) else "two decimal places"
        return f"Answer the question using a single floating-point number with {places}."
    if answer_type == "list":
        return "Answer the question using a Python list."
    return SHORT_ANSWER_INSTRUCTION


def prompt(item: BenchItem) -> str:
    question = item.question.strip()
    if item.meta.get("unit"):
        question += f" (Unit: {item.meta['unit']})"
    lines = [question]
    if item.choices:
        lines += [f"{CHOICE_LETTERS[i]}. {c}" for i, c in enumerate(item.choices)]
    lines.append(_instruction(item))
    return "\n".join(lines)


def _number(text: str, unit: str | None) -> float | None:
    text = text.strip().rstrip(".").strip()
    if unit and text.lower().endswith(unit.lower()):
        text = text[: -len(unit)].strip()
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)
    try:
        return float(text)
    except ValueError:
        return None


def normalize(extracted: str, item: BenchItem) -> str | None:
    """MathVista's normalisation of an extracted answer by answer type (None: not of the type)."""
    answer_type, precision = item.meta["answer_type"], item.meta["precision"]
    text = extracted.strip()
    if item.meta["question_type"] == "multi_choice":
        if text in item.choices:
            return text
        match = _LETTER.match(text)
        if match and match.group(1) in CHOICE_LETTERS[: len(item.choices)]:
            return item.choices[CHOICE_LETTERS.index(match.group(1))]
        lowered = [c.lower() for c in item.choices]
        return item.choices[lowered.index(text.lower())] if text.lower() in lowered else None
    if answer_type in ("integer", "float"):
        value = _number(text, item.meta.get("unit"))
        if value is None:
            return None
        if answer_type == "integer":
            return str(int(value))
        return str(round(value, precision if precision is not None else 1))
    if answer_type == "list":
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return None
        return str(list(value)) if isinstance(value, list | tuple) else None
    return text


def extract_by_rules(prediction: str, item: BenchItem) -> str | None:
    """The normalised answer the rules read from ``prediction``, or None."""
    direct = normalize(prediction, item)
    if direct is not None and prediction.strip():
        return direct
    match = _ANSWER_IS.search(prediction.strip())
    return normalize(match.group(1), item) if match else None


JUDGE_SYSTEM = (
    "You read a model's answer to a math question about an image and copy out its final answer."
)
_EXAMPLES = (
    ("What is the total length of the two red bars? (Unit: cm)", "integer",
     "The first bar is 12 cm and the second is 7 cm, so together they are 19 cm long.", "19"),
    ("Which shape has the largest area?", "choice (A. circle, B. square, C. triangle)",
     "Comparing them, the square covers the most space.", "B"),
    ("What is the slope of the line?", "float with two decimals",
     "Rise over run gives 3 / 4, i.e. a slope of about 0.75.", "0.75"),
    ("What are the x-intercepts?", "Python list", "It crosses the axis at -2 and at 3.", "[-2, 3]"),
)  # fmt: skip


def judge_prompt(item: BenchItem, prediction: str) -> JudgePrompt:
    """Ask the judge for the final answer in the format the item's type needs."""
    if item.choices:
        kind = (
            "choice ("
            + ", ".join(f"{CHOICE_LETTERS[i]}. {c}" for i, c in enumerate(item.choices))
            + ")"
        )
    else:
        kind = {"integer": "integer", "float": "float", "list": "Python list"}.get(
            item.meta["answer_type"], "text"
        )
    lines = [
        "Copy the final answer out of the model's response, in the requested format only:",
        "a number for numeric answers, the option letter for choices, a Python list for lists.",
        "If the response gives no answer, reply with NONE.",
        "",
    ]
    for question, example_kind, response, answer in _EXAMPLES:
        lines += [
            f"Question: {question}",
            f"Format: {example_kind}",
            f"Response: {response}",
            f"Final answer: {answer}",
            "",
        ]
    lines += [
        f"Question: {item.question}",
        f"Format: {kind}",
        f"Response: {prediction}",
        "Final answer:",
    ]
    return JudgePrompt(system=JUDGE_SYSTEM, user="\n".join(lines), temperature=0.0, max_tokens=64)


def _parse_judge(reply: str) -> str:
    text = reply.strip().splitlines()[0].strip() if reply.strip() else ""
    text = text.removeprefix("Final answer:").strip()
    if not text:
        raise ValueError("empty reply")
    return text


def score(pairs: Sequence[tuple[BenchItem, str]], judge: Judge | None = None) -> list[dict]:
    rows = []
    for item, prediction in pairs:
        extracted = extract_by_rules(prediction, item)
        gold = normalize(item.answers[0], item) or item.answers[0]
        rows.append(
            {
                "id": item.id,
                "prediction": prediction,
                "extracted": extracted,
                "answer": gold,
                "score": float(extracted == gold),
                "extracted_by": "rules" if extracted is not None else None,
                "categories": {k: list(v) for k, v in item.categories.items()},
            }
        )
    if judge is not None:
        todo = [
            (row, item, pred)
            for row, (item, pred) in zip(rows, pairs, strict=True)
            if row["extracted"] is None
        ]
        verdicts = judge.ask([judge_prompt(item, pred) for _, item, pred in todo], _parse_judge)
        for (row, item, _), verdict in zip(todo, verdicts, strict=True):
            row["judge_raw"] = verdict.raw
            if verdict.value is None:
                row["judge_failed"] = verdict.error
                continue
            extracted = None if verdict.value.upper() == "NONE" else normalize(verdict.value, item)
            row["extracted_judged"] = extracted
            row["extracted_by"] = "judge"
            row["score_judged"] = float(extracted == row["answer"])
    return rows


def metrics_of(rows: Sequence[dict]) -> dict:
    metrics = {"accuracy": percent(sum(r["score"] for r in rows), len(rows))}
    if any("score_judged" in r or "judge_failed" in r for r in rows):
        # Rules first, the judge only for what the rules could not read. An item whose judge
        # call failed is left out of accuracy_judged (and counted), never scored.
        judged = [r.get("score_judged", r["score"]) for r in rows if "judge_failed" not in r]
        metrics["accuracy_judged"] = percent(sum(judged), len(judged))
        metrics["judge_failed"] = sum("judge_failed" in r for r in rows)
    return metrics


def summarize(rows: Sequence[dict]) -> dict:
    return {"metrics": metrics_of(rows), "categories": by_category(rows, metrics_of)}
