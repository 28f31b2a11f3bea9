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


@pytest.fixture
def recorded_processor(monkeypatch):
    """``load_processor`` that records what it was asked for (model, trust_remote_code)."""
    calls = []

    def load(model, trust=False):
        calls.append((model, trust))
        return FakeProcessor(list(PROCESSOR_FILES))

    monkeypatch.setattr(stic.modeling.models, "load_processor", load)
    return calls


def test_the_processor_is_the_bases_and_trust_remote_code_is_passed_on(setup, recorded_processor):
    adapter, base, out, _ = setup
    assert export(adapter, out) == 0
    assert export(adapter, out.parent / "trusted", "--trust-remote-code") == 0
    assert recorded_processor == [(str(base), False), (str(base), True)]


def test_a_pickled_adapter_is_refused_unless_allowed_and_then_written_as_safetensors(setup, capsys):
    import torch
    from safetensors.torch import load_file

    adapter, _, out, _ = setup
    (adapter / "adapter_model.safetensors").unlink()
    # A transposed view: not contiguous, as a tensor PEFT saved after a merge step can be.
    tensors = {
        "base_model.model.q.lora_A.weight": torch.arange(6.0).reshape(2, 3).t(),
        "base_model.model.q.lora_B.weight": torch.full((3, 1), 0.5),
    }
    torch.save(tensors, adapter / "adapter_model.bin")
    assert export(adapter, out) == 1
    error = capsys.readouterr().err
    assert "adapter_model.bin" in error and "pickle" in error
    assert not out.exists()

    assert export(adapter, out, "--allow-pickle") == 0
    written = load_file(out / "adapter_model.safetensors")
    assert written.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert torch.equal(written[name], tensor)
    assert listed(out) == ADAPTER_FILES | PROCESSOR_FILES  # no .bin in the export
    assert not (out / "adapter_model.bin").exists()


def test_the_manifest_and_summary_record_what_the_export_was_made_from(setup):
    from stic.tools.export import ExportConfig, run_export

    adapter, base, out, _ = setup
    other = base.parent / "other_base"  # --model: another folder of the same (unknown) type
    other.mkdir()
    (other / "config.json").write_text("{}")
    config = ExportConfig(adapter=str(adapter), out=str(out), model=str(other))
    summary = run_export(config).to_dict()
    manifest = read_manifest(out)
    assert manifest["stage"] == "export"
    assert manifest["config"]["model"] == str(other)
    assert (summary["stage"], summary["out"], summary["made"]) == ("export", str(out), 1)
    assert summary["details"] == {
        "merged": False,
        "base_model": str(other),
        "adapter_base_model": str(base),  # what the adapter was trained on, recorded
        "files": sorted(ADAPTER_FILES | PROCESSOR_FILES),
    }
    assert manifest["summary"]["details"] == summary["details"]
    # The base the adapter names is taken when there is no --model, and recorded as the model.
    default = run_export(ExportConfig(adapter=str(adapter), out=str(out.parent / "d"))).to_dict()
    assert read_manifest(out.parent / "d")["config"]["model"] == str(base)
    assert default["details"]["base_model"] == default["details"]["adapter_base_model"]

    again = run_export(config).to_dict()  # up to date: the first export's details, nothing made
    assert again["up_to_date"] is True and again["made"] == 0
    assert again["details"] == summary["details"]


def test_merge_builds_the_merged_checkpoint_from_the_base(setup, monkeypatch):
    import stic.tools.export as export_module

    adapter, base, out, _ = setup
    merges = []

    def merged(config, base_model, folder):
        merges.append(base_model)
        (folder / "model.safetensors").write_bytes(b"merged")
        (folder / "config.json").write_text("{}")
        return {"merged_modules": 7}

    monkeypatch.setattr(export_module, "export_merged", merged)
    assert export(adapter, out, "--merge") == 0
    assert merges == [str(base)]
    assert listed(out) == {"model.safetensors", "config.json"}
    details = read_manifest(out)["summary"]["details"]
    assert details["merged"] is True and details["merged_modules"] == 7


def test_the_refusal_names_the_first_three_files_in_the_way_and_what_to_do(setup, capsys):
    adapter, _, out, names = setup
    assert export(adapter, out) == 0
    theirs = ["a_theirs.json", "b_theirs.json", "c_theirs.json", "d_theirs.json"]
    names.extend(theirs)
    for name in theirs:
        (out / name).write_text("the user's")
    assert export(adapter, out, "--dtype", "float16", "--overwrite") == 1
    error = capsys.readouterr().err
    assert (
        f"{out} holds a_theirs.json, b_theirs.json, c_theirs.json, which stic did not write "
        "there: move them away, or choose another output path"
    ) in error
    assert "d_theirs.json" not in error


@pytest.mark.parametrize("missing", ["summary", "details"])
def test_an_up_to_date_export_whose_manifest_has_no_details_reports_none(setup, missing):
    # A complete manifest from an older stic (or edited by hand) without the summary's details.
    from stic.runtime.files import atomic_write_json, read_json
    from stic.runtime.manifests import manifest_path
    from stic.tools.export import ExportConfig, run_export

    adapter, _, out, _ = setup
    config = ExportConfig(adapter=str(adapter), out=str(out))
    run_export(config)
    manifest = read_json(manifest_path(out))
    if missing == "summary":
        del manifest["summary"]
    else:
        del manifest["summary"]["details"]
    atomic_write_json(manifest_path(out), manifest)
    again = run_export(config)
    assert again.up_to_date and again.details == {}
