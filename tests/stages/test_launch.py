"""`stic run --gpus N` (stic.stages.launch): the global batch split over N processes, the stage
command the launcher runs (it parses back into the same config, so the same config hash), the
run config's launch keys, and a launched process that exits when its `stic run` dies.

The N=2 run of every stage, equal to N=1 and killed mid-DPO, is tests/test_pipeline_gpus.py.
"""

from __future__ import annotations

import contextlib
import io
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from stic.cli import _parse_stage, main
from stic.config import (
    ConfigError,
    DPOConfig,
    EvalConfig,
    LaunchOptions,
    PairsConfig,
    SFTConfig,
    config_hash,
)
from stic.pipeline import launch_options
from stic.runtime.manifests import read_manifest
from stic.stages import launch, training
from tests.stages.test_distributed import (  # noqa: F401  (inputs: the fixture, used by name)
    DPO_STEPS,
    _assert_same_training,
    _cli_args,
    _dpo_values,
    _kill_after_checkpoint,
    _one_process,
    _run,
    _steps,
    _torchrun,
    inputs,
)


@pytest.mark.parametrize(
    "batch_size, grad_accum, processes, expected",
    [
        (2, 4, 2, (2, 2)),  # grad_accum divides: the per-device batch (its memory) is kept
        (1, 8, 8, (1, 1)),  # the reference code: 8 = 1 x 1 x 8 GPUs
        (2, 1, 2, (1, 1)),  # no accumulation to divide: a smaller per-device batch
        (4, 3, 2, (3, 2)),  # 12 = 3 x 2 x 2: the largest batch up to 4 that divides 6
        (4, 2, 8, (1, 1)),
        (3, 1, 1, (3, 1)),
    ],
)
def test_split_keeps_the_global_batch(batch_size, grad_accum, processes, expected):
    split = launch.split_batch(batch_size, grad_accum, processes)
    assert (split.batch_size, split.grad_accum) == expected
    assert split.global_batch == batch_size * grad_accum
    assert split.batch_size <= batch_size  # never more examples in memory than configured
    assert split.to_dict() == {
        "batch_size": expected[0],
        "grad_accum": expected[1],
        "processes": processes,
        "global_batch": batch_size * grad_accum,
    }


def test_split_over_every_process_count_is_exact():
    for batch_size in range(1, 7):
        for grad_accum in range(1, 9):
            for processes in range(1, 9):
                try:
                    split = launch.split_batch(batch_size, grad_accum, processes)
                except ConfigError:
                    assert (batch_size * grad_accum) % processes
                    continue
                assert split.global_batch == batch_size * grad_accum
                assert split.processes == processes


def test_a_global_batch_that_does_not_divide_is_refused_naming_the_keys():
    with pytest.raises(ConfigError) as refused:
        launch.split_batch(3, 1, 2, where="dpo.")
    message = str(refused.value)
    assert "dpo.batch_size, dpo.grad_accum" in message and "3 x 1 = 3" in message
    assert "2 processes" in message


def test_the_launched_process_takes_its_share_only_when_told(monkeypatch):
    config = SFTConfig(model="m", data="d", images="i", out="o", batch_size=2, grad_accum=4)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert training.batch_split(config) == launch.BatchSplit(2, 4, 2)  # by hand: as given
    shared = replace(config, keep_global_batch=True)
    assert training.batch_split(shared) == launch.BatchSplit(2, 2, 2)
    monkeypatch.delenv("WORLD_SIZE")
    assert training.batch_split(shared) == launch.BatchSplit(2, 4, 1)  # one process: as given


def _dpo(**kw) -> DPOConfig:
    values = dict(model="m", pairs="p.jsonl", images="i", out="o", batch_size=2, grad_accum=3)
    return DPOConfig(**{**values, **kw})


