"""Stage 2, part 1: the stage-1 model describes each instruction image; the description is
infused into the sample's first human turn (:func:`stic.data.prompts.infuse_description`).

Descriptions are appended to ``<out>.partial.jsonl`` as they are made (a rerun resumes), and
joined to samples BY ID, never by position; the output is written whole at the end.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from stic.config import InfuseConfig
from stic.data.prompts import PLAIN_PROMPTS, infuse_description
from stic.data.schemas import InstructSample, Turn, read_instruct
from stic.modeling.generation import Request, batched, generate
from stic.modeling.models import model_loader
from stic.runtime.files import append_jsonl, atomic_write_json, read_jsonl
from stic.runtime.images import ImageError, load_image, resolve_image_path
from stic.runtime.manifests import stage_status, write_manifest
from stic.runtime.rng import item_rng, item_seed
from stic.runtime.shards import select_shard

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


@dataclass
class InfuseSummary:
    total: int = 0
    infused: int = 0
    text_only: int = 0
    skipped: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def run_infuse(config: InfuseConfig, model=None, processor=None) -> InfuseSummary:
    """Describe every image sample of ``config.data`` and write the infused list to ``config.out``.

    A rerun reuses the descriptions already made; the model is loaded only if one is missing.
    """
    out = Path(config.out)
    partial = out.with_name(out.name + ".partial.jsonl")
    samples = read_instruct(config.data)
    if config.limit is not None:
        samples = samples[: config.limit]
    if config.shard is not None:
        mine = set(select_shard([s.id for s in samples], config.shard))
        samples = [s for s in samples if s.id in mine]
    summary = InfuseSummary(total=len(samples))
    summary.text_only = sum(1 for s in samples if s.image is None)
    status = stage_status(out, STAGE, config)
    get_model = model_loader(config, model, processor, adapter=config.adapter)
    done = {row["id"]: row for row in read_jsonl(partial, repair=True)}
    todo = [s for s in samples if s.image is not None and s.id not in done]
    if status != "complete":
        write_manifest(out, STAGE, config, "running")
    made = 0
    with tqdm(total=len(todo), desc="infuse", unit="img") as bar:
        for batch in batched(todo, config.batch_size):
            rows = _describe_batch(batch, config, get_model, summary)
            append_jsonl(partial, rows)
            done.update((row["id"], row) for row in rows)
            made += len(rows)
            bar.update(len(batch))
    infused = join_descriptions(samples, done)
    summary.infused = sum(1 for s in infused if s.infusion is not None)
    unchanged = status == "complete" and not made and _output_ids(out) == [s.id for s in samples]
    if not unchanged:
        atomic_write_json(out, [s.to_dict() for s in infused])
        write_manifest(out, STAGE, config, "complete", summary.to_dict())
    return summary


def _output_ids(out: Path) -> list[str] | None:
    return [s.id for s in read_instruct(out)] if out.exists() else None


def _describe_batch(batch, config: InfuseConfig, get_model, summary: InfuseSummary) -> list[dict]:
    kept, requests = [], []
    for sample in batch:
        try:
            image = load_image(resolve_image_path(config.images, sample.image))
        except (ImageError, ValueError) as e:
            summary.skipped[sample.id] = f"{sample.image}: {e}"
            continue
        prompt = description_prompt(sample.id, config.seed)
        kept.append((sample, prompt))
        requests.append(Request(prompt, image))
    if not kept:
        return []
    model, processor = get_model()
    outputs = generate(
        model,
        processor,
        requests,
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        seed=item_seed(config.seed, kept[0][0].id, "generate"),
    )
    return [
        {"id": sample.id, "description": gen.text, "prompt": prompt, "finish": gen.finish}
        for (sample, prompt), gen in zip(kept, outputs, strict=True)
    ]
