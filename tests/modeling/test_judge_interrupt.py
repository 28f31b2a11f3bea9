"""A real Ctrl-C (SIGINT) to `stic bench score` while judge requests are in flight."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import stic
from stic.tools.bench_score import main as bench_score
from tests.data.bench_fixtures import write_json, write_jsonl, write_png
from tests.modeling.judge_server import ScriptedJudge


def mmvet(root: Path, n: int) -> list[dict]:
    records = {f"v1_{i}": {"imagename": f"v1_{i}.png", "capability": ["rec"], "question": f"q{i}?", "answer": "a"}
               for i in range(n)}  # fmt: skip
    write_json(root / "mm-vet.json", records)
    for key in records:
        write_png(root / "images" / f"{key}.png")
    return [{"id": key, "prediction": f"answer {key}"} for key in records]


@pytest.mark.slow
def test_ctrl_c_stops_sending_exits_130_and_the_cache_resumes(tmp_path):
    rows = mmvet(tmp_path / "mm-vet", 40)
    predictions = write_jsonl(tmp_path / "pred.jsonl", rows)
    out = tmp_path / "mmvet.json"
    cache = tmp_path / "mmvet.judge_cache.jsonl"
    release = threading.Event()
    answered = []

    def replier(user: str) -> str:
        with lock:
            answered.append(user)
            first = len(answered) <= 2
        if not first:
            release.wait(60)  # held in flight until after the Ctrl-C
        return "0.5"

    lock = threading.Lock()
    env = {**os.environ, "PYTHONPATH": str(Path(stic.__file__).parents[1])}
    with ScriptedJudge() as server:
        server.replier = replier
        args = ["--benchmark", "mmvet", "--data", str(tmp_path / "mm-vet"), "--out", str(out),
                "--predictions", str(predictions), "--judge-url", server.url,
                "--judge-model", "judge-m"]  # fmt: skip
        process = subprocess.Popen(
            [sys.executable, "-m", "stic", "bench", "score", *args, "--judge-concurrency", "2"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 120
            # Two answered and cached, then the same two threads' next requests held in flight.
            while server.total < 4 and time.monotonic() < deadline and process.poll() is None:
                time.sleep(0.02)
            assert server.total == 4
            process.send_signal(signal.SIGINT)
            _, err = process.communicate(timeout=60)
        finally:
            release.set()
            if process.poll() is None:
                process.kill()
        assert process.returncode == 130
        lines = [line for line in err.splitlines() if line.strip()]
        assert lines == ["stic bench: stopped; rerun the same command to resume where it stopped"]
        assert server.total == 4  # the 36 queued requests were never sent
        cached = [json.loads(line) for line in cache.read_text().splitlines()]
        assert len(cached) == 2  # the two answered replies, whole; the two in flight dropped
        assert not out.exists()
        # The rerun asks only for what the cache lacks.
        assert bench_score(args) == 0
        assert server.total == 4 + 38
    result = json.loads(out.read_text())
    assert result["n"] == 40 and result["judge"]["new_calls"] == 38
