"""One sequence per preference pair: the shared prompt once, then the chosen answer, then the rejected one.

Both answers of a STIC pair follow the same stored prompt about the same image, and the prompt
(system text, hundreds to thousands of image tokens, the question) is most of the tokens. The
two-sequence form (``stic.stages.dpo.PairCollator``) runs it, and the vision tower, twice per
pair; this form runs them once::

    [ prefix (image tokens included) | chosen answer | rejected answer | padding ]

under a 4-D additive attention mask in which the prefix is causal, each answer sees the prefix
and itself (causally) and never the other answer, and position ids that restart the rejected
answer where the prefix ends. For M-RoPE families (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, GLM-4V) the
3-D positions of the whole row come from the model's own ``get_rope_index``; the rejected
answer's are then moved back by the chosen answer's length, which gives each answer exactly the
positions it has alone (answers are text after the image, whose three components are equal and
step by one). Every answer token is then computed from exactly the keys and positions it has in
the two-sequence form, so log-probs, loss and gradients are the same up to float rounding
(tests/stages/test_shared_prefix.py checks every family listed in :data:`EXACT_FAMILIES`).

Which runs can use it: attention implementations that take an arbitrary 4-D mask (``eager``,
``sdpa``; not flash-attention, whose kernels take only padding), and model families whose
language model mixes tokens only through attention. LFM2-VL's language model also mixes tokens
through short convolutions that no attention mask reaches, so the rejected answer would see the
chosen one: it is in :data:`INEXACT_FAMILIES` and always uses the two-sequence form.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from stic.data.prompts import strip_image_placeholder
from stic.data.schemas import PairRecord
from stic.modeling.chat import (
    IGNORE_INDEX,
    TrainRow,
    encode_rows,
    extend_prompts,
    process,
    render_segments,
)
from stic.modeling.losses import answer_logps, at_least_float32
from stic.stages.training import load_training_image

logger = logging.getLogger(__name__)

# Model types whose shared form equals the two-sequence form (every family of
# stic.testing's builders, tested in fp32 with eager and sdpa attention), and the ones where it
# cannot hold, with why.
EXACT_FAMILIES = frozenset(
    {
        "aya_vision",
        "glm4v",
        "idefics3",
        "internvl",
        "llava",
        "llava_next",
        "llava_onevision",
        "mistral3",
        "mllama",
        "qwen2_5_vl",
        "qwen2_vl",
        "qwen3_vl",
        "smolvlm",
    }
)
INEXACT_FAMILIES = {
    "lfm2_vl": "its language model's short convolutions mix tokens outside the attention mask",
}
MASKABLE_ATTENTION = ("eager", "sdpa")

# Segment ids of a packed row's positions.
PREFIX, CHOSEN, REJECTED, PADDING = 0, 1, 2, 3


@dataclass(frozen=True)
class PairRow:
    """One pair before tokenization: the shared prompt, each answer's ``(text, is_answer)``
    segments (as :func:`~stic.modeling.chat.render_segments` cuts them after the prompt) and the image."""

    prompt: str
    chosen: list[tuple[str, bool]]
    rejected: list[tuple[str, bool]]
    image: Image.Image | None


def shared_pair_rows(pairs: Sequence[PairRecord], processor, images_root: str) -> list[PairRow]:
    """Each pair's stored prompt and image once, with its two rendered answers."""
    rows = []
    for pair in pairs:
        prompt = strip_image_placeholder(pair.prompt)
        chosen, rejected = (
            render_segments(processor, [(prompt, answer)], with_image=True)
            for answer in (pair.chosen, pair.rejected)
        )
        if chosen[0] != rejected[0]:
            raise ValueError(f"pair {pair.id!r}: the chat template renders its prompt two ways")
        image = load_training_image(images_root, pair.image)
        rows.append(PairRow(chosen[0][0], chosen[1:], rejected[1:], image))
    return rows


def _answer(tokenizer, segments: list[tuple[str, bool]], keep: int) -> tuple[list[int], list[int]]:
    """Token ids and labels of one answer's segments, cut to ``keep`` tokens."""
    ids: list[int] = []
    labels: list[int] = []
    for text, trainable in segments:
        tokens = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += tokens
        labels += tokens if trainable else [IGNORE_INDEX] * len(tokens)
    return ids[:keep], labels[:keep]


