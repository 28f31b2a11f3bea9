"""Helpers of the official-verdict tests: the recorded fixtures and a judge that replays them.

``tests/data/official_verdicts/<benchmark>.json`` holds inputs written for stic and the verdicts
the benchmark's official scoring code gave on them (its ``origin`` names repository, commit and
files); they were recorded outside this repository with a scripted chat client standing in for
the judge, returning each item's ``judge_replies`` in order.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from stic.modeling.judge import JudgeClient
from tests.modeling.judge_server import ScriptedJudge

HERE = Path(__file__).parent / "official_verdicts"
UNSCRIPTED = "zzz-unscripted"  # what the recording's client answered once a script ran out


def load(benchmark: str) -> dict:
    return json.loads((HERE / f"{benchmark}.json").read_text(encoding="utf-8"))


class Replay:
    """A scripted judge server: the user message's marker (``pattern``'s group 1) picks the
    item; its replies come back in order, then :data:`UNSCRIPTED`. ``calls[marker]`` counts."""

    def __init__(self, pattern: str, replies: dict[str, list[str]]) -> None:
        self.pattern = re.compile(pattern)
        self.replies = replies
        self.calls: dict[str, list[float]] = {}
        self.server = ScriptedJudge()
        self.server.replier = self._reply

    def _reply(self, user: str) -> str:
        marker = self.pattern.search(user).group(1)
        asked = self.calls.setdefault(marker, [])
        temperature = self.server.requests[-1]["temperature"]
        asked.append(temperature)
        script = self.replies[marker]
        return script[len(asked) - 1] if len(asked) <= len(script) else UNSCRIPTED

    def __enter__(self) -> Replay:
        self.server.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.server.__exit__(*exc)

    def client(self, tmp_path: Path) -> JudgeClient:
        return JudgeClient(
            url=self.server.url,
            model="judge",
            cache_path=tmp_path / "judge.jsonl",
            backoff_s=0.01,
            concurrency=1,  # one request at a time: each reply is matched to its temperature
        )
