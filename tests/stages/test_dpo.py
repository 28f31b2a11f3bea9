"""Stage 1b (stic.stages.dpo): the adapter it saves, what it logs, its reference model, and resume."""

from __future__ import annotations

import hashlib
import json
import math
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import stic.stages.dpo
from stic.cli import main
from stic.config import DPOConfig, PairsConfig
from stic.runtime.manifests import read_manifest
from stic.stages.dpo import run_dpo
from stic.stages.pairs import run_pairs
from stic.testing import make_images, slowed_training_cli

LORA_LAYERS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
ALPHA = 0.01


def _digest(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.is_file()
    }


@pytest.fixture(scope="module")
def llava(tiny_model_factory) -> Path:
    return tiny_model_factory("llava")


@pytest.fixture(scope="module")
def pairs_data(llava, tmp_path_factory) -> tuple[Path, Path]:
    """Four real pair records from the tiny model: (pairs.jsonl, images folder)."""
    root = tmp_path_factory.mktemp("dpo_inputs")
    images = root / "images"
    make_images(images, 4, seed=21)
    out = root / "pairs.jsonl"
    run_pairs(
        PairsConfig(
            model=str(llava), images=str(images), out=str(out), max_new_tokens=10, batch_size=4
        )
    )
    return out, images


def _dpo_config(llava, pairs_data, out, **overrides) -> DPOConfig:
    pairs, images = pairs_data
    values = dict(
        model=str(llava),
        pairs=str(pairs),
        images=str(images),
        out=str(out),
        max_steps=3,
        batch_size=2,
        grad_accum=1,
        lr=1e-2,
        lora_r=4,
        lora_alpha=8,
        alpha=ALPHA,
        logging_steps=1,
        save_steps=100,
        # The random tiny model never stops before max_new_tokens: keep its truncated pairs.
        filter_truncated=False,
    )
    values.update(overrides)
    return DPOConfig(**values)


@pytest.fixture(scope="module")
def trained(llava, pairs_data, tmp_path_factory):
    """One DPO run: (config, summary, model-folder digest before, digest after)."""
    before = _digest(llava)
    config = _dpo_config(llava, pairs_data, tmp_path_factory.mktemp("dpo") / "stage1")
    summary = run_dpo(config)
    return config, summary, before, _digest(llava)


def _load_adapter(model_dir, adapter):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    base = AutoModelForImageTextToText.from_pretrained(model_dir)
    return PeftModel.from_pretrained(base, adapter)


@pytest.mark.slow
def test_output_is_a_loadable_peft_adapter_with_trained_lora(trained, llava):
    config, summary, _, _ = trained
    assert summary.details["global_step"] == 3 and summary.details["pairs"] == 4
    model = _load_adapter(llava, config.out)
    lora_b = {n: p for n, p in model.named_parameters() if "lora_B" in n}
    lora_a = {n: p for n, p in model.named_parameters() if "lora_A" in n}
    assert lora_b and len(lora_a) == len(lora_b)
    # LoRA B starts at zero: after training every B matrix has moved.
    assert all(p.abs().sum() > 0 for p in lora_b.values())
    # The checkpoints are removed once the adapter is saved.
    assert not (Path(config.out) / "checkpoints").exists()


@pytest.mark.slow
def test_base_weights_are_untouched(trained, llava):
    from transformers import AutoModelForImageTextToText

    config, _, before, after = trained
    assert before == after, "training wrote into the base model folder"
    saved = load_file(str(Path(config.out) / "adapter_model.safetensors"))
    assert saved and all("lora_" in key for key in saved), "the adapter holds non-LoRA weights"
    original = AutoModelForImageTextToText.from_pretrained(llava).state_dict()
    model = _load_adapter(llava, config.out)
    base = {
        k.replace(".base_layer", ""): v
        for k, v in model.get_base_model().state_dict().items()
        if "lora_" not in k
    }
    assert set(base) == set(original)
    for key, value in original.items():
        assert torch.equal(base[key], value), key


@pytest.mark.slow
def test_lora_only_in_the_language_model(trained, llava):
    config, _, _, _ = trained
    model = _load_adapter(llava, config.out)
    lora_modules = {n.rsplit(".lora_", 1)[0] for n, _ in model.named_parameters() if ".lora_" in n}
    assert lora_modules
    for name in lora_modules:
        assert ".language_model." in name, name
        assert "vision_tower" not in name and "multi_modal_projector" not in name, name
    # Every language-model linear layer of the listed kinds has LoRA; the vision q/k/v do not.
    assert {n.rsplit(".", 1)[-1] for n in lora_modules} == LORA_LAYERS
    adapter_config = json.loads((Path(config.out) / "adapter_config.json").read_text())
    targets = adapter_config["target_modules"]
    targets = targets if isinstance(targets, list) else [targets]
    assert all("language_model" in t and t.rsplit(".", 1)[-1] in LORA_LAYERS for t in targets)
    assert adapter_config["r"] == 4 and adapter_config["lora_alpha"] == 8


