"""vLLM's memory and adapters, decided by stic before an engine starts (no vLLM needed): the CPU KV
cache sized from the stage's needs and the memory left, the GPU share passed on, and adapters
that change more than the language model refused."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

import stic.demo
import stic.modeling.backends as backends
from stic.modeling.backends import (
    BackendError,
    KVGeometry,
    cpu_kv_cache_bytes,
    kv_geometry,
    modules_outside_language_model,
    open_vllm_engine,
    weight_count,
)

DEMO_MODEL = Path(stic.demo.__file__).parent / "tiny_llava"
GiB = 2**30
# LLaVA-1.5-7B's language model (Vicuna-7B): 32 layers, 32 heads of 128, no GQA, 4096 positions.
LLAVA_7B = {
    "architectures": ["LlavaForConditionalGeneration"],
    "text_config": {"num_hidden_layers": 32, "num_attention_heads": 32, "hidden_size": 4096,
                    "max_position_embeddings": 4096},
}  # fmt: skip


def test_kv_geometry_reads_the_language_models_config():
    llava = kv_geometry(LLAVA_7B)
    assert llava == KVGeometry(layers=32, kv_heads=32, head_dim=128, max_positions=4096)
    assert llava.token_bytes(2) == 2 * 32 * 32 * 128 * 2 == 512 * 1024  # K and V, bf16
    gqa = {"num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
           "hidden_size": 3584, "max_position_embeddings": 32768}  # fmt: skip
    assert kv_geometry(gqa) == KVGeometry(28, 4, 128, 32768)  # a top-level (text) config
    demo = kv_geometry(json.loads((DEMO_MODEL / "config.json").read_text()))
    assert demo == KVGeometry(layers=3, kv_heads=4, head_dim=32, max_positions=512)


def test_cpu_kv_cache_is_what_the_batch_needs_within_the_memory_left():
    llava = kv_geometry(LLAVA_7B)
    size = dict(max_len=4096, dtype_bytes=2, weights=14 * GiB)
    # One 4096-token sequence: 4096 x 0.5 MiB = 2 GiB; 8 of them 16 GiB; room (64 - 14) / 2.
    assert cpu_kv_cache_bytes(llava, batch=8, available=64 * GiB, **size) == 16 * GiB
    # Room (30 - 14) / 2 = 8 GiB caps it: vLLM schedules the batch in what there is.
    assert cpu_kv_cache_bytes(llava, batch=8, available=30 * GiB, **size) == 8 * GiB
    # A short context is rounded up to whole blocks of 256 tokens: 1000 -> 1024 tokens.
    short = {**size, "max_len": 1000}
    assert cpu_kv_cache_bytes(llava, batch=1, available=64 * GiB, **short) == 1024 * 512 * 1024
    with pytest.raises(BackendError, match=r"one 4096-token sequence needs 2\.00 GiB.*"
                       r"16\.00 GiB of memory are available.*VLLM_CPU_KVCACHE_SPACE"):  # fmt: skip
        cpu_kv_cache_bytes(llava, batch=8, available=16 * GiB, **size)  # room 1 GiB


def test_demo_model_weights_counted_from_the_headers():
    tensors = load_file(DEMO_MODEL / "model.safetensors")
    assert weight_count(DEMO_MODEL) == sum(t.numel() for t in tensors.values()) > 0


class _EngineStarted(Exception):
    """Raised by the fake vllm.LLM: the options are all the test needs."""


@pytest.fixture
def fake_vllm(monkeypatch):
    """A ``vllm`` whose ``LLM`` records its options and stops; its registry knows the demo's."""
    seen: list[dict] = []

    def llm(**options):
        seen.append(options)
        raise _EngineStarted

    registry = types.SimpleNamespace(get_supported_archs=lambda: ["LlavaForConditionalGeneration"])
    module = types.ModuleType("vllm")
    module.LLM, module.ModelRegistry = llm, registry
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    return seen


def test_cpu_engine_gets_a_kv_cache_sized_for_the_batch(fake_vllm, monkeypatch):
    monkeypatch.setattr(backends, "_on_cpu", lambda: True)
    monkeypatch.setattr(backends, "available_memory", lambda: 8 * GiB)
    with pytest.raises(_EngineStarted):
        open_vllm_engine(str(DEMO_MODEL), batch_size=64)
    (options,) = fake_vllm
    # float32 on CPU: 2 x 3 layers x 4 heads x 32 x 4 bytes = 3 KiB a token; 512 tokens x 64.
    assert options["kv_cache_memory_bytes"] == 512 * 3 * 1024 * 64 == 96 * 2**20
    assert "gpu_memory_utilization" not in options


def test_the_engine_is_asked_for_prefix_caching_unless_the_caller_says_otherwise(fake_vllm):
    with pytest.raises(_EngineStarted):
        open_vllm_engine(str(DEMO_MODEL))
    with pytest.raises(_EngineStarted):
        open_vllm_engine(str(DEMO_MODEL), enable_prefix_caching=False)
    assert [o["enable_prefix_caching"] for o in fake_vllm] == [True, False]


def test_engine_caches_are_read_from_the_started_engine():
    config = types.SimpleNamespace(
        cache_config=types.SimpleNamespace(enable_prefix_caching=False),
        scheduler_config=types.SimpleNamespace(encoder_cache_size=2048),
        model_config=types.SimpleNamespace(multimodal_config=None),  # a text-only model's
    )
    llm = types.SimpleNamespace(llm_engine=types.SimpleNamespace(vllm_config=config))
    assert backends.engine_caches(llm) == {"prefix_caching": False, "encoder_cache_tokens": 2048}


