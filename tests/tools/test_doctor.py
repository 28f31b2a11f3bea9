"""``stic doctor``: each check's verdict on a known situation, and what the command prints."""

from __future__ import annotations

import json
import os
import shutil
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from PIL import Image

import stic.tools.doctor
from stic.tools.doctor import (
    OK,
    PROBLEM,
    WARNING,
    Check,
    check_adapter,
    check_device,
    check_disk,
    check_hub,
    check_images,
    check_memory,
    check_model,
    check_packages,
    check_python,
    main,
)

SECRET = "secret-value-4f2a9c"


@pytest.fixture(scope="module")
def llava(tiny_model_factory) -> Path:
    return tiny_model_factory("llava")


def _by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def _images(folder: Path, bad: dict[str, bytes] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(2):
        Image.new("RGB", (8, 6), (40 * i, 90, 200)).save(folder / f"good_{i}.png")
    for name, data in (bad or {}).items():
        (folder / name).write_bytes(data)
    return folder


def _lines(output: str) -> dict[str, tuple[str, str]]:
    """Printed check lines by name: {name: (status, message)}."""
    found = {}
    for line in output.splitlines():
        status, _, rest = line.partition(" ")
        if status in (OK, WARNING, PROBLEM):
            name, _, message = rest.strip().partition(": ")
            found[name] = (status, message)
    return found


# --- the command ------------------------------------------------------------------------------


def test_tiny_model_and_a_folder_with_one_bad_image(llava, tmp_path, capsys):
    images = _images(tmp_path / "images", {"broken.jpg": b""})
    code = main(["--model", str(llava), "--images", str(images)])
    out = capsys.readouterr().out
    lines = _lines(out)
    assert all(line.startswith((OK, WARNING, PROBLEM)) for line in out.splitlines()[:-2])
    assert lines["model"][0] == OK and "llava" in lines["model"][1]
    assert lines["chat template"][0] == OK
    assert lines["weights"][0] == OK and "safetensors" in lines["weights"][1]
    assert "weights load" not in lines  # weights are loaded only with --load-weights
    assert lines["images"] == (OK, f"3 image files under {images}")
    status, message = lines["image decoding"]
    assert status == WARNING
    assert "1 of the first 3 cannot be used" in message and "broken.jpg: empty file" in message
    for name in ("python", "torch", "transformers", "peft", "accelerate", "datasets", "device"):
        assert name in lines
    has_problem = any(status == PROBLEM for status, _ in lines.values())
    assert code == (1 if has_problem else 0)
    assert out.rstrip().splitlines()[-1].endswith("warning(s)")


def test_missing_model_folder_is_a_problem_and_exit_1(tmp_path, capsys):
    missing = tmp_path / "no_such_model"
    assert main(["--model", str(missing)]) == 1
    status, message = _lines(capsys.readouterr().out)["model"]
    assert status == PROBLEM
    assert f"model folder {str(missing)!r} does not exist" in message


def test_all_ok_exits_0(llava, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(
        stic.tools.doctor, "check_device", lambda: [Check(OK, "device", "fake GPU")]
    )
    monkeypatch.setattr(stic.tools.doctor, "check_memory", lambda: Check(OK, "ram", "plenty"))
    monkeypatch.setattr(
        stic.tools.doctor, "check_disk", lambda path, name: Check(OK, name, "plenty")
    )
    images = _images(tmp_path / "images")
    assert main(["--model", str(llava), "--images", str(images), "--load-weights"]) == 0
    lines = _lines(capsys.readouterr().out)
    assert {status for status, _ in lines.values()} == {OK}
    assert "parameters" in lines["weights load"][1]


def test_never_prints_a_token_from_the_environment(llava, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    # A path holding the token ends up in a problem message: it must be redacted there too.
    code = main(["--model", str(tmp_path / SECRET), "--images", str(tmp_path / "none")])
    captured = capsys.readouterr()
    assert code == 1
    assert SECRET not in captured.out and SECRET not in captured.err
    lines = _lines(captured.out)
    assert lines["hub token"] == (OK, "set (from HF_TOKEN; not shown)")
    assert "<redacted:HF_TOKEN>" in lines["model"][1]
    main(["--model", str(llava)])
    captured = capsys.readouterr()
    assert SECRET not in captured.out and SECRET not in captured.err


def test_a_check_that_fails_unexpectedly_is_a_problem_line(monkeypatch, capsys):
    def broken():
        raise RuntimeError("driver exploded\nsecond line")

    monkeypatch.setattr(stic.tools.doctor, "check_device", broken)
    assert main([]) == 1
    status, message = _lines(capsys.readouterr().out)["device"]
    assert status == PROBLEM and message == "the check itself failed: driver exploded"


def test_help_and_bad_arguments(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0 and "--load-weights" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        main(["--max-images", "0"])
    assert exit_.value.code == 2


# --- environment checks -------------------------------------------------------------------------


def test_python_version():
    assert check_python((3, 11, 7)) == Check(OK, "python", "3.11.7")
    assert check_python((3, 9, 1)).status == PROBLEM


def test_packages_transformers_must_be_5x_and_missing_ones_say_how_to_install():
    installed = {
        "torch": "2.5.1",
        "transformers": "4.46.0",
        "accelerate": "1.2.0",
        "datasets": "3.1.0",
        "torchvision": "0.20.1",
        "safetensors": "0.4.5",
        "tokenizers": "0.20.0",  # too old
        "pillow": "11.0.0",
        "pyyaml": "6.0.2",
    }
    checks = _by_name(check_packages(installed.get))
    assert checks["torch"].status == OK and checks["torch"].message.startswith("2.5.1")
    assert checks["transformers"].status == PROBLEM
    assert "needs transformers 5.x" in checks["transformers"].message
    assert checks["peft"] == Check(
        PROBLEM, "peft", "peft is not installed (pip install 'peft>=0.17')"
    )
    assert checks["other packages"].status == PROBLEM
    assert "tokenizers 0.20.0 is too old" in checks["other packages"].message
    current = _by_name(check_packages())
    assert all(c.status == OK for c in current.values()), current


def test_cpu_only_warns_that_7b_training_is_very_slow(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    (check,) = check_device()
    assert check.status == WARNING and check.name == "device"
    assert "no CUDA GPU" in check.message and "very slow" in check.message


def test_gpu_names_memory_and_bf16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: f"Fake GPU {i}")
    memory = {0: (70 * 1024**3, 80 * 1024**3), 1: (4 * 1024**3, 16 * 1024**3)}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: memory[i])
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    checks = _by_name(check_device())
    assert checks["gpu 0"] == Check(OK, "gpu 0", "Fake GPU 0, 70.0 GiB free of 80.0 GiB")
    assert checks["gpu 1"].message == "Fake GPU 1, 4.0 GiB free of 16.0 GiB"
    assert "gpu memory" not in checks  # one GPU has room for a 7B model
    assert checks["bf16"].status == WARNING and "float32" in checks["bf16"].message
    memory[0] = (10 * 1024**3, 80 * 1024**3)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    checks = _by_name(check_device())
    assert checks["gpu memory"].status == WARNING and "10.0 GiB" in checks["gpu memory"].message
    assert checks["bf16"].status == OK


def test_ram():
    assert check_memory(lambda: (60.0, 64.0)) == Check(OK, "ram", "60.0 GiB available of 64.0 GiB")
    low = check_memory(lambda: (6.0, 8.0))
    assert low.status == WARNING and "7B" in low.message
    assert check_memory(lambda: None).status == WARNING


def test_disk(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    for free_gib, status in [(500, OK), (10, WARNING), (1, PROBLEM)]:
        monkeypatch.setattr(shutil, "disk_usage", lambda path, f=free_gib: usage(0, 0, f * 1024**3))
        check = check_disk(tmp_path / "not" / "yet" / "made", "disk")
        assert check.status == status
        assert check.message.startswith(f"{free_gib:.1f} GiB free at {tmp_path}")


def test_hub_offline_and_token_source_never_the_value(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "token"))
    checks = _by_name(check_hub({"HF_HUB_OFFLINE": "1", "HUGGING_FACE_HUB_TOKEN": SECRET}))
    assert checks["hub"].status == OK and checks["hub"].message.startswith("offline")
    assert checks["hub token"].message == "set (from HUGGING_FACE_HUB_TOKEN; not shown)"
    checks = _by_name(check_hub({}))
    assert checks["hub"].message.startswith("online")
    assert checks["hub token"].message.startswith("none")
    (tmp_path / "token").write_text(SECRET)
    checks = _by_name(check_hub({}))
    assert (
        checks["hub token"].message == f"set (from the token file {tmp_path / 'token'}; not shown)"
    )
    assert all(SECRET not in c.message for c in checks.values())


# --- model, adapter, images ---------------------------------------------------------------------


def _copy_model(llava: Path, to: Path) -> Path:
    shutil.copytree(llava, to)
    return to


def test_processor_without_a_chat_template_is_a_problem(llava, tmp_path):
    model = _copy_model(llava, tmp_path / "model")
    (model / "chat_template.jinja").unlink()
    checks = _by_name(check_model(str(model)))
    assert checks["model"].status == OK
    assert checks["processor"].status == PROBLEM
    assert "no chat template" in checks["processor"].message


def test_chat_template_that_drops_the_image_is_a_problem(llava, tmp_path):
    model = _copy_model(llava, tmp_path / "model")
    (model / "chat_template.jinja").write_text(
        "{% for m in messages %}{% for c in m['content'] %}"
        "{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endfor %}"
    )
    check = _by_name(check_model(str(model)))["chat template"]
    assert check.status == PROBLEM and "'<image>'" in check.message


def test_text_only_model_is_a_problem(tmp_path):
    from transformers import LlamaConfig

    LlamaConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2).save_pretrained(
        tmp_path / "text_model"
    )
    checks = check_model(str(tmp_path / "text_model"))
    assert checks[0].status == PROBLEM and "not an image-text-to-text" in checks[0].message
    assert _by_name(checks)["weights"].status == PROBLEM  # config only, no weight files


def test_pickle_only_weights_are_a_warning(llava, tmp_path):
    model = _copy_model(llava, tmp_path / "model")
    (model / "model.safetensors").rename(model / "pytorch_model.bin")
    check = _by_name(check_model(str(model)))["weights"]
    assert check.status == WARNING and "--allow-pickle" in check.message


def test_adapter_checks(llava, tmp_path):
    assert check_adapter(str(tmp_path / "missing"))[0].status == PROBLEM
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    assert "no adapter_config.json" in check_adapter(str(adapter))[0].message
    (adapter / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 8, "base_model_name_or_path": "other/model"})
    )
    checks = _by_name(check_adapter(str(adapter), str(llava)))
    assert checks["adapter"].status == OK and "rank 8" in checks["adapter"].message
    assert checks["adapter weights"].status == PROBLEM
    assert checks["adapter base"].status == WARNING
    (adapter / "adapter_model.safetensors").write_bytes(b"x")
    (adapter / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 8, "base_model_name_or_path": str(llava)})
    )
    checks = _by_name(check_adapter(str(adapter), str(llava)))
    assert {c.status for c in checks.values()} == {OK}


