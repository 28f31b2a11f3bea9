"""stic report on a run with self-training rounds (stic.tools.report_rounds, issue 24 item 5),
fast and without a browser: a 3-round run folder written by hand, every round's pairs, verdicts
and train log distinct, so that a value of one round shown as another's shows. The browser shows
the chosen round's pairs (or --round N's), the audit has a column per round from that round's own
files, Training has each round's curves under its label, and every value from rounds.json and
the manifests is escaped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stic.data.schemas import PairRecord
from stic.runtime.files import atomic_write_json
from stic.tools import report
from stic.tools.report import ReportError, ReportSources, build_report, collect_pairs
from stic.tools.report_rounds import (
    chosen_adapter,
    read_rounds,
    round_audits,
    round_training,
)
from tests.tools.test_report_hostile import _injected, _Page, hostile

CHOSEN = 2
HOSTILE_REASON = "val accuracy = 0.75 is the highest" + hostile("rounds.reason")
HOSTILE_ENTRY = "val" + hostile("rounds.entry")
HOSTILE_REFERENCE = "start" + hostile("rounds.reference")


def _pair(number: int, index: int, **over) -> PairRecord:
    values = dict(
        id=f"r{number}-{index}.jpg",
        image=f"r{number}-{index}.jpg",
        prompt=f"Describe the image (round {number}).",
        chosen=" ".join(["chosen"] * (4 * number + index) + [f"round{number}"]),
        rejected=f"rejected of round {number} pair {index}",
        rejected_kind="bad_prompt" if index % 2 else "corrupt_lowres",
        chosen_prompt="Look closely and describe.",
        rejected_prompt="Imagine a scene and describe it.",
    )
    values.update(over)
    return PairRecord(**values)


# Round 1: 3 pairs, two dropped by its DPO stage (one for a reason that is markup); round 2
# (chosen): 2 pairs, none dropped; round 3: 4 pairs, no DPO folder, one identical pair
# (recomputed: dropped).
PAIRS = {
    1: [_pair(1, i) for i in range(3)],
    2: [_pair(2, i) for i in range(2)],
    3: [_pair(3, i) for i in range(3)] + [_pair(3, 3, chosen="same text", rejected="same text")],
}
HOSTILE_DROP = "odd" + hostile("round1.dropped")
DROPPED = {1: {"r1-1.jpg": "refusal", "r1-2.jpg": HOSTILE_DROP}, 2: {}}


def _log(number: int) -> list[dict]:
    """Round r's train log: 2 + r steps, every value naming its round (r + step / 100)."""
    steps = 2 + number
    return [
        {
            "step": s,
            "loss": number + s / 100,
            "loss/dpo": number + s / 100 - 0.5,
            "loss/nll": 0.5,
            "rewards/margin": 10 * number + s,
            "rewards/accuracy": 0.1 * number,
            "learning_rate": 1e-7,
        }
        for s in range(1, steps + 1)
    ] + [{"step": steps, "train_loss": number + 0.25}]


def write_rounds_run(root: Path, chosen_in_manifest: int = CHOSEN) -> Path:
    run = root / "run"
    for number, pairs in PAIRS.items():
        folder = run / f"round_{number}"
        folder.mkdir(parents=True)
        (folder / "pairs.jsonl").write_text(
            "".join(json.dumps(p.to_dict()) + "\n" for p in pairs), encoding="utf-8"
        )
        if number in DROPPED:
            dpo = folder / "dpo"
            dpo.mkdir()
            atomic_write_json(dpo / "stic_manifest.json", {"stage": "dpo", "config": {}})
            atomic_write_json(dpo / "train_log.json", _log(number))
            (dpo / "dropped_pairs.jsonl").write_text(
                "".join(
                    json.dumps({"id": i, "reason": reason}) + "\n"
                    for i, reason in DROPPED[number].items()
                )
            )
    table = {
        "rounds": 3,
        "select": {"entry": HOSTILE_ENTRY, "metric": "accuracy", "mode": "max"},
        "round_reference": "previous",
        "round_images": "fresh",
        "table": [
            {
                "round": n,
                "adapter": f"/elsewhere/round_{n}/dpo",  # recorded paths: not what is read
                "pairs_file": f"/elsewhere/round_{n}/pairs.jsonl",
                "pairs_trained": len(PAIRS[n]) - len(DROPPED.get(n, {})),
                "train_loss": n + 0.25,
                "reference_model": "base" if n == 1 else HOSTILE_REFERENCE,
                "accuracy": {1: 0.5, 2: 0.75, 3: 0.625}[n],
            }
            for n in (1, 2, 3)
        ],
        "chosen": CHOSEN,
        "reason": HOSTILE_REASON,
    }
    atomic_write_json(run / "rounds.json", table)
    dpo = run / "dpo"  # the chosen round's copy
    dpo.mkdir()
    atomic_write_json(dpo / "train_log.json", _log(CHOSEN))
    atomic_write_json(
        dpo / "stic_manifest.json",
        {
            "stage": "chosen_round",
            "status": "complete",
            "config": {},
            "summary": {
                "round": chosen_in_manifest,
                "rounds": 3,
                "reason": HOSTILE_REASON,
                "select": {"entry": "val", "metric": "accuracy", "mode": "max", "value": 0.75},
            },
        },
    )
    return run


