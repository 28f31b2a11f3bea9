"""stic's ScienceQA-IMG verdicts equal those of LLaVA's eval_science_qa.py, item for item.

The fixture (tests/data/official_verdicts/scienceqa_img.json: 49 replies written for this test,
in the forms chatty, terse, markdown, self-correcting and refusing models give, to questions of
2 to 5 options) was recorded by running haotian-liu/LLaVA@c121f04 llava/eval/eval_science_qa.py
as a script outside this repository, on a problems.json / pid_splits.json / result file built
from the fixture. The test writes the same problems.json and reads it with stic's reader.
"""

from __future__ import annotations

import json

import pytest

from stic.data.benchmarks import read_benchmark, score_predictions
from tests.data.official_verdicts import load

FIXTURE = load("scienceqa_img")
CASES = FIXTURE["items"]


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    root = tmp_path_factory.mktemp("sqa")
    problems = {
        c["id"]: {
            "question": f"Question {c['id']}?",
            "choices": c["choices"],
            "answer": c["answer"],
            "hint": "",
            "image": "image.png",
            "split": "test",
            "subject": c["subject"],
        }
        for c in CASES
    }
    (root / "problems.json").write_text(json.dumps(problems), encoding="utf-8")
    (root / "pid_splits.json").write_text(json.dumps({"test": list(problems)}), encoding="utf-8")
    # Scoring reads no pixel: the images folder does not exist.
    items = read_benchmark("scienceqa_img", root, need_images=False)
    result = score_predictions("scienceqa_img", items, {c["id"]: c["prediction"] for c in CASES})
    return {r["id"]: r for r in result["items"]}, result


def test_fixture_origin_and_forms():
    assert FIXTURE["origin"]["repository"] == "haotian-liu/LLaVA" and len(CASES) == 49
    replies = {c["prediction"] for c in CASES}
    assert {" A", "A\n", "**A**", "The answer is A. Wait, the answer is B.", ""} <= replies


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_item_verdict_equals_official(scored, case):
    rows, _ = scored
    row, official = rows[case["id"]], case["official"]
    assert row["score"] == float(official["correct"])
    # The official letter counts only when it names one of the question's options.
    assert row["extracted"] == (official["parsed_ans"] if official["pred_idx"] >= 0 else None)


def test_accuracy_equals_official(scored):
    _, result = scored
    official = FIXTURE["aggregate"]
    assert result["n"] == official["count"] == len(CASES)
    assert result["metrics"]["accuracy"] == round(official["accuracy"], 4)
