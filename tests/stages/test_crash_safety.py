"""Crash safety, proven by killing for real.

Each stage (``stic pairs``, ``stic infuse``, ``stic dpo``, ``stic sft``) runs in a process of its
own on the tiny model and is killed with SIGKILL at seeded random moments: during imports and
model loading, mid-batch, mid-checkpoint, and once all work is done (the final whole-file writes
and manifest). After every kill the files on disk are checked as a reader would find them; then the
stage is run to completion and the result is checked: every expected id exactly once, every
record valid, records written before a kill unchanged (resume appends, it does not rewrite), the
manifest complete, and training continued from the last complete checkpoint, never from zero.

A SIGKILL cannot be aimed at the inside of one ``write``, so two tears are made by hand as a kill
would leave them: half a JSONL line, and half a ``trainer_state.json`` (the Trainer writes it in
place, not through a rename). The rerun must drop or skip them.
"""

from __future__ import annotations

import ast
import json
import os
import random
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import stic.runtime.output
import stic.stages.dpo
import stic.stages.training
from stic.config import DPOConfig, PairsConfig
from stic.data.schemas import read_instruct, read_pairs
from stic.runtime.images import list_images
from stic.runtime.manifests import read_manifest
from stic.stages.dpo import run_dpo
from stic.stages.pairs import plan_pair, run_pairs
from stic.testing import make_images

# Every test here runs stages on a real tiny model end to end: seconds each.
pytestmark = pytest.mark.slow

KILL_POINTS = 10  # real SIGKILLs per stage, at least
# The kill moments are seeded; STIC_CRASH_SEED=N draws other ones (to stress-test the harness).
SEED = int(os.environ.get("STIC_CRASH_SEED", "0"))
RUN_TIMEOUT = 120.0  # seconds one run may take to reach its kill point
TEMP_FILE = re.compile(r"^\..+\.tmp$")  # what files.atomic_write_text leaves when killed
TORN_LINE = b'{"id": "torn-by-the-test", "image": "img_00'
# SIGKILL, and fork() after importing torch: the kill chains run on Linux.
linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="kills forked runs with SIGKILL: Linux only"
)
RESUMING = re.compile(r"resuming (?:dpo|sft) from (\S+)")
LOSS_LOG = re.compile(r"\{'loss': [^{}]*\}")  # the metrics the Trainer prints at each step


# --- the harness ---------------------------------------------------------------------------

# A fresh `stic` spends 3-5 s importing torch and transformers before it touches a file. To
# afford ten kills per stage, most runs are forked from this server, which has made those
# imports once: each fork is its own process running `stic <verb> ...` (stic.cli.main, as
# `python -m stic` does) with its output in a log file, and the test SIGKILLs it by pid. The
# server never runs torch code, so its children start clean. The first and the final run of
# each stage are fresh `python -m stic` processes.
_FORK_SERVER = r"""
import json, os, sys, traceback
import peft, stic.cli, stic.stages.dpo, stic.stages.infuse, stic.stages.pairs, stic.stages.sft
from transformers import AutoModelForImageTextToText, AutoProcessor, HfArgumentParser
print("ready", flush=True)
for line in sys.stdin:
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            os.dup2(log, 1)
            os.dup2(log, 2)
            code = stic.cli.main(request["argv"])
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    print(json.dumps({"pid": pid}), flush=True)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}), flush=True)
"""


