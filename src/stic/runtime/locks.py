"""One run per output: an exclusive lock file beside each output while a stage writes it.

``with output_lock(out):`` creates ``<out>.lock`` next to the output (a sibling for file and
folder outputs alike, so a folder output is not touched before the lock is held). The lock is
created atomically (a hard link of a finished temporary file, or ``O_CREAT | O_EXCL`` where
links are not supported) and holds JSON ``{pid, host, started, command}``. A second run on the
same output refuses at once with :class:`OutputLocked`, naming the holder and the lock file.

A lock left by a process that died without releasing it (SIGKILL, power loss) is stale: on the
same host, a pid that is no longer alive (or alive but started after the lock was taken, i.e.
reused) is detected, reported in a warning and taken over. A lock from another host is never
taken over: its process cannot be seen from here; the message says how to remove it.

The lock is released when the block exits, whatever the reason (return, exception,
KeyboardInterrupt), and only by the process that took it (a forked worker never removes it).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shlex
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from stic.runtime.files import created_file_mode

logger = logging.getLogger(__name__)

LOCK_SUFFIX = ".lock"
# How long a takeover of a stale lock may take before another process may assume the one doing
# it died mid-takeover. A takeover is a read, an unlink and a link: milliseconds.
_TAKEOVER_TIMEOUT_S = 30.0


class OutputLocked(RuntimeError):
    """Another run holds the output's lock (or the lock file cannot be taken); one line, names both."""


def lock_path(out: str | os.PathLike) -> Path:
    """``<out>.lock`` beside the output, for the output's resolved path.

    Resolved (absolute, symlinks followed, no trailing slash), so every spelling of one output
    (relative, absolute, ``dir/``, through a link) names the same lock.
    """
    resolved = Path(out).expanduser().resolve()
    if not resolved.name:
        raise ValueError(f"{out}: an output cannot be the file system root")
    return resolved.with_name(resolved.name + LOCK_SUFFIX)


