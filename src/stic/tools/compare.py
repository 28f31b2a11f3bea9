"""``stic compare``: the paper's Table 1 in form, from ``stic bench`` / ``stic bench score`` results.

Rows are benchmarks (registry order), columns are runs (base, stage 1, STIC, STIC + DaR,
ablations ...). Each cell is the benchmark's primary metric with its n (items scored), marked
when the result is partial (n below the benchmark's item count; the reasons are in the JSON).
A result with nothing scored, without an n, or whose primary metric is not a number is refused
in one line, never tabulated. Where a benchmark's primary metric can be two procedures
(MathVista: the official extraction with a judge, or rules only), the row names the one shown,
and runs scored by different procedures are refused.

Against the first run, each other run gets a delta per benchmark and a paired bootstrap 95%
interval, both over the units that BOTH runs scored, joined by item id (never by position): an
item without a score or whose judge failed, and an MMBench question short of a rotation, is left
out on both sides; a cell whose runs cover different items says so (n common / n each). The
units (MMBench's circular groups as one) are resampled with replacement, seeded, and the metric
is recomputed on the resample for both runs with the benchmark's own scorer; the interval is the
2.5th..97.5th percentile of the difference. The average row is taken over the benchmarks every
run has; its delta is the mean of the per-benchmark deltas, its interval averages them draw by
draw. Runs of one benchmark with different ``data_hash`` are refused unless
``--allow-different-data``. Each run's weights (model, adapter or none = base model, DaR) are
listed, and a delta between the same weights and protocol is flagged.

A RUN is ``[NAME=]PATH``: PATH is a folder of ``<benchmark>.json`` results or a comma-separated
list of result files; NAME defaults to the folder (or first file's parent folder) name.
``--rounds OUTPUT_DIR`` puts the rounds of a ``stic run`` with ``rounds: N`` first, one column
per round (its select entry's result, a bench entry on validation data), round 1 the baseline.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from stic.data.benchmarks import BENCHMARKS
from stic.runtime.files import read_json
from stic.runtime.output import OUTPUT_ERRORS, Output


class CompareError(ValueError):
    """A run that cannot be tabulated; the message names it."""


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_result(run: str, file: Path | str, document: dict) -> None:
    """Refuse, in one line, a result that has no number to show: nothing scored, no ``n`` (a
    result from before results counted their items), or a primary metric that is not a number.
    A refused result is never tabulated, so it can never be read as 0."""
    spec = BENCHMARKS[document["benchmark"]]
    n = document.get("n")
    if not isinstance(n, int) or isinstance(n, bool):
        raise CompareError(
            f"run {run}: {file} records no n (items scored); score it again with stic bench score"
        )
    if n <= 0:
        raise CompareError(f"run {run}: {file}: nothing scored (n = 0); there is no number to show")
    if not _number((document.get("metrics") or {}).get(spec.primary)):
        raise CompareError(
            f"run {run}: {file}: its {spec.primary} is "
            f"{(document.get('metrics') or {}).get(spec.primary)!r}, not a number"
        )
    if not isinstance(document.get("items"), list):
        raise CompareError(f"run {run}: {file}: 'items' is not a list of scored items")


def round_runs(output_dir: str | Path) -> list[str]:
    """One RUN per round of a ``stic run`` with rounds >= 2, from ``OUTPUT_DIR/rounds.json``:
    ``round_<r>=<its select entry's result>`` (``round_<r> (chosen)`` for the chosen one)."""
    path = Path(output_dir) / "rounds.json"
    if not path.is_file():
        raise CompareError(
            f"--rounds: {path} does not exist (give the output_dir of a stic run with rounds >= 2)"
        )
    table = read_json(path)
    rows = table.get("table") if isinstance(table, dict) else None
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        raise CompareError(f"--rounds: {path} has no table of rounds")
    results = [row.get("result") for row in rows]
    if not all(isinstance(result, str) for result in results):
        raise CompareError(
            f"--rounds: {path}: the run has no select entry, so its rounds have no results to "
            "compare"
        )
    first = read_json(results[0]) if Path(results[0]).is_file() else {}
    if not isinstance(first, dict) or "benchmark" not in first:
        raise CompareError(
            f"--rounds: {results[0]} is not a bench result (the select entry is an eval entry?); "
            f"stic compare tabulates bench results; {path.with_suffix('.md')} has the rounds' table"
        )
    chosen = table.get("chosen")
    return [
        f"round_{row.get('round')}{' (chosen)' if row.get('round') == chosen else ''}={result}"
        for row, result in zip(rows, results, strict=True)
    ]


