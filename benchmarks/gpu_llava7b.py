"""GPU path check: a random-weight LLaVA-1.5-7B-shaped model in bf16 through `pairs` and `dpo`.

CPU tests cannot see bf16/CUDA mistakes; this script can. It builds the model in code (CLIP
ViT-L/14-336 vision tower + 32-layer, 4096-wide Llama, LLaVA-1.5's 32064-token vocabulary; no
download), runs stage 1a on generated images and a number of stage-1b DPO steps through the same
functions `stic pairs` and `stic dpo` call, and prints images/s, pairs/s, seconds per DPO step
and peak GPU memory.

Random weights rarely produce the end-of-turn token, so nearly every answer runs to
--max-new-tokens: generation numbers are a worst case for that length.

Each stage runs ``--repeats`` times (default 3), interleaved (pairs, dpo, pairs, dpo, ...), each
time into a fresh folder; every figure is the median and [min-max] range over the repeats
(benchmarks/measure.py). Then, unless ``--compare-steps 0``, the DPO side by side of
benchmarks/dpo_vs_trl.py on this 7B shape and the pairs just generated: TRL's DPOTrainer, stic
with two sequences per pair, with the shared prefix, and with the shared prefix and the
precomputed reference, the same LoRA, batch, steps, gradient checkpointing and precision for
all four (bf16 autocast on CUDA, as `stic dpo` uses for a bf16 model; none on CPU), ``--repeats``
interleaved rounds, ratios within a round.

    python benchmarks/gpu_llava7b.py --images 256 --batch-size 64 --dpo-steps 20
    python benchmarks/gpu_llava7b.py --smoke --images 8 --batch-size 4 --max-new-tokens 16 --dpo-steps 2 --compare-steps 2
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from measure import LoadMonitor, interleaved, spread

from stic.config import DPOConfig, PairsConfig
from stic.stages.dpo import run_dpo
from stic.stages.pairs import run_pairs
from stic.testing import build_tokenizer, make_images

VOCAB = 32064  # llava-hf/llava-1.5-7b-hf


# LLaVA-1.5-7B's shapes; --smoke swaps in tiny ones to check the script itself on a CPU.
FULL = dict(
    v_hidden=1024,
    v_inter=4096,
    v_layers=24,
    v_heads=16,
    t_hidden=4096,
    t_inter=11008,
    t_layers=32,
    t_heads=32,
)
SMOKE = dict(
    v_hidden=32, v_inter=64, v_layers=2, v_heads=2, t_hidden=64, t_inter=128, t_layers=2, t_heads=4
)


def build_llava_7b_shaped(dtype: torch.dtype, device: str, shape: dict = FULL):
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tokenizer = build_tokenizer("llava")
    # Filler tokens so that every id the random model emits decodes to text that re-encodes to
    # the same id: DPO then trains on answers of the generated length.
    tokenizer.add_tokens([f"<x{i}>" for i in range(VOCAB - len(tokenizer))])
    vision = CLIPVisionConfig(
        hidden_size=shape["v_hidden"],
        intermediate_size=shape["v_inter"],
        num_hidden_layers=shape["v_layers"],
        num_attention_heads=shape["v_heads"],
        image_size=336,
        patch_size=14,
        projection_dim=768,
    )
    text = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=shape["t_hidden"],
        intermediate_size=shape["t_inter"],
        num_hidden_layers=shape["t_layers"],
        num_attention_heads=shape["t_heads"],
        num_key_value_heads=shape["t_heads"],
        max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=576,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    with torch.device(device):
        model = LlavaForConditionalGeneration(config).to(dtype)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}
        ),
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=tokenizer.chat_template,
    )
    return model, processor


def sync() -> None:
    """Wait for the GPU and restart the peak-memory count (no-op on CPU)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def elapsed(start: float) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def peak_gib() -> float | None:
    if not torch.cuda.is_available():
        return None
    torch.cuda.synchronize()
    return round(torch.cuda.max_memory_allocated() / 2**30, 1)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64, help="sequences per generate() call")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--dpo-steps", type=int, default=20)
    parser.add_argument("--dpo-batch-size", type=int, default=2, help="pairs per forward pass")
    parser.add_argument("--grad-accum", type=int, default=4)
    parser.add_argument(
        "--repeats", type=int, default=3, help="interleaved runs of each stage (default: 3)"
    )
    parser.add_argument(
        "--compare-steps",
        type=int,
        default=10,
        help="steps of each trainer in the DPO side by side with TRL (0: skip it)",
    )
    parser.add_argument("--compare-lora-r", type=int, default=128)
    parser.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny shapes on the CPU: checks the script only"
    )
    args = parser.parse_args()
    if not torch.cuda.is_available() and not args.smoke:
        raise SystemExit("this benchmark needs a CUDA GPU (or --smoke)")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cuda = device == "cuda"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(args.out or tempfile.mkdtemp(prefix="stic-bench-"))
    results: dict = {
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "torch": torch.__version__,
    }
    import transformers

    results["transformers"] = transformers.__version__

    start = time.perf_counter()
    model, processor = build_llava_7b_shaped(
        torch.bfloat16 if cuda else torch.float32, device, SMOKE if args.smoke else FULL
    )
    results["build_s"] = round(time.perf_counter() - start, 1)
    results["params_b"] = round(sum(p.numel() for p in model.parameters()) / 1e9, 2)
    runs = {
        "pairs": lambda round_: run_pairs_once(model, processor, work / f"round{round_}", args),
        "dpo": lambda round_: run_dpo_once(model, processor, work / f"round{round_}", args),
    }
    rows: dict[str, list[dict]] = {name: [] for name in runs}
    counter = {name: 0 for name in runs}

    def once(name):
        def call() -> float:
            counter[name] += 1
            row = runs[name](counter[name])
            rows[name].append(row)
            print(json.dumps({name: row}), flush=True)
            return row["seconds"]

        return call

    with LoadMonitor() as monitor:
        interleaved({name: once(name) for name in runs}, args.repeats)
        for name, stage_rows in rows.items():
            results[name] = summarise(stage_rows)
        if args.compare_steps:
            results["dpo_vs_trl"] = compare(model, processor, work / "round1", args)
    results["machine"] = monitor.report()
    print(json.dumps(results, indent=2, default=str), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))


