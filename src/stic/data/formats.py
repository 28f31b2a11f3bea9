"""Preference pairs to and from the files other tools read (``stic convert`` is the command).

Four formats. Examples show one pair each; ``...`` abbreviates long text.

``stic`` (read, write): our own JSONL, one :class:`~stic.data.schemas.PairRecord` a line, what
``stic pairs`` writes and ``stic dpo`` reads::

    {"id": "cat.jpg", "image": "cat.jpg", "prompt": "Interpret the scene shown in the image.",
     "chosen": "A grey cat sleeps on a sofa...", "rejected": "A cat and a dog play...",
     "rejected_kind": "bad_prompt", "chosen_prompt": "Please provide a detailed description...",
     "rejected_prompt": "Describe the image with imaginative objects...", "corruption": null,
     "model": "llava-hf/llava-1.5-7b-hf", "sampling": {...}, "chosen_finish": "stop",
     "rejected_finish": "stop", "schema_version": 1}

``stic-reference`` (read, write): the STIC reference code's preference file, a JSON list (or
JSONL) of::

    {"image": "cat.jpg", "image_corruption": false,
     "hallu_prompt": "Describe the image with imaginative objects...",
     "chosen": [{"role": "user", "content": "<image>\\nInterpret the scene shown in the image."},
                {"role": "assistant", "content": "A grey cat sleeps on a sofa..."}],
     "rejected": [{"role": "user", "content": "<image>\\nInterpret the scene shown in the image."},
                  {"role": "assistant", "content": "A cat and a dog play..."}]}

  Reading: ``id`` is the image path; the 2nd, 3rd... record of the same image get the ids
  ``"<image>#2"``, ``"<image>#3"``... (skipping any id that is another record's image), so ids
  are unique and the same file always gets the same ids. The prompt is the user content without
  its ``<image>`` placeholder (the chat template places the image); records whose user content
  lacks the placeholder (docs/method.md, reference-code defect 3) are read the same way. ``image_corruption:
  false`` gives ``rejected_kind="bad_prompt"`` with ``rejected_prompt=hallu_prompt``.
  ``image_corruption: true`` gives ``rejected_kind="imported"`` and ``corruption=None``: the
  reference code claimed a corruption it never applied (reference-code defect 1), so we do not claim one
  either. What the record said about itself is kept in ``source`` (``{"format":
  "stic-reference", "image_corruption", "hallu_prompt"}``, plus ``"extra"`` for unknown keys),
  so writing it back gives the same record. Writing always puts ``"<image>\\n"`` in front of the
  prompt, so a record read without the placeholder comes back with it.

``trl`` (write): TRL's conversational vision preference format, a ``datasets`` data set with the
images embedded (a folder from ``save_to_disk``, or one ``.parquet`` file)::

    {"id": "cat.jpg",
     "prompt": [{"role": "user", "content": [{"type": "image", "text": None},
                 {"type": "text", "text": "Interpret the scene shown in the image."}]}],
     "chosen": [{"role": "assistant", "content": [{"type": "text", "text": "A grey cat..."}]}],
     "rejected": [{"role": "assistant", "content": [{"type": "text", "text": "A cat and..."}]}],
     "images": [<PIL.Image RGB, as stic.runtime.images.load_image reads it, stored as PNG>]}

  (``"text": None`` in the image item is how Arrow stores the missing key.) ``trl.DPOTrainer``
  reads it as is; it drops the ``id`` column, which is there to trace a row back to its pair.

``llamafactory`` (read, write): LLaMA-Factory's sharegpt ranking format, a JSON list (JSONL for
a ``.jsonl`` path) of::

    {"conversations": [{"from": "human", "value": "<image>Interpret the scene shown in the image."}],
     "chosen": {"from": "gpt", "value": "A grey cat sleeps on a sofa..."},
     "rejected": {"from": "gpt", "value": "A cat and a dog play..."},
     "images": ["/data/coco/cat.jpg"],
     "stic_meta": "{\\"id\\": \\"cat.jpg\\", \\"image\\": \\"cat.jpg\\", \\"rejected_kind\\": ...}"}

  Image paths are absolute when an images folder is given, else the pair's relative path (which
  LLaMA-Factory resolves against its ``media_dir``, by default its ``dataset_dir``).
  ``stic_meta`` is the rest of the pair record as a JSON string, so reading the file back gives
  the same pairs; LLaMA-Factory ignores columns it was not told about. Register the file with
  :func:`llamafactory_dataset_info`. A file from elsewhere (no ``stic_meta``) reads as
  ``rejected_kind="imported"`` pairs, ids made from the image paths as above.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from stic.data.prompts import GOOD_PROMPT, IMAGE_TOKEN, strip_image_placeholder
from stic.data.schemas import PairRecord, RecordError, read_pairs, require_field
from stic.runtime.files import atomic_write_json, atomic_write_text
from stic.runtime.images import ImageError, load_image, resolve_image_path

logger = logging.getLogger(__name__)

STIC = "stic"
REFERENCE = "stic-reference"
TRL = "trl"
LLAMAFACTORY = "llamafactory"
FORMATS: tuple[str, ...] = (STIC, REFERENCE, TRL, LLAMAFACTORY)
READ_FORMATS: tuple[str, ...] = (STIC, REFERENCE, LLAMAFACTORY)

_REFERENCE_KEYS = ("image", "image_corruption", "hallu_prompt", "chosen", "rejected")
# Fields of a pair that the llamafactory conversation already holds; the rest go in stic_meta.
_IN_CONVERSATION = ("prompt", "chosen", "rejected")
LLAMAFACTORY_META = "stic_meta"


# --- ids ---------------------------------------------------------------------------------------


def unique_ids(images: Sequence[str], reserved: Iterable[str] = ()) -> list[str]:
    """One id per record from its image path: the path, then ``path#2``, ``path#3``... for repeats.

    A generated id never equals another record's image path nor a ``reserved`` id (one some
    other record already has), so ids stay unique whatever the paths are, and the same input
    always gives the same ids.
    """
    used = set(reserved)
    taken = set(images) | used
    next_suffix: dict[str, int] = {}
    ids = []
    for image in images:
        candidate = image
        if candidate in used:
            n = next_suffix.get(image, 2)
            while f"{image}#{n}" in taken or f"{image}#{n}" in used:
                n += 1
            next_suffix[image] = n + 1
            candidate = f"{image}#{n}"
        used.add(candidate)
        ids.append(candidate)
    return ids


# --- stic-reference <-> PairRecord ---------------------------------------------------------------


def _reference_turns(row: dict, key: str, where: str) -> tuple[str, str]:
    """(user content, assistant content) of a reference record's ``chosen`` or ``rejected``."""
    turns = require_field(row, key, list, where)
    if len(turns) != 2:
        raise RecordError(
            f"{where}: field {key!r} must hold a user turn and an assistant turn, "
            f"got {len(turns)} turns"
        )
    contents = []
    for i, role in enumerate(("user", "assistant")):
        at = f"{where}: {key}[{i}]"
        found = require_field(turns[i], "role", str, at)
        if found != role:
            raise RecordError(f"{at}: expected 'role': {role!r}, got {found!r}")
        contents.append(require_field(turns[i], "content", str, at))
    return contents[0], contents[1]


