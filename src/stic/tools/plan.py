"""``stic plan CONFIG``: each stage's peak memory per GPU and its time, before a run.

Memory is computed from the model's own architecture, not from a table of model sizes:

- **weights**: the model is built from its config on PyTorch's ``meta`` device (no memory, no
  download) and its parameters counted; LoRA's are counted on the layers stic would adapt
  (:func:`stic.modeling.models.lora_target_names`), with AdamW's state (fp32 weight, gradient and
  two moments: 16 bytes a parameter);
- **activations** kept for the backward pass: one decoder layer of the model's own class is run,
  at a narrower width with the same proportions, under ``saved_tensors_hooks``, and the bytes it
  saves per token scaled to the real width (activations per token grow linearly with the width
  at fixed proportions). A family whose layer cannot be run so falls back to a formula fitted on
  Llama, Mistral and Qwen2 layers measured the same way (said in the output);
- **generation**: the KV cache at the batch and the longest sequence, plus the prefill's largest
  temporary (the MLP of the whole prompt batch) and one layer's cache copied as it grows;
- the logits of a training batch (bf16, then fp32 log-softmax), and a fixed allowance for the
  CUDA context and the allocator (:data:`OVERHEAD_GIB`).

Checked against the figures measured on an H200 (benchmarks/README.md): pairs at 64 sequences,
46.1 GiB; DPO at batch 2 with gradient checkpointing, 20.9 GiB (see :data:`MEASURED`).

Time is a throughput model: generation is bound by memory bandwidth (the weights and the cache
are read once per generated token), training by compute (4 x parameters FLOPs a token for a
LoRA forward and backward, 2 more with checkpointing, 2 more for a per-step reference pass),
each with an efficiency calibrated on the same H200 runs; ``--gen-tokens-per-s`` and
``--train-tokens-per-s`` replace them with the user's own figures.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

GIB = 1024**3
# CUDA context, cuBLAS workspaces and allocator slack, measured as the difference between the
# two H200 runs' peaks and their tensors.
OVERHEAD_GIB = 1.0
# Text tokens of a prompt besides the image (system text, question, template), and of an
# instruction sample's answer when the config does not bound it.
PROMPT_TOKENS = 64
ANSWER_TOKENS = 256


@dataclasses.dataclass(frozen=True)
class Gpu:
    name: str
    memory_gib: float
    bandwidth_tb_s: float  # HBM/GDDR bandwidth
    bf16_tflops: float  # dense


GPUS = {
    "h200": Gpu("H200", 139.8, 4.8, 989.0),
    "h100": Gpu("H100 80GB", 79.6, 3.35, 989.0),
    "a100-80gb": Gpu("A100 80GB", 79.2, 2.0, 312.0),
    "a100-40gb": Gpu("A100 40GB", 39.4, 1.55, 312.0),
    "l40s": Gpu("L40S", 44.5, 0.864, 362.0),
    "rtx4090": Gpu("RTX 4090", 23.6, 1.0, 165.0),
    "rtx3090": Gpu("RTX 3090", 23.6, 0.936, 71.0),
}
# --gpu-memory without --gpu: the usual card of that size.
BY_MEMORY = {
    "24GB": "rtx4090",
    "40GB": "a100-40gb",
    "48GB": "l40s",
    "80GB": "h100",
    "141GB": "h200",
}

# Efficiencies calibrated on the H200 runs of benchmarks/gpu_llava7b.py (LLaVA-1.5-7B, bf16):
# pairs 1,312 generated tokens/s at 64 sequences of 892 tokens; DPO 1.90 pairs/s at batch 2,
# checkpointing, reference per step (so 8 x params FLOPs a token).
GEN_EFFICIENCY = 0.17  # of the bandwidth bound, for transformers' generate
TRAIN_MFU = 0.185  # of the dense bf16 peak

# The released sets' sizes (docs/benchmarks.md), for a bench entry whose data is not here.
BENCHMARK_ITEMS = {
    "scienceqa_img": 2017,
    "textvqa": 5000,
    "chartqa": 2500,
    "mmbench_en_dev": 4329,
    "mathvista_testmini": 1000,
    "llava_bench_wild": 60,
    "mmvet": 218,
    "pope_random": 3000,
    "pope_popular": 3000,
    "pope_adversarial": 3000,
}

# The measured figures this model is checked against (tests/tools/test_plan.py).
MEASURED = {
    "pairs": {"batch": 64, "prompt": 636, "new": 256, "peak_gib": 46.1, "tokens_per_s": 1312},
    "dpo": {
        "batch": 2,
        "tokens": 892,
        "checkpointing": True,
        "peak_gib": 20.9,
        "pairs_per_s": 1.90,
    },
}

# Saved activation elements per token of a decoder layer with LoRA (dropout on) on every
# linear, as a x hidden + b x intermediate + c x key/value width: fitted on Llama, Mistral and
# Qwen2 layers measured with saved_tensors_hooks (the fallback of :func:`layer_activation_bytes`).
FALLBACK_PER_TOKEN = (30.5, 7.06, 2.06)


@dataclasses.dataclass(frozen=True)
class Shape:
    """What the estimate needs of a model, read from its config."""

    params: int  # every parameter of the model
    vision_params: int  # of the vision tower and projector
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    image_tokens: int
    lora_params: int  # of a new adapter with the stage's lora settings
    activation_bytes_per_token: float  # one layer, training, at the model's dtype
    activation_method: str
    family: str = ""  # the config's model_type

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim


# --------------------------------------------------------------------------- model shapes


def load_config(model: str, trust_remote_code: bool = False):
    """The model's transformers config: its folder's config.json, the Hub cache (offline), or
    for the models of the shipped configs their published architecture (:func:`known_config`)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(
            model, trust_remote_code=trust_remote_code, local_files_only=True
        )
    except (OSError, ValueError) as error:
        known = known_config(model)
        if known is not None:
            return known
        raise PlanError(
            f"model: no config for {model!r} here ({_one_line(error)}); give a model folder, or "
            "a Hub id already in the cache (huggingface-cli download MODEL config.json)"
        ) from None


