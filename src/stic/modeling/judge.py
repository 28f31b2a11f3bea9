"""A judge model behind any OpenAI-compatible chat-completions endpoint (hosted API, vLLM, SGLang).

:class:`JudgeClient` implements :class:`stic.data.benchmarks.records.Judge`: ``ask(prompts,
parse)`` returns one :class:`JudgeVerdict` per prompt. Standard library only (urllib, threads).

- Bounded concurrency: at most ``concurrency`` requests in flight.
- Transport failures (timeouts, refused connections, HTTP 408/409/429/5xx, a body that is not a
  chat-completions JSON) are retried ``retries`` times with exponential backoff
  (``backoff_s * 2**k``); other HTTP errors (401, 404, ...) fail at once. A ``Retry-After``
  header (seconds or an HTTP date) on a retried error is waited out when it asks for at most
  ``retry_after_max_s``; one asking for more fails the request at once, saying so (a judge that
  is out of quota for an hour is better reported than waited for).
- A reply body over ``max_reply_bytes`` is a failure with that reason, read no further (a
  misconfigured endpoint can stream anything).
- Stopping (Ctrl-C, or any exception in the caller's thread while it waits): no request that
  was not yet sent is sent, no retry or re-ask follows, and the replies still in flight are
  dropped whole; the cache holds only complete rows. The worker threads are daemons, so the
  process exits without waiting for their sockets.
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

import contextlib
import hashlib
import json
import logging
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

from stic.data.benchmarks.records import JudgePrompt, JudgeVerdict
from stic.runtime.files import append_jsonl, read_jsonl

logger = logging.getLogger(__name__)

_TRANSIENT_HTTP = frozenset({408, 409, 425, 429})


class _TransportError(Exception):
    """A request that got no usable reply after its retries; ``str(e)`` is the reason."""


class _Stopped(Exception):
    """The client was stopped: nothing more is sent or cached."""


class _TooLarge(Exception):
    """A reply body over the size cap."""


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait: delay-seconds (``"120"``) or an HTTP date
    (``"Wed, 21 Oct 2015 07:28:00 GMT"``, counted from ``now``, default the current UTC time; a
    date past is 0). ``None`` for no header or one that is neither."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT
        when = when.replace(tzinfo=timezone.utc)
    now = now or datetime.now(timezone.utc)
    return max(0.0, (when - now).total_seconds())


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
        retry_after_max_s: the longest ``Retry-After`` waited out; a longer one fails the request.
        max_reply_bytes: the largest reply body read; a larger one fails the request.
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
    retry_after_max_s: float = 60.0
    max_reply_bytes: int = 1 << 20
    calls: int = field(default=0, init=False)  # HTTP requests sent by this client
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _stopped: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _cache: dict[str, list[str]] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.key_env is not None and not os.environ.get(self.key_env):
            raise ValueError(
                f"judge key: environment variable {self.key_env} is not set "
                "(give the NAME of the variable that holds the key)"
            )
        if self.concurrency < 1 or self.parse_attempts < 1 or self.retries < 0:
            raise ValueError("judge: concurrency and parse_attempts must be >= 1, retries >= 0")
        if self.retry_after_max_s < 0 or self.max_reply_bytes < 1:
            raise ValueError("judge: retry_after_max_s must be >= 0, max_reply_bytes >= 1")

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
        with self._lock:  # stop() takes this lock: once it returns, no row is being written
            if self._stopped.is_set():
                raise _Stopped
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
        delay = 0.0
        for attempt in range(self.retries + 1):
            if attempt:
                delay = max(delay, self.backoff_s * 2 ** (attempt - 1))
            if self._stopped.wait(delay):  # a stop ends the wait at once
                raise _Stopped
            delay = 0.0
            request = urllib.request.Request(chat_url(self.url), body, headers, method="POST")
            with self._lock:
                self.calls += 1
            try:
                with opener.open(request, timeout=self.timeout_s) as response:
                    payload = json.loads(self._read(response).decode("utf-8"))
                content = payload["choices"][0]["message"]["content"]
                if not isinstance(content, str):
                    raise TypeError("message content is not a string")
                return content
            except _TooLarge as e:
                reason = str(e)
                break  # the same question would get the same reply
            except urllib.error.HTTPError as e:
                detail = e.read(200).decode("utf-8", "replace").replace("\n", " ")
                reason = f"http {e.code}: {detail}".strip()
                if e.code not in _TRANSIENT_HTTP and e.code < 500:
                    break
                wait = retry_after_seconds(e.headers.get("Retry-After") if e.headers else None)
                if wait is not None and wait > self.retry_after_max_s:
                    reason += (
                        f"; the judge asks to retry after {wait:.0f} s, more than the "
                        f"{self.retry_after_max_s:g} s this client waits (judge_retry_after_max)"
                    )
                    break
                delay = wait or 0.0
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

    def _read(self, response) -> bytes:
        """The reply body, or :class:`_TooLarge` once it is over ``max_reply_bytes``."""
        cap = self.max_reply_bytes
        declared = response.headers.get("Content-Length")
        if declared and declared.strip().isdigit() and int(declared) > cap:
            raise _TooLarge(f"reply of {int(declared)} bytes, over the {cap}-byte cap")
        data = response.read(cap + 1)
        if len(data) > cap:
            raise _TooLarge(f"reply over the {cap}-byte cap (judge_max_reply_bytes)")
        return data

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
        ValueError; identical prompts are asked once.

        An exception while waiting (KeyboardInterrupt above all) stops the client (see
        :meth:`stop`) and propagates; a stopped client asks nothing more."""
        if self._stopped.is_set():
            raise RuntimeError("judge client was stopped; open a new one")
        with self._lock:
            self._load_cache()
        unique: dict[str, JudgePrompt] = {}
        for prompt in prompts:
            unique.setdefault(prompt_key(self.model, prompt), prompt)
        futures: dict[str, Future] = {key: Future() for key in unique}
        todo = iter(list(unique.items()))

        def work() -> None:
            while not self._stopped.is_set():
                with self._lock:
                    item = next(todo, None)
                if item is None:
                    return
                key, prompt = item
                try:
                    futures[key].set_result(self._verdict(prompt, parse))
                except _Stopped:
                    break
                except BaseException as e:  # raised to the caller by its result()
                    futures[key].set_exception(e)
            # Stopped (by another thread, say): the caller's wait ends instead of hanging.
            stopped = RuntimeError("judge client was stopped")
            for future in futures.values():
                with contextlib.suppress(InvalidStateError):
                    future.set_exception(stopped)

        # Daemon threads: after a stop the process need not wait for a socket in flight.
        for n in range(min(self.concurrency, len(unique))):
            threading.Thread(target=work, name=f"judge-{n}", daemon=True).start()
        try:
            verdicts = {key: future.result() for key, future in futures.items()}
        except BaseException:
            self.stop()
            raise
        return [verdicts[prompt_key(self.model, prompt)] for prompt in prompts]

    def stop(self) -> None:
        """Send nothing more and cache nothing more; returns once no cache row is being
        written, so the cache holds whole rows only (the replies still in flight are dropped)."""
        with self._lock:
            self._stopped.set()
