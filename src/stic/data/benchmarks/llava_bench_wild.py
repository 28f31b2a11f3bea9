"""LLaVA-Bench (in-the-wild, 60 questions on 24 images): judged against GPT-4's reference answers.

Formats read:
- original: ``questions.jsonl`` (``question_id``, ``image``, ``text``, ``category``),
  ``answers_gpt4.jsonl`` (``question_id``, ``text``: the reference answer), ``context.jsonl``
  (``image``, ``caption``) and ``images/`` (``--images``);
- hub: ``lmms-lab/llava-bench-in-the-wild`` split ``train`` (``question_id``, ``question``,
  ``image``, ``caption``, ``gpt_answer``, ``category``).

Prompt: the raw question (LLaVA-1.5's open-ended protocol), up to 1024 new tokens.

Score (LLaVA's ``eval_gpt_review_bench`` + ``summarize_gpt_review``): a judge sees the image
captions, the question, the reference answer (assistant 1) and the model's answer (assistant 2)
and gives each a 1-10 score on its first line. The first line is read as LLaVA's ``parse_score``
reads it: commas become spaces, it is split on single spaces and must give exactly two numbers
(so "8, 7", "8  7" and "**8 7**" are unparseable, "8,7" and "8 7\r" are not); stic also holds
a score outside 1-10 or not finite ("11 -3", "nan nan", "inf 5") unparseable. An unparseable
reply is not asked again (LLaVA's script does not) and counts as the pair (-1, -1) in the means,
as LLaVA's summary counts it. Relative score = 100 x mean(model) / mean(reference), each mean
first rounded to 3 decimals and the ratio to 1, overall and per category (conv, detail,
complex); the means x10 are reported too. ``relative_score_judged_only`` leaves the unparseable
replies out; ``judge_failed`` counts them. The judge prompt is ours, written to the structure
and output format of LLaVA's ``rule.json`` (see docs/benchmarks.md); its version is recorded
with the results.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from stic.data.benchmarks.aggregate import by_category
from stic.data.benchmarks.records import (
    BenchItem,
    BenchmarkDataError,
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
    read_json_lines,
    unique_ids,
)

NAME = "llava_bench_wild"
IMAGES_HINT = "the llava-bench-in-the-wild images folder"
MAX_NEW_TOKENS = 1024  # LLaVA's model_vqa default for open-ended answers
METRICS = ("relative_score", "model_score", "reference_score", "relative_score_judged_only")
PRIMARY = "relative_score"
JUDGE = "required"
JUDGE_PROMPT_VERSION = "stic-llava-bench-v1"
JUDGE_TEMPERATURE = 0.2  # LLaVA's review script
PROTOCOL = "LLaVA-1.5 open-ended: the raw question"

JUDGE_SYSTEM = "You are a careful, impartial reviewer of answers to questions about images."
JUDGE_INSTRUCTION = (
    "Two AI assistants answered the user's question about an image. You cannot see the image; "
    "the context above describes it in words. Rate each answer for helpfulness, relevance, "
    "accuracy and level of detail with one overall score from 1 to 10, higher being better.\n"
    "On the first line write only the two scores, Assistant 1's and then Assistant 2's, "
    "separated by a space.\n"
    "From the next line on, explain your rating. Judge the content only: neither the order in "
    "which the answers appear nor their length should change your scores."
)


CATEGORIES = ("conv", "detail", "complex")


def _caption(where, record, row: dict) -> str:
    """A caption string; LLaVA's review script joins a list of captions with newlines."""
    caption = checked(NAME, where, record, row, "caption", (str, list))
    if isinstance(caption, list):
        if not all(isinstance(c, str) for c in caption):
            raise bad_record(NAME, where, record, "caption list holds a non-string")
        return "\n".join(caption)
    return caption


def _item(where, qid: str, row: dict, question_key: str, answer: str, caption: str, image):
    question = checked(NAME, where, qid, row, question_key, (str,))
    category = checked(NAME, where, qid, row, "category", (str,))
    if category not in CATEGORIES:
        raise bad_record(NAME, where, qid, f"category {category!r} not in {CATEGORIES}")
    return BenchItem(
        id=qid,
        image=image,
        question=question,
        answers=(answer,),
        categories={"category": (category,)},
        meta={"caption": caption},
    )


def _qid(where, number, row) -> str:
    return str(checked(NAME, where, f"#{number}", row, "question_id", (int, str)))


