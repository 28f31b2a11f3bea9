"""`stic demo --rounds N` (stic.demo.run): the rounds' run configs, the round table, and one tiny
two-round run end to end whose every round's figures are read from that round's own eval files."""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
from pathlib import Path

import pytest

from stic.demo import run as demo
from stic.demo import world
from stic.demo.run import (
    ROUND_METRICS,
    ROUND_SPLITS,
    SELECT_ENTRY,
    eval_scenes,
    results_markdown,
    round_configs,
    round_table,
    rounds_markdown,
    run_configs,
    run_demo,
    settings_record,
    unlabeled_scenes,
    write_eval_split,
)
from stic.pipeline import plan
from stic.runtime.files import atomic_write_text, read_json
from tests.demo.test_run import SMALL, run_tiny_demo

# ----------------------------------------------------------------------------- settings, configs


def test_one_round_keeps_the_settings_identity_it_had():
    # A demo folder made before --rounds existed must stay up to date with the default.
    record = settings_record(SMALL)
    assert "rounds" not in record
    assert record == {k: v for k, v in dataclasses.asdict(SMALL).items() if k != "rounds"}
    assert settings_record(dataclasses.replace(SMALL, rounds=3))["rounds"] == 3


def test_the_pool_holds_unlabeled_images_per_round():
    one = unlabeled_scenes(0, SMALL)
    three = unlabeled_scenes(0, dataclasses.replace(SMALL, rounds=3))
    assert len(three) == 3 * SMALL.unlabeled
    # The one-round pool is the start of the larger one (scenes are drawn by id).
    assert [s.id for s in three[: len(one)]] == [s.id for s in one]
    assert three[: len(one)] == one


def _round_setup(tmp_path, rounds=3):
    settings = dataclasses.replace(SMALL, base=str(tmp_path / "model"), split="test", rounds=rounds)
    with demo.demo_output(tmp_path, settings, overwrite=False) as output:
        files = write_eval_split(output, settings)
        validation = write_eval_split(output, settings, "validation")
    stage2 = tmp_path / "seed0" / "stage2" / "instruct.json"
    unlabeled = tmp_path / "seed0" / "unlabeled"
    configs = run_configs(tmp_path, 0, settings, files, stage2, unlabeled, validation)
    return settings, files, validation, configs


def test_rounds_run_config_selects_on_validation_and_tests_on_test(tmp_path):
    settings, files, validation, configs = _round_setup(tmp_path)
    stic = configs["stic"]
    assert stic["rounds"] == 3
    assert stic["select"] == {"entry": SELECT_ENTRY, "metric": "accuracy", "mode": "max"}
    planned = plan(stic)
    root = tmp_path / "seed0" / "stic"
    selects = [s for s in planned if s.name.endswith("/" + SELECT_ENTRY)]
    assert [s.config.adapter for s in selects] == [
        str(root / f"round_{r}" / "dpo") for r in (1, 2, 3)
    ]
    assert {s.config.data for s in selects} == {str(validation["vqa"])}
    # Every other entry reads the test split, at the chosen round's copy (dpo/) or after sft.
    tests = [s for s in planned if s.stage == "eval" and s not in selects]
    assert tests and {Path(s.config.data).parent.name for s in tests} == {"test"}
    assert [s.stage for s in planned if s.stage in ("pairs", "dpo")] == ["pairs", "dpo"] * 3
    assert next(s for s in planned if s.stage == "sft").config.adapter == str(root / "dpo")
    # One round: the config is exactly what it was (no rounds keys, no validation entry).
    one = run_configs(
        tmp_path,
        0,
        dataclasses.replace(settings, rounds=1),
        files,
        Path("s"),
        Path("u"),
        validation,
    )["stic"]
    assert "rounds" not in one and "select" not in one
    assert SELECT_ENTRY not in {e["name"] for e in one["eval"]}


def test_rounds_need_the_validation_files(tmp_path):
    settings = dataclasses.replace(SMALL, rounds=2)
    with pytest.raises(ValueError, match="validation"):
        run_configs(tmp_path, 0, settings, {}, Path("s"), Path("u"))


