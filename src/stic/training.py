"""What stage 1b and stage 2 share: Trainer arguments, resume, and saving the adapter.

Both stages run a ``transformers.Trainer`` (so resume, accelerate, DeepSpeed and ``report_to``
work as users know them), write checkpoints under ``<out>/checkpoints`` while running, resume
from the last one on a rerun, and finish with a plain PEFT adapter folder at ``<out>``.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch

from stic.config import TrainOptions
from stic.files import atomic_write_json
from stic.images import load_image, resolve_image_path
from stic.manifest import write_manifest

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"


def training_arguments(config: TrainOptions, model_dtype: torch.dtype):
    from transformers import TrainingArguments

    out = Path(config.out)
    return TrainingArguments(
        output_dir=str(out / CHECKPOINTS),
        learning_rate=config.lr,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps if config.max_steps is not None else -1,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        warmup_steps=config.warmup_ratio,
        lr_scheduler_type=config.lr_scheduler,
        weight_decay=config.weight_decay,
        gradient_checkpointing=config.gradient_checkpointing,
        logging_steps=config.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=2,
        report_to=config.report_to,
        remove_unused_columns=False,
        dataloader_num_workers=config.dataloader_num_workers,
        bf16=model_dtype == torch.bfloat16 and torch.cuda.is_available(),
        fp16=model_dtype == torch.float16 and torch.cuda.is_available(),
        seed=config.seed,
        data_seed=config.seed,
    )


def load_training_image(images_root: str, relative: str | None):
    return None if relative is None else load_image(resolve_image_path(images_root, relative))


def last_checkpoint(out: str | Path) -> str | None:
    """The newest COMPLETE checkpoint under ``<out>/checkpoints``.

    The Trainer writes ``trainer_state.json`` last, so a checkpoint without it was torn by a
    kill mid-save: it is skipped (and removed) in favour of the one before.
    """
    folder = Path(out) / CHECKPOINTS
    if not folder.is_dir():
        return None
    found = sorted(
        (p for p in folder.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()),
        key=lambda p: int(p.name.split("-")[-1]),
    )
    for checkpoint in reversed(found):
        if (checkpoint / "trainer_state.json").exists():
            return str(checkpoint)
        logger.warning("removing %s: torn by an interrupted save", checkpoint)
        shutil.rmtree(checkpoint, ignore_errors=True)
    return None


def train_and_save(
    trainer, config: TrainOptions, stage: str, processor, extra_summary: dict
) -> dict:
    """Train (resuming from the last checkpoint if any), save the adapter and processor, finish the manifest."""
    out = Path(config.out)
    resume = last_checkpoint(out)
    if resume:
        logger.info("resuming %s from %s", stage, resume)
    write_manifest(out, stage, config, "running")
    result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(str(out))
    processor.save_pretrained(str(out))
    atomic_write_json(out / "train_log.json", trainer.state.log_history)
    summary = {
        "global_step": trainer.state.global_step,
        "resumed_from": resume,
        "train_loss": result.training_loss,
        **extra_summary,
    }
    write_manifest(out, stage, config, "complete", summary)
    shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)
    return summary
