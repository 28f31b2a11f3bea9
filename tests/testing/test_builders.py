"""Tests for stic.testing.builders: tiny offline models, their tokenizers and chat templates, test images."""

from __future__ import annotations

import pathlib

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor, GenerationConfig

from stic.testing import FAMILIES, build_tiny_model, build_tokenizer, make_images

EXPECTED = {
    # family: (model class, processor class, end-of-turn token, image placeholder in templates)
    "llava": ("LlavaForConditionalGeneration", "LlavaProcessor", "</s>", "<image>"),
    "llava_next": (
        "LlavaNextForConditionalGeneration",
        "LlavaNextProcessor",
        "</s>",
        "<image>",
    ),
    "qwen2_vl": (
        "Qwen2VLForConditionalGeneration",
        "Qwen2VLProcessor",
        "<|im_end|>",
        "<|image_pad|>",
    ),
}
# What the processor returns for a batch with images, per family.
EXPECTED_KEYS = {
    "llava": {"input_ids", "attention_mask", "pixel_values"},
    "llava_next": {"input_ids", "attention_mask", "pixel_values", "image_sizes"},
    "qwen2_vl": {
        "input_ids",
        "attention_mask",
        "pixel_values",
        "image_grid_thw",
        "mm_token_type_ids",
    },
}
IMAGE_KEYS = ("pixel_values", "image_sizes", "image_grid_thw")
UNICODE_TEXT = "Héllo wörld — 日本語, emoji 🎨🔺, tab\tand\n  double  spaces, ﬁ ligature, Ωμέγα. "

CONVERSATION = [
    {
        "role": "user",
        "content": [
            {"type": "image"},
            {"type": "text", "text": "What shape is in the picture?"},
        ],
    },
    {
        "role": "assistant",
        "content": [{"type": "text", "text": "A red circle on a gray background."}],
    },
    {"role": "user", "content": [{"type": "text", "text": "Is it large? Answer yes or no."}]},
    {"role": "assistant", "content": "No."},
    {"role": "user", "content": "Describe it again."},
]


@pytest.fixture(scope="module")
def load(tiny_model_factory):
    """``load(family)`` -> (model, processor, folder), loaded with the Auto classes once."""
    cache = {}

    def get(family):
        if family not in cache:
            folder = tiny_model_factory(family)
            model = AutoModelForImageTextToText.from_pretrained(folder).eval()
            processor = AutoProcessor.from_pretrained(folder)
            cache[family] = (model, processor, folder)
        return cache[family]

    return get


def _two_images(image_dir: pathlib.Path) -> list[Image.Image]:
    """The widest and the tallest image of the folder (so any-resolution tilings differ)."""
    images = [Image.open(p).convert("RGB") for p in sorted(image_dir.glob("img_*.png"))]
    images.sort(key=lambda im: im.width / im.height)
    assert images[0].width < images[0].height and images[-1].width > images[-1].height
    return [images[-1], images[0]]


def _user(text: str, image: bool = True) -> list[dict]:
    content = ([{"type": "image"}] if image else []) + [{"type": "text", "text": text}]
    return [{"role": "user", "content": content}]


def test_unknown_family_is_rejected(tmp_path):
    for call in (lambda: build_tiny_model("blip2", tmp_path), lambda: build_tokenizer("blip2")):
        with pytest.raises(ValueError) as excinfo:
            call()
        assert all(family in str(excinfo.value) for family in FAMILIES)


@pytest.mark.parametrize("family", FAMILIES)
def test_folder_loads_with_auto_classes(family, load):
    model, processor, folder = load(family)
    model_cls, processor_cls, end_token, _ = EXPECTED[family]
    assert type(model).__name__ == model_cls
    assert type(processor).__name__ == processor_cls
    assert model.config.model_type == family
    assert (folder / "model.safetensors").is_file()
    assert not (folder / "pytorch_model.bin").exists()

    tokenizer = processor.tokenizer
    generation = GenerationConfig.from_pretrained(folder)
    assert generation.eos_token_id == tokenizer.convert_tokens_to_ids(end_token)
    assert generation.eos_token_id == tokenizer.eos_token_id
    assert generation.pad_token_id == tokenizer.pad_token_id is not None
    assert generation.pad_token_id != generation.eos_token_id
    assert model.config.get_text_config().vocab_size == len(tokenizer)


