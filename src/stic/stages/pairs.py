"""Stage 1a: build the preference set from unlabeled images.

For each image (id = its path relative to the folder):

- chosen   = model(clean image, GOOD_PROMPT)
- rejected = model(clean image, a BAD_PROMPT)            with probability ``bad_prompt_prob``
           = model(corrupt(image), a PLAIN_PROMPT)       otherwise; the corruption is applied to
             the pixels the model sees and recorded as applied
- stored prompt = one PLAIN_PROMPT, the user turn both answers are trained under.

Every decision comes from :func:`plan_pair`, a pure function of (seed, image id).
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from stic.config import PairsConfig
from stic.data.corruptions import apply_corruption, sample_corruption
from stic.data.prompts import BAD_PROMPTS, GOOD_PROMPT, PLAIN_PROMPTS
from stic.data.schemas import PairRecord
from stic.modeling.generation import Request
from stic.runtime.files import read_jsonl
from stic.runtime.images import scan_images
from stic.runtime.rng import item_rng, item_seed
from stic.runtime.shards import select_shard
from stic.stages.runner import GenerationStage, StageSummary, run_generation

logger = logging.getLogger(__name__)

STAGE = "pairs"
_KIND_OF_CORRUPTION = {"lowres": "corrupt_lowres", "color_jitter": "corrupt_color"}


@dataclass(frozen=True)
class PairPlan:
    """The random decisions for one image, made before any model call."""

    id: str
    prompt: str
    rejected_kind: str
    rejected_prompt: str
    corruption: dict | None


def plan_pair(image_id: str, config: PairsConfig) -> PairPlan:
    rng = item_rng(config.seed, image_id, STAGE)
    stored_prompt = rng.choice(PLAIN_PROMPTS)
    if rng.random() < config.bad_prompt_prob:
        return PairPlan(image_id, stored_prompt, "bad_prompt", rng.choice(BAD_PROMPTS), None)
    corruption = sample_corruption(
        rng,
        lowres_prob=config.lowres_prob,
        short_side=config.lowres_short_side,
        brightness=config.jitter_brightness,
        hue=config.jitter_hue,
    )
    kind = _KIND_OF_CORRUPTION[corruption["kind"]]
    return PairPlan(image_id, stored_prompt, kind, rng.choice(PLAIN_PROMPTS), corruption)


def run_pairs(config: PairsConfig, model=None, processor=None, backend=None) -> StageSummary:
    """Write one :class:`PairRecord` per image to ``config.out``, resuming what is there.

    ``model``/``processor`` (tests, the demo) or an open ``backend`` may be passed in; otherwise
    ``config.backend`` is opened (with ``config.adapter`` applied), and only if some image still
    needs a pair.
    """
    scan = scan_images(config.images, limit=config.limit)
    # Folder entries that cannot become ids (names not UTF-8, link loops) are reported like
    # unreadable images; under --shard, by the one shard their name falls in.
    unlisted = {name: scan.skipped[name] for name in select_shard(list(scan.skipped), config.shard)}
    stage = GenerationStage(
        name=STAGE,
        item_id=lambda image_id: image_id,
        image_of=lambda image_id: image_id,
        make_records=functools.partial(make_pairs, config=config),
        details=pair_details,
        adopt=functools.partial(adoption_problems, config=config),
        unit="img",
    )
    return run_generation(
        stage,
        config,
        select_shard(scan.ids, config.shard),
        model=model,
        processor=processor,
        adapter=config.adapter,
        known_bad=unlisted,
        backend=backend,
    )


def sampling_settings(config: PairsConfig) -> dict:
    """What a pair record stores of how its answers were sampled."""
    return {
        "temperature": config.temperature,
        "top_p": config.top_p,
        "max_new_tokens": config.max_new_tokens,
        "seed": config.seed,
    }


def pair_details(records: list[dict]) -> dict:
    """Rejected kinds and answers cut at the token limit, over the stage's pairs."""
    kinds = Counter(r["rejected_kind"] for r in records)
    truncated = sum(
        (r.get("chosen_finish") == "length") + (r.get("rejected_finish") == "length")
        for r in records
    )
    return {"pairs": len(records), "rejected_kinds": dict(kinds), "truncated_answers": truncated}


def adoption_problems(out: Path, config: PairsConfig) -> list[str]:
    """Why a pairs file without a manifest cannot be resumed by this config (``[]``: it can).

    Its records say which model and sampling made them; a file made by another model or with
    other settings is never continued under this one.
    """
    problems = []
    expected = {
        "model": config.model,
        "adapter": config.adapter,
        "sampling": sampling_settings(config),
    }
    for number, row in enumerate(read_jsonl(out), start=1):
        if not isinstance(row, dict) or "id" not in row:
            return [f"line {number} is not a pair record"]
        for key, value in expected.items():
            if row.get(key) != value:
                problems.append(
                    f"line {number} was made with {key} {row.get(key)!r}, not {value!r}"
                )
        if problems:
            return problems
    return problems


def make_pairs(image_ids: list[str], images: list, backend, *, config: PairsConfig) -> list[dict]:
    """One pair record per image: the chosen and the rejected answer, as planned for the image.

    Each answer has its own seed from (seed, image id, which answer): vLLM samples each with it;
    HF samples a batch with the seed of its first image (:mod:`stic.modeling.backends`).
    """
    plans = [plan_pair(image_id, config) for image_id in image_ids]
    rejected_images = [
        image if plan.corruption is None else apply_corruption(image, plan.corruption)
        for plan, image in zip(plans, images, strict=True)
    ]
    # Chosen and rejected answers go in separate calls: at most batch_size sequences each, and
    # answers of one kind have similar lengths, so less padding.
    options = dict(
        max_new_tokens=config.max_new_tokens, temperature=config.temperature, top_p=config.top_p
    )
    chosen_outputs = backend.generate(
        [Request(GOOD_PROMPT, image) for image in images],
        seeds=[item_seed(config.seed, plan.id, "generate-chosen") for plan in plans],
        **options,
    )
    rejected_outputs = backend.generate(
        [
            Request(plan.rejected_prompt, image)
            for plan, image in zip(plans, rejected_images, strict=True)
        ],
        seeds=[item_seed(config.seed, plan.id, "generate-rejected") for plan in plans],
        **options,
    )
    sampling = sampling_settings(config)
    return [
        PairRecord(
            id=plan.id,
            image=plan.id,
            prompt=plan.prompt,
            chosen=chosen.text,
            rejected=rejected.text,
            rejected_kind=plan.rejected_kind,
            chosen_prompt=GOOD_PROMPT,
            rejected_prompt=plan.rejected_prompt,
            corruption=plan.corruption,
            model=config.model,
            adapter=config.adapter,
            sampling=sampling,
            chosen_finish=chosen.finish,
            rejected_finish=rejected.finish,
        ).to_dict()
        for plan, chosen, rejected in zip(plans, chosen_outputs, rejected_outputs, strict=True)
    ]
