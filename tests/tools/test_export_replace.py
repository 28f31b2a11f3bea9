"""`stic export` into an old export folder replaces only what the old manifest lists (issue 22):
files the manifest does not list are kept beside the new export, one that the new export would
overwrite is refused, and a listed file the new export no longer writes is removed. Fast: the
processor is a fake that writes two files, the adapter two files of bytes (no model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import stic.modeling.models
from stic.runtime.manifests import read_manifest
from stic.tools.export import main

ADAPTER_FILES = {"adapter_config.json", "adapter_model.safetensors"}
PROCESSOR_FILES = {"tokenizer.json", "preprocessor_config.json"}


class FakeProcessor:
    """What ``load_processor(...).save_pretrained(folder)`` leaves: two files naming the call."""

    calls = 0

    def __init__(self, names):
        self.names = names

    def save_pretrained(self, folder):
        FakeProcessor.calls += 1
        for name in self.names:
            (Path(folder) / name).write_text(f"{name} #{FakeProcessor.calls}")


@pytest.fixture
def setup(tmp_path, monkeypatch):
    FakeProcessor.calls = 0
    names = list(PROCESSOR_FILES)
    monkeypatch.setattr(
        stic.modeling.models, "load_processor", lambda model, trust=False: FakeProcessor(names)
    )
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base)}))
    (adapter / "adapter_model.safetensors").write_bytes(b"weights v1")
    return adapter, base, tmp_path / "export", names


def export(adapter: Path, out: Path, *extra: str) -> int:
    return main(["--adapter", str(adapter), "--out", str(out), *extra])


def listed(out: Path) -> set[str]:
    return set(read_manifest(out)["files"])


def test_a_new_export_lists_every_file_it_wrote_and_is_then_up_to_date(setup, capsys):
    adapter, base, out, _ = setup
    assert export(adapter, out) == 0
    files = {p.name for p in out.iterdir()}
    assert files == ADAPTER_FILES | PROCESSOR_FILES | {"stic_manifest.json"}
    assert listed(out) == ADAPTER_FILES | PROCESSOR_FILES
    assert read_manifest(out)["summary"]["details"]["files"] == sorted(
        ADAPTER_FILES | PROCESSOR_FILES
    )
    assert read_manifest(out)["summary"]["details"]["base_model"] == str(base)
    assert (out / "adapter_model.safetensors").read_bytes() == b"weights v1"
    assert export(adapter, out) == 0  # same settings: nothing redone
    assert FakeProcessor.calls == 1
    assert "up to date" in capsys.readouterr().out


def test_overwrite_replaces_the_listed_files_and_keeps_the_users_own(setup, capsys):
    adapter, _, out, _ = setup
    assert export(adapter, out) == 0
    (out / "notes.txt").write_text("my notes")  # the user's, not in the manifest
    (out / "eval").mkdir()
    (out / "eval" / "scores.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"weights v2")

    # Other settings without --overwrite: refused, nothing touched.
    assert export(adapter, out, "--dtype", "float16") == 1
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "adapter_model.safetensors").read_bytes() == b"weights v1"
    assert (out / "tokenizer.json").read_text() == "tokenizer.json #1"

    assert export(adapter, out, "--dtype", "float16", "--overwrite") == 0
    assert (out / "adapter_model.safetensors").read_bytes() == b"weights v2"
    assert (out / "tokenizer.json").read_text() == "tokenizer.json #2"
    assert (out / "notes.txt").read_text() == "my notes"
    assert (out / "eval" / "scores.json").read_text() == "{}"
    assert listed(out) == ADAPTER_FILES | PROCESSOR_FILES  # the user's files are not claimed
    assert read_manifest(out)["config"]["dtype"] == "float16"
    assert not list(out.parent.glob(".export.*"))  # no staging folder left


def test_a_listed_file_the_new_export_does_not_write_is_removed(setup):
    adapter, _, out, names = setup
    names.append("special_tokens_map.json")  # the old processor wrote one more file
    assert export(adapter, out) == 0
    assert "special_tokens_map.json" in listed(out)
    (out / "notes.txt").write_text("my notes")
    names.remove("special_tokens_map.json")
    assert export(adapter, out, "--dtype", "float16", "--overwrite") == 0
    assert not (out / "special_tokens_map.json").exists()
    assert (out / "notes.txt").read_text() == "my notes"
    assert {p.name for p in out.iterdir()} == (
        ADAPTER_FILES | PROCESSOR_FILES | {"stic_manifest.json", "notes.txt"}
    )


def test_an_unlisted_file_the_new_export_would_overwrite_is_refused_and_kept(setup, capsys):
    adapter, _, out, names = setup
    assert export(adapter, out) == 0
    names.append("chat_template.jinja")  # the new export writes a file the user put there
    (out / "chat_template.jinja").write_text("the user's own template")
    assert export(adapter, out, "--dtype", "float16", "--overwrite") == 1
    error = capsys.readouterr().err
    assert "chat_template.jinja" in error and "stic did not write" in error
    assert len(error.strip().splitlines()) == 1
    assert (out / "chat_template.jinja").read_text() == "the user's own template"
    assert not list(out.parent.glob(".export.*"))  # the staged copy is not left behind
    # --overwrite deleted the old export's listed files, as asked; only the user's file is left.
    assert [p.name for p in out.iterdir()] == ["chat_template.jinja"]


def test_an_empty_folder_is_filled_and_a_foreign_one_refused(setup, capsys):
    adapter, _, out, _ = setup
    out.mkdir()
    assert export(adapter, out) == 0
    assert listed(out) == ADAPTER_FILES | PROCESSOR_FILES
    theirs = out.parent / "theirs"
    theirs.mkdir()
    (theirs / "tokenizer.json").write_text("theirs")
    assert export(adapter, theirs) == 1
    assert "without a stic manifest" in capsys.readouterr().err
    assert [p.name for p in theirs.iterdir()] == ["tokenizer.json"]
    assert (theirs / "tokenizer.json").read_text() == "theirs"
