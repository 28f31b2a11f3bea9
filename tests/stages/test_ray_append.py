"""The Ray driver's appending (stic.stages.ray_pool), with fake worker rows and no Ray cluster:
whatever the workers return (a batch twice, out of order, partial, a record repeated or of
another batch, an error), the output holds each id once, in the order the batches arrived."""

from __future__ import annotations

import json
import pickle
import threading
from dataclasses import dataclass

import pytest

from stic.stages import ray_pool
from stic.stages.ray_pool import _append_rows, fresh_records
from stic.stages.runner import StageSummary


@pytest.fixture(autouse=True)
def _thread_lock_for_tqdm():
    """tqdm's default write lock is shared between processes: a forked test process (mutation
    testing forks one per mutant) that dies holding it would block every later one."""
    old = ray_pool.tqdm.get_lock()
    ray_pool.tqdm.set_lock(threading.RLock())
    yield
    ray_pool.tqdm.set_lock(old)


# Three batches of two items, as generate_on_ray cuts ["a" .. "f"] with batch_size 2.
BATCHES = [["a", "b"], ["c", "d"], ["e", "f"]]


@dataclass
class Stage:
    name: str = "pairs"
    unit: str = "pair"

    @staticmethod
    def item_id(item: str) -> str:
        return item


class Rows:
    """What the Ray Data pipeline yields: one row per returned batch."""

    def __init__(self, rows: list[dict]):
        self.rows = rows

    def iter_rows(self):
        yield from self.rows


def row(batch: int, ids: list[str], *, tag: str = "", bad=None, error: bytes = b"") -> dict:
    """A worker's answer for batch ``batch``: a record per id (its text says which call)."""
    records = [{"id": i, "text": f"{i}{tag}"} for i in ids]
    return {
        "batch": batch,
        "records": json.dumps(records),
        "bad": json.dumps(bad or {}),
        "seconds": 0.5,
        "error": error,
        "pid": 7,
    }


def drive(rows: list[dict], done: dict | None = None):
    appended: list[list[dict]] = []
    done = {} if done is None else done
    summary = StageSummary("pairs", "out.jsonl")
    _append_rows(Stage(), Rows(rows), BATCHES, appended.append, done, summary)
    lines = [r for call in appended for r in call]
    return lines, done, summary


def ids_of(lines: list[dict]) -> list[str]:
    return [r["id"] for r in lines]


def test_every_batch_once_in_order():
    lines, done, summary = drive([row(0, ["a", "b"]), row(1, ["c", "d"]), row(2, ["e", "f"])])
    assert ids_of(lines) == ["a", "b", "c", "d", "e", "f"]
    assert summary.made == 6 and set(done) == set("abcdef")


def test_a_batch_returned_twice_is_appended_once_with_its_first_records():
    rows = [row(0, ["a", "b"]), row(1, ["c", "d"]), row(1, ["c", "d"], tag="'"), row(2, ["e", "f"])]
    lines, done, summary = drive(rows)
    assert ids_of(lines) == ["a", "b", "c", "d", "e", "f"]
    assert [r["text"] for r in lines][2:4] == ["c", "d"]  # the first answer is kept
    assert done["c"]["text"] == "c"
    assert summary.made == 6


def test_batches_out_of_order_each_id_once_in_arrival_order():
    rows = [row(2, ["e", "f"]), row(0, ["a", "b"]), row(1, ["c", "d"]), row(0, ["a", "b"])]
    lines, _, summary = drive(rows)
    assert ids_of(lines) == ["e", "f", "a", "b", "c", "d"]
    assert summary.made == 6


def test_a_partial_batch_then_its_redo_fills_in_only_what_was_missing():
    rows = [row(0, ["a"]), row(1, ["c", "d"]), row(0, ["a", "b"], tag="'")]
    lines, _, summary = drive(rows)
    assert ids_of(lines) == ["a", "c", "d", "b"]
    assert [r["text"] for r in lines] == ["a", "c", "d", "b'"]
    assert summary.made == 4


def test_a_record_repeated_within_one_batch_is_appended_once():
    repeated = row(0, ["a", "b", "a"])
    lines, _, summary = drive([repeated])
    assert ids_of(lines) == ["a", "b"]
    assert summary.made == 2


