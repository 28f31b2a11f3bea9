"""`stic run` with self-training rounds: how the run config's round keys are planned and checked
(stic.pipeline.plan); running them is tests/test_pipeline_rounds.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from stic.config import ConfigError
from stic.pipeline import plan, resolved_config


def _run(tmp_path: Path, **top) -> dict:
    return {
        "model": "tiny",
        "output_dir": str(tmp_path / "run"),
        "pairs": {"images": "imgs"},
        "dpo": {"beta": 0.2},
        "infuse": {"data": "instruct.json", "images": "llava_imgs"},
        "sft": {"lr": 1e-5},
        "eval": [
            {"name": "val", "data": "val.jsonl", "images": "vi"},
            {"name": "test", "at": "final", "data": "test.jsonl", "images": "vi"},
        ],
        "bench": [{"benchmark": "pope_random", "data": "POPE", "images": "coco", "at": "stage1"}],
        "rounds": 3,
        "select": {"entry": "val", "metric": "accuracy", "mode": "max"},
        **top,
    }


def _errors(data: dict) -> list[str]:
    with pytest.raises(ConfigError) as e:
        plan(data)
    return str(e.value).splitlines()


def test_three_rounds_are_planned_round_by_round_then_the_choice_then_stage_2(tmp_path):
    stages = plan(_run(tmp_path))
    root = tmp_path / "run"
    order = [(s.stage, s.name) for s in stages]
    rounds = [
        [("pairs", f"round_{r}"), ("dpo", f"round_{r}"), ("eval", f"round_{r}/val")]
        for r in (1, 2, 3)
    ]
    assert order == [
        *rounds[0],
        *rounds[1],
        *rounds[2],
        ("rounds", "rounds"),
        ("infuse", "infuse"),
        ("sft", "sft"),
        ("eval", "test"),
        ("bench", "stage1/pope_random"),
    ]
    by = {(s.stage, s.name): s.config for s in stages}
    for r in (1, 2, 3):
        pairs, dpo, val = (by[key] for key in rounds[r - 1])
        folder = root / f"round_{r}"
        assert pairs.out == str(folder / "pairs.jsonl") and pairs.shard == f"{r - 1}/3"
        assert dpo.out == str(folder / "dpo") and dpo.pairs == pairs.out and dpo.images == "imgs"
        assert dpo.beta == 0.2
        assert val.out == str(folder / "eval" / "val.json") and val.adapter == dpo.out
        previous = None if r == 1 else str(root / f"round_{r - 1}" / "dpo")
        assert pairs.adapter == previous and dpo.adapter == previous
        assert dpo.reference == "start"  # round_reference: previous (the default)
    choice = by[("rounds", "rounds")]
    assert choice.out == str(root / "dpo") and choice.table == str(root / "rounds.json")
    assert choice.round_adapters == [str(root / f"round_{r}" / "dpo") for r in (1, 2, 3)]
    assert choice.round_results == [
        str(root / f"round_{r}" / "eval" / "val.json") for r in (1, 2, 3)
    ]
    assert (choice.select_entry, choice.select_metric, choice.select_mode) == (
        "val",
        "accuracy",
        "max",
    )
    # The rest of the run reads the chosen round's copy, where one round's run reads dpo/.
    assert by[("infuse", "infuse")].adapter == str(root / "dpo")
    assert by[("sft", "sft")].adapter == str(root / "dpo")
    assert by[("bench", "stage1/pope_random")].adapter == str(root / "dpo")
    assert by[("eval", "test")].adapter == str(root / "sft")
    # Every planned stage has its own key in the resolved config.
    assert resolved_config(stages).count("\npairs:round_") == 2  # (the first line has no \n)


def test_one_round_is_todays_run(tmp_path):
    data = _run(tmp_path, rounds=1)
    del data["select"]
    names = [(s.stage, s.name) for s in plan(data)]
    assert names[:2] == [("pairs", "pairs"), ("dpo", "dpo")] and ("rounds", "rounds") not in names
    assert names == [
        (s.stage, s.name) for s in plan({k: v for k, v in data.items() if k != "rounds"})
    ]


def test_base_reference_and_the_same_images_every_round(tmp_path):
    stages = plan(_run(tmp_path, round_reference="base", round_images="same"))
    dpo = [s.config for s in stages if s.stage == "dpo"]
    assert [d.reference for d in dpo] == ["start", "base", "base"]  # round 1: no adapter
    assert all(s.config.shard is None for s in stages if s.stage == "pairs")


def test_without_select_no_entry_runs_per_round(tmp_path):
    data = _run(tmp_path)
    del data["select"]
    stages = plan(data)
    assert not [s for s in stages if s.name.startswith("round_") and s.stage == "eval"]
    choice = next(s.config for s in stages if s.stage == "rounds")
    assert choice.select_entry is None and choice.round_results == []
    assert "val" in [s.name for s in stages]  # a test entry like the others


@pytest.mark.parametrize(
    ("top", "expected"),
    [
        ({"rounds": 0}, "rounds: 0 is not allowed (an integer >= 1"),
        ({"rounds": "3"}, "rounds: '3' is not allowed"),
        ({"rounds": True}, "rounds: True is not allowed"),
        ({"round_reference": "previous_round"}, "round_reference: 'previous_round' is not one of"),
        ({"round_images": "new"}, "round_images: 'new' is not one of 'fresh', 'same'"),
        ({"select": {"entry": "val", "metric": "accuracy"}}, "select.mode: required"),
        ({"select": {"entry": "val", "metric": "accuracy", "mode": "up"}}, "select.mode: 'up'"),
        ({"select": {"entry": "val", "metric": 3, "mode": "max"}}, "select.metric: 3 is not"),
        ({"select": {"entry": "val", "metric": "a", "mode": "max", "x": 1}}, "select.x: unknown"),
        (
            {"select": {"entry": "nope", "metric": "a", "mode": "max"}},
            "select.entry: 'nope' is not",
        ),
        ({"rounds": 1}, "select: only used with rounds >= 2 (rounds is 1)"),
    ],
)
def test_round_keys_are_checked_naming_the_key(tmp_path, top, expected):
    errors = _errors(_run(tmp_path, **top))
    assert any(line.startswith(expected) for line in errors), errors


@pytest.mark.parametrize(
    ("stage", "key", "value"),
    [
        ("pairs", "adapter", "a"),
        ("pairs", "shard", "0/2"),
        ("pairs", "out", "p.jsonl"),
        ("dpo", "adapter", "a"),
        ("dpo", "reference", "base"),
        ("dpo", "pairs", "p.jsonl"),
    ],
)
def test_keys_the_rounds_set_are_refused(tmp_path, stage, key, value):
    data = _run(tmp_path)
    data[stage] = {**data[stage], key: value}
    assert f"{stage}.{key}: set by the rounds (remove it)" in _errors(data)


def test_rounds_need_pairs_and_dpo(tmp_path):
    data = _run(tmp_path)
    del data["pairs"]
    assert "rounds: 3 needs a pairs section (each round makes pairs and trains dpo on them)" in (
        _errors(data)
    )


def test_the_select_entry_takes_no_at(tmp_path):
    data = _run(tmp_path)
    data["eval"][0]["at"] = "final"
    errors = _errors(data)
    assert any(line.startswith("eval[0].at: set by select") for line in errors), errors


@pytest.mark.parametrize(
    "test_data",
    [
        "val.jsonl",  # the same file
        "./val.jsonl",  # spelled otherwise
    ],
)
def test_selection_on_data_a_test_entry_reads_is_refused(tmp_path, test_data):
    data = _run(tmp_path)
    data["eval"][1]["data"] = test_data
    errors = _errors(data)
    assert any(
        line.startswith(
            "select.entry: 'val' (eval[0].data) reads val.jsonl, and the test entry "
            f"'test' (eval[1].data) reads {test_data}"
        )
        for line in errors
    ), errors


def test_selection_on_a_benchmark_folder_a_test_entry_reads_is_refused(tmp_path):
    data = _run(tmp_path)
    data["bench"] = [
        {"name": "val_pope", "benchmark": "pope_random", "data": "POPE/coco/random.json"},
        {"benchmark": "pope_adversarial", "data": "POPE", "images": "coco"},
    ]
    data["select"] = {"entry": "val_pope", "metric": "f1", "mode": "max"}
    errors = _errors(data)
    assert any(
        "(bench[0].data) reads POPE/coco/random.json" in e and "(bench[1].data)" in e
        for e in errors
    )
