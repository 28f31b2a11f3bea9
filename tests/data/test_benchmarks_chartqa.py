"""ChartQA: both formats and relaxed accuracy at the 5% edge, with percentages."""

from __future__ import annotations

import json

import pytest

from stic.data.benchmarks import BenchmarkDataError, read_benchmark, score_predictions
from stic.data.benchmarks.chartqa import relaxed_correct
from tests.data.bench_fixtures import (
    png_bytes,
    write_hub_parquet,
    write_json,
    write_jsonl,
    write_png,
)


@pytest.mark.parametrize(
    "prediction, answer, right",
    [
        ("104.9", "100", True),  # 4.9% off
        ("105.1", "100", False),  # 5.1% off
        ("95.1", "100", True),
        ("94.9", "100", False),
        ("0.46", "45%", True),  # 45% is 0.45; |0.46 - 0.45| / 0.45 = 2.2%
        ("46%", "45%", True),  # 0.46 vs 0.45
        ("45", "45%", False),  # 45 vs 0.45: no unit magic beyond the % sign
        ("0", "0", True),  # target 0: exact match only
        ("0.0", "0", False),
        ("Yes", "yes", True),  # text: case-insensitive exact match
        ("yes.", "yes", False),
        (" 12 ", "12", True),  # float() reads the spaces
        (" yes", "yes", False),  # text is compared unstripped, as officially
        ("45%%", "45%", True),  # every trailing % sign is dropped before float()
        ("nan", "nan", False),  # non-finite numbers are never within 5%, and never raise
        ("inf", "inf", False),
        ("1e999", "100", False),
        ("0.428", "45%", True),  # 45% is 45 / 100: 4.9% off
        ("0.427", "45%", False),  # 5.1% off
        ("5X%", "0.05", False),  # only % signs are dropped: float("5X") fails, text differs
    ],
)
def test_relaxed_accuracy_rule(prediction, answer, right):
    assert relaxed_correct(prediction, answer) is right


def _original(tmp_path):
    test = tmp_path / "ChartQA Dataset" / "test"
    write_json(
        test / "test_human.json",
        [
            {"imgname": "a.png", "query": "What is the peak?", "label": "100"},
            {"imgname": "b.png", "query": "Which year?", "label": "2019"},
        ],
    )
    write_json(
        test / "test_augmented.json",
        [
            {"imgname": "c.png", "query": "What share?", "label": "45%"},
        ],
    )
    for n, name in enumerate(("a.png", "b.png", "c.png")):
        write_png(test / "png" / name, n)
    return tmp_path / "ChartQA Dataset"


def test_original_format_human_and_augmented(tmp_path):
    items = read_benchmark("chartqa", _original(tmp_path))
    assert [i.id for i in items] == ["human_0", "human_1", "augmented_0"]
    predictions = {"human_0": "104.9", "human_1": "2020", "augmented_0": "0.44"}
    result = score_predictions("chartqa", items, predictions)
    # human: 104.9 is 4.9% off and 2020 is 0.05% off 2019 (a number, so relaxed): 2 of 2;
    # augmented: 0.44 vs 0.45 is 2.2% off
    assert result["metrics"] == {
        "relaxed_accuracy": 100.0,
        "human": 100.0,
        "augmented": 100.0,
        "relaxed_accuracy_stripped": 100.0,
    }
    result = score_predictions(
        "chartqa", items, {"human_0": "105.1", "human_1": "2019", "augmented_0": "44"}
    )
    # human: 105.1 wrong, 2019 right -> 50; augmented: 44 vs 0.45 wrong -> 0; overall 1/3
    assert result["metrics"]["human"] == 50.0 and result["metrics"]["augmented"] == 0.0
    assert result["metrics"]["relaxed_accuracy"] == pytest.approx(33.3333)


