"""Reading the hub form of a benchmark: parquet files or a ``datasets`` ``save_to_disk`` folder.

A hub download is a folder of parquet shards named ``<split>-00000-of-0000N*.parquet``, often
under a config folder (``ScienceQA-IMG/``, ``en/``, ``data/``). :func:`read_hub_rows` finds the
shards of one split (and config) and returns their rows as plain dicts; image columns come back
undecoded as ``{"bytes": ..., "path": ...}``, so nothing is decoded until a model needs it.
``None`` means "no hub files here", and the reader then tries the benchmark's original format.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stic.data.benchmarks.records import BenchmarkDataError, ImageRef
from stic.runtime.images import resolve_image_path


def _shards(root: Path, split: str, config: str | None) -> list[Path]:
    files = sorted(p for p in root.rglob("*.parquet") if not p.name.startswith("."))
    if config is not None and any(config in p.relative_to(root).parts[:-1] for p in files):
        files = [p for p in files if config in p.relative_to(root).parts[:-1]]
    return [p for p in files if p.name.startswith((f"{split}-", f"{split}.", f"{split}_"))]


def _arrow_rows(table: Any) -> list[dict]:
    return table.to_pylist()


def _read_saved(root: Path, name: str, split: str) -> list[dict]:
    import datasets

    loaded = datasets.load_from_disk(str(root))
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise BenchmarkDataError(
                f"{name}: {root} is a saved DatasetDict without split {split!r} "
                f"(it has {', '.join(loaded)})"
            )
        loaded = loaded[split]
    # The stored Arrow table holds images as {bytes, path} structs: read them undecoded.
    return _arrow_rows(loaded.data.table)


def read_hub_rows(
    data: str | Path,
    name: str,
    split: str,
    config: str | None = None,
    columns: Sequence[str] = (),
) -> list[dict] | None:
    """Rows of the hub form of a benchmark at ``data``, or None when ``data`` holds none.

    ``data`` may be one parquet file, a folder with parquet shards (searched recursively; only
    those of ``split``, and of ``config`` when config folders exist), or a ``save_to_disk``
    folder (a Dataset, or a DatasetDict holding ``split``). ``columns`` are required: a table
    without one raises :class:`BenchmarkDataError` naming it.
    """
    import pyarrow.parquet as pq

    root = Path(data)
    if root.is_file() and root.suffix == ".parquet":
        rows = _arrow_rows(pq.read_table(root))
        where = str(root)
    elif root.is_dir() and (
        (root / "dataset_dict.json").is_file() or (root / "state.json").is_file()
    ):
        rows = _read_saved(root, name, split)
        where = str(root)
    elif root.is_dir() and any(root.rglob("*.parquet")):
        shards = _shards(root, split, config)
        if not shards:
            found = sorted(p.name for p in root.rglob("*.parquet"))[:3]
            wanted = f"{config}/{split}-*.parquet" if config else f"{split}-*.parquet"
            raise BenchmarkDataError(
                f"{name}: no parquet shard of split {split!r} under {root} "
                f"(expected {wanted}; found {', '.join(found)})"
            )
        rows = [row for shard in shards for row in _arrow_rows(pq.read_table(shard))]
        where = f"{root} ({len(shards)} parquet shards of {split!r})"
    else:
        return None
    if rows:
        absent = [c for c in columns if c not in rows[0]]
        if absent:
            raise BenchmarkDataError(
                f"{name}: {where} lacks column(s) {', '.join(absent)} (has {', '.join(rows[0])})"
            )
    return rows


def image_from_cell(cell: Any, data: Path, name: str, row_id: str) -> ImageRef:
    """An :class:`ImageRef` from a hub image cell: ``{"bytes", "path"}`` (embedded bytes win),
    raw bytes, or a file path. A path is taken relative to the data folder (``data`` itself, or
    the folder of a single parquet file), never the current directory, and must stay inside it
    (:func:`image_file`)."""
    if isinstance(cell, dict):
        if cell.get("bytes"):
            return ImageRef(data=cell["bytes"])
        cell = cell.get("path")
    if isinstance(cell, bytes | bytearray):
        return ImageRef(data=bytes(cell))
    if isinstance(cell, str) and cell:
        data = Path(data)
        return image_file(name, data, row_id, data if data.is_dir() else data.parent, cell)
    raise BenchmarkDataError(f"{name}: row {row_id} has no image (cell {type(cell).__name__})")


def image_file(name: str, where: Any, record: Any, root: str | Path, relative: str) -> ImageRef:
    """The image ``relative`` (as a record names it) under its declared ``root``.

    Absolute paths, ``..`` that climbs out and symbolic links that lead out of ``root`` are
    refused with :func:`bad_record` naming the record (see
    :func:`stic.runtime.images.resolve_image_path`). Whether the file exists is not checked
    here: :func:`stic.data.benchmarks.read_benchmark` does that when images are needed.
    """
    try:
        return ImageRef(path=str(resolve_image_path(root, relative)))
    except ValueError as e:
        raise bad_record(name, where, record, str(e)) from None


def read_json_lines(path: Path, name: str) -> list[dict]:
    """Objects of a JSON-lines file (blank lines skipped); a bad line is named in the error."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise BenchmarkDataError(
                    f"{name}: {path}:{number}: not valid JSON ({e.msg})"
                ) from e
    return rows


