"""MathVista testmini (1,000 problems): MathVista's own answer extraction and scoring.

Formats read:
- original: ``testmini.json`` (pid -> record, or a list of records; also ``annot_testmini.json``)
  with ``question``, ``image`` (``images/<pid>.jpg``), ``choices`` (list or null), ``unit``,
  ``precision``, ``answer``, ``question_type`` (``multi_choice``/``free_form``), ``answer_type``
  (``integer``/``float``/``text``/``list``), ``metadata``, ``query``; images are found relative
  to ``--images``, then beside the JSON file;
- hub: ``AI4Math/MathVista`` split ``testmini`` (same fields; the picture in ``decoded_image``).
Every record is validated (types, a multiple-choice answer among its choices, a float question
with its precision, a type the official scorer can score); a bad one ends reading with one line.

Prompt: LLaVA-1.5 has none; lmms-eval's "format" prompt: the question, `` (Unit: u)`` if any,
the choices as ``A. c`` lines, then by type the option-letter instruction / "Answer the question
using a single integer number." / "... a single floating-point number with one (two) decimal
place(s)." / "Answer the question using a Python list." / the short-answer instruction.

Score, as MathVista's ``extract_answer.py`` (default flags) and ``calculate_score.py`` do it:
1. extraction without the judge (:func:`official_extract`): an empty reply is ``""``; a reply
   that is one of the choices, or that ``int()`` (integer questions) or ``float()`` (float
   questions) reads whole, is kept; everything else goes to the judge with the extraction
   prompt (examples, then the problem's official ``query``, the reply and ``Extracted answer:``),
   whose reply is used stripped; an empty judge reply is asked again; a judge that never
   answers leaves ``""`` (what the official script keeps when its call fails).
2. normalisation (:func:`official_normalize`): multiple choice: ``(X)`` gives letter X, a letter
   gives its choice, anything else the choice nearest in edit distance (so an empty extraction
   picks the shortest choice); integer ``str(int(float(x)))``; float
   ``str(round(float(x), precision))`` (``inf`` stays ``"inf"``); list: the text as it is.
3. right when the normalised text equals the ``answer`` string exactly.
``accuracy`` is this procedure when a judge is given. ``accuracy_rules`` is stic's judge-free
reading (step 1's rules, then :func:`extract_by_rules`: a letter, a number with its unit, a list,
one ``The answer is X``; unread replies are wrong) through the same steps 2-3; without a judge it
is also the headline, and the result's ``headline`` says which procedure ``accuracy`` is.
"""

from __future__ import annotations

import ast
import math
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
    existing_file,
    is_blank,
)
from stic.data.benchmarks.tables import (
    bad_record,
    checked,
    find_file,
    image_file,
    image_from_cell,
    read_hub_rows,
    text_list,
    unique_ids,
)
from stic.data.prompts import CHOICE_INSTRUCTION, CHOICE_LETTERS, SHORT_ANSWER_INSTRUCTION
from stic.runtime.files import read_json

NAME = "mathvista_testmini"
IMAGES_HINT = "the folder holding MathVista's images/"
MAX_NEW_TOKENS = 1024  # lmms-eval's MathVista limit
METRICS = ("accuracy", "accuracy_rules")
PRIMARY = "accuracy"
JUDGE = "optional"
JUDGE_PROMPT_VERSION = "stic-mathvista-extract-v2"
PROTOCOL = "lmms-eval MathVista 'format' prompt: question, (Unit: u), 'A. ...' choices, an answer-type instruction"
JUDGE_ATTEMPTS = 5  # the official client re-asks an empty reply (without limit); stic stops at 5
HEADLINE_OFFICIAL = "official: MathVista extract_answer (rules, then the judge) + calculate_score"
HEADLINE_RULES = "rules only (no judge): stic's rule extraction + MathVista calculate_score"

QUESTION_TYPES = ("multi_choice", "free_form")
ANSWER_TYPES = ("integer", "float", "text", "list")

_ANSWER_IS = re.compile(r"answer is[:\s]*\(?\"?([^\"\n]+?)\"?\)?\s*\.?\s*$", re.IGNORECASE)
_LETTER = re.compile(r"^\(?([A-Z])\)?[.:)]?$")
_PAREN_LETTER = re.compile(r"\(([a-zA-Z])\)")


