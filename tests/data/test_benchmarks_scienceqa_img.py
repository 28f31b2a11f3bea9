"""ScienceQA-IMG: both formats, the LLaVA prompt, and LLaVA's letter rule without a random fallback."""

from __future__ import annotations

import pytest

from stic.data.benchmarks import (
    BenchItem,
    BenchmarkDataError,
    ImageRef,
    read_benchmark,
    scienceqa_img,
    score_predictions,
)
from stic.data.benchmarks.scienceqa_img import extract_letter, prompt
from tests.data.bench_fixtures import png_bytes, write_hub_parquet, write_json, write_png

PROBLEMS = {
    "7": {
        "question": "Which is a mammal?",
        "choices": ["frog", "whale", "shark"],
        "answer": 1,
        "hint": "",
        "image": "image.png",
        "split": "test",
        "subject": "natural science",
    },
    "9": {
        "question": "Which word is a noun?",
        "choices": ["run", "cat"],
        "answer": 1,
        "hint": "Select the best answer.",
        "image": "image.png",
        "split": "test",
        "subject": "language science",
    },
    "12": {
        "question": "No image here?",
        "choices": ["a", "b"],
        "answer": 0,
        "hint": "",
        "image": None,
        "split": "test",
        "subject": "social science",
    },
    "20": {
        "question": "Train question",
        "choices": ["a", "b"],
        "answer": 0,
        "hint": "",
        "image": "image.png",
        "split": "train",
        "subject": "social science",
    },
}


def _original(tmp_path):
    root = tmp_path / "ScienceQA" / "data"
    write_json(root / "problems.json", PROBLEMS)
    write_json(root / "pid_splits.json", {"train": ["20"], "test": ["7", "9", "12"]})
    for pid in ("7", "9"):
        write_png(root / "images" / "test" / pid / "image.png", int(pid))
    return root


@pytest.mark.parametrize(
    "text, n, expected",
    [
        ("B", 3, "B"),
        ("B. whale", 3, "B"),
        ("The answer is B.", 3, "B"),
        ("I think B", 3, None),
        ("B.whale", 3, None),  # needs "X. " with the space
        ("The answer is A. The answer is B.", 3, None),  # two phrases: ambiguous
        ("D", 3, None),  # not one of the three options
        ("b", 3, None),
        ("B. ", 3, "B"),  # "X. " is enough: three characters
        ("B.", 3, None),
        # LLaVA's options are A-E: a sixth option is never read (the reader refuses six choices)
        ("F", 6, None),
        ("The answer is F.", 6, None),
    ],
)
def test_letter_rule(text, n, expected):
    assert extract_letter(text, n) == expected


def test_original_format_image_subset_and_prompt(tmp_path):
    items = read_benchmark("scienceqa_img", _original(tmp_path))
    assert [i.id for i in items] == ["7", "9"]  # test split, with an image
    assert prompt(items[1]) == (
        "Context: Select the best answer.\nWhich word is a noun?\nA. run\nB. cat\n"
        "Answer with the option's letter from the given choices directly."
    )
    assert prompt(items[0]).startswith("Which is a mammal?\nA. frog\n")
    result = score_predictions("scienceqa_img", items, {"7": "B", "9": "A"})
    # 7 right, 9 wrong: 50%; per subject 100 and 0
    assert result["metrics"] == {"accuracy": 50.0}
    assert result["categories"]["subject"]["natural science"] == {"accuracy": 100.0, "n": 1}
    assert result["categories"]["subject"]["language science"] == {"accuracy": 0.0, "n": 1}


def test_scored_rows_as_written():
    item = BenchItem(
        id="9",
        image=ImageRef(path="unused.png"),
        question="Which word is a noun?",
        answers=("B",),
        choices=("run", "cat"),
        categories={"subject": ("language science",)},
    )
    rows = scienceqa_img.score([(item, "B. cat"), (item, "C")])
    assert rows[0] == {
        "id": "9",
        "prediction": "B. cat",
        "extracted": "B",
        "answer": "B",
        "score": 1.0,
        "categories": {"subject": ["language science"]},
    }
    # a letter beyond the question's two options is no answer
    assert rows[1]["extracted"] is None and rows[1]["score"] == 0.0


