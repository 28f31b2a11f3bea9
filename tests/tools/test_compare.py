"""stic compare: the paper-style table with deltas and paired bootstrap intervals."""

from __future__ import annotations

import json

import pytest

from stic.data.benchmarks import BenchItem, ImageRef, score_predictions
from stic.runtime.files import atomic_write_json
from stic.tools.compare import compare, load_run, main

IMAGE = ImageRef(path="unused.png")


def _pope_items(n: int) -> list[BenchItem]:
    return [
        BenchItem(id=str(i), image=IMAGE, question="q", answers=("yes" if i % 2 else "no",))
        for i in range(n)
    ]


def _sqa_items(n: int) -> list[BenchItem]:
    return [
        BenchItem(id=str(i), image=IMAGE, question="q", answers=("A",), choices=("x", "y"))
        for i in range(n)
    ]


def _write_run(folder, pope_right: int, sqa_right: int, n: int = 40):
    pope = _pope_items(n)
    pope_pred = {
        it.id: (it.answers[0] if k < pope_right else ("no" if it.answers[0] == "yes" else "yes"))
        for k, it in enumerate(pope)
    }
    sqa = _sqa_items(n)
    sqa_pred = {it.id: ("A" if k < sqa_right else "B") for k, it in enumerate(sqa)}
    atomic_write_json(
        folder / "pope_random.json", score_predictions("pope_random", pope, pope_pred)
    )
    atomic_write_json(
        folder / "scienceqa_img.json", score_predictions("scienceqa_img", sqa, sqa_pred)
    )
    return folder


def test_table_values_average_deltas_and_intervals(tmp_path):
    base = _write_run(tmp_path / "base", pope_right=20, sqa_right=20)
    stic = _write_run(tmp_path / "stic", pope_right=30, sqa_right=30)
    table = compare([load_run(str(base)), load_run(f"STIC={stic}")], resamples=300, seed=1)
    assert table["runs"] == ["base", "STIC"]
    assert table["values"]["scienceqa_img"] == {"base": 50.0, "STIC": 75.0}
    assert table["average"]["benchmarks"] == ["scienceqa_img", "pope_random"]
    sqa = table["deltas"]["STIC"]["scienceqa_img"]
    assert sqa["delta"] == 25.0 and sqa["n_common"] == 40
    # paired: items 20..29 flip wrong -> right, nothing flips back, so every resample's delta is
    # >= 0 and the interval brackets 25 (10 flips of 40 = 25 points on average)
    low, high = sqa["ci95"]
    assert 0 <= low < 25 < high <= 50
    assert table["deltas"]["STIC"]["average"]["delta"] == pytest.approx(
        table["average"]["values"]["STIC"] - table["average"]["values"]["base"]
    )
    again = compare([load_run(str(base)), load_run(f"STIC={stic}")], resamples=300, seed=1)
    assert again == table  # seeded


def test_identical_runs_have_zero_width_intervals(tmp_path):
    base = _write_run(tmp_path / "a", 25, 25)
    same = _write_run(tmp_path / "b", 25, 25)
    table = compare([load_run(str(base)), load_run(str(same))], resamples=100)
    assert table["deltas"]["b"]["pope_random"] == {
        "delta": 0.0,
        "n_common": 40,
        "n_each": {"a": 40, "b": 40},
        "same_items": True,
        "ci95": [0.0, 0.0],
    }


def test_cli_writes_markdown_and_json(tmp_path, capsys):
    base = _write_run(tmp_path / "base", 20, 20)
    stic = _write_run(tmp_path / "stic", 30, 10)
    files = f"{stic / 'pope_random.json'},{stic / 'scienceqa_img.json'}"
    out = tmp_path / "table" / "TABLE.md"
    assert main([str(base), f"stic+dar={files}", "--out", str(out), "--resamples", "50"]) == 0
    markdown = out.read_text()
    assert "| Benchmark (metric) | base | stic+dar | Δ stic+dar vs base [95% CI] |" in markdown
    assert "| scienceqa_img (accuracy) | 50.0 (n=40) | 25.0 (n=40) | -25.0 [" in markdown
    assert "| Average (2 benchmarks) |" in markdown
    table = json.loads(out.with_suffix(".json").read_text())
    assert table["baseline"] == "base"


def test_bad_run_named(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty"), "--out", str(tmp_path / "t.md")]) == 2
    assert "no <benchmark>.json result files" in capsys.readouterr().err


def _rounds_run(root, rights: list[int], chosen: int):
    """A `stic run` output_dir with rounds: each round's bench select result and rounds.json."""
    rows = []
    for number, right in enumerate(rights, start=1):
        folder = root / f"round_{number}" / "bench" / "val"
        folder.mkdir(parents=True)
        _write_run(folder, pope_right=right, sqa_right=right)
        rows.append({"round": number, "result": str(folder / "pope_random.json")})
    atomic_write_json(root / "rounds.json", {"table": rows, "chosen": chosen})
    return root


def test_rounds_are_columns_with_round_1_the_baseline(tmp_path, capsys):
    run = _rounds_run(tmp_path / "run", [20, 30, 25], chosen=2)
    out = tmp_path / "rounds.md"
    assert main(["--rounds", str(run), "--out", str(out), "--resamples", "50"]) == 0
    table = json.loads(out.with_suffix(".json").read_text())
    assert table["runs"] == ["round_1", "round_2 (chosen)", "round_3"]
    values = table["values"]["pope_random"]  # F1, POPE's primary metric
    assert (values["round_1"], values["round_2 (chosen)"]) == (50.0, 75.0)
    assert values["round_3"] == pytest.approx(61.54, abs=0.01)
    assert table["deltas"]["round_2 (chosen)"]["pope_random"]["delta"] == 25.0


def test_rounds_without_bench_results_are_refused_saying_why(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    atomic_write_json(tmp_path / "run" / "rounds.json", {"table": [{"round": 1}], "chosen": 1})
    assert main(["--rounds", str(tmp_path / "run"), "--out", str(tmp_path / "t.md")]) == 2
    assert "the run has no select entry" in capsys.readouterr().err
    eval_result = tmp_path / "val.json"
    atomic_write_json(eval_result, {"accuracy": 0.5, "n": 2})
    rows = [{"round": 1, "result": str(eval_result)}]
    atomic_write_json(tmp_path / "run" / "rounds.json", {"table": rows, "chosen": 1})
    assert main(["--rounds", str(tmp_path / "run"), "--out", str(tmp_path / "t.md")]) == 2
    assert "is not a bench result (the select entry is an eval entry?)" in capsys.readouterr().err
    assert main(["--rounds", str(tmp_path / "nothing"), "--out", str(tmp_path / "t.md")]) == 2
    assert "rounds.json does not exist" in capsys.readouterr().err