def _validated(where, pid: str, record) -> dict:
    """The record's fields checked the way the official scorer needs them; raises one line."""
    get = lambda key, kinds, **kw: checked(NAME, where, pid, record, key, kinds, **kw)  # noqa: E731
    question = get("question", (str,))
    answer = get("answer", (str, int, float))
    if isinstance(answer, float) and not math.isfinite(answer):
        raise bad_record(NAME, where, pid, f"answer {answer!r} is not finite")
    answer = str(answer)
    question_type = get("question_type", (str,))
    answer_type = get("answer_type", (str,))
    if question_type not in QUESTION_TYPES:
        raise bad_record(
            NAME, where, pid, f"question_type {question_type!r} not in {QUESTION_TYPES}"
        )
    if answer_type not in ANSWER_TYPES:
        raise bad_record(NAME, where, pid, f"answer_type {answer_type!r} not in {ANSWER_TYPES}")
    choices = text_list(NAME, where, pid, record, "choices")
    unit = record.get("unit")
    if not (unit is None or isinstance(unit, str) or is_blank(unit)):
        raise bad_record(NAME, where, pid, f"unit {unit!r} is not a string")
    precision = record.get("precision")
    if is_blank(precision):
        precision = None
    elif (
        isinstance(precision, bool)
        or not isinstance(precision, int | float)
        or not (math.isfinite(precision) and precision == int(precision) and 0 <= precision <= 15)
    ):
        raise bad_record(NAME, where, pid, f"precision {precision!r} is not a whole number 0-15")
    if question_type == "multi_choice":
        if not choices or len(choices) > len(CHOICE_LETTERS):
            raise bad_record(NAME, where, pid, "a multi_choice question needs a list of choices")
        if answer not in choices:
            raise bad_record(NAME, where, pid, f"answer {answer!r} is not one of its choices")
    elif answer_type == "text":
        raise bad_record(
            NAME,
            where,
            pid,
            "free_form with answer_type 'text': MathVista's scorer has no rule for it",
        )
    elif answer_type == "float" and precision is None:
        raise bad_record(NAME, where, pid, "a float question needs its precision")
    metadata = record.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise bad_record(NAME, where, pid, "metadata is not an object")
    query = record.get("query")
    if query is not None and not isinstance(query, str):
        raise bad_record(NAME, where, pid, "query is not a string")
    return {
        "question": question,
        "answer": answer,
        "choices": choices,
        "question_type": question_type,
        "answer_type": answer_type,
        "unit": None if is_blank(unit) else unit,
        "precision": None if precision is None else int(precision),
        "metadata": metadata or {},
        "query": query,
    }


def _item(pid: str, record: dict, image: ImageRef) -> BenchItem:
    metadata = record["metadata"]
    categories = {}
    if isinstance(metadata.get("task"), str):
        categories["task"] = (metadata["task"],)
    if isinstance(metadata.get("skills"), list):
        categories["skill"] = tuple(str(skill) for skill in metadata["skills"])
    return BenchItem(
        id=pid,
        image=image,
        question=record["question"],
        answers=(record["answer"],),
        choices=tuple(record["choices"]) if record["choices"] else None,
        categories=categories,
        meta={
            "question_type": record["question_type"],
            "answer_type": record["answer_type"],
            "unit": record["unit"],
            "precision": record["precision"],
            "query": record["query"],
        },
    )


def read(data: str | Path, images: str | Path | None = None) -> list[BenchItem]:
    data = Path(data)
    needed = ("pid", "question", "answer", "question_type", "answer_type")
    rows = read_hub_rows(data, NAME, split="testmini", columns=needed)
    if rows is not None:
        unique_ids(NAME, data, [str(row["pid"]) for row in rows])
        return [
            _item(
                str(row["pid"]),
                _validated(data, str(row["pid"]), row),
                image_from_cell(
                    row.get("decoded_image") or row.get("image"),
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
    if isinstance(document, dict):
        records = [(str(pid), record) for pid, record in document.items()]
    elif isinstance(document, list):
        records = [
            (str(checked(NAME, path, f"#{n}", r, "pid", (str, int))), r)
            for n, r in enumerate(document)
        ]
    else:
        raise BenchmarkDataError(f"{NAME}: {path}: not a JSON object or list of problems")
    unique_ids(NAME, path, [pid for pid, _ in records])
    roots = [Path(images)] if images is not None else []
    roots += [path.parent, path.parent.parent]
    items = []
    for pid, record in records:
        fields = _validated(path, pid, record)
        relative = checked(NAME, path, pid, record, "image", (str,))
        candidates = [
            Path(image_file(NAME, path, pid, root, name).path)
            for name in (relative, Path(relative).name)
            for root in roots
        ]
        found = existing_file(candidates) or candidates[0]
        items.append(_item(pid, fields, ImageRef(path=str(found))))
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


# -- the official procedure --------------------------------------------------------------------


def official_extract(response: str, item: BenchItem) -> str | None:
    """What MathVista's ``extract_answer`` returns before asking its judge (default flags), or
    None when it would ask the judge."""
    if response == "":
        return ""
    if item.meta["question_type"] == "multi_choice" and response in item.choices:
        return response
    # int() and float() read the whole reply as Python does: surrounding whitespace, "+",
    # "1_4", other scripts' digits, "inf", "nan" and "1e999" (as inf) included.
    if item.meta["answer_type"] == "integer":
        try:
            return str(int(response))
        except ValueError:
            pass
    if item.meta["answer_type"] == "float":
        try:
            return str(float(response))
        except ValueError:
            pass
    return None


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions of code points, each 1)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, start=1):
        current = [i]
        for j, char_b in enumerate(b, start=1):
            current.append(
                min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b))
            )
        previous = current
    return previous[-1]


