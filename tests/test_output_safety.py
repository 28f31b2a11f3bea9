"""No flag or path loses a user's data (issue 17's listing, one test each): outputs that are or
hold inputs are refused, --overwrite deletes only what the manifest lists, one run per output,
the same run spelled differently resumes, and every failure is one line with the right exit code.

Most refusals happen before any model is loaded, so they run on a model path that only has to
exist; the rest use the session's tiny LLaVA with 2-token answers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import stic.cli
from stic.cli import main
from stic.runtime.files import read_jsonl
from stic.runtime.locks import output_lock
from stic.runtime.manifests import manifest_path, read_manifest
from stic.testing import make_images


@pytest.fixture(scope="module")
def llava(tiny_model_factory) -> Path:
    return tiny_model_factory("llava")


@pytest.fixture
def vqa(tmp_path) -> tuple[Path, Path]:
    images = tmp_path / "images"
    make_images(images, 2, seed=5)
    data = tmp_path / "A" / "vqa.jsonl"
    data.parent.mkdir()
    rows = [
        {"id": f"q{i}", "image": f"img_000{i}.png", "question": "Colour?", "answer": "red"}
        for i in range(2)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return data, images


def _cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


def _eval(llava, data, images, out, *extra) -> list[str]:
    return ["eval", "--model", str(llava), "--data", str(data), "--images", str(images),
            "--out", str(out), "--max-new-tokens", "2", *extra]  # fmt: skip


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_overwrite_of_a_file_output_keeps_its_siblings_and_the_input(llava, vqa, capsys):
    data, images = vqa
    out = data.with_name("vqa.json")  # A/vqa.json beside its own input A/vqa.jsonl
    readme = data.with_name("vqa.json.README")
    readme.write_text("my notes")
    assert _cli(capsys, *_eval(llava, data, images, out))[0] == 0
    code, err = _cli(capsys, *_eval(llava, data, images, out, "--max-new-tokens", "3"))
    assert code == 1 and "max_new_tokens 2 -> 3" in err and "--overwrite" in err
    assert (
        _cli(capsys, *_eval(llava, data, images, out, "--max-new-tokens", "3", "--overwrite"))[0]
        == 0
    )
    assert data.exists() and readme.read_text() == "my notes"
    assert json.loads(out.read_text())["n"] == 2


@pytest.mark.slow
def test_glob_characters_in_an_output_name_delete_nothing_else_and_no_stale_answer_survives(
    llava, vqa, capsys
):
    data, images = vqa
    out = data.with_name("res[1A].json")
    unrelated = data.with_name("res1.json")
    unrelated.write_text("keep")
    assert _cli(capsys, *_eval(llava, data, images, out))[0] == 0
    partial = out.with_name(out.name + ".partial.jsonl")
    partial.write_text(json.dumps({"id": "stale", "prediction": "old"}) + "\n")
    args = _eval(llava, data, images, out, "--instruction", "Say it.", "--overwrite")
    assert _cli(capsys, *args)[0] == 0
    assert unrelated.read_text() == "keep"
    assert "stale" not in {r["id"] for r in read_jsonl(partial)}


@pytest.mark.parametrize("target", ["images", "model", "inside_images", "holds_images"])
def test_an_output_that_is_or_holds_or_lies_in_an_input_is_refused(
    llava, vqa, tmp_path, capsys, target
):
    data, images = vqa
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("")
    out = {
        "images": images,
        "model": llava,
        "inside_images": images / "stage1",
        "holds_images": tmp_path,
    }[target]
    before = {folder: _snapshot(folder) for folder in (images, llava)}
    code, err = _cli(capsys, "dpo", "--model", str(llava), "--pairs", str(pairs),
                     "--images", str(images), "--out", str(out), "--overwrite")  # fmt: skip
    assert code == 1
    (line,) = [line for line in err.splitlines() if line.strip()]
    assert "choose an output path outside your inputs" in line
    assert {folder: _snapshot(folder) for folder in (images, llava)} == before


def test_sft_onto_the_adapter_it_continues_is_refused(llava, tmp_path, capsys):
    adapter = tmp_path / "S1"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    data = tmp_path / "infused.json"
    data.write_text("[]")
    code, err = _cli(capsys, "sft", "--model", str(llava), "--adapter", str(adapter),
                     "--data", str(data), "--images", str(tmp_path / "images"),
                     "--out", str(adapter), "--overwrite")  # fmt: skip
    assert code == 1 and "is the adapter input" in err
    assert (adapter / "adapter_config.json").read_text() == "{}"


def test_infuse_onto_its_own_data_is_refused(llava, tmp_path, capsys):
    data = tmp_path / "llava.json"
    sample = {
        "id": "s",
        "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}],
    }
    data.write_text(json.dumps([sample]))
    before = data.read_bytes()
    code, err = _cli(capsys, "infuse", "--model", str(llava), "--data", str(data),
                     "--images", str(tmp_path), "--out", str(data))  # fmt: skip
    assert code == 1 and "is the data input" in err
    assert data.read_bytes() == before


def test_a_file_that_stic_did_not_write_is_not_taken_over(llava, vqa, capsys):
    data, images = vqa
    out = data.with_name("mine.json")
    out.write_text('{"my": "results"}')
    code, err = _cli(capsys, *_eval(llava, data, images, out, "--overwrite"))
    assert code == 1 and "without a stic manifest" in err
    assert out.read_text() == '{"my": "results"}'


def test_a_second_run_on_the_same_output_refuses_at_once(llava, vqa, capsys):
    data, images = vqa
    out = data.with_name("held.json")
    with output_lock(out):
        code, err = _cli(capsys, *_eval(llava, data, images, out))
    assert code == 1 and f"pid {os.getpid()}" in err
    assert not out.exists() and not manifest_path(out).exists()


@pytest.mark.slow
def test_the_same_run_named_another_way_resumes_instead_of_conflicting(
    llava, vqa, tmp_path, capsys, monkeypatch
):
    data, images = vqa
    monkeypatch.chdir(tmp_path)
    relative = ["pairs", "--model", str(llava), "--images", "images/", "--out", "run/pairs.jsonl",
                "--max-new-tokens", "2"]  # fmt: skip
    assert _cli(capsys, *relative)[0] == 0
    written = (tmp_path / "run" / "pairs.jsonl").read_bytes()
    monkeypatch.chdir(tmp_path / "run")
    absolute = ["pairs", "--model", str(llava), "--images", str(tmp_path / "images"),
                "--out", "./pairs.jsonl", "--max-new-tokens", "2"]  # fmt: skip
    code = main(absolute)
    out = capsys.readouterr().out
    assert code == 0 and '"up_to_date": true' in out
    assert (tmp_path / "run" / "pairs.jsonl").read_bytes() == written


@pytest.mark.slow
def test_pairs_without_a_manifest_resume_only_if_their_records_match(llava, tmp_path, capsys):
    images = tmp_path / "images"
    make_images(images, 2, seed=1)
    out = tmp_path / "pairs.jsonl"
    argv = ["pairs", "--model", str(llava), "--images", str(images), "--out", str(out),
            "--max-new-tokens", "2", "--limit", "1"]  # fmt: skip
    assert _cli(capsys, *argv)[0] == 0
    manifest_path(out).unlink()  # copied somewhere without its manifest
    code, err = _cli(capsys, *argv[:-2], "--seed", "7")
    assert code == 1 and "cannot be resumed" in err and "sampling" in err
    assert _cli(capsys, *argv[:-2])[0] == 0  # same model and settings: resumed to both images
    assert len(read_jsonl(out)) == 2 and read_manifest(out)["status"] == "complete"


@pytest.mark.slow
def test_eval_with_no_scorable_item_is_an_error_and_leaves_no_manifest(
    llava, vqa, tmp_path, capsys
):
    data, _ = vqa
    empty = tmp_path / "no_images"
    empty.mkdir()
    out = data.with_name("none.json")
    code, err = _cli(capsys, *_eval(llava, data, empty, out))
    assert code == 1 and "none of its 2 items could be scored" in err
    assert not out.exists() and not manifest_path(out).exists()


def test_a_run_that_fails_before_its_first_record_leaves_no_running_manifest(
    llava, vqa, tmp_path, capsys
):
    data, images = vqa
    not_an_adapter = tmp_path / "adapter"
    not_an_adapter.mkdir()
    out = data.with_name("r.json")
    code, err = _cli(capsys, *_eval(llava, data, images, out, "--adapter", str(not_an_adapter)))
    assert code == 1 and "not a PEFT adapter folder" in err
    assert not manifest_path(out).exists()


def test_ctrl_c_stops_with_130_and_one_line(vqa, monkeypatch, capsys, llava):
    data, images = vqa

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(stic.cli, "run_stage", interrupted)
    code, err = _cli(capsys, *_eval(llava, data, images, data.with_name("r.json")))
    assert code == 130
    assert [line for line in err.splitlines() if line.strip()] == [
        "stic eval: stopped; rerun the same command to resume where it stopped"
    ]


@pytest.mark.parametrize("command", [["run"], ["demo"]])
def test_run_and_demo_take_overwrite(command, capsys):
    try:
        code = main([*command, "--help"])
    except SystemExit as e:  # argparse's --help exits
        code = e.code
    assert code in (0, None)
    assert "--overwrite" in capsys.readouterr().out


# --------------------------------------------------------------------------- the tools' outputs
# Every command that writes goes through the one output object (stic.runtime.output): a tool's
# --out that is, lies in, or would write over an input, or a file stic did not write, is refused
# before anything is written, the inputs left byte for byte as they were.


def _pope(root: Path) -> tuple[Path, Path, Path]:
    """(benchmark folder, image folder, predictions) of a three-question POPE split."""
    from tests.data.bench_fixtures import write_jsonl, write_png

    rows = [
        {"question_id": q, "image": f"COCO_val2014_{q}.jpg", "text": "Is there a cat?", "label": a}
        for q, a in ((11, "yes"), (12, "no"), (13, "no"))
    ]
    write_jsonl(root / "pope" / "coco_pope_popular.json", rows)
    for row in rows:
        write_png(root / "val2014" / row["image"])
    predictions = write_jsonl(
        root / "pred.jsonl", [{"id": str(r["question_id"]), "prediction": "No"} for r in rows]
    )
    return root / "pope", root / "val2014", predictions


def _score(data: Path, images: Path, predictions: Path, out: Path) -> int:
    from stic.tools.bench_score import main as score

    return score(["--benchmark", "pope_popular", "--data", str(data), "--images", str(images),
                  "--predictions", str(predictions), "--out", str(out)])  # fmt: skip


def test_bench_score_refuses_to_write_over_its_predictions(tmp_path, capsys):
    data, images, predictions = _pope(tmp_path)
    before = predictions.read_bytes()
    assert _score(data, images, predictions, predictions) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("stic bench score: error:") and "is the predictions input" in err
    assert "\n" not in err
    assert predictions.read_bytes() == before
    assert not manifest_path(predictions).exists() and not list(tmp_path.glob("*.lock"))


@pytest.mark.parametrize("inside", ["pope/result.json", "val2014/result.json"])
def test_bench_score_refuses_an_out_inside_the_benchmark_or_image_folder(inside, tmp_path, capsys):
    data, images, predictions = _pope(tmp_path)
    before = _snapshot(tmp_path)
    assert _score(data, images, predictions, tmp_path / inside) == 2
    assert "lies inside the" in capsys.readouterr().err
    assert _snapshot(tmp_path) == before


def test_bench_score_refuses_a_file_it_did_not_write_and_replaces_its_own(tmp_path, capsys):
    data, images, predictions = _pope(tmp_path)
    out = tmp_path / "result.json"
    out.write_text("my notes\n")
    assert _score(data, images, predictions, out) == 2
    assert "without a stic manifest" in capsys.readouterr().err
    assert out.read_text() == "my notes\n"
    out.unlink()
    assert _score(data, images, predictions, out) == 0
    assert json.loads(out.read_text())["n"] == 3
    assert read_manifest(out)["stage"] == "bench-score"
    assert _score(data, images, predictions, out) == 0  # its own result: rescored in place


def _bench_result(path: Path, answers: list[str]) -> Path:
    """A stic bench result of POPE at ``path``, scored by ``stic bench score``."""
    from tests.data.bench_fixtures import write_jsonl

    data, images, _ = _pope(path.parent.parent / "pope_data")
    predictions = write_jsonl(
        path.with_name(path.stem + ".pred.jsonl"),
        [{"id": q, "prediction": a} for q, a in zip(("11", "12", "13"), answers, strict=True)],
    )
    assert _score(data, images, predictions, path) == 0
    predictions.unlink()
    return path


def test_compare_refuses_to_write_its_json_over_an_input_result(tmp_path, capsys):
    from stic.tools.compare import main as compare

    base = _bench_result(tmp_path / "base" / "pope_popular.json", ["Yes", "Yes", "No"])
    mine = _bench_result(tmp_path / "sub" / "x.json", ["Yes", "No", "No"])
    before = _snapshot(tmp_path)
    # --out sub/x.md would write sub/x.json: the second run's result.
    assert compare([f"base={base}", f"mine={mine}", "--out", str(tmp_path / "sub" / "x.md")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("stic compare: error:") and "x.json is the run" in err
    assert _snapshot(tmp_path) == before
    # Elsewhere it writes both files, and replaces them on a rerun.
    out = tmp_path / "table" / "t.md"
    for _ in range(2):
        assert compare([f"base={base}", f"mine={mine}", "--out", str(out)]) == 0
    assert out.is_file() and json.loads(out.with_suffix(".json").read_text())["bootstrap"]
    assert sorted(read_manifest(out, file=True)["files"]) == [
        "t.json",
        "t.md",
        "t.md.partial.jsonl",
    ]


def test_compare_refuses_a_table_json_that_stic_did_not_write(tmp_path, capsys):
    from stic.tools.compare import main as compare

    base = _bench_result(tmp_path / "base" / "pope_popular.json", ["Yes", "Yes", "No"])
    theirs = tmp_path / "out" / "t.json"
    theirs.parent.mkdir()
    theirs.write_text('{"mine": 1}')
    assert compare([str(base), "--out", str(tmp_path / "out" / "t.md")]) == 2
    assert "without a stic manifest" in capsys.readouterr().err
    assert theirs.read_text() == '{"mine": 1}' and not (tmp_path / "out" / "t.md").exists()


def test_report_refuses_to_write_over_a_file_it_shows(tmp_path):
    from stic.tools.report import ReportError, ReportSources, write_report

    result = _bench_result(tmp_path / "bench" / "pope_popular.json", ["Yes", "Yes", "No"])
    before = result.read_bytes()
    with pytest.raises(ReportError, match="is the bench"):
        write_report(ReportSources(benches=[result]), result)
    assert result.read_bytes() == before
