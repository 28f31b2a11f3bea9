"""Stage 1a (stic.stages.pairs): the per-image plan, what the model is asked, and what is written.

The plan and request tests use a scripted fake ``generate`` (no model); the file-level tests
(resume, conflicts, skipped images, batching) run the real tiny LLaVA model.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import stic.modeling.backends
import stic.stages.pairs
from stic.cli import main
from stic.config import PairsConfig
from stic.data.corruptions import apply_corruption
from stic.data.prompts import BAD_PROMPTS, GOOD_PROMPT, PLAIN_PROMPTS
from stic.data.schemas import PairRecord, read_pairs
from stic.modeling.generation import Generation, Request
from stic.runtime.images import load_image
from stic.runtime.manifests import StageConflict, read_manifest
from stic.stages.pairs import plan_pair, run_pairs
from stic.testing import make_images

IDS = [f"photo_{i:04d}.jpg" for i in range(400)]


def _config(**overrides) -> PairsConfig:
    values = dict(model="fake/model", images="unused", out="unused.jsonl", seed=7)
    values.update(overrides)
    return PairsConfig(**values)


def _plan_tuple(plan) -> tuple:
    return (plan.prompt, plan.rejected_kind, plan.rejected_prompt, plan.corruption)


# --- plan_pair: a pure function of (seed, id) ------------------------------------------------


def test_plan_is_deterministic_per_seed_and_id():
    config = _config()
    first = [_plan_tuple(plan_pair(i, config)) for i in IDS[:50]]
    again = [_plan_tuple(plan_pair(i, _config())) for i in IDS[:50]]
    assert first == again
    other_seed = [_plan_tuple(plan_pair(i, _config(seed=8))) for i in IDS[:50]]
    assert other_seed != first


def test_plan_does_not_depend_on_order_or_batch():
    config = _config()
    in_order = {i: _plan_tuple(plan_pair(i, config)) for i in IDS[:60]}
    shuffled = list(IDS[:60])
    np.random.default_rng(3).shuffle(shuffled)
    # Interleave planning with other ids (as another batch or shard would).
    for i in shuffled:
        plan_pair("unrelated-" + i, config)
        assert _plan_tuple(plan_pair(i, config)) == in_order[i]


def test_bad_prompt_prob_one_always_uses_a_bad_prompt_on_the_clean_image():
    config = _config(bad_prompt_prob=1.0)
    for i in IDS[:100]:
        plan = plan_pair(i, config)
        assert plan.rejected_kind == "bad_prompt"
        assert plan.rejected_prompt in BAD_PROMPTS
        assert plan.corruption is None
        assert plan.prompt in PLAIN_PROMPTS


def test_bad_prompt_prob_zero_always_corrupts_with_a_plain_prompt():
    config = _config(bad_prompt_prob=0.0)
    kinds = Counter()
    for i in IDS[:100]:
        plan = plan_pair(i, config)
        kinds[plan.rejected_kind] += 1
        assert plan.rejected_kind in ("corrupt_lowres", "corrupt_color")
        assert plan.rejected_prompt in PLAIN_PROMPTS
        expected = "lowres" if plan.rejected_kind == "corrupt_lowres" else "color_jitter"
        assert plan.corruption["kind"] == expected
        if expected == "lowres":
            assert plan.corruption == {"kind": "lowres", "short_side": 20}
        else:
            assert 0.5 <= plan.corruption["brightness_factor"] <= 1.5
            assert -0.3 <= plan.corruption["hue_shift"] <= 0.3
    assert kinds["corrupt_lowres"] > 20 and kinds["corrupt_color"] > 20


def test_branch_frequencies_match_the_paper():
    config = _config()
    plans = [plan_pair(i, config) for i in IDS]
    kinds = Counter(p.rejected_kind for p in plans)
    n = len(IDS)
    assert abs(kinds["bad_prompt"] / n - 0.5) < 0.08
    assert abs(kinds["corrupt_lowres"] / n - 0.25) < 0.07
    assert abs(kinds["corrupt_color"] / n - 0.25) < 0.07
    assert all(p.prompt in PLAIN_PROMPTS for p in plans)
    # The stored prompt is itself random: more than one plain prompt is used.
    assert len({p.prompt for p in plans}) == len(PLAIN_PROMPTS)


# --- what the model is asked: a scripted fake generate ------------------------------------


class FakeModel:
    def eval(self):
        return self


@pytest.fixture
def scripted(monkeypatch):
    """Replace the HF backend's generate: record every call, answer with unique texts."""
    calls: list[dict] = []
    by_text: dict[str, Request] = {}

    def fake_generate(
        model, processor, requests, *, max_new_tokens, temperature=0.0, top_p=1.0, seed=None
    ):
        calls.append(
            dict(
                requests=list(requests),
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                seed=seed,
            )
        )
        out = []
        for request in requests:
            text = f"gen-{len(by_text)}"
            by_text[text] = request
            finish = "length" if len(by_text) % 3 == 0 else "stop"
            out.append(Generation(text=text, finish=finish, num_tokens=5))
        return out

    monkeypatch.setattr(stic.modeling.backends, "generate", fake_generate)
    return calls, by_text