def _one_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def known_config(model: str):
    """The architecture of the models the shipped configs name, as their Hub config.json gives
    it, so that ``stic plan`` works on them with no download; None for any other model."""
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaNextConfig,
        MistralConfig,
        Qwen2VLConfig,
    )

    clip = CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=336,
        patch_size=14,
        projection_dim=768,
    )
    if model == "llava-hf/llava-1.5-7b-hf":
        text = LlamaConfig(
            hidden_size=4096,
            intermediate_size=11008,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
            vocab_size=32064,
            max_position_embeddings=4096,
        )
        return LlavaConfig(
            text_config=text, vision_config=clip, image_token_index=32000, image_seq_length=576
        )
    if model == "llava-hf/llava-v1.6-mistral-7b-hf":
        text = MistralConfig(
            hidden_size=4096,
            intermediate_size=14336,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            vocab_size=32064,
            max_position_embeddings=32768,
        )
        grid = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
        return LlavaNextConfig(
            text_config=text, vision_config=clip, image_grid_pinpoints=grid, image_token_index=32000
        )
    if model in ("Qwen/Qwen2-VL-7B-Instruct", "Qwen/Qwen2-VL-7B"):
        return Qwen2VLConfig(
            text_config={
                "hidden_size": 3584,
                "intermediate_size": 18944,
                "num_hidden_layers": 28,
                "num_attention_heads": 28,
                "num_key_value_heads": 4,
                "vocab_size": 152064,
                "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
            },
            vision_config={
                "depth": 32,
                "embed_dim": 1280,
                "hidden_size": 3584,
                "mlp_ratio": 4,
                "num_heads": 16,
                "patch_size": 14,
                "spatial_merge_size": 2,
                "temporal_patch_size": 2,
            },
        )
    return None


class PlanError(ValueError):
    """The plan cannot be made: one line naming what is missing."""


def text_config(config):
    return getattr(config, "text_config", None) or config


def _head_dim(text) -> int:
    return int(getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads)


