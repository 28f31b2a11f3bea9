"""Every pair-quality filter setting reaches the filters and changes what is kept: from the
`stic dpo` command line through DPOConfig to the stage's filtering and the dropped-pairs file,
and from a DPO run's manifest to the report's recomputed verdicts. A setting silently ignored
anywhere on the way fails here (issue 22)."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import pytest
from PIL import Image

from stic.cli import _parse_stage
from stic.data.filters import FILTERS, FilterSettings, filter_pairs
from stic.data.schemas import PairRecord
from stic.runtime.files import atomic_write_json
from stic.tools import report
from stic.tools.report import ReportSources

GOOD = PairRecord(
    id="good.jpg",
    image="good.jpg",
    prompt="Summarize the visual content presented.",
    chosen="A red square sits on the left of a grey background.",
    rejected="A red square, a dog and two trees stand in a sunny park.",
    rejected_kind="bad_prompt",
    chosen_prompt="good",
    rejected_prompt="bad",
)
# One pair per filter, each dropped by that filter alone (an identical pair is also a near copy,
# so with `identical` off it is dropped as a near duplicate).
TRIGGERS = {
    "identical": replace(GOOD, id="identical.jpg", image="identical.jpg", rejected=GOOD.chosen),
    "empty": replace(GOOD, id="empty.jpg", image="empty.jpg", chosen=" "),
    "truncated": replace(GOOD, id="truncated.jpg", image="truncated.jpg", rejected_finish="length"),
    "refusal": replace(GOOD, id="refusal.jpg", image="refusal.jpg", chosen="I'm sorry, I can't."),
    "near_duplicate": replace(
        GOOD,
        id="near.jpg",
        image="near.jpg",
        rejected=GOOD.chosen.replace("grey", "gray"),  # 10 of 11 words shared: ratio 0.909
    ),
}
# Its ratio is 0.8 (8 of 10 words): dropped at a threshold of 0.75, kept at the default 0.9.
HALF_COPY = replace(
    GOOD,
    id="half.jpg",
    image="half.jpg",
    chosen="one two three four five six seven eight nine ten",
    rejected="one two three four five six seven eight eleven twelve",
)
PAIRS = [GOOD, *TRIGGERS.values(), HALF_COPY]
# The DPOConfig switch (and `stic dpo` flag) of each filter.
SWITCH = {
    "identical": "filter_identical",
    "empty": "filter_empty",
    "truncated": "filter_truncated",
    "refusal": "filter_refusals",
    "near_duplicate": "filter_near_duplicates",
}
DEFAULT_VERDICTS = {
    "good.jpg": None,
    **{pair.id: name for name, pair in TRIGGERS.items()},
    "half.jpg": None,
}


def verdicts(settings: FilterSettings) -> dict[str, str | None]:
    kept, dropped, counts = filter_pairs(PAIRS, settings)
    out = {p.id: None for p in kept} | {p.id: reason for reason, p in dropped}
    assert sum(counts.values()) == len(dropped)
    return out


def expected_off(name: str) -> dict[str, str | None]:
    """The verdicts with filter ``name`` off: its pair kept (the identical one: a near copy)."""
    pair_id = TRIGGERS[name].id
    return DEFAULT_VERDICTS | {pair_id: "near_duplicate" if name == "identical" else None}


def dpo_argv(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "--pairs",
        str(tmp_path / "pairs.jsonl"),
        "--images",
        str(tmp_path / "images"),
        "--model",
        str(tmp_path / "no-model-here"),
        "--out",
        str(tmp_path / "dpo"),
        *extra,
    ]


def test_every_filter_is_in_the_table_of_switches():
    assert set(SWITCH) == set(FILTERS) == set(TRIGGERS)


def test_the_default_command_line_drops_each_trigger_pair_by_its_own_filter(tmp_path):
    config = _parse_stage("dpo", dpo_argv(tmp_path))
    assert FilterSettings.of(config) == FilterSettings()
    assert verdicts(FilterSettings.of(config)) == DEFAULT_VERDICTS


@pytest.mark.parametrize("name", FILTERS)
def test_switching_a_filter_off_on_the_command_line_keeps_its_pairs(tmp_path, name):
    flag = "--" + SWITCH[name].replace("_", "-")
    config = _parse_stage("dpo", dpo_argv(tmp_path, flag, "false"))
    assert getattr(config, SWITCH[name]) is False
    assert verdicts(FilterSettings.of(config)) == expected_off(name)


@pytest.mark.parametrize("threshold, half_copy", [(0.75, "near_duplicate"), (0.85, None)])
def test_the_near_duplicate_threshold_from_the_command_line_decides(tmp_path, threshold, half_copy):
    argv = dpo_argv(tmp_path, "--near-duplicate-threshold", str(threshold))
    settings = FilterSettings.of(_parse_stage("dpo", argv))
    assert settings.near_duplicate_threshold == threshold
    assert verdicts(settings) == DEFAULT_VERDICTS | {"half.jpg": half_copy}


def _write_pairs(tmp_path: Path, pairs: list[PairRecord]) -> None:
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    for pair in pairs:
        Image.new("RGB", (8, 8), (120, 40, 200)).save(images / pair.image)
    (tmp_path / "pairs.jsonl").write_text(
        "".join(json.dumps(p.to_dict()) + "\n" for p in pairs), encoding="utf-8"
    )


@pytest.mark.parametrize("name", FILTERS)
def test_the_dpo_stage_filters_with_the_settings_it_is_given(tmp_path, monkeypatch, name):
    """The stage itself: with the trigger pairs only, every pair is dropped and the stage stops
    before loading the model, naming the counts; with one filter off, its pair is kept and the
    stage goes on to load the model (not there: it stops). What the stage's filtering kept and
    dropped is watched by wrapping the filter function it calls."""
    import stic.stages.dpo as dpo

    seen: list = []

    def watched(pairs, settings):
        kept, dropped, counts = filter_pairs(pairs, settings)
        seen.append(({p.id for p in kept}, {p.id: r for r, p in dropped}))
        return kept, dropped, counts

    monkeypatch.setattr(dpo, "filter_pairs", watched)
    _write_pairs(tmp_path, [TRIGGERS[n] for n in FILTERS])
    with pytest.raises(ValueError, match="no pairs left after the quality filters") as info:
        dpo.run_dpo(_parse_stage("dpo", dpo_argv(tmp_path)))
    assert all(f"'{n}': 1" in str(info.value) for n in FILTERS)
    assert seen.pop() == (set(), {TRIGGERS[n].id: n for n in FILTERS})

    flag = "--" + SWITCH[name].replace("_", "-")
    config = _parse_stage("dpo", dpo_argv(tmp_path, flag, "false"))
    with pytest.raises(Exception) as info:
        dpo.run_dpo(config)
    if name == "identical":  # the identical pair is then dropped as a near copy: none left
        assert "'identical': 0" in str(info.value) and "'near_duplicate': 2" in str(info.value)
    else:
        assert "no pairs left" not in str(info.value)
    kept, dropped = seen.pop()
    expected = {TRIGGERS[n].id: n for n in FILTERS if n != name}
    if name == "identical":
        expected[TRIGGERS[name].id] = "near_duplicate"
    assert dropped == expected
    assert kept == ({TRIGGERS[name].id} if name != "identical" else set())


def _report_rows(tmp_path: Path, dpo_config: dict | None) -> dict[str, str]:
    pairs_file = tmp_path / "pairs.jsonl"
    pairs_file.write_text("".join(json.dumps(p.to_dict()) + "\n" for p in PAIRS), encoding="utf-8")
    dpo = None
    if dpo_config is not None:
        dpo = tmp_path / "dpo"
        dpo.mkdir()
        atomic_write_json(dpo / "stic_manifest.json", {"stage": "dpo", "config": dpo_config})
    data = report.collect_pairs(ReportSources(pairs=pairs_file, dpo=dpo))
    return {row["id"]: row["v"] or None for row in data["rows"]}


def test_the_report_recomputes_verdicts_with_the_default_filters_without_a_dpo_run(tmp_path):
    assert _report_rows(tmp_path, None) == DEFAULT_VERDICTS


@pytest.mark.parametrize("name", FILTERS)
def test_the_report_recomputes_verdicts_with_the_dpo_runs_switches(tmp_path, name):
    config = asdict(_parse_stage("dpo", dpo_argv(tmp_path, "--" + SWITCH[name], "false")))
    assert _report_rows(tmp_path, config) == expected_off(name)


def test_the_report_uses_the_dpo_runs_near_duplicate_threshold(tmp_path):
    config = asdict(_parse_stage("dpo", dpo_argv(tmp_path, "--near-duplicate-threshold", "0.75")))
    rows = _report_rows(tmp_path, config)
    assert rows == DEFAULT_VERDICTS | {"half.jpg": "near_duplicate"}
    data = report.collect_pairs(ReportSources(pairs=tmp_path / "pairs.jsonl", dpo=tmp_path / "dpo"))
    assert data["threshold"] == 0.75
    assert {r["id"]: r["nd"] for r in data["rows"]}["half.jpg"] is True
