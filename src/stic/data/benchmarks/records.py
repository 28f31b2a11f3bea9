"""The record every benchmark reader returns, and the judge interface the scorers call.

One :class:`BenchItem` per question, whatever the benchmark and whatever format it was read
from (hub parquet, a ``save_to_disk`` folder, the original release). Its image is an
:class:`ImageRef`: a file on disk, or the encoded bytes held in a parquet column or a TSV cell.

Judged scorers (LLaVA-Bench, MM-Vet, MathVista's extraction) talk to a judge through the
:class:`Judge` protocol defined here, so this package stays below ``stic.modeling``;
:class:`stic.modeling.judge.JudgeClient` implements it.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from PIL import Image, ImageOps

from stic.runtime.images import load_image


class BenchmarkDataError(ValueError):
    """A ``--data`` path that cannot be read as the benchmark; the message names what is missing."""


@dataclass(frozen=True)
class ImageRef:
    """An item's image: ``path`` (a file) or ``data`` (encoded bytes, e.g. PNG or JPEG)."""

    path: str | None = None
    data: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if (self.path is None) == (self.data is None):
            raise ValueError("ImageRef needs exactly one of path or data")

    def load(self) -> Image.Image:
        """The decoded image as RGB (EXIF orientation applied)."""
        if self.path is not None:
            return load_image(self.path)
        with Image.open(io.BytesIO(self.data)) as image:
            return ImageOps.exif_transpose(image).convert("RGB")

    def digest(self) -> str:
        """sha256 of the encoded bytes: the same picture gets the same key in every benchmark,
        so a describe-and-respond description can be cached once per image."""
        data = self.data if self.data is not None else Path(self.path).read_bytes()
        return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class BenchItem:
    """One benchmark question.

    - ``id``: the benchmark's own question id as a string (POPE question_id, ScienceQA pid,
      MMBench index, TextVQA question_id, MathVista pid, MM-Vet key, LLaVA-Bench question_id;
      ChartQA has none, see :mod:`.chartqa`). Predictions are joined to items by it.
    - ``answers``: the reference answers (TextVQA: the 10 human answers; multiple choice: the
      gold letter; LLaVA-Bench: the GPT-4 reference answer).
    - ``choices``: option texts in order (A, B, ...) for multiple choice, else None.
    - ``hint``: context shown before the question (ScienceQA, MMBench), if any.
    - ``categories``: axis -> labels, e.g. ``{"capability": ("ocr", "math")}``; per-category
      metrics are reported for each axis and label.
    - ``group``: items scored together (an MMBench question and its circular rotations).
    - ``meta``: benchmark-specific fields the prompt or scorer reads (documented per module).
    """

    id: str
    image: ImageRef
    question: str
    answers: tuple[str, ...] = ()
    choices: tuple[str, ...] | None = None
    hint: str | None = None
    categories: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    group: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class JudgePrompt:
    """One chat-completions request to a judge: a system and a user message."""

    system: str
    user: str
    temperature: float = 0.0
    max_tokens: int = 1024
    # How the benchmark's official grader re-asks a reply it cannot parse: replies asked at
    # most (None: the judge client's default), the user message of the re-asks (None: the same
    # one) and the temperature of the k-th re-ask (empty: the client's rising default).
    attempts: int | None = None
    reask_user: str | None = None
    reask_temperatures: tuple[float, ...] = ()


@dataclass(frozen=True)
class JudgeVerdict:
    """A judge's answer to one prompt after retries.

    ``value`` is what ``parse`` returned for the first parseable reply, or None with ``error``
    saying why (``"unparseable: ..."``, ``"http 500 ..."``, ``"timeout ..."``). ``raw`` is the
    last raw reply text, if any arrived. ``cached`` is True when no new call was made.
    """

    value: Any
    raw: str | None
    error: str | None
    cached: bool


class Judge(Protocol):
    """What a judged scorer needs from a judge (see :class:`stic.modeling.judge.JudgeClient`)."""

    model: str

    def ask(
        self, prompts: Sequence[JudgePrompt], parse: Callable[[str], Any]
    ) -> list[JudgeVerdict]:
        """One verdict per prompt, in order; ``parse`` raises ValueError on a reply it rejects."""
        ...


def is_blank(value: Any) -> bool:
    """True for the empty cells of hub tables and TSVs: None, NaN, "", "nan", "none"."""
    if value is None:
        return True
    if isinstance(value, float):
        return value != value
    return isinstance(value, str) and value.strip().lower() in ("", "nan", "none")


def existing_file(candidates: Sequence[Path]) -> Path | None:
    """The first candidate that is a file, or None."""
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return None


def check_image_files(name: str, items: Sequence[BenchItem], what: str) -> None:
    """Raise :class:`BenchmarkDataError` if any item's image file is missing; ``what`` names the
    folder the user should pass with ``--images``."""
    missing = [
        item.image.path
        for item in items
        if item.image.path is not None and not os.path.isfile(item.image.path)
    ]
    if missing:
        raise BenchmarkDataError(
            f"{name}: {len(missing)} of {len(items)} images not found (first: {missing[0]}); "
            f"pass --images with {what}"
        )
