"""LLaVA-Bench in-the-wild: both formats and the relative score from a scripted local judge."""

from __future__ import annotations

import json

import pytest

from stic.data.benchmarks import BenchmarkDataError, read_benchmark, score_predictions
from stic.data.benchmarks.llava_bench_wild import parse_scores, prompt
from stic.modeling.judge import JudgeClient
from stic.tools.bench_score import main as bench_score
from tests.data.bench_fixtures import (
    ScriptedJudgeClient,
    png_bytes,
    write_hub_parquet,
    write_jsonl,
    write_png,
)
from tests.modeling.judge_server import ScriptedJudge

QUESTIONS = [
    {
        "question_id": 0,
        "image": "001.jpg",
        "text": "What is the name of this dish?",
        "category": "conv",
    },
    {
        "question_id": 1,
        "image": "001.jpg",
        "text": "Describe the photo in detail.",
        "category": "detail",
    },
    {
        "question_id": 2,
        "image": "002.jpg",
        "text": "Why might this be funny?",
        "category": "complex",
    },
]
# judge's first line per question: reference score, model score
SCORES = {"dish": "8 6", "detail": "10 5", "funny": "8, 8"}


def _original(tmp_path):
    root = tmp_path / "llava-bench-in-the-wild"
    write_jsonl(root / "questions.jsonl", QUESTIONS)
    write_jsonl(
        root / "answers_gpt4.jsonl",
        [{"question_id": q["question_id"], "text": f"ref {q['question_id']}"} for q in QUESTIONS],
    )
    write_jsonl(
        root / "context.jsonl",
        [
            {"id": "a", "image": "001.jpg", "caption": "A bowl of ramen."},
            {"id": "b", "image": "002.jpg", "caption": "A cat in a box."},
        ],
    )
    write_png(root / "images" / "001.jpg", 1)
    write_png(root / "images" / "002.jpg", 2)
    return root


def _replier(user: str) -> str:
    question = user.split("[Question]\n")[1].split("\n")[0]
    for word, line in SCORES.items():
        if word in question:
            return f"{line}\nAssistant 1 is more complete."
    return "no scores here"


def test_scores_parsed_from_the_first_line():
    assert parse_scores("8 6\nbecause") == (8.0, 6.0)
    assert parse_scores("7,9") == (7.0, 9.0)
    with pytest.raises(ValueError):  # LLaVA's parse_score splits on single spaces: 3 parts
        parse_scores("7, 9")
    with pytest.raises(ValueError):
        parse_scores("Assistant 1: 8, Assistant 2: 6")


def test_scores_at_both_ends_of_the_scale_are_read():
    assert parse_scores("1 10") == (1.0, 10.0)
    assert parse_scores("10 1") == (10.0, 1.0)


def test_unreadable_replies_are_refused_with_the_reply_in_80_characters():
    reply = "8 6 " + "x" * 100
    with pytest.raises(ValueError) as e:
        parse_scores(reply)
    assert str(e.value) == f"first line is not two space-separated scores: {reply[:80]!r}"
    reply = "0.5 6\n" + "x" * 100
    with pytest.raises(ValueError) as e:
        parse_scores(reply)
    assert str(e.value) == f"score 0.5 is not a number from 1 to 10: {reply[:80]!r}"


def test_means_are_rounded_to_3_decimals_before_the_ratio_as_llava_does():
    from stic.data.benchmarks.llava_bench_wild import summarize

    pairs = [(1.0, 1.0), (1.0, 1.0), (2.0, 3.0)]
    rows = [
        {"id": str(k), "reference_score": r, "model_score": m, "categories": {}}
        for k, (r, m) in enumerate(pairs)
    ]
    # reference mean 4/3 -> 1.333, model mean 5/3 -> 1.667: 1.667 / 1.333 = 125.06% -> 125.1
    # (unrounded means, or 4 decimals, give 125.0)
    assert summarize(rows)["metrics"] == {
        "relative_score": 125.1,
        "model_score": 16.7,
        "reference_score": 13.3,
        "relative_score_judged_only": 125.1,
        "judge_failed": 0,
    }