def pair_from_reference(row: dict, where: str, pair_id: str | None = None) -> PairRecord:
    """A reference-code record as a :class:`PairRecord` (see the module docstring for the mapping).

    ``where`` names the record in errors (e.g. ``"pairs.json[3]"``); ``pair_id`` defaults to the
    image path. Raises :class:`RecordError` naming the record and the field.
    """
    image = require_field(row, "image", str, where)
    if not image.strip():
        raise RecordError(f"{where}: field 'image' is empty")
    corrupted = require_field(row, "image_corruption", bool, where)
    if "hallu_prompt" not in row:
        raise RecordError(f"{where}: missing field 'hallu_prompt'")
    hallu = row["hallu_prompt"]
    if not isinstance(hallu, str) and (corrupted is False or hallu is not None):
        raise RecordError(
            f"{where}: field 'hallu_prompt' must be str"
            + (" or null" if corrupted else " when 'image_corruption' is false")
            + f", got {type(hallu).__name__}"
        )
    chosen_user, chosen = _reference_turns(row, "chosen", where)
    rejected_user, rejected = _reference_turns(row, "rejected", where)
    prompt = strip_image_placeholder(chosen_user)
    if strip_image_placeholder(rejected_user) != prompt:
        raise RecordError(
            f"{where}: rejected[0].content asks {rejected_user!r} but chosen[0].content asks "
            f"{chosen_user!r}; a pair has one prompt"
        )
    source: dict[str, Any] = {
        "format": REFERENCE,
        "image_corruption": corrupted,
        "hallu_prompt": hallu,
    }
    extra = {k: v for k, v in row.items() if k not in _REFERENCE_KEYS}
    if extra:
        source["extra"] = extra
    return PairRecord(
        id=image if pair_id is None else pair_id,
        image=image,
        prompt=prompt,
        chosen=chosen,
        rejected=rejected,
        rejected_kind="imported" if corrupted else "bad_prompt",
        chosen_prompt=GOOD_PROMPT,
        rejected_prompt=hallu or "",
        corruption=None,
        source=source,
    )


