"""stic's POPE verdicts and metrics equal those of LLaVA's eval_pope.py.

The fixture (tests/data/official_verdicts/pope.json: 48 replies written for this test: plain,
capitalised, sentence, markdown, whitespace-padded, self-correcting and refusing forms) was
recorded outside this repository from haotian-liu/LLaVA@c121f04 llava/eval/eval_pope.py: run
as a script on one annotation file (its metrics), and its eval_pope() imported and called on
the same answers (each reply's yes/no reading). The test writes the same annotation file and
reads it with stic's reader.
"""

from __future__ import annotations

import json

import pytest

from stic.data.benchmarks import read_benchmark, score_predictions
from tests.data.official_verdicts import load

FIXTURE = load("pope")
CASES = FIXTURE["items"]


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    path = tmp_path_factory.mktemp("pope") / "coco_pope_random.json"
    lines = [
        {
            "question_id": int(c["id"]),
            "image": c["image"],
            "text": c["question"],
            "label": c["label"],
        }
        for c in CASES
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    items = read_benchmark("pope_random", path, need_images=False)
    result = score_predictions("pope_random", items, {c["id"]: c["prediction"] for c in CASES})
    return {r["id"]: r for r in result["items"]}, result


def test_fixture_origin_and_forms():
    assert FIXTURE["origin"]["repository"] == "haotian-liu/LLaVA" and len(CASES) == 48
    assert {"No\n", "\nNo", "**No**", "NO", "No. Wait, yes."} <= {c["prediction"] for c in CASES}


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_item_reading_equals_official(scored, case):
    rows, _ = scored
    row = rows[case["id"]]
    assert row["extracted"] == case["official"]["read_as"]
    assert row["score"] == float(case["official"]["read_as"] == case["label"])


@pytest.mark.parametrize("metric", ["accuracy", "precision", "recall", "f1", "yes_ratio"])
def test_metrics_equal_official(scored, metric):
    _, result = scored
    # stic reports percent rounded to 4 decimals; the script prints the fraction in full.
    assert result["metrics"][metric] == pytest.approx(100 * FIXTURE["aggregate"][metric], abs=5e-5)
