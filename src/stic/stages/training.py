"""What stage 1b and stage 2 share: Trainer arguments, resume, and saving the adapter.

Both stages run a ``transformers.Trainer`` (so resume, accelerate, DeepSpeed and ``report_to``
work as users know them), write checkpoints under ``<out>/checkpoints`` while running, resume
from the last one on a rerun, and finish with a plain PEFT adapter folder at ``<out>``.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch

from stic.config import TrainOptions
from stic.modeling.models import add_lora
from stic.runtime.files import atomic_write_json, read_json
from stic.runtime.images import load_image, resolve_image_path
from stic.runtime.manifests import stage_status, write_manifest

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


def add_new_lora(model, config: TrainOptions):
    """Wrap ``model`` in a new LoRA adapter made with the ``config.lora_*`` settings."""
    return add_lora(
        model,
        r=config.lora_r,
        alpha=config.lora_alpha,
        dropout=config.lora_dropout,
        layer_names=[n.strip() for n in config.lora_targets.split(",") if n.strip()],
    )


def load_training_image(images_root: str, relative: str | None):
    return None if relative is None else load_image(resolve_image_path(images_root, relative))


def last_checkpoint(out: str | Path) -> str | None:
    """The newest COMPLETE checkpoint under ``<out>/checkpoints``.

    The Trainer writes ``trainer_state.json`` last, and not atomically, so a checkpoint whose
    ``trainer_state.json`` is missing or does not parse (a kill while it was being written) was
    torn mid-save: it is skipped (and removed) in favour of the one before.
    """
    folder = Path(out) / CHECKPOINTS
    if not folder.is_dir():
        return None
    found = sorted(
        (p for p in folder.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()),
        key=lambda p: int(p.name.split("-")[-1]),
    )
    for checkpoint in reversed(found):
        if _complete(checkpoint):
            return str(checkpoint)
        logger.warning("removing %s: torn by an interrupted save", checkpoint)
        shutil.rmtree(checkpoint, ignore_errors=True)
    return None


def _complete(checkpoint: Path) -> bool:
    try:
        state = read_json(checkpoint / "trainer_state.json")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    # A prefix of a JSON object never parses, so a torn write cannot pass for a whole one.
    return isinstance(state, dict)


def _finished(checkpoint: str) -> bool:
    """Whether ``checkpoint`` was saved after the run's last step."""
    state = read_json(Path(checkpoint) / "trainer_state.json")
    return 0 < state.get("max_steps", 0) <= state.get("global_step", 0)


def already_trained(out: str | Path, stage: str, config: TrainOptions) -> bool:
    """Whether ``stage`` is complete at ``out`` for ``config`` (raises on a conflicting output).

    Checkpoints are removed after the complete manifest is written; a kill in between leaves
    them, so they are removed here (at 7B they are gigabytes of optimizer state).
    """
    if stage_status(out, stage, config) != "complete":
        return False
    shutil.rmtree(Path(out) / CHECKPOINTS, ignore_errors=True)
    return True


def train_and_save(
    trainer, config: TrainOptions, stage: str, processor, extra_summary: dict
) -> dict:
    """Train (resuming from the last checkpoint if any), save the adapter and processor, finish the manifest."""
    out = Path(config.out)
    resume = last_checkpoint(out)
    if resume:
        logger.info("resuming %s from %s", stage, resume)
    write_manifest(out, stage, config, "running")
    if resume is not None and _finished(resume):
        # Killed after its last step was checkpointed. Trainer.train would run one step more
        # (it checks for the end only after a step, and in mid-epoch that step runs), so the
        # checkpoint's weights and state are taken as they are.
        from transformers import TrainerState

        logger.info("%s had finished all its steps; saving %s", stage, resume)
        model = trainer.model
        model.load_adapter(resume, model.active_adapter, is_trainable=True)
        trainer.state = TrainerState.load_from_json(str(Path(resume) / "trainer_state.json"))
        train_loss = None  # the Trainer reports it for the steps of one train() call: none here
    else:
        train_loss = trainer.train(resume_from_checkpoint=resume).training_loss
    trainer.save_model(str(out))
    processor.save_pretrained(str(out))
    atomic_write_json(out / "train_log.json", trainer.state.log_history)
    summary = {
        "global_step": trainer.state.global_step,
        "resumed_from": resume,
        "train_loss": train_loss,
        **extra_summary,
    }
    write_manifest(out, stage, config, "complete", summary)
    shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)
    return summary
