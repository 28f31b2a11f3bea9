"""Answer VQA questions greedily, optionally with describe-and-respond, and score them.

Describe-and-respond (the paper's inference option), the image passed in BOTH steps:
  1. description = model(image, DAR_DESCRIBE_PROMPT)
  2. answer      = model(image, "Image description:\\n{description}\\n\\n{question}")
"""

from __future__ import annotations

import logging

from stic.config import EvalConfig
from stic.data.prompts import DAR_DESCRIBE_PROMPT, infuse_description, question_prompt
from stic.data.schemas import EvalItem, EvalResult, read_eval_items
from stic.data.scoring import is_correct
from stic.modeling.generation import Request
from stic.runtime.manifests import remove_output
from stic.runtime.output import Output
from stic.stages.runner import GenerationStage, StageSummary, run_generation

logger = logging.getLogger(__name__)

STAGE = "eval"


def item_prompt(item: EvalItem, instruction: str | None, description: str | None = None) -> str:
    text = question_prompt(item.question, list(item.choices) if item.choices else None, instruction)
    return text if description is None else infuse_description(text, description)


def answer_batch(
    items: list[EvalItem], images: list, config: EvalConfig, backend
) -> list[EvalResult]:
    """Greedy answers for a batch of items (with their loaded images), scored."""
    descriptions: list[str | None] = [None] * len(items)
    if config.dar:
        described = backend.generate(
            [Request(DAR_DESCRIBE_PROMPT, image) for image in images],
            max_new_tokens=config.dar_max_new_tokens,
        )
        descriptions = [d.text for d in described]
    requests = [
        Request(item_prompt(item, config.instruction, description), image)
        for item, image, description in zip(items, images, descriptions, strict=True)
    ]
    answers = backend.generate(requests, max_new_tokens=config.max_new_tokens)
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


def accuracy_details(results: list[dict]) -> dict:
    correct = sum(1 for r in results if r["correct"])
    return {
        "accuracy": correct / len(results) if results else 0.0,
        "correct": correct,
        "n": len(results),
    }


def run_eval(config: EvalConfig, model=None, processor=None, backend=None) -> StageSummary:
    """Score ``config.data``; writes ``config.out`` (the figures + every item) and returns the summary.

    A rerun reuses the answers already made; the model is loaded only if one is missing. An
    evaluation in which no item could be scored (no image loads) is an error, not accuracy 0.
    """
    items = read_eval_items(config.data)
    if config.limit is not None:
        items = items[: config.limit]
    about = {"dar": config.dar, "model": config.model, "adapter": config.adapter}
    stage = GenerationStage(
        name=STAGE,
        item_id=lambda item: item.id,
        image_of=lambda item: item.image,
        make_records=lambda batch, images, backend: [
            r.to_dict() for r in answer_batch(batch, images, config, backend)
        ],
        details=lambda results: {**accuracy_details(results), **about},
        finish=lambda results, output: _write_results(output, results, about),
        unit="q",
    )
    summary = run_generation(
        stage,
        config,
        items,
        model=model,
        processor=processor,
        adapter=config.adapter,
        backend=backend,
    )
    if items and not summary.details["n"]:
        remove_output(config.out)  # an accuracy over nothing is not a result to keep
        shown = "; ".join(list(summary.bad_items.values())[:3])
        raise ValueError(f"{config.data}: none of its {len(items)} items could be scored ({shown})")
    return summary


def _write_results(output: Output, results: list[dict], about: dict) -> None:
    output.write_json({**accuracy_details(results), **about, "items": results})
