"""Stage manifests: what made an output, so reruns skip, resume or refuse.

Every stage writes a manifest beside its output: the stage name, the resolved config, its hash
(fields that decide the result only), library versions, status (``running`` or ``complete``)
and the stage's summary. A rerun whose config hash matches resumes (or skips when complete);
one whose hash differs is refused unless ``overwrite`` is set, so outputs of two configs are
never mixed in one file.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import logging
import os
import platform
import re
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from stic.runtime.files import atomic_write_json, read_json
from stic.runtime.identity import FILE_SUFFIXES, ConfigIdentity

logger = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial.jsonl"
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
    """An output exists that a different config made (or that stic did not make)."""


class UnsafeOutput(RuntimeError):
    """An output path that would overwrite or sit inside one of the stage's inputs."""


def manifest_path(out: str | Path, file: bool | None = None) -> Path:
    """``<out>.manifest.json`` beside a file output, ``<out>/stic_manifest.json`` in a folder output.

    ``file``: whether ``out`` is a file output (default: by its suffix, :data:`FILE_SUFFIXES`; a
    tool's ``.md`` or ``.html`` output says so).
    """
    out = Path(out)
    if (out.suffix in FILE_SUFFIXES) if file is None else file:
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


def read_manifest(out: str | Path, file: bool | None = None) -> dict | None:
    path = manifest_path(out, file)
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
    record = _identity(config).record
    return {
        name: input_identity(record[name]) for name in INPUT_FIELDS if record.get(name) is not None
    }


def _identity(config: Any) -> ConfigIdentity:
    """``config`` read once; an already read one (what an output object holds) as it is."""
    return config if isinstance(config, ConfigIdentity) else ConfigIdentity.of(config)


def partial_path(out: str | Path) -> Path:
    """Where a stage whose output is written whole at the end appends its records meanwhile."""
    out = Path(out)
    return out.with_name(out.name + PARTIAL_SUFFIX)


def is_file_output(out: str | Path, file: bool | None = None) -> bool:
    return Path(out).suffix in FILE_SUFFIXES if file is None else file


def default_files(out: str | Path, file: bool | None = None) -> list[str]:
    """What a file output's stage writes besides its manifest: the output and its partial file."""
    out = Path(out)
    return [out.name, partial_path(out).name] if is_file_output(out, file) else []


def has_output(out: Path, file: bool | None = None, files: list[str] | None = None) -> bool:
    """Whether anything but a manifest is at ``out`` (and, for a file output, at ``files``)."""
    if is_file_output(out, file):
        names = default_files(out, True) + list(files or [])
        return any((out.parent / name).exists() for name in names)
    return out.is_dir() and any(p.name != manifest_path(out).name for p in out.iterdir())


def check_output_location(out: str | Path, inputs: Mapping[str, str | None]) -> None:
    """Refuse an output that is, lies inside, or contains one of the stage's ``inputs``.

    ``inputs`` maps a config key (``images``, ``data``, ``model``...) to its path; inputs that do
    not exist here (a Hub model id) are passed over. Raises :class:`UnsafeOutput` naming both.
    """
    target = Path(out).expanduser().resolve()
    found = []
    for key, value in inputs.items():
        if not value or not Path(value).expanduser().exists():
            continue
        source = Path(value).expanduser().resolve()
        if target == source:
            found.append((0, "is", key, value))
        elif source in target.parents:
            found.append((1, "lies inside", key, value))
        elif target in source.parents:
            found.append((1, "contains", key, value))
    if found:
        _, how, key, value = min(found, key=lambda f: f[0])  # "is" is the one to name first
        raise UnsafeOutput(
            f"the output {out} {how} the {key} input {value}; choose an output path outside "
            "your inputs"
        )


