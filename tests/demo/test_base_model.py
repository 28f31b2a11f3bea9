"""The demo's base model (stic.demo.base_model): built from nothing, reproducible, loadable by stic.

A miniature recipe keeps every build to seconds; the shipped model (stic/demo/tiny_llava) is checked
only when it is there.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from stic.data import prompts
from stic.demo import world
from stic.demo.base_model import (
    RECIPE_FILE,
    BaseModelRecipe,
    build_base_model,
    build_untrained,
    check_world,
    existence_questions,
    instruction_tune,
    labeled_samples,
    labeled_scenes,
    pretrain_vision,
    shipped_base_path,
    vision_targets,
)
from stic.runtime.rng import item_rng

# Every part of the real recipe, each as small as it goes: a build takes seconds.
TINY = BaseModelRecipe(
    vision_hidden=32,
    text_hidden=32,
    vision_layers=1,
    text_layers=1,
    vision_steps=2,
    vision_batch=4,
    labeled_scenes=2,
    tune_epochs=1,
    tune_batch=12,
)


def tiny_base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of a base model built with TINY, built once per session (shared with
    tests/test_demo.py through the session's base temp folder). Treat it as read-only."""
    out = tmp_path_factory.getbasetemp() / "tiny_demo_base"
    if not (out / RECIPE_FILE).exists():
        build_base_model(out, TINY, progress=False)
    return out


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> Path:
    return tiny_base_model(tmp_path_factory)


# ----------------------------------------------------------------------------- the built folder


