"""Quality filters on preference pairs, applied before stage-1b training.

A pair teaches nothing, or the wrong thing, when its two answers are the same, when one is empty,
cut off at the token limit, or a refusal, or when the rejected answer is a near copy of the
chosen one. Each filter can be switched off; dropped pairs are kept with their reason for
inspection.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from stic.data.schemas import PairRecord

# Openings of refusals, matched case-insensitively anywhere in an answer's first sentence.
REFUSAL = re.compile(
    r"^\W*(?:i'?m sorry|i am sorry|sorry, |i (?:cannot|can't|can not|am unable|am not able)|"
    r"as an ai\b|i'?m unable|i'?m not able)",
    re.IGNORECASE,
)

FILTERS = ("identical", "empty", "truncated", "refusal", "near_duplicate")


@dataclass(frozen=True)
class FilterSettings:
    """Which filters are on, and the near-duplicate similarity threshold (0-1)."""

    identical: bool = True
    empty: bool = True
    truncated: bool = True
    refusal: bool = True
    near_duplicate: bool = True
    near_duplicate_threshold: float = 0.9

    @classmethod
    def of(cls, config) -> FilterSettings:
        """The settings a DPO config asks for (its ``filter_<name>`` switches and threshold)."""
        return cls(
            identical=config.filter_identical,
            empty=config.filter_empty,
            truncated=config.filter_truncated,
            refusal=config.filter_refusals,
            near_duplicate=config.filter_near_duplicates,
            near_duplicate_threshold=config.near_duplicate_threshold,
        )


def is_near_duplicate(a: str, b: str, threshold: float) -> bool:
    """Word-level difflib similarity (lower-cased) of ``a`` and ``b`` is at least ``threshold``."""
    matcher = difflib.SequenceMatcher(None, a.lower().split(), b.lower().split(), autojunk=False)
    # quick_ratio is a cheap upper bound of ratio: most pairs are decided by it alone.
    return matcher.quick_ratio() >= threshold and matcher.ratio() >= threshold


def drop_reason(pair: PairRecord, settings: FilterSettings) -> str | None:
    """The first filter that drops ``pair`` (in :data:`FILTERS` order), or None to keep it."""
    chosen, rejected = pair.chosen.strip(), pair.rejected.strip()
    if settings.identical and " ".join(chosen.split()) == " ".join(rejected.split()):
        return "identical"
    if settings.empty and (not chosen or not rejected):
        return "empty"
    if settings.truncated and "length" in (pair.chosen_finish, pair.rejected_finish):
        return "truncated"
    if settings.refusal and (REFUSAL.search(chosen) or REFUSAL.search(rejected)):
        return "refusal"
    if settings.near_duplicate and is_near_duplicate(
        chosen, rejected, settings.near_duplicate_threshold
    ):
        return "near_duplicate"
    return None


def filter_pairs(
    pairs: Iterable[PairRecord], settings: FilterSettings
) -> tuple[list[PairRecord], list[tuple[str, PairRecord]], Counter]:
    """Split pairs into kept and ``(reason, pair)`` dropped, with counts per reason."""
    kept, dropped = [], []
    counts: Counter = Counter({name: 0 for name in FILTERS})
    for pair in pairs:
        reason = drop_reason(pair, settings)
        if reason is None:
            kept.append(pair)
        else:
            dropped.append((reason, pair))
            counts[reason] += 1
    return kept, dropped, counts