@pytest.mark.slow
def test_train_log_has_dpo_metrics(trained):
    config, _, _, _ = trained
    log = json.loads((Path(config.out) / "train_log.json").read_text())
    steps = [entry for entry in log if "loss" in entry]
    assert [e["step"] for e in steps] == [1, 2, 3]
    for entry in steps:
        for key in (
            "rewards/chosen",
            "rewards/rejected",
            "rewards/margin",
            "rewards/accuracy",
            "loss",
            "loss/dpo",
            "loss/nll",
            "logps/chosen",
        ):
            assert key in entry and math.isfinite(entry[key]), key
        assert entry["rewards/margin"] == pytest.approx(
            entry["rewards/chosen"] - entry["rewards/rejected"], abs=1e-5
        )
        assert 0.0 <= entry["rewards/accuracy"] <= 1.0
    # The policy moves away from the reference after the first update.
    assert steps[-1]["rewards/chosen"] != 0.0


@pytest.mark.slow
def test_reference_is_the_policy_with_adapters_disabled(trained):
    """At step 1 LoRA B is zero, so policy == reference: rewards 0, DPO loss log 2."""
    config, _, _, _ = trained
    log = json.loads((Path(config.out) / "train_log.json").read_text())
    first = next(entry for entry in log if entry.get("step") == 1 and "loss" in entry)
    assert first["rewards/chosen"] == pytest.approx(0.0, abs=1e-5)
    assert first["rewards/rejected"] == pytest.approx(0.0, abs=1e-5)
    assert first["loss/dpo"] == pytest.approx(math.log(2), abs=1e-5)
    # Sum normalization: the NLL term is minus the summed log-prob of the chosen answer.
    assert first["loss/nll"] == pytest.approx(-first["logps/chosen"], rel=1e-5)
    assert first["loss/nll"] > 1.0
    assert first["loss"] == pytest.approx(math.log(2) + ALPHA * first["loss/nll"], rel=1e-5)


@pytest.mark.slow
def test_mean_normalization_uses_the_per_token_mean(trained, tmp_path):
    config, _, _, _ = trained
    mean_config = replace(config, out=str(tmp_path / "mean"), nll_normalization="mean", max_steps=1)
    run_dpo(mean_config)
    log = json.loads((tmp_path / "mean" / "train_log.json").read_text())
    first = next(entry for entry in log if entry.get("step") == 1 and "loss" in entry)
    # The per-token mean is smaller than the sum over the (several-token) chosen answers.
    assert 0 < first["loss/nll"] < -first["logps/chosen"] / 2
    assert first["loss"] == pytest.approx(math.log(2) + ALPHA * first["loss/nll"], rel=1e-5)


@pytest.mark.slow
def test_gradient_accumulation_averages_the_loss_over_micro_batches(trained, tmp_path):
    """With accumulation 2 the logged (and back-propagated) loss is the mean over the two
    micro-batches, not their sum: older transformers 5.x skipped the division unless the
    trainer says the model takes no loss kwargs (seen on a GPU run as a 4x loss)."""
    config, _, _, _ = trained
    accum = replace(config, out=str(tmp_path / "accum"), batch_size=1, grad_accum=2, max_steps=1)
    run_dpo(accum)
    log = json.loads((tmp_path / "accum" / "train_log.json").read_text())
    first = next(entry for entry in log if entry.get("step") == 1 and "loss" in entry)
    assert first["loss/dpo"] == pytest.approx(math.log(2), abs=1e-5)
    assert first["loss"] == pytest.approx(math.log(2) + ALPHA * first["loss/nll"], rel=1e-4)


@pytest.mark.slow
def test_rerun_of_a_complete_stage_is_skipped(trained):
    config, _, _, _ = trained
    out = Path(config.out)
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert run_dpo(config).up_to_date
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes


# A child process that runs `stic dpo` with each batch slowed down, so the test can kill it
# between checkpoints.
_SLOW_DPO = slowed_training_cli(0.4)


