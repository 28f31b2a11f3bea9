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


# ----------------------------------------------------------------------------- inputs


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def eval_scenes(settings: DemoSettings) -> list[world.Scene]:
    """The fixed evaluation split (the same for every seed)."""
    return world.make_scenes(SPLIT_SEEDS[settings.split], settings.split, settings.eval_scenes)


def write_eval_split(output: Output, settings: DemoSettings) -> dict[str, Path]:
    """Images and question files of the evaluation split, in the demo's ``data/<split>``."""
    scenes = eval_scenes(settings)
    root = f"data/{settings.split}"
    images = output.subfolder(f"{root}/images")
    vqa, plain, good = [], [], []
    for scene in scenes:
        path = images / f"{scene.id}.png"
        if not path.exists():
            world.render(scene).save(path)
        vqa += world.vqa_items(scene, item_rng(SPLIT_SEEDS[settings.split], scene.id, "vqa"))
        truth = world.describe_detailed(scene)
        prompt = PLAIN_PROMPTS[item_rng(0, scene.id, "plain").randrange(len(PLAIN_PROMPTS))]
        plain.append({"id": scene.id, "image": path.name, "question": prompt, "answer": truth})
        good.append({"id": scene.id, "image": path.name, "question": GOOD_PROMPT, "answer": truth})
    files = {"images": images, "vqa": output.write_text(_jsonl(vqa), f"{root}/vqa.jsonl")}
    for name, rows in ((DESCRIBE_PLAIN, plain), (DESCRIBE_GOOD, good)):
        files[name] = output.write_text(_jsonl(rows), f"{root}/{name}.jsonl")
    return files


def unlabeled_scenes(seed: int, settings: DemoSettings) -> list[world.Scene]:
    return world.make_scenes(1000 + seed, "unlabeled", settings.unlabeled)


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


def _evals(prefix: str, files: dict[str, Path], settings: DemoSettings, at: str | None) -> list:
    common = {"images": str(files["images"]), "batch_size": settings.batch_size}
    if at is not None:
        common["at"] = at
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


def run_configs(
    out: Path, seed: int, settings: DemoSettings, files: dict, stage2: Path, unlabeled: Path
) -> dict[str, dict]:
    """The ``stic run`` configs of one seed, by name."""
    root = out / f"seed{seed}"
    shared = {"model": settings.base, "seed": seed, "dtype": "float32"}
    infuse = {
        "images": str(stage2.parent / "images"),
        "data": str(stage2),
        "batch_size": settings.batch_size,
        "max_new_tokens": settings.describe_tokens,
    }
    dpo_schedule = _train(settings, "dpo")
    return {
        "stic": {
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
        "Stage-1a pairs, scored against the unlabeled scenes' truth (never read by the stages):",
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

    start = time.time()
    recipe = BaseModelRecipe(**check_world(settings.base))
    with demo_output(out, settings, overwrite) as output:
        # What an earlier run of these settings wrote stays listed (a later --overwrite deletes it).
        output.begin(files=(output.recorded or {}).get("files", []))
        files = write_eval_split(output, settings)
        scenes = {s.id: s for s in eval_scenes(settings)}
        items = [json.loads(line) for line in files["vqa"].read_text().splitlines()]
        log(f"base model: {settings.base}")
        _run(base_config(out, settings, files), output, "base.yaml", log, overwrite)
        base = collect_arm(out / "base" / "eval", "base", scenes, items)
        per_seed = []
        for seed in seeds:
            log(f"seed {seed} ({time.time() - start:.0f} s)")
            root = out / f"seed{seed}"
            unlabeled = write_unlabeled(output, seed, settings)
            stage2 = write_stage2_data(output, seed, settings, recipe)
            configs = run_configs(out, seed, settings, files, stage2, unlabeled)
            _run(configs["stic"], output, f"seed{seed}/stic.yaml", log, overwrite)
            pairs_path = root / "stic" / "pairs" / "pairs.jsonl"
            chosen_as_instructions(pairs_path, output, f"seed{seed}/no_negatives/chosen.json")
            _run(configs["no_negatives"], output, f"seed{seed}/no_negatives.yaml", log, overwrite)
            _run(configs["stage2_only"], output, f"seed{seed}/stage2_only.yaml", log, overwrite)
            arms = seed_arms(out, seed, scenes, items, base)
            unl = {s.id: s for s in unlabeled_scenes(seed, settings)}
            per_seed.append({"seed": seed, "arms": arms, "pairs": pair_metrics(pairs_path, unl)})
        results = {
            **summarize(per_seed),
            "seeds": per_seed,
            "split": settings.split,
            "eval_scenes": settings.eval_scenes,
            "settings": asdict(settings),
            "seconds": time.time() - start,
        }
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
        {**asdict(settings), "overwrite": overwrite},
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
            help=f"(default: {getattr(defaults, name)})",
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
    out = Path(args.out)
    results = run_demo(out, list(range(args.seeds)), settings, overwrite=args.overwrite)
    print()
    print(results_markdown(results))
    print(f"results: {out / 'results.json'}, {out / 'results.md'}, {out / 'report.html'}")
    print(f"elapsed: {results['seconds']:.0f} s")
    return 0
