"""A synthetic world whose ground truth is known, for measuring hallucination exactly.

The embedded demo trains a tiny LLaVA on this world and runs STIC on it. Every image is drawn
from a :class:`Scene` (1-3 coloured shapes in a 3x3 grid on a noisy background), so every
description the model writes can be read back (:func:`parse_description`) and scored against
the truth (:func:`score_description`), and every VQA answer is known (:func:`vqa_items`).

Why co-occurrence priors: real LVLMs hallucinate the objects that usually accompany what they
see. Here each *anchor* object has a usual *companion* (:data:`PRIOR_COMPANIONS`), present with
probability ``Priors.p_labeled`` in the labeled split the base model is trained on (the demo's
base model uses 0.7) but only ``Priors.p_unlabeled`` / ``Priors.p_test`` (0.35) elsewhere, and
always drawn small and faint (:data:`COMPANION_CONTRAST`), so a model leaning on its language
prior invents it when it is absent.

The grammar (every text generator writes it; the parser reads any part of it)::

    object   := [size] [colour] shape [" at the " row " " col]
    size     := "small" | "large"
    colour   := one of COLOURS          shape := one of SHAPES
    row      := "top" | "middle" | "bottom"    col := "left" | "center" | "right"
    detailed := "The image shows " COUNT " on a " noise " " background " background."
                ( " There is a " object_with_everything "." )*   (objects in row-major order)
    brief    := OPENER object_list "."      (colour and shape, size half the time, no position)
    imaginative := detailed of the scene plus 1-2 invented objects (absent prior companion first)

A mention right after "no"/"not" is not a claim; text outside the grammar is ignored.

All randomness comes from the ``rng`` (a :class:`random.Random`) a caller passes; the same
scene and the same rng state give the same text. :func:`render` is pure: the background noise
is seeded by ``Scene.noise_seed``.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

from stic.data.prompts import (
    BAD_PROMPTS,
    GOOD_PROMPT,
    IMAGE_TOKEN,
    PLAIN_PROMPTS,
    infuse_description,
    question_prompt,
)
from stic.data.schemas import InstructSample, Turn
from stic.data.scoring import is_correct
from stic.runtime.rng import item_rng

# Well separated in RGB, none close to a background colour.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (40, 170, 60),
    "blue": (45, 75, 225),
    "yellow": (240, 220, 40),
    "purple": (145, 55, 195),
    "orange": (245, 135, 20),
    "white": (245, 245, 245),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
SIZES: tuple[str, ...] = ("small", "large")
ROWS: tuple[str, ...] = ("top", "middle", "bottom")
COLS: tuple[str, ...] = ("left", "center", "right")
GRID = 3
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"gray": (120, 120, 120), "charcoal": (50, 50, 55)}
NOISE_STD = {"plain": 4.0, "noisy": 14.0}
# Per-object RGB offset, uniform in +-COLOUR_JITTER per channel: well under half the distance
# between any two named colours, so the colour stays recognisable.
COLOUR_JITTER = 20
# An anchor's companion is drawn faint: its colour is this share of the way from the background
# to its own (1 = full colour). A faint object is what a model cannot quite see and so fills in
# from the prior, like the fork beside a plate.
COMPANION_CONTRAST = 0.2
SPLITS: tuple[str, ...] = ("labeled", "unlabeled", "validation", "test")

# anchor (colour, shape) -> its usual companion (colour, shape); the companion is drawn small.
PRIOR_COMPANIONS: dict[tuple[str, str], tuple[str, str]] = {
    ("red", "circle"): ("yellow", "square"),
    ("blue", "square"): ("white", "triangle"),
    ("green", "triangle"): ("orange", "cross"),
    ("purple", "cross"): ("yellow", "circle"),
}

_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_BRIEF_OPENERS = ("", "There is ", "The image shows ", "I see ")


@dataclass(frozen=True)
class Obj:
    """One object: ``cell`` is (row, col) in the 3x3 grid; ``rgb`` the jittered colour drawn;
    ``offset`` the (dx, dy) pixel jitter of its centre inside the cell."""

    shape: str
    colour: str
    size_class: str
    cell: tuple[int, int]
    rgb: tuple[int, int, int] = (0, 0, 0)
    offset: tuple[int, int] = (0, 0)

    @property
    def position(self) -> str:
        return f"{ROWS[self.cell[0]]} {COLS[self.cell[1]]}"

    @property
    def kind(self) -> tuple[str, str]:
        return (self.colour, self.shape)


@dataclass(frozen=True)
class Scene:
    """The ground truth of one image. ``objects`` are in row-major cell order (canonical)."""

    id: str
    size: int
    background: str
    noise: str
    noise_seed: int
    objects: tuple[Obj, ...]
    split: str = ""

    def kinds(self) -> set[tuple[str, str]]:
        return {o.kind for o in self.objects}

    def companions(self) -> set[tuple[str, str]]:
        """Kinds that are the usual companion of an anchor in the scene (present or not)."""
        return {PRIOR_COMPANIONS[k] for k in self.kinds() & PRIOR_COMPANIONS.keys()}

    def absent_companions(self) -> list[tuple[str, str]]:
        """Companions of anchors in the scene that the scene lacks (the prior-driven lies)."""
        kinds = self.kinds()
        return [
            PRIOR_COMPANIONS[k]
            for k in sorted(kinds & PRIOR_COMPANIONS.keys())
            if PRIOR_COMPANIONS[k] not in kinds
        ]


@dataclass(frozen=True)
class Priors:
    """Co-occurrence priors of the world.

    ``p_*``: probability that an anchor's companion is present, per split (labeled data teach the
    prior; unlabeled, validation and test scenes break it more often). ``anchor_rate``: share
    of scenes holding one anchor object (drawn large).
    """

    p_labeled: float = 0.89
    p_unlabeled: float = 0.35
    p_test: float = 0.35
    anchor_rate: float = 0.6

    def companion_probability(self, split: str) -> float:
        if split == "labeled":
            return self.p_labeled
        if split == "unlabeled":
            return self.p_unlabeled
        if split in ("validation", "test"):
            return self.p_test
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def _make_obj(rng: random.Random, colour: str, shape: str, size: str, cell) -> Obj:
    base = COLOURS[colour]
    rgb = tuple(min(255, max(0, c + rng.randint(-COLOUR_JITTER, COLOUR_JITTER))) for c in base)
    slack = 1 if size == "large" else 3  # pixels the centre may move and stay inside its cell
    offset = (rng.randint(-slack, slack), rng.randint(-slack, slack))
    return Obj(shape, colour, size, tuple(cell), rgb, offset)


def sample_scene(
    rng: random.Random,
    split: str,
    priors: Priors | None = None,
    scene_id: str = "",
    size: int = 48,
) -> Scene:
    """A random scene of ``split``: 1-3 objects, one per cell, no two of the same (colour, shape).

    With probability ``priors.anchor_rate`` one object is an anchor (large) and its companion
    (small) is present with ``priors.companion_probability(split)``; the other objects are
    neither anchors nor the absent companion, so the companion rate given an anchor is exactly
    that probability.
    """
    priors = priors or Priors()
    p = priors.companion_probability(split)
    if not 48 <= size <= 64 or size % GRID:
        raise ValueError(f"size must be a multiple of {GRID} in 48..64, got {size}")
    n = rng.randint(1, 3)
    cells = [(r, c) for r in range(GRID) for c in range(GRID)]
    rng.shuffle(cells)
    chosen: list[tuple[str, str, str]] = []  # (colour, shape, size)
    excluded = set(PRIOR_COMPANIONS)
    if rng.random() < priors.anchor_rate:
        anchor = rng.choice(sorted(PRIOR_COMPANIONS))
        chosen.append((*anchor, "large"))
        companion = PRIOR_COMPANIONS[anchor]
        if rng.random() < p:
            chosen.append((*companion, "small"))
            n = max(n, 2)
        else:
            excluded.add(companion)
    kinds = [(c, s) for c in COLOURS for s in SHAPES]
    while len(chosen) < n:
        colour, shape = rng.choice(kinds)
        if (colour, shape) in excluded or any((colour, shape) == k[:2] for k in chosen):
            continue
        chosen.append((colour, shape, rng.choice(SIZES)))
    objects = [
        _make_obj(rng, c, s, z, cell)
        for (c, s, z), cell in zip(chosen, cells[: len(chosen)], strict=True)
    ]
    objects.sort(key=lambda o: o.cell)
    return Scene(
        id=scene_id,
        size=size,
        background=rng.choice(sorted(BACKGROUNDS)),
        noise=rng.choice(sorted(NOISE_STD)),
        noise_seed=rng.getrandbits(32),
        objects=tuple(objects),
        split=split,
    )


def scene_from(
    *objects: tuple[str, str, str, tuple[int, int]],
    scene_id: str = "s",
    split: str = "test",
    background: str = "gray",
    noise: str = "plain",
) -> Scene:
    """A hand-made scene (for examples and tests) from ``(size, colour, shape, cell)`` tuples,
    each object in its exact named colour at its cell's centre."""
    objs = sorted(
        (Obj(shape, colour, size, cell, COLOURS[colour]) for size, colour, shape, cell in objects),
        key=lambda o: o.cell,
    )
    return Scene(scene_id, 48, background, noise, 0, tuple(objs), split)