def load_run(spec: str) -> tuple[str, dict[str, dict]]:
    """``(name, {benchmark: result document})`` for one ``[NAME=]PATH`` argument; every result is
    checked by :func:`check_result`."""
    name, _, path_text = spec.partition("=") if "=" in spec else ("", "", spec)
    paths = [Path(p) for p in path_text.split(",") if p]
    if len(paths) == 1 and paths[0].is_dir():
        folder = paths[0]
        files = sorted(p for p in folder.glob("*.json") if p.stem in BENCHMARKS)
        if not files:
            raise CompareError(
                f"{folder}: no <benchmark>.json result files ({', '.join(BENCHMARKS)})"
            )
        name = name or folder.name
    else:
        files = paths
        name = name or (paths[0].parent.name if paths else spec)
    results: dict[str, dict] = {}
    for file in files:
        if not file.is_file():
            raise CompareError(f"run {name}: {file} does not exist")
        document = read_json(file)
        benchmark = document.get("benchmark") if isinstance(document, dict) else None
        if benchmark not in BENCHMARKS or "metrics" not in document or "items" not in document:
            raise CompareError(f"run {name}: {file} is not a stic bench result")
        if benchmark in results:
            raise CompareError(f"run {name}: two results for {benchmark}")
        check_result(name, file, document)
        results[benchmark] = document
    return name, results


def _units(rows: Sequence[dict]) -> dict[str, list[dict]]:
    """Rows by resampling unit: the item id, or its ``group`` (MMBench's rotations of one
    question are one unit)."""
    units: dict[str, list[dict]] = {}
    for row in rows:
        units.setdefault(str(row.get("group") or row["id"]), []).append(row)
    return units


def _scored(unit: list[dict]) -> bool:
    """Whether every row of a unit got a score from the benchmark's rule: a row without one, or
    whose judge failed (scored by the official fallback, not by a verdict), is not scored, and
    a group short of its rotations is not a complete unit."""
    if any(row.get("score") is None or row.get("judge_failed") for row in unit):
        return False
    return "rotations" not in unit[0] or len(unit) == unit[0]["rotations"]


def scored_units(result: dict) -> dict[str, list[dict]]:
    """The units of ``result`` that were scored (see :func:`_scored`), keyed by item id/group."""
    return {key: unit for key, unit in _units(result["items"]).items() if _scored(unit)}


def _resampled(units: dict[str, list[dict]], drawn: Sequence[str]) -> list[dict]:
    rows = []
    for copy, unit in enumerate(drawn):
        for row in units[unit]:
            # a unit drawn twice must stay two units (MMBench groups its rotations by "group")
            rows.append({**row, "group": f"{unit}#{copy}"} if "group" in row else row)
    return rows


def _metric(benchmark: str, rows: list[dict]) -> float | None:
    """The primary metric of ``rows`` by the benchmark's own rule; None where it is undefined
    (no rows, LLaVA-Bench's reference mean rounding to 0)."""
    spec = BENCHMARKS[benchmark]
    value = spec.metrics_of(rows)[spec.primary] if rows else None
    return float(value) if _number(value) else None


def paired_delta(benchmark: str, base: dict, other: dict) -> tuple[float | None, list[str]]:
    """``metric(other) - metric(base)`` over the units both runs scored (joined by id, never by
    position), and those units' keys in sorted order; None when the metric is undefined on
    either side."""
    base_units, other_units = scored_units(base), scored_units(other)
    common = sorted(set(base_units) & set(other_units))
    a = _metric(benchmark, [row for key in common for row in base_units[key]])
    b = _metric(benchmark, [row for key in common for row in other_units[key]])
    return (None if a is None or b is None else b - a), common


def paired_bootstrap(
    benchmark: str, base: dict, other: dict, resamples: int, seed: int
) -> tuple[np.ndarray, int]:
    """Differences ``metric(other) - metric(base)`` over ``resamples`` paired resamples of the
    units both runs scored, and that unit count. A resample on which the metric is undefined
    for either run gives NaN (left out of the interval, counted in the table)."""
    base_units, other_units = scored_units(base), scored_units(other)
    common = sorted(set(base_units) & set(other_units))
    if not common:
        return np.array([]), 0
    rng = np.random.default_rng([seed, sum(benchmark.encode())])
    draws = np.empty(resamples)
    for k in range(resamples):
        drawn = [common[i] for i in rng.integers(0, len(common), len(common))]
        a = _metric(benchmark, _resampled(base_units, drawn))
        b = _metric(benchmark, _resampled(other_units, drawn))
        draws[k] = np.nan if a is None or b is None else b - a
    return draws, len(common)


