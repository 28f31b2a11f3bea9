"""MMBench (English, dev): multiple choice with circular evaluation.

Formats read:
- original: ``mmbench_dev_20230712.tsv`` (or any ``*.tsv`` given directly): columns ``index``,
  ``question``, ``hint``, ``A``..``D`` (``E`` if present), ``answer``, ``category``,
  ``l2-category``, ``image`` (base64; a circular copy may instead hold the ``index`` of the row
  whose image it shares);
- hub: ``lmms-lab/MMBench`` config ``en`` split ``dev`` (same columns; ``L2-category``).
Every record is checked (index a non-negative integer and unique, question, options without
gaps, answer a letter of a non-empty option, category); a bad one ends reading with one line
naming file, record and problem.

Row ``index + k * 1,000,000`` is the k-th circular rotation of question ``index``; item ids are
the row ``index`` values and rows of one question share ``group`` = ``index mod 1,000,000``.

Prompt (LLaVA-1.5's ``model_vqa_mmbench``): ``{hint}\\n`` if any, the question, the non-empty
options as ``A. text`` lines, then the option-letter instruction.

Answer matching: VLMEvalKit's rule stage (``can_infer``), reproduced from what it does:

1. a reply holding VLMEvalKit's API-failure text is left to step 3; one holding one of its four
   refusal sentences is ``Z`` (wrong);
2. with ``.()[],:;!*#{}`` turned into spaces, the reply's words are looked at: if exactly one
   option letter is a word and it first appears among the last four words, that letter; if no
   option letter is a word but ``Z`` is, ``Z``; else ``answer is X`` / ``correct answer is **X**``
   (any case, X in A-D and an option) anywhere in the reply;
3. failing that, if the lowered reply is at most twice as long as all option texts together
   and contains exactly one option text (lowered), that option.

Quirks kept, because the official rule has them: a lowercase letter is no letter (``b`` is
left unread), ``The answer is a cat`` reads as ``A``, and a long reply naming an option's text
is left unread. (VLMEvalKit's debugging mode ``VERBOSE``, which also refuses a reply with the
word ``A`` and more than three words, is not reproduced.) What these rules leave unread,
VLMEvalKit gives to a judge model; without one (its ``exact_matching`` policy, what stic does)
the reply is wrong. ``unresolved`` is the share of rows so left, and ``n_needs_judge`` counts
the questions whose circular verdict a judge would decide (no rotation read wrong, one left
unread).

Metrics: ``circular`` (a question counts only if every rotation is right; questions with a
rotation lacking a prediction are left out) and ``single_pass`` (accuracy on the rotation-0 rows,
the original option order); per category and l2-category, circular. ``circular_lenient`` is a
second metric, not the official one: replies the official rules leave unread are read by
stic's earlier rules (a lone or leading letter, any case; else the one option text the reply
contains, whatever its length); see docs/benchmarks.md's deviations table.
``tests/data/test_official_mmbench.py`` holds the official verdicts this reproduces.
"""

from __future__ import annotations

import base64
import binascii
import csv
import functools
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stic.data.benchmarks.aggregate import by_category, percent
from stic.data.benchmarks.records import BenchItem, BenchmarkDataError, ImageRef, Judge, is_blank
from stic.data.benchmarks.tables import (
    bad_record,
    checked,
    image_from_cell,
    read_hub_rows,
    unique_ids,
)
from stic.data.prompts import CHOICE_INSTRUCTION, CHOICE_LETTERS

NAME = "mmbench_en_dev"
MAX_NEW_TOKENS = 128  # LLaVA's model_vqa_mmbench default
METRICS = ("circular", "single_pass", "unresolved", "circular_lenient")
PRIMARY = "circular"
PROTOCOL = "LLaVA-1.5 multiple choice: '{hint}\\n' if any, question, 'A. ...' options, option-letter instruction"
ROTATION = 1_000_000
HEADLINE = "official rules, no judge: VLMEvalKit can_infer + circular evaluation (exact_matching)"
WRONG = "Z"  # VLMEvalKit's letter for a reply read as no option

