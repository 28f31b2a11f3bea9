"""Tests for stic.runtime.manifests: where manifests live, and whether a stage is new, resumed or done."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from stic.config import PairsConfig, config_hash, to_dict
from stic.runtime.files import read_json
from stic.runtime.manifests import (
    StageConflict,
    UnsafeOutput,
    check_output_location,
    library_versions,
    manifest_path,
    partial_path,
    read_manifest,
    remove_output,
    stage_status,
    write_manifest,
)


def _pairs_config(out: Path, **overrides) -> PairsConfig:
    # Built directly (not validated), so one config class can stand for a file or folder output.
    return PairsConfig(**{"model": "m", "images": "imgs", "out": str(out), **overrides})


def test_manifest_path_beside_a_file_output(tmp_path):
    assert manifest_path(tmp_path / "pairs.jsonl") == tmp_path / "pairs.jsonl.manifest.json"
    assert manifest_path(str(tmp_path / "r.json")) == tmp_path / "r.json.manifest.json"


def test_manifest_path_inside_a_folder_output(tmp_path):
    assert manifest_path(tmp_path / "dpo") == tmp_path / "dpo" / "stic_manifest.json"
    # A dotted folder name that is not a stage file suffix is still a folder.
    assert manifest_path(tmp_path / "run.v2") == tmp_path / "run.v2" / "stic_manifest.json"


def test_status_new_without_manifest(tmp_path):
    out = tmp_path / "pairs.jsonl"
    assert stage_status(out, "pairs", _pairs_config(out)) == "new"
    assert read_manifest(out) is None


def test_status_resume_then_complete(tmp_path):
    out = tmp_path / "pairs.jsonl"
    config = _pairs_config(out)
    write_manifest(out, "pairs", config, "running")
    assert stage_status(out, "pairs", config) == "resume"
    write_manifest(out, "pairs", config, "complete", summary={"pairs": 3})
    assert stage_status(out, "pairs", config) == "complete"


def test_runtime_fields_do_not_stop_a_resume(tmp_path):
    out = tmp_path / "pairs.jsonl"
    write_manifest(out, "pairs", _pairs_config(out), "running")
    other_batch = _pairs_config(out, batch_size=2, limit=5, device="cpu")
    assert stage_status(out, "pairs", other_batch) == "resume"


def test_manifest_contents(tmp_path):
    out = tmp_path / "pairs.jsonl"
    config = _pairs_config(out)
    write_manifest(out, "pairs", config, "complete", summary={"pairs": 3})
    manifest = read_json(manifest_path(out))
    assert manifest["stage"] == "pairs"
    assert manifest["status"] == "complete"
    # Paths are recorded absolute and resolved: the same run from another directory matches.
    # ``adapter`` at its default (None) is not recorded: manifests are as before it existed.
    assert manifest["config"] == {
        **{k: v for k, v in to_dict(config).items() if k != "adapter"},
        "images": str(Path("imgs").resolve()),
        "out": str(out),
    }
    assert manifest["files"] == ["pairs.jsonl", "pairs.jsonl.partial.jsonl"]
    assert manifest["config_hash"] == config_hash(config)
    assert manifest["summary"] == {"pairs": 3}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}", manifest["updated"])
    versions = manifest["versions"]
    assert {"python", "torch", "transformers"} <= set(versions)
    import torch
    import transformers

    # Distribution versions: torch's may lack the local build label (2.4.1 for 2.4.1+cu121).
    assert torch.__version__.split("+")[0] == versions["torch"].split("+")[0]
    assert versions["transformers"] == transformers.__version__
    assert read_manifest(out) == manifest


def test_manifest_summary_defaults_to_empty(tmp_path):
    out = tmp_path / "dpo"
    write_manifest(out, "dpo", _pairs_config(out), "running")
    assert read_manifest(out)["summary"] == {}
    assert (out / "stic_manifest.json").is_file()


def test_library_versions_records_torch_and_transformers():
    versions = library_versions()
    assert "torch" in versions and "transformers" in versions
    assert versions["python"].count(".") == 2


def test_mismatching_hash_raises_mentioning_overwrite(tmp_path):
    out = tmp_path / "pairs.jsonl"
    out.write_text('{"id": "a"}\n', encoding="utf-8")
    old = _pairs_config(out)
    write_manifest(out, "pairs", old, "complete")
    new = _pairs_config(out, temperature=0.7)
    with pytest.raises(StageConflict) as info:
        stage_status(out, "pairs", new)
    message = str(info.value)
    assert "--overwrite" in message
    # It names the key that differs, with both values, and the safe ways forward.
    assert "temperature 0.2 -> 0.7" in message
    assert "another output path" in message and "recorded values" in message
    assert str(out) in message
    # Nothing was deleted.
    assert out.read_text(encoding="utf-8") == '{"id": "a"}\n'
    assert manifest_path(out).exists()


def test_other_stage_at_the_same_path_is_a_conflict(tmp_path):
    out = tmp_path / "out.json"
    out.write_text("[]\n", encoding="utf-8")
    config = _pairs_config(out)
    write_manifest(out, "infuse", config, "complete")
    with pytest.raises(StageConflict, match="holds a infuse output"):
        stage_status(out, "pairs", config)


def test_a_manifest_without_its_output_is_stale_and_ignored(tmp_path):
    """A run that failed before writing anything (e.g. a mistyped model path) must not block
    the corrected rerun with a 'different config' conflict."""
    out = tmp_path / "out.jsonl"
    write_manifest(out, "pairs", _pairs_config(out, seed=1), "running")
    assert stage_status(out, "pairs", _pairs_config(out, seed=2)) == "new"
    assert read_manifest(out) is None


def test_changed_inputs_are_a_conflict_like_a_changed_config(tmp_path):
    from stic.config import EvalConfig

    data = tmp_path / "vqa.jsonl"
    data.write_text(
        '{"id": "1", "image": "a.png", "question": "q", "answer": "a"}\n', encoding="utf-8"
    )
    out = tmp_path / "eval.json"
    out.write_text("{}\n", encoding="utf-8")
    config = EvalConfig(model="m", data=str(data), images=str(tmp_path), out=str(out))
    write_manifest(out, "eval", config, "complete")
    assert stage_status(out, "eval", config) == "complete"
    data.write_text(
        '{"id": "2", "image": "b.png", "question": "q2", "answer": "b"}\n', encoding="utf-8"
    )
    with pytest.raises(StageConflict, match="inputs that have changed"):
        stage_status(out, "eval", config)


def test_overwrite_removes_a_file_output_and_its_manifest(tmp_path):
    out = tmp_path / "pairs.jsonl"
    out.write_text('{"id": "a"}\n', encoding="utf-8")
    neighbour = tmp_path / "other.jsonl"
    neighbour.write_text("keep\n", encoding="utf-8")
    write_manifest(out, "pairs", _pairs_config(out), "running")
    new = _pairs_config(out, seed=1, overwrite=True)
    assert stage_status(out, "pairs", new) == "new"
    assert not out.exists()
    assert not manifest_path(out).exists()
    assert neighbour.read_text(encoding="utf-8") == "keep\n"


def test_overwrite_removes_a_folder_output(tmp_path):
    out = tmp_path / "dpo"
    (out / "checkpoint-1").mkdir(parents=True)
    (out / "checkpoint-1" / "w.bin").write_bytes(b"x")
    (out / "adapter.safetensors").write_bytes(b"w")
    write_manifest(
        out, "dpo", _pairs_config(out), "complete", files=["checkpoint-1", "adapter.safetensors"]
    )
    assert stage_status(out, "dpo", _pairs_config(out, seed=3, overwrite=True)) == "new"
    assert not out.exists()


def test_overwrite_of_a_folder_keeps_what_its_manifest_does_not_list(tmp_path):
    out = tmp_path / "dpo"
    out.mkdir()
    (out / "adapter.safetensors").write_bytes(b"w")
    (out / "my_notes.txt").write_text("mine")
    write_manifest(out, "dpo", _pairs_config(out), "complete", files=["adapter.safetensors"])
    assert stage_status(out, "dpo", _pairs_config(out, seed=3, overwrite=True)) == "new"
    assert sorted(p.name for p in out.iterdir()) == ["my_notes.txt"]
    assert (out / "my_notes.txt").read_text() == "mine"


def test_a_manifest_cannot_make_overwrite_delete_outside_its_output(tmp_path):
    out = tmp_path / "run" / "dpo"
    out.mkdir(parents=True)
    victim = tmp_path / "run" / "keep.txt"
    victim.write_text("mine")
    write_manifest(out, "dpo", _pairs_config(out), "complete", files=["../keep.txt", str(victim)])
    (out / "x").write_text("x")
    remove_output(out)
    assert victim.read_text() == "mine"


def test_a_folder_from_an_older_stic_without_a_file_list_is_not_deleted(tmp_path):
    out = tmp_path / "dpo"
    out.mkdir()
    (out / "adapter.safetensors").write_bytes(b"w")
    write_manifest(out, "dpo", _pairs_config(out), "complete")
    manifest = read_json(manifest_path(out))
    del manifest["files"]
    manifest_path(out).write_text(json.dumps(manifest))
    with pytest.raises(StageConflict, match="did not record its files"):
        stage_status(out, "dpo", _pairs_config(out, seed=3, overwrite=True))
    assert (out / "adapter.safetensors").exists()


def test_an_existing_output_without_a_manifest_is_refused(tmp_path):
    out = tmp_path / "results.json"
    out.write_text("{}")
    with pytest.raises(StageConflict, match="without a stic manifest"):
        stage_status(out, "pairs", _pairs_config(out, overwrite=True))
    assert out.read_text() == "{}"
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "photo.png").write_bytes(b"x")
    with pytest.raises(StageConflict, match="without a stic manifest"):
        stage_status(folder, "dpo", _pairs_config(folder, overwrite=True))
    assert (folder / "photo.png").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert stage_status(empty, "dpo", _pairs_config(empty)) == "new"


@pytest.mark.parametrize("how", ["is", "lies inside", "contains"])
def test_an_output_that_is_in_or_holds_an_input_is_refused(tmp_path, how):
    images = tmp_path / "data" / "images"
    images.mkdir(parents=True)
    out = {"is": images, "lies inside": images / "pairs.jsonl", "contains": tmp_path / "data"}[how]
    with pytest.raises(UnsafeOutput, match=f"{how} the images input"):
        check_output_location(out, {"images": str(images), "model": "org/hub-id"})
    check_output_location(tmp_path / "run" / "pairs.jsonl", {"images": str(images)})


def test_the_same_run_spelled_differently_has_the_same_hash(tmp_path, monkeypatch):
    (tmp_path / "imgs").mkdir()
    monkeypatch.chdir(tmp_path)
    relative = _pairs_config("out/pairs.jsonl", images="imgs/")
    absolute = _pairs_config(str(tmp_path / "out" / "pairs.jsonl"), images=str(tmp_path / "imgs"))
    assert config_hash(relative) == config_hash(absolute)
    monkeypatch.chdir(tmp_path / "imgs")
    dotted = _pairs_config("../out/./pairs.jsonl", images=".")
    assert config_hash(dotted) == config_hash(absolute)


def test_overwrite_keeps_a_matching_output(tmp_path):
    out = tmp_path / "pairs.jsonl"
    out.write_text('{"id": "a"}\n', encoding="utf-8")
    write_manifest(out, "pairs", _pairs_config(out), "running")
    # overwrite is a runtime field: same hash, so the output is resumed, not deleted.
    assert stage_status(out, "pairs", _pairs_config(out, overwrite=True)) == "resume"
    assert out.exists()


def test_remove_output_of_a_missing_folder_is_a_no_op(tmp_path):
    remove_output(tmp_path / "absent")
    remove_output(tmp_path / "absent.jsonl")
    assert list(tmp_path.iterdir()) == []


def test_an_input_rewritten_with_the_same_bytes_is_the_same_input(tmp_path):
    """`make demo` twice rewrites its inputs identically; that must not look like a change."""
    from stic.config import EvalConfig

    data = tmp_path / "vqa.jsonl"
    line = '{"id": "1", "image": "a.png", "question": "q", "answer": "a"}\n'
    data.write_text(line, encoding="utf-8")
    out = tmp_path / "eval.json"
    out.write_text("{}\n", encoding="utf-8")
    config = EvalConfig(model="m", data=str(data), images=str(tmp_path), out=str(out))
    write_manifest(out, "eval", config, "complete")
    data.unlink()
    data.write_text(line, encoding="utf-8")
    assert stage_status(out, "eval", config) == "complete"


def test_a_file_output_named_as_a_file_by_its_tool_is_removed_with_its_own_manifest(tmp_path):
    # ".md" is not a file suffix by itself: the tool says file=True (stic compare's table).
    out = tmp_path / "table.md"
    out.write_text("| a |")
    (tmp_path / "notes.md").write_text("mine")
    write_manifest(out, "compare", _pairs_config(out), "complete", files=[out.name], file=True)
    assert manifest_path(out, True).exists()
    remove_output(out, file=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.md"]


def test_a_file_output_from_an_older_stic_without_a_file_list_removes_its_own_files(tmp_path):
    out = tmp_path / "table.md"
    out.write_text("| a |")
    partial_path(out).write_text("half")
    (tmp_path / "notes.md").write_text("mine")
    write_manifest(out, "compare", _pairs_config(out), "complete", file=True)
    manifest = read_json(manifest_path(out, True))
    del manifest["files"]
    manifest_path(out, True).write_text(json.dumps(manifest))
    remove_output(out, file=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.md"]


def test_the_manifest_given_decides_what_is_removed(tmp_path):
    out = tmp_path / "dpo"
    out.mkdir()
    for name in ("listed_on_disk", "listed_given"):
        (out / name).write_text("x")
    write_manifest(out, "dpo", _pairs_config(out), "complete", files=["listed_on_disk"])
    remove_output(out, manifest={"files": ["listed_given"]})
    assert sorted(p.name for p in out.iterdir()) == ["listed_on_disk"]  # and no manifest


def test_a_given_manifest_removes_listed_files_of_an_absent_output_and_no_manifest_is_fine(
    tmp_path,
):
    # A file output that is gone (a crash after its partial was written): its listed partial
    # still goes, and there is no manifest file to delete.
    out = tmp_path / "answers.jsonl"
    partial = partial_path(out)
    partial.write_text("half")
    remove_output(out, manifest={"files": [out.name, partial.name]})
    assert list(tmp_path.iterdir()) == []


def test_a_bad_name_in_the_list_does_not_stop_the_names_after_it(tmp_path):
    out = tmp_path / "run" / "dpo"
    out.mkdir(parents=True)
    (out / "adapter.safetensors").write_bytes(b"w")
    write_manifest(
        out, "dpo", _pairs_config(out), "complete", files=["../x", "adapter.safetensors"]
    )
    remove_output(out)
    assert not out.exists()


def test_an_output_without_a_manifest_is_refused_naming_it(tmp_path):
    out = tmp_path / "mine.jsonl"
    out.write_text("{}")
    with pytest.raises(StageConflict) as refused:
        remove_output(out)
    assert str(refused.value) == f"{out}: no stic manifest, so stic will not delete it"
    folder = tmp_path / "dpo"
    folder.mkdir()
    (folder / "w").write_text("w")
    write_manifest(folder, "dpo", _pairs_config(folder), "complete")
    manifest = read_json(manifest_path(folder))
    del manifest["files"]
    with pytest.raises(StageConflict) as older:
        remove_output(folder, manifest=manifest)
    assert str(older.value) == (
        f"{folder} was written by an older stic that did not record its files, so it is not "
        "deleted: choose another output path, or delete it yourself"
    )
    assert out.read_text() == "{}" and (folder / "w").exists()


def test_a_folder_output_whose_name_has_a_file_suffix_is_removed_as_a_folder(tmp_path):
    out = tmp_path / "adapter.json"  # a folder, as its stage says (file=False)
    out.mkdir()
    (out / "w.safetensors").write_bytes(b"w")
    write_manifest(out, "dpo", _pairs_config(out), "complete", files=["w.safetensors"], file=False)
    remove_output(out, file=False)
    assert not out.exists()
