"""Per-item random number generators.

Every random decision about an item (a pair's branch and prompts, a corruption's parameters, a
stage-2 description prompt) comes from a generator seeded by ``(seed, purpose, item id)``, so a
rerun, a resumed run, another batch size or a shard makes the same decision for the same item.
"""

from __future__ import annotations

import hashlib
import random


def item_seed(seed: int, item_id: str, purpose: str) -> int:
    """A 64-bit seed from (seed, purpose, id), stable across processes and Python versions."""
    digest = hashlib.sha256(f"{seed}\x00{purpose}\x00{item_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def item_rng(seed: int, item_id: str, purpose: str) -> random.Random:
    return random.Random(item_seed(seed, item_id, purpose))