@pytest.mark.slow
def test_built_folder_loads_with_transformers(tiny_base):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(tiny_base)
    processor = AutoProcessor.from_pretrained(tiny_base)
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert model.config.text_config.hidden_size == TINY.text_hidden
    assert model.config.vision_config.hidden_size == TINY.vision_hidden
    assert model.config.image_token_id == processor.tokenizer.convert_tokens_to_ids(
        prompts.IMAGE_TOKEN
    )
    # One image token per grid cell.
    assert model.config.image_seq_length == (TINY.image_size // TINY.patch_size) ** 2
    assert model.generation_config.eos_token_id == processor.tokenizer.eos_token_id
    assert model.generation_config.pad_token_id == processor.tokenizer.pad_token_id


@pytest.mark.slow
def test_built_folder_loads_with_stic(tiny_base):
    from stic.modeling.models import load_model

    model, processor = load_model(str(tiny_base), dtype="float32", device="cpu")
    assert next(model.parameters()).dtype == torch.float32
    assert processor.chat_template


@pytest.mark.slow
def test_only_safetensors_weights(tiny_base):
    names = {p.name for p in tiny_base.iterdir()}
    assert "model.safetensors" in names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl"))]


@pytest.mark.slow
def test_recipe_report(tiny_base):
    report = json.loads((tiny_base / RECIPE_FILE).read_text())
    assert report["recipe"] == asdict(TINY)
    assert BaseModelRecipe(**report["recipe"]) == TINY
    digest = hashlib.sha256((tiny_base / "model.safetensors").read_bytes()).hexdigest()
    assert report["weights_sha256"] == digest
    assert report["device"] == "cpu"
    assert report["parameters"] > 0
    assert report["instruction_tuning"]["samples"] == len(labeled_samples(TINY))
    probe = report["vision_probe"]
    assert set(probe) >= {"cell_accuracy", "object_accuracy", "background_accuracy"}
    assert all(0.0 <= v <= 1.0 for v in probe.values())


@pytest.mark.slow
def test_chat_template_renders_user_turn_with_image(tiny_base):
    from transformers import AutoProcessor

    from stic.modeling.chat import render_prompt

    processor = AutoProcessor.from_pretrained(tiny_base)
    text = render_prompt(processor, "What is it?", with_image=True)
    assert text == f"<s>USER: {prompts.IMAGE_TOKEN}\nWhat is it? ASSISTANT:"  # the BOS: written
    assert render_prompt(processor, "What is it?", with_image=False) == (
        "<s>USER: What is it? ASSISTANT:"
    )


@pytest.mark.slow
def test_build_is_reproducible(tiny_base, tmp_path):
    build_base_model(tmp_path / "again", TINY, progress=False)
    first = (tiny_base / "model.safetensors").read_bytes()
    second = (tmp_path / "again" / "model.safetensors").read_bytes()
    assert first == second
    report = json.loads((tmp_path / "again" / RECIPE_FILE).read_text())
    assert report["weights_sha256"] == hashlib.sha256(second).hexdigest()


# ----------------------------------------------------------------------------- training


@pytest.mark.slow
def test_vision_tower_frozen_during_instruction_tuning():
    torch.manual_seed(TINY.seed)
    model, processor = build_untrained(TINY)
    tower = model.model.vision_tower
    before_vision = {n: p.detach().clone() for n, p in tower.named_parameters()}
    probe = pretrain_vision(model, processor, TINY, progress=False)
    assert set(probe) >= {"cell_accuracy", "object_accuracy"}
    pretrained = {n: p.detach().clone() for n, p in tower.named_parameters()}
    # Vision pre-training trains the tower, then freezes it.
    assert any(not torch.equal(before_vision[n], pretrained[n]) for n in pretrained)
    assert not any(p.requires_grad for p in tower.parameters())
    rest = {n: p.detach().clone() for n, p in model.named_parameters() if "vision_tower" not in n}

    report = instruction_tune(model, processor, TINY, progress=False)

    assert report["samples"] == len(labeled_samples(TINY))
    assert report["steps"] >= 1
    for n, p in tower.named_parameters():
        assert torch.equal(p, pretrained[n]), f"{n} changed during instruction tuning"
    params = dict(model.named_parameters())
    changed = {n for n in rest if not torch.equal(params[n], rest[n])}
    assert any("multi_modal_projector" in n for n in changed)
    assert any("language_model" in n for n in changed)
    assert any("lm_head" in n for n in changed)


def test_vision_targets_of_a_hand_made_scene():
    scene = world.scene_from(
        ("large", "red", "circle", (0, 0)),
        ("small", "white", "cross", (2, 1)),
        ("large", "blue", "triangle", (1, 2)),
        background="gray",
        noise="plain",
    )
    targets = vision_targets(scene)
    # Classes: 0 empty, then 1 + colour index x 4 + shape index, in COLOURS / SHAPES order.
    expected_cls = [0] * 9
    expected_cls[0] = 1 + 0 * 4 + 0  # red circle
    expected_cls[2 * 3 + 1] = 1 + 6 * 4 + 3  # white cross
    expected_cls[1 * 3 + 2] = 1 + 2 * 4 + 2  # blue triangle
    assert targets["cls"].tolist() == expected_cls
    expected_size = [-100] * 9
    expected_size[0] = 1  # large
    expected_size[7] = 0  # small
    expected_size[5] = 1
    assert targets["size"].tolist() == expected_size
    # Background: sorted backgrounds (charcoal, gray) x 2 + sorted noises (noisy, plain).
    assert targets["background"].item() == 1 * 2 + 1
    other = vision_targets(
        world.scene_from(("small", "green", "square", (1, 1)), background="charcoal", noise="noisy")
    )
    assert other["background"].item() == 0
    assert other["cls"].tolist() == [0] * 4 + [1 + 1 * 4 + 1] + [0] * 4
    assert targets["cls"].dtype == targets["size"].dtype == torch.long


# ----------------------------------------------------------------------------- labeled data


def test_labeled_samples_cover_every_prompt_kind_and_a_vqa_conversation():
    recipe = BaseModelRecipe(labeled_scenes=5, qa_conversations=1, caption_prior_rate=0.0)
    scenes = labeled_scenes(recipe)
    samples = labeled_samples(recipe)
    assert len(scenes) == 5
    assert len(samples) == len(scenes) * (len(world.PROMPT_KINDS) + 1)
    by_id = {s.id: s for s in samples}
    assert len(by_id) == len(samples)
    for scene in scenes:
        for kind in world.PROMPT_KINDS:
            sample = by_id[f"{scene.id}-{kind}"]
            assert sample.image == f"{scene.id}.png"
            assert len(sample.conversations) == 2
            assert sample.conversations[0].value.startswith(prompts.IMAGE_TOKEN + "\n")
        for kind in ("plain", "good"):
            answer = by_id[f"{scene.id}-{kind}"].conversations[1].value
            assert world.score_description(answer, scene)["exact"], answer
        assert by_id[f"{scene.id}-good"].conversations[0].value.endswith(prompts.GOOD_PROMPT)

        vqa = by_id[f"{scene.id}-vqa"]
        turns = vqa.conversations
        assert [t.speaker for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        assert turns[0].value.startswith(prompts.IMAGE_TOKEN + "\n")
        assert all(prompts.IMAGE_TOKEN not in t.value for t in turns[1:])
        # The same generator as labeled_samples: after the per-kind samples, the VQA items.
        rng = item_rng(recipe.seed, scene.id, "base-instructions")
        ask = recipe.ask_absent_companions
        world.instruction_samples(scene, rng, ask_absent_companions=ask)
        items = world.vqa_items(scene, rng, ask) + existence_questions(scene, rng, ask)
        expected = {
            prompts.question_prompt(i["question"], i.get("choices")): i["answer"] for i in items
        }
        asked = {
            turns[k].value.removeprefix(prompts.IMAGE_TOKEN + "\n"): turns[k + 1].value
            for k in range(0, len(turns), 2)
        }
        assert asked == expected


def test_plain_captions_follow_the_prior_and_good_descriptions_stay_faithful():
    recipe = BaseModelRecipe(labeled_scenes=120, companion_rate=0.5, qa_conversations=2)
    assert recipe.caption_prior_rate == 1.0
    scenes = {s.id: s for s in labeled_scenes(recipe)}
    samples = {s.id: s for s in labeled_samples(recipe)}
    lacking = [s for s in scenes.values() if s.absent_companions()]
    assert len(lacking) > 10
    for scene in scenes.values():
        plain = world.score_description(samples[f"{scene.id}-plain"].conversations[1].value, scene)
        good = world.score_description(samples[f"{scene.id}-good"].conversations[1].value, scene)
        assert good["exact"]
        if scene.absent_companions():
            # Exactly the absent companion added, small, in a free cell; the rest is right.
            assert (plain["invented"], plain["invented_prior"]) == (1, 1)
            assert plain["recalled"] == plain["objects"]
        else:
            assert plain["exact"]
        assert {f"{scene.id}-vqa", f"{scene.id}-vqa1"} <= samples.keys()
        assert f"{scene.id}-vqa2" not in samples
    assert samples[f"{lacking[0].id}-vqa"] != samples[f"{lacking[0].id}-vqa1"]
    faithful = BaseModelRecipe(labeled_scenes=120, companion_rate=0.5, caption_prior_rate=0.0)
    for sample in labeled_samples(faithful):
        if sample.id.endswith("-plain"):
            scene = scenes[sample.id.removesuffix("-plain")]
            assert world.score_description(sample.conversations[1].value, scene)["exact"]


def test_existence_questions_ask_about_every_object_and_as_many_absent_ones():
    anchor_only = world.scene_from(
        ("large", "red", "circle", (0, 0)), ("small", "blue", "cross", (2, 2))
    )
    assert anchor_only.absent_companions() == [("yellow", "square")]
    for seed in range(20):
        rng = item_rng(seed, "q", "test")
        questions = existence_questions(anchor_only, rng)
        yes = [q["question"] for q in questions if q["answer"] == "yes"]
        no = [q["question"] for q in questions if q["answer"] == "no"]
        assert sorted(yes) == ["Is there a blue cross?", "Is there a red circle?"]
        assert len(no) == 2 and len(set(no)) == 2
        assert "Is there a yellow square?" in no  # the absent companion is always asked about
        for q in no:
            colour, shape = q.removeprefix("Is there a ").removesuffix("?").split()
            assert (colour, shape) not in anchor_only.kinds()
        assert len({q["id"] for q in questions}) == len(questions)


def test_existence_questions_can_leave_the_absent_companion_unasked():
    anchor_only = world.scene_from(
        ("large", "red", "circle", (0, 0)), ("small", "blue", "cross", (2, 2))
    )
    for seed in range(20):
        questions = existence_questions(anchor_only, item_rng(seed, "q", "test"), False)
        no = [q["question"] for q in questions if q["answer"] == "no"]
        assert len(no) == 2 and "Is there a yellow square?" not in no
        assert sum(q["answer"] == "yes" for q in questions) == 2


@pytest.mark.parametrize("ask", [False, True])
def test_labeled_questions_name_absent_companions_only_when_the_recipe_asks(ask):
    """By default the base model is never asked about an absent companion (as LLaVA's data
    almost never asks about absent objects); present companions are asked about either way."""
    recipe = BaseModelRecipe(labeled_scenes=60, qa_conversations=1, ask_absent_companions=ask)
    assert BaseModelRecipe().ask_absent_companions is False
    scenes = {s.id: s for s in labeled_scenes(recipe)}
    absent_named = present_named = 0
    for sample in labeled_samples(recipe):
        scene = scenes[sample.image.removesuffix(".png")]
        questions = " ".join(t.value for t in sample.conversations if t.speaker == "human")
        absent_named += any(f"{c} {s}" in questions for c, s in scene.absent_companions())
        present = scene.companions() - set(scene.absent_companions())
        present_named += any(f"{c} {s}" in questions for c, s in present)
    assert present_named > 10
    assert (absent_named > 10) if ask else (absent_named == 0)


def test_companion_rate_sets_how_often_companions_are_present():
    def rate(companion_rate: float) -> float:
        recipe = BaseModelRecipe(labeled_scenes=400, companion_rate=companion_rate)
        with_anchor = present = 0
        for scene in labeled_scenes(recipe):
            kinds = scene.kinds()
            anchors = kinds & world.PRIOR_COMPANIONS.keys()
            if anchors:
                with_anchor += 1
                present += all(world.PRIOR_COMPANIONS[a] in kinds for a in anchors)
        assert with_anchor > 150
        return present / with_anchor

    assert rate(0.95) == pytest.approx(0.95, abs=0.05)
    assert rate(0.5) == pytest.approx(0.5, abs=0.1)


def test_labeled_scenes_follow_the_recipe():
    recipe = BaseModelRecipe(labeled_scenes=3, image_size=60, seed=4)
    scenes = labeled_scenes(recipe)
    assert [s.id for s in scenes] == ["labeled-00000", "labeled-00001", "labeled-00002"]
    assert all(s.size == 60 and s.split == "labeled" for s in scenes)
    assert scenes == labeled_scenes(recipe)
    assert scenes != labeled_scenes(BaseModelRecipe(labeled_scenes=3, image_size=60, seed=5))


def test_labeled_samples_are_deterministic():
    recipe = BaseModelRecipe(labeled_scenes=2)
    assert labeled_samples(recipe) == labeled_samples(recipe)


# ----------------------------------------------------------------------------- shipped model

SHIPPED = shipped_base_path()
needs_shipped = pytest.mark.skipif(
    not (SHIPPED / "model.safetensors").exists(),
    reason="no shipped base model (stic/demo/tiny_llava)",
)


@needs_shipped
def test_shipped_model_is_small_and_documented_by_the_defaults():
    assert (SHIPPED / "model.safetensors").stat().st_size <= 20 * 1024 * 1024
    report = json.loads((SHIPPED / RECIPE_FILE).read_text())
    assert report["recipe"] == asdict(BaseModelRecipe())
    assert report["world"] == {"companion_contrast": world.COMPANION_CONTRAST}
    assert check_world(SHIPPED) == report["recipe"]
    digest = hashlib.sha256((SHIPPED / "model.safetensors").read_bytes()).hexdigest()
    assert report["weights_sha256"] == digest
    assert not [p for p in SHIPPED.iterdir() if p.suffix in (".bin", ".pt", ".pth")]


@pytest.mark.slow
@needs_shipped
def test_shipped_model_describes_a_test_scene_and_stops():
    from stic.modeling.generation import Request, generate
    from stic.modeling.models import load_model

    model, processor = load_model(str(SHIPPED), dtype="float32", device="cpu")
    scene = world.make_scenes(9001, "test", 1)[0]
    [out] = generate(
        model,
        processor,
        [Request(prompts.GOOD_PROMPT, world.render(scene))],
        max_new_tokens=120,
    )
    assert out.finish == "stop", out.text
    assert len(world.parse_description(out.text)) >= 1, out.text


# What docs/demo_results.md measured for the shipped base model on the 500 test scenes
# (plain-prompt descriptions, greedy): recall 84.6%, invented 13.5% of stated objects, 16.6% of
# descriptions claiming an absent companion. 40 scenes hold ~100 stated objects, so one
# standard error is ~3.5 points; the bounds below leave more than three.
SHIPPED_RECALL_MIN = 0.846 - 0.12
SHIPPED_INVENTED_MAX = 0.135 + 0.12
SHIPPED_PRIOR_INVENTED_MIN = 0.05  # the error STIC removes must be there to remove


@needs_shipped
@pytest.mark.slow
def test_shipped_model_describes_test_scenes_as_measured():
    """The shipped model, run through stic's own generate, sees the scenes: its plain-prompt
    descriptions of 40 test scenes (the demo's prompts) recall the objects and invent about as
    often as measured. A broken image path, chat template or decoding falls far outside."""
    from stic.modeling.generation import Request, generate
    from stic.modeling.models import load_model
    from stic.runtime.rng import item_rng

    model, processor = load_model(str(SHIPPED), dtype="float32", device="cpu")
    scenes = world.make_scenes(9001, "test", 40)
    requests = [
        Request(
            prompts.PLAIN_PROMPTS[item_rng(0, s.id, "plain").randrange(len(prompts.PLAIN_PROMPTS))],
            world.render(s),
        )
        for s in scenes
    ]
    outputs = generate(model, processor, requests, max_new_tokens=80)
    assert all(o.finish == "stop" for o in outputs)
    metrics = world.description_metrics([(o.text, s) for o, s in zip(outputs, scenes, strict=True)])
    assert metrics["recall"] >= SHIPPED_RECALL_MIN, metrics
    assert metrics["invented_rate"] <= SHIPPED_INVENTED_MAX, metrics
    assert metrics["invented_prior_rate"] >= SHIPPED_PRIOR_INVENTED_MIN, metrics


@pytest.mark.slow
def test_a_base_model_built_for_another_world_is_refused(tiny_base, tmp_path, monkeypatch):
    import shutil

    assert check_world(tiny_base) == asdict(TINY)
    copy = tmp_path / "base"
    shutil.copytree(tiny_base, copy)
    monkeypatch.setattr(world, "COMPANION_CONTRAST", world.COMPANION_CONTRAST / 2)
    with pytest.raises(ValueError, match="companion_contrast.*stic demo-model"):
        check_world(copy)
