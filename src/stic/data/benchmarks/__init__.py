"""The paper's benchmarks: one module each, and ONE registry (:data:`BENCHMARKS`) they all share.

For each benchmark, :class:`BenchmarkSpec` bundles what a generation stage and a scorer need:

- ``read(data, images) -> list[BenchItem]``: detects and reads the hub form (parquet shards or a
  ``save_to_disk`` folder) or the original release files; a wrong folder raises
  :class:`BenchmarkDataError` with a one-line message naming what is missing;
- ``prompt(item) -> str``: the LLaVA-1.5 protocol text of the user turn (no image placeholder);
  generate greedily with at most ``max_new_tokens`` new tokens;
- ``score(pairs, judge) -> rows`` and ``summarize(rows) -> {"metrics", "categories"}``: the
  official scoring rule, item by item and then aggregated (metrics in percent, 0-100).

:func:`score_predictions` joins predictions to items by id and returns the result document
that ``stic bench score`` writes.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Literal

from stic.data.benchmarks import (
    amber,
    chartqa,
    llava_bench_wild,
    mathvista_testmini,
    mmbench_en_dev,
    mmvet,
    pope,
    scienceqa_img,
    textvqa,
)
from stic.data.benchmarks.records import (
    BenchItem,
    BenchmarkDataError,
    ImageRef,
    Judge,
    JudgePrompt,
    JudgeVerdict,
    check_image_files,
)

logger = logging.getLogger(__name__)

JudgeUse = Literal["none", "optional", "required"]


@dataclass(frozen=True)
class BenchmarkSpec:
    """Everything about one benchmark that the bench stage, the scorer and compare read."""

    name: str
    read: Callable[[str | Path, str | Path | None], list[BenchItem]]
    prompt: Callable[[BenchItem], str]
    score: Callable[[Sequence[tuple[BenchItem, str]], Judge | None], list[dict]]
    summarize: Callable[[Sequence[dict]], dict]
    # The headline metrics from item rows alone (no per-category breakdown): what stic compare
    # recomputes on each bootstrap resample.
    metrics_of: Callable[[Sequence[dict]], dict]
    metrics: tuple[str, ...]  # the keys of summarize(...)["metrics"], headline first
    primary: str  # the metric stic compare tabulates
    max_new_tokens: int  # the generation limit of the protocol
    protocol: str  # one line: which prompt family, as recorded in results
    judge: JudgeUse = "none"  # whether scoring needs a judge
    judge_prompt_version: str | None = None
    # The folder to name with --images when image files are missing.
    images_hint: str = "the image folder the data names"


def _spec(name: str, module: ModuleType, **overrides) -> BenchmarkSpec:
    """A spec from a benchmark module's read/prompt/score/summarize and its constants."""
    return BenchmarkSpec(
        name=name,
        read=overrides.pop("read", module.read),
        prompt=module.prompt,
        score=module.score,
        summarize=module.summarize,
        metrics_of=module.metrics_of,
        metrics=module.METRICS,
        primary=module.PRIMARY,
        max_new_tokens=module.MAX_NEW_TOKENS,
        protocol=module.PROTOCOL,
        judge=getattr(module, "JUDGE", "none"),
        judge_prompt_version=getattr(module, "JUDGE_PROMPT_VERSION", None),
        images_hint=overrides.pop(
            "images_hint", getattr(module, "IMAGES_HINT", "the image folder the data names")
        ),
        **overrides,
    )


# The one list of benchmarks: the bench stage, `stic bench score` and `stic compare` read it.
BENCHMARKS: dict[str, BenchmarkSpec] = {
    "scienceqa_img": _spec("scienceqa_img", scienceqa_img),
    "textvqa": _spec("textvqa", textvqa),
    "chartqa": _spec("chartqa", chartqa, images_hint="the ChartQA test/png folder"),
    "mmbench_en_dev": _spec("mmbench_en_dev", mmbench_en_dev),
    "mathvista_testmini": _spec("mathvista_testmini", mathvista_testmini),
    "llava_bench_wild": _spec("llava_bench_wild", llava_bench_wild),
    "mmvet": _spec("mmvet", mmvet),
    **{
        f"pope_{split}": _spec(
            f"pope_{split}", pope, read=functools.partial(pope.read, split=split)
        )
        for split in pope.SPLITS
    },
    "amber_discriminative": _spec("amber_discriminative", amber.DISCRIMINATIVE),
    "amber_generative": _spec("amber_generative", amber.GENERATIVE),
}


