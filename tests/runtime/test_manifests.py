"""Tests for stic.runtime.manifests: where manifests live, and whether a stage is new, resumed or done."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from stic.config import PairsConfig, build, config_hash, to_dict
from stic.runtime.files import read_json
from stic.runtime.manifests import (
    StageConflict,
    library_versions,
    manifest_path,
    read_manifest,
    remove_output,
    stage_status,
    write_manifest,
)


def _pairs_config(out: Path, **overrides) -> PairsConfig:
    return build(PairsConfig, {"model": "m", "images": "imgs", "out": str(out), **overrides})


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
    assert manifest["config"] == to_dict(config)
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
    assert config_hash(old) in message and config_hash(new) in message
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
    write_manifest(out, "dpo", _pairs_config(out), "complete")
    assert stage_status(out, "dpo", _pairs_config(out, seed=3, overwrite=True)) == "new"
    assert not out.exists()


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
