"""What stage 1b and stage 2 share: Trainer arguments, resume, and saving the adapter.

Both stages run a ``transformers.Trainer`` (so resume, accelerate, DeepSpeed and ``report_to``
work as users know them), write checkpoints under ``<out>/checkpoints`` while running, resume
from the last one on a rerun, and finish with a plain PEFT adapter folder at ``<out>``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from stic.config import TrainOptions
from stic.data.schemas import RecordError
from stic.modeling.chat import TrainRow, encode_rows
from stic.modeling.models import add_lora, load_adapter, load_model
from stic.runtime.files import atomic_write_json, read_json
from stic.runtime.images import image_path_problems, load_image, resolve_image_path
from stic.runtime.manifests import read_manifest, remove_output, write_manifest
from stic.stages.runner import StageSummary, claim_output

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
        # transformers 5 takes the warm-up as warmup_steps: a value below 1 is a fraction of the
        # training steps (the config keeps warmup_ratio in [0, 1) so it always is one).
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


@dataclass(frozen=True)
class Collator:
    """Records -> one padded batch with labels on the answer tokens only.

    ``rows(records, processor, images_root)`` says how the stage's records become rendered
    conversations (:class:`~stic.modeling.chat.TrainRow`); the rest is the same for every stage.
    """

    processor: Any
    images_root: str
    max_length: int
    rows: Callable[[Sequence, Any, str], list[TrainRow]]

    def __call__(self, records: Sequence) -> dict[str, torch.Tensor]:
        rows = self.rows(records, self.processor, self.images_root)
        return encode_rows(self.processor, rows, self.max_length)


def training_model(config: TrainOptions, model=None, processor=None, adapter: str | None = None):
    """``(model, processor)`` ready to train: the adapter to continue, or a new LoRA adapter.

    ``model``/``processor`` given (a model built in code): used instead of loading
    ``config.model``. ``adapter`` (a PEFT folder) is loaded trainable; without it a new adapter
    is made from ``config.lora_*``.
    """
    if model is None:
        model, processor = load_model(
            config.model,
            dtype=config.dtype,
            device=None,
            trust_remote_code=config.trust_remote_code,
            allow_pickle=config.allow_pickle,
            adapter=adapter,
            trainable_adapter=True,
        )
    elif adapter is not None:
        model = load_adapter(model, adapter, trainable=True, allow_pickle=config.allow_pickle)
    if adapter is None:
        model = add_new_lora(model, config)
    if config.gradient_checkpointing:
        model.enable_input_require_grads()
    return model, processor


def require_images(images_root: str, entries: list[tuple[str, str | None]]) -> None:
    """Refuse, before training starts, records whose image is missing or outside the folder.

    A bad path found by the collator would stop training midway. ``entries``: (where, path).
    """
    problems = image_path_problems(images_root, entries)
    if problems:
        more = f"\n... {len(problems)} in all" if len(problems) > 10 else ""
        raise RecordError("\n".join(problems[:10]) + more)


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


# What a training stage writes in its folder besides the processor's files, named before it
# starts so that --overwrite can delete exactly these after a crash: the Trainer's adapter files,
# the checkpoints, the training log and (dpo) the pairs the filters dropped.
ADAPTER_FILES = (
    "adapter_config.json",
    "adapter_model.safetensors",
    "README.md",
    "training_args.bin",
)
TRAIN_LOG = "train_log.json"


def stage_files(extra: tuple[str, ...] = ()) -> list[str]:
    return [CHECKPOINTS, TRAIN_LOG, *ADAPTER_FILES, *extra]


@contextlib.contextmanager
def training_output(
    stage: str, config: TrainOptions, files: list[str]
) -> Iterator[StageSummary | None]:
    """Claim ``config.out`` for a training stage; yields its summary if it is already complete.

    Otherwise writes the ``running`` manifest (naming ``files``) and yields ``None``. A run that
    fails before its first checkpoint leaves nothing behind: no manifest claims it is running.
    """
    out = Path(config.out)
    with claim_output(stage, config) as status:
        if status == "complete":
            # Checkpoints are removed after the complete manifest is written; a kill in between
            # leaves them, so they are removed here (at 7B they are gigabytes of optimizer state).
            shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)
            recorded = (read_manifest(out) or {}).get("summary", {})
            yield StageSummary(
                stage,
                str(out),
                up_to_date=True,
                items=recorded.get("items", 0),
                details=recorded.get("details", {}),
            )
            return
        write_manifest(out, stage, config, "running", files=files)
        try:
            yield None
        except BaseException:
            if status == "new" and last_checkpoint(out) is None:
                remove_output(out)
            raise


def train_and_save(
    trainer, config: TrainOptions, stage: str, processor, files: list[str], details: dict
) -> StageSummary:
    """Train (resuming from the last checkpoint if any), save the adapter and processor, finish the manifest."""
    out = Path(config.out)
    resume = last_checkpoint(out)
    if resume:
        logger.info("resuming %s from %s", stage, resume)
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
    before = {p.name for p in out.iterdir()}
    trainer.save_model(str(out))
    processor.save_pretrained(str(out))
    atomic_write_json(out / TRAIN_LOG, trainer.state.log_history)
    written = [p.name for p in out.iterdir() if p.name not in before]
    items = len(trainer.train_dataset)
    summary = StageSummary(
        stage,
        str(out),
        items=items,
        made=items,
        details={
            "global_step": trainer.state.global_step,
            "resumed_from": resume,
            "train_loss": train_loss,
            **details,
        },
    )
    write_manifest(out, stage, config, "complete", summary.to_dict(), files=files + written)
    shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)
    return summary
