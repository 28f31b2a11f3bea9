"""MM-Vet: both formats, the judge's 0-1 correctness per capability, failures never scored."""

from __future__ import annotations

import json

import pytest

from stic.data.benchmarks import BenchmarkDataError, read_benchmark, score_predictions
from stic.data.benchmarks.mmvet import parse_correctness
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

MMVET = {
    "v1_0": {"imagename": "v1_0.png", "capability": ["ocr", "math"], "question": "What is 2+2 on the board?", "answer": "4"},
    "v1_1": {"imagename": "v1_1.png", "capability": ["rec"], "question": "Which animals?", "answer": "cat <AND> dog"},
    "v1_2": {"imagename": "v1_2.png", "capability": ["ocr"], "question": "What is the title?", "answer": "Dune"},
}  # fmt: skip
REPLIES = {"2+2": "1.0", "animals": "0.4 only the cat", "title": "Correct!"}


def _replier(user: str) -> str:
    last_row = [line for line in user.splitlines() if " | " in line][-1]  # re-asks add a line
    return next(reply for word, reply in REPLIES.items() if word in last_row)


def _original(tmp_path):
    root = tmp_path / "mm-vet"
    write_json(root / "mm-vet.json", MMVET)
    for key in MMVET:
        write_png(root / "images" / f"{key}.png")
    return root


@pytest.mark.parametrize("reply, value", [("1.0", 1.0), ("0.4 partly", 0.4), ("0", 0.0)])
def test_first_token_parsed(reply, value):
    assert parse_correctness(reply) == value


@pytest.mark.parametrize("reply", ["Correct!", "1.5", "", "-0.1"])
def test_bad_replies_rejected(reply):
    with pytest.raises(ValueError):
        parse_correctness(reply)


def test_an_out_of_range_score_is_refused_with_the_reply_in_60_characters():
    reply = "1.5 " + "because " * 20
    with pytest.raises(ValueError) as e:
        parse_correctness(reply)
    assert str(e.value) == f"score 1.5 outside [0, 1]: {reply[:60]!r}"


def test_capability_scores_and_judge_failure(tmp_path):
    items = read_benchmark("mmvet", _original(tmp_path))
    assert [i.id for i in items] == ["v1_0", "v1_1", "v1_2"]
    predictions = {
        "v1_0": "It shows 4.",
        "v1_1": "A cat.",
        "v1_2": "Some book | by someone\nline 2",
    }
    with ScriptedJudge() as server:
        server.replier = _replier
        judge = JudgeClient(
            url=server.url,
            model="judge",
            cache_path=tmp_path / "c.jsonl",
            backoff_s=0.01,
            parse_attempts=2,
        )
        result = score_predictions("mmvet", items, predictions, judge=judge)
        assert server.total == 7  # v1_2 asked five times (MM-Vet's evaluator), then failed
        first = next(r for r in server.requests if "title" in r["messages"][-1]["content"])
        last_row = first["messages"][-1]["content"].splitlines()[-1]
        assert last_row == "What is the title? | Dune | Some book / by someone<br>line 2 | "
    # v1_0 1.0, v1_1 0.4, v1_2 failed: 0.0 as the evaluator scores it -> 46.7; judged only 70
    assert result["metrics"] == {"score": 46.7, "score_judged_only": 70.0, "judge_failed": 1}
    caps = result["categories"]["capability"]
    assert caps["ocr"]["score"] == 50.0 and caps["math"]["score"] == 100.0
    assert caps["ocr"]["score_judged_only"] == 100.0
    assert caps["rec"]["score"] == 40.0
    assert result["judge"]["failures"][0]["id"] == "v1_2"
    assert "unparseable after 5 replies" in result["judge"]["failures"][0]["reason"]


def test_hub_parquet(tmp_path):
    rows = [
        {
            "question_id": key,
            "question": rec["question"],
            "answer": rec["answer"],
            "capability": ",".join(rec["capability"]),
            "image": png_bytes(1),
            "image_source": "x",
        }
        for key, rec in MMVET.items()
    ]
    write_hub_parquet(tmp_path / "MMVet" / "data" / "test-00000-of-00001.parquet", rows)
    items = read_benchmark("mmvet", tmp_path / "MMVet")
    assert items[0].categories == {"capability": ("ocr", "math")}


