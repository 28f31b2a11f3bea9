"""Lock takeover (stic.runtime.locks) only for a dead holder on this host: a live holder of
another user or another pid, and a holder on another host, are never taken over (issue 22)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from stic.runtime import locks
from stic.runtime.locks import OutputLocked, _process_start, lock_path, output_lock, read_lock


def _write_lock(out, **fields) -> dict:
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": "2020-01-01T00:00:00",
        "command": "stic pairs --out x",
        **fields,
    }
    lock_path(out).write_text(json.dumps(record))
    return record


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def other_process():
    """A live process of this user, other than this one."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def _refused_and_kept(out, record: dict, match: str) -> None:
    with pytest.raises(OutputLocked, match=match) as info:
        with output_lock(out):
            pass
    assert "\n" not in str(info.value)
    assert json.loads(lock_path(out).read_text()) == record  # left exactly as it was


def test_a_live_holder_with_another_pid_is_not_taken_over(tmp_path, other_process):
    out = tmp_path / "pairs.jsonl"
    record = _write_lock(out, pid=other_process, process_start=_process_start(other_process))
    _refused_and_kept(out, record, f"pid {other_process} on host .*wait for it to finish")


def test_a_live_holder_of_another_user_is_not_taken_over(tmp_path, monkeypatch):
    """Signalling another user's process is refused (EPERM): it exists, so it is alive."""
    out = tmp_path / "pairs.jsonl"
    holder_pid = 1  # init: always there, and its start time is readable
    record = _write_lock(out, pid=holder_pid, process_start=_process_start(holder_pid))
    real_kill = os.kill

    def kill(pid, signal):
        if pid == holder_pid and signal == 0:
            raise PermissionError(1, "Operation not permitted")
        return real_kill(pid, signal)

    monkeypatch.setattr(locks.os, "kill", kill)
    assert locks._alive(record) is True
    _refused_and_kept(out, record, "pid 1 on host .*wait for it to finish")


def test_a_holder_whose_liveness_cannot_be_checked_is_not_taken_over(tmp_path, monkeypatch):
    """Any other error from the liveness check counts as alive: never take over on doubt."""
    out = tmp_path / "pairs.jsonl"
    dead = _dead_pid()
    record = _write_lock(out, pid=dead)

    def kill(pid, signal):
        raise OSError(5, "I/O error")

    monkeypatch.setattr(locks.os, "kill", kill)
    _refused_and_kept(out, record, "wait for it to finish")


def test_a_holder_on_another_host_is_not_taken_over_even_with_a_dead_pid_here(tmp_path):
    out = tmp_path / "dpo"
    record = _write_lock(out, pid=_dead_pid(), host=socket.gethostname() + "-other")
    _refused_and_kept(out, record, "taken on another host")


def test_a_holder_on_another_host_with_a_pid_alive_here_is_not_taken_over(tmp_path, other_process):
    out = tmp_path / "dpo"
    record = _write_lock(out, pid=other_process, host="gpu-node-7")
    _refused_and_kept(out, record, "taken on another host")


def test_a_dead_holder_on_this_host_is_taken_over(tmp_path):
    out = tmp_path / "pairs.jsonl"
    dead = _dead_pid()
    _write_lock(out, pid=dead)
    with output_lock(out) as path:
        holder = read_lock(path)
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    assert not lock_path(out).exists()


@pytest.mark.parametrize("pid", [0, -1])
def test_a_holder_with_no_real_pid_is_dead(tmp_path, pid):
    """pid 0 or below would signal a process group: never alive as a holder."""
    assert locks._alive({"pid": pid, "host": socket.gethostname()}) is False
    out = tmp_path / "pairs.jsonl"
    _write_lock(out, pid=pid)
    with output_lock(out) as path:
        assert read_lock(path)["pid"] == os.getpid()


def test_a_holder_whose_pid_now_belongs_to_a_newer_process_is_dead(other_process):
    start = _process_start(other_process)
    if start is None:
        pytest.skip("no /proc: process start times are not known here")
    assert locks._alive({"pid": other_process, "process_start": start}) is True
    assert locks._alive({"pid": other_process, "process_start": start + 1}) is False
    assert locks._alive({"pid": other_process}) is True  # no start recorded: the pid decides
