"""benchmarks/measure.py: what every benchmark script prints rests on these few functions."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "measure.py"


@pytest.fixture(scope="module")
def measure():
    spec = importlib.util.spec_from_file_location("stic_benchmarks_measure", _PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_runs_are_interleaved_round_by_round(measure):
    calls = []

    def run(name, values):
        it = iter(values)

        def once():
            calls.append(name)
            return next(it)

        return once

    rounds = []
    figures = measure.interleaved(
        {"a": run("a", [1, 2, 3]), "b": run("b", [10, 20, 30])},
        3,
        on_round=lambda r, f: rounds.append((r, {k: list(v) for k, v in f.items()})),
    )
    assert calls == ["a", "b", "a", "b", "a", "b"]
    assert figures == {"a": [1, 2, 3], "b": [10, 20, 30]}
    assert rounds[0] == (1, {"a": [1], "b": [10]})
    assert rounds[-1][0] == 3


def test_zero_repeats_are_refused(measure):
    with pytest.raises(ValueError, match="at least 1"):
        measure.interleaved({"a": lambda: 1.0}, 0)


def test_a_ratio_is_taken_within_each_round_not_between_medians(measure):
    # A slow second round slows both engines alike: within-round ratios stay 2, while the ratio
    # of the medians (4 / 1 = 4) would not.
    figures = {"fast": [4.0, 1.0, 6.0], "slow": [2.0, 0.5, 3.0]}
    r = measure.ratios(figures, "fast", "slow")
    assert (r.median, r.low, r.high, r.runs) == (2.0, 2.0, 2.0, 3)
    figures = {"fast": [4.0, 3.0, 9.0], "slow": [2.0, 1.0, 3.0]}
    r = measure.ratios(figures, "fast", "slow")
    assert (r.median, r.low, r.high) == (3.0, 2.0, 3.0)


def test_ratios_refuse_rounds_that_do_not_pair(measure):
    with pytest.raises(ValueError):
        measure.ratios({"a": [1.0, 2.0], "b": [1.0]}, "a", "b")


def test_spread_is_the_median_and_the_range(measure):
    s = measure.spread([3.0, 1.0, 10.0, 2.0])
    assert (s.median, s.low, s.high, s.runs) == (2.5, 1.0, 10.0, 4)
    assert str(measure.spread([1.234, 2.0, 5.0])) == "2 [1.23-5]"
    assert s.as_dict(1) == {"median": 2.5, "min": 1.0, "max": 10.0, "runs": 4}
    with pytest.raises(ValueError):
        measure.spread([])


def _fake_psutil(monkeypatch, measure, machine: list[float], own: list[float], cores: int = 2):
    """The machine's busy CPU seconds and this process's, one value per reading."""
    machine_readings, own_readings = iter(machine), iter(own)

    class Process:
        def cpu_times(self):
            return SimpleNamespace(
                user=next(own_readings), system=0.0, children_user=0.0, children_system=0.0
            )

        def children(self, recursive=False):
            return []

    monkeypatch.setattr(measure.psutil, "Process", Process)
    monkeypatch.setattr(measure.psutil, "cpu_count", lambda: cores)
    monkeypatch.setattr(
        measure.psutil, "cpu_times", lambda: SimpleNamespace(user=next(machine_readings))
    )
    clock = iter([0.0, 100.0])
    monkeypatch.setattr(measure.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(measure.os, "getloadavg", lambda: (1.5, 1.0, 0.5))


def test_other_processes_cpu_time_makes_the_machine_busy(monkeypatch, measure):
    # 100 s on 2 cores = 200 CPU-s of capacity; the machine spent 150, this process 100: others 50.
    _fake_psutil(monkeypatch, measure, machine=[1000.0, 1150.0], own=[10.0, 110.0])
    with measure.LoadMonitor() as load:
        pass
    assert load.other_cpu_s == pytest.approx(50.0)
    assert load.other_share == pytest.approx(0.25)
    assert load.busy
    assert "WARNING: the machine was busy" in load.report()
    assert "25.0% of the machine" in load.report()
    assert load.as_dict()["busy"] is True


def test_a_quiet_machine_gets_no_warning(monkeypatch, measure):
    # others took 10 of 200 CPU-s: 5%, under the 10% threshold
    _fake_psutil(monkeypatch, measure, machine=[1000.0, 1110.0], own=[10.0, 110.0])
    with measure.LoadMonitor() as load:
        pass
    assert load.other_share == pytest.approx(0.05)
    assert not load.busy
    assert "WARNING" not in load.report()