def pair_to_reference(pair: PairRecord) -> dict:
    """A :class:`PairRecord` as a reference-code record.

    ``image_corruption`` is the imported record's own value when the pair came from that format,
    else ``rejected_kind != "bad_prompt"``; ``hallu_prompt`` is the rejected prompt of a
    bad-prompt pair, else the imported record's own value, else ``""``.
    """
    source = pair.source if pair.source and pair.source.get("format") == REFERENCE else {}
    if "image_corruption" in source:
        corrupted = bool(source["image_corruption"])
    else:
        corrupted = pair.rejected_kind != "bad_prompt"
    if pair.rejected_kind == "bad_prompt":
        hallu = pair.rejected_prompt
    else:
        hallu = source.get("hallu_prompt", "")
    user = f"{IMAGE_TOKEN}\n{pair.prompt}"
    row = {
        "image": pair.image,
        "image_corruption": corrupted,
        "hallu_prompt": hallu,
        "chosen": [
            {"role": "user", "content": user},
            {"role": "assistant", "content": pair.chosen},
        ],
        "rejected": [
            {"role": "user", "content": user},
            {"role": "assistant", "content": pair.rejected},
        ],
    }
    for key, value in (source.get("extra") or {}).items():
        row.setdefault(key, value)
    return row


# --- PairRecord -> trl ---------------------------------------------------------------------------


def trl_features():
    """The ``datasets.Features`` of the trl format (plain lists, so datasets 3 and 4+ agree)."""
    from datasets import Features, Image, Value

    def messages():
        return [
            {
                "role": Value("string"),
                "content": [{"type": Value("string"), "text": Value("string")}],
            }
        ]

    return Features(
        {
            "id": Value("string"),
            "prompt": messages(),
            "chosen": messages(),
            "rejected": messages(),
            "images": [Image()],
        }
    )


def pair_to_trl(pair: PairRecord, image: Any) -> dict:
    """A :class:`PairRecord` as one trl row; ``image`` is what goes in ``images`` (a PIL image)."""
    return {
        "id": pair.id,
        "prompt": [
            {
                "role": "user",
                "content": [{"type": "image"}, {"type": "text", "text": pair.prompt}],
            }
        ],
        "chosen": [{"role": "assistant", "content": [{"type": "text", "text": pair.chosen}]}],
        "rejected": [{"role": "assistant", "content": [{"type": "text", "text": pair.rejected}]}],
        "images": [image],
    }


# --- llamafactory <-> PairRecord -----------------------------------------------------------------


