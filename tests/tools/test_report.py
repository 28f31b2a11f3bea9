"""stic report: what the page holds, built from a synthetic run (no model, no browser).

The browser checks (the page runs, filters work, images decode) are in test_report_browser.py.
"""

from __future__ import annotations

import json
import logging
import re
import shutil

import pytest
import yaml

from stic.cli import _write_report
from stic.demo.base_model import shipped_base_path
from stic.runtime.files import atomic_write_json, atomic_write_text
from stic.testing.synthetic_run import write_synthetic_run
from stic.tools import report
from stic.tools.report import ReportError, ReportSources, audit, build_report, main

N = 30


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return write_synthetic_run(tmp_path_factory.mktemp("report"), N)


def _pairs_data(page: str) -> dict:
    found = re.search(r'<script type="application/json" id="pairs-data">(.*?)</script>', page, re.S)
    return json.loads(found.group(1))


@pytest.fixture(scope="module")
def page(run):
    return build_report(report.sources_from_folder(run))


def test_the_page_has_every_section_and_one_row_per_pair(page):
    for section in ("audit", "pairs", "training", "results"):
        assert f'<section id="{section}">' in page
    data = _pairs_data(page)
    assert len(data["rows"]) == N
    assert {r["kind"] for r in data["rows"]} == {"bad_prompt", "corrupt_lowres", "corrupt_color"}


def test_the_page_fetches_nothing(page):
    # offline: no script, style, image or link loaded from elsewhere
    assert not re.search(r'(?:src|href)\s*=\s*["\']?(?:https?:)?//', page)
    assert "@import" not in page and "url(http" not in page


def test_every_pair_has_its_clean_image_and_corruption_pairs_the_rebuilt_one(page):
    rows = _pairs_data(page)["rows"]
    assert all(r["img"].startswith("data:image/jpeg;base64,") for r in rows)
    for r in rows:
        assert bool(r["cimg"]) == (r["kind"] != "bad_prompt"), r["id"]
    lowres = next(r for r in rows if r["kind"] == "corrupt_lowres")
    assert lowres["corr"] == "lowres: short_side 20"
    assert lowres["cimg"] != lowres["img"]


def test_verdicts_come_from_the_dpo_dropped_pairs(page, run):
    rows = _pairs_data(page)["rows"]
    dropped = {
        json.loads(line)["id"]: json.loads(line)["reason"]
        for line in (run / "dpo" / "dropped_pairs.jsonl").read_text().splitlines()
    }
    assert dropped and {r["id"]: r["v"] for r in rows if r["v"]} == dropped
    assert "dropped_pairs.jsonl" in page


def test_without_dpo_the_verdicts_are_recomputed_with_the_filters(run, tmp_path):
    sources = ReportSources(pairs=run / "pairs" / "pairs.jsonl")
    rows = _pairs_data(build_report(sources))["rows"]
    by_id = {r["id"]: r for r in rows}
    assert by_id["img_00009.jpg"]["v"] == "truncated"  # every 10th: rejected finish "length"
    assert by_id["img_00014.jpg"]["v"] == "near_duplicate"  # every 15th: a near copy
    assert by_id["img_00000.jpg"]["v"] == ""


@pytest.mark.slow
def test_lengths_in_words_unless_the_model_tokenizer_is_on_disk(run):
    words = _pairs_data(build_report(ReportSources(pairs=run / "pairs" / "pairs.jsonl")))
    assert words["unit"] == "words"
    first = words["rows"][0]
    chosen = json.loads((run / "pairs" / "pairs.jsonl").read_text().splitlines()[0])["chosen"]
    assert first["cl"] == len(chosen.split())
    tokens = _pairs_data(
        build_report(
            ReportSources(pairs=run / "pairs" / "pairs.jsonl", model=str(shipped_base_path()))
        )
    )
    assert tokens["unit"] == "tokens" and tokens["rows"][0]["cl"] != first["cl"]


def _rows(chosen: int, rejected: int, n: int = 10) -> list[dict]:
    return [
        {"kind": "bad_prompt", "cl": chosen, "rl": rejected, "ratio": chosen / rejected,
         "v": "", "cf": "stop", "rf": "stop", "nd": False}
        for _ in range(n)
    ]  # fmt: skip


def test_a_systematically_longer_chosen_side_is_warned_about():
    longer = audit({"rows": _rows(200, 80)})
    assert any("systematically longer" in w for w in longer["warnings"])
    assert longer["by_kind"]["bad_prompt"]["median_ratio"] == 2.5
    balanced = audit({"rows": _rows(100, 90)})
    assert not any("systematically longer" in w for w in balanced["warnings"])


def test_the_audit_counts_kinds_filters_truncation_and_near_duplicates(page):
    rows = _pairs_data(page)["rows"]
    summary = audit({"rows": rows})
    everything = summary["by_kind"]["all"]
    assert everything["n"] == N and summary["kinds"] == [
        "bad_prompt",
        "corrupt_lowres",
        "corrupt_color",
    ]
    assert everything["truncated"] == 3  # pairs 9, 19, 29
    assert everything["near_duplicate"] == 2  # pairs 14, 29
    assert everything["dropped"]["truncated"] == 3 and everything["dropped"]["near_duplicate"] == 1
    assert "near-duplicate (similarity ≥ 0.9)" in page


