"""stic.runtime.locks: one run per output; stale locks taken over, foreign ones never."""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from stic.runtime import locks
from stic.runtime.locks import OutputLocked, _process_start, lock_path, output_lock, read_lock


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write_lock(path: Path, **fields) -> dict:
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": "2020-01-01T00:00:00",
        "command": "stic pairs --out x",
        **fields,
    }
    path.write_text(json.dumps(record))
    return record


def test_lock_path_is_a_sibling_for_files_and_folders_whatever_the_spelling(tmp_path, monkeypatch):
    assert lock_path(tmp_path / "pairs.jsonl") == tmp_path / "pairs.jsonl.lock"
    assert lock_path(tmp_path / "dpo") == tmp_path / "dpo.lock"
    monkeypatch.chdir(tmp_path)
    assert lock_path("dpo/") == lock_path("./dpo") == lock_path(tmp_path / "x" / ".." / "dpo")
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert lock_path("link") == lock_path("real")


def test_lock_is_held_in_the_block_and_released_after(tmp_path):
    out = tmp_path / "pairs.jsonl"
    with output_lock(out, command="stic pairs --out pairs.jsonl") as path:
        assert path == tmp_path / "pairs.jsonl.lock"
        holder = read_lock(path)
        assert holder["pid"] == os.getpid()
        assert holder["host"] == socket.gethostname()
        assert holder["command"] == "stic pairs --out pairs.jsonl"
        assert holder["started"]
        assert not out.exists()  # the output itself is not touched
    assert not path.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no temporary file left


def test_folder_output_is_not_created_by_the_lock(tmp_path):
    out = tmp_path / "runs" / "dpo"
    with output_lock(out):
        assert (tmp_path / "runs" / "dpo.lock").exists()
        assert not out.exists()


def test_a_second_holder_refuses_at_once_naming_the_holder_and_the_lock(tmp_path):
    out = tmp_path / "dpo"
    with output_lock(out, command="stic dpo --out dpo"):
        started = time.monotonic()
        with pytest.raises(OutputLocked) as info:
            with output_lock(str(out) + "/"):
                pass
        assert time.monotonic() - started < 1.0
        message = str(info.value)
        assert "\n" not in message
        assert f"pid {os.getpid()}" in message and socket.gethostname() in message
        assert str(tmp_path / "dpo.lock") in message
        assert "stic dpo --out dpo" in message
    # The refused attempt did not remove the holder's lock; the holder's exit did.
    assert not (tmp_path / "dpo.lock").exists()


@pytest.mark.parametrize("error", [ValueError, KeyboardInterrupt])
def test_released_on_exceptions_and_keyboard_interrupt(tmp_path, error):
    out = tmp_path / "r.json"
    with pytest.raises(error):
        with output_lock(out):
            raise error("stop")
    assert not lock_path(out).exists()
    with output_lock(out):  # free again
        pass


def test_a_stale_lock_of_a_dead_process_is_reported_and_taken_over(tmp_path, caplog):
    out = tmp_path / "pairs.jsonl"
    dead = _dead_pid()
    _write_lock(lock_path(out), pid=dead)
    with caplog.at_level(logging.WARNING, logger="stic.runtime.locks"):
        with output_lock(out) as path:
            assert read_lock(path)["pid"] == os.getpid()
    assert f"pid {dead}" in caplog.text and "stale" in caplog.text
    assert not lock_path(out).exists()


def test_a_lock_whose_pid_was_reused_by_a_newer_process_is_stale(tmp_path):
    out = tmp_path / "pairs.jsonl"
    # Our own pid, but recorded with another process start time: the pid was reused.
    if _process_start(os.getpid()) is None:
        pytest.skip("no /proc: process start times are not known here")
    _write_lock(lock_path(out), process_start=1)
    with output_lock(out) as path:
        assert read_lock(path)["process_start"] != 1


def test_a_live_holder_on_this_host_is_not_taken_over(tmp_path):
    out = tmp_path / "pairs.jsonl"
    record = _write_lock(lock_path(out))  # this very process: alive
    with pytest.raises(OutputLocked, match="wait for it to finish or choose another output"):
        with output_lock(out):
            pass
    assert json.loads(lock_path(out).read_text()) == record


