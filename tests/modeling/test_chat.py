"""Tests for stic.modeling.chat: conversations cut into segments, and training rows with exact loss masks.

Run on the three tiny families (LLaVA-1.5, LLaVA-NeXT, Qwen2-VL), whose templates and
processors differ exactly where masking goes wrong: a BOS token, a space before the answer,
image placeholders expanded into many tokens, any-resolution tiles, M-RoPE token type ids.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from stic.modeling.chat import (
    IGNORE_INDEX,
    RowTooLong,
    TrainRow,
    assistant_message,
    encode_rows,
    render_prompt,
    render_segments,
    user_message,
)
from stic.testing import FAMILIES

END_OF_TURN = {"llava": "</s>", "llava_next": "</s>", "qwen2_vl": "<|im_end|>"}
# Image tensors each family's processor makes (besides the token-aligned ones).
IMAGE_KEYS = {
    "llava": ("pixel_values",),
    "llava_next": ("pixel_values", "image_sizes"),
    "qwen2_vl": ("pixel_values", "image_grid_thw", "mm_token_type_ids"),
}
EXCHANGES = [
    ("What shape is in the picture?", "A red circle on a gray background."),
    ("Is it large? Answer yes or no.", "No."),
]
SHORT = [("How many shapes are there?", "Two.")]


@pytest.fixture(scope="module")
def load(tiny_model_factory):
    cache: dict = {}

    def get(family: str, with_model: bool = False):
        if family not in cache:
            folder = tiny_model_factory(family)
            cache[family] = [AutoProcessor.from_pretrained(folder), None, folder]
        if with_model and cache[family][1] is None:
            cache[family][1] = AutoModelForImageTextToText.from_pretrained(cache[family][2]).eval()
        return cache[family][0], cache[family][1]

    return get


@pytest.fixture(scope="module")
def images(image_dir) -> list[Image.Image]:
    a = Image.open(image_dir / "img_0000.png").convert("RGB")
    b = Image.open(image_dir / "img_0001.png").convert("RGB")
    assert a.size != b.size
    return [a, b]


def _full_conversation(processor, exchanges, with_image=True) -> str:
    messages = []
    for i, (question, answer) in enumerate(exchanges):
        messages += [user_message(question, with_image and i == 0), assistant_message(answer)]
    return processor.apply_chat_template(messages, tokenize=False)


def _spans(labels: list[int]) -> list[list[int]]:
    """Contiguous runs of label ids that are not IGNORE_INDEX."""
    spans, current = [], []
    for label in labels:
        if label == IGNORE_INDEX:
            if current:
                spans.append(current)
            current = []
        else:
            current.append(label)
    if current:
        spans.append(current)
    return spans


def _prompt_ids(processor, prompt: str, image: Image.Image) -> list[int]:
    """The processor's own encoding of one rendered prompt with its image."""
    return processor(text=[prompt], images=[image], return_tensors="pt")["input_ids"][0].tolist()


def test_messages():
    assert user_message("Q", with_image=True) == {
        "role": "user",
        "content": [{"type": "image"}, {"type": "text", "text": "Q"}],
    }
    assert user_message("Q", with_image=False) == {
        "role": "user",
        "content": [{"type": "text", "text": "Q"}],
    }
    assert assistant_message("A") == {
        "role": "assistant",
        "content": [{"type": "text", "text": "A"}],
    }


# ----------------------------------------------------------------------------- render_segments


@pytest.mark.parametrize("family", FAMILIES)
def test_render_segments_alternate_and_rebuild_the_conversation(family, load):
    processor, _ = load(family)
    segments = render_segments(processor, EXCHANGES, with_image=True)
    assert [trainable for _, trainable in segments] == [False, True, False, True]
    joined = "".join(text for text, _ in segments)
    full = _full_conversation(processor, EXCHANGES)
    assert full.startswith(joined)
    assert full[len(joined) :].strip("\n") == ""
    eot = END_OF_TURN[family]
    for (text, _), (_, answer) in zip(segments[1::2], EXCHANGES, strict=True):
        assert text.strip() == answer + eot
        assert text.endswith(eot)
    # The first prompt is what generation renders, so training and generation see the same text.
    assert segments[0][0] == render_prompt(processor, EXCHANGES[0][0], with_image=True)
    # Only the first user turn holds the image.
    placeholder = "<|image_pad|>" if family == "qwen2_vl" else "<image>"
    assert placeholder in segments[0][0]
    assert all(placeholder not in text for text, _ in segments[1:])


