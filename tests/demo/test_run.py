"""`stic demo` (stic.demo.run): its inputs, run configs, metrics, report, and one tiny run end to end."""

from __future__ import annotations

import dataclasses
import json
import random
import re
from pathlib import Path

import pytest

from stic.data.prompts import GOOD_PROMPT, IMAGE_TOKEN, PLAIN_PROMPTS, question_prompt
from stic.data.schemas import REJECTED_KINDS, PairRecord, read_instruct, read_pairs
from stic.demo import run as demo
from stic.demo import world
from stic.demo.base_model import BaseModelRecipe, labeled_scenes
from stic.demo.run import (
    ARMS,
    METRICS,
    PAIRED,
    DemoSettings,
    base_config,
    chosen_as_instructions,
    eval_scenes,
    pair_metrics,
    results_markdown,
    run_configs,
    run_demo,
    summarize,
    unlabeled_scenes,
    write_eval_split,
    write_stage2_data,
    write_unlabeled,
)
from stic.demo.world import Scene
from stic.pipeline import plan
from stic.runtime.files import atomic_write_text, read_json
from tests.demo.test_base_model import tiny_base_model

SMALL = DemoSettings(
    base="unused",
    split="validation",
    eval_scenes=3,
    unlabeled=5,
    stage2_scenes=2,
    describe_tokens=16,
    batch_size=8,
    dpo_batch=2,
    sft_batch=2,
)


def _pair(scene_id: str, chosen: str, rejected: str, kind: str, chosen_finish="stop") -> dict:
    assert kind in REJECTED_KINDS
    return PairRecord(
        id=f"{scene_id}.png",
        image=f"{scene_id}.png",
        prompt=PLAIN_PROMPTS[0],
        chosen=chosen,
        rejected=rejected,
        rejected_kind=kind,
        chosen_prompt=GOOD_PROMPT,
        rejected_prompt="bad",
        chosen_finish=chosen_finish,
    ).to_dict()


def _write_pairs(path: Path, rows: list[dict]) -> Path:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
    return path


# ----------------------------------------------------------------------------- pair metrics


def test_pair_metrics_count_invented_objects_by_hand(tmp_path):
    # a: an anchor (red circle) without its companion (yellow square); b: one green circle.
    a = world.scene_from(
        ("large", "red", "circle", (0, 0)), ("small", "blue", "square", (1, 1)), scene_id="a"
    )
    b = world.scene_from(("large", "green", "circle", (0, 1)), scene_id="b")
    exact_a = "There is a large red circle at the top left. There is a small blue square at the middle center."
    rows = [
        # chosen: 2 stated, 0 invented; rejected: 3 stated, 1 invented (the absent companion).
        _pair("a", exact_a, exact_a + " There is a small yellow square.", "bad_prompt"),
        # chosen: 1 stated, 0 invented; rejected: 2 stated, 2 invented (a wrong colour, a wrong shape).
        _pair(
            "b",
            "I see a green circle.",
            "I see a red circle and a green triangle.",
            "corrupt_color",
        ),
        # chosen: 2 stated, 1 invented; rejected: 1 stated, 0 invented.
        _pair(
            "b",
            "I see a green circle and a purple cross.",
            "I see a green circle.",
            "corrupt_lowres",
        ),
    ]
    rows[2]["id"] = "b2.png"
    m = pair_metrics(_write_pairs(tmp_path / "pairs.jsonl", rows), {"a": a, "b": b})

    assert m["n"] == 3
    assert m["chosen"]["invented_rate"] == pytest.approx(1 / 5)
    assert m["chosen"]["invented_any_rate"] == pytest.approx(1 / 3)
    assert m["chosen"]["invented_prior_rate"] == 0.0
    assert m["rejected"]["invented_rate"] == pytest.approx(3 / 6)
    assert m["rejected"]["invented_any_rate"] == pytest.approx(2 / 3)
    assert m["rejected"]["invented_prior_rate"] == pytest.approx(1 / 3)
    assert m["rejected_bad_prompt"] == {
        "invented_rate": pytest.approx(1 / 3),
        "invented_any_rate": 1.0,
        "invented_prior_rate": 1.0,
        "n": 1,
    }
    assert m["rejected_corrupt_color"]["invented_rate"] == 1.0
    assert m["rejected_corrupt_color"]["invented_prior_rate"] == 0.0
    assert m["rejected_corrupt_lowres"]["invented_rate"] == 0.0
    assert "rejected_imported" not in m
    assert m["rejected_over_chosen"] == pytest.approx(2.0)


