"""POPE: both formats read, LLaVA's yes/no rule, and the metrics worked out by hand."""

from __future__ import annotations

import dataclasses

import pytest

from stic.data.benchmarks import (
    BENCHMARKS,
    BenchItem,
    BenchmarkDataError,
    ImageRef,
    NothingScoredError,
    data_hash,
    pope,
    read_benchmark,
    score_predictions,
)
from stic.data.benchmarks.pope import extract_yes_no, prompt
from tests.data.bench_fixtures import png_bytes, write_hub_parquet, write_jsonl, write_png

LABELS = {"1": "yes", "2": "no", "3": "yes", "4": "no", "5": "no"}


def _original(tmp_path):
    rows = [
        {
            "question_id": int(qid),
            "image": f"COCO_val2014_00000000000{qid}.jpg",
            "text": f"Is there a dog{qid} in the image?",
            "label": label,
        }
        for qid, label in LABELS.items()
    ]
    write_jsonl(tmp_path / "pope" / "coco_pope_random.json", rows)
    for row in rows:
        write_png(tmp_path / "coco" / "val2014" / row["image"], int(row["question_id"]))
    return tmp_path / "pope", tmp_path / "coco" / "val2014"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Yes, there is.", "yes"),
        ("No.", "no"),
        ("There is not", "no"),
        ("There is not a dog. But no cat.", "no"),
        ("Yes. There is no cat though.", "yes"),  # only the text before the first period counts
        ("no, there isn't", "no"),
        ("NO", "yes"),  # the official rule knows only "no", "No" and "not"
        ("Nope", "yes"),
        ("", "yes"),
        ("No\n", "yes"),  # split on single spaces only: "No\n" is no word "No"
        ("There is\tno dog", "yes"),  # "is\tno" is one word
    ],
)
def test_yes_no_extraction_follows_llava_rule(text, expected):
    assert extract_yes_no(text) == expected


def test_original_format_read_and_scored_by_hand(tmp_path):
    data, images = _original(tmp_path)
    items = read_benchmark("pope_random", data, images)
    assert [i.id for i in items] == ["1", "2", "3", "4", "5"]
    assert items[0].image.load().size == (8, 8)
    assert prompt(items[0]) == (
        "Is there a dog1 in the image?\nAnswer the question using a single word or phrase."
    )
    predictions = [  # given in a shuffled order: joined by id
        {"id": "4", "prediction": "Yes, there is."},  # label no  -> FP
        {"id": "1", "prediction": "Yes, there is a dog."},  # yes -> TP
        {"id": "2", "prediction": "No."},  # no -> TN
        {"id": "3", "prediction": "There is not"},  # yes -> FN
        {"id": "5", "prediction": "no"},  # no -> TN
    ]
    result = score_predictions("pope_random", items, predictions)
    # TP=1 FP=1 TN=2 FN=1: accuracy 3/5, precision 1/2, recall 1/2, F1 1/2,
    # predicted yes = 2 of 5 (the ground truth's share would also be 2/5, so check it apart).
    assert result["metrics"] == {
        "accuracy": 60.0,
        "precision": 50.0,
        "recall": 50.0,
        "f1": 50.0,
        "yes_ratio": 40.0,
    }
    assert {r["id"]: r["extracted"] for r in result["items"]}["3"] == "no"


def _pope_item(qid, label):
    return BenchItem(
        id=qid, image=ImageRef(path="unused.jpg"), question="Is there a dog?", answers=(label,)
    )


def test_scored_row_as_written():
    rows = pope.score([(_pope_item("7", "no"), "Yes, there is.")])
    assert rows == [
        {
            "id": "7",
            "prediction": "Yes, there is.",
            "extracted": "yes",
            "answer": "no",
            "score": 0.0,
            "categories": {},
        }
    ]


@pytest.mark.parametrize(
    "labels, replies, expected",
    [
        # never a predicted yes: precision (0/0) and F1 are 0.0, as docs/benchmarks.md says
        (("yes", "no"), ("No", "No"), (50.0, 0.0, 0.0, 0.0, 0.0)),
        # no yes in the truth: recall (0/0) is 0.0
        (("no", "no"), ("Yes", "No"), (50.0, 0.0, 0.0, 0.0, 50.0)),
        # every reply wrong: precision and recall 0, F1 0.0 (0/0)
        (("yes", "no"), ("No", "Yes"), (0.0, 0.0, 0.0, 0.0, 50.0)),
    ],
)
def test_metrics_with_an_empty_class_are_zero(labels, replies, expected):
    pairs = [
        (_pope_item(str(n), label), reply)
        for n, (label, reply) in enumerate(zip(labels, replies, strict=True))
    ]
    assert pope.summarize(pope.score(pairs)) == {
        "metrics": dict(zip(pope.METRICS, expected, strict=True)),
        "categories": {},
    }