@pytest.mark.parametrize("family", FAMILIES)
def test_render_segments_without_image(family, load):
    processor, _ = load(family)
    segments = render_segments(processor, SHORT, with_image=False)
    assert [t for _, t in segments] == [False, True]
    assert "".join(text for text, _ in segments) == _full_conversation(
        processor, SHORT, with_image=False
    ).rstrip("\n")
    assert all("<image>" not in text and "<|image_pad|>" not in text for text, _ in segments)


class _NonPrefixProcessor:
    """A template whose generation prompt is not how it renders an assistant turn."""

    def apply_chat_template(self, messages, add_generation_prompt=False, tokenize=False):
        text = "".join(f"{m['role']}: {m['content'][-1]['text']}\n" for m in messages)
        return text + ("<generate>" if add_generation_prompt else "")


def test_render_segments_refuses_a_template_without_the_prefix_property():
    with pytest.raises(ValueError, match="prefix"):
        render_segments(_NonPrefixProcessor(), SHORT, with_image=False)


# ----------------------------------------------------------------------------- encode_rows


def _rows(processor, images) -> list[TrainRow]:
    return [
        TrainRow(render_segments(processor, EXCHANGES, with_image=True), images[0]),
        TrainRow(render_segments(processor, SHORT, with_image=True), images[1]),
    ]


@pytest.mark.parametrize("family", FAMILIES)
def test_encode_rows_labels_are_exactly_the_answers(family, load, images):
    processor, _ = load(family)
    tokenizer = processor.tokenizer
    rows = _rows(processor, images)
    batch = encode_rows(processor, rows, max_length=4096)
    eot = END_OF_TURN[family]
    expected_answers = [[a for _, a in EXCHANGES], [a for _, a in SHORT]]
    for i, row in enumerate(rows):
        labels = batch["labels"][i].tolist()
        ids = batch["input_ids"][i].tolist()
        spans = _spans(labels)
        decoded = [tokenizer.decode(span) for span in spans]
        # Each answer span is the answer segment exactly: its text and the end-of-turn token.
        assert decoded == [text for text, trainable in row.segments if trainable]
        assert [d.strip() for d in decoded] == [a + eot for a in expected_answers[i]]
        # Where labels are set they equal the input ids (shifting happens in the loss).
        for position, label in enumerate(labels):
            if label != IGNORE_INDEX:
                assert label == ids[position]


@pytest.mark.parametrize("family", FAMILIES)
def test_encode_rows_prompt_image_and_padding_are_masked(family, load, images):
    processor, model = load(family, with_model=True)
    image_token_id = model.config.image_token_id
    pad_id = processor.tokenizer.pad_token_id
    rows = _rows(processor, images)
    batch = encode_rows(processor, rows, max_length=4096)
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    assert ids.shape == labels.shape == mask.shape
    width = ids.shape[1]
    for i, row in enumerate(rows):
        prompt_ids = _prompt_ids(processor, row.segments[0][0], images[i])
        # The row starts with the processor's own encoding of its first prompt (image expanded).
        assert ids[i, : len(prompt_ids)].tolist() == prompt_ids
        assert prompt_ids.count(image_token_id) > 1
        rest = [
            processor.tokenizer(text, add_special_tokens=False)["input_ids"]
            for text, _ in row.segments[1:]
        ]
        length = len(prompt_ids) + sum(len(r) for r in rest)
        # Right padding: ones then zeros, exactly at the row's length.
        assert mask[i].tolist() == [1] * length + [0] * (width - length)
        assert ids[i, length:].tolist() == [pad_id] * (width - length)
        assert (labels[i, length:] == IGNORE_INDEX).all()
        # Prompt and image tokens never carry a label.
        assert (labels[i, : len(prompt_ids)] == IGNORE_INDEX).all()
        assert (labels[i][ids[i] == image_token_id] == IGNORE_INDEX).all()
        # Following segments: answer ids labelled, prompt ids masked, in order.
        expected = [IGNORE_INDEX] * len(prompt_ids)
        for (_, trainable), seg_ids in zip(row.segments[1:], rest, strict=True):
            expected += seg_ids if trainable else [IGNORE_INDEX] * len(seg_ids)
        assert labels[i, :length].tolist() == expected
    # The two rows differ in length: the batch is padded to the longer one.
    assert mask.sum(1).tolist()[0] != mask.sum(1).tolist()[1]
    assert width == int(mask.sum(1).max())


