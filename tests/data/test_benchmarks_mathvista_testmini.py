"""MathVista testmini: both formats, the format prompt, rule extraction and judged extraction."""

from __future__ import annotations

import json

import pytest

from stic.data.benchmarks import BenchmarkDataError, read_benchmark, score_predictions
from stic.data.benchmarks.mathvista_testmini import extract_by_rules, prompt
from stic.modeling.judge import JudgeClient
from stic.tools.bench_score import main as bench_score
from tests.data.bench_fixtures import (
    ScriptedJudgeClient,
    png_bytes,
    write_hub_parquet,
    write_json,
    write_jsonl,
    write_png,
)
from tests.modeling.judge_server import ScriptedJudge

META = {"task": "figure question answering", "skills": ["arithmetic reasoning"], "source": "x"}
PROBLEMS = {
    "1": {"question": "Which is larger?", "image": "images/1.jpg", "choices": ["the cat", "the dog", "equal"],
          "unit": None, "precision": None, "answer": "the dog", "question_type": "multi_choice",
          "answer_type": "text", "metadata": META},
    "2": {"question": "How long is the bar?", "image": "images/2.jpg", "choices": None, "unit": "cm",
          "precision": None, "answer": "12", "question_type": "free_form", "answer_type": "integer",
          "metadata": {**META, "task": "math word problem"}},
    "3": {"question": "What is the slope?", "image": "images/3.jpg", "choices": None, "unit": None,
          "precision": 2.0, "answer": "0.75", "question_type": "free_form", "answer_type": "float",
          "metadata": META},
    "4": {"question": "What is the value?", "image": "images/4.jpg", "choices": None, "unit": None,
          "precision": 1.0, "answer": "1.5", "question_type": "free_form", "answer_type": "float",
          "metadata": META},
    "5": {"question": "Roots?", "image": "images/5.jpg", "choices": None, "unit": None,
          "precision": None, "answer": "[-2, 3]", "question_type": "free_form", "answer_type": "list",
          "metadata": META},
}  # fmt: skip


def _original(tmp_path):
    root = tmp_path / "MathVista" / "data"
    write_json(root / "testmini.json", PROBLEMS)
    for pid in PROBLEMS:
        write_png(root / "images" / f"{pid}.jpg", int(pid))
    return root


def test_prompts_by_type(tmp_path):
    items = {i.id: i for i in read_benchmark("mathvista_testmini", _original(tmp_path))}
    assert prompt(items["1"]) == (
        "Which is larger?\nA. the cat\nB. the dog\nC. equal\n"
        "Answer with the option's letter from the given choices directly."
    )
    assert prompt(items["2"]) == (
        "How long is the bar? (Unit: cm)\nAnswer the question using a single integer number."
    )
    assert prompt(items["3"]).endswith("a single floating-point number with two decimal places.")
    assert prompt(items["4"]).endswith("a single floating-point number with one decimal place.")
    assert prompt(items["5"]).endswith("Answer the question using a Python list.")


@pytest.mark.parametrize(
    "pid, prediction, extracted",
    [
        ("1", "B", "the dog"),  # letter -> its choice
        ("1", "(B)", "the dog"),
        ("1", "the dog", "the dog"),  # the choice text itself
        ("1", "D", None),  # not an option
        ("1", "The Dog", "the dog"),  # the choice text in another case
        ("1", "THE CAT", "the cat"),
        ("1", "I think the dog is larger", None),  # rules cannot read it
        ("2", "12 cm", "12"),  # unit removed
        ("2", "12.0", "12"),  # str(int(float(x)))
        ("2", "The answer is 13.", "13"),
        ("2", "125 cm", "125"),  # a unit shorter than the number
        ("2", "12 cm.", "12"),  # trailing periods go before the unit does
        ("2", "12..", "12"),
        ("2", "12X", None),  # only periods are dropped at the end
        ("2", "1,200", "1200"),  # a thousands comma goes
        ("2", "1,20", None),  # a comma before fewer than 3 digits stays: not a number
        ("3", "0.754", "0.75"),  # rounded to precision 2
        ("3", "0.7", "0.7"),
        ("4", "1.46", "1.5"),  # precision 1
        ("5", "[-2, 3]", "[-2, 3]"),
        ("5", "(-2, 3)", "[-2, 3]"),
    ],
)
def test_rule_extraction(tmp_path, pid, prediction, extracted):
    items = {i.id: i for i in read_benchmark("mathvista_testmini", _original(tmp_path))}
    assert extract_by_rules(prediction, items[pid]) == extracted


