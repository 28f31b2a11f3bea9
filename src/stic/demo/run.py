"""``stic demo``: STIC's measured effect on a tiny LLaVA in a synthetic world, on a laptop CPU.

The base model (``stic/demo/tiny_llava``, built by ``stic demo-model``) is a tiny LLaVA-1.5 trained
from nothing on a world of coloured shapes whose ground truth is known (:mod:`stic.demo.world`), so
every description can be checked exactly. In the world's labeled data each anchor object
usually comes with its (small, faint) companion, and plain captions name it even when it is
absent; in unlabeled and test scenes it is there less often. So the base model invents the
companion in its plain descriptions, as real LVLMs invent the objects that usually co-occur,
while its answers to the careful step-by-step prompt stay faithful: STIC's premise.

For each seed the demo runs, through ``stic run`` and the same stages and files a real run uses:

- stage1        pairs on a pool of UNLABELED images (their labels are never written), then DPO
- stic          stage1, then infuse + SFT on a small labeled instruction slice
- stic_dar      stic, answering with describe-and-respond
- stage2_only   the control: infuse + SFT from the base model, no stage 1
- no_negatives  the ablation: SFT on stage 1a's chosen descriptions instead of DPO (stage 1 only)

and evaluates them, and the base model, on one fixed held-out split: VQA accuracy per question
type, and the descriptions' invented objects, wrong colours and shapes, recall and exact rate.
It writes OUT/results.json, OUT/results.md and OUT/report.html (``stic report``).
Hyperparameters were chosen on the validation split (``--split validation``); the test split is
the default and is never tuned on.

With ``--rounds N`` (N >= 2) the full-STIC arm runs N self-training rounds (``rounds: N`` in its
``stic run`` config, each round on its own ``--unlabeled`` fresh images), and the round whose
validation-split VQA accuracy is highest is chosen (``select:``); the stage1, stic and stic_dar
arms are that round's (no_negatives trains on round 1's pairs, the base model's). Each round's
adapter is also evaluated on both splits (``seed<s>/round_<r>.yaml``), and the results gain a
round table.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import yaml

from stic.data.prompts import GOOD_PROMPT, PLAIN_PROMPTS
from stic.data.schemas import read_pairs
from stic.demo import world
from stic.runtime.files import read_json
from stic.runtime.output import Output
from stic.runtime.rng import item_rng

ARMS = ("base", "stage1", "stage2_only", "stic", "stic_dar", "no_negatives")
# Paired per-seed differences reported (a, b): a - b.
PAIRED = (
    ("stic", "stage2_only"),
    ("stic", "base"),
    ("stic", "no_negatives"),
    ("stage1", "base"),
    ("stage1", "no_negatives"),
    ("stic_dar", "stic"),
)
SPLIT_SEEDS = {"validation": 7001, "test": 9001}
DESCRIBE_PLAIN = "describe_plain"  # the pairs' prompt kind: what stage 1 trains
DESCRIBE_GOOD = "describe_good"


@dataclass(frozen=True)
class DemoSettings:
    """What the demo runs; chosen on the validation split (see docs/demo_results.md)."""

    base: str = ""
    split: str = "test"
    eval_scenes: int = 500
    unlabeled: int = 1500
    stage2_scenes: int = 250
    describe_tokens: int = 80
    batch_size: int = 64
    lowres_short_side: int = 12
    # Stage 1b: LoRA on every linear layer of the tiny language model.
    lora_r: int = 32
    lora_alpha: int = 64
    dpo_lr: float = 3e-5
    dpo_epochs: float = 1.0
    dpo_batch: int = 8
    # Weight of the NLL term on the chosen answer (the paper: 1/1024 on the summed log-prob).
    dpo_alpha: float = 1 / 1024
    dpo_nll_normalization: str = "sum"
    # Stage 2.
    sft_lr: float = 2e-4
    sft_epochs: float = 1.0
    sft_batch: int = 16
    # Self-training rounds of the full-STIC arm (1: STIC's single stage 1). With N >= 2 each
    # round reads `unlabeled` fresh images (the pool holds N x unlabeled), so round 1 trains on
    # as many pairs as the one-round demo.
    rounds: int = 1


def settings_record(settings: DemoSettings) -> dict:
    """The settings as recorded (the demo's identity, results.json): ``rounds`` only when > 1,
    so a one-round demo folder keeps the identity it had before rounds existed."""
    record = asdict(settings)
    if settings.rounds == 1:
        del record["rounds"]
    return record


# ----------------------------------------------------------------------------- inputs


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def eval_scenes(settings: DemoSettings, split: str | None = None) -> list[world.Scene]:
    """The fixed evaluation split (the same for every seed); ``split`` default: the settings'."""
    split = split or settings.split
    return world.make_scenes(SPLIT_SEEDS[split], split, settings.eval_scenes)


def write_eval_split(
    output: Output, settings: DemoSettings, split: str | None = None
) -> dict[str, Path]:
    """Images and question files of an evaluation split (default: the settings' split), in the
    demo's ``data/<split>``."""
    split = split or settings.split
    scenes = eval_scenes(settings, split)
    root = f"data/{split}"
    images = output.subfolder(f"{root}/images")
    vqa, plain, good = [], [], []
    for scene in scenes:
        path = images / f"{scene.id}.png"
        if not path.exists():
            world.render(scene).save(path)
        vqa += world.vqa_items(scene, item_rng(SPLIT_SEEDS[split], scene.id, "vqa"))
        truth = world.describe_detailed(scene)
        prompt = PLAIN_PROMPTS[item_rng(0, scene.id, "plain").randrange(len(PLAIN_PROMPTS))]
        plain.append({"id": scene.id, "image": path.name, "question": prompt, "answer": truth})
        good.append({"id": scene.id, "image": path.name, "question": GOOD_PROMPT, "answer": truth})
    files = {"images": images, "vqa": output.write_text(_jsonl(vqa), f"{root}/vqa.jsonl")}
    for name, rows in ((DESCRIBE_PLAIN, plain), (DESCRIBE_GOOD, good)):
        files[name] = output.write_text(_jsonl(rows), f"{root}/{name}.jsonl")
    return files


def unlabeled_scenes(seed: int, settings: DemoSettings) -> list[world.Scene]:
    """The seed's pool of unlabeled scenes: ``unlabeled`` per round (the rounds split it)."""
    return world.make_scenes(1000 + seed, "unlabeled", settings.unlabeled * settings.rounds)


def write_unlabeled(output: Output, seed: int, settings: DemoSettings) -> Path:
    """Only the pixels: nothing of the scenes' ground truth is written for the stages to read."""
    folder = output.subfolder(f"seed{seed}/unlabeled")
    for scene in unlabeled_scenes(seed, settings):
        path = folder / f"{scene.id}.png"
        if not path.exists():
            world.render(scene).save(path)
    return folder


def write_stage2_data(output: Output, seed: int, settings: DemoSettings, recipe) -> Path:
    """A small slice of the base model's labeled scenes as VQA conversations (LLaVA format),
    like the paper's 5k-sample slice of LLaVA's instruction data: drawn as the base model's own
    questions were (``recipe.ask_absent_companions``)."""
    from stic.demo.base_model import labeled_scenes

    scenes = labeled_scenes(recipe)
    rng = item_rng(seed, "stage2", "slice")
    picked = sorted(rng.sample(range(len(scenes)), min(settings.stage2_scenes, len(scenes))))
    images = output.subfolder(f"seed{seed}/stage2/images")
    records = []
    for i in picked:
        scene = scenes[i]
        srng = item_rng(seed, scene.id, "stage2")
        items = world.vqa_items(scene, srng, recipe.ask_absent_companions)
        path = images / f"{scene.id}.png"
        if not path.exists():
            world.render(scene).save(path)
        asked = srng.sample(items, 3)
        records.append(world.vqa_conversation(scene.id, asked, path.name).to_dict())
    return output.write_json(records, f"seed{seed}/stage2/instruct.json")


def chosen_as_instructions(pairs_path: Path, output: Output, name: str) -> Path:
    """The "no negatives" ablation's data: each pair's stored prompt answered with its chosen text."""
    records = [
        {
            "id": pair.id,
            "image": pair.image,
            "conversations": [
                {"from": "human", "value": "<image>\n" + pair.prompt},
                {"from": "gpt", "value": pair.chosen},
            ],
        }
        for pair in read_pairs(pairs_path)
        if pair.chosen_finish == "stop"
    ]
    return output.write_json(records, name)


# ----------------------------------------------------------------------------- run configs


def _evals(
    prefix: str,
    files: dict[str, Path],
    settings: DemoSettings,
    at: str | None,
    adapter: Path | None = None,
) -> list:
    """The demo's three eval entries (VQA, plain- and good-prompt descriptions) of one split,
    at ``at`` or, instead, at the weights in ``adapter``."""
    common = {"images": str(files["images"]), "batch_size": settings.batch_size}
    if at is not None:
        common["at"] = at
    if adapter is not None:
        common["adapter"] = str(adapter)
    return [
        {"name": f"{prefix}_vqa", "data": str(files["vqa"]), "max_new_tokens": 8, **common},
        *(
            {
                "name": f"{prefix}_{kind}",
                "data": str(files[kind]),
                "instruction": "",
                "max_new_tokens": settings.describe_tokens,
                **common,
            }
            for kind in (DESCRIBE_PLAIN, DESCRIBE_GOOD)
        ),
    ]


def _train(settings: DemoSettings, stage: str) -> dict:
    lr, epochs, batch = (
        (settings.dpo_lr, settings.dpo_epochs, settings.dpo_batch)
        if stage == "dpo"
        else (settings.sft_lr, settings.sft_epochs, settings.sft_batch)
    )
    extra = (
        {"alpha": settings.dpo_alpha, "nll_normalization": settings.dpo_nll_normalization}
        if stage == "dpo"
        else {}
    )
    return {
        **extra,
        "lr": lr,
        "epochs": epochs,
        "batch_size": batch,
        "grad_accum": 1,
        "lora_r": settings.lora_r,
        "lora_alpha": settings.lora_alpha,
        "lora_dropout": 0.0,
        "max_length": 512,
        "logging_steps": 10,
        "save_steps": 50,
    }


SELECT_ENTRY = "select_vqa"  # the full-STIC arm's validation entry that chooses the round
SELECT_METRIC = "accuracy"  # of its eval result (VQA accuracy), highest wins
SELECT_MODE = "max"


def run_configs(
    out: Path,
    seed: int,
    settings: DemoSettings,
    files: dict,
    stage2: Path,
    unlabeled: Path,
    validation: dict | None = None,
) -> dict[str, dict]:
    """The ``stic run`` configs of one seed, by name. With ``settings.rounds`` >= 2 the stic arm
    runs that many rounds, chosen on VQA accuracy on ``validation`` (the validation split's files
    from :func:`write_eval_split`; required then)."""
    root = out / f"seed{seed}"
    shared = {"model": settings.base, "seed": seed, "dtype": "float32"}
    infuse = {
        "images": str(stage2.parent / "images"),
        "data": str(stage2),
        "batch_size": settings.batch_size,
        "max_new_tokens": settings.describe_tokens,
    }
    dpo_schedule = _train(settings, "dpo")
    rounds: dict = {}
    select_entries: list = []
    if settings.rounds > 1:
        if validation is None:
            raise ValueError("rounds >= 2 need the validation split's files (validation=)")
        rounds = {
            "rounds": settings.rounds,
            "select": {"entry": SELECT_ENTRY, "metric": SELECT_METRIC, "mode": SELECT_MODE},
        }
        # Run once per round at that round's adapter (the rounds set its weights).
        select_entries = [
            {
                "name": SELECT_ENTRY,
                "data": str(validation["vqa"]),
                "images": str(validation["images"]),
                "batch_size": settings.batch_size,
                "max_new_tokens": 8,
            }
        ]
    return {
        "stic": {
            **rounds,
            **shared,
            "output_dir": str(root / "stic"),
            "pairs": {
                "images": str(unlabeled),
                "batch_size": settings.batch_size,
                "max_new_tokens": settings.describe_tokens,
                "lowres_short_side": settings.lowres_short_side,
            },
            "dpo": dpo_schedule,
            "infuse": infuse,
            "sft": _train(settings, "sft"),
            "eval": [
                *_evals("stage1", files, settings, "stage1"),
                *_evals("stic", files, settings, "final"),
                {
                    "name": "stic_dar_vqa",
                    "data": str(files["vqa"]),
                    "images": str(files["images"]),
                    "batch_size": settings.batch_size,
                    "max_new_tokens": 8,
                    "dar": True,
                    "dar_max_new_tokens": settings.describe_tokens,
                },
                *select_entries,
            ],
        },
        "stage2_only": {
            **shared,
            "output_dir": str(root / "stage2_only"),
            "infuse": infuse,
            "sft": _train(settings, "sft"),
            "eval": _evals("stage2_only", files, settings, "final"),
        },
        "no_negatives": {
            **shared,
            "output_dir": str(root / "no_negatives"),
            "sft": {
                # Stage 1's schedule, on the chosen answers alone.
                **{
                    k: v for k, v in dpo_schedule.items() if k not in ("alpha", "nll_normalization")
                },
                "data": str(root / "no_negatives" / "chosen.json"),
                "images": str(unlabeled),
            },
            "eval": _evals("no_negatives", files, settings, "final"),
        },
    }


def round_configs(
    out: Path, seed: int, settings: DemoSettings, files: dict, validation: dict
) -> dict[int, dict]:
    """Eval-only ``stic run`` configs, one per round of the stic arm (by round number): that
    round's adapter (``seed<s>/stic/round_<r>/dpo``) answering the test split's questions
    (``test_vqa``) and describing both splits' images under a plain prompt
    (``test_describe_plain``, ``validation_describe_plain``), under ``seed<s>/round_<r>/eval``.

    Only what the round table reads: its validation VQA is the select entry's result (the same
    weights on the same questions, already run by the rounds), and good-prompt descriptions
    are not in it. On the demo's 2-core machine each eval costs minutes per round and seed.
    """
    root = out / f"seed{seed}"
    configs = {}
    for number in range(1, settings.rounds + 1):
        adapter = root / "stic" / f"round_{number}" / "dpo"
        test = _evals("test", files, settings, None, adapter)
        validation_entries = _evals("validation", validation, settings, None, adapter)
        wanted = {"test_vqa", f"test_{DESCRIBE_PLAIN}", f"validation_{DESCRIBE_PLAIN}"}
        configs[number] = {
            "model": settings.base,
            "seed": seed,
            "dtype": "float32",
            "output_dir": str(root / f"round_{number}"),
            "eval": [e for e in (*test, *validation_entries) if e["name"] in wanted],
        }
    return configs


def base_config(out: Path, settings: DemoSettings, files: dict) -> dict:
    return {
        "model": settings.base,
        "dtype": "float32",
        "output_dir": str(out / "base"),
        "eval": _evals("base", files, settings, "base"),
    }


# ----------------------------------------------------------------------------- metrics


def _predictions(path: Path) -> dict[str, str]:
    return {item["id"]: item["prediction"] for item in read_json(path)["items"]}


def description_block(predictions: dict[str, str], scenes: dict) -> dict:
    return world.description_metrics([(text, scenes[sid]) for sid, text in predictions.items()])


def _se(rate: float, n: int) -> float:
    return math.sqrt(rate * (1 - rate) / n) if n else 0.0


def collect_arm(eval_dir: Path, prefix: str, scenes: dict, items: list[dict], describe_from=None):
    """Metrics of one arm; ``describe_from``: (eval_dir, prefix) whose descriptions to score."""
    preds = _predictions(eval_dir / f"{prefix}_vqa.json")
    vqa = world.vqa_metrics([{"id": k, "prediction": v} for k, v in preds.items()], items)
    d_dir, d_prefix = describe_from or (eval_dir, prefix)
    plain = description_block(_predictions(d_dir / f"{d_prefix}_{DESCRIBE_PLAIN}.json"), scenes)
    good = description_block(_predictions(d_dir / f"{d_prefix}_{DESCRIBE_GOOD}.json"), scenes)
    stated_plain = _stated(d_dir / f"{d_prefix}_{DESCRIBE_PLAIN}.json", scenes)
    return {
        "vqa_acc": vqa["accuracy"],
        "vqa_acc_by_type": vqa["by_type"],
        "exists_absent_acc": vqa["by_type"].get("exists_absent_prior", 0.0),
        "exists_absent_n": vqa["count_by_type"].get("exists_absent_prior", 0),
        "invented_rate": plain["invented_rate"],
        "invented_rate_se": _se(plain["invented_rate"], stated_plain),
        "invented_rate_detailed": good["invented_rate"],
        "invented_prior_rate": plain["invented_prior_rate"],
        "wrong_color_rate": plain["wrong_color_rate"],
        "wrong_shape_rate": plain["wrong_shape_rate"],
        "recall": plain["recall"],
        "exact_rate": plain["exact_rate"],
        "exact_rate_detailed": good["exact_rate"],
        "recall_detailed": good["recall"],
    }


def _stated(path: Path, scenes: dict) -> int:
    return sum(
        world.score_description(text, scenes[sid])["stated"]
        for sid, text in _predictions(path).items()
    )


def pair_metrics(pairs_path: Path, scenes: dict) -> dict:
    """How often chosen and rejected answers of stage 1a hallucinate, by rejected kind.

    Scored against the unlabeled scenes' ground truth, which the stages never see: this is the
    demo's check that the negatives carry the errors STIC should remove.
    """
    pairs = read_pairs(pairs_path)
    out = {"n": len(pairs)}

    def block(rows, side):
        m = world.description_metrics(
            [(getattr(p, side), scenes[Path(p.image).stem]) for p in rows]
        )
        return {
            "invented_rate": m["invented_rate"],
            "invented_any_rate": m["invented_any_rate"],
            "invented_prior_rate": m["invented_prior_rate"],
        }

    out["chosen"] = block(pairs, "chosen")
    out["rejected"] = block(pairs, "rejected")
    for kind in sorted({p.rejected_kind for p in pairs}):
        rows = [p for p in pairs if p.rejected_kind == kind]
        out[f"rejected_{kind}"] = {**block(rows, "rejected"), "n": len(rows)}
    chosen_any = out["chosen"]["invented_any_rate"]
    # None when no chosen answer invents anything (the ratio is unbounded).
    out["rejected_over_chosen"] = (
        out["rejected"]["invented_any_rate"] / chosen_any if chosen_any else None
    )
    return out


METRICS = (
    "vqa_acc",
    "exists_absent_acc",
    "invented_rate",
    "invented_rate_detailed",
    "invented_prior_rate",
    "wrong_color_rate",
    "wrong_shape_rate",
    "recall",
    "exact_rate",
)


def summarize(per_seed: list[dict]) -> dict:
    """Mean and spread of every arm's metrics over seeds, and the paired per-seed differences."""
    arms = {}
    for arm in ARMS:
        rows = [s["arms"][arm] for s in per_seed]
        block = {}
        for key in rows[0]:
            if key == "vqa_acc_by_type":
                types = rows[0][key]
                block[key] = {t: statistics.fmean(r[key][t] for r in rows) for t in types}
            else:
                block[key] = statistics.fmean(r[key] for r in rows)
                if len(rows) > 1 and key in METRICS:
                    block[key + "_sd"] = statistics.stdev(r[key] for r in rows)
        arms[arm] = block
    paired = {}
    for a, b in PAIRED:
        diffs = {key: [s["arms"][a][key] - s["arms"][b][key] for s in per_seed] for key in METRICS}
        paired[f"{a}-{b}"] = {
            key: {"per_seed": values, "mean": statistics.fmean(values)}
            for key, values in diffs.items()
        }
    return {"arms": arms, "paired": paired}


# The figures of the round table: VQA, absent-prior (absent-companion) existence, invented objects.
ROUND_METRICS = ("vqa_acc", "exists_absent_acc", "invented_rate", "invented_prior_rate")
ROUND_SPLITS = ("validation", "test")


def round_figures(vqa: Path, plain: Path, scenes: dict, items: list[dict]) -> dict:
    """ROUND_METRICS from one VQA result file and one plain-prompt description result file."""
    preds = _predictions(vqa)
    m = world.vqa_metrics([{"id": k, "prediction": v} for k, v in preds.items()], items)
    described = description_block(_predictions(plain), scenes)
    return {
        "vqa_acc": m["accuracy"],
        "exists_absent_acc": m["by_type"].get("exists_absent_prior", 0.0),
        "invented_rate": described["invented_rate"],
        "invented_prior_rate": described["invented_prior_rate"],
    }


def seed_rounds(
    out: Path, seed: int, scenes: dict[str, dict], items: dict[str, list], unlabeled: dict
) -> dict:
    """One seed's rounds: the stic arm's ``rounds.json`` (chosen round, why, select values) and,
    per round, the demo's figures on each split read from that round's own files: test VQA and
    both splits' descriptions from ``seed<s>/round_<r>/eval`` (:func:`round_configs`),
    validation VQA from the select entry's ``seed<s>/stic/round_<r>/eval/select_vqa.json``; and
    its pairs' figures. ``scenes`` and ``items``: by split; ``unlabeled``: the seed's unlabeled
    scenes by id."""
    root = out / f"seed{seed}"
    table = read_json(root / "stic" / "rounds.json")
    metric = table["select"]["metric"]
    rows = []
    for row in table["table"]:
        number = row["round"]
        ev = root / f"round_{number}" / "eval"
        vqa = {
            "test": ev / "test_vqa.json",
            "validation": root / "stic" / f"round_{number}" / "eval" / f"{SELECT_ENTRY}.json",
        }
        figures = {
            split: round_figures(
                vqa[split], ev / f"{split}_{DESCRIBE_PLAIN}.json", scenes[split], items[split]
            )
            for split in ROUND_SPLITS
        }
        rows.append(
            {
                "round": number,
                **figures,
                "select_value": row[metric],
                "pairs": pair_metrics(root / "stic" / f"round_{number}" / "pairs.jsonl", unlabeled),
            }
        )
    return {
        "seed": seed,
        "select": table["select"],
        "chosen": table["chosen"],
        "reason": table["reason"],
        "rounds": rows,
    }


def _spread(values: list[float]) -> dict:
    block = {"mean": statistics.fmean(values), "per_seed": list(values)}
    if len(values) > 1:
        block["sd"] = statistics.stdev(values)
    return block


def round_table(per_seed: list[dict]) -> dict:
    """The round table over seeds (``per_seed``: :func:`seed_rounds` of each seed, same rounds):
    per round and split, each of ROUND_METRICS as mean / per seed / sd, and the paired per-seed
    difference from round 1; the select value; the pairs' invented rates; which seeds chose it;
    and per seed the chosen round and why."""
    count = len(per_seed[0]["rounds"])
    if any(len(s["rounds"]) != count for s in per_seed):
        raise ValueError("every seed must have the same number of rounds")
    table = []
    for index in range(count):
        rows = [s["rounds"][index] for s in per_seed]
        first = [s["rounds"][0] for s in per_seed]
        entry: dict = {"round": index + 1}
        for split in ROUND_SPLITS:
            entry[split] = {key: _spread([r[split][key] for r in rows]) for key in ROUND_METRICS}
            entry[f"{split}_minus_round1"] = {
                key: _spread(
                    [r[split][key] - f[split][key] for r, f in zip(rows, first, strict=True)]
                )
                for key in ROUND_METRICS
            }
        entry["select_value"] = _spread([r["select_value"] for r in rows])
        entry["pairs"] = {
            "n": _spread([r["pairs"]["n"] for r in rows]),
            **{
                side: _spread([r["pairs"][side]["invented_any_rate"] for r in rows])
                for side in ("chosen", "rejected")
            },
        }
        entry["chosen_by_seeds"] = [s["seed"] for s in per_seed if s["chosen"] == index + 1]
        table.append(entry)
    return {
        "rounds": count,
        "select": per_seed[0]["select"],
        "table": table,
        "chosen": [
            {
                "seed": s["seed"],
                "round": s["chosen"],
                "value": s["rounds"][s["chosen"] - 1]["select_value"],
                "reason": s["reason"],
            }
            for s in per_seed
        ],
    }


def rounds_markdown(table: dict) -> str:
    """The round table of results.md (see :func:`round_table`)."""
    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    select = table["select"]
    n = len(table["chosen"])

    def cell(block, signed=False):
        fmt = (lambda v: f"{100 * v:+.1f}") if signed else pct  # noqa: E731
        text = fmt(block["mean"])
        if "sd" in block:
            text += f" ± {pct(block['sd'])} (" + ", ".join(fmt(v) for v in block["per_seed"]) + ")"
        return text

    names = ("VQA", "absent-prior existence", "invented", "with prior invented")
    lines = [
        f"## Self-training rounds ({table['rounds']} rounds, {n} seed{'s' if n > 1 else ''})",
        "",
        f"Each round chosen on the validation split: {select['entry']} {select['metric']}, "
        f"{select['mode']}; the arms above are the chosen round's. Rates in %"
        + ("; mean ± sd (per seed)." if n > 1 else "."),
        "",
        "| round | split | " + " | ".join(names) + " | chosen by seeds |",
        "|---|---|" + "---|" * len(names) + "---|",
    ]
    for row in table["table"]:
        for split in ROUND_SPLITS:
            chosen = ", ".join(map(str, row["chosen_by_seeds"])) or "-"
            lines.append(
                f"| {row['round']} | {split} | "
                + " | ".join(cell(row[split][key]) for key in ROUND_METRICS)
                + f" | {chosen if split == 'validation' else ''} |"
            )
    lines += ["", "Round r − round 1 (points; per seed, same items):", ""]
    lines += [
        "| round | split | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for row in table["table"][1:]:
        for split in ROUND_SPLITS:
            block = row[f"{split}_minus_round1"]
            lines.append(
                f"| {row['round']} | {split} | "
                + " | ".join(cell(block[key], signed=True) for key in ROUND_METRICS)
                + " |"
            )
    lines += ["", "Each round's pairs (share of answers with an invented object, %):", ""]
    lines += ["| round | pairs | chosen | rejected |", "|---|---|---|---|"]
    for row in table["table"]:
        p = row["pairs"]
        lines.append(
            f"| {row['round']} | {p['n']['mean']:.0f} | {cell(p['chosen'])} | "
            f"{cell(p['rejected'])} |"
        )
    lines += ["", "Chosen round per seed:", "", "| seed | round | why |", "|---|---|---|"]
    for c in table["chosen"]:
        lines.append(f"| {c['seed']} | {c['round']} | {c['reason']} |")
    return "\n".join(lines + [""])


def results_markdown(results: dict) -> str:
    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    n = len(results["seeds"])
    lines = [
        f"# STIC demo results ({n} seed{'s' if n > 1 else ''}, {results['split']} split, "
        f"{results['eval_scenes']} scenes)",
        "",
        "Rates in %. invented/wrong colour/wrong shape: share of stated objects the scene lacks, "
        "in descriptions answering a plain prompt (the pairs' prompt kind); 'detailed': answering "
        "the good prompt. with prior invented: share of (plain-prompt) descriptions claiming "
        "an anchor's usual companion that the scene lacks. absent-prior existence: yes/no "
        "questions about such an absent companion (answer: no)."
        + (" Mean ± sd over seeds." if n > 1 else ""),
        "",
        "| arm | VQA | absent-prior existence | invented | invented (detailed) | "
        "with prior invented | wrong colour | wrong shape | recall | exact |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arm in ARMS:
        m = results["arms"][arm]

        def cell(key, m=m):
            sd = m.get(key + "_sd")
            return pct(m[key]) + (f" ± {pct(sd)}" if sd is not None else "")

        lines.append(f"| {arm} | " + " | ".join(cell(k) for k in METRICS) + " |")
    types = list(results["arms"]["base"]["vqa_acc_by_type"])
    lines += ["", "VQA accuracy by question type (%):", ""]
    lines += ["| arm | " + " | ".join(types) + " |", "|---" * (len(types) + 1) + "|"]
    for arm in ARMS:
        by_type = results["arms"][arm]["vqa_acc_by_type"]
        lines.append(f"| {arm} | " + " | ".join(pct(by_type[t]) for t in types) + " |")
    lines += ["", "Paired differences per seed (points; a − b on the same test items):", ""]
    lines += [
        "| a − b | VQA | absent-prior existence | invented | invented (detailed) | with prior invented | exact |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, block in results["paired"].items():

        def diff(key, block=block):
            values = ", ".join(f"{100 * v:+.1f}" for v in block[key]["per_seed"])
            return f"{100 * block[key]['mean']:+.1f}" + (f" ({values})" if n > 1 else "")

        keys = (
            "vqa_acc",
            "exists_absent_acc",
            "invented_rate",
            "invented_rate_detailed",
            "invented_prior_rate",
            "exact_rate",
        )
        lines.append(f"| {name.replace('-', ' − ')} | " + " | ".join(diff(k) for k in keys) + " |")
    lines += [
        "",
        "Stage-1a pairs"
        + (" (round 1's; the no-negatives arm trains on them)" if "rounds" in results else "")
        + ", scored against the unlabeled scenes' truth (never read by the stages):",
        "",
    ]
    lines += [
        "| seed | pairs | chosen with an invented object | rejected with one | ratio |",
        "|---|---|---|---|---|",
    ]
    for s in results["seeds"]:
        p = s["pairs"]
        ratio = "∞" if p["rejected_over_chosen"] is None else f"{p['rejected_over_chosen']:.1f}×"
        lines.append(
            f"| {s['seed']} | {p['n']} | {pct(p['chosen']['invented_any_rate'])} | "
            f"{pct(p['rejected']['invented_any_rate'])} | {ratio} |"
        )
    if "rounds" in results:
        lines += ["", rounds_markdown(results["rounds"])]
    lines += ["", f"{results['seconds']:.0f} s in all.", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- driver


def _run(config: dict, output: Output, name: str, log, overwrite: bool = False) -> None:
    from stic.pipeline import run_pipeline

    path = output.write_text(yaml.safe_dump(config, sort_keys=False), name)
    for planned, summary in run_pipeline(path, overwrite=overwrite):
        keep = ("accuracy", "n", "pairs", "samples", "train_loss")
        shown = {k: v for k, v in summary.details.items() if k in keep}
        if summary.up_to_date:
            shown["up_to_date"] = True
        log(f"  {planned.stage:>6} {planned.name:<26} {json.dumps(shown, default=str)}")


def seed_arms(out: Path, seed: int, scenes: dict, items: list[dict], base: dict) -> dict:
    """Every arm's metrics for one seed, each read from that arm's own eval files under ``out``
    (``base``: the base model's, measured once for all seeds)."""
    ev = {
        name: out / f"seed{seed}" / name / "eval"
        for name in ("stic", "stage2_only", "no_negatives")
    }
    return {
        "base": base,
        "stage1": collect_arm(ev["stic"], "stage1", scenes, items),
        "stage2_only": collect_arm(ev["stage2_only"], "stage2_only", scenes, items),
        "stic": collect_arm(ev["stic"], "stic", scenes, items),
        # Describe-and-respond answers; its descriptions are stic's (DaR changes only answers).
        "stic_dar": collect_arm(
            ev["stic"], "stic_dar", scenes, items, describe_from=(ev["stic"], "stic")
        ),
        "no_negatives": collect_arm(ev["no_negatives"], "no_negatives", scenes, items),
    }


def run_demo(
    out: Path, seeds: list[int], settings: DemoSettings, log=print, overwrite: bool = False
) -> dict:
    """Run every arm for every seed and write ``out/results.json`` and ``out/results.md``."""
    from stic.demo.base_model import BaseModelRecipe, check_world

    if settings.rounds < 1:
        raise ValueError(f"rounds: {settings.rounds} is not allowed (an integer >= 1)")
    if settings.rounds > 1 and settings.split != "test":
        # The rounds are chosen on the validation split; the arms must be measured elsewhere.
        raise ValueError(
            f"rounds: {settings.rounds} needs split test (the round is chosen on the "
            f"validation split), not {settings.split!r}"
        )
    start = time.time()
    recipe = BaseModelRecipe(**check_world(settings.base))
    with demo_output(out, settings, overwrite) as output:
        # What an earlier run of these settings wrote stays listed (a later --overwrite deletes it).
        output.begin(files=(output.recorded or {}).get("files", []))
        files = write_eval_split(output, settings)
        scenes = {s.id: s for s in eval_scenes(settings)}
        items = [json.loads(line) for line in files["vqa"].read_text().splitlines()]
        validation = None
        if settings.rounds > 1:
            validation = write_eval_split(output, settings, "validation")
            split_scenes = {
                split: {s.id: s for s in eval_scenes(settings, split)} for split in ROUND_SPLITS
            }
            split_items = {
                split: [json.loads(line) for line in f["vqa"].read_text().splitlines()]
                for split, f in (("validation", validation), ("test", files))
            }
        log(f"base model: {settings.base}")
        _run(base_config(out, settings, files), output, "base.yaml", log, overwrite)
        base = collect_arm(out / "base" / "eval", "base", scenes, items)
        per_seed = []
        for seed in seeds:
            log(f"seed {seed} ({time.time() - start:.0f} s)")
            root = out / f"seed{seed}"
            unlabeled = write_unlabeled(output, seed, settings)
            stage2 = write_stage2_data(output, seed, settings, recipe)
            configs = run_configs(out, seed, settings, files, stage2, unlabeled, validation)
            _run(configs["stic"], output, f"seed{seed}/stic.yaml", log, overwrite)
            # The no-negatives ablation trains on the base model's pairs: round 1's with rounds.
            pairs_path = root / "stic" / ("round_1" if settings.rounds > 1 else "pairs")
            pairs_path = pairs_path / "pairs.jsonl"
            chosen_as_instructions(pairs_path, output, f"seed{seed}/no_negatives/chosen.json")
            _run(configs["no_negatives"], output, f"seed{seed}/no_negatives.yaml", log, overwrite)
            _run(configs["stage2_only"], output, f"seed{seed}/stage2_only.yaml", log, overwrite)
            arms = seed_arms(out, seed, scenes, items, base)
            unl = {s.id: s for s in unlabeled_scenes(seed, settings)}
            record = {"seed": seed, "arms": arms, "pairs": pair_metrics(pairs_path, unl)}
            if settings.rounds > 1:
                for number, config in round_configs(out, seed, settings, files, validation).items():
                    _run(config, output, f"seed{seed}/round_{number}.yaml", log, overwrite)
                record["rounds"] = seed_rounds(out, seed, split_scenes, split_items, unl)
            per_seed.append(record)
        results = {
            **summarize(per_seed),
            "seeds": per_seed,
            "split": settings.split,
            "eval_scenes": settings.eval_scenes,
            "settings": settings_record(settings),
            "seconds": time.time() - start,
        }
        if settings.rounds > 1:
            results["rounds"] = round_table([s["rounds"] for s in per_seed])
        output.write_json(results, "results.json")
        output.write_text(results_markdown(results), "results.md")
        output.finish({"seeds": seeds, "seconds": round(results["seconds"], 1)})
    write_report(out, log)
    return results


def demo_output(out: Path, settings: DemoSettings, overwrite: bool) -> Output:
    """The demo folder's output object: its generated data, run configs and results (each stage
    inside it has its own). Other settings in a folder the demo made need ``--overwrite``."""

    def adopt() -> list[str]:
        # A demo folder from a stic that wrote no demo manifest: its stages have their own.
        if (out / "base.yaml").is_file():
            return []
        return ["it holds files that stic demo did not write"]

    return Output(
        "demo",
        {**settings_record(settings), "overwrite": overwrite},
        out=out,
        file=False,
        inputs={"--base": settings.base},
        adopt=adopt,
        command="stic demo",
    )


def write_report(out: Path, log=print) -> Path | None:
    """OUT/report.html: the results table, the first seed's pairs and training, every arm's
    results and examples. A view of the results, so a failure is logged, never raised."""
    from stic.tools.report import write_run_report

    try:
        path = write_run_report(out)
    except Exception as e:  # the results are written; the page is a view of them
        log(f"could not write {out / 'report.html'}: {e}")
        return None
    log(f"report: {path}")
    return path


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="stic demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    defaults = DemoSettings()
    parser.add_argument("--out", default="runs/demo", help="Output folder (default: runs/demo).")
    parser.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="Number of seeds, each a full run of every arm (default: 1).",
    )
    parser.add_argument(
        "--base",
        default=None,
        help="Base model folder (default: the one shipped in the package, stic/demo/tiny_llava).",
    )
    parser.add_argument(
        "--split",
        choices=tuple(SPLIT_SEEDS),
        default=defaults.split,
        help="Evaluate on the test split (default) or the validation split (for choosing settings).",
    )
    for name in ("unlabeled", "eval_scenes", "stage2_scenes"):
        parser.add_argument(
            "--" + name.replace("_", "-"),
            type=int,
            default=getattr(defaults, name),
            help=("Unlabeled images per round " if name == "unlabeled" else "")
            + f"(default: {getattr(defaults, name)})",
        )
    for name in ("dpo_lr", "dpo_epochs", "dpo_alpha", "sft_lr", "sft_epochs"):
        parser.add_argument(
            "--" + name.replace("_", "-"),
            type=float,
            default=getattr(defaults, name),
            help=f"(default: {getattr(defaults, name)})",
        )
    parser.add_argument(
        "--dpo-nll-normalization",
        choices=("sum", "mean"),
        default=defaults.dpo_nll_normalization,
        help=f"(default: {defaults.dpo_nll_normalization})",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=defaults.rounds,
        help="Self-training rounds of the full-STIC arm (default: 1, STIC's one stage 1). With "
        "N >= 2 each round makes pairs on its own --unlabeled fresh images with the last "
        "round's model and trains from it; the round with the best validation-split VQA "
        "accuracy is chosen (stage 2 runs on it) and the results gain a round table of each "
        "round's validation and test figures. Needs --split test.",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="A stage whose output was made with other settings deletes it (only the files its "
        "manifest lists) and starts over; without it the demo stops there and says so.",
    )
    args = parser.parse_args(argv)
    from stic.demo.base_model import shipped_base_path

    settings = replace(
        defaults,
        base=str(args.base or shipped_base_path()),
        split=args.split,
        rounds=args.rounds,
        **{
            k: getattr(args, k)
            for k in (
                "unlabeled",
                "eval_scenes",
                "stage2_scenes",
                "dpo_lr",
                "dpo_epochs",
                "dpo_alpha",
                "dpo_nll_normalization",
                "sft_lr",
                "sft_epochs",
            )
        },
    )
    if args.rounds < 1:
        parser.error(f"--rounds: {args.rounds} is not allowed (an integer >= 1)")
    if args.rounds > 1 and args.split != "test":
        parser.error(
            "--rounds above 1 needs --split test: the round is chosen on the validation split"
        )
    out = Path(args.out)
    results = run_demo(out, list(range(args.seeds)), settings, overwrite=args.overwrite)
    print()
    print(results_markdown(results))
    print(f"results: {out / 'results.json'}, {out / 'results.md'}, {out / 'report.html'}")
    print(f"elapsed: {results['seconds']:.0f} s")
    return 0
