"""`stic run CONFIG.yaml` end to end on each tiny model family: the "done means" of the project.

pairs -> dpo -> infuse -> sft -> eval (base, plain, describe-and-respond), every output checked,
then a rerun that must skip every stage and touch no output.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import yaml

from stic.cli import main
from stic.data.schemas import PairRecord, read_instruct
from stic.runtime.files import read_jsonl
from stic.runtime.manifests import manifest_path, read_manifest
from stic.testing import write_pipeline_inputs

FAMILIES = ["llava", "llava_next", "qwen2_vl"]
STAGE_OUTPUTS = {
    "pairs": "pairs/pairs.jsonl",
    "dpo": "dpo",
    "infuse": "infuse/infused.json",
    "sft": "sft",
    "eval:base": "eval/base.json",
    "eval:stic": "eval/stic.json",
    "eval:stic_dar": "eval/stic_dar.json",
}


def _run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module", params=FAMILIES)
def pipeline_run(request, tmp_path_factory):
    """One `stic run` per family on the demo's inputs (4 images): (family, root, config, stdout)."""
    family = request.param
    root = tmp_path_factory.mktemp(f"run_{family}")
    config_path = write_pipeline_inputs(root, num_images=4, seed=0, family=family)
    code, stdout, stderr = _run_cli(["run", str(config_path)])
    assert code == 0, stderr[-3000:]
    return family, root, config_path, stdout


def _load_peft(model_dir: Path, adapter: Path):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    base = AutoModelForImageTextToText.from_pretrained(model_dir)
    return PeftModel.from_pretrained(base, adapter)


@pytest.mark.slow
def test_pairs_records_are_valid(pipeline_run):
    _, root, _, stdout = pipeline_run
    rows = read_jsonl(root / "run" / "pairs" / "pairs.jsonl")
    pairs = [PairRecord.from_dict(row) for row in rows]
    assert sorted(p.id for p in pairs) == sorted(p.name for p in (root / "images").iterdir())
    assert {p.rejected_kind for p in pairs} <= {"bad_prompt", "corrupt_lowres", "corrupt_color"}
    assert "pairs (pairs) -> " in stdout


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["dpo", "sft"])
def test_adapters_load_and_are_trained(pipeline_run, stage):
    _, root, _, _ = pipeline_run
    model = _load_peft(root / "model", root / "run" / stage)
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)
    names = [n for n, _ in model.named_parameters() if "lora_" in n]
    assert all("language_model" in n for n in names)
    log = json.loads((root / "run" / stage / "train_log.json").read_text())
    assert [e["step"] for e in log if "loss" in e] == [1, 2, 3, 4]


@pytest.mark.slow
def test_stages_are_wired_together(pipeline_run):
    _, root, _, _ = pipeline_run
    run = root / "run"
    assert read_manifest(run / "dpo")["config"]["pairs"] == str(run / "pairs" / "pairs.jsonl")
    assert read_manifest(run / "infuse" / "infused.json")["config"]["adapter"] == str(run / "dpo")
    sft = read_manifest(run / "sft")["config"]
    assert sft["adapter"] == str(run / "dpo")
    assert sft["data"] == str(run / "infuse" / "infused.json")
    assert read_manifest(run / "eval" / "base.json")["config"]["adapter"] is None
    assert read_manifest(run / "eval" / "stic.json")["config"]["adapter"] == str(run / "sft")


@pytest.mark.slow
def test_infused_data_is_valid(pipeline_run):
    _, root, _, _ = pipeline_run
    original = json.loads((root / "instruct.json").read_text())
    samples = read_instruct(root / "run" / "infuse" / "infused.json")
    assert [s.id for s in samples] == [s["id"] for s in original]
    for sample, raw in zip(samples, original, strict=True):
        first = sample.conversations[0].value
        assert first.startswith("<image>\nImage description:\n")
        assert first.endswith("\n\n" + raw["conversations"][0]["value"].removeprefix("<image>\n"))
        assert [t.to_dict() for t in sample.conversations[1:]] == raw["conversations"][1:]
        assert sample.infusion is not None


@pytest.mark.slow
def test_eval_results_are_valid(pipeline_run):
    _, root, _, _ = pipeline_run
    n_items = len(read_jsonl(root / "vqa.jsonl"))
    for name in ("base", "stic", "stic_dar"):
        results = json.loads((root / "run" / "eval" / f"{name}.json").read_text())
        assert 0.0 <= results["accuracy"] <= 1.0
        assert results["n"] == n_items == len(results["items"])
        assert results["correct"] == sum(r["correct"] for r in results["items"])
        assert results["accuracy"] == pytest.approx(results["correct"] / results["n"])
        assert results["dar"] is (name == "stic_dar")
        assert all(("description" in r) is (name == "stic_dar") for r in results["items"])


