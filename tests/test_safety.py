"""Safe loading: safetensors only unless --allow-pickle, no remote code unless asked, no
credential in any manifest or resolved config."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForImageTextToText

from stic.config import EvalConfig
from stic.modeling.models import ModelLoadError, load_adapter, load_model
from stic.pipeline import load_run_config, resolved_config
from stic.runtime.manifests import manifest_path, redact, write_manifest

SECRET = "hf_abcdefghijklmnopqrstuvwxyz0123"


def test_redact_replaces_environment_credentials_everywhere():
    env = {
        "HF_TOKEN": SECRET,
        "WANDB_API_KEY": "wandb-key-0123456789",
        "HOME": "/root",
        "SHORT_KEY": "abc",
    }
    data = {
        "model": f"https://user:{SECRET}@example.com/m",
        "nested": [{"x": "wandb-key-0123456789"}],
        "n": 3,
    }
    out = redact(data, env)
    text = json.dumps(out)
    assert SECRET not in text and "wandb-key-0123456789" not in text
    assert out["model"] == "https://user:<redacted:HF_TOKEN>@example.com/m"
    assert out["nested"][0]["x"] == "<redacted:WANDB_API_KEY>"
    assert out["n"] == 3
    # Non-secret variables and short values are left alone.
    assert redact({"p": "/root/x", "q": "abc"}, env) == {"p": "/root/x", "q": "abc"}


def test_manifest_and_resolved_config_never_hold_a_token(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    leaky = f"/models/{SECRET}/llava"
    out = tmp_path / "eval.json"
    config = EvalConfig(
        model=leaky, data=str(tmp_path / "d.jsonl"), images=str(tmp_path), out=str(out)
    )
    write_manifest(out, "eval", config, "complete", {"note": leaky})
    assert SECRET not in manifest_path(out).read_text()
    assert "<redacted:HF_TOKEN>" in manifest_path(out).read_text()

    run = {"model": leaky, "output_dir": str(tmp_path / "run"), "pairs": {"images": str(tmp_path)}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run))
    stages = load_run_config(tmp_path / "run.yaml", check_inputs=False)  # no such model folder
    assert SECRET not in resolved_config(stages)


def _pickled_copy(model_dir: Path, dest: Path) -> Path:
    """The tiny model saved with pickled weights (pytorch_model.bin) instead of safetensors."""
    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    shutil.copytree(model_dir, dest)
    (dest / "model.safetensors").unlink()
    torch.save(model.state_dict(), dest / "pytorch_model.bin")
    assert (dest / "pytorch_model.bin").exists() and not (dest / "model.safetensors").exists()
    return dest


def test_pickled_weights_are_refused_unless_allowed(tiny_model_factory, tmp_path):
    pickled = _pickled_copy(tiny_model_factory("llava"), tmp_path / "pickled")
    with pytest.raises(ModelLoadError, match="--allow-pickle"):
        load_model(str(pickled), device="cpu")
    model, _ = load_model(str(pickled), device="cpu", allow_pickle=True)
    assert sum(p.numel() for p in model.parameters()) > 0


def test_pickled_adapter_is_refused_unless_allowed(tiny_model_factory, tmp_path):
    from peft import LoraConfig, get_peft_model

    base = AutoModelForImageTextToText.from_pretrained(tiny_model_factory("llava"))
    peft_model = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"]))
    peft_model.save_pretrained(tmp_path / "adapter", safe_serialization=False)
    assert not (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    fresh = AutoModelForImageTextToText.from_pretrained(tiny_model_factory("llava"))
    with pytest.raises(ModelLoadError, match="adapter_model.safetensors"):
        load_adapter(fresh, str(tmp_path / "adapter"))
    assert load_adapter(fresh, str(tmp_path / "adapter"), allow_pickle=True) is not None


def test_remote_code_never_runs_without_the_flag(tiny_model_factory, tmp_path):
    """A model folder whose config asks for its own code: refused, and the code is not executed."""
    folder = tmp_path / "custom"
    shutil.copytree(tiny_model_factory("llava"), folder)
    marker = tmp_path / "code_ran"
    (folder / "modeling_custom.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForImageTextToText": "modeling_custom.CustomModel"}
    config["model_type"] = "stic_custom_test"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises((ModelLoadError, ValueError, OSError)):
        load_model(str(folder), device="cpu")
    assert not marker.exists()


def test_allow_pickle_and_trust_remote_code_reach_every_stage_of_a_run_config():
    from stic.pipeline import plan

    stages = plan(
        {
            "model": "m",
            "output_dir": "runs/x",
            "allow_pickle": True,
            "pairs": {"images": "imgs"},
            "dpo": {},
            "eval": [{"data": "v.jsonl", "images": "imgs"}],
        }
    )
    assert [s.config.allow_pickle for s in stages] == [True, True, True]
    assert all(s.config.trust_remote_code is False for s in stages)