def _interval(draws: np.ndarray) -> list[float] | None:
    defined = draws[~np.isnan(draws)]
    if not len(defined):
        return None
    return [round(float(np.percentile(defined, q)), 4) for q in (2.5, 97.5)]


def _label(benchmark: str, result: dict) -> str | None:
    """Which procedure the primary metric is, where the result says (MathVista's ``headline``)."""
    return (result.get("headline") or {}).get(BENCHMARKS[benchmark].primary)


def weights_of(result: dict) -> dict | None:
    """What answered: model, adapter (None = the base model), describe-and-respond; None for a
    result that does not record it (``stic bench score`` knows only the predictions)."""
    if "model" not in result:
        return None
    return {
        "model": result.get("model"),
        "adapter": result.get("adapter"),
        "adapter_identity": result.get("adapter_identity"),
        "dar": bool(result.get("dar")),
    }


def _same_weights(a: dict | None, b: dict | None) -> bool:
    """Both runs answered with the same model and adapter and the same protocol (a base run
    compared with itself): the adapter's recorded identity decides where both have one."""
    if a is None or b is None or a["model"] != b["model"] or a["dar"] != b["dar"]:
        return False
    if a["adapter"] is None or b["adapter"] is None:
        return a["adapter"] is None and b["adapter"] is None
    if a["adapter_identity"] and b["adapter_identity"]:
        return a["adapter_identity"] == b["adapter_identity"]
    return a["adapter"] == b["adapter"]


def _check_comparable(
    runs: Sequence[tuple[str, dict[str, dict]]], benchmarks: list[str], allow_different_data: bool
) -> dict[str, str | None]:
    """Refuse runs of one benchmark scored on different data (unless allowed) or whose primary
    metric is a different procedure; returns each benchmark's metric label."""
    labels: dict[str, str | None] = {}
    for b in benchmarks:
        present = [(name, results[b]) for name, results in runs if b in results]
        hashes = {name: r.get("data_hash") for name, r in present}
        if len(set(hashes.values())) > 1 or None in hashes.values():
            if not allow_different_data:
                shown = ", ".join(f"{n}: {h or 'not recorded'}" for n, h in hashes.items())
                raise CompareError(
                    f"{b}: the runs were scored on different data (data_hash {shown}); give "
                    "--allow-different-data to compare them over the items they share"
                )
        procedures = {name: _label(b, r) for name, r in present}
        if len(set(procedures.values())) > 1:
            shown = "; ".join(f"{n}: {p or 'not recorded'}" for n, p in procedures.items())
            raise CompareError(
                f"{b}: {BENCHMARKS[b].primary} is a different procedure in different runs "
                f"({shown}); score every run alike (e.g. all with the same judge)"
            )
        labels[b] = next(iter(procedures.values()))
    return labels