def summarise(rows: list[dict]) -> dict:
    """Each numeric figure of the repeats as median [min-max]; the rest from the first run."""
    out = {}
    for key, value in rows[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = spread([row[key] for row in rows]).as_dict(2)
        else:
            out[key] = value
    return out


def run_pairs_once(model, processor, work: Path, args) -> dict:
    make_images(work / "images", args.images, seed=0)
    config = PairsConfig(
        model="random-llava-1.5-7b-shaped",
        images=str(work / "images"),
        out=str(work / "pairs.jsonl"),
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
    )
    sync()
    start = time.perf_counter()
    summary = run_pairs(config, model=model, processor=processor)
    seconds = elapsed(start)
    made = summary.made
    return {
        "images": made,
        "seconds": round(seconds, 1),
        "images_per_s": round(made / seconds, 2),
        "pairs_per_s": round(made / seconds, 2),
        # An upper bound: every answer counted at the token limit (random weights rarely stop).
        "generated_tokens_per_s": round(2 * made * args.max_new_tokens / seconds, 0),
        "truncated_answers": summary.details["truncated_answers"],
        "peak_gpu_gib": peak_gib(),
    }


def run_dpo_once(model, processor, work: Path, args) -> dict:
    """DPO on the pairs of the pairs run of the same round (interleaving runs pairs first)."""
    config = DPOConfig(
        model="random-llava-1.5-7b-shaped",
        pairs=str(work / "pairs.jsonl"),
        images=str(work / "images"),
        out=str(work / "dpo"),
        max_steps=args.dpo_steps,
        batch_size=args.dpo_batch_size,
        grad_accum=args.grad_accum,
        gradient_checkpointing=True,
        # Random weights answer up to the token limit: keep those pairs (a trained model's are
        # dropped by default), or nothing is left to train on.
        filter_truncated=False,
        save_steps=10_000,
        logging_steps=5,
    )
    sync()
    start = time.perf_counter()
    summary = run_dpo(config, model=model, processor=processor)
    seconds = elapsed(start)
    without_adapters(model)  # run_dpo put its LoRA into the model; the next round starts bare
    pairs_seen = args.dpo_steps * args.dpo_batch_size * args.grad_accum
    return {
        "steps": summary.details["global_step"],
        "seconds": round(seconds, 1),
        "s_per_step": round(seconds / args.dpo_steps, 2),
        "pairs_per_s": round(pairs_seen / seconds, 2),
        "train_loss": summary.details["train_loss"],
        "peak_gpu_gib": peak_gib(),
    }


def without_adapters(model):
    """``model`` with every PEFT layer put back to the layer it wraps (in place, no merge)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, module.get_base_layer())
    # PEFT also notes its adapters' configs on the wrapped model; a stale note makes the next
    # wrapper think those adapters (TRL's "ref", for one) still exist.
    if "peft_config" in vars(model):
        del model.peft_config
    return model


def compare(model, processor, work: Path, args) -> dict:
    """benchmarks/dpo_vs_trl.py's four trainers on this model and the pairs of round 1."""
    from dpo_vs_trl import CONFIGS, LORA_LAYERS, compare_trainers

    from stic.data.schemas import read_pairs
    from stic.modeling.models import add_lora

    pairs = read_pairs(work / "pairs.jsonl")[: args.dpo_batch_size * args.compare_steps]

    def loader():
        # A fresh LoRA (seed 0) on the same base weights for every trainer: the previous run's
        # adapter is taken off (no merge) so the base stays the random 7B weights.
        without_adapters(model)
        sync()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            lora = add_lora(
                model,
                r=args.compare_lora_r,
                alpha=2 * args.compare_lora_r,
                dropout=0.0,
                layer_names=LORA_LAYERS,
            )
        return lora, processor

    figures = compare_trainers(
        loader,
        pairs,
        work / "images",
        args.dpo_batch_size,
        args.compare_steps,
        work / "compare",
        args.repeats,
        checkpointing=True,
    )
    return {
        "job": f"{args.compare_steps} steps x {args.dpo_batch_size} pairs, LoRA r="
        f"{args.compare_lora_r}, gradient checkpointing",
        "pairs_per_s": {name: str(figures["pairs_per_s"][name]) for name in CONFIGS},
        "precomputed_with_its_pass": str(figures["precomputed_with_pass"]),
        "vs_trl": {name: str(value) for name, value in figures["vs_trl"].items()},
        "shared_vs_two_sequences": str(figures["shared_vs_two"]),
        "step0_loss": figures["first_loss"],
    }


if __name__ == "__main__":
    main()