# ----------------------------------------------------------------------------- summary and report


def _arm(base: float, types: dict[str, float]) -> dict:
    block = {key: base + 0.01 * i for i, key in enumerate(METRICS)}
    return {**block, "vqa_acc_by_type": types, "exists_absent_n": 7}


def _per_seed(offset: float) -> dict:
    arms = {
        arm: _arm(0.1 * i + offset, {"count": 0.5 + offset, "choice": 0.25 * i})
        for i, arm in enumerate(ARMS)
    }
    pairs = {
        "n": 4,
        "chosen": {"invented_any_rate": 0.25},
        "rejected": {"invented_any_rate": 0.75},
        "rejected_over_chosen": 3.0,
    }
    return {"seed": int(offset * 100), "arms": arms, "pairs": pairs}


def test_summarize_means_spreads_and_paired_differences():
    seeds = [_per_seed(0.0), _per_seed(0.04)]
    out = summarize(seeds)
    assert set(out["arms"]) == set(ARMS)
    for i, arm in enumerate(ARMS):
        block = out["arms"][arm]
        for k, key in enumerate(METRICS):
            assert block[key] == pytest.approx(0.1 * i + 0.01 * k + 0.02)
            # Two values 0.04 apart: sample sd 0.04 / sqrt(2).
            assert block[key + "_sd"] == pytest.approx(0.04 / 2**0.5)
        assert block["exists_absent_n"] == 7
        assert "exists_absent_n_sd" not in block
        assert block["vqa_acc_by_type"] == {
            "count": pytest.approx(0.52),
            "choice": pytest.approx(0.25 * i),
        }
    assert set(out["paired"]) == {f"{a}-{b}" for a, b in PAIRED}
    for a, b in PAIRED:
        for key in METRICS:
            entry = out["paired"][f"{a}-{b}"][key]
            by_hand = [s["arms"][a][key] - s["arms"][b][key] for s in seeds]
            assert entry["per_seed"] == pytest.approx(by_hand)
            assert entry["mean"] == pytest.approx(sum(by_hand) / 2)
    ia, ib = ARMS.index("stic"), ARMS.index("base")
    assert out["paired"]["stic-base"]["vqa_acc"]["per_seed"] == pytest.approx([0.1 * (ia - ib)] * 2)


def test_summarize_one_seed_has_no_spread():
    out = summarize([_per_seed(0.0)])
    assert not [k for k in out["arms"]["stic"] if k.endswith("_sd")]
    assert out["arms"]["stic"]["vqa_acc"] == pytest.approx(0.1 * ARMS.index("stic"))


def _results(seeds: list[dict]) -> dict:
    return {
        **summarize(seeds),
        "seeds": seeds,
        "split": "validation",
        "eval_scenes": 3,
        "seconds": 12.0,
    }


def test_results_markdown_has_every_arm_and_paired_row():
    text = results_markdown(_results([_per_seed(0.0), _per_seed(0.04)]))
    assert text.startswith("# STIC demo results (2 seeds, validation split, 3 scenes)")
    for arm in ARMS:
        rows = [line for line in text.splitlines() if line.startswith(f"| {arm} |")]
        assert len(rows) == 2, arm  # the metrics table and the by-type table
    # stic's VQA: mean 0.1 * 3 + 0.02 = 32.0%, sd 2.8 points.
    assert "| stic | 32.0 ± 2.8 |" in text
    for a, b in PAIRED:
        assert f"| {a} − {b} |" in text
    ia, ib = ARMS.index("stic"), ARMS.index("stage2_only")
    diff = 100 * 0.1 * (ia - ib)
    assert f"| stic − stage2_only | {diff:+.1f} ({diff:+.1f}, {diff:+.1f}) |" in text
    assert "| 4 | 4 | 25.0 | 75.0 | 3.0× |" in text  # the second seed's pairs row
    assert "12 s in all." in text


def test_results_markdown_one_seed():
    text = results_markdown(_results([_per_seed(0.0)]))
    assert "(1 seed," in text and "±" not in text


# ----------------------------------------------------------------------------- inputs


@pytest.fixture
def demo_out(tmp_path):
    """The demo's output object on an empty folder, as run_demo holds it."""
    with demo.demo_output(tmp_path, SMALL, overwrite=False) as output:
        yield output