def stage_status(
    out: str | Path,
    stage: str,
    config: Any,
    adopt: Callable[[], list[str]] | None = None,
    *,
    file: bool | None = None,
    files: list[str] | None = None,
    replace: bool = False,
    inputs: dict[str, str | None] | None = None,
) -> Literal["new", "resume", "complete"]:
    """Where ``stage`` stands at ``out`` for ``config``; raises :class:`StageConflict` on a mismatch.

    A mismatch is another stage, another config (named key by key), or inputs that changed since
    (an upstream stage was redone). With ``config.overwrite`` the old output's files, as its
    manifest lists them, are deleted and the stage starts anew; a manifest with no output beside
    it (a run that failed before writing) is ignored. An output that exists without a manifest
    was not written by stic (or its manifest was not copied along): it is refused, unless
    ``adopt`` is given and returns no problem (the stage checked that the records' own
    provenance matches this config), in which case it is resumed.

    ``config``: a stage config, or the :class:`ConfigIdentity` an output object read from it.
    ``replace`` (tools, which always make their output anew): an output the same stage made
    with any config is deleted as with ``overwrite``. ``files``: what this run will write
    beside a file output (checked to be stic's too); ``inputs``: their identities, if known.
    """
    out = Path(out)
    ident = _identity(config)
    manifest = read_manifest(out, file)
    if manifest is None:
        if not has_output(out, file, files):
            return "new"
        problems = adopt() if adopt is not None else ["stic has no record of writing it"]
        if not problems:
            logger.warning("%s has no manifest; its records match this run, so it is resumed", out)
            return "resume"
        raise StageConflict(
            f"{out} exists without a stic manifest ({manifest_path(out, file).name}) and cannot "
            f"be resumed: {'; '.join(problems[:3])}. Choose another output path, or move it "
            "away if it is yours"
        )
    inputs = input_identities(ident) if inputs is None else inputs
    same_stage = manifest.get("stage") == stage
    same_config = same_stage and manifest.get("config_hash") == ident.hash
    same_inputs = manifest.get("inputs", {}) == inputs
    if same_config and same_inputs and not replace:
        return "complete" if manifest.get("status") == "complete" else "resume"
    if not has_output(out, file, manifest.get("files")):
        manifest_path(out, file).unlink()
        return "new"
    if not (ident.overwrite or (replace and same_stage)):
        raise StageConflict(_conflict_message(out, stage, ident, manifest, same_config, inputs))
    if not replace:
        logger.warning(
            "overwriting %s (made with %s)",
            out,
            "a different config" if not same_config else "other inputs",
        )
    remove_output(out, manifest, file)
    return "new"


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _conflict_message(
    out: Path, stage: str, ident: ConfigIdentity, manifest: dict, same_config: bool, inputs: dict
) -> str:
    if manifest.get("stage") != stage:
        why = f"holds a {manifest.get('stage')} output, not a {stage} one"
        keep = "choose another output path"
    elif same_config:
        changed = sorted(k for k, v in inputs.items() if manifest.get("inputs", {}).get(k) != v)
        why = f"was made from inputs that have changed since ({', '.join(changed)})"
        keep = "choose another output path to keep it"
    else:
        recorded = manifest.get("config", {})
        changed = ident.differing_keys(recorded)
        now = ident.record
        shown = ", ".join(f"{k} {_short(recorded.get(k))} -> {_short(now.get(k))}" for k in changed)
        why = (
            f"was made with other settings ({shown or 'hash ' + str(manifest.get('config_hash'))})"
        )
        keep = "rerun with the recorded values to resume it, or choose another output path"
    return f"{out} {why}: {keep}, or pass --overwrite to delete it and start over"


def remove_output(out: str | Path, manifest: dict | None = None, file: bool | None = None) -> None:
    """Delete exactly what the stage that wrote ``out`` lists in its manifest, and the manifest.

    Never by pattern: a file beside or inside the output that the manifest does not name stays.
    A folder output is removed only if nothing else is left in it.
    """
    out = Path(out)
    manifest = read_manifest(out, file) if manifest is None else manifest
    if manifest is None and not out.exists():
        return
    if manifest is None:
        raise StageConflict(f"{out}: no stic manifest, so stic will not delete it")
    files = manifest.get("files")
    if files is None:
        if not is_file_output(out, file):
            raise StageConflict(
                f"{out} was written by an older stic that did not record its files, so it is not "
                "deleted: choose another output path, or delete it yourself"
            )
        files = default_files(out, file)
    base = out.parent if is_file_output(out, file) else out
    for name in files:
        path = base / name
        if Path(name).is_absolute() or ".." in Path(name).parts or path == base:
            continue  # only names inside the output's own place; a bad manifest deletes nothing
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    manifest_path(out, file).unlink(missing_ok=True)
    if not is_file_output(out, file) and out.is_dir():
        with contextlib.suppress(OSError):  # not empty: what is left is not stic's
            out.rmdir()


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
    files: list[str] | None = None,
    *,
    file: bool | None = None,
    inputs: dict[str, str | None] | None = None,
) -> None:
    """Write the manifest beside ``out``.

    ``config``: a stage config, or the :class:`ConfigIdentity` an output object read from it.
    ``files``: what the stage writes, relative to the output's folder (file outputs) or to the
    output folder; ``--overwrite`` deletes these and nothing else. Default: the output file and
    its partial file. ``inputs``: the inputs' identities (default: computed now).
    """
    ident = _identity(config)
    atomic_write_json(
        manifest_path(out, file),
        redact(
            {
                "stage": stage,
                "status": status,
                "config": ident.record,
                "config_hash": ident.hash,
                "versions": library_versions(),
                "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "inputs": input_identities(ident) if inputs is None else inputs,
                "files": default_files(out, file) if files is None else sorted(set(files)),
                "summary": summary or {},
            }
        ),
    )