def image_tokens(config) -> int:
    """Image tokens of one image in the prompt: the config's own count where it has one, else
    from the vision tower's patch grid (LLaVA-NeXT: its largest tiling; Qwen2-VL: a 640x480
    photo, the size of COCO's)."""
    vision = getattr(config, "vision_config", None)
    kind = getattr(config, "model_type", "")
    if vision is None:
        return 0
    patch = getattr(vision, "patch_size", 14)
    if kind.startswith("qwen2") or hasattr(vision, "spatial_merge_size"):
        merge = getattr(vision, "spatial_merge_size", 2)
        side = patch * merge
        return round(480 / side) * round(640 / side)  # Qwen2-VL's resize rounds to the grid
    per_tile = (getattr(vision, "image_size", 336) // patch) ** 2
    grid = getattr(config, "image_grid_pinpoints", None)
    if grid:
        size = getattr(vision, "image_size", 336)
        tiles = max(w * h for w, h in grid) // (size * size)
        rows = max(max(h for _, h in grid), max(w for w, _ in grid)) // patch
        return per_tile * (1 + tiles) + rows  # base image, tiles, one newline token a row
    return int(getattr(config, "image_seq_length", None) or per_tile)


def model_shape(config, *, lora_r: int, lora_targets: Sequence[str], dtype_bytes: int) -> Shape:
    """Count the model's parameters and LoRA's on the meta device, and measure a layer."""
    import torch
    from transformers import AutoModelForImageTextToText

    from stic.modeling.models import language_model, lora_target_names

    with torch.device("meta"):
        try:
            model = AutoModelForImageTextToText.from_config(config)
        except ValueError:
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_config(config)
    params = sum(p.numel() for p in model.parameters())
    lm = language_model(model)
    lm_params = sum(p.numel() for p in lm.parameters())
    head = model.get_output_embeddings()
    if head is not None and not any(head.weight is p for p in lm.parameters()):
        lm_params += head.weight.numel()
    lora = 0
    modules = dict(model.named_modules())
    for name in lora_target_names(model, list(lora_targets)):
        layer = modules[name]
        lora += lora_r * (layer.in_features + layer.out_features)
    text = text_config(config)
    measured = layer_activation_bytes(lm, text, dtype_bytes)
    return Shape(
        params=params,
        vision_params=params - lm_params,
        hidden=text.hidden_size,
        layers=text.num_hidden_layers,
        heads=text.num_attention_heads,
        kv_heads=getattr(text, "num_key_value_heads", None) or text.num_attention_heads,
        head_dim=_head_dim(text),
        intermediate=text.intermediate_size,
        vocab=text.vocab_size,
        image_tokens=image_tokens(config),
        lora_params=lora,
        activation_bytes_per_token=measured[0],
        activation_method=measured[1],
        family=getattr(config, "model_type", ""),
    )


def _narrow(text, factor: int):
    """``text`` with heads, key/value heads, width and MLP width divided by ``factor``."""
    small = copy.deepcopy(text)
    head_dim = _head_dim(text)
    small.num_attention_heads = text.num_attention_heads // factor
    kv = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    small.num_key_value_heads = kv // factor
    small.hidden_size = small.num_attention_heads * head_dim
    small.head_dim = head_dim
    small.intermediate_size = text.intermediate_size // factor
    small.num_hidden_layers = 1
    small.vocab_size = 64
    small._attn_implementation = "sdpa"  # as stic loads models: no attention matrix is kept
    return small


def layer_activation_bytes(lm, text, dtype_bytes: int, tokens: int = 32) -> tuple[float, str]:
    """Bytes one decoder layer saves for the backward pass per token (LoRA with dropout on every
    linear, training mode), and how it was found. Measured on a narrower copy of the layer."""
    kv = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    factor = math.gcd(text.num_attention_heads, kv)
    while factor > 1 and text.num_attention_heads // factor < 2:
        factor //= 2
    try:
        per_token = _measure_layer(lm, _narrow(text, factor), dtype_bytes, tokens)
        return per_token * factor, "measured on the model's own decoder layer"
    except Exception as error:  # a family whose layer takes other arguments: the formula
        a, b, c = FALLBACK_PER_TOKEN
        elements = a * text.hidden_size + b * text.intermediate_size + c * kv * _head_dim(text)
        return (
            elements * dtype_bytes,
            f"formula (the layer could not be run: {type(error).__name__})",
        )


def _measure_layer(lm, small, dtype_bytes: int, tokens: int) -> float:
    import torch
    from peft import LoraConfig, inject_adapter_in_model

    dtype = {2: torch.bfloat16, 4: torch.float32}.get(dtype_bytes, torch.bfloat16)
    layer_class = type(lm.layers[0])
    rotary_class = type(lm.rotary_emb)
    torch.manual_seed(0)
    layer = layer_class(small, layer_idx=0).to(dtype)
    names = [n for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear)]
    layer = inject_adapter_in_model(
        LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=names), layer
    )
    for name, param in layer.named_parameters():
        if "lora_" in name:  # as get_peft_model makes them (autocast_adapter_dtype)
            param.data = param.data.float()
    layer.train()
    rotary = rotary_class(config=small)

    def saved(length: int) -> int:
        hidden = torch.randn(1, length, small.hidden_size, dtype=dtype, requires_grad=True)
        positions = torch.arange(length).unsqueeze(0)
        try:
            embeddings = rotary(hidden, positions)
        except (RuntimeError, ValueError, IndexError):
            positions = positions.unsqueeze(0).expand(3, 1, length)  # M-RoPE: 3-D positions
            embeddings = rotary(hidden, positions)
        params = {p.untyped_storage().data_ptr() for p in layer.parameters()}
        storages: dict[int, int] = {}

        def pack(tensor):
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in params:
                storages[storage.data_ptr()] = max(
                    storages.get(storage.data_ptr(), 0), storage.nbytes()
                )
            return tensor

        # As the Trainer runs a bf16 model: under autocast (here the CPU's, which casts alike).
        autocast = torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32)
        with autocast, torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            layer(
                hidden, attention_mask=None, position_ids=positions, position_embeddings=embeddings
            )
        return sum(storages.values())

    # Two lengths: what grows with the length, not what a layer saves once.
    return (saved(2 * tokens) - saved(tokens)) / tokens


