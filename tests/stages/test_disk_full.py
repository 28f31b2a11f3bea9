"""A full disk while `stic dpo` saves a checkpoint: one clear line and exit 1, not a traceback.

The disk is filled by injection: the Trainer's checkpoint writes (``torch.save`` of the optimizer
state) fail with ENOSPC after writing part of the file, as a real full disk does.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import torch

from stic.cli import main
from stic.config import PairsConfig
from stic.runtime.manifests import read_manifest
from stic.stages.pairs import run_pairs
from stic.testing import make_images

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pairs_data(tiny_model_factory, tmp_path_factory) -> tuple[Path, Path, Path]:
    """(model, pairs.jsonl, images) from a real tiny pairs run."""
    model = tiny_model_factory("llava")
    root = tmp_path_factory.mktemp("disk_full")
    images = root / "images"
    make_images(images, 4, seed=3)
    pairs = root / "pairs.jsonl"
    run_pairs(
        PairsConfig(
            model=str(model), images=str(images), out=str(pairs), max_new_tokens=6, batch_size=4
        )
    )
    return model, pairs, images


def _fill_disk_on_checkpoint(monkeypatch) -> list[str]:
    """Make every ``torch.save`` write a few bytes, then fail with ENOSPC; returns the paths."""
    tried: list[str] = []

    def save(obj, f, *args, **kwargs):
        tried.append(str(f))
        if isinstance(f, (str, Path)):
            Path(f).write_bytes(b"\0" * 16)
        raise OSError(errno.ENOSPC, "No space left on device", str(f))

    monkeypatch.setattr(torch, "save", save)
    return tried


def test_disk_full_during_a_dpo_checkpoint_is_one_line_and_exit_1(
    pairs_data, tmp_path, monkeypatch, capsys
):
    model, pairs, images = pairs_data
    out = tmp_path / "stage1"
    tried = _fill_disk_on_checkpoint(monkeypatch)
    argv = ["dpo", "--model", str(model), "--pairs", str(pairs), "--images", str(images)]
    argv += ["--out", str(out), "--max-steps", "2", "--save-steps", "1", "--batch-size", "2"]
    argv += ["--lora-r", "4", "--lora-alpha", "8", "--filter-truncated", "false"]
    code = main(argv)
    err = capsys.readouterr().err
    assert tried, "no checkpoint save was attempted"
    # The line may follow the Trainer's unfinished progress bar (tqdm ends it with no newline).
    problems = [line[line.index("stic dpo") :] for line in err.splitlines() if "stic dpo" in line]
    assert code == 1, err[-2000:]
    assert "Traceback" not in err
    assert len(problems) == 1, err[-3000:]
    assert problems[0].startswith("stic dpo: error: ") and "No space left on device" in problems[0]
    # A failed run leaves nothing that claims to be a run under way or a usable checkpoint.
    manifest = read_manifest(out)
    assert manifest is None or manifest["status"] != "running", json.dumps(manifest)[:300]