def _replier(user: str) -> str:
    query = user.rsplit("Extracted answer: ", 2)[-2]  # the last problem, after the examples
    if "dog is larger" in query:
        return "B"
    if "12 cm" in query:
        return "12"
    if "Question: Roots?" in query:
        return "[-2, 3]"
    return "no idea at all"


def test_rule_and_judged_accuracy(tmp_path):
    items = read_benchmark("mathvista_testmini", _original(tmp_path))
    predictions = {
        "1": "I think the dog is larger",  # rules: none; the judge says B -> right
        "2": "12 cm",  # stic's rules read 12; officially int("12 cm") fails: the judge says 12
        "3": "0.7",  # float() reads it (no judge): wrong, 0.7 != 0.75
        "4": "It is about one and a half",  # rules: none; the judge reads no number -> wrong
        "5": "[-2, 3]",  # a list always goes to the official judge; stic's rules read it
    }
    rule_only = score_predictions("mathvista_testmini", items, predictions)
    # rules: 2 and 5 right of 5 -> 40; without a judge the headline is the rule reading
    assert rule_only["metrics"] == {"accuracy": 40.0, "accuracy_rules": 40.0}
    assert rule_only["headline"]["accuracy"].startswith("rules only")
    assert rule_only["categories"]["task"]["math word problem"] == {
        "accuracy": 100.0, "accuracy_rules": 100.0, "n": 1
    }  # fmt: skip

    with ScriptedJudge() as server:
        server.replier = _replier
        judge = JudgeClient(url=server.url, model="judge", cache_path=tmp_path / "c.jsonl")
        judged = score_predictions("mathvista_testmini", items, predictions, judge=judge)
        assert server.total == 4  # all but "0.7", which float() reads whole
        assert all([m["role"] for m in r["messages"]] == ["user"] for r in server.requests)
    rows = {r["id"]: r for r in judged["items"]}
    assert rows["1"]["extracted"] == "B" and rows["1"]["normalized"] == "the dog"
    assert rows["1"]["extracted_by"] == "judge" and rows["3"]["extracted_by"] == "rules"
    # official: 1, 2, 5 right of 5 -> 60 (the headline); the rule reading stays 40
    assert judged["metrics"] == {"accuracy": 60.0, "accuracy_rules": 40.0, "judge_failed": 0}
    assert judged["headline"]["accuracy"].startswith("official")
    assert judged["judge"]["model"] == "judge"
    assert judged["judge"]["prompt_version"] == "stic-mathvista-extract-v2"


def test_hub_parquet(tmp_path):
    rows = [
        {"pid": pid, **{k: v for k, v in rec.items() if k != "metadata"},
         "precision": rec["precision"], "choices": rec["choices"], "unit": rec["unit"] or "",
         "metadata": rec["metadata"], "query": "q", "decoded_image": png_bytes(int(pid))}
        for pid, rec in PROBLEMS.items()
    ]  # fmt: skip
    root = tmp_path / "MathVista"
    write_hub_parquet(root / "data" / "testmini-00000-of-00001.parquet", rows, ("decoded_image",))
    write_hub_parquet(root / "data" / "test-00000-of-00002.parquet", rows[:1], ("decoded_image",))
    items = read_benchmark("mathvista_testmini", root)
    assert [i.id for i in items] == ["1", "2", "3", "4", "5"]
    assert items[0].image.load().size == (8, 8) and items[1].meta["unit"] == "cm"
    assert prompt(items[2]).endswith("two decimal places.")
    result = score_predictions("mathvista_testmini", items, {"1": "B", "2": "12", "3": "0.75"})
    assert result["metrics"]["accuracy"] == 100.0


