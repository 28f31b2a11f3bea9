"""``stic bench score``: score an existing predictions file by a benchmark's official rule.

No model is loaded: anyone can re-score or audit a run. Each line of ``PRED.jsonl`` is
``{"id": "<the benchmark's own question id>", "prediction": "<model text>"}``; predictions are
joined to the questions by id, and ids on one side only are reported (count and examples) in
OUT.json and on stderr. Judged benchmarks (llava_bench_wild, mmvet; mathvista_testmini
optionally) take ``--judge-url/--judge-model`` and the NAME of the variable holding the key.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from stic.data.benchmarks import (
    BENCHMARKS,
    BenchmarkDataError,
    NothingScoredError,
    read_benchmark,
    score_predictions,
)
from stic.modeling.judge import JudgeClient
from stic.runtime.files import read_jsonl
from stic.runtime.output import OUTPUT_ERRORS, Output


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stic bench score",
        description="Score a predictions JSONL file by a benchmark's official rule (no model).",
    )
    parser.add_argument("--benchmark", required=True, choices=sorted(BENCHMARKS))
    parser.add_argument(
        "--data",
        required=True,
        help="the benchmark as downloaded: hub parquet files / save_to_disk folder, or the "
        "original release files (see docs/benchmarks.md)",
    )
    parser.add_argument(
        "--images",
        help="image folder of the original format (e.g. COCO val2014 for POPE); optional: "
        "scoring reads no pixel, so the files need not exist (paths are still checked)",
    )
    parser.add_argument(
        "--predictions", required=True, help='JSONL of {"id": ..., "prediction": ...}'
    )
    parser.add_argument("--out", required=True, help="result JSON to write")
    judge = parser.add_argument_group("judge (any OpenAI-compatible chat-completions endpoint)")
    judge.add_argument("--judge-url", help="e.g. http://127.0.0.1:8000/v1")
    judge.add_argument("--judge-model", help="judge model name, recorded in the result")
    judge.add_argument(
        "--judge-key-env",
        help="NAME of the environment variable holding the API key (the key is never written)",
    )
    judge.add_argument(
        "--judge-cache",
        help="JSONL cache of raw judge replies (default: <out>.judge_cache.jsonl); a rerun or a "
        "resumed run pays only for prompts it does not hold",
    )
    judge.add_argument("--judge-concurrency", type=int, default=4, help="requests in flight")
    judge.add_argument("--judge-timeout", type=float, default=120.0, help="seconds per request")
    judge.add_argument(
        "--judge-retry-after-max",
        type=float,
        default=60.0,
        help="longest Retry-After (s) waited out; a judge asking for longer fails the request",
    )
    judge.add_argument(
        "--judge-max-reply-bytes",
        type=int,
        default=1 << 20,
        help="largest reply body read; a larger one is a judge failure",
    )
    return parser


def _judge(args: argparse.Namespace) -> JudgeClient | None:
    if not args.judge_url and not args.judge_model:
        return None
    if not (args.judge_url and args.judge_model):
        raise ValueError("give both --judge-url and --judge-model")
    out = Path(args.out)
    cache = args.judge_cache or out.with_name(out.stem + ".judge_cache.jsonl")
    return JudgeClient(
        url=args.judge_url,
        model=args.judge_model,
        key_env=args.judge_key_env,
        cache_path=cache,
        concurrency=args.judge_concurrency,
        timeout_s=args.judge_timeout,
        retry_after_max_s=args.judge_retry_after_max,
        max_reply_bytes=args.judge_max_reply_bytes,
    )


def result_output(args: argparse.Namespace) -> Output:
    """The result file's output object: never the predictions, the data or the images."""
    inputs = {"predictions": args.predictions, "data": args.data, "images": args.images}
    settings = {"benchmark": args.benchmark, "judge_model": args.judge_model, **inputs}
    return Output(
        "bench-score",
        settings,
        out=args.out,
        inputs=inputs,
        file=True,
        replace=True,
        command="stic bench score",
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with result_output(args) as output:
            return _score(args, output)
    except OUTPUT_ERRORS as e:
        print(f"stic bench score: error: {e}", file=sys.stderr)
        return 2


def _score(args: argparse.Namespace, output: Output) -> int:
    try:
        judge = _judge(args)
        # Scoring reads no pixel: the image files need not exist (paths are still checked).
        items = read_benchmark(args.benchmark, args.data, args.images, need_images=False)
        predictions = read_jsonl(args.predictions, strict=True)
        result = score_predictions(args.benchmark, items, predictions, judge=judge)
    except NothingScoredError as e:
        print(f"stic bench score: error: {e}", file=sys.stderr)
        return 1
    except (BenchmarkDataError, ValueError, FileNotFoundError) as e:
        print(f"stic bench score: error: {e}", file=sys.stderr)
        return 2
    if judge is not None:
        result["judge"] = {**judge.describe(), **result["judge"], "new_calls": judge.calls}
    result["sources"] = {
        "data": str(args.data),
        "images": args.images,
        "predictions": str(args.predictions),
    }
    output.write_json(result)
    output.finish({"n": result["n"], "metrics": result["metrics"]})
    for side, label in (
        ("missing_predictions", "questions without a prediction (not scored)"),
        ("unknown_ids", "prediction ids not in the data (ignored)"),
    ):
        found = result["unmatched"][side]
        if found["count"]:
            examples = ", ".join(found["examples"])
            print(f"warning: {found['count']} {label}, e.g. {examples}", file=sys.stderr)
    if result["judge"] and result["judge"]["judge_failed"]:
        print(
            f"warning: {result['judge']['judge_failed']} items judge_failed (not scored); "
            f"reasons in {args.out}",
            file=sys.stderr,
        )
    summary = {"benchmark": args.benchmark, "n": result["n"], "n_expected": result["n_expected"]}
    print(json.dumps({**summary, **result["metrics"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
