"""What `stic dpo` reads: quality filters before training, and other tools' pair files."""

from __future__ import annotations

import json

import pytest

from stic.cli import main
from stic.config import DPOConfig
from stic.runtime.files import read_jsonl
from stic.runtime.manifests import read_manifest
from stic.stages.dpo import DROPPED, run_dpo
from stic.testing import make_images


def _pair(i: int, image: str, chosen: str, rejected: str, **extra) -> dict:
    return {
        "id": f"p{i}",
        "image": image,
        "prompt": "Summarize the visual content presented.",
        "chosen": chosen,
        "rejected": rejected,
        "rejected_kind": "bad_prompt",
        "chosen_prompt": "good",
        "rejected_prompt": "bad",
        **extra,
    }


@pytest.fixture
def images(tmp_path):
    return [p.name for p in make_images(tmp_path / "images", 3, seed=1)]


def _config(tmp_path, pairs, **overrides) -> DPOConfig:
    values = dict(
        model=overrides.pop("model"),
        pairs=str(pairs),
        images=str(tmp_path / "images"),
        out=str(tmp_path / "stage1"),
        max_steps=1,
        batch_size=2,
        grad_accum=1,
        lora_r=2,
        lora_alpha=4,
    )
    return DPOConfig(**{**values, **overrides})


def test_filtered_pairs_are_dropped_counted_and_kept_aside(tiny_model_factory, tmp_path, images):
    rows = [
        _pair(0, images[0], "A red circle on grey.", "A red circle, a cat and a tree."),
        _pair(1, images[1], "A blue square.", "A blue square near a dog."),
        _pair(2, images[2], "Same words.", "Same words."),
        _pair(3, images[0], "", "Something."),
        _pair(4, images[1], "A long cut answer", "Another", chosen_finish="length"),
        _pair(5, images[2], "I'm sorry, I cannot see the image.", "A boat."),
    ]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = run_dpo(_config(tmp_path, pairs, model=str(tiny_model_factory("llava"))))
    assert summary.details["pairs"] == 2
    assert summary.details["dropped"] == {
        "identical": 1, "empty": 1, "truncated": 1, "refusal": 1, "near_duplicate": 0
    }  # fmt: skip
    dropped = read_jsonl(tmp_path / "stage1" / DROPPED)
    assert [(d["reason"], d["id"]) for d in dropped] == [
        ("identical", "p2"), ("empty", "p3"), ("truncated", "p4"), ("refusal", "p5")
    ]  # fmt: skip
    assert read_manifest(tmp_path / "stage1")["summary"]["details"]["dropped"]["identical"] == 1


def test_all_pairs_filtered_is_a_clear_error(tiny_model_factory, tmp_path, images, capsys):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps(_pair(0, images[0], "Same.", "Same.")) + "\n")
    code = main(
        ["dpo", "--model", str(tiny_model_factory("llava")), "--pairs", str(pairs),
         "--images", str(tmp_path / "images"), "--out", str(tmp_path / "stage1")]
    )  # fmt: skip
    assert code == 1
    assert "no pairs left after the quality filters" in capsys.readouterr().err
    # Switched off, the same pair trains.
    config = _config(tmp_path, pairs, model=str(tiny_model_factory("llava")), filter_identical=False,
                     filter_near_duplicates=False, batch_size=1, overwrite=True)  # fmt: skip
    assert run_dpo(config).details["pairs"] == 1


def test_dpo_trains_on_the_reference_codes_pair_file(tiny_model_factory, tmp_path, images):
    reference = [
        {
            "image": name,
            "image_corruption": i == 1,
            "hallu_prompt": "Describe the image with imaginative objects that may exist in the scene.",
            "chosen": [{"role": "user", "content": "<image>\nIllustrate the details of the picture."},
                       {"role": "assistant", "content": f"Shape number {i} on a background."}],
            "rejected": [{"role": "user", "content": "<image>\nIllustrate the details of the picture."},
                         {"role": "assistant", "content": f"Shape {i}, a castle and three horses."}],
        }
        for i, name in enumerate(images)
    ]  # fmt: skip
    path = tmp_path / "stic_reference.json"
    path.write_text(json.dumps(reference))
    summary = run_dpo(_config(tmp_path, path, model=str(tiny_model_factory("llava"))))
    assert summary.details["pairs"] == 3 and summary.details["global_step"] == 1
    assert (tmp_path / "stage1" / "adapter_model.safetensors").exists()
