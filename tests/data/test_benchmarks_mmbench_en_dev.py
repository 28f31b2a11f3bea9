"""MMBench: the TSV with base64 images and the hub parquet, rules extraction, CircularEval."""

from __future__ import annotations

import base64
import csv
import json

import pytest

from stic.data.benchmarks import (
    BenchItem,
    BenchmarkDataError,
    ImageRef,
    mmbench_en_dev,
    read_benchmark,
    score_predictions,
)
from stic.data.benchmarks.mmbench_en_dev import extract_letter, prompt
from tests.data.bench_fixtures import png_bytes, write_hub_parquet, write_jsonl

# Question 0 (3 options, rotated twice) and question 1 (2 options, rotated once). The rotation
# k shifts the options left by k, so the answer letter moves.
ROWS = [
    {
        "index": 0,
        "question": "What color is the cat?",
        "hint": "A pet photo.",
        "A": "black",
        "B": "white",
        "C": "orange",
        "D": "",
        "answer": "C",
        "category": "attribute_recognition",
        "l2-category": "finegrained_perception",
    },
    {
        "index": 1000000,
        "question": "What color is the cat?",
        "hint": "A pet photo.",
        "A": "white",
        "B": "orange",
        "C": "black",
        "D": "",
        "answer": "B",
        "category": "attribute_recognition",
        "l2-category": "finegrained_perception",
    },
    {
        "index": 2000000,
        "question": "What color is the cat?",
        "hint": "A pet photo.",
        "A": "orange",
        "B": "black",
        "C": "white",
        "D": "",
        "answer": "A",
        "category": "attribute_recognition",
        "l2-category": "finegrained_perception",
    },
    {
        "index": 1,
        "question": "Is it day?",
        "hint": "nan",
        "A": "yes",
        "B": "no",
        "C": "",
        "D": "",
        "answer": "A",
        "category": "scene",
        "l2-category": "coarse_perception",
    },
    {
        "index": 1000001,
        "question": "Is it day?",
        "hint": "nan",
        "A": "no",
        "B": "yes",
        "C": "",
        "D": "",
        "answer": "B",
        "category": "scene",
        "l2-category": "coarse_perception",
    },
]


def _tsv(tmp_path, rows=ROWS):
    path = tmp_path / "mmbench" / "mmbench_dev_20230712.tsv"
    path.parent.mkdir(parents=True)
    columns = [
        "index",
        "question",
        "hint",
        "A",
        "B",
        "C",
        "D",
        "answer",
        "category",
        "l2-category",
        "split",
        "image",
    ]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, columns, delimiter="\t")
        writer.writeheader()
        for row in rows:
            if "image" in row:
                writer.writerow({"split": "dev", **row})
                continue
            group = int(row["index"]) % 1_000_000
            # rotation copies point at their question's row, as the published TSV does
            image = (
                base64.b64encode(png_bytes(group)).decode()
                if int(row["index"]) < 1_000_000
                else str(group)
            )
            writer.writerow({**row, "split": "dev", "image": image})
    return path.parent


@pytest.mark.parametrize(
    "text, expected",
    [
        ("C", "C"),
        ("C.", "C"),
        ("(C)", "C"),
        ("C: orange", "C"),
        ("C. orange", "C"),
        ("(C) orange", "C"),
        ("The cat is orange.", "C"),  # the one option text it contains
        ("black or white", None),  # two option texts: unresolved
        ("E", None),  # not an option of this question
        ("I cannot tell", None),
        ("b", None),  # lowercase is no letter to VLMEvalKit: left to its judge
        ("Answer: C", "C"),  # a letter among the last four words
        ("The answer is a black cat", "A"),  # VLMEvalKit's 'answer is X' reads the article
        ("B and C", None),  # two letters
        ("Cannot determine the answer", "Z"),  # a refusal VLMEvalKit reads as no option
    ],
)
def test_letter_rules(text, expected):
    assert extract_letter(text, ("black", "white", "orange")) == expected