def test_round_configs_evaluate_each_rounds_adapter_on_both_splits(tmp_path):
    settings, files, validation, _ = _round_setup(tmp_path)
    configs = round_configs(tmp_path, 0, settings, files, validation)
    assert sorted(configs) == [1, 2, 3]
    outs = []
    for number, config in configs.items():
        planned = plan(config)
        assert {s.stage for s in planned} == {"eval"}
        adapter = str(tmp_path / "seed0" / "stic" / f"round_{number}" / "dpo")
        assert {s.config.adapter for s in planned} == {adapter}
        by_name = {s.name: s.config for s in planned}
        # Validation VQA is the select entry's; good-prompt descriptions are not in the table.
        assert set(by_name) == {"test_vqa", "test_describe_plain", "validation_describe_plain"}
        assert by_name["test_vqa"].data == str(files["vqa"])
        for split, split_files in (("test", files), ("validation", validation)):
            assert by_name[f"{split}_describe_plain"].data == str(split_files["describe_plain"])
        outs += [s.config.out for s in planned]
        assert all(
            Path(o).parent == tmp_path / "seed0" / f"round_{number}" / "eval"
            for o in (s.config.out for s in planned)
        )
    assert len(outs) == len(set(outs))


def test_rounds_refuse_the_validation_split(tmp_path):
    settings = dataclasses.replace(SMALL, rounds=2, split="validation")
    with pytest.raises(ValueError, match="split test"):
        run_demo(tmp_path, [0], settings)
    assert not (tmp_path / "seed0").exists()


def test_cli_refuses_rounds_on_the_validation_split(capsys):
    from stic.demo.run import main

    with pytest.raises(SystemExit) as e:
        main(["--rounds", "2", "--split", "validation", "--out", "unused"])
    assert e.value.code == 2
    assert "--split test" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the round table


def _figures(offset: float) -> dict:
    return {key: offset + 0.01 * i for i, key in enumerate(ROUND_METRICS)}


def _seed_rounds(seed: int, values: list[float], chosen: int) -> dict:
    """Round r of this seed: validation figures values[r-1] + 0.01 i, test 0.5 higher."""
    return {
        "seed": seed,
        "select": {"entry": SELECT_ENTRY, "metric": "accuracy", "mode": "max"},
        "chosen": chosen,
        "reason": f"round {chosen} is best",
        "rounds": [
            {
                "round": r,
                "validation": _figures(v),
                "test": _figures(v + 0.5),
                "select_value": v,
                "pairs": {
                    "n": 10,
                    "chosen": {"invented_any_rate": 0.1 * r},
                    "rejected": {"invented_any_rate": 0.7},
                },
            }
            for r, v in enumerate(values, start=1)
        ],
    }


def test_round_table_means_spreads_and_differences_from_round_one():
    seeds = [_seed_rounds(0, [0.10, 0.20, 0.15], 2), _seed_rounds(1, [0.30, 0.20, 0.40], 3)]
    table = round_table(seeds)
    assert table["rounds"] == 3
    assert table["select"]["entry"] == SELECT_ENTRY
    rows = table["table"]
    assert [r["round"] for r in rows] == [1, 2, 3]
    for split, shift in (("validation", 0.0), ("test", 0.5)):
        for i, key in enumerate(ROUND_METRICS):
            block = rows[1][split][key]
            assert block["per_seed"] == pytest.approx([0.20 + shift + 0.01 * i] * 2)
            assert block["mean"] == pytest.approx(0.20 + shift + 0.01 * i)
            assert block["sd"] == pytest.approx(0.0)
            third = rows[2][split][key]
            assert third["mean"] == pytest.approx(0.275 + shift + 0.01 * i)
            assert third["sd"] == pytest.approx(0.25 / 2**0.5)
            diff = rows[2][f"{split}_minus_round1"][key]
            assert diff["per_seed"] == pytest.approx([0.05, 0.10])
            assert diff["mean"] == pytest.approx(0.075)
            assert rows[0][f"{split}_minus_round1"][key]["per_seed"] == [0.0, 0.0]
    assert rows[2]["select_value"]["per_seed"] == pytest.approx([0.15, 0.40])
    assert rows[2]["pairs"]["chosen"]["mean"] == pytest.approx(0.3)
    assert [r["chosen_by_seeds"] for r in rows] == [[], [0], [1]]
    assert table["chosen"] == [
        {"seed": 0, "round": 2, "value": 0.20, "reason": "round 2 is best"},
        {"seed": 1, "round": 3, "value": 0.40, "reason": "round 3 is best"},
    ]


