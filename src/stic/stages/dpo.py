"""Stage 1b: fine-tune on the preference pairs with DPO plus an NLL term (see :mod:`stic.modeling.losses`).

LoRA on the language model's linear layers; the vision tower and projector stay frozen. The
reference model is the same network with its adapters disabled, so no second copy is held.
A small ``transformers.Trainer`` subclass supplies the loss at its documented extension point,
``compute_loss``; everything else (optimizer, schedule, accumulation, checkpoints, resume,
accelerate/DeepSpeed, ``report_to``) is the Trainer's.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path

import torch
from transformers import Trainer

from stic.config import DPOConfig
from stic.data.filters import FilterSettings, filter_pairs
from stic.data.formats import read_pairs_any
from stic.data.schemas import PairRecord, RecordError
from stic.modeling.chat import TrainRow, encode_rows, render_segments, strip_image_placeholder
from stic.modeling.losses import answer_logps, dpo_nll_loss
from stic.modeling.models import load_model
from stic.runtime.files import atomic_write_text
from stic.runtime.images import image_path_problems
from stic.stages.training import (
    add_new_lora,
    already_trained,
    load_training_image,
    train_and_save,
    training_arguments,
)

logger = logging.getLogger(__name__)

STAGE = "dpo"
DROPPED = "dropped_pairs.jsonl"


class PairCollator:
    """Pairs -> one batch: the P chosen sequences, then the P rejected ones, same prompt and image."""

    def __init__(self, processor, images_root: str, max_length: int):
        self.processor = processor
        self.images_root = images_root
        self.max_length = max_length

    def __call__(self, pairs: list[PairRecord]) -> dict[str, torch.Tensor]:
        rows = []
        for answer in ("chosen", "rejected"):
            for pair in pairs:
                image = load_training_image(self.images_root, pair.image)
                prompt = strip_image_placeholder(pair.prompt)
                segments = render_segments(
                    self.processor, [(prompt, getattr(pair, answer))], with_image=True
                )
                rows.append(TrainRow(segments, image))
        return encode_rows(self.processor, rows, self.max_length)


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
        labels = inputs.pop("labels")
        num_pairs = labels.shape[0] // 2
        policy, tokens = answer_logps(model(**inputs).logits, labels)
        with torch.no_grad(), self.accelerator.unwrap_model(model).disable_adapter():
            reference, _ = answer_logps(model(**inputs).logits, labels)
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


def run_dpo(config: DPOConfig, model=None, processor=None) -> dict:
    """Train the stage-1 adapter on ``config.pairs``; returns the run summary.

    ``model``/``processor`` may be passed in (a model built in code, a benchmark); otherwise
    ``config.model`` is loaded. The model must not already carry an adapter.
    """
    out = Path(config.out)
    if already_trained(out, STAGE, config):
        return {"skipped": True}
    pairs = read_pairs_any(config.pairs, config.pairs_format, images_root=config.images)
    # A bad image path found by the collator would stop training midway: refuse the file now.
    problems = image_path_problems(
        config.images, [(f"{config.pairs}: pair {p.id!r}", p.image) for p in pairs]
    )
    if problems:
        raise RecordError(
            "\n".join(problems[:10])
            + (f"\n... {len(problems)} in all" if len(problems) > 10 else "")
        )
    pairs, dropped, counts = filter_pairs(
        pairs,
        FilterSettings(
            identical=config.filter_identical,
            empty=config.filter_empty,
            truncated=config.filter_truncated,
            refusal=config.filter_refusals,
            near_duplicate=config.filter_near_duplicates,
            near_duplicate_threshold=config.near_duplicate_threshold,
        ),
    )
    # Dropped pairs stay inspectable, with the filter that dropped each.
    atomic_write_text(
        out / DROPPED,
        "".join(
            json.dumps({"reason": r, **p.to_dict()}, ensure_ascii=False) + "\n" for r, p in dropped
        ),
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
    if model is None:
        model, processor = load_model(
            config.model,
            dtype=config.dtype,
            device=None,
            trust_remote_code=config.trust_remote_code,
            allow_pickle=config.allow_pickle,
        )
    model = add_new_lora(model, config)
    if config.gradient_checkpointing:
        model.enable_input_require_grads()
    trainer = DPOTrainer(
        model=model,
        args=training_arguments(config, model.dtype),
        train_dataset=pairs,
        data_collator=PairCollator(processor, config.images, config.max_length),
        beta=config.beta,
        nll_coef=config.alpha,
        nll_normalization=config.nll_normalization,
    )
    summary = {"pairs": len(pairs), "dropped": dict(counts), "dropped_file": str(out / DROPPED)}
    return train_and_save(trainer, config, STAGE, processor, summary)