@pytest.mark.slow
def test_killed_run_resumes_from_its_last_checkpoint(llava, pairs_data, tmp_path, monkeypatch):
    pairs, images = pairs_data
    out = tmp_path / "stage1"
    args = [
        "dpo",
        "--model", str(llava),
        "--pairs", str(pairs),
        "--images", str(images),
        "--out", str(out),
        "--max_steps", "5",
        "--save_steps", "1",
        "--logging_steps", "1",
        "--batch_size", "2",
        "--grad_accum", "1",
        "--lr", "0.01",
        "--lora_r", "4",
        "--lora_alpha", "8",
        "--filter_truncated", "false",
    ]  # fmt: skip
    log_path = tmp_path / "child.log"
    with open(log_path, "w") as log_file:
        child = subprocess.Popen(
            [sys.executable, "-c", _SLOW_DPO, *args], stdout=log_file, stderr=subprocess.STDOUT
        )
    marker = out / "checkpoints" / "checkpoint-2" / "trainer_state.json"
    deadline = time.monotonic() + 120
    try:
        while not marker.exists():
            assert child.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint-2 within 120 s"
            time.sleep(0.02)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir())
    context = f"checkpoints {checkpoints}; child output:\n{log_path.read_text()[-3000:]}"
    assert child.returncode == -signal.SIGKILL, context
    assert read_manifest(out)["status"] == "running", context
    # The newest checkpoint the kill left complete (usually 2; later if this machine is busy).
    newest = max(
        int(p.name.split("-")[1])
        for p in (out / "checkpoints").iterdir()
        if (p / "trainer_state.json").exists()
    )
    assert 2 <= newest < 5, context

    # Rerun in this process, counting the training steps it really runs.
    calls = []
    original = stic.stages.dpo.DPOTrainer.compute_loss

    def counting(self, *a, **kw):
        calls.append(self.state.global_step)
        return original(self, *a, **kw)

    monkeypatch.setattr(stic.stages.dpo.DPOTrainer, "compute_loss", counting)
    assert main(args) == 0, context
    manifest = read_manifest(out)
    assert manifest["status"] == "complete"
    summary = manifest["summary"]
    assert summary["details"]["resumed_from"] is not None
    assert summary["details"]["resumed_from"].endswith(f"checkpoint-{newest}")
    assert summary["details"]["global_step"] == 5
    # It continued from the checkpoint: the remaining steps only, not all five.
    assert calls == list(range(newest, 5)), (calls, context)
    log = json.loads((out / "train_log.json").read_text())
    steps = [e["step"] for e in log if "loss" in e]
    assert steps == [1, 2, 3, 4, 5]
    assert (out / "adapter_model.safetensors").exists()


def test_last_checkpoint_ignores_a_checkpoint_torn_by_a_kill(tmp_path):
    """A kill while the Trainer writes checkpoint-N leaves it without trainer_state.json
    (written last); resuming from it would restart the schedule or crash."""
    from stic.stages.training import last_checkpoint

    good = tmp_path / "checkpoints" / "checkpoint-2"
    good.mkdir(parents=True)
    (good / "adapter_model.safetensors").write_bytes(b"x")
    (good / "trainer_state.json").write_text("{}")
    torn = tmp_path / "checkpoints" / "checkpoint-3"
    torn.mkdir()
    (torn / "adapter_model.safetensors").write_bytes(b"x")
    assert last_checkpoint(tmp_path) == str(good)


@pytest.mark.slow
def test_continuing_an_adapter_trains_it_against_its_start_as_reference(
    llava, pairs_data, tmp_path
):
    """--adapter: the adapter is trained further (round r of `stic run`'s rounds). With
    reference start, policy == reference at step 1 (rewards 0, DPO loss log 2) although the
    policy is not the base; with reference base, the same policy is scored against the base."""
    # No LoRA dropout: with B != 0 it would make the training-mode policy differ from the
    # (eval-mode) reference at step 1.
    first = _dpo_config(llava, pairs_data, tmp_path / "round_1", lora_dropout=0.0)
    run_dpo(first)
    start_weights = load_file(str(tmp_path / "round_1" / "adapter_model.safetensors"))
    start_digest = _digest(tmp_path / "round_1")

    logs, summaries = {}, {}
    for reference in ("start", "base"):
        out = tmp_path / f"round_2_{reference}"
        config = _dpo_config(
            llava, pairs_data, out, adapter=first.out, reference=reference, max_steps=2
        )
        summaries[reference] = run_dpo(config)
        logs[reference] = next(
            e
            for e in json.loads((out / "train_log.json").read_text())
            if e.get("step") == 1 and "loss" in e
        )
    assert _digest(tmp_path / "round_1") == start_digest, "the starting adapter was written to"
    details = summaries["start"].details
    assert details["reference_model"] == "start adapter" and details["reference"] == "precomputed"
    assert details["started_from"] == first.out
    assert summaries["base"].details["reference_model"] == "base"

    # Trained further: same LoRA tensors, other values.
    after = load_file(str(tmp_path / "round_2_start" / "adapter_model.safetensors"))
    assert after.keys() == start_weights.keys()
    assert any(not torch.equal(after[k], start_weights[k]) for k in after)

    step1 = logs["start"]
    assert step1["rewards/chosen"] == pytest.approx(0.0, abs=1e-5)
    assert step1["rewards/rejected"] == pytest.approx(0.0, abs=1e-5)
    assert step1["loss/dpo"] == pytest.approx(math.log(2), abs=1e-5)
    assert step1["loss"] == pytest.approx(math.log(2) + ALPHA * step1["loss/nll"], rel=1e-5)
    # The same policy at step 1 (the starting adapter), scored against the base: not zero.
    assert logs["base"]["logps/chosen"] == pytest.approx(step1["logps/chosen"], rel=1e-5)
    assert abs(logs["base"]["rewards/chosen"]) > 1e-3