def test_tsv_read_prompt_and_circular_score(tmp_path):
    items = read_benchmark("mmbench_en_dev", _tsv(tmp_path))
    assert [i.id for i in items] == ["0", "1000000", "2000000", "1", "1000001"]
    assert items[0].choices == ("black", "white", "orange")  # empty D left out
    assert items[1].image.load().getpixel((0, 0)) == items[0].image.load().getpixel((0, 0))
    assert prompt(items[0]) == (
        "A pet photo.\nWhat color is the cat?\nA. black\nB. white\nC. orange\n"
        "Answer with the option's letter from the given choices directly."
    )
    assert prompt(items[3]).startswith("Is it day?\nA. yes")  # "nan" hint left out
    predictions = {
        "0": "C",
        "1000000": "B. orange",
        "2000000": "A",  # all three rotations right
        "1": "A",
        "1000001": "A",  # rotation 1 wrong (answer B)
    }
    result = score_predictions("mmbench_en_dev", items, predictions)
    # circular: question 0 right, question 1 wrong -> 1/2 = 50;
    # single pass: rows 0 and 1 (rotation 0) both right -> 100
    assert result["metrics"]["circular"] == 50.0
    assert result["metrics"]["single_pass"] == 100.0
    assert result["categories"]["category"]["scene"]["circular"] == 0.0
    assert result["categories"]["l2-category"]["finegrained_perception"]["circular"] == 100.0


def test_question_with_an_unpredicted_rotation_left_out_of_circular(tmp_path):
    items = read_benchmark("mmbench_en_dev", _tsv(tmp_path))
    result = score_predictions(
        "mmbench_en_dev", items, {"0": "C", "1000000": "B", "1": "A", "1000001": "B"}
    )
    assert result["metrics"]["n_circular"] == 1 and result["metrics"]["circular"] == 100.0
    assert result["unmatched"]["missing_predictions"]["examples"] == ["2000000"]


def test_folder_without_tsv_named(tmp_path):
    with pytest.raises(BenchmarkDataError, match="mmbench_dev_20230712.tsv"):
        read_benchmark("mmbench_en_dev", tmp_path)


def test_hub_parquet(tmp_path):
    rows = [
        {
            "index": r["index"],
            "question": r["question"],
            "hint": None if r["hint"] == "nan" else r["hint"],
            "A": r["A"],
            "B": r["B"],
            "C": r["C"] or None,
            "D": None,
            "answer": r["answer"],
            "category": r["category"],
            "L2-category": r["l2-category"],
            "source": "x",
            "comment": None,
            "split": "dev",
            "image": png_bytes(r["index"] % 7),
        }
        for r in ROWS
    ]
    root = tmp_path / "MMBench"
    write_hub_parquet(root / "en" / "dev-00000-of-00001.parquet", rows)
    write_hub_parquet(root / "cn" / "dev-00000-of-00001.parquet", rows[:1])
    items = read_benchmark("mmbench_en_dev", root)
    assert len(items) == 5 and items[3].choices == ("yes", "no")
    assert items[0].categories["l2-category"] == ("finegrained_perception",)
    result = score_predictions("mmbench_en_dev", items, {i.id: i.answers[0] for i in items})
    assert result["metrics"]["circular"] == 100.0


IMAGE = base64.b64encode(png_bytes(1)).decode()


def _row(**overrides):
    return {**ROWS[3], **overrides}


@pytest.mark.parametrize(
    "rows, problem",
    [
        ([_row(index="x", image=IMAGE)], "record #0: index 'x' is not a non-negative integer"),
        ([_row(index="1.5", image=IMAGE)], "record #0: index '1.5' is not a non-negative integer"),
        (
            [_row(index="1e400", image=IMAGE)],
            "record #0: index '1e400' is not a non-negative integer",
        ),
        ([_row(), _row()], "record 1: its id appears twice"),
        ([_row(A="")], "record 1: needs options A and B"),
        ([_row(C="", D="maybe")], "record 1: has an empty option before a filled one"),
        ([_row(answer="C")], "record 1: answer 'C' names none of its 2 options"),
        ([_row(answer="7")], "record 1: answer '7' names none"),
        ([_row(answer="")], "record 1: answer '' names none"),
        ([_row(answer="AB")], "record 1: answer 'AB' names none"),
        ([_row(index="9" * 5000, image=IMAGE)], "record #0: index '9999"),
        ([_row(index="²", image=IMAGE)], "record #0: index '²' is not"),
        ([_row(category="")], "record 1: 'category' is empty"),
        ([_row(image="not base64!")], "record 1: image is not base64"),
        ([_row(image="42")], "record 1: image refers to missing row 42"),
        ([_row(image="")], "record 1: has no image"),
        ([], "holds no records"),
    ],
)
def test_tsv_malformed_record_named(tmp_path, rows, problem):
    path = _tsv(tmp_path, rows) / "mmbench_dev_20230712.tsv"
    with pytest.raises(BenchmarkDataError, match=problem.replace("(", r"\\(")) as e:
        read_benchmark("mmbench_en_dev", path)
    assert str(e.value).startswith(f"mmbench_en_dev: {path}: ")
    assert "\\n" not in str(e.value)