@pytest.fixture(scope="module")
def nested_images(tmp_path_factory) -> Path:
    """Five images, two of them in a subfolder (ids are relative paths)."""
    root = tmp_path_factory.mktemp("pair_images")
    make_images(root, 3, seed=11)
    make_images(root / "sub", 2, seed=12)
    return root


def _run_scripted(nested_images, tmp_path, scripted, **overrides):
    config = _config(
        images=str(nested_images),
        out=str(tmp_path / "pairs.jsonl"),
        batch_size=2,
        max_new_tokens=12,
        temperature=0.3,
        top_p=0.9,
        **overrides,
    )
    summary = run_pairs(config, model=FakeModel(), processor=None)
    records = [json.loads(line) for line in Path(config.out).read_text().splitlines()]
    return config, summary, records


def _pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _check_common(config, records, calls, by_text, nested_images):
    ids = sorted(r["id"] for r in records)
    assert ids == [
        "img_0000.png",
        "img_0001.png",
        "img_0002.png",
        "sub/img_0000.png",
        "sub/img_0001.png",
    ]
    # Every call: [chosen, rejected] per image, in record order; settings passed through.
    assert sum(len(c["requests"]) for c in calls) == 2 * len(records)
    for call in calls:
        assert 1 <= len(call["requests"]) <= config.batch_size
        assert call["max_new_tokens"] == 12
        assert call["temperature"] == 0.3
        assert call["top_p"] == 0.9
        assert isinstance(call["seed"], int)
    for record in records:
        PairRecord.from_dict(record)
        chosen_request = by_text[record["chosen"]]
        rejected_request = by_text[record["rejected"]]
        clean = load_image(nested_images / record["id"])
        assert record["image"] == record["id"]
        assert chosen_request.prompt == GOOD_PROMPT
        assert record["chosen_prompt"] == GOOD_PROMPT
        assert np.array_equal(_pixels(chosen_request.image), _pixels(clean))
        assert record["rejected_prompt"] == rejected_request.prompt
        assert record["prompt"] in PLAIN_PROMPTS
        plan = plan_pair(record["id"], config)
        assert record["prompt"] == plan.prompt
        assert record["rejected_kind"] == plan.rejected_kind
        assert record["corruption"] == plan.corruption
        assert record["model"] == "fake/model"
        assert record["sampling"] == {
            "temperature": 0.3,
            "top_p": 0.9,
            "max_new_tokens": 12,
            "seed": config.seed,
        }
        assert record["schema_version"] == 1
    return {
        r["id"]: (r, by_text[r["rejected"]], load_image(nested_images / r["id"])) for r in records
    }


def test_bad_prompt_branch_asks_a_bad_prompt_on_the_clean_image(nested_images, tmp_path, scripted):
    calls, by_text = scripted
    config, summary, records = _run_scripted(nested_images, tmp_path, scripted, bad_prompt_prob=1.0)
    assert summary.made == 5 and summary.details["rejected_kinds"] == {"bad_prompt": 5}
    for record, rejected, clean in _check_common(
        config, records, calls, by_text, nested_images
    ).values():
        assert record["rejected_kind"] == "bad_prompt"
        assert record["corruption"] is None
        assert rejected.prompt in BAD_PROMPTS
        assert np.array_equal(_pixels(rejected.image), _pixels(clean))


