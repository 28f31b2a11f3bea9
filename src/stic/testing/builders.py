"""Tiny, randomly initialised vision-language models for tests and demos, built fully offline.

:func:`build_tiny_model` writes a folder that ``AutoModelForImageTextToText.from_pretrained`` and
``AutoProcessor.from_pretrained`` load as-is, for one of :data:`ALL_FAMILIES`: the three below
(:data:`FAMILIES`, the fast tests' models) and those of :mod:`stic.testing.families` (Qwen2.5-VL,
Qwen3-VL, GLM-4V, Idefics3, SmolVLM, LLaVA-OneVision, Mllama, Mistral3, InternVL, LFM2-VL,
Aya Vision):

* ``"llava"``: LLaVA-1.5 (CLIP vision tower + Llama), prompt ``USER: <image>\\nQ ASSISTANT: A</s>``;
* ``"llava_next"``: LLaVA-NeXT, v1.6-mistral style (CLIP + Mistral, any-resolution tiling),
  prompt ``[INST] <image>\\nQ [/INST] A</s>``;
* ``"qwen2_vl"``: Qwen2-VL (native-resolution ViT + Qwen2 with M-RoPE), ChatML prompt.

Everything (tokenizer, configs, weights, processor, chat template) is made in code; nothing is
fetched from a hub. Models have a few hundred thousand parameters: they produce gibberish, but
they exercise exactly the code paths (image placeholders, any-resolution tiling, M-RoPE, padding,
generation) that the real checkpoints do.

Chat templates of all families share two properties callers may rely on:

* each assistant turn renders as its text followed by the end-of-turn token (``</s>`` or
  ``<|im_end|>``), which is also the generation ``eos_token_id``, and nothing follows it;
* prefix property: rendering ``messages[:2k+1]`` with ``add_generation_prompt=True`` is a string
  prefix of rendering ``messages[:2k+2]``, which is a prefix of rendering ``messages[:2k+3]`` with
  ``add_generation_prompt=True``.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image, ImageDraw
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    GenerationConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessor,
    LlavaNextProcessor,
    LlavaProcessor,
    MistralConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    ProcessorMixin,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
)
from transformers.utils import logging as hf_logging

from stic.data import prompts
from stic.runtime.files import atomic_write_json, atomic_write_text
from stic.testing.families import EXTRA_FAMILIES, QWEN_TOKENS, TokenSpec

logger = logging.getLogger(__name__)

__all__ = [
    "ALL_FAMILIES",
    "FAMILIES",
    "LLAVA_CHAT_TEMPLATE",
    "build_tiny_model",
    "build_tokenizer",
    "make_images",
    "write_pipeline_inputs",
]

FAMILIES: tuple[str, ...] = ("llava", "llava_next", "qwen2_vl")
# The three above are the ones every fast test runs on; the others (stic.testing.families) run
# the whole pipeline in the slow family tests.
ALL_FAMILIES: tuple[str, ...] = FAMILIES + tuple(EXTRA_FAMILIES)

# Geometry of the tiny vision towers. CLIP: a 32 px input cut into 8 px patches gives 4x4 = 16
# patch features (+1 CLS, dropped by the "default" feature-select strategy).
_CLIP_IMAGE_SIZE = 32
_CLIP_PATCH_SIZE = 8
_LLAVA_NEXT_PINPOINTS = [[32, 32], [32, 64], [64, 32], [64, 64]]
# Qwen2-VL: 14 px patches merged 2x2, so images are resized to multiples of 28 px and every
# 28x28 block becomes one token; the pixel budget keeps a ~64 px image at 4-9 tokens.
_QWEN_PATCH_SIZE = 14
_QWEN_MERGE_SIZE = 2
_QWEN_MIN_PIXELS = 28 * 28
_QWEN_MAX_PIXELS = 84 * 84

_TEXT_HIDDEN = 64
_TEXT_LAYERS = 2
_TEXT_HEADS = 4
_TEXT_INTERMEDIATE = 128
_MAX_POSITIONS = 4096


_LLAMA_TOKENS = TokenSpec(
    special=("<unk>", "<s>", "</s>", "<pad>", prompts.IMAGE_TOKEN),
    bos="<s>",
    eos="</s>",
    pad="<pad>",
    unk="<unk>",
)
_FAMILY_TOKENS = {
    "llava": _LLAMA_TOKENS,
    "llava_next": _LLAMA_TOKENS,
    "qwen2_vl": QWEN_TOKENS,
    **{name: spec.tokens for name, spec in EXTRA_FAMILIES.items()},
}

# Jinja test shared by the templates. `content` may be a string or a list of typed items; an
# item is an image if its type is "image" or it carries an "image"/"image_url" key (as in
# Qwen2-VL's own template), text if it has a "text" key.
_IS_IMAGE = "(item['type'] == 'image' or 'image' in item or 'image_url' in item)"

LLAVA_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}"
    "{%- set items = [{'type': 'text', 'text': message['content']}] -%}"
    "{%- else -%}{%- set items = message['content'] -%}{%- endif -%}"
    "{%- if message['role'] == 'system' -%}"
    "{%- for item in items if 'text' in item -%}{{ item['text'] }}{%- endfor -%}{{ ' ' }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{ 'ASSISTANT:' }}{% generation %}"
    "{%- for item in items if 'text' in item -%}{{ ' ' + item['text'] }}{%- endfor -%}"
    "{{ '</s>' }}{% endgeneration %}"
    "{%- else -%}"
    "{{ 'USER: ' }}"
    "{%- for item in items if " + _IS_IMAGE + " -%}{{ '<image>\\n' }}{%- endfor -%}"
    "{%- for item in items if 'text' in item and not " + _IS_IMAGE + " -%}"
    "{{ item['text'] }}{%- endfor -%}{{ ' ' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}"
)

_LLAVA_NEXT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}"
    "{%- set items = [{'type': 'text', 'text': message['content']}] -%}"
    "{%- else -%}{%- set items = message['content'] -%}{%- endif -%}"
    "{%- if message['role'] == 'system' -%}"
    "{%- for item in items if 'text' in item -%}{{ item['text'] }}{%- endfor -%}{{ '\\n\\n' }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{% generation %}"
    "{%- for item in items if 'text' in item -%}{{ ' ' + item['text'] }}{%- endfor -%}"
    "{{ '</s>' }}{% endgeneration %}"
    "{%- else -%}"
    "{{ '[INST] ' }}"
    "{%- for item in items if " + _IS_IMAGE + " -%}{{ '<image>\\n' }}{%- endfor -%}"
    "{%- for item in items if 'text' in item and not " + _IS_IMAGE + " -%}"
    "{{ item['text'] }}{%- endfor -%}{{ ' [/INST]' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
)

# ChatML as in Qwen2-VL, except that the newline separating turns is written *before* a turn
# rather than after it, so that a rendering ends exactly with the last turn's <|im_end|>.
_QWEN2_VL_TEMPLATE = (
    "{%- set ns = namespace(first=true) -%}"
    "{%- if not messages or messages[0]['role'] != 'system' -%}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>' }}"
    "{%- set ns.first = false -%}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}"
    "{%- set items = [{'type': 'text', 'text': message['content']}] -%}"
    "{%- else -%}{%- set items = message['content'] -%}{%- endif -%}"
    "{%- if not ns.first -%}{{ '\\n' }}{%- endif -%}{%- set ns.first = false -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' -%}"
    "{% generation %}"
    "{%- for item in items if 'text' in item -%}{{ item['text'] }}{%- endfor -%}"
    "{{ '<|im_end|>' }}{% endgeneration %}"
    "{%- else -%}"
    "{%- for item in items -%}"
    "{%- if " + _IS_IMAGE + " -%}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif item['type'] == 'video' or 'video' in item -%}"
    "{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{%- elif 'text' in item -%}{{ item['text'] }}{%- endif -%}"
    "{%- endfor -%}"
    "{{ '<|im_end|>' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '\\n<|im_start|>assistant\\n' }}{%- endif -%}"
)

_FAMILY_TEMPLATES = {
    "llava": LLAVA_CHAT_TEMPLATE,
    "llava_next": _LLAVA_NEXT_TEMPLATE,
    "qwen2_vl": _QWEN2_VL_TEMPLATE,
    **{name: spec.template for name, spec in EXTRA_FAMILIES.items()},
}

_COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "orange": (240, 140, 30),
    "purple": (140, 60, 180),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "gray": (128, 128, 128),
    "pink": (240, 150, 190),
    "brown": (130, 80, 40),
    "cyan": (40, 200, 210),
}
_SHAPES = ("circle", "square", "triangle")
_POSITIONS = ("left", "right", "top", "bottom", "center", "top left", "bottom right", "middle")


def _check_family(family: str) -> None:
    if family not in ALL_FAMILIES:
        raise ValueError(
            f"unknown model family {family!r}; expected one of {', '.join(ALL_FAMILIES)}"
        )


def _default_corpus() -> Iterator[str]:
    """The built-in training text: STIC's prompts plus simple sentences about shapes in images."""
    yield prompts.GOOD_PROMPT
    yield from prompts.BAD_PROMPTS
    yield from prompts.PLAIN_PROMPTS
    yield prompts.SHORT_ANSWER_INSTRUCTION
    yield prompts.CHOICE_INSTRUCTION
    yield prompts.DESCRIPTION_HEADER
    yield "You are a helpful assistant."
    yield "A chat between a curious human and an artificial intelligence assistant."
    yield "USER: ASSISTANT: [INST] [/INST] system user assistant"
    sizes = ("small", "large", "big", "tiny")
    for i, (colour, shape) in enumerate((c, s) for c in _COLOURS for s in _SHAPES):
        size = sizes[i % len(sizes)]
        position = _POSITIONS[i % len(_POSITIONS)]
        yield (
            f"The image shows a {size} {colour} {shape} in the {position} of the picture, "
            f"on a plain {list(_COLOURS)[(i + 3) % len(_COLOURS)]} background."
        )
        yield f"Is there a {colour} {shape}? Yes, there is one {shape}. No, it is not {colour}."
    yield "There are 0 1 2 3 4 5 6 7 8 9 10 11 12 20 50 100 objects: zero one two three four five."
    yield "Answer yes or no. Yes. No. A. B. C. D. The answer is A, B, C or D."
    yield "What color is the shape? How many shapes are there? Where is the circle located?"
    yield "The background is noisy and gray, with a triangle above a square and a circle below it."