@pytest.mark.parametrize("family", FAMILIES)
def test_folder_is_small(family, tiny_model_factory):
    folder = tiny_model_factory(family)
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert size < 3_000_000


@pytest.mark.parametrize("family", FAMILIES)
def test_chat_template_prefix_property(family, load):
    _, processor, folder = load(family)
    _, _, end_token, placeholder = EXPECTED[family]
    tokenizer = processor.tokenizer
    assert tokenizer.decode([GenerationConfig.from_pretrained(folder).eos_token_id]) == end_token

    def render(messages, generation_prompt=False):
        return processor.apply_chat_template(
            messages, add_generation_prompt=generation_prompt, tokenize=False
        )

    for k in range(2):
        prompt = render(CONVERSATION[: 2 * k + 1], generation_prompt=True)
        full = render(CONVERSATION[: 2 * k + 2])
        following = render(CONVERSATION[: 2 * k + 3], generation_prompt=True)
        assert full.startswith(prompt)
        assert following.startswith(full)
        assert full.endswith(end_token)
        answer = CONVERSATION[2 * k + 1]["content"]
        answer = answer if isinstance(answer, str) else answer[0]["text"]
        assert full[len(prompt) :].strip() == answer + end_token
        # The split holds on token ids too, so a prompt's ids are a prefix of the full ids.
        prompt_ids = tokenizer(prompt).input_ids
        assert tokenizer(full).input_ids[: len(prompt_ids)] == prompt_ids

    # One placeholder per image item; text-only and string-content turns render their text.
    rendered = render(CONVERSATION, generation_prompt=True)
    assert rendered.count(placeholder) == 1
    for text in ("What shape is in the picture?", "Is it large? Answer yes or no.", "Describe it"):
        assert text in rendered
    assert render(_user("Hello?", image=False), generation_prompt=True).count(placeholder) == 0
    two_images = [{"role": "user", "content": [{"type": "image"}, {"type": "image"}]}]
    assert render(two_images).count(placeholder) == 2


