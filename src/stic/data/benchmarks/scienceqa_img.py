"""ScienceQA-IMG: the 2,017 test questions that have an image.

Formats read:
- original: ``problems.json`` (pid -> record with ``question``, ``choices``, ``answer`` (index),
  ``hint``, ``image`` (file name or null), ``split``, ``subject``, ...), optionally
  ``pid_splits.json`` (its ``test`` list wins over each record's ``split``), and the images at
  ``images/test/<pid>/<image>`` (``--images`` may name ``images/test`` or ``images``);
- hub: ``lmms-lab/ScienceQA`` config ``ScienceQA-IMG`` split ``test``. Its rows carry no pid,
  so an item's id there is its row position ("0", "1", ...).

Prompt (LLaVA-1.5's ``--single-pred-prompt``): ``Context: {hint}\\n`` when a hint exists, the
question, the options as ``A. text`` lines, then the option-letter instruction.

Score (LLaVA's ``eval_science_qa.py``): the prediction is the letter if it is exactly one of the
options' letters A-E, or starts with ``X. ``, or contains exactly one match of the pattern
``The answer is ([A-Z]).`` (its final ``.`` is any character); the letter must name one of the
question's options. The reply is read as it is, not stripped (``" A"`` and ``"A\\n"`` are no
letter). Anything else is wrong, as in the official script since LLaVA-1.5 (its random-option
fallback sits after a ``return -1`` and never runs). Accuracy overall and per subject.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Sequence
from pathlib import Path

from stic.data.benchmarks.aggregate import by_category, mean_score
from stic.data.benchmarks.records import (
    BenchItem,
    BenchmarkDataError,
    ImageRef,
    Judge,
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
from stic.data.prompts import CHOICE_LETTERS, question_prompt
from stic.runtime.files import read_json

NAME = "scienceqa_img"
MAX_NEW_TOKENS = 1024  # LLaVA's model_vqa_science default
METRICS = ("accuracy",)
PRIMARY = "accuracy"
IMAGES_HINT = "the ScienceQA images/test folder (<pid>/image.png)"
PROTOCOL = "LLaVA-1.5 multiple choice: 'Context: {hint}\\n' if any, question, 'A. ...' options, option-letter instruction"

_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")


def _validated(where, item_id: str, record) -> dict:
    """The fields of one question, checked: text fields, 2-5 option texts (LLaVA reads the
    letters A-E only), an answer index naming one of them, an optional hint and subject."""
    question = checked(NAME, where, item_id, record, "question", (str,))
    choices = text_list(NAME, where, item_id, record, "choices")
    if choices is None:
        raise bad_record(NAME, where, item_id, "lacks 'choices' (a list of option texts)")
    if not 2 <= len(choices) <= len(CHOICE_LETTERS[:5]):
        raise bad_record(NAME, where, item_id, f"has {len(choices)} choices, not 2 to 5")
    answer = checked(NAME, where, item_id, record, "answer", (int,))
    if not 0 <= answer < len(choices):
        raise bad_record(
            NAME, where, item_id, f"answer index {answer} is not one of its {len(choices)} choices"
        )
    hint = record.get("hint")
    if hint is not None and not isinstance(hint, str):
        raise bad_record(NAME, where, item_id, f"'hint' is {type(hint).__name__}, not a string")
    subject = record.get("subject")
    if subject is not None and not isinstance(subject, str):
        raise bad_record(
            NAME, where, item_id, f"'subject' is {type(subject).__name__}, not a string"
        )
    return {
        "question": question,
        "choices": tuple(choices),
        "answer": CHOICE_LETTERS[answer],
        "hint": None if is_blank(hint) else hint,
        "subject": subject,
        "meta": {k: record.get(k) for k in ("grade", "topic", "category", "skill") if k in record},
    }


def _item(item_id: str, fields: dict, image: ImageRef) -> BenchItem:
    return BenchItem(
        id=item_id,
        image=image,
        question=fields["question"],
        answers=(fields["answer"],),
        choices=fields["choices"],
        hint=fields["hint"],
        categories={"subject": (fields["subject"],)} if fields["subject"] else {},
        meta=fields["meta"],
    )


def read(data: str | Path, images: str | Path | None = None) -> list[BenchItem]:
    data = Path(data)
    needed = ("image", "question", "choices", "answer", "hint")
    rows = read_hub_rows(data, NAME, split="test", config="ScienceQA-IMG", columns=needed)
    if rows is not None:
        return [
            _item(
                str(n),
                _validated(data, str(n), row),
                image_from_cell(row["image"], data, NAME, str(n)),
            )
            for n, row in enumerate(rows)
            if row["image"] is not None
        ]
    problems_path = find_file(data, ["problems.json"], NAME, "give the ScienceQA data folder")
    problems = read_json(problems_path)
    if not isinstance(problems, dict):
        raise BenchmarkDataError(f"{NAME}: {problems_path}: not a JSON object of pid -> question")
    splits_path = problems_path.parent / "pid_splits.json"
    if splits_path.is_file():
        splits = read_json(splits_path)
        listed = splits.get("test") if isinstance(splits, dict) else None
        if not isinstance(listed, list) or not all(isinstance(p, str | int) for p in listed):
            raise BenchmarkDataError(f"{NAME}: {splits_path}: 'test' is not a list of pids")
        test_pids = [str(p) for p in listed]
        unique_ids(NAME, splits_path, test_pids)
        for pid in test_pids:
            if pid not in problems:
                raise bad_record(
                    NAME, splits_path, pid, f"is listed in 'test' but not in {problems_path.name}"
                )
    else:
        test_pids = [
            pid
            for pid, rec in problems.items()
            if isinstance(rec, dict) and rec.get("split") == "test"
        ]
    if not test_pids:
        raise BenchmarkDataError(
            f"{NAME}: {problems_path} has no test questions (no pid_splits.json 'test' list, no split 'test')"
        )
    root = problems_path.parent
    images = Path(images) if images is not None else root / "images" / "test"
    items = []
    for pid in test_pids:
        record = problems[pid]
        fields = _validated(problems_path, pid, record)
        image = checked(NAME, problems_path, pid, record, "image", (str,), optional=True)
        if not image:
            continue
        # --images may name images/test (files at <pid>/<image>) or images (test/<pid>/<image>).
        candidates = [
            image_file(NAME, problems_path, pid, images, posixpath.join(pid, image)),
            image_file(NAME, problems_path, pid, images, posixpath.join("test", pid, image)),
        ]
        found = existing_file([Path(c.path) for c in candidates])
        items.append(
            _item(pid, fields, candidates[0] if found is None else ImageRef(path=str(found)))
        )
    return items


def prompt(item: BenchItem) -> str:
    context = f"Context: {item.hint}\n" if item.hint else ""
    return context + question_prompt(item.question, list(item.choices))


def extract_letter(prediction: str, num_choices: int) -> str | None:
    """The option letter by LLaVA's ScienceQA rule, or None (see the module docstring)."""
    options = tuple(CHOICE_LETTERS[:5])  # letters, not a string: "" and "AB" are no option
    text = prediction  # not stripped: the official script reads " A" and "A\n" as no letter
    if text in options:
        letter = text
    elif len(text) >= 3 and text[0] in options and text[1:3] == ". ":
        letter = text[0]
    else:
        found = _ANSWER_IS.findall(text)
        letter = found[0] if len(found) == 1 else None
    return letter if letter is not None and letter in options[:num_choices] else None


def score(pairs: Sequence[tuple[BenchItem, str]], judge: Judge | None = None) -> list[dict]:
    rows = []
    for item, prediction in pairs:
        letter = extract_letter(prediction, len(item.choices))
        rows.append(
            {
                "id": item.id,
                "prediction": prediction,
                "extracted": letter,
                "answer": item.answers[0],
                "score": float(letter == item.answers[0]),
                "categories": {k: list(v) for k, v in item.categories.items()},
            }
        )
    return rows


def metrics_of(rows: Sequence[dict]) -> dict:
    return {"accuracy": mean_score(rows)}


def summarize(rows: Sequence[dict]) -> dict:
    return {"metrics": metrics_of(rows), "categories": by_category(rows, metrics_of)}
