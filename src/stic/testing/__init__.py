"""Tiny offline models, tokenizers and images for tests and examples (no hub access).

:data:`FAMILIES` are the three families every fast test runs on; :data:`ALL_FAMILIES` adds the
ones of :mod:`stic.testing.families`, run end to end by the slow family tests.
"""

from stic.testing.builders import (
    ALL_FAMILIES,
    FAMILIES,
    LLAVA_CHAT_TEMPLATE,
    build_tiny_model,
    build_tokenizer,
    make_images,
    slowed_training_cli,
    write_pipeline_inputs,
)

__all__ = [
    "ALL_FAMILIES",
    "FAMILIES",
    "LLAVA_CHAT_TEMPLATE",
    "build_tiny_model",
    "build_tokenizer",
    "make_images",
    "slowed_training_cli",
    "write_pipeline_inputs",
]
