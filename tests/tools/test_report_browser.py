"""stic report in a real browser: Debian's headless chromium, driven by Selenium.

The page of a synthetic 60-pair run opens without console errors, shows its sections and one
page of 50 pair cards, a filter click changes what is shown, the thumbnails decode, and a
screenshot is not blank. Chromium missing is a failure that says how to install it, never a
skip (`make test` installs it when it can).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from stic.testing.browser import BrowserMissing, find_browser, headless_chromium
from stic.testing.synthetic_run import write_synthetic_run
from stic.tools.report import sources_from_folder, write_report

pytestmark = pytest.mark.slow

N = 60  # more than one page of 50


@pytest.fixture(scope="module")
def report_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    run = write_synthetic_run(root, N, image_size=(96, 72))
    return write_report(sources_from_folder(run), root / "report.html")


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
        assert _count(driver, ".pair-card") == N - 50
        driver.execute_script("window.scrollTo(0, 0)")

        shot = np.asarray(Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("L"))
        assert shot.std() > 20, "the screenshot is (nearly) one colour"

        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
