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
and gives each a 1-10 score on its first line. Relative score = 100 x mean(model) / mean(reference),
overall and per category (conv, detail, complex); the mean scores x10 are reported too. The judge
prompt is ours, written to the structure and output format of LLaVA's ``rule.json`` (see
docs/benchmarks.md); its version is recorded with the results.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from stic.data.benchmarks.aggregate import by_category
from stic.data.benchmarks.records import (
    BenchItem,
    BenchmarkDataError,
    ImageRef,
    Judge,
    JudgePrompt,
    check_image_files,
)
from stic.data.benchmarks.tables import find_file, image_from_cell, read_hub_rows, read_json_lines

NAME = "llava_bench_wild"
MAX_NEW_TOKENS = 1024  # LLaVA's model_vqa default for open-ended answers
METRICS = ("relative_score", "model_score", "reference_score")
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


def read(data: str | Path, images: str | Path | None = None) -> list[BenchItem]:
    data = Path(data)
    needed = ("question_id", "question", "image", "caption", "gpt_answer", "category")
    rows = read_hub_rows(data, NAME, split="train", columns=needed)
    if rows is not None:
        return [
            BenchItem(
                id=str(row["question_id"]),
                image=image_from_cell(row["image"], None, NAME, str(row["question_id"])),
                question=row["question"],
                answers=(row["gpt_answer"],),
                categories={"category": (row["category"],)},
                meta={"caption": row["caption"]},
            )
            for row in rows
        ]
    questions_path = find_file(
        data, ["questions.jsonl"], NAME, "give the llava-bench-in-the-wild folder"
    )
    root = questions_path.parent
    for needed_file in ("answers_gpt4.jsonl", "context.jsonl"):
        if not (root / needed_file).is_file():
            raise BenchmarkDataError(f"{NAME}: {root} lacks {needed_file} (beside questions.jsonl)")
    answers = {
        str(r["question_id"]): r["text"] for r in read_json_lines(root / "answers_gpt4.jsonl", NAME)
    }
    captions = {r["image"]: r["caption"] for r in read_json_lines(root / "context.jsonl", NAME)}
    images = Path(images) if images is not None else root / "images"
    items = []
    for row in read_json_lines(questions_path, NAME):
        qid = str(row["question_id"])
        if qid not in answers or row["image"] not in captions:
            raise BenchmarkDataError(f"{NAME}: question {qid} has no reference answer or caption")
        items.append(
            BenchItem(
                id=qid,
                image=ImageRef(path=str(images / row["image"])),
                question=row["text"],
                answers=(answers[qid],),
                categories={"category": (row["category"],)},
                meta={"caption": captions[row["image"]]},
            )
        )
    check_image_files(NAME, items, images, "the llava-bench-in-the-wild images folder")
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
        system=JUDGE_SYSTEM, user=user, temperature=JUDGE_TEMPERATURE, max_tokens=1024
    )


def parse_scores(reply: str) -> tuple[float, float]:
    """The two scores on the reply's first line ("8 6" or "8, 6"); ValueError otherwise."""
    first = reply.strip().split("\n")[0].replace(",", " ").split()
    if len(first) != 2:
        raise ValueError(f"first line is not two scores: {reply.strip()[:80]!r}")
    reference, model = (float(x) for x in first)
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
            row.update(score=None, judge_failed=verdict.error)
        else:
            reference, model = verdict.value
            row.update(reference_score=reference, model_score=model, score=model / 10)
        rows.append(row)
    return rows


def metrics_of(rows: Sequence[dict]) -> dict:
    scored = [r for r in rows if r.get("judge_failed") is None and r.get("model_score") is not None]
    if not scored:
        return {"relative_score": 0.0, "model_score": 0.0, "reference_score": 0.0}
    model = sum(r["model_score"] for r in scored) / len(scored)
    reference = sum(r["reference_score"] for r in scored) / len(scored)
    return {
        "relative_score": round(100 * model / reference, 4) if reference else 0.0,
        "model_score": round(10 * model, 4),
        "reference_score": round(10 * reference, 4),
    }


def summarize(rows: Sequence[dict]) -> dict:
    metrics = {**metrics_of(rows), "judge_failed": sum("judge_failed" in r for r in rows)}
    return {"metrics": metrics, "categories": by_category(rows, metrics_of)}
