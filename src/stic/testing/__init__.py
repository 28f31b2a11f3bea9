"""Tiny offline models, tokenizers and images for tests and examples (no hub access)."""

from stic.testing.builders import (
    FAMILIES,
    LLAVA_CHAT_TEMPLATE,
    build_tiny_model,
    build_tokenizer,
    make_images,
    write_pipeline_inputs,
)

__all__ = [
    "FAMILIES",
    "LLAVA_CHAT_TEMPLATE",
    "build_tiny_model",
    "build_tokenizer",
    "make_images",
    "write_pipeline_inputs",
]
