"""MMBench (English, dev): multiple choice with circular evaluation.

Formats read:
- original: ``mmbench_dev_20230712.tsv`` (or any ``*.tsv`` given directly): columns ``index``,
  ``question``, ``hint``, ``A``..``D`` (``E`` if present), ``answer``, ``category``,
  ``l2-category``, ``image`` (base64; a circular copy may instead hold the ``index`` of the row
  whose image it shares);
- hub: ``lmms-lab/MMBench`` config ``en`` split ``dev`` (same columns; ``L2-category``).

Row ``index + k * 1,000,000`` is the k-th circular rotation of question ``index``; item ids are
the row ``index`` values and rows of one question share ``group`` = ``index mod 1,000,000``.

Prompt (LLaVA-1.5's ``model_vqa_mmbench``): ``{hint}\\n`` if any, the question, the non-empty
options as ``A. text`` lines, then the option-letter instruction.

Extraction by rules: a lone letter (``B``, ``B.``, ``(B)``), or an answer that starts with
``B.``, ``B:``, ``B)`` or ``(B)``; else the one option whose text the answer contains. An answer
none of these resolve is wrong (MMBench's own evaluator may ask a judge model here; we report
the count as ``unresolved``).

Metrics: ``circular`` (a question counts only if every rotation is right; questions with a
rotation lacking a prediction are left out) and ``single_pass`` (accuracy on the rotation-0 rows,
the original option order); per category and l2-category, circular.
"""

from __future__ import annotations

import base64
import binascii
import csv
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from stic.data.benchmarks.aggregate import by_category, percent
from stic.data.benchmarks.records import BenchItem, BenchmarkDataError, ImageRef, Judge, is_blank
from stic.data.benchmarks.tables import image_from_cell, read_hub_rows
from stic.data.prompts import CHOICE_INSTRUCTION, CHOICE_LETTERS

NAME = "mmbench_en_dev"
MAX_NEW_TOKENS = 128  # LLaVA's model_vqa_mmbench default
METRICS = ("circular", "single_pass", "unresolved")
PRIMARY = "circular"
PROTOCOL = "LLaVA-1.5 multiple choice: '{hint}\\n' if any, question, 'A. ...' options, option-letter instruction"
ROTATION = 1_000_000

_OPTION_COLUMNS = ("A", "B", "C", "D", "E")
_LONE = re.compile(r"^\(?([A-Z])\)?[.:)]?$")
_LEADING = re.compile(r"^(?:\(([A-Z])\)|([A-Z])[.:)])\s")


def _items(rows: list[dict], images: dict[str, ImageRef], where: str) -> list[BenchItem]:
    rotations: dict[int, int] = {}
    for row in rows:
        group = int(float(row["index"])) % ROTATION
        rotations[group] = rotations.get(group, 0) + 1
    items = []
    for row in rows:
        index = str(int(float(row["index"])))
        choices = tuple(
            str(row[c]).strip() for c in _OPTION_COLUMNS if c in row and not is_blank(row[c])
        )
        answer = str(row["answer"]).strip()
        if answer not in CHOICE_LETTERS[: len(choices)]:
            raise BenchmarkDataError(
                f"{NAME}: {where}: row {index} answer {answer!r} names no option"
            )
        l2 = row.get("l2-category", row.get("L2-category"))
        categories = {"category": (str(row["category"]),)}
        if not is_blank(l2):
            categories["l2-category"] = (str(l2),)
        items.append(
            BenchItem(
                id=index,
                image=images[index],
                question=str(row["question"]),
                answers=(answer,),
                choices=choices,
                hint=None if is_blank(row.get("hint")) else str(row["hint"]),
                categories=categories,
                group=str(int(index) % ROTATION),
                meta={"rotations": rotations[int(index) % ROTATION]},
            )
        )
    return items


def _tsv_rows(path: Path) -> list[dict]:
    csv.field_size_limit(sys.maxsize)
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if not rows:
        raise BenchmarkDataError(f"{NAME}: {path} has no rows")
    needed = ("index", "question", "A", "B", "answer", "category", "image")
    absent = [c for c in needed if c not in rows[0]]
    if absent:
        raise BenchmarkDataError(f"{NAME}: {path} lacks column(s) {', '.join(absent)}")
    return rows


def _tsv_images(rows: list[dict], path: Path) -> dict[str, ImageRef]:
    encoded = {str(int(float(r["index"]))): r["image"] for r in rows}
    images = {}
    for index, cell in encoded.items():
        # A short all-digit cell points at the row whose image this circular copy shares.
        if len(cell) <= 64 and cell.isdigit():
            if cell not in encoded:
                raise BenchmarkDataError(
                    f"{NAME}: {path}: row {index} image refers to missing row {cell}"
                )
            cell = encoded[cell]
        try:
            images[index] = ImageRef(data=base64.b64decode(cell, validate=True))
        except (binascii.Error, ValueError) as e:
            raise BenchmarkDataError(
                f"{NAME}: {path}: row {index} image is not base64 ({e})"
            ) from e
    return images


def read(data: str | Path, images: str | Path | None = None) -> list[BenchItem]:
    data = Path(data)
    rows = read_hub_rows(
        data, NAME, split="dev", config="en", columns=("index", "question", "answer", "image")
    )
    if rows is not None:
        refs = {
            str(int(float(r["index"]))): image_from_cell(r["image"], data, NAME, str(r["index"]))
            for r in rows
        }
        return _items(rows, refs, str(data))
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


def extract_letter(prediction: str, choices: Sequence[str]) -> str | None:
    """The chosen option letter by the rules in the module docstring, or None."""
    letters = CHOICE_LETTERS[: len(choices)]
    text = prediction.strip()
    match = _LONE.match(text) or _LEADING.match(text)
    if match:
        letter = next(g for g in match.groups() if g)
        return letter if letter in letters else None
    lowered = text.lower()
    contained = [i for i, choice in enumerate(choices) if choice and choice.lower() in lowered]
    return letters[contained[0]] if len(contained) == 1 else None


def score(pairs: Sequence[tuple[BenchItem, str]], judge: Judge | None = None) -> list[dict]:
    rows = []
    for item, prediction in pairs:
        letter = extract_letter(prediction, item.choices)
        rows.append(
            {
                "id": item.id,
                "group": item.group,
                "rotations": item.meta["rotations"],
                "prediction": prediction,
                "extracted": letter,
                "answer": item.answers[0],
                "score": float(letter == item.answers[0]),
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
    return {
        "circular": percent(
            sum(all(r["score"] == 1.0 for r in g) for g in complete), len(complete)
        ),
        "single_pass": percent(sum(r["score"] for r in first), len(first)),
        "unresolved": percent(sum(r["extracted"] is None for r in rows), len(rows)),
        "n_circular": len(complete),
    }


def summarize(rows: Sequence[dict]) -> dict:
    return {"metrics": metrics_of(rows), "categories": by_category(rows, metrics_of)}
