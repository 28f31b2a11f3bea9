"""Conversations to model inputs, through the processor's own chat template.

Generation and training render prompts the same way (the reference code did not; see
docs/method.md, reference-code defect 3), with the image passed as a ``{"type": "image"}``
content item so that the processor expands it into the model's image tokens.

Training rows are built from text *segments*: the rendered conversation cut at each answer, every
segment flagged trainable (an answer) or not (a prompt). The first segment, which holds the image,
goes through the processor; the rest are tokenized alone and appended, so the loss mask falls
exactly on the answer tokens, whatever the family's template.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

IGNORE_INDEX = -100


def user_message(text: str, with_image: bool) -> dict:
    content = [{"type": "image"}] if with_image else []
    content.append({"type": "text", "text": text})
    return {"role": "user", "content": content}


def assistant_message(text: str) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def render_prompt(processor, text: str, with_image: bool = True) -> str:
    """The model's input text for one user turn, ready for the answer to be generated."""
    return processor.apply_chat_template(
        [user_message(text, with_image)], add_generation_prompt=True, tokenize=False
    )


def render_segments(
    processor, exchanges: list[tuple[str, str]], with_image: bool
) -> list[tuple[str, bool]]:
    """Cut a rendered conversation into ``(text, is_answer)`` segments, in order.

    The first segment is a prompt; text a template puts between turns (e.g. ChatML's newline
    after ``<|im_end|>``) becomes a prompt segment of its own.

    ``exchanges`` are ``(user text, answer text)`` pairs; the image (if any) belongs to the first
    user turn. Relies on the template rendering each prefix of a conversation as a prefix of the
    whole; a template that does not is reported rather than silently mis-masked.
    """
    messages: list[dict] = []
    segments: list[tuple[str, bool]] = []
    rendered = ""
    for i, (question, answer) in enumerate(exchanges):
        messages.append(user_message(question, with_image and i == 0))
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        messages.append(assistant_message(answer))
        full = processor.apply_chat_template(messages, tokenize=False)
        if not prompt.startswith(rendered) or not full.startswith(prompt):
            raise ValueError(
                "the chat template does not render a conversation's prefix as a prefix of the whole; "
                "stic cannot tell prompt tokens from answer tokens with it"
            )
        segments.append((prompt[len(rendered) :], False))
        # Templates may end a turn with whitespace after the end-of-turn token; it is not an answer token.
        answer_text = full[len(prompt) :].rstrip("\n")
        segments.append((answer_text, True))
        rendered = prompt + answer_text
        if full != rendered:
            rendered = full
            segments.append((full[len(prompt) + len(answer_text) :], False))
    return [(text, trainable) for text, trainable in segments if text]


def process(processor, texts: list[str], images: list, padding_side: str = "right") -> dict:
    """The processor on rendered texts and their images (``None`` for text-only rows), padded.

    Images go in one list per sample (``[[a], [], [b]]``), the form every processor takes:
    Idefics3/SmolVLM, Mllama and LFM2-VL need it to tell which image belongs to which prompt,
    and the others (LLaVA, Qwen-VL, ...) accept it too. A processor that refuses nested lists
    gets the flat list of present images instead. A batch without images passes none. A template
    that already writes the BOS token gets none added by the tokenizer.

    Returns the processor's ``BatchFeature``: ``input_ids``/``attention_mask`` ``(B, T)`` and
    every extra tensor it makes (``pixel_values``, ``image_grid_thw``, ``image_sizes``,
    ``pixel_attention_mask``, ``cross_attention_mask``, ``aspect_ratio_ids``, ...), unchanged.
    """
    bos = processor.tokenizer.bos_token
    options = dict(
        text=texts,
        padding=True,
        padding_side=padding_side,
        return_tensors="pt",
        add_special_tokens=not (bos and all(text.startswith(bos) for text in texts)),
    )
    if all(image is None for image in images):
        return processor(images=None, **options)
    nested = [[] if image is None else [image] for image in images]
    try:
        return processor(images=nested, **options)
    except (ValueError, TypeError, IndexError, AttributeError) as nested_error:
        try:
            return processor(images=[i for i in images if i is not None], **options)
        except Exception:
            raise nested_error from None


class RowTooLong(ValueError):
    """A training row whose prompt alone reaches ``max_length``: nothing of its answer would be
    trained, and cutting the prompt would cut image tokens."""


@dataclass(frozen=True)
class TrainRow:
    """One training sequence before tokenization: segments and the image of its first turn."""

    segments: list[tuple[str, bool]]
    image: Image.Image | None


