"""Stage 1b: fine-tune on the preference pairs with DPO plus an NLL term (see :mod:`stic.modeling.losses`).

LoRA on the language model's linear layers; the vision tower and projector stay frozen. The
reference model is the same network with its adapters disabled, so no second copy is held. Its
log-probs never change, so by default they are computed once before training (one batched
no-grad pass, stored in ``<out>/reference_logps.jsonl`` by pair id and model, resumable) and
each step runs only the policy's forward pass (``--precompute-reference``).

With ``--adapter`` (a round of ``stic run``'s rounds) training continues that adapter, and the
reference is either the adapter as it starts (``--reference start``: iterative DPO; its
log-probs computed once, before the first step, with the adapter applied) or the base model.
A small ``transformers.Trainer`` subclass supplies the loss at its documented extension point,
``compute_loss``; everything else (optimizer, schedule, accumulation, checkpoints, resume,
accelerate/DeepSpeed, ``report_to``) is the Trainer's.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import Trainer

from stic.config import DPOConfig
from stic.data.filters import FilterSettings, filter_pairs
from stic.data.formats import read_pairs_any
from stic.data.prompts import strip_image_placeholder
from stic.data.schemas import PairRecord
from stic.modeling.chat import TrainRow, render_segments
from stic.modeling.generation import batched
from stic.modeling.losses import dpo_nll_loss
from stic.runtime.files import read_jsonl
from stic.runtime.manifests import input_identity
from stic.stages.runner import StageSummary
from stic.stages.shared_prefix import SharedPairCollator, pair_logps, use_shared_prefix
from stic.stages.training import (
    Collator,
    is_main_process,
    load_training_image,
    require_images,
    stage_files,
    train_and_save,
    training_arguments,
    training_model,
    training_output,
)

logger = logging.getLogger(__name__)

STAGE = "dpo"
DROPPED = "dropped_pairs.jsonl"
REFERENCE = "reference_logps.jsonl"


def pair_rows(pairs: Sequence[PairRecord], processor, images_root: str) -> list[TrainRow]:
    """The P chosen conversations, then the P rejected ones: same stored prompt, same image."""
    rows = []
    for answer in ("chosen", "rejected"):
        for pair in pairs:
            image = load_training_image(images_root, pair.image)
            prompt = strip_image_placeholder(pair.prompt)
            segments = render_segments(
                processor, [(prompt, getattr(pair, answer))], with_image=True
            )
            rows.append(TrainRow(segments, image))
    return rows


# PairCollator(processor, images_root, max_length): pairs -> one batch of 2P sequences.
PairCollator = functools.partial(Collator, rows=pair_rows)


@dataclass(frozen=True)
class WithReference:
    """A pair collator whose batches also carry the precomputed reference log-probs.

    ``reference_logps``: ``(2P,)`` float32, the P chosen then the P rejected (the row order of
    the batch), looked up by pair id in ``reference`` (id -> (chosen, rejected)).
    """

    collator: Callable[[Sequence[PairRecord]], dict]
    reference: dict[str, tuple[float, float]]

    def __call__(self, pairs: Sequence[PairRecord]) -> dict[str, torch.Tensor]:
        batch = self.collator(pairs)
        values = [self.reference[p.id][0] for p in pairs] + [self.reference[p.id][1] for p in pairs]
        batch["reference_logps"] = torch.tensor(values, dtype=torch.float32)
        return batch


def reference_is_start_adapter(config: DPOConfig) -> bool:
    """Whether the reference is the starting adapter (applied), not the base model."""
    return config.adapter is not None and config.reference == "start"


def reference_model_id(config: DPOConfig) -> str:
    """What the stored reference log-probs belong to: the base model and how it is computed,
    and, for the starting adapter as reference, that adapter's identity (its manifest or bytes)."""
    about = {"model": str(config.model), "dtype": config.dtype, "max_length": config.max_length}
    if reference_is_start_adapter(config):
        about["adapter"] = input_identity(config.adapter)
    return json.dumps(about, sort_keys=True)


