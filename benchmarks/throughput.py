"""Generation throughput and DPO step time, side by side in ONE process on the same model and inputs.

Generation (the same requests each time: the demo's VQA questions and GOOD_PROMPT descriptions):
  batch-1 loop   one ``generate`` call per request (the reference code's way)
  hf             the HF backend, ``--batch-size`` requests per batch, in the requests' order
  hf-sorted      the same, batched by prompt length (what the HF backend does with a long call)
  hf-static      hf with a static KV cache (generation_config.cache_implementation = "static")
  hf-compiled    hf with the model's forward under torch.compile
  vllm           the vLLM backend (when vLLM is importable: run it with .venv-vllm/bin/python)
and prints images/s, generated tokens/s, peak memory (RSS over the start, sampled; CUDA: peak
allocated) and the ratio of each to the batch-1 loop and to hf batched. Every configuration runs
``--repeats`` times (default 3), interleaved (A B C A B C ...): each figure is the median with its
[min-max] range over the rounds, each ratio the median and range of the rounds' own ratios
(benchmarks/measure.py says why). The last line says how busy the machine was meanwhile and
warns when other processes made the ratios unreliable. Then DPO: ``--dpo-steps`` training steps
with the reference log-probs computed per step and precomputed (the precompute pass is timed
apart), on the same pairs, and the ratio of step times.

Then pairs (vLLM only): the pairs stage's generation (``stic.stages.pairs.make_pairs``, batches
of ``--batch-size`` images of the demo's unlabeled scenes) on one vLLM engine, in request
orders: ``grouped`` (what stic does with vLLM: one call per batch, each clean image's chosen and
bad-prompt requests adjacent, so the engine's encoder and prefix caches serve the second) and
``per kind`` (the order before: one call for the chosen answers, one for the rejected). Every run
starts with the engine's prefix, encoder and image-processor caches emptied, so no run is served
by an earlier one's work; the records of the orders are compared. A third order, ``one call by
kind`` (one call per batch, all chosen requests then all rejected), tells what adjacency adds
to making one call instead of two. Models (``--pairs-models``):
``demo`` (the ``--model``, 9 image tokens) and ``llava256`` (the LLaVA-1.5-shaped tiny model of
benchmarks/dpo_vs_trl.py, random weights, 256 image tokens: a prefix that caching can share).

    .venv-vllm/bin/python benchmarks/throughput.py            # everything, vLLM included
    .venv/bin/python benchmarks/throughput.py --skip vllm     # without vLLM
    .venv-vllm/bin/python benchmarks/throughput.py --only pairs   # one part: generation|dpo|pairs

Defaults: the shipped demo model (a tiny LLaVA-1.5); ``--model`` takes any LLaVA-style folder.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

from measure import LoadMonitor, interleaved, ratios, spread  # noqa: E402  (benchmarks/measure.py)


@dataclass
class Result:
    name: str
    seconds: float
    images: int
    tokens: int
    peak_mb: float


class PeakMemory:
    """Peak resident memory above the start (MiB), sampled every 5 ms; CUDA: peak allocated."""

    def __init__(self):
        import psutil
        import torch

        self.cuda = torch.cuda.is_available()
        self.process = psutil.Process()
        self.start = self.process.memory_info().rss
        self.peak = self.start
        self._stop = threading.Event()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def stop(self) -> float:
        import torch

        self._stop.set()
        self._thread.join()
        if self.cuda:
            return torch.cuda.max_memory_allocated() / 2**20
        return (self.peak - self.start) / 2**20


def requests_of(count: int):
    """``count`` requests over the demo's evaluation scenes: questions and description prompts.

    Returns the requests, a scratch folder and the folder of the scenes' images.
    """
    import json
    import tempfile

    from PIL import Image

    from stic.data.prompts import GOOD_PROMPT
    from stic.demo.run import DemoSettings, demo_output, write_eval_split
    from stic.modeling.generation import Request

    root = Path(tempfile.mkdtemp(prefix="stic-bench-"))
    settings = DemoSettings(eval_scenes=max(8, count // 4))
    out = []
    # The demo's own writer of its evaluation split, through the demo folder's output object.
    with demo_output(root / "demo", settings, overwrite=False) as output:
        files = write_eval_split(output, settings)
        rows = [json.loads(line) for line in files["vqa"].read_text().splitlines()]
        for i, row in enumerate(rows):
            image = Image.open(files["images"] / row["image"]).convert("RGB")
            # Every fourth request asks for a long description: prompts of two very different
            # lengths.
            out.append(Request(GOOD_PROMPT if i % 4 == 0 else row["question"], image))
            if len(out) == count:
                break
    return out, root, files["images"]


def timed(name, run, requests) -> Result:
    memory = PeakMemory()
    started = time.perf_counter()
    generations = run(requests)
    seconds = time.perf_counter() - started
    return Result(
        name, seconds, len(requests), sum(g.num_tokens for g in generations), memory.stop()
    )


def generation_runs(args, requests) -> tuple[dict[str, Callable[[], Result]], Callable[[], None]]:
    """name -> one timed pass over ``requests``, each warmed up once here; and a clean-up.

    Each run sets the model up as it needs (static cache, compiled forward) and restores it, so
    the runs can be interleaved in any order.
    """
    import torch

    from stic.modeling.backends import HFBackend, import_vllm, open_vllm_engine
    from stic.modeling.generation import generate
    from stic.modeling.models import load_model

    model, processor = load_model(args.model, device=args.device)
    model.eval()
    options = dict(max_new_tokens=args.max_new_tokens)
    runs: dict[str, Callable[[], Result]] = {}
    closers: list[Callable[[], None]] = []

    def warm(backend):  # one small call first: allocator, kernels, caches
        backend.generate(requests[:2], **options)

    if "loop" not in args.skip:
        runs["batch-1 loop"] = lambda: timed(
            "batch-1 loop",
            lambda rs: [generate(model, processor, [r], **options)[0] for r in rs],
            requests,
        )
    batched = HFBackend(model, processor, args.batch_size)
    warm(batched)

    # One call per batch, in the requests' order (no sorting: each call is one batch).
    def in_order(rs):
        out = []
        for start in range(0, len(rs), args.batch_size):
            out += batched.generate(rs[start : start + args.batch_size], **options)
        return out

    if "hf" not in args.skip:
        runs["hf"] = lambda: timed("hf", in_order, requests)
        runs["hf-sorted"] = lambda: timed(
            "hf-sorted", lambda rs: batched.generate(rs, **options), requests
        )
    if "static" not in args.skip:

        def static():
            model.generation_config.cache_implementation = "static"
            try:
                return timed("hf-static", in_order, requests)
            finally:
                model.generation_config.cache_implementation = None

        model.generation_config.cache_implementation = "static"
        try:
            warm(batched)
        finally:
            model.generation_config.cache_implementation = None
        runs["hf-static"] = static
    if "compile" not in args.skip:
        eager = model.forward
        compiled = torch.compile(eager, dynamic=True)

        def with_compiled():
            model.forward = compiled
            try:
                return timed("hf-compiled", in_order, requests)
            finally:
                model.forward = eager

        model.forward = compiled
        try:
            started = time.perf_counter()
            warm(batched)
            print(f"  (torch.compile warm-up: {time.perf_counter() - started:.1f} s)")
        finally:
            model.forward = eager
        runs["hf-compiled"] = with_compiled
    if "vllm" not in args.skip:
        try:
            import_vllm()
        except Exception as e:
            print(f"  vllm skipped: {e}")
        else:
            started = time.perf_counter()
            engine = open_vllm_engine(args.model, seed=0, max_model_len=512)
            print(f"  (vLLM engine start: {time.perf_counter() - started:.1f} s)")
            warm(engine)
            runs["vllm"] = lambda: timed(
                "vllm", lambda rs: engine.generate(rs, **options), requests
            )
            closers.append(engine.close)

    def close():
        for closer in closers:
            closer()

    return runs, close


def dpo_benchmark(args, root: Path, images: Path) -> None:
    import json

    import torch
    from transformers import TrainingArguments

    from stic.data.prompts import GOOD_PROMPT, PLAIN_PROMPTS
    from stic.data.schemas import PairRecord
    from stic.modeling.models import add_lora, load_model
    from stic.stages.dpo import (
        DPOTrainer,
        PairCollator,
        WithReference,
        precompute_reference_logps,
    )

    names = sorted(p.name for p in images.iterdir())[: args.dpo_steps * args.dpo_batch]
    pairs = [
        PairRecord(
            id=name,
            image=name,
            prompt=PLAIN_PROMPTS[i % len(PLAIN_PROMPTS)],
            chosen="A red circle on the left and a blue square at the top right of the image. " * 3,
            rejected="A red circle, a cat, a tree and a car parked next to a green house. " * 3,
            rejected_kind="bad_prompt",
            chosen_prompt=GOOD_PROMPT,
            rejected_prompt=PLAIN_PROMPTS[0],
        )
        for i, name in enumerate(names)
    ]
    steps = len(pairs) // args.dpo_batch

    def step_time(precompute: bool) -> tuple[float, float]:
        torch.manual_seed(0)
        model, processor = load_model(args.model, device=None)
        model = add_lora(
            model, r=8, alpha=16, dropout=0.05, layer_names="q_proj,k_proj,v_proj,o_proj".split(",")
        )
        collator = PairCollator(processor, str(images), 512)
        reference, pre_seconds = {}, 0.0
        if precompute:
            started = time.perf_counter()
            path = root / f"reference-{time.time_ns()}.jsonl"
            reference = precompute_reference_logps(
                model,
                pairs,
                collator,
                path,
                "bench",
                batch_size=args.dpo_batch,
                append=lambda rows: None,  # kept in memory: every round starts afresh
            )
            pre_seconds = time.perf_counter() - started
        trainer = DPOTrainer(
            model=model,
            args=TrainingArguments(
                output_dir=str(root / "dpo"),
                per_device_train_batch_size=args.dpo_batch,
                max_steps=steps,
                report_to="none",
                save_strategy="no",
                use_cpu=not torch.cuda.is_available(),
                learning_rate=1e-5,
                logging_steps=10**6,
            ),
            train_dataset=pairs,
            data_collator=WithReference(collator, reference) if precompute else collator,
            beta=0.1,
            nll_coef=1 / 1024,
            nll_normalization="sum",
        )
        started = time.perf_counter()
        trainer.train()
        return (time.perf_counter() - started) / steps, pre_seconds

    per_step: list[float] = []
    pre_step: list[float] = []
    pre_pass: list[float] = []

    def per_step_run() -> float:
        per_step.append(step_time(False)[0])
        return per_step[-1]

    def precomputed_run() -> float:
        seconds, pass_seconds = step_time(True)
        pre_step.append(seconds)
        pre_pass.append(pass_seconds)
        return seconds

    figures = interleaved(
        {"reference per step": per_step_run, "reference precomputed": precomputed_run},
        args.repeats,
    )
    print(
        json.dumps(
            {
                "dpo_steps": steps,
                "pairs_per_step": args.dpo_batch,
                "step_s_reference_per_step": spread(per_step).as_dict(),
                "step_s_reference_precomputed": spread(pre_step).as_dict(),
                "precompute_pass_s": spread(pre_pass).as_dict(3),
                "step_time_ratio": ratios(
                    figures, "reference per step", "reference precomputed"
                ).as_dict(2),
            }
        )
    )


class PerKind:
    """The engine as a backend without caches by image: pairs then asks it in the order used
    before grouping (one call for the chosen answers, one for the rejected)."""

    caches_by_image = False

    def __init__(self, backend):
        self.backend = backend

    def generate(self, requests, **kw):
        return self.backend.generate(requests, **kw)


def one_call_by_kind(plans, grouped: bool) -> list[list[tuple[str, int]]]:
    """A third order, to tell adjacency from the number of calls: one call per batch as grouped,
    but every chosen request first and every rejected one after (no two on an image adjacent)."""
    count = len(plans)
    return [[("chosen", i) for i in range(count)] + [("rejected", i) for i in range(count)]]


def forget_images(engine) -> None:
    """Empty the engine's prefix, encoder and image-processor caches (between timed runs)."""
    engine.llm.reset_prefix_cache()
    engine.llm.llm_engine.reset_encoder_cache()
    engine.llm.reset_mm_cache()


