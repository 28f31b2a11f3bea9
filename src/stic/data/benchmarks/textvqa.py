"""TextVQA (validation, 5,000 questions): VQA accuracy over 10 human answers.

Formats read:
- original: ``TextVQA_0.5.1_val.json`` (``{"data": [{"question_id", "question", "image_id",
  "answers", ...}]}``) with the images ``train_images/<image_id>.jpg`` (the validation images
  ship in the train folder; ``--images`` names that folder). OCR tokens come from
  ``TextVQA_Rosetta_OCR_v0.2_val.json`` beside it when present, else the prompt has no OCR line;
- hub: ``lmms-lab/textvqa`` split ``validation`` (``question_id``, ``question``, ``image``,
  ``answers``, ``ocr_tokens``).

Prompt (LLaVA-1.5): ``{question}\\nReference OCR token: {t1}, {t2}, ...\\n`` then the
short-answer instruction; the OCR line only when the item has OCR tokens (``meta["ocr_tokens"]``).

Score: the standard VQA accuracy. The prediction and every human answer are normalised
(:func:`normalize_vqa_answer`); for each of the 10 human answers, left out in turn, the
prediction scores min(1, matches among the other 9 / 3); the item's score is the mean of the 10.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from stic.data.benchmarks.aggregate import mean_score
from stic.data.benchmarks.records import BenchItem, BenchmarkDataError, Judge
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
from stic.data.prompts import SHORT_ANSWER_INSTRUCTION
from stic.runtime.files import read_json

NAME = "textvqa"
MAX_NEW_TOKENS = 128  # LLaVA-1.5's model_vqa_loader default, used for its TextVQA run
METRICS = ("accuracy",)
PRIMARY = "accuracy"
IMAGES_HINT = "the TextVQA train_images folder (<image_id>.jpg)"
PROTOCOL = (
    "LLaVA-1.5 short answer with OCR: '{question}\\nReference OCR token: {tokens}\\n"
    + SHORT_ANSWER_INSTRUCTION
    + "' (OCR line only when the item has tokens)"
)

# The VQA evaluation's normalisation, step by step (see normalize_vqa_answer).
_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")  # fmt: skip
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}  # fmt: skip
_ARTICLES = frozenset({"a", "an", "the"})
# English contractions as the evaluator's table writes them (the full forms it maps to). Each
# is looked up spelled with exactly one of its apostrophes missing ("dont" -> "don't",
# "couldnt've" -> "couldn't've"; "couldntve", missing two, stays as it is). Left out, as the
# table leaves them out: spellings that are words of their own ("its", "ill", "were", ...), and
# the forms of "I" ("im", "ive", "id've"): the table holds them capitalised ("Im"), and the
# answer is lowercased before the look-up, so they never match.
_CONTRACTIONS = (
    "ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've "
    "hasn't haven't he'd he'd've he's how'd how'll how's isn't it'd it'd've it'll ma'am "
    "mightn't mightn't've might've mustn't must've needn't not've o'clock oughtn't 'ow's'at "
    "shan't she'd've should've shouldn't shouldn't've somebody'd've somebody'll somebody's "
    "someone'd someone'd've someone'll someone's something'd something'd've something'll "
    "that's there'd there'd've there're there's they'd they'd've they'll they're they've "
    "'twas wasn't we'd've we've weren't what'll what're what's what've when's where'd "
    "where's where've who'd who'd've who'll who's who've why'll why're why's won't would've "
    "wouldn't wouldn't've y'all y'all'll y'all'd've you'd you'd've you'll you're you've"
).split()
# The table's one entry written backwards: "somebody'd" becomes "somebodyd" (and "somebodyd"
# stays as it is). Kept: it is the official verdict.
_REVERSED = {"somebody'd": "somebodyd"}


def _contraction_table() -> dict[str, str]:
    table = dict(_REVERSED)
    for full in _CONTRACTIONS:
        for cut in (i for i, c in enumerate(full) if c == "'"):
            table[full[:cut] + full[cut + 1 :]] = full
    return table


_CONTRACTION_TABLE = _contraction_table()
# The evaluator deletes periods with ``re.sub(pattern, "", text, re.UNICODE)``: the flag lands
# in the ``count`` argument, so only the first 32 matching periods of an answer go.
_PERIODS_DELETED = 32


def normalize_vqa_answer(text: str) -> str:
    """The VQA answer normalisation of LLaVA's ``m4c_evaluator`` (EvalAI's), step by step.

    1. lowercase; remove ``,`` and ``?``; ``'s`` -> `` 's``; strip; newlines/tabs to spaces;
       strip again;
    2. each punctuation mark of ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !`` is deleted when it
       touches a space in the answer, else replaced by a space (the evaluator's digit,digit
       comma test can never fire: commas are gone by then);
    3. a period not followed by a digit is deleted ("3.5" keeps its point), the first 32 only;
    4. number words none/zero..ten become digits, articles a/an/the are dropped, contractions
       missing one apostrophe get it back ("dont" -> "don't").

    Examples: ``"The Coca-Cola."`` -> ``"coca cola"``; ``"Two dogs"`` -> ``"2 dogs"``.
    """
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    original = text
    for mark in _PUNCTUATION:
        touches_space = f"{mark} " in original or f" {mark}" in original
        text = text.replace(mark, "" if touches_space else " ")
    text = _PERIOD_NOT_BEFORE_DIGIT.sub("", text, count=_PERIODS_DELETED)
    words = [_NUMBERS.get(word, word) for word in text.split()]
    words = [_CONTRACTION_TABLE.get(word, word) for word in words if word not in _ARTICLES]
    return " ".join(words)


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Mean over the human answers, each left out in turn, of min(1, matches among the rest / 3).

    Both sides are normalised with :func:`normalize_vqa_answer`.
    """
    predicted = normalize_vqa_answer(prediction)
    gold = [normalize_vqa_answer(a) for a in answers]
    matches = sum(g == predicted for g in gold)
    total = 0.0
    for g in gold:
        others = matches - (g == predicted)
        total += min(1.0, others / 3)
    return total / len(gold)


