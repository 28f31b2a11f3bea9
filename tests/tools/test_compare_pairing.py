"""stic compare against what a reader of the table relies on: deltas and intervals over the items
both runs scored, joined by id (reordered and partly missing items); n in every cell; results
with no number refused; different data refused; MathVista's procedure named; weights listed."""

from __future__ import annotations

import json
import math

import pytest

from stic.data.benchmarks import BenchItem, ImageRef, score_predictions
from stic.runtime.files import atomic_write_json, read_json
from stic.tools.compare import CompareError, compare, load_run, main
from tests.data import test_benchmarks_mathvista_testmini

IMAGE = ImageRef(path="unused.png")


def _sqa_items(n: int = 40, question: str = "q") -> list[BenchItem]:
    return [
        BenchItem(id=str(i), image=IMAGE, question=question, answers=("A",), choices=("x", "y"))
        for i in range(n)
    ]


def _sqa_result(
    folder, right: set[int], predicted: range | list[int], reverse: bool = False, **kw
) -> dict:
    """A ScienceQA result in ``folder``: items in ``predicted`` answered, right where in
    ``right``; its item rows in id order, or reversed (a reordered file)."""
    items = _sqa_items(**kw)
    predictions = {str(i): "A" if i in right else "B" for i in predicted}
    result = score_predictions("scienceqa_img", items, predictions)
    if reverse:
        result["items"] = result["items"][::-1]
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "scienceqa_img.json", result)
    return result


def test_delta_is_over_the_items_both_runs_scored_joined_by_id(tmp_path):
    """base: 40 items, right on 0-19. other: only ids 10-39 predicted, right on 10-29, its rows
    reversed. Over the 30 common ids base has 10 right, other 20: the delta is +33.3, not the
    +16.7 of the two cells (50.0 vs 66.7) and not the 0.0 of pairing rows by position."""
    _sqa_result(tmp_path / "base", right=set(range(20)), predicted=range(40))
    _sqa_result(tmp_path / "other", right=set(range(10, 30)), predicted=range(10, 40), reverse=True)
    table = compare(
        [load_run(str(tmp_path / "base")), load_run(str(tmp_path / "other"))], resamples=200
    )
    cells = table["cells"]["scienceqa_img"]
    assert cells["base"]["value"] == 50.0 and cells["base"]["n"] == 40
    assert cells["other"]["value"] == pytest.approx(200 / 3, abs=0.01)
    assert cells["other"]["n"] == 30 and cells["other"]["n_expected"] == 40
    assert cells["other"]["partial"] is True
    assert cells["other"]["not_scored"] == {"no_prediction": 10}
    entry = table["deltas"]["other"]["scienceqa_img"]
    assert entry["delta"] == pytest.approx(100 / 3, abs=1e-3)
    assert entry["n_common"] == 30
    assert entry["n_each"] == {"base": 40, "other": 30}
    assert entry["same_items"] is False
    # On the common ids, other is right wherever base is (10-19) and also on 20-29: no item
    # flips right -> wrong, so every resample's delta is >= 0 and the interval brackets 33.3.
    low, high = entry["ci95"]
    assert 0 <= low < 100 / 3 < high
    # The average (one benchmark) is that same paired delta, not the difference of the cells.
    assert table["deltas"]["other"]["average"]["delta"] == pytest.approx(100 / 3, abs=1e-3)


def test_reordered_identical_runs_pair_item_for_item(tmp_path):
    """The same verdicts, rows in another order: every paired resample has delta 0. Pairing by
    position would compare different items and give a wide interval."""
    right = {i for i in range(40) if i % 4 == 0}  # not symmetric under reversal
    base = _sqa_result(tmp_path / "a", right=right, predicted=range(40))
    result = {**base, "items": base["items"][::-1]}
    (tmp_path / "b").mkdir()
    atomic_write_json(tmp_path / "b" / "scienceqa_img.json", result)
    table = compare([load_run(str(tmp_path / "a")), load_run(str(tmp_path / "b"))], resamples=200)
    assert table["deltas"]["b"]["scienceqa_img"]["ci95"] == [0.0, 0.0]
    assert table["deltas"]["b"]["scienceqa_img"]["same_items"] is True