_OPTION_COLUMNS = ("A", "B", "C", "D", "E")
_API_FAILURE = "Failed to obtain answer via API"
_REFUSALS = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)
_SEPARATORS = re.compile(r"[.()\[\],:;!*#{}]")
_ANSWER_IS = re.compile(r"(?:correct\s+)?answer\s+is\s+\**([ABCD])\**", re.IGNORECASE)
_DIGITS = re.compile(r"^[0-9]{1,18}$")  # an index as the TSV writes it (int64 range)
_LAST_WORDS = 4  # an option letter counts only among the reply's last four words
_LONE = re.compile(r"^\(?([A-Za-z])\)?[.:)]?$")
_LEADING = re.compile(r"^(?:\(([A-Za-z])\)|([A-Za-z])[.:)])\s")


def _option_letter(text: str, letters: str) -> str | None:
    """Steps 1 and 2 of the module docstring: a letter, ``Z``, or None (not read)."""
    if _API_FAILURE in text:
        return None
    if any(refusal in text for refusal in _REFUSALS):
        return WRONG
    words = _SEPARATORS.sub(" ", text).split()
    named = [letter for letter in letters if letter in words]
    if len(named) == 1 and words.index(named[0]) >= len(words) - _LAST_WORDS:
        return named[0]
    if not named and WRONG in words:
        return WRONG
    match = _ANSWER_IS.search(text)
    if match and match.group(1).upper() in letters:
        return match.group(1).upper()
    return None


def _text_letter(text: str, choices: Sequence[str], letters: str) -> str | None:
    """Step 3 of the module docstring: the one option whose text a short reply contains."""
    lowered = text.lower()
    if len(lowered) > 2 * sum(len(choice) for choice in choices):
        return None
    contained = [letters[i] for i, choice in enumerate(choices) if choice.lower() in lowered]
    return contained[0] if len(contained) == 1 else None


def extract_letter(prediction: str, choices: Sequence[str]) -> str | None:
    """The option letter VLMEvalKit's rules read in ``prediction``, ``Z`` for a reply they
    read as no option, or None where they leave it to a judge (see the module docstring)."""
    letters = CHOICE_LETTERS[: len(choices)]
    return _option_letter(prediction, letters) or _text_letter(prediction, choices, letters)


def lenient_letter(prediction: str, choices: Sequence[str]) -> str | None:
    """stic's earlier reading, for ``circular_lenient``: a lone letter (``b``, ``B.``, ``(B)``)
    or a leading one (``B. text``), any case; else the one option text the reply contains."""
    letters = CHOICE_LETTERS[: len(choices)]
    text = prediction.strip()
    match = _LONE.match(text) or _LEADING.match(text)
    if match:
        letter = next(g for g in match.groups() if g).upper()
        return letter if letter in letters else None
    lowered = text.lower()
    contained = [i for i, choice in enumerate(choices) if choice and choice.lower() in lowered]
    return letters[contained[0]] if len(contained) == 1 else None


def _index(where: str, n: int, row: dict) -> int:
    value = checked(NAME, where, f"#{n}", row, "index", (str, int, float))
    if isinstance(value, str) and _DIGITS.match(value.strip()):
        return int(value.strip())
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    raise bad_record(NAME, where, f"#{n}", f"index {value!r:.40} is not a non-negative integer")


def _choices(where: str, index: str, row: dict) -> tuple[str, ...]:
    cells = [row.get(c) for c in _OPTION_COLUMNS]
    present = [not is_blank(cell) for cell in cells]
    if not all(present[:2]):
        raise bad_record(NAME, where, index, "needs options A and B")
    count = sum(present)
    if not all(present[:count]):
        raise bad_record(NAME, where, index, "has an empty option before a filled one")
    choices = []
    for letter, cell, filled in zip(_OPTION_COLUMNS, cells, present, strict=True):
        if not filled:
            break
        if not isinstance(cell, str):
            raise bad_record(
                NAME, where, index, f"option {letter} is {type(cell).__name__}, not text"
            )
        choices.append(cell)
    return tuple(choices)


