"""Stage 1a: build the preference set from unlabeled images.

For each image (id = its path relative to the folder):

- chosen   = model(clean image, GOOD_PROMPT)
- rejected = model(clean image, a BAD_PROMPT)            with probability ``bad_prompt_prob``
           = model(corrupt(image), a PLAIN_PROMPT)       otherwise; the corruption is applied to
             the pixels the model sees and recorded as applied
- stored prompt = one PLAIN_PROMPT, the user turn both answers are trained under.

Every decision comes from :func:`plan_pair`, a pure function of (seed, image id).

The requests of a batch go to the backend as :func:`generation_calls` says: with a backend that
reuses an image's encoding within a call (``caches_by_image``: vLLM), one call per batch, each
image's chosen and bad-prompt rejected requests adjacent (they share the clean image) and the
corrupted-image requests after them; otherwise (HF) one call for the chosen answers and one for
the rejected ones. Each request has its own seed either way.
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


@dataclass
class GenerateCalls:
    """The backend calls one run of the stage made, for its summary.

    ``calls``: ``generate`` calls; ``grouped``: whether they held each batch's requests grouped
    by image (``None``: no batch was made by this process, e.g. a rerun with nothing to do, or
    a Ray run, whose workers make the calls).
    """

    calls: int = 0
    grouped: bool | None = None


def run_pairs(config: PairsConfig, model=None, processor=None, backend=None) -> StageSummary:
    """Write one :class:`PairRecord` per image to ``config.out``, resuming what is there.

    ``model``/``processor`` (tests, the demo) or an open ``backend`` may be passed in; otherwise
    ``config.backend`` is opened (with ``config.adapter`` applied), and only if some image still
    needs a pair. The summary's details say how many ``generate`` calls this run made
    (``generate_calls``; ``None`` under Ray, where the workers make them) and whether they were
    grouped by image.
    """
    calls = GenerateCalls()
    scan = scan_images(config.images, limit=config.limit)
    # Folder entries that cannot become ids (names not UTF-8, link loops) are reported like
    # unreadable images; under --shard, by the one shard their name falls in.
    unlisted = {name: scan.skipped[name] for name in select_shard(list(scan.skipped), config.shard)}
    stage = GenerationStage(
        name=STAGE,
        item_id=lambda image_id: image_id,
        image_of=lambda image_id: image_id,
        make_records=functools.partial(make_pairs, config=config, calls=calls),
        details=functools.partial(pair_details, calls=None if config.ray else calls),
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


def pair_details(records: list[dict], calls: GenerateCalls | None = None) -> dict:
    """Rejected kinds and answers cut at the token limit, over the stage's pairs; the generate
    calls of this run (``None``: not counted in this process)."""
    kinds = Counter(r["rejected_kind"] for r in records)
    truncated = sum(
        (r.get("chosen_finish") == "length") + (r.get("rejected_finish") == "length")
        for r in records
    )
    return {
        "pairs": len(records),
        "rejected_kinds": dict(kinds),
        "truncated_answers": truncated,
        "generate_calls": None if calls is None else calls.calls,
        "requests_grouped_by_image": None if calls is None else calls.grouped,
    }


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


def generation_calls(plans: list[PairPlan], grouped: bool) -> list[list[tuple[str, int]]]:
    """The backend calls for one batch, each a list of requests as (answer, item index), with
    answer ``chosen`` or ``rejected``.

    ``grouped`` (a backend that reuses an image's encoding within a call): one call, in which
    each item's chosen request is followed by its rejected one when that asks about the same
    clean image (bad prompt), so the two are scheduled together; the rejected requests on
    corrupted images, which share nothing with the clean image, come after all of those.
    Otherwise two calls: the chosen answers, then the rejected ones (answers of one kind have
    similar lengths: less padding for HF).
    """
    if not grouped:
        return [
            [("chosen", i) for i in range(len(plans))],
            [("rejected", i) for i in range(len(plans))],
        ]
    call: list[tuple[str, int]] = []
    for i, plan in enumerate(plans):
        call.append(("chosen", i))
        if plan.corruption is None:
            call.append(("rejected", i))
    call += [("rejected", i) for i, plan in enumerate(plans) if plan.corruption is not None]
    return [call]


def make_pairs(
    image_ids: list[str],
    images: list,
    backend,
    *,
    config: PairsConfig,
    calls: GenerateCalls | None = None,
) -> list[dict]:
    """One pair record per image: the chosen and the rejected answer, as planned for the image.

    Each answer has its own seed from (seed, image id, which answer): vLLM samples each with it,
    so how the requests are grouped into calls does not change the answers; HF samples a batch
    with the seed of its first image (:mod:`stic.modeling.backends`). ``calls`` counts the
    backend calls made.
    """
    plans = [plan_pair(image_id, config) for image_id in image_ids]
    rejected_images = [
        image if plan.corruption is None else apply_corruption(image, plan.corruption)
        for plan, image in zip(plans, images, strict=True)
    ]
    # The chosen and the bad-prompt rejected request of an image hold the same image object.
    requests = {
        "chosen": [Request(GOOD_PROMPT, image) for image in images],
        "rejected": [
            Request(plan.rejected_prompt, image)
            for plan, image in zip(plans, rejected_images, strict=True)
        ],
    }
    seeds = {
        answer: [item_seed(config.seed, plan.id, f"generate-{answer}") for plan in plans]
        for answer in requests
    }
    options = dict(
        max_new_tokens=config.max_new_tokens, temperature=config.temperature, top_p=config.top_p
    )
    grouped = bool(getattr(backend, "caches_by_image", False))
    outputs: dict[str, list] = {answer: [None] * len(plans) for answer in requests}
    for call in generation_calls(plans, grouped):
        made = backend.generate(
            [requests[answer][i] for answer, i in call],
            seeds=[seeds[answer][i] for answer, i in call],
            **options,
        )
        for (answer, i), generation in zip(call, made, strict=True):
            outputs[answer][i] = generation
        if calls is not None:
            calls.calls += 1
            calls.grouped = grouped
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
        for plan, chosen, rejected in zip(
            plans, outputs["chosen"], outputs["rejected"], strict=True
        )
    ]