def test_original_format_relative_score_by_hand(tmp_path):
    items = read_benchmark("llava_bench_wild", _original(tmp_path))
    assert [i.id for i in items] == ["0", "1", "2"] and prompt(items[0]) == QUESTIONS[0]["text"]
    with ScriptedJudge() as server:
        server.replier = _replier
        judge = JudgeClient(url=server.url, model="gpt-judge", cache_path=tmp_path / "c.jsonl")
        result = score_predictions(
            "llava_bench_wild", items, {"0": "ramen", "1": "a photo", "2": "a cat"}, judge=judge
        )
        assert server.total == 3
        sent = next(
            r["messages"][1]["content"]
            for r in server.requests
            if "dish" in r["messages"][1]["content"]
        )
        assert sent.startswith(
            "[Context]\nA bowl of ramen.\n\n[Question]\nWhat is the name of this dish?"
        )
        assert "[Assistant 1]\nref 0\n\n[End of Assistant 1]\n\n[Assistant 2]\nramen\n" in sent
        assert server.requests[0]["temperature"] == 0.2
    # "8, 8" is unparseable to LLaVA's parse_score (three parts): the pair (-1, -1), counted.
    # reference 8, 10, -1 (mean 17/3 -> 5.667); model 6, 5, -1 (mean 10/3 -> 3.333), rounded
    # as LLaVA's summary rounds: 100 * 3.333 / 5.667 = 58.82 -> 58.8; judged only: 100 * 5.5 / 9
    assert result["metrics"] == {
        "relative_score": 58.8,
        "model_score": 33.3,
        "reference_score": 56.7,
        "relative_score_judged_only": 61.1,
        "judge_failed": 1,
    }
    per = result["categories"]["category"]
    assert per["conv"]["relative_score"] == 75.0 and per["detail"]["relative_score"] == 50.0
    # the official quirk: a category of failures alone is -1 / -1 = 100; judged only: nothing
    assert per["complex"]["relative_score"] == 100.0
    assert per["complex"]["relative_score_judged_only"] is None
    assert result["judge"]["prompt_version"] == "stic-llava-bench-v1"


def test_judge_required(tmp_path):
    items = read_benchmark("llava_bench_wild", _original(tmp_path))
    with pytest.raises(ValueError, match="judge"):
        score_predictions("llava_bench_wild", items, {"0": "x"})


def test_missing_context_file_named(tmp_path):
    root = _original(tmp_path)
    (root / "context.jsonl").unlink()
    with pytest.raises(BenchmarkDataError, match="lacks context.jsonl"):
        read_benchmark("llava_bench_wild", root)


def test_hub_parquet(tmp_path):
    rows = [
        {
            "question_id": q["question_id"],
            "question": q["text"],
            "image": png_bytes(n),
            "caption": "A bowl of ramen.",
            "gpt_answer": f"ref {n}",
            "category": q["category"],
            "image_id": q["image"],
        }
        for n, q in enumerate(QUESTIONS)
    ]
    write_hub_parquet(tmp_path / "hub" / "data" / "train-00000-of-00001.parquet", rows)
    items = read_benchmark("llava_bench_wild", tmp_path / "hub")
    assert items[2].answers == ("ref 2",) and items[2].categories["category"] == ("complex",)
    assert items[0].meta["caption"] == "A bowl of ramen."


@pytest.mark.parametrize("reply", ["11 -3", "nan nan", "inf 5", "1e999 1e999", "0 0"])
def test_out_of_range_scores_never_reach_a_result(tmp_path, reply):
    """Scores outside 1-10 or not finite are unparseable: the pair (-1, -1) as LLaVA's summary
    counts it, judge_failed, valid JSON; the rerun reads them from the judge cache."""
    root = _original(tmp_path)
    pred = write_jsonl(tmp_path / "pred.jsonl", [
        {"id": "0", "prediction": "ramen"}, {"id": "1", "prediction": "a photo"},
        {"id": "2", "prediction": "a cat"},
    ])  # fmt: skip
    out = tmp_path / "lbw.json"
    with ScriptedJudge() as server:
        # the dish question gets the bad reply; the other two are judged normally
        server.replier = lambda user: reply if "dish" in user else "8 6\nfine"
        args = ["--benchmark", "llava_bench_wild", "--data", str(root), "--out", str(out),
                "--predictions", str(pred), "--judge-url", server.url, "--judge-model", "j"]  # fmt: skip
        assert bench_score(args) == 0
        assert server.total == 3  # never asked again: LLaVA's script keeps the first reply
        assert bench_score(args) == 0 and server.total == 3
    result = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    # reference 8, 8, -1 -> 5.0; model 6, 6, -1 -> 3.667: 100 * 3.667 / 5 = 73.3
    assert result["metrics"] == {
        "relative_score": 73.3,
        "model_score": 36.7,
        "reference_score": 50.0,
        "relative_score_judged_only": 75.0,
        "judge_failed": 1,
    }
    assert result["judge"]["failures"][0]["id"] == "0"


