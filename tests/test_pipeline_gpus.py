"""`stic run --gpus 2` on this CPU, every stage of the tiny run (pairs, dpo, infuse, sft, eval):
a 2-CPU Ray pool for the generating stages, two gloo processes (torchrun) for the training ones.

The run is SIGKILLed in the middle of its DPO stage (after a checkpoint, as
tests/stages/test_distributed.py picks its kill point); its training processes must stop, and
the same command must resume it to the result of an uninterrupted one-process run: the same
pairs, infused data and eval answers, and adapters equal within the distributed tolerance of
test_distributed.py (float sums split over two processes, carried through Adam). Then the
output, made with two processes, is up to date for a one-process rerun: N is not part of any
stage's identity.
"""

from __future__ import annotations

import contextlib
import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from stic.cli import main
from stic.runtime.files import read_jsonl
from stic.runtime.manifests import read_manifest
from stic.stages import training
from stic.testing import write_pipeline_inputs
from tests.stages.test_distributed import _assert_same_training, _env, _saved_checkpoint

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SIGKILL and /proc: Linux"),
    # Ray Data's own settings warn about themselves each time a pipeline starts: noise here.
    pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context"),
]
RUN_TIMEOUT = 900  # seconds: a whole run on two shared cores, Ray and torchrun started


def _config(root: Path, output_dir: Path) -> Path:
    """The pipeline tests' tiny run, made comparable: no LoRA dropout (each process would draw
    its own masks), a constant learning rate, a checkpoint after every DPO step (a kill point),
    one eval of the final adapter; short answers to keep it quick."""
    config = yaml.safe_load((root / "stic.yaml").read_text())
    config["output_dir"] = str(output_dir)
    config["pairs"]["max_new_tokens"] = 12
    config["infuse"]["max_new_tokens"] = 12
    for stage in ("dpo", "sft"):
        # batch 2 x accum 1: two processes take one example each (the per-device batch shrinks).
        config[stage].update(lr=1e-3, lr_scheduler="constant", warmup_ratio=0.0, save_steps=1)
    config["dpo"]["lora_dropout"] = 0.0  # sft trains the dpo adapter: its settings carry over
    config["eval"] = [e for e in config["eval"] if e["name"] == "stic"]
    path = output_dir.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _training_processes(processes: list[psutil.Process]) -> list[psutil.Process]:
    """The launcher and the stage processes among ``processes`` (not Ray's)."""
    found = []
    for proc in processes:
        with contextlib.suppress(psutil.Error):
            command = " ".join(proc.cmdline())
            if "torch.distributed.run" in command or "-m stic dpo" in command:
                found.append(proc)
    return found


def _kill_in_dpo(command: list[str], out: Path) -> tuple[str, list[psutil.Process]]:
    """Start ``command``; once DPO has a complete checkpoint, SIGKILL the `stic run` process
    alone (not its children: they must stop by themselves). Returns the checkpoint and the
    training processes that were running."""
    log = out.parents[1] / "killed_run.log"  # beside the run folder (not made yet)
    with log.open("w") as sink:
        proc = subprocess.Popen(command, env=_env(), stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        while (found := _saved_checkpoint(out)) is None:
            assert proc.poll() is None, (
                f"the run ended before a DPO checkpoint:\n{log.read_text()[-4000:]}"
            )
            assert time.monotonic() < deadline, "no DPO checkpoint within the time limit"
            time.sleep(0.05)
        children = _training_processes(psutil.Process(proc.pid).children(recursive=True))
        assert proc.poll() is None, "the run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        return found, children
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _records(path: Path) -> list[dict]:
    return read_jsonl(path) if path.suffix == ".jsonl" else json.loads(path.read_text())


def test_two_gpus_killed_in_dpo_resume_to_the_one_process_run(tmp_path):
    write_pipeline_inputs(tmp_path, num_images=4, seed=0, family="llava")
    one, two = tmp_path / "one", tmp_path / "two"
    code, _, stderr = _run_cli(["run", str(_config(tmp_path, one)), "--gpus", "1"])
    assert code == 0, stderr[-3000:]

    command = [sys.executable, "-m", "stic", "run", str(_config(tmp_path, two)), "--gpus", "2"]
    killed_at, children = _kill_in_dpo(command, two / "dpo")
    assert len(children) == 3, children  # torchrun's agent and its two processes
    # No orphan keeps training (and writing checkpoints) after its `stic run` is gone.
    _, alive = psutil.wait_procs(children, timeout=120)
    assert not alive, f"training processes still running after their stic run was killed: {alive}"
    assert read_manifest(two / "dpo")["status"] == "running"

    done = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert done.returncode == 0, done.stderr[-4000:]

    # Generated records: the same as one process made (the Ray pool cuts the same batches).
    for relative in ("pairs/pairs.jsonl", "infuse/infused.json"):
        assert _records(two / relative) == _records(one / relative), relative
    results = [json.loads((run / "eval" / "stic.json").read_text()) for run in (one, two)]
    assert results[1]["items"] == results[0]["items"]
    assert results[1]["accuracy"] == results[0]["accuracy"]

    dpo = read_manifest(two / "dpo")["summary"]["details"]
    assert dpo["world_size"] == 2 and dpo["global_step"] == 4
    assert int(dpo["resumed_from"].rsplit("-", 1)[1]) >= int(killed_at.rsplit("-", 1)[1])
    for stage in ("dpo", "sft"):
        details = [read_manifest(run / stage)["summary"]["details"] for run in (one, two)]
        # The configured batch 2 x 1: one process 2 x 1, two processes 1 x 1 each.
        assert details[0]["batch_split"] == {
            "batch_size": 2,
            "grad_accum": 1,
            "processes": 1,
            "global_batch": 2,
        }
        assert details[1]["batch_split"] == {
            "batch_size": 1,
            "grad_accum": 1,
            "processes": 2,
            "global_batch": 2,
        }
        assert not (two / stage / training.CHECKPOINTS).exists()
        diffs = _assert_same_training(one / stage, two / stage)
        print(f"{stage}, 1 vs 2 processes (killed at {Path(killed_at).name}): {diffs}")
    assert read_manifest(two / "resolved_config.yaml", file=True)["summary"]["gpus"] == 2

    # Made with two processes, up to date for one: the same run.
    code, stdout, stderr = _run_cli(["run", str(two.with_suffix(".yaml")), "--gpus", "1"])
    assert code == 0, stderr[-3000:]
    lines = [line for line in stdout.splitlines() if " -> " in line and "report" not in line]
    assert len(lines) == 5 and all('"up_to_date": true' in line for line in lines), lines
