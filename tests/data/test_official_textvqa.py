"""stic's TextVQA verdicts equal those of LLaVA's m4c_evaluator (EvalAI's VQA accuracy).

The fixture (tests/data/official_verdicts/textvqa.json: 52 replies written for this test, each
with ten human answers: numbers, units, percentages, contractions, punctuation, unicode,
whitespace, markdown and refusals) was recorded outside this repository from
haotian-liu/LLaVA@c121f04: llava/eval/eval_textvqa.py run as a script on an annotation file and
a result file built from the fixture (the overall accuracy it prints), and m4c_evaluator's
TextVQAAccuracyEvaluator / EvalAIAnswerProcessor on each item (its score, the normalised reply).
The test writes the same annotation file and reads it with stic's reader.
"""

from __future__ import annotations

import json

import pytest

from stic.data.benchmarks import read_benchmark, score_predictions
from tests.data.official_verdicts import load

FIXTURE = load("textvqa")
CASES = FIXTURE["items"]


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    path = tmp_path_factory.mktemp("textvqa") / "TextVQA_0.5.1_val.json"
    data = [
        {
            "question_id": int(c["id"]),
            "question": f"what is written {n}?",
            "image_id": f"img{n:04d}",
            "answers": c["answers"],
        }
        for n, c in enumerate(CASES)
    ]
    path.write_text(json.dumps({"data": data}), encoding="utf-8")
    items = read_benchmark("textvqa", path, need_images=False)
    result = score_predictions("textvqa", items, {c["id"]: c["prediction"] for c in CASES})
    return {r["id"]: r for r in result["items"]}, result


def test_fixture_origin_and_forms():
    assert FIXTURE["origin"]["repository"] == "haotian-liu/LLaVA" and len(CASES) == 52
    replies = {c["prediction"] for c in CASES}
    assert {"im", "twas", "somebody'd", "e-mail- ?", "1,000", "50%", "caf\u00e9", ""} <= replies
    assert {round(c["official"]["score"], 9) for c in CASES} >= {0.0, 0.3, 0.6, 0.9, 1.0}


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_item_verdict_equals_official(scored, case):
    rows, _ = scored
    row = rows[case["id"]]
    assert row["extracted"] == case["official"]["normalized"]
    assert row["score"] == case["official"]["score"]


def test_accuracy_equals_official(scored):
    _, result = scored
    # eval_textvqa prints the accuracy in percent with 2 decimals.
    assert round(result["metrics"]["accuracy"], 2) == FIXTURE["aggregate"]["accuracy_percent_2dp"]
