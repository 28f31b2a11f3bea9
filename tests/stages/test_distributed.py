"""Training launched as several processes (stic.stages.training): torchrun and accelerate launch
run ONE data-parallel training (two CPU processes over gloo here), equal to a single process over
the same global batch; only the main process writes; a killed two-process run resumes. The shipped
accelerate configs hold the settings LoRA needs under DeepSpeed and FSDP (not run: no GPU here).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import psutil
import pytest
import torch
import yaml
from safetensors.torch import load_file

from stic.config import SFTConfig
from stic.data import prompts
from stic.data.schemas import PairRecord
from stic.runtime.files import append_jsonl
from stic.runtime.locks import lock_path
from stic.runtime.manifests import read_manifest
from stic.stages import training
from stic.testing import make_images

ACCELERATE_CONFIGS = resources.files("stic") / "configs" / "accelerate"
BIN = Path(sys.executable).parent
# The two runs differ only in how float32 sums are split across processes and ordered. Such
# rounding differences (relative ~1e-7 per sum) are carried through Adam, which scales each
# step to about ``lr`` whatever the gradient's size, so what they can amount to is a small
# fraction of how far training moved the weights, not an absolute number: the adapter's
# difference is measured against the size of the update (LoRA's B matrices start at zero, so
# their values are the update), the losses' and gradient norms' against their own size. 1e-3
# leaves room for the rounding of any machine's thread count and summation order; a run that
# trains on other data (half of it, say) differs by a large fraction of the update (checked
# below: the comparison must fail then).
RELATIVE_TOLERANCE = 1e-3

# What makes the two runs comparable: no LoRA dropout, a constant learning rate with no warm-up
# (so the first step already moves the weights), every step logged.
COMMON = dict(
    lr=1e-2,
    lr_scheduler="constant",
    warmup_ratio=0.0,
    lora_r=4,
    lora_alpha=8,
    lora_dropout=0.0,
    logging_steps=1,
)
DPO_STEPS = 6  # 4 pairs, global batch 2: three epochs, a checkpoint after each step


def _cli_args(values: dict) -> list[str]:
    return [item for key, value in values.items() for item in (f"--{key}", str(value))]


def _env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    # Two processes on two shared cores: one thread each.
    return {**env, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(stage: str, values: dict) -> list[str]:
    launcher = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2"]
    return [*launcher, "-m", "stic", stage, *_cli_args(values)]


def _steps(out: Path) -> dict[int, tuple[float, float]]:
    """Step -> (loss, grad norm) from the training log."""
    log = json.loads((out / training.TRAIN_LOG).read_text())
    return {row["step"]: (row["loss"], row["grad_norm"]) for row in log if "loss" in row}


def _assert_same_training(one: Path, two: Path) -> dict[str, float]:
    """The two outputs logged the same losses and saved the same adapter, within rounding.

    Returns the relative differences: of the adapters (norm of the difference over the norm of
    the update), of the losses and of the gradient norms (largest over the steps, each over its
    own size).
    """
    steps_one, steps_two = _steps(one), _steps(two)
    assert sorted(steps_one) == sorted(steps_two), (steps_one, steps_two)

    def relative(a: float, b: float) -> float:
        return abs(a - b) / max(abs(a), abs(b), 1e-12)

    loss_diff = max(relative(steps_one[s][0], steps_two[s][0]) for s in steps_one)
    norm_diff = max(relative(steps_one[s][1], steps_two[s][1]) for s in steps_one)
    a = load_file(one / "adapter_model.safetensors")
    b = load_file(two / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    difference = sum(((a[k] - b[k]).double() ** 2).sum() for k in a) ** 0.5
    update = sum((a[k].double() ** 2).sum() for k in a if "lora_B" in k) ** 0.5
    assert max(a[k].abs().max().item() for k in a if "lora_B" in k) > 1e-3, (
        "the adapter did not train: the comparison would prove nothing"
    )
    weight_diff = float(difference / update)
    diffs = {"loss": loss_diff, "grad_norm": norm_diff, "adapter": weight_diff}
    assert max(diffs.values()) < RELATIVE_TOLERANCE, (diffs, steps_one, steps_two)
    return diffs


def _one_process(stage: str, values: dict) -> None:
    """The single-process run, as a process with the same thread settings as each launched one
    (one thread): the comparison is then between data-parallel and not, not between thread
    counts."""
    _run([sys.executable, "-m", "stic", stage, *_cli_args(values)])


@pytest.fixture(scope="module")
def inputs(tiny_model_factory, tmp_path_factory) -> dict[str, Path]:
    """The tiny LLaVA, four images, four pairs and four instruction samples about them."""
    root = tmp_path_factory.mktemp("distributed")
    model = tiny_model_factory("llava")
    images = root / "images"
    make_images(images, 4, seed=21)
    # Written, not generated: the equality checks need real pairs, not a model's sampling.
    pairs = root / "pairs.jsonl"
    texts = [
        ("A red circle on white.", "A red circle beside a dog and a tree."),
        ("Two blue squares.", "Two blue squares and a flying kite over the sea."),
        ("A green field under a grey sky.", "A field."),
        ("Three yellow dots in a row.", "Three yellow dots, a clock and a red car."),
    ]
    records = [
        PairRecord(
            id=f"img_{i:04d}.png",
            image=f"img_{i:04d}.png",
            prompt=prompts.PLAIN_PROMPTS[i],
            chosen=chosen,
            rejected=rejected,
            rejected_kind="bad_prompt",
            chosen_prompt=prompts.GOOD_PROMPT,
            rejected_prompt=prompts.BAD_PROMPTS[i],
        )
        for i, (chosen, rejected) in enumerate(texts)
    ]
    append_jsonl(pairs, [r.to_dict() for r in records])
    # What one of the two processes sees: a run that trained on this alone must not pass.
    half_pairs = root / "half_pairs.jsonl"
    append_jsonl(half_pairs, [r.to_dict() for r in records[::2]])
    # Answers of different lengths: the SFT loss is a mean over the answer tokens of the whole
    # global batch, which two processes must reproduce (each sees a different token count).
    answers = ["A red circle.", "Two blue squares on a green field.", "Nothing.", "A cat. " * 6]
    data = root / "instruct.json"
    data.write_text(
        json.dumps(
            [
                {
                    "id": f"s{i}",
                    "image": f"img_{i:04d}.png",
                    "conversations": [
                        {"from": "human", "value": "<image>\nWhat is in the image?"},
                        {"from": "gpt", "value": answer},
                    ],
                }
                for i, answer in enumerate(answers)
            ]
        )
    )
    assert sorted(p.name for p in images.iterdir()) == [f"img_{i:04d}.png" for i in range(4)]
    half_data = root / "half_instruct.json"
    half_data.write_text(json.dumps(json.loads(data.read_text())[::2]))
    return {
        "model": model,
        "images": images,
        "pairs": pairs,
        "data": data,
        "half_pairs": half_pairs,
        "half_data": half_data,
        "root": root,
    }


def _dpo_values(inputs, out: Path, **overrides) -> dict:
    return {
        "model": str(inputs["model"]),
        "pairs": str(inputs["pairs"]),
        "images": str(inputs["images"]),
        "out": str(out),
        "max_steps": DPO_STEPS,
        "batch_size": 1,
        "grad_accum": 1,
        "save_steps": 1,
        "alpha": 0.01,
        **COMMON,
        **overrides,
    }


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _saved_checkpoint(out: Path) -> str | None:
    """A checkpoint whose save finished (read only: the run is still writing)."""
    for state in (out / training.CHECKPOINTS).glob("checkpoint-*/trainer_state.json"):
        try:
            json.loads(state.read_text())
        except (OSError, ValueError):
            continue
        return str(state.parent)
    return None


def _kill_after_checkpoint(command: list[str], out: Path, timeout: float = 120) -> str:
    """Run ``command``; SIGKILL it and its workers once a complete checkpoint exists. Returns it.

    torchrun starts its workers in sessions of their own, so they are found as its descendants.
    """
    proc = subprocess.Popen(
        command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = _saved_checkpoint(out)
            if found is not None:
                break
            assert proc.poll() is None, f"the run ended before a checkpoint:\n{proc.stderr.read()}"
            time.sleep(0.02)
        else:
            pytest.fail("no checkpoint within the time limit")
        assert proc.poll() is None, "the run finished before it could be killed"
        for victim in [*_descendants(proc.pid), psutil.Process(proc.pid)]:
            try:
                victim.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        proc.wait(timeout=30)
        return found
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def _run(command: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


@pytest.mark.slow
def test_dpo_two_processes_killed_and_resumed_equal_one_process(inputs, tmp_path):
    """torchrun, 2 processes x 1 pair = 1 process x 2 pairs; killed after a checkpoint, resumed."""
    one = tmp_path / "one"
    _one_process("dpo", _dpo_values(inputs, one, batch_size=2, save_steps=100))

    two = tmp_path / "two"
    values = _dpo_values(inputs, two)
    command = _torchrun("dpo", values)
    killed_at = _kill_after_checkpoint(command, two)
    assert read_manifest(two)["status"] == "running"
    assert lock_path(two).exists()  # left by the killed main process: stale, taken over below

    _run(command)
    summary = read_manifest(two)["summary"]
    assert summary["details"]["world_size"] == 2
    assert summary["details"]["global_step"] == DPO_STEPS
    assert summary["details"]["resumed_from"] is not None
    assert int(summary["details"]["resumed_from"].rsplit("-", 1)[1]) >= int(
        killed_at.rsplit("-", 1)[1]
    )
    assert not lock_path(two).exists()
    assert not (two / training.CHECKPOINTS).exists()
    # Written once, by the main process: the log has each step once.
    assert sorted(_steps(two)) == list(range(1, DPO_STEPS + 1))
    assert (two / "dropped_pairs.jsonl").read_text() == ""
    diffs = _assert_same_training(one, two)
    print(f"dpo, 1 vs 2 processes (killed at {Path(killed_at).name}, resumed): {diffs}")

    # The tolerance still tells a run on half the data apart.
    half = tmp_path / "half"
    pairs = str(inputs["half_pairs"])
    _one_process("dpo", _dpo_values(inputs, half, pairs=pairs, batch_size=2, save_steps=100))
    with pytest.raises(AssertionError) as refused:
        _assert_same_training(half, two)
    print(f"  half the data: {str(refused.value)[:200]}")


@pytest.mark.slow
def test_sft_accelerate_launch_equals_one_process(inputs, tmp_path):
    """accelerate launch with the shipped ddp.yaml, gradient checkpointing on (non-reentrant
    under DDP); the answer-token mean over both processes' tokens equals the one-process mean."""
    values = {
        "model": str(inputs["model"]),
        "data": str(inputs["data"]),
        "images": str(inputs["images"]),
        "max_steps": 2,
        "grad_accum": 1,
        "save_steps": 100,
        **COMMON,
    }
    one = tmp_path / "one"
    _one_process("sft", {**values, "out": str(one), "batch_size": 2})

    two = tmp_path / "two"
    config = ACCELERATE_CONFIGS / "ddp.yaml"
    command = [
        str(BIN / "accelerate"),
        "launch",
        "--config_file",
        str(config),
        "--num_processes",
        "2",
        "--main_process_port",
        str(_free_port()),
        "-m",
        "stic",
        "sft",
        *_cli_args({**values, "out": str(two), "batch_size": 1, "gradient_checkpointing": True}),
    ]
    _run(command)
    summary = read_manifest(two)["summary"]
    assert summary["details"]["world_size"] == 2
    assert summary["details"]["global_step"] == 2
    diffs = _assert_same_training(one, two)
    print(f"sft, 1 vs 2 processes (accelerate launch): {diffs}")

    half = tmp_path / "half"
    _one_process(
        "sft", {**values, "data": str(inputs["half_data"]), "out": str(half), "batch_size": 2}
    )
    with pytest.raises(AssertionError) as refused:
        _assert_same_training(half, two)
    print(f"  half the data: {str(refused.value)[:200]}")