def encode_pairs(processor, rows: list[PairRow], max_length: int) -> dict[str, torch.Tensor]:
    """Tokenize pairs into one right-padded batch of ``P`` packed rows.

    Returns what :func:`~stic.modeling.chat.encode_rows` returns for the two-sequence form, one
    row per pair (``input_ids``, a 2-D ``attention_mask`` of the real tokens, ``labels`` on both
    answers' tokens, the processor's image tensors, token-aligned tensors extended with the
    prompt's last value), plus ``pair_spans`` ``(P, 3)``: the prefix's, the chosen answer's and
    the rejected answer's lengths in tokens. Each answer is tokenized and cut exactly as its own
    sequence would be: ``max_length`` bounds prefix + answer, never prefix + both answers.

    Raises:
        RowTooLong: a pair's prompt alone is ``max_length`` tokens or more.
    """
    tokenizer = processor.tokenizer
    batch = process(processor, [row.prompt for row in rows], [row.image for row in rows])
    mask = batch["attention_mask"].bool()
    tails: list[list[int]] = []
    labels: list[list[int]] = []
    spans: list[list[int]] = []
    for i, row in enumerate(rows):
        prompt_len = int(mask[i].sum())
        if prompt_len >= max_length:
            # encode_rows says why, with the image tokens counted, in the shared wording.
            encode_rows(
                processor, [TrainRow([(row.prompt, False), *row.chosen], row.image)], max_length
            )
        keep = max_length - prompt_len
        chosen_ids, chosen_labels = _answer(tokenizer, row.chosen, keep)
        rejected_ids, rejected_labels = _answer(tokenizer, row.rejected, keep)
        tails.append(chosen_ids + rejected_ids)
        labels.append([IGNORE_INDEX] * prompt_len + chosen_labels + rejected_labels)
        spans.append([prompt_len, len(chosen_ids), len(rejected_ids)])
    out = extend_prompts(tokenizer, batch, tails, labels)
    out["pair_spans"] = torch.tensor(spans)
    return out


@dataclass(frozen=True)
class SharedPairCollator:
    """Pairs -> one batch of ``P`` packed rows (:func:`encode_pairs`); ``PairCollator``'s arguments."""

    processor: Any
    images_root: str
    max_length: int

    def __call__(self, pairs: Sequence[PairRecord]) -> dict[str, torch.Tensor]:
        from stic.modeling.chat import RowTooLong

        rows = shared_pair_rows(pairs, self.processor, self.images_root)
        try:
            return encode_pairs(self.processor, rows, self.max_length)
        except RowTooLong as e:
            ids = ", ".join(repr(pair.id) for pair in pairs)
            raise RowTooLong(f"a record of the batch ({ids}): {e}") from e


def segment_ids(spans: torch.Tensor, length: int) -> torch.Tensor:
    """``(P, length)``: PREFIX, CHOSEN, REJECTED or PADDING for each position of each row."""
    position = torch.arange(length, device=spans.device)[None, :]
    prefix, chosen, rejected = (spans[:, i : i + 1] for i in range(3))
    segments = torch.full((spans.shape[0], length), PADDING, device=spans.device)
    segments[position < prefix + chosen + rejected] = REJECTED
    segments[position < prefix + chosen] = CHOSEN
    segments[position < prefix] = PREFIX
    return segments