def pair_to_llamafactory(pair: PairRecord, image_path: str) -> dict:
    """A :class:`PairRecord` as one LLaMA-Factory sharegpt ranking record.

    ``image_path`` is what goes in ``images`` (absolute, or the pair's relative path).
    """
    meta = {k: v for k, v in pair.to_dict().items() if k not in _IN_CONVERSATION}
    return {
        "conversations": [{"from": "human", "value": IMAGE_TOKEN + pair.prompt}],
        "chosen": {"from": "gpt", "value": pair.chosen},
        "rejected": {"from": "gpt", "value": pair.rejected},
        "images": [image_path],
        LLAMAFACTORY_META: json.dumps(meta, ensure_ascii=False),
    }


def _llamafactory_answer(row: dict, key: str, where: str) -> str:
    turn = require_field(row, key, dict, where)
    found = require_field(turn, "from", str, f"{where}: {key}")
    if found != "gpt":
        raise RecordError(f"{where}: {key}: expected 'from': 'gpt', got {found!r}")
    return require_field(turn, "value", str, f"{where}: {key}")


def _llamafactory_image(row: dict, where: str, images_root: str | os.PathLike | None) -> str:
    """The record's one image as a path relative to ``images_root`` (or as given if relative)."""
    images = require_field(row, "images", (list, str), where)
    if isinstance(images, list):
        if len(images) != 1 or not isinstance(images[0], str):
            raise RecordError(
                f"{where}: field 'images' must hold exactly one path (a stic pair has one image), "
                f"got {images!r}"
            )
        images = images[0]
    if not os.path.isabs(images):
        return images
    if images_root is None:
        raise RecordError(
            f"{where}: image {images!r} is an absolute path; give the images folder "
            "(--images) so it can be made relative to it"
        )
    root = os.path.abspath(images_root)
    relative = os.path.relpath(os.path.abspath(images), root)
    if relative == ".." or relative.startswith(".." + os.sep):
        raise RecordError(f"{where}: image {images!r} is not under the images folder {root}")
    return Path(relative).as_posix()


def pair_from_llamafactory(
    row: dict,
    where: str,
    pair_id: str | None = None,
    images_root: str | os.PathLike | None = None,
) -> PairRecord:
    """A LLaMA-Factory sharegpt ranking record as a :class:`PairRecord`.

    A record written by :func:`pair_to_llamafactory` gives back its pair (from ``stic_meta``);
    any other gives a ``rejected_kind="imported"`` pair with ``id`` ``pair_id`` (default: the
    image path). Absolute image paths are made relative to ``images_root``. Raises
    :class:`RecordError` naming the record and the field.
    """
    turns = require_field(row, "conversations", list, where)
    if len(turns) != 1:
        raise RecordError(
            f"{where}: field 'conversations' must hold one human turn (a stic pair is one "
            f"question about one image), got {len(turns)} turns"
        )
    at = f"{where}: conversations[0]"
    found = require_field(turns[0], "from", str, at)
    if found != "human":
        raise RecordError(f"{at}: expected 'from': 'human', got {found!r}")
    prompt = strip_image_placeholder(require_field(turns[0], "value", str, at))
    chosen = _llamafactory_answer(row, "chosen", where)
    rejected = _llamafactory_answer(row, "rejected", where)
    meta_text = row.get(LLAMAFACTORY_META)
    if meta_text is not None:  # written by stic: the image id and the rest are in the meta
        if not isinstance(meta_text, str):
            raise RecordError(f"{where}: field {LLAMAFACTORY_META!r} must be a JSON string")
        try:
            meta = json.loads(meta_text)
        except json.JSONDecodeError as e:
            raise RecordError(
                f"{where}: field {LLAMAFACTORY_META!r} is not valid JSON ({e.msg})"
            ) from e
        if not isinstance(meta, dict):
            raise RecordError(f"{where}: field {LLAMAFACTORY_META!r} must hold a JSON object")
        data = {**meta, "prompt": prompt, "chosen": chosen, "rejected": rejected}
        return PairRecord.from_dict(data, where=f"{where}: {LLAMAFACTORY_META}")
    image = _llamafactory_image(row, where, images_root)
    return PairRecord(
        id=image if pair_id is None else pair_id,
        image=image,
        prompt=prompt,
        chosen=chosen,
        rejected=rejected,
        rejected_kind="imported",
        chosen_prompt="",
        rejected_prompt="",
        source={"format": LLAMAFACTORY},
    )


