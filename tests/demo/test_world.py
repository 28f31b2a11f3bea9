"""The synthetic world: seeded scenes, renders, the text grammar and its exact scorers."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from stic.data.prompts import GOOD_PROMPT, IMAGE_TOKEN
from stic.data.schemas import EvalItem, InstructSample
from stic.data.scoring import answer_index
from stic.demo import world
from stic.demo.world import Claim, Scene

ANCHORS = sorted(world.PRIOR_COMPANIONS)


# red circle (anchor) without its yellow square companion, plus a blue cross.
ANCHOR_SCENE = world.scene_from(
    ("large", "red", "circle", (0, 0)), ("small", "blue", "cross", (2, 2))
)


@pytest.fixture(scope="module")
def scenes() -> dict[str, list[Scene]]:
    return {split: world.make_scenes(7, split, 2000) for split in ("labeled", "test")}


def test_same_seed_same_scene_image_and_texts():
    a, b = world.make_scenes(3, "unlabeled", 5), world.make_scenes(3, "unlabeled", 5)
    assert a == b
    assert world.make_scenes(4, "unlabeled", 5) != a
    for s, t in zip(a, b, strict=True):
        assert world.render(s).tobytes() == world.render(t).tobytes()
        r1, r2 = random.Random(9), random.Random(9)
        texts1 = [
            world.describe_brief(s, r1),
            world.describe_imaginative(s, r1),
            world.vqa_items(s, r1),
        ]
        texts2 = [
            world.describe_brief(t, r2),
            world.describe_imaginative(t, r2),
            world.vqa_items(t, r2),
        ]
        assert texts1 == texts2
        samples1 = world.instruction_samples(s, random.Random(1))
        assert samples1 == world.instruction_samples(t, random.Random(1))


def test_scene_invariants(scenes):
    for scene in scenes["labeled"][:500] + scenes["test"][:500]:
        assert 1 <= len(scene.objects) <= 3
        cells = [o.cell for o in scene.objects]
        assert len(set(cells)) == len(cells) and cells == sorted(cells)
        assert len(scene.kinds()) == len(scene.objects)
        assert sum(o.kind in world.PRIOR_COMPANIONS for o in scene.objects) <= 1
        for obj in scene.objects:
            assert all(
                abs(c - b) <= world.COLOUR_JITTER
                for c, b in zip(obj.rgb, world.COLOURS[obj.colour], strict=True)
            )


@pytest.mark.parametrize("split, expected", [("labeled", 0.89), ("test", 0.35)])
def test_companion_rate_given_anchor_follows_the_split(scenes, split, expected):
    with_anchor = [s for s in scenes[split] if s.kinds() & set(ANCHORS)]
    assert len(with_anchor) > 900
    rate = sum(not s.absent_companions() for s in with_anchor) / len(with_anchor)
    assert abs(rate - expected) < 0.05
    for scene in with_anchor:
        by_kind = {o.kind: o for o in scene.objects}
        anchor = next(k for k in by_kind if k in world.PRIOR_COMPANIONS)
        companion = by_kind.get(world.PRIOR_COMPANIONS[anchor])
        if companion is not None:
            assert (by_kind[anchor].size_class, companion.size_class) == ("large", "small")


def test_unknown_split_is_rejected():
    with pytest.raises(ValueError, match="split"):
        world.sample_scene(random.Random(0), "train")


def test_render_puts_each_colour_at_its_object_centre_and_companions_faint(scenes):
    faint = 0
    for scene in scenes["test"][:200]:
        image = world.render(scene)
        assert image.size == (scene.size, scene.size) and 48 <= scene.size <= 64
        for obj in scene.objects:
            pixel = image.getpixel(world.object_centre(scene, obj))
            if obj.kind in scene.companions():
                # An anchor's companion: COMPANION_CONTRAST of the way from the background.
                background = world.BACKGROUNDS[scene.background]
                expected = [
                    round(b + world.COMPANION_CONTRAST * (c - b))
                    for c, b in zip(obj.rgb, background, strict=True)
                ]
                assert list(pixel) == expected
                faint += 1
            else:
                assert world.nearest_colour(pixel) == obj.colour
    assert faint > 10


def test_companion_is_faint_only_beside_its_anchor():
    anchored = world.scene_from(
        ("large", "red", "circle", (0, 0)), ("small", "yellow", "square", (2, 2))
    )
    alone = world.scene_from(("small", "yellow", "square", (2, 2)))
    assert anchored.companions() == {("yellow", "square")}
    assert alone.companions() == set()
    centre = world.object_centre(alone, alone.objects[0])
    assert world.nearest_colour(world.render(alone).getpixel(centre)) == "yellow"
    assert world.render(anchored).getpixel(centre) != world.render(alone).getpixel(centre)


def test_render_size_64():
    scene = world.sample_scene(random.Random(0), "test", size=63)
    image = world.render(scene)
    assert image.size == (63, 63)
    for obj in scene.objects:
        if obj.kind not in scene.companions():
            centre = world.object_centre(scene, obj)
            assert world.nearest_colour(image.getpixel(centre)) == obj.colour


def test_detailed_description_round_trips(scenes):
    for scene in scenes["test"][:300]:
        text = world.describe_detailed(scene)
        claims = world.parse_description(text)
        truth = [Claim(o.shape, o.colour, o.size_class, o.position) for o in scene.objects]
        assert claims == truth
        score = world.score_description(text, scene)
        assert score["exact"] and score["invented"] == 0 and score["recalled"] == len(scene.objects)


def test_detailed_description_text():
    assert world.describe_detailed(ANCHOR_SCENE) == (
        "The image shows two objects on a plain gray background. "
        "There is a large red circle at the top left. There is a small blue cross at the bottom right."
    )


def test_imaginative_descriptions_invent_mostly_the_absent_companion(scenes):
    rng = random.Random(0)
    prior_scenes = [s for s in scenes["test"] if s.absent_companions()][:300]
    scores = [world.score_description(world.describe_imaginative(s, rng), s) for s in prior_scenes]
    assert all(s["invented"] >= 1 for s in scores)
    assert sum(s["invented_prior"] >= 1 for s in scores) / len(scores) > 0.9
    for scene in scenes["test"][:300]:
        score = world.score_description(world.describe_imaginative(scene, rng), scene)
        assert 1 <= score["invented"] <= 2 and score["recalled"] == len(scene.objects)


def test_brief_descriptions_are_a_true_subset(scenes):
    rng = random.Random(0)
    pairs = [(world.describe_brief(s, rng), s) for s in scenes["labeled"][:300]]
    for text, scene in pairs:
        score = world.score_description(text, scene)
        assert score["invented"] == 0 and score["recalled"] <= len(scene.objects)
        assert all(c.position is None for c in world.parse_description(text))
    metrics = world.description_metrics(pairs)
    assert metrics["invented_rate"] == 0 and metrics["recall"] == 1 and metrics["exact_rate"] == 1


def test_garbled_text_scores_sensibly():
    text = (
        "The image shows tw on a plain. There is a large red circ at the top. There is a "
        "small yellow square at the middle. There is a blue triangle, there is no purple cross, "
        "a red circle at the bottom left, cross cross"
    )
    claims = world.parse_description(text)
    assert claims == [
        Claim("square", "yellow", "small", None),
        Claim("triangle", "blue", None, None),
        Claim("circle", "red", None, "bottom left"),
        Claim("cross"),
        Claim("cross"),
    ]
    score = world.score_description(text, ANCHOR_SCENE)
    assert score == {
        "stated": 5,
        "invented": 2,  # yellow square (the absent companion), blue triangle
        "wrong_color": 0,
        "wrong_shape": 1,  # blue triangle: blue is in the scene, on a cross
        "invented_prior": 1,
        "wrong_size": 0,
        "wrong_position": 1,  # red circle is at the top left
        "recalled": 1,  # red circle; bare "cross" names no colour
        "objects": 2,
        "exact": False,
    }
    assert world.score_description("", ANCHOR_SCENE)["stated"] == 0
    assert world.score_description("nothing here", ANCHOR_SCENE)["recalled"] == 0


def test_exact_allows_unstated_attributes_but_not_extra_or_wrong_claims():
    score = world.score_description
    assert score("A red circle and a blue cross.", ANCHOR_SCENE)["exact"]
    assert not score("A red circle.", ANCHOR_SCENE)["exact"]
    assert not score("A small red circle and a blue cross.", ANCHOR_SCENE)["exact"]
    assert not score("A red circle, a red circle and a blue cross.", ANCHOR_SCENE)["exact"]
    wrong = score("A green circle and a blue square.", ANCHOR_SCENE)
    assert (wrong["invented"], wrong["wrong_color"], wrong["wrong_shape"]) == (2, 1, 1)


def test_description_metrics_against_hand_counts():
    other = world.scene_from(("large", "green", "square", (1, 1)))
    pairs = [
        (
            "There is a large red circle at the top left. There is a small yellow square.",
            ANCHOR_SCENE,
        ),
        ("A green square and a green circle and a purple square.", other),
        ("", other),
    ]
    metrics = world.description_metrics(pairs)
    # claims: 2 + 3 + 0 = 5; invented: yellow square, green circle, purple square = 3;
    # wrong colour: purple square; wrong shape: green circle; recalled 1 + 1 of 2 + 1 + 1.
    assert metrics == {
        "invented_rate": pytest.approx(3 / 5),
        "wrong_color_rate": pytest.approx(1 / 5),
        "wrong_shape_rate": pytest.approx(1 / 5),
        "recall": pytest.approx(2 / 4),
        "exact_rate": 0.0,
        "invented_any_rate": pytest.approx(2 / 3),
        "invented_prior_rate": pytest.approx(1 / 3),
        "n": 3,
    }
    assert world.description_metrics([])["n"] == 0


def test_vqa_answers_are_right_for_the_scene(scenes):
    rng = random.Random(0)
    seen = Counter()
    for scene in scenes["test"][:400]:
        items = world.vqa_items(scene, rng)
        by_type = {item["type"]: item for item in items}
        seen.update(list(by_type))
        assert len({i["id"] for i in items}) == len(items)
        assert all(EvalItem.from_dict(i).id == i["id"] for i in items)  # the eval file's shape
        assert by_type["count"]["answer"] == str(len(scene.objects))
        kinds = {f"{c} {s}" for c, s in scene.kinds()}
        assert by_type["exists_present"]["question"][len("Is there a ") : -1] in kinds
        assert by_type["exists_present"]["answer"] == "yes"
        absent = by_type.get("exists_absent_prior") or by_type["exists_absent"]
        assert absent["question"][len("Is there a ") : -1] not in kinds and absent["answer"] == "no"
        if "exists_absent_prior" in by_type:
            companion = " ".join(scene.absent_companions()[0])
            assert len(scene.absent_companions()) == 1
            assert by_type["exists_absent_prior"]["question"] == f"Is there a {companion}?"
        by_position = {f"{o.colour} {o.shape}": o.position for o in scene.objects}
        asked = by_type["position"]["question"][len("Where is the ") : -1]
        assert by_type["position"]["answer"] == by_position[asked]
        # Colour / shape questions are asked only about a shape / colour unique in the scene.
        shape_counts = Counter(o.shape for o in scene.objects)
        assert ("colour" in by_type) == (1 in shape_counts.values())
        if "colour" in by_type:
            shape = by_type["colour"]["question"].split()[-1].rstrip("?")
            assert shape_counts[shape] == 1
            assert (by_type["colour"]["answer"], shape) in scene.kinds()
        if "shape" in by_type:
            colour = by_type["shape"]["question"].split()[4]
            assert (colour, by_type["shape"]["answer"]) in scene.kinds()
        choice = by_type["choice"]
        picked = choice["choices"][answer_index(choice["answer"], choice["choices"])]
        assert picked in kinds
        assert sum(c in kinds for c in choice["choices"]) == 1 and len(set(choice["choices"])) == 4
    assert seen["exists_absent_prior"] > 50 and seen["exists_absent"] > 50
    assert seen["colour"] > 300 and seen["shape"] > 300


def test_vqa_items_can_leave_absent_companions_unasked():
    """Labeled-style questions (ask_absent_companions=False) never name an absent companion,
    neither as the existence question nor as a multiple-choice distractor; the default asks."""
    scenes = [s for s in world.make_scenes(3, "test", 300) if s.absent_companions()]
    assert len(scenes) > 40
    rng = random.Random(0)
    for scene in scenes:
        named = {f"{c} {s}" for c, s in scene.absent_companions()}
        items = world.vqa_items(scene, rng, ask_absent_companions=False)
        by_type = {item["type"]: item for item in items}
        assert "exists_absent_prior" not in by_type
        asked = by_type["exists_absent"]["question"][len("Is there a ") : -1]
        assert asked not in named and by_type["exists_absent"]["answer"] == "no"
        assert not named & set(by_type["choice"]["choices"])
        assert len(set(by_type["choice"]["choices"])) == 4
        default = {i["type"]: i for i in world.vqa_items(scene, rng)}
        assert default["exists_absent_prior"]["question"][len("Is there a ") : -1] in named


def test_vqa_metrics_against_hand_counts():
    items = world.vqa_items(ANCHOR_SCENE, random.Random(0))
    by_type = {item["type"]: item for item in items}
    assert by_type["exists_absent_prior"]["question"] == "Is there a yellow square?"
    results = [
        {"id": by_type["count"]["id"], "prediction": "Two."},
        {"id": by_type["exists_present"]["id"], "prediction": "Yes"},
        {"id": by_type["exists_absent_prior"]["id"], "prediction": "yes"},
        {"id": by_type["choice"]["id"], "prediction": by_type["choice"]["answer"]},
        {"id": by_type["position"]["id"], "prediction": "middle center"},
    ]  # colour and shape unanswered: wrong
    metrics = world.vqa_metrics(results, items)
    assert metrics["n"] == 7 and metrics["accuracy"] == pytest.approx(3 / 7)
    assert metrics["by_type"] == {
        "choice": 1.0,
        "colour": 0.0,
        "count": 1.0,
        "exists_absent_prior": 0.0,
        "exists_present": 1.0,
        "position": 0.0,
        "shape": 0.0,
    }


def test_instruction_samples_cover_every_prompt_kind():
    samples = world.instruction_samples(ANCHOR_SCENE, random.Random(0))
    assert tuple(samples) == world.PROMPT_KINDS
    for kind, sample in samples.items():
        assert InstructSample.from_dict(sample.to_dict()) == sample
        human, gpt = sample.exchanges()[0]
        assert human.startswith(IMAGE_TOKEN + "\n") and gpt and sample.id == f"s-{kind}"
    assert samples["good"].exchanges()[0] == (
        IMAGE_TOKEN + "\n" + GOOD_PROMPT,
        world.describe_detailed(ANCHOR_SCENE),
    )
    assert (
        world.score_description(samples["bad"].exchanges()[0][1], ANCHOR_SCENE)["invented_prior"]
        == 1
    )
    assert world.score_description(samples["plain"].exchanges()[0][1], ANCHOR_SCENE)["exact"]
    assert "Image description:\n" in samples["infused"].exchanges()[0][0]
