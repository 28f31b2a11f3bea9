"""Config identity: what a manifest records of the config that made an output, and its hash.

A config is a stage's dataclass (its ``RUNTIME_FIELDS`` say how it runs, not what it computes)
or, for a tool, a plain mapping of the settings that decide its output. Path fields are
recorded absolute and resolved, so the same run named from another directory, with a trailing
slash or through ``~`` has the same identity.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# What a file output's name ends with; any other output is a folder (``--out`` of a stage).
FILE_SUFFIXES = (".json", ".jsonl")
# Config fields that name files or folders: compared and hashed as absolute, resolved paths.
PATH_FIELDS = ("model", "images", "out", "pairs", "data", "adapter")


def to_dict(config: Any) -> dict:
    return dict(config) if isinstance(config, Mapping) else dataclasses.asdict(config)


def runtime_fields(config: Any) -> tuple[str, ...]:
    """Fields that say how a run goes, not what it makes (a tool's mapping: ``overwrite`` only)."""
    return ("overwrite",) if isinstance(config, Mapping) else type(config).RUNTIME_FIELDS


def normalize_path(value: str) -> str:
    """``value`` as an absolute, resolved path (symbolic links followed where they exist)."""
    return str(Path(value).expanduser().resolve())


def _is_local(field_name: str, value: str) -> bool:
    # A model is a Hub id unless a folder of that name exists here; every other path field is local.
    return field_name != "model" or Path(value).expanduser().exists()


def _omitted_defaults(config: Any) -> set[str]:
    """Fields of a config dataclass listed in its ``OMIT_AT_DEFAULT`` that hold their default.

    Fields added to a stage after outputs were made with it are left out of what a manifest
    records (and so of the hash) while at their default: those outputs keep their identity and
    are resumed or skipped as before, and a run that sets the field is a different config.
    """
    names = getattr(type(config), "OMIT_AT_DEFAULT", ())
    if not names or isinstance(config, Mapping):
        return set()
    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    return {name for name in names if getattr(config, name) == defaults[name]}


def normalized(config: Any) -> dict:
    """The config as a dict with every path field absolute and resolved (what a manifest records).

    Fields in the config class's ``OMIT_AT_DEFAULT`` are left out while at their default.
    """
    data = to_dict(config)
    for name in _omitted_defaults(config):
        del data[name]
    for name in PATH_FIELDS:
        value = data.get(name)
        if isinstance(value, str) and value and _is_local(name, value):
            data[name] = normalize_path(value)
    return data


def identity(config: Any) -> dict:
    """The fields that decide what a stage computes (not RUNTIME_FIELDS), paths normalized."""
    skip = runtime_fields(config)
    return {k: v for k, v in normalized(config).items() if k not in skip}


def hash_of(identity_dict: dict) -> str:
    return hashlib.sha256(json.dumps(identity_dict, sort_keys=True).encode()).hexdigest()[:16]


def config_hash(config: Any) -> str:
    """Hash of :func:`identity`: equal for two spellings of the same run, different otherwise."""
    return hash_of(identity(config))


def differing_keys(recorded: dict, config: Any) -> list[str]:
    """Keys of :func:`identity` whose value differs from a ``recorded`` config dict (a manifest's).

    Recorded paths are normalized the same way, so a manifest written before paths were
    normalized still names only the keys that really changed.
    """
    return _differing(recorded, identity(config), runtime_fields(config))


def _differing(recorded: dict, now: dict, skip: tuple[str, ...]) -> list[str]:
    keys = set(now) | {k for k in recorded if k not in skip}
    changed = []
    for key in sorted(keys):
        old = recorded.get(key)
        if key in PATH_FIELDS and isinstance(old, str) and old and _is_local(key, old):
            old = normalize_path(old)
        if old != now.get(key):
            changed.append(key)
    return changed


@dataclasses.dataclass(frozen=True)
class ConfigIdentity:
    """A config read once: what the manifest records and compares (see :func:`of`).

    ``record``: every field, paths normalized; ``identity``: the fields that decide the result;
    ``hash``: its hash; ``overwrite``: whether the run may replace an output made otherwise.
    """

    record: dict
    identity: dict
    hash: str
    runtime: tuple[str, ...]
    overwrite: bool

    @classmethod
    def of(cls, config: Any) -> ConfigIdentity:
        record = normalized(config)
        skip = runtime_fields(config)
        ident = {k: v for k, v in record.items() if k not in skip}
        return cls(record, ident, hash_of(ident), skip, bool(record.get("overwrite", False)))

    def differing_keys(self, recorded: dict) -> list[str]:
        return _differing(recorded, self.identity, self.runtime)