def test_markdown_shows_n_marks_partial_and_differing_items(tmp_path, capsys):
    _sqa_result(tmp_path / "base", right=set(range(20)), predicted=range(40))
    _sqa_result(tmp_path / "other", right=set(range(10, 30)), predicted=range(10, 40))
    out = tmp_path / "t" / "t.md"
    argv = [str(tmp_path / "base"), str(tmp_path / "other"), "--out", str(out), "--resamples", "20"]
    assert main(argv) == 0
    row = next(line for line in out.read_text().splitlines() if line.startswith("| scienceqa"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "50.0 (n=40)"
    assert cells[2] == "66.7 (n=30/40)*"
    assert cells[3].startswith("+33.3 [") and cells[3].endswith("(n 30 common / 40 base, 30 other)")
    assert "* partial" in out.read_text()


def _write(path, document) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))
    return str(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.pop("n"), "records no n (items scored)"),
        (lambda r: r.update(n=0), "nothing scored (n = 0)"),
        (lambda r: r["metrics"].update(accuracy=None), "its accuracy is None, not a number"),
    ],
    ids=["no-n", "n-zero", "metric-none"],
)
def test_result_with_no_number_refused_in_one_line(tmp_path, capsys, change, message):
    good = _sqa_result(tmp_path / "base", right={1}, predicted=range(40))
    bad = json.loads(json.dumps(good))
    change(bad)
    other = _write(tmp_path / "bad" / "scienceqa_img.json", bad)
    out = tmp_path / "t.md"
    assert main([str(tmp_path / "base"), other, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "bad" in err
    assert not out.exists()


def test_different_data_refused_unless_allowed(tmp_path, capsys):
    _sqa_result(tmp_path / "base", right=set(range(20)), predicted=range(40))
    _sqa_result(tmp_path / "other", right=set(range(20)), predicted=range(40), question="Q?")
    hashes = {
        read_json(tmp_path / r / "scienceqa_img.json")["data_hash"] for r in ("base", "other")
    }
    assert len(hashes) == 2
    argv = [str(tmp_path / "base"), str(tmp_path / "other"), "--out", str(tmp_path / "t.md")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "scienceqa_img: the runs were scored on different data" in err
    assert "--allow-different-data" in err and not (tmp_path / "t.md").exists()
    assert main([*argv, "--allow-different-data", "--resamples", "10"]) == 0
    table = read_json(tmp_path / "t.json")
    assert table["allow_different_data"] is True
    assert table["deltas"]["other"]["scienceqa_img"]["delta"] == 0.0
    # a result that records no data hash cannot be shown to be on the same data
    result = read_json(tmp_path / "other" / "scienceqa_img.json")
    del result["data_hash"]
    with pytest.raises(CompareError, match="other: not recorded"):
        compare([load_run(str(tmp_path / "base")), ("other", {"scienceqa_img": result})])


def _llava_result(reference: list[float], model: list[float]) -> dict:
    """A LLaVA-Bench result whose rows have the given judge scores (as a legacy result with a
    reference score of 0 could hold): some resamples have a relative score that is undefined."""
    rows = [
        {"id": str(i), "reference_score": r, "model_score": m, "score": m / 10, "categories": {}}
        for i, (r, m) in enumerate(zip(reference, model, strict=True))
    ]
    return {
        "benchmark": "llava_bench_wild",
        "n": len(rows),
        "n_expected": len(rows),
        "partial": False,
        "data_hash": "h",
        "metrics": {"relative_score": 50.0},
        "items": rows,
    }


def test_undefined_resamples_do_not_crash_and_are_counted():
    base = _llava_result([0.0, 0.0, 10.0], [1.0, 2.0, 5.0])
    other = _llava_result([0.0, 0.0, 10.0], [3.0, 2.0, 6.0])
    table = compare([("a", {"llava_bench_wild": base}), ("b", {"llava_bench_wild": other})], 200)
    entry = table["deltas"]["b"]["llava_bench_wild"]
    # relative = round(model mean, 3) / round(reference mean, 3) * 100, rounded to 0.1:
    # base 2.667 / 3.333 -> 80.0, other 3.667 / 3.333 -> 110.0
    assert entry["delta"] == pytest.approx(30.0)
    assert 0 < entry["undefined_draws"] < 200  # resamples of only the two reference-0 items
    assert all(math.isfinite(x) for x in entry["ci95"])
    json.dumps(table, allow_nan=False)


def test_items_whose_judge_failed_in_either_run_are_left_out_of_the_delta():
    """Item 3's judge failed in b (LLaVA's (-1, -1) pair): the delta is over items 0-2 only."""
    base = _llava_result([8.0, 8.0, 8.0, 8.0], [4.0, 4.0, 4.0, 8.0])
    other = _llava_result([8.0, 8.0, 8.0, -1.0], [8.0, 8.0, 8.0, -1.0])
    failed = other["items"][3]
    failed.update(score=None, judge_failed="unparseable")
    other["n"] = 3
    table = compare([("a", {"llava_bench_wild": base}), ("b", {"llava_bench_wild": other})], 50)
    entry = table["deltas"]["b"]["llava_bench_wild"]
    assert entry["n_common"] == 3 and entry["n_each"] == {"a": 4, "b": 3}
    assert entry["same_items"] is False
    # items 0-2: base 4/8 -> 50.0, other 8/8 -> 100.0
    assert entry["delta"] == pytest.approx(50.0)
    # MM-Vet scores a failed judge 0.0 (officially) but it is no verdict: left out as well
    rows = [{"id": str(i), "score": s, "categories": {}} for i, s in enumerate([0.5, 0.5, 0.5, 1])]
    mmvet = {**base, "benchmark": "mmvet", "metrics": {"score": 62.5}, "items": rows}
    failed = [{**row, "score": 1.0} for row in rows[:3]]
    failed.append({"id": "3", "score": 0.0, "judge_failed": "unparseable", "categories": {}})
    other = {**mmvet, "metrics": {"score": 75.0}, "items": failed}
    table = compare([("a", {"mmvet": mmvet}), ("b", {"mmvet": other})], 50)
    entry = table["deltas"]["b"]["mmvet"]
    assert entry["n_common"] == 3 and entry["delta"] == pytest.approx(50.0)


def _mathvista_result(tmp_path, headline: str | None) -> dict:
    from stic.data.benchmarks import read_benchmark

    items = read_benchmark(
        "mathvista_testmini", test_benchmarks_mathvista_testmini._original(tmp_path)
    )
    result = score_predictions("mathvista_testmini", items, {i.id: "A" for i in items})
    if headline is not None:
        result["headline"] = {"accuracy": headline}
    return result


def test_mathvista_row_names_the_procedure_and_mixed_procedures_refused(tmp_path):
    rules = _mathvista_result(tmp_path / "r", None)
    label = rules["headline"]["accuracy"]
    assert label.startswith("rules only")
    runs = [("a", {"mathvista_testmini": rules}), ("b", {"mathvista_testmini": rules})]
    table = compare(runs, resamples=10)
    assert table["metric_label"]["mathvista_testmini"] == label
    from stic.tools.compare import to_markdown

    assert f"| mathvista_testmini (accuracy: {label}) |" in to_markdown(table)
    official = _mathvista_result(tmp_path / "o", "official: MathVista extract_answer")
    with pytest.raises(CompareError, match="accuracy is a different procedure"):
        compare([("a", {"mathvista_testmini": rules}), ("b", {"mathvista_testmini": official})])


def _with_weights(result: dict, adapter: str | None, identity: str | None, dar=False) -> dict:
    return {**result, "model": "m", "adapter": adapter, "adapter_identity": identity, "dar": dar}


def test_weights_listed_and_same_weights_flagged(tmp_path):
    from stic.tools.compare import to_markdown

    result = _sqa_result(tmp_path / "x", right={1, 2}, predicted=range(40))
    base = _with_weights(result, None, None)
    runs = [
        ("base", {"scienceqa_img": base}),
        ("again", {"scienceqa_img": _with_weights(result, None, None)}),
        ("dar", {"scienceqa_img": _with_weights(result, None, None, dar=True)}),
        ("stic", {"scienceqa_img": _with_weights(result, "run/dpo", "stic:1")}),
    ]
    table = compare(runs, resamples=10)
    assert table["deltas"]["again"]["scienceqa_img"]["same_weights"] is True
    assert "same_weights" not in table["deltas"]["dar"]["scienceqa_img"]
    assert "same_weights" not in table["deltas"]["stic"]["scienceqa_img"]
    assert table["weights"]["stic"]["scienceqa_img"]["adapter"] == "run/dpo"
    markdown = to_markdown(table)
    assert "- base: model m, adapter none (base model)" in markdown
    assert "- stic: model m, adapter run/dpo" in markdown
    assert "(same weights!)" in markdown and "again vs base on scienceqa_img" in markdown
    # the same adapter path holding other weights (retrained) is not the same weights
    a = _with_weights(result, "run/dpo", "stic:1")
    b = _with_weights(result, "run/dpo", "stic:2")
    table = compare([("a", {"scienceqa_img": a}), ("b", {"scienceqa_img": b})], resamples=10)
    assert "same_weights" not in table["deltas"]["b"]["scienceqa_img"]


def _mmbench_result(scores: dict[str, list[float]]) -> dict:
    """MMBench rows: question ``g`` has rotations ids g, 1000000 + g, ... with these scores."""
    rows = [
        {
            "id": str(k * 1_000_000 + int(group)),
            "group": group,
            "rotations": 2,
            "extracted": "A",
            "score": score,
            "categories": {},
        }
        for group, by_rotation in scores.items()
        for k, score in enumerate(by_rotation)
    ]
    return {
        "benchmark": "mmbench_en_dev",
        "n": len(rows),
        "data_hash": "h",
        "items": rows,
        "metrics": {"circular": 0.0},
    }


def test_mmbench_question_short_of_a_rotation_is_not_a_common_unit():
    """Question 3 lost a rotation in b: it is not circular-scored there, so the delta is over
    questions 0-2, each resampled with all its rotations."""
    base = _mmbench_result({"0": [1, 0], "1": [1, 0], "2": [1, 1], "3": [1, 1]})
    other = _mmbench_result({"0": [1, 1], "1": [1, 1], "2": [1, 1], "3": [0]})
    table = compare([("a", {"mmbench_en_dev": base}), ("b", {"mmbench_en_dev": other})], 50)
    entry = table["deltas"]["b"]["mmbench_en_dev"]
    assert entry["n_common"] == 3 and entry["n_each"] == {"a": 4, "b": 3}
    # circular over questions 0-2: base 1/3, other 3/3
    assert entry["delta"] == pytest.approx(200 / 3, abs=0.01)


def test_a_question_drawn_twice_counts_twice_in_a_resample():
    """MMBench scores a question by its rotations: a question drawn twice by the bootstrap must
    stay two complete questions, not one question with four rotations (left out as incomplete)."""
    from stic.tools.compare import _metric, _resampled, scored_units

    units = scored_units(_mmbench_result({"0": [1, 1], "1": [1, 0]}))
    assert _metric("mmbench_en_dev", _resampled(units, ["0", "0", "1"])) == pytest.approx(
        200 / 3, abs=1e-3
    )
    assert _metric("mmbench_en_dev", _resampled(units, ["1", "1", "0"])) == pytest.approx(
        100 / 3, abs=1e-3
    )


def test_runs_without_a_common_item_have_no_delta_and_no_interval(tmp_path):
    from stic.tools.compare import paired_bootstrap

    _sqa_result(tmp_path / "base", right=set(range(20)), predicted=range(20))
    _sqa_result(tmp_path / "other", right=set(range(40)), predicted=range(20, 40))
    base, other = load_run(str(tmp_path / "base")), load_run(str(tmp_path / "other"))
    table = compare([base, other], resamples=20)
    assert table["deltas"]["other"]["scienceqa_img"] == {
        "delta": None,
        "n_common": 0,
        "n_each": {"base": 20, "other": 20},
        "same_items": False,
    }
    assert table["deltas"]["other"]["average"] == {"delta": None}
    draws, n = paired_bootstrap(
        "scienceqa_img", base[1]["scienceqa_img"], other[1]["scienceqa_img"], 20, 0
    )
    assert n == 0 and draws.shape == (0,)


def test_a_flip_of_the_first_item_shows_in_the_interval(tmp_path):
    """Only item "0" (the first in sorted order) differs: every unit can be drawn, so some
    resamples hold it and the interval is not [0, 0]."""
    _sqa_result(tmp_path / "base", right=set(range(1, 4)), predicted=range(4))
    _sqa_result(tmp_path / "other", right=set(range(4)), predicted=range(4))
    table = compare([load_run(str(tmp_path / "base")), load_run(str(tmp_path / "other"))], 200)
    entry = table["deltas"]["other"]["scienceqa_img"]
    assert entry["delta"] == 25.0 and entry["ci95"][1] > 0


def test_a_resample_undefined_for_one_run_only_is_counted_not_a_crash():
    """LLaVA-Bench's references are judged per run: the base's are 0 on items 0-1, the other's
    are not, so resamples of items 0-1 only are undefined for the base alone."""
    base = _llava_result([0.0, 0.0, 10.0], [1.0, 2.0, 5.0])
    other = _llava_result([5.0, 5.0, 10.0], [3.0, 2.0, 6.0])
    table = compare([("a", {"llava_bench_wild": base}), ("b", {"llava_bench_wild": other})], 200)
    entry = table["deltas"]["b"]["llava_bench_wild"]
    assert 0 < entry["undefined_draws"] < 200


def test_an_undefined_delta_is_shown_as_undefined():
    """References all 0 in the base: its relative score is undefined, so is the delta."""
    base = _llava_result([0.0, 0.0], [1.0, 2.0])
    other = _llava_result([5.0, 5.0], [3.0, 2.0])
    table = compare([("a", {"llava_bench_wild": base}), ("b", {"llava_bench_wild": other})], 20)
    entry = table["deltas"]["b"]["llava_bench_wild"]
    assert entry["delta"] is None and entry["undefined_draws"] == 20 and "ci95" not in entry
    assert table["deltas"]["b"]["average"] == {"delta": None}


def test_the_delta_is_the_difference_of_the_metrics_as_the_benchmark_rounds_them(tmp_path):
    """66.6667 - 33.3333 (each rounded to 4 places by the scorer), not 33.3333."""
    _sqa_result(tmp_path / "base", right=set(range(20)), predicted=range(40))
    _sqa_result(tmp_path / "other", right=set(range(10, 30)), predicted=range(10, 40))
    table = compare([load_run(str(tmp_path / "base")), load_run(str(tmp_path / "other"))], 10)
    assert table["deltas"]["other"]["scienceqa_img"]["delta"] == 33.3334
