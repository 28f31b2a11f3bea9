"""benchmarks/dpo_vs_trl.py gives TRL's DPOTrainer and stic's trainer the same job: on the same
pairs their step-0 losses are equal to float32 rounding (issue 23's "step-0 losses equal")."""

from __future__ import annotations

import importlib
import math
from pathlib import Path

import pytest

from stic.testing import build_tiny_model

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"

# Both trainers run in float32 on the same token ids (prompt, answer and the tokens scored), so
# their per-token log-probs differ only in rounding (TRL's chunked log-softmax against stic's
# per-row one: <= 6e-7 of values ~7 measured, about one float32 ulp), the DPO term is exactly
# log 2 in both (the adapter starts at zero) and the NLL term is a mean of those log-probs:
# ~1e-7 relative on a loss of ~4 (measured here: bit-equal). 1e-6 allows ~8 float32 ulps of the
# loss and still fails when one trainer runs under bf16 autocast (TRL's default bf16=True gave
# 3e-5 relative on the tiny llava, 8e-6 to 8e-5 on the benchmark's shapes; the tiny qwen2_vl
# moves only 2e-7 under it, so that case checks the M-RoPE inputs' tokens, not the precision).
REL_TOL = 1e-6


@pytest.fixture
def bench(monkeypatch):
    pytest.importorskip("trl")
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the script imports its sibling measure.py
    return importlib.import_module("dpo_vs_trl")


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_trl_and_stic_start_from_the_same_loss(bench, family, tmp_path):
    folder = build_tiny_model(family, tmp_path / "model")
    bench.template_writes_bos(folder)
    images = tmp_path / "images"
    pairs = bench.make_pairs(2, 32, images)

    def loader():
        return bench.load(folder)

    trl = bench.run_trl(loader, pairs, images, 2, 1, tmp_path / "trl")
    stic = bench.run_stic(loader, pairs, images, 2, 1, tmp_path / "stic", "off")

    # log 2 (policy == reference at step 0) + alpha x the chosen answer's mean NLL (> 0)
    assert stic["first_loss"] > math.log(2)
    assert trl["first_loss"] == pytest.approx(stic["first_loss"], rel=REL_TOL, abs=0)