def pairs_model(name: str, args, root: Path) -> str:
    if name == "demo":
        return args.model
    from dpo_vs_trl import shaped_model  # benchmarks/dpo_vs_trl.py

    folder = root / name
    folder.mkdir()
    return str(shaped_model("llava", folder))


def pairs_benchmark(args, root: Path) -> None:
    """Pairs/s of the pairs stage's generation with vLLM, requests grouped by image vs per kind."""
    import json

    from stic.config import PairsConfig
    from stic.demo.run import DemoSettings, demo_output, write_unlabeled
    from stic.modeling.backends import import_vllm
    from stic.runtime.images import load_image
    from stic.stages.pairs import plan_pair

    try:
        import_vllm()
    except Exception as e:
        print(f"  pairs skipped (needs vLLM): {e}")
        return
    settings = DemoSettings(unlabeled=args.pairs_images)
    with demo_output(root / "pairs-demo", settings, overwrite=False) as output:
        folder = write_unlabeled(output, 0, settings)
    ids = sorted(p.name for p in folder.iterdir())[: args.pairs_images]
    images = [load_image(folder / i) for i in ids]
    for name in args.pairs_models:
        model = pairs_model(name, args, root)
        config = PairsConfig(
            model=model,
            images=str(folder),
            out=str(root / "unused.jsonl"),
            backend="vllm",
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
        )
        result = pairs_orders(config, ids, images, args.repeats)
        bad_prompt = sum(plan_pair(i, config).corruption is None for i in ids)
        print(json.dumps({"pairs_model": name, "bad_prompt_pairs": bad_prompt, **result}))


