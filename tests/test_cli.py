"""The `stic` command: usage, exit codes, error messages, and one verb end to end."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from stic.cli import VERBS, main
from stic.testing import make_images


def test_no_arguments_prints_usage(capsys):
    code = main([])
    out = capsys.readouterr().out
    assert code == 2
    assert "usage: stic <command> [options]" in out
    for verb in VERBS:
        assert f"  {verb} " in out


def test_help_and_version_exit_0(capsys):
    assert main(["--help"]) == 0
    assert "usage: stic <command>" in capsys.readouterr().out
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("stic ")


def test_unknown_verb_exits_2(capsys):
    assert main(["train"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'train'" in err


@pytest.mark.parametrize("verb", ["pairs", "dpo", "infuse", "sft", "eval"])
def test_every_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([verb, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert f"stic {verb}" in out and "example:" in out and "--model" in out


def test_run_help_and_missing_config_argument(capsys):
    assert main(["run", "--help"]) == 0
    assert "stic run CONFIG.yaml" in capsys.readouterr().out
    assert main(["run"]) == 2


def test_pairs_without_required_options_exits_nonzero(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["pairs", "--images", "x", "--out", "y.jsonl"])
    assert exit_info.value.code != 0
    assert "--model" in capsys.readouterr().err


def test_out_of_range_value_exits_2_naming_it(tmp_path, capsys):
    code = main(
        [
            "pairs",
            "--model",
            "m",
            "--images",
            str(tmp_path),
            "--out",
            "o.jsonl",
            "--batch_size",
            "0",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "invalid configuration" in err and "batch_size: 0" in err and ">= 1" in err


def test_missing_model_folder_exits_1_quickly(tmp_path, capsys):
    make_images(tmp_path / "images", 2, seed=1)
    start = time.monotonic()
    code = main(
        [
            "pairs",
            "--model",
            "/nonexistent/model",
            "--images",
            str(tmp_path / "images"),
            "--out",
            str(tmp_path / "x.jsonl"),
        ]
    )
    assert time.monotonic() - start < 10
    assert code == 1
    err = capsys.readouterr().err
    assert "stic pairs: error:" in err and "does not exist" in err
    assert "/nonexistent/model" in err
    assert not (tmp_path / "x.jsonl").exists()


def test_empty_images_folder_exits_1_with_a_clear_message(tiny_model_factory, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    code = main(
        [
            "pairs",
            "--model",
            str(tiny_model_factory("llava")),
            "--images",
            str(tmp_path / "empty"),
            "--out",
            str(tmp_path / "x.jsonl"),
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "no images found" in err and str(tmp_path / "empty") in err


def test_bad_records_file_exits_1_naming_the_line(tiny_model_factory, tmp_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"id": "a", "image": "a.png", "rejected_kind": "bad_prompt"}\n')
    code = main(
        [
            "dpo",
            "--model",
            str(tiny_model_factory("llava")),
            "--pairs",
            str(pairs),
            "--images",
            str(tmp_path / "images"),
            "--out",
            str(tmp_path / "stage1"),
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert f"{pairs}:1" in err and "'prompt'" in err


def test_eval_end_to_end_prints_the_summary_line(tiny_model_factory, tmp_path, capsys):
    make_images(tmp_path / "images", 2, seed=3)
    rows = [
        {"id": "q0", "image": "img_0000.png", "question": "Is there a shape?", "answer": "yes"},
        {
            "id": "q1",
            "image": "img_0001.png",
            "question": "What is it?",
            "choices": ["a shape", "a car"],
            "answer": "A",
        },
    ]
    data = tmp_path / "vqa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "results.json"
    argv = [
        "eval",
        "--model", str(tiny_model_factory("llava")),
        "--data", str(data),
        "--images", str(tmp_path / "images"),
        "--out", str(out),
        "--dar",
        "--max-new-tokens", "4",
        "--dar_max_new_tokens", "6",
    ]  # fmt: skip
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    prefix = f"eval -> {out}: "
    assert lines[-1].startswith(prefix)
    summary = json.loads(lines[-1][len(prefix) :])
    results = json.loads(out.read_text())
    assert summary["details"]["n"] == results["n"] == 2
    assert summary["details"]["accuracy"] == results["accuracy"]
    assert summary["details"]["dar"] is True and summary["bad_items"] == 0
    assert all(isinstance(r["description"], str) for r in results["items"])


def test_console_entry_point_runs(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "stic", "--version"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    assert result.stdout.strip() == "stic 0.1.0"
    result = subprocess.run(
        [sys.executable, "-m", "stic", "frobnicate"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and "unknown command" in result.stderr