def _strict_json(text: str):
    def refuse(constant):
        raise ValueError(f"{constant} in a result file")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("bad", ["inf", "1e999", "nan", "-inf", "9" * 5000])
def test_non_finite_predictions_scored_and_resumed(tmp_path, bad):
    """A prediction inf/1e999/nan (or 5,000 digits) is scored as the official rule scores it,
    the result is valid JSON, and a rerun from the partial file and the judge cache works."""
    root = _original(tmp_path)
    rows = [{"id": pid, "prediction": bad} for pid in PROBLEMS]
    partial = write_jsonl(tmp_path / "partial.jsonl", rows[:3])
    full = write_jsonl(tmp_path / "pred.jsonl", rows)
    out = tmp_path / "mv.json"
    with ScriptedJudge() as server:
        server.replier = lambda user: bad  # the judge copies the reply out, as it would
        args = ["--benchmark", "mathvista_testmini", "--data", str(root), "--out", str(out),
                "--judge-url", server.url, "--judge-model", "judge"]  # fmt: skip
        assert bench_score([*args, "--predictions", str(partial)]) == 0
        assert bench_score([*args, "--predictions", str(full)]) == 0
        asked = server.total
        assert bench_score([*args, "--predictions", str(full)]) == 0
        assert server.total == asked  # the rerun reads the judge cache
    result = _strict_json(out.read_text())
    assert result["n"] == 5 and result["metrics"]["accuracy"] == 0.0  # never right, never a crash
    by = {r["id"]: r["extracted_by"] for r in result["items"]}
    # float() reads each whole (5,000 nines as inf): no judge; int() reads none: the judge
    assert by["4"] == "rules" and by["2"] == "judge"


def _with(pid: str, **changes) -> dict:
    record = {**PROBLEMS[pid], **changes}
    return {k: v for k, v in record.items() if v is not DROP}


DROP = object()
MALFORMED = [
    ("not an object", {"1": "just text"}, "record 1: is str, not a JSON object"),
    ("missing field", {"1": _with("1", answer=DROP)}, "record 1: lacks 'answer'"),
    ("wrong type", {"1": _with("1", question=["Which?"])}, "record 1: 'question' is list"),
    ("choices a string", {"1": _with("1", choices="the cat, the dog")}, "not a list of strings"),
    ("answer not a choice", {"1": _with("1", answer="the cow")}, "not one of its choices"),
    ("multi_choice without choices", {"1": _with("1", choices=None)}, "needs a list of choices"),
    ("bad question_type", {"2": _with("2", question_type="open")}, "question_type 'open' not in"),
    ("bad answer_type", {"2": _with("2", answer_type="number")}, "answer_type 'number' not in"),
    ("free-form text", {"2": _with("2", answer_type="text")}, "has no rule for it"),
    ("float without precision", {"3": _with("3", precision=None)}, "needs its precision"),
    ("precision not whole", {"3": _with("3", precision=1.5)}, "not a whole number"),
    ("answer not finite", {"3": _with("3", answer=float("inf"))}, "not finite"),
    ("image not a string", {"2": _with("2", image=7)}, "'image' is int"),
    ("metadata not an object", {"2": _with("2", metadata=[1])}, "metadata is not an object"),
    ("empty file", {}, "holds no records"),
    ("duplicate pid", [{**PROBLEMS["2"], "pid": "2"}, {**PROBLEMS["2"], "pid": "2"}],
     "record 2: its id appears twice"),
    ("list record without pid", [PROBLEMS["2"]], "record #0: lacks 'pid'"),
]  # fmt: skip