def test_training_curves_are_svg_charts_of_every_logged_quantity(page):
    charts = re.findall(r'<figure class="chart" data-chart="([^"]+)"><svg', page)
    assert charts == ["lengths", "train-dpo", "train-sft"]
    dpo = page[page.index('data-chart="train-dpo"') :]
    dpo = dpo[: dpo.index("</figure>")]
    for label in ("loss/dpo", "loss/nll", "reward margin", "reward accuracy", "learning rate"):
        assert label in dpo


def test_results_have_deltas_against_the_base_per_category_and_dar_examples(page):
    results = page[page.index('<section id="results">') :]
    # eval: base 50%, stic 70% and stic_dar 60% on the same data file
    assert "+20.0" in results and "+10.0" in results
    # bench: base 40.0, final 44.5, per category too (ocr 35 -> 39.5)
    assert "final/textvqa" in results and results.count("+4.5") == 3
    assert "describe-and-respond" in results and "<b>description</b>" in results
    assert "✓ correct" in results and "✗ wrong" in results


@pytest.mark.slow
def test_cli_writes_the_page_and_refuses_a_file_it_did_not_write(run, tmp_path, capsys):
    out = tmp_path / "report.html"
    assert main([str(run), "--out", str(out)]) == 0
    assert "report -> " in capsys.readouterr().out
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert main([str(run), "--out", str(out)]) == 0  # its own file: replaced
    mine = tmp_path / "notes.html"
    mine.write_text("my notes")
    with pytest.raises(ReportError, match="not written by stic report"):
        main([str(run), "--out", str(mine)])
    assert mine.read_text() == "my notes"


def test_stage_outputs_by_flags(run, tmp_path):
    out = tmp_path / "r.html"
    assert main(["--eval", str(run / "eval" / "stic.json"), "--eval", str(run / "eval" / "base.json"),
                 "--dpo", str(run / "dpo"), "--out", str(out)]) == 0  # fmt: skip
    page = out.read_text()
    assert '<section id="training">' in page and '<section id="results">' in page
    assert '<section id="pairs">' not in page
    with pytest.raises(ReportError, match="no such file"):
        main(["--pairs", str(tmp_path / "missing.jsonl"), "--out", str(out)])


def test_an_empty_folder_is_one_error(tmp_path):
    with pytest.raises(ReportError, match="no stic outputs found"):
        main([str(tmp_path), "--out", str(tmp_path / "r.html")])


def test_stic_run_writes_the_report_and_a_failure_only_warns(run, tmp_path, monkeypatch, caplog):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"output_dir": str(run)}))
    _write_report(str(config))
    assert (run / "report.html").is_file()

    def broken(output_dir):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(report, "write_run_report", broken)
    with caplog.at_level(logging.WARNING):
        _write_report(str(config))  # no exception: the run is not failed by its report
    assert "could not write the run's report.html: disk on fire" in caplog.text


def test_a_demo_folder_shows_its_results_table_and_every_arm(run, tmp_path):
    demo = tmp_path / "demo"
    shutil.copytree(run, demo / "seed0" / "stic")
    shutil.copytree(run / "eval", demo / "seed0" / "stage2_only" / "eval")
    atomic_write_text(demo / "seed0" / "stage2_only" / "resolved_config.yaml", "model: m\n")
    atomic_write_json(demo / "results.json", {"arms": {}})
    atomic_write_text(
        demo / "results.md",
        "# STIC demo\n\nSome words.\n\n| arm | VQA |\n|---|---|\n| base | 50.0 |\n| stic | 52.0 |\n",
    )
    from stic.demo.run import write_report

    path = write_report(demo, log=lambda line: None)
    page = path.read_text()
    assert '<section id="demo">' in page and "<td>stic</td><td>52.0</td>" in page
    assert "stage2_only" in page and len(_pairs_data(page)["rows"]) == N


def test_a_run_with_rounds_shows_them_and_browses_the_chosen_rounds_pairs(tmp_path):
    """rounds.json of a `stic run` with rounds: the table (values from the file escaped), each
    round's DPO curves, and the chosen round's pairs in the browser when run/pairs is absent."""
    run = write_synthetic_run(tmp_path, 6)
    for number in (1, 2):
        (run / f"round_{number}").mkdir()
        shutil.copytree(run / "dpo", run / f"round_{number}" / "dpo")
    shutil.move(run / "pairs" / "pairs.jsonl", run / "round_2" / "pairs.jsonl")
    rows = [
        {
            "round": n,
            "adapter": str(run / f"round_{n}" / "dpo"),
            "pairs_file": str(run / f"round_{n}" / "pairs.jsonl"),
            "pairs_trained": 6,
            "train_loss": 0.5,
            "reference_model": "<b>base</b>" if n == 1 else "start adapter",
            "accuracy": 0.25 * n,
        }
        for n in (1, 2)
    ]
    table = {
        "table": rows,
        "chosen": 2,
        "reason": "val accuracy <script>alert(1)</script>",
        "select": {"entry": "val", "metric": "accuracy", "mode": "max"},
    }
    atomic_write_json(run / "rounds.json", table)
    page = build_report(report.sources_from_folder(run))
    assert '<section id="rounds"><h2>Self-training rounds</h2>' in page
    assert "<tr class=chosen><td>2</td>" in page and "<th>val accuracy (max)</th>" in page
    assert "Round 1: DPO + NLL" in page and "Round 2: DPO + NLL" in page
    assert 'data-chart="train-round-1"' in page and 'data-chart="train-round-2"' in page
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)" in page
    assert "<b>base</b>" not in page
    assert len(_pairs_data(page)["rows"]) == 6  # round 2's pairs
