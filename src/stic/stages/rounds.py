"""Self-training rounds: choosing one round's adapter on held-out data.

``stic run`` with ``rounds: N`` (N >= 2) runs pairs -> dpo N times, each round from the last
round's adapter (see :mod:`stic.pipeline`), and after each round the ``select`` entry: an eval or
bench entry on validation data that no test entry reads. Then :func:`run_rounds`:

1. reads each round's value of the select metric from that entry's result;
2. chooses a round with :func:`choose_round` (the best value in the metric's direction; ties go
   to the earliest round, the one trained least; no ``select``: the last round);
3. writes ``<output_dir>/rounds.json`` (rounds x metric, the chosen round and why) and
   ``rounds.md``;
4. copies the chosen round's adapter folder to ``<output_dir>/dpo``, whose manifest names the
   round and why (``summary.round`` of ``summary.rounds``; ``summary.select``: the entry,
   metric, mode and the round's value, null without select; ``summary.reason``: the same as a
   sentence). Stage 2 and every test entry at
   ``stage1``/``final`` read that folder, so they evaluate the chosen round's weights.

Both outputs go through :class:`~stic.runtime.output.Output` like every stage's: a rerun with
the same rounds and the same choice skips them; another choice is refused unless ``overwrite``.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stic.config import RoundsConfig
from stic.runtime.files import read_json
from stic.runtime.identity import normalize_path
from stic.runtime.manifests import input_identity, manifest_path, read_manifest
from stic.runtime.output import Output
from stic.stages.runner import StageSummary

logger = logging.getLogger(__name__)

STAGE = "rounds"
CHOSEN_STAGE = "chosen_round"
ROUND_MANIFEST = "round_manifest.json"  # the chosen round's own DPO manifest, copied along


class RoundsError(ValueError):
    """A round's result cannot decide the choice (missing metric, not a finite number)."""


def choose_round(values: Sequence[float], mode: str) -> int:
    """The round (1-based) whose value is best: the largest for ``mode`` max, the smallest for
    min; among equal values the earliest round (the one trained least).

    Every value must be a finite number: a round with no measurement, or NaN, would make the
    choice depend on how missing values sort, so it is refused (:class:`RoundsError`).
    """
    if mode not in ("max", "min"):
        raise ValueError(f"mode: {mode!r} is not one of 'max', 'min'")
    if not values:
        raise RoundsError("no rounds to choose from")
    for number, value in enumerate(values, start=1):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RoundsError(f"round {number}: {value!r} is not a number")
        if not math.isfinite(value):
            raise RoundsError(f"round {number}: {value!r} is not a finite number")
    best = max(values) if mode == "max" else min(values)
    return list(values).index(best) + 1


def metric_value(result: dict, metric: str, where: str) -> float:
    """``metric`` of an eval or bench result: a top-level number (eval: ``accuracy``; bench:
    ``n``...) or one of a bench result's ``metrics`` (percent)."""
    value = result.get(metric)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        value = (result.get("metrics") or {}).get(metric, value)
    if value is None:
        known = sorted(
            [k for k, v in result.items() if isinstance(v, (int, float))]
            + list(result.get("metrics") or {})
        )
        raise RoundsError(f"{where}: no {metric!r} in the result (it has: {', '.join(known)})")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RoundsError(f"{where}: {metric} is {value!r}, not a finite number")
    return float(value)


def _reason(config: RoundsConfig, values: list[float], chosen: int) -> str:
    if config.select_entry is None:
        return f"no select: section, so the last round ({len(config.round_adapters)}) is used"
    best = "highest" if config.select_mode == "max" else "lowest"
    tied = [r for r, v in enumerate(values, start=1) if v == values[chosen - 1] and r != chosen]
    text = (
        f"{config.select_entry} {config.select_metric} = {values[chosen - 1]:.6g} is the {best} "
        f"of rounds 1-{len(values)} (select mode {config.select_mode})"
    )
    if tied:
        text += f"; tied with round {', '.join(map(str, tied))}: the earliest is taken"
    return text


def _round_row(config: RoundsConfig, number: int, value: float | None) -> dict:
    adapter = config.round_adapters[number - 1]
    manifest = read_manifest(adapter) or {}
    details = (manifest.get("summary") or {}).get("details") or {}
    row: dict[str, Any] = {
        "round": number,
        "adapter": normalize_path(adapter),
        "pairs_file": normalize_path(config.round_pairs[number - 1]),
        "pairs_trained": details.get("pairs"),
        "train_loss": details.get("train_loss"),
        "started_from": details.get("started_from"),
        "reference_model": details.get("reference_model", "base"),
    }
    if config.select_entry is not None:
        row["result"] = normalize_path(config.round_results[number - 1])
        row[config.select_metric] = value
    return row


