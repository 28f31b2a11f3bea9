"""A scripted OpenAI-compatible judge on 127.0.0.1 for tests (http.server in a thread).

The user message picks the behaviour through markers:
``[reply:TEXT]`` answer TEXT; ``[fail500:N]`` answer HTTP 500 to the first N requests of this
prompt; ``[slow:S]`` sleep S seconds before the first answer to this prompt; ``[garbage]`` always
answer "I would rather not grade this."; ``[badjson]`` answer a 200 whose body is not JSON;
``[401]`` answer HTTP 401; ``[429:VALUE]`` answer the first request of this prompt HTTP 429 with
``Retry-After: VALUE``; ``[huge:N]`` answer a reply whose content is N bytes (``[stream:N]``: the
same without Content-Length). Without a marker
the reply is ``replier(user)`` when set (it may block, to hold requests in flight), else
``default``. ``arrivals`` holds (user message, time.monotonic()) of each request.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class ScriptedJudge:
    def __init__(self, default: str = "0.5") -> None:
        self.default = default
        self.hits: Counter[str] = Counter()  # user message -> requests received
        self.requests: list[dict] = []  # bodies received, with the Authorization header
        self.arrivals: list[tuple[str, float]] = []
        self.lock = threading.Lock()
        self.replier = None  # optional callable(user) -> reply text, before markers
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                user = body["messages"][-1]["content"]
                with judge.lock:
                    judge.hits[user] += 1
                    judge.arrivals.append((user, time.monotonic()))
                    count = judge.hits[user]
                    judge.requests.append(
                        {**body, "authorization": self.headers.get("Authorization")}
                    )
                try:
                    self._answer(user, count)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout): nothing to do

            def _send(
                self, code: int, payload: bytes, headers: dict | None = None, length: bool = True
            ) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                if length:  # without it the body ends where the connection closes
                    self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _answer(self, user: str, count: int) -> None:
                if m := re.search(r"\[fail500:(\d+)\]", user):
                    if count <= int(m.group(1)):
                        return self._send(500, b'{"error": "overloaded"}')
                if (m := re.search(r"\[429:(.*?)\]", user)) and count == 1:
                    return self._send(429, b'{"error": "slow down"}', {"Retry-After": m.group(1)})
                if "[401]" in user:
                    return self._send(401, b'{"error": "bad key"}')
                if "[badjson]" in user:
                    return self._send(200, b"<html>proxy error</html>")
                if (m := re.search(r"\[slow:([\d.]+)\]", user)) and count == 1:
                    time.sleep(float(m.group(1)))
                if "[garbage]" in user:
                    text = "I would rather not grade this."
                elif m := re.search(r"\[(huge|stream):(\d+)\]", user):
                    text = "x" * int(m.group(2))
                elif m := re.search(r"\[reply:(.*?)\]", user, re.S):
                    text = m.group(1)
                elif judge.replier is not None:
                    text = judge.replier(user)
                else:
                    text = judge.default
                payload = {"choices": [{"message": {"role": "assistant", "content": text}}]}
                self._send(200, json.dumps(payload).encode(), length="[stream:" not in user)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def __enter__(self) -> ScriptedJudge:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def total(self) -> int:
        return sum(self.hits.values())