@pytest.mark.parametrize("reply", ["nan", "inf", "1e999", "-inf", "1.2"])
def test_non_finite_scores_reasked_then_zero(tmp_path, reply):
    """nan (which MM-Vet's evaluator would keep), inf, 1e999: refused and asked again (five
    replies), then 0.0 and judge_failed; the result is valid JSON and a rerun reads the cache."""
    root = _original(tmp_path)
    pred = write_jsonl(tmp_path / "p.jsonl", [{"id": k, "prediction": "x"} for k in MMVET])
    out = tmp_path / "mmvet.json"
    with ScriptedJudge() as server:
        server.replier = lambda user: reply if "title" in user else "1.0"
        args = ["--benchmark", "mmvet", "--data", str(root), "--out", str(out),
                "--predictions", str(pred), "--judge-url", server.url, "--judge-model", "j"]  # fmt: skip
        assert bench_score(args) == 0
        assert server.total == 2 + 5
        assert bench_score(args) == 0 and server.total == 7
    result = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert result["metrics"] == {"score": 66.7, "score_judged_only": 100.0, "judge_failed": 1}


MALFORMED = [
    ("not an object", {"v1_0": "x"}, "record v1_0: is str"),
    ("missing answer", {"v1_0": {k: v for k, v in MMVET["v1_0"].items() if k != "answer"}}, "lacks 'answer'"),
    ("answer not text", {"v1_0": {**MMVET["v1_0"], "answer": 4}}, "'answer' is int"),
    ("unknown capability", {"v1_0": {**MMVET["v1_0"], "capability": ["ocr", "vision"]}}, "'vision' not in"),
    ("empty capability", {"v1_0": {**MMVET["v1_0"], "capability": []}}, "not a list of names"),
    ("imagename not text", {"v1_0": {**MMVET["v1_0"], "imagename": None}}, "'imagename' is NoneType"),
    ("empty file", {}, "holds no records"),
]  # fmt: skip


@pytest.mark.parametrize("case, document, message", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_file_is_one_line_naming_file_record_problem(tmp_path, case, document, message):
    root = _original(tmp_path)
    write_json(root / "mm-vet.json", document)
    with pytest.raises(BenchmarkDataError) as error:
        read_benchmark("mmvet", root)
    text = str(error.value)
    assert "\n" not in text and "mm-vet.json" in text and message in text


_FakeJudge = ScriptedJudgeClient


def test_each_row_holds_the_judges_verdict_and_a_failure_scores_the_evaluators_zero():
    from stic.data.benchmarks import BenchItem, ImageRef
    from stic.data.benchmarks.mmvet import judge_prompt, score
    from stic.data.benchmarks.records import JudgeVerdict

    items = [
        BenchItem(
            id=f"v{k}",
            image=ImageRef(path="unused.png"),
            question=f"question {k}",
            answers=(f"answer {k}",),
            categories={"capability": ("ocr", "math")},
        )
        for k in range(2)
    ]
    judge = _FakeJudge(
        [
            JudgeVerdict(value=0.4, raw="0.4 partly", error=None, cached=False),
            JudgeVerdict(value=None, raw="?", error="unparseable", cached=False),
        ]
    )
    rows = score([(items[0], "reply 0"), (items[1], "reply 1")], judge)
    ((prompts, parse),) = judge.asked
    assert prompts == [judge_prompt(items[0], "reply 0"), judge_prompt(items[1], "reply 1")]
    assert parse is parse_correctness
    common = {"categories": {"capability": ["ocr", "math"]}}
    assert rows == [
        {"id": "v0", "prediction": "reply 0", "extracted": "reply 0", "answer": "answer 0"}
        | {"score": 0.4, "judge_raw": "0.4 partly"}
        | common,
        {"id": "v1", "prediction": "reply 1", "extracted": "reply 1", "answer": "answer 1"}
        | {"score": 0.0, "judge_raw": "?", "judge_failed": "unparseable"}
        | common,
    ]
    with pytest.raises(ValueError) as e:
        score([(items[0], "a")], None)
    assert str(e.value) == "mmvet is scored by a judge model"
    judge = _FakeJudge([JudgeVerdict(value=1.0, raw="1", error=None, cached=False)])
    judge.ask = lambda prompts, parse: judge.verdicts[:1]  # one verdict for two questions
    with pytest.raises(ValueError):
        score([(items[0], "a"), (items[1], "b")], judge)