def make_scenes(seed: int, split: str, count: int, priors: Priors | None = None, size: int = 48):
    """``count`` scenes with ids ``{split}-{i:05d}``, each from its own (seed, id) generator."""
    scenes = []
    for i in range(count):
        scene_id = f"{split}-{i:05d}"
        rng = item_rng(seed, scene_id, "world-scene")
        scenes.append(sample_scene(rng, split, priors, scene_id=scene_id, size=size))
    return scenes


def object_centre(scene: Scene, obj: Obj) -> tuple[int, int]:
    """(x, y) pixel centre of ``obj`` in the rendered image."""
    cell = scene.size // GRID
    row, col = obj.cell
    return (col * cell + cell // 2 + obj.offset[0], row * cell + cell // 2 + obj.offset[1])


def render(scene: Scene) -> Image.Image:
    """The RGB image of ``scene`` (``scene.size`` square); pure given the scene."""
    gen = np.random.default_rng(scene.noise_seed)
    base = np.array(BACKGROUNDS[scene.background], dtype=np.float32)
    noise = gen.normal(0.0, NOISE_STD[scene.noise], size=(scene.size, scene.size, 3))
    pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image)
    cell = scene.size // GRID
    companions = scene.companions()
    for obj in scene.objects:
        x, y = object_centre(scene, obj)
        # Sizes leave a pixel of margin to the cell edge at the largest position jitter.
        fill = obj.rgb
        if obj.kind in companions:
            fill = tuple(
                round(b + COMPANION_CONTRAST * (c - b))
                for c, b in zip(obj.rgb, BACKGROUNDS[scene.background], strict=True)
            )
        h = round(cell * (0.38 if obj.size_class == "large" else 0.25))
        if obj.shape == "circle":
            draw.ellipse((x - h, y - h, x + h, y + h), fill=fill)
        elif obj.shape == "square":
            draw.rectangle((x - h, y - h, x + h, y + h), fill=fill)
        elif obj.shape == "triangle":
            draw.polygon([(x, y - h), (x - h, y + h), (x + h, y + h)], fill=fill)
        else:  # cross: two bars a third of the extent wide
            w = max(1, h // 3)
            draw.rectangle((x - h, y - w, x + h, y + w), fill=fill)
            draw.rectangle((x - w, y - h, x + w, y + h), fill=fill)
    return image


def nearest_colour(rgb) -> str:
    """The named colour closest to ``rgb`` (for checking renders and probing features)."""
    r, g, b = (int(v) for v in rgb[:3])
    return min(
        COLOURS, key=lambda n: sum((a - c) ** 2 for a, c in zip((r, g, b), COLOURS[n], strict=True))
    )


# ----------------------------------------------------------------------------- descriptions


def _phrase(obj: Obj, size: bool = True, position: bool = True) -> str:
    words = ([obj.size_class] if size else []) + [obj.colour, obj.shape]
    text = " ".join(words)
    return f"{text} at the {obj.position}" if position else text


def _count(n: int) -> str:
    word = _NUMBER_WORDS[n] if n < len(_NUMBER_WORDS) else str(n)
    return f"{word} object" + ("" if n == 1 else "s")


def describe_detailed(scene: Scene) -> str:
    """The answer to GOOD_PROMPT: background, then every object with all attributes, in order.

    Example: ``"The image shows two objects on a noisy gray background. There is a large red
    circle at the top left. There is a small yellow square at the middle center."``
    """
    head = (
        f"The image shows {_count(len(scene.objects))} on a {scene.noise} "
        f"{scene.background} background."
    )
    return " ".join([head] + [f"There is a {_phrase(o)}." for o in scene.objects])


def describe_brief(scene: Scene, rng: random.Random) -> str:
    """The answer to a PLAIN_PROMPT: every object by colour and shape, size half the time.

    Example: ``"I see a blue square, a small white triangle and a large green cross."``
    """
    objects = list(scene.objects)
    rng.shuffle(objects)
    with_size = rng.random() < 0.5
    parts = ["a " + _phrase(o, size=with_size, position=False) for o in objects]
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    opener = rng.choice(_BRIEF_OPENERS)
    text = opener + listed if opener else listed[0].upper() + listed[1:]
    return text + "."


def invented_objects(scene: Scene, rng: random.Random, count: int) -> list[Obj]:
    """``count`` objects the scene lacks, in free cells: first the absent prior companions
    (what a hallucinating model invents), then random (colour, shape) kinds not in the scene."""
    kinds = scene.kinds()
    free = [(r, c) for r in range(GRID) for c in range(GRID)]
    free = [cell for cell in free if cell not in {o.cell for o in scene.objects}]
    rng.shuffle(free)
    picks: list[tuple[str, str, str]] = [(*k, "small") for k in scene.absent_companions()]
    all_kinds = [(c, s) for c in COLOURS for s in SHAPES]
    while len(picks) < count:
        kind = rng.choice(all_kinds)
        if kind not in kinds and all(kind != p[:2] for p in picks):
            picks.append((*kind, rng.choice(SIZES)))
    picks = picks[: min(count, len(free))]
    return [
        _make_obj(rng, c, s, z, cell)
        for (c, s, z), cell in zip(picks, free[: len(picks)], strict=True)
    ]


def describe_imaginative(scene: Scene, rng: random.Random) -> str:
    """The answer to a BAD_PROMPT: the detailed description of the scene plus 1-2 invented
    objects (the absent prior companion first), in the same format, stated affirmatively."""
    extra = invented_objects(scene, rng, rng.randint(1, 2))
    objects = tuple(sorted(scene.objects + tuple(extra), key=lambda o: o.cell))
    return describe_detailed(replace(scene, objects=objects))


@dataclass(frozen=True)
class Claim:
    """One object stated in a text; attributes the text did not state are None."""

    shape: str
    colour: str | None = None
    size_class: str | None = None
    position: str | None = None

    @property
    def kind(self) -> tuple[str | None, str]:
        return (self.colour, self.shape)


_CLAIM = re.compile(
    r"\b(no\s+|not\s+(?:an?\s+)?)?"
    rf"(?:({'|'.join(SIZES)})\s+)?"
    rf"(?:({'|'.join(COLOURS)})\s+)?"
    rf"({'|'.join(SHAPES)})\b"
    rf"(?:\s+(?:is\s+)?at\s+the\s+({'|'.join(ROWS)})\s+({'|'.join(COLS)})\b)?",
    re.IGNORECASE,
)


def parse_description(text: str) -> list[Claim]:
    """The object claims in ``text``, in order; words outside the grammar are ignored.

    A claim needs a shape word; size, colour and position are read when they sit in the
    grammar's order next to it. Negated mentions ("no red circle") are not claims.
    """
    claims = []
    for m in _CLAIM.finditer(text):
        negated, size, colour, shape, row, col = m.groups()
        if negated:
            continue
        claims.append(
            Claim(
                shape=shape.lower(),
                colour=colour.lower() if colour else None,
                size_class=size.lower() if size else None,
                position=f"{row.lower()} {col.lower()}" if row else None,
            )
        )
    return claims


def _fits(claim: Claim, obj: Obj) -> bool:
    return (
        claim.shape == obj.shape
        and claim.colour in (None, obj.colour)
        and claim.size_class in (None, obj.size_class)
        and claim.position in (None, obj.position)
    )


def score_description(text: str, scene: Scene) -> dict:
    """Exact comparison of a description with the scene.

    Counts over the parsed claims: ``stated``; ``invented`` (the claim's (colour, shape) is not
    in the scene; a claim without a colour is invented when its shape is absent);
    ``wrong_color`` (the shape is in the scene, not in that colour); ``wrong_shape`` (the colour
    is in the scene, not on that shape) - both are subsets of ``invented`` and may overlap;
    ``invented_prior`` (claims of an absent prior companion); ``wrong_size`` /
    ``wrong_position`` (right (colour, shape), a stated size / position wrong). ``recalled``:
    scene objects whose (colour, shape) is claimed; ``objects``: their number. ``exact``: as
    many claims as objects, each fitting a different object on every attribute it states.
    """
    claims = parse_description(text)
    by_kind = {o.kind: o for o in scene.objects}
    shapes = {o.shape for o in scene.objects}
    colours = {o.colour for o in scene.objects}
    absent_prior = set(scene.absent_companions())
    counts = Counter()
    for claim in claims:
        if claim.colour is None:
            present = claim.shape in shapes
        else:
            present = claim.kind in by_kind
        if not present:
            counts["invented"] += 1
            if claim.colour is not None and claim.shape in shapes:
                counts["wrong_color"] += 1
            if claim.colour is not None and claim.colour in colours:
                counts["wrong_shape"] += 1
            if claim.kind in absent_prior:
                counts["invented_prior"] += 1
        elif claim.colour is not None:
            obj = by_kind[claim.kind]
            counts["wrong_size"] += claim.size_class not in (None, obj.size_class)
            counts["wrong_position"] += claim.position not in (None, obj.position)
    recalled = sum(any(c.kind == o.kind for c in claims) for o in scene.objects)
    return {
        "stated": len(claims),
        "invented": counts["invented"],
        "wrong_color": counts["wrong_color"],
        "wrong_shape": counts["wrong_shape"],
        "invented_prior": counts["invented_prior"],
        "wrong_size": counts["wrong_size"],
        "wrong_position": counts["wrong_position"],
        "recalled": recalled,
        "objects": len(scene.objects),
        "exact": len(claims) == len(scene.objects) and _matches_all(claims, scene.objects),
    }


def _matches_all(claims: list[Claim], objects) -> bool:
    """Whether claims and objects pair up one to one with every claim fitting its object."""
    if not claims:
        return not objects
    first, rest = claims[0], claims[1:]
    for i, obj in enumerate(objects):
        if _fits(first, obj) and _matches_all(rest, objects[:i] + objects[i + 1 :]):
            return True
    return False


def description_metrics(pairs) -> dict:
    """Rates (0-1) over ``(text, scene)`` pairs.

    ``invented_rate``, ``wrong_color_rate``, ``wrong_shape_rate``: those claims over all stated
    claims (0 when none is stated); ``recall``: recalled over all scene objects;
    ``exact_rate``: share of exact descriptions; ``invented_any_rate`` /
    ``invented_prior_rate``: share of descriptions with at least one invented / absent-companion
    claim; ``n``: descriptions scored.
    """
    scores = [score_description(text, scene) for text, scene in pairs]
    total = Counter()
    for s in scores:
        total.update({k: int(v) for k, v in s.items()})
    n = len(scores)
    stated = total["stated"]

    def rate(num: int, den: int) -> float:
        return num / den if den else 0.0

    return {
        "invented_rate": rate(total["invented"], stated),
        "wrong_color_rate": rate(total["wrong_color"], stated),
        "wrong_shape_rate": rate(total["wrong_shape"], stated),
        "recall": rate(total["recalled"], total["objects"]),
        "exact_rate": rate(total["exact"], n),
        "invented_any_rate": rate(sum(s["invented"] > 0 for s in scores), n),
        "invented_prior_rate": rate(sum(s["invented_prior"] > 0 for s in scores), n),
        "n": n,
    }


# ----------------------------------------------------------------------------- VQA


def vqa_items(scene: Scene, rng: random.Random, ask_absent_companions: bool = True) -> list[dict]:
    """Questions about ``scene`` with their exact answers, one per applicable type.

    Types: ``count``, ``colour`` (of a shape unique in the scene), ``shape`` (of a colour unique
    in the scene), ``position``, ``exists_present`` (yes), ``exists_absent_prior`` (no: the
    absent companion of an anchor in the scene) or else ``exists_absent`` (no: a near miss, the
    right shape in a wrong colour, or a present colour on a wrong shape), and ``choice``
    (which object is in the image; answer is a letter). Each item: ``id`` (``{scene.id}-{type}``),
    ``image`` (``{scene.id}.png``), ``question``, ``answer``, ``type``, and ``choices`` for
    multiple choice.

    With ``ask_absent_companions=False`` no question names an absent companion: the existence
    question is a near miss and the multiple-choice distractors avoid it, as in LLaVA's
    instruction data, which almost never asks about an object the image lacks.
    """
    objects = list(scene.objects)
    items: list[dict] = []

    def add(kind: str, question: str, answer: str, choices: list[str] | None = None) -> None:
        item = {
            "id": f"{scene.id}-{kind}",
            "image": f"{scene.id}.png",
            "question": question,
            "answer": answer,
            "type": kind,
        }
        if choices is not None:
            item["choices"] = choices
        items.append(item)

    add("count", "How many objects are there?", str(len(objects)))
    shape_counts = Counter(o.shape for o in objects)
    unique_shape = [o for o in objects if shape_counts[o.shape] == 1]
    if unique_shape:
        obj = rng.choice(unique_shape)
        add("colour", f"What colour is the {obj.shape}?", obj.colour)
    colour_counts = Counter(o.colour for o in objects)
    unique_colour = [o for o in objects if colour_counts[o.colour] == 1]
    if unique_colour:
        obj = rng.choice(unique_colour)
        add("shape", f"What shape is the {obj.colour} object?", obj.shape)
    obj = rng.choice(objects)
    add("position", f"Where is the {obj.colour} {obj.shape}?", obj.position)
    obj = rng.choice(objects)
    add("exists_present", f"Is there a {obj.colour} {obj.shape}?", "yes")
    absent_prior = scene.absent_companions()
    unasked = set() if ask_absent_companions else set(absent_prior)
    if absent_prior and ask_absent_companions:
        colour, shape = rng.choice(absent_prior)
        add("exists_absent_prior", f"Is there a {colour} {shape}?", "no")
    else:
        colour, shape = _near_miss(scene, rng, unasked)
        add("exists_absent", f"Is there a {colour} {shape}?", "no")
    # Multiple choice: one present object among absent ones, prior companions first.
    truth = rng.choice(objects).kind
    distractors = list(absent_prior) if ask_absent_companions else []
    while len(distractors) < 3:
        kind = (
            _near_miss(scene, rng, unasked)
            if rng.random() < 0.5
            else _random_absent(scene, rng, unasked)
        )
        if kind not in distractors:
            distractors.append(kind)
    options = [truth] + distractors[:3]
    rng.shuffle(options)
    choices = [f"{c} {s}" for c, s in options]
    letter = "ABCD"[options.index(truth)]
    add("choice", "Which of these objects is in the image?", letter, choices)
    return items


def _random_absent(scene: Scene, rng: random.Random, avoid=frozenset()) -> tuple[str, str]:
    """A random (colour, shape) the scene lacks, other than those in ``avoid``."""
    kinds = scene.kinds() | set(avoid)
    while True:
        kind = (rng.choice(sorted(COLOURS)), rng.choice(SHAPES))
        if kind not in kinds:
            return kind


def _near_miss(scene: Scene, rng: random.Random, avoid=frozenset()) -> tuple[str, str]:
    """An absent (colour, shape) one attribute away from a present object, not in ``avoid``."""
    kinds = scene.kinds() | set(avoid)
    obj = rng.choice(scene.objects)
    if rng.random() < 0.5:
        options = [(c, obj.shape) for c in COLOURS if (c, obj.shape) not in kinds]
    else:
        options = [(obj.colour, s) for s in SHAPES if (obj.colour, s) not in kinds]
    return rng.choice(options) if options else _random_absent(scene, rng, avoid)


def vqa_metrics(results, items) -> dict:
    """Accuracy overall and per type.

    ``results``: dicts (or objects) with ``id`` and ``prediction``; ``items``: dicts from
    :func:`vqa_items`. An item without a result counts as wrong. Returns ``{"accuracy",
    "by_type": {type: accuracy}, "count_by_type": {type: n}, "n"}``.
    """
    predictions = {}
    for r in results:
        rid = r["id"] if isinstance(r, dict) else r.id
        predictions[rid] = r["prediction"] if isinstance(r, dict) else r.prediction
    right = Counter()
    seen = Counter()
    for item in items:
        prediction = predictions.get(item["id"])
        ok = prediction is not None and is_correct(prediction, item["answer"], item.get("choices"))
        seen[item["type"]] += 1
        right[item["type"]] += ok
    n = sum(seen.values())
    return {
        "accuracy": sum(right.values()) / n if n else 0.0,
        "by_type": {t: right[t] / seen[t] for t in sorted(seen)},
        "count_by_type": dict(sorted(seen.items())),
        "n": n,
    }


# ----------------------------------------------------------------------------- instruction data


def vqa_conversation(sample_id: str, items: list[dict], image: str) -> InstructSample:
    """One multi-turn LLaVA-format sample asking ``items`` (from :func:`vqa_items`) in order,
    each formatted as evaluation does; the image placeholder leads the first turn."""
    turns: list[Turn] = []
    for k, item in enumerate(items):
        lead = IMAGE_TOKEN + "\n" if k == 0 else ""
        question = question_prompt(item["question"], item.get("choices"))
        turns += [Turn("human", lead + question), Turn("gpt", item["answer"])]
    return InstructSample(id=sample_id, conversations=tuple(turns), image=image)


PROMPT_KINDS: tuple[str, ...] = ("plain", "good", "bad", "question", "infused")


def instruction_samples(
    scene: Scene, rng: random.Random, image: str | None = None, ask_absent_companions: bool = True
) -> dict:
    """One LLaVA-format sample per prompt kind for base training, keyed by kind.

    ``plain``: a PLAIN_PROMPT -> :func:`describe_detailed`; ``good``: GOOD_PROMPT ->
    :func:`describe_detailed`; ``bad``: a BAD_PROMPT -> :func:`describe_imaginative`;
    ``question``: a VQA question (formatted by :func:`stic.data.prompts.question_prompt`, as
    evaluation does) -> its answer; ``infused``: another VQA question with the description
    put in front (:func:`stic.data.prompts.infuse_description`) -> its answer. Sample ids are
    ``{scene.id}-{kind}``; ``image`` defaults to ``{scene.id}.png``. ``ask_absent_companions``
    goes to :func:`vqa_items`.

    Plain and good prompts get the same format, as the misleading prompts do: then stage 1's
    chosen and rejected answers differ in what they claim, not in how they are written (with
    brief plain answers, DPO learns the format instead, and mixes the two).
    """
    image = image or f"{scene.id}.png"
    lead = IMAGE_TOKEN + "\n"

    def sample(kind: str, human: str, gpt: str) -> InstructSample:
        turns = (Turn("human", human), Turn("gpt", gpt))
        return InstructSample(id=f"{scene.id}-{kind}", conversations=turns, image=image)

    items = vqa_items(scene, rng, ask_absent_companions)
    asked = rng.sample(items, 2)
    questions = [question_prompt(i["question"], i.get("choices")) for i in asked]
    return {
        "plain": sample("plain", lead + rng.choice(PLAIN_PROMPTS), describe_detailed(scene)),
        "good": sample("good", lead + GOOD_PROMPT, describe_detailed(scene)),
        "bad": sample("bad", lead + rng.choice(BAD_PROMPTS), describe_imaginative(scene, rng)),
        "question": sample("question", lead + questions[0], asked[0]["answer"]),
        "infused": sample(
            "infused",
            infuse_description(lead + questions[1], describe_detailed(scene)),
            asked[1]["answer"],
        ),
    }