def build_tokenizer(
    family: str, corpus: Iterable[str] | None = None, vocab_size: int = 800
) -> PreTrainedTokenizerFast:
    """Train a small byte-level BPE tokenizer with the ``tokenizers`` library for ``family``.

    The tokenizer is byte-level, so any text round-trips through ``encode``/``decode``; the
    family's special tokens (``<s> </s> <unk> <pad> <image>`` for the LLaVA families, Qwen's
    ``<|...|>`` tokens for ``qwen2_vl``) are single ids that are never split. The LLaVA families
    prepend ``<s>`` when ``add_special_tokens=True``, as their Llama/Mistral tokenizers do;
    Qwen2-VL adds nothing. The chat template is attached as ``tokenizer.chat_template``.

    Args:
        family: one of :data:`FAMILIES`.
        corpus: training texts; defaults to a built-in corpus of STIC's prompts and simple
            sentences about coloured shapes, positions, numbers and yes/no answers.
        vocab_size: target vocabulary size, special tokens and the 256 byte symbols included.

    Raises:
        ValueError: for an unknown family.
    """
    _check_family(family)
    spec = _FAMILY_TOKENS[family]
    texts = list(_default_corpus() if corpus is None else corpus)

    backend = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in spec.special],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer, length=len(texts))
    if spec.bos is not None:
        bos_id = backend.token_to_id(spec.bos)
        backend.post_processor = processors.TemplateProcessing(
            single=f"{spec.bos} $A",
            pair=f"{spec.bos} $A {spec.bos}:1 $B:1",
            special_tokens=[(spec.bos, bos_id)],
        )
    else:
        backend.post_processor = processors.ByteLevel(trim_offsets=False)

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=spec.bos,
        eos_token=spec.eos,
        pad_token=spec.pad,
        unk_token=spec.unk,
        clean_up_tokenization_spaces=False,
        model_max_length=_MAX_POSITIONS,
        extra_special_tokens=dict(spec.named),
    )
    tokenizer.chat_template = _FAMILY_TEMPLATES[family]
    return tokenizer