def test_round_table_refuses_seeds_with_other_round_counts():
    with pytest.raises(ValueError, match="same number of rounds"):
        round_table([_seed_rounds(0, [0.1, 0.2], 1), _seed_rounds(1, [0.1, 0.2, 0.3], 1)])


def test_rounds_markdown_shows_each_round_split_and_choice():
    seeds = [_seed_rounds(0, [0.10, 0.20, 0.15], 2), _seed_rounds(1, [0.30, 0.20, 0.40], 3)]
    text = rounds_markdown(round_table(seeds))
    assert text.startswith("## Self-training rounds (3 rounds, 2 seeds)")
    # Round 3, test: VQA 0.65 / 0.90, mean 77.5, sd 17.7; chosen by seed 1 (validation row).
    assert "| 3 | test | 77.5 ± 17.7 (65.0, 90.0) |" in text
    assert "| 3 | validation | 27.5 ± 17.7 (15.0, 40.0) |" in text
    assert "| 3 | test | +7.5 ± 3.5 (+5.0, +10.0) |" in text
    assert "| 0 | 2 | round 2 is best |" in text and "| 1 | 3 | round 3 is best |" in text
    validation_rows = [line for line in text.splitlines() if line.startswith("| 2 | validation |")]
    assert validation_rows[0].endswith("| 0 |")  # chosen by seed 0


def test_results_markdown_has_the_round_section_only_with_rounds():
    from tests.demo.test_run import _per_seed, _results

    results = _results([_per_seed(0.0)])
    assert "Self-training rounds" not in results_markdown(results)
    results["rounds"] = round_table([_seed_rounds(0, [0.1, 0.2], 2)])
    text = results_markdown(results)
    assert "## Self-training rounds (2 rounds, 1 seed)" in text
    assert "round 1's; the no-negatives arm trains on them" in text


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def rounds_run(tmp_path_factory):
    """One run_demo with two rounds (seed 0) on the tiny base model."""
    return run_tiny_demo(tmp_path_factory, "demo_rounds", split="test", rounds=2)


@pytest.mark.slow
def test_demo_rounds_write_the_round_table(rounds_run):
    out, results, settings = rounds_run["out"], rounds_run["results"], rounds_run["settings"]
    assert read_json(out / "results.json") == json.loads(json.dumps(results))
    assert results["settings"]["rounds"] == 2
    table = results["rounds"]
    assert table["rounds"] == 2 and [r["round"] for r in table["table"]] == [1, 2]
    rounds_json = read_json(out / "seed0" / "stic" / "rounds.json")
    [chosen] = table["chosen"]
    assert chosen["round"] == rounds_json["chosen"] and chosen["reason"] == rounds_json["reason"]
    [seed] = results["seeds"]
    for row in seed["rounds"]["rounds"]:
        number = row["round"]
        # Each round made its own pairs, on its own share of the pool.
        assert row["pairs"]["n"] == len(
            (out / "seed0" / "stic" / f"round_{number}" / "pairs.jsonl").read_text().splitlines()
        )
        # The round's validation VQA (its own eval) and its select value (the rounds' entry)
        # are the same weights on the same questions.
        select = read_json(out / "seed0" / "stic" / f"round_{number}" / "eval" / "select_vqa.json")
        assert row["select_value"] == select["accuracy"]
        assert select["adapter"] == str(out / "seed0" / "stic" / f"round_{number}" / "dpo")
        assert row["validation"]["vqa_acc"] == pytest.approx(select["accuracy"])
        result = read_json(out / "seed0" / f"round_{number}" / "eval" / "test_vqa.json")
        assert result["adapter"] == str(out / "seed0" / "stic" / f"round_{number}" / "dpo")
    pool = sum(1 for _ in (out / "seed0" / "unlabeled").iterdir())
    assert pool == 2 * settings.unlabeled
    assert sum(r["pairs"]["n"] for r in seed["rounds"]["rounds"]) == pool
    md = (out / "results.md").read_text()
    assert "## Self-training rounds (2 rounds, 1 seed)" in md
    for number in (1, 2):
        for split in ROUND_SPLITS:
            assert f"| {number} | {split} |" in md
    # The arms table is the chosen round's: stage 1's entries read dpo/, its copy.
    manifest = read_json(out / "seed0" / "stic" / "dpo" / "stic_manifest.json")
    assert manifest["summary"]["round"] == chosen["round"]