def read_lock(path: str | os.PathLike) -> dict | None:
    """The holder recorded in a lock file; ``None`` if there is no such file.

    A file that is not a stic lock (not JSON, or without ``pid``/``host``) raises
    :class:`OutputLocked`: stic never removes a file it did not write.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise OutputLocked(f"cannot read the lock file {path}: {e}") from e
    try:
        holder = json.loads(text)
    except json.JSONDecodeError:
        holder = None
    if not (
        isinstance(holder, dict)
        and isinstance(holder.get("pid"), int)
        and isinstance(holder.get("host"), str)
    ):
        raise OutputLocked(
            f"{path} exists and is not a stic lock file; if no stic run is writing this output, "
            "remove it (or choose another output path)"
        )
    return holder


def _process_start(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (Linux; ``None`` where unknown)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 2 (the command name) may hold spaces and parentheses: count from the last ')'.
    try:
        return int(stat[stat.rindex(")") + 2 :].split()[19])
    except (ValueError, IndexError):
        return None


def _alive(holder: dict) -> bool:
    """Whether the process that wrote ``holder`` (on this host) still runs."""
    pid = holder["pid"]
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        pass
    except OSError:
        return True
    recorded = holder.get("process_start")
    if isinstance(recorded, int):
        now = _process_start(pid)
        if now is not None and now != recorded:
            return False  # the pid was reused by a newer process
    return True


def _describe(holder: dict) -> str:
    started = holder.get("started", "?")
    command = holder.get("command")
    text = f"pid {holder['pid']} on host {holder['host']}, started {started}"
    if command:  # kept to one line whatever the arguments held
        text += ", command: " + " ".join(str(command).split())
    return text


def _holder_record(command: str | None) -> dict:
    from stic.runtime.manifests import redact  # lazily: manifests may come to use locks

    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": redact(command if command is not None else shlex.join(sys.argv)),
        "process_start": _process_start(os.getpid()),
        "token": uuid.uuid4().hex,
    }


def _create(path: Path, record: dict) -> bool:
    """Create ``path`` holding ``record`` if it does not exist; ``False`` if it does.

    A hard link of a finished temporary file, so a reader never sees a half-written lock; on a
    file system without hard links, ``O_CREAT | O_EXCL`` and then the write.
    """
    text = json.dumps(record) + "\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, created_file_mode())  # readable like any file the user makes
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        return True
    finally:
        Path(tmp).unlink(missing_ok=True)


def _read_settled(path: Path) -> dict | None:
    """:func:`read_lock`, allowing a moment for a lock being written by ``O_EXCL`` + write."""
    for _ in range(20):
        try:
            return read_lock(path)
        except OutputLocked:
            if path.exists() and path.stat().st_size == 0:
                time.sleep(0.05)
                continue
            raise
    return read_lock(path)


def _take_over(path: Path, stale: dict, record: dict) -> bool:
    """Replace the stale lock ``stale`` at ``path`` by ``record``; ``False`` if another run won.

    Two runs may find the same stale lock at once; only the one holding ``<lock>.takeover``
    removes it, and only if the lock is still the stale one it read.
    """
    guard = path.with_name(path.name + ".takeover")
    guard_record = {**record, "token": uuid.uuid4().hex}
    if not _create(guard, guard_record):
        try:
            age = time.time() - guard.stat().st_mtime
        except FileNotFoundError:
            return False
        if age > _TAKEOVER_TIMEOUT_S:  # its taker died mid-takeover
            guard.unlink(missing_ok=True)
        return False
    try:
        if read_lock(path) != stale:
            return False
        path.unlink(missing_ok=True)
        return _create(path, record)
    finally:
        guard.unlink(missing_ok=True)


def acquire_lock(out: str | os.PathLike, command: str | None = None) -> dict:
    """Take the lock of ``out``; returns the record written (pass it to :func:`release_lock`).

    Raises :class:`OutputLocked` (one line naming the holder and the lock file) if another
    live run holds it or it cannot be created.
    """
    path = lock_path(out)
    record = {**_holder_record(command), "path": str(path)}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputLocked(f"cannot create the lock file {path}: {e.strerror or e}") from e
    for _ in range(50):
        try:
            if _create(path, record):
                return record
        except OSError as e:
            raise OutputLocked(f"cannot create the lock file {path}: {e.strerror or e}") from e
        holder = _read_settled(path)
        if holder is None:  # released between our attempt and the read: try again
            continue
        where = f"{Path(out)} is being written by another stic run ({_describe(holder)})"
        if holder["host"] != record["host"]:
            raise OutputLocked(
                f"{where}; lock {path} was taken on another host, so stic cannot tell whether "
                f"that run is still alive: wait for it, or if it is gone, delete {path} and rerun"
            )
        if _alive(holder):
            raise OutputLocked(
                f"{where}; wait for it to finish or choose another output path (lock: {path})"
            )
        logger.warning(
            "taking over the stale lock %s: %s is no longer running", path, _describe(holder)
        )
        if _take_over(path, holder, record):
            return record
        time.sleep(0.02)  # another run is taking it over: see who won
    raise OutputLocked(f"could not take the lock {path}: other runs keep taking it")


def release_lock(record: dict) -> None:
    """Remove the lock taken by :func:`acquire_lock`, if it is still this process's own."""
    if os.getpid() != record["pid"]:
        return  # a forked child leaving a with-block it inherited
    path = Path(record["path"])
    try:
        current = read_lock(path)
    except OutputLocked:
        return
    if current is not None and current.get("token") == record["token"]:
        path.unlink(missing_ok=True)
    else:
        logger.warning("lock %s was no longer this run's on release; left as it is", path)


@contextlib.contextmanager
def output_lock(out: str | os.PathLike, command: str | None = None) -> Iterator[Path]:
    """Hold the exclusive lock of ``out`` for the block; yields the lock file's path.

    ``command`` is recorded for whoever finds the lock (default: this process's argv).
    Raises :class:`OutputLocked` at once if another run holds it.
    """
    record = acquire_lock(out, command)
    try:
        yield Path(record["path"])
    finally:
        release_lock(record)