def test_no_launcher_means_one_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert training.launched_processes() == 1
    assert training.process_settings() == {}
    assert training.world_size() == 1 and training.is_main_process()
    assert training.from_main("x") == "x"


def test_launched_without_gpu_trains_on_cpu_over_gloo(monkeypatch):
    """The root cause of issue 13: launched processes on a GPU-less machine were not told."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    if hasattr(torch, "xpu"):
        monkeypatch.setattr(torch.xpu, "is_available", lambda: False)
    assert training.process_settings() == {"use_cpu": True, "ddp_backend": "gloo"}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert training.process_settings() == {}  # accelerate picks NCCL itself


def _launch_env(name: str) -> dict[str, str]:
    """The environment ``accelerate launch --config_file <name>`` gives the processes it starts."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    config = str(ACCELERATE_CONFIGS / name)
    args = launch_command_parser().parse_args(["--config_file", config, "-m", "stic", "dpo"])
    args, defaults, _ = _validate_launch_command(args)
    if args.use_deepspeed:
        # What launch_command does before it calls the DeepSpeed launcher.
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        return prepare_deepspeed_cmd_env(args)[1]
    return prepare_multi_gpu_env(args)


@pytest.mark.parametrize(
    "name, reentrant",
    [
        ("ddp.yaml", False),
        ("deepspeed_zero2.yaml", False),
        ("deepspeed_zero3.yaml", True),
        ("fsdp.yaml", False),
    ],
)
def test_checkpointing_reentrancy_follows_the_launch(name, reentrant, monkeypatch):
    """PEFT + ZeRO-3 needs reentrant checkpointing, DDP (and the rest) non-reentrant: stic reads
    which from the environment accelerate launch sets from the shipped config."""
    for key in [k for k in os.environ if k.startswith(("ACCELERATE_", "FSDP_"))]:
        monkeypatch.delenv(key)
    for key, value in _launch_env(name).items():
        monkeypatch.setenv(key, value)
    assert training.checkpointing_reentrant() is reentrant
    config = SFTConfig(model="m", data="d", images="i", out="o", gradient_checkpointing=True)
    settings = training._checkpointing_arguments(config)
    assert {"use_reentrant": reentrant} in settings.values()


