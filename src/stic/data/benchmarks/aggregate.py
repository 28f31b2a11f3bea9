"""Turning scored item rows into metrics: percentages and per-category breakdowns.

Every scorer returns one row per scored item (a JSON-ready dict with at least ``id``,
``prediction``, ``extracted``, ``score`` and ``categories``), and a ``summarize(rows)`` that
computes the benchmark's metrics from rows alone. ``stic compare`` recomputes metrics from the
rows of a result file with the same function, so a bootstrap resample is scored exactly as the
full set was.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


def percent(numerator: float, denominator: float) -> float:
    """100 * numerator / denominator, 0.0 for an empty denominator, rounded to 4 decimals."""
    return round(100.0 * numerator / denominator, 4) if denominator else 0.0


def mean_score(rows: Sequence[dict]) -> float:
    """Mean item ``score`` in percent over the rows that have one (judge failures have None)."""
    scores = [row["score"] for row in rows if row.get("score") is not None]
    return percent(sum(scores), len(scores))


def by_category(
    rows: Sequence[dict], metrics_of: Callable[[Sequence[dict]], dict]
) -> dict[str, dict[str, dict]]:
    """``{axis: {label: metrics_of(rows with that label) + {"n": count}}}``.

    An item with several labels on an axis (an MM-Vet capability list) counts toward each.
    """
    groups: dict[str, dict[str, list[dict]]] = {}
    for row in rows:
        for axis, labels in (row.get("categories") or {}).items():
            for label in labels:
                groups.setdefault(axis, {}).setdefault(label, []).append(row)
    return {
        axis: {
            label: {**metrics_of(members), "n": len(members)}
            for label, members in sorted(labels.items())
        }
        for axis, labels in sorted(groups.items())
    }
