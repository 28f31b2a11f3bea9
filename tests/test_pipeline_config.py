"""`stic run` config checks made before any stage starts: keys written twice, unknown keys at
every depth reported together, and input paths that no stage of the run makes."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import pytest
import yaml

from stic.cli import main
from stic.config import ConfigError
from stic.pipeline import input_problems, load_run_config, plan


def _lines(info: pytest.ExceptionInfo) -> list[str]:
    return str(info.value).splitlines()


def _write(tmp_path, text: str):
    path = tmp_path / "run.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def inputs(tmp_path):
    """Existing inputs for every stage: images folders, data files, a model folder."""
    for folder in ("images", "llava_images", "vqa_images", "model"):
        (tmp_path / folder).mkdir()
    for name in ("llava.json", "vqa.jsonl", "pairs.jsonl"):
        (tmp_path / name).write_text("[]\n")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    return tmp_path


def _full(root) -> dict:
    return {
        "model": str(root / "model"),
        "output_dir": str(root / "run"),
        "pairs": {"images": str(root / "images")},
        "dpo": {},
        "infuse": {"data": str(root / "llava.json"), "images": str(root / "llava_images")},
        "sft": {},
        "eval": [
            {"name": "vqa", "data": str(root / "vqa.jsonl"), "images": str(root / "vqa_images")}
        ],
    }


# --- keys written twice --------------------------------------------------------------------------


def test_a_section_written_twice_is_an_error_naming_the_lines(tmp_path):
    path = _write(
        tmp_path,
        "model: m\noutput_dir: out\npairs:\n  images: a\ndpo: {}\npairs:\n  images: b\n",
    )
    with pytest.raises(ConfigError) as info:
        load_run_config(path, check_inputs=False)
    assert _lines(info) == [
        f"{path}: line 6: key 'pairs' appears twice in one mapping (first on line 3); keep one"
    ]


def test_a_nested_key_written_twice_is_reported_with_the_other_problems(tmp_path):
    path = _write(
        tmp_path,
        "model: m\noutput_dir: out\nlearning_rate: 1\n"
        "pairs:\n  images: a\n  limit: 5\n  limit: 50\n  max_new_tokenz: 3\n"
        "eval:\n  - {data: v, images: w, dar: true, dar: false}\n",
    )
    with pytest.raises(ConfigError) as info:
        load_run_config(path, check_inputs=False)
    lines = _lines(info)
    assert (
        f"{path}: line 7: key 'limit' appears twice in one mapping (first on line 6); keep one"
        in lines
    )
    assert any(line.startswith(f"{path}: line 10: key 'dar' appears twice") for line in lines)
    assert any(line.startswith("learning_rate: unknown key") for line in lines)
    assert any(line.startswith("pairs.max_new_tokenz: unknown key") for line in lines)


def test_one_key_spelled_with_dash_and_underscore_is_written_twice(tmp_path):
    data = {
        "model": "m",
        "output_dir": "o",
        "pairs": {"images": "i", "batch-size": 2, "batch_size": 4},
    }
    with pytest.raises(ConfigError) as info:
        plan(data)
    assert _lines(info) == ["pairs.batch_size: given twice (as 'batch-size' and 'batch_size')"]


def test_yaml_merge_keys_may_override_merged_values(tmp_path):
    text = (
        "model: m\noutput_dir: out\n"
        "pairs:\n  <<: {images: a, temperature: 0.5}\n  temperature: 0.7\n"
    )
    path = _write(tmp_path, text)
    (stage,) = load_run_config(path, check_inputs=False)
    assert stage.config.temperature == 0.7 and stage.config.images == "a"


# --- unknown keys at every depth -----------------------------------------------------------------


def test_an_unknown_top_level_key_does_not_hide_nested_ones(tmp_path):
    data = {
        "model": "m",
        "output_dir": "o",
        "learning_rate": 0.1,
        "pairs": {"images": "i", "max_new_tokenz": 8},
        "dpo": {"betta": 0.1},
        "eval": [{"data": "d", "images": "i", "foo": 1}],
    }
    with pytest.raises(ConfigError) as info:
        plan(data)
    lines = _lines(info)
    assert any(line.startswith("learning_rate: unknown key") for line in lines)
    assert any(line.startswith("pairs.max_new_tokenz: unknown key") for line in lines)
    assert any(line.startswith("dpo.betta: unknown key") for line in lines)
    assert any(line.startswith("eval[0].foo: unknown key") for line in lines)


def test_missing_model_and_output_dir_do_not_hide_section_problems():
    with pytest.raises(ConfigError) as info:
        plan({"pairs": {"images": "i", "top_p": 3}})
    lines = _lines(info)
    assert "model: required" in lines and "output_dir: required" in lines
    assert any(line.startswith("pairs.top_p: 3 is not allowed") for line in lines)
    assert not any("<model>" in line or "<output_dir>" in line for line in lines)


# --- inputs checked before the first stage -------------------------------------------------------


def test_a_run_with_every_input_present_passes(inputs):
    stages = load_run_config(_write(inputs, yaml.safe_dump(_full(inputs))))
    assert [s.stage for s in stages] == ["pairs", "dpo", "infuse", "sft", "eval"]


def test_every_missing_input_is_reported_at_once_naming_its_key(inputs):
    data = _full(inputs)
    data["infuse"]["data"] = str(inputs / "nowhere" / "llava.json")
    data["infuse"]["images"] = str(inputs / "llava.json")  # a file, not a folder
    data["eval"].append(
        {"name": "pope", "data": str(inputs / "pope.jsonl"), "images": str(inputs / "images")}
    )
    with pytest.raises(ConfigError) as info:
        load_run_config(_write(inputs, yaml.safe_dump(data)))
    assert _lines(info) == [
        f"infuse.data: {inputs / 'nowhere' / 'llava.json'} does not exist",
        f"infuse.images: {inputs / 'llava.json'} is not a folder",
        f"eval[1].data: {inputs / 'pope.jsonl'} does not exist",
    ]


def test_inputs_made_by_an_earlier_stage_are_not_checked(inputs):
    # dpo.pairs, infuse.adapter, sft.data/adapter and the evals' adapters do not exist yet.
    stages = load_run_config(_write(inputs, yaml.safe_dump(_full(inputs))))
    assert not (inputs / "run").exists()
    assert input_problems(stages) == []


def test_inputs_of_a_stage_without_its_upstream_stage_are_checked(inputs):
    common = {"model": str(inputs / "model"), "output_dir": str(inputs / "run")}
    dpo_only = {
        **common,
        "dpo": {"pairs": str(inputs / "missing_pairs.jsonl"), "images": str(inputs / "images")},
    }
    with pytest.raises(ConfigError) as info:
        load_run_config(_write(inputs, yaml.safe_dump(dpo_only)))
    assert _lines(info) == [f"dpo.pairs: {inputs / 'missing_pairs.jsonl'} does not exist"]
    sft_only = {
        **common,
        "sft": {
            "data": str(inputs / "llava.json"),
            "images": str(inputs / "llava_images"),
            "adapter": str(inputs / "images"),  # a folder, but no adapter in it
        },
    }
    with pytest.raises(ConfigError) as info:
        load_run_config(_write(inputs, yaml.safe_dump(sft_only)))
    assert _lines(info) == [
        f"sft.adapter: {inputs / 'images'} is not a PEFT adapter folder (no adapter_config.json)"
    ]
    sft_only["sft"]["adapter"] = str(inputs / "adapter")
    assert load_run_config(_write(inputs, yaml.safe_dump(sft_only)))


def test_a_local_model_path_must_exist_but_a_hub_id_is_not_checked(inputs):
    data = _full(inputs)
    data["model"] = str(inputs / "no_model")
    with pytest.raises(ConfigError) as info:
        load_run_config(_write(inputs, yaml.safe_dump(data)))
    assert _lines(info) == [f"model: {inputs / 'no_model'} does not exist"]
    data["model"] = "llava-hf/llava-1.5-7b-hf"
    assert load_run_config(_write(inputs, yaml.safe_dump(data)))


def test_an_unreadable_input_is_reported(inputs, monkeypatch):
    # Simulated: a test run as root can read any file whatever its mode.
    real_access = os.access
    unreadable = inputs / "llava.json"
    monkeypatch.setattr(
        os, "access", lambda path, mode: Path(path) != unreadable and real_access(path, mode)
    )
    with pytest.raises(ConfigError) as info:
        load_run_config(_write(inputs, yaml.safe_dump(_full(inputs))))
    assert _lines(info) == [f"infuse.data: {unreadable} is not readable"]


def test_a_token_in_a_missing_path_is_not_printed(inputs, monkeypatch):
    secret = "hf_abcdefghijklmnopqrstuvwxyz0123"
    monkeypatch.setenv("HF_TOKEN", secret)
    data = _full(inputs)
    data["infuse"]["data"] = f"/data/{secret}/llava.json"
    with pytest.raises(ConfigError) as info:
        load_run_config(_write(inputs, yaml.safe_dump(data)))
    assert secret not in str(info.value) and "<redacted:HF_TOKEN>" in str(info.value)


def test_stic_run_with_a_missing_input_exits_2_before_any_stage(inputs):
    data = _full(inputs)
    data["infuse"]["data"] = str(inputs / "absent.json")
    path = _write(inputs, yaml.safe_dump(data))
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["run", str(path)])
    assert code == 2
    assert f"infuse.data: {inputs / 'absent.json'} does not exist" in err.getvalue()
    assert not (inputs / "run").exists()