def llamafactory_dataset_info(name: str, file_name: str) -> dict:
    """The ``dataset_info.json`` entry that registers a llamafactory export as ``name``.

    ``file_name`` is the file's path relative to LLaMA-Factory's ``dataset_dir`` (put the file
    next to ``dataset_info.json`` and give its name). Columns follow LLaMA-Factory's data README
    for sharegpt preference data with images.
    """
    return {
        name: {
            "file_name": file_name,
            "formatting": "sharegpt",
            "ranking": True,
            "columns": {
                "messages": "conversations",
                "chosen": "chosen",
                "rejected": "rejected",
                "images": "images",
            },
        }
    }


# --- reading -------------------------------------------------------------------------------------


def _read_rows(path: str | os.PathLike) -> list[tuple[str, Any]]:
    """``(where, row)`` for each record of a JSON list (``path[i]``) or JSONL file (``path:line``)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(
            f"{path}: is a folder (a trl data set?); stic reads pairs from a JSON or JSONL file"
        )
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from e
        rows = [(f"{path}[{i}]", row) for i, row in enumerate(data)]
    else:
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append((f"{path}:{number}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: not valid JSON ({e.msg})") from e
    if not rows:
        raise RecordError(f"{path}: no records")
    return rows


def detect_format(row: Any, where: str = "record") -> str:
    """The format of one record: ``stic``, ``stic-reference`` or ``llamafactory``.

    ``stic`` has ``rejected_kind``; ``stic-reference`` has ``image_corruption`` or a list
    ``chosen``; ``llamafactory`` has ``conversations`` and a ``chosen`` object.
    """
    if isinstance(row, dict):
        if "rejected_kind" in row:
            return STIC
        if "image_corruption" in row or isinstance(row.get("chosen"), list):
            return REFERENCE
        if "conversations" in row and isinstance(row.get("chosen"), dict):
            return LLAMAFACTORY
        found = f"keys {sorted(row)}"
    else:
        found = f"a JSON {type(row).__name__}"
    raise RecordError(
        f"{where}: cannot tell the pair format from this record ({found}); expected a stic pair "
        "('rejected_kind'), a reference-code pair ('image_corruption', 'chosen' list) or a "
        "LLaMA-Factory ranking record ('conversations', 'chosen' object); name the format"
    )


def read_reference_pairs(path: str | os.PathLike) -> list[PairRecord]:
    """The reference code's pair file (JSON list or JSONL) as pairs; ids as in the module doc."""
    rows = _read_rows(path)
    images = [row.get("image") if isinstance(row, dict) else None for _, row in rows]
    ids = unique_ids([image if isinstance(image, str) else "" for image in images])
    return [pair_from_reference(row, where, i) for (where, row), i in zip(rows, ids, strict=True)]


def read_llamafactory_pairs(
    path: str | os.PathLike, images_root: str | os.PathLike | None = None
) -> list[PairRecord]:
    """A LLaMA-Factory sharegpt ranking file (JSON list or JSONL) as pairs.

    Records written by stic keep their ids; others get ids from their image paths
    (:func:`unique_ids`). A repeated id raises :class:`RecordError` naming the record.
    """
    rows = _read_rows(path)
    pairs = [pair_from_llamafactory(row, where, None, images_root) for where, row in rows]
    ours = [row.get(LLAMAFACTORY_META) is not None for _, row in rows]
    reserved = [p.id for p, mine in zip(pairs, ours, strict=True) if mine]
    foreign = [p.image for p, mine in zip(pairs, ours, strict=True) if not mine]
    ids = iter(unique_ids(foreign, reserved))
    pairs = [p if mine else replace(p, id=next(ids)) for p, mine in zip(pairs, ours, strict=True)]
    seen: set[str] = set()
    for (where, _), pair in zip(rows, pairs, strict=True):
        if pair.id in seen:
            raise RecordError(f"{where}: duplicate id {pair.id!r}")
        seen.add(pair.id)
    return pairs