@pytest.fixture
def run(tmp_path) -> Path:
    return write_rounds_run(tmp_path)


def _ids(number: int) -> list[str]:
    return [p.id for p in PAIRS[number]]


def test_the_browser_shows_the_chosen_rounds_pairs_with_that_rounds_verdicts(run):
    sources = report.sources_from_folder(run)
    assert sources.rounds == run / "rounds.json" and sources.round == CHOSEN
    assert sources.pairs == run / "round_2" / "pairs.jsonl"
    assert sources.pairs_dpo == run / "round_2" / "dpo" and sources.dpo == run / "dpo"
    data = collect_pairs(sources, thumbnails=False)
    assert [r["id"] for r in data["rows"]] == _ids(2)
    assert all(r["v"] == "" for r in data["rows"])  # round 2 dropped nothing
    assert str(run / "round_2" / "dpo") in data["verdict_source"]


def test_round_n_shows_round_ns_pairs_and_verdicts(run):
    sources = report.sources_from_folder(run, ReportSources(round=1))
    assert sources.pairs == run / "round_1" / "pairs.jsonl" and sources.round == 1
    data = collect_pairs(sources, thumbnails=False)
    assert {r["id"]: r["v"] for r in data["rows"]} == {
        "r1-0.jpg": "",
        "r1-1.jpg": "refusal",
        "r1-2.jpg": HOSTILE_DROP,
    }
    # Round 3 has no DPO folder: its verdicts are recomputed, not taken from dpo/ (round 2's).
    sources = report.sources_from_folder(run, ReportSources(round=3))
    assert sources.pairs_dpo is None
    data = collect_pairs(sources, thumbnails=False)
    assert [r["v"] for r in data["rows"]] == ["", "", "", "identical"]


def test_a_round_that_was_not_run_and_round_without_rounds_are_refused(run, tmp_path):
    with pytest.raises(ReportError, match=r"round 4: .*rounds.json has rounds 1-3"):
        report.sources_from_folder(run, ReportSources(round=4))
    plain = tmp_path / "plain"
    (plain / "pairs").mkdir(parents=True)
    (plain / "pairs" / "pairs.jsonl").write_text(json.dumps(PAIRS[1][0].to_dict()) + "\n")
    with pytest.raises(ReportError, match="--round 2 needs a run with rounds.json"):
        report.sources_from_folder(plain, ReportSources(round=2))


def test_each_rounds_audit_counts_its_own_pairs_and_verdicts(run):
    sources = report.sources_from_folder(run)
    audits = round_audits(read_rounds(sources.rounds), sources)
    assert [a["label"] for a in audits] == ["round 1", "round 2 (chosen)", "round 3"]
    assert [a["pairs"] for a in audits] == [
        str(run / f"round_{n}" / "pairs.jsonl") for n in (1, 2, 3)
    ]
    everything = [a["summary"]["by_kind"]["all"] for a in audits]
    assert [(e["n"], e["kept"]) for e in everything] == [(3, 1), (2, 2), (4, 3)]
    assert [e["dropped"]["refusal"] for e in everything] == [1, 0, 0]
    assert [e["dropped"]["identical"] for e in everything] == [0, 0, 1]
    assert [e["dropped"].get(HOSTILE_DROP, 0) for e in everything] == [1, 0, 0]
    # chosen lengths are 4r + index + 1 words (round 3 also "same text", 2): each its own
    assert [e["median_chosen"] for e in everything] == [6, 9.5, 13.5]
    assert [a["summary"]["by_kind"]["bad_prompt"]["n"] for a in audits] == [1, 1, 2]
    # the browser's round, already read, is not read again but gives the same figures
    shown = collect_pairs(sources, thumbnails=False)
    again = round_audits(read_rounds(sources.rounds), sources, shown)
    assert again[1]["summary"] == audits[1]["summary"]


def test_a_missing_rounds_pairs_file_is_said_not_borrowed(run):
    (run / "round_3" / "pairs.jsonl").unlink()
    sources = report.sources_from_folder(run)
    audits = round_audits(read_rounds(sources.rounds), sources)
    assert audits[2]["summary"] is None
    assert audits[2]["problem"] == f"{run / 'round_3' / 'pairs.jsonl'} does not exist"