def test_pairs_gets_a_kv_cache_for_both_requests_of_each_image(fake_vllm, monkeypatch):
    from stic.config import EvalConfig, PairsConfig

    monkeypatch.setattr(backends, "_on_cpu", lambda: True)
    monkeypatch.setattr(backends, "available_memory", lambda: 8 * GiB)
    common = dict(model=str(DEMO_MODEL), images="i", backend="vllm", batch_size=4)
    for config in (
        PairsConfig(out="p.jsonl", **common),
        EvalConfig(out="e.json", data="d", **common),
    ):
        with pytest.raises(_EngineStarted):
            backends.BACKENDS["vllm"](config, None)
    # 512 tokens x 3 KiB (see above) per sequence: pairs holds 2 x 4 in one call, eval 4.
    assert [o["kv_cache_memory_bytes"] for o in fake_vllm] == [512 * 3 * 1024 * n for n in (8, 4)]


def test_user_settings_of_the_kv_cache_win(fake_vllm, monkeypatch):
    monkeypatch.setattr(backends, "_on_cpu", lambda: True)
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "2")  # vLLM reads it itself
    with pytest.raises(_EngineStarted):
        open_vllm_engine(str(DEMO_MODEL))
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE")
    with pytest.raises(_EngineStarted):
        open_vllm_engine(str(DEMO_MODEL), kv_cache_memory_bytes=123 * 2**20)
    assert "kv_cache_memory_bytes" not in fake_vllm[0]
    assert fake_vllm[1]["kv_cache_memory_bytes"] == 123 * 2**20


def test_gpu_engine_gets_the_configured_memory_share(fake_vllm, monkeypatch):
    from stic.config import EvalConfig

    monkeypatch.setattr(backends, "_on_cpu", lambda: False)
    config = EvalConfig(model=str(DEMO_MODEL), data="d", images="i", out="o", backend="vllm")
    assert config.vllm_gpu_memory == 0.9
    with pytest.raises(_EngineStarted):
        backends.BACKENDS["vllm"](config, None)
    with pytest.raises(_EngineStarted):
        backends.BACKENDS["vllm"](EvalConfig(**{**vars(config), "vllm_gpu_memory": 0.5}), None)
    assert [o["gpu_memory_utilization"] for o in fake_vllm] == [0.9, 0.5]
    assert "kv_cache_memory_bytes" not in fake_vllm[0]


def _lora(tmp_path: Path, target_modules) -> Path:
    """A real PEFT adapter on the demo model."""
    from peft import LoraConfig, get_peft_model

    from stic.modeling.models import load_model

    model, _ = load_model(str(DEMO_MODEL), device="cpu")
    config = LoraConfig(r=8, lora_alpha=16, target_modules=target_modules)
    folder = tmp_path / "adapter"
    get_peft_model(model, config).save_pretrained(folder)
    return folder


def test_stic_adapters_pass_and_one_reaching_the_vision_tower_is_refused(fake_vllm, tmp_path):
    from stic.modeling.models import add_lora, load_model

    model, _ = load_model(str(DEMO_MODEL), device="cpu")
    ours = add_lora(model, r=8, alpha=16, dropout=0.0, layer_names=["q_proj", "v_proj"])
    ours.save_pretrained(tmp_path / "ours")
    assert modules_outside_language_model(tmp_path / "ours") == []
    # Bare names, as a PEFT user writes them: CLIP's q_proj layers get LoRA too.
    bare = _lora(tmp_path, ["q_proj", "v_proj"])
    outside = modules_outside_language_model(bare)
    assert outside and all(".vision_tower." in name for name in outside)
    with pytest.raises(BackendError) as refused:
        open_vllm_engine(str(DEMO_MODEL), adapter=str(bare))
    message = str(refused.value)
    assert (
        "\n" not in message
        and f"changes {len(outside)} modules outside the language model" in message
    )
    assert "use --backend hf" in message
    assert fake_vllm == []  # refused before an engine started


def test_pickle_adapter_judged_by_its_config(tmp_path):
    folder = tmp_path / "old_adapter"
    folder.mkdir()
    config = {"r": 8, "target_modules": ["model.language_model.layers.0.self_attn.q_proj"],
              "modules_to_save": ["model.multi_modal_projector.linear_1"]}  # fmt: skip
    (folder / "adapter_config.json").write_text(json.dumps(config))
    (folder / "adapter_model.bin").write_bytes(b"")
    assert modules_outside_language_model(folder) == ["model.multi_modal_projector.linear_1"]


def test_projector_weights_in_safetensors_are_found(tmp_path):
    import torch

    folder = tmp_path / "a"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"r": 8}))
    keys = ["base_model.model.model.language_model.layers.0.mlp.up_proj.lora_A.weight",
            "base_model.model.model.multi_modal_projector.linear_1.weight"]  # fmt: skip
    save_file({k: torch.zeros(2, 2) for k in keys}, folder / "adapter_model.safetensors")
    assert modules_outside_language_model(folder) == [
        "base_model.model.model.multi_modal_projector.linear_1"
    ]


def test_memory_share_is_validated():
    from stic.config import EvalConfig, value_errors

    for share, ok in ((0.0, False), (1.5, False), (0.3, True), (1.0, True)):
        config = EvalConfig(model="m", data="d", images="i", out="o.json", vllm_gpu_memory=share)
        expected = [] if ok else [f"vllm_gpu_memory: {share} is not allowed (must be in (0, 1])"]
        assert value_errors(config) == expected
