"""Tests for stic.runtime.files: atomic writes, JSONL appends, and recovery from a torn last line."""

from __future__ import annotations

import json
import re

import pytest

from stic.runtime.files import (
    append_jsonl,
    atomic_write_json,
    atomic_write_text,
    read_json,
    read_jsonl,
)


def test_atomic_write_json_replaces_content_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "sub" / "out.json"  # the parent folder is created
    atomic_write_json(path, {"a": 1, "b": [1, 2]})
    assert read_json(path) == {"a": 1, "b": [1, 2]}
    atomic_write_json(path, {"c": "é"})
    assert read_json(path) == {"c": "é"}
    assert path.read_text(encoding="utf-8") == '{\n  "c": "é"\n}\n'
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.json"]


def test_atomic_write_text_failure_keeps_old_content_and_cleans_up(tmp_path):
    path = tmp_path / "out.json"
    atomic_write_json(path, {"old": True})
    with pytest.raises(TypeError):
        atomic_write_text(path, object())  # writing a non-str fails mid-way
    assert read_json(path) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_atomic_write_json_unserializable_keeps_old_file(tmp_path):
    path = tmp_path / "out.json"
    atomic_write_json(path, [1])
    with pytest.raises(TypeError):
        atomic_write_json(path, {"x": object()})
    assert read_json(path) == [1]
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_append_and_read_round_trip(tmp_path):
    path = tmp_path / "deep" / "rows.jsonl"
    append_jsonl(path, [{"id": "a", "text": "héllo\nworld"}, {"id": "b"}])
    append_jsonl(path, [])  # nothing to add: no change
    append_jsonl(path, ({"id": str(i)} for i in range(3)))  # any iterable
    assert read_jsonl(path) == [
        {"id": "a", "text": "héllo\nworld"},
        {"id": "b"},
        {"id": "0"},
        {"id": "1"},
        {"id": "2"},
    ]
    raw = path.read_text(encoding="utf-8")
    assert raw.count("\n") == 5 and raw.endswith("\n")
    assert "héllo" in raw  # not ASCII-escaped


def test_append_of_nothing_does_not_create_the_file(tmp_path):
    path = tmp_path / "rows.jsonl"
    append_jsonl(path, [])
    assert not path.exists()


def test_missing_file_reads_as_empty(tmp_path):
    assert read_jsonl(tmp_path / "absent.jsonl") == []
    assert read_jsonl(tmp_path / "absent.jsonl", repair=True) == []
    assert not (tmp_path / "absent.jsonl").exists()


def test_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n\n  \n{"a": 2}\n', encoding="utf-8")
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]


def test_torn_last_line_without_newline_is_dropped(tmp_path):
    path = tmp_path / "rows.jsonl"
    good = '{"id": "a"}\n{"id": "b"}\n'
    # A complete JSON object but no newline: the write may have been cut before "\n" (or even
    # mid-object in a way that still parses), so it is not trusted.
    path.write_text(good + '{"id": "c"}', encoding="utf-8")
    assert read_jsonl(path) == [{"id": "a"}, {"id": "b"}]
    assert path.read_text(encoding="utf-8") == good + '{"id": "c"}'  # no repair: untouched