ANSWERS = [{"question_id": q["question_id"], "text": "ref"} for q in QUESTIONS]
MALFORMED = [
    ("line not an object", "questions.jsonl", [*QUESTIONS[:2], ["x"]], "record #2: is list"),
    ("missing text", "questions.jsonl", [{**QUESTIONS[0], "text": None}], "record 0: 'text' is NoneType"),
    ("id of wrong type", "questions.jsonl", [{**QUESTIONS[0], "question_id": [0]}], "'question_id' is list"),
    ("bad category", "questions.jsonl", [{**QUESTIONS[0], "category": "chat"}], "category 'chat' not in"),
    ("duplicate id", "questions.jsonl", [QUESTIONS[0], QUESTIONS[0]], "record 0: its id appears twice"),
    ("empty questions", "questions.jsonl", [], "holds no records"),
    ("no reference answer", "answers_gpt4.jsonl", ANSWERS[1:], "record 0: has no reference answer"),
    ("answer not text", "answers_gpt4.jsonl", [{**ANSWERS[0], "text": 3}, *ANSWERS[1:]], "'text' is int"),
    ("duplicate answer", "answers_gpt4.jsonl", [*ANSWERS, ANSWERS[0]], "its id appears twice"),
    ("caption not text", "context.jsonl", [{"image": "001.jpg", "caption": 5}], "'caption' is int"),
    ("image without caption", "context.jsonl", [{"image": "001.jpg", "caption": "x"}], "has no caption"),
]  # fmt: skip


@pytest.mark.parametrize("case, name, rows, message", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_file_is_one_line_naming_file_record_problem(tmp_path, case, name, rows, message):
    root = _original(tmp_path)
    write_jsonl(root / name, rows)
    with pytest.raises(BenchmarkDataError) as error:
        read_benchmark("llava_bench_wild", root)
    text = str(error.value)
    assert "\n" not in text and name in text and message in text


def test_caption_list_joined_as_llava_does(tmp_path):
    root = _original(tmp_path)
    write_jsonl(root / "context.jsonl", [{"image": "001.jpg", "caption": ["A bowl.", "Ramen."]},
                                         {"image": "002.jpg", "caption": "A cat."}])  # fmt: skip
    assert read_benchmark("llava_bench_wild", root)[0].meta["caption"] == "A bowl.\nRamen."


_FakeJudge = ScriptedJudgeClient


def test_each_row_holds_the_judges_pair_and_a_failure_holds_llavas_failed_pair():
    from stic.data.benchmarks import BenchItem, ImageRef
    from stic.data.benchmarks.llava_bench_wild import judge_prompt, score
    from stic.data.benchmarks.records import JudgeVerdict

    items = [
        BenchItem(
            id=str(k),
            image=ImageRef(path="unused.png"),
            question=f"question {k}",
            answers=(f"reference {k}",),
            categories={"category": ("conv",)},
            meta={"caption": "a caption"},
        )
        for k in range(2)
    ]
    judge = _FakeJudge(
        [
            JudgeVerdict(value=(8.0, 6.0), raw="8 6\nok", error=None, cached=False),
            JudgeVerdict(value=None, raw="?", error="unparseable: ?", cached=False),
        ]
    )
    rows = score([(items[0], "answer 0"), (items[1], "answer 1")], judge)
    ((prompts, parse),) = judge.asked
    assert prompts == [judge_prompt(items[0], "answer 0"), judge_prompt(items[1], "answer 1")]
    assert parse is parse_scores
    assert rows == [
        {
            "id": "0",
            "prediction": "answer 0",
            "extracted": "answer 0",
            "answer": "reference 0",
            "categories": {"category": ["conv"]},
            "judge_raw": "8 6\nok",
            "reference_score": 8.0,
            "model_score": 6.0,
            "score": 0.6,
        },
        {
            "id": "1",
            "prediction": "answer 1",
            "extracted": "answer 1",
            "answer": "reference 1",
            "categories": {"category": ["conv"]},
            "judge_raw": "?",
            "judge_failed": "unparseable: ?",
            "reference_score": -1.0,
            "model_score": -1.0,
            "score": None,
        },
    ]
    with pytest.raises(ValueError) as e:
        score([(items[0], "a")], None)
    assert str(e.value) == "llava_bench_wild is scored by a judge model"


def test_a_judge_returning_fewer_verdicts_is_an_error():
    from stic.data.benchmarks import BenchItem, ImageRef
    from stic.data.benchmarks.llava_bench_wild import score
    from stic.data.benchmarks.records import JudgeVerdict

    item = BenchItem(
        id="0",
        image=ImageRef(path="unused.png"),
        question="q",
        answers=("r",),
        meta={"caption": "c"},
    )
    judge = _FakeJudge([JudgeVerdict(value=(8.0, 6.0), raw="8 6", error=None, cached=False)])
    judge.ask = lambda prompts, parse: judge.verdicts[:1]  # one verdict for two questions
    with pytest.raises(ValueError):
        score([(item, "a"), (item, "b")], judge)