@pytest.mark.slow
def test_every_stage_has_a_complete_manifest_matching_the_resolved_config(pipeline_run):
    _, root, _, _ = pipeline_run
    resolved = yaml.safe_load((root / "run" / "resolved_config.yaml").read_text())
    assert set(resolved) == set(STAGE_OUTPUTS)
    for key, relative in STAGE_OUTPUTS.items():
        manifest = read_manifest(root / "run" / relative)
        assert manifest is not None, key
        assert manifest["status"] == "complete", key
        assert manifest["stage"] == key.split(":")[0]
        assert manifest["config"] == resolved[key], key
        assert manifest["config"]["out"] == str(root / "run" / relative)
        assert manifest["versions"]["torch"] and manifest["versions"]["transformers"]
        assert manifest["config_hash"]


@pytest.mark.slow
def test_rerun_skips_every_stage_and_touches_nothing(pipeline_run):
    _, root, config_path, _ = pipeline_run
    run = root / "run"
    watched = [run / "pairs" / "pairs.jsonl"]
    for adapter in ("dpo", "sft"):
        watched += [p for p in (run / adapter).iterdir() if p.is_file()]
    watched += [run / "infuse" / "infused.json"]
    watched += list((run / "eval").glob("*.json"))
    watched += [manifest_path(run / relative) for relative in STAGE_OUTPUTS.values()]
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in watched}

    code, stdout, stderr = _run_cli(["run", str(config_path)])
    assert code == 0, stderr[-3000:]
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in watched}
    changed = [str(p) for p in watched if before[p] != after[p]]
    assert not changed
    lines = {line.split(" -> ")[0]: line for line in stdout.splitlines() if " -> " in line}
    assert lines.pop("report").endswith("report.html")  # the run's page is drawn again
    assert all('"up_to_date": true' in line for line in lines.values()), lines
    assert '"made": 0' in lines["pairs (pairs)"]
    assert not (run / "dpo" / "checkpoints").exists()


def test_unknown_key_in_the_run_config_exits_2_naming_it(tmp_path):
    config = {
        "model": str(tmp_path / "model"),
        "output_dir": str(tmp_path / "run"),
        "pairs": {"images": str(tmp_path), "max_new_tokenz": 8},
    }
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    code, _, stderr = _run_cli(["run", str(path)])
    assert code == 2
    assert "pairs.max_new_tokenz" in stderr and "unknown key" in stderr
    assert not (tmp_path / "run").exists()


def test_unknown_top_level_key_exits_2(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: m\noutput_dir: out\nlearning_rate: 0.1\npairs: {images: x}\n")
    code, _, stderr = _run_cli(["run", str(path)])
    assert code == 2
    assert "learning_rate: unknown key" in stderr


@pytest.mark.slow
def test_retraining_an_upstream_stage_reruns_the_stages_that_read_it(tmp_path):
    """Eval results must come from the adapter that is on disk now: when the SFT stage is
    redone (its config changed, with overwrite), the evals that read its adapter are redone too,
    not skipped as 'complete' on their own unchanged config."""
    config_path = write_pipeline_inputs(tmp_path, num_images=4, seed=0, family="llava")
    code, _, stderr = _run_cli(["run", str(config_path)])
    assert code == 0, stderr[-3000:]
    run = tmp_path / "run"
    adapter_before = (run / "sft" / "adapter_model.safetensors").read_bytes()
    evaluated_before = read_manifest(run / "eval" / "stic.json")["updated"]
    eval_mtime = (run / "eval" / "stic.json").stat().st_mtime_ns

    config = yaml.safe_load(config_path.read_text())
    config["overwrite"] = True
    config["sft"]["lr"] = 3e-3
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    code, _, stderr = _run_cli(["run", str(config_path)])
    assert code == 0, stderr[-3000:]
    assert (run / "sft" / "adapter_model.safetensors").read_bytes() != adapter_before
    assert read_manifest(run / "sft")["config"]["lr"] == 3e-3
    # The stage-1 eval is unaffected; the evals of the new final adapter are not stale.
    assert (run / "eval" / "stic.json").stat().st_mtime_ns != eval_mtime, (
        f"eval/stic.json still holds results of the old SFT adapter (evaluated {evaluated_before})"
    )