@pytest.mark.parametrize("family", FAMILIES)
def test_tokenizer_round_trips_and_keeps_special_tokens(family, load):
    _, processor, _ = load(family)
    tokenizer = processor.tokenizer
    ids = tokenizer(UNICODE_TEXT, add_special_tokens=False).input_ids
    assert tokenizer.decode(ids) == UNICODE_TEXT

    specials = (
        ["<s>", "</s>", "<unk>", "<pad>", "<image>"]
        if family != "qwen2_vl"
        else ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>"]
        + ["<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    )
    for token in specials:
        token_id = tokenizer.convert_tokens_to_ids(token)
        assert tokenizer(token, add_special_tokens=False).input_ids == [token_id]
        assert token_id in tokenizer(f"word{token}word", add_special_tokens=False).input_ids

    with_specials = tokenizer("hello").input_ids
    if family == "qwen2_vl":
        assert with_specials == tokenizer("hello", add_special_tokens=False).input_ids
        assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    else:
        assert with_specials[0] == tokenizer.bos_token_id == tokenizer.convert_tokens_to_ids("<s>")
        assert (tokenizer.eos_token, tokenizer.pad_token, tokenizer.unk_token) == (
            "</s>",
            "<pad>",
            "<unk>",
        )


def test_build_tokenizer_options():
    default = build_tokenizer("llava")
    assert 256 < len(default) <= 800
    assert default.backend_tokenizer.to_str() == build_tokenizer("llava").backend_tokenizer.to_str()
    assert default.chat_template

    small = build_tokenizer("qwen2_vl", corpus=["a tiny corpus of words"] * 3, vocab_size=300)
    assert len(small) <= 300
    assert small.decode(small(UNICODE_TEXT).input_ids) == UNICODE_TEXT
    # The prompt words are learnt from the default corpus: they take few tokens.
    assert len(default("Summarize the visual content presented.").input_ids) < 12


@pytest.mark.parametrize("family", FAMILIES)
def test_image_tokens_match_image_features(family, load, image_dir):
    model, processor, _ = load(family)
    images = _two_images(image_dir)
    texts = [
        processor.apply_chat_template(_user(q), add_generation_prompt=True, tokenize=False)
        for q in ("What is in the image?", "Colour?")
    ]
    inputs = processor(
        text=texts, images=images, padding=True, padding_side="left", return_tensors="pt"
    )
    assert set(inputs.keys()) == EXPECTED_KEYS[family]

    image_kwargs = {k: inputs[k] for k in IMAGE_KEYS if k in inputs}
    with torch.no_grad():
        features = model.get_image_features(**image_kwargs).pooler_output
        logits = model(**inputs).logits
    feature_lengths = [f.shape[0] for f in features]
    placeholders = (inputs["input_ids"] == model.config.image_token_id).sum(dim=1).tolist()
    assert placeholders == feature_lengths
    if family != "llava":  # any-resolution families: different sizes give different counts
        assert feature_lengths[0] != feature_lengths[1]
    assert logits.shape == (*inputs["input_ids"].shape, len(processor.tokenizer))
    assert torch.isfinite(logits).all()


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_batched_generation(family, load, image_dir):
    model, processor, _ = load(family)
    conversations = [
        _user("Please describe the image in detail, focusing on colours and shapes."),
        _user("Shape?"),
    ]
    texts = [
        processor.apply_chat_template(c, add_generation_prompt=True, tokenize=False)
        for c in conversations
    ]
    batches = {
        "images": processor(
            text=texts,
            images=_two_images(image_dir),
            padding=True,
            padding_side="left",
            return_tensors="pt",
        ),
        "text-only": processor(
            text=[t.replace(EXPECTED[family][3], "") for t in texts],
            padding=True,
            padding_side="left",
            return_tensors="pt",
        ),
    }
    for name, inputs in batches.items():
        mask = inputs["attention_mask"]
        assert mask[:, -1].all() and not mask[:, 0].all(), name  # left padded
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=8, do_sample=False)
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        assert output.shape[0] == 2 and 1 <= new_tokens.shape[1] <= 8, name
        decoded = processor.batch_decode(new_tokens, skip_special_tokens=True)
        assert len(decoded) == 2 and all(isinstance(s, str) for s in decoded), name


@pytest.mark.parametrize("family", FAMILIES)
def test_weights_are_deterministic_in_seed(family, tiny_model_factory, tmp_path):
    reference = load_file(tiny_model_factory(family) / "model.safetensors")  # seed 0
    rng_state = torch.get_rng_state()
    again = load_file(build_tiny_model(family, tmp_path / "again", seed=0) / "model.safetensors")
    other = load_file(build_tiny_model(family, tmp_path / "other", seed=1) / "model.safetensors")
    assert torch.equal(rng_state, torch.get_rng_state())  # caller's RNG untouched

    assert reference.keys() == again.keys() == other.keys()
    assert all(torch.equal(reference[k], again[k]) for k in reference)
    assert not all(torch.equal(reference[k], other[k]) for k in reference)


def test_make_images_is_deterministic_and_varied(tmp_path, image_dir):
    paths = make_images(tmp_path / "a", 8, seed=3)
    assert [p.name for p in paths] == [f"img_{i:04d}.png" for i in range(8)]
    same = make_images(tmp_path / "b", 8, seed=3)
    other = make_images(tmp_path / "c", 8, seed=4)
    assert [p.read_bytes() for p in paths] == [p.read_bytes() for p in same]
    assert [p.read_bytes() for p in paths] != [p.read_bytes() for p in other]

    sizes = [Image.open(p).size for p in paths]
    assert all(40 <= side <= 96 for size in sizes for side in size)
    assert len(set(sizes)) > 1
    assert any(w != h for w, h in sizes)
    assert all(Image.open(p).mode == "RGB" for p in paths)
    assert len(list(image_dir.glob("img_*.png"))) == 6