def test_lowres_branch_really_lowers_the_resolution(nested_images, tmp_path, scripted):
    """Reference-code defect 1: the corrupted branch must corrupt the pixels the model sees."""
    calls, by_text = scripted
    config, summary, records = _run_scripted(
        nested_images,
        tmp_path,
        scripted,
        bad_prompt_prob=0.0,
        lowres_prob=1.0,
        lowres_short_side=13,
    )
    assert summary.details["rejected_kinds"] == {"corrupt_lowres": 5}
    for record, rejected, clean in _check_common(
        config, records, calls, by_text, nested_images
    ).values():
        assert record["rejected_kind"] == "corrupt_lowres"
        assert record["corruption"] == {"kind": "lowres", "short_side": 13}
        assert rejected.prompt in PLAIN_PROMPTS
        assert min(rejected.image.size) == 13
        assert min(clean.size) > 13
        # Aspect ratio kept (to rounding of the long side).
        w, h = clean.size
        rw, rh = rejected.image.size
        assert abs(rw / rh - w / h) < 0.1


def test_color_branch_jitters_the_pixels_as_recorded(nested_images, tmp_path, scripted):
    calls, by_text = scripted
    config, summary, records = _run_scripted(
        nested_images, tmp_path, scripted, bad_prompt_prob=0.0, lowres_prob=0.0
    )
    assert summary.details["rejected_kinds"] == {"corrupt_color": 5}
    for record, rejected, clean in _check_common(
        config, records, calls, by_text, nested_images
    ).values():
        assert record["rejected_kind"] == "corrupt_color"
        assert record["corruption"]["kind"] == "color_jitter"
        assert rejected.prompt in PLAIN_PROMPTS
        assert rejected.image.size == clean.size
        assert not np.array_equal(_pixels(rejected.image), _pixels(clean))
        assert np.array_equal(
            _pixels(rejected.image), _pixels(apply_corruption(clean, record["corruption"]))
        )


def test_finish_reasons_and_truncation_count_come_from_the_generations(
    nested_images, tmp_path, scripted
):
    calls, by_text = scripted
    config, summary, records = _run_scripted(nested_images, tmp_path, scripted)
    lengths = 0
    for record in records:
        for side in ("chosen", "rejected"):
            number = int(record[side].split("-")[1]) + 1  # the fake's counter after answering
            expected = "length" if number % 3 == 0 else "stop"
            assert record[f"{side}_finish"] == expected
            lengths += expected == "length"
    assert summary.details["truncated_answers"] == lengths > 0


# --- the real tiny model ------------------------------------------------------------------


@pytest.fixture(scope="module")
def llava(tiny_model_factory) -> Path:
    return tiny_model_factory("llava")


@pytest.fixture(scope="module")
def six_images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("six")
    make_images(root, 6, seed=5)
    return root


def _real_config(model, images, out, **overrides) -> PairsConfig:
    values = dict(
        model=str(model),
        images=str(images),
        out=str(out),
        seed=3,
        batch_size=4,
        max_new_tokens=8,
        temperature=0.2,
    )
    values.update(overrides)
    return PairsConfig(**values)


@pytest.fixture(scope="module")
def resumed_run(llava, six_images, tmp_path_factory):
    """limit=3, then the full run on the same file: (config, first lines, summary, final lines)."""
    out = tmp_path_factory.mktemp("resume") / "pairs.jsonl"
    first = run_pairs(_real_config(llava, six_images, out, limit=3))
    assert first.made == 3
    first_lines = out.read_text().splitlines()
    config = _real_config(llava, six_images, out)
    summary = run_pairs(config)
    return config, first_lines, summary, out


def test_real_model_writes_one_valid_record_per_image(resumed_run, six_images):
    config, _, _, out = resumed_run
    pairs = read_pairs(out)
    assert sorted(p.id for p in pairs) == sorted(p.name for p in six_images.iterdir())
    for pair in pairs:
        assert pair.chosen_prompt == GOOD_PROMPT
        assert pair.prompt in PLAIN_PROMPTS
        assert pair.rejected_kind == plan_pair(pair.id, config).rejected_kind
        assert pair.model == config.model
        assert pair.chosen_finish in ("stop", "length")
    manifest = read_manifest(out)
    assert manifest["stage"] == "pairs" and manifest["status"] == "complete"
    assert manifest["summary"]["items"] == 6