def test_chosen_as_instructions_skips_truncated_chosen(tmp_path):
    rows = [
        _pair("a", "A red circle.", "A red square.", "bad_prompt"),
        _pair("b", "A blue cross", "A blue circle.", "corrupt_lowres", chosen_finish="length"),
        _pair("c", "A white triangle.", "A white cross.", "corrupt_color"),
    ]
    pairs = _write_pairs(tmp_path / "pairs.jsonl", rows)
    with demo.demo_output(tmp_path / "demo", SMALL, overwrite=False) as output:
        out = chosen_as_instructions(pairs, output, "sub/chosen.json")
    assert out == tmp_path / "demo" / "sub" / "chosen.json"
    records = read_json(out)
    assert [r["id"] for r in records] == ["a.png", "c.png"]
    assert records[0] == {
        "id": "a.png",
        "image": "a.png",
        "conversations": [
            {"from": "human", "value": "<image>\n" + PLAIN_PROMPTS[0]},
            {"from": "gpt", "value": "A red circle."},
        ],
    }
    samples = read_instruct(out)  # valid LLaVA-format instruction data
    assert [s.conversations[1].value for s in samples] == ["A red circle.", "A white triangle."]


def test_write_unlabeled_writes_only_images(demo_out, tmp_path):
    folder = write_unlabeled(demo_out, seed=3, settings=SMALL)
    assert folder == tmp_path / "seed3" / "unlabeled"
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(f"{s.id}.png" for s in unlabeled_scenes(3, SMALL))
    assert len(names) == SMALL.unlabeled
    assert not list(tmp_path.rglob("*.json*"))
    assert [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".png"] == []
    # Other seeds draw other scenes.
    assert unlabeled_scenes(3, SMALL) != unlabeled_scenes(4, SMALL)


_ASKED = {
    "colour": re.compile(r"What colour is the (\w+)\?"),
    "shape": re.compile(r"What shape is the (\w+) object\?"),
    "position": re.compile(r"Where is the (\w+) (\w+)\?"),
    "exists": re.compile(r"Is there a (\w+) (\w+)\?"),
}


def _truth(item: dict, scene: Scene) -> str:
    """The answer to a VQA item, worked out from the scene."""
    q, kind = item["question"], item["type"]
    if kind == "count":
        return str(len(scene.objects))
    if kind == "colour":
        (shape,) = _ASKED["colour"].fullmatch(q).groups()
        return next(o.colour for o in scene.objects if o.shape == shape)
    if kind == "shape":
        (colour,) = _ASKED["shape"].fullmatch(q).groups()
        return next(o.shape for o in scene.objects if o.colour == colour)
    if kind == "position":
        colour, shape = _ASKED["position"].fullmatch(q).groups()
        return next(o.position for o in scene.objects if o.kind == (colour, shape))
    if kind.startswith("exists"):
        colour, shape = _ASKED["exists"].fullmatch(q).groups()
        return "yes" if (colour, shape) in scene.kinds() else "no"
    assert kind == "choice"
    present = [i for i, c in enumerate(item["choices"]) if tuple(c.split()) in scene.kinds()]
    assert len(present) == 1
    return "ABCD"[present[0]]


