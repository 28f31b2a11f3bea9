"""What stage 1b and stage 2 share: Trainer arguments, resume, and saving the adapter.

Both stages run a ``transformers.Trainer`` (so resume, accelerate, DeepSpeed and ``report_to``
work as users know them), write checkpoints under ``<out>/checkpoints`` while running, resume
from the last one on a rerun, and finish with a plain PEFT adapter folder at ``<out>``.

Started by a launcher (``torchrun``, ``accelerate launch``; ``WORLD_SIZE`` > 1) every process
runs the stage and the Trainer trains data-parallel: each process sees its share of every global
batch (``batch_size`` x ``grad_accum`` x processes). The main process alone holds the output's
lock and writes the manifest, the training log, the dropped pairs and the adapter; the others
follow its decisions (where the stage stands, which checkpoint to resume) through the process
group, and fail when it fails to claim the output. On a machine without a GPU the processes
talk over gloo (a test runs two here); on GPUs over NCCL.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from stic.config import TrainOptions
from stic.data.schemas import RecordError
from stic.modeling.chat import RowTooLong, TrainRow, encode_rows
from stic.modeling.models import add_lora, load_adapter, load_model
from stic.runtime.files import read_json
from stic.runtime.images import image_path_problems, load_image, resolve_image_path
from stic.runtime.output import Output
from stic.stages.launch import BatchSplit, split_batch
from stic.stages.runner import StageSummary, claim_output

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
# transformers' default; also bounds how long the other processes wait for the main one.
DDP_TIMEOUT_S = 1800


def launched_processes() -> int:
    """How many processes the launcher started (``WORLD_SIZE``; 1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _on_cpu() -> bool:
    """Whether the processes must train on the CPU: no CUDA/XPU device, or ``accelerate launch --cpu``.

    Must be said explicitly: accelerate treats a launched process without a GPU as a lone one
    (``distributed_type`` NO) unless told it runs on the CPU; see :func:`process_settings`.
    """
    if os.environ.get("ACCELERATE_USE_CPU", "false").lower() in ("1", "true", "yes"):
        return True
    xpu = getattr(torch, "xpu", None)
    return not (torch.cuda.is_available() or (xpu is not None and xpu.is_available()))


def process_settings() -> dict[str, Any]:
    """``TrainingArguments`` settings that make launched processes one data-parallel run.

    Without ``use_cpu``, accelerate joined the launcher's process group on a GPU-less machine but
    called the run not distributed: each process trained its own model on the whole data set and
    all of them wrote the output. gloo is named so that an MPI build of torch does not pick MPI.
    On GPUs accelerate picks NCCL itself. One process: nothing (MPS and single GPUs as before).
    """
    if launched_processes() > 1 and _on_cpu():
        return {"use_cpu": True, "ddp_backend": "gloo"}
    return {}


def _zero3() -> bool:
    """Whether ``accelerate launch`` set up DeepSpeed ZeRO stage 3 (from its config or its JSON)."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() != "true":
        return False
    if os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3":
        return True
    file = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    if file and file != "none":
        try:
            stage = read_json(file).get("zero_optimization", {}).get("stage")
        except (OSError, ValueError, AttributeError):
            return False
        return str(stage) == "3"
    return False


def checkpointing_reentrant() -> bool:
    """Which activation checkpointing ``--gradient_checkpointing`` uses in this launch.

    Non-reentrant (``use_reentrant=False``) by default: DDP needs it (reentrant recomputation
    runs outside DDP's autograd hooks), and one process, ZeRO-2 and FSDP work with it. Reentrant
    under DeepSpeed ZeRO-3, which PEFT is known to need there (gathered weights freed before the
    non-reentrant recomputation); not run here, as no GPU is (see README, Scaling out).
    """
    return _zero3()


def start_processes() -> None:
    """Join the launcher's process group (a no-op in a single process or once joined).

    Done before the stage claims its output, so the main process can tell the others what it
    found. The same accelerate state the Trainer builds later from :func:`process_settings`.
    """
    if launched_processes() <= 1 or torch.distributed.is_initialized():
        return
    from accelerate import PartialState

    settings = process_settings()
    PartialState(
        cpu=settings.get("use_cpu", False),
        backend=settings.get("ddp_backend"),
        timeout=timedelta(seconds=DDP_TIMEOUT_S),
    )


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def is_main_process() -> bool:
    """Whether this process writes the stage's files: rank 0, or the only process."""
    return not _distributed() or torch.distributed.get_rank() == 0


def world_size() -> int:
    return torch.distributed.get_world_size() if _distributed() else 1


def from_main(value: Any) -> Any:
    """The main process's ``value`` (picklable), in every process; ``value`` itself in one."""
    if not _distributed():
        return value
    box = [value if is_main_process() else None]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def wait_for_all() -> None:
    if _distributed():
        torch.distributed.barrier()


def _checkpointing_arguments(config: TrainOptions) -> dict[str, Any]:
    """Activation checkpointing settings under the names this transformers takes.

    transformers >= 5.2x renamed ``gradient_checkpointing*`` to ``activation_checkpointing*``
    (the old names warn); older 5.x know only the old ones.
    """
    from transformers import TrainingArguments

    names = {f.name for f in fields(TrainingArguments)}
    prefix = "activation" if "activation_checkpointing" in names else "gradient"
    settings: dict[str, Any] = {f"{prefix}_checkpointing": config.gradient_checkpointing}
    if config.gradient_checkpointing:
        kwargs = {"use_reentrant": checkpointing_reentrant()}
        settings[f"{prefix}_checkpointing_kwargs"] = kwargs
    return settings


def batch_split(config: TrainOptions) -> BatchSplit:
    """This launch's per-process batch: ``config``'s as given, or with ``keep_global_batch``
    its share of the global batch ``batch_size x grad_accum`` (:func:`~stic.stages.launch.split_batch`)."""
    processes = launched_processes()
    if config.keep_global_batch and processes > 1:
        return split_batch(config.batch_size, config.grad_accum, processes)
    return BatchSplit(config.batch_size, config.grad_accum, processes)


def training_arguments(config: TrainOptions, model_dtype: torch.dtype):
    from transformers import TrainingArguments

    out = Path(config.out)
    split = batch_split(config)
    return TrainingArguments(
        output_dir=str(out / CHECKPOINTS),
        learning_rate=config.lr,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps if config.max_steps is not None else -1,
        per_device_train_batch_size=split.batch_size,
        gradient_accumulation_steps=split.grad_accum,
        # transformers 5 takes the warm-up as warmup_steps: a value below 1 is a fraction of the
        # training steps (the config keeps warmup_ratio in [0, 1) so it always is one).
        warmup_steps=config.warmup_ratio,
        lr_scheduler_type=config.lr_scheduler,
        weight_decay=config.weight_decay,
        **_checkpointing_arguments(config),
        **process_settings(),
        ddp_timeout=DDP_TIMEOUT_S,
        # Every trainable weight (LoRA on the language model) gets a gradient at every step, so
        # DDP need not search the graph for unused ones (the Trainer would, for a PeftModel).
        ddp_find_unused_parameters=False,
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
        try:
            return encode_rows(self.processor, rows, self.max_length)
        except RowTooLong as e:
            ids = ", ".join(repr(record.id) for record in records)
            raise RowTooLong(f"a record of the batch ({ids}): {e}") from e


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
        # A function of the seed, not of whatever ran before: a rerun, and a run with any number
        # of processes, starts from the same adapter (the Trainer seeds only after this).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
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


class OutputNotClaimed(RuntimeError):
    """The main process could not claim the output (its own error says why)."""


@dataclass
class Claim:
    """What :func:`training_output` found: ``done`` (the summary of an output already complete,
    else ``None``) and, in the main process, the :class:`~stic.runtime.output.Output` it holds
    (``None`` in the others: only the main process writes)."""

    done: StageSummary | None
    output: Output | None


@contextlib.contextmanager
def training_output(stage: str, config: TrainOptions, files: list[str]) -> Iterator[Claim]:
    """Claim ``config.out`` for a training stage; ``claim.done`` is its summary if complete.

    Otherwise writes the ``running`` manifest (naming ``files``) and ``claim.done`` is ``None``.
    A run that fails before its first checkpoint leaves nothing behind: no manifest claims it
    is running. Launched as several processes, the main one claims (lock, checks, manifest) and
    tells the others what it found; they raise :class:`OutputNotClaimed` if it could not claim.
    """
    start_processes()
    if not is_main_process():
        found = from_main(None)
        if found is None:
            raise OutputNotClaimed(
                f"{config.out}: the main process (rank 0) could not claim the output; its error says why"
            )
        yield Claim(None if found == "run" else StageSummary(**found), None)
        return
    out = Path(config.out)
    told = False
    try:
        with claim_output(stage, config) as output:
            if output.status == "complete":
                # Checkpoints are removed after the complete manifest is written; a kill in
                # between leaves them, so they are removed here (at 7B they are gigabytes).
                shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)
                recorded = (output.recorded or {}).get("summary", {})
                summary = StageSummary(
                    stage,
                    str(out),
                    up_to_date=True,
                    items=recorded.get("items", 0),
                    details=recorded.get("details", {}),
                )
                told = from_main(summary.to_dict()) is not None
                yield Claim(summary, output)
                return
            output.begin(files)
            told = from_main("run") is not None
            try:
                yield Claim(None, output)
            except BaseException:
                if output.status == "new" and last_checkpoint(out) is None:
                    output.discard()
                raise
    except BaseException:
        if not told:
            from_main(None)  # the others are waiting to hear: tell them it failed
        raise


def train_and_save(
    trainer, config: TrainOptions, stage: str, processor, claim: Claim, details: dict
) -> StageSummary:
    """Train (resuming from the last checkpoint if any), save the adapter and processor, finish the manifest.

    Called by every launched process; only the main one writes (the Trainer saves its
    checkpoints and the adapter from the main process, gathering sharded weights first), into
    the folder its output object holds: the Trainer's and the processor's ``save_*`` write
    there, and every file they add is listed in the complete manifest.
    """
    out = Path(config.out)
    main = is_main_process()
    # The main process chooses (and removes torn checkpoints); all resume from the same one.
    resume = from_main(last_checkpoint(out) if main else None)
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
    before = {p.name for p in out.iterdir()} if main else set()
    trainer.save_model(str(out))  # in every process: ZeRO-3 and FSDP gather the weights first
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
            "world_size": world_size(),
            # What each process trained with (its share of the global batch), as run.
            "batch_split": BatchSplit(
                trainer.args.per_device_train_batch_size,
                trainer.args.gradient_accumulation_steps,
                world_size(),
            ).to_dict(),
            **details,
        },
    )
    if main:
        output = claim.output
        processor.save_pretrained(str(output.folder))
        output.write_json(trainer.state.log_history, TRAIN_LOG)
        written = [p.name for p in out.iterdir() if p.name not in before]
        output.finish(summary.to_dict(), files=written)
        shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)
    wait_for_all()  # every process returns once the output is complete
    return summary