def read_pairs_any(
    path: str | os.PathLike, fmt: str = "auto", images_root: str | os.PathLike | None = None
) -> list[PairRecord]:
    """Pairs from a ``stic``, ``stic-reference`` or ``llamafactory`` file.

    ``fmt="auto"`` detects the format from the first record (:func:`detect_format`).
    ``images_root`` is only used for llamafactory files with absolute image paths. Raises
    :class:`RecordError` (a ``ValueError``) naming the record and field, ``ValueError`` for an
    unknown format or unreadable JSON, ``FileNotFoundError`` for a missing file.
    """
    if fmt not in ("auto", *READ_FORMATS):
        raise ValueError(f"unknown pair format {fmt!r}; expected auto or one of {READ_FORMATS}")
    if fmt == "auto":
        where, first = _read_rows(path)[0]
        fmt = detect_format(first, where)
        logger.info("%s: read as %s pairs", path, fmt)
    if fmt == STIC:
        return read_pairs(path)
    if fmt == REFERENCE:
        return read_reference_pairs(path)
    return read_llamafactory_pairs(path, images_root)


# --- writing -------------------------------------------------------------------------------------


def write_stic_pairs(pairs: Sequence[PairRecord], out: str | os.PathLike) -> None:
    """Pairs as stic JSONL, written atomically (a crash leaves the old file or the new one)."""
    atomic_write_text(
        out, "".join(json.dumps(p.to_dict(), ensure_ascii=False) + "\n" for p in pairs)
    )


def _write_rows(rows: list[dict], out: str | os.PathLike) -> None:
    """A JSON list, or JSONL when ``out`` ends with ``.jsonl``; atomically."""
    if Path(out).suffix == ".jsonl":
        atomic_write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    else:
        atomic_write_json(out, rows)


def write_reference_pairs(pairs: Sequence[PairRecord], out: str | os.PathLike) -> None:
    """Pairs as the reference code's JSON list (JSONL for a ``.jsonl`` path)."""
    _write_rows([pair_to_reference(p) for p in pairs], out)


def _image_file(pair: PairRecord, images_root: str | os.PathLike) -> Path:
    try:
        path = resolve_image_path(images_root, pair.image)
    except ValueError as e:
        raise ValueError(f"pair {pair.id!r}: {e}") from e
    if not path.is_file():
        raise FileNotFoundError(f"pair {pair.id!r}: image file not found: {path}")
    return path


def write_llamafactory_pairs(
    pairs: Sequence[PairRecord],
    out: str | os.PathLike,
    images_root: str | os.PathLike | None = None,
) -> None:
    """Pairs as a LLaMA-Factory sharegpt ranking file (JSONL for a ``.jsonl`` path).

    With ``images_root`` each image path is absolute and must exist; without it, it is the pair's
    relative path (set LLaMA-Factory's ``media_dir`` to the images folder).
    """
    rows = []
    for pair in pairs:
        image = pair.image if images_root is None else str(_image_file(pair, images_root).resolve())
        rows.append(pair_to_llamafactory(pair, image))
    _write_rows(rows, out)


def _trl_rows(pairs: Sequence[PairRecord], images_root: str) -> Iterator[dict]:
    for pair in pairs:
        try:
            image = load_image(_image_file(pair, images_root))
        except ImageError as e:
            raise ValueError(f"pair {pair.id!r}: {e}") from e
        yield pair_to_trl(pair, image)


