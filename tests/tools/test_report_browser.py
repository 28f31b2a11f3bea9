"""stic report in a real browser: Debian's headless chromium, driven by Selenium.

The page of a synthetic 60-pair run opens without console errors, shows its sections and one
page of 50 pair cards, each card showing its record's fields in their places (chosen answer in
the chosen column, rejected in the rejected one, the three prompts, kind, verdict, finish
reasons), a filter click changes what is shown, the thumbnails decode, and a screenshot is not
blank. A run with self-training rounds shows its rounds table, a per-round audit, every round's
curves, and the chosen round's pairs as cards. Chromium missing is a failure that says how to install it, never a
skip (`make test` installs it when it can).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stic.testing.browser import BrowserMissing, find_browser, headless_chromium, pair_cards
from stic.testing.synthetic_run import write_synthetic_rounds, write_synthetic_run
from stic.tools.report import sources_from_folder, write_report

pytestmark = pytest.mark.slow

N = 60  # more than one page of 50


@pytest.fixture(scope="module")
def report_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    run = write_synthetic_run(root, N, image_size=(96, 72))
    return write_report(sources_from_folder(run), root / "report.html")


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def expected_card(pair: dict, dropped: dict) -> dict:
    """What the card of the record ``pair`` must show, each field in its own place (lengths in
    words: no tokenizer is on disk for these runs)."""
    return {
        "id": pair["id"],
        "shown_id": pair["id"],
        "image": None if pair["image"] == pair["id"] else pair["image"],
        "kind": pair["rejected_kind"],
        "verdict": dropped.get(pair["id"]),
        "kept": pair["id"] not in dropped,
        "prompt": pair["prompt"],
        "chosen_prompt": pair["chosen_prompt"],
        "rejected_prompt": pair["rejected_prompt"],
        "chosen_head": f"chosen · {len(pair['chosen'].split())} words · finish "
        f"{pair['chosen_finish']}",
        "chosen": pair["chosen"],
        "rejected_head": f"rejected · {len(pair['rejected'].split())} words · finish "
        f"{pair['rejected_finish']}",
        "rejected": pair["rejected"],
    }


def check_cards(cards: list[dict], pairs: list[dict], dropped: dict) -> None:
    """Every shown card against its record in ``pairs`` and its verdict in ``dropped``."""
    by_id = {p["id"]: p for p in pairs}
    for card in cards:
        want = expected_card(by_id[card["id"]], dropped)
        assert {k: card[k] for k in want} == want, card["id"]


def _count(driver, selector: str) -> int:
    return driver.execute_script(f"return document.querySelectorAll({selector!r}).length")


def test_the_report_works_in_headless_chromium(report_path):
    try:
        find_browser()
    except BrowserMissing as e:
        pytest.fail(str(e))
    with headless_chromium() as driver:
        driver.get(report_path.resolve().as_uri())
        for section in ("audit", "pairs", "training", "results"):
            assert _count(driver, f"section#{section}") == 1, section
        assert _count(driver, "figure.chart svg") == 3
        assert _count(driver, ".pair-card") == 50
        assert driver.find_element("id", "count").text == f"{N} of {N} pairs match"

        # each card against the records: the pairs file and the DPO stage's dropped pairs
        run = report_path.parent / "run"
        pairs = _records(run / "pairs" / "pairs.jsonl")
        dropped = {d["id"]: d["reason"] for d in _records(run / "dpo" / "dropped_pairs.jsonl")}
        cards = pair_cards(driver)
        assert [c["id"] for c in cards] == [p["id"] for p in pairs[:50]]
        check_cards(cards, pairs, dropped)
        assert {c["verdict"] for c in cards} == {None, "truncated", "near_duplicate"}

        # a filter click: only the low-resolution pairs (every third)
        driver.find_element("css selector", '#kind-chips .chip[data-kind="corrupt_lowres"]').click()
        kinds = driver.execute_script(
            "return [...document.querySelectorAll('.pair-card')].map(c => c.dataset.kind)"
        )
        assert len(kinds) == N // 3 and set(kinds) == {"corrupt_lowres"}
        driver.find_element("css selector", "#verdict option[value='kept']").click()
        assert 0 < _count(driver, ".pair-card") < N // 3

        # every thumbnail decodes: clean and rebuilt corrupted images
        images = driver.execute_script(
            "return [...document.querySelectorAll('.pair-card img')]"
            ".map(i => [i.complete, i.naturalWidth])"
        )
        assert len(images) >= 2 * _count(driver, ".pair-card")
        assert all(complete and width > 0 for complete, width in images), images
        # the word-level difference is drawn
        assert _count(driver, "mark.only-c") > 0 and _count(driver, "mark.only-r") > 0

        driver.find_element("css selector", '#kind-chips .chip[data-kind="all"]').click()
        driver.find_element("css selector", "#verdict option[value='all']").click()
        driver.find_element("id", "next").click()
        cards = pair_cards(driver)
        assert [c["id"] for c in cards] == [p["id"] for p in pairs[50:]]
        check_cards(cards, pairs, dropped)
        driver.execute_script("window.scrollTo(0, 0)")

        shot = np.asarray(Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("L"))
        assert shot.std() > 20, "the screenshot is (nearly) one colour"

        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []


def test_a_report_with_rounds_shows_the_chosen_rounds_pairs_in_headless_chromium(tmp_path):
    try:
        find_browser()
    except BrowserMissing as e:
        pytest.fail(str(e))
    run = write_synthetic_rounds(tmp_path, 12, rounds=3, chosen=2, image_size=(48, 36))
    path = write_report(sources_from_folder(run), tmp_path / "report.html")
    with headless_chromium() as driver:
        driver.get(path.resolve().as_uri())
        for section in ("rounds", "audit", "pairs", "training", "results"):
            assert _count(driver, f"section#{section}") == 1, section
        rows = driver.execute_script(
            "return [...document.querySelectorAll('#rounds tr[data-round]')]"
            ".map(r => [r.dataset.round, r.className])"
        )
        assert rows == [["1", ""], ["2", "chosen"], ["3", ""]]
        heads = driver.execute_script(
            "return [...document.querySelectorAll('#round-audit tr:first-child th')]"
            ".map(h => h.textContent)"
        )
        assert heads == ["", "round 1", "round 2 (chosen)", "round 3"]
        legend = driver.execute_script(
            "return document.querySelector('figure[data-chart=\"train-rounds\"]').textContent"
        )
        assert all(f"round {n}" in legend for n in (1, 2, 3)) and "(chosen)" in legend

        # the cards are round 2's records, with round 2's DPO verdicts
        pairs = _records(run / "round_2" / "pairs.jsonl")
        dropped = {
            d["id"]: d["reason"] for d in _records(run / "round_2" / "dpo" / "dropped_pairs.jsonl")
        }
        cards = pair_cards(driver)
        assert [c["id"] for c in cards] == [p["id"] for p in pairs]
        check_cards(cards, pairs, dropped)
        assert {c["chosen"] for c in cards}.isdisjoint(
            p["chosen"] for p in _records(run / "round_1" / "pairs.jsonl")
        )
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