def official_normalize(extraction: str, item: BenchItem) -> str | None:
    """MathVista's ``normalize_extracted_answer`` (default flags): the text compared with the
    answer, or None where the official rule yields nothing (never right)."""
    answer_type = item.meta["answer_type"]
    if item.meta["question_type"] == "multi_choice":
        text = extraction.strip()
        letters = _PAREN_LETTER.findall(text)
        if letters:
            text = letters[0].upper()
        sequential = list(CHOICE_LETTERS[: len(item.choices)])
        if text in sequential:
            return item.choices[sequential.index(text)]
        distances = [edit_distance(text, choice) for choice in item.choices]
        return item.choices[distances.index(min(distances))]  # the first of equals
    if answer_type == "integer":
        try:
            return str(int(float(extraction)))
        except (ValueError, OverflowError):  # "x", "nan"; "inf" and "1e999"
            return None
    if answer_type == "float":
        try:
            return str(round(float(extraction), item.meta["precision"]))
        except (ValueError, OverflowError, TypeError):
            return None
    if answer_type == "list":
        return extraction
    return None  # free-form text: refused by the reader (the official script has no rule)


def official_verdict(extraction: str, item: BenchItem) -> tuple[str | None, float]:
    """(normalised extraction, 1.0 if it equals the answer string else 0.0)."""
    normalized = official_normalize(extraction, item)
    return normalized, float(normalized == item.answers[0])


# -- stic's judge-free reading (accuracy_rules) ------------------------------------------------


def _number(text: str, unit: str | None) -> float | None:
    text = text.strip().rstrip(".").strip()
    if unit and text.lower().endswith(unit.lower()):
        text = text[: -len(unit)].strip()
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _lenient(text: str, item: BenchItem) -> str | None:
    """stic's reading of an answer text in the item's format (None: not of the type)."""
    answer_type, precision = item.meta["answer_type"], item.meta["precision"]
    text = text.strip()
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
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return None
        return str(list(value)) if isinstance(value, list | tuple) else None
    return text


def extract_by_rules(prediction: str, item: BenchItem) -> str | None:
    """stic's judge-free reading of ``prediction`` (the reply itself, or one ``The answer is
    X``) in the item's format, or None."""
    direct = _lenient(prediction, item)
    if direct is not None and prediction.strip():
        return direct
    match = _ANSWER_IS.search(prediction.strip())
    return _lenient(match.group(1), item) if match else None


# -- the judge ---------------------------------------------------------------------------------

# Our own examples, laid out as MathVista's extraction prompt lays out its own: the problem's
# query (hint and question), the model's response, then "Extracted answer: <answer>".
_INTRO = (
    "Read each example, then copy the final answer out of the last model response, in the form "
    "the hint asks for (an option letter, a number, or a Python list), after 'Extracted answer:'."
)
_EXAMPLES = (
    ("Hint: Please answer the question requiring an integer answer and provide the final value, "
     "e.g., 1, 2, 3, at the end.\nQuestion: How many cups are on the table?",
     "I can see three cups on the table, so the answer is 3.", "3"),
    ("Hint: Please answer the question requiring a floating-point number with two decimal "
     "places and provide the final value, e.g., 1.23, 1.34, 1.45, at the end.\n"
     "Question: What is the slope of the line?",
     "Rise over run gives 3 / 4, i.e. a slope of 0.75.", "0.75"),
    ("Hint: Please answer the question requiring a Python list as an answer and provide the "
     "final list, e.g., [1, 2, 3], [1.2, 1.3, 1.4], at the end.\n"
     "Question: Where does the curve cross the x-axis?",
     "It crosses the axis at x = -2 and at x = 3.", "[-2, 3]"),
    ("Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, "
     "at the end.\nQuestion: Which shape has the largest area?\nChoices:\n(A) circle\n"
     "(B) square\n(C) triangle",
     "Comparing them, the square covers the most space.", "B"),
)  # fmt: skip


