"""A `stic run` output folder written directly, without a model: for the report's tests and its
size benchmark (thousands of pairs in seconds).

The files have the stage outputs' real formats (pairs JSONL, DPO/SFT train logs and dropped
pairs, eval and bench results, the manifests the report reads); the texts are made-up words
whose lengths follow STIC's pattern (long chosen answers from the seven-point prompt, shorter
rejected ones).
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
from PIL import Image

from stic.data.corruptions import sample_corruption
from stic.data.prompts import BAD_PROMPTS, GOOD_PROMPT, PLAIN_PROMPTS
from stic.runtime.files import atomic_write_json, atomic_write_text

WORDS = (
    "a the red blue green small large dog cat person table chair window street car tree sky "
    "building light shadow wooden metal bright dark left right center background foreground "
    "standing sitting holding walking near behind beside under scene image shows appears "
    "calm busy warm cool colour texture surface people object plate cup book road grass water"
).split()


def _text(rng: random.Random, words: int) -> str:
    out, sentence = [], []
    for _ in range(words):
        sentence.append(rng.choice(WORDS))
        if len(sentence) >= rng.randint(8, 16):
            out.append(" ".join(sentence).capitalize() + ".")
            sentence = []
    if sentence:
        out.append(" ".join(sentence).capitalize() + ".")
    return " ".join(out)


def _photo_like(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """Smooth colour blobs plus fine noise: compresses about like a photograph."""
    width, height = size
    coarse = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    base = np.asarray(
        Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16
    )
    noise = rng.normal(0, 14, size=(height, width, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def _manifest(path: Path, stage: str, config: dict) -> None:
    atomic_write_json(path, {"stage": stage, "status": "complete", "config": config})


def write_synthetic_run(
    root: str | Path,
    n_pairs: int,
    *,
    seed: int = 0,
    image_size: tuple[int, int] = (64, 48),
    chosen_words: tuple[int, int] = (30, 60),
    rejected_words: tuple[int, int] = (10, 25),
    model: str = "tiny/synthetic-model",
) -> Path:
    """Write ``root/images`` and the run folder ``root/run``; returns the run folder.

    Pairs: a third of each rejected kind; every 10th pair's rejected answer is truncated (finish
    ``length``), every 15th is a near copy of the chosen one; the DPO folder's
    ``dropped_pairs.jsonl`` holds those (reasons ``truncated`` and ``near_duplicate``).
    Results: ``eval/{base,stic,stic_dar}.json`` on one data file (base at accuracy 0.5, the
    others higher) and ``bench/{base,final}/textvqa.json`` with categories (the layout of `stic run`).
    """
    root = Path(root)
    rng = random.Random(seed)
    np_rng = np.random.default_rng(seed)
    images, run = root / "images", root / "run"
    images.mkdir(parents=True, exist_ok=True)
    pairs, dropped = [], []
    kinds = ("bad_prompt", "corrupt_lowres", "corrupt_color")
    for i in range(n_pairs):
        name = f"img_{i:05d}.jpg"
        if not (images / name).exists():
            _photo_like(np_rng, image_size).save(images / name, quality=90)
        kind = kinds[i % 3]
        corruption = None
        if kind == "corrupt_lowres":
            corruption = {"kind": "lowres", "short_side": 20}
        elif kind == "corrupt_color":
            corruption = sample_corruption(rng, lowres_prob=0.0)
        chosen = _text(rng, rng.randint(*chosen_words))
        rejected = _text(rng, rng.randint(*rejected_words))
        reason = None
        if i % 15 == 14:
            rejected, reason = chosen.replace(".", ", maybe.", 1), "near_duplicate"
        rejected_finish = "stop"
        if i % 10 == 9:
            rejected_finish, reason = "length", "truncated"
        pair = {
            "id": name,
            "image": name,
            "prompt": PLAIN_PROMPTS[i % len(PLAIN_PROMPTS)],
            "chosen": chosen,
            "rejected": rejected,
            "rejected_kind": kind,
            "chosen_prompt": GOOD_PROMPT,
            "rejected_prompt": BAD_PROMPTS[i % len(BAD_PROMPTS)]
            if kind == "bad_prompt"
            else PLAIN_PROMPTS[(i + 3) % len(PLAIN_PROMPTS)],
            "corruption": corruption,
            "model": model,
            "sampling": {"temperature": 0.2, "top_p": 1.0, "max_new_tokens": 1024, "seed": seed},
            "chosen_finish": "stop",
            "rejected_finish": rejected_finish,
            "schema_version": 1,
        }
        pairs.append(pair)
        if reason:
            dropped.append({"reason": reason, **pair})
    pairs_path = run / "pairs" / "pairs.jsonl"
    atomic_write_text(pairs_path, "".join(json.dumps(p) + "\n" for p in pairs))
    _manifest(
        pairs_path.with_name("pairs.jsonl.manifest.json"),
        "pairs",
        {"model": model, "images": str(images.resolve()), "out": str(pairs_path.resolve())},
    )
    dpo, sft = run / "dpo", run / "sft"
    dpo.mkdir(parents=True, exist_ok=True)
    sft.mkdir(parents=True, exist_ok=True)
    atomic_write_text(dpo / "dropped_pairs.jsonl", "".join(json.dumps(d) + "\n" for d in dropped))
    steps = max(4, n_pairs // 8)
    dpo_log = [
        {
            "step": s,
            "epoch": s / steps,
            "loss": 0.69 * math.exp(-s / steps) + 0.05,
            "loss/dpo": 0.69 * math.exp(-s / steps),
            "loss/nll": 0.05,
            "rewards/margin": 2 * s / steps,
            "rewards/accuracy": min(1.0, 0.5 + s / steps),
            "learning_rate": 1e-7 * (1 - s / steps),
        }
        for s in range(1, steps + 1)
    ] + [{"step": steps, "train_loss": 0.4}]
    atomic_write_json(dpo / "train_log.json", dpo_log)
    _manifest(
        dpo / "stic_manifest.json",
        "dpo",
        {"model": model, "pairs": str(pairs_path.resolve()), "filter_truncated": True},
    )
    sft_log = [
        {"step": s, "loss": 2.0 / s, "learning_rate": 2e-5 * (1 - s / 6)} for s in range(1, 7)
    ] + [{"step": 6, "train_loss": 0.8}]
    atomic_write_json(sft / "train_log.json", sft_log)
    data = str((root / "vqa.jsonl").resolve())
    for name, adapter, dar, right in (
        ("base", None, False, 5),
        ("stic", str(sft.resolve()), False, 7),
        ("stic_dar", str(sft.resolve()), True, 6),
    ):
        items = []
        for q in range(10):
            item = {
                "id": f"q{q}",
                "question": f"Is there a shape number {q}?",
                "answer": "yes",
                "prediction": "yes" if q < right else "no",
                "correct": q < right,
            }
            if dar:
                item["description"] = _text(rng, 20)
            items.append(item)
        out = run / "eval" / f"{name}.json"
        atomic_write_json(
            out,
            {
                "accuracy": right / 10,
                "correct": right,
                "n": 10,
                "dar": dar,
                "model": model,
                "adapter": adapter,
                "items": items,
            },
        )
        _manifest(
            out.with_name(out.name + ".manifest.json"),
            "eval",
            {"model": model, "adapter": adapter, "data": data, "dar": dar},
        )
    for at, adapter, score in (("base", None, 40.0), ("final", str(sft.resolve()), 44.5)):
        out = run / "bench" / at / "textvqa.json"
        atomic_write_json(
            out,
            {
                "benchmark": "textvqa",
                "n": 20,
                "primary_metric": "accuracy",
                "metrics": {"accuracy": score},
                "categories": {
                    "source": {
                        "ocr": {"accuracy": score - 5, "n": 10},
                        "scene": {"accuracy": score + 5, "n": 10},
                    }
                },
                "items": [],
                "adapter": adapter,
                "dar": False,
            },
        )
        _manifest(
            out.with_name(out.name + ".manifest.json"),
            "bench",
            {"model": model, "adapter": adapter, "benchmark": "textvqa"},
        )
    atomic_write_text(run / "resolved_config.yaml", f"model: {model}\n")
    return run


def write_synthetic_rounds(
    root: str | Path, n_pairs: int, rounds: int = 3, chosen: int = 2, **options
) -> Path:
    """:func:`write_synthetic_run` with self-training rounds, as ``stic run`` with ``rounds``
    leaves it: ``round_<r>/pairs.jsonl`` (round r's pairs: seed r, its own images under
    ``root/round<r>_images``) and ``round_<r>/dpo/`` (its train log scaled by round: the curves
    differ), ``rounds.json`` (select ``val accuracy max``; round ``chosen`` has the highest
    value) and ``dpo/``, a copy of the chosen round with the manifest the rounds stage writes.
    Returns the run folder (``root/run``)."""
    import shutil

    root = Path(root)
    # The run around the rounds (stage 2, results); its own pairs and dpo are replaced below.
    run = write_synthetic_run(root, 3, **options)
    shutil.rmtree(run / "pairs")
    shutil.rmtree(run / "dpo")
    table = []
    for number in range(1, rounds + 1):
        made = write_synthetic_run(root / f"round{number}_src", n_pairs, seed=number, **options)
        folder = run / f"round_{number}"
        folder.mkdir(parents=True)
        (root / f"round{number}_src" / "images").rename(root / f"round{number}_images")
        images = str((root / f"round{number}_images").resolve())
        pairs = folder / "pairs.jsonl"
        (made / "pairs" / "pairs.jsonl").rename(pairs)
        manifest = {"model": options.get("model", "tiny/synthetic-model"), "images": images}
        _manifest(pairs.with_name("pairs.jsonl.manifest.json"), "pairs", manifest)
        (made / "dpo").rename(folder / "dpo")
        log_path = folder / "dpo" / "train_log.json"
        log = json.loads(log_path.read_text(encoding="utf-8"))
        for entry in log:
            for key in ("loss", "loss/dpo", "rewards/margin"):
                if key in entry:
                    entry[key] *= 1 + 0.3 * (number - 1)
        atomic_write_json(log_path, log)
        shutil.rmtree(root / f"round{number}_src")
        value = 0.5 + (0.2 if number == chosen else 0.05 * number / rounds)
        table.append(
            {
                "round": number,
                "adapter": str((folder / "dpo").resolve()),
                "pairs_file": str(pairs.resolve()),
                "pairs_trained": n_pairs,
                "train_loss": 0.4,
                "reference_model": "base" if number == 1 else "start",
                "accuracy": value,
            }
        )
    reason = (
        f"val accuracy = {table[chosen - 1]['accuracy']:.6g} is the highest of rounds "
        f"1-{rounds} (select mode max)"
    )
    select = {"entry": "val", "metric": "accuracy", "mode": "max"}
    atomic_write_json(
        run / "rounds.json",
        {
            "rounds": rounds,
            "select": select,
            "round_reference": "previous",
            "round_images": "fresh",
            "table": table,
            "chosen": chosen,
            "reason": reason,
        },
    )
    shutil.copytree(run / f"round_{chosen}" / "dpo", run / "dpo")
    atomic_write_json(
        run / "dpo" / "stic_manifest.json",
        {
            "stage": "chosen_round",
            "status": "complete",
            "config": {},
            "summary": {
                "round": chosen,
                "rounds": rounds,
                "reason": reason,
                "select": {**select, "value": table[chosen - 1]["accuracy"]},
            },
        },
    )
    return run