def get_spec(name: str) -> BenchmarkSpec:
    """The spec of benchmark ``name``; an unknown name raises ValueError listing the known ones."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]


def read_benchmark(
    name: str, data: str | Path, images: str | Path | None = None, *, need_images: bool = True
) -> list[BenchItem]:
    """The items of benchmark ``name`` read from ``data`` (see :class:`BenchmarkSpec`.read).

    Every record is validated by its reader (a malformed one ends the read with one line naming
    file, record and problem) and every image path must stay inside its root. With
    ``need_images`` the image files must exist too; ``stic bench score`` passes False, since
    scoring reads no pixel.
    """
    spec = get_spec(name)
    try:
        items = spec.read(data, images)
    except (KeyError, TypeError, AttributeError, IndexError) as e:
        # A shape the reader does not check yet: still one line, never a traceback.
        raise BenchmarkDataError(
            f"{name}: {data}: malformed record ({type(e).__name__}: {str(e)[:80]})"
        ) from e
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            raise BenchmarkDataError(f"{name}: {data} holds question id {item.id!r} twice")
        seen.add(item.id)
    if not items:
        raise BenchmarkDataError(f"{name}: {data} holds no questions")
    if need_images:
        check_image_files(name, items, spec.images_hint)
    return items


def _prediction_map(predictions: Mapping[str, str] | Iterable[dict]) -> dict[str, str]:
    if isinstance(predictions, Mapping):
        return {str(k): v for k, v in predictions.items()}
    out: dict[str, str] = {}
    for index, row in enumerate(predictions):
        if not isinstance(row, dict) or "id" not in row or "prediction" not in row:
            raise ValueError(f"prediction {index}: expected {{'id', 'prediction'}}, got {row!r}")
        key = str(row["id"])
        if key in out:
            raise ValueError(f"prediction {index}: id {key!r} appears twice")
        if not isinstance(row["prediction"], str):
            raise ValueError(f"prediction {index} (id {key!r}): 'prediction' must be a string")
        out[key] = row["prediction"]
    return out


def _examples(ids: list[str], limit: int = 5) -> dict:
    return {"count": len(ids), "examples": ids[:limit]}


class NothingScoredError(ValueError):
    """A benchmark run where no item got a score: there is no number to report."""


def data_hash(items: Sequence[BenchItem]) -> str:
    """A short hash of the benchmark data that scoring reads (ids, questions, answers, choices,
    groups), order-free: two results with different hashes were scored on different data."""
    records = sorted(
        json.dumps(
            [item.id, item.question, list(item.answers), list(item.choices or ()), item.group],
            ensure_ascii=False,
        )
        for item in items
    )
    return hashlib.sha256("\n".join(records).encode()).hexdigest()[:16]


def score_predictions(
    benchmark: str,
    items: Sequence[BenchItem],
    predictions: Mapping[str, str] | Iterable[dict],
    judge: Judge | None = None,
) -> dict:
    """Score predictions (``{id: text}`` or rows ``{"id", "prediction"}``) of ``benchmark``.

    Predictions are joined to ``items`` by id, never by position. Only items with a prediction
    are scored; ``unmatched`` reports items without a prediction (``missing_predictions``) and
    prediction ids that are not in the data (``unknown_ids``), each as a count and examples.

    Returns the result document: ``benchmark``, ``n`` (items scored), ``n_data``, ``metrics``
    (percent), ``primary_metric``, ``categories`` (per-category metrics), ``items`` (one row per
    scored item with its extracted answer and score), ``unmatched``, ``protocol`` and ``judge``.
    A benchmark that requires a judge raises ValueError when ``judge`` is None.
    """
    spec = get_spec(benchmark)
    if spec.judge == "required" and judge is None:
        raise ValueError(
            f"{benchmark} is scored by a judge model: give --judge-url and --judge-model"
        )
    by_id = _prediction_map(predictions)
    known = {item.id for item in items}
    pairs = [(item, by_id[item.id]) for item in items if item.id in by_id]
    missing = [item.id for item in items if item.id not in by_id]
    unknown = [key for key in by_id if key not in known]
    if missing or unknown:
        logger.warning(
            "%s: %d items without a prediction, %d prediction ids not in the data",
            benchmark,
            len(missing),
            len(unknown),
        )
    rows = spec.score(pairs, judge)
    judge_failed = [row for row in rows if row.get("judge_failed")]
    n_scored = sum(1 for row in rows if row.get("score") is not None)
    reasons = {
        reason: count
        for reason, count in (
            ("no_prediction", len(missing)),
            ("judge_failed", len(judge_failed)),
        )
        if count
    }
    if not n_scored:
        raise NothingScoredError(
            f"{benchmark}: nothing scored of {len(items)} items ("
            + (", ".join(f"{k}: {v}" for k, v in reasons.items()) or "no items")
            + (f", {len(unknown)} prediction ids not in the data" if unknown else "")
            + "); no result written"
        )
    summary = spec.summarize(rows)
    result = {
        "benchmark": benchmark,
        "n": n_scored,
        "n_expected": len(items),
        "n_data": len(items),
        "partial": n_scored < len(items),
        "not_scored": reasons,
        "data_hash": data_hash(items),
        "primary_metric": spec.primary,
        "metrics": summary["metrics"],
        # Which procedure a headline metric is, where a benchmark has two (MathVista).
        **({"headline": summary["headline"]} if "headline" in summary else {}),
        "categories": summary["categories"],
        "unmatched": {
            "missing_predictions": _examples(missing),
            "unknown_ids": _examples(unknown),
        },
        "protocol": {
            "prompt": spec.protocol,
            "max_new_tokens": spec.max_new_tokens,
            "decoding": "greedy",
        },
        "judge": None
        if judge is None
        else {
            "model": judge.model,
            "prompt_version": spec.judge_prompt_version,
            "judge_failed": len(judge_failed),
            "failures": [{"id": r["id"], "reason": r["judge_failed"]} for r in judge_failed[:20]],
        },
        "items": rows,
    }
    _check_finite(benchmark, result)
    return result


def _check_finite(benchmark: str, result: dict) -> None:
    """Raise ValueError, naming the first offending place, if the result holds a NaN or an
    infinity: JSON has neither, and a result file must be valid JSON."""
    try:
        json.dumps(result, allow_nan=False)
    except ValueError:
        for key, value in result["metrics"].items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{benchmark}: metric {key} is {value} (not finite)") from None
        raise ValueError(f"{benchmark}: the result holds a non-finite number") from None


__all__ = [
    "BENCHMARKS",
    "BenchItem",
    "BenchmarkDataError",
    "BenchmarkSpec",
    "ImageRef",
    "Judge",
    "JudgePrompt",
    "JudgeVerdict",
    "NothingScoredError",
    "data_hash",
    "get_spec",
    "read_benchmark",
    "score_predictions",
]
