"""Stage 2, part 1: the stage-1 model describes each instruction image; the description is
infused into the sample's first human turn (:func:`stic.data.prompts.infuse_description`).

Descriptions are appended to ``<out>.partial.jsonl`` as they are made (a rerun resumes), and
joined to samples BY ID, never by position; the output is written whole at the end.
"""

from __future__ import annotations

import dataclasses
import functools
import logging

from stic.config import InfuseConfig
from stic.data.prompts import PLAIN_PROMPTS, infuse_description
from stic.data.schemas import InstructSample, Turn, read_instruct
from stic.modeling.generation import Request
from stic.runtime.rng import item_rng, item_seed
from stic.runtime.shards import select_shard
from stic.stages.runner import GenerationStage, StageSummary, run_generation

logger = logging.getLogger(__name__)

STAGE = "infuse"


def description_prompt(sample_id: str, seed: int) -> str:
    """The plain prompt that asks for sample ``sample_id``'s description."""
    return item_rng(seed, sample_id, STAGE).choice(PLAIN_PROMPTS)


def infuse_sample(sample: InstructSample, description: str, prompt: str) -> InstructSample:
    """The sample with its first human turn rewritten; answers and later turns unchanged."""
    first = sample.conversations[0]
    turns = (
        Turn(first.speaker, infuse_description(first.value, description)),
    ) + sample.conversations[1:]
    return dataclasses.replace(
        sample, conversations=turns, infusion={"description": description, "prompt": prompt}
    )


def join_descriptions(
    samples: list[InstructSample], descriptions: dict[str, dict]
) -> list[InstructSample]:
    """Infuse each sample that has a description (keyed by sample id); others pass unchanged."""
    out = []
    for sample in samples:
        made = descriptions.get(sample.id)
        out.append(
            sample if made is None else infuse_sample(sample, made["description"], made["prompt"])
        )
    return out


def run_infuse(config: InfuseConfig, model=None, processor=None, backend=None) -> StageSummary:
    """Describe every image sample of ``config.data`` and write the infused list to ``config.out``.

    A rerun reuses the descriptions already made; the model is loaded (``config.backend``
    opened with the stage-1 adapter) only if one is missing. Text-only samples pass through
    unchanged.
    """
    samples = read_instruct(config.data)
    if config.limit is not None:
        samples = samples[: config.limit]
    if config.shard is not None:
        mine = set(select_shard([s.id for s in samples], config.shard))
        samples = [s for s in samples if s.id in mine]
    stage = GenerationStage(
        name=STAGE,
        item_id=lambda sample: sample.id,
        image_of=lambda sample: sample.image,
        make_records=functools.partial(describe, config=config),
        details=lambda records: {
            "infused": len(records),
            "text_only": sum(1 for s in samples if s.image is None),
            "truncated_descriptions": sum(1 for r in records if r.get("finish") == "length"),
        },
        finish=lambda records, output: output.write_json(
            [s.to_dict() for s in join_descriptions(samples, {r["id"]: r for r in records})]
        ),
        unit="img",
    )
    return run_generation(
        stage,
        config,
        [s for s in samples if s.image is not None],
        model=model,
        processor=processor,
        adapter=config.adapter,
        backend=backend,
    )


def describe(
    samples: list[InstructSample], images: list, backend, *, config: InfuseConfig
) -> list[dict]:
    """One description record per sample: ``{id, description, prompt, finish}``."""
    prompts = [description_prompt(sample.id, config.seed) for sample in samples]
    outputs = backend.generate(
        [Request(prompt, image) for prompt, image in zip(prompts, images, strict=True)],
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        seeds=[item_seed(config.seed, sample.id, "generate") for sample in samples],
    )
    return [
        {"id": sample.id, "description": gen.text, "prompt": prompt, "finish": gen.finish}
        for sample, prompt, gen in zip(samples, prompts, outputs, strict=True)
    ]