def find_file(root: Path, names: Sequence[str], name: str, hint: str) -> Path:
    """``root`` itself if it is a file, else the first of ``names`` found under it (recursively).

    Raises :class:`BenchmarkDataError` naming the files that were looked for and ``hint``.
    """
    if root.is_file():
        return root
    if not root.exists():
        raise BenchmarkDataError(f"{name}: {root} does not exist")
    for wanted in names:
        direct = root / wanted
        if direct.is_file():
            return direct
        found = sorted(root.rglob(wanted))
        if found:
            return found[0]
    raise BenchmarkDataError(
        f"{name}: {root} holds neither hub parquet files nor {' / '.join(names)} ({hint})"
    )


def bad_record(name: str, where: Any, record: Any, problem: str) -> BenchmarkDataError:
    """The one-line error of a malformed record: benchmark, file, record, problem."""
    return BenchmarkDataError(f"{name}: {where}: record {record}: {problem}")


_KIND_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    list: "a list",
    dict: "an object",
}


def checked(
    name: str,
    where: Any,
    record: Any,
    row: Any,
    key: str,
    kinds: tuple[type, ...],
    *,
    optional: bool = False,
) -> Any:
    """``row[key]`` if it is one of ``kinds`` (None allowed when ``optional``); else raise
    :func:`bad_record` naming the field, what it holds and what it should hold. A ``row`` that
    is not an object is itself the problem. Booleans are never numbers here."""
    if not isinstance(row, dict):
        raise bad_record(name, where, record, f"is {type(row).__name__}, not a JSON object")
    if key not in row:
        raise bad_record(name, where, record, f"lacks {key!r}")
    value = row[key]
    if value is None and optional:
        return None
    if isinstance(value, kinds) and not isinstance(value, bool):
        return value
    wanted = " or ".join(_KIND_NAMES.get(k, k.__name__) for k in kinds)
    raise bad_record(
        name, where, record, f"{key!r} is {type(value).__name__} {str(value)[:40]!r}, not {wanted}"
    )


def text_list(name: str, where: Any, record: Any, row: dict, key: str) -> list[str] | None:
    """``row[key]`` as a list of strings (None when absent or null); anything else raises."""
    value = row.get(key)
    if value is None:
        return None
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise bad_record(name, where, record, f"{key!r} is not a list of strings: {value!r:.60}")
    return list(value)


def one_of(name: str, where: Any, record: Any, row: dict, key: str, allowed: Sequence[str]) -> str:
    """``row[key]`` if it is exactly one of the strings ``allowed``; else raise naming it."""
    value = checked(name, where, record, row, key, (str,))
    if value not in allowed:
        wanted = " or ".join(repr(a) for a in allowed)
        raise bad_record(name, where, record, f"{key!r} is {value[:40]!r}, not {wanted}")
    return value


def unique_ids(name: str, where: Any, ids: Sequence[str]) -> None:
    """Raise naming the first id that appears twice, and raise on an empty file."""
    if not ids:
        raise BenchmarkDataError(f"{name}: {where}: holds no records")
    seen: set[str] = set()
    for key in ids:
        if key in seen:
            raise bad_record(name, where, key, "its id appears twice")
        seen.add(key)