def compare(
    runs: Sequence[tuple[str, dict[str, dict]]],
    resamples: int = 1000,
    seed: int = 0,
    allow_different_data: bool = False,
) -> dict:
    """The comparison table as a JSON-ready dict (see the module docstring)."""
    names = [name for name, _ in runs]
    if len(set(names)) != len(names):
        raise CompareError(f"two runs share a name: {names}; name them with NAME=PATH")
    for name, results in runs:
        for b, result in results.items():
            check_result(name, b, result)
    benchmarks = [b for b in BENCHMARKS if any(b in results for _, results in runs)]
    labels = _check_comparable(runs, benchmarks, allow_different_data)
    values = {
        b: {
            name: results[b]["metrics"][BENCHMARKS[b].primary] if b in results else None
            for name, results in runs
        }
        for b in benchmarks
    }
    cells = {
        b: {
            name: {
                "value": results[b]["metrics"][BENCHMARKS[b].primary],
                "n": results[b]["n"],
                "n_expected": results[b].get("n_expected"),
                "partial": bool(results[b].get("partial")),
                "not_scored": results[b].get("not_scored") or {},
                "data_hash": results[b].get("data_hash"),
            }
            for name, results in runs
            if b in results
        }
        for b in benchmarks
    }
    weights = {
        name: {b: weights_of(result) for b, result in results.items()} for name, results in runs
    }
    shared = [b for b in benchmarks if all(b in results for _, results in runs)]
    average = {
        name: round(float(np.mean([values[b][name] for b in shared])), 4) if shared else None
        for name in names
    }
    base_name, base = runs[0]
    deltas: dict[str, dict] = {}
    for name, results in runs[1:]:
        per: dict[str, dict] = {}
        draws_for_average, deltas_for_average = [], []
        for b in benchmarks:
            if b not in results or b not in base:
                continue
            delta, common = paired_delta(b, base[b], results[b])
            draws, n_common = paired_bootstrap(b, base[b], results[b], resamples, seed)
            n_each = {base_name: len(scored_units(base[b])), name: len(scored_units(results[b]))}
            entry = {
                "delta": None if delta is None else round(delta, 4),
                "n_common": n_common,
                "n_each": n_each,
                "same_items": all(
                    n == n_common == len(_units(r["items"]))
                    for n, r in zip(n_each.values(), (base[b], results[b]), strict=True)
                ),
            }
            if _same_weights(weights[base_name][b], weights[name][b]):
                entry["same_weights"] = True
            undefined = int(np.isnan(draws).sum()) if n_common else 0
            if undefined:
                entry["undefined_draws"] = undefined
            interval = _interval(draws) if n_common else None
            if interval:
                entry["ci95"] = interval
            if b in shared:
                deltas_for_average.append(delta)
                draws_for_average.append(draws if n_common else None)
            per[b] = entry
        if shared:
            known = [d for d in deltas_for_average if d is not None]
            # The mean of the per-benchmark deltas, each over its common items, so that the
            # average's delta and interval describe the same paired comparison.
            entry = {
                "delta": round(float(np.mean(known)), 4)
                if len(known) == len(deltas_for_average)
                else None
            }
            if all(d is not None for d in draws_for_average):
                interval = _interval(np.mean(draws_for_average, axis=0))
                if interval:
                    entry["ci95"] = interval
            per["average"] = entry
        deltas[name] = per
    return {
        "runs": names,
        "baseline": base_name,
        "primary_metric": {b: BENCHMARKS[b].primary for b in benchmarks},
        "metric_label": labels,
        "values": values,
        "cells": cells,
        "weights": weights,
        "average": {"benchmarks": shared, "values": average},
        "deltas": deltas,
        "allow_different_data": allow_different_data,
        "bootstrap": {
            "resamples": resamples,
            "seed": seed,
            "confidence": 0.95,
            "paired_by": "item id",
            "items": "scored in both runs",
        },
    }


def _signed(x: float) -> str:
    return f"{x:+.1f}"


def _cell(cell: dict | None) -> str:
    """``value (n=N)``; a partial result ``value (n=N/EXPECTED)*``."""
    if cell is None:
        return "–"
    if cell["partial"] or (cell["n_expected"] is not None and cell["n"] != cell["n_expected"]):
        return f"{cell['value']:.1f} (n={cell['n']}/{cell['n_expected']})*"
    return f"{cell['value']:.1f} (n={cell['n']})"


def _weights_line(name: str, by_benchmark: dict[str, dict | None]) -> str:
    seen = []
    for w in by_benchmark.values():
        if w is None:
            text = "weights not recorded (scored from predictions)"
        else:
            adapter = "none (base model)" if w["adapter"] is None else w["adapter"]
            text = f"model {w['model']}, adapter {adapter}" + (
                ", describe-and-respond" if w["dar"] else ""
            )
        if text not in seen:
            seen.append(text)
    return f"- {name}: " + "; ".join(seen)