def test_missing_augmented_file_named(tmp_path):
    root = _original(tmp_path)
    (root / "test" / "test_augmented.json").unlink()
    with pytest.raises(BenchmarkDataError, match="lacks test_augmented.json"):
        read_benchmark("chartqa", root)


def test_hub_parquet(tmp_path):
    rows = [
        {
            "type": "human_test",
            "question": "What is the peak?",
            "answer": "100",
            "image": png_bytes(0),
        },
        {
            "type": "augmented_test",
            "question": "What share?",
            "answer": "45%",
            "image": png_bytes(1),
        },
        {"type": "human_test", "question": "Which year?", "answer": "2019", "image": png_bytes(2)},
    ]
    write_hub_parquet(tmp_path / "ChartQA" / "data" / "test-00000-of-00001.parquet", rows)
    items = read_benchmark("chartqa", tmp_path / "ChartQA")
    assert [i.id for i in items] == ["human_0", "augmented_0", "human_1"]
    result = score_predictions(
        "chartqa", items, {"human_0": "100", "augmented_0": "45%", "human_1": "x"}
    )
    assert result["metrics"]["human"] == 50.0 and result["metrics"]["augmented"] == 100.0


def _hub_row(**overrides):
    row = {"type": "human_test", "question": "Q?", "answer": "1", "image": png_bytes(0)}
    return {**row, **overrides}


@pytest.mark.parametrize(
    "row, problem",
    [
        (_hub_row(type="validation"), "record #0: type 'validation' is not human_test"),
        (_hub_row(type=3), "record #0: 'type' is int"),
        (_hub_row(question=None), "record #0: 'question' is NoneType"),
        (_hub_row(answer=7.5), "record #0: 'answer' is float"),
        (_hub_row(image=None), "record #0: has no image"),
    ],
)
def test_hub_malformed_record_named(tmp_path, row, problem):
    path = tmp_path / "test-00000-of-00001.parquet"
    write_hub_parquet(path, [row])
    with pytest.raises(BenchmarkDataError, match=problem.replace("(", r"\(")) as e:
        read_benchmark("chartqa", path)
    assert str(e.value).startswith(f"chartqa: {path}: record #0: ")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "content, problem",
    [
        ("[{", "not valid JSON"),
        ("{}", "is a JSON dict, not a list of questions"),
        ("[]", "holds no records"),
        (json.dumps([["a.png", "Q?", "1"]]), "record #0: is list, not a JSON object"),
        (json.dumps([{"imgname": "a.png", "query": "Q?"}]), "record #0: lacks 'label'"),
        (
            json.dumps([{"imgname": "a.png", "query": "Q?", "label": 3}]),
            "'label' is int '3', not a string",
        ),
        (json.dumps([{"imgname": "a.png", "query": ["Q?"], "label": "3"}]), "'query' is list"),
        (json.dumps([{"imgname": None, "query": "Q?", "label": "3"}]), "'imgname' is NoneType"),
        (json.dumps([{"imgname": " ", "query": "Q?", "label": "3"}]), "'imgname' is empty"),
    ],
)
def test_original_malformed_file_named(tmp_path, content, problem):
    root = _original(tmp_path)
    path = root / "test" / "test_augmented.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(BenchmarkDataError, match=problem) as e:
        read_benchmark("chartqa", root)
    assert str(e.value).startswith(f"chartqa: {path}")
    assert "\n" not in str(e.value)


def test_non_finite_answers_and_predictions_score_and_stay_json(tmp_path):
    rows = [_hub_row(answer=a) for a in ("nan", "inf", "1e999", "100", "1" * 400)]
    write_hub_parquet(tmp_path / "test-00000-of-00001.parquet", rows)
    items = read_benchmark("chartqa", tmp_path / "test-00000-of-00001.parquet")
    predictions = dict(
        zip([i.id for i in items], ["nan", "inf", "1e999", "-1e999", "1" * 400], strict=True)
    )
    result = score_predictions("chartqa", items, predictions)
    assert [r["score"] for r in result["items"]] == [0.0] * 5
    json.dumps(result, allow_nan=False)