@torch.no_grad()
def precompute_reference_logps(
    model: nn.Module,
    pairs: Sequence[PairRecord],
    collator: Callable[[Sequence[PairRecord]], dict],
    path: Path,
    model_id: str,
    batch_size: int,
    device: torch.device | str = "cpu",
    *,
    append: Callable[[list[dict]], None],
    with_adapter: bool = False,
) -> dict[str, tuple[float, float]]:
    """Summed reference log-probs of every pair's chosen and rejected answer: ``id -> (chosen,
    rejected)``, from ``model`` (a peft model) with its adapters disabled (``with_adapter``: as
    it is, its adapter applied; call it before training), in eval mode.

    Appended to ``path`` batch by batch with ``append`` (the output object's, which handed out
    ``path``; ``{"id", "model", "chosen", "rejected"}`` a line), so a killed run resumes; lines of another ``model_id`` are not used. Values are float32 numbers
    written exactly (a float32 is exactly a JSON double).
    """
    found = {
        row["id"]: (row["chosen"], row["rejected"])
        for row in read_jsonl(path, repair=True, key="id")
        if row.get("model") == model_id
    }
    todo = [pair for pair in pairs if pair.id not in found]
    if todo:
        logger.info("reference log-probs: %d pairs to score (%d stored)", len(todo), len(found))
    was_training = model.training
    model.eval()
    try:
        with contextlib.nullcontext() if with_adapter else model.disable_adapter():
            for chunk in batched(todo, batch_size):
                inputs = {
                    k: v.to(device) if isinstance(v, torch.Tensor) else v
                    for k, v in collator(chunk).items()
                }
                logps, _ = pair_logps(model, inputs)
                values = logps.float().tolist()
                rows = [
                    {
                        "id": pair.id,
                        "model": model_id,
                        "chosen": values[i],
                        "rejected": values[len(chunk) + i],
                    }
                    for i, pair in enumerate(chunk)
                ]
                append(rows)
                found.update((r["id"], (r["chosen"], r["rejected"])) for r in rows)
    finally:
        model.train(was_training)
    return {pair.id: found[pair.id] for pair in pairs}


def reference_is_exact(model: nn.Module) -> bool:
    """Whether a reference computed once (eval mode) equals the per-step one (train mode):
    true when no dropout outside the LoRA layers is active in training."""
    for name, module in model.named_modules():
        if "lora_dropout" in name:
            continue
        if isinstance(module, nn.Dropout) and module.p > 0:
            return False
        rate = getattr(module, "attention_dropout", 0.0)
        if isinstance(rate, float) and rate > 0:
            return False
    return True