@pytest.mark.parametrize("family", FAMILIES)
def test_encode_rows_image_tensors(family, load, images):
    processor, model = load(family, with_model=True)
    rows = _rows(processor, images)
    batch = encode_rows(processor, rows, max_length=4096)
    expected_keys = {"input_ids", "attention_mask", "labels", *IMAGE_KEYS[family]}
    assert set(batch) == expected_keys
    reference = processor(
        text=[row.segments[0][0] for row in rows], images=images, return_tensors="pt", padding=True
    )
    # Image tensors pass through as the processor makes them for the same prompts and images.
    assert torch.equal(batch["pixel_values"], reference["pixel_values"])
    if family == "qwen2_vl":
        grid = batch["image_grid_thw"]
        assert grid.shape == (2, 3)
        assert torch.equal(grid, reference["image_grid_thw"])
        assert batch["pixel_values"].shape[0] == int(grid.prod(-1).sum())
        # Token type ids follow the tokens: 1 exactly on image tokens, 0 elsewhere (padding too).
        is_image = batch["input_ids"] == model.config.image_token_id
        assert batch["mm_token_type_ids"].shape == batch["input_ids"].shape
        assert torch.equal(batch["mm_token_type_ids"].bool(), is_image)
        # One image token per 2x2 merged patch block.
        assert is_image.sum(1).tolist() == (grid.prod(-1) // 4).tolist()
    else:
        assert batch["pixel_values"].shape[0] == 2
    if family == "llava_next":
        assert batch["image_sizes"].tolist() == [[im.height, im.width] for im in images]


@pytest.mark.parametrize("family", FAMILIES)
def test_encode_rows_truncation_cuts_answers_only(family, load, images):
    processor, model = load(family, with_model=True)
    tokenizer = processor.tokenizer
    row = TrainRow(render_segments(processor, [EXCHANGES[0]], with_image=True), images[0])
    full = encode_rows(processor, [row], max_length=4096)
    full_ids = full["input_ids"][0].tolist()
    prompt_len = len(_prompt_ids(processor, row.segments[0][0], images[0]))
    answer_ids = tokenizer(row.segments[1][0], add_special_tokens=False)["input_ids"]
    assert len(full_ids) == prompt_len + len(answer_ids)
    assert len(answer_ids) > 3

    cut = encode_rows(processor, [row], max_length=prompt_len + 3)
    assert cut["input_ids"][0].tolist() == full_ids[: prompt_len + 3]
    assert cut["labels"][0].tolist() == [IGNORE_INDEX] * prompt_len + answer_ids[:3]
    assert cut["attention_mask"][0].tolist() == [1] * (prompt_len + 3)

    # One answer token left: the image tokens are all there.
    one = encode_rows(processor, [row], max_length=prompt_len + 1)
    image_token_id = model.config.image_token_id
    assert (one["input_ids"] == image_token_id).sum() == full_ids.count(image_token_id)
    assert one["labels"][0].tolist() == [IGNORE_INDEX] * prompt_len + answer_ids[:1]
    if "mm_token_type_ids" in one:
        assert one["mm_token_type_ids"].shape == one["input_ids"].shape
    # A limit the prompt alone reaches is refused: cutting it would cut the image, and keeping
    # it whole would train on nothing.
    images_in_prompt = full_ids[:prompt_len].count(image_token_id)
    for limit in (5, prompt_len):
        with pytest.raises(RowTooLong, match=f"prompt is {prompt_len} tokens") as caught:
            encode_rows(processor, [row], max_length=limit)
        assert f"{images_in_prompt} of them image tokens" in str(caught.value)
        assert f"raise --max-length above {prompt_len}" in str(caught.value)


@pytest.mark.parametrize("family", FAMILIES)
def test_encode_rows_truncation_in_a_batch_cuts_only_the_long_row(family, load, images):
    processor, _ = load(family)
    rows = _rows(processor, images)
    full = encode_rows(processor, rows, max_length=4096)
    lengths = full["attention_mask"].sum(1).tolist()
    limit = min(lengths) + 1
    cut = encode_rows(processor, rows, max_length=limit)
    short = lengths.index(min(lengths))
    long = 1 - short
    assert cut["input_ids"].shape[1] == limit
    assert cut["attention_mask"].sum(1).tolist()[short] == lengths[short]
    assert cut["input_ids"][short, : lengths[short]].tolist() == (
        full["input_ids"][short, : lengths[short]].tolist()
    )
    assert cut["input_ids"][long].tolist() == full["input_ids"][long, :limit].tolist()
    assert cut["labels"][long].tolist() == full["labels"][long, :limit].tolist()


@pytest.mark.parametrize("family", FAMILIES)
def test_encode_rows_batch_runs_through_the_model(family, load, images):
    processor, model = load(family, with_model=True)
    rows = _rows(processor, images)
    batch = encode_rows(processor, rows, max_length=4096)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape[:2] == batch["input_ids"].shape
    assert logits.shape[2] >= len(processor.tokenizer)
    assert torch.isfinite(logits).all()
    # Right padding does not change the real positions: row by row equals the batch.
    with torch.no_grad():
        for i, row in enumerate(rows):
            alone = encode_rows(processor, [row], max_length=4096)
            single = model(**{k: v for k, v in alone.items() if k != "labels"}).logits[0]
            n = single.shape[0]
            assert torch.allclose(logits[i, :n], single, atol=1e-4), f"row {i}"


def test_encode_rows_refuses_an_answer_first():
    class _Unused:
        tokenizer = None

    row = TrainRow([("answer", True), ("prompt", False)], None)
    with pytest.raises(ValueError, match="first segment of a row must be a prompt"):
        encode_rows(_Unused(), [row], max_length=16)


@pytest.mark.parametrize("family", FAMILIES)
def test_encode_rows_does_not_depend_on_the_tokenizers_padding_side(
    family, load, images, tiny_model_factory
):
    # Real checkpoints ship left-padding tokenizers (for generation); training rows must not care.
    processor, _ = load(family)
    left = AutoProcessor.from_pretrained(tiny_model_factory(family))
    left.tokenizer.padding_side = "left"
    right = encode_rows(processor, _rows(processor, images), max_length=4096)
    other = encode_rows(left, _rows(left, images), max_length=4096)
    assert set(right) == set(other)
    for key, value in right.items():
        assert torch.equal(value, other[key]), key


@pytest.mark.parametrize("family", FAMILIES)
def test_encode_rows_mixes_image_and_text_only_rows(family, load, images):
    # LLaVA instruction data holds text-only samples; they share batches with image samples.
    processor, model = load(family, with_model=True)
    rows = [
        TrainRow(render_segments(processor, SHORT, with_image=True), images[0]),
        TrainRow(render_segments(processor, EXCHANGES, with_image=False), None),
    ]
    batch = encode_rows(processor, rows, max_length=4096)
    image_token_id = model.config.image_token_id
    counts = (batch["input_ids"] == image_token_id).sum(1).tolist()
    assert counts[0] > 1 and counts[1] == 0
    text_only = processor.tokenizer(rows[1].segments[0][0], return_tensors="pt")["input_ids"][0]
    assert batch["input_ids"][1, : len(text_only)].tolist() == text_only.tolist()
    decoded = [processor.tokenizer.decode(span) for span in _spans(batch["labels"][1].tolist())]
    assert decoded == [text for text, trainable in rows[1].segments if trainable]
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    assert logits.shape[:2] == batch["input_ids"].shape


# The official Qwen2-VL / ChatML layout (simplified): every turn, assistant turns included, ends
# with "<|im_end|>\n", so text follows the end-of-turn token. The tiny Qwen template avoids this;
# real checkpoints do not.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture
def chatml_processor(tiny_model_factory):
    processor = AutoProcessor.from_pretrained(tiny_model_factory("qwen2_vl"))
    processor.chat_template = CHATML_TEMPLATE
    return processor


def test_render_segments_keeps_the_newline_after_end_of_turn_out_of_answers(chatml_processor):
    segments = render_segments(chatml_processor, EXCHANGES, with_image=True)
    full = _full_conversation(chatml_processor, EXCHANGES)
    assert full.endswith("No.<|im_end|>\n")
    assert "".join(text for text, _ in segments) == full
    answers = [text for text, trainable in segments if trainable]
    assert answers == [a + "<|im_end|>" for _, a in EXCHANGES]
    # Every answer follows a prompt segment; the newlines after them are masked text.
    assert not segments[0][1]
    for before, after in zip(segments, segments[1:], strict=False):
        assert not (before[1] and after[1])
    assert segments[-1] == ("\n", False)


def test_encode_rows_chatml_labels_stop_at_end_of_turn(chatml_processor, images):
    rows = [TrainRow(render_segments(chatml_processor, EXCHANGES, with_image=True), images[0])]
    batch = encode_rows(chatml_processor, rows, max_length=4096)
    tokenizer = chatml_processor.tokenizer
    decoded = [tokenizer.decode(span) for span in _spans(batch["labels"][0].tolist())]
    assert decoded == [a + "<|im_end|>" for _, a in EXCHANGES]
    # The whole conversation is there, trailing newline included, as one unpadded row.
    assert tokenizer.decode(batch["input_ids"][0]).endswith("No.<|im_end|>\n")
    assert batch["attention_mask"].all()
