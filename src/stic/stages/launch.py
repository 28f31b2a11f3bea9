"""``stic run --gpus N``: every stage of a run on N GPUs of one machine (N CPU processes here).

What changes with N, and only this (the stage configs' hashes do not: see
:class:`~stic.config.LaunchOptions`):

- **Generating stages** (pairs, infuse, eval, bench) get ``ray: local`` and ``workers: N``,
  what ``--ray local --workers N`` is: a local Ray pool of N workers, one GPU each where there
  are GPUs (:mod:`stic.stages.ray_pool`), making the batches one process would make. A stage
  whose section sets ``ray`` or ``workers`` itself keeps them. The vLLM backend runs the same
  way: one engine per worker.
- **Training stages** (dpo, sft) get ``keep_global_batch: true`` and are run by
  :func:`run_training` as N data-parallel processes: a subprocess ``python -m
  torch.distributed.run --standalone --nproc-per-node N -m stic <stage> ...`` (or ``python -m
  accelerate.commands.launch --config_file C --num_processes N -m stic <stage> ...``) running
  the stage command a user could run by hand. Each process takes its share of the configured
  global batch (:func:`split_batch`); the child's manifest records the split.

A ``stic run`` that is killed (SIGKILL included) leaves no training process behind: the
launcher is started with ``PR_SET_PDEATHSIG`` (Linux) and every ``stic`` process started under
it watches the ``stic run`` process named in ``STIC_PARENT_PID`` (:func:`exit_with_parent`) and
exits at once when it is gone. The rerun resumes from the last checkpoint, as a stage does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from stic.config import ConfigError, LaunchOptions

logger = logging.getLogger(__name__)

TRAINING_STAGES = ("dpo", "sft")
GENERATING_STAGES = ("pairs", "infuse", "eval", "bench")
# Names the `stic run` process (pid, and its start time where /proc has it) to the processes it
# launches; each exits when that process is gone (see exit_with_parent).
PARENT_ENV = "STIC_PARENT_PID"
# How often a launched process looks for its `stic run`: a killed run's children stop writing
# within about this long.
WATCH_INTERVAL_S = 0.2
# Exit status of a launched process whose `stic run` is gone (128 + SIGHUP, as a shell's).
PARENT_GONE_EXIT = 129
# The environment a launcher sets for its processes; one inherited from a launcher that started
# `stic run` itself would make the children join that process group.
LAUNCH_VARIABLES = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
)
# How long a stopped (Ctrl-C) run waits for the launcher to stop its processes before killing it.
STOP_GRACE_S = 60


def default_accelerate_config() -> Path:
    """The shipped plain-DDP accelerate config (its ``num_processes`` is given on the command line)."""
    return Path(str(resources.files("stic") / "configs" / "accelerate" / "ddp.yaml"))


def machine_gpus() -> int:
    """The GPUs this machine has (``torch.cuda.device_count()``), 1 without one."""
    import torch

    return torch.cuda.device_count() or 1


def resolve_options(options: LaunchOptions) -> LaunchOptions:
    """``options`` with ``gpus`` and ``accelerate_config`` filled in (this machine's GPUs; the
    shipped ddp.yaml); a given ``accelerate_config`` that is not a file is a :class:`ConfigError`."""
    gpus = options.gpus if options.gpus is not None else machine_gpus()
    config = options.accelerate_config
    if options.launcher == "accelerate":
        if config is None:
            config = str(default_accelerate_config())
        elif not Path(config).expanduser().is_file():
            raise ConfigError(f"accelerate_config: {config} is not a file")
        config = str(Path(config).expanduser().resolve())
    return dataclasses.replace(options, gpus=gpus, accelerate_config=config)


@dataclass(frozen=True)
class BatchSplit:
    """One process's share of a global batch: ``batch_size`` examples per forward pass and
    ``grad_accum`` passes per optimizer step, in each of ``processes`` processes."""

    batch_size: int
    grad_accum: int
    processes: int

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.grad_accum * self.processes

    def to_dict(self) -> dict[str, int]:
        return {**dataclasses.asdict(self), "global_batch": self.global_batch}


def split_batch(batch_size: int, grad_accum: int, processes: int, where: str = "") -> BatchSplit:
    """The per-process batch and accumulation that keep the global batch ``batch_size x
    grad_accum`` over ``processes`` processes.

    ``grad_accum / processes`` where it divides (the per-device batch, and so its memory, stay
    as configured); otherwise the largest per-device batch up to ``batch_size`` that divides
    each process's share (fewer examples in memory, never more). A global batch that does not
    divide among the processes has no such split: :class:`ConfigError` naming the keys.
    """
    total = batch_size * grad_accum
    if total % processes:
        raise ConfigError(
            f"{where}batch_size, {where}grad_accum: the global batch {batch_size} x {grad_accum} "
            f"= {total} cannot be split over {processes} processes; make batch_size x grad_accum "
            f"a multiple of {processes} (gpus), or use gpus that divide {total}"
        )
    share = total // processes
    per_device = max(b for b in range(1, min(batch_size, share) + 1) if share % b == 0)
    return BatchSplit(per_device, share // per_device, processes)


def scaled_config(stage: str, config: Any, gpus: int, where: str = "") -> Any:
    """``config`` as stage ``stage`` runs it on ``gpus`` GPUs (see the module docstring): only
    runtime fields change, so its config hash is the one it has on one GPU. A training stage
    whose global batch cannot be split is a :class:`ConfigError` (before anything runs)."""
    if gpus <= 1:
        return config
    if stage in TRAINING_STAGES:
        split_batch(config.batch_size, config.grad_accum, gpus, where)
        return dataclasses.replace(config, keep_global_batch=True)
    if stage in GENERATING_STAGES and config.ray is None:
        workers = config.workers if config.workers is not None else gpus
        return dataclasses.replace(config, ray="local", workers=workers)
    return config


def stage_arguments(config: Any) -> list[str]:
    """The command-line options that make ``stic <stage>`` parse back into ``config``: every
    field, None ones left out (their default is None)."""
    arguments = []
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if value is None:
            continue
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        arguments += [f"--{field.name}", text]
    return arguments


def launch_command(
    stage: str, config: Any, options: LaunchOptions, port: int | None = None
) -> list[str]:
    """The command that runs ``stic <stage>`` with ``config`` as ``options.gpus`` processes.

    ``options`` resolved (:func:`resolve_options`). ``port``: accelerate's main process port
    (torchrun ``--standalone`` picks a free one itself).
    """
    processes = str(options.gpus)
    if options.launcher == "accelerate":
        launcher = ["-m", "accelerate.commands.launch", "--config_file", options.accelerate_config]
        launcher += ["--num_processes", processes]
        if port is not None:
            launcher += ["--main_process_port", str(port)]
    else:
        launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", processes]
    return [sys.executable, *launcher, "-m", "stic", stage, *stage_arguments(config)]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux /proc), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the command name (in parentheses, which may hold spaces): state is the 3rd
    # field of stat, starttime the 22nd.
    return stat.rsplit(")", 1)[1].split()[19]


def parent_token(pid: int | None = None) -> str:
    """What :data:`PARENT_ENV` holds for process ``pid`` (default: this one): ``PID`` or
    ``PID:START`` (a pid reused by another process after the run died is not taken for it)."""
    pid = os.getpid() if pid is None else pid
    start = _start_time(pid)
    return f"{pid}:{start}" if start else str(pid)


def parent_alive(token: str) -> bool:
    """Whether the process that :func:`parent_token` named is still running (not a zombie)."""
    pid_text, _, start = token.partition(":")
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process has this pid now
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: the signal check is all there is
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):  # dead, not yet reaped by its own parent
        return False
    return not start or fields[19] == start


def exit_with_parent(environ: dict | None = None, interval: float = WATCH_INTERVAL_S) -> bool:
    """In a process started by :func:`run_training`: a thread that ends this process
    (``os._exit``, mid-write if need be: the stage resumes from its last complete checkpoint)
    once the ``stic run`` named in :data:`PARENT_ENV` is gone. Returns whether it started one
    (False without the variable: not launched by ``stic run``)."""
    token = (os.environ if environ is None else environ).get(PARENT_ENV)
    if not token:
        return False

    def watch() -> None:
        while parent_alive(token):
            time.sleep(interval)
        os.write(
            2, f"stic: the stic run ({token}) that started this process is gone; exiting\n".encode()
        )
        os._exit(PARENT_GONE_EXIT)

    threading.Thread(target=watch, name="stic-parent-watch", daemon=True).start()
    return True


def _die_with_this_process() -> None:
    """In the launcher, between fork and exec: get SIGTERM when ``stic run`` dies (Linux's
    PR_SET_PDEATHSIG; elsewhere the children's own watch is all). The launcher stops its
    processes on SIGTERM."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


def child_environment(gpus: int) -> dict[str, str]:
    """This process's environment for the launcher: no launcher variables of its own, this
    process named in :data:`PARENT_ENV`, and (on CPU, unless set) the cores shared out."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES}
    env[PARENT_ENV] = parent_token()
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // gpus)))
    return env


def run_training(stage: str, config: Any, options: LaunchOptions):
    """Run training stage ``stage`` as ``options.gpus`` data-parallel processes and return its
    :class:`~stic.stages.runner.StageSummary` (read from the manifest the main process wrote).

    ``options`` resolved; ``config`` scaled (:func:`scaled_config`). The launched processes
    write their logs to this process's stdout and stderr. A failed launch is a RuntimeError
    naming its exit status; Ctrl-C stops the processes (the launcher passes it on) and is
    raised again.
    """
    from stic.runtime.manifests import manifest_path, read_manifest
    from stic.stages.runner import StageSummary

    out = Path(config.out)
    port = _free_port() if options.launcher == "accelerate" else None
    command = launch_command(stage, config, options, port)
    manifest = manifest_path(out, False)
    before = _stamp(manifest)
    logger.info(
        "%s: %d processes (%s): %s", stage, options.gpus, options.launcher, " ".join(command)
    )
    proc = subprocess.Popen(
        command, env=child_environment(options.gpus), preexec_fn=_die_with_this_process
    )
    try:
        code = proc.wait()
    except BaseException:
        _stop(proc)
        raise
    if code != 0:
        raise RuntimeError(
            f"{stage}: the {options.gpus} training processes ({options.launcher}) failed with "
            f"exit status {code} (their error is above); rerun the same command to resume"
        )
    recorded = read_manifest(out) or {}
    summary = recorded.get("summary") or {}
    if recorded.get("status") != "complete" or not summary:
        raise RuntimeError(f"{stage}: the training processes ended but {out} is not complete")
    if before is not None and before == _stamp(manifest):
        # Complete before they started, and left as it was: the stage was up to date.
        return StageSummary(
            stage,
            str(out),
            up_to_date=True,
            items=summary.get("items", 0),
            details=summary.get("details", {}),
        )
    return StageSummary(**summary)


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


def _stop(proc: subprocess.Popen) -> None:
    """Stop the launcher (it stops its processes), then kill it if it does not end in time."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