def pair_attention_mask(spans: torch.Tensor, length: int, dtype: torch.dtype) -> torch.Tensor:
    """``(P, 1, length, length)`` additive mask: 0 where a query may attend, the dtype's minimum elsewhere.

    Causal; a key in the prefix is seen by every later query, an answer's key only by its own
    answer's queries. Padding queries see the prefix and the padding before them (never an empty
    row, which would give NaNs), and no real query sees padding.
    """
    segments = segment_ids(spans, length)
    causal = torch.ones(length, length, dtype=torch.bool, device=spans.device).tril()
    keys, queries = segments[:, None, :], segments[:, :, None]
    allowed = causal & ((keys == PREFIX) | (keys == queries))
    mask = torch.zeros(allowed.shape, dtype=dtype, device=spans.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


def _rope_index(model):
    """The model's M-RoPE position function (``get_rope_index``), or ``None`` for 1-D positions."""
    for module in model.modules():
        method = getattr(type(module), "get_rope_index", None)
        if callable(method):
            return module.get_rope_index
    return None


def _embedding_dtype(model) -> torch.dtype:
    """The dtype of the model's hidden states, through DDP/DeepSpeed wrappers (``.module``)."""
    for module in model.modules():
        if callable(getattr(type(module), "get_input_embeddings", None)):
            return module.get_input_embeddings().weight.dtype
    raise TypeError(f"{type(model).__name__} has no input embeddings")


ROPE_INPUTS = ("mm_token_type_ids", "image_grid_thw", "video_grid_thw", "second_per_grid_ts")


def pair_positions(model, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Position ids of packed rows: ``(P, T)``, or ``(3, P, T)`` for M-RoPE families.

    What the row would get as one causal sequence, with the rejected answer moved back by the
    chosen answer's length so that it starts where the prefix ends, as it does alone.
    """
    input_ids, spans = inputs["input_ids"], inputs["pair_spans"]
    rope = _rope_index(model)
    if rope is None:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
    else:
        extra = {k: inputs[k] for k in ROPE_INPUTS if inputs.get(k) is not None}
        positions, _ = rope(input_ids, attention_mask=inputs["attention_mask"], **extra)
    later = segment_ids(spans, input_ids.shape[1]) >= REJECTED  # the rejected answer and padding
    return positions - later * spans[:, 1:2]


def shared_model_inputs(model, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's keyword arguments for packed rows: 4-D mask and position ids in place of the 2-D mask."""
    inputs = dict(inputs)
    positions = pair_positions(model, inputs)
    spans = inputs.pop("pair_spans")
    dtype = _embedding_dtype(model)
    inputs["attention_mask"] = pair_attention_mask(spans, inputs["input_ids"].shape[1], dtype)
    inputs["position_ids"] = positions
    return inputs


def shared_answer_logps(
    logits: torch.Tensor, labels: torch.Tensor, spans: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs and token counts of the chosen answers, then of the rejected ones: ``(2P,)`` each.

    An answer token is predicted by the position before it in its own answer; each answer's
    first token by the prefix's last position (for the rejected answer, not the chosen answer's
    last token, which comes before it in the row). Only answer positions reach float32 (float64
    logits stay float64).
    """
    sums: list[list[torch.Tensor]] = [[], []]
    counts: list[list[torch.Tensor]] = [[], []]
    for row, (prefix, chosen, rejected) in enumerate(spans.tolist()):
        start = prefix + chosen
        sources = (
            torch.arange(prefix - 1, prefix + chosen - 1),
            torch.cat([torch.tensor([prefix - 1]), torch.arange(start, start + rejected - 1)]),
        )
        targets = (torch.arange(prefix, start), torch.arange(start, start + rejected))
        for side in range(2):
            if targets[side].numel() == 0:
                sums[side].append(logits.new_zeros((), dtype=at_least_float32(logits.dtype)))
                counts[side].append(torch.zeros((), dtype=torch.long, device=logits.device))
                continue
            scores = logits[row, sources[side].to(logits.device)]
            scores = scores.to(at_least_float32(logits.dtype))
            wanted = labels[row, targets[side].to(labels.device)]
            mask = wanted != IGNORE_INDEX
            picked = scores.gather(-1, wanted.masked_fill(~mask, 0)[:, None]).squeeze(-1)
            sums[side].append(((picked - scores.logsumexp(-1)) * mask).sum())
            counts[side].append(mask.sum())
    return torch.stack(sums[0] + sums[1]), torch.stack(counts[0] + counts[1])


def pair_logps(model, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs and token counts of a pair batch's answers, chosen then rejected: ``(2P,)``.

    Takes either form: packed rows (``pair_spans`` present, :class:`SharedPairCollator`) or the
    two-sequence batch of ``PairCollator`` (2P rows, chosen first).
    """
    inputs = dict(inputs)
    labels = inputs.pop("labels")
    if "pair_spans" not in inputs:
        return answer_logps(model(**inputs).logits, labels)
    logits = model(**shared_model_inputs(model, inputs)).logits
    return shared_answer_logps(logits, labels, inputs["pair_spans"])


def sharing_problem(model) -> str | None:
    """Why ``model`` must not use the shared form (``None`` when it gives the two-sequence results)."""
    config = model.config
    family = getattr(config, "model_type", None)
    if family in INEXACT_FAMILIES:
        return f"{family}: {INEXACT_FAMILIES[family]}"
    attention = getattr(config.get_text_config(), "_attn_implementation", None) or getattr(
        config, "_attn_implementation", None
    )
    if attention not in MASKABLE_ATTENTION:
        return f"attention implementation {attention!r} takes no 4-D mask (eager and sdpa do)"
    return None


def use_shared_prefix(mode: str, model) -> bool:
    """Whether a run with ``share_prefix=mode`` packs its pairs; says why once when it does not.

    auto: packs for the families tested exact (:data:`EXACT_FAMILIES`) with a maskable attention
    implementation; on: packs unless known inexact (raises then), also for untested families;
    off: never.
    """
    if mode == "off":
        return False
    problem = sharing_problem(model)
    family = getattr(model.config, "model_type", None)
    if mode == "on":
        if problem is not None:
            raise ValueError(f"share_prefix: on cannot be exact here: {problem}; use auto or off")
        if family not in EXACT_FAMILIES:
            logger.warning("share_prefix: on for %s, a family not tested exact", family)
        return True
    if problem is None and family not in EXACT_FAMILIES:
        problem = f"{family}: not tested exact"
    if problem is not None:
        logger.info("share_prefix: two sequences per pair (%s)", problem)
        return False
    return True