def test_write_eval_split_matches_the_world(demo_out, tmp_path):
    files = write_eval_split(demo_out, SMALL)
    assert files["vqa"] == tmp_path / "data" / SMALL.split / "vqa.jsonl"
    scenes = {s.id: s for s in eval_scenes(SMALL)}
    assert len(scenes) == SMALL.eval_scenes
    assert sorted(p.name for p in files["images"].iterdir()) == sorted(
        f"{sid}.png" for sid in scenes
    )
    vqa = [json.loads(line) for line in files["vqa"].read_text().splitlines()]
    assert len({item["id"] for item in vqa}) == len(vqa)
    assert {item["image"] for item in vqa} == {f"{sid}.png" for sid in scenes}
    for item in vqa:
        scene = scenes[item["image"].removesuffix(".png")]
        assert item["answer"] == _truth(item, scene), item
    for name, prompts in (
        (demo.DESCRIBE_PLAIN, PLAIN_PROMPTS),
        (demo.DESCRIBE_GOOD, [GOOD_PROMPT]),
    ):
        rows = [json.loads(line) for line in files[name].read_text().splitlines()]
        assert sorted(r["id"] for r in rows) == sorted(scenes)
        for row in rows:
            scene = scenes[row["id"]]
            assert row["image"] == f"{scene.id}.png"
            assert row["question"] in prompts
            assert row["answer"] == world.describe_detailed(scene)
            assert world.score_description(row["answer"], scene)["exact"]
    # The split is fixed: the same files again.
    before = {p.name: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    write_eval_split(demo_out, SMALL)
    assert {p.name: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("ask", [False, True])
def test_stage2_data_asks_about_absent_companions_as_the_base_recipe_did(demo_out, ask):
    recipe = BaseModelRecipe(labeled_scenes=80, ask_absent_companions=ask)
    out = write_stage2_data(demo_out, 0, dataclasses.replace(SMALL, stage2_scenes=80), recipe)
    labeled = {s.id: s for s in labeled_scenes(recipe)}
    named = 0
    for sample in read_instruct(out):
        scene = labeled[sample.id]
        questions = " ".join(q for q, _ in sample.exchanges())
        named += any(f"{c} {s}" in questions for c, s in scene.absent_companions())
    assert (named > 3) if ask else (named == 0)


def test_write_stage2_data_asks_labeled_scenes(demo_out, tmp_path):
    recipe = BaseModelRecipe(labeled_scenes=6)
    out = write_stage2_data(demo_out, 0, SMALL, recipe)
    assert out == tmp_path / "seed0" / "stage2" / "instruct.json"
    samples = read_instruct(out)
    assert len(samples) == SMALL.stage2_scenes
    labeled = {s.id: s for s in labeled_scenes(recipe)}
    for sample in samples:
        scene = labeled[sample.id]
        assert sample.image == f"{scene.id}.png"
        assert (out.parent / "images" / sample.image).exists()
        turns = sample.conversations
        assert turns[0].value.startswith(IMAGE_TOKEN + "\n")
        assert all(IMAGE_TOKEN not in t.value for t in turns[1:])
        # Three VQA questions about the scene, each with its true answer.
        exchanges = sample.exchanges()
        assert len(exchanges) == 3
        for question, answer in exchanges:
            question = question.removeprefix(IMAGE_TOKEN + "\n")
            kind = _kind_of(question)
            item = {"question": question.split("\n")[0], "type": kind}
            if kind == "choice":
                item["choices"] = [line[3:] for line in question.split("\n")[1:5]]
            assert answer == _truth(item, scene), (question, answer)
        assert exchanges[0][0] == IMAGE_TOKEN + "\n" + question_prompt(
            *_question_and_choices(exchanges[0][0].removeprefix(IMAGE_TOKEN + "\n"))
        )


def _question_and_choices(text: str) -> tuple[str, list[str] | None]:
    lines = text.split("\n")
    choices = [line[3:] for line in lines[1:] if re.match(r"[A-D]\. ", line)]
    return lines[0], choices or None


def _kind_of(question: str) -> str:
    first = question.split("\n")[0]
    if first.startswith("How many"):
        return "count"
    if first.startswith("What colour"):
        return "colour"
    if first.startswith("What shape"):
        return "shape"
    if first.startswith("Where"):
        return "position"
    if first.startswith("Is there"):
        return "exists"
    assert first.startswith("Which"), first
    return "choice"


# ----------------------------------------------------------------------------- run configs


def _configs(tmp_path):
    settings = dataclasses.replace(SMALL, base=str(tmp_path / "model"))
    with demo.demo_output(tmp_path, settings, overwrite=False) as output:
        files = write_eval_split(output, settings)
    stage2 = tmp_path / "seed0" / "stage2" / "instruct.json"
    unlabeled = tmp_path / "seed0" / "unlabeled"
    return settings, files, run_configs(tmp_path, 0, settings, files, stage2, unlabeled)


def test_run_configs_pass_validation_and_wire_the_arms(tmp_path):
    settings, files, configs = _configs(tmp_path)
    assert set(configs) == {"stic", "stage2_only", "no_negatives"}
    planned = {name: plan(config) for name, config in configs.items()}
    planned["base"] = plan(base_config(tmp_path, settings, files))
    for stages in planned.values():
        assert stages
        for s in stages:
            assert s.config.dtype == "float32"
            assert s.config.model == settings.base

    def stage(name, kind, eval_name=None):
        found = [s for s in planned[name] if s.stage == kind and (eval_name in (None, s.name))]
        assert len(found) == 1, (name, kind, eval_name)
        return found[0].config

    stic_root = tmp_path / "seed0" / "stic"
    assert [s.stage for s in planned["stic"]][:4] == ["pairs", "dpo", "infuse", "sft"]
    assert stage("stic", "pairs").images == str(tmp_path / "seed0" / "unlabeled")
    assert stage("stic", "sft").adapter == str(stic_root / "dpo")
    assert stage("stic", "eval", "stage1_vqa").adapter == str(stic_root / "dpo")
    assert stage("stic", "eval", "stic_vqa").adapter == str(stic_root / "sft")
    assert stage("stic", "eval", "stic_dar_vqa").dar is True

    stages2 = {s.stage for s in planned["stage2_only"]}
    assert "dpo" not in stages2 and "pairs" not in stages2
    assert stage("stage2_only", "sft").adapter is None
    assert stage("stage2_only", "infuse").adapter is None

    no_neg = stage("no_negatives", "sft")
    assert Path(no_neg.data) == tmp_path / "seed0" / "no_negatives" / "chosen.json"
    assert no_neg.adapter is None
    assert no_neg.images == str(tmp_path / "seed0" / "unlabeled")
    assert {s.stage for s in planned["no_negatives"]} == {"sft", "eval"}

    assert {s.config.adapter for s in planned["base"]} == {None}
    assert {s.name for s in planned["base"]} == {
        "base_vqa",
        f"base_{demo.DESCRIBE_PLAIN}",
        f"base_{demo.DESCRIBE_GOOD}",
    }
    # The arms write to their own folders.
    outs = [s.config.out for stages in planned.values() for s in stages]
    assert len(outs) == len(set(outs))


# ----------------------------------------------------------------------------- end to end

TINY_RUN = DemoSettings(
    split="validation",
    eval_scenes=2,
    unlabeled=4,
    stage2_scenes=2,
    describe_tokens=8,
    batch_size=8,
    dpo_batch=2,
    # Two SFT steps, not one: the warmup makes the first step's learning rate 0. With learning
    # rates this high every arm's weights, and so its answers, differ: a test can then tell
    # which arm's files a number was read from.
    sft_batch=1,
    dpo_lr=1e-2,
    sft_lr=1e-2,
)


def _keep_truncated(mp: pytest.MonkeyPatch) -> None:
    """The tiny base model's answers always hit the token limit: let the run keep its truncated
    pairs (as tests/test_pipeline.py does) and their chosen answers (no_negatives' data)."""
    run_configs_orig, chosen_orig = demo.run_configs, demo.chosen_as_instructions

    def configs_keeping_truncated(*args, **kwargs):
        configs = run_configs_orig(*args, **kwargs)
        configs["stic"]["dpo"]["filter_truncated"] = False
        return configs

    def chosen_of_truncated(pairs_path, output, name):
        stopped = output.file(str(Path(name).parent / "stopped_pairs.jsonl"))
        rows = [
            dataclasses.replace(p, chosen_finish="stop").to_dict() for p in read_pairs(pairs_path)
        ]
        _write_pairs(stopped, rows)
        return chosen_orig(stopped, output, name)

    mp.setattr(demo, "run_configs", configs_keeping_truncated)
    mp.setattr(demo, "chosen_as_instructions", chosen_of_truncated)


def run_tiny_demo(tmp_path_factory, folder: str, **changes) -> dict:
    """One run_demo (seed 0) with the tiny base model of tests/test_demo_model.py and TINY_RUN
    changed by ``changes``: its folder, settings, results and log lines."""
    base = tiny_base_model(tmp_path_factory)
    settings = dataclasses.replace(TINY_RUN, base=str(base), **changes)
    out = tmp_path_factory.mktemp(folder)
    logs: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        _keep_truncated(mp)
        results = run_demo(out, [0], settings, log=logs.append)
    return {"out": out, "settings": settings, "results": results, "logs": logs}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    return run_tiny_demo(tmp_path_factory, "demo")


@pytest.mark.slow
def test_demo_writes_results_with_every_arm_and_metric(demo_run):
    out, results = demo_run["out"], demo_run["results"]
    assert read_json(out / "results.json") == json.loads(json.dumps(results))
    assert set(results["arms"]) == set(ARMS)
    for arm, block in results["arms"].items():
        for key in METRICS:
            assert 0.0 <= block[key] <= 1.0, (arm, key)
        assert block["vqa_acc_by_type"]
        assert all(0.0 <= v <= 1.0 for v in block["vqa_acc_by_type"].values())
        assert "exists_absent_n" in block
    assert set(results["paired"]) == {f"{a}-{b}" for a, b in PAIRED}
    for block in results["paired"].values():
        assert set(block) == set(METRICS)
        assert all(len(v["per_seed"]) == 1 for v in block.values())
    [seed] = results["seeds"]
    assert seed["seed"] == 0
    assert seed["pairs"]["n"] == TINY_RUN.unlabeled
    assert results["split"] == "validation"
    assert results["eval_scenes"] == TINY_RUN.eval_scenes
    assert results["seconds"] > 0
    assert any(line.startswith("seed 0") for line in demo_run["logs"])
    md = (out / "results.md").read_text()
    for arm in ARMS:
        assert f"| {arm} |" in md
    # What every arm was evaluated on, and what it trained.
    assert (out / "base" / "eval" / "base_vqa.json").exists()
    assert read_json(out / "seed0" / "no_negatives" / "chosen.json")
    for arm in ("stic", "stage2_only", "no_negatives"):
        assert (out / "seed0" / arm / "sft").is_dir()
    assert not (out / "seed0" / "stage2_only" / "dpo").exists()


@pytest.mark.slow
def test_demo_unlabeled_folder_holds_only_pixels(demo_run):
    folder = demo_run["out"] / "seed0" / "unlabeled"
    assert sorted(p.suffix for p in folder.iterdir()) == [".png"] * TINY_RUN.unlabeled


@pytest.mark.slow
def test_demo_rerun_reuses_every_output(demo_run, monkeypatch):
    _keep_truncated(monkeypatch)
    out, settings = demo_run["out"], demo_run["settings"]
    trained = [
        p
        for p in out.rglob("*")
        # results.* and report.html hold the run's wall-clock time: rewritten on every run
        if p.is_file()
        and p.suffix not in (".yaml",)
        and not p.name.endswith(".yaml.manifest.json")  # stic run's record of its config
        and not p.name.startswith(("results.", "report."))
        and p != out / "stic_manifest.json"  # the demo's own manifest: its time and status
    ]
    stamps = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in trained}
    logs: list[str] = []
    again = run_demo(out, [0], settings, log=logs.append)
    first = dict(demo_run["results"])
    assert {k: v for k, v in again.items() if k != "seconds"} == json.loads(
        json.dumps({k: v for k, v in first.items() if k != "seconds"})
    )
    stage_dirs = {"pairs", "dpo", "infuse", "sft", "eval"}
    outputs = [p for p in stamps if stage_dirs & set(p.relative_to(out).parts)]
    assert len(outputs) > 20
    for p, (mtime, data) in stamps.items():
        assert p.read_bytes() == data, p
        if stage_dirs & set(p.relative_to(out).parts):
            # A stage output: not written again. (The inputs are rewritten with the same bytes.)
            assert p.stat().st_mtime_ns == mtime, p
    stage_lines = [line for line in logs if line.split()[0] in stage_dirs]
    assert len(stage_lines) > 10
    assert all('"up_to_date": true' in line for line in stage_lines), stage_lines


# ----------------------------------------------------------------------------- CLI


def _help_of(capsys, argv: list[str]) -> str:
    from stic.cli import main

    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    assert rc in (0, None)
    return capsys.readouterr().out


@pytest.fixture
def restore_stic_logging():
    import logging

    logger = logging.getLogger("stic")
    level = logger.level
    yield
    logger.setLevel(level)


def test_demo_help(capsys, restore_stic_logging):
    out = _help_of(capsys, ["demo", "--help"])
    assert out.startswith("usage: stic demo")
    for flag in ("--out", "--seeds", "--base", "--split", "--unlabeled", "--eval-scenes"):
        assert flag in out
    assert "validation" in out and "test" in out


def test_demo_model_help(capsys, restore_stic_logging):
    out = _help_of(capsys, ["demo-model", "--help"])
    assert out.startswith("usage: stic demo-model")
    for flag in ("--out", "--seed", "--device"):
        assert flag in out


# Where each arm's numbers must come from: (eval folder under OUT, VQA prefix, descriptions prefix).
ARM_SOURCES = {
    "base": ("base/eval", "base", "base"),
    "stage1": ("seed0/stic/eval", "stage1", "stage1"),
    "stic": ("seed0/stic/eval", "stic", "stic"),
    "stic_dar": ("seed0/stic/eval", "stic_dar", "stic"),  # DaR answers; stic's descriptions
    "stage2_only": ("seed0/stage2_only/eval", "stage2_only", "stage2_only"),
    "no_negatives": ("seed0/no_negatives/eval", "no_negatives", "no_negatives"),
}


@pytest.mark.slow
def test_the_report_shows_each_arms_own_eval_files(demo_run):
    """On the real run: every arm's VQA accuracy is the accuracy in ITS eval file, its
    description metrics those of ITS descriptions, and results.md shows them."""
    out, results = demo_run["out"], demo_run["results"]
    scenes = {s.id: s for s in eval_scenes(demo_run["settings"])}
    [seed] = results["seeds"]
    md = (out / "results.md").read_text()
    for arm, (folder, vqa_prefix, describe_prefix) in ARM_SOURCES.items():
        vqa = read_json(out / folder / f"{vqa_prefix}_vqa.json")
        plain = read_json(out / folder / f"{describe_prefix}_{demo.DESCRIBE_PLAIN}.json")
        metrics = world.description_metrics(
            [(item["prediction"], scenes[item["id"]]) for item in plain["items"]]
        )
        reported = seed["arms"][arm]
        assert reported["vqa_acc"] == pytest.approx(vqa["accuracy"]), arm
        for key in ("recall", "invented_rate", "exact_rate"):
            assert reported[key] == pytest.approx(metrics[key]), (arm, key)
        row = next(line for line in md.splitlines() if line.startswith(f"| {arm} |"))
        assert row.split("|")[2].strip() == f"{100 * results['arms'][arm]['vqa_acc']:.1f}", arm


@pytest.mark.slow
def test_each_arm_reads_its_own_eval_files(demo_run, tmp_path):
    """The tiny run's answers are all wrong, so every arm scores 0 and a mix-up (stage 1
    reading full STIC's eval, no-negatives the base's) would pass the test above. Here a copy
    of the run's eval files is rewritten so that arm k answers k+1 questions right and invents
    k objects per description; each arm must then report its own k."""
    import shutil

    out, settings = demo_run["out"], demo_run["settings"]
    scenes = {s.id: s for s in eval_scenes(settings)}
    items = [json.loads(line) for line in (out / "data" / settings.split / "vqa.jsonl").open()]
    assert len(items) >= len(ARM_SOURCES)
    copy = tmp_path / "copy"
    for folder in {f for f, _, _ in ARM_SOURCES.values()}:
        shutil.copytree(out / folder, copy / folder)
    rng = random.Random(0)
    for k, (arm, (folder, vqa_prefix, describe_prefix)) in enumerate(ARM_SOURCES.items()):
        path = copy / folder / f"{vqa_prefix}_vqa.json"
        data = read_json(path)
        answers = {item["id"]: item["answer"] for item in items}
        for i, item in enumerate(data["items"]):
            item["prediction"] = answers[item["id"]] if i <= k else "zzz"
        atomic_write_text(path, json.dumps(data))
        if arm == "stic_dar":
            continue  # its descriptions are stic's
        path = copy / folder / f"{describe_prefix}_{demo.DESCRIBE_PLAIN}.json"
        data = read_json(path)
        for item in data["items"]:
            scene = scenes[item["id"]]
            invented = world.invented_objects(scene, rng, k)
            item["prediction"] = " ".join(
                [world.describe_detailed(scene)]
                + [f"There is a {o.colour} {o.shape}." for o in invented]
            )
        atomic_write_text(path, json.dumps(data))

    base = demo.collect_arm(copy / "base" / "eval", "base", scenes, items)
    arms = demo.seed_arms(copy, 0, scenes, items, base)
    assert set(arms) == set(ARM_SOURCES)
    stated = sum(len(s.objects) for s in scenes.values())
    for k, arm in enumerate(ARM_SOURCES):
        assert arms[arm]["vqa_acc"] == pytest.approx((k + 1) / len(items)), arm
        described = k if arm != "stic_dar" else list(ARM_SOURCES).index("stic")
        invented = described * len(scenes)
        assert arms[arm]["invented_rate"] == pytest.approx(invented / (stated + invented)), arm