@pytest.mark.parametrize("case, document, message", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_file_is_one_line_naming_file_record_problem(tmp_path, case, document, message):
    root = _original(tmp_path)
    (root / "testmini.json").write_text(json.dumps(document))
    with pytest.raises(BenchmarkDataError) as error:
        read_benchmark("mathvista_testmini", root)
    text = str(error.value)
    assert "\n" not in text and str(root / "testmini.json") in text and message in text


def test_malformed_hub_row_named(tmp_path):
    rows = [{"pid": "1", **{**PROBLEMS["1"], "answer": "the cow"}, "decoded_image": png_bytes(1)}]
    write_hub_parquet(
        tmp_path / "data" / "testmini-00000-of-00001.parquet", rows, ("decoded_image",)
    )
    with pytest.raises(BenchmarkDataError, match="record 1: answer 'the cow' is not one of"):
        read_benchmark("mathvista_testmini", tmp_path)


_FakeJudge = ScriptedJudgeClient


def _integer_item(pid: str):
    from stic.data.benchmarks import BenchItem, ImageRef

    return BenchItem(
        id=pid,
        image=ImageRef(path="unused.png"),
        question="How many?",
        answers=("3",),
        categories={"task": ("count",), "skill": ("a", "b")},
        meta={
            "question_type": "free_form",
            "answer_type": "integer",
            "unit": None,
            "precision": None,
            "query": "Hint: an integer.\nQuestion: How many?",
        },
    )


PAIRS = [("a", "3"), ("b", "The answer is 3."), ("c", "no idea")]


def _expected_rows():
    """Each row before the headline is chosen: the official extraction (None where the official
    script would ask its judge) and stic's rules-only verdict."""
    common = {"answer": "3", "categories": {"task": ["count"], "skill": ["a", "b"]}}
    return [
        {"id": "a", "prediction": "3", "extracted": "3", "extracted_by": "rules"}
        | {"normalized_rules": "3", "score_rules": 1.0}
        | common,
        {"id": "b", "prediction": "The answer is 3.", "extracted": None, "extracted_by": None}
        | {"normalized_rules": "3", "score_rules": 1.0}
        | common,
        {"id": "c", "prediction": "no idea", "extracted": None, "extracted_by": None}
        | {"normalized_rules": None, "score_rules": 0.0}
        | common,
    ]


def test_rows_without_a_judge_take_the_rules_verdict():
    from stic.data.benchmarks.mathvista_testmini import score

    rows = score([(_integer_item(pid), text) for pid, text in PAIRS])
    expected = _expected_rows()
    for row in expected:
        row.update(headline="rules", score=row["score_rules"], normalized=row["normalized_rules"])
    assert rows == expected


def test_rows_with_a_judge_take_the_official_verdict_of_the_judges_extraction():
    from stic.data.benchmarks.mathvista_testmini import judge_prompt, parse_extraction, score
    from stic.data.benchmarks.records import JudgeVerdict

    judge = _FakeJudge(
        [
            JudgeVerdict(value="4", raw=" 4", error=None, cached=False),
            JudgeVerdict(value=None, raw=None, error="timeout", cached=False),
        ]
    )
    items = [_integer_item(pid) for pid, _ in PAIRS]
    rows = score([(item, text) for item, (_, text) in zip(items, PAIRS, strict=True)], judge)
    # only the replies the official script cannot read are sent to the judge, in order
    ((prompts, parse),) = judge.asked
    assert prompts == [judge_prompt(items[1], PAIRS[1][1]), judge_prompt(items[2], PAIRS[2][1])]
    assert parse is parse_extraction
    a, b, c = _expected_rows()
    a.update(headline="official", score=1.0, normalized="3")
    b.update(extracted="4", extracted_by="judge", judge_raw=" 4")
    b.update(headline="official", score=0.0, normalized="4")
    # a failed judge call: the official script keeps "" (never right), and it is counted
    c.update(extracted="", extracted_by="judge", judge_raw=None, judge_failed="timeout")
    c.update(headline="official", score=0.0, normalized=None)
    assert rows == [a, b, c]


def test_a_judge_returning_fewer_verdicts_is_an_error():
    from stic.data.benchmarks.mathvista_testmini import score
    from stic.data.benchmarks.records import JudgeVerdict

    judge = _FakeJudge([JudgeVerdict(value="4", raw="4", error=None, cached=False)])
    judge.ask = lambda prompts, parse: judge.verdicts[:1]  # one verdict for two prompts
    items = [_integer_item(pid) for pid, _ in PAIRS]
    with pytest.raises(ValueError):
        score([(item, text) for item, (_, text) in zip(items, PAIRS, strict=True)], judge)


def test_the_rules_reading_starts_from_the_official_extraction():
    """A float reply "inf" is read by the official extract_answer (float("inf")) and normalised
    as the official script does; stic's own rules would refuse a non-finite number."""
    import dataclasses

    from stic.data.benchmarks.mathvista_testmini import score

    item = _integer_item("f")
    item = dataclasses.replace(item, meta={**item.meta, "answer_type": "float", "precision": 1})
    (row,) = score([(item, "inf")])
    assert (row["extracted"], row["normalized_rules"], row["score_rules"]) == ("inf", "inf", 0.0)


def _reference_distance(a: str, b: str) -> int:
    from functools import cache

    @cache
    def d(i: int, j: int) -> int:
        if i == 0 or j == 0:
            return i + j
        return min(d(i - 1, j) + 1, d(i, j - 1) + 1, d(i - 1, j - 1) + (a[i - 1] != b[j - 1]))

    return d(len(a), len(b))


def test_edit_distance_is_levenshtein():
    import random

    from stic.data.benchmarks.mathvista_testmini import edit_distance

    assert edit_distance("", "") == 0
    assert edit_distance("ab", "") == 2 and edit_distance("", "abc") == 3
    assert edit_distance("kitten", "sitting") == 3 and edit_distance("sitting", "kitten") == 3
    assert edit_distance("abc", "ac") == 1 and edit_distance("ac", "abc") == 1
    rng = random.Random(0)
    for _ in range(300):
        a = "".join(rng.choice("ab c") for _ in range(rng.randint(0, 6)))
        b = "".join(rng.choice("ab c") for _ in range(rng.randint(0, 6)))
        assert edit_distance(a, b) == _reference_distance(a, b), (a, b)


def test_an_empty_judge_reply_is_asked_again_a_blank_one_is_the_empty_extraction():
    from stic.data.benchmarks.mathvista_testmini import parse_extraction

    with pytest.raises(ValueError) as e:
        parse_extraction("")
    assert str(e.value) == "empty reply"
    assert parse_extraction(" ") == ""
    assert parse_extraction(" (B) \n") == "(B)"


def test_judge_failures_are_counted_in_the_summary():
    from stic.data.benchmarks.mathvista_testmini import score, summarize
    from stic.data.benchmarks.records import JudgeVerdict

    judge = _FakeJudge(
        [
            JudgeVerdict(value="4", raw="4", error=None, cached=False),
            JudgeVerdict(value=None, raw=None, error="timeout", cached=False),
        ]
    )
    rows = score([(_integer_item(pid), text) for pid, text in PAIRS], judge)
    summary = summarize(rows)
    # a right by rules; b judged "4" (wrong); c failed: 1 of 3 officially, a and b by rules
    assert summary["metrics"] == {"accuracy": 33.3333, "accuracy_rules": 66.6667, "judge_failed": 1}
    assert summary["categories"]["task"]["count"] == {
        "accuracy": 33.3333, "accuracy_rules": 66.6667, "judge_failed": 1, "n": 3
    }  # fmt: skip


@pytest.mark.parametrize(
    "extraction, normalized",
    [
        ("(B)", "the dog"),  # a letter in parentheses gives its choice
        ("(b) the cat", "the dog"),  # the first one, upper-cased
        ("the answer is (C), equal", "equal"),
        ("B", "the dog"),
        ("the cat!", "the cat"),  # otherwise the nearest choice
    ],
)
def test_official_normalisation_of_a_choice(tmp_path, extraction, normalized):
    from stic.data.benchmarks.mathvista_testmini import official_normalize

    items = {i.id: i for i in read_benchmark("mathvista_testmini", _original(tmp_path))}
    assert official_normalize(extraction, items["1"]) == normalized