def _clip_vision_config() -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=_CLIP_IMAGE_SIZE,
        patch_size=_CLIP_PATCH_SIZE,
        projection_dim=32,
    )


def _text_kwargs(tokenizer: PreTrainedTokenizerFast) -> dict[str, Any]:
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": _TEXT_HIDDEN,
        "intermediate_size": _TEXT_INTERMEDIATE,
        "num_hidden_layers": _TEXT_LAYERS,
        "num_attention_heads": _TEXT_HEADS,
        "num_key_value_heads": 2,
        "max_position_embeddings": _MAX_POSITIONS,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "tie_word_embeddings": False,
    }


def _build_llava(tokenizer: PreTrainedTokenizerFast) -> tuple[PreTrainedModel, ProcessorMixin]:
    image_token_id = tokenizer.convert_tokens_to_ids(prompts.IMAGE_TOKEN)
    config = LlavaConfig(
        vision_config=_clip_vision_config(),
        text_config=LlamaConfig(**_text_kwargs(tokenizer)),
        image_token_id=image_token_id,
        image_seq_length=(_CLIP_IMAGE_SIZE // _CLIP_PATCH_SIZE) ** 2,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    model = LlavaForConditionalGeneration(config)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": _CLIP_IMAGE_SIZE},
        crop_size={"height": _CLIP_IMAGE_SIZE, "width": _CLIP_IMAGE_SIZE},
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=_CLIP_PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    return model, processor


def _build_llava_next(
    tokenizer: PreTrainedTokenizerFast,
) -> tuple[PreTrainedModel, ProcessorMixin]:
    image_token_id = tokenizer.convert_tokens_to_ids(prompts.IMAGE_TOKEN)
    config = LlavaNextConfig(
        vision_config=_clip_vision_config(),
        text_config=MistralConfig(**_text_kwargs(tokenizer), sliding_window=None),
        image_token_id=image_token_id,
        image_seq_length=(_CLIP_IMAGE_SIZE // _CLIP_PATCH_SIZE) ** 2,
        image_grid_pinpoints=[list(p) for p in _LLAVA_NEXT_PINPOINTS],
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    model = LlavaNextForConditionalGeneration(config)
    image_processor = LlavaNextImageProcessor(
        size={"shortest_edge": _CLIP_IMAGE_SIZE},
        crop_size={"height": _CLIP_IMAGE_SIZE, "width": _CLIP_IMAGE_SIZE},
        image_grid_pinpoints=[list(p) for p in _LLAVA_NEXT_PINPOINTS],
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=_CLIP_PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=_LLAVA_NEXT_TEMPLATE,
    )
    return model, processor


def _build_qwen2_vl(tokenizer: PreTrainedTokenizerFast) -> tuple[PreTrainedModel, ProcessorMixin]:
    ids = tokenizer.convert_tokens_to_ids
    text_kwargs = _text_kwargs(tokenizer)
    text_kwargs["bos_token_id"] = tokenizer.pad_token_id  # Qwen2-VL uses <|endoftext|> as bos id
    head_dim = _TEXT_HIDDEN // _TEXT_HEADS
    quarter = head_dim // 2 // 4
    mrope_section = [head_dim // 2 - 2 * quarter, quarter, quarter]  # temporal, height, width
    config = Qwen2VLConfig(
        text_config={
            **text_kwargs,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": mrope_section,
            },
        },
        vision_config={
            "depth": 2,
            "embed_dim": 32,
            "hidden_size": _TEXT_HIDDEN,
            "mlp_ratio": 2,
            "num_heads": 2,
            "patch_size": _QWEN_PATCH_SIZE,
            "spatial_merge_size": _QWEN_MERGE_SIZE,
            "temporal_patch_size": 2,
        },
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    model = Qwen2VLForConditionalGeneration(config)
    size = {"shortest_edge": _QWEN_MIN_PIXELS, "longest_edge": _QWEN_MAX_PIXELS}
    pixel_kwargs = {
        "size": size,
        "patch_size": _QWEN_PATCH_SIZE,
        "merge_size": _QWEN_MERGE_SIZE,
        "temporal_patch_size": 2,
    }
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixel_kwargs),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(**pixel_kwargs),
        chat_template=_QWEN2_VL_TEMPLATE,
    )
    return model, processor


_BUILDERS = {
    "llava": _build_llava,
    "llava_next": _build_llava_next,
    "qwen2_vl": _build_qwen2_vl,
    **{name: spec.build for name, spec in EXTRA_FAMILIES.items()},
}


def build_tiny_model(family: str, out_dir: str | os.PathLike, seed: int = 0) -> pathlib.Path:
    """Build, save (safetensors) and return ``out_dir`` for a tiny random model + processor.

    The folder holds the model (``config.json``, ``model.safetensors``,
    ``generation_config.json``) and the processor (tokenizer, image processor, chat template),
    loadable with ``AutoModelForImageTextToText`` / ``AutoProcessor``. Weights depend only on
    ``seed``; the caller's global torch RNG state is left untouched. The generation config sets
    ``eos_token_id`` to the end-of-turn token and ``pad_token_id`` (and ``bos_token_id``).

    Raises:
        ValueError: for an unknown family.
    """
    _check_family(family)
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(family)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, processor = _BUILDERS[family](tokenizer)
    model.eval()
    model.generation_config = GenerationConfig(
        bos_token_id=getattr(model.config.get_text_config(), "bos_token_id", None),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    progress_bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Writing model shards" bar for a 1 MB model
    try:
        model.save_pretrained(out, safe_serialization=True)
        processor.save_pretrained(out)
    finally:
        if progress_bars:
            hf_logging.enable_progress_bar()
    logger.debug("built tiny %s model (seed %d) in %s", family, seed, out)
    return out


def _draw_shape(
    draw: ImageDraw.ImageDraw,
    shape: str,
    box: tuple[int, int, int, int],
    colour: tuple[int, int, int],
) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=colour)


def make_images(out_dir: str | os.PathLike, n: int, seed: int = 0) -> list[pathlib.Path]:
    """Write ``n`` small PNG images of coloured shapes and return their paths.

    Each image is a plain or noisy background with one to three circles, squares or triangles;
    sides vary between 40 and 96 px independently (the first image is never square, and with
    ``n >= 2`` not all images share a size). Files are named ``img_0000.png``, ``img_0001.png``,
    ...; the output depends only on ``n`` and ``seed``.
    """
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    palette = list(_COLOURS.values())
    paths = []
    first_size = (0, 0)
    for i in range(n):
        width, height = (int(v) for v in rng.integers(40, 97, size=2))
        if i == 0 and width == height:
            height = width - 16 if width >= 56 else width + 16
        elif i == 1 and (width, height) == first_size:
            width, height = height, width
        if i == 0:
            first_size = (width, height)
        background = palette[int(rng.integers(len(palette)))]
        if rng.random() < 0.5:
            image = Image.new("RGB", (width, height), background)
        else:
            noise = rng.normal(0.0, 30.0, size=(height, width, 3))
            pixels = np.clip(np.asarray(background, dtype=np.float64) + noise, 0, 255)
            image = Image.fromarray(pixels.astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(1, 4))):
            side = int(rng.integers(10, max(11, min(width, height) // 2 + 1)))
            x0 = int(rng.integers(0, width - side + 1))
            y0 = int(rng.integers(0, height - side + 1))
            colour = palette[int(rng.integers(len(palette)))]
            shape = _SHAPES[int(rng.integers(len(_SHAPES)))]
            _draw_shape(draw, shape, (x0, y0, x0 + side - 1, y0 + side - 1), colour)
        path = out / f"img_{i:04d}.png"
        image.save(path, format="PNG")
        paths.append(path)
    return paths


def write_pipeline_inputs(
    out: pathlib.Path, num_images: int, seed: int, family: str = "llava"
) -> pathlib.Path:
    """A tiny random model, images, instruction data, VQA data and a ``stic run`` config under
    ``out`` (the pipeline tests' inputs); returns the config path."""

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


def slowed_training_cli(seconds: float) -> str:
    """A ``python -c`` script that runs the stic CLI (its arguments after ``-c``) with every
    training batch delayed by ``seconds``, so that a test can kill a training stage between two
    checkpoints."""
    return f"""
import sys, time
import stic.stages.training
original = stic.stages.training.Collator.__call__
def slow(self, records):
    time.sleep({float(seconds)!r})
    return original(self, records)
stic.stages.training.Collator.__call__ = slow
from stic.cli import main
sys.exit(main(sys.argv[1:]))
"""
