"""TextVQA: both formats, the OCR prompt, and VQA accuracy worked out by hand."""

from __future__ import annotations

import pytest

from stic.data.benchmarks import BenchmarkDataError, read_benchmark, score_predictions
from stic.data.benchmarks.textvqa import normalize_vqa_answer, prompt, vqa_accuracy
from tests.data.bench_fixtures import png_bytes, write_hub_parquet, write_json, write_png

# 10 human answers. Normalised: "Coca Cola" x4, "coca-cola" x3 ("-" touches no space, so it
# becomes a space), "the coca cola." (period and article go) -> 8 x "coca cola"; "coke" x2.
COLA = ["Coca Cola"] * 4 + ["coca-cola"] * 3 + ["the coca cola."] + ["coke"] * 2
# "two" -> "2"; "2" x3, "two" x2, "2 " -> 6 x "2"; "3" x4
TWO = ["2", "2", "2", "two", "Two", "2 ", "3", "3", "3", "3"]


@pytest.mark.parametrize(
    "raw, normal",
    [
        ("The Coca-Cola.", "coca cola"),
        ("Two dogs", "2 dogs"),
        ("3.5", "3.5"),  # a period before a digit stays
        ("1,000", "1000"),
        ("a - b", "b"),  # "-" touching a space is deleted; the article "a" goes
        ("dont", "don't"),  # contraction table
        ("none", "0"),
        ("What?", "what"),
        ("yes.", "yes"),
    ],
)
def test_normalisation(raw, normal):
    assert normalize_vqa_answer(raw) == normal


def test_leave_one_out_accuracy_by_hand():
    # 8 of 10 answers match: leaving out a match leaves 7 (min(1, 7/3) = 1), a non-match 8 -> 1
    assert vqa_accuracy("Coca-Cola.", COLA) == 1.0
    # "coke" matches 2: leaving out one of them leaves 1 match (1/3), any other leaves 2 (2/3):
    # (2 * 1/3 + 8 * 2/3) / 10 = 0.6
    assert vqa_accuracy("coke", COLA) == pytest.approx(0.6)
    # "3" matches 4: leaving out a "3" leaves 3 -> 1; a "2" leaves 4 -> 1: score 1
    assert vqa_accuracy("three", TWO) == 1.0
    # one match only: leaving it out leaves 0, others leave 1/3: 9/30 = 0.3
    assert vqa_accuracy("pepsi", ["pepsi"] + ["cola"] * 9) == pytest.approx(0.3)
    assert vqa_accuracy("sprite", COLA) == 0.0


def test_each_row_holds_the_normalised_reply_and_the_ten_answers():
    from stic.data.benchmarks import BenchItem, ImageRef
    from stic.data.benchmarks.textvqa import score

    item = BenchItem(id="7", image=ImageRef(path="unused.png"), question="q", answers=tuple(COLA))
    assert score([(item, "The Coke.")]) == [
        {
            "id": "7",
            "prediction": "The Coke.",
            "extracted": "coke",
            "answer": COLA,
            "score": pytest.approx(0.6),
            "categories": {},
        }
    ]


def _original(tmp_path):
    root = tmp_path / "textvqa"
    write_json(
        root / "TextVQA_0.5.1_val.json",
        {
            "dataset_name": "textvqa",
            "data": [
                {
                    "question_id": 34602,
                    "question": "what is the brand?",
                    "image_id": "003a8ae2ef43b901",
                    "answers": COLA,
                    "set_name": "val",
                },
                {
                    "question_id": 34603,
                    "question": "how many?",
                    "image_id": "00b8fb4a3d3b8e1a",
                    "answers": TWO,
                    "set_name": "val",
                },
            ],
        },
    )
    write_json(
        root / "TextVQA_Rosetta_OCR_v0.2_val.json",
        {
            "data": [
                {"image_id": "003a8ae2ef43b901", "ocr_tokens": ["coca", "cola"]},
            ]
        },
    )
    write_png(root / "train_images" / "003a8ae2ef43b901.jpg", 1)
    write_png(root / "train_images" / "00b8fb4a3d3b8e1a.jpg", 2)
    return root