def test_yes_ratio_is_the_predicted_share(tmp_path):
    data, images = _original(tmp_path)
    items = read_benchmark("pope_random", data, images)
    result = score_predictions("pope_random", items, {k: "Yes" for k in LABELS})
    # all predicted yes: yes_ratio 100 (the labels' yes share is 40)
    assert result["metrics"]["yes_ratio"] == 100.0
    assert result["metrics"]["recall"] == 100.0 and result["metrics"]["precision"] == 40.0


def test_unmatched_ids_reported(tmp_path):
    data, images = _original(tmp_path)
    items = read_benchmark("pope_random", data, images)
    result = score_predictions("pope_random", items, {"1": "yes", "2": "no", "99": "yes"})
    assert result["n"] == 2 and result["n_data"] == 5
    assert result["unmatched"]["missing_predictions"] == {"count": 3, "examples": ["3", "4", "5"]}
    assert result["unmatched"]["unknown_ids"] == {"count": 1, "examples": ["99"]}


def test_missing_images_named(tmp_path):
    data, _ = _original(tmp_path)
    with pytest.raises(BenchmarkDataError, match=r"5 of 5 images not found.*COCO val2014"):
        read_benchmark("pope_random", data, tmp_path / "nowhere")


def test_folder_without_pope_files_named(tmp_path):
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(BenchmarkDataError, match=r"coco_pope_popular.json"):
        read_benchmark("pope_popular", tmp_path)


def test_hub_parquet_selects_the_split(tmp_path):
    rows = []
    for n, split in enumerate(("adversarial", "popular", "random")):
        for qid, label in LABELS.items():
            rows.append(
                {
                    "id": str(len(rows)),
                    "question_id": qid,
                    "question": f"Is there a {split} {qid}?",
                    "answer": label,
                    "image_source": "x",
                    "image": png_bytes(n),
                    "category": split,
                }
            )
    write_hub_parquet(tmp_path / "POPE" / "data" / "test-00000-of-00001.parquet", rows)
    items = read_benchmark("pope_adversarial", tmp_path / "POPE")
    assert [i.id for i in items] == list(LABELS)
    assert items[0].question == "Is there a adversarial 1?"
    assert items[0].image.load().size == (8, 8)
    result = score_predictions("pope_adversarial", items, {k: "Yes, there is." for k in LABELS})
    assert result["metrics"]["accuracy"] == 40.0


ROW = {"question_id": 1, "image": "COCO_val2014_1.jpg", "text": "Is there a dog?", "label": "yes"}
MALFORMED = [
    ("not an object", ["x"], "record #1: is str"),
    ("missing label", [{k: v for k, v in ROW.items() if k != "label"}], "record 1: lacks 'label'"),
    ("label capitalised", [{**ROW, "label": "No"}], "'label' is 'No', not 'yes' or 'no'"),
    ("label other word", [{**ROW, "label": "maybe"}], "not 'yes' or 'no'"),
    ("label not text", [{**ROW, "label": 1}], "'label' is int"),
    ("question not text", [{**ROW, "text": None}], "'text' is NoneType"),
    ("image not text", [{**ROW, "image": ["a.jpg"]}], "'image' is list"),
    ("id not a number or text", [{**ROW, "question_id": 1.5}], "'question_id' is float"),
    ("duplicate ids", [ROW, {**ROW, "label": "no"}], "record 1: its id appears twice"),
    ("empty file", [], "holds no records"),
]  # fmt: skip


