"""Stage 2b with no stage-1 adapter: a new LoRA adapter on the base model (stage-2-only control).

Continuing a given stage-1 adapter is covered by tests/test_sft.py.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from stic.cli import _parse_stage
from stic.config import ConfigError, SFTConfig, build
from stic.files import atomic_write_json
from stic.manifest import read_manifest
from stic.models import load_model
from stic.sft import run_sft
from stic.testing import make_images

LORA_R = 4


def _digest(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.is_file()
    }


def _sample(sample_id: str, image: str | None) -> dict:
    data = {
        "id": sample_id,
        "conversations": [
            {"from": "human", "value": ("<image>\n" if image else "") + "What is in the image?"},
            {"from": "gpt", "value": "A red circle on a blue square."},
        ],
    }
    if image:
        data["image"] = image
    return data


@pytest.fixture(scope="module")
def fresh(tiny_model_factory, tmp_path_factory):
    """sft with no adapter on the tiny LLaVA: (model dir, sft out, summary, digest before, after)."""
    model = tiny_model_factory("llava")
    before = _digest(model)
    root = tmp_path_factory.mktemp("sft_fresh")
    paths = make_images(root / "images", 3, seed=7)
    data = [_sample(f"s{i}", p.name) for i, p in enumerate(paths)] + [_sample("text", None)]
    atomic_write_json(root / "instruct.json", data)
    summary = run_sft(
        SFTConfig(
            model=str(model),
            data=str(root / "instruct.json"),
            images=str(root / "images"),
            out=str(root / "sft"),
            max_steps=2,
            batch_size=2,
            grad_accum=1,
            lr=1e-2,
            logging_steps=1,
            save_steps=100,
            lora_r=LORA_R,
            lora_alpha=8,
        )
    )
    return model, root / "sft", summary, before, _digest(model)


def test_fresh_adapter_is_a_trained_peft_adapter_with_the_configured_rank(fresh):
    _, out, summary, _, _ = fresh
    assert summary["global_step"] == 2 and summary["samples"] == 4
    assert (out / "adapter_config.json").is_file()
    assert (out / "adapter_model.safetensors").is_file()
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert adapter_config["r"] == LORA_R
    assert adapter_config["lora_alpha"] == 8
    # Only the language model gets LoRA, as in stage 1b (the vision tower has q_proj too).
    assert adapter_config["target_modules"]
    assert all("language_model" in name for name in adapter_config["target_modules"])
    weights = load_file(str(out / "adapter_model.safetensors"))
    assert weights and all("lora_" in k for k in weights)
    lora_b = {k: v for k, v in weights.items() if "lora_B" in k}
    # A new adapter starts every lora_B at zero: non-zero means it trained.
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b.values())
    assert all(v.shape[1] == LORA_R for v in lora_b.values())
    assert read_manifest(out)["stage"] == "sft"
    assert read_manifest(out)["status"] == "complete"


def test_fresh_adapter_leaves_the_base_model_alone_and_changes_its_outputs(fresh):
    model_dir, out, _, before, after = fresh
    assert before == after
    base, processor = load_model(str(model_dir), dtype="float32", device="cpu")
    tuned, _ = load_model(str(model_dir), dtype="float32", device="cpu", adapter=str(out))
    ids = processor.tokenizer("What is in the image?", return_tensors="pt").input_ids
    with torch.no_grad():
        base_logits = base.eval()(input_ids=ids).logits
        tuned_logits = tuned.eval()(input_ids=ids).logits
    assert not torch.allclose(base_logits, tuned_logits)


def test_config_accepts_no_adapter_and_names_a_bad_lora_value(tmp_path):
    required = {"model": "m", "data": "d.json", "images": "i", "out": "o"}
    config = build(SFTConfig, required, "sft.")
    assert config.adapter is None
    assert (config.lora_r, config.lora_alpha, config.lora_dropout) == (128, 256, 0.05)
    with pytest.raises(ConfigError) as info:
        build(SFTConfig, {**required, "lora_r": 0, "lora_dropout": 2}, "sft.")
    lines = str(info.value).splitlines()
    assert any(line.startswith("sft.lora_r: 0 is not allowed") for line in lines)
    assert any(line.startswith("sft.lora_dropout: 2 is not allowed") for line in lines)
    with pytest.raises(ConfigError, match=r"sft\.lora_targets: ' , ' is not allowed"):
        build(SFTConfig, {**required, "lora_targets": " , "}, "sft.")
    # The command line: --adapter may be left out; a bad --lora-r is named.
    argv = ["--model", "m", "--data", "d.json", "--images", "i", "--out", "o"]
    assert _parse_stage("sft", argv).adapter is None
    with pytest.raises(ConfigError, match=r"lora_r: 0 is not allowed"):
        _parse_stage("sft", [*argv, "--lora-r", "0"])