def _items(rows: list[dict], images: dict[str, Any], where: str) -> list[BenchItem]:
    indices = [_index(where, n, row) for n, row in enumerate(rows)]
    unique_ids(NAME, where, [str(i) for i in indices])
    rotations: dict[int, int] = {}
    for index in indices:
        rotations[index % ROTATION] = rotations.get(index % ROTATION, 0) + 1
    items = []
    for index, row in zip(indices, rows, strict=True):
        key = str(index)
        question = checked(NAME, where, key, row, "question", (str,))
        choices = _choices(where, key, row)
        answer = checked(NAME, where, key, row, "answer", (str,)).strip()
        if answer not in tuple(CHOICE_LETTERS[: len(choices)]):
            raise bad_record(
                NAME, where, key, f"answer {answer!r:.20} names none of its {len(choices)} options"
            )
        category = checked(NAME, where, key, row, "category", (str,))
        if is_blank(category):
            raise bad_record(NAME, where, key, "'category' is empty")
        l2 = row.get("l2-category", row.get("L2-category"))
        categories = {"category": (category,)}
        if not is_blank(l2):
            categories["l2-category"] = (str(l2),)
        hint = row.get("hint")
        if not is_blank(hint) and not isinstance(hint, str):
            raise bad_record(NAME, where, key, f"'hint' is {type(hint).__name__}, not text")
        items.append(
            BenchItem(
                id=key,
                image=images[key](),
                question=question,
                answers=(answer,),
                choices=choices,
                hint=None if is_blank(hint) else hint,
                categories=categories,
                group=str(index % ROTATION),
                meta={"rotations": rotations[index % ROTATION]},
            )
        )
    return items


def _tsv_rows(path: Path) -> list[dict]:
    csv.field_size_limit(sys.maxsize)
    try:
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
    except (UnicodeDecodeError, csv.Error) as e:
        raise BenchmarkDataError(f"{NAME}: {path}: not a readable TSV ({e})") from e
    if not rows:
        raise BenchmarkDataError(f"{NAME}: {path}: holds no records")
    needed = ("index", "question", "A", "B", "answer", "category", "image")
    absent = [c for c in needed if c not in rows[0]]
    if absent:
        raise BenchmarkDataError(f"{NAME}: {path} lacks column(s) {', '.join(absent)}")
    return rows


def _tsv_images(rows: list[dict], path: Path) -> dict[str, Any]:
    """Per row index, a function giving its image; bad cells raise when the item is built."""
    encoded = {}
    for n, row in enumerate(rows):
        encoded[str(_index(str(path), n, row))] = row["image"]

    def decode(index: str) -> ImageRef:
        cell = encoded[index]
        # A short all-digit cell points at the row whose image this circular copy shares.
        if isinstance(cell, str) and len(cell) <= 64 and cell.isdigit():
            if cell not in encoded:
                raise bad_record(NAME, path, index, f"image refers to missing row {cell}")
            cell = encoded[cell]
        if not isinstance(cell, str) or not cell:
            raise bad_record(NAME, path, index, "has no image")
        try:
            return ImageRef(data=base64.b64decode(cell, validate=True))
        except (binascii.Error, ValueError) as e:
            raise bad_record(NAME, path, index, f"image is not base64 ({e})") from e

    return {index: functools.partial(decode, index) for index in encoded}


def _hub_images(rows: list[dict], where: str) -> dict[str, Any]:
    def decode(n: int, row: dict) -> ImageRef:
        try:
            return image_from_cell(row["image"], Path(where), NAME, str(n))
        except BenchmarkDataError as error:
            raise bad_record(
                NAME, where, _index(where, n, row), f"has no image ({error})"
            ) from None

    return {
        str(_index(where, n, row)): functools.partial(decode, n, row) for n, row in enumerate(rows)
    }


