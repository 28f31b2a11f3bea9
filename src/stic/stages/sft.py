"""Stage 2, part 2: train a LoRA adapter on description-infused instruction data.

Normally the adapter is stage 1's (``adapter``), trained further: its LoRA settings are kept and
``lora_*`` options are unused. With no ``adapter``, a new LoRA adapter is made on the base model's
language model exactly as stage 1b makes one (``lora_*`` options): the stage-2-only control
(description-infused SFT with no stage 1), or the "no negatives" ablation (SFT on the chosen
descriptions instead of DPO).

The loss is the model's own next-token loss on answer tokens only (every ``gpt`` turn); prompts,
descriptions and image tokens are masked.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

from transformers import Trainer

from stic.config import SFTConfig
from stic.data.prompts import strip_image_placeholder
from stic.data.schemas import InstructSample, read_instruct
from stic.modeling.chat import TrainRow, render_segments
from stic.stages import training
from stic.stages.runner import StageSummary

logger = logging.getLogger(__name__)

STAGE = "sft"


def sample_rows(samples: Sequence[InstructSample], processor, images_root: str) -> list[TrainRow]:
    """One conversation per sample, every exchange's answer trained; text-only samples too."""
    rows = []
    for sample in samples:
        exchanges = [(strip_image_placeholder(q), a) for q, a in sample.exchanges()]
        segments = render_segments(processor, exchanges, with_image=sample.image is not None)
        rows.append(TrainRow(segments, training.load_training_image(images_root, sample.image)))
    return rows


# InstructCollator(processor, images_root, max_length): samples -> one batch.
InstructCollator = functools.partial(training.Collator, rows=sample_rows)


def run_sft(config: SFTConfig, model=None, processor=None) -> StageSummary:
    """Train ``config.adapter`` further on ``config.data`` and save it to ``config.out``.

    With no ``config.adapter``, a new LoRA adapter (``config.lora_*``) is trained instead.
    ``model``/``processor`` may be passed in (a base model without an adapter); otherwise
    ``config.model`` is loaded.
    """
    files = training.stage_files()
    with training.training_output(STAGE, config, files) as claim:
        if claim.done is not None:
            return claim.done
        samples = read_instruct(config.data)
        training.require_images(
            config.images, [(f"{config.data}[{i}]", s.image) for i, s in enumerate(samples)]
        )
        model, processor = training.training_model(config, model, processor, adapter=config.adapter)
        trainer = Trainer(
            model=model,
            args=training.training_arguments(config, model.dtype),
            train_dataset=samples,
            data_collator=InstructCollator(processor, config.images, config.max_length),
        )
        return training.train_and_save(
            trainer, config, STAGE, processor, claim, {"samples": len(samples)}
        )
