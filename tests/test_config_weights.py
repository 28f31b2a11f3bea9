"""`stic run` eval and bench entries evaluate the weights they name: an `at` that no stage of the
config trains is a configuration error before anything runs (`at: final` without dpo or sft
would be the base model filed as final), unless the entry names an `adapter:` instead."""

from __future__ import annotations

import pytest

from stic.config import ConfigError
from stic.pipeline import plan


def _config(tmp_path, entries: list[dict], kind: str = "bench", **stages) -> dict:
    return {"model": "m", "output_dir": str(tmp_path / "run"), kind: entries, **stages}


def _lines(excinfo) -> list[str]:
    return str(excinfo.value).splitlines()


@pytest.mark.parametrize("kind", ["bench", "eval"])
@pytest.mark.parametrize("at", [None, "final", "stage1"])
def test_at_without_the_stage_that_trains_it_is_an_error(tmp_path, kind, at):
    entry = (
        {"benchmark": "pope_random", "data": "p"}
        if kind == "bench"
        else {"data": "v.jsonl", "images": "i"}
    )
    if at is not None:
        entry["at"] = at
    with pytest.raises(ConfigError) as excinfo:
        plan(_config(tmp_path, [entry], kind))
    (line,) = _lines(excinfo)
    shown = at or "final"
    assert line.startswith(f"{kind}[0].at: '{shown}'{' (the default)' if shown == 'final' else ''}")
    assert "needs the stage that trains it" in line and "adapter: PATH" in line


def test_at_final_without_dpo_or_sft_reported_with_the_entrys_other_problems(tmp_path):
    entries = [{"benchmark": "pope_random", "data": "p", "judge_url": "http://x"}]
    with pytest.raises(ConfigError) as excinfo:
        plan(_config(tmp_path, entries))
    lines = _lines(excinfo)
    assert lines[0].startswith("bench[0].at: 'final' (the default) needs")
    assert "bench[0].judge_url, judge_model: give both or neither" in lines


def test_sft_alone_trains_final_but_not_stage1(tmp_path):
    sft = {"sft": {"data": "d.json", "images": "i"}}
    stages = plan(_config(tmp_path, [{"benchmark": "pope_random", "data": "p"}], **sft))
    (bench,) = [s for s in stages if s.stage == "bench"]
    assert bench.config.adapter == str(tmp_path / "run" / "sft")
    with pytest.raises(ConfigError, match=r"bench\[0\].at: 'stage1' needs .*\(dpo\)"):
        plan(_config(tmp_path, [{"benchmark": "pope_random", "data": "p", "at": "stage1"}], **sft))


def test_base_needs_no_training_stage(tmp_path):
    (bench,) = plan(_config(tmp_path, [{"benchmark": "pope_random", "data": "p", "at": "base"}]))
    assert bench.config.adapter is None and bench.name == "base/pope_random"


def test_entry_naming_an_adapter_uses_it(tmp_path):
    entries = [
        {"benchmark": "pope_random", "data": "p", "adapter": "/ckpt/stic_lora"},
        {"benchmark": "pope_random", "data": "p", "adapter": "/ckpt/stic_lora", "dar": True},
        {"data": "v.jsonl", "images": "i", "adapter": "/ckpt/other", "name": "mine"},
    ]
    stages = {s.name: s.config for s in plan(_config(tmp_path, entries[:2]))}
    root = tmp_path / "run" / "bench"
    assert stages["adapter_stic_lora/pope_random"].adapter == "/ckpt/stic_lora"
    assert stages["adapter_stic_lora/pope_random"].out == str(
        root / "adapter_stic_lora" / "pope_random.json"
    )
    assert stages["adapter_stic_lora_dar/pope_random"].dar is True
    (evaluation,) = plan(_config(tmp_path, entries[2:], "eval"))
    assert evaluation.config.adapter == "/ckpt/other"


def test_at_and_adapter_together_refused(tmp_path):
    entry = {"benchmark": "pope_random", "data": "p", "at": "base", "adapter": "/ckpt/a"}
    with pytest.raises(ConfigError) as excinfo:
        plan(_config(tmp_path, [entry]))
    assert _lines(excinfo) == [
        "bench[0].adapter: set by the pipeline (use 'at' to pick the adapter, or adapter: PATH "
        "without at)"
    ]