def test_scaled_configs_change_runtime_fields_only():
    dpo = _dpo(lr=3e-7, alpha=1 / 1024, gradient_checkpointing=True)
    scaled = launch.scaled_config("dpo", dpo, 2)
    assert scaled.keep_global_batch and config_hash(scaled) == config_hash(dpo)
    pairs = PairsConfig(model="m", images="i", out="p.jsonl")
    scaled = launch.scaled_config("pairs", pairs, 4)
    assert (scaled.ray, scaled.workers) == ("local", 4)
    assert config_hash(scaled) == config_hash(pairs)
    # A stage that names its own cluster or pool keeps it; one GPU changes nothing.
    own = EvalConfig(model="m", data="d", images="i", out="e.json", ray="auto", workers=3)
    assert launch.scaled_config("eval", own, 4) == own
    assert launch.scaled_config("pairs", pairs, 1) == pairs
    assert launch.scaled_config("dpo", dpo, 1) == dpo
    with pytest.raises(ConfigError, match="dpo.batch_size, dpo.grad_accum"):
        launch.scaled_config("dpo", dpo, 4, "dpo.")


def _options(**kw) -> LaunchOptions:
    return launch.resolve_options(LaunchOptions(**{"gpus": 2, **kw}))


def test_torchrun_runs_the_stage_command_a_user_would():
    config = launch.scaled_config("dpo", _dpo(lr=3e-7, max_steps=5, report_to="none"), 2)
    command = launch.launch_command("dpo", config, _options())
    assert command[:6] == [sys.executable, "-m", "torch.distributed.run", "--standalone"] + [
        "--nproc-per-node",
        "2",
    ]
    at = command.index("-m", 2)
    assert command[at : at + 3] == ["-m", "stic", "dpo"]
    # What the processes parse is the config itself: the same run, the same hash.
    parsed = _parse_stage("dpo", command[at + 3 :])
    assert parsed == config and config_hash(parsed) == config_hash(_dpo(lr=3e-7, max_steps=5))


def test_accelerate_runs_the_shipped_ddp_config_by_default(tmp_path):
    config = launch.scaled_config(
        "sft", SFTConfig(model="m", data="d", images="i", out="o", adapter="a"), 2
    )
    command = launch.launch_command("sft", config, _options(launcher="accelerate"), port=29123)
    assert command[1:3] == ["-m", "accelerate.commands.launch"]
    shipped = Path(command[command.index("--config_file") + 1])
    assert shipped.name == "ddp.yaml" and shipped.is_file()
    assert command[command.index("--num_processes") + 1] == "2"
    assert command[command.index("--main_process_port") + 1] == "29123"
    at = command.index("stic")
    assert _parse_stage("sft", command[at + 2 :]) == config
    own = tmp_path / "zero2.yaml"
    own.write_text("distributed_type: DEEPSPEED\n")
    command = launch.launch_command(
        "sft", config, _options(launcher="accelerate", accelerate_config=str(own))
    )
    assert command[command.index("--config_file") + 1] == str(own.resolve())
    with pytest.raises(ConfigError, match="accelerate_config: .* is not a file"):
        _options(launcher="accelerate", accelerate_config=str(tmp_path / "none.yaml"))


def test_launch_keys_of_a_run_config(monkeypatch):
    monkeypatch.setattr(launch, "machine_gpus", lambda: 3)
    assert launch_options({}).gpus == 3  # unset: the machine's
    assert launch_options({"gpus": 2}).gpus == 2
    assert launch_options({"gpus": 2}, gpus=1).gpus == 1  # stic run --gpus wins
    options = launch_options({"gpus": 2, "launcher": "accelerate"})
    assert Path(options.accelerate_config).name == "ddp.yaml"


