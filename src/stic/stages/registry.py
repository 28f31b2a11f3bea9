"""The stages, in one dict that the CLI, ``stic run``, the manifests and the docs all read.

Each entry names the stage's config class, its run function, the config keys that are its
inputs and where its output goes. Run functions are named by import path and imported only when
a stage runs, so ``stic --help`` and config validation never import torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from stic.config import BenchConfig, DPOConfig, EvalConfig, InfuseConfig, PairsConfig, SFTConfig


@dataclass(frozen=True)
class Stage:
    """One stage of the method.

    ``run`` is ``"module:function"``; every run function has the signature
    ``run(config, model=None, processor=None) -> StageSummary``. ``inputs`` are the config keys
    that name what the stage reads; ``output`` says whether ``out`` is a file or a folder.
    """

    name: str
    help: str
    config: type
    run: str
    inputs: tuple[str, ...]
    output: Literal["file", "folder"]
    example: str

    def runner(self) -> Callable[..., Any]:
        module, function = self.run.split(":")
        return getattr(importlib.import_module(module), function)


STAGES: dict[str, Stage] = {
    stage.name: stage
    for stage in (
        Stage(
            name="pairs",
            help="Stage 1a: build preference pairs from a folder of unlabeled images.",
            config=PairsConfig,
            run="stic.stages.pairs:run_pairs",
            inputs=("model", "images"),
            output="file",
            example="stic pairs --model llava-hf/llava-1.5-7b-hf --images coco/train2014 "
            "--out pairs.jsonl --limit 6000",
        ),
        Stage(
            name="dpo",
            help="Stage 1b: train a LoRA adapter on the pairs with DPO + NLL.",
            config=DPOConfig,
            run="stic.stages.dpo:run_dpo",
            inputs=("model", "pairs", "images"),
            output="folder",
            example="stic dpo --model llava-hf/llava-1.5-7b-hf --pairs pairs.jsonl "
            "--images coco/train2014 --out stage1",
        ),
        Stage(
            name="infuse",
            help="Stage 2a: describe instruction-data images and infuse the descriptions "
            "into the prompts.",
            config=InfuseConfig,
            run="stic.stages.infuse:run_infuse",
            inputs=("model", "adapter", "data", "images"),
            output="file",
            example="stic infuse --model M --adapter stage1 --data llava_5k.json "
            "--images llava_images --out infused.json",
        ),
        Stage(
            name="sft",
            help="Stage 2b: train on the infused data (the stage-1 adapter further, or a new "
            "LoRA adapter).",
            config=SFTConfig,
            run="stic.stages.sft:run_sft",
            inputs=("model", "adapter", "data", "images"),
            output="folder",
            example="stic sft --model M --adapter stage1 --data infused.json "
            "--images llava_images --out stage2",
        ),
        Stage(
            name="eval",
            help="Answer a VQA file (optionally describe-and-respond) and score it.",
            config=EvalConfig,
            run="stic.stages.evaluate:run_eval",
            inputs=("model", "adapter", "data", "images"),
            output="file",
            example="stic eval --model M --adapter stage2 --data vqa.jsonl "
            "--images vqa_images --dar --out results.json",
        ),
        Stage(
            name="bench",
            help="Answer one of the paper's benchmarks by its protocol and score it "
            "(stic bench score: score a predictions file, no model).",
            config=BenchConfig,
            run="stic.stages.bench:run_bench",
            inputs=("model", "adapter", "data", "images"),
            output="file",
            example="stic bench --benchmark pope_random --data POPE/ --images coco/val2014 "
            "--model M --adapter stage2 --dar --out results/stic_dar/pope_random.json\n"
            "  stic bench score --benchmark pope_random --data POPE/ --images coco/val2014 "
            "--predictions pred.jsonl --out pope_random.json   (no model; see stic bench score --help)",
        ),
    )
}


def run_stage(name: str, config: Any, model=None, processor=None):
    """Run stage ``name`` with ``config``; returns its :class:`~stic.stages.runner.StageSummary`."""
    return STAGES[name].runner()(config, model=model, processor=processor)
