"""Batched generation with Hugging Face ``generate``: left padding, inference mode, seeded sampling."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from stic.modeling.chat import process, render_prompt


@dataclass(frozen=True)
class Request:
    """One generation: a user turn and its image (``None`` for a text-only turn)."""

    prompt: str
    image: Image.Image | None


@dataclass(frozen=True)
class Generation:
    """Generated text; ``finish`` is ``length`` when it hit the token limit before the end-of-turn."""

    text: str
    finish: str
    num_tokens: int


def batched(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _eos_ids(model, tokenizer) -> set[int]:
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def end_of_turn_ids(model, tokenizer) -> set[int]:
    """The token ids :func:`generate` stops at: the generation config's ``eos_token_id`` (one or
    a list) and the tokenizer's EOS."""
    return _eos_ids(model, tokenizer)


@torch.inference_mode()
def generate(
    model,
    processor,
    requests: Sequence[Request],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
) -> list[Generation]:
    """Generate one answer per request in a single left-padded batch.

    ``temperature`` 0 is greedy decoding. With sampling, ``seed`` seeds a forked RNG, so the
    caller's random state is untouched and a batch is reproducible.
    """
    if not requests:
        return []
    tokenizer = processor.tokenizer
    texts = [render_prompt(processor, r.prompt, r.image is not None) for r in requests]
    inputs = process(processor, texts, [r.image for r in requests], padding_side="left")
    device = next(model.parameters()).device
    dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    inputs = {
        k: (v.to(device, dtype=dtype) if v.is_floating_point() else v.to(device))
        if isinstance(v, torch.Tensor)
        else v
        for k, v in inputs.items()
    }
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    options = dict(max_new_tokens=max_new_tokens, pad_token_id=pad_id)
    if temperature > 0:
        options.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
    else:
        options.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        if seed is not None:
            torch.manual_seed(seed)
        output = model.generate(**inputs, **options)
    new_tokens = output[:, inputs["input_ids"].shape[1] :]
    eos_ids = _eos_ids(model, tokenizer)
    results = []
    for row in new_tokens.tolist():
        ended = next((i for i, t in enumerate(row) if t in eos_ids), None)
        kept = row[:ended] if ended is not None else [t for t in row if t != pad_id]
        text = tokenizer.decode(kept, skip_special_tokens=True).strip()
        results.append(
            Generation(
                text=text, finish="stop" if ended is not None else "length", num_tokens=len(kept)
            )
        )
    return results
