"""Stage manifests: what made an output, so reruns skip, resume or refuse.

Every stage writes a manifest beside its output: the stage name, the resolved config, its hash
(fields that decide the result only), library versions, status (``running`` or ``complete``)
and the stage's summary. A rerun whose config hash matches resumes (or skips when complete);
one whose hash differs is refused unless ``overwrite`` is set, so outputs of two configs are
never mixed in one file.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import platform
import re
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from stic.config import config_hash, to_dict
from stic.runtime.files import atomic_write_json, read_json

logger = logging.getLogger(__name__)

FILE_SUFFIXES = (".json", ".jsonl")
# Config fields that name an input another stage may redo.
INPUT_FIELDS = ("pairs", "data", "adapter")
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


def input_identity(path: str | Path) -> str | None:
    """What an input file or folder holds now: its stic manifest's hash, else a content hash.

    A stage records the identities of its inputs, so that when an upstream stage is redone the
    stages that read its output are redone too instead of being skipped as complete. Content,
    not modification times: a file rewritten with the same bytes is the same input.
    """
    path = Path(path)
    manifest = manifest_path(path)
    if manifest.exists():
        return "stic:" + _sha256(manifest)
    if path.is_file():
        return "file:" + _sha256(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file())
        return (
            "dir:"
            + hashlib.sha256("".join(f"{p.name}:{_sha256(p)}" for p in files).encode()).hexdigest()[
                :16
            ]
        )
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def input_identities(config: Any) -> dict[str, str | None]:
    """Identities of the config's inputs that other stages (or people) may redo."""
    return {
        name: input_identity(getattr(config, name))
        for name in INPUT_FIELDS
        if getattr(config, name, None) is not None
    }


def _has_output(out: Path) -> bool:
    if out.suffix in FILE_SUFFIXES:
        return out.exists() or out.with_name(out.name + ".partial.jsonl").exists()
    return out.is_dir() and any(p.name != manifest_path(out).name for p in out.iterdir())


def stage_status(out: str | Path, stage: str, config: Any) -> Literal["new", "resume", "complete"]:
    """Where ``stage`` stands at ``out`` for ``config``; raises :class:`StageConflict` on a mismatch.

    A mismatch is another stage, another config hash, or inputs that changed since (an upstream
    stage was redone). With ``config.overwrite`` the old output is deleted and the stage starts
    anew; a manifest with no output beside it (a run that failed before writing) is ignored.
    """
    out = Path(out)
    manifest = read_manifest(out)
    if manifest is None:
        return "new"
    same_config = manifest.get("stage") == stage and manifest.get("config_hash") == config_hash(
        config
    )
    same_inputs = manifest.get("inputs", {}) == input_identities(config)
    if same_config and same_inputs:
        return "complete" if manifest.get("status") == "complete" else "resume"
    if not _has_output(out):
        manifest_path(out).unlink()
        return "new"
    if not getattr(config, "overwrite", False):
        if same_config:
            changed = sorted(
                k
                for k, v in input_identities(config).items()
                if manifest.get("inputs", {}).get(k) != v
            )
            why = f"inputs that have changed since ({', '.join(changed)})"
        else:
            why = "a different config"
        raise StageConflict(
            f"{out} holds a {manifest.get('stage')} output made with {why} "
            f"(hash {manifest.get('config_hash')}, now {config_hash(config)}); "
            "choose another output path or pass --overwrite to replace it"
        )
    logger.warning(
        "overwriting %s (made with %s)",
        out,
        "a different config" if not same_config else "other inputs",
    )
    remove_output(out)
    return "new"


def remove_output(out: str | Path) -> None:
    out = Path(out)
    if out.suffix in FILE_SUFFIXES:
        for path in out.parent.glob(out.name + "*"):
            path.unlink()
    elif out.exists():
        shutil.rmtree(out)


# Environment variables whose values are credentials (HF_TOKEN, WANDB_API_KEY, ...).
SECRET_NAME = re.compile(r"TOKEN|KEY|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)


def redact(data: Any, environ: Mapping[str, str] | None = None) -> Any:
    """``data`` with every credential from the environment replaced by ``<redacted:NAME>``.

    Whatever a user put in a config (a path with a token in it, a URL), no secret that the
    environment holds is written to a manifest or a resolved config.
    """
    environ = os.environ if environ is None else environ
    secrets = sorted(
        (
            (name, value)
            for name, value in environ.items()
            if SECRET_NAME.search(name) and len(value) >= 8
        ),
        key=lambda item: -len(item[1]),
    )

    def walk(value: Any) -> Any:
        if isinstance(value, str):
            for name, secret in secrets:
                value = value.replace(secret, f"<redacted:{name}>")
            return value
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [walk(v) for v in value]
        return value

    return walk(data) if secrets else data


def write_manifest(
    out: str | Path,
    stage: str,
    config: Any,
    status: Literal["running", "complete"],
    summary: dict | None = None,
) -> None:
    atomic_write_json(
        manifest_path(out),
        redact(
            {
                "stage": stage,
                "status": status,
                "config": to_dict(config),
                "config_hash": config_hash(config),
                "versions": library_versions(),
                "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "inputs": input_identities(config),
                "summary": summary or {},
            }
        ),
    )
