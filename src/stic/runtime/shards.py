"""Splitting the generation stages across processes or machines.

``--shard I/N`` keeps the items whose id hashes to I modulo N, so N runs with the same data and
``I = 0..N-1`` cover every item exactly once, whatever order or machine. Each item's random
decisions come from (seed, id) alone (:mod:`stic.runtime.rng`), so a sharded run makes the same
decisions as an unsharded one. ``stic merge`` (:mod:`stic.tools.merge`)
joins the shard outputs.
"""

from __future__ import annotations

from collections.abc import Sequence

from stic.runtime.rng import item_seed


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with ``0 <= I < N``; ``ValueError`` otherwise."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError as e:
        raise ValueError(f"shard must look like I/N (e.g. 0/4), got {text!r}") from e
    if not 0 <= index < count:
        raise ValueError(f"shard {text!r}: need 0 <= I < N")
    return index, count


def shard_of(item_id: str, count: int) -> int:
    """The shard (0..count-1) an item belongs to; depends on its id only."""
    return item_seed(0, item_id, "shard") % count


def select_shard(ids: Sequence[str], shard: str | None) -> list[str]:
    """The ids of ``shard`` (all of them when ``shard`` is None), in their given order."""
    if shard is None:
        return list(ids)
    index, count = parse_shard(shard)
    return [i for i in ids if shard_of(i, count) == index]
