"""Stage manifests: what made an output, so reruns skip, resume or refuse.

Every stage writes a manifest beside its output: the stage name, the resolved config, its hash
(fields that decide the result only), library versions, status (``running`` or ``complete``)
and the stage's summary. A rerun whose config hash matches resumes (or skips when complete);
one whose hash differs is refused unless ``overwrite`` is set, so outputs of two configs are
never mixed in one file.
"""

from __future__ import annotations

import importlib.metadata
import logging
import platform
import shutil
import time
from pathlib import Path
from typing import Any, Literal

from stic.config import config_hash, to_dict
from stic.files import atomic_write_json, read_json

logger = logging.getLogger(__name__)

FILE_SUFFIXES = (".json", ".jsonl")
_PACKAGES = (
    "stic",
    "torch",
    "torchvision",
    "transformers",
    "peft",
    "accelerate",
    "datasets",
    "tokenizers",
)


class StageConflict(RuntimeError):
    """An output exists that a different config made."""


def manifest_path(out: str | Path) -> Path:
    """``<out>.manifest.json`` beside a file output, ``<out>/stic_manifest.json`` in a folder output."""
    out = Path(out)
    if out.suffix in FILE_SUFFIXES:
        return out.with_name(out.name + ".manifest.json")
    return out / "stic_manifest.json"


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def read_manifest(out: str | Path) -> dict | None:
    path = manifest_path(out)
    return read_json(path) if path.exists() else None


def stage_status(out: str | Path, stage: str, config: Any) -> Literal["new", "resume", "complete"]:
    """Where ``stage`` stands at ``out`` for ``config``; raises :class:`StageConflict` on a mismatch.

    With ``config.overwrite`` a mismatching output is deleted and the stage starts anew.
    """
    manifest = read_manifest(out)
    if manifest is None:
        return "new"
    if manifest.get("stage") == stage and manifest.get("config_hash") == config_hash(config):
        return "complete" if manifest.get("status") == "complete" else "resume"
    if not getattr(config, "overwrite", False):
        raise StageConflict(
            f"{out} holds a {manifest.get('stage')} output made with a different config "
            f"(hash {manifest.get('config_hash')}, now {config_hash(config)}); "
            "choose another output path or pass --overwrite to replace it"
        )
    logger.warning("overwriting %s (made with a different config)", out)
    remove_output(out)
    return "new"


def remove_output(out: str | Path) -> None:
    out = Path(out)
    if out.suffix in FILE_SUFFIXES:
        for path in out.parent.glob(out.name + "*"):
            path.unlink()
    elif out.exists():
        shutil.rmtree(out)


def write_manifest(
    out: str | Path,
    stage: str,
    config: Any,
    status: Literal["running", "complete"],
    summary: dict | None = None,
) -> None:
    atomic_write_json(
        manifest_path(out),
        {
            "stage": stage,
            "status": status,
            "config": to_dict(config),
            "config_hash": config_hash(config),
            "versions": library_versions(),
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "summary": summary or {},
        },
    )
