"""Answer one of the paper's benchmarks by its protocol, then score it by its official rule.

One benchmark question at a time through the shared runner (:func:`run_generation`): items come
from :func:`stic.data.benchmarks.read_benchmark` (hub parquet or the original release), prompts
from the benchmark's LLaVA-1.5 protocol (``spec.prompt``), greedy decoding with the protocol's
token limit. Each record is ``{"id", "prediction", "description"?}``, the same shape as a line of
the predictions file ``stic bench score`` reads, so a run can be re-scored without the model.
When every question has a record, ``finish`` scores them (:func:`score_predictions`, a judge
for LLaVA-Bench and MM-Vet) and writes OUT.json.

Describe-and-respond (``--dar``), the image given in both steps::

    description = model(image, DAR_DESCRIBE_PROMPT)
    answer      = model(image, "Image description:\\n{description}\\n\\n{protocol prompt}")

Descriptions are cached in a JSONL file keyed by (model, adapter, image bytes, prompt, token
limit), shared by every benchmark that points at it (default: ``dar_descriptions.jsonl`` beside
OUT.json): POPE's three splits, MMBench's rotations and LLaVA-Bench's several questions per
image describe each image once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from stic.config import BenchConfig, ConfigError, normalized
from stic.data.benchmarks import (
    BenchItem,
    get_spec,
    read_benchmark,
    score_predictions,
)
from stic.data.prompts import DAR_DESCRIBE_PROMPT, infuse_description
from stic.modeling.generation import Request
from stic.runtime.files import read_json, read_jsonl
from stic.runtime.images import ImageError
from stic.runtime.manifests import input_identity, remove_output
from stic.runtime.output import Output
from stic.stages.runner import GenerationStage, StageSummary, claim_output, run_generation

logger = logging.getLogger(__name__)

STAGE = "bench"
DAR_CACHE_NAME = "dar_descriptions.jsonl"


class DescriptionCache:
    """Describe-and-respond descriptions on disk, one JSON object a line: ``{"key", "text"}``.

    Several runs (one per benchmark, maybe at once) may share the file: appends are one write
    under an exclusive ``flock``, and a line that does not parse (a torn write) is skipped on
    reading: a cache miss, never an error.
    """

    def __init__(self, path: str | os.PathLike, scope: Sequence = ()) -> None:
        self.path = Path(path)
        self.scope = list(scope)  # what, besides the image, decides a description
        self._known: dict[str, str] | None = None

    def key(self, image_digest: str) -> str:
        payload = json.dumps([*self.scope, image_digest], ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def _load(self) -> dict[str, str]:
        if self._known is None:
            self._known = {}
            if self.path.exists():
                for line in self.path.read_bytes().split(b"\n"):
                    with contextlib.suppress(ValueError):
                        row = json.loads(line)
                        if isinstance(row, dict) and isinstance(row.get("text"), str):
                            self._known[str(row.get("key"))] = row["text"]
        return self._known

    def get(self, key: str) -> str | None:
        return self._load().get(key)

    def add(self, entries: dict[str, str]) -> None:
        if not entries:
            return
        self._load().update(entries)
        data = "".join(
            json.dumps({"key": k, "text": v}, ensure_ascii=False) + "\n" for k, v in entries.items()
        ).encode("utf-8")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            with _locked(fd):
                if os.fstat(fd).st_size and _last_byte(fd) != b"\n":
                    # a torn line (a writer that died mid-append): end it, or the first new
                    # line would be glued to it and lost
                    data = b"\n" + data
                os.write(fd, data)
                os.fsync(fd)
        finally:
            os.close(fd)


def _last_byte(fd: int) -> bytes:
    os.lseek(fd, -1, os.SEEK_END)  # O_APPEND writes still go to the end
    return os.read(fd, 1)


@contextlib.contextmanager
def _locked(fd: int):
    try:
        import fcntl
    except ImportError:  # no flock (Windows): appends of one write are still whole lines
        yield
        return
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def description_cache(config: BenchConfig) -> DescriptionCache:
    """The cache of ``config``: at ``dar_cache`` (default: beside OUT.json), scoped by what decides
    a description besides the image: the model, the adapter (what it holds now, so a retrained
    adapter at the same path is not mistaken for the old one), the prompt and the token limit.
    dtype and device are left out: the same model described with another precision is reused."""
    path = Path(config.dar_cache or Path(config.out).parent / DAR_CACHE_NAME)
    adapter = None if config.adapter is None else input_identity(config.adapter)
    model = normalized(config)["model"]
    return DescriptionCache(path, [model, adapter, DAR_DESCRIBE_PROMPT, config.dar_max_new_tokens])


def _image_label(item: BenchItem) -> str:
    return item.image.path or f"{item.id} (embedded image)"


def _load_image(item: BenchItem) -> Image.Image:
    try:
        return item.image.load()
    except (OSError, Image.DecompressionBombError) as e:  # embedded bytes that do not decode
        raise ImageError(f"{_image_label(item)}: not a readable image ({e})") from e


def describe(
    items: Sequence[BenchItem],
    images: Sequence[Image.Image],
    backend,
    cache: DescriptionCache,
    max_new_tokens: int,
) -> list[str]:
    """One description per item; images already described (any benchmark) come from ``cache``,
    the others are described once each (an image several items share: one request)."""
    keys = [cache.key(item.image.digest()) for item in items]
    wanted: dict[str, Image.Image] = {}
    for key, image in zip(keys, images, strict=True):
        if cache.get(key) is None:
            wanted.setdefault(key, image)
    if wanted:
        made = backend.generate(
            [Request(DAR_DESCRIBE_PROMPT, image) for image in wanted.values()],
            max_new_tokens=max_new_tokens,
        )
        cache.add({key: g.text for key, g in zip(wanted, made, strict=True)})
    return [cache.get(key) for key in keys]


@dataclass(frozen=True)
class _ModelGenerator:
    """A loaded model and processor behind the backend call ``generate(requests, max_new_tokens)``
    (for a runner that hands the stage a model and processor rather than a backend)."""

    model: Any
    processor: Any

    def generate(self, requests: Sequence[Request], *, max_new_tokens: int):
        from stic.modeling.generation import generate

        return generate(self.model, self.processor, requests, max_new_tokens=max_new_tokens)


def _generator(handles: tuple):
    """What the runner passed to ``make_records`` after the images, as a backend."""
    return handles[0] if len(handles) == 1 else _ModelGenerator(*handles)


def answer_batch(
    items: Sequence[BenchItem],
    images: Sequence[Image.Image],
    config: BenchConfig,
    backend,
    cache: DescriptionCache | None = None,
) -> list[dict]:
    """Greedy answers by the benchmark's protocol: ``{"id", "prediction", "description"?}``."""
    spec = get_spec(config.benchmark)
    prompts = [spec.prompt(item) for item in items]
    descriptions: list[str] | None = None
    if config.dar:
        cache = cache if cache is not None else description_cache(config)
        descriptions = describe(items, images, backend, cache, config.dar_max_new_tokens)
        prompts = [infuse_description(p, d) for p, d in zip(prompts, descriptions, strict=True)]
    answers = backend.generate(
        [Request(p, image) for p, image in zip(prompts, images, strict=True)],
        max_new_tokens=config.max_new_tokens or spec.max_new_tokens,
    )
    records = [
        {"id": item.id, "prediction": a.text} for item, a in zip(items, answers, strict=True)
    ]
    if descriptions is not None:
        for record, description in zip(records, descriptions, strict=True):
            record["description"] = description
    return records


