"""Shared pytest fixtures. Tests never touch a model hub: everything is built by stic.testing.builders."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import importlib.util  # noqa: E402
import pathlib  # noqa: E402
from collections.abc import Callable  # noqa: E402

import pytest  # noqa: E402

from stic.testing import build_tiny_model, make_images  # noqa: E402

# tests/vllm/ need vLLM, which lives in its own environment: `make test-vllm` builds .venv-vllm
# and runs them there (CI runs both). Elsewhere they are not collected.
collect_ignore = [] if importlib.util.find_spec("vllm") else ["vllm"]


@pytest.fixture(scope="session")
def tiny_model_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[[str], pathlib.Path]:
    """``get(family)`` returns the folder of a tiny model of ``family``, built once per session.

    The folders are shared between tests: treat them as read-only.
    """
    cache: dict[str, pathlib.Path] = {}

    def get(family: str) -> pathlib.Path:
        if family not in cache:
            cache[family] = build_tiny_model(family, tmp_path_factory.mktemp(f"tiny_{family}"))
        return cache[family]

    return get


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A folder of six small PNG images (img_0000.png ... img_0005.png) of varied sizes."""
    out = tmp_path_factory.mktemp("images")
    make_images(out, 6, seed=0)
    return out