def test_missing_images_and_wrong_folder_named(tmp_path):
    root = _original(tmp_path)
    with pytest.raises(BenchmarkDataError, match="2 of 2 images not found.*images/test"):
        read_benchmark("scienceqa_img", root, tmp_path / "elsewhere")
    with pytest.raises(BenchmarkDataError, match="problems.json"):
        read_benchmark("scienceqa_img", tmp_path / "ScienceQA" / "data" / "images")


def test_hub_parquet(tmp_path):
    rows = [
        {
            "image": png_bytes(i),
            "question": rec["question"],
            "choices": rec["choices"],
            "answer": rec["answer"],
            "hint": rec["hint"],
            "subject": rec["subject"],
            "task": "closed choice",
            "grade": "grade2",
        }
        for i, rec in enumerate([PROBLEMS["7"], PROBLEMS["9"]])
    ]
    root = tmp_path / "hub"
    write_hub_parquet(root / "ScienceQA-IMG" / "test-00000-of-00001.parquet", rows)
    # another config's test split must not be read
    write_hub_parquet(root / "ScienceQA-FULL" / "test-00000-of-00001.parquet", rows + rows)
    items = read_benchmark("scienceqa_img", root)
    assert [i.id for i in items] == ["0", "1"]
    assert items[1].hint == "Select the best answer." and items[0].hint is None
    result = score_predictions("scienceqa_img", items, {"0": "B. whale", "1": "The answer is B."})
    assert result["metrics"]["accuracy"] == 100.0


SEVEN = PROBLEMS["7"]
MALFORMED = [
    ("not an object", {**PROBLEMS, "7": "x"}, None, "record 7: is str"),
    ("missing question", {**PROBLEMS, "7": {k: v for k, v in SEVEN.items() if k != "question"}}, None, "lacks 'question'"),
    ("choices not a list", {**PROBLEMS, "7": {**SEVEN, "choices": "frog, whale"}}, None, "'choices' is not a list of strings"),
    ("one choice", {**PROBLEMS, "7": {**SEVEN, "choices": ["frog"], "answer": 0}}, None, "has 1 choices, not 2 to 5"),
    ("six choices", {**PROBLEMS, "7": {**SEVEN, "choices": list("abcdef")}}, None, "has 6 choices"),
    ("answer beyond the choices", {**PROBLEMS, "7": {**SEVEN, "answer": 3}}, None, "answer index 3 is not one of its 3 choices"),
    ("negative answer", {**PROBLEMS, "7": {**SEVEN, "answer": -1}}, None, "answer index -1"),
    ("answer as text", {**PROBLEMS, "7": {**SEVEN, "answer": "B"}}, None, "'answer' is str"),
    ("answer as boolean", {**PROBLEMS, "7": {**SEVEN, "answer": True}}, None, "'answer' is bool"),
    ("hint not text", {**PROBLEMS, "7": {**SEVEN, "hint": ["x"]}}, None, "'hint' is list"),
    ("image not text", {**PROBLEMS, "7": {**SEVEN, "image": 5}}, None, "'image' is int"),
    ("test pid unknown", PROBLEMS, {"test": ["7", "99"]}, "record 99: is listed in 'test'"),
    ("test pid twice", PROBLEMS, {"test": ["7", "9", "7"]}, "record 7: its id appears twice"),
    ("test not a list", PROBLEMS, {"test": "7"}, "'test' is not a list of pids"),
    ("problems not an object", ["x"], None, "not a JSON object of pid -> question"),
]  # fmt: skip


@pytest.mark.parametrize(
    "case, problems, splits, message", MALFORMED, ids=[m[0] for m in MALFORMED]
)
def test_malformed_file_is_one_line_naming_file_record_problem(
    tmp_path, case, problems, splits, message
):
    root = _original(tmp_path)
    write_json(root / "problems.json", problems)
    if splits is not None:
        write_json(root / "pid_splits.json", splits)
    with pytest.raises(BenchmarkDataError) as error:
        read_benchmark("scienceqa_img", root, need_images=False)
    text = str(error.value)
    assert "\n" not in text and message in text
    assert "pid_splits.json" in text if splits is not None else "problems.json" in text
