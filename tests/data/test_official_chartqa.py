"""stic's ChartQA verdicts equal those of the official relaxed accuracy, item for item.

The fixture (tests/data/official_verdicts/chartqa.json: 71 (prediction, answer) pairs written for
this test: terse, verbose, markdown, self-corrected and refusing replies, numbers with units,
percentages, lists, unicode, whitespace, non-finite and huge numbers) was recorded by running
EvolvingLMMs-Lab/lmms-eval@75571cf lmms_eval/tasks/chartqa/utils.py (relaxed_correctness, as
chartqa_process_results calls it) outside this repository. vis-nlp/ChartQA's own released
evaluator (Models/VL-T5/src/vqa_data.py, VQAEvaluator.evaluate_raw) compares stripped strings
exactly and has no relaxed accuracy; its verdicts are recorded beside, for reference.
"""

from __future__ import annotations

import json

import pytest

from stic.data.benchmarks import BenchItem, ImageRef, score_predictions
from stic.data.benchmarks.chartqa import relaxed_correct
from tests.data.official_verdicts import load

FIXTURE = load("chartqa")
CASES = FIXTURE["items"]


def _item(case: dict) -> BenchItem:
    kind = case["type"].removesuffix("_test")
    return BenchItem(
        id=case["id"],
        image=ImageRef(path="unused.png"),
        question="What is shown?",
        answers=(case["answer"],),
        categories={"type": (kind,)},
    )


@pytest.fixture(scope="module")
def result():
    items = [_item(c) for c in CASES]
    return score_predictions("chartqa", items, {c["id"]: c["prediction"] for c in CASES})


def test_fixture_size_and_origin():
    assert len(CASES) == 71
    assert FIXTURE["origin"]["repository"] == "EvolvingLMMs-Lab/lmms-eval"
    assert len({c["id"] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_item_verdict_equals_official(result, case):
    row = next(r for r in result["items"] if r["id"] == case["id"])
    assert row["score"] == float(case["official"]["relaxed_correct"])
    assert (
        relaxed_correct(case["prediction"], case["answer"]) is case["official"]["relaxed_correct"]
    )


def test_relaxed_accuracy_equals_official(result):
    assert result["metrics"]["relaxed_accuracy"] == pytest.approx(
        FIXTURE["relaxed_overall"], abs=5e-5
    )
    assert result["headline"]["relaxed_accuracy"].startswith("official")
    json.dumps(result, allow_nan=False)  # inf / nan / 1e999 predictions leave valid JSON


def test_stripped_metric_is_the_lenient_second_metric(result):
    # Exactly the cases whose verdict changes when both sides are stripped first.
    changed = [
        c
        for c in CASES
        if relaxed_correct(c["prediction"], c["answer"], strip=True)
        != c["official"]["relaxed_correct"]
    ]
    assert {(c["prediction"], c["answer"]) for c in changed} == {(" yes", "yes"), ("45%\n", "45%")}
    official = sum(c["official"]["relaxed_correct"] for c in CASES)
    assert result["metrics"]["relaxed_accuracy_stripped"] == pytest.approx(
        100 * (official + len(changed)) / len(CASES), abs=5e-5
    )
    assert result["metrics"]["relaxed_accuracy"] != result["metrics"]["relaxed_accuracy_stripped"]