@pytest.mark.slow
def test_each_round_reads_its_own_eval_files(rounds_run, tmp_path):
    """The tiny run's answers are all wrong, so every round scores 0 and a mix-up (round 2
    read from round 1's files, a split from the other) would pass. Here a copy of the round
    eval files is rewritten so that round r on split k answers (2r + k) questions right and
    invents (2r + k) objects per description; each must report its own."""
    out, settings = rounds_run["out"], rounds_run["settings"]
    scenes = {split: {s.id: s for s in eval_scenes(settings, split)} for split in ROUND_SPLITS}
    items = {
        split: [json.loads(line) for line in (out / "data" / split / "vqa.jsonl").open()]
        for split in ROUND_SPLITS
    }
    copy = tmp_path / "copy"
    for number in (1, 2):
        shutil.copytree(out / "seed0" / f"round_{number}", copy / "seed0" / f"round_{number}")
    shutil.copytree(out / "seed0" / "stic", copy / "seed0" / "stic")
    rng = random.Random(0)

    def count(number, split):
        return 2 * number + ROUND_SPLITS.index(split) - 2  # 0, 1, 2, 3

    for number in (1, 2):
        ev = copy / "seed0" / f"round_{number}" / "eval"
        vqa = {
            "test": ev / "test_vqa.json",
            # The round's validation VQA: the select entry the rounds ran.
            "validation": copy / "seed0" / "stic" / f"round_{number}" / "eval" / "select_vqa.json",
        }
        for split in ROUND_SPLITS:
            k = count(number, split)
            path = vqa[split]
            data = read_json(path)
            answers = {item["id"]: item["answer"] for item in items[split]}
            for i, item in enumerate(data["items"]):
                item["prediction"] = answers[item["id"]] if i < k else "zzz"
            atomic_write_text(path, json.dumps(data))
            path = ev / f"{split}_{demo.DESCRIBE_PLAIN}.json"
            data = read_json(path)
            for item in data["items"]:
                scene = scenes[split][item["id"]]
                item["prediction"] = " ".join(
                    [world.describe_detailed(scene)]
                    + [
                        f"There is a {o.colour} {o.shape}."
                        for o in world.invented_objects(scene, rng, k)
                    ]
                )
            atomic_write_text(path, json.dumps(data))

    unl = {s.id: s for s in unlabeled_scenes(0, settings)}
    got = demo.seed_rounds(copy, 0, scenes, items, unl)
    assert [r["round"] for r in got["rounds"]] == [1, 2]
    for row in got["rounds"]:
        for split in ROUND_SPLITS:
            k = count(row["round"], split)
            assert row[split]["vqa_acc"] == pytest.approx(k / len(items[split])), (row, split)
            stated = sum(len(s.objects) for s in scenes[split].values())
            invented = k * len(scenes[split])
            assert row[split]["invented_rate"] == pytest.approx(invented / (stated + invented))