class DPOTrainer(Trainer):
    """``Trainer`` whose loss is :func:`stic.modeling.losses.dpo_nll_loss` on a peft model."""

    def __init__(self, *args, beta: float, nll_coef: float, nll_normalization: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.beta = beta
        self.nll_coef = nll_coef
        self.nll_normalization = nll_normalization
        # The loss is a mean over this micro-batch's pairs, so the Trainer must divide it by the
        # accumulation steps. transformers >= 5.2x reads loss_is_scaled_for_ga; older 5.x skip
        # the division whenever the model's forward takes **kwargs unless this flag is off.
        self.loss_is_scaled_for_ga = False
        self.model_accepts_loss_kwargs = False
        self._metrics: dict[str, list[float]] = defaultdict(list)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        reference = inputs.pop("reference_logps", None)  # precomputed (WithReference)
        # Either form (two sequences per pair, or one packed row): chosen then rejected, (2P,).
        policy, tokens = pair_logps(model, inputs)
        num_pairs = policy.shape[0] // 2
        if reference is None:
            with torch.no_grad(), self.accelerator.unwrap_model(model).disable_adapter():
                reference, _ = pair_logps(model, inputs)
        loss, metrics = dpo_nll_loss(
            policy[:num_pairs],
            policy[num_pairs:],
            reference[:num_pairs],
            reference[num_pairs:],
            tokens[:num_pairs],
            beta=self.beta,
            nll_coef=self.nll_coef,
            nll_normalization=self.nll_normalization,
        )
        for name, value in metrics.items():
            self._metrics[name].append(self.accelerator.gather_for_metrics(value).mean().item())
        return (loss, {"policy_logps": policy}) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._metrics and "loss" in logs:
            logs = {**logs, **{k: sum(v) / len(v) for k, v in self._metrics.items()}}
            self._metrics.clear()
        super().log(logs, start_time)


def run_dpo(config: DPOConfig, model=None, processor=None) -> StageSummary:
    """Train the stage-1 adapter on ``config.pairs``; returns the run summary.

    ``model``/``processor`` may be passed in (a model built in code, a benchmark); otherwise
    ``config.model`` is loaded. The model must not already carry an adapter. With
    ``config.adapter`` that adapter is trained further (see the module docstring).
    """
    out = Path(config.out)
    files = stage_files((DROPPED, REFERENCE))
    with training_output(STAGE, config, files) as claim:
        if claim.done is not None:
            return claim.done
        pairs = read_pairs_any(config.pairs, config.pairs_format, images_root=config.images)
        require_images(config.images, [(f"{config.pairs}: pair {p.id!r}", p.image) for p in pairs])
        pairs, dropped, counts = filter_pairs(pairs, FilterSettings.of(config))
        # Dropped pairs stay inspectable, with the filter that dropped each (written once).
        if is_main_process():
            claim.output.write_text(
                "".join(
                    json.dumps({"reason": r, **p.to_dict()}, ensure_ascii=False) + "\n"
                    for r, p in dropped
                ),
                DROPPED,
            )
        for reason, count in counts.items():
            if count:
                logger.info(
                    "filter %s dropped %d of %d pairs", reason, count, len(pairs) + len(dropped)
                )
        if not pairs:
            raise ValueError(
                f"{config.pairs}: no pairs left after the quality filters ({dict(counts)}); "
                "see --filter-* options and " + str(out / DROPPED)
            )
        model, processor = training_model(config, model, processor, adapter=config.adapter)
        shared = use_shared_prefix(config.share_prefix, model)
        make_collator = SharedPairCollator if shared else PairCollator
        collator = make_collator(processor, config.images, config.max_length)
        start_reference = reference_is_start_adapter(config)
        # The starting adapter is only there before the first step: it is scored then, always.
        precompute = start_reference or (
            config.precompute_reference == "on"
            or (config.precompute_reference == "auto" and reference_is_exact(model))
        )
        reference: dict[str, tuple[float, float]] = {}
        trainer = DPOTrainer(
            model=model,
            args=training_arguments(config, model.dtype),
            train_dataset=pairs,
            data_collator=WithReference(collator, reference) if precompute else collator,
            beta=config.beta,
            nll_coef=config.alpha,
            nll_normalization=config.nll_normalization,
        )
        if start_reference and trainer.args.world_size > 1:
            raise ValueError(
                f"{config.out}: reference 'start' (the starting adapter) is scored before "
                "training in one process; run this stage in one process, or use reference: base"
            )
        if precompute and trainer.args.world_size > 1:
            # Every process would score every pair into one file; per step is correct there.
            logger.info("reference log-probs: per step (precomputing runs in one process only)")
            trainer.data_collator = collator
            precompute = False
        if precompute:
            reference.update(
                precompute_reference_logps(
                    trainer.model,
                    pairs,
                    collator,
                    claim.output.file(REFERENCE),
                    reference_model_id(config),
                    batch_size=config.batch_size,
                    device=trainer.args.device,
                    append=functools.partial(claim.output.append, name=REFERENCE),
                    with_adapter=start_reference,
                )
            )
        details = {
            "pairs": len(pairs),
            "dropped": dict(counts),
            "dropped_file": str(out / DROPPED),
            "reference": "precomputed" if precompute else "per step",
            "prefix": "shared" if shared else "two sequences",
        }
        if config.adapter is not None:  # (summaries of runs without one stay as they were)
            details["started_from"] = config.adapter
            details["reference_model"] = "start adapter" if start_reference else "base"
        return train_and_save(trainer, config, STAGE, processor, claim, details)