def _query(item: BenchItem) -> str:
    """The problem's official query (hint + question + choices), or one built like it."""
    if item.meta.get("query"):
        return item.meta["query"]
    question = item.question + (f" (Unit: {item.meta['unit']})" if item.meta.get("unit") else "")
    text = f"Question: {question}"
    if item.choices:
        text += "\nChoices:\n" + "\n".join(
            f"({CHOICE_LETTERS[i]}) {c}" for i, c in enumerate(item.choices)
        )
    return text


def judge_prompt(item: BenchItem, prediction: str) -> JudgePrompt:
    """The extraction request: examples, then the query, the response and 'Extracted answer: '."""
    parts = [_INTRO]
    for query, response, answer in _EXAMPLES:
        parts.append(f"{query}\n\nModel response: {response}\n\nExtracted answer: {answer}")
    user = "\n\n".join(parts) + f"\n\n{_query(item)}\n\n{prediction}\n\nExtracted answer: "
    return JudgePrompt(
        system="",
        user=user,
        temperature=0.0,
        max_tokens=1024,
        attempts=JUDGE_ATTEMPTS,
        reask_temperatures=(0.0,),  # the official client asks again at the same temperature
    )


def parse_extraction(reply: str) -> str:
    """The judge's reply as the official client returns it: stripped; an empty reply (exactly
    "") is asked again, a blank one (" ") is kept as the empty extraction."""
    if reply == "":
        raise ValueError("empty reply")
    return reply.strip()


def score(pairs: Sequence[tuple[BenchItem, str]], judge: Judge | None = None) -> list[dict]:
    rows = []
    for item, prediction in pairs:
        rules = official_extract(prediction, item)
        if rules is None:
            rules = extract_by_rules(prediction, item)
        normalized_rules, score_rules = (
            official_verdict(rules, item) if rules is not None else (None, 0.0)
        )
        extracted = official_extract(prediction, item)
        rows.append(
            {
                "id": item.id,
                "prediction": prediction,
                "extracted": extracted,
                "extracted_by": "rules" if extracted is not None else None,
                "normalized_rules": normalized_rules,
                "answer": item.answers[0],
                "score_rules": score_rules,
                "categories": {k: list(v) for k, v in item.categories.items()},
            }
        )
    if judge is not None:
        todo = [
            (row, item, pred)
            for row, (item, pred) in zip(rows, pairs, strict=True)
            if row["extracted"] is None
        ]
        verdicts = judge.ask([judge_prompt(item, pred) for _, item, pred in todo], parse_extraction)
        for (row, _, _), verdict in zip(todo, verdicts, strict=True):
            row["judge_raw"] = verdict.raw
            row["extracted_by"] = "judge"
            if verdict.value is None:
                # The official script keeps "" when its judge call fails: scored as such, counted.
                row["judge_failed"] = verdict.error
            row["extracted"] = verdict.value if verdict.value is not None else ""
    for (item, _), row in zip(pairs, rows, strict=True):
        if judge is None:
            row.update(
                headline="rules", score=row["score_rules"], normalized=row["normalized_rules"]
            )
        else:
            normalized, verdict = official_verdict(row["extracted"], item)
            row.update(headline="official", score=verdict, normalized=normalized)
    return rows


def metrics_of(rows: Sequence[dict]) -> dict:
    metrics = {
        "accuracy": percent(sum(r["score"] for r in rows), len(rows)),
        "accuracy_rules": percent(sum(r["score_rules"] for r in rows), len(rows)),
    }
    if any(r.get("headline") == "official" for r in rows):
        metrics["judge_failed"] = sum("judge_failed" in r for r in rows)
    return metrics


def summarize(rows: Sequence[dict]) -> dict:
    official = any(r.get("headline") == "official" for r in rows)
    return {
        "metrics": metrics_of(rows),
        "categories": by_category(rows, metrics_of),
        "headline": {"accuracy": HEADLINE_OFFICIAL if official else HEADLINE_RULES},
    }