ANSWERS_PER_QUESTION = 10  # the evaluator asserts exactly 10 human answers per question


def _answers(where, qid: str, row) -> tuple[str, ...]:
    answers = text_list(NAME, where, qid, row, "answers")
    if answers is None:
        raise bad_record(NAME, where, qid, "lacks 'answers' (the 10 human answers)")
    if len(answers) != ANSWERS_PER_QUESTION:
        raise bad_record(
            NAME, where, qid, f"has {len(answers)} answers, not {ANSWERS_PER_QUESTION}"
        )
    return tuple(answers)


def _qid(where, number: int, row) -> str:
    return str(checked(NAME, where, f"#{number}", row, "question_id", (int, str)))


def _ocr_by_image(root: Path) -> dict[str, list[str]]:
    found = sorted(root.rglob("TextVQA_Rosetta_OCR_v0.2_val.json"))
    if not found:
        return {}
    document = read_json(found[0])
    records = document.get("data") if isinstance(document, dict) else None
    if not isinstance(records, list):
        raise BenchmarkDataError(f"{NAME}: {found[0]} lacks the 'data' list of OCR records")
    tokens = {}
    for n, record in enumerate(records):
        image_id = str(checked(NAME, found[0], f"#{n}", record, "image_id", (str, int)))
        tokens[image_id] = text_list(NAME, found[0], image_id, record, "ocr_tokens") or []
    return tokens


def read(data: str | Path, images: str | Path | None = None) -> list[BenchItem]:
    """Every record is checked: ``question_id`` (unique), ``question``, ``image_id`` and exactly
    10 answer strings; OCR tokens a list of strings."""
    data = Path(data)
    rows = read_hub_rows(
        data, NAME, split="validation", columns=("question_id", "question", "image", "answers")
    )
    if rows is not None:
        ids = [_qid(data, n, row) for n, row in enumerate(rows)]
        unique_ids(NAME, data, ids)
        return [
            BenchItem(
                id=qid,
                image=image_from_cell(row["image"], data, NAME, qid),
                question=checked(NAME, data, qid, row, "question", (str,)),
                answers=_answers(data, qid, row),
                meta={"ocr_tokens": text_list(NAME, data, qid, row, "ocr_tokens") or []},
            )
            for qid, row in zip(ids, rows, strict=True)
        ]
    path = find_file(
        data, ["TextVQA_0.5.1_val.json"], NAME, "give the TextVQA annotation file or its folder"
    )
    document = read_json(path)
    if not isinstance(document, dict) or not isinstance(document.get("data"), list):
        raise BenchmarkDataError(f"{NAME}: {path} lacks the 'data' list of questions")
    rows = document["data"]
    ids = [_qid(path, n, row) for n, row in enumerate(rows)]
    unique_ids(NAME, path, ids)
    ocr = _ocr_by_image(path.parent)
    images = Path(images) if images is not None else path.parent / "train_images"
    items = []
    for qid, row in zip(ids, rows, strict=True):
        image_id = str(checked(NAME, path, qid, row, "image_id", (str, int)))
        items.append(
            BenchItem(
                id=qid,
                image=image_file(NAME, path, qid, images, f"{image_id}.jpg"),
                question=checked(NAME, path, qid, row, "question", (str,)),
                answers=_answers(path, qid, row),
                meta={"ocr_tokens": ocr.get(image_id, [])},
            )
        )
    return items


def prompt(item: BenchItem) -> str:
    tokens = item.meta.get("ocr_tokens") or []
    ocr = f"\nReference OCR token: {', '.join(tokens)}" if tokens else ""
    return f"{item.question}{ocr}\n{SHORT_ANSWER_INSTRUCTION}"


def score(pairs: Sequence[tuple[BenchItem, str]], judge: Judge | None = None) -> list[dict]:
    return [
        {
            "id": item.id,
            "prediction": prediction,
            "extracted": normalize_vqa_answer(prediction),
            "answer": list(item.answers),
            "score": vqa_accuracy(prediction, item.answers),
            "categories": {},
        }
        for item, prediction in pairs
    ]


def metrics_of(rows: Sequence[dict]) -> dict:
    return {"accuracy": mean_score(rows)}


def summarize(rows: Sequence[dict]) -> dict:
    return {"metrics": metrics_of(rows), "categories": {}}
