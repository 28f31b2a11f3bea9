"""stic's LLaVA-Bench verdicts against LLaVA's own parse_score and summarize_gpt_review.

The fixture (tests/data/official_verdicts/llava_bench_wild.json: 42 judge replies written for
this test) was recorded by running haotian-liu/LLaVA@c121f04 llava/eval/eval_gpt_review_bench.py
with a scripted judge, then llava/eval/summarize_gpt_review.py on its review file: on the
official tuples, on the tuples after stic's range check, and on the parseable replies alone.
"""

from __future__ import annotations

import json
import math

import pytest

from stic.data.benchmarks import BenchItem, ImageRef, score_predictions
from tests.data.official_verdicts import Replay, load

FIXTURE = load("llava_bench_wild")
CASES = FIXTURE["items"]
CATEGORY = {"all": None, "llava_bench_conv": "conv", "llava_bench_detail": "detail",
            "llava_bench_complex": "complex"}  # fmt: skip


def _marker(case: dict) -> str:
    return f"{case['question_id']:03d}"


def _expected(case: dict) -> list[float]:
    """The official pair, or (-1, -1) where stic's range check refuses it (issue 21 item 4)."""
    pair = [float(x) for x in case["official_tuple"]]
    return pair if all(math.isfinite(x) and 1 <= x <= 10 for x in pair) else [-1.0, -1.0]


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    items = [
        BenchItem(
            id=str(c["question_id"]),
            image=ImageRef(path="unused.png"),
            question=f"Question [qid={_marker(c)}]",
            answers=("reference",),
            categories={"category": (c["category"],)},
            meta={"caption": "a caption"},
        )
        for c in CASES
    ]
    with Replay(r"\[qid=(\d+)\]", {_marker(c): [c["reply"]] for c in CASES}) as judge:
        result = score_predictions(
            "llava_bench_wild",
            items,
            {str(c["question_id"]): "model answer" for c in CASES},
            judge=judge.client(tmp_path_factory.mktemp("llava")),
        )
    return result, judge.calls


def test_fixture_covers_the_messy_replies():
    replies = {c["reply"] for c in CASES}
    assert {"8 7", "8, 7", "8\n\n7", "nan nan", "11 -3", "inf 5", "Score: 8/10 and 6/10"} <= replies
    assert len(CASES) == 42


@pytest.mark.parametrize("case", CASES, ids=[repr(c["reply"])[:30] for c in CASES])
def test_pair_equals_official_after_range_check(scored, case):
    result, calls = scored
    row = {r["id"]: r for r in result["items"]}[str(case["question_id"])]
    assert [row["reference_score"], row["model_score"]] == _expected(case)
    assert ("judge_failed" in row) == (_expected(case) == [-1.0, -1.0])
    assert len(calls[_marker(case)]) == 1  # LLaVA's script never asks again


def test_summary_equals_official_summary_of_checked_tuples(scored):
    result, _ = scored
    for name, official in FIXTURE["summary_after_range_check"].items():
        category = CATEGORY[name]
        metrics = (
            result["metrics"] if category is None else result["categories"]["category"][category]
        )
        assert metrics["relative_score"] == official["relative"]
        assert metrics["reference_score"] == official["reference_x10"]
        assert metrics["model_score"] == official["model_x10"]
    for name, official in FIXTURE["summary_judged_only"].items():
        category = CATEGORY[name]
        metrics = (
            result["metrics"] if category is None else result["categories"]["category"][category]
        )
        assert metrics["relative_score_judged_only"] == official["relative"]
    failed = sum(_expected(c) == [-1.0, -1.0] for c in CASES)
    assert result["metrics"]["judge_failed"] == failed == result["judge"]["judge_failed"]
    json.dumps(result, allow_nan=False)  # no NaN/Infinity reaches the result
