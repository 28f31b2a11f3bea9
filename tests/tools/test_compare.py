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


def test_the_table_document_in_full(tmp_path):
    """Two benchmarks in the base, one in the other run: values, cells, weights, the average
    over the shared benchmark only, deltas only where both runs have the benchmark."""
    base = _write_run(tmp_path / "base", pope_right=20, sqa_right=20)
    other = tmp_path / "other"
    _write_run(other, pope_right=40, sqa_right=30)
    (other / "pope_random.json").unlink()
    table = compare([load_run(str(base)), load_run(str(other))], resamples=50, seed=3)
    pope_f1 = json.loads((base / "pope_random.json").read_text())["metrics"]["f1"]
    assert table["runs"] == ["base", "other"] and table["baseline"] == "base"
    assert table["primary_metric"] == {"scienceqa_img": "accuracy", "pope_random": "f1"}
    assert list(table["primary_metric"]) == ["scienceqa_img", "pope_random"]  # registry order
    assert table["metric_label"] == {"scienceqa_img": None, "pope_random": None}
    assert table["values"] == {
        "scienceqa_img": {"base": 50.0, "other": 75.0},
        "pope_random": {"base": pope_f1, "other": None},
    }
    assert table["cells"]["scienceqa_img"]["other"] == {
        "value": 75.0,
        "n": 40,
        "n_expected": 40,
        "partial": False,
        "not_scored": {},
        "data_hash": json.loads((other / "scienceqa_img.json").read_text())["data_hash"],
    }
    assert list(table["cells"]["pope_random"]) == ["base"]
    assert table["weights"] == {
        "base": {"pope_random": None, "scienceqa_img": None},
        "other": {"scienceqa_img": None},
    }
    assert table["average"] == {
        "benchmarks": ["scienceqa_img"],
        "values": {"base": 50.0, "other": 75.0},
    }
    deltas = table["deltas"]
    assert list(deltas) == ["other"] and list(deltas["other"]) == ["scienceqa_img", "average"]
    sqa = deltas["other"]["scienceqa_img"]
    assert set(sqa) == {"delta", "n_common", "n_each", "same_items", "ci95"}
    assert sqa["delta"] == 25.0 and sqa["n_each"] == {"base": 40, "other": 40}
    assert sqa["same_items"] is True
    # one shared benchmark: the average's interval is that benchmark's interval
    assert deltas["other"]["average"] == {"delta": 25.0, "ci95": sqa["ci95"]}
    assert table["bootstrap"] == {
        "resamples": 50,
        "seed": 3,
        "confidence": 0.95,
        "paired_by": "item id",
        "items": "scored in both runs",
    }
    assert table["allow_different_data"] is False


def test_the_average_is_over_the_benchmarks_every_run_has_rounded(tmp_path):
    base = _write_run(tmp_path / "base", pope_right=17, sqa_right=10, n=30)
    other = _write_run(tmp_path / "other", pope_right=20, sqa_right=20, n=30)
    table = compare([load_run(str(base)), load_run(str(other))], resamples=20)
    values = table["values"]
    for name in ("base", "other"):
        mean = (values["scienceqa_img"][name] + values["pope_random"][name]) / 2
        assert table["average"]["values"][name] == round(mean, 4)
    assert table["average"]["values"]["base"] != round(table["average"]["values"]["base"], 1)
    per = table["deltas"]["other"]
    mean_delta = (per["scienceqa_img"]["delta"] + per["pope_random"]["delta"]) / 2
    assert per["average"]["delta"] == round(mean_delta, 4)  # 22.41385 -> 22.4139
    low, high = per["average"]["ci95"]
    assert low <= per["average"]["delta"] <= high


def test_runs_without_a_shared_benchmark_have_no_average(tmp_path):
    base = _write_run(tmp_path / "base", 20, 20)
    (base / "pope_random.json").unlink()
    other = _write_run(tmp_path / "other", 20, 20)
    (other / "scienceqa_img.json").unlink()
    table = compare([load_run(str(base)), load_run(str(other))], resamples=10)
    assert table["average"] == {"benchmarks": [], "values": {"base": None, "other": None}}
    assert table["deltas"] == {"other": {}}


def test_two_runs_of_one_name_refused(tmp_path):
    base = _write_run(tmp_path / "base", 20, 20)
    with pytest.raises(ValueError) as e:
        compare([load_run(str(base)), load_run(str(base))])
    assert str(e.value) == ("two runs share a name: ['base', 'base']; name them with NAME=PATH")