class ForkServer:
    """Starts forked ``stic`` runs, one at a time (see ``_FORK_SERVER``)."""

    def __init__(self):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _FORK_SERVER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=_env(),
            bufsize=0,
        )
        self._buffer = b""
        assert self.readline(timeout=120) == "ready", "the fork server did not start"

    def readline(self, timeout: float | None) -> str | None:
        """The server's next line, or None if none came within ``timeout`` seconds."""
        fd = self.proc.stdout.fileno()
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 4096)
            assert chunk, f"the fork server died (code {self.proc.wait()})"
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    def start(self, argv: list[str], log: Path) -> ForkedRun:
        self.proc.stdin.write((json.dumps({"argv": argv, "log": str(log)}) + "\n").encode())
        return ForkedRun(self, json.loads(self.readline(timeout=30))["pid"])

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class ForkedRun:
    """A forked ``stic`` run, with the part of ``subprocess.Popen``'s interface the test uses."""

    def __init__(self, server: ForkServer, pid: int):
        self.server, self.pid, self.returncode = server, pid, None

    def poll(self, timeout: float = 0.0) -> int | None:
        if self.returncode is None:
            line = self.server.readline(timeout)
            if line is not None:
                self.returncode = json.loads(line)["returncode"]
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                # It ended and the server reaped it between poll() and here (Popen holds its
                # child as a zombie until waited for; the server does not): its code follows.
                pass

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def wait(self) -> int:
        return self.poll(timeout=None)


@pytest.fixture(scope="module")
def fork_server():
    server = ForkServer()
    yield server
    server.close()


@dataclass
class KillPoint:
    index: int
    moment: str  # how the kill was aimed, for failure messages
    killed: bool  # False only for the last point, when the run finished first
    progress: int  # progress() after the kill
    seconds: float  # how long the run lived
    log: Path

    def __str__(self) -> str:
        return (
            f"kill point {self.index} ({self.moment}; killed={self.killed} after "
            f"{self.seconds:.2f} s at progress {self.progress}; log {self.log})"
        )


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",  # a killed run's log holds everything it printed
        # One thread per run: the tiny model gains nothing from more, and on a busy 2-core CI
        # machine competing thread pools make each run many times slower.
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


def _args(verb: str, **options) -> list[str]:
    argv = [verb]
    for name, value in options.items():
        argv += [f"--{name}", str(value)]
    return argv


def _tail(log: Path, chars: int = 3000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else "(no log)"


def _sleep_while_running(run, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)


def kill_points(
    rng: random.Random,
    server: ForkServer,
    args: list[str],
    logs: Path,
    progress: Callable[[], int],
    total: int,
    *,
    step: tuple[int, int],
    delay: float,
    startup: float,
    late: float = 0.03,
    points: int = KILL_POINTS + 1,
) -> Iterator[KillPoint]:
    """Run ``stic *args`` ``points`` times, SIGKILL each run at a random moment, yield after each.

    ``progress()`` counts the work on disk (records written, steps checkpointed) out of
    ``total``. Point 0 is a fresh ``python -m stic``; later runs are forked from ``server``.
    Point 0 and one in five others are killed at a random time in the first 4 s (point 0:
    imports, model loading) or ``startup`` s (forked runs: model loading, the first manifest),
    or at the first new record if that comes sooner. The others are killed once ``progress()``
    has grown by a random amount in ``step``, plus a random ``delay`` (so the kill lands
    mid-batch or mid-save). The last point waits until all work is on disk and kills within
    ``late`` s, during the final writes (tens of ms) or the exit after them; that run may
    finish first, and then yields ``killed=False``. Any other run that ends by itself fails
    the test: the stage needs more work for its kill points.
    """
    logs.mkdir(parents=True, exist_ok=True)
    history: list[KillPoint] = []
    for index in range(points):
        done = progress()
        time_limit = None  # kill at this many seconds after the start, whatever the progress
        if index == points - 1:
            target, wait = total, rng.uniform(0.0, late)
            moment = f"{wait:.3f} s after the last record"
        elif index == 0 or rng.random() < 0.2:
            target, wait = done + 1, 0.0
            time_limit = rng.uniform(0.2, 4.0 if index == 0 else startup)
            moment = f"{time_limit:.2f} s after start or at progress {target}/{total}"
        else:
            target, wait = done + rng.randint(*step), rng.uniform(0.0, delay)
            moment = f"{wait:.3f} s after progress {target}/{total}"
        assert index == points - 1 or target < total, (
            f"kill point {index}: too little work left after\n" + "\n".join(map(str, history))
        )
        log = logs / f"run-{index:02d}.log"
        started = time.monotonic()
        if index == 0:
            with open(log, "wb") as out:
                command = [sys.executable, "-m", "stic", *args]
                run = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=_env())
        else:
            run = server.start(args, log)
        try:
            deadline = started + (RUN_TIMEOUT if time_limit is None else time_limit)
            while progress() < target and run.poll() is None:
                if time.monotonic() > deadline:
                    assert time_limit is not None, f"{moment}: no progress\n{_tail(log)}"
                    break
                time.sleep(0.005)
            _sleep_while_running(run, wait)
            if run.poll() is None:
                run.send_signal(signal.SIGKILL)
        finally:
            if run.poll() is None:
                run.kill()
            run.wait()
        killed = run.returncode == -signal.SIGKILL
        assert killed or (index == points - 1 and run.returncode == 0), (
            f"kill point {index} ({moment}): the run ended by itself with code "
            f"{run.returncode} before it was killed\n{_tail(log)}"
        )
        history.append(
            KillPoint(index, moment, killed, progress(), time.monotonic() - started, log)
        )
        yield history[-1]


