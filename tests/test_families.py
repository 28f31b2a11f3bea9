"""Every family of the support table, end to end: pairs, dpo, infuse, sft, eval, eval --dar and
the preflight, on a tiny model of that family (2 images, a few new tokens, one training step).
The three core families run the stages in tests/test_pipeline.py; here they get the preflight.

The README's support table is rendered from :data:`stic.testing.support_table.SUPPORT`, the list
these tests run; a test checks that the README holds exactly that table.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from stic.data.schemas import PairRecord, read_instruct
from stic.pipeline import run_pipeline
from stic.runtime.files import read_jsonl
from stic.testing import ALL_FAMILIES, FAMILIES, write_pipeline_inputs
from stic.testing.support_table import PIPELINE, SUPPORT, readme_table, render
from stic.tools.preflight import FAIL, run_preflight
from tests import test_pipeline

README = Path(__file__).resolve().parents[1] / "README.md"


def test_support_table_lists_every_buildable_family_once():
    families = [entry.family for entry in SUPPORT]
    assert sorted(families) == sorted(ALL_FAMILIES)
    assert len(set(families)) == len(families)
    assert all(entry.stages == PIPELINE for entry in SUPPORT)


def test_readme_holds_exactly_the_rendered_support_table():
    table = readme_table(README.read_text(encoding="utf-8"))
    assert table is not None, "README.md has no support table markers"
    assert table == render(), "stale README table: run python -m stic.testing.support_table"


def _small_run(root: Path, family: str) -> Path:
    """The pipeline tests' inputs, cut to a few seconds: 2 images, 4-8 new tokens, 1 step."""
    path = write_pipeline_inputs(root, num_images=2, seed=0, family=family)
    config = yaml.safe_load(path.read_text())
    config["pairs"].update(max_new_tokens=4, batch_size=2)
    config["infuse"].update(max_new_tokens=4, batch_size=2)
    for stage in ("dpo", "sft"):
        config[stage].update(max_steps=1, save_steps=1, batch_size=2)
    # The stage-1 eval ("base") adds nothing a family could fail at that "stic" does not.
    config["eval"] = [entry for entry in config["eval"] if entry["name"] != "base"]
    for entry in config["eval"]:
        entry.update(max_new_tokens=4, batch_size=4)
        if entry.get("dar"):
            entry["dar_max_new_tokens"] = 6
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_core_families_pass_the_preflight(family, tiny_model_factory, image_dir):
    """LLaVA-1.5, LLaVA-NeXT and Qwen2-VL run every stage in tests/test_pipeline.py (with more
    images and steps); here only the preflight is added."""
    assert family in test_pipeline.FAMILIES
    report = run_preflight(str(tiny_model_factory(family)), images=str(image_dir))
    failed = [row for row in report if row.status == FAIL]
    assert not failed, "\n".join(row.line() for row in failed)


@pytest.mark.slow
@pytest.mark.parametrize(
    "entry",
    [entry for entry in SUPPORT if entry.family not in FAMILIES],
    ids=[entry.family for entry in SUPPORT if entry.family not in FAMILIES],
)
def test_family_runs_every_stage(entry, tmp_path):
    missing = entry.missing()
    # make test installs every family's extra packages (the test extra): none is skipped.
    assert not missing, f"{entry.family} needs {', '.join(missing)}: pip install -e '.[test]'"
    config_path = _small_run(tmp_path, entry.family)
    summaries = {planned.name: summary for planned, summary in run_pipeline(config_path)}
    run = tmp_path / "run"
    passed = set()

    pairs = [PairRecord.from_dict(r) for r in read_jsonl(run / "pairs" / "pairs.jsonl")]
    assert len(pairs) == 2 and not summaries["pairs"].bad_items
    passed.add("pairs")

    for stage in ("dpo", "sft"):
        log = json.loads((run / stage / "train_log.json").read_text())
        losses = [e["loss"] for e in log if "loss" in e]
        assert losses and all(loss == loss for loss in losses), (stage, log)  # finite, not NaN
        assert (run / stage / "adapter_model.safetensors").is_file()
        passed.add(stage)

    samples = read_instruct(run / "infuse" / "infused.json")
    assert len(samples) == 2
    assert all(
        s.conversations[0].value.startswith("<image>\nImage description:\n") for s in samples
    )
    passed.add("infuse")

    for name, stage in (("stic", "eval"), ("stic_dar", "eval --dar")):
        results = json.loads((run / "eval" / f"{name}.json").read_text())
        assert results["n"] == len(read_jsonl(tmp_path / "vqa.jsonl"))
        assert all(("description" in r) is (name == "stic_dar") for r in results["items"])
        passed.add(stage)

    report = run_preflight(str(tmp_path / "model"), images=str(tmp_path / "images"))
    failed = [row for row in report if row.status == FAIL]
    assert not failed, "\n".join(row.line() for row in failed)
    passed.add("preflight")

    assert passed == set(entry.stages)
