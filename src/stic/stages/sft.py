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

import logging
from pathlib import Path

import torch
from transformers import Trainer

from stic.config import SFTConfig
from stic.data.schemas import InstructSample, RecordError, read_instruct
from stic.modeling.chat import TrainRow, encode_rows, render_segments, strip_image_placeholder
from stic.modeling.models import load_model
from stic.runtime.images import image_path_problems
from stic.stages.training import (
    add_new_lora,
    already_trained,
    load_training_image,
    train_and_save,
    training_arguments,
)

logger = logging.getLogger(__name__)

STAGE = "sft"


class InstructCollator:
    """Samples -> a batch with labels on the answers of every exchange."""

    def __init__(self, processor, images_root: str, max_length: int):
        self.processor = processor
        self.images_root = images_root
        self.max_length = max_length

    def __call__(self, samples: list[InstructSample]) -> dict[str, torch.Tensor]:
        rows = []
        for sample in samples:
            exchanges = [(strip_image_placeholder(q), a) for q, a in sample.exchanges()]
            has_image = sample.image is not None
            segments = render_segments(self.processor, exchanges, with_image=has_image)
            rows.append(TrainRow(segments, load_training_image(self.images_root, sample.image)))
        return encode_rows(self.processor, rows, self.max_length)


def run_sft(config: SFTConfig) -> dict:
    """Train ``config.adapter`` further on ``config.data`` and save it to ``config.out``.

    With no ``config.adapter``, a new LoRA adapter (``config.lora_*``) is trained instead.
    """
    out = Path(config.out)
    if already_trained(out, STAGE, config):
        return {"skipped": True}
    samples = read_instruct(config.data)
    problems = image_path_problems(
        config.images, [(f"{config.data}[{i}]", s.image) for i, s in enumerate(samples)]
    )
    if problems:
        raise RecordError("\n".join(problems[:10]))
    model, processor = load_model(
        config.model,
        dtype=config.dtype,
        device=None,
        trust_remote_code=config.trust_remote_code,
        allow_pickle=config.allow_pickle,
        adapter=config.adapter,
        trainable_adapter=True,
    )
    if config.adapter is None:
        model = add_new_lora(model, config)
    if config.gradient_checkpointing:
        model.enable_input_require_grads()
    trainer = Trainer(
        model=model,
        args=training_arguments(config, model.dtype),
        train_dataset=samples,
        data_collator=InstructCollator(processor, config.images, config.max_length),
    )
    return train_and_save(trainer, config, STAGE, processor, {"samples": len(samples)})