PAIRS_MAX_MODEL_LEN = 512


def pairs_orders(config, ids: list[str], images: list, repeats: int) -> dict:
    """Both request orders on one engine, interleaved ``repeats`` times: pairs/s, generate
    calls, and whether every run made the same records."""
    from unittest import mock

    from stic.modeling.backends import open_vllm_engine
    from stic.stages import pairs
    from stic.stages.pairs import GenerateCalls, make_pairs

    # A step's token budget that holds every prompt of a call whole: vLLM 0.32 on CPU fails a
    # seeded request whose prompt is split over steps ("CPU Generator does not use offset"),
    # in either order, once a call's prompts pass its default budget (4096 tokens).
    budget = PAIRS_MAX_MODEL_LEN * 2 * config.batch_size
    started = time.perf_counter()
    engine = open_vllm_engine(
        config.model, seed=0, max_model_len=PAIRS_MAX_MODEL_LEN, max_num_batched_tokens=budget
    )
    print(f"  (vLLM engine start on {config.model}: {time.perf_counter() - started:.1f} s)")
    made: dict[str, list[list[dict]]] = {}
    calls: dict[str, int] = {}

    def run(label: str, backend, order=None) -> Callable[[], float]:
        def once() -> float:
            forget_images(engine)
            counted = GenerateCalls()
            records = []
            began = time.perf_counter()
            with contextlib.ExitStack() as stack:
                if order is not None:
                    stack.enter_context(mock.patch.object(pairs, "generation_calls", order))
                for start in range(0, len(ids), config.batch_size):
                    batch = slice(start, start + config.batch_size)
                    records += make_pairs(
                        ids[batch], images[batch], backend, config=config, calls=counted
                    )
            seconds = time.perf_counter() - began
            made.setdefault(label, []).append(records)
            calls[label] = counted.calls
            return len(records) / seconds

        return once

    try:
        make_pairs(ids[:2], images[:2], engine, config=config)  # warm-up
        figures = interleaved(
            {
                "grouped": run("grouped", engine),
                "per kind": run("per kind", PerKind(engine)),
                "one call by kind": run("one call by kind", engine, one_call_by_kind),
            },
            repeats,
        )
    finally:
        engine.close()
    first = made["grouped"][0]
    return {
        "pairs": len(ids),
        "batch": config.batch_size,
        "max_new_tokens": config.max_new_tokens,
        "max_num_batched_tokens": budget,
        "caches": engine.caches,
        "generate_calls": calls,
        **{f"pairs_per_s {name}": spread(f).as_dict(3) for name, f in figures.items()},
        "grouped / per kind": ratios(figures, "grouped", "per kind").as_dict(3),
        "grouped / one call by kind": ratios(figures, "grouped", "one call by kind").as_dict(3),
        "same_records_every_run": all(r == first for runs in made.values() for r in runs),
    }


