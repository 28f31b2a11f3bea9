"""Agreement figures the vLLM tests measure, printed at the end of the run (never hidden)."""

from __future__ import annotations

FIGURES: list[tuple[str, int, int]] = []


def record(what: str, same: int, total: int) -> None:
    FIGURES.append((what, same, total))
