"""The demo's and demo-model's folders and `stic run`'s resolved config are outputs like any
stage's: claimed through the one output object, refused when they hold what stic did not write,
and replaced on --overwrite only as far as their manifest lists."""

from __future__ import annotations

import dataclasses
import json
import threading

import pytest
import yaml

from stic.demo import run as demo
from stic.demo.base_model import RECIPE_FILE, BaseModelRecipe, model_output
from stic.pipeline import RESOLVED_CONFIG, run_output
from stic.runtime.manifests import StageConflict, UnsafeOutput, manifest_path, read_manifest
from stic.runtime.output import OutputLocked

SMALL = dataclasses.replace(demo.DemoSettings(), eval_scenes=3, unlabeled=2, stage2_scenes=2)


def _demo_files(out, settings=SMALL):
    with demo.demo_output(out, settings, overwrite=False) as output:
        output.begin()
        files = demo.write_eval_split(output, settings)
        output.write_json({"done": True}, "results.json")
        output.finish({})
    return files


def test_the_demo_lists_every_file_it_generates_in_its_manifest(tmp_path):
    files = _demo_files(tmp_path)
    listed = read_manifest(tmp_path)["files"]
    split = f"data/{SMALL.split}"
    assert set(listed) == {
        f"{split}/images",
        f"{split}/vqa.jsonl",
        f"{split}/{demo.DESCRIBE_PLAIN}.jsonl",
        f"{split}/{demo.DESCRIBE_GOOD}.jsonl",
        "results.json",
    }
    assert files["vqa"].is_file() and any(files["images"].iterdir())


def test_the_demo_refuses_a_folder_that_holds_files_it_did_not_write(tmp_path):
    (tmp_path / "thesis.tex").write_text("mine")
    with pytest.raises(StageConflict, match="without a stic manifest"):
        with demo.demo_output(tmp_path, SMALL, overwrite=False):
            pass
    assert [p.name for p in tmp_path.iterdir()] == ["thesis.tex"]


def test_other_demo_settings_need_overwrite_which_deletes_only_what_was_listed(tmp_path):
    _demo_files(tmp_path)
    mine = tmp_path / "data" / "notes.txt"
    mine.write_text("mine")
    other = dataclasses.replace(SMALL, eval_scenes=4)
    with pytest.raises(StageConflict, match="eval_scenes"):
        with demo.demo_output(tmp_path, other, overwrite=False):
            pass
    assert (tmp_path / "results.json").is_file()
    with demo.demo_output(tmp_path, other, overwrite=True) as output:
        assert output.status == "new"
        assert not (tmp_path / "results.json").exists()
        assert not (tmp_path / "data" / SMALL.split / "images").exists()
    assert mine.read_text() == "mine"  # a file the manifest does not list stays


def test_a_rerun_of_the_same_settings_keeps_listing_what_the_first_run_wrote(tmp_path):
    _demo_files(tmp_path)
    first = set(read_manifest(tmp_path)["files"])
    # --overwrite is how a run goes, not what it makes: the same settings resume.
    with demo.demo_output(tmp_path, SMALL, overwrite=True) as output:
        assert output.status == "complete"
        output.begin(files=output.recorded["files"])
        output.write_text("x\n", "seed0/stic.yaml")
        output.finish({})
    assert set(read_manifest(tmp_path)["files"]) == first | {"seed0/stic.yaml"}


def test_a_demo_output_file_must_stay_inside_the_folder(tmp_path):
    with demo.demo_output(tmp_path, SMALL, overwrite=False) as output:
        for name in ("../x.json", "/tmp/x.json", ""):
            with pytest.raises(ValueError, match="path inside it"):
                output.file(name)


def test_demo_model_replaces_a_folder_an_older_stic_built_and_refuses_any_other(tmp_path):
    recipe = BaseModelRecipe()
    old = tmp_path / "old"
    old.mkdir()
    (old / RECIPE_FILE).write_text("{}")
    (old / "config.json").write_text("{}")
    with model_output(old, recipe, "cpu") as output:
        staged = output.staging()
        (staged / "config.json").write_text('{"new": 1}')
        (staged / RECIPE_FILE).write_text('{"new": 1}')
        output.finish({})
    assert json.loads((old / "config.json").read_text()) == {"new": 1}
    assert read_manifest(old)["stage"] == "demo-model"

    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "config.json").write_text("{}")
    with pytest.raises(StageConflict, match="no stic demo model"):
        with model_output(theirs, recipe, "cpu"):
            pass


def test_stic_run_records_its_resolved_config_through_an_output(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("output_dir: runs\n")
    out = tmp_path / "runs"
    with run_output(config, out) as output:
        output.write_text(yaml.safe_dump({"eval:x": {"model": "m"}}))
        output.finish({"stages": 1})
        # One `stic run` per output folder at a time: a second one refuses at once.
        errors = []

        def second():
            try:
                with run_output(config, out):
                    pass
            except OutputLocked as e:
                errors.append(e)

        thread = threading.Thread(target=second)
        thread.start()
        thread.join()
        assert len(errors) == 1
    manifest = json.loads(manifest_path(out / RESOLVED_CONFIG, True).read_text())
    assert manifest["stage"] == "run" and RESOLVED_CONFIG in manifest["files"]
    # Run again (another config): replaced, as a tool's output is.
    with run_output(tmp_path / "other.yaml", out) as output:
        assert output.status == "new"


def test_stic_run_refuses_to_record_its_config_over_its_own_config(tmp_path):
    out = tmp_path / "runs"
    out.mkdir()
    config = out / RESOLVED_CONFIG
    config.write_text("output_dir: .\n")
    with pytest.raises(UnsafeOutput, match="is the config input"):
        with run_output(config, out):
            pass