def print_generation(results: dict[str, list[Result]]) -> None:
    """Median [min-max] over the rounds of each figure, and of each round's ratio to the loop
    (and to hf batched)."""
    rates = {name: [r.images / r.seconds for r in rs] for name, rs in results.items()}
    tokens = {name: [r.tokens / r.seconds for r in rs] for name, rs in results.items()}
    peaks = {name: [r.peak_mb for r in rs] for name, rs in results.items()}
    bases = [b for b in ("batch-1 loop", "hf") if b in rates]
    header = f"{'':14} {'images/s':>22} {'tokens/s':>22} {'peak MiB':>18}"
    header += "".join(f" {'x ' + ('loop' if b == 'batch-1 loop' else b):>18}" for b in bases)
    print(header)
    for name in results:
        line = f"{name:14} {str(spread(rates[name])):>22} {str(spread(tokens[name])):>22}"
        line += f" {str(spread(peaks[name])):>18}"
        line += "".join(f" {str(ratios(rates, name, b)):>18}" for b in bases)
        print(line)


def main():
    import stic.demo

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(Path(stic.demo.__file__).parent / "tiny_llava"))
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dpo-steps", type=int, default=6)
    parser.add_argument("--dpo-batch", type=int, default=4)
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="rounds of every configuration, interleaved (A B C A B C ...); medians and ranges",
    )
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=["loop", "hf", "static", "compile", "vllm", "dpo", "pairs"],
        help="parts not to run",
    )
    parser.add_argument(
        "--only",
        nargs="*",
        choices=PARTS,
        help="run only these parts (default: every part not skipped)",
    )
    parser.add_argument("--pairs-images", type=int, default=32, help="pairs part: images")
    parser.add_argument(
        "--pairs-models",
        nargs="*",
        default=["demo", "llava256"],
        choices=["demo", "llava256"],
        help="pairs part: the demo model (--model) and/or a tiny LLaVA with 256 image tokens",
    )
    args = parser.parse_args()
    if args.only is not None:
        args.skip = [*args.skip, *(part for part in PARTS if part not in args.only)]
    import torch

    print(
        f"model {args.model}; {args.requests} requests, batch {args.batch_size}, "
        f"{args.max_new_tokens} new tokens, {args.repeats} interleaved rounds; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}"
    )
    requests, root, images = requests_of(args.requests)
    with LoadMonitor() as load:
        if "generation" not in args.skip:
            runs, close = generation_runs(args, requests)
            try:
                results: dict[str, list[Result]] = {name: [] for name in runs}

                def keep(name, run):
                    def once() -> float:
                        result = run()
                        results[name].append(result)
                        return result.images / result.seconds

                    return once

                interleaved({name: keep(name, run) for name, run in runs.items()}, args.repeats)
            finally:
                close()
            if results:
                print_generation(results)
        if "dpo" not in args.skip:
            dpo_benchmark(args, root, images)
        if "pairs" not in args.skip:
            pairs_benchmark(args, root)
    print(load.report())


# The script's parts, for --only (--skip also takes the generation part's configurations).
PARTS = ("generation", "dpo", "pairs")


if __name__ == "__main__":  # vLLM starts its engine in a spawned process: keep this guard
    main()
