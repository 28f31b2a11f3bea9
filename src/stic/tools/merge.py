"""``stic merge``: join the outputs of sharded ``stic pairs`` or ``stic infuse`` runs.

Sharding itself (``--shard I/N``) is :mod:`stic.runtime.shards`. A merge refuses ids that appear
in two shards and reports ids that appear in none.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from stic.data.schemas import InstructSample, PairRecord, read_instruct
from stic.runtime.files import atomic_write_json, atomic_write_text, read_json, read_jsonl


class MergeError(ValueError):
    """Shard outputs that cannot be merged: overlapping or (unless allowed) missing ids."""


def merge_records(
    shards: Sequence[Sequence[dict]], names: Sequence[str], expected: Sequence[str] | None
) -> tuple[list[dict], list[str]]:
    """Join shard records (dicts with an ``id``); returns ``(records, missing ids)``.

    An id found in two shards (or twice in one) raises :class:`MergeError` naming both. With
    ``expected`` the records come out in its order and ids outside it are an error; without it,
    in shard order.
    """
    owner: dict[str, str] = {}
    by_id: dict[str, dict] = {}
    for name, records in zip(names, shards, strict=True):
        for record in records:
            item_id = record["id"]
            if item_id in owner:
                raise MergeError(f"id {item_id!r} is in both {owner[item_id]} and {name}")
            owner[item_id] = name
            by_id[item_id] = record
    if expected is None:
        return list(by_id.values()), []
    wanted = set(expected)
    strangers = [i for i in by_id if i not in wanted]
    if strangers:
        raise MergeError(
            f"{len(strangers)} ids are not in the expected set, e.g. {strangers[0]!r} from {owner[strangers[0]]}"
        )
    return [by_id[i] for i in expected if i in by_id], [i for i in expected if i not in by_id]


def main(argv: list[str]) -> int:
    """``stic merge``: join the outputs of sharded ``stic pairs`` or ``stic infuse`` runs."""
    parser = argparse.ArgumentParser(
        prog="stic merge",
        description="Join the outputs of sharded `stic pairs` (JSONL) or `stic infuse` (JSON list) runs.\n"
        "Ids found in two shards are an error; ids expected (from --images or --data) but found in\n"
        "no shard are listed and make the merge fail unless --allow-missing.\n\n"
        "example:\n  stic merge --images coco/train2014 --limit 6000 --out pairs.jsonl shard0.jsonl shard1.jsonl",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "shards", nargs="+", help="shard outputs (all pairs JSONL, or all infuse JSON)"
    )
    parser.add_argument(
        "--out", required=True, help="merged output (.jsonl for pairs, .json for infuse)"
    )
    parser.add_argument(
        "--images", help="pairs: the image folder the shards ran on (to find missing ids)"
    )
    parser.add_argument(
        "--limit", type=int, default=None, help="pairs: the --limit the shards ran with"
    )
    parser.add_argument(
        "--data", help="infuse: the instruction data the shards ran on (order and missing ids)"
    )
    parser.add_argument(
        "--allow-missing", action="store_true", help="write the merge even if ids are missing"
    )
    args = parser.parse_args(argv)
    try:
        kind = "pairs" if all(Path(s).suffix == ".jsonl" for s in args.shards) else "infuse"
        if kind == "pairs":
            from stic.runtime.images import list_images

            shards = [read_jsonl(s, strict=True) for s in args.shards]
            for name, rows in zip(args.shards, shards, strict=True):
                for n, row in enumerate(rows, start=1):
                    PairRecord.from_dict(row, where=f"{name}:{n}")
            expected = list_images(args.images, limit=args.limit) if args.images else None
        else:
            shards = [read_json(s) for s in args.shards]
            for name, rows in zip(args.shards, shards, strict=True):
                if not isinstance(rows, list):
                    raise MergeError(f"{name}: expected a JSON list of samples")
                for i, row in enumerate(rows):
                    InstructSample.from_dict(row, where=f"{name}[{i}]")
            expected = [s.id for s in read_instruct(args.data)] if args.data else None
        merged, missing = merge_records(shards, args.shards, expected)
        if missing:
            shown = ", ".join(repr(i) for i in missing[:5])
            print(
                f"stic merge: {len(missing)} ids in no shard: {shown}{' ...' if len(missing) > 5 else ''}",
                file=sys.stderr,
            )
            if not args.allow_missing:
                print(
                    "stic merge: error: not written (pass --allow-missing to write anyway)",
                    file=sys.stderr,
                )
                return 1
        out = Path(args.out)
        if kind == "pairs":
            atomic_write_text(
                out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in merged)
            )
        else:
            atomic_write_json(out, merged)
    except (OSError, ValueError) as e:
        print(f"stic merge: error: {e}", file=sys.stderr)
        return 1
    print(
        json.dumps(
            {
                "merged": len(merged),
                "shards": len(args.shards),
                "missing": len(missing),
                "out": str(out),
            }
        )
    )
    return 0
