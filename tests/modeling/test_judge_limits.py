"""The judge client's limits against a scripted HTTP judge on 127.0.0.1: Retry-After, the reply
size cap, and stopping (a stop from another thread here; a real Ctrl-C of `stic bench score`
in test_judge_interrupt.py)."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from stic.modeling.judge import JudgeClient, retry_after_seconds
from tests.modeling.judge_server import ScriptedJudge
from tests.modeling.test_judge import as_float, client, prompts


def test_retry_after_header_forms():
    now = datetime(2026, 12, 2, 14, 0, 0, tzinfo=timezone.utc)
    assert retry_after_seconds("120", now) == 120.0
    assert retry_after_seconds(" 0 ", now) == 0.0
    assert retry_after_seconds("Wed, 02 Dec 2026 14:01:30 GMT", now) == 90.0
    assert retry_after_seconds("Wed, 02 Dec 2026 13:00:00 GMT", now) == 0.0  # past: at once
    for unusable in (None, "", "soon", "-5", "1.5"):
        assert retry_after_seconds(unusable, now) is None


def test_retry_after_seconds_waited_out_before_the_retry():
    with ScriptedJudge() as server:
        (verdict,) = client(server).ask(prompts("x [429:1] [reply:0.3]"), as_float)
        assert verdict.value == 0.3 and verdict.error is None
        (first, t0), (second, t1) = server.arrivals
        assert first == second and t1 - t0 >= 1.0  # backoff_s is 0.01: the header set the wait


def test_retry_after_as_http_date_waited_out():
    when = datetime.now(timezone.utc) + timedelta(seconds=3)
    header = when.strftime("%a, %d %b %Y %H:%M:%S GMT")  # whole seconds: 2 to 3 s from now
    with ScriptedJudge() as server:
        (verdict,) = client(server).ask(prompts(f"x [429:{header}] [reply:0.4]"), as_float)
        assert verdict.value == 0.4
        (_, t0), (_, t1) = server.arrivals
        assert t1 - t0 >= 1.0


def test_retry_after_over_the_bound_fails_at_once_saying_so():
    with ScriptedJudge() as server:
        judge = client(server, retry_after_max_s=60)
        (verdict,) = judge.ask(prompts("x [429:3600]"), as_float)
        assert verdict.value is None and verdict.error.startswith("http 429")
        assert "retry after 3600 s, more than the 60 s" in verdict.error
        assert server.total == 1


@pytest.mark.parametrize("marker", ["huge", "stream"])  # with and without Content-Length
def test_reply_over_the_size_cap_is_a_failure_not_retried(marker, tmp_path):
    with ScriptedJudge() as server:
        judge = client(server, tmp_path, max_reply_bytes=1000)
        big, small = judge.ask(prompts(f"a [{marker}:2000]", f"b [{marker}:900]"), str)
        assert big.value is None and "1000-byte cap" in big.error
        assert small.error is None and small.value == "x" * 900  # under the cap: read whole
        assert server.hits[f"a [{marker}:2000]"] == 1
    rows = (tmp_path / "judge_cache.jsonl").read_text().splitlines()
    assert len(rows) == 1 and '"x' in rows[0]  # a failure is not cached; a rerun retries it


def test_stop_sends_nothing_queued_and_drops_replies_in_flight(tmp_path):
    release = threading.Event()
    with ScriptedJudge() as server:
        server.replier = lambda user: (release.wait(30), "0.5")[1]  # held in flight
        judge = client(server, tmp_path, concurrency=2)
        raised: list[BaseException] = []

        def ask() -> None:
            try:
                judge.ask(prompts(*(f"q{i}" for i in range(10))), as_float)
            except BaseException as e:
                raised.append(e)

        asker = threading.Thread(target=ask)
        asker.start()
        deadline = time.monotonic() + 30
        while server.total < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.total == 2  # two in flight, eight queued
        judge.stop()
        release.set()  # the two replies arrive after the stop
        asker.join(30)
        assert not asker.is_alive()
        assert server.total == 2  # nothing queued was sent
        assert [str(e) for e in raised] == ["judge client was stopped"]
    assert not (tmp_path / "judge_cache.jsonl").exists()  # both replies dropped whole
    with pytest.raises(RuntimeError, match="stopped"):
        judge.ask(prompts("again"), as_float)


def test_limits_are_validated():
    for bad in ({"retry_after_max_s": -1}, {"max_reply_bytes": 0}):
        with pytest.raises(ValueError, match="retry_after_max_s must be >= 0"):
            JudgeClient(url="http://127.0.0.1:9/v1", model="m", **bad)