def _run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _write(tmp_path: Path, **top) -> Path:
    config = {
        "model": "org/model",  # a Hub id: not looked for before the run
        "output_dir": str(tmp_path / "run"),
        "pairs": {"images": str(tmp_path)},
        "dpo": {"batch_size": 2, "grad_accum": 1},
        **top,
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize(
    "top, expected",
    [
        ({"gpus": 0}, "gpus: 0 is not allowed (must be >= 1 or null)"),
        ({"gpus": "all"}, "gpus: 'all' is not int or null"),
        ({"launcher": "mpirun"}, "launcher: 'mpirun' is not one of 'torchrun', 'accelerate'"),
        ({"accelerate_config": "x.yaml"}, "accelerate_config: only read with launcher: accelerate"),
    ],
)
def test_bad_launch_keys_stop_the_run_naming_them(tmp_path, top, expected):
    code, _, stderr = _run_cli(["run", str(_write(tmp_path, **top, gpu=1))])
    assert code == 2
    assert expected in stderr
    assert "gpu: unknown key" in stderr  # reported together with the others
    assert not (tmp_path / "run").exists()


def test_a_batch_that_cannot_be_split_stops_the_run_before_it_starts(tmp_path):
    code, _, stderr = _run_cli(["run", str(_write(tmp_path)), "--gpus", "3"])
    assert code == 2
    assert "dpo.batch_size, dpo.grad_accum: the global batch 2 x 1 = 2 cannot be split" in stderr
    assert not (tmp_path / "run").exists()


def test_run_help_names_gpus():
    code, stdout, _ = _run_cli(["run", "--help"])
    assert code == 0 and "--gpus N" in stdout


_CHILD = """
import sys, time
from stic.stages.launch import exit_with_parent
assert exit_with_parent(interval=0.05)
print("watching", flush=True)
time.sleep(120)
"""


@pytest.mark.skipif(not sys.platform.startswith(("linux", "darwin")), reason="POSIX signals")
def test_a_launched_process_exits_when_its_stic_run_is_killed():
    """What keeps a SIGKILLed `stic run`'s training processes from writing on."""
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    child = None
    try:
        env = {**launch.child_environment(2), launch.PARENT_ENV: launch.parent_token(parent.pid)}
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD], env=env, stdout=subprocess.PIPE, text=True
        )
        assert child.stdout.readline().strip() == "watching"
        assert child.poll() is None  # its parent lives: it goes on
        parent.send_signal(signal.SIGKILL)
        # Not reaped yet: a zombie counts as gone.
        assert child.wait(timeout=60) == launch.PARENT_GONE_EXIT
    finally:
        parent.kill()
        parent.wait()
        if child is not None:
            child.kill()
            child.wait()
            child.stdout.close()


def test_parent_token_names_this_process_and_no_other():
    token = launch.parent_token()
    assert launch.parent_alive(token)
    pid, _, start = token.partition(":")
    if start:  # /proc: the same pid with another start time is another process
        assert not launch.parent_alive(f"{pid}:{int(start) + 1}")
    assert launch.exit_with_parent(environ={}) is False  # not launched by stic run: no watch


@pytest.mark.slow
def test_dpo_killed_with_two_processes_resumes_with_one(inputs, tmp_path):  # noqa: F811
    """Resume with another N: the same config (keep_global_batch) is the same run for any N, so
    a checkpoint two processes saved is resumed by one, to the uninterrupted one-process run."""
    one = tmp_path / "one"
    _one_process("dpo", _dpo_values(inputs, one, batch_size=2, save_steps=100))

    two = tmp_path / "two"
    values = _dpo_values(inputs, two, batch_size=2, keep_global_batch=True)
    killed_at = _kill_after_checkpoint(_torchrun("dpo", values), two)
    assert read_manifest(two)["status"] == "running"
    _run([sys.executable, "-m", "stic", "dpo", *_cli_args(values)])  # one process, same config
    details = read_manifest(two)["summary"]["details"]
    assert details["world_size"] == 1 and details["global_step"] == DPO_STEPS
    assert int(details["resumed_from"].rsplit("-", 1)[1]) >= int(killed_at.rsplit("-", 1)[1])
    assert sorted(_steps(two)) == list(range(1, DPO_STEPS + 1))
    diffs = _assert_same_training(one, two)
    print(f"dpo, killed with 2 processes at {Path(killed_at).name}, resumed with 1: {diffs}")
