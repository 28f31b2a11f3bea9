"""A judge model behind any OpenAI-compatible chat-completions endpoint (hosted API, vLLM, SGLang).

:class:`JudgeClient` implements :class:`stic.data.benchmarks.records.Judge`: ``ask(prompts,
parse)`` returns one :class:`JudgeVerdict` per prompt. Standard library only (urllib, threads).

- Bounded concurrency: at most ``concurrency`` requests in flight.
- Transport failures (timeouts, refused connections, HTTP 408/409/429/5xx, a body that is not a
  chat-completions JSON) are retried ``retries`` times with exponential backoff
  (``backoff_s * 2**k``); other HTTP errors (401, 404, ...) fail at once.
- A reply that ``parse`` rejects is asked again, up to ``parse_attempts`` replies in all, the
  k-th re-ask at temperature ``prompt.temperature + 0.2 * k`` (capped at 1; a deterministic judge
  would repeat itself). A benchmark whose official grader re-asks otherwise says so in the
  prompt (``JudgePrompt.attempts``, ``reask_user``, ``reask_temperatures``: MM-Vet's five
  replies at rising temperature, LLaVA's one). After that the verdict carries ``error``
  (``judge_failed``); it is never silently scored.
- Every raw reply is appended (fsynced) to a JSONL cache keyed by sha256 of (judge model, system
  message, user message) before it is used: a killed run resumes with no new calls for what it
  had, and a rerun pays nothing. Transport failures are not cached, so a rerun retries them.
- The API key is read from the environment variable whose NAME is given (``key_env``) at each
  request; it is never stored in the client's fields, the cache or any result.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from stic.data.benchmarks.records import JudgePrompt, JudgeVerdict
from stic.runtime.files import append_jsonl, read_jsonl

logger = logging.getLogger(__name__)

_TRANSIENT_HTTP = frozenset({408, 409, 425, 429})


class _TransportError(Exception):
    """A request that got no usable reply after its retries; ``str(e)`` is the reason."""


def prompt_key(model: str, prompt: JudgePrompt) -> str:
    """The cache key of a prompt: sha256 of the judge model and the two messages."""
    payload = json.dumps([model, prompt.system, prompt.user], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def chat_url(url: str) -> str:
    """``url`` as a chat-completions address: a base such as ``http://host:8000/v1`` gets
    ``/chat/completions`` appended; a full address is kept."""
    url = url.rstrip("/")
    return url if url.endswith("/chat/completions") else url + "/chat/completions"


def _reask(prompt: JudgePrompt, attempt: int) -> tuple[JudgePrompt, float]:
    """The request of the ``attempt``-th reply (0: the first) and its temperature: the
    benchmark's own re-ask (``prompt.reask_*``) where it sets one, else the same prompt at a
    temperature rising by 0.2 a re-ask (capped at 1)."""
    if attempt == 0:
        return prompt, prompt.temperature
    asked = prompt if prompt.reask_user is None else replace(prompt, user=prompt.reask_user)
    if prompt.reask_temperatures:
        steps = prompt.reask_temperatures
        return asked, steps[min(attempt, len(steps)) - 1]
    return asked, min(1.0, prompt.temperature + 0.2 * attempt)


@dataclass
class JudgeClient:
    """A judge endpoint; see the module docstring for retries, caching and the key.

    Args:
        url: chat-completions address or its base (``http://127.0.0.1:8000/v1``).
        model: the judge model name sent in each request and recorded in results.
        key_env: NAME of the environment variable holding the API key (None: no key sent).
        cache_path: JSONL file of raw replies (None: no cache; every call is paid).
        concurrency: requests in flight at most.
        timeout_s: seconds to wait for one HTTP reply.
        retries: transport retries per request after the first try.
        backoff_s: first backoff; doubles each retry.
        parse_attempts: replies asked for per prompt before it counts as judge_failed.
    """

    url: str
    model: str
    key_env: str | None = None
    cache_path: str | Path | None = None
    concurrency: int = 4
    timeout_s: float = 120.0
    retries: int = 4
    backoff_s: float = 2.0
    parse_attempts: int = 3
    calls: int = field(default=0, init=False)  # HTTP requests sent by this client
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _cache: dict[str, list[str]] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.key_env is not None and not os.environ.get(self.key_env):
            raise ValueError(
                f"judge key: environment variable {self.key_env} is not set "
                "(give the NAME of the variable that holds the key)"
            )
        if self.concurrency < 1 or self.parse_attempts < 1 or self.retries < 0:
            raise ValueError("judge: concurrency and parse_attempts must be >= 1, retries >= 0")

    def describe(self) -> dict:
        """What results record about the judge (never the key)."""
        return {"model": self.model, "url": chat_url(self.url)}

    # -- cache -------------------------------------------------------------------------------

    def _load_cache(self) -> dict[str, list[str]]:
        if self._cache is None:
            self._cache = {}
            if self.cache_path is not None:
                for row in read_jsonl(self.cache_path, repair=True):
                    if row.get("model") == self.model:
                        self._cache.setdefault(row["key"], []).append(row["reply"])
        return self._cache

    def _remember(self, key: str, attempt: int, reply: str) -> None:
        with self._lock:
            replies = self._cache.setdefault(key, [])
            if len(replies) == attempt:
                replies.append(reply)
                if self.cache_path is not None:
                    row = {"key": key, "model": self.model, "attempt": attempt, "reply": reply}
                    append_jsonl(self.cache_path, [row])

    # -- HTTP --------------------------------------------------------------------------------

    def _post(self, prompt: JudgePrompt, temperature: float) -> str:
        body = json.dumps(
            {
                "model": self.model,
                # No system message when a benchmark's grader sends none (MathVista, MM-Vet).
                "messages": [{"role": "system", "content": prompt.system}] * bool(prompt.system)
                + [{"role": "user", "content": prompt.user}],
                "temperature": temperature,
                "max_tokens": prompt.max_tokens,
            }
        ).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.key_env is not None:
            headers["Authorization"] = "Bearer " + os.environ.get(self.key_env, "")
        # No proxy: the judge is reached directly, whatever http_proxy says.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        reason = "no attempt"
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            request = urllib.request.Request(chat_url(self.url), body, headers, method="POST")
            with self._lock:
                self.calls += 1
            try:
                with opener.open(request, timeout=self.timeout_s) as response:
                    payload = json.loads(response.read().decode("utf-8"))
                content = payload["choices"][0]["message"]["content"]
                if not isinstance(content, str):
                    raise TypeError("message content is not a string")
                return content
            except urllib.error.HTTPError as e:
                detail = e.read(200).decode("utf-8", "replace").replace("\n", " ")
                reason = f"http {e.code}: {detail}".strip()
                if e.code not in _TRANSIENT_HTTP and e.code < 500:
                    break
            except TimeoutError as e:
                reason = f"timeout after {self.timeout_s:g}s ({e})"
            except urllib.error.URLError as e:
                reason = f"connection failed: {e.reason}"
                if isinstance(e.reason, TimeoutError):
                    reason = f"timeout after {self.timeout_s:g}s"
            except (ConnectionError, OSError) as e:
                reason = f"connection failed: {e}"
            except (ValueError, KeyError, IndexError, TypeError) as e:
                reason = f"not a chat-completions reply ({type(e).__name__}: {e})"
            logger.debug("judge request try %d failed: %s", attempt + 1, reason)
        raise _TransportError(f"{reason} (after {attempt + 1} tries)")

    # -- asking ------------------------------------------------------------------------------

    def _verdict(self, prompt: JudgePrompt, parse: Callable[[str], Any]) -> JudgeVerdict:
        key = prompt_key(self.model, prompt)
        with self._lock:
            known = list(self._cache.get(key, []))
        raw: str | None = None
        error = "no reply"
        cached = True
        for attempt in range(prompt.attempts or self.parse_attempts):
            if attempt < len(known):
                raw = known[attempt]
            else:
                asked, temperature = _reask(prompt, attempt)
                try:
                    raw = self._post(asked, temperature)
                except _TransportError as e:
                    return JudgeVerdict(value=None, raw=raw, error=str(e), cached=False)
                cached = False
                self._remember(key, attempt, raw)
            try:
                return JudgeVerdict(value=parse(raw), raw=raw, error=None, cached=cached)
            except ValueError as e:
                error = f"unparseable after {attempt + 1} replies: {e}"
        return JudgeVerdict(value=None, raw=raw, error=error, cached=cached)

    def ask(
        self, prompts: Sequence[JudgePrompt], parse: Callable[[str], Any]
    ) -> list[JudgeVerdict]:
        """One verdict per prompt, in order. ``parse(reply)`` returns the value or raises
        ValueError; identical prompts are asked once."""
        with self._lock:
            self._load_cache()
        unique: dict[str, JudgePrompt] = {}
        for prompt in prompts:
            unique.setdefault(prompt_key(self.model, prompt), prompt)
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            futures = {key: pool.submit(self._verdict, p, parse) for key, p in unique.items()}
            verdicts = {key: future.result() for key, future in futures.items()}
        return [verdicts[prompt_key(self.model, prompt)] for prompt in prompts]
