"""stic bench score: a predictions file scored from the benchmark files, joined by id."""

from __future__ import annotations

import json

from stic.tools.bench_score import main
from tests.data.bench_fixtures import write_jsonl, write_png


def _pope(tmp_path):
    labels = {"11": "yes", "12": "no", "13": "no"}
    rows = [
        {
            "question_id": int(q),
            "image": f"COCO_val2014_{q}.jpg",
            "text": f"Is there a {q}?",
            "label": label,
        }
        for q, label in labels.items()
    ]
    write_jsonl(tmp_path / "pope" / "coco_pope_popular.json", rows)
    for row in rows:
        write_png(tmp_path / "val2014" / row["image"])
    return tmp_path / "pope"


def test_scores_by_id_and_reports_unmatched(tmp_path, capsys):
    data = _pope(tmp_path)
    predictions = write_jsonl(
        tmp_path / "pred.jsonl",
        [
            {"id": "13", "prediction": "No, there is not."},
            {"id": "11", "prediction": "Yes, there is."},
            {"id": "99", "prediction": "Yes"},
        ],
    )
    out = tmp_path / "out" / "pope_popular.json"
    code = main(
        [
            "--benchmark",
            "pope_popular",
            "--data",
            str(data),
            "--images",
            str(tmp_path / "val2014"),
            "--predictions",
            str(predictions),
            "--out",
            str(out),
        ]
    )
    assert code == 0
    result = json.loads(out.read_text())
    assert result["benchmark"] == "pope_popular" and result["n"] == 2 and result["n_data"] == 3
    assert result["metrics"]["accuracy"] == 100.0 and result["metrics"]["yes_ratio"] == 50.0
    assert result["unmatched"]["missing_predictions"] == {"count": 1, "examples": ["12"]}
    assert result["unmatched"]["unknown_ids"] == {"count": 1, "examples": ["99"]}
    assert result["protocol"]["max_new_tokens"] == 128 and result["judge"] is None
    assert [row["id"] for row in result["items"]] == ["11", "13"]
    err = capsys.readouterr().err
    assert "1 questions without a prediction" in err and "e.g. 12" in err
    assert "1 prediction ids not in the data" in err and "e.g. 99" in err


def test_bad_data_folder_is_one_line_error(tmp_path, capsys):
    predictions = write_jsonl(tmp_path / "pred.jsonl", [{"id": "1", "prediction": "yes"}])
    (tmp_path / "empty").mkdir()
    code = main(
        [
            "--benchmark",
            "pope_random",
            "--data",
            str(tmp_path / "empty"),
            "--predictions",
            str(predictions),
            "--out",
            str(tmp_path / "o.json"),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("stic bench score: error: pope_random:") and "coco_pope_random.json" in err
    )
    assert "\n" not in err and not (tmp_path / "o.json").exists()


def test_judged_benchmark_without_judge_refused(tmp_path, capsys):
    predictions = write_jsonl(tmp_path / "pred.jsonl", [{"id": "1", "prediction": "x"}])
    data = write_jsonl(tmp_path / "llava" / "questions.jsonl", [])
    code = main(
        [
            "--benchmark",
            "mmvet",
            "--data",
            str(data.parent),
            "--predictions",
            str(predictions),
            "--out",
            str(tmp_path / "o.json"),
        ]
    )
    assert code == 2
    assert "judge" in capsys.readouterr().err


def test_judged_run_resumes_and_reruns_without_new_calls(tmp_path, monkeypatch):
    from tests.data.bench_fixtures import write_json
    from tests.modeling.judge_server import ScriptedJudge

    root = tmp_path / "mm-vet"
    records = {f"v1_{i}": {"imagename": f"v1_{i}.png", "capability": ["rec"], "question": f"q{i}?", "answer": "a"}
               for i in range(4)}  # fmt: skip
    write_json(root / "mm-vet.json", records)
    for key in records:
        write_png(root / "images" / f"{key}.png")
    rows = [{"id": key, "prediction": f"answer {key}"} for key in records]
    partial = write_jsonl(tmp_path / "partial.jsonl", rows[:2])  # what a killed run had reached
    full = write_jsonl(tmp_path / "pred.jsonl", rows)
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-abc")
    out = tmp_path / "mmvet.json"
    with ScriptedJudge(default="0.5") as server:
        args = ["--benchmark", "mmvet", "--data", str(root), "--out", str(out), "--judge-url", server.url,
                "--judge-model", "judge-m", "--judge-key-env", "MY_JUDGE_KEY"]  # fmt: skip
        assert main([*args, "--predictions", str(partial)]) == 0
        assert server.total == 2
        assert main([*args, "--predictions", str(full)]) == 0
        assert server.total == 4  # only the two it had not asked
        result = json.loads(out.read_text())
        assert result["metrics"]["score"] == 50.0 and result["judge"]["new_calls"] == 2
        assert main([*args, "--predictions", str(full)]) == 0
        assert server.total == 4  # a rerun pays nothing
    assert json.loads(out.read_text())["judge"]["model"] == "judge-m"
    assert "sk-abc" not in out.read_text()
    assert "sk-abc" not in (tmp_path / "mmvet.judge_cache.jsonl").read_text()
