"""stic export: a merged checkpoint that transformers loads like the hub model (same logits as the
adapter on the base, weight names in the hub layout), the unmerged adapter + processor, and an
output guarded like a stage's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from stic.modeling.models import add_lora
from stic.tools.export import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def adapter(tiny_model_factory, tmp_path_factory) -> tuple[Path, Path]:
    """(base, adapter): a LoRA adapter on the tiny LLaVA with non-zero weights, as training
    leaves it (a fresh adapter's B matrices are zero: merging it would change nothing)."""
    from transformers import AutoModelForImageTextToText

    base = tiny_model_factory("llava")
    model = AutoModelForImageTextToText.from_pretrained(base, dtype=torch.float32)
    peft_model = add_lora(model, r=4, alpha=8, dropout=0.0, layer_names=["q_proj", "v_proj"])
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    folder = tmp_path_factory.mktemp("export") / "adapter"
    peft_model.save_pretrained(folder)
    return base, folder


def _inputs(folder: Path):
    from PIL import Image
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(folder)
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    image = Image.new("RGB", (20, 14), (200, 30, 90))
    return processor(text=[text], images=[image], return_tensors="pt")


def _logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def test_merged_export_loads_like_the_hub_model(adapter, tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    base, folder = adapter
    out = tmp_path / "merged"
    assert main(["--adapter", str(folder), "--model", str(base), "--merge", "--out", str(out)]) == 0
    for name in ("model.safetensors", "config.json", "generation_config.json"):
        assert (out / name).is_file(), name
    assert (out / "chat_template.jinja").is_file() or "chat_template" in json.loads(
        (out / "processor_config.json").read_text()
    )

    reference = PeftModel.from_pretrained(
        AutoModelForImageTextToText.from_pretrained(base, dtype=torch.float32), folder
    ).merge_and_unload()
    exported, info = AutoModelForImageTextToText.from_pretrained(
        out, dtype=torch.float32, output_loading_info=True
    )
    assert not any(info.values()), info  # no missing, unexpected or mismatched weights
    inputs = _inputs(out)
    torch.testing.assert_close(
        _logits(exported, inputs), _logits(reference, inputs), atol=1e-5, rtol=0
    )
    plain = AutoModelForImageTextToText.from_pretrained(base, dtype=torch.float32)
    assert not torch.allclose(_logits(plain, inputs), _logits(exported, inputs), atol=1e-4)

    # The hub layout of llava-hf checkpoints, as transformers' conversion mapping reads it:
    # "llava" renames ^language_model / ^vision_tower / ^multi_modal_projector, and the CLIP
    # tower's mapping (CLIPVisionModel) drops a "vision_model." prefix on load.
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    tops = {key.split(".")[0] for key in keys}
    assert tops == {"language_model", "vision_tower", "multi_modal_projector"}
    assert all(k.startswith("vision_tower.vision_model.") for k in keys if k.startswith("vision"))
    assert "language_model.lm_head.weight" in keys
    language = [k for k in keys if k.startswith("language_model.") and "lm_head" not in k]
    assert all(k.startswith("language_model.model.") for k in language)
    assert not any("lora" in k for k in keys)


def test_unmerged_export_is_a_peft_adapter_with_the_processor(adapter, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    base, folder = adapter
    out = tmp_path / "adapter_export"
    assert main(["--adapter", str(folder), "--out", str(out)]) == 0  # base from adapter_config
    assert (out / "adapter_model.safetensors").read_bytes() == (
        folder / "adapter_model.safetensors"
    ).read_bytes()
    assert (out / "tokenizer.json").is_file()
    loaded = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(base), out)
    original = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(base), folder)
    inputs = _inputs(out)
    torch.testing.assert_close(_logits(loaded, inputs), _logits(original, inputs))


def test_output_guarded_like_a_stage(adapter, tmp_path, capsys):
    base, folder = adapter
    # The output is, or lies inside, an input: refused, nothing written.
    for out in (folder, folder / "export", base / "export"):
        argv = ["--adapter", str(folder), "--model", str(base), "--out", str(out)]
        assert main(argv) == 1
        assert "choose an output path outside your inputs" in capsys.readouterr().err
    assert not (folder / "export").exists() and not (base / "export").exists()
    # A folder stic did not write: refused and left alone.
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    assert main(["--adapter", str(folder), "--out", str(theirs)]) == 1
    assert "exists without a stic manifest" in capsys.readouterr().err
    assert [p.name for p in theirs.iterdir()] == ["notes.txt"]
    # An export of other settings is replaced only with --overwrite.
    out = tmp_path / "export"
    assert main(["--adapter", str(folder), "--out", str(out)]) == 0
    assert main(["--adapter", str(folder), "--out", str(out)]) == 0
    assert "up to date" in capsys.readouterr().out
    assert main(["--adapter", str(folder), "--out", str(out), "--dtype", "float16"]) == 1
    assert "--overwrite" in capsys.readouterr().err
    argv = ["--adapter", str(folder), "--out", str(out), "--dtype", "float16", "--overwrite"]
    assert main(argv) == 0
    assert not list(tmp_path.glob(".export.*"))  # no staging folder left