def test_a_run_is_named_by_its_folder_or_its_first_files_folder_or_by_name(tmp_path):
    run = _write_run(tmp_path / "stic", 20, 20)
    (run / "TABLE.json").write_text("{}")  # not a benchmark's name: not read
    name, results = load_run(str(run))
    assert name == "stic" and list(results) == ["pope_random", "scienceqa_img"]  # sorted
    assert load_run(f"mine={run}")[0] == "mine"
    files = f"{run / 'scienceqa_img.json'},{run / 'pope_random.json'},"
    name, results = load_run(files)
    assert name == "stic" and sorted(results) == ["pope_random", "scienceqa_img"]


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "run r: {tmp}/gone.json does not exist"),
        ("not-a-result", "run r: {tmp}/x/pope_random.json is not a stic bench result"),
        ("no-items", "run r: {tmp}/x/pope_random.json is not a stic bench result"),
        ("no-metrics", "run r: {tmp}/x/pope_random.json is not a stic bench result"),
        ("unknown-benchmark", "run r: {tmp}/x/pope_random.json is not a stic bench result"),
        ("twice", "run r: two results for pope_random"),
        (
            "items-not-a-list",
            "run r: {tmp}/x/pope_random.json: 'items' is not a list of scored items",
        ),
        (
            "n-true",
            "run r: {tmp}/x/pope_random.json records no n (items scored); score it again with stic bench score",
        ),
        (
            "n-negative",
            "run r: {tmp}/x/pope_random.json: nothing scored (n = 0); there is no number to show",
        ),
        ("metric-text", "run r: {tmp}/x/pope_random.json: its f1 is '50', not a number"),
        ("metric-bool", "run r: {tmp}/x/pope_random.json: its f1 is True, not a number"),
        ("metric-nan", "run r: {tmp}/x/pope_random.json: its f1 is nan, not a number"),
        ("no-metric", "run r: {tmp}/x/pope_random.json: its f1 is None, not a number"),
    ],
)
def test_a_run_that_cannot_be_tabulated_is_refused_naming_the_file(tmp_path, case, message):
    run = _write_run(tmp_path / "x", 20, 20)
    path = run / "pope_random.json"
    document = json.loads(path.read_text())
    spec = f"r={path}"
    if case == "missing":
        spec = f"r={tmp_path / 'gone.json'}"
    elif case == "not-a-result":
        document = [document]
    elif case == "no-items":
        del document["items"]
    elif case == "no-metrics":
        del document["metrics"]
    elif case == "unknown-benchmark":
        document["benchmark"] = "pope"
    elif case == "twice":
        spec = f"r={path},{path}"
    elif case == "items-not-a-list":
        document["items"] = {}
    elif case == "n-true":
        document["n"] = True
    elif case == "n-negative":
        document["n"] = -1
    elif case == "metric-text":
        document["metrics"]["f1"] = "50"
    elif case == "metric-bool":
        document["metrics"]["f1"] = True
    elif case == "metric-nan":
        document["metrics"]["f1"] = float("nan")
    elif case == "no-metric":
        del document["metrics"]["f1"]
    path.write_text(json.dumps(document))
    with pytest.raises(ValueError) as e:
        load_run(spec)
    assert str(e.value) == message.format(tmp=tmp_path)


def test_a_folder_without_results_is_refused_naming_the_benchmarks(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.json").write_text("{}")
    with pytest.raises(ValueError) as e:
        load_run(str(tmp_path / "empty"))
    assert str(e.value).startswith(f"{tmp_path / 'empty'}: no <benchmark>.json result files (")
    assert "pope_random, " in str(e.value) and "scienceqa_img" in str(e.value)


@pytest.mark.parametrize("spec", ["name=", ",", "="])
def test_a_run_naming_no_file_is_refused(spec):
    with pytest.raises(ValueError) as e:
        load_run(spec)
    assert str(e.value) == f"run {spec!r} names no result file"


def test_a_run_path_holding_an_equals_sign_is_read(tmp_path):
    run = _write_run(tmp_path / "lr=0.1", 20, 20)
    assert load_run(f"stic={run}")[0] == "stic"
    name, results = load_run(f"stic={run / 'pope_random.json'}")
    assert name == "stic" and list(results) == ["pope_random"]


def test_defaults_of_the_bootstrap(tmp_path):
    base = _write_run(tmp_path / "base", 20, 20, n=4)
    table = compare([load_run(str(base)), load_run(f"b={base}")])
    assert table["bootstrap"]["resamples"] == 1000 and table["bootstrap"]["seed"] == 0


def test_a_result_without_a_number_given_directly_is_refused_naming_run_and_benchmark(tmp_path):
    base = _write_run(tmp_path / "base", 20, 20)
    run = load_run(str(base))
    bad = json.loads((base / "scienceqa_img.json").read_text()) | {"n": 0}
    with pytest.raises(ValueError) as e:
        compare([run, ("bad", {"scienceqa_img": bad})])
    assert str(e.value) == (
        "run bad: scienceqa_img: nothing scored (n = 0); there is no number to show"
    )


def test_a_benchmark_missing_from_a_run_does_not_hide_the_next_ones(tmp_path):
    base = _write_run(tmp_path / "base", 20, 20)
    other = _write_run(tmp_path / "other", 30, 30)
    (other / "scienceqa_img.json").unlink()  # the registry's first of the two
    table = compare([load_run(str(base)), load_run(str(other))], resamples=10)
    assert list(table["deltas"]["other"]) == ["pope_random", "average"]


def test_a_benchmark_without_common_items_leaves_the_average_without_an_interval(tmp_path):
    base = _write_run(tmp_path / "base", 20, 20)
    other = _write_run(tmp_path / "other", 30, 30)
    moved = json.loads((other / "scienceqa_img.json").read_text())
    for row in moved["items"]:
        row["id"] = "x" + row["id"]  # no id in common with the base
    (other / "scienceqa_img.json").write_text(json.dumps(moved))
    table = compare([load_run(str(base)), load_run(str(other))], resamples=20)
    per = table["deltas"]["other"]
    assert per["scienceqa_img"]["n_common"] == 0 and "ci95" in per["pope_random"]
    assert per["average"] == {"delta": None}
