"""STIC: Self-Training on Image Comprehension for Hugging Face vision-language models.

The public API: one run function and one config class per stage, the summary every stage
returns, and the record types that cross stage boundaries::

    from stic import PairsConfig, run_pairs
    summary = run_pairs(PairsConfig(model="llava-hf/llava-1.5-7b-hf", images="coco", out="pairs.jsonl"))

Run functions are imported on first use, so ``import stic`` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from stic.config import ConfigError, DPOConfig, EvalConfig, InfuseConfig, PairsConfig, SFTConfig

__version__ = "0.1.0"

# Public name -> the module that defines it (imported when the name is first used).
_LAZY = {
    "run_pairs": "stic.stages.pairs",
    "run_dpo": "stic.stages.dpo",
    "run_infuse": "stic.stages.infuse",
    "run_sft": "stic.stages.sft",
    "run_eval": "stic.stages.evaluate",
    "run_stage": "stic.stages.registry",
    "STAGES": "stic.stages.registry",
    "StageSummary": "stic.stages.runner",
    "PairRecord": "stic.data.schemas",
    "InstructSample": "stic.data.schemas",
    "EvalItem": "stic.data.schemas",
    "EvalResult": "stic.data.schemas",
    "read_pairs": "stic.data.schemas",
}

__all__ = [
    "ConfigError",
    "DPOConfig",
    "EvalConfig",
    "InfuseConfig",
    "PairsConfig",
    "SFTConfig",
    "__version__",
    "run_pairs",
    "run_dpo",
    "run_infuse",
    "run_sft",
    "run_eval",
    "run_stage",
    "STAGES",
    "StageSummary",
    "PairRecord",
    "InstructSample",
    "EvalItem",
    "EvalResult",
    "read_pairs",
]

if TYPE_CHECKING:
    from stic.data.schemas import EvalItem, EvalResult, InstructSample, PairRecord, read_pairs
    from stic.stages.dpo import run_dpo
    from stic.stages.evaluate import run_eval
    from stic.stages.infuse import run_infuse
    from stic.stages.pairs import run_pairs
    from stic.stages.registry import STAGES, run_stage
    from stic.stages.runner import StageSummary
    from stic.stages.sft import run_sft


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'stic' has no attribute {name!r}")
