"""``stic compare``: the paper's Table 1 in form, from ``stic bench`` / ``stic bench score`` results.

Rows are benchmarks (registry order), columns are runs (base, stage 1, STIC, STIC + DaR,
ablations ...). Each cell is the benchmark's primary metric. The average row is taken over the
benchmarks every run has. Against the first run, each other run gets a delta per benchmark and a
paired bootstrap 95% interval: the items both runs scored (same ids; MMBench's circular groups
as units) are resampled with replacement, seeded, and the metric is recomputed on the resample
for both runs with the benchmark's own scorer; the interval is the 2.5th..97.5th percentile of
the difference. The average's interval averages the per-benchmark differences draw by draw.

A RUN is ``[NAME=]PATH``: PATH is a folder of ``<benchmark>.json`` results or a comma-separated
list of result files; NAME defaults to the folder (or first file's parent folder) name.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from stic.data.benchmarks import BENCHMARKS
from stic.runtime.files import read_json
from stic.runtime.output import OUTPUT_ERRORS, Output


class CompareError(ValueError):
    """A run that cannot be tabulated; the message names it."""


def load_run(spec: str) -> tuple[str, dict[str, dict]]:
    """``(name, {benchmark: result document})`` for one ``[NAME=]PATH`` argument."""
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
        results[benchmark] = document
    return name, results


def _units(rows: Sequence[dict]) -> dict[str, list[dict]]:
    units: dict[str, list[dict]] = {}
    for row in rows:
        units.setdefault(str(row.get("group") or row["id"]), []).append(row)
    return units


def _resampled(units: dict[str, list[dict]], drawn: Sequence[str]) -> list[dict]:
    rows = []
    for copy, unit in enumerate(drawn):
        for row in units[unit]:
            # a unit drawn twice must stay two units (MMBench groups its rotations by "group")
            rows.append({**row, "group": f"{unit}#{copy}"} if "group" in row else row)
    return rows


def paired_bootstrap(
    benchmark: str, base: dict, other: dict, resamples: int, seed: int
) -> tuple[np.ndarray, int]:
    """Differences ``metric(other) - metric(base)`` over ``resamples`` paired resamples of the
    units both runs scored, and that unit count."""
    spec = BENCHMARKS[benchmark]
    base_units, other_units = _units(base["items"]), _units(other["items"])
    common = sorted(set(base_units) & set(other_units))
    if not common:
        return np.array([]), 0
    rng = np.random.default_rng([seed, sum(benchmark.encode())])
    draws = np.empty(resamples)
    for k in range(resamples):
        drawn = [common[i] for i in rng.integers(0, len(common), len(common))]
        a = spec.metrics_of(_resampled(base_units, drawn))[spec.primary]
        b = spec.metrics_of(_resampled(other_units, drawn))[spec.primary]
        draws[k] = b - a
    return draws, len(common)


def compare(
    runs: Sequence[tuple[str, dict[str, dict]]], resamples: int = 1000, seed: int = 0
) -> dict:
    """The comparison table as a JSON-ready dict (see the module docstring)."""
    names = [name for name, _ in runs]
    if len(set(names)) != len(names):
        raise CompareError(f"two runs share a name: {names}; name them with NAME=PATH")
    benchmarks = [b for b in BENCHMARKS if any(b in results for _, results in runs)]
    values = {
        b: {
            name: results[b]["metrics"][BENCHMARKS[b].primary] if b in results else None
            for name, results in runs
        }
        for b in benchmarks
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
        draws_for_average = []
        for b in benchmarks:
            if b not in results or b not in base:
                continue
            draws, n_common = paired_bootstrap(b, base[b], results[b], resamples, seed)
            entry = {
                "delta": round(values[b][name] - values[b][base_name], 4),
                "n_common": n_common,
            }
            if n_common:
                entry["ci95"] = [round(float(np.percentile(draws, q)), 4) for q in (2.5, 97.5)]
                if b in shared:
                    draws_for_average.append(draws)
            per[b] = entry
        if shared:
            entry = {"delta": round(average[name] - average[base_name], 4)}
            if len(draws_for_average) == len(shared):
                mean_draws = np.mean(draws_for_average, axis=0)
                entry["ci95"] = [round(float(np.percentile(mean_draws, q)), 4) for q in (2.5, 97.5)]
            per["average"] = entry
        deltas[name] = per
    return {
        "runs": names,
        "baseline": base_name,
        "primary_metric": {b: BENCHMARKS[b].primary for b in benchmarks},
        "values": values,
        "average": {"benchmarks": shared, "values": average},
        "deltas": deltas,
        "bootstrap": {
            "resamples": resamples,
            "seed": seed,
            "confidence": 0.95,
            "paired_by": "item id",
        },
    }


def _signed(x: float) -> str:
    return f"{x:+.1f}"


def to_markdown(table: dict) -> str:
    """The table as Markdown: one value column per run, then one delta column per other run."""
    names, base = table["runs"], table["baseline"]
    others = [n for n in names if n != base]
    header = ["Benchmark (metric)", *names, *[f"Δ {n} vs {base} [95% CI]" for n in others]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def delta_cell(name: str, key: str) -> str:
        entry = table["deltas"][name].get(key)
        if entry is None:
            return "–"
        ci = entry.get("ci95")
        return _signed(entry["delta"]) + (f" [{_signed(ci[0])}, {_signed(ci[1])}]" if ci else "")

    for b, by_run in table["values"].items():
        cells = [f"{b} ({table['primary_metric'][b]})"]
        cells += ["–" if by_run[n] is None else f"{by_run[n]:.1f}" for n in names]
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
        f"Deltas against {base}; 95% intervals from a paired bootstrap over the items both runs "
        f"scored ({boot['resamples']} resamples, seed {boot['seed']})."
    )
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stic compare",
        description="Tabulate bench results of several runs with deltas and bootstrap intervals.",
    )
    parser.add_argument(
        "runs",
        nargs="+",
        metavar="RUN",
        help="[NAME=]FOLDER or [NAME=]a.json,b.json; the first is the baseline",
    )
    parser.add_argument("--out", required=True, help="TABLE.md (TABLE.json is written beside it)")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        table = compare([load_run(run) for run in args.runs], args.resamples, args.seed)
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
    settings = {"runs": list(args.runs), "resamples": args.resamples, "seed": args.seed}
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
