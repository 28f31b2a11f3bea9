"""`stic run` with ``rounds: 3`` on the tiny model, killed in round 2, then in round 3, and rerun:
the rounds resume, a round is chosen on a validation entry, and the test entries evaluate that
round's weights."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import stic.stages.rounds
from stic.cli import main
from stic.pipeline import run_pipeline
from stic.runtime.files import read_jsonl
from stic.runtime.manifests import input_identity, read_manifest
from stic.stages.rounds import choose_round
from stic.testing import slowed_training_cli, write_pipeline_inputs

# The run with each training batch slowed down, so that the test can kill it in round 2's DPO
# after its first checkpoint (as tests/stages/test_dpo.py kills one stage).
_SLOW_RUN = slowed_training_cli(0.3)
NUM_IMAGES = 12


def _rounds_config(root: Path) -> Path:
    path = write_pipeline_inputs(root, num_images=NUM_IMAGES, seed=0, family="llava")
    config = yaml.safe_load(path.read_text())
    # Validation questions in a file of their own: no test entry reads it.
    test_rows = list(read_jsonl(root / "vqa.jsonl"))
    val_rows = [{**row, "id": f"val-{row['id']}"} for row in test_rows]
    (root / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in val_rows))
    evals = [e for e in config["eval"] if e["name"] in ("base", "stic")]
    evals.append({**evals[1], "name": "stage1", "at": "stage1"})
    evals.append({**evals[1], "name": "val", "data": str(root / "val.jsonl")})
    config["eval"] = evals
    config["rounds"] = 3
    config["select"] = {"entry": "val", "metric": "accuracy", "mode": "max"}
    config["dpo"]["lora_dropout"] = 0.0
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _checkpoint(run: Path, number: int) -> Path:
    return run / f"round_{number}" / "dpo" / "checkpoints" / "checkpoint-2" / "trainer_state.json"


def _run_until(config_path: Path, marker: Path, log_path: Path) -> str:
    """``stic run CONFIG`` (training slowed down) in a child process, SIGKILLed as soon as
    ``marker`` exists; returns the end of its log."""
    with open(log_path, "w") as log_file:
        child = subprocess.Popen(
            [sys.executable, "-c", _SLOW_RUN, "run", str(config_path)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 600
    try:
        while not marker.exists():
            assert child.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, f"no {marker} within 600 s"
            time.sleep(0.02)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    context = log_path.read_text()[-3000:]
    assert child.returncode == -signal.SIGKILL, context
    return context


@pytest.mark.slow
def test_three_rounds_resume_after_a_kill_and_the_chosen_round_is_what_is_evaluated(
    tmp_path, monkeypatch
):
    config_path = _rounds_config(tmp_path)
    run = tmp_path / "run"
    # Killed in round 2's DPO after its second checkpoint ...
    context = _run_until(config_path, _checkpoint(run, 2), tmp_path / "killed_run_1.log")
    assert read_manifest(run / "round_1" / "dpo")["status"] == "complete", context
    assert read_manifest(run / "round_2" / "dpo")["status"] == "running", context
    assert not (run / "rounds.json").exists() and not (run / "round_3").exists(), context
    round_1_weights = run / "round_1" / "dpo" / "adapter_model.safetensors"
    round_1_mtime = round_1_weights.stat().st_mtime_ns

    # The random tiny model answers every validation question wrong in every round, which
    # would tie the rounds (round 1 wins ties). A bonus read into round 2's value makes the
    # choice one that only the selection can make: the weights below must follow it.
    real_value = stic.stages.rounds.metric_value

    def round_2_best(result, metric, where):
        return real_value(result, metric, where) + (0.5 if where.startswith("round 2:") else 0)

    monkeypatch.setattr(stic.stages.rounds, "metric_value", round_2_best)

    # ... then the same command, killed again in round 3's DPO (round 2 resumed and finished) ...
    context = _run_until(config_path, _checkpoint(run, 3), tmp_path / "killed_run_2.log")
    assert read_manifest(run / "round_2" / "dpo")["status"] == "complete", context
    assert read_manifest(run / "round_3" / "dpo")["status"] == "running", context
    assert not (run / "rounds.json").exists(), context

    # ... and once more to the end: rounds 1 and 2 are skipped, round 3 resumes its checkpoint.
    assert main(["run", str(config_path)]) == 0
    assert round_1_weights.stat().st_mtime_ns == round_1_mtime
    for number in (2, 3):
        resumed = read_manifest(run / f"round_{number}" / "dpo")
        assert resumed["status"] == "complete"
        assert "checkpoint-" in (resumed["summary"]["details"]["resumed_from"] or ""), resumed
        assert resumed["summary"]["details"]["global_step"] == 4

    # Each round: fresh images (shard r-1 of 3), pairs made with the previous round's adapter,
    # DPO continuing it against itself as reference.
    ids = []
    for number in (1, 2, 3):
        pairs = list(read_jsonl(run / f"round_{number}" / "pairs.jsonl"))
        assert pairs, f"round {number} has no pairs"
        ids.append({p["id"] for p in pairs})
        previous = None if number == 1 else str(run / f"round_{number - 1}" / "dpo")
        assert {p.get("adapter") for p in pairs} == {previous}
        dpo = read_manifest(run / f"round_{number}" / "dpo")
        assert dpo["config"].get("adapter") == (None if previous is None else previous)
        expected = "start adapter" if previous else None
        assert dpo["summary"]["details"].get("reference_model") == expected
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert len(ids[0] | ids[1] | ids[2]) == NUM_IMAGES

    # The choice: the best validation accuracy (ties: the earliest), recorded with its reason.
    table = json.loads((run / "rounds.json").read_text())
    values = [row["accuracy"] for row in table["table"]]
    for number, value in enumerate(values, start=1):
        result = json.loads((run / f"round_{number}" / "eval" / "val.json").read_text())
        assert result["accuracy"] + (0.5 if number == 2 else 0) == value
        assert result["adapter"] == str(run / f"round_{number}" / "dpo")
    chosen = table["chosen"]
    assert chosen == choose_round(values, "max") == 2
    assert (run / "rounds.md").read_text().count(f"**{chosen}**") == 1

    # The chosen round's weights are run/dpo's, which the other rounds' are not ...
    weights = {
        n: (run / f"round_{n}" / "dpo" / "adapter_model.safetensors").read_bytes()
        for n in (1, 2, 3)
    }
    assert len(set(weights.values())) == 3, "two rounds trained the same weights"
    assert (run / "dpo" / "adapter_model.safetensors").read_bytes() == weights[chosen]
    chosen_manifest = read_manifest(run / "dpo")
    assert chosen_manifest["summary"]["round"] == chosen
    assert chosen_manifest["summary"]["reason"] == table["reason"]
    # ... and what stage 2 and the stage-1 test entry read: their manifests name run/dpo as it
    # is now (its identity), and the result says which adapter answered.
    identity = input_identity(run / "dpo")
    for stage_out in (run / "infuse" / "infused.json", run / "sft", run / "eval" / "stage1.json"):
        manifest = read_manifest(stage_out)
        assert manifest["config"]["adapter"] == str(run / "dpo"), stage_out
        assert manifest["inputs"]["adapter"] == identity, stage_out
    assert json.loads((run / "eval" / "stage1.json").read_text())["adapter"] == str(run / "dpo")
    # The validation entry is not a test result: nothing of it under run/eval.
    assert not (run / "eval" / "val.json").exists()

    # The run's report (written by `stic run`) shows the rounds, and the chosen round's pairs.
    page = (run / "report.html").read_text()
    assert "Self-training rounds" in page and "<tr class=chosen data-round=2><td>2</td>" in page
    assert "is round 2 by its manifest" in page  # dpo/'s manifest agrees with rounds.json
    for n in (1, 2, 3):  # each round's curves, from its own folder
        label = "round 2 (chosen)" if n == 2 else f"round {n}"
        assert f"<li>{label}: {run / f'round_{n}' / 'dpo'}: 4 steps" in page, n
    assert f"pairs: {run / 'round_2' / 'pairs.jsonl'}" in page

    # A third run finds everything complete.
    summaries = [summary for _, summary in run_pipeline(config_path)]
    assert summaries and all(s.up_to_date for s in summaries)
