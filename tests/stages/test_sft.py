"""Stage 2b (stic.stages.sft): it continues the stage-1 adapter (or, with none, trains a new LoRA adapter
on the base model: the stage-2-only control) and trains on answer tokens only."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoProcessor

from stic.cli import _parse_stage
from stic.config import ConfigError, DPOConfig, PairsConfig, SFTConfig, build
from stic.data.schemas import InstructSample
from stic.modeling.chat import IGNORE_INDEX
from stic.modeling.models import load_model
from stic.runtime.files import atomic_write_json
from stic.runtime.manifests import read_manifest
from stic.stages.dpo import run_dpo
from stic.stages.pairs import run_pairs
from stic.stages.sft import InstructCollator, run_sft
from stic.testing import make_images

END_OF_TURN = {"llava": "</s>", "llava_next": "</s>", "qwen2_vl": "<|im_end|>"}


def _digest(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.is_file()
    }


def _sample(sample_id: str, image: str | None) -> dict:
    first = "<image>\nWhat is in the image?" if image else "What is two plus two?"
    data = {
        "id": sample_id,
        "conversations": [
            {"from": "human", "value": first},
            {"from": "gpt", "value": "A red circle."},
            {"from": "human", "value": "Is it large?"},
            {"from": "gpt", "value": "No, it is small."},
        ],
    }
    if image:
        data["image"] = image
    return data


@pytest.fixture(scope="module")
def stages(tiny_model_factory, tmp_path_factory):
    """pairs -> dpo -> sft on the tiny LLaVA: (model dir, dpo out, sft out, digest before, after)."""
    model = tiny_model_factory("llava")
    before = _digest(model)
    root = tmp_path_factory.mktemp("sft")
    images = root / "images"
    paths = make_images(images, 3, seed=31)
    run_pairs(
        PairsConfig(
            model=str(model),
            images=str(images),
            out=str(root / "pairs.jsonl"),
            max_new_tokens=8,
            batch_size=4,
        )
    )
    common = dict(
        model=str(model),
        images=str(images),
        max_steps=2,
        batch_size=2,
        grad_accum=1,
        lr=1e-2,
        logging_steps=1,
        save_steps=100,
    )
    run_dpo(
        DPOConfig(
            pairs=str(root / "pairs.jsonl"),
            out=str(root / "dpo"),
            lora_r=4,
            lora_alpha=8,
            filter_truncated=False,  # the random tiny model never stops early
            **common,
        )
    )
    data = [_sample(f"s{i}", p.name) for i, p in enumerate(paths)] + [_sample("text", None)]
    atomic_write_json(root / "instruct.json", data)
    summary = run_sft(
        SFTConfig(
            data=str(root / "instruct.json"),
            adapter=str(root / "dpo"),
            out=str(root / "sft"),
            **common,
        )
    )
    return model, root / "dpo", root / "sft", summary, before, _digest(model)


def test_sft_continues_the_stage1_adapter(stages):
    _, dpo, sft, summary, _, _ = stages
    assert summary.details["global_step"] == 2 and summary.details["samples"] == 4
    dpo_weights = load_file(str(dpo / "adapter_model.safetensors"))
    sft_weights = load_file(str(sft / "adapter_model.safetensors"))
    assert set(sft_weights) == set(dpo_weights)
    assert {k: v.shape for k, v in sft_weights.items()} == {
        k: v.shape for k, v in dpo_weights.items()
    }
    changed = [k for k in dpo_weights if not torch.equal(dpo_weights[k], sft_weights[k])]
    assert changed, "SFT did not change the adapter"
    # Continued, not re-initialised: Adam moves each weight by at most about lr per step
    # (2 steps at lr 1e-2 here), while a fresh adapter would redraw every lora_A at random
    # and start every lora_B at zero.
    for key, value in dpo_weights.items():
        assert (sft_weights[key] - value).abs().max() < 3 * 2 * 1e-2, key
    assert any("lora_B" in k for k in changed)
    dpo_config = json.loads((dpo / "adapter_config.json").read_text())
    sft_config = json.loads((sft / "adapter_config.json").read_text())
    for key in ("r", "lora_alpha", "lora_dropout", "base_model_name_or_path"):
        assert sft_config[key] == dpo_config[key], key
    assert sorted(sft_config["target_modules"]) == sorted(dpo_config["target_modules"])


def test_sft_leaves_base_weights_and_stage1_adapter_alone(stages):
    _, dpo, sft, _, before, after = stages
    assert before == after
    assert all("lora_" in k for k in load_file(str(sft / "adapter_model.safetensors")))
    # The stage-1 folder is an input: SFT must not write into it.
    assert read_manifest(dpo)["stage"] == "dpo"
    assert read_manifest(sft)["stage"] == "sft"
    assert read_manifest(sft)["status"] == "complete"
    log = json.loads((sft / "train_log.json").read_text())
    assert [e["step"] for e in log if "loss" in e] == [1, 2]


def test_sft_adapter_loads_on_the_base_model(stages):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    model_dir, _, sft, _, _, _ = stages
    model = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(model_dir), sft)
    assert any(p.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)


def _answer_spans(batch, row, tokenizer) -> list[str]:
    spans, current = [], []
    for token, label in zip(
        batch["input_ids"][row].tolist(), batch["labels"][row].tolist(), strict=True
    ):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            spans.append(tokenizer.decode(current).strip())
            current = []
    if current:
        spans.append(tokenizer.decode(current).strip())
    return spans


@pytest.mark.parametrize("family", ["llava", "llava_next", "qwen2_vl"])
def test_collator_labels_only_the_answers(tiny_model_factory, tmp_path, family):
    model_dir = tiny_model_factory(family)
    processor = AutoProcessor.from_pretrained(model_dir)
    make_images(tmp_path, 1, seed=2)
    samples = [
        InstructSample.from_dict(_sample("img", "img_0000.png")),
        InstructSample.from_dict(_sample("txt", None)),
    ]
    batch = InstructCollator(processor, str(tmp_path), max_length=4096)(samples)
    eot = END_OF_TURN[family]
    for row in range(2):
        assert _answer_spans(batch, row, processor.tokenizer) == [
            f"A red circle.{eot}",
            f"No, it is small.{eot}",
        ]
    # The image's tokens and every prompt token are masked.
    image_token_id = processor.tokenizer.convert_tokens_to_ids(
        "<|image_pad|>" if family == "qwen2_vl" else "<image>"
    )
    ids, labels = batch["input_ids"], batch["labels"]
    assert (ids[0] == image_token_id).sum() > 0
    assert (labels[ids == image_token_id] == IGNORE_INDEX).all()
    assert (labels[batch["attention_mask"] == 0] == IGNORE_INDEX).all()
    assert "pixel_values" in batch


# ----------------------------------------------------------------------------- no adapter

LORA_R = 4


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
    assert summary.details["global_step"] == 2 and summary.details["samples"] == 4
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
