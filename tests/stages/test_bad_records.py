"""Files that are not what a stage expects end the command with one line naming file:line.

An existing output whose lines are not records with an ``id`` (edited by hand, or another file
given as ``--out``) and a VQA file with a line that is not a JSON object: exit 1, no traceback.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stic.cli import main

pytestmark = pytest.mark.slow


def _stic(capsys, *argv: str) -> tuple[int, list[str], str]:
    code = main(list(argv))
    err = capsys.readouterr().err
    verb = f"stic {argv[0]}"
    lines = [line[line.index(verb) :] for line in err.splitlines() if verb in line]
    return code, lines, err


def test_an_output_whose_line_lacks_id_is_one_line_naming_it(
    tiny_model_factory, image_dir, tmp_path, capsys
):
    model = str(tiny_model_factory("llava"))
    out = tmp_path / "pairs.jsonl"
    argv = ["pairs", "--model", model, "--images", str(image_dir), "--out", str(out)]
    argv += ["--max-new-tokens", "2", "--limit", "2"]
    assert _stic(capsys, *argv)[0] == 0
    rows = out.read_text().splitlines()
    rows[1] = json.dumps({"note": "edited by hand"})
    out.write_text("\n".join(rows) + "\n")
    code, lines, err = _stic(capsys, *argv[:-1], "3")  # more images: the stage resumes
    assert code == 1 and "Traceback" not in err
    assert len(lines) == 1
    assert lines[0].startswith(f"stic pairs: error: {out}:2: a record without 'id'")


def test_a_vqa_line_that_is_a_json_array_is_one_line_naming_it(
    tiny_model_factory, image_dir, tmp_path, capsys
):
    model = str(tiny_model_factory("llava"))
    data = tmp_path / "vqa.jsonl"
    item = {"id": "q", "image": "img_0000.png", "question": "Q?", "answer": "a"}
    data.write_text(json.dumps(item) + "\n" + json.dumps([item]) + "\n")
    out = tmp_path / "results.json"
    argv = ["eval", "--model", model, "--data", str(data), "--images", str(image_dir)]
    code, lines, err = _stic(capsys, *argv, "--out", str(out))
    assert code == 1 and "Traceback" not in err
    assert lines == [
        f"stic eval: error: {data}:2: expected a JSON object (one record a line), got an array"
    ]
    assert not Path(out).exists()
