"""How pairs hands its requests to a backend (stic.stages.pairs.generation_calls): with a backend
that reuses an image's encoding within a call (``caches_by_image``, vLLM), one call per batch with
each image's chosen and bad-prompt rejected requests adjacent on the same image object; otherwise
(HF) one call per answer kind. Either way the same records. A fake backend records the calls."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stic.config import PairsConfig
from stic.data.prompts import GOOD_PROMPT
from stic.modeling.backends import HFBackend, VLLMBackend
from stic.modeling.generation import Generation
from stic.runtime.manifests import read_manifest
from stic.runtime.rng import item_seed
from stic.stages.pairs import generation_calls, plan_pair, run_pairs
from stic.testing import make_images


class RecordingBackend:
    """Answers each request with a text naming its prompt, image and seed; records every call."""

    def __init__(self, caches_by_image: bool):
        self.caches_by_image = caches_by_image
        self.calls: list[dict] = []

    def generate(self, requests, *, max_new_tokens, temperature=0.0, top_p=1.0, seeds=None):
        self.calls.append({"requests": list(requests), "seeds": list(seeds)})
        return [
            Generation(
                text=f"{r.prompt[:12]}|{r.image.size}|{r.image.getpixel((0, 0))}|{seed}",
                finish="length" if seed % 2 else "stop",
                num_tokens=3,
            )
            for r, seed in zip(requests, seeds, strict=True)
        ]

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("grouping_images")
    make_images(root, 8, seed=21)
    return root


def _config(images: Path, out: Path, **overrides) -> PairsConfig:
    values = dict(
        model="fake/model",
        images=str(images),
        out=str(out),
        seed=5,
        batch_size=3,
        max_new_tokens=9,
        temperature=0.7,
    )
    values.update(overrides)
    return PairsConfig(**values)


def _run(images, out, caches_by_image, **overrides):
    config = _config(images, out, **overrides)
    backend = RecordingBackend(caches_by_image)
    summary = run_pairs(config, backend=backend)
    records = [json.loads(line) for line in Path(config.out).read_text().splitlines()]
    return config, backend, summary, records


def test_a_caching_backend_gets_one_call_per_batch_with_same_image_requests_adjacent(
    images, tmp_path
):
    config, backend, summary, records = _run(images, tmp_path / "grouped.jsonl", True)
    ids = sorted(p.name for p in images.iterdir())
    kinds = {plan_pair(i, config).rejected_kind for i in ids}
    assert "bad_prompt" in kinds and kinds - {"bad_prompt"}  # both branches are exercised
    assert len(records) == 8
    assert len(backend.calls) == 3  # 8 images in batches of 3: one call each
    assert summary.details["generate_calls"] == 3
    assert summary.details["requests_grouped_by_image"] is True
    assert read_manifest(config.out)["summary"]["details"]["generate_calls"] == 3
    batches = [ids[start : start + 3] for start in range(0, 8, 3)]
    for call, batch in zip(backend.calls, batches, strict=True):
        requests, seeds = call["requests"], call["seeds"]
        assert len(requests) == 2 * len(batch)
        expected_seeds, position = [], 0
        corrupted = [i for i in batch if plan_pair(i, config).corruption is not None]
        for image_id in batch:
            plan = plan_pair(image_id, config)
            chosen = requests[position]
            assert chosen.prompt == GOOD_PROMPT
            expected_seeds.append(item_seed(config.seed, image_id, "generate-chosen"))
            position += 1
            if plan.corruption is None:  # the bad-prompt answer, right after, on the same image
                rejected = requests[position]
                assert rejected.prompt == plan.rejected_prompt
                assert rejected.image is chosen.image
                expected_seeds.append(item_seed(config.seed, image_id, "generate-rejected"))
                position += 1
        # Then the rejected answers on corrupted images, in batch order, on other pixels.
        tail = requests[position:]
        assert [r.prompt for r in tail] == [plan_pair(i, config).rejected_prompt for i in corrupted]
        clean = {id(r.image) for r in requests[:position]}
        assert all(id(r.image) not in clean for r in tail)
        expected_seeds += [item_seed(config.seed, i, "generate-rejected") for i in corrupted]
        assert seeds == expected_seeds


def test_grouped_and_per_kind_calls_make_the_same_records(images, tmp_path):
    _, grouped, _, grouped_records = _run(images, tmp_path / "grouped.jsonl", True)
    _, per_kind, summary, per_kind_records = _run(images, tmp_path / "per_kind.jsonl", False)
    assert grouped_records == per_kind_records
    # Each answer went back to its own record: its text names its own seed.
    config = _config(images, tmp_path / "x.jsonl")
    for record in grouped_records:
        for answer in ("chosen", "rejected"):
            seed = item_seed(config.seed, record["id"], f"generate-{answer}")
            assert record[answer].endswith(f"|{seed}")
            assert record[f"{answer}_finish"] == ("length" if seed % 2 else "stop")
    # Without the cache: two calls per batch, all chosen then all rejected.
    assert len(per_kind.calls) == 6
    assert summary.details["generate_calls"] == 6
    assert summary.details["requests_grouped_by_image"] is False
    assert all(r.prompt == GOOD_PROMPT for r in per_kind.calls[0]["requests"])
    assert not any(r.prompt == GOOD_PROMPT for r in per_kind.calls[1]["requests"])


def test_a_rerun_with_nothing_to_do_counts_no_calls(images, tmp_path):
    config, _, _, _ = _run(images, tmp_path / "p.jsonl", True)
    backend = RecordingBackend(True)
    summary = run_pairs(config, backend=backend)
    assert summary.up_to_date and backend.calls == []
    assert summary.details["generate_calls"] == 0
    assert summary.details["requests_grouped_by_image"] is None


def test_generation_calls_orders_requests_by_image():
    config = PairsConfig(model="m", images="i", out="o.jsonl", seed=5)
    ids = [f"img_{i}.png" for i in range(12)]
    plans = [plan_pair(i, config) for i in ids]
    (call,) = generation_calls(plans, grouped=True)
    assert sorted(call) == sorted([(a, i) for a in ("chosen", "rejected") for i in range(12)])
    corrupted = [i for i, p in enumerate(plans) if p.corruption is not None]
    assert 0 < len(corrupted) < 12
    assert call[-len(corrupted) :] == [("rejected", i) for i in corrupted]
    assert generation_calls(plans, grouped=False) == [
        [("chosen", i) for i in range(12)],
        [("rejected", i) for i in range(12)],
    ]


def test_which_backends_cache_by_image():
    assert HFBackend(None, None, 4).caches_by_image is False
    assert VLLMBackend(None, None, frozenset()).caches_by_image is False  # no caches known
    on = VLLMBackend(None, None, frozenset(), caches={"prefix_caching": True})
    assert on.caches_by_image is True
    assert on.with_adapter(None).caches == on.caches  # another adapter, the same engine
    encoder_only = {"prefix_caching": False, "encoder_cache_tokens": 8192}
    assert VLLMBackend(None, None, frozenset(), caches=encoder_only).caches_by_image is True