def _hub(**overrides):
    row = {
        "index": 1,
        "question": "Is it day?",
        "hint": None,
        "A": "yes",
        "B": "no",
        "C": None,
        "D": None,
        "answer": "A",
        "category": "scene",
        "L2-category": "coarse_perception",
        "image": png_bytes(1),
    }
    return {**row, **overrides}


@pytest.mark.parametrize(
    "row, problem",
    [
        (_hub(index=-1), "record #0: index -1 is not a non-negative integer"),
        (_hub(question=None), "record 1: 'question' is NoneType"),
        (_hub(question=3), "record 1: 'question' is int"),
        (_hub(answer=None), "record 1: 'answer' is NoneType"),
        (_hub(answer="B", B=None), "record 1: needs options A and B"),
        (_hub(A=3, B=4), "record 1: option A is int, not text"),
        (_hub(hint=5), "record 1: 'hint' is int, not text"),
        (_hub(image=None), "record 1: has no image"),
    ],
)
def test_hub_malformed_record_named(tmp_path, row, problem):
    path = tmp_path / "en" / "dev-00000-of-00001.parquet"
    write_hub_parquet(path, [row])
    with pytest.raises(BenchmarkDataError, match=problem) as e:
        read_benchmark("mmbench_en_dev", tmp_path)
    assert str(e.value).startswith(f"mmbench_en_dev: {tmp_path}: ")


def test_non_finite_numbers_as_options_and_replies_score_and_stay_json(tmp_path):
    rows = [
        _row(A="inf", B="-inf", C="1e999", answer="C"),
        _row(index=1000001, A="-inf", B="1e999", C="inf", answer="B"),
        _row(index=2000001, A="1e999", B="inf", C="-inf", answer="A"),
    ]
    path = _tsv(tmp_path, rows) / "mmbench_dev_20230712.tsv"
    items = read_benchmark("mmbench_en_dev", path)
    assert items[0].choices == ("inf", "-inf", "1e999")  # option texts, never numbers
    predictions = {"1": "1e999", "1000001": "nan", "2000001": "1" * 400}
    result = score_predictions("mmbench_en_dev", items, predictions)
    json.dumps(result, allow_nan=False)
    # 1e999 is read by its option text (C, right); nan and the long number are read as nothing
    assert [r["extracted"] for r in result["items"]] == ["C", None, None]
    assert result["metrics"]["circular"] == 0.0 and result["metrics"]["n_needs_judge"] == 1


def _bench_score(tmp_path, data, predictions):
    from stic.tools.bench_score import main

    path = write_jsonl(tmp_path / "pred.jsonl", predictions)
    out = tmp_path / "out" / "mmbench_en_dev.json"
    code = main(
        ["--benchmark", "mmbench_en_dev", "--data", str(data), "--predictions", str(path)]
        + ["--out", str(out)]
    )
    return code, out


def test_bench_score_malformed_tsv_is_one_line_error(tmp_path, capsys):
    path = _tsv(tmp_path, [_row(), _row(index=1000001, answer="E")]) / "mmbench_dev_20230712.tsv"
    code, out = _bench_score(tmp_path, path, [{"id": "1", "prediction": "A"}])
    err = capsys.readouterr().err.strip()
    assert code == 2 and not out.exists()
    assert err.endswith(f"{path}: record 1000001: answer 'E' names none of its 2 options")
    assert "\n" not in err


def test_bench_score_non_finite_replies_write_valid_json(tmp_path):
    data = _tsv(tmp_path)
    replies = ["nan", "inf", "1e999", "-1e999", "1" * 400]
    predictions = [
        {"id": str(row["index"]), "prediction": reply}
        for row, reply in zip(ROWS, replies, strict=True)
    ]
    code, out = _bench_score(tmp_path, data, predictions)
    assert code == 0
    result = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert result["metrics"]["circular"] == 0.0 and result["n"] == 5