def to_markdown(table: dict) -> str:
    """The table as Markdown: one value column per run, then one delta column per other run."""
    names, base = table["runs"], table["baseline"]
    others = [n for n in names if n != base]
    header = ["Benchmark (metric)", *names, *[f"Δ {n} vs {base} [95% CI]" for n in others]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    flagged: list[str] = []

    def delta_cell(name: str, key: str) -> str:
        entry = table["deltas"][name].get(key)
        if entry is None:
            return "–"
        if entry["delta"] is None:
            text = "undefined"
        else:
            ci = entry.get("ci95")
            text = _signed(entry["delta"]) + (
                f" [{_signed(ci[0])}, {_signed(ci[1])}]" if ci else ""
            )
        if "n_common" in entry and not entry["same_items"]:
            each = ", ".join(f"{n} {run}" for run, n in entry["n_each"].items())
            text += f" (n {entry['n_common']} common / {each})"
        if entry.get("same_weights"):
            text += " (same weights!)"
            flagged.append(f"{name} vs {base} on {key}")
        return text

    partial = False
    for b, by_run in table["cells"].items():
        label = table["primary_metric"][b]
        if table["metric_label"].get(b):
            label += f": {table['metric_label'][b]}"
        cells = [f"{b} ({label})"]
        cells += [_cell(by_run.get(n)) for n in names]
        partial = partial or any(c.get("partial") for c in by_run.values())
        cells += [delta_cell(n, b) for n in others]
        lines.append("| " + " | ".join(cells) + " |")
    average = table["average"]
    if average["benchmarks"]:
        cells = [f"Average ({len(average['benchmarks'])} benchmarks)"]
        cells += [f"{average['values'][n]:.1f}" for n in names]
        cells += [delta_cell(n, "average") for n in others]
        lines.append("| " + " | ".join(cells) + " |")
    boot = table["bootstrap"]
    lines.append("")
    lines.append(
        f"Deltas against {base} over the items both runs scored (joined by id); 95% intervals "
        f"from a paired bootstrap over those items ({boot['resamples']} resamples, seed "
        f"{boot['seed']}). n = items scored."
    )
    if partial:
        lines.append(
            "\n\\* partial: n scored of the benchmark's items; the reasons are in the JSON table "
            "(cells.<benchmark>.<run>.not_scored)."
        )
    if table.get("allow_different_data"):
        lines.append(
            "\nRuns of one benchmark may have been scored on different data (--allow-different-data)."
        )
    lines.append("\nWeights:")
    lines += [_weights_line(n, table["weights"][n]) for n in names]
    if flagged:
        lines.append(
            "\nSame weights and protocol on both sides (a run compared with itself): "
            + "; ".join(flagged)
        )
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stic compare",
        description="Tabulate bench results of several runs with deltas and bootstrap intervals.",
    )
    parser.add_argument(
        "runs",
        nargs="*",
        metavar="RUN",
        help="[NAME=]FOLDER or [NAME=]a.json,b.json; the first is the baseline",
    )
    parser.add_argument(
        "--rounds",
        metavar="OUTPUT_DIR",
        help="the rounds of a `stic run` with rounds >= 2 as the first columns (round 1 the "
        "baseline): each round's select entry result (a bench entry), from OUTPUT_DIR/rounds.json",
    )
    parser.add_argument("--out", required=True, help="TABLE.md (TABLE.json is written beside it)")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument(
        "--allow-different-data",
        action="store_true",
        help="compare runs of one benchmark scored on different data (different data_hash), "
        "over the items they share; refused by default",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.rounds:
            args.runs = [*round_runs(args.rounds), *args.runs]
        if not args.runs:
            parser.error("give one or more RUNs, or --rounds OUTPUT_DIR")
        table = compare(
            [load_run(run) for run in args.runs],
            args.resamples,
            args.seed,
            allow_different_data=args.allow_different_data,
        )
    except (CompareError, ValueError, FileNotFoundError) as e:
        print(f"stic compare: error: {e}", file=sys.stderr)
        return 2
    markdown = to_markdown(table)
    try:
        write_table(args, markdown, table)
    except OUTPUT_ERRORS as e:
        print(f"stic compare: error: {e}", file=sys.stderr)
        return 2
    print(markdown, end="")
    return 0


def write_table(args: argparse.Namespace, markdown: str, table: dict) -> None:
    """TABLE.md and TABLE.json through one output object: neither may be (or lie in) an input."""
    out = Path(args.out)
    json_name = out.with_suffix(".json").name
    inputs = {
        f"run {spec}": path
        for spec in args.runs
        for path in spec.partition("=")[2 if "=" in spec else 0].split(",")
        if path
    }
    settings = {
        "runs": list(args.runs),
        "resamples": args.resamples,
        "seed": args.seed,
        "allow_different_data": args.allow_different_data,
    }
    with Output(
        "compare",
        settings,
        out=out,
        inputs=inputs,
        file=True,
        also=[json_name],
        replace=True,
        command="stic compare",
    ) as output:
        output.write_text(markdown)
        output.write_json(table, json_name)
        output.finish({"benchmarks": table.get("average", {}).get("benchmarks")})


if __name__ == "__main__":
    raise SystemExit(main())