def test_torn_last_line_partial_json_is_dropped(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"id": "a"}\n{"id": "b", "te', encoding="utf-8")
    assert read_jsonl(path) == [{"id": "a"}]


def test_partial_json_last_line_with_newline_is_dropped(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"id": "a"}\n{"id": "b", "te\n', encoding="utf-8")
    assert read_jsonl(path) == [{"id": "a"}]


@pytest.mark.parametrize(
    "torn", ['{"id": "c", "text": "hal', '{"id": "c"}', '{"id": "c", "te\n', '{"id": "c"']
)
def test_repair_truncates_the_torn_line_so_appends_are_clean(tmp_path, torn):
    path = tmp_path / "rows.jsonl"
    good = '{"id": "a"}\n{"id": "b"}\n'
    path.write_text(good + torn, encoding="utf-8")
    assert read_jsonl(path, repair=True) == [{"id": "a"}, {"id": "b"}]
    assert path.read_text(encoding="utf-8") == good
    append_jsonl(path, [{"id": "c"}])
    assert path.read_text(encoding="utf-8") == good + '{"id": "c"}\n'
    assert [r["id"] for r in read_jsonl(path)] == ["a", "b", "c"]


def test_repair_keeps_trailing_blank_lines_harmless(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"id": "a"}\n\n', encoding="utf-8")
    assert read_jsonl(path, repair=True) == [{"id": "a"}]
    append_jsonl(path, [{"id": "b"}])
    assert read_jsonl(path) == [{"id": "a"}, {"id": "b"}]


def test_repair_of_a_clean_file_changes_nothing(tmp_path):
    path = tmp_path / "rows.jsonl"
    append_jsonl(path, [{"id": "a"}, {"id": "b"}])
    before = path.read_bytes()
    assert read_jsonl(path, repair=True) == [{"id": "a"}, {"id": "b"}]
    assert path.read_bytes() == before


def test_without_repair_an_append_after_a_torn_line_is_the_callers_problem(tmp_path):
    # Documents why repair exists: appending after a torn line glues the new row onto it, and
    # the glued line is then dropped as torn, losing the appended row too.
    path = tmp_path / "rows.jsonl"
    path.write_text('{"id": "a"}\n{"id": "b', encoding="utf-8")
    append_jsonl(path, [{"id": "c"}])
    assert read_jsonl(path) == [{"id": "a"}]
    append_jsonl(path, [{"id": "d"}])
    with pytest.raises(ValueError, match=":2: not valid JSON"):
        read_jsonl(path)


def test_bad_line_in_the_middle_raises_naming_the_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"id": "a"}\n{"id": "b"}\nnot json\n{"id": "d"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(f"{path}:3: not valid JSON")):
        read_jsonl(path)
    with pytest.raises(ValueError, match=re.escape(f"{path}:3:")):
        read_jsonl(path, repair=True)
    # A corrupt file is never "repaired" by cutting away good rows.
    assert path.read_text(encoding="utf-8").endswith('{"id": "d"}\n')


def test_bad_first_line_followed_by_more_raises(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"id": \n{"id": "b"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(f"{path}:1:")):
        read_jsonl(path)


def test_rows_are_returned_as_written(tmp_path):
    path = tmp_path / "rows.jsonl"
    rows = [{"nested": {"x": [1, 2.5, None, True]}, "s": "日本語"}]
    append_jsonl(path, rows)
    assert read_jsonl(path) == rows
    assert json.loads(path.read_text(encoding="utf-8")) == rows[0]


# --- durability: fsync before the rename / after the append ------------------------------------
# A kill cannot show a missing fsync (the page cache survives it; a power cut does not), so
# these tests watch the calls instead: the data is on disk before the name points at it.


def _spy_on_fsync_and_replace(monkeypatch) -> list[tuple]:
    """Record ("fsync", inode, size at that moment) and ("replace", src, dst) in call order."""
    import os

    calls: list[tuple] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        info = os.fstat(fd)
        calls.append(("fsync", info.st_ino, info.st_size))
        return real_fsync(fd)

    def replace(src, dst, *args, **kwargs):
        calls.append(("replace", str(src), str(dst)))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return calls


def test_atomic_write_fsyncs_the_complete_temp_file_before_renaming_it(tmp_path, monkeypatch):
    path = tmp_path / "out.json"
    atomic_write_json(path, {"old": 1})
    calls = _spy_on_fsync_and_replace(monkeypatch)
    atomic_write_text(path, "new content\n")
    kinds = [c[0] for c in calls]
    assert "fsync" in kinds and "replace" in kinds, calls
    replace = next(c for c in calls if c[0] == "replace")
    assert replace[2] == str(path)
    # The file synced is the one now at `path`, with all its bytes, and it was synced first.
    synced = [c for c in calls[: calls.index(replace)] if c[0] == "fsync"]
    stat = path.stat()
    assert ("fsync", stat.st_ino, stat.st_size) in synced, calls
    assert path.read_text() == "new content\n"


def test_append_fsyncs_after_writing_every_line(tmp_path, monkeypatch):
    path = tmp_path / "rows.jsonl"
    append_jsonl(path, [{"id": "a"}])
    calls = _spy_on_fsync_and_replace(monkeypatch)
    append_jsonl(path, [{"id": "b"}, {"id": "c"}])
    stat = path.stat()
    assert calls == [("fsync", stat.st_ino, stat.st_size)]
    assert [r["id"] for r in read_jsonl(path)] == ["a", "b", "c"]


# --- bad lines are one error naming the file, the line and what was expected -------------------


@pytest.mark.parametrize(
    ("line", "kind"),
    [("[1, 2]", "an array"), ('"text"', "a string"), ("7", "a number"), ("null", "null")],
)
@pytest.mark.parametrize("strict", [False, True])
def test_a_line_that_is_not_an_object_names_file_and_line(tmp_path, line, kind, strict):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"id": "a"}\n' + line + '\n{"id": "b"}\n')
    with pytest.raises(ValueError) as e:
        read_jsonl(path, strict=strict)
    assert str(e.value) == (f"{path}:2: expected a JSON object (one record a line), got {kind}")


def test_a_record_without_the_key_names_file_and_line(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"id": "a"}\n{"x": 1}\n')
    assert read_jsonl(path) == [{"id": "a"}, {"x": 1}]  # no key asked: any object
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}:2: a record without 'id'"):
        read_jsonl(path, repair=True, key="id")
    assert path.read_text() == '{"id": "a"}\n{"x": 1}\n'  # a bad file is not "repaired"


def test_a_line_that_is_not_utf8_names_file_and_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"id": "a"}\n{"id": "\xff"}\n')
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}:2: not UTF-8 text"):
        read_jsonl(path, strict=True)