def _tokenize(tokenizer, text: str) -> list[int]:
    """Ids of a mid-sequence segment: no BOS or other special tokens added."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_rows(processor, rows: list[TrainRow], max_length: int) -> dict[str, torch.Tensor]:
    """Tokenize rows into one right-padded batch with ``labels`` (-100 outside answers).

    Returns ``input_ids``, ``attention_mask``, ``labels`` (all ``(B, T)``) and whatever else the
    processor makes. Tensors whose first two dimensions are ``(B, T)`` follow the tokens
    (``mm_token_type_ids``, ``token_type_ids``, Mllama's ``cross_attention_mask (B, T, images,
    tiles)``): they are cut and padded (with 0) with ``input_ids``, and the answer tokens appended
    after the processor's prompt take the value of the prompt's last token (text after the image:
    type 0, still attending to the image). The rest (``pixel_values``, ``image_grid_thw``,
    ``image_sizes``, ``pixel_attention_mask``, ``aspect_ratio_ids``, ...) pass through as made.

    Rows longer than ``max_length`` lose the end of their answers, never prompt or image tokens.

    Raises:
        RowTooLong: a row's prompt alone is ``max_length`` tokens or more (the message says how
            long, with how many image tokens, and what to do).
    """
    tokenizer = processor.tokenizer
    if any(row.segments[0][1] for row in rows):
        raise ValueError("the first segment of a row must be a prompt")
    batch = process(processor, [row.segments[0][0] for row in rows], [row.image for row in rows])
    mask = batch["attention_mask"].bool()
    tails: list[list[int]] = []
    labels: list[list[int]] = []
    for i, row in enumerate(rows):
        prompt_len = int(mask[i].sum())
        if prompt_len >= max_length:
            raise RowTooLong(_too_long(processor, batch["input_ids"][i][mask[i]], max_length))
        appended: list[int] = []
        row_labels = [IGNORE_INDEX] * prompt_len
        for text, trainable in row.segments[1:]:
            ids = _tokenize(tokenizer, text)
            appended += ids
            row_labels += ids if trainable else [IGNORE_INDEX] * len(ids)
        keep = min(len(row_labels), max_length) - prompt_len
        tails.append(appended[:keep])
        labels.append(row_labels[: prompt_len + keep])
    return extend_prompts(tokenizer, batch, tails, labels)


def extend_prompts(
    tokenizer, batch: dict, tails: Sequence[Sequence[int]], labels: Sequence[list[int]]
) -> dict[str, torch.Tensor]:
    """The processed prompts of ``batch`` (left-padded, as the processor made them), each row
    ``i`` followed by the token ids ``tails[i]``, right-padded into one batch with ``labels``.

    Token-aligned tensors other than ``input_ids`` (a model's per-token type ids, ...) are
    extended with the prompt's last value; the processor's other tensors (pixels, image grids)
    are kept as they are. Shared by the training rows and the shared-prefix pair rows.
    """
    mask = batch["attention_mask"].bool()
    rows, seq_len = batch["input_ids"].shape[:2]
    token_keys = [
        k
        for k, v in batch.items()
        if k != "attention_mask"
        and isinstance(v, torch.Tensor)
        and v.dim() >= 2
        and v.shape[:2] == (rows, seq_len)
    ]
    width = max(len(lab) for lab in labels)
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    out: dict[str, torch.Tensor] = {}
    for k in token_keys:
        extended = []
        for i, appended in enumerate(tails):
            prompt = batch[k][i][mask[i]]
            if k == "input_ids":
                tail = torch.tensor(list(appended), dtype=prompt.dtype)
            else:
                tail = prompt[-1:].expand(len(appended), *prompt.shape[1:])
            extended.append(torch.cat([prompt, tail]))
        fill = pad_id if k == "input_ids" else 0
        out[k] = torch.stack([_pad(row, width, fill) for row in extended])
    out["attention_mask"] = torch.tensor(
        [[1] * len(lab) + [0] * (width - len(lab)) for lab in labels]
    )
    out["labels"] = torch.tensor([lab + [IGNORE_INDEX] * (width - len(lab)) for lab in labels])
    for k, v in batch.items():
        if k not in out and k not in token_keys:
            out[k] = v
    return out


def _pad(row: torch.Tensor, width: int, fill: int) -> torch.Tensor:
    """``row`` (``(L, ...)``) right-padded with ``fill`` to ``(width, ...)``."""
    padding = row.new_full((width - row.shape[0], *row.shape[1:]), fill)
    return torch.cat([row, padding])


def image_token_ids(processor) -> set[int]:
    """Ids of the tokens that stand for image content in ``processor``'s prompts (may be empty).

    Read from the processor's own attributes (``image_token_id``, ``image_token``, and the
    ``image_token_ids`` some processors list), not from a table of families.
    """
    tokenizer = processor.tokenizer
    found: set[int] = set()
    single = getattr(processor, "image_token_id", None)
    if isinstance(single, int):
        found.add(single)
    token = getattr(processor, "image_token", None)
    if isinstance(token, str) and token:
        found.add(tokenizer.convert_tokens_to_ids(token))
    listed = getattr(processor, "image_token_ids", None)
    if isinstance(listed, (list, tuple, set)):
        found.update(i for i in listed if isinstance(i, int))
    unknown = tokenizer.unk_token_id
    return {i for i in found if i is not None and i != unknown}


def _too_long(processor, prompt_ids: torch.Tensor, max_length: int) -> str:
    ids = prompt_ids.tolist()
    image_ids = image_token_ids(processor)
    images = sum(1 for i in ids if i in image_ids)
    return (
        f"a training row's prompt is {len(ids)} tokens ({images} of them image tokens), "
        f"but max_length is {max_length}: no answer token would be left to train on, and "
        f"cutting the prompt would cut the image; raise --max-length above {len(ids)} "
        "(or give the processor a smaller image budget)"
    )
