"""Generation throughput and DPO step time, side by side in ONE process on the same model and inputs.

Generation (the same requests each time: the demo's VQA questions and GOOD_PROMPT descriptions):
  batch-1 loop   one ``generate`` call per request (the reference code's way)
  hf             the HF backend, ``--batch-size`` requests per batch, in the requests' order
  hf-sorted      the same, batched by prompt length (what the HF backend does with a long call)
  hf-static      hf with a static KV cache (generation_config.cache_implementation = "static")
  hf-compiled    hf with the model's forward under torch.compile
  vllm           the vLLM backend (when vLLM is importable: run it with .venv-vllm/bin/python)
and prints images/s, generated tokens/s, peak memory (RSS over the start, sampled; CUDA: peak
allocated) and the ratio of each to the batch-1 loop. Then DPO: ``--dpo-steps`` training steps
with the reference log-probs computed per step and precomputed (the precompute pass is timed
apart), on the same pairs, and the ratio of step times.

    .venv-vllm/bin/python benchmarks/throughput.py            # everything, vLLM included
    .venv/bin/python benchmarks/throughput.py --skip vllm     # without vLLM

Defaults: the shipped demo model (a tiny LLaVA-1.5); ``--model`` takes any LLaVA-style folder.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


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
    """``count`` requests over the demo's evaluation scenes: questions and description prompts."""
    import tempfile

    from PIL import Image

    from stic.data.prompts import GOOD_PROMPT
    from stic.demo.run import DemoSettings, write_eval_split
    from stic.modeling.generation import Request

    root = Path(tempfile.mkdtemp(prefix="stic-bench-"))
    files = write_eval_split(root, DemoSettings(eval_scenes=max(8, count // 4)))
    import json

    rows = [json.loads(line) for line in files["vqa"].read_text().splitlines()]
    out = []
    for i, row in enumerate(rows):
        image = Image.open(files["images"] / row["image"]).convert("RGB")
        # Every fourth request asks for a long description: prompts of two very different lengths.
        out.append(Request(GOOD_PROMPT if i % 4 == 0 else row["question"], image))
        if len(out) == count:
            break
    return out, root


def timed(name, run, requests) -> Result:
    memory = PeakMemory()
    started = time.perf_counter()
    generations = run(requests)
    seconds = time.perf_counter() - started
    return Result(
        name, seconds, len(requests), sum(g.num_tokens for g in generations), memory.stop()
    )


def generation_benchmarks(args, requests) -> list[Result]:
    import torch

    from stic.modeling.backends import HFBackend, import_vllm, open_vllm_engine
    from stic.modeling.generation import generate
    from stic.modeling.models import load_model

    model, processor = load_model(args.model, device=args.device)
    model.eval()
    options = dict(max_new_tokens=args.max_new_tokens)
    results = []

    def warm(backend):  # one small call first: allocator, kernels, caches
        backend.generate(requests[:2], **options)

    if "loop" not in args.skip:
        results.append(
            timed(
                "batch-1 loop",
                lambda rs: [generate(model, processor, [r], **options)[0] for r in rs],
                requests,
            )
        )
    batched = HFBackend(model, processor, args.batch_size)
    warm(batched)
    if "hf" not in args.skip:
        # One call per batch, in the requests' order (no sorting: each call is one batch).
        def in_order(rs):
            out = []
            for start in range(0, len(rs), args.batch_size):
                out += batched.generate(rs[start : start + args.batch_size], **options)
            return out

        results.append(timed("hf", in_order, requests))
        results.append(timed("hf-sorted", lambda rs: batched.generate(rs, **options), requests))
    if "static" not in args.skip:
        model.generation_config.cache_implementation = "static"
        try:
            warm(batched)
            results.append(timed("hf-static", lambda rs: in_order(rs), requests))
        finally:
            model.generation_config.cache_implementation = None
    if "compile" not in args.skip:
        eager = model.forward
        model.forward = torch.compile(eager, dynamic=True)
        try:
            started = time.perf_counter()
            warm(batched)
            print(f"  (torch.compile warm-up: {time.perf_counter() - started:.1f} s)")
            results.append(timed("hf-compiled", lambda rs: in_order(rs), requests))
        finally:
            model.forward = eager
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
            results.append(timed("vllm", lambda rs: engine.generate(rs, **options), requests))
            engine.close()
    return results


def dpo_benchmark(args, root: Path) -> None:
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

    images = root / "images"
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
                model, pairs, collator, path, "bench", batch_size=args.dpo_batch
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

    per_step, _ = step_time(False)
    pre_step, pre_seconds = step_time(True)
    print(
        json.dumps(
            {
                "dpo_steps": steps,
                "pairs_per_step": args.dpo_batch,
                "step_s_reference_per_step": round(per_step, 4),
                "step_s_reference_precomputed": round(pre_step, 4),
                "precompute_pass_s": round(pre_seconds, 3),
                "step_time_ratio": round(per_step / pre_step, 2),
            }
        )
    )


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
        "--skip",
        nargs="*",
        default=[],
        choices=["loop", "hf", "static", "compile", "vllm", "dpo"],
        help="parts not to run",
    )
    args = parser.parse_args()
    import torch

    print(
        f"model {args.model}; {args.requests} requests, batch {args.batch_size}, "
        f"{args.max_new_tokens} new tokens; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, "
        f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}"
    )
    requests, root = requests_of(args.requests)
    results = generation_benchmarks(args, requests)
    base = next((r for r in results if r.name == "batch-1 loop"), results[0] if results else None)
    print(f"{'':14} {'images/s':>9} {'tokens/s':>9} {'peak MiB':>9} {'x loop':>7}")
    for r in results:
        rate = r.images / r.seconds
        print(
            f"{r.name:14} {rate:9.2f} {r.tokens / r.seconds:9.1f} {r.peak_mb:9.0f} "
            f"{rate / (base.images / base.seconds):7.2f}"
        )
    if "dpo" not in args.skip:
        dpo_benchmark(args, root)


if __name__ == "__main__":  # vLLM starts its engine in a spawned process: keep this guard
    main()