def make_judge(config: BenchConfig):
    """The judge client the flags ask for, or None (the key stays in its environment variable)."""
    if not config.judge_url:
        return None
    from stic.modeling.judge import JudgeClient

    out = Path(config.out)
    return JudgeClient(
        url=config.judge_url,
        model=config.judge_model,
        key_env=config.judge_key_env,
        cache_path=config.judge_cache or out.with_name(out.stem + ".judge_cache.jsonl"),
        concurrency=config.judge_concurrency,
        timeout_s=config.judge_timeout,
        retry_after_max_s=config.judge_retry_after_max,
        max_reply_bytes=config.judge_max_reply_bytes,
    )


def check_judge(config: BenchConfig) -> None:
    """A benchmark scored by a judge needs one: refused before anything runs."""
    if get_spec(config.benchmark).judge == "required" and not config.judge_url:
        raise ConfigError(
            f"judge_url: {config.benchmark} is scored by a judge model; give judge_url and "
            "judge_model (any OpenAI-compatible chat-completions endpoint)"
        )


def about(config: BenchConfig) -> dict:
    """What the result records about the run besides the scores."""
    spec = get_spec(config.benchmark)
    return {
        "model": config.model,
        "adapter": config.adapter,  # None: the base model answered
        "weights": "base model" if config.adapter is None else "adapter",
        "dar": config.dar,
        "max_new_tokens": config.max_new_tokens or spec.max_new_tokens,
        "dar_max_new_tokens": config.dar_max_new_tokens if config.dar else None,
    }


