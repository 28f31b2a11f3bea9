"""Every record that crosses a stage boundary, defined once, with its JSON form.

- :class:`PairRecord`: one line of stage 1a's ``pairs.jsonl``, read by stage 1b.
- :class:`InstructSample`: one LLaVA-format instruction sample, read by ``infuse`` and written
  back (description infused) for ``sft``.
- :class:`EvalItem` / :class:`EvalResult`: one VQA question and its scored answer.

``from_dict`` validates what comes from a file and raises :class:`RecordError` naming the field;
``to_dict`` gives what is written. Dataclasses are frozen: records are values.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from stic.runtime.files import read_json, read_jsonl_numbered

SCHEMA_VERSION = 1

RejectedKind = Literal["bad_prompt", "corrupt_lowres", "corrupt_color", "imported"]
# "imported": a pair from another tool whose rejected answer's provenance is not known for sure
# (e.g. the reference code's "image_corruption" pairs, which it never corrupted).
REJECTED_KINDS: tuple[str, ...] = ("bad_prompt", "corrupt_lowres", "corrupt_color", "imported")
FinishReason = Literal["stop", "length"]


class RecordError(ValueError):
    """A record that does not match its schema; the message names the field."""


def _require_object(data: Any, where: str) -> None:
    if not isinstance(data, dict):
        raise RecordError(f"{where}: expected a JSON object, got {type(data).__name__}")


def require_field(data: dict, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    _require_object(data, where)
    if key not in data:
        raise RecordError(f"{where}: missing field {key!r}")
    value = data[key]
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise RecordError(f"{where}: field {key!r} must be {names}, got {type(value).__name__}")
    return value


def optional_field(data: dict, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    _require_object(data, where)
    if data.get(key) is None:
        return None
    return require_field(data, key, kind, where)


def _finish(data: dict, key: str, where: str) -> str:
    value = optional_field(data, key, str, where) or "stop"
    if value not in ("stop", "length"):
        raise RecordError(f"{where}: field {key!r} must be 'stop' or 'length', got {value!r}")
    return value


@dataclass(frozen=True)
class PairRecord:
    """A preference pair built by stage 1a from one unlabeled image.

    ``prompt`` is the stored user turn (a random plain prompt) shared by chosen and rejected;
    ``chosen_prompt``/``rejected_prompt`` are the prompts that generated each answer.
    ``corruption`` is what was applied to the pixels the model saw for the rejected answer
    (``None`` for the bad-prompt branch), so provenance comes from what was done. ``source``
    keeps what another tool's record said about itself when the pair was imported. ``adapter``:
    the PEFT adapter applied to ``model`` while generating (a later round of ``stic run``);
    absent when none was.
    """

    id: str
    image: str
    prompt: str
    chosen: str
    rejected: str
    rejected_kind: str
    chosen_prompt: str
    rejected_prompt: str
    corruption: dict | None = None
    model: str = ""
    sampling: dict = field(default_factory=dict)
    chosen_finish: str = "stop"
    rejected_finish: str = "stop"
    source: dict | None = None
    adapter: str | None = None
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        for name in ("source", "adapter"):
            if out[name] is None:
                del out[name]
        return out

    @classmethod
    def from_dict(cls, data: dict, where: str = "pair") -> PairRecord:
        text = {
            k: require_field(data, k, str, where)
            for k in ("id", "image", "prompt", "chosen", "rejected")
        }
        kind = require_field(data, "rejected_kind", str, where)
        if kind not in REJECTED_KINDS:
            raise RecordError(
                f"{where}: field 'rejected_kind' must be one of {REJECTED_KINDS}, got {kind!r}"
            )
        version = optional_field(data, "schema_version", int, where)
        return cls(
            **text,
            rejected_kind=kind,
            chosen_prompt=optional_field(data, "chosen_prompt", str, where) or "",
            rejected_prompt=optional_field(data, "rejected_prompt", str, where) or "",
            corruption=optional_field(data, "corruption", dict, where),
            model=optional_field(data, "model", str, where) or "",
            sampling=optional_field(data, "sampling", dict, where) or {},
            chosen_finish=_finish(data, "chosen_finish", where),
            rejected_finish=_finish(data, "rejected_finish", where),
            source=optional_field(data, "source", dict, where),
            adapter=optional_field(data, "adapter", str, where),
            schema_version=SCHEMA_VERSION if version is None else version,
        )


@dataclass(frozen=True)
class Turn:
    """One LLaVA conversation turn: ``from`` is ``human`` or ``gpt``."""

    speaker: str
    value: str

    def to_dict(self) -> dict:
        return {"from": self.speaker, "value": self.value}


@dataclass(frozen=True)
class InstructSample:
    """A LLaVA instruction-tuning sample.

    JSON: ``{"id", "image"?, "conversations": [{"from": "human"|"gpt", "value"}...]}``, turns
    alternating and starting with ``human``. ``infusion`` is set by stage 2: the description
    written by the stage-1 model and the plain prompt that produced it.
    """

    id: str
    conversations: tuple[Turn, ...]
    image: str | None = None
    infusion: dict | None = None

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"id": self.id}
        if self.image is not None:
            out["image"] = self.image
        out["conversations"] = [t.to_dict() for t in self.conversations]
        if self.infusion is not None:
            out["stic_infusion"] = self.infusion
        return out

    @classmethod
    def from_dict(cls, data: dict, where: str = "sample") -> InstructSample:
        sample_id = require_field(data, "id", (str, int), where)
        turns_raw = require_field(data, "conversations", list, where)
        turns = []
        for i, raw in enumerate(turns_raw):
            at = f"{where}: conversations[{i}]"
            speaker = require_field(raw, "from", str, at)
            expected = "human" if i % 2 == 0 else "gpt"
            if speaker != expected:
                raise RecordError(f"{at}: expected 'from': {expected!r}, got {speaker!r}")
            turns.append(Turn(speaker, require_field(raw, "value", str, at)))
        if len(turns) < 2 or len(turns) % 2:
            raise RecordError(
                f"{where}: 'conversations' must hold human/gpt pairs, got {len(turns)} turns"
            )
        return cls(
            id=str(sample_id),
            conversations=tuple(turns),
            image=optional_field(data, "image", str, where),
            infusion=optional_field(data, "stic_infusion", dict, where),
        )

    def exchanges(self) -> list[tuple[str, str]]:
        """(human text, gpt text) per exchange, in order."""
        turns = self.conversations
        return [(turns[i].value, turns[i + 1].value) for i in range(0, len(turns), 2)]


@dataclass(frozen=True)
class EvalItem:
    """A VQA question: JSONL ``{"id", "image", "question", "answer", "choices"?}``."""

    id: str
    image: str
    question: str
    answer: str
    choices: tuple[str, ...] | None = None

    @classmethod
    def from_dict(cls, data: dict, where: str = "item") -> EvalItem:
        choices = optional_field(data, "choices", list, where)
        if choices is not None and not all(isinstance(c, str) for c in choices):
            raise RecordError(f"{where}: field 'choices' must be a list of strings")
        return cls(
            id=str(require_field(data, "id", (str, int), where)),
            image=require_field(data, "image", str, where),
            question=require_field(data, "question", str, where),
            answer=str(require_field(data, "answer", (str, int, float), where)),
            choices=tuple(choices) if choices else None,
        )


@dataclass(frozen=True)
class EvalResult:
    """One scored answer; ``description`` is set under describe-and-respond."""

    id: str
    question: str
    answer: str
    prediction: str
    correct: bool
    description: str | None = None

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        if self.description is None:
            del out["description"]
        return out


def _unique(records: list, path: str | Path, where) -> list:
    seen: set[str] = set()
    for index, record in enumerate(records):
        if record.id in seen:
            raise RecordError(f"{where(index)}: duplicate id {record.id!r}")
        seen.add(record.id)
    if not records:
        raise RecordError(f"{path}: no records")
    return records


def read_pairs(path: str | Path) -> list[PairRecord]:
    """Pair records of a JSONL file; a bad line raises :class:`RecordError` naming it."""
    rows = read_jsonl_numbered(path, strict=True)
    pairs = [PairRecord.from_dict(row, where=f"{path}:{n}") for n, row in rows]
    return _unique(pairs, path, lambda i: f"{path}:{rows[i][0]}")


def read_instruct(path: str | Path) -> list[InstructSample]:
    """LLaVA-format samples of a JSON list; a bad sample raises :class:`RecordError` naming its index."""
    data = read_json(path)
    if not isinstance(data, list):
        raise RecordError(f"{path}: expected a JSON list of samples, got {type(data).__name__}")
    samples = [InstructSample.from_dict(row, where=f"{path}[{i}]") for i, row in enumerate(data)]
    return _unique(samples, path, lambda i: f"{path}[{i}]")


def read_eval_items(path: str | Path) -> list[EvalItem]:
    """VQA items of a JSONL file; a bad line raises :class:`RecordError` naming it."""
    rows = read_jsonl_numbered(path, strict=True)
    items = [EvalItem.from_dict(row, where=f"{path}:{n}") for n, row in rows]
    return _unique(items, path, lambda i: f"{path}:{rows[i][0]}")
