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

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from stic.config import PairsConfig
from stic.data.corruptions import apply_corruption, sample_corruption
from stic.data.prompts import BAD_PROMPTS, GOOD_PROMPT, PLAIN_PROMPTS
from stic.data.schemas import PairRecord
from stic.modeling.generation import Request, batched, generate
from stic.modeling.models import model_loader
from stic.runtime.files import append_jsonl, read_jsonl
from stic.runtime.images import ImageError, load_image, resolve_image_path, scan_images
from stic.runtime.manifests import stage_status, write_manifest
from stic.runtime.rng import item_rng, item_seed
from stic.runtime.shards import select_shard

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
class PairsSummary:
    total: int = 0
    already_done: int = 0
    written: int = 0
    skipped: dict[str, str] = field(default_factory=dict)
    kinds: Counter = field(default_factory=Counter)
    truncated: int = 0

    def to_dict(self) -> dict:
        return {
            "total": self.total,
            "already_done": self.already_done,
            "written": self.written,
            "skipped": self.skipped,
            "rejected_kinds": dict(self.kinds),
            "truncated_answers": self.truncated,
        }


def run_pairs(config: PairsConfig, model=None, processor=None) -> PairsSummary:
    """Write one :class:`PairRecord` per image to ``config.out``, resuming what is there.

    ``model``/``processor`` may be passed in (tests, the demo); otherwise they are loaded, and
    only if some image still needs a pair.
    """
    scan = scan_images(config.images, limit=config.limit)
    ids = select_shard(scan.ids, config.shard)
    # Folder entries that cannot become ids (names not UTF-8, link loops) are reported like
    # unreadable images; under --shard, by the one shard their name falls in.
    unlisted = {name: scan.skipped[name] for name in select_shard(list(scan.skipped), config.shard)}
    out = Path(config.out)
    summary = PairsSummary(total=len(ids) + len(unlisted), skipped=unlisted)
    status = stage_status(out, STAGE, config)
    get_model = model_loader(config, model, processor)
    done = _done_ids(out, repair=True)
    todo = [i for i in ids if i not in done]
    summary.already_done = len(ids) - len(todo)
    if status == "complete" and not todo:
        return summary
    if status != "complete":
        write_manifest(out, STAGE, config, "running")
    with tqdm(total=len(todo), desc="pairs", unit="img") as bar:
        for batch_ids in batched(todo, config.batch_size):
            records = _make_batch(batch_ids, config, get_model, summary)
            append_jsonl(out, [r.to_dict() for r in records])
            summary.written += len(records)
            bar.update(len(batch_ids))
    for reason in summary.skipped.values():
        logger.warning("skipped an image: %s", reason)
    # A complete manifest is rewritten only when the output grew, so the stages that read it
    # are not redone for nothing (see manifest.input_identity).
    if status != "complete" or summary.written:
        write_manifest(out, STAGE, config, "complete", summary.to_dict())
    return summary


def _done_ids(out: Path, repair: bool = False) -> set[str]:
    return {row["id"] for row in read_jsonl(out, repair=repair)}


def _make_batch(
    batch_ids, config: PairsConfig, get_model, summary: PairsSummary
) -> list[PairRecord]:
    plans, requests = [], []
    for image_id in batch_ids:
        try:
            image = load_image(resolve_image_path(config.images, image_id))
        except (ImageError, ValueError) as e:
            summary.skipped[image_id] = f"{image_id}: {e}"
            continue
        plan = plan_pair(image_id, config)
        rejected_image = (
            image if plan.corruption is None else apply_corruption(image, plan.corruption)
        )
        plans.append(plan)
        requests += [Request(GOOD_PROMPT, image), Request(plan.rejected_prompt, rejected_image)]
    if not plans:
        return []
    model, processor = get_model()
    # Chosen and rejected answers go in separate calls: at most batch_size sequences each, and
    # answers of one kind have similar lengths, so less padding.
    options = dict(
        max_new_tokens=config.max_new_tokens, temperature=config.temperature, top_p=config.top_p
    )
    first = plans[0].id
    chosen_outputs = generate(
        model,
        processor,
        requests[0::2],
        seed=item_seed(config.seed, first, "generate-chosen"),
        **options,
    )
    rejected_outputs = generate(
        model,
        processor,
        requests[1::2],
        seed=item_seed(config.seed, first, "generate-rejected"),
        **options,
    )
    sampling = {
        "temperature": config.temperature,
        "top_p": config.top_p,
        "max_new_tokens": config.max_new_tokens,
        "seed": config.seed,
    }
    records = []
    for i, plan in enumerate(plans):
        chosen, rejected = chosen_outputs[i], rejected_outputs[i]
        summary.kinds[plan.rejected_kind] += 1
        summary.truncated += (chosen.finish == "length") + (rejected.finish == "length")
        records.append(
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
                sampling=sampling,
                chosen_finish=chosen.finish,
                rejected_finish=rejected.finish,
            )
        )
    return records
