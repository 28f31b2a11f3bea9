"""Tiny offline builders for more vision-language families, one small function each.

Each family is a :class:`FamilySpec`: its tokenizer's special tokens, a chat template (content
lists with ``{"type": "image"}`` items, made by :func:`chat_template` so every family has the
properties :mod:`stic.testing.builders` documents: an assistant turn ends with the end-of-turn
token, which is also the generation ``eos_token_id``, and each prefix of a conversation renders
as a prefix of the whole), and ``build(tokenizer) -> (model, processor)`` with a vision tower of
a few thousand parameters and a 2-layer, 64-wide language model. The images a processor makes
stay small (4-40 image tokens) so a whole pipeline runs in seconds on a CPU.

This module imports only transformers; :mod:`stic.testing.builders` trains the tokenizers, saves
the folders and owns the registry of every family (:data:`stic.testing.builders.FAMILIES` and
:data:`EXTRA_FAMILIES` here).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

TEXT_HIDDEN = 64
TEXT_LAYERS = 2
TEXT_HEADS = 4
TEXT_INTERMEDIATE = 128
MAX_POSITIONS = 4096


@dataclass(frozen=True)
class TokenSpec:
    """Special tokens of a family; ``bos`` is prepended by the tokenizer when not ``None``.

    ``named``: tokenizer attributes some processors read (``{"context_image_token": "<IMG_CONTEXT>"}``
    makes ``tokenizer.context_image_token`` and ``tokenizer.context_image_token_id``).
    """

    special: tuple[str, ...]
    bos: str | None
    eos: str
    pad: str
    unk: str | None
    named: dict[str, str] = field(default_factory=dict)


# Jinja test shared by the templates. `content` may be a string or a list of typed items; an
# item is an image if its type is "image" or it carries an "image"/"image_url" key.
IS_IMAGE = "(item['type'] == 'image' or 'image' in item or 'image_url' in item)"


def chat_template(
    *,
    user: tuple[str, str],
    assistant: tuple[str, str],
    image: str,
    start: str = "",
    system: tuple[str, str] | None = None,
    default_system: str | None = None,
    separator: str = "",
) -> str:
    """A Jinja chat template: ``start``, then each turn as ``open + content + close``.

    ``separator`` is written before every turn but the first (not after a turn), so a rendering
    ends exactly with the last turn's close; the generation prompt is ``separator`` + the
    assistant's open. ``image`` is the markup of one image item (the processor expands it).
    ``default_system``: a system turn rendered when the conversation has none.
    """
    system = system or user
    head = "{{ '" + _escape(start) + "' }}{%- set ns = namespace(first=true) -%}"
    if default_system is not None:
        head += (
            "{%- if not messages or messages[0]['role'] != 'system' -%}"
            "{{ '" + _escape(system[0] + default_system + system[1]) + "' }}"
            "{%- set ns.first = false -%}{%- endif -%}"
        )
    body = (
        "{%- for message in messages -%}"
        "{%- if message['content'] is string -%}"
        "{%- set items = [{'type': 'text', 'text': message['content']}] -%}"
        "{%- else -%}{%- set items = message['content'] -%}{%- endif -%}"
        "{%- if not ns.first -%}{{ '" + _escape(separator) + "' }}{%- endif -%}"
        "{%- set ns.first = false -%}"
        "{%- if message['role'] == 'assistant' -%}"
        "{{ '" + _escape(assistant[0]) + "' }}{% generation %}"
        "{%- for item in items if 'text' in item -%}{{ item['text'] }}{%- endfor -%}"
        "{{ '" + _escape(assistant[1]) + "' }}{% endgeneration %}"
        "{%- elif message['role'] == 'system' -%}"
        "{{ '" + _escape(system[0]) + "' }}"
        "{%- for item in items if 'text' in item -%}{{ item['text'] }}{%- endfor -%}"
        "{{ '" + _escape(system[1]) + "' }}"
        "{%- else -%}"
        "{{ '" + _escape(user[0]) + "' }}"
        "{%- for item in items -%}"
        "{%- if " + IS_IMAGE + " -%}{{ '" + _escape(image) + "' }}"
        "{%- elif 'text' in item -%}{{ item['text'] }}{%- endif -%}"
        "{%- endfor -%}"
        "{{ '" + _escape(user[1]) + "' }}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}"
        "{%- if not ns.first -%}{{ '" + _escape(separator) + "' }}{%- endif -%}"
        "{{ '" + _escape(assistant[0]) + "' }}{%- endif -%}"
    )
    return head + body


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")


def text_kwargs(tokenizer) -> dict[str, Any]:
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": TEXT_HIDDEN,
        "intermediate_size": TEXT_INTERMEDIATE,
        "num_hidden_layers": TEXT_LAYERS,
        "num_attention_heads": TEXT_HEADS,
        "num_key_value_heads": 2,
        "max_position_embeddings": MAX_POSITIONS,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "tie_word_embeddings": False,
    }


def _mrope(head_dim: int) -> list[int]:
    quarter = head_dim // 2 // 4
    return [head_dim // 2 - 2 * quarter, quarter, quarter]  # temporal, height, width


# --- Qwen2.5-VL / Qwen3-VL / GLM-4V: native resolution, merged patches, M-RoPE ------------------

_CHATML = dict(
    user=("<|im_start|>user\n", "<|im_end|>"),
    assistant=("<|im_start|>assistant\n", "<|im_end|>"),
    system=("<|im_start|>system\n", "<|im_end|>"),
    default_system="You are a helpful assistant.",
    separator="\n",
)
QWEN_TOKENS = TokenSpec(
    special=(
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<|vision_start|>",
        "<|vision_end|>",
        "<|image_pad|>",
        "<|video_pad|>",
    ),
    bos=None,
    eos="<|im_end|>",
    pad="<|endoftext|>",
    unk=None,
)
_QWEN_TEMPLATE = chat_template(image="<|vision_start|><|image_pad|><|vision_end|>", **_CHATML)
# Images are resized to multiples of patch x merge px; the pixel budget keeps a ~64 px image at
# 4-9 tokens.
_QWEN_PIXELS = {"shortest_edge": 28 * 28, "longest_edge": 84 * 84}


def _qwen_ids(tokenizer) -> dict[str, int]:
    ids = tokenizer.convert_tokens_to_ids
    return {
        "image_token_id": ids("<|image_pad|>"),
        "video_token_id": ids("<|video_pad|>"),
        "vision_start_token_id": ids("<|vision_start|>"),
        "vision_end_token_id": ids("<|vision_end|>"),
    }


def build_qwen2_5_vl(tokenizer):
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    text = text_kwargs(tokenizer)
    text["bos_token_id"] = tokenizer.pad_token_id
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": _mrope(16)}
    config = Qwen2_5_VLConfig(
        text_config={**text, "rope_parameters": rope},
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": TEXT_HIDDEN,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 56,
            "fullatt_block_indexes": [1],
        },
        **_qwen_ids(tokenizer),
    )
    pixels = {"size": _QWEN_PIXELS, "patch_size": 14, "merge_size": 2, "temporal_patch_size": 2}
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(**pixels),
        chat_template=_QWEN_TEMPLATE,
    )
    return Qwen2_5_VLForConditionalGeneration(config), processor


def build_qwen3_vl(tokenizer):
    from transformers import (
        Qwen2VLImageProcessor,
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    text = text_kwargs(tokenizer)
    for key in ("bos_token_id", "eos_token_id", "tie_word_embeddings"):
        text.pop(key)
    rope = {
        "rope_type": "default",
        "rope_theta": 10000.0,
        "mrope_section": _mrope(16),
        "mrope_interleaved": True,
    }
    config = Qwen3VLConfig(
        text_config={**text, "head_dim": 16, "rope_parameters": rope},
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": TEXT_HIDDEN,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "num_position_embeddings": 64,
            "deepstack_visual_indexes": [1],
        },
        tie_word_embeddings=False,
        **_qwen_ids(tokenizer),
    )
    pixels = {
        "size": {"shortest_edge": 32 * 32, "longest_edge": 96 * 96},
        "patch_size": 16,
        "merge_size": 2,
        "temporal_patch_size": 2,
    }
    processor = Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels),
        tokenizer=tokenizer,
        video_processor=Qwen3VLVideoProcessor(**pixels),
        chat_template=_QWEN_TEMPLATE,
    )
    return Qwen3VLForConditionalGeneration(config), processor


_GLM_TOKENS = TokenSpec(
    special=(
        "<|endoftext|>",
        "[gMASK]",
        "<sop>",
        "<|system|>",
        "<|user|>",
        "<|assistant|>",
        "<|end|>",
        "<|begin_of_image|>",
        "<|end_of_image|>",
        "<|image|>",
        "<|begin_of_video|>",
        "<|end_of_video|>",
        "<|video|>",
    ),
    bos=None,
    eos="<|end|>",
    pad="<|endoftext|>",
    unk=None,
)
_GLM_TEMPLATE = chat_template(
    start="[gMASK]<sop>",
    user=("<|user|>\n", ""),
    assistant=("<|assistant|>\n", "<|end|>"),
    system=("<|system|>\n", ""),
    image="<|begin_of_image|><|image|><|end_of_image|>",
)


def build_glm4v(tokenizer):
    from transformers import (
        Glm4vConfig,
        Glm4vForConditionalGeneration,
        Glm4vImageProcessor,
        Glm4vProcessor,
        Glm4vVideoProcessor,
    )

    ids = tokenizer.convert_tokens_to_ids
    text = text_kwargs(tokenizer)
    for key in ("bos_token_id", "eos_token_id", "tie_word_embeddings"):
        text.pop(key)
    rope = {
        "rope_type": "default",
        "rope_theta": 10000.0,
        "mrope_section": _mrope(8),  # GLM rotates half of each 16-wide head
        "partial_rotary_factor": 0.5,
    }
    config = Glm4vConfig(
        text_config={**text, "rope_parameters": rope},
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": TEXT_HIDDEN,
            "image_size": 28,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        image_token_id=ids("<|image|>"),
        video_token_id=ids("<|video|>"),
        image_start_token_id=ids("<|begin_of_image|>"),
        image_end_token_id=ids("<|end_of_image|>"),
        video_start_token_id=ids("<|begin_of_video|>"),
        video_end_token_id=ids("<|end_of_video|>"),
    )
    pixels = {"size": _QWEN_PIXELS, "patch_size": 14, "merge_size": 2, "temporal_patch_size": 2}
    processor = Glm4vProcessor(
        image_processor=Glm4vImageProcessor(**pixels),
        tokenizer=tokenizer,
        video_processor=Glm4vVideoProcessor(**pixels),
        chat_template=_GLM_TEMPLATE,
    )
    return Glm4vForConditionalGeneration(config), processor


# --- Idefics3 / SmolVLM: image split into tiles + a global view, one list of images per sample ---

_IDEFICS_SPECIAL = (
    "<|endoftext|>",
    "<|im_start|>",
    "<end_of_utterance>",
    "<fake_token_around_image>",
    "<image>",
    "<global-img>",
    *(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)),
)
_IDEFICS_TOKENS = TokenSpec(
    special=_IDEFICS_SPECIAL,
    bos="<|im_start|>",
    eos="<end_of_utterance>",
    pad="<|endoftext|>",
    unk=None,
)
_IDEFICS_TEMPLATE = chat_template(
    user=("User:", "<end_of_utterance>"),
    assistant=("Assistant: ", "<end_of_utterance>"),
    system=("System: ", "<end_of_utterance>"),
    image="<image>",
    start="<|im_start|>",
    separator="\n",
)
# 32 px tiles of 8 px patches, pixel-shuffled by 2: 4 tokens per tile; an image's longest edge
# is resized to 64 px, so it becomes at most 2x2 tiles plus the global view.
_IDEFICS_TILE = 32
_IDEFICS_PATCH = 8


def _idefics_parts(tokenizer, config_cls):
    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": _IDEFICS_TILE,
        "patch_size": _IDEFICS_PATCH,
    }
    config = config_cls(
        text_config={"model_type": "llama", **text_kwargs(tokenizer)},
        vision_config=vision,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scale_factor=2,
    )
    image_kwargs = {
        "size": {"longest_edge": 2 * _IDEFICS_TILE},
        "max_image_size": {"longest_edge": _IDEFICS_TILE},
        "do_image_splitting": True,
    }
    seq_len = (_IDEFICS_TILE // _IDEFICS_PATCH) ** 2 // 4
    return config, image_kwargs, seq_len


def build_idefics3(tokenizer):
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessor,
        Idefics3Processor,
    )

    config, image_kwargs, seq_len = _idefics_parts(tokenizer, Idefics3Config)
    processor = Idefics3Processor(
        image_processor=Idefics3ImageProcessor(**image_kwargs),
        tokenizer=tokenizer,
        image_seq_len=seq_len,
        chat_template=_IDEFICS_TEMPLATE,
    )
    return Idefics3ForConditionalGeneration(config), processor


def build_smolvlm(tokenizer):
    from transformers import (
        SmolVLMConfig,
        SmolVLMForConditionalGeneration,
        SmolVLMImageProcessor,
        SmolVLMProcessor,
        SmolVLMVideoProcessor,
    )

    config, image_kwargs, seq_len = _idefics_parts(tokenizer, SmolVLMConfig)
    processor = SmolVLMProcessor(
        image_processor=SmolVLMImageProcessor(**image_kwargs),
        tokenizer=tokenizer,
        video_processor=SmolVLMVideoProcessor(
            size={"longest_edge": 2 * _IDEFICS_TILE},
            max_image_size={"longest_edge": _IDEFICS_TILE},
        ),
        image_seq_len=seq_len,
        chat_template=_IDEFICS_TEMPLATE,
    )
    return SmolVLMForConditionalGeneration(config), processor


# --- LLaVA-OneVision: SigLIP + Qwen2, any-resolution tiles --------------------------------------

_ONEVISION_TOKENS = TokenSpec(
    special=(*QWEN_TOKENS.special, "<image>", "<video>"),
    bos=None,
    eos="<|im_end|>",
    pad="<|endoftext|>",
    unk=None,
)
_PINPOINTS = [[32, 32], [32, 64], [64, 32], [64, 64]]


def build_llava_onevision(tokenizer):
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
    )

    ids = tokenizer.convert_tokens_to_ids
    config = LlavaOnevisionConfig(
        text_config={"model_type": "qwen2", **text_kwargs(tokenizer)},
        vision_config={
            "model_type": "siglip_vision_model",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 16,  # 4 tokens per tile: anyres tiling still makes up to 5 tiles
        },
        image_token_index=ids("<image>"),
        video_token_index=ids("<video>"),
        image_grid_pinpoints=_PINPOINTS,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        vision_aspect_ratio="anyres_max_9",
    )
    size = {"height": 32, "width": 32}
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size=size, image_grid_pinpoints=_PINPOINTS),
        tokenizer=tokenizer,
        video_processor=LlavaOnevisionVideoProcessor(size=size),
        num_image_tokens=4,
        vision_feature_select_strategy="full",
        chat_template=chat_template(image="<image>\n", **_CHATML),
    )
    return LlavaOnevisionForConditionalGeneration(config), processor


# --- Mllama: cross-attention to image tiles, aspect-ratio ids ----------------------------------

_MLLAMA_TOKENS = TokenSpec(
    special=(
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eot_id|>",
        "<|image|>",
        "<|python_tag|>",
        "<|finetune_right_pad_id|>",
    ),
    bos="<|begin_of_text|>",
    eos="<|eot_id|>",
    pad="<|finetune_right_pad_id|>",
    unk=None,
)
_MLLAMA_TEMPLATE = chat_template(
    start="<|begin_of_text|>",
    user=("<|start_header_id|>user<|end_header_id|>\n\n", "<|eot_id|>"),
    assistant=("<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>"),
    system=("<|start_header_id|>system<|end_header_id|>\n\n", "<|eot_id|>"),
    image="<|image|>",
)


def build_mllama(tokenizer):
    from transformers import (
        MllamaConfig,
        MllamaForConditionalGeneration,
        MllamaImageProcessor,
        MllamaProcessor,
    )

    text = text_kwargs(tokenizer)
    text.pop("num_key_value_heads")
    config = MllamaConfig(
        text_config={**text, "num_key_value_heads": 2, "cross_attention_layers": [1]},
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_global_layers": 1,
            "attention_heads": 2,
            "vision_output_dim": 64,
            "image_size": 32,
            "patch_size": 8,
            "max_num_tiles": 2,
            "supported_aspect_ratios": [[1, 1], [1, 2], [2, 1]],
            "intermediate_layers_indices": [0],
        },
        image_token_index=tokenizer.convert_tokens_to_ids("<|image|>"),
    )
    processor = MllamaProcessor(
        image_processor=MllamaImageProcessor(size={"height": 32, "width": 32}, max_image_tiles=2),
        tokenizer=tokenizer,
        chat_template=_MLLAMA_TEMPLATE,
    )
    return MllamaForConditionalGeneration(config), processor


# --- Mistral3: Pixtral vision encoder (native resolution, [IMG_BREAK] rows) ---------------------

_MISTRAL_TOKENS = TokenSpec(
    special=(
        "<unk>",
        "<s>",
        "</s>",
        "<pad>",
        "[INST]",
        "[/INST]",
        "[IMG]",
        "[IMG_BREAK]",
        "[IMG_END]",
    ),
    bos="<s>",
    eos="</s>",
    pad="<pad>",
    unk="<unk>",
)


def build_mistral3(tokenizer):
    from transformers import (
        Mistral3Config,
        Mistral3ForConditionalGeneration,
        PixtralImageProcessor,
        PixtralProcessor,
    )

    config = Mistral3Config(
        text_config={"model_type": "mistral", **text_kwargs(tokenizer), "sliding_window": None},
        vision_config={
            "model_type": "pixtral",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "head_dim": 16,
            "image_size": 64,
            "patch_size": 8,
        },
        image_token_index=tokenizer.convert_tokens_to_ids("[IMG]"),
        spatial_merge_size=2,
        vision_feature_layer=-1,
    )
    processor = PixtralProcessor(
        image_processor=PixtralImageProcessor(size={"longest_edge": 64}, patch_size=8),
        tokenizer=tokenizer,
        patch_size=8,
        spatial_merge_size=2,
        chat_template=chat_template(
            start="<s>", user=("[INST]", "[/INST]"), assistant=("", "</s>"), image="[IMG]"
        ),
    )
    return Mistral3ForConditionalGeneration(config), processor


# --- InternVL: InternViT + Qwen2, pixel shuffle, <img>...</img> context tokens -----------------

_INTERNVL_TOKENS = TokenSpec(
    special=(*QWEN_TOKENS.special, "<img>", "</img>", "<IMG_CONTEXT>", "<video>"),
    bos=None,
    eos="<|im_end|>",
    pad="<|endoftext|>",
    unk=None,
    named={
        "start_image_token": "<img>",
        "end_image_token": "</img>",
        "context_image_token": "<IMG_CONTEXT>",
        "video_token": "<video>",
    },
)


def build_internvl(tokenizer):
    from transformers import (
        GotOcr2ImageProcessor,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLProcessor,
        InternVLVideoProcessor,
    )

    config = InternVLConfig(
        text_config={"model_type": "qwen2", **text_kwargs(tokenizer)},
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": [32, 32],
            "patch_size": [8, 8],
        },
        image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"),
        downsample_ratio=0.5,
        vision_feature_layer=-1,
    )
    size = {"height": 32, "width": 32}
    processor = InternVLProcessor(
        image_processor=GotOcr2ImageProcessor(size=size, crop_to_patches=True, max_patches=4),
        tokenizer=tokenizer,
        video_processor=InternVLVideoProcessor(size=size),
        image_seq_length=4,
        chat_template=tokenizer.chat_template,
    )
    return InternVLForConditionalGeneration(config), processor


# --- LFM2-VL: SigLIP2 (NaFlex) + LFM2 hybrid conv/attention ------------------------------------

_LFM2_TOKENS = TokenSpec(
    special=(
        "<|pad|>",
        "<|startoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<image>",
        "<|image_start|>",
        "<|image_end|>",
        "<|img_thumbnail|>",
        *(f"<|img_row_{r}_col_{c}|>" for r in range(1, 4) for c in range(1, 4)),
    ),
    bos="<|startoftext|>",
    eos="<|im_end|>",
    pad="<|pad|>",
    unk=None,
)


def build_lfm2_vl(tokenizer):
    from transformers import (
        Lfm2VlConfig,
        Lfm2VlForConditionalGeneration,
        Lfm2VlImageProcessor,
        Lfm2VlProcessor,
    )

    text = text_kwargs(tokenizer)
    text.pop("intermediate_size")
    config = Lfm2VlConfig(
        text_config={
            "model_type": "lfm2",
            **text,
            "intermediate_size": TEXT_INTERMEDIATE,
            "block_auto_adjust_ff_dim": False,
            "layer_types": ["conv", "full_attention"],
        },
        vision_config={
            "model_type": "siglip2_vision_model",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "patch_size": 8,
            "num_patches": 64,
            "vision_use_head": False,
        },
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        projector_hidden_size=64,
        downsample_factor=2,
        tie_word_embeddings=False,
    )
    processor = Lfm2VlProcessor(
        image_processor=Lfm2VlImageProcessor(
            encoder_patch_size=8,
            downsample_factor=2,
            tile_size=32,
            min_image_tokens=4,
            max_image_tokens=16,
            min_tiles=2,
            max_tiles=4,
        ),
        tokenizer=tokenizer,
        chat_template=chat_template(start="<|startoftext|>", image="<image>", **_CHATML),
    )
    return Lfm2VlForConditionalGeneration(config), processor


# --- Aya Vision: SigLIP + Cohere2, tiles with line breaks --------------------------------------

_AYA_TOKENS = TokenSpec(
    special=(
        "<PAD>",
        "<BOS_TOKEN>",
        "<|END_OF_TURN_TOKEN|>",
        "<|START_OF_TURN_TOKEN|>",
        "<|USER_TOKEN|>",
        "<|CHATBOT_TOKEN|>",
        "<|SYSTEM_TOKEN|>",
        "<image>",
        "<|START_OF_IMG|>",
        "<|END_OF_IMG|>",
        "<|IMG_PATCH|>",
        "<|IMG_LINE_BREAK|>",
        "TILE",
        "TILE_GLOBAL",
    ),
    bos="<BOS_TOKEN>",
    eos="<|END_OF_TURN_TOKEN|>",
    pad="<PAD>",
    unk=None,
)
_AYA_TEMPLATE = chat_template(
    start="<BOS_TOKEN>",
    user=("<|START_OF_TURN_TOKEN|><|USER_TOKEN|>", "<|END_OF_TURN_TOKEN|>"),
    assistant=("<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>", "<|END_OF_TURN_TOKEN|>"),
    system=("<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>", "<|END_OF_TURN_TOKEN|>"),
    image="<image>",
)


def build_aya_vision(tokenizer):
    from transformers import (
        AyaVisionConfig,
        AyaVisionForConditionalGeneration,
        AyaVisionProcessor,
        GotOcr2ImageProcessor,
    )

    text = text_kwargs(tokenizer)
    config = AyaVisionConfig(
        text_config={"model_type": "cohere2", **text, "head_dim": 16, "sliding_window": 4096},
        vision_config={
            "model_type": "siglip_vision_model",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        image_token_index=tokenizer.convert_tokens_to_ids("<|IMG_PATCH|>"),
        downsample_factor=2,
        vision_feature_layer=-1,
        tie_word_embeddings=False,
    )
    processor = AyaVisionProcessor(
        image_processor=GotOcr2ImageProcessor(
            size={"height": 32, "width": 32}, crop_to_patches=True, max_patches=4
        ),
        tokenizer=tokenizer,
        patch_size=8,
        img_size=32,
        downsample_factor=2,
        chat_template=_AYA_TEMPLATE,
    )
    return AyaVisionForConditionalGeneration(config), processor


@dataclass(frozen=True)
class FamilySpec:
    """A tiny family: its tokens, chat template and ``build(tokenizer) -> (model, processor)``."""

    tokens: TokenSpec
    template: str
    build: Callable[[Any], tuple]


EXTRA_FAMILIES: dict[str, FamilySpec] = {
    "qwen2_5_vl": FamilySpec(QWEN_TOKENS, _QWEN_TEMPLATE, build_qwen2_5_vl),
    "qwen3_vl": FamilySpec(QWEN_TOKENS, _QWEN_TEMPLATE, build_qwen3_vl),
    "glm4v": FamilySpec(_GLM_TOKENS, _GLM_TEMPLATE, build_glm4v),
    "idefics3": FamilySpec(_IDEFICS_TOKENS, _IDEFICS_TEMPLATE, build_idefics3),
    "smolvlm": FamilySpec(_IDEFICS_TOKENS, _IDEFICS_TEMPLATE, build_smolvlm),
    "llava_onevision": FamilySpec(
        _ONEVISION_TOKENS, chat_template(image="<image>\n", **_CHATML), build_llava_onevision
    ),
    "mllama": FamilySpec(_MLLAMA_TOKENS, _MLLAMA_TEMPLATE, build_mllama),
    "mistral3": FamilySpec(
        _MISTRAL_TOKENS,
        chat_template(
            start="<s>", user=("[INST]", "[/INST]"), assistant=("", "</s>"), image="[IMG]"
        ),
        build_mistral3,
    ),
    "internvl": FamilySpec(
        _INTERNVL_TOKENS, chat_template(image="<IMG_CONTEXT>\n", **_CHATML), build_internvl
    ),
    "lfm2_vl": FamilySpec(
        _LFM2_TOKENS,
        chat_template(start="<|startoftext|>", image="<image>", **_CHATML),
        build_lfm2_vl,
    ),
    "aya_vision": FamilySpec(_AYA_TOKENS, _AYA_TEMPLATE, build_aya_vision),
}