def test_records_of_ids_outside_the_batch_are_not_appended():
    lines, done, summary = drive([row(0, ["a", "b", "z"]), row(1, ["c", "e"])])
    assert ids_of(lines) == ["a", "b", "c"]
    assert "z" not in done and "e" not in done
    assert summary.made == 3


def test_ids_already_done_are_not_appended_again():
    done = {"a": {"id": "a", "text": "old"}}
    lines, done, summary = drive([row(0, ["a", "b"])], done)
    assert ids_of(lines) == ["b"]
    assert done["a"]["text"] == "old"
    assert summary.made == 1


def test_a_batch_with_nothing_new_appends_nothing():
    appended: list = []
    done = {"a": {"id": "a"}, "b": {"id": "b"}}
    summary = StageSummary("pairs", "out.jsonl")
    _append_rows(Stage(), Rows([row(0, ["a", "b"])]), BATCHES, appended.append, done, summary)
    assert appended == [] and summary.made == 0


def test_unusable_images_are_reported():
    _, _, summary = drive([row(0, ["a"], bad={"b": "b: not an image"}), row(1, ["c", "d"])])
    assert summary.bad_items == {"b": "b: not an image"}


def test_a_worker_error_is_raised_and_later_batches_are_not_appended():
    rows = [
        row(0, ["a", "b"]),
        row(1, [], error=pickle.dumps(ValueError("broken item c"))),
        row(2, ["e", "f"]),
    ]
    appended: list[list[dict]] = []
    summary = StageSummary("pairs", "out.jsonl")
    with pytest.raises(ValueError, match="broken item c"):
        _append_rows(Stage(), Rows(rows), BATCHES, appended.append, {}, summary)
    assert [r["id"] for call in appended for r in call] == ["a", "b"]
    assert summary.made == 2


def test_fresh_records_keeps_the_first_record_of_each_new_id_of_the_batch():
    records = [{"id": "b", "n": 1}, {"id": "x", "n": 2}, {"id": "a", "n": 3}, {"id": "b", "n": 4}]
    assert fresh_records(records, {"a", "b"}, {}) == [{"id": "b", "n": 1}, {"id": "a", "n": 3}]
    assert fresh_records(records, {"a", "b"}, {"b": {}}) == [{"id": "a", "n": 3}]
    assert fresh_records([], {"a"}, {}) == []


def test_the_log_says_how_many_were_made_and_the_workers_generating_time(caplog):
    rows = [row(0, ["a", "b"]), row(1, ["c", "d"]), row(1, ["c"]), row(2, [])]
    for r, seconds in zip(rows, (2.0, 3.0, 1.0, 4.0), strict=True):
        r["seconds"] = seconds
    with caplog.at_level("INFO", logger="stic.stages.ray_pool"):
        drive(rows)
    (message,) = [m for m in caplog.messages if "on Ray" in m]
    assert message.startswith("pairs: 4 made in ")
    assert message.endswith(" s on Ray (workers generating 10 s in all)")  # every row's time


def test_nothing_made_logs_nothing(caplog):
    with caplog.at_level("INFO", logger="stic.stages.ray_pool"):
        drive([row(0, [])])
    assert not [m for m in caplog.messages if "on Ray" in m]


def test_the_progress_bar_names_the_stage_and_counts_its_items(capsys):
    drive([row(0, ["a", "b"]), row(1, ["c", "d"])])
    bar = capsys.readouterr().err.replace("\r", "\n").splitlines()[-1]
    assert bar.startswith("pairs:  67%|") and " 4/6 [" in bar and "pair/s]" in bar


def test_the_log_gives_the_time_since_the_first_batch(caplog, monkeypatch):
    clock = iter([100.0, 107.0])  # when appending began, when it ended
    monkeypatch.setattr(ray_pool.time, "monotonic", lambda: next(clock))
    with caplog.at_level("INFO", logger="stic.stages.ray_pool"):
        drive([row(0, ["a", "b"])])
    monkeypatch.undo()
    (message,) = [m for m in caplog.messages if "on Ray" in m]
    assert message == "pairs: 2 made in 7 s on Ray (workers generating 0 s in all)"
