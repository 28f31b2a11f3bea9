"""``stic merge``: join the outputs of sharded ``stic pairs`` or ``stic infuse`` runs.

Sharding itself (``--shard I/N``) is :mod:`stic.runtime.shards`. A merge refuses ids that appear
in two shards and reports ids that appear in none. It joins only shards of one run: their
manifests must name the same stage, be complete and hold the same config but for the shard and
how fast it ran (:data:`IGNORED_KEYS`); a shard whose manifest was not copied along is accepted
only if its records say they were made by the same model with the same sampling as the others'.
The merged file gets a manifest of its own (stage ``merge``), so later stages and ``--overwrite``
know stic wrote it.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from stic.data.schemas import InstructSample, PairRecord, read_instruct
from stic.runtime.files import read_json, read_jsonl
from stic.runtime.manifests import (
    input_identity,
    library_versions,
    manifest_path,
    read_manifest,
    redact,
)
from stic.runtime.output import OUTPUT_ERRORS, Output

# Config keys that may differ between the shards of one run: which shard, where it wrote, and
# how fast it ran. Every other key decides what the records hold.
IGNORED_KEYS = ("shard", "out", "overwrite", "device", "batch_size", "limit")
# Config keys that hold local paths: compared as absolute, resolved paths (a Hub model id, a
# name with no folder of that name here, is compared as written).
_PATH_KEYS = ("model", "images", "pairs", "data", "adapter")
SUFFIX = {"pairs": ".jsonl", "infuse": ".json"}


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


def _comparable(config: dict) -> dict:
    """A shard's recorded config without :data:`IGNORED_KEYS`, paths normalized."""
    out = {}
    for key, value in config.items():
        if key in IGNORED_KEYS:
            continue
        if key in _PATH_KEYS and isinstance(value, str) and value:
            local = Path(value).expanduser()
            if key != "model" or local.exists():
                value = str(local.resolve())
        out[key] = value
    return out