def write_result(
    config: BenchConfig, items: Sequence[BenchItem], records: list[dict], judge, output: Output
) -> dict:
    """Score ``records`` and write OUT.json through ``output``; returns the result document."""
    result = score_predictions(config.benchmark, items, records, judge=judge)
    if judge is not None:
        result["judge"] = {**judge.describe(), **result["judge"], "new_calls": judge.calls}
    if config.dar:
        by_id = {r["id"]: r.get("description") for r in records}
        for row in result["items"]:
            row["description"] = by_id.get(row["id"])
    result["protocol"] = {
        **result["protocol"],
        "max_new_tokens": config.max_new_tokens or get_spec(config.benchmark).max_new_tokens,
        "describe_and_respond": {
            "prompt": DAR_DESCRIBE_PROMPT,
            "max_new_tokens": config.dar_max_new_tokens,
        }
        if config.dar
        else None,
    }
    result.update(about(config))
    # What the adapter folder held when it answered (a retrained adapter at the same path is
    # other weights): stic compare tells a base compared with itself from an adapter by this.
    result["adapter_identity"] = None if config.adapter is None else input_identity(config.adapter)
    result["sources"] = {"data": config.data, "images": config.images}
    output.write_json(result)
    return result


def _judge_failures(out: Path) -> int:
    try:
        judged = read_json(out).get("judge") or {}
    except (OSError, ValueError, AttributeError):
        return 0
    return int(judged.get("judge_failed") or 0)


def run_bench(config: BenchConfig, model=None, processor=None, backend=None) -> StageSummary:
    """Answer and score ``config.benchmark``; writes ``config.out`` and returns the summary.

    A rerun reuses the answers already made (the model is loaded only if one is missing); a
    complete output whose judge failed on some items is scored again (the judge's reply cache
    makes that pay only for the failures).
    """
    check_judge(config)
    judge = make_judge(config)
    items = read_benchmark(config.benchmark, config.data, config.images)
    if config.limit is not None:
        items = items[: config.limit]
    spec = get_spec(config.benchmark)
    cache = description_cache(config) if config.dar else None
    scored: dict = {}

    def finish(records: list[dict], output: Output) -> None:
        if records:  # none: no image loaded; reported below, nothing scored
            scored.update(write_result(config, items, records, judge, output))

    stage = GenerationStage(
        name=STAGE,
        item_id=lambda item: item.id,
        image_of=_image_label,
        load_image=_load_image,
        make_records=lambda batch, images, *engine: answer_batch(
            batch, images, config, _generator(engine), cache
        ),
        details=lambda records: {"benchmark": spec.name, "answered": len(records), **about(config)},
        finish=finish,
        unit="q",
    )
    opened = {} if backend is None else {"backend": backend}
    summary = run_generation(
        stage, config, items, model=model, processor=processor, adapter=config.adapter, **opened
    )
    out = Path(config.out)
    if summary.up_to_date and judge is not None and _judge_failures(out):
        logger.info("%s: scoring again the items whose judge failed", out)
        with claim_output(STAGE, config) as output:
            done = {r["id"]: r for r in read_jsonl(output.partial, key="id")}
            finish([done[i.id] for i in items if i.id in done], output)
    if not summary.details.get("answered"):
        remove_output(out)  # a score over nothing is not a result to keep
        raise ValueError(
            f"{config.data}: none of its {len(items)} questions could be answered "
            f"({'; '.join(list(summary.bad_items.values())[:3])})"
        )
    result = scored or read_json(out)
    summary.details.update(
        metrics=result["metrics"],
        primary_metric=result["primary_metric"],
        n=result["n"],
        judge_failed=(result.get("judge") or {}).get("judge_failed"),
    )
    return summary