def test_each_rounds_curves_come_from_its_own_train_log(run):
    entries = round_training(read_rounds(run / "rounds.json"))
    assert [e["label"] for e in entries] == ["round 1", "round 2 (chosen)", "round 3"]
    one, two, three = entries
    assert one["series"]["loss"] == ([1, 2, 3], [1.01, 1.02, 1.03])
    assert two["series"]["loss"] == ([1, 2, 3, 4], [2.01, 2.02, 2.03, 2.04])
    assert two["series"]["rewards/margin"] == ([1, 2, 3, 4], [21, 22, 23, 24])
    assert (one["steps"], two["steps"], one["train_loss"], two["train_loss"]) == (3, 4, 1.25, 2.25)
    assert two["folder"] == str(run / "round_2" / "dpo")  # not dpo/, not the recorded path
    # round 3 trained nothing here: no curve, and why (never round 2's copied log)
    assert three["series"] == {} and "round_3/dpo/train_log.json does not exist" in three["problem"]


def test_the_page_shows_the_rounds_and_escapes_what_the_files_hold(run):
    page_html = build_report(report.sources_from_folder(run))
    page = _Page()
    page.feed(page_html)
    page.close()
    assert _injected(page) == []
    text = "".join(page.text)
    for tag in ("rounds.reason", "rounds.entry", "rounds.reference", "round1.dropped"):
        assert f"[{tag}]" in text, tag
    assert "Self-training rounds" in text
    # the rounds table: one row per round, the chosen one marked, its value and why
    assert "<tr class=chosen data-round=2><td>2</td><td>2</td><td>2.25</td>" in page_html
    assert "<td>0.75</td><td>✓</td>" in page_html
    assert (
        "<tr data-round=1><td>1</td><td>1</td><td>1.25</td><td>base</td><td>0.5</td>" in page_html
    )
    assert "dpo/, the adapter stage 2 and the test entries read, is round 2 by its manifest" in text
    # the per-round audit and the training chart's lines, labelled by round
    assert (
        "id=round-audit><tr><th></th><th>round 1</th><th class=chosen>round 2 (chosen)" in page_html
    )
    chart = page_html[page_html.index('data-chart="train-rounds"') :]
    chart = chart[: chart.index("</figure>")]
    assert "round 1" in chart and "round 2 (chosen)" in chart
    assert "round 3" not in chart  # it has no train log: no line, no legend entry
    # the pair browser's data holds round 2's pairs only
    data = json.loads(page.scripts[0][1])
    assert [r["id"] for r in data["rows"]] == _ids(2)


def test_a_final_adapter_that_is_not_the_chosen_round_is_warned_about(tmp_path):
    run = write_rounds_run(tmp_path, chosen_in_manifest=3)
    found = chosen_adapter(read_rounds(run / "rounds.json"))
    assert found["round"] == 3
    assert found["problem"] == "its manifest names round 3, but rounds.json chose round 2"
    page_html = build_report(report.sources_from_folder(run))
    assert "⚠ dpo/" in page_html and "its manifest names round 3" in page_html


@pytest.mark.parametrize(
    "change, message",
    [
        ({"chosen": 5}, "chosen: 5 is not one of the rounds 1-3"),
        ({"chosen": True}, "chosen: True is not one of the rounds 1-3"),
        ({"table": "x"}, "table: not a list of rounds"),
        ({"table": [{"round": 1}, {"round": 3}]}, "table: rounds 1, 3 are not 1-2 in order"),
        ({"select": "val"}, "select: not an object or null"),
    ],
)
def test_a_rounds_file_that_cannot_say_its_rounds_is_refused(run, change, message):
    path = run / "rounds.json"
    atomic_write_json(path, {**json.loads(path.read_text()), **change})
    with pytest.raises(ReportError, match=f"rounds.json: {message}"):
        report.sources_from_folder(run)


def test_stic_report_round_writes_that_rounds_page(run, tmp_path, capsys):
    out = tmp_path / "r1.html"
    assert report.main([str(run), "--round", "1", "--out", str(out)]) == 0
    page = _Page()
    page.feed(out.read_text(encoding="utf-8"))
    assert [r["id"] for r in json.loads(page.scripts[0][1])["rows"]] == _ids(1)
    assert "round 1's pairs" in "".join(page.text)
    with pytest.raises(ReportError, match="--round needs a run folder"):
        report.main(
            ["--pairs", str(run / "round_1" / "pairs.jsonl"), "--round", "1", "--out", str(out)]
        )