def test_original_format_with_ocr_prompt(tmp_path):
    items = read_benchmark("textvqa", _original(tmp_path))
    assert [i.id for i in items] == ["34602", "34603"]
    assert prompt(items[0]) == (
        "what is the brand?\nReference OCR token: coca, cola\n"
        "Answer the question using a single word or phrase."
    )
    assert prompt(items[1]) == "how many?\nAnswer the question using a single word or phrase."
    result = score_predictions("textvqa", items, {"34602": "coke", "34603": "3"})
    assert result["metrics"]["accuracy"] == 80.0  # (0.6 + 1.0) / 2
    assert result["items"][0]["extracted"] == "coke"


def test_missing_annotation_named(tmp_path):
    with pytest.raises(BenchmarkDataError, match="TextVQA_0.5.1_val.json"):
        read_benchmark("textvqa", tmp_path)


def test_hub_parquet_validation_split_only(tmp_path):
    row = {
        "image_id": "x",
        "question_id": 34602,
        "question": "what is the brand?",
        "image": png_bytes(1),
        "answers": COLA,
        "ocr_tokens": ["coca"],
        "set_name": "val",
    }
    root = tmp_path / "textvqa"
    write_hub_parquet(root / "data" / "validation-00000-of-00001.parquet", [row])
    write_hub_parquet(root / "data" / "train-00000-of-00001.parquet", [{**row, "question_id": 1}])
    items = read_benchmark("textvqa", root)
    assert [i.id for i in items] == ["34602"]
    assert "Reference OCR token: coca\n" in prompt(items[0])
    assert score_predictions("textvqa", items, {"34602": "COKE"})["metrics"]["accuracy"] == 60.0


ROW = {"question_id": 1, "question": "what?", "image_id": "abc", "answers": COLA}
MALFORMED = [
    ("not an object", {"data": ["x"]}, "record #0: is str"),
    ("no data list", {"questions": []}, "lacks the 'data' list"),
    ("data not a list", {"data": {"1": ROW}}, "lacks the 'data' list"),
    ("missing answers", {"data": [{k: v for k, v in ROW.items() if k != "answers"}]}, "record 1: lacks 'answers'"),
    ("answers a string", {"data": [{**ROW, "answers": "coke"}]}, "'answers' is not a list of strings"),
    ("answers hold a number", {"data": [{**ROW, "answers": [1] * 10}]}, "'answers' is not a list of strings"),
    ("nine answers", {"data": [{**ROW, "answers": COLA[:9]}]}, "has 9 answers, not 10"),
    ("question not text", {"data": [{**ROW, "question": 3}]}, "'question' is int"),
    ("image_id missing", {"data": [{k: v for k, v in ROW.items() if k != "image_id"}]}, "lacks 'image_id'"),
    ("duplicate ids", {"data": [ROW, ROW]}, "record 1: its id appears twice"),
    ("empty file", {"data": []}, "holds no records"),
]  # fmt: skip


@pytest.mark.parametrize("case, document, message", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_file_is_one_line_naming_file_record_problem(tmp_path, case, document, message):
    path = write_json(tmp_path / "TextVQA_0.5.1_val.json", document)
    with pytest.raises(BenchmarkDataError) as error:
        read_benchmark("textvqa", path, need_images=False)
    text = str(error.value)
    assert "\n" not in text and "TextVQA_0.5.1_val.json" in text and message in text


def test_malformed_ocr_file_named(tmp_path):
    path = write_json(tmp_path / "TextVQA_0.5.1_val.json", {"data": [ROW]})
    write_json(tmp_path / "TextVQA_Rosetta_OCR_v0.2_val.json",
               {"data": [{"image_id": "abc", "ocr_tokens": "coca cola"}]})  # fmt: skip
    with pytest.raises(
        BenchmarkDataError, match="OCR_v0.2_val.json: record abc: 'ocr_tokens' is not"
    ):
        read_benchmark("textvqa", path, need_images=False)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a?b", "ab"),  # "?" removed with "," before the punctuation step: no space left
        ("it's", "it 's"),  # "'s" split off
        ("x-y -z", "xy z"),  # a "-" touches a space somewhere: every "-" is deleted
        ("x-y- z", "xy z"),
        ("x-y\n-z", "xy z"),  # newlines and tabs are spaces by the time that is asked
        ("x-y\t-z", "xy z"),
        ("x-y", "x y"),  # touching no space: replaced by a space
        (
            "." * 40 + "a",
            "." * 8 + "a",
        ),  # only the first 32 periods are deleted (re.UNICODE as count)
    ],
)
def test_normalisation_steps_of_the_evaluator(text, expected):
    assert normalize_vqa_answer(text) == expected