@pytest.mark.parametrize("case, rows, message", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_file_is_one_line_naming_file_record_problem(tmp_path, case, rows, message):
    path = write_jsonl(tmp_path / "coco_pope_random.json", rows)
    with pytest.raises(BenchmarkDataError) as error:
        read_benchmark("pope_random", path, need_images=False)
    text = str(error.value)
    assert "\n" not in text and "coco_pope_random.json" in text and message in text


def test_malformed_line_named(tmp_path):
    path = tmp_path / "coco_pope_random.json"
    path.write_text('{"question_id": 1,\n', encoding="utf-8")
    with pytest.raises(BenchmarkDataError, match=r"coco_pope_random.json:1: not valid JSON"):
        read_benchmark("pope_random", path, need_images=False)


def test_hub_label_outside_yes_no_refused(tmp_path):
    rows = [{"question_id": 1, "question": "q?", "answer": "Yes", "image": png_bytes(1),
             "category": "random"}]  # fmt: skip
    write_hub_parquet(tmp_path / "hub" / "data" / "test-00000-of-00001.parquet", rows)
    with pytest.raises(BenchmarkDataError, match="record 1: 'answer' is 'Yes', not 'yes' or 'no'"):
        read_benchmark("pope_random", tmp_path / "hub")


# score_predictions' result document, read by `stic bench score`, `stic compare` and the report.


def _items(n: int) -> list[BenchItem]:
    return [
        BenchItem(id=f"q{i}", image=ImageRef(path="unused.png"), question="q", answers=("yes",))
        for i in range(n)
    ]


def test_the_result_document_of_a_partial_run(caplog):
    items = _items(10)
    predictions = [{"id": "q0", "prediction": "Yes"}, {"id": "q1", "prediction": "No"}]
    predictions += [{"id": f"x{k}", "prediction": "Yes"} for k in range(7)]  # not in the data
    with caplog.at_level("WARNING"):
        result = score_predictions("pope_random", items, predictions)
    spec = BENCHMARKS["pope_random"]
    rows = result.pop("items")
    assert [(r["id"], r["score"]) for r in rows] == [("q0", 1.0), ("q1", 0.0)]
    assert result == {
        "benchmark": "pope_random",
        "n": 2,
        "n_expected": 10,
        "n_data": 10,
        "partial": True,
        "not_scored": {"no_prediction": 8},
        "data_hash": data_hash(items),
        "primary_metric": spec.primary,
        "metrics": {
            "accuracy": 50.0,
            "precision": 100.0,
            "recall": 50.0,
            "f1": 66.6667,
            "yes_ratio": 50.0,
        },
        "categories": {},
        "unmatched": {  # counts of all, examples of the first five
            "missing_predictions": {"count": 8, "examples": ["q2", "q3", "q4", "q5", "q6"]},
            "unknown_ids": {"count": 7, "examples": ["x0", "x1", "x2", "x3", "x4"]},
        },
        "protocol": {
            "prompt": spec.protocol,
            "max_new_tokens": spec.max_new_tokens,
            "decoding": "greedy",
        },
        "judge": None,
    }
    assert caplog.messages == [
        "pope_random: 8 items without a prediction, 7 prediction ids not in the data"
    ]


def test_a_complete_run_is_not_partial_and_logs_nothing(caplog):
    items = _items(3)
    with caplog.at_level("WARNING"):
        result = score_predictions("pope_random", items, {"q0": "Yes", "q1": "Yes", "q2": "No"})
    assert (result["n"], result["n_expected"], result["partial"]) == (3, 3, False)
    assert result["not_scored"] == {}
    assert result["unmatched"] == {
        "missing_predictions": {"count": 0, "examples": []},
        "unknown_ids": {"count": 0, "examples": []},
    }
    assert "headline" not in result
    assert caplog.text == ""


def test_a_mapping_with_integer_ids_is_joined_by_their_text():
    items = _items(2)
    result = score_predictions("pope_random", items, {"q0": "Yes"} | {1: "x"})
    assert result["n"] == 1 and result["unmatched"]["unknown_ids"]["examples"] == ["1"]


class _Judge:
    model = "judge-model"


def test_the_judge_block_names_the_judge_and_its_failures(monkeypatch):
    def score(pairs, judge):
        # a scripted scorer: the first item judged, every other one a judge failure
        return [
            {"id": item.id, "score": 1.0, **({"judge_failed": f"bad {item.id}"} if k else {})}
            for k, (item, _) in enumerate(pairs)
        ]

    spec = dataclasses.replace(BENCHMARKS["mmvet"], score=score)
    monkeypatch.setitem(BENCHMARKS, "mmvet", spec)
    items = _items(25)
    result = score_predictions("mmvet", items, {it.id: "a" for it in items[:23]}, _Judge())
    assert result["not_scored"] == {"no_prediction": 2, "judge_failed": 22}
    assert result["n"] == 23
    assert result["judge"] == {
        "model": "judge-model",
        "prompt_version": spec.judge_prompt_version,
        "judge_failed": 22,
        "failures": [{"id": f"q{k}", "reason": f"bad q{k}"} for k in range(1, 21)],  # first 20
    }
    assert spec.judge_prompt_version  # a judged benchmark records its prompt's version


def test_a_judge_given_to_a_rule_scored_benchmark_is_recorded():
    result = score_predictions("pope_random", _items(1), {"q0": "Yes"}, _Judge())
    assert result["judge"] == {
        "model": "judge-model",
        "prompt_version": None,
        "judge_failed": 0,
        "failures": [],
    }


def test_a_judged_benchmark_without_a_judge_is_refused():
    with pytest.raises(ValueError) as e:
        score_predictions("mmvet", _items(1), {"q0": "a"})
    assert str(e.value) == "mmvet is scored by a judge model: give --judge-url and --judge-model"


def test_nothing_scored_is_refused_naming_why():
    with pytest.raises(NothingScoredError) as e:
        score_predictions("pope_random", _items(4), {"a": "Yes", "b": "No"})
    assert str(e.value) == (
        "pope_random: nothing scored of 4 items (no_prediction: 4, 2 prediction ids not in the "
        "data); no result written"
    )
    with pytest.raises(NothingScoredError) as e:
        score_predictions("pope_random", _items(2), {})
    assert (
        str(e.value)
        == "pope_random: nothing scored of 2 items (no_prediction: 2); no result written"
    )
    with pytest.raises(NothingScoredError) as e:
        score_predictions("pope_random", [], {})
    assert str(e.value) == "pope_random: nothing scored of 0 items (no items); no result written"


@pytest.mark.parametrize(
    "rows, message",
    [
        (["q0"], "prediction 0: expected {'id', 'prediction'}, got 'q0'"),
        ([{"id": "q0"}], "prediction 0: expected {'id', 'prediction'}, got {'id': 'q0'}"),
        (
            [{"prediction": "a"}],
            "prediction 0: expected {'id', 'prediction'}, got {'prediction': 'a'}",
        ),
        (
            [{"id": "q0", "prediction": "a"}, {"id": "q0", "prediction": "b"}],
            "prediction 1: id 'q0' appears twice",
        ),
        (
            [{"id": "q0", "prediction": "a"}, {"id": 1, "prediction": 2}],
            "prediction 1 (id '1'): 'prediction' must be a string",
        ),
    ],
)
def test_malformed_prediction_rows_are_refused_naming_the_row(rows, message):
    with pytest.raises(ValueError) as e:
        score_predictions("pope_random", _items(2), rows)
    assert str(e.value) == message


def test_prediction_rows_with_integer_ids_join_by_their_text():
    items = [dataclasses.replace(_items(1)[0], id="7")]
    result = score_predictions("pope_random", items, [{"id": 7, "prediction": "Yes"}])
    assert result["n"] == 1 and result["items"][0]["prediction"] == "Yes"


@pytest.mark.parametrize(
    "predictions, message",
    [
        ({"q0": "Yes"}, "1 items without a prediction, 0 prediction ids not in the data"),
        ({"q0": "Yes", "q1": "No", "x": "No"}, "0 items without a prediction, 1 prediction ids"),
    ],
    ids=["missing-only", "unknown-only"],
)
def test_a_run_not_matching_the_data_is_logged(caplog, predictions, message):
    with caplog.at_level("WARNING"):
        score_predictions("pope_random", _items(2), predictions)
    assert f"pope_random: {message}" in caplog.text


def test_nothing_scored_because_the_judge_failed_names_both_reasons(monkeypatch):
    def score(pairs, judge):
        return [{"id": item.id, "score": None, "judge_failed": "no reply"} for item, _ in pairs]

    monkeypatch.setitem(BENCHMARKS, "mmvet", dataclasses.replace(BENCHMARKS["mmvet"], score=score))
    with pytest.raises(NothingScoredError) as e:
        score_predictions("mmvet", _items(3), {"q0": "a", "q1": "b"}, _Judge())
    assert str(e.value) == (
        "mmvet: nothing scored of 3 items (no_prediction: 1, judge_failed: 2); no result written"
    )


def test_a_result_with_a_non_finite_metric_is_refused_naming_it(monkeypatch):
    def summarize(rows):
        return {"metrics": {"f1": float("nan")}, "categories": {}}

    spec = dataclasses.replace(BENCHMARKS["pope_random"], summarize=summarize)
    monkeypatch.setitem(BENCHMARKS, "pope_random", spec)
    with pytest.raises(ValueError) as e:
        score_predictions("pope_random", _items(1), {"q0": "Yes"})
    assert str(e.value) == "pope_random: metric f1 is nan (not finite)"
