"""Builders of tiny benchmark files in each benchmark's published schema (hub and original)."""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image


def png_bytes(shade: int = 0) -> bytes:
    """A distinct 8x8 PNG per ``shade``."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (shade % 256, (shade * 7) % 256, 90)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_png(path: Path, shade: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(shade))
    return path


def _dataset(rows: list[dict], image_columns: tuple[str, ...]):
    import datasets

    columns = {key: [row[key] for row in rows] for key in rows[0]}
    for key in image_columns:
        columns[key] = [{"bytes": value, "path": None} for value in columns[key]]
    dataset = datasets.Dataset.from_dict(columns)
    for key in image_columns:
        dataset = dataset.cast_column(key, datasets.Image())
    return dataset


def write_hub_parquet(
    path: Path, rows: list[dict], image_columns: tuple[str, ...] = ("image",)
) -> Path:
    """A hub parquet shard: image columns hold HF Image structs ``{bytes, path}``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _dataset(rows, image_columns).to_parquet(str(path))
    return path


def write_saved_dataset(
    folder: Path, rows: list[dict], split: str, image_columns: tuple[str, ...] = ("image",)
) -> Path:
    """A ``DatasetDict.save_to_disk`` folder holding ``split``."""
    import datasets

    datasets.DatasetDict({split: _dataset(rows, image_columns)}).save_to_disk(str(folder))
    return folder


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


class ScriptedJudgeClient:
    """A judge client that answers each prompt with the next scripted verdict and records what it
    was asked (prompts and parser), for the judged scorers' tests."""

    model = "fake"

    def __init__(self, verdicts):
        self.verdicts = list(verdicts)
        self.asked = []

    def ask(self, prompts, parse):
        self.asked.append((list(prompts), parse))
        return [self.verdicts.pop(0) for _ in prompts]