def run_to_completion(args: list[str], log: Path) -> str:
    """Run ``python -m stic *args`` to the end; returns its output."""
    with open(log, "wb") as out:
        proc = subprocess.run(
            [sys.executable, "-m", "stic", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_env(),
            timeout=300,
        )
    assert proc.returncode == 0, f"final run failed ({proc.returncode})\n{_tail(log)}"
    return log.read_text(errors="replace")


def complete_lines(path: Path) -> list[bytes]:
    """The newline-terminated lines of a JSONL file (a torn last line is left out); each must
    be valid JSON."""
    if not path.exists():
        return []
    raw = path.read_bytes()
    lines = raw[: raw.rfind(b"\n") + 1].splitlines(keepends=True)
    for number, line in enumerate(lines, start=1):
        try:
            json.loads(line)
        except json.JSONDecodeError as e:
            raise AssertionError(
                f"{path}:{number} is a complete line but not JSON: {line!r}"
            ) from e
    return lines


def check_appended(path: Path, before: list[bytes], where: KillPoint | str) -> list[bytes]:
    """The file's complete lines, checked: valid JSON, unique ids, ``before`` kept unchanged."""
    lines = complete_lines(path)
    assert lines[: len(before)] == before, f"{where}: records written earlier were rewritten"
    ids = [json.loads(line)["id"] for line in lines]
    assert len(ids) == len(set(ids)), f"{where}: duplicate ids in {path.name}"
    return lines


def check_whole_json(path: Path, where: KillPoint | str):
    """A file written whole: absent (None) or complete, valid JSON; never half-written."""
    if not path.exists():
        return None
    try:
        return json.loads(path.read_bytes())
    except json.JSONDecodeError as e:
        raise AssertionError(f"{where}: {path.name} is half-written") from e


def check_folder(folder: Path, outputs: set[str], where: KillPoint | str) -> None:
    """Only the outputs, hidden temporary files left by a killed atomic write (which no reader
    takes for an output) and the killed run's lock (stale: the next run takes it over), are in
    ``folder``."""
    locks = {name + ".lock" for name in outputs}
    strays = {p.name for p in folder.iterdir()} - outputs - locks
    assert all(TEMP_FILE.match(n) for n in strays), f"{where}: unexpected files {sorted(strays)}"


def tear_last_line(path: Path) -> None:
    """Append half a record without its newline: what a kill in the middle of a write leaves."""
    with open(path, "ab") as f:
        f.write(TORN_LINE)


def check_torn_line_dropped(path: Path, logs: list[str]) -> None:
    assert TORN_LINE not in path.read_bytes(), "the torn line was kept"
    assert path.read_bytes().endswith(b"\n")
    assert any("dropping a torn last line" in text for text in logs), "the tear was not seen"


@pytest.fixture(scope="module")
def llava(tiny_model_factory) -> Path:
    return tiny_model_factory("llava")


def _instruct(images: list[Path], text_only: int) -> list[dict]:
    samples = [
        {
            "id": f"s-{i:02d}",
            "image": path.name,
            "conversations": [
                {"from": "human", "value": "<image>\nWhat is in the image?"},
                {"from": "gpt", "value": "A shape on a background."},
                {"from": "human", "value": "Is it colourful?"},
                {"from": "gpt", "value": "Yes."},
            ],
        }
        for i, path in enumerate(images)
    ]
    for i in range(text_only):
        samples.insert(
            7 * i + 3,
            {
                "id": f"t-{i}",
                "conversations": [
                    {"from": "human", "value": "Say hello."},
                    {"from": "gpt", "value": "Hello."},
                ],
            },
        )
    return samples


# --- stage 1a: pairs -----------------------------------------------------------------------


@linux_only
def test_pairs_survive_kills(llava, fork_server, tmp_path):
    rng = random.Random(1001 + SEED)
    images = tmp_path / "images"
    total = len(make_images(images, 80, seed=5))
    folder = tmp_path / "out"
    out = folder / "pairs.jsonl"
    options = dict(model=llava, images=images, out=out, batch_size=2, max_new_tokens=16, seed=7)
    args = _args("pairs", **options)
    lines: list[bytes] = []
    killed, counts, logs = 0, [], []
    for point in kill_points(
        rng,
        fork_server,
        args,
        tmp_path / "logs",
        lambda: len(complete_lines(out)),
        total,
        step=(1, 3),
        delay=0.07,
        startup=0.6,
    ):
        killed += point.killed
        logs.append(point.log.read_text(errors="replace"))
        lines = check_appended(out, lines, point)
        counts.append(len(lines))
        manifest = check_whole_json(folder / "pairs.jsonl.manifest.json", point)
        assert manifest is None or manifest["stage"] == "pairs", point
        if folder.exists():
            check_folder(folder, {out.name, out.name + ".manifest.json"}, point)
        if point.index == 3:
            tear_last_line(out)
    assert killed >= KILL_POINTS
    assert any(0 < n < total for n in counts), f"no kill left a partial output: {counts}"

    logs.append(run_to_completion(args, tmp_path / "logs" / "final.log"))
    final = check_appended(out, lines, "after the final run")
    check_torn_line_dropped(out, logs)
    pairs = read_pairs(out)  # every record valid against the schema
    expected = list_images(images)
    assert sorted(p.id for p in pairs) == sorted(expected) and len(final) == total
    # Resumed runs made the same per-image decisions an uninterrupted run makes.
    config = PairsConfig(**{k: str(v) if isinstance(v, Path) else v for k, v in options.items()})
    for pair in pairs:
        plan = plan_pair(pair.id, config)
        assert (pair.prompt, pair.rejected_kind, pair.rejected_prompt) == (
            plan.prompt,
            plan.rejected_kind,
            plan.rejected_prompt,
        ), pair.id
        assert pair.corruption == json.loads(json.dumps(plan.corruption)), pair.id
    manifest = check_whole_json(folder / "pairs.jsonl.manifest.json", "after the final run")
    assert manifest["status"] == "complete" and manifest["summary"]["items"] == total
    check_folder(folder, {out.name, out.name + ".manifest.json"}, "after the final run")


# --- stage 2a: infuse ----------------------------------------------------------------------


@linux_only
def test_infuse_survives_kills(llava, fork_server, tmp_path):
    rng = random.Random(2002 + SEED)
    images = make_images(tmp_path / "images", 80, seed=6)
    data = tmp_path / "instruct.json"
    data.write_text(json.dumps(_instruct(images, text_only=3)))
    samples = read_instruct(data)
    folder = tmp_path / "out"
    out = folder / "infused.json"
    partial = folder / "infused.json.partial.jsonl"
    outputs = {out.name, partial.name, out.name + ".manifest.json"}
    args = _args(
        "infuse",
        model=llava,
        data=data,
        images=tmp_path / "images",
        out=out,
        batch_size=2,
        max_new_tokens=16,
    )
    lines: list[bytes] = []
    killed, counts, logs = 0, [], []
    for point in kill_points(
        rng,
        fork_server,
        args,
        tmp_path / "logs",
        lambda: len(complete_lines(partial)),
        len(images),
        step=(1, 3),
        delay=0.07,
        startup=0.6,
    ):
        killed += point.killed
        logs.append(point.log.read_text(errors="replace"))
        lines = check_appended(partial, lines, point)
        counts.append(len(lines))
        infused = check_whole_json(out, point)
        if infused is not None:  # written only once every description is made
            assert [s["id"] for s in infused] == [s.id for s in samples], point
            assert sum("stic_infusion" in s for s in infused) == len(images), point
        manifest = check_whole_json(folder / (out.name + ".manifest.json"), point)
        assert manifest is None or manifest["stage"] == "infuse", point
        if folder.exists():
            check_folder(folder, outputs, point)
        if point.index == 3:
            tear_last_line(partial)
    assert killed >= KILL_POINTS
    assert any(0 < n < len(images) for n in counts), f"no kill left a partial output: {counts}"

    logs.append(run_to_completion(args, tmp_path / "logs" / "final.log"))
    check_appended(partial, lines, "after the final run")
    check_torn_line_dropped(partial, logs)
    descriptions = {row["id"]: row for row in map(json.loads, complete_lines(partial))}
    assert sorted(descriptions) == sorted(s.id for s in samples if s.image is not None)
    infused = read_instruct(out)  # valid, unique ids
    assert [s.id for s in infused] == [s.id for s in samples]  # every id exactly once, in order
    for before, after in zip(samples, infused, strict=True):
        if before.image is None:
            assert after == before
            continue
        made = descriptions[after.id]
        assert after.infusion == {"description": made["description"], "prompt": made["prompt"]}
        assert made["description"] in after.conversations[0].value
        assert after.conversations[1:] == before.conversations[1:]
    manifest = check_whole_json(folder / (out.name + ".manifest.json"), "after the final run")
    assert manifest["status"] == "complete" and manifest["summary"]["details"]["infused"] == len(
        images
    )
    check_folder(folder, outputs, "after the final run")


# --- stages 1b and 2b: dpo and sft ---------------------------------------------------------

MAX_STEPS = 45  # not a whole number of epochs (8 pairs, 10 samples): the last step is mid-epoch


def complete_checkpoints(out: Path) -> dict[int, Path]:
    """Step -> checkpoint folder, for checkpoints whose trainer_state.json parses."""
    found = {}
    for folder in (out / "checkpoints").glob("checkpoint-*"):
        try:
            state = json.loads((folder / "trainer_state.json").read_bytes())
        except (OSError, json.JSONDecodeError):
            continue
        found[int(folder.name.split("-")[-1])] = folder
        assert state["global_step"] == int(folder.name.split("-")[-1]), folder
    return found


def training_progress(out: Path) -> int:
    try:
        if json.loads((out / "stic_manifest.json").read_bytes())["status"] == "complete":
            return MAX_STEPS
    except (OSError, json.JSONDecodeError):
        pass
    return max(complete_checkpoints(out), default=0)


def tear_trainer_state(checkpoint: Path) -> None:
    """Cut trainer_state.json in half: a kill while the Trainer writes it in place."""
    path = checkpoint / "trainer_state.json"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def logged_steps(text: str, steps_per_epoch: int) -> list[int]:
    """The steps a run trained, from the metrics the Trainer prints after each (logging_steps=1)."""
    return [
        round(float(ast.literal_eval(entry)["epoch"]) * steps_per_epoch)
        for entry in LOSS_LOG.findall(text)
    ]


def kill_training(
    rng: random.Random,
    server: ForkServer,
    stage: str,
    args: list[str],
    out: Path,
    logs: Path,
    steps_per_epoch: int,
) -> dict:
    """Kill a training run at >= KILL_POINTS moments; check that each rerun resumed from the
    last complete checkpoint and continued its step count; returns the final manifest summary."""
    resume_from: Path | None = None  # where the next run must resume
    finisher = None  # (where it resumed, its output) for the run that completed the stage
    killed, torn, texts, resumes, trained = 0, None, [], 0, 0
    for point in kill_points(
        rng, server, args, logs, lambda: training_progress(out), MAX_STEPS,
        step=(1, 2), delay=0.08, startup=1.0,
    ):  # fmt: skip
        killed += point.killed
        text = point.log.read_text(errors="replace")
        texts.append(text)
        resumed = RESUMING.findall(text)
        resumes += bool(resumed)
        if resume_from is None:
            assert not resumed, f"{point}: resumed from {resumed} with no checkpoint"
        else:
            assert all(Path(r).resolve() == resume_from.resolve() for r in resumed), (
                f"{point}: resumed from {resumed}, the last complete checkpoint was {resume_from}"
            )
        # The run went on from the checkpoint's step, not from zero.
        done = int(resume_from.name.split("-")[-1]) if resume_from else 0
        steps = logged_steps(text, steps_per_epoch)
        trained += bool(steps)
        assert steps == list(range(done + 1, done + 1 + len(steps))), (
            f"{point}: after checkpoint-{done} it trained steps {steps}"
        )
        manifest = check_whole_json(out / "stic_manifest.json", point)
        assert manifest is None or manifest["stage"] == stage, point
        check_whole_json(out / "train_log.json", point)
        if manifest is not None and manifest["status"] == "complete":
            # Killed after the stage completed (the last point only): this run finished it.
            finisher = (resume_from, text)
            continue
        checkpoints = complete_checkpoints(out)
        assert max(checkpoints, default=0) >= done, f"{point}: steps went backwards"
        if torn is None and point.index >= 3 and len(checkpoints) >= 2:
            tear_trainer_state(checkpoints.pop(max(checkpoints)))
            torn = point.index
        resume_from = checkpoints[max(checkpoints)] if checkpoints else None
    assert killed >= KILL_POINTS
    assert resumes >= KILL_POINTS // 2, f"only {resumes} runs resumed from a checkpoint"
    assert trained >= KILL_POINTS // 2, f"only {trained} runs logged training steps"
    assert torn is not None, "no kill point had two checkpoints to tear the newest of"

    text = run_to_completion(args, logs / "final.log")
    torn_seen = [t for t in [*texts, text] if "torn by an interrupted save" in t]
    assert torn_seen, "no rerun noticed the torn trainer_state.json"
    manifest = check_whole_json(out / "stic_manifest.json", "after the final run")
    assert manifest["stage"] == stage and manifest["status"] == "complete"
    summary = manifest["summary"]
    assert summary["details"]["global_step"] == MAX_STEPS
    if finisher is None:
        finisher = (resume_from, text)
        assert not (out / "checkpoints").exists(), "checkpoints left after the stage completed"
    # The run that completed the stage resumed from the last checkpoint and trained the rest.
    resumed, output = finisher
    assert resumed is not None and summary["details"]["resumed_from"] is not None
    assert Path(summary["details"]["resumed_from"]).resolve() == resumed.resolve(), summary
    done = int(resumed.name.split("-")[-1])
    assert logged_steps(output, steps_per_epoch) == list(range(done + 1, MAX_STEPS + 1))
    log = check_whole_json(out / "train_log.json", "after the final run")
    assert [e["step"] for e in log if "loss" in e] == list(range(1, MAX_STEPS + 1))
    return summary


def load_adapter(model_dir: Path, adapter: Path):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    base = AutoModelForImageTextToText.from_pretrained(model_dir)
    return PeftModel.from_pretrained(base, adapter)


def lora_weights(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters() if ".lora_" in n}


@pytest.fixture(scope="module")
def pairs_file(llava, tmp_path_factory) -> tuple[Path, Path]:
    """(pairs.jsonl, images): eight real pairs from the tiny model."""
    root = tmp_path_factory.mktemp("crash_pairs")
    make_images(root / "images", 8, seed=8)
    run_pairs(
        PairsConfig(
            model=str(llava),
            images=str(root / "images"),
            out=str(root / "pairs.jsonl"),
            max_new_tokens=8,
            batch_size=8,
        )
    )
    return root / "pairs.jsonl", root / "images"


@linux_only
def test_dpo_survives_kills_and_resumes_from_its_last_checkpoint(
    llava, pairs_file, fork_server, tmp_path
):
    pairs, images = pairs_file
    out = tmp_path / "stage1"
    args = _args(
        "dpo",
        model=llava,
        pairs=pairs,
        images=images,
        out=out,
        max_steps=MAX_STEPS,
        save_steps=1,
        logging_steps=1,
        batch_size=1,
        grad_accum=1,
        lr=0.01,
        lora_r=4,
        lora_alpha=8,
        filter_truncated="false",  # the random tiny model never stops before max_new_tokens
    )
    steps_per_epoch = len(read_pairs(pairs))  # batch 1, no accumulation
    rng = random.Random(3003 + SEED)
    summary = kill_training(rng, fork_server, "dpo", args, out, tmp_path / "logs", steps_per_epoch)
    assert summary["details"]["pairs"] == steps_per_epoch
    lora = lora_weights(load_adapter(llava, out))
    assert lora and all(w.abs().sum() > 0 for n, w in lora.items() if "lora_B" in n)


@pytest.fixture(scope="module")
def stage1(llava, pairs_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("crash_stage1") / "stage1"
    run_dpo(tiny_dpo_config(llava, pairs_file, out))
    return out


def tiny_dpo_config(llava, pairs_file, out: Path) -> DPOConfig:
    pairs, images = pairs_file
    return DPOConfig(
        model=str(llava),
        pairs=str(pairs),
        images=str(images),
        out=str(out),
        max_steps=1,
        batch_size=2,
        lr=0.01,
        lora_r=4,
        lora_alpha=8,
        filter_truncated=False,
    )


@linux_only
def test_sft_survives_kills_and_resumes_from_its_last_checkpoint(
    llava, pairs_file, stage1, fork_server, tmp_path
):
    _, images = pairs_file
    data = tmp_path / "instruct.json"
    data.write_text(json.dumps(_instruct(sorted(images.iterdir()), text_only=2)))
    out = tmp_path / "stage2"
    args = _args(
        "sft",
        model=llava,
        adapter=stage1,
        data=data,
        images=images,
        out=out,
        max_steps=MAX_STEPS,
        save_steps=1,
        logging_steps=1,
        batch_size=1,
        grad_accum=1,
        lr=0.001,
    )
    steps_per_epoch = len(read_instruct(data))  # batch 1, no accumulation
    rng = random.Random(4004 + SEED)
    kill_training(rng, fork_server, "sft", args, out, tmp_path / "logs", steps_per_epoch)
    before = lora_weights(load_adapter(llava, stage1))
    after = lora_weights(load_adapter(llava, out))
    assert before.keys() == after.keys()
    assert any(not (after[n] == before[n]).all() for n in before), "sft did not train the adapter"


# --- the pieces the kills rely on ------------------------------------------------------------


def test_last_checkpoint_skips_a_half_written_trainer_state(tmp_path):
    """The Trainer writes trainer_state.json in place; a kill mid-write leaves it empty or cut
    off. Resuming from that checkpoint would crash on the JSON, so the one before is used."""
    from stic.stages.training import last_checkpoint

    checkpoints = tmp_path / "checkpoints"
    state = json.dumps({"global_step": 2, "log_history": [{"loss": 1.0, "step": 1}]})
    for step, text in ((2, state), (3, state[: len(state) // 2]), (4, "")):
        folder = checkpoints / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        (folder / "adapter_model.safetensors").write_bytes(b"x")
        (folder / "trainer_state.json").write_text(text)
    assert last_checkpoint(tmp_path) == str(checkpoints / "checkpoint-2")
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-2"]


def test_a_run_killed_after_its_last_checkpoint_does_not_train_again(
    llava, pairs_file, tmp_path, monkeypatch
):
    """A kill after the final checkpoint but before the complete manifest (the kill chains hit
    this 20 ms window only sometimes). Trainer.train resumed from a checkpoint at max_steps
    in mid-epoch runs one step more than asked (global_step max_steps + 1, and with a constant
    LR schedule one more update); the rerun must save the checkpoint's weights as they are."""
    pairs, images = pairs_file
    config = DPOConfig(
        model=str(llava),
        pairs=str(pairs),
        images=str(images),
        out=str(tmp_path / "stage1"),
        max_steps=3,  # one pair a step, eight pairs: the last step is mid-epoch
        save_steps=1,
        logging_steps=1,
        batch_size=1,
        grad_accum=1,
        lr=0.01,
        lora_r=4,
        lora_alpha=8,
        filter_truncated=False,
    )

    def killed_before_complete(output, summary=None, files=()):
        raise KeyboardInterrupt("killed")

    with monkeypatch.context() as patch:
        patch.setattr(stic.runtime.output.Output, "finish", killed_before_complete)
        with pytest.raises(KeyboardInterrupt):
            run_dpo(config)
    final = Path(config.out) / "checkpoints" / "checkpoint-3"
    weights = load_file(str(final / "adapter_model.safetensors"))

    steps = []
    compute_loss = stic.stages.dpo.DPOTrainer.compute_loss

    def counting(self, *args, **kwargs):
        steps.append(self.state.global_step)
        return compute_loss(self, *args, **kwargs)

    monkeypatch.setattr(stic.stages.dpo.DPOTrainer, "compute_loss", counting)
    summary = run_dpo(config)
    assert steps == [], "the rerun trained again"
    assert summary.details["global_step"] == 3 and summary.details["resumed_from"] == str(final)
    saved = load_file(str(Path(config.out) / "adapter_model.safetensors"))
    assert saved.keys() == weights.keys()
    assert all(torch.equal(saved[k], weights[k]) for k in weights)
    log = json.loads((Path(config.out) / "train_log.json").read_text())
    assert [e["step"] for e in log if "loss" in e] == [1, 2, 3]
    assert read_manifest(config.out)["status"] == "complete"
    assert not (Path(config.out) / "checkpoints").exists()


def test_a_complete_stage_removes_checkpoints_a_kill_left(llava, pairs_file, tmp_path):
    """train_and_save writes the complete manifest, then removes <out>/checkpoints (in that
    order, so a kill in between never loses the checkpoint to resume from). A kill during
    that removal leaves checkpoints (optimizer states: gigabytes at 7B) that no rerun removes."""
    config = tiny_dpo_config(llava, pairs_file, tmp_path / "stage1")
    run_dpo(config)
    leftover = tmp_path / "stage1" / "checkpoints" / "checkpoint-1"
    leftover.mkdir(parents=True)
    (leftover / "optimizer.pt").write_bytes(b"x" * 1000)
    assert run_dpo(config).up_to_date
    assert not (tmp_path / "stage1" / "checkpoints").exists()
