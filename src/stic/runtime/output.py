"""The one door for outputs: every command that writes (stages and tools alike) opens an
:class:`Output` and writes through it, nowhere else.

``with Output(out, stage, config, inputs=...) as output:``

1. resolves ``out`` and refuses (:class:`UnsafeOutput`) one that is, contains or lies inside an
   input, before anything is created;
2. takes the output's lock (:mod:`stic.runtime.locks`): a second run refuses at once;
3. reads the manifest and says where the stage stands (``output.status``: ``new``, ``resume``,
   ``complete``), refusing (:class:`StageConflict`) an output another config made unless
   ``--overwrite`` (which deletes exactly the files the old manifest lists), and one stic did
   not write;
4. hands out where to write: ``output.partial`` (a file output's records, appended with
   ``output.append``), ``output.file(name)`` (a file in a folder output, e.g. for
   ``save_pretrained``), ``output.staging()`` (a folder built aside and moved in whole), and
   writes whole files atomically (``write_text``, ``write_json``);
5. ``output.finish(summary)`` writes the complete manifest, listing every file handed out.

The config is read once, when the object is made (:class:`ConfigIdentity`): what the manifest
records, its hash and the identities of the inputs. Tools pass their settings as a mapping and
``replace=True``: they always make their output anew, replacing one they made before.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from stic.runtime.files import (
    append_jsonl,
    atomic_write_json,
    atomic_write_text,
    created_folder_mode,
    give_user_modes,
    make_folder,
)
from stic.runtime.identity import PATH_FIELDS, ConfigIdentity
from stic.runtime.locks import OutputLocked, acquire_lock, release_lock
from stic.runtime.manifests import (
    StageConflict,
    UnsafeOutput,
    check_output_location,
    default_files,
    input_identities,
    is_file_output,
    manifest_path,
    partial_path,
    read_manifest,
    redact,
    remove_output,
    stage_status,
    write_manifest,
)

__all__ = [
    "OUTPUT_ERRORS",
    "Output",
    "OutputLocked",
    "StageConflict",
    "UnsafeOutput",
    "input_paths",
]

# Why an output cannot be claimed: a tool reports these as one line.
OUTPUT_ERRORS = (UnsafeOutput, StageConflict, OutputLocked)

logger = logging.getLogger(__name__)


def input_paths(record: Mapping[str, Any]) -> dict[str, str]:
    """A config's input paths by key (every path field but the output)."""
    return {
        name: value
        for name in PATH_FIELDS
        if name != "out" and isinstance(value := record.get(name), str)
    }


