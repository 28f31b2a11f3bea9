"""GPU path check: a random-weight LLaVA-1.5-7B-shaped model in bf16 through `pairs` and `dpo`.

CPU tests cannot see bf16/CUDA mistakes; this script can. It builds the model in code (CLIP
ViT-L/14-336 vision tower + 32-layer, 4096-wide Llama, LLaVA-1.5's 32064-token vocabulary; no
download), runs stage 1a on generated images and a number of stage-1b DPO steps through the same
functions `stic pairs` and `stic dpo` call, and prints images/s, pairs/s, seconds per DPO step
and peak GPU memory.

Random weights rarely produce the end-of-turn token, so nearly every answer runs to
--max-new-tokens: generation numbers are a worst case for that length.

    python benchmarks/gpu_llava7b.py --images 256 --batch-size 64 --dpo-steps 20
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

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
    make_images(work / "images", args.images, seed=0)

    pairs_config = PairsConfig(
        model="random-llava-1.5-7b-shaped",
        images=str(work / "images"),
        out=str(work / "pairs.jsonl"),
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
    )
    sync()
    start = time.perf_counter()
    summary = run_pairs(pairs_config, model=model, processor=processor)
    seconds = elapsed(start)
    results["pairs"] = {
        "images": summary.written,
        "seconds": round(seconds, 1),
        "images_per_s": round(summary.written / seconds, 2),
        "pairs_per_s": round(summary.written / seconds, 2),
        "generated_tokens_per_s": round(2 * summary.written * args.max_new_tokens / seconds, 0),
        "truncated_answers": summary.truncated,
        "peak_gpu_gib": peak_gib(),
    }
    print(json.dumps(results, indent=2), flush=True)
    dpo_config = DPOConfig(
        model="random-llava-1.5-7b-shaped",
        pairs=pairs_config.out,
        images=pairs_config.images,
        out=str(work / "dpo"),
        max_steps=args.dpo_steps,
        batch_size=args.dpo_batch_size,
        grad_accum=args.grad_accum,
        gradient_checkpointing=True,
        save_steps=10_000,
        logging_steps=5,
    )
    sync()
    start = time.perf_counter()
    dpo_summary = run_dpo(dpo_config, model=model, processor=processor)
    seconds = elapsed(start)
    pairs_seen = args.dpo_steps * args.dpo_batch_size * args.grad_accum
    results["dpo"] = {
        "steps": dpo_summary["global_step"],
        "seconds": round(seconds, 1),
        "s_per_step": round(seconds / args.dpo_steps, 2),
        "pairs_per_s": round(pairs_seen / seconds, 2),
        "train_loss": dpo_summary["train_loss"],
        "peak_gpu_gib": peak_gib(),
        "adapter_files": sorted(p.name for p in Path(dpo_config.out).iterdir()),
    }
    print(json.dumps(results, indent=2), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