def _differing(a: dict, b: dict) -> list[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def _show(keys: list[str], a: dict, b: dict, limit: int = 3) -> str:
    shown = ", ".join(f"{k} {a.get(k)!r} vs {b.get(k)!r}" for k in keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def check_manifests(
    shards: Sequence[str], kind: str, allow_different: Sequence[str] = ()
) -> dict[str, dict]:
    """The shards' manifests (``None`` for a shard without one), checked to be of one run.

    Raises :class:`MergeError` (one line) for a manifest of another stage, one not complete,
    settings that differ (naming the keys and the two shards), inputs whose content differs,
    or shards split different ways (``0/2`` with ``1/3``). ``allow_different``: path keys not
    compared (shards run on machines that mount the same data at different paths); the inputs'
    content identities are still compared.
    """
    manifests = {name: read_manifest(name) for name in shards}
    first: tuple[str, dict, dict] | None = None
    splits: dict[str, str] = {}
    for name, manifest in manifests.items():
        if manifest is None:
            continue
        if manifest.get("stage") != kind:
            raise MergeError(
                f"{name} is a {manifest.get('stage')} output (by its manifest), not a {kind} shard"
            )
        if manifest.get("status") != "complete":
            raise MergeError(
                f"{name} is not complete (its manifest says {manifest.get('status')!r}): "
                "rerun its command to finish it, then merge"
            )
        config = manifest.get("config") or {}
        if config.get("shard"):
            splits[name] = str(config["shard"]).split("/")[-1]
        comparable = _comparable(config)
        inputs = manifest.get("inputs") or {}
        if first is None:
            first = (name, comparable, inputs)
            continue
        first_name, first_config, first_inputs = first
        keys = [k for k in _differing(first_config, comparable) if k not in allow_different]
        if keys:
            paths = [k for k in keys if k in _PATH_KEYS]
            hint = (
                f" (if it is the same {paths[0]} at another path, pass --allow-different {paths[0]})"
                if paths
                else ""
            )
            raise MergeError(
                f"{first_name} and {name} were made with different settings "
                f"({_show(keys, first_config, comparable)}); "
                f"merge only the shards of one run{hint}"
            )
        keys = _differing(first_inputs, inputs)
        if keys:
            raise MergeError(
                f"{first_name} and {name} were made from inputs whose content differs "
                f"({', '.join(keys)}); merge only the shards of one run"
            )
    if len(set(splits.values())) > 1:
        shown = ", ".join(f"{n} ({manifests[n]['config']['shard']})" for n in splits)
        raise MergeError(f"the shards were split different ways: {shown}")
    return manifests


def _record_provenance(rows: Sequence[dict], compare_model: bool) -> list[tuple[str, str]]:
    """The distinct (model, sampling) that pair records say made them, as JSON strings.

    A local model path is compared resolved (a run resumed from another directory writes the
    same model spelled differently); ``compare_model=False`` leaves the model out.
    """
    seen = {}
    for row in rows:
        model = _comparable({"model": row.get("model")}).get("model") if compare_model else None
        key = (
            json.dumps(model, sort_keys=True),
            json.dumps(row.get("sampling"), sort_keys=True),
        )
        seen.setdefault(key, None)
    return list(seen)


def check_record_provenance(
    shards: Sequence[str],
    rows: Sequence[Sequence[dict]],
    manifests: dict[str, dict | None],
    kind: str,
    allow_different: Sequence[str] = (),
) -> None:
    """Every shard's records made by one model with one sampling, the same for all shards.

    Checked for every shard (a file appended to by two runs mixes them), and the only check a
    shard without a manifest gets: infuse records carry no provenance, so such a shard is refused.
    """
    reference: tuple[str, tuple[str, str]] | None = None
    for name, records in zip(shards, rows, strict=True):
        if kind != "pairs":
            if manifests[name] is None:
                raise MergeError(
                    f"{name} has no manifest ({manifest_path(name).name}) and infuse records do "
                    "not say which model made them: copy its manifest beside it, or rerun the shard"
                )
            continue
        found = _record_provenance(records, compare_model="model" not in allow_different)
        if len(found) > 1:
            raise MergeError(
                f"{name} mixes records of {len(found)} different models or sampling settings "
                f"(e.g. model {found[0][0]} sampling {found[0][1]} and model {found[1][0]} "
                f"sampling {found[1][1]}): it was written by more than one run"
            )
        if not found:
            continue
        if reference is None:
            reference = (name, found[0])
            continue
        if found[0] != reference[1]:
            what = [
                f"{field} {a} vs {b}"
                for field, a, b in zip(("model", "sampling"), reference[1], found[0], strict=True)
                if a != b
            ]
            raise MergeError(
                f"{reference[0]} and {name} hold records made differently ({'; '.join(what)})"
                + (
                    f"; {name} has no manifest to say more"
                    if manifests[name] is None
                    else "; merge only the shards of one run"
                )
            )


def check_out_location(out: Path, shards: Sequence[str], inputs: dict[str, str | None]) -> None:
    """Refuse an ``--out`` that is one of the shards, or is or lies inside an input."""
    target = out.expanduser().resolve()
    for name in shards:
        if Path(name).expanduser().resolve() == target:
            raise MergeError(
                f"--out {out} is one of the shards ({name}): choose another output path"
            )
    for key, value in inputs.items():
        if not value:
            continue
        source = Path(value).expanduser().resolve()
        if source == target or source in target.parents:
            how = "is" if source == target else "lies inside"
            raise MergeError(
                f"--out {out} {how} the {key} input {value}: choose another output path"
            )


def check_out_existing(out: Path, overwrite: bool) -> None:
    """Refuse an existing ``--out`` that stic did not write, or that is not a merge, unless
    ``overwrite``; and a folder always."""
    if out.is_dir():
        raise MergeError(f"--out {out} is a folder: give a file path")
    if out.exists() or out.is_symlink():
        manifest = read_manifest(out) if manifest_path(out).exists() else None
        if manifest is None and not overwrite:
            raise MergeError(
                f"--out {out} exists and stic did not write it (no {manifest_path(out).name} "
                "beside it): choose another output path, or pass --overwrite to replace it"
            )
        if manifest is not None and manifest.get("stage") != "merge" and not overwrite:
            raise MergeError(
                f"--out {out} holds a {manifest.get('stage')} output, not a merge: choose another "
                "output path, or pass --overwrite to replace it"
            )


def merge_output(args: argparse.Namespace, out: Path) -> Output:
    """The merged file's output object: guarded against the shards and inputs, locked."""
    inputs = {f"shard {s}": s for s in args.shards} | {"images": args.images, "data": args.data}
    return Output(
        "merge",
        {"shards": list(args.shards), "overwrite": args.overwrite},
        out=out,
        inputs=inputs,
        file=True,
        adopt=lambda: [],  # a file without a manifest: check_out_existing decides
        replace=True,
        command="stic merge",
    )


def merge_manifest(
    out: Path,
    shards: Sequence[str],
    kind: str,
    manifests: dict[str, dict | None],
    status: str,
    summary: dict | None = None,
    allow_different: Sequence[str] = (),
) -> dict:
    """What the merged file's manifest records: the shards, their identities and common config."""
    config = {
        "shards": [str(Path(s).expanduser().resolve()) for s in shards],
        "kind": kind,
        "out": str(out.expanduser().resolve()),
        "allow_different": sorted(set(allow_different)),
    }
    recorded = next((m for m in manifests.values() if m is not None), None)
    return redact(
        {
            "stage": "merge",
            "status": status,
            "config": config,
            "config_hash": hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[
                :16
            ],
            "versions": library_versions(),
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "inputs": {s: input_identity(s) for s in config["shards"]},
            "files": [out.name],
            # What made the records: the shards' common stage and config (without the shard keys).
            "made_by": None
            if recorded is None
            else {
                "stage": recorded.get("stage"),
                "config": _comparable(recorded.get("config", {})),
            },
            "shard_hashes": {
                resolved: (manifests[s] or {}).get("config_hash")
                for s, resolved in zip(shards, config["shards"], strict=True)
            },
            "summary": summary or {},
        }
    )


def main(argv: list[str]) -> int:
    """``stic merge``: join the outputs of sharded ``stic pairs`` or ``stic infuse`` runs."""
    parser = argparse.ArgumentParser(
        prog="stic merge",
        description="Join the outputs of sharded `stic pairs` (JSONL) or `stic infuse` (JSON list) runs.\n"
        "Ids found in two shards are an error; ids expected (from --images or --data) but found in\n"
        "no shard are listed and make the merge fail unless --allow-missing. Only shards of one\n"
        "run are joined: their manifests must agree on everything but the shard and runtime\n"
        f"options ({', '.join(IGNORED_KEYS)}); the merged file gets a manifest of its own.\n\n"
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
    parser.add_argument(
        "--allow-different",
        action="append",
        default=[],
        choices=_PATH_KEYS,
        metavar="KEY",
        help="a path setting the shards may spell differently (shards run on machines that "
        f"mount the same data elsewhere); one of {', '.join(_PATH_KEYS)}; repeatable. The "
        "content of pairs, data and adapter inputs is still compared",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --out that stic did not write (a previous merge is replaced "
        "without it)",
    )
    args = parser.parse_args(argv)
    try:
        with contextlib.ExitStack() as held:
            kind = "pairs" if all(Path(s).suffix == ".jsonl" for s in args.shards) else "infuse"
            out = Path(args.out)
            if out.suffix != SUFFIX[kind]:
                raise MergeError(
                    f"--out {out}: {kind} shards merge into a {SUFFIX[kind]} file, "
                    f"got {out.suffix or 'no suffix'!r}"
                )
            check_out_location(out, args.shards, {"images": args.images, "data": args.data})
            # Held from here to the manifest: two merges into one file cannot interleave. The
            # merge's own checks below say which existing file it may replace.
            output = held.enter_context(merge_output(args, out))
            check_out_existing(out, args.overwrite)
            manifests = check_manifests(args.shards, kind, args.allow_different)
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
            check_record_provenance(args.shards, shards, manifests, kind, args.allow_different)
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
            summary = {"merged": len(merged), "shards": len(args.shards), "missing": len(missing)}
            # The manifest goes first (running), so a kill before the end leaves a file that a
            # rerun may replace, never one that looks like a user's.
            output.write_own_manifest(
                merge_manifest(
                    out, args.shards, kind, manifests, "running", None, args.allow_different
                )
            )
            if kind == "pairs":
                output.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in merged))
            else:
                output.write_json(merged)
            output.write_own_manifest(
                merge_manifest(
                    out, args.shards, kind, manifests, "complete", summary, args.allow_different
                )
            )
    except (OSError, ValueError, *OUTPUT_ERRORS) as e:
        print(f"stic merge: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps({**summary, "out": str(out)}))
    return 0