def test_a_lock_from_another_host_is_never_taken_over(tmp_path):
    out = tmp_path / "dpo"
    record = _write_lock(lock_path(out), pid=_dead_pid(), host="gpu-node-7")
    with pytest.raises(OutputLocked) as info:
        with output_lock(out):
            pass
    message = str(info.value)
    assert "gpu-node-7" in message and f"delete {lock_path(out)}" in message
    assert "\n" not in message
    assert json.loads(lock_path(out).read_text()) == record


def test_a_file_that_is_not_a_stic_lock_is_refused_and_kept(tmp_path):
    out = tmp_path / "notes"
    lock_path(out).write_text("my own notes\n")
    with pytest.raises(OutputLocked, match="is not a stic lock file"):
        with output_lock(out):
            pass
    assert lock_path(out).read_text() == "my own notes\n"


def test_a_lock_that_cannot_be_created_is_one_clear_error(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(locks.tempfile, "mkstemp", refuse)
    with pytest.raises(OutputLocked, match="cannot create the lock file .*: Permission denied"):
        with output_lock(tmp_path / "out.jsonl"):
            pass


def test_file_systems_without_hard_links_fall_back_to_exclusive_create(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(locks.os, "link", no_links)
    out = tmp_path / "pairs.jsonl"
    with output_lock(out) as path:
        assert read_lock(path)["pid"] == os.getpid()
        with pytest.raises(OutputLocked, match="is being written by another stic run"):
            with output_lock(out):
                pass
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_a_forked_child_does_not_release_the_parents_lock(tmp_path):
    out = tmp_path / "dpo"
    with output_lock(out) as path:
        pid = os.fork()
        if pid == 0:  # the child leaves the with-block it inherited, then exits
            try:
                locks.release_lock({**read_lock(path), "path": str(path)})
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        assert path.exists()
    assert not path.exists()


# --- real concurrency: separate processes contend for one output -------------------------

_CONTENDER = textwrap.dedent(
    """
    import pathlib, sys, time
    from stic.runtime.locks import OutputLocked, output_lock

    out, go, log, ready = (pathlib.Path(a) for a in sys.argv[1:5])
    ready.touch()
    while not go.exists():
        time.sleep(0.005)
    try:
        with output_lock(out, command="contender"):
            with open(log, "a") as f:
                f.write("in\\n")
            time.sleep(1.5)  # hold it while the others try
            with open(log, "a") as f:
                f.write("out\\n")
    except OutputLocked as e:
        print(e, file=sys.stderr)
        sys.exit(3)
    """
)


def _contend(tmp_path: Path, out: Path, n: int) -> list[subprocess.CompletedProcess]:
    go, log = tmp_path / "go", tmp_path / "log"
    ready = [tmp_path / f"ready{i}" for i in range(n)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CONTENDER, str(out), str(go), str(log), str(ready[i])],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(n)
    ]
    deadline = time.monotonic() + 60
    while not all(r.exists() for r in ready) and time.monotonic() < deadline:
        time.sleep(0.01)  # every contender imported and waiting at the line
    go.touch()
    results = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=60)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    return results


@pytest.mark.slow
def test_concurrent_runs_on_one_output_exactly_one_proceeds(tmp_path):
    out = tmp_path / "pairs.jsonl"
    results = _contend(tmp_path, out, 4)
    codes = sorted(r.returncode for r in results)
    assert codes == [0, 3, 3, 3], [r.stderr for r in results]
    assert (tmp_path / "log").read_text() == "in\nout\n"
    for r in results:
        if r.returncode == 3:
            assert "is being written by another stic run" in r.stderr
            assert r.stderr.count("\n") == 1  # one line
    assert not lock_path(out).exists()


@pytest.mark.slow
def test_concurrent_takeover_of_one_stale_lock_lets_exactly_one_proceed(tmp_path):
    out = tmp_path / "dpo"
    _write_lock(lock_path(out), pid=_dead_pid())
    results = _contend(tmp_path, out, 4)
    codes = sorted(r.returncode for r in results)
    assert codes == [0, 3, 3, 3], [r.stderr for r in results]
    assert (tmp_path / "log").read_text() == "in\nout\n"
    assert not lock_path(out).exists()
    assert not list(tmp_path.glob("*.takeover"))