# --------------------------------------------------------------------------- the estimate


@dataclasses.dataclass
class StagePlan:
    stage: str
    name: str
    parts: dict[str, float]  # GiB
    seconds: float | None
    items: int | None
    advice: list[str]
    method: str = ""
    fits: bool | None = None

    @property
    def peak_gib(self) -> float:
        return sum(self.parts.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "name": self.name,
            "peak_gib": round(self.peak_gib, 2),
            "parts_gib": {k: round(v, 2) for k, v in self.parts.items()},
            "fits": self.fits,
            "hours": None if self.seconds is None else round(self.seconds / 3600, 2),
            "items": self.items,
            "advice": self.advice,
        }


def generation_memory(shape: Shape, dtype_bytes: int, sequences: int, prompt: int, new: int):
    """GiB parts of a ``generate`` call of ``sequences`` prompts of ``prompt`` tokens making
    ``new`` tokens each (transformers' generate, dynamic cache)."""
    length = prompt + new
    kv_per_token = shape.layers * 2 * shape.kv_dim * dtype_bytes
    cache = sequences * length * kv_per_token
    prefill = sequences * prompt * (2 * shape.intermediate + 4 * shape.hidden) * dtype_bytes
    growing = cache / max(shape.layers, 1)  # a layer's cache copied as it grows
    return {
        "weights": shape.params * dtype_bytes / GIB,
        "kv_cache": cache / GIB,
        "prefill_and_copies": (prefill + growing) / GIB,
        "overhead": OVERHEAD_GIB,
    }


