"""stic export's refusals: pickled weights without --allow-pickle (naming the file), an adapter
trained on another base (naming both), an adapter whose weights do not all merge; the merged
module count in the summary; and files made with the user's umask."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from stic.modeling.models import add_lora
from stic.tools.export import main


def _adapter(base: Path, folder: Path) -> Path:
    """A LoRA adapter (q_proj, v_proj of the language model) on ``base`` with non-zero weights."""
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(base, dtype=torch.float32)
    peft_model = add_lora(model, r=4, alpha=8, dropout=0.0, layer_names=["q_proj", "v_proj"])
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    peft_model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def llava(tiny_model_factory, tmp_path_factory) -> tuple[Path, Path]:
    """(base, adapter) on the tiny LLaVA: two layers, q_proj and v_proj, so 4 LoRA modules."""
    base = tiny_model_factory("llava")
    return base, _adapter(base, tmp_path_factory.mktemp("export_checks") / "adapter")


def _variant(adapter: Path, folder: Path, edit=None, config_edit=None) -> Path:
    """A copy of ``adapter`` with its tensors and/or config edited."""
    shutil.copytree(adapter, folder)
    if edit is not None:
        tensors = load_file(folder / "adapter_model.safetensors")
        edit(tensors)
        save_file(tensors, folder / "adapter_model.safetensors")
    if config_edit is not None:
        config = json.loads((folder / "adapter_config.json").read_text())
        config_edit(config)
        (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


def _pickled(adapter: Path, folder: Path) -> Path:
    """The adapter with its weights in ``adapter_model.bin`` (a pickle) instead of safetensors."""
    shutil.copytree(adapter, folder)
    tensors = load_file(folder / "adapter_model.safetensors")
    torch.save(tensors, folder / "adapter_model.bin")
    (folder / "adapter_model.safetensors").unlink()
    return folder


def _nothing_written(out: Path) -> bool:
    return not out.exists() and not list(out.parent.glob(f".{out.name}.*"))


@pytest.mark.parametrize("merge", [False, True])
def test_pickled_adapter_is_refused_naming_the_file(llava, tmp_path, capsys, merge):
    base, adapter = llava
    pickled = _pickled(adapter, tmp_path / "pickled")
    out = tmp_path / "out"
    argv = ["--adapter", str(pickled), "--model", str(base), "--out", str(out)]
    assert main(argv + (["--merge"] if merge else [])) == 1
    err = capsys.readouterr().err
    assert f"{pickled / 'adapter_model.bin'} holds pickled weights" in err
    assert "--allow-pickle" in err
    assert _nothing_written(out)


def test_pickled_adapter_with_allow_pickle_is_exported_as_safetensors(llava, tmp_path):
    base, adapter = llava
    pickled = _pickled(adapter, tmp_path / "pickled")
    out = tmp_path / "out"
    assert main(["--adapter", str(pickled), "--out", str(out), "--allow-pickle"]) == 0
    assert not (out / "adapter_model.bin").exists()
    exported = load_file(out / "adapter_model.safetensors")
    original = load_file(adapter / "adapter_model.safetensors")
    assert exported.keys() == original.keys()
    for name, tensor in original.items():
        assert torch.equal(exported[name], tensor), name


def test_pickled_base_is_refused_naming_the_file(llava, tmp_path, capsys):
    base, adapter = llava
    pickled_base = tmp_path / "base"
    shutil.copytree(base, pickled_base)
    torch.save(load_file(pickled_base / "model.safetensors"), pickled_base / "pytorch_model.bin")
    (pickled_base / "model.safetensors").unlink()
    out = tmp_path / "out"
    argv = ["--adapter", str(adapter), "--model", str(pickled_base), "--merge", "--out", str(out)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"{pickled_base / 'pytorch_model.bin'} holds pickled weights" in err
    assert _nothing_written(out)


@pytest.mark.parametrize("merge", [False, True])
def test_adapter_of_another_family_is_refused_naming_both(
    llava, tiny_model_factory, tmp_path, capsys, merge
):
    # The tiny Qwen2-VL has a language model of the LLaVA's sizes: PEFT would load every weight.
    base, adapter = llava
    other = tiny_model_factory("qwen2_vl")
    out = tmp_path / "out"
    argv = ["--adapter", str(adapter), "--model", str(other), "--out", str(out)]
    assert main(argv + (["--merge"] if merge else [])) == 1
    err = capsys.readouterr().err
    assert f"trained on {base} (a 'llava' model), not on --model {other} (a 'qwen2_vl'" in err
    assert _nothing_written(out)


@pytest.mark.slow
def test_adapter_whose_shapes_do_not_fit_is_refused(llava, tmp_path, capsys):
    # The recorded base is a Hub id this machine cannot read: the weights' shapes decide.
    from stic.demo.base_model import shipped_base_path

    _, adapter = llava
    moved = _variant(
        adapter,
        tmp_path / "moved",
        config_edit=lambda c: c.update(base_model_name_or_path="someone/not-cached-here"),
    )
    demo = str(shipped_base_path())  # a LLaVA too, 128 wide where the tiny one is 64
    out = tmp_path / "out"
    assert main(["--adapter", str(moved), "--model", demo, "--merge", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"does not fit the base model {demo!r}" in err
    assert "'someone/not-cached-here'" in err and "[4, 64] in the adapter" in err
    assert _nothing_written(out)


def _extra_layer(tensors: dict) -> None:
    """Weights for a layer 5 the two-layer model lacks (an adapter of a deeper model)."""
    for name in [n for n in tensors if ".layers.1." in n]:
        tensors[name.replace(".layers.1.", ".layers.5.")] = tensors[name].clone()


def _extra_target(config: dict) -> None:
    config["target_modules"] += [
        t.replace(".layers.1.", ".layers.5.") for t in config["target_modules"] if ".layers.1." in t
    ]


def _drop_one_module(tensors: dict) -> None:
    for name in [n for n in tensors if ".layers.1.self_attn.q_proj." in n]:
        del tensors[name]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("edit", "config_edit", "expected"),
    [
        (_extra_layer, _extra_target, "4 of the adapter's 12 weights name no module of it"),
        (_drop_one_module, None, "2 of the 8 LoRA weights PEFT made got no saved value"),
    ],
)
def test_merge_fails_unless_every_module_merges(
    llava, tmp_path, capsys, edit, config_edit, expected
):
    base, adapter = llava
    partial = _variant(adapter, tmp_path / "partial", edit=edit, config_edit=config_edit)
    out = tmp_path / "out"
    assert (
        main(["--adapter", str(partial), "--model", str(base), "--merge", "--out", str(out)]) == 1
    )
    err = capsys.readouterr().err
    assert expected in err and f"does not fit --model {base}" in err
    assert _nothing_written(out)


@pytest.mark.slow
def test_merged_module_count_is_in_the_summary(llava, tmp_path, capsys):
    base, adapter = llava
    out = tmp_path / "out"
    argv = ["--adapter", str(adapter), "--model", str(base), "--merge", "--out", str(out)]
    assert main(argv) == 0
    assert "(4 LoRA modules merged)" in capsys.readouterr().out  # 2 layers x q_proj, v_proj
    manifest = json.loads(next(out.glob("*manifest*.json")).read_text())
    assert manifest["summary"]["details"]["merged_modules"] == 4
    assert manifest["summary"]["details"]["adapter_base_model"] == str(base)
    assert main(argv) == 0  # up to date: the count is still said
    assert "up to date" in (said := capsys.readouterr().out) and "(4 LoRA modules" in said


def _modes(folder: Path) -> dict[str, int]:
    modes = {".": stat.S_IMODE(folder.stat().st_mode)}
    for path in folder.rglob("*"):
        modes[str(path.relative_to(folder))] = stat.S_IMODE(path.stat().st_mode)
    return modes


@pytest.fixture(params=[0o022, 0o077], ids=["umask022", "umask077"])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _expected_modes(folder: Path, mask: int) -> dict[str, int]:
    return {
        name: (0o777 if name == "." or (folder / name).is_dir() else 0o666) & ~mask
        for name in _modes(folder)
    }


@pytest.mark.parametrize("merge", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_export_files_follow_the_umask(llava, tmp_path, umask, merge):
    # Files from transformers' save_pretrained, from the copy and stic's own manifest alike.
    base, adapter = llava
    os.chmod(adapter / "adapter_model.safetensors", 0o600)  # the source's mode is not copied
    out = tmp_path / "out"
    argv = ["--adapter", str(adapter), "--model", str(base), "--out", str(out)]
    assert main(argv + (["--merge"] if merge else [])) == 0
    modes = _modes(out)
    assert len(modes) > 3 and modes == _expected_modes(out, umask)


def test_bench_result_follows_the_umask(tmp_path, umask):
    from stic.tools.bench_score import main as bench_main
    from tests.data.bench_fixtures import write_jsonl, write_png

    rows = [{"question_id": 1, "image": "a.jpg", "text": "Is there a cat?", "label": "yes"}]
    write_jsonl(tmp_path / "pope" / "coco_pope_random.json", rows)
    write_png(tmp_path / "val2014" / "a.jpg")
    predictions = write_jsonl(tmp_path / "pred.jsonl", [{"id": "1", "prediction": "Yes"}])
    out = tmp_path / "results" / "pope_random.json"
    argv = ["--benchmark", "pope_random", "--data", str(tmp_path / "pope")]
    argv += ["--images", str(tmp_path / "val2014")]
    assert bench_main([*argv, "--predictions", str(predictions), "--out", str(out)]) == 0
    written = _modes(out.parent)
    assert len(written) >= 3 and written == _expected_modes(out.parent, umask)