def write_trl_dataset(
    pairs: Sequence[PairRecord],
    out: str | os.PathLike,
    images_root: str | os.PathLike,
    overwrite: bool = False,
) -> None:
    """Pairs as a TRL vision preference data set with the images embedded.

    ``out`` ending in ``.parquet``: one Parquet file (``load_dataset("parquet",
    data_files=out)``); no suffix: a ``save_to_disk`` folder (``load_from_disk(out)``), which must
    not already exist with files in it (with ``overwrite``: unless it holds a saved data set and
    nothing else, which is replaced). Images are read with
    :func:`stic.runtime.images.load_image` (EXIF orientation applied, RGB) and stored as PNG.
    Written beside ``out`` and renamed, so a crash leaves no half data set under ``out``.
    """
    from datasets import Dataset
    from datasets.exceptions import DatasetGenerationError

    out = Path(out)
    if out.suffix not in ("", ".parquet"):
        raise ValueError(
            f"{out}: a trl data set is a folder (no suffix) or a .parquet file, not {out.suffix!r}"
        )
    replace_folder = out.suffix == "" and out.is_dir() and any(out.iterdir())
    if out.suffix == "" and out.exists() and (not out.is_dir() or replace_folder):
        if not (overwrite and replace_folder):
            raise FileExistsError(f"{out}: already exists; remove it or choose another path")
        strangers = [p.name for p in out.iterdir() if not _saved_dataset_file(p)]
        if strangers:
            raise FileExistsError(
                f"{out}: holds files that are not a saved data set (e.g. {strangers[0]}); "
                "stic will not delete them: choose another path"
            )
    if not pairs:
        raise ValueError("no pairs to write")
    for pair in pairs:  # fail on a missing image before any work, not 5,000 images in
        _image_file(pair, images_root)
    out.parent.mkdir(parents=True, exist_ok=True)
    # The generator's cache goes to a fresh folder that is deleted afterwards, so a rerun on
    # changed images can never pick up a stale cached table.
    work = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        key = hashlib.sha256(
            json.dumps([str(images_root)] + [[p.id, p.image] for p in pairs]).encode()
        ).hexdigest()
        try:
            dataset = Dataset.from_generator(
                _trl_rows,
                features=trl_features(),
                cache_dir=str(work / "cache"),
                gen_kwargs={"pairs": list(pairs), "images_root": str(images_root)},
                fingerprint=key,
            )
        except DatasetGenerationError as e:
            # Our own error (an unreadable image, naming its pair) says more than the wrapper.
            if isinstance(e.__cause__, (OSError, ValueError)):
                raise e.__cause__ from None
            raise
        staged = work / out.name
        if out.suffix == ".parquet":
            dataset.to_parquet(str(staged))
        else:
            dataset.save_to_disk(str(staged))
            if out.exists():
                # Empty, or (overwrite) a saved data set: moved aside, deleted with `work`.
                out.rename(work / "replaced")
        del dataset
        os.replace(staged, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _saved_dataset_file(path: Path) -> bool:
    """Whether ``path`` is one of the files ``Dataset.save_to_disk`` writes."""
    return path.is_file() and (
        path.name in ("dataset_info.json", "state.json")
        or (path.name.startswith("data-") and path.suffix == ".arrow")
    )


def write_pairs_as(
    pairs: Sequence[PairRecord],
    out: str | os.PathLike,
    fmt: str,
    images_root: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> None:
    """Write pairs in one of :data:`FORMATS`; ``images_root`` is required for ``trl``.

    ``overwrite`` lets a ``trl`` folder that holds a saved data set be replaced (files are
    always replaced whole; the caller decides whether that is wanted).
    """
    if fmt == STIC:
        write_stic_pairs(pairs, out)
    elif fmt == REFERENCE:
        write_reference_pairs(pairs, out)
    elif fmt == LLAMAFACTORY:
        write_llamafactory_pairs(pairs, out, images_root)
    elif fmt == TRL:
        if images_root is None:
            raise ValueError("the trl format embeds the images: give the images folder (--images)")
        write_trl_dataset(pairs, out, images_root, overwrite=overwrite)
    else:
        raise ValueError(f"unknown pair format {fmt!r}; expected one of {FORMATS}")
