"""Fixtures of the vLLM backend tests (``make test-vllm`` runs them in .venv-vllm).

One vLLM engine for the session, with LoRA enabled, on the shipped demo model (a trained tiny
LLaVA-1.5: its greedy answers are words, so agreement with the HF backend means something).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The engine core in this process: no spawned process to start (seconds) or to leak on a failure.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

import stic.demo  # noqa: E402
from stic.demo.run import DemoSettings, demo_output, write_eval_split, write_unlabeled  # noqa: E402

DEMO_MODEL = str(Path(stic.demo.__file__).parent / "tiny_llava")


@pytest.fixture(scope="session")
def demo_model() -> str:
    return DEMO_MODEL


@pytest.fixture(scope="session")
def engine(demo_model):
    """A vLLM backend on the demo model, LoRA enabled (rank up to 8), without an adapter."""
    from stic.modeling.backends import open_vllm_engine

    backend = open_vllm_engine(demo_model, seed=0, lora=True, max_lora_rank=8, max_model_len=512)
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def hf_model(demo_model):
    from stic.modeling.models import load_model

    model, processor = load_model(demo_model, device="cpu")
    return model.eval(), processor


@pytest.fixture(scope="session")
def eval_files(tmp_path_factory) -> dict[str, Path]:
    """The demo's evaluation files for 12 scenes (84 questions, images, description prompts)."""
    settings = DemoSettings(eval_scenes=12)
    with demo_output(tmp_path_factory.mktemp("eval"), settings, overwrite=False) as output:
        return write_eval_split(output, settings)


@pytest.fixture(scope="session")
def unlabeled(tmp_path_factory) -> Path:
    """Eight unlabeled demo scenes (pixels only)."""
    settings = DemoSettings(unlabeled=8)
    with demo_output(tmp_path_factory.mktemp("unlabeled"), settings, overwrite=False) as output:
        return write_unlabeled(output, 0, settings)


@pytest.fixture(scope="session")
def adapter(tmp_path_factory, demo_model) -> str:
    """A rank-8 LoRA adapter on the demo model's language model, with weights large enough to
    change its answers (a trained adapter's B starts at zero; this one does not)."""
    from stic.modeling.models import add_lora, load_model

    model, _ = load_model(demo_model, device="cpu")
    model = add_lora(
        model, r=8, alpha=16, dropout=0.0, layer_names=["q_proj", "v_proj", "down_proj"]
    )
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    folder = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(str(folder))
    return str(folder)


def pytest_terminal_summary(terminalreporter):
    from tests.vllm.agreement import FIGURES

    if FIGURES:
        terminalreporter.section("vLLM vs HF agreement")
        for what, same, total in FIGURES:
            terminalreporter.write_line(f"{what}: {same}/{total} ({100 * same / total:.0f}%)")
