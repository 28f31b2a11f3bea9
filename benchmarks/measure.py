"""What every benchmark script here measures alike: repeated, interleaved runs, their median and
range, and how busy the machine was meanwhile.

Why interleaved (A B C A B C ...) and not A A A B B B: a machine's speed drifts (other jobs, heat,
frequency scaling); interleaving spreads a drift over every configuration instead of loading it
onto one. Why a ratio's median over rounds rather than the ratio of medians: the two figures of one
round ran seconds apart, under nearly the same conditions, so each round's ratio cancels most of
the drift; its range over rounds is what a rerun can be expected to reproduce.

Why the load: on a shared machine the engines use the cores differently (a batched generate uses
every thread, a loop of small calls less), so another job skews ratios, not only times. The
monitor reports the load average and the CPU time that other processes took during the run, and
says when that makes the figures unreliable.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import psutil

# Other processes using more than this share of the machine's CPU capacity during a run make it
# "busy": a tenth of the cores is already enough to shift ratios between engines by several %.
BUSY_SHARE = 0.10


@dataclass(frozen=True)
class Spread:
    median: float
    low: float
    high: float
    runs: int

    def __str__(self) -> str:
        return f"{self.median:.3g} [{self.low:.3g}-{self.high:.3g}]"

    def as_dict(self, digits: int = 4) -> dict[str, float | int]:
        return {
            "median": round(self.median, digits),
            "min": round(self.low, digits),
            "max": round(self.high, digits),
            "runs": self.runs,
        }


def spread(values: Sequence[float]) -> Spread:
    if not values:
        raise ValueError("no values to summarise")
    return Spread(statistics.median(values), min(values), max(values), len(values))


def interleaved(
    runs: Mapping[str, Callable[[], float]], repeats: int, on_round: Callable | None = None
) -> dict[str, list[float]]:
    """Call each of ``runs`` once per round, in order, for ``repeats`` rounds; each returns a
    figure (a rate, a time). Returns name -> the figure of each round."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    figures: dict[str, list[float]] = {name: [] for name in runs}
    for round_ in range(repeats):
        for name, run in runs.items():
            figures[name].append(run())
        if on_round is not None:
            on_round(round_ + 1, figures)
    return figures


def ratios(figures: Mapping[str, Sequence[float]], numerator: str, denominator: str) -> Spread:
    """The ratio of two configurations within each round, summarised over rounds."""
    return spread([a / b for a, b in zip(figures[numerator], figures[denominator], strict=True)])


def _own_cpu_seconds(process: psutil.Process) -> float:
    """CPU time of this process and every process it started (vLLM's engine, compile workers)."""
    total = 0.0
    for p in [process, *process.children(recursive=True)]:
        try:
            times = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


def _machine_cpu_seconds() -> float:
    times = psutil.cpu_times()
    return sum(getattr(times, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq"))


class LoadMonitor:
    """``with LoadMonitor() as load: ...`` then ``load.report()``: how much of the machine other
    processes used while the block ran."""

    def __enter__(self) -> LoadMonitor:
        self._process = psutil.Process()
        self._cores = psutil.cpu_count() or 1
        self.load_before = os.getloadavg()
        self._wall = time.monotonic()
        self._machine = _machine_cpu_seconds()
        self._own = _own_cpu_seconds(self._process)
        return self

    def __exit__(self, *exc) -> None:
        self.wall_s = time.monotonic() - self._wall
        machine = _machine_cpu_seconds() - self._machine
        own = _own_cpu_seconds(self._process) - self._own
        self.other_cpu_s = max(0.0, machine - own)
        self.load_after = os.getloadavg()

    @property
    def other_share(self) -> float:
        """Other processes' CPU time over the machine's capacity during the run (0-1)."""
        return self.other_cpu_s / max(self.wall_s * self._cores, 1e-9)

    @property
    def busy(self) -> bool:
        return self.other_share > BUSY_SHARE

    def report(self) -> str:
        line = (
            f"machine: {self._cores} cores; load average {self.load_before[0]:.2f} before, "
            f"{self.load_after[0]:.2f} after; other processes took {self.other_cpu_s:.1f} CPU-s "
            f"in {self.wall_s:.0f} s ({100 * self.other_share:.1f}% of the machine)"
        )
        if self.busy:
            line += (
                f"\nWARNING: the machine was busy (other processes above {100 * BUSY_SHARE:.0f}% "
                "of its CPU): the figures and especially the ratios between engines are "
                "unreliable; rerun on a quiet machine"
            )
        return line

    def as_dict(self) -> dict[str, float | bool]:
        return {
            "cores": self._cores,
            "load_average_before": round(self.load_before[0], 2),
            "load_average_after": round(self.load_after[0], 2),
            "other_cpu_s": round(self.other_cpu_s, 1),
            "other_share": round(self.other_share, 3),
            "busy": self.busy,
        }