def rounds_table(config: RoundsConfig) -> dict:
    """What ``rounds.json`` holds: one row per round (its adapter, pairs, training figures and
    the select metric), the chosen round and why."""
    values: list[float] = []
    if config.select_entry is not None:
        for number, path in enumerate(config.round_results, start=1):
            where = f"round {number}: {path}"
            values.append(metric_value(read_json(path), config.select_metric, where))
        chosen = choose_round(values, config.select_mode)
    else:
        chosen = len(config.round_adapters)
    return {
        "rounds": len(config.round_adapters),
        "select": None
        if config.select_entry is None
        else {
            "entry": config.select_entry,
            "metric": config.select_metric,
            "mode": config.select_mode,
        },
        "round_reference": config.round_reference,
        "round_images": config.round_images,
        "table": [
            _round_row(config, r, values[r - 1] if values else None)
            for r in range(1, len(config.round_adapters) + 1)
        ],
        "chosen": chosen,
        "reason": _reason(config, values, chosen),
    }


def _number(value: Any) -> str:
    return (
        f"{value:.6g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"
    )


def rounds_markdown(table: dict) -> str:
    """``rounds.md``: the table of ``rounds.json`` for a person."""
    select = table["select"]
    metric = select["metric"] if select else None
    header = ["round", "pairs trained", "train loss", "reference"]
    if metric:
        header.append(f"{select['entry']} {metric} ({select['mode']})")
    lines = [
        f"# Self-training rounds ({table['rounds']})",
        "",
        f"Reference of rounds >= 2: {table['round_reference']}; images: {table['round_images']}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in table["table"]:
        cells = [
            f"**{row['round']}**" if row["round"] == table["chosen"] else str(row["round"]),
            _number(row["pairs_trained"]),
            _number(row["train_loss"]),
            row["reference_model"],
        ]
        if metric:
            cells.append(_number(row[metric]))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Chosen: round {table['chosen']} ({table['reason']}).", ""]
    return "\n".join(lines)


def run_rounds(config: RoundsConfig, model=None, processor=None) -> StageSummary:
    """Choose a round (see the module docstring); returns the summary (``details.chosen``)."""
    table = rounds_table(config)
    chosen = table["chosen"]
    source = config.round_adapters[chosen - 1]
    # Its settings are what decides it: the rounds, the choice and the chosen adapter (an input,
    # so a round redone since is noticed).
    settings = {"document": table, "adapter": source, "overwrite": config.overwrite}
    table_path = Path(config.table)
    markdown = table_path.with_suffix(".md").name
    up_to_date = True
    with Output(STAGE, settings, out=table_path, file=True, also=[markdown]) as output:
        if output.status != "complete":
            up_to_date = False
            output.write_text(rounds_markdown(table), markdown)
            output.write_json(table)
            output.finish({"chosen": chosen, "reason": table["reason"]})
    # What decided, as fields (the reason says it as a sentence): the select entry, its metric,
    # mode and the chosen round's value; None: no select, the last round.
    select = table["select"] and {
        **table["select"],
        "value": table["table"][chosen - 1][config.select_metric],
    }
    about = {
        "round": chosen,
        "rounds": len(config.round_adapters),
        "reason": table["reason"],
        "select": select,
        "source": normalize_path(source),
        "source_identity": input_identity(source),
    }
    choice = {"adapter": source, "round": chosen, "reason": table["reason"]}
    with Output(
        CHOSEN_STAGE, {**choice, "overwrite": config.overwrite}, out=config.out, file=False
    ) as output:
        if output.status != "complete":
            up_to_date = False
            _copy_adapter(Path(source), output.staging())
            output.finish(about)
    logger.info("rounds: round %d chosen (%s)", chosen, table["reason"])
    return StageSummary(
        STAGE,
        str(config.out),
        up_to_date=up_to_date,
        items=len(config.round_adapters),
        details={"chosen": chosen, "reason": table["reason"], "table": str(table_path)},
    )


def _copy_adapter(source: Path, staging: Path) -> None:
    """The files the round's DPO stage wrote (its manifest lists them), and that manifest."""
    manifest = read_manifest(source)
    if manifest is None or manifest.get("status") != "complete":
        raise RoundsError(f"{source}: not a complete dpo output (no complete stic manifest)")
    for name in manifest.get("files") or []:
        path = source / name
        if Path(name).is_absolute() or ".." in Path(name).parts or not path.is_file():
            continue  # checkpoints (removed once training ended), nothing outside the folder
        shutil.copy2(path, staging / name)
    shutil.copy2(manifest_path(source), staging / ROUND_MANIFEST)