def test_images_listing_problems_and_limits(tmp_path):
    images = _images(tmp_path / "images", {"x_text.jpg": b"not an image", "y_empty.png": b""})
    checks = _by_name(check_images(str(images), max_images=1))
    assert checks["image decoding"] == Check(OK, "image decoding", "the first 1 decode to RGB")
    checks = _by_name(check_images(str(images)))
    assert checks["images"] == Check(OK, "images", f"4 image files under {images}")
    status, message = checks["image decoding"][0], checks["image decoding"][2]
    assert status == WARNING and message.startswith("2 of the first 4 cannot be used")
    assert "x_text.jpg: not a recognised image" in message and "y_empty.png: empty" in message
    assert str(images) not in message  # ids, not long paths
    if hasattr(os, "symlink"):
        (images / "loop.jpg").symlink_to("loop.jpg")
        check = _by_name(check_images(str(images)))["image listing"]
        assert check.status == WARNING and "loop.jpg: symbolic link loop" in check.message


def test_images_folder_empty_missing_or_all_bad_is_a_problem(tmp_path):
    (tmp_path / "empty").mkdir()
    (check,) = check_images(str(tmp_path / "empty"))
    assert check.status == PROBLEM and "no images found" in check.message
    (check,) = check_images(str(tmp_path / "missing"))
    assert check.status == PROBLEM and "does not exist" in check.message
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"")
    assert _by_name(check_images(str(tmp_path / "bad")))["image decoding"].status == PROBLEM
