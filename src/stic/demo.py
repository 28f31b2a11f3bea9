"""``stic demo``: the whole method on CPU in a few minutes, through the same stages a real run uses.

It builds a tiny random LLaVA-1.5-shaped model and a folder of generated images, writes a small
instruction set and VQA file, writes a run config, and runs ``stic run`` on it. The model is
random, so its words are noise: the demo shows the pipeline and its files, not a gain.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import yaml

from stic.files import atomic_write_json, atomic_write_text


def write_demo_inputs(out: Path, num_images: int, seed: int, family: str = "llava") -> Path:
    """Model, images, instruction data, VQA data and run config under ``out``; returns the config path."""
    from stic.testing import build_tiny_model, make_images

    model_dir = build_tiny_model(family, out / "model", seed=seed)
    images = make_images(out / "images", num_images, seed=seed)
    names = [p.name for p in images]
    instruct = [
        {
            "id": f"sample-{i}",
            "image": name,
            "conversations": [
                {"from": "human", "value": "<image>\nWhat is in the image?"},
                {"from": "gpt", "value": "A shape on a background."},
                {"from": "human", "value": "Is it colourful?"},
                {"from": "gpt", "value": "Yes."},
            ],
        }
        for i, name in enumerate(names[: max(2, num_images // 2)])
    ]
    atomic_write_json(out / "instruct.json", instruct)
    vqa = [
        {
            "id": f"q-{i}",
            "image": name,
            "question": "Is there a shape in the image?",
            "answer": "yes",
        }
        for i, name in enumerate(names[: max(2, num_images // 2)])
    ] + [
        {
            "id": f"mc-{i}",
            "image": name,
            "question": "What does the image show?",
            "choices": ["a shape", "a person", "a car"],
            "answer": "A",
        }
        for i, name in enumerate(names[: max(2, num_images // 4)])
    ]
    atomic_write_text(out / "vqa.jsonl", "".join(json.dumps(row) + "\n" for row in vqa))
    config = {
        "model": str(model_dir),
        "output_dir": str(out / "run"),
        "seed": seed,
        "pairs": {"images": str(out / "images"), "batch_size": 4, "max_new_tokens": 24},
        "dpo": {
            # The random model never emits its end-of-turn token: every answer hits the token
            # limit, so the truncation filter would drop every pair.
            "filter_truncated": False,
            "max_steps": 4,
            "batch_size": 2,
            "grad_accum": 1,
            "lr": 1e-3,
            "lora_r": 8,
            "lora_alpha": 16,
            "logging_steps": 1,
            "save_steps": 2,
        },
        "infuse": {
            "data": str(out / "instruct.json"),
            "images": str(out / "images"),
            "batch_size": 4,
            "max_new_tokens": 24,
        },
        "sft": {
            "max_steps": 4,
            "batch_size": 2,
            "grad_accum": 1,
            "lr": 1e-3,
            "logging_steps": 1,
            "save_steps": 2,
        },
        "eval": [
            {
                "name": "base",
                "at": "base",
                "data": str(out / "vqa.jsonl"),
                "images": str(out / "images"),
                "max_new_tokens": 8,
            },
            {
                "name": "stic",
                "data": str(out / "vqa.jsonl"),
                "images": str(out / "images"),
                "max_new_tokens": 8,
            },
            {
                "name": "stic_dar",
                "data": str(out / "vqa.jsonl"),
                "images": str(out / "images"),
                "dar": True,
                "max_new_tokens": 8,
                "dar_max_new_tokens": 24,
            },
        ],
    }
    path = out / "stic.yaml"
    atomic_write_text(path, yaml.safe_dump(config, sort_keys=False))
    return path


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="stic demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out",
        default="runs/demo",
        help="Folder for everything the demo makes (default: runs/demo).",
    )
    parser.add_argument(
        "--images", type=int, default=16, help="Number of generated images (default: 16)."
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="Seed of the model, images and run (default: 0)."
    )
    parser.add_argument(
        "--family",
        default="llava",
        choices=("llava", "llava_next", "qwen2_vl"),
        help="Architecture of the tiny model (default: llava, LLaVA-1.5-shaped).",
    )
    args = parser.parse_args(argv)
    from stic.pipeline import run_pipeline

    start = time.time()
    out = Path(args.out)
    config_path = write_demo_inputs(out, args.images, args.seed, args.family)
    print(
        f"demo inputs: {out} (tiny random {args.family} model at {out / 'model'}, config {config_path})"
    )
    for planned, summary in run_pipeline(config_path):
        data = summary.to_dict() if hasattr(summary, "to_dict") else summary
        shown = {
            k: (len(v) if isinstance(v, dict) and k == "skipped" else v) for k, v in data.items()
        }
        print(
            f"{planned.stage:>6} {planned.name:<9} -> {planned.config.out}  {json.dumps(shown, default=str)}"
        )
    print(
        f"\ndone in {time.time() - start:.0f} s (a rerun skips completed stages; delete {out} to start over)."
    )
    print("Outputs:")
    run = out / "run"
    for label, path in [
        ("preference pairs", run / "pairs" / "pairs.jsonl"),
        ("stage-1 adapter", run / "dpo"),
        ("infused data", run / "infuse" / "infused.json"),
        ("stage-2 adapter", run / "sft"),
        ("evaluations", run / "eval"),
        ("resolved config", run / "resolved_config.yaml"),
    ]:
        print(f"  {label:<17} {path}")
    return 0