def test_resume_writes_every_id_once_and_keeps_the_first_lines(resumed_run):
    _, first_lines, summary, out = resumed_run
    lines = out.read_text().splitlines()
    ids = [json.loads(line)["id"] for line in lines]
    assert len(ids) == len(set(ids)) == 6
    assert lines[:3] == first_lines
    assert summary.already_done == 3 and summary.made == 3


def test_rerun_when_complete_writes_nothing(resumed_run):
    config, _, _, out = resumed_run
    before = out.read_bytes()
    manifest_before = read_manifest(out)
    summary = run_pairs(config)
    assert summary.made == 0 and summary.already_done == 6
    assert out.read_bytes() == before
    assert read_manifest(out) == manifest_before


def test_changed_config_without_overwrite_is_refused(resumed_run, tmp_path):
    config, _, _, out = resumed_run
    copy = tmp_path / "pairs.jsonl"
    shutil.copy(out, copy)
    shutil.copy(out.with_name(out.name + ".manifest.json"), tmp_path / "pairs.jsonl.manifest.json")
    before = copy.read_bytes()
    with pytest.raises(StageConflict, match="other settings .*seed 3 -> 4"):
        run_pairs(replace(config, out=str(copy), seed=4))
    assert copy.read_bytes() == before
    # With overwrite the old output is replaced by the new seed's records.
    run_pairs(replace(config, out=str(copy), seed=4, overwrite=True, limit=2))
    records = read_pairs(copy)
    assert len(records) == 2
    assert all(r.sampling["seed"] == 4 for r in records)


def test_batch_size_does_not_change_the_decisions(llava, six_images, tmp_path):
    decisions = {}
    for size in (1, 4):
        out = tmp_path / f"b{size}.jsonl"
        run_pairs(_real_config(llava, six_images, out, batch_size=size, max_new_tokens=4))
        decisions[size] = {
            p.id: (p.prompt, p.rejected_kind, p.rejected_prompt, p.corruption)
            for p in read_pairs(out)
        }
    assert decisions[1] == decisions[4]
    assert len(decisions[1]) == 6


def test_unreadable_image_is_skipped_with_a_reason(llava, tmp_path):
    images = tmp_path / "images"
    make_images(images, 3, seed=9)
    (images / "bad.jpg").write_text("this is not a JPEG\n")
    out = tmp_path / "pairs.jsonl"
    summary = run_pairs(_real_config(llava, images, out, max_new_tokens=4))
    assert summary.items == 4 and summary.made == 3
    assert list(summary.bad_items) == ["bad.jpg"]
    assert "bad.jpg" in summary.bad_items["bad.jpg"]
    assert "not a recognised image" in summary.bad_items["bad.jpg"]
    assert sorted(p.id for p in read_pairs(out)) == ["img_0000.png", "img_0001.png", "img_0002.png"]
    assert read_manifest(out)["summary"]["bad_items"] == summary.bad_items


def test_missing_images_folder_fails_fast_through_the_cli(llava, tmp_path, capsys):
    code = main(
        [
            "pairs",
            "--model",
            str(llava),
            "--images",
            str(tmp_path / "nowhere"),
            "--out",
            str(tmp_path / "p.jsonl"),
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "image folder does not exist" in err and "nowhere" in err
    assert not (tmp_path / "p.jsonl").exists()


def test_missing_model_folder_fails_fast_through_the_cli(six_images, tmp_path, capsys):
    code = main(
        [
            "pairs",
            "--model",
            str(tmp_path / "no_model"),
            "--images",
            str(six_images),
            "--out",
            str(tmp_path / "p.jsonl"),
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "no_model" in err and "does not exist" in err
    assert not (tmp_path / "p.jsonl").exists()


def test_failed_start_with_a_wrong_model_path_does_not_block_the_corrected_run(
    llava, six_images, tmp_path, capsys
):
    """A typo in --model must not leave a manifest that makes the corrected rerun a 'conflict'."""
    out = tmp_path / "p.jsonl"
    common = [
        "--images",
        str(six_images),
        "--out",
        str(out),
        "--max_new_tokens",
        "4",
        "--limit",
        "2",
    ]
    assert main(["pairs", "--model", str(tmp_path / "typo"), *common]) == 1
    capsys.readouterr()
    code = main(["pairs", "--model", str(llava), *common])
    err = capsys.readouterr().err
    assert code == 0, err
    assert len(read_pairs(out)) == 2
