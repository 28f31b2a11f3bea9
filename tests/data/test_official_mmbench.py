"""stic's MMBench verdicts equal VLMEvalKit's rule-stage answer matching and circular evaluation.

The fixture (tests/data/official_verdicts/mmbench_en_dev.json: 62 replies in 18 circular groups
written for this test: the letter forms "(B)", "B.", "Answer: B", "The answer is B", "**B**",
lowercase, option text only, two letters, self-corrections, markdown, refusals, unicode,
whitespace, non-finite numbers as options) was recorded by running open-compass/VLMEvalKit@e8e78f0
vlmeval/utils/matching_util.py (can_infer) and vlmeval/dataset/utils/multiple_choice.py
(mcq_circular_eval, mcq_vanilla_eval) outside this repository with model=None, the
`exact_matching` policy: a reply the rules cannot read ("needs judge") would go to a judge
model, and without one it is wrong.
"""

from __future__ import annotations

import json

import pytest

from stic.data.benchmarks import BenchItem, ImageRef, score_predictions
from stic.data.benchmarks.mmbench_en_dev import extract_letter
from tests.data.official_verdicts import load

FIXTURE = load("mmbench_en_dev")
CASES = FIXTURE["items"]
GROUPS = {g["group"]: g for g in FIXTURE["groups"]}


def _item(case: dict) -> BenchItem:
    rotations = sum(1 for c in CASES if c["group"] == case["group"])
    return BenchItem(
        id=str(case["index"]),
        image=ImageRef(path="unused.png"),
        question=case["question"],
        answers=(case["answer"],),
        choices=tuple(case["options"]),
        categories={"category": ("c",)},
        group=str(case["group"]),
        meta={"rotations": rotations},
    )


@pytest.fixture(scope="module")
def result():
    items = [_item(c) for c in CASES]
    return score_predictions(
        "mmbench_en_dev", items, {str(c["index"]): c["prediction"] for c in CASES}
    )


def test_fixture_size_and_origin():
    assert len(CASES) == 62 and len(GROUPS) == 18
    assert FIXTURE["origin"]["repository"] == "open-compass/VLMEvalKit"


@pytest.mark.parametrize("case", CASES, ids=[str(c["index"]) for c in CASES])
def test_item_match_equals_official(result, case):
    official = case["official"]["match"]
    expected = None if official == "needs judge" else official
    assert extract_letter(case["prediction"], case["options"]) == expected
    row = next(r for r in result["items"] if r["id"] == str(case["index"]))
    assert row["extracted"] == expected and row["needs_judge"] is (expected is None)
    # VLMEvalKit's vanilla evaluation without a judge: an unread reply is 'Z', wrong
    assert row["score"] == float(case["official"]["vanilla_hit"])


def test_circular_score_equals_official(result):
    assert result["metrics"]["circular"] == pytest.approx(FIXTURE["circular"], abs=5e-5)
    assert result["metrics"]["n_circular"] == len(GROUPS)
    # the groups VLMEvalKit's prefetch could not decide, and would give to its judge
    assert result["metrics"]["n_needs_judge"] == sum(g["needs_judge"] for g in GROUPS.values())
    first = [c for c in CASES if c["index"] < 1_000_000]
    assert result["metrics"]["single_pass"] == pytest.approx(
        100 * sum(c["official"]["vanilla_hit"] for c in first) / len(first), abs=5e-5
    )
    assert result["headline"]["circular"].startswith("official rules, no judge")
    json.dumps(result, allow_nan=False)


@pytest.mark.parametrize("group", sorted(GROUPS), ids=str)
def test_group_verdict_equals_official(result, group):
    rows = [r for r in result["items"] if r["group"] == str(group)]
    assert all(r["score"] == 1.0 for r in rows) is bool(GROUPS[group]["hit"])


def test_lenient_metric_reads_only_what_the_rules_leave_unread(result):
    rows = result["items"]
    assert all(r["extracted_lenient"] == r["extracted"] for r in rows if r["extracted"])
    read_more = {r["prediction"] for r in rows if r["extracted"] is None and r["extracted_lenient"]}
    assert read_more >= {"b", "d", "c", "a"}  # lowercase lone letters
    assert result["metrics"]["circular_lenient"] > result["metrics"]["circular"]
