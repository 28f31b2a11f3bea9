"""stic's MathVista verdicts equal those of MathVista's own extract_answer + calculate_score.

The fixture (tests/data/official_verdicts/mathvista_testmini.json: 69 replies to 8 problems
written for this test, with the judge replies a scripted client gave) was recorded by running
lupantech/MathVista@53d5258 evaluation/extract_answer.py (default flags) and
evaluation/calculate_score.py outside this repository.
"""

from __future__ import annotations

import json

import pytest

from stic.data.benchmarks import BenchItem, ImageRef, score_predictions
from stic.data.benchmarks.mathvista_testmini import official_extract, official_normalize
from tests.data.official_verdicts import Replay, load

FIXTURE = load("mathvista_testmini")
CASES = FIXTURE["items"]


def _item(case: dict) -> BenchItem:
    return BenchItem(
        id=case["pid"],
        image=ImageRef(path="unused.png"),
        question=case["question"],
        answers=(case["answer"],),
        choices=tuple(case["choices"]) if case["choices"] else None,
        categories={"task": ("math word problem",)},
        meta={k: case[k] for k in ("question_type", "answer_type", "unit", "precision", "query")},
    )


@pytest.fixture(scope="module")
def judged(tmp_path_factory):
    items = [_item(c) for c in CASES]
    replies = {c["pid"]: c["judge_replies"] for c in CASES}
    with Replay(r"\[pid=(\d+)\]", replies) as judge:
        result = score_predictions(
            "mathvista_testmini",
            items,
            {c["pid"]: c["response"] for c in CASES},
            judge=judge.client(tmp_path_factory.mktemp("mv")),
        )
    return {r["id"]: r for r in result["items"]}, judge.calls, result


def test_fixture_size_and_origin():
    assert len(CASES) == 69 and FIXTURE["origin"]["repository"] == "lupantech/MathVista"


@pytest.mark.parametrize("case", CASES, ids=[c["pid"] for c in CASES])
def test_item_verdict_equals_official(judged, case):
    rows, calls, _ = judged
    row, official = rows[case["pid"]], case["official"]
    assert row["extracted"] == official["extraction"]
    assert row["normalized"] == official["prediction"]
    assert row["score"] == float(official["true_false"])
    assert len(calls.get(case["pid"], [])) == official["judge_calls"]
    assert row["headline"] == "official"


def test_accuracy_equals_official(judged):
    _, _, result = judged
    assert result["metrics"]["accuracy"] == pytest.approx(FIXTURE["accuracy"], abs=5e-5)
    assert result["headline"]["accuracy"].startswith("official")
    json.dumps(result, allow_nan=False)  # inf/nan predictions leave valid JSON


RULE_CASES = [c for c in CASES if not c["official"]["judge_calls"]]


@pytest.mark.parametrize("case", RULE_CASES, ids=[c["pid"] for c in RULE_CASES])
def test_rules_alone_match_where_no_judge_is_asked(case):
    item = _item(case)
    extraction = official_extract(case["response"], item)
    assert extraction == case["official"]["extraction"]
    assert official_normalize(extraction, item) == case["official"]["prediction"]