def training_memory(
    shape: Shape, dtype_bytes: int, sequences: int, tokens: int, checkpointing: bool
) -> dict[str, float]:
    """GiB parts of a LoRA training step of ``sequences`` sequences of ``tokens`` tokens."""
    total_tokens = sequences * tokens
    per_layer = shape.activation_bytes_per_token * total_tokens
    if checkpointing:
        # Each layer's input is kept; one layer's activations live again during its backward.
        activations = shape.layers * total_tokens * shape.hidden * dtype_bytes + per_layer
    else:
        activations = shape.layers * per_layer
    logits = total_tokens * shape.vocab * (dtype_bytes + 4 + 4)  # logits, fp32 log-softmax, grad
    return {
        "weights": shape.params * dtype_bytes / GIB,
        "lora_and_optimizer": shape.lora_params * 16 / GIB,
        "activations": activations / GIB,
        "logits": logits / GIB,
        "overhead": OVERHEAD_GIB,
    }


def generation_seconds(
    shape: Shape, dtype_bytes: int, gpu: Gpu, sequences: int, prompt: int, new: int, items: int
) -> float:
    """Bandwidth-bound decoding: each step reads the weights and half the final cache on average."""
    kv_per_token = shape.layers * 2 * shape.kv_dim * dtype_bytes
    read = shape.params * dtype_bytes + sequences * (prompt + new / 2) * kv_per_token
    step = read / (gpu.bandwidth_tb_s * 1e12 * GEN_EFFICIENCY)
    calls = math.ceil(items / max(sequences, 1))
    return calls * new * step


def training_seconds(
    shape: Shape, gpu: Gpu, tokens_total: float, checkpointing: bool, reference_per_step: bool
) -> float:
    lm = shape.params - shape.vision_params
    flops = (4 + (2 if checkpointing else 0) + (2 if reference_per_step else 0)) * lm
    return tokens_total * flops / (gpu.bf16_tflops * 1e12 * TRAIN_MFU)


# --------------------------------------------------------------------------- counting items


def count_items(path: str | None, limit: int | None) -> int | None:
    """How many records or images a stage reads: ``limit``, else counted in its input."""
    counted = _count(Path(path)) if path else None
    if limit is not None:
        return limit if counted is None else min(limit, counted)
    return counted


