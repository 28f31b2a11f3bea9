"""stic.modeling.models: an adapter that does not fit its base is one clear line, not torch's list."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from stic.cli import main
from stic.modeling.models import ModelLoadError, add_lora, load_model
from stic.runtime.manifests import read_manifest


@pytest.fixture(scope="module")
def foreign_adapter(tiny_model_factory, tmp_path_factory) -> tuple[Path, Path, Path]:
    """(base, other base with a wider language model, adapter trained on base)."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    base = tiny_model_factory("llava")
    root = tmp_path_factory.mktemp("foreign")
    model, _ = load_model(str(base), device="cpu")
    add_lora(model, r=4, alpha=8, dropout=0.0, layer_names=["q_proj", "v_proj"]).save_pretrained(
        root / "adapter"
    )
    config = AutoConfig.from_pretrained(base)
    text = config.text_config
    text.hidden_size *= 2
    text.intermediate_size *= 2
    if getattr(text, "head_dim", None):
        text.head_dim *= 2
    other = root / "wide_base"
    shutil.copytree(base, other)
    AutoModelForImageTextToText.from_config(config).save_pretrained(other)
    return base, other, root / "adapter"


@pytest.mark.slow
def test_an_adapter_of_another_base_is_one_line_naming_adapter_base_and_weight(foreign_adapter):
    base, other, adapter = foreign_adapter
    with pytest.raises(ModelLoadError) as info:
        load_model(str(other), device="cpu", adapter=str(adapter))
    message = str(info.value)
    assert "\n" not in message
    assert f"adapter {str(adapter)!r}" in message and f"base model {str(other)!r}" in message
    assert f"trained on {str(base)!r}" in message
    assert (
        "q_proj.lora_A" in message and "[4, 64] in the adapter and [4, 128] in the model" in message
    )
    assert "size mismatch" not in message
    load_model(str(base), device="cpu", adapter=str(adapter))  # its own base still loads


@pytest.mark.slow
def test_stic_eval_with_an_adapter_of_another_base_exits_1_with_one_line(
    foreign_adapter, image_dir, tmp_path, capsys
):
    _, other, adapter = foreign_adapter
    data = tmp_path / "vqa.jsonl"
    data.write_text(
        json.dumps({"id": "q", "image": "img_0000.png", "question": "Q?", "answer": "a"}) + "\n"
    )
    out = tmp_path / "results.json"
    argv = ["eval", "--model", str(other), "--adapter", str(adapter), "--data", str(data)]
    code = main([*argv, "--images", str(image_dir), "--out", str(out), "--max-new-tokens", "2"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("stic eval")]
    assert code == 1
    assert len(lines) == 1 and "does not fit the base model" in lines[0]
    assert "Traceback" not in err and "size mismatch" not in err
    # A failed run leaves no manifest that claims a run is under way.
    manifest = read_manifest(out)
    assert manifest is None or manifest["status"] != "running"


# --- families that cannot work fail at load time, saying why ----------------------------------


def test_a_processor_needing_a_missing_package_is_one_line_with_the_install_command(
    tiny_model_factory, monkeypatch
):
    import transformers

    def needs_package(*args, **kwargs):
        raise ImportError(
            "Package `num2words` is required to run SmolVLM processor. Install it with "
            "`pip install num2words`."
        )

    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", needs_package)
    with pytest.raises(ModelLoadError) as caught:
        load_model(str(tiny_model_factory("llava")), device="cpu")
    message = str(caught.value)
    assert "\n" not in message
    assert message.endswith("; pip install num2words")
    assert "processor" in message


def test_an_encoder_decoder_or_listed_model_type_is_refused_before_its_weights(
    tiny_model_factory, monkeypatch
):
    import transformers

    import stic.modeling.models as models

    folder = str(tiny_model_factory("llava"))
    monkeypatch.setitem(models.UNSUPPORTED, "llava", "a reason stated here")
    with pytest.raises(ModelLoadError, match="'llava' model, which stic cannot use: a reason"):
        load_model(folder, device="cpu")
    monkeypatch.delitem(models.UNSUPPORTED, "llava")

    real = transformers.AutoConfig.from_pretrained

    def encoder_decoder(*args, **kwargs):
        config = real(*args, **kwargs)
        config.is_encoder_decoder = True
        return config

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", encoder_decoder)
    monkeypatch.setattr(
        transformers.AutoModelForImageTextToText,
        "from_pretrained",
        lambda *a, **k: pytest.fail("weights were read"),
    )
    with pytest.raises(ModelLoadError, match="encoder-decoder 'llava' model; stic trains decoder"):
        load_model(folder, device="cpu")