def read(data: str | Path, images: str | Path | None = None) -> list[BenchItem]:
    data = Path(data)
    needed = ("question_id", "question", "image", "caption", "gpt_answer", "category")
    rows = read_hub_rows(data, NAME, split="train", columns=needed)
    if rows is not None:
        ids = [_qid(data, n, row) for n, row in enumerate(rows)]
        unique_ids(NAME, data, ids)
        return [
            _item(
                data,
                qid,
                row,
                "question",
                checked(NAME, data, qid, row, "gpt_answer", (str,)),
                _caption(data, qid, row),
                image_from_cell(row["image"], data, NAME, qid),
            )
            for qid, row in zip(ids, rows, strict=True)
        ]
    questions_path = find_file(
        data, ["questions.jsonl"], NAME, "give the llava-bench-in-the-wild folder"
    )
    root = questions_path.parent
    for needed_file in ("answers_gpt4.jsonl", "context.jsonl"):
        if not (root / needed_file).is_file():
            raise BenchmarkDataError(f"{NAME}: {root} lacks {needed_file} (beside questions.jsonl)")
    answers_path, context_path = root / "answers_gpt4.jsonl", root / "context.jsonl"
    answer_rows = read_json_lines(answers_path, NAME)
    answer_ids = [_qid(answers_path, n, r) for n, r in enumerate(answer_rows)]
    unique_ids(NAME, answers_path, answer_ids)
    answers = {
        qid: checked(NAME, answers_path, qid, r, "text", (str,))
        for qid, r in zip(answer_ids, answer_rows, strict=True)
    }
    context_rows = read_json_lines(context_path, NAME)
    captions = {
        checked(NAME, context_path, f"#{n}", r, "image", (str,)): _caption(context_path, f"#{n}", r)
        for n, r in enumerate(context_rows)
    }
    if not captions:
        raise BenchmarkDataError(f"{NAME}: {context_path}: holds no records")
    images = Path(images) if images is not None else root / "images"
    question_rows = read_json_lines(questions_path, NAME)
    ids = [_qid(questions_path, n, row) for n, row in enumerate(question_rows)]
    unique_ids(NAME, questions_path, ids)
    items = []
    for qid, row in zip(ids, question_rows, strict=True):
        image = checked(NAME, questions_path, qid, row, "image", (str,))
        if qid not in answers:
            raise bad_record(
                NAME, questions_path, qid, f"has no reference answer in {answers_path.name}"
            )
        if image not in captions:
            raise bad_record(
                NAME, questions_path, qid, f"image {image!r} has no caption in {context_path.name}"
            )
        items.append(
            _item(
                questions_path,
                qid,
                row,
                "text",
                answers[qid],
                captions[image],
                image_file(NAME, questions_path, qid, images, image),
            )
        )
    return items


def prompt(item: BenchItem) -> str:
    return item.question


def judge_prompt(item: BenchItem, prediction: str) -> JudgePrompt:
    user = (
        f"[Context]\n{item.meta['caption']}\n\n[Question]\n{item.question}\n\n"
        f"[Assistant 1]\n{item.answers[0]}\n\n[End of Assistant 1]\n\n"
        f"[Assistant 2]\n{prediction}\n\n[End of Assistant 2]\n\n[System]\n{JUDGE_INSTRUCTION}\n\n"
    )
    return JudgePrompt(
        system=JUDGE_SYSTEM,
        user=user,
        temperature=JUDGE_TEMPERATURE,
        max_tokens=1024,
        attempts=1,  # LLaVA's review script keeps the first reply, parseable or not
    )


SCORE_RANGE = (1.0, 10.0)  # rule.json: "an overall score on a scale of 1 to 10"
FAILED_PAIR = (-1.0, -1.0)  # what LLaVA's parse_score returns for a reply it cannot read


def parse_scores(reply: str) -> tuple[float, float]:
    """The (reference, model) scores on the reply's first line, read as LLaVA's ``parse_score``
    reads them, each finite and within 1-10; ValueError otherwise."""
    first = reply.split("\n")[0].replace(",", " ").split(" ")
    if len(first) != 2:
        raise ValueError(f"first line is not two space-separated scores: {reply[:80]!r}")
    reference, model = (float(x) for x in first)  # float() raises ValueError on a non-number
    low, high = SCORE_RANGE
    for value in (reference, model):
        if not (math.isfinite(value) and low <= value <= high):
            raise ValueError(f"score {value!r} is not a number from 1 to 10: {reply[:80]!r}")
    return reference, model


def score(pairs: Sequence[tuple[BenchItem, str]], judge: Judge | None = None) -> list[dict]:
    if judge is None:
        raise ValueError(f"{NAME} is scored by a judge model")
    verdicts = judge.ask([judge_prompt(item, pred) for item, pred in pairs], parse_scores)
    rows = []
    for (item, prediction), verdict in zip(pairs, verdicts, strict=True):
        row = {
            "id": item.id,
            "prediction": prediction,
            "extracted": prediction,
            "answer": item.answers[0],
            "categories": {k: list(v) for k, v in item.categories.items()},
            "judge_raw": verdict.raw,
        }
        if verdict.value is None:
            reference, model = FAILED_PAIR
            row["judge_failed"] = verdict.error
        else:
            reference, model = verdict.value
        row.update(
            reference_score=reference,
            model_score=model,
            score=None if "judge_failed" in row else model / 10,
        )
        rows.append(row)
    return rows


def _summary(rows: Sequence[dict]) -> tuple[float | None, float | None, float | None]:
    """LLaVA's summary line of ``rows``: (relative, reference x10, model x10), with its
    rounding; None where there is nothing to average or the reference mean rounds to 0."""
    if not rows:
        return None, None, None
    reference = round(sum(r["reference_score"] for r in rows) / len(rows), 3)
    model = round(sum(r["model_score"] for r in rows) / len(rows), 3)
    relative = round(model / reference * 100, 1) if reference else None
    return relative, round(reference * 10, 1), round(model * 10, 1)


def metrics_of(rows: Sequence[dict]) -> dict:
    relative, reference, model = _summary(rows)
    judged_only, _, _ = _summary([r for r in rows if "judge_failed" not in r])
    return {
        "relative_score": relative,
        "model_score": model,
        "reference_score": reference,
        "relative_score_judged_only": judged_only,
    }


def summarize(rows: Sequence[dict]) -> dict:
    metrics = {**metrics_of(rows), "judge_failed": sum("judge_failed" in r for r in rows)}
    return {"metrics": metrics, "categories": by_category(rows, metrics_of)}
