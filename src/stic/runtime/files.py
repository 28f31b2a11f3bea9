"""Reading and writing stage files so that a crash never leaves a reader a half-written file.

Whole files are written to a temporary name and renamed; JSONL is appended one batch at a time,
flushed and fsynced, and a torn last line left by a kill is dropped on the next read.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def current_umask() -> int:
    """This process's umask (read from /proc where it can be, so it is never changed here)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no /proc: read it by setting it, and put it back at once
    os.umask(mask)
    return mask


def created_file_mode() -> int:
    """The mode of a file the user creates: 0666 less the umask (0644 under umask 022)."""
    return 0o666 & ~current_umask()


def created_folder_mode() -> int:
    """The mode of a folder the user creates: 0777 less the umask (0755 under umask 022)."""
    return 0o777 & ~current_umask()


def give_user_modes(path: str | os.PathLike) -> None:
    """Give ``path`` (a file, or a folder and everything in it) the mode a file or folder the
    user creates gets, as if made under the user's umask.

    For what libraries write into an output with modes of their own: safetensors writes its
    files through a 0600 temporary file (so ``save_pretrained`` weights are 0600 whatever the
    umask), which a server run as another user could not read. Symlinks are left alone.
    """
    path = Path(path)
    if path.is_symlink() or not path.exists():
        return
    if path.is_dir():
        os.chmod(path, created_folder_mode())
        for child in path.iterdir():
            give_user_modes(child)
    else:
        os.chmod(path, created_file_mode())


def make_folder(path: str | os.PathLike) -> Path:
    """``mkdir -p``: folders created with the user's umask, as ``mkdir`` makes them."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename.

    The file gets the mode any file the user writes gets (0666 less the umask): ``mkstemp``
    makes its files 0600, which a server run as another user could not read.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, created_file_mode())
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:  # name the file; stay a JSONDecodeError for callers
            raise json.JSONDecodeError(f"{path}: not valid JSON ({e.msg})", e.doc, e.pos) from e


def append_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    """Append rows, one JSON object a line, then flush and fsync so they survive a kill."""
    lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    if not lines:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(lines)
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(
    path: str | os.PathLike, repair: bool = False, strict: bool = False, key: str | None = None
) -> list[dict]:
    """Rows of a JSONL file; see :func:`read_jsonl_numbered`."""
    return [row for _, row in read_jsonl_numbered(path, repair=repair, strict=strict, key=key)]


def _kind(value: Any) -> str:
    """How a JSON value is called in an error message."""
    names = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number" if isinstance(value, (int, float)) else "a value")


def read_jsonl_numbered(
    path: str | os.PathLike, repair: bool = False, strict: bool = False, key: str | None = None
) -> list[tuple[int, dict]]:
    """``(line number, row)`` for each row of a JSONL file (blank lines skipped).

    For files stic appends to (``strict=False``; a missing file is ``[]``): a last line without
    its newline, or that does not parse, is what a kill mid-write leaves; it is dropped (and with
    ``repair=True`` cut from the file so appends start clean). For input files
    (``strict=True``): a missing file raises ``FileNotFoundError`` and the last line is read like
    any other. Every row must be a JSON object, and with ``key`` (e.g. ``"id"`` for stage
    records) hold that field: a bad line raises ``ValueError`` naming the file, the line and what
    was expected.
    """
    path = Path(path)
    if not path.exists():
        if strict:
            raise FileNotFoundError(f"{path}: no such file")
        return []
    raw = path.read_bytes()
    if strict and raw and not raw.endswith(b"\n"):
        raw += b"\n"
    lines = raw.split(b"\n")
    complete, tail = lines[:-1], lines[-1]
    rows = []
    good_bytes = 0
    for number, line in enumerate(complete, start=1):
        if not line.strip():
            good_bytes += len(line) + 1
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if number == len(complete) and not tail and not strict:
                logger.warning("%s: dropping a torn last line", path)
                break
            raise ValueError(f"{path}:{number}: not valid JSON ({e.msg})") from e
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}:{number}: not UTF-8 text ({e.reason})") from e
        if not isinstance(row, dict):
            raise ValueError(
                f"{path}:{number}: expected a JSON object (one record a line), got {_kind(row)}"
            )
        if key is not None and key not in row:
            raise ValueError(
                f"{path}:{number}: a record without {key!r} (every line of this file must be a "
                f"record with {key!r}; is it the right file?)"
            )
        rows.append((number, row))
        good_bytes += len(line) + 1
    if tail.strip():
        logger.warning("%s: dropping a torn last line", path)
    if repair and good_bytes < len(raw):
        with open(path, "r+b") as f:
            f.truncate(good_bytes)
    return rows