class Output:
    """One run's claim on one output; see the module docstring.

    ``out``: the output path (default: ``config.out``). ``stage``: what writes it (the manifest's
    ``stage``). ``config``: the stage's config dataclass, or a tool's settings as a mapping.
    ``inputs``: every path the run reads, by name (default: the config's path fields but
    ``out``); inputs that do not exist here (a Hub id) are passed over. ``file``: whether the
    output is one file (default: by its suffix, ``.json``/``.jsonl``). ``also``: other files a
    file output writes beside it (``compare`` writes ``x.json`` beside ``x.md``), each guarded
    like the output. ``adopt``: why an output without a manifest cannot be resumed (``[]``: it
    can). ``replace``: a tool's output, made anew each time (one this stage made is replaced
    whatever its settings). ``command``: recorded in the lock.
    """

    def __init__(
        self,
        stage: str,
        config: Any,
        *,
        out: str | os.PathLike | None = None,
        inputs: Mapping[str, str | os.PathLike | None] | None = None,
        file: bool | None = None,
        also: Iterable[str] = (),
        adopt: Callable[[], list[str]] | None = None,
        replace: bool = False,
        command: str | None = None,
    ):
        self.identity = ConfigIdentity.of(config)  # the one read of the config
        given = out if out is not None else self.identity.record["out"]
        self.path = Path(given)
        self.stage = stage
        self.is_file = is_file_output(self.path, file)
        self.also = [Path(name).name for name in also]
        record_inputs = input_paths(self.identity.record)
        self.inputs = {
            key: str(value)
            for key, value in (record_inputs if inputs is None else inputs).items()
            if value is not None
        }
        self._adopt = adopt
        self._replace = replace
        self._command = command
        self._lock: dict | None = None
        self._files: set[str] = set()
        self._staging: Path | None = None
        self.status: Literal["new", "resume", "complete"] = "new"
        self.recorded: dict | None = None
        self._input_ids: dict | None = None
        self._began = False
        self._adopted = False

    # --- claiming ---------------------------------------------------------------------------
    def __enter__(self) -> Output:
        targets = [self.path] + [self.path.with_name(name) for name in self.also]
        for target in targets:  # first: no lock file is ever made inside an input
            check_output_location(target, self.inputs)
        self._lock = acquire_lock(self.path, self._command)
        try:
            self._input_ids = input_identities(self.identity)
            self.status = stage_status(
                self.path,
                self.stage,
                self.identity,
                adopt=self._adopt,
                file=self.is_file,
                files=self.also,
                replace=self._replace,
                inputs=self._input_ids,
            )
            self.recorded = read_manifest(self.path, self.is_file)
            # Resumed without a manifest: ``adopt`` found the files to be this stage's own.
            self._adopted = self.status == "resume" and self.recorded is None
        except BaseException:
            release_lock(self._lock)
            raise
        return self

    def __exit__(self, kind, error, trace) -> None:
        try:
            if self._staging is not None and self._staging.exists():
                shutil.rmtree(self._staging, ignore_errors=True)
        finally:
            if self._lock is not None:
                release_lock(self._lock)

    # --- where to write ---------------------------------------------------------------------
    @property
    def manifest_file(self) -> Path:
        return manifest_path(self.path, self.is_file)

    @property
    def partial(self) -> Path:
        """Where a file output's records are appended while it runs (``<out>.partial.jsonl``)."""
        return partial_path(self.path)

    @property
    def folder(self) -> Path:
        """The folder the output's files are in: ``out`` itself, or a file output's folder."""
        return self.path.parent if self.is_file else self.path

    def file(self, name: str) -> Path:
        """The path of ``name`` in this output (a folder output's file, or a file beside a file
        output that it declared in ``also``), recorded in the manifest's files.

        In a folder output ``name`` may be a relative path (``data/test/vqa.jsonl``, never
        absolute or with ``..``); its folders are created.
        """
        relative = Path(name)
        if relative.is_absolute() or ".." in relative.parts or not relative.parts:
            raise ValueError(f"{name}: an output's file is named by a path inside it")
        if self.is_file and name not in {self.path.name, self.partial.name, *self.also}:
            raise ValueError(f"{name}: not one of the files {self.path} declared")
        self._files.add(relative.as_posix())
        if not self.is_file:
            make_folder((self.path / relative).parent)
        return self.folder / relative

    def subfolder(self, name: str) -> Path:
        """A folder inside a folder output that this command fills whole (rendered images), made
        and recorded in the manifest: ``--overwrite`` deletes it with everything in it."""
        if self.is_file:
            raise ValueError(f"{self.path} is a file output: it has no folders")
        path = self.file(name)
        make_folder(path)
        return path

    def _target(self, name: str | None) -> Path:
        if name is None:
            if not self.is_file:
                raise ValueError(f"{self.path} is a folder output: name the file to write")
            self._files.add(self.path.name)
            self.folder.mkdir(parents=True, exist_ok=True)
            return self.path
        return self.file(name)

    def write_text(self, text: str, name: str | None = None) -> Path:
        """Write the output (or its file ``name``) whole, atomically; returns the path."""
        path = self._target(name)
        atomic_write_text(path, text)
        return path

    def write_json(self, data: Any, name: str | None = None) -> Path:
        path = self._target(name)
        atomic_write_json(path, data)
        return path

    def append(self, rows: Iterable[dict], name: str | None = None) -> None:
        """Append ``rows`` (fsynced) to the partial file, or to the folder output's file ``name``."""
        if name is None:
            self._files.add(self.partial.name)
            append_jsonl(self.partial, rows)
        else:
            append_jsonl(self.file(name), rows)

    def staging(self) -> Path:
        """A new folder beside the output where it is built whole; :meth:`finish` moves it in.

        Created with the user's umask (not ``mkdtemp``'s 0700), so what is moved in is readable
        as any folder the user makes.
        """
        if self._staging is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._staging = Path(
                tempfile.mkdtemp(dir=self.path.parent, prefix=f".{self.path.name}.stic-")
            )
            os.chmod(self._staging, created_folder_mode())
        return self._staging

    # --- the manifest -----------------------------------------------------------------------
    def begin(self, files: Iterable[str] = ()) -> None:
        """Write the ``running`` manifest, naming ``files`` (what ``--overwrite`` may delete
        after a crash) besides the output's own."""
        self._files.update(files)
        self._write("running", None)
        self._began = True

    def write_own_manifest(self, document: dict) -> None:
        """Write a manifest the tool composed itself (``stic merge`` records its shards), in
        place of :meth:`begin`/:meth:`finish`'s; redacted like theirs."""
        atomic_write_json(self.manifest_file, redact(document))

    def discard(self) -> None:
        """A run that failed before writing anything: no manifest may claim one is under way;
        with files handed out, what the manifest lists is deleted."""
        if self._began and self.manifest_file.exists():
            remove_output(self.path, None, self.is_file)

    def drop_manifest(self) -> None:
        """Remove the running manifest only (the records written so far stay for a resume)."""
        self.manifest_file.unlink(missing_ok=True)

    def finish(self, summary: dict | None = None, files: Iterable[str] = ()) -> None:
        """Complete the output: move a staged folder in, then write the complete manifest.

        Every file it lists gets the user's umask, whoever wrote it (see :func:`give_user_modes`).
        """
        self._files.update(files)
        if self._staging is None:
            for name in self._files_listed():
                give_user_modes(self.folder / name)
            self._write("complete", summary)
            return
        staging, self._staging = self._staging, None
        self._files.update(p.name for p in staging.iterdir())
        give_user_modes(staging)
        # The manifest travels inside the staged folder and is moved in last: a folder that
        # appears is complete, and a kill midway leaves files that the manifest will list.
        write_manifest(
            staging,
            self.stage,
            self.identity,
            "complete",
            summary,
            files=self._files_listed(),
            file=False,
            inputs=self._input_ids,
        )
        self._move_in(staging)

    def _files_listed(self) -> list[str]:
        names = set(self._files)
        if self.is_file:
            names.update(default_files(self.path, True))
        return sorted(names)

    def _write(self, status: Literal["running", "complete"], summary: dict | None) -> None:
        write_manifest(
            self.path,
            self.stage,
            self.identity,
            status,
            summary,
            files=self._files_listed(),
            file=self.is_file,
            inputs=self._input_ids,
        )

    def _move_in(self, staging: Path) -> None:
        """The staged folder becomes the output: renamed whole when there is none, else file by
        file into the folder, beside what is left there that this output does not list (an
        adopted output's files of the same names are replaced: they are this stage's)."""
        manifest = manifest_path(staging, False).name
        names = sorted(p.name for p in staging.iterdir() if p.name != manifest)
        out = self.path
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        if not out.exists():
            staging.rename(out)
            return
        foreign = [name for name in names if (out / name).exists()]
        if foreign and not self._adopted:
            shutil.rmtree(staging, ignore_errors=True)  # nothing was moved in: no stray copy left
            raise StageConflict(
                f"{out} holds {', '.join(foreign[:3])}, which stic did not write there: move "
                "them away, or choose another output path"
            )
        for name in [*names, manifest]:
            os.replace(staging / name, out / name)
        staging.rmdir()