def _mc_item(index, choices, answer, category, rotations):
    return BenchItem(
        id=str(index),
        image=ImageRef(path="unused.png"),
        question="Which animal?",
        answers=(answer,),
        choices=choices,
        categories={"category": (category,)},
        group=str(index % 1_000_000),
        meta={"rotations": rotations},
    )


# Question 0 (2 rotations): rotation 0 read right, rotation 1 "b" left unread by the official rules
# but read as B (right) by the lenient ones. Question 1 (no rotation): "Answer: A" read as A by
# the official rules; the lenient rules alone would not read it. Question 2 (2 rotations):
# rotation 1 read wrong.
MC_PAIRS = [
    (_mc_item(0, ("cat", "dog"), "A", "x", 2), "A"),
    (_mc_item(1_000_000, ("dog", "cat"), "B", "x", 2), "b"),
    (_mc_item(1, ("cat", "dog"), "A", "y", 1), "Answer: A"),
    (_mc_item(2, ("cat", "dog"), "B", "y", 2), "B"),
    (_mc_item(1_000_002, ("dog", "cat"), "A", "y", 2), "B"),
]


def _mc_row(index, prediction, extracted, answer, lenient, category, rotations):
    return {
        "id": str(index),
        "group": str(index % 1_000_000),
        "rotations": rotations,
        "prediction": prediction,
        "extracted": extracted,
        "needs_judge": extracted is None,
        "answer": answer,
        "score": float(extracted == answer),
        "extracted_lenient": lenient,
        "score_lenient": float(lenient == answer),
        "categories": {"category": [category]},
    }


def test_scored_rows_hold_both_readings_and_the_answer():
    assert mmbench_en_dev.score(MC_PAIRS) == [
        _mc_row(0, "A", "A", "A", "A", "x", 2),
        _mc_row(1_000_000, "b", None, "B", "B", "x", 2),
        _mc_row(1, "Answer: A", "A", "A", "A", "y", 1),  # the official letter is kept as it is
        _mc_row(2, "B", "B", "B", "B", "y", 2),
        _mc_row(1_000_002, "B", "B", "A", "B", "y", 2),
    ]


def test_summary_numbers_by_hand():
    summary = mmbench_en_dev.summarize(mmbench_en_dev.score(MC_PAIRS))
    # circular: only question 1 has every rotation right (1 of 3); lenient: questions 0 and 1
    # (2 of 3). single pass: the rotation-0 rows 0, 1, 2, all right; rotation 1,000,000 (wrong)
    # is no first pass. unresolved: 1 row of 5. Needing a judge: question 0 (one rotation
    # unread, none read wrong); question 2 is decided by its wrong rotation, question 1 is read.
    assert summary == {
        "metrics": {
            "circular": 33.3333,
            "single_pass": 100.0,
            "unresolved": 20.0,
            "circular_lenient": 66.6667,
            "n_circular": 3,
            "n_needs_judge": 1,
        },
        "categories": {
            "category": {
                "x": {
                    "circular": 0.0,
                    "single_pass": 100.0,
                    "unresolved": 50.0,
                    "circular_lenient": 100.0,
                    "n_circular": 1,
                    "n_needs_judge": 1,
                    "n": 2,
                },
                "y": {
                    "circular": 50.0,
                    "single_pass": 100.0,
                    "unresolved": 0.0,
                    "circular_lenient": 50.0,
                    "n_circular": 2,
                    "n_needs_judge": 0,
                    "n": 3,
                },
            }
        },
        "headline": {
            "circular": "official rules, no judge: VLMEvalKit can_infer + circular evaluation "
            "(exact_matching)",
            "circular_lenient": "stic: unread replies read by stic's earlier rules",
        },
    }


def test_rows_written_before_the_lenient_reading_count_their_score_as_lenient():
    rows = mmbench_en_dev.score(MC_PAIRS)
    older = [
        {k: v for k, v in row.items() if k not in ("extracted_lenient", "score_lenient")}
        for row in rows
    ]
    metrics = mmbench_en_dev.metrics_of(older)
    assert metrics["circular_lenient"] == metrics["circular"] == 33.3333
