"""The backend seam (no vLLM needed): the HF backend's batching, seeds and order; asking for vLLM
without it installed; the loader-side fix of transformers-5 vision-tower names; the ETA line."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import stic.demo
from stic.config import EvalConfig, PairsConfig
from stic.modeling.backends import (
    BACKENDS,
    BackendError,
    HFBackend,
    length_order,
    vllm_lora_rank,
    vllm_model_folder,
)
from stic.modeling.generation import Request, generate
from stic.stages.evaluate import run_eval
from stic.stages.pairs import run_pairs
from stic.stages.runner import format_duration
from stic.testing import make_images

DEMO_MODEL = Path(stic.demo.__file__).parent / "tiny_llava"


@pytest.fixture(scope="module")
def demo():
    from stic.modeling.models import load_model

    model, processor = load_model(str(DEMO_MODEL), device="cpu")
    return model.eval(), processor


@pytest.fixture(scope="module")
def requests(tmp_path_factory):
    from PIL import Image

    paths = make_images(tmp_path_factory.mktemp("backend_images"), 5, seed=3)
    prompts = [
        "Describe the image with imaginative objects that may exist in the scene.",
        "What colour?",
        "Illustrate the details of the picture.",
        "How many?",
        "Summarize the visual content presented.",
    ]
    return [
        Request(p, Image.open(path).convert("RGB")) for p, path in zip(prompts, paths, strict=True)
    ]


def test_the_config_offers_every_backend_of_the_table():
    import typing

    hint = typing.get_type_hints(PairsConfig)["backend"]
    assert set(typing.get_args(hint)) == set(BACKENDS)


def test_hf_batches_by_prompt_length_and_answers_in_request_order(demo, requests):
    model, processor = demo
    order = length_order(processor, requests)
    assert order[:2] == [1, 3]  # the two shortest questions first
    backend = HFBackend(model, processor, batch_size=2)
    together = backend.generate(requests, max_new_tokens=6)
    alone = [generate(model, processor, [r], max_new_tokens=6)[0] for r in requests]
    assert [g.text for g in together] == [g.text for g in alone]


def test_hf_seeds_a_batch_with_its_first_requests_seed(demo, requests):
    model, processor = demo
    backend = HFBackend(model, processor, batch_size=8)
    options = dict(max_new_tokens=8, temperature=1.0)
    made = backend.generate(requests[:3], seeds=[11, 12, 13], **options)
    assert made == generate(model, processor, requests[:3], seed=11, **options)


def test_vllm_without_vllm_installed_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm now raises ImportError
    data = tmp_path / "vqa.jsonl"
    data.write_text(json.dumps({"id": "q", "image": "a.png", "question": "?", "answer": "a"}))
    make_images(tmp_path / "images", 1, seed=0)
    (tmp_path / "images" / "img_0000.png").rename(tmp_path / "images" / "a.png")
    config = EvalConfig(
        model=str(DEMO_MODEL),
        data=str(data),
        images=str(tmp_path / "images"),
        out=str(tmp_path / "eval.json"),
        backend="vllm",
    )
    with pytest.raises(BackendError, match=r"pip install 'stic\[vllm\]'"):
        run_eval(config)
    assert list(tmp_path.glob("eval.json*")) == []  # refused before anything was written


def test_a_model_object_cannot_go_to_vllm(tmp_path, demo, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", object())  # "installed"
    config = PairsConfig(
        model=str(DEMO_MODEL),
        images=str(make_images(tmp_path / "images", 1, seed=0)[0].parent),
        out=str(tmp_path / "pairs.jsonl"),
        backend="vllm",
    )
    with pytest.raises(BackendError, match="model object"):
        run_pairs(config, *demo)


def test_vllm_lora_ranks():
    assert [vllm_lora_rank(r) for r in (1, 8, 9, 128, 200)] == [8, 8, 16, 128, 256]
    with pytest.raises(BackendError):
        vllm_lora_rank(10_000)


def test_transformers5_vision_tower_names_get_the_hub_prefix_in_a_copy(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    tensors = {
        "vision_tower.embeddings.patch_embedding.weight": torch.ones(2),
        "vision_tower.vision_model.post_layernorm.weight": torch.ones(1),
        "language_model.model.norm.weight": torch.zeros(3),
    }
    save_file(tensors, folder / "model.safetensors")
    copy, cleanup = vllm_model_folder(folder)
    from safetensors.torch import load_file

    assert copy != folder and (copy / "config.json").read_text() == "{}"
    assert set(load_file(copy / "model.safetensors")) == {
        "vision_tower.vision_model.embeddings.patch_embedding.weight",
        "vision_tower.vision_model.post_layernorm.weight",
        "language_model.model.norm.weight",
    }
    cleanup()
    assert not copy.exists()
    # A checkpoint in the Hub layout is used as it is.
    save_file({"vision_tower.vision_model.x": torch.ones(1)}, folder / "model.safetensors")
    assert vllm_model_folder(folder)[0] == folder


def test_durations():
    assert [format_duration(s) for s in (4.4, 75, 3 * 3600 + 301)] == ["4s", "1m15s", "3h05m"]


def test_the_runner_logs_an_eta_after_the_first_batches(demo, tmp_path, caplog):
    images = make_images(tmp_path / "images", 5, seed=1)[0].parent
    config = PairsConfig(
        model=str(DEMO_MODEL),
        images=str(images),
        out=str(tmp_path / "pairs.jsonl"),
        batch_size=1,
        max_new_tokens=3,
    )
    with caplog.at_level(logging.INFO, logger="stic.stages.runner"):
        run_pairs(config, *demo)
    lines = [r.getMessage() for r in caplog.records]
    assert any("5 items to make" in line and "5 batches" in line for line in lines)
    eta = [line for line in lines if "ETA" in line]
    assert len(eta) == 1 and "over the first 3 batches; 2 items left" in eta[0]
