"""The judge client against a real scripted HTTP judge on 127.0.0.1."""

from __future__ import annotations

import pytest

from stic.data.benchmarks import JudgePrompt
from stic.modeling.judge import JudgeClient, prompt_key
from tests.modeling.judge_server import ScriptedJudge


def as_float(reply: str) -> float:
    value = float(reply.strip().split()[0])  # ValueError on words
    if not 0 <= value <= 1:
        raise ValueError(f"{value} outside [0, 1]")
    return value


def client(server, tmp_path=None, **kw) -> JudgeClient:
    kw = {"timeout_s": 5.0, "backoff_s": 0.01, "retries": 3, "concurrency": 3, **kw}
    cache = None if tmp_path is None else tmp_path / "judge_cache.jsonl"
    return JudgeClient(url=server.url, model="judge-x", cache_path=cache, **kw)


def prompts(*users: str) -> list[JudgePrompt]:
    return [JudgePrompt(system="grade", user=u) for u in users]


def test_scripted_replies_in_order_and_duplicates_asked_once():
    with ScriptedJudge() as server:
        judge = client(server)
        verdicts = judge.ask(prompts("a [reply:0.1]", "b [reply:0.9]", "a [reply:0.1]"), as_float)
        assert [v.value for v in verdicts] == [0.1, 0.9, 0.1]
        assert all(v.error is None and not v.cached for v in verdicts)
        assert server.total == 2 == judge.calls
        assert server.requests[0]["model"] == "judge-x"
        assert server.requests[0]["messages"][0] == {"role": "system", "content": "grade"}


def test_server_errors_retried_with_backoff_then_answered():
    with ScriptedJudge() as server:
        (verdict,) = client(server).ask(prompts("x [fail500:2] [reply:0.3]"), as_float)
        assert verdict.value == 0.3 and verdict.error is None
        assert server.total == 3


def test_persistent_server_error_is_a_failure_with_reason_not_a_score():
    with ScriptedJudge() as server:
        (verdict,) = client(server, retries=2).ask(prompts("x [fail500:99]"), as_float)
        assert verdict.value is None and verdict.error.startswith("http 500")
        assert "after 3 tries" in verdict.error and server.total == 3


def test_client_errors_are_not_retried():
    with ScriptedJudge() as server:
        (verdict,) = client(server).ask(prompts("[401]"), as_float)
        assert verdict.error.startswith("http 401") and server.total == 1


def test_non_json_body_retried_then_reported():
    with ScriptedJudge() as server:
        (verdict,) = client(server, retries=1).ask(prompts("[badjson]"), as_float)
        assert verdict.value is None and "not a chat-completions reply" in verdict.error
        assert server.total == 2


def test_garbage_reasked_at_rising_temperature_then_judge_failed(tmp_path):
    with ScriptedJudge() as server:
        (verdict,) = client(server, tmp_path, parse_attempts=3).ask(prompts("[garbage]"), as_float)
        assert verdict.value is None
        assert verdict.error.startswith("unparseable after 3 replies")
        assert verdict.raw == "I would rather not grade this."
        assert [r["temperature"] for r in server.requests] == [0.0, 0.2, 0.4]
        # the three raw replies are cached: a rerun asks nothing and fails the same way
        again = client(server, tmp_path, parse_attempts=3)
        (verdict,) = again.ask(prompts("[garbage]"), as_float)
        assert verdict.cached and verdict.error.startswith("unparseable") and again.calls == 0


@pytest.mark.slow
def test_slow_reply_times_out_and_is_retried():
    with ScriptedJudge() as server:
        (verdict,) = client(server, timeout_s=0.3).ask(prompts("[slow:1.0] [reply:0.7]"), as_float)
        assert verdict.value == 0.7 and server.total == 2
        (verdict,) = client(server, timeout_s=0.3, retries=0).ask(prompts("[slow:1.0] z"), as_float)
        assert verdict.value is None and verdict.error.startswith("timeout after 0.3s")


def test_cache_resumes_a_killed_run_without_new_calls(tmp_path):
    users = [f"q{i} [reply:0.{i}]" for i in range(5)]
    with ScriptedJudge() as server:
        client(server, tmp_path).ask(prompts(*users[:3]), as_float)  # the run "killed" after 3
        cache = tmp_path / "judge_cache.jsonl"
        with open(cache, "a") as f:  # and a torn line, as a kill mid-write leaves
            f.write('{"key": "abc", "mod')
        assert server.total == 3
        resumed = client(server, tmp_path)
        verdicts = resumed.ask(prompts(*users), as_float)
        assert [v.value for v in verdicts] == [0.0, 0.1, 0.2, 0.3, 0.4]
        assert resumed.calls == 2 and server.total == 5  # only the two it never had
        assert [v.cached for v in verdicts] == [True, True, True, False, False]
        rerun = client(server, tmp_path)
        rerun.ask(prompts(*users), as_float)
        assert rerun.calls == 0 and server.total == 5


def test_cache_is_per_judge_model(tmp_path):
    with ScriptedJudge() as server:
        client(server, tmp_path).ask(prompts("q [reply:0.5]"), as_float)
        other = JudgeClient(
            url=server.url, model="judge-y", cache_path=tmp_path / "judge_cache.jsonl"
        )
        other.ask(prompts("q [reply:0.5]"), as_float)
        assert other.calls == 1
    assert prompt_key("judge-x", prompts("q")[0]) != prompt_key("judge-y", prompts("q")[0])


def test_key_read_from_named_variable_and_never_written(tmp_path, monkeypatch):
    monkeypatch.setenv("STIC_TEST_JUDGE_KEY", "sk-secret-123")
    with ScriptedJudge() as server:
        judge = client(server, tmp_path, key_env="STIC_TEST_JUDGE_KEY")
        judge.ask(prompts("q [reply:0.5]"), as_float)
        assert server.requests[0]["authorization"] == "Bearer sk-secret-123"
    assert "sk-secret" not in (tmp_path / "judge_cache.jsonl").read_text()
    assert "sk-secret" not in repr(judge) and "sk-secret" not in str(judge.describe())
    monkeypatch.delenv("STIC_TEST_JUDGE_KEY")
    with pytest.raises(ValueError, match="STIC_TEST_JUDGE_KEY is not set"):
        JudgeClient(url="http://127.0.0.1:9/v1", model="m", key_env="STIC_TEST_JUDGE_KEY")


def test_run_checks_every_judge_key_and_url_before_the_first_stage(monkeypatch):
    from types import SimpleNamespace

    from stic.pipeline import judge_problems

    monkeypatch.delenv("STIC_TEST_NO_KEY", raising=False)
    entry = SimpleNamespace(judge_key_env="STIC_TEST_NO_KEY", judge_url="localhost:8000/v1")
    assert judge_problems("bench[1].", entry) == [
        "bench[1].judge_key_env: environment variable STIC_TEST_NO_KEY is not set",
        "bench[1].judge_url: 'localhost:8000/v1' is not an http(s) URL with a host",
    ]
    monkeypatch.setenv("STIC_TEST_NO_KEY", "k")
    entry.judge_url = "http://127.0.0.1:8000/v1"
    assert judge_problems("bench[1].", entry) == []
