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

    A template that already writes the BOS token gets none added by the tokenizer.
    """
    bos = processor.tokenizer.bos_token
    present = [image for image in images if image is not None]
    return processor(
        text=texts,
        images=present or None,
        padding=True,
        padding_side=padding_side,
        return_tensors="pt",
        add_special_tokens=not (bos and all(text.startswith(bos) for text in texts)),
    )


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

    Returns ``input_ids``, ``attention_mask``, ``labels`` (all ``(B, T)``) and whatever image
    tensors the processor makes (``pixel_values``, ``image_sizes``, ``image_grid_thw``, ...).
    Rows longer than ``max_length`` lose the end of their answers, never prompt or image tokens.
    """
    tokenizer = processor.tokenizer
    if any(row.segments[0][1] for row in rows):
        raise ValueError("the first segment of a row must be a prompt")
    batch = process(processor, [row.segments[0][0] for row in rows], [row.image for row in rows])
    mask = batch["attention_mask"].bool()
    seq_len = batch["input_ids"].shape[1]
    # Tensors aligned with the tokens (e.g. token type ids) are re-cut with input_ids; the rest
    # (pixel values, image sizes, grids) pass through as the processor made them.
    token_keys = [
        k
        for k, v in batch.items()
        if k != "attention_mask"
        and isinstance(v, torch.Tensor)
        and v.shape[:2] == (len(rows), seq_len)
    ]
    columns: dict[str, list[list[int]]] = {k: [] for k in token_keys}
    labels: list[list[int]] = []
    for i, row in enumerate(rows):
        for k in token_keys:
            columns[k].append(batch[k][i][mask[i]].tolist())
        row_labels = [IGNORE_INDEX] * len(columns["input_ids"][i])
        for text, trainable in row.segments[1:]:
            ids = _tokenize(tokenizer, text)
            columns["input_ids"][i] += ids
            for k in token_keys:
                if k != "input_ids":
                    columns[k][i] += [0] * len(ids)
            row_labels += ids if trainable else [IGNORE_INDEX] * len(ids)
        prompt_len = int(mask[i].sum())
        keep = max(max_length, prompt_len)
        for k in token_keys:
            columns[k][i] = columns[k][i][:keep]
        labels.append(row_labels[:keep])
    width = max(len(ids) for ids in columns["input_ids"])
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    out: dict[str, torch.Tensor] = {}
    for k in token_keys:
        fill = pad_id if k == "input_ids" else 0
        out[k] = torch.tensor([ids + [fill] * (width - len(ids)) for ids in columns[k]])
    out["attention_mask"] = torch.tensor(
        [[1] * len(ids) + [0] * (width - len(ids)) for ids in columns["input_ids"]]
    )
    out["labels"] = torch.tensor([lab + [IGNORE_INDEX] * (width - len(lab)) for lab in labels])
    for k, v in batch.items():
        if k not in out and k not in token_keys:
            out[k] = v
    return out