def test_zero3_from_a_deepspeed_json(monkeypatch, tmp_path):
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.delenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", raising=False)
    file = tmp_path / "ds.json"
    file.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(file))
    assert training.checkpointing_reentrant()
    file.write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    assert not training.checkpointing_reentrant()


def test_shipped_accelerate_configs_hold_what_lora_needs():
    """Each config parses as accelerate's own, explains itself, and sets what LoRA needs."""
    from accelerate.commands.config.config_args import load_config_from_file

    names = sorted(p.name for p in ACCELERATE_CONFIGS.iterdir() if p.name.endswith(".yaml"))
    assert names == ["ddp.yaml", "deepspeed_zero2.yaml", "deepspeed_zero3.yaml", "fsdp.yaml"]
    configs = {}
    for name in names:
        text = (ACCELERATE_CONFIGS / name).read_text()
        assert text.startswith("#") and "accelerate launch --config_file" in text, name
        raw = yaml.safe_load(text)
        # The Trainer's precision follows --dtype; anything else here would override it.
        assert raw["mixed_precision"] == "no", name
        assert raw["num_machines"] == 1, name
        configs[name] = load_config_from_file(str(ACCELERATE_CONFIGS / name))

    assert configs["ddp.yaml"].distributed_type == "MULTI_GPU"
    zero2 = configs["deepspeed_zero2.yaml"]
    assert zero2.distributed_type == "DEEPSPEED" and zero2.deepspeed_config["zero_stage"] == 2
    zero3 = configs["deepspeed_zero3.yaml"]
    assert zero3.distributed_type == "DEEPSPEED" and zero3.deepspeed_config["zero_stage"] == 3
    # Sharded LoRA weights are gathered before the adapter is written.
    assert zero3.deepspeed_config["zero3_save_16bit_model"] is True
    # The model is loaded before the Trainer exists: zero.Init could not apply.
    assert zero3.deepspeed_config["zero3_init_flag"] is False
    for ds in (zero2, zero3):
        # Left to the Trainer's "auto" (from --grad_accum), so they cannot disagree with stic.
        assert "gradient_accumulation_steps" not in ds.deepspeed_config
    fsdp = configs["fsdp.yaml"]
    assert fsdp.distributed_type == "FSDP"
    # Only a full state dict makes the Trainer write the adapter.
    assert fsdp.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    assert fsdp.fsdp_config["fsdp_cpu_ram_efficient_loading"] is False
    assert fsdp.fsdp_config["fsdp_activation_checkpointing"] is False


def test_accelerate_configs_are_package_data():
    """A wheel carries them (setuptools takes only the package data pyproject.toml names)."""
    pyproject = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    section = pyproject.split("[tool.setuptools.package-data]", 1)[1].split("\n[", 1)[0]
    assert '"configs/accelerate/*.yaml"' in section