def _count(path: Path) -> int | None:
    from stic.runtime.images import IMAGE_EXTENSIONS

    try:
        if path.is_dir():
            return sum(1 for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        if path.suffix == ".jsonl":
            with path.open(encoding="utf-8") as f:
                return sum(1 for line in f if line.strip())
        if path.suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            return len(data) if isinstance(data, list) else None
    except (OSError, ValueError):
        return None
    return None


# --------------------------------------------------------------------------- the command


def plan_stages(
    stages: Iterable[Any],
    gpu: Gpu,
    gpus: int,
    gen_tokens_per_s: float | None = None,
    train_tokens_per_s: float | None = None,
    image_token_count: int | None = None,
    items: dict[str, int] | None = None,
) -> list[StagePlan]:
    """One :class:`StagePlan` per planned stage (``pipeline.PlannedStage``). ``items``: how
    many records a stage reads, by its name, where its input is not here to be counted."""
    stages = list(stages)
    given_items = dict(items or {})
    trained: dict[str, tuple[int, list[str]]] = {}  # adapter folder -> its LoRA settings
    shapes: dict[tuple, Shape] = {}
    pairs_items = None
    pairs_new = ANSWER_TOKENS
    infuse_items = None
    plans = []
    for planned in stages:
        if planned.stage == "rounds":
            # Choosing a round copies one round's adapter (all have round 1's LoRA settings):
            # no model, no memory to plan.
            first = trained.get(planned.config.round_adapters[0])
            if first is not None:
                trained[planned.config.out] = first
            continue
        config = planned.config
        dtype_bytes = 4 if config.dtype == "float32" else 2
        lora_r = getattr(config, "lora_r", 128)
        targets = getattr(config, "lora_targets", "q_proj,v_proj").split(",")
        if getattr(config, "adapter", None) and planned.stage in ("sft", "dpo"):
            # sft (and dpo in a later round) continues its adapter, made with that adapter's
            # settings, not its own.
            lora_r, targets = adapter_lora(config.adapter, trained.get(config.adapter))
        if planned.stage == "dpo":
            trained[config.out] = (lora_r, targets)
        key = (config.model, lora_r, tuple(targets), dtype_bytes)
        if key not in shapes:
            shapes[key] = model_shape(
                load_config(config.model, config.trust_remote_code),
                lora_r=lora_r,
                lora_targets=[t.strip() for t in targets if t.strip()],
                dtype_bytes=dtype_bytes,
            )
        shape = shapes[key]
        if image_token_count is not None:
            shape = dataclasses.replace(shape, image_tokens=image_token_count)
        prompt = shape.image_tokens + PROMPT_TOKENS
        stage = planned.stage
        advice: list[str] = []
        if stage in ("pairs", "infuse", "eval", "bench"):
            new = config.max_new_tokens or _protocol_tokens(config) or ANSWER_TOKENS
            if stage == "bench" and getattr(config, "dar", False):
                new += getattr(config, "dar_max_new_tokens", 0) or 0
            limit = config.limit
            source = getattr(config, "images", None) if stage == "pairs" else config.data
            items = count_items(source, limit)
            shard = getattr(config, "shard", None)
            if items is not None and shard:  # a round's (or a launch's) share: about 1/N
                from stic.runtime.shards import parse_shard

                items = math.ceil(items / parse_shard(shard)[1])
            if items is None and stage == "bench":
                items = BENCHMARK_ITEMS.get(config.benchmark)
            items = given_items.get(planned.name, items)
            if stage == "pairs":
                pairs_items, pairs_new = items, new
                items = None if items is None else 2 * items  # chosen and rejected answers
            if stage == "infuse":
                infuse_items = items
            parts = generation_memory(shape, dtype_bytes, config.batch_size, prompt, new)
            seconds = None
            if items is not None:
                if gen_tokens_per_s:
                    seconds = items * new / gen_tokens_per_s
                else:
                    seconds = generation_seconds(
                        shape, dtype_bytes, gpu, config.batch_size, prompt, new, items
                    )
                seconds /= gpus
            if config.backend == "vllm":
                advice.append(
                    "vllm backend: vLLM takes its memory share of the GPU up front; the cache "
                    "figure is what the batch needs of it"
                )
            fits_batch = _largest_generation_batch(shape, dtype_bytes, prompt, new, gpu)
            if sum(parts.values()) > gpu.memory_gib:
                advice.append(
                    f"lower batch_size to {fits_batch} (KV cache: "
                    f"{parts['kv_cache'] / config.batch_size:.2f} GiB a sequence)"
                    if fits_batch
                    else "the weights alone do not fit: use a GPU with more memory"
                )
        else:  # dpo, sft
            # Under `stic run --gpus N` (keep_global_batch) each process trains its share of the
            # configured global batch, with the per-device batch that share allows.
            batch = config.batch_size
            global_batch = config.batch_size * config.grad_accum * gpus
            if gpus > 1 and getattr(config, "keep_global_batch", False):
                from stic.stages.launch import split_batch

                batch = split_batch(config.batch_size, config.grad_accum, gpus).batch_size
                global_batch = config.batch_size * config.grad_accum
            sequences = batch * (2 if stage == "dpo" else 1)
            answer = pairs_new if stage == "dpo" else ANSWER_TOKENS
            tokens = min(config.max_length, prompt + answer)
            if stage == "dpo" and shares_prefix(config.share_prefix, shape.family):
                # One sequence a pair: the prompt once, then both answers (each cut alone).
                sequences = batch
                tokens = min(config.max_length, prompt + answer) + min(
                    answer, max(config.max_length - prompt, 0)
                )
            items = pairs_items if stage == "dpo" else infuse_items
            if stage == "dpo" and getattr(config, "pairs", None) and Path(config.pairs).exists():
                items = count_items(config.pairs, None)
            if stage == "sft" and getattr(config, "data", None) and Path(config.data).exists():
                items = count_items(config.data, None)
            items = given_items.get(planned.name, items)
            parts = training_memory(
                shape, dtype_bytes, sequences, tokens, config.gradient_checkpointing
            )
            reference_per_step = stage == "dpo" and config.precompute_reference == "off"
            seconds = None
            if items is not None:
                per_item = sequences // batch  # sequences an item makes
                steps_tokens = items * per_item * tokens * config.epochs
                if config.max_steps:
                    steps_tokens = config.max_steps * global_batch * tokens * per_item
                if train_tokens_per_s:
                    seconds = steps_tokens / train_tokens_per_s
                else:
                    seconds = training_seconds(
                        shape, gpu, steps_tokens, config.gradient_checkpointing, reference_per_step
                    )
                if stage == "dpo" and not reference_per_step:
                    # The reference pass once, before training (2 x params FLOPs a token).
                    seconds += (
                        training_seconds(shape, gpu, steps_tokens / config.epochs, False, False) / 2
                    )
                seconds /= gpus
            if sum(parts.values()) > gpu.memory_gib:
                if not config.gradient_checkpointing:
                    advice.append("set gradient_checkpointing: true")
                if batch > 1:
                    advice.append("lower batch_size and raise grad_accum (the same global batch)")
                advice.append("lower lora_r (each halving frees half the LoRA and optimizer state)")
                if tokens == config.max_length:
                    advice.append("lower max_length")
        plan = StagePlan(
            stage, planned.name, parts, seconds, items, advice, shape.activation_method
        )
        plan.fits = plan.peak_gib <= gpu.memory_gib
        plans.append(plan)
    return plans


def shares_prefix(mode: str, family: str) -> bool:
    """Whether the DPO stage packs each pair into one sequence (see stic.stages.shared_prefix)."""
    from stic.stages.shared_prefix import EXACT_FAMILIES, INEXACT_FAMILIES

    if mode == "off" or family in INEXACT_FAMILIES:
        return False
    return mode == "on" or family in EXACT_FAMILIES


def adapter_lora(adapter: str, planned: tuple[int, list[str]] | None) -> tuple[int, list[str]]:
    """The LoRA rank and layer names of an adapter: one this run trains, or a folder's config."""
    if planned is not None:
        return planned
    path = Path(adapter) / "adapter_config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
        names = config["target_modules"]
        names = [names] if isinstance(names, str) else list(names)
        return int(config["r"]), sorted({name.rsplit(".", 1)[-1] for name in names})
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise PlanError(f"sft.adapter: cannot read {path} ({_one_line(error)})") from None


def _protocol_tokens(config) -> int | None:
    """A bench entry's generation limit when the config leaves it to the benchmark."""
    if not hasattr(config, "benchmark"):
        return None
    from stic.data.benchmarks import get_spec

    return get_spec(config.benchmark).max_new_tokens


def _largest_generation_batch(shape, dtype_bytes, prompt, new, gpu) -> int:
    batch = 0
    while batch < 4096:
        parts = generation_memory(shape, dtype_bytes, batch + 1, prompt, new)
        if sum(parts.values()) > gpu.memory_gib:
            break
        batch += 1
    return batch


def render(plans: Sequence[StagePlan], gpu: Gpu, gpus: int, notes: Sequence[str]) -> str:
    lines = [
        f"stic plan: {gpus} x {gpu.name} ({gpu.memory_gib:.0f} GiB each)",
        "",
        "| stage | peak GiB/GPU | fits | weights | LoRA+optimizer | activations / KV cache | time | items |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in plans:
        act = p.parts.get("activations", p.parts.get("kv_cache", 0.0))
        hours = "?" if p.seconds is None else _duration(p.seconds)
        lines.append(
            f"| {p.stage} {p.name if p.name != p.stage else ''}".rstrip()
            + f" | {p.peak_gib:.1f} | {'yes' if p.fits else 'NO'} | {p.parts['weights']:.1f} | "
            f"{p.parts.get('lora_and_optimizer', 0.0):.1f} | {act:.1f} | {hours} | "
            f"{'?' if p.items is None else p.items} |"
        )
    total = [p.seconds for p in plans]
    if all(s is not None for s in total):
        lines += ["", f"total: {_duration(sum(total))}"]
    else:
        lines += ["", "total: unknown (a stage's input could not be counted: its time is '?')"]
    for p in plans:
        for line in p.advice:
            lines.append(f"{p.stage} {p.name}: {line}")
    lines += ["", *notes]
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def parse_items(values: Sequence[str]) -> dict[str, int]:
    """``["infuse=5000", ...]`` -> ``{"infuse": 5000}``; a malformed one is a PlanError."""
    items = {}
    for value in values:
        name, sep, count = value.partition("=")
        if not sep or not count.strip().isdigit():
            raise PlanError(f"--items: {value!r} is not STAGE=N (e.g. infuse=5000)")
        items[name.strip()] = int(count)
    return items


def gpu_of(name: str | None, memory: str | None) -> Gpu:
    if name:
        key = name.lower()
        if key not in GPUS:
            raise PlanError(f"--gpu: {name!r} is not one of {', '.join(GPUS)}")
        return GPUS[key]
    if memory:
        key = memory.upper().replace(" ", "").replace("GIB", "GB")
        if key in BY_MEMORY:
            return GPUS[BY_MEMORY[key]]
        try:
            size = float(key.removesuffix("GB"))
        except ValueError:
            raise PlanError(f"--gpu-memory: {memory!r} is not a size such as 24GB") from None
        base = GPUS["h100"]
        return Gpu(f"{size:g} GiB GPU", size, base.bandwidth_tb_s, base.bf16_tflops)
    return GPUS["h100"]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stic plan",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", metavar="CONFIG.yaml", help="the run config")
    p.add_argument("--gpu", choices=sorted(GPUS), help="the GPU kind (default: h100)")
    p.add_argument(
        "--gpu-memory",
        help="memory per GPU, e.g. 24GB, 80GB, 141GB (picks the usual card of that size)",
    )
    p.add_argument(
        "--gpus",
        type=int,
        default=None,
        help="GPUs on the node (default: the config's gpus: key, else 1)",
    )
    p.add_argument(
        "--image-tokens", type=int, help="image tokens per image (default: from the model config)"
    )
    p.add_argument(
        "--gen-tokens-per-s",
        type=float,
        help="your measured generated tokens/s per GPU at the config's batch (replaces the model)",
    )
    p.add_argument(
        "--train-tokens-per-s",
        type=float,
        help="your measured training tokens/s per GPU (replaces the model)",
    )
    p.add_argument(
        "--items",
        action="append",
        default=[],
        metavar="STAGE=N",
        help="records a stage reads where its input is not here to count (e.g. infuse=5000, "
        "sft=5000); repeatable",
    )
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    return p


def run(args: argparse.Namespace, stages: Sequence[Any]) -> int:
    """Print the plan of ``stages`` (the run config's, as ``pipeline.load_run_config`` plans
    them): 0 when every stage fits, 3 when one does not, 1 when it cannot be made."""
    if args.gpus < 1:
        print("stic plan: error: --gpus must be at least 1", file=sys.stderr)
        return 2
    try:
        gpu = gpu_of(args.gpu, args.gpu_memory)
        plans = plan_stages(
            stages,
            gpu,
            args.gpus,
            args.gen_tokens_per_s,
            args.train_tokens_per_s,
            args.image_tokens,
            parse_items(args.items),
        )
    except PlanError as e:
        print(f"stic plan: error: {e}", file=sys.stderr)
        return 1
    methods = sorted({p.method for p in plans if p.stage in ("dpo", "sft")}) or ["not needed"]
    notes = [
        "Memory: weights and LoRA counted on the model built on the meta device; activations "
        + "; ".join(methods)
        + f"; {OVERHEAD_GIB:g} GiB for CUDA and the allocator. Error on the recorded H200 "
        "runs: within 10% (README, Performance).",
        "Time: a model of bandwidth (generation) and compute (training) calibrated on H200 runs "
        "of LLaVA-1.5-7B; give --gen-tokens-per-s / --train-tokens-per-s from your own runs to "
        "replace it.",
    ]
    if args.json:
        document = {
            "gpu": dataclasses.asdict(gpu),
            "gpus": args.gpus,
            "stages": [p.to_dict() for p in plans],
        }
        print(json.dumps(document, indent=2))
    else:
        print(render(plans, gpu, args.gpus, notes))
    return 0 if all(p.fits for p in plans) else 3