def test_bench_score_non_finite_replies_write_valid_json(tmp_path):
    from stic.tools.bench_score import main

    root = _original(tmp_path)
    predictions = write_jsonl(
        tmp_path / "pred.jsonl",
        [
            {"id": "human_0", "prediction": "nan"},
            {"id": "human_1", "prediction": "1e999"},
            {"id": "augmented_0", "prediction": "-inf%"},
        ],
    )
    out = tmp_path / "out" / "chartqa.json"
    args = ["--benchmark", "chartqa", "--data", str(root), "--predictions", str(predictions)]
    assert main([*args, "--out", str(out)]) == 0
    result = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert result["metrics"]["relaxed_accuracy"] == 0.0 and result["n"] == 3


def test_a_kind_without_questions_scores_zero_and_the_headline_names_the_procedure(tmp_path):
    items = read_benchmark("chartqa", _original(tmp_path))
    result = score_predictions("chartqa", items, {"human_0": "104.9"})  # human ones only
    assert result["metrics"]["human"] == 100.0 and result["metrics"]["augmented"] == 0.0
    assert result["headline"] == {
        "relaxed_accuracy": "official: lmms-eval relaxed_correctness on the unstripped reply",
        "relaxed_accuracy_stripped": "stic: the same rule on stripped reply and answer",
    }


def test_rows_without_a_kind_score_zero_per_kind():
    from stic.data.benchmarks import BenchItem, ImageRef
    from stic.data.benchmarks.chartqa import score, summarize

    item = BenchItem(id="x", image=ImageRef(path="unused.png"), question="q", answers=("5",))
    summary = summarize(score([(item, "5")]))
    assert summary["metrics"]["relaxed_accuracy"] == 100.0
    assert (summary["metrics"]["human"], summary["metrics"]["augmented"]) == (0.0, 0.0)


def test_each_row_holds_the_reply_the_answer_and_both_verdicts():
    from stic.data.benchmarks import BenchItem, ImageRef
    from stic.data.benchmarks.chartqa import score

    item = BenchItem(
        id="human_0",
        image=ImageRef(path="unused.png"),
        question="q",
        answers=("yes",),
        categories={"type": ("human",)},
    )
    # " yes" is wrong officially (text is compared unstripped) and right once stripped
    assert score([(item, " yes")]) == [
        {
            "id": "human_0",
            "prediction": " yes",
            "extracted": " yes",
            "answer": "yes",
            "score": 0.0,
            "score_stripped": 1.0,
            "categories": {"type": ["human"]},
        }
    ]


def test_categories_hold_both_metrics_by_hand(tmp_path):
    items = read_benchmark("chartqa", _original(tmp_path))
    # human_0 "99" is 1% off 100: right both ways; human_1 "yes" is wrong both ways;
    # augmented_0 "45% " is wrong officially (float("45% ") fails, text differs), right stripped
    predictions = {"human_0": "99", "human_1": "yes", "augmented_0": "45% "}
    result = score_predictions("chartqa", items, predictions)
    assert result["categories"] == {
        "type": {
            "augmented": {"relaxed_accuracy": 0.0, "relaxed_accuracy_stripped": 100.0, "n": 1},
            "human": {"relaxed_accuracy": 50.0, "relaxed_accuracy_stripped": 50.0, "n": 2},
        }
    }
    assert result["metrics"] == {
        "relaxed_accuracy": 33.3333,
        "human": 50.0,
        "augmented": 0.0,
        "relaxed_accuracy_stripped": 66.6667,
    }


def test_no_rows_score_zero_not_a_division_error():
    from stic.data.benchmarks.chartqa import summarize

    assert summarize([])["metrics"] == {
        "relaxed_accuracy": 0.0,
        "human": 0.0,
        "augmented": 0.0,
        "relaxed_accuracy_stripped": 0.0,
    }