def read(data: str | Path, images: str | Path | None = None) -> list[BenchItem]:
    data = Path(data)
    rows = read_hub_rows(
        data, NAME, split="dev", config="en", columns=("index", "question", "answer", "image")
    )
    if rows is not None:
        if not rows:
            raise BenchmarkDataError(f"{NAME}: {data}: holds no records")
        return _items(rows, _hub_images(rows, str(data)), str(data))
    if data.is_dir():
        tsvs = sorted(data.rglob("mmbench_dev*.tsv")) or sorted(data.rglob("*.tsv"))
        if not tsvs:
            raise BenchmarkDataError(
                f"{NAME}: {data} holds neither hub parquet files (en/dev-*.parquet) nor "
                "mmbench_dev_20230712.tsv"
            )
        data = tsvs[0]
    if not data.is_file():
        raise BenchmarkDataError(f"{NAME}: {data} does not exist")
    rows = _tsv_rows(data)
    return _items(rows, _tsv_images(rows, data), str(data))


def prompt(item: BenchItem) -> str:
    lines = [item.hint] if item.hint else []
    lines.append(item.question)
    lines += [f"{CHOICE_LETTERS[i]}. {choice}" for i, choice in enumerate(item.choices)]
    lines.append(CHOICE_INSTRUCTION)
    return "\n".join(lines)


def score(pairs: Sequence[tuple[BenchItem, str]], judge: Judge | None = None) -> list[dict]:
    rows = []
    for item, prediction in pairs:
        letter = extract_letter(prediction, item.choices)
        lenient = letter or lenient_letter(prediction, item.choices)
        rows.append(
            {
                "id": item.id,
                "group": item.group,
                "rotations": item.meta["rotations"],
                "prediction": prediction,
                "extracted": letter,
                "needs_judge": letter is None,
                "answer": item.answers[0],
                "score": float(letter == item.answers[0]),
                "extracted_lenient": lenient,
                "score_lenient": float(lenient == item.answers[0]),
                "categories": {k: list(v) for k, v in item.categories.items()},
            }
        )
    return rows


def metrics_of(rows: Sequence[dict]) -> dict:
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["group"], []).append(row)
    # score_predictions passes only predicted rows: a question with a rotation left unpredicted
    # has fewer rows than the data holds (`rotations`) and is left out of the circular score.
    complete = [g for g in groups.values() if len(g) == g[0]["rotations"]]
    first = [row for row in rows if int(row["id"]) < ROTATION]
    # VLMEvalKit's prefetch decides a question when a rotation is read wrong or all are read
    # right; otherwise it asks its judge about the rotations left unread.
    needs_judge = [
        g
        for g in complete
        if any(r.get("needs_judge") for r in g)
        and not any(r["extracted"] is not None and r["score"] != 1.0 for r in g)
    ]
    return {
        "circular": percent(
            sum(all(r["score"] == 1.0 for r in g) for g in complete), len(complete)
        ),
        "single_pass": percent(sum(r["score"] for r in first), len(first)),
        "unresolved": percent(sum(r["extracted"] is None for r in rows), len(rows)),
        "circular_lenient": percent(
            # Rows of a result written before the lenient reading was kept: theirs was it.
            sum(all(r.get("score_lenient", r["score"]) == 1.0 for r in g) for g in complete),
            len(complete),
        ),
        "n_circular": len(complete),
        "n_needs_judge": len(needs_judge),
    }


def summarize(rows: Sequence[dict]) -> dict:
    return {
        "metrics": metrics_of(rows),
        "categories": by_category(rows, metrics_of),
        "headline": {
            "circular": HEADLINE,
            "circular_lenient": "stic: unread replies read by stic's earlier rules",
        },
    }
