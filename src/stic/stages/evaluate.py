"""Answer VQA questions greedily, optionally with describe-and-respond, and score them.

Describe-and-respond (the paper's inference option), the image passed in BOTH steps:
  1. description = model(image, DAR_DESCRIBE_PROMPT)
  2. answer      = model(image, "Image description:\\n{description}\\n\\n{question}")
"""

from __future__ import annotations

import logging
from pathlib import Path

from tqdm.auto import tqdm

from stic.config import EvalConfig
from stic.data.prompts import DAR_DESCRIBE_PROMPT, infuse_description, question_prompt
from stic.data.schemas import EvalItem, EvalResult, read_eval_items
from stic.data.scoring import is_correct
from stic.modeling.generation import Request, batched, generate
from stic.modeling.models import model_loader
from stic.runtime.files import append_jsonl, atomic_write_json, read_json, read_jsonl
from stic.runtime.images import ImageError, load_image, resolve_image_path
from stic.runtime.manifests import stage_status, write_manifest

logger = logging.getLogger(__name__)

STAGE = "eval"


def item_prompt(item: EvalItem, instruction: str | None, description: str | None = None) -> str:
    text = question_prompt(item.question, list(item.choices) if item.choices else None, instruction)
    return text if description is None else infuse_description(text, description)


def answer_batch(
    items: list[EvalItem], images: list, config: EvalConfig, model, processor
) -> list[EvalResult]:
    """Greedy answers for a batch of items (with their loaded images), scored."""
    descriptions: list[str | None] = [None] * len(items)
    if config.dar:
        described = generate(
            model,
            processor,
            [Request(DAR_DESCRIBE_PROMPT, image) for image in images],
            max_new_tokens=config.dar_max_new_tokens,
        )
        descriptions = [d.text for d in described]
    requests = [
        Request(item_prompt(item, config.instruction, description), image)
        for item, image, description in zip(items, images, descriptions, strict=True)
    ]
    answers = generate(model, processor, requests, max_new_tokens=config.max_new_tokens)
    return [
        EvalResult(
            id=item.id,
            question=item.question,
            answer=item.answer,
            prediction=answer.text,
            correct=is_correct(
                answer.text, item.answer, list(item.choices) if item.choices else None
            ),
            description=description,
        )
        for item, answer, description in zip(items, answers, descriptions, strict=True)
    ]


def summarize(results: list[dict], skipped: dict[str, str]) -> dict:
    correct = sum(1 for r in results if r["correct"])
    return {
        "accuracy": correct / len(results) if results else 0.0,
        "correct": correct,
        "n": len(results),
        "skipped": skipped,
    }


def run_eval(config: EvalConfig, model=None, processor=None) -> dict:
    """Score ``config.data``; writes ``config.out`` (summary + items) and returns the summary.

    A rerun reuses the answers already made; the model is loaded only if one is missing.
    """
    out = Path(config.out)
    partial = out.with_name(out.name + ".partial.jsonl")
    items = read_eval_items(config.data)
    if config.limit is not None:
        items = items[: config.limit]
    status = stage_status(out, STAGE, config)
    get_model = model_loader(config, model, processor, adapter=config.adapter)
    done = {row["id"]: row for row in read_jsonl(partial, repair=True)}
    todo = [item for item in items if item.id not in done]
    if status != "complete":
        write_manifest(out, STAGE, config, "running")
    skipped: dict[str, str] = {}
    made = 0
    with tqdm(total=len(todo), desc="eval" + (" (dar)" if config.dar else ""), unit="q") as bar:
        for batch in batched(todo, config.batch_size):
            kept, images = [], []
            for item in batch:
                try:
                    images.append(load_image(resolve_image_path(config.images, item.image)))
                    kept.append(item)
                except (ImageError, ValueError) as e:
                    skipped[item.id] = f"{item.image}: {e}"
            if kept:
                rows = [r.to_dict() for r in answer_batch(kept, images, config, *get_model())]
                append_jsonl(partial, rows)
                done.update((row["id"], row) for row in rows)
                made += len(rows)
            bar.update(len(batch))
    results = [done[item.id] for item in items if item.id in done]
    summary = {
        **summarize(results, skipped),
        "dar": config.dar,
        "model": config.model,
        "adapter": config.adapter,
    }
    previous = read_json(out) if out.exists() else None
    unchanged = (
        status == "complete"
        and not made
        and previous is not None
        and [r["id"] for r in previous["items"]] == [r["id"] for r in results]
    )
    if not unchanged:
        atomic_write_json(out, {**summary, "items": results})
        write_manifest(out, STAGE, config, "complete", summary)
    return summary
