"""Choosing among self-training rounds (stic.stages.rounds): the rule, the table, the copy."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from stic.config import RoundsConfig
from stic.runtime.manifests import StageConflict, read_manifest, write_manifest
from stic.stages.rounds import RoundsError, choose_round, metric_value, run_rounds


@pytest.mark.parametrize(
    ("values", "mode", "chosen"),
    [
        ([0.5, 0.7, 0.6], "max", 2),
        ([0.5, 0.7, 0.6], "min", 1),
        ([30.0, 12.5, 12.5], "min", 2),  # a tie: the earliest (trained least)
        ([0.7, 0.7, 0.7], "max", 1),
        ([1, 2, 3], "max", 3),  # integers are numbers too
        ([0.4], "max", 1),
    ],
)
def test_the_best_round_wins_and_ties_go_to_the_earliest(values, mode, chosen):
    assert choose_round(values, mode) == chosen


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([0.5, math.nan, 0.6], "round 2: nan is not a finite number"),
        ([0.5, math.inf], "round 2: inf is not a finite number"),
        ([None, 0.5], "round 1: None is not a number"),
        ([True, 0.5], "round 1: True is not a number"),
        ([], "no rounds to choose from"),
    ],
)
def test_missing_or_nan_values_are_refused(values, message):
    with pytest.raises(RoundsError, match=message):
        choose_round(values, "max")


def test_an_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="mode: 'best' is not one of 'max', 'min'"):
        choose_round([0.1], "best")


def test_metric_value_reads_eval_and_bench_results():
    assert metric_value({"accuracy": 0.25, "n": 4}, "accuracy", "r") == 0.25
    bench = {"metrics": {"f1": 71.5, "accuracy": 70.0}, "n": 9, "primary_metric": "f1"}
    assert metric_value(bench, "f1", "r") == 71.5
    assert metric_value(bench, "n", "r") == 9.0
    with pytest.raises(RoundsError, match=r"round 2: .*: no 'f2' in the result \(it has: f1"):
        metric_value({"metrics": {"f1": 1.0}}, "f2", "round 2: x.json")
    with pytest.raises(RoundsError, match="accuracy is nan, not a finite number"):
        metric_value({"accuracy": math.nan}, "accuracy", "r")


def _fake_round(root: Path, number: int, accuracy: float) -> tuple[str, str, str]:
    """A round as its stages leave it: a complete dpo folder, its pairs file, its val result."""
    folder = root / f"round_{number}"
    dpo = folder / "dpo"
    dpo.mkdir(parents=True)
    (dpo / "adapter_model.safetensors").write_bytes(f"weights of round {number}".encode())
    (dpo / "adapter_config.json").write_text("{}")
    (dpo / "train_log.json").write_text("[]")
    details = {"pairs": 10 + number, "train_loss": 0.5 / number}
    write_manifest(
        dpo,
        "dpo",
        {"out": str(dpo)},
        "complete",
        {"details": details},
        files=["checkpoints", "adapter_model.safetensors", "adapter_config.json", "train_log.json"],
    )
    result = folder / "eval" / "val.json"
    result.parent.mkdir()
    result.write_text(json.dumps({"accuracy": accuracy, "n": 4}))
    return str(dpo), str(folder / "pairs.jsonl"), str(result)


def _config(tmp_path: Path, accuracies: list[float], **over) -> RoundsConfig:
    rounds = [_fake_round(tmp_path, r, a) for r, a in enumerate(accuracies, start=1)]
    values = dict(
        out=str(tmp_path / "dpo"),
        table=str(tmp_path / "rounds.json"),
        round_adapters=[r[0] for r in rounds],
        round_pairs=[r[1] for r in rounds],
        round_results=[r[2] for r in rounds],
        select_entry="val",
        select_metric="accuracy",
        select_mode="max",
    )
    values.update(over)
    return RoundsConfig(**values)


def test_the_chosen_rounds_adapter_is_copied_and_its_manifest_says_why(tmp_path):
    config = _config(tmp_path, [0.25, 0.75, 0.5])
    summary = run_rounds(config)
    assert summary.details["chosen"] == 2 and not summary.up_to_date
    copy = tmp_path / "dpo"
    assert (copy / "adapter_model.safetensors").read_bytes() == b"weights of round 2"
    assert {p.name for p in copy.iterdir()} == {
        "adapter_model.safetensors",
        "adapter_config.json",
        "train_log.json",
        "round_manifest.json",
        "stic_manifest.json",
    }
    manifest = read_manifest(copy)
    assert manifest["status"] == "complete" and manifest["stage"] == "chosen_round"
    assert manifest["summary"]["round"] == 2
    assert manifest["summary"]["reason"].startswith(
        "val accuracy = 0.75 is the highest of rounds 1-3"
    )
    assert manifest["summary"]["source"] == str(tmp_path / "round_2" / "dpo")
    assert manifest["inputs"]["adapter"] == manifest["summary"]["source_identity"]
    assert json.loads((copy / "round_manifest.json").read_text())["stage"] == "dpo"

    table = json.loads((tmp_path / "rounds.json").read_text())
    assert table["chosen"] == 2 and table["select"] == {
        "entry": "val",
        "metric": "accuracy",
        "mode": "max",
    }
    assert [row["accuracy"] for row in table["table"]] == [0.25, 0.75, 0.5]
    assert [row["pairs_trained"] for row in table["table"]] == [11, 12, 13]
    markdown = (tmp_path / "rounds.md").read_text()
    assert "| **2** | 12 |" in markdown and "Chosen: round 2 (val accuracy = 0.75" in markdown


def test_a_rerun_with_the_same_rounds_touches_nothing(tmp_path):
    config = _config(tmp_path, [0.25, 0.75, 0.5])
    run_rounds(config)
    mtimes = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    assert run_rounds(config).up_to_date
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == mtimes


def test_another_choice_is_refused_without_overwrite(tmp_path):
    config = _config(tmp_path, [0.25, 0.75, 0.5])
    run_rounds(config)
    lower = RoundsConfig(**{**config.__dict__, "select_mode": "min"})
    with pytest.raises(StageConflict, match="--overwrite"):
        run_rounds(lower)
    run_rounds(RoundsConfig(**{**lower.__dict__, "overwrite": True}))
    assert read_manifest(tmp_path / "dpo")["summary"]["round"] == 1
    assert (tmp_path / "dpo" / "adapter_model.safetensors").read_bytes() == b"weights of round 1"


def test_without_select_the_last_round_is_chosen_and_that_is_said(tmp_path):
    config = _config(tmp_path, [0.9, 0.1], select_entry=None, select_metric=None, select_mode=None)
    config = RoundsConfig(**{**config.__dict__, "round_results": []})
    assert run_rounds(config).details["chosen"] == 2
    reason = read_manifest(tmp_path / "dpo")["summary"]["reason"]
    assert reason == "no select: section, so the last round (2) is used"


def test_a_round_without_its_metric_stops_before_anything_is_written(tmp_path):
    config = _config(tmp_path, [0.25, 0.75], select_metric="f1")
    with pytest.raises(RoundsError, match="round 1: .*no 'f1' in the result"):
        run_rounds(config)
    assert not (tmp_path / "dpo").exists() and not (tmp_path / "rounds.json").exists()


@pytest.mark.parametrize(
    "mode, accuracies, chosen, value",
    [("max", [0.25, 0.75, 0.5], 2, 0.75), ("min", [0.25, 0.75, 0.5], 1, 0.25)],
)
def test_the_final_adapters_manifest_names_its_round_metric_value_and_mode(
    tmp_path, mode, accuracies, chosen, value
):
    run_rounds(_config(tmp_path, accuracies, select_mode=mode))
    summary = read_manifest(tmp_path / "dpo")["summary"]
    assert (summary["round"], summary["rounds"]) == (chosen, 3)
    assert summary["select"] == {"entry": "val", "metric": "accuracy", "mode": mode, "value": value}
    assert summary["source"] == str(tmp_path / f"round_{chosen}" / "dpo")


def test_without_select_the_final_adapters_manifest_says_last_round_no_select(tmp_path):
    config = _config(tmp_path, [0.9, 0.1], select_entry=None, select_metric=None, select_mode=None)
    run_rounds(RoundsConfig(**{**config.__dict__, "round_results": []}))
    summary = read_manifest(tmp_path / "dpo")["summary"]
    assert (summary["round"], summary["rounds"], summary["select"]) == (2, 2, None)
    assert "no select" in summary["reason"] and "last round (2)" in summary["reason"]
