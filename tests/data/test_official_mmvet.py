"""stic's MM-Vet verdicts against MM-Vet's own evaluator (reply parsing, re-asks, aggregation).

The fixture (tests/data/official_verdicts/mmvet.json: 44 judge-reply sequences written for this
test) was recorded by running yuweihao/MM-Vet@acde843 mm-vet_evaluator.py with a scripted
OpenAI client returning each item's replies in order; its aggregate is the evaluator's
export_result on those grades with the non-finite scores (which it keeps) set to stic's 0.0.
"""

from __future__ import annotations

import json
import math

import pytest

from stic.data.benchmarks import BenchItem, ImageRef, score_predictions
from tests.data.official_verdicts import Replay, load

FIXTURE = load("mmvet")
CASES = FIXTURE["items"]


def _marker(case: dict) -> str:
    return case["question"].split("[qid=")[1].split("]")[0]


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    items = [
        BenchItem(
            id=c["id"],
            image=ImageRef(path="unused.png"),
            question=c["question"],
            answers=(c["answer"],),
            categories={"capability": tuple(c["capability"])},
        )
        for c in CASES
    ]
    with Replay(r"\[qid=(\d+)\]", {_marker(c): c["judge_replies"] for c in CASES}) as judge:
        result = score_predictions(
            "mmvet",
            items,
            {c["id"]: c["prediction"] for c in CASES},
            judge=judge.client(tmp_path_factory.mktemp("mmvet")),
        )
    return {r["id"]: r for r in result["items"]}, judge.calls, result


def _finite(case: dict) -> bool:
    return isinstance(case["official"]["score"], float | int)


def test_fixture_covers_the_messy_replies():
    firsts = {c["judge_replies"][0] for c in CASES}
    assert {"0.5 because the prediction names one of two", "1.2", "-0.1", ".7"} <= firsts
    assert {"Correctness: 0.6", "nan", "inf"} <= firsts and len(CASES) == 44


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_item_verdict_equals_official(scored, case):
    rows, calls, _ = scored
    row, official, asked = rows[case["id"]], case["official"], calls[_marker(case)]
    if _finite(case):
        assert row["score"] == official["score"]
        # The evaluator asks a 6th time after five refused replies and never reads it.
        assert asked == official["temperatures"][:5]
        assert ("judge_failed" in row) == (official["judge_calls"] == 6)
    else:
        # "nan": kept by the evaluator; refused by stic, re-asked, then 0.0 like any failure.
        assert math.isnan(float(official["score"]))
        assert row["score"] == 0.0 and "judge_failed" in row
        assert asked == [0.0, 0.0, 0.5, 1.0, 1.5]


def test_aggregate_equals_official(scored):
    _, _, result = scored
    official = FIXTURE["aggregate_after_finite_check"]
    assert result["metrics"]["score"] == official["total"]
    for capability, value in official.items():
        if capability != "total":
            assert result["categories"]["capability"][capability]["score"] == value
    failed = [c for c in CASES if not _finite(c) or c["official"]["judge_calls"] == 6]
    assert result["metrics"]["judge_failed"] == len(failed)
    kept = [c["official"]["score"] for c in CASES if c not in failed]
    assert result["metrics"]["score_judged_only"] == round(sum(kept) / len(kept) * 1000) / 10
    json.dumps(result, allow_nan=False)


def test_reasks_carry_the_digit_instruction(scored, tmp_path):
    case = next(c for c in CASES if c["judge_replies"][0] == "1.2")
    with Replay(r"\[qid=(\d+)\]", {_marker(case): case["judge_replies"]}) as judge:
        score_predictions(
            "mmvet",
            [BenchItem(id="x", image=ImageRef(path="u.png"), question=case["question"],
                       answers=("blue",), categories={"capability": ("rec",)})],
            {"x": "p"},
            judge=judge.client(tmp_path),
        )  # fmt: skip
        users = [r["messages"][-1]["content"] for r in judge.server.requests]
        roles = [[m["role"] for m in r["messages"]] for r in judge.server.requests]
    assert len(users) == 2 and users[1].startswith(users[0]) and users[1] != users[0]
    assert roles == [["user"], ["user"]]  # no system message, as the evaluator sends none
    assert {r["max_tokens"] for r in judge.server.requests} == {3}
