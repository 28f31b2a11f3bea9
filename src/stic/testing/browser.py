"""A headless Chromium driven by Selenium, for checking pages that stic writes (the report).

Uses Debian's ``chromium`` and ``chromium-driver`` packages (``make test`` installs them
when it can); nothing is downloaded at run time: the driver is given by path, so Selenium
Manager never runs.
"""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path

INSTALL = (
    "the browser test needs Debian's chromium and chromium-driver: run `make test` as root "
    "(it runs `apt-get install -y chromium chromium-driver`), or install them yourself"
)


class BrowserMissing(RuntimeError):
    """Chromium, its driver or Selenium is not installed; the message says how to install it."""


def find_browser() -> tuple[str, str]:
    """``(chromium, chromedriver)`` paths; BrowserMissing naming what is missing."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or (
        "/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None
    )
    missing = [
        name for name, path in (("chromium", chromium), ("chromedriver", driver)) if not path
    ]
    if missing:
        raise BrowserMissing(f"{', '.join(missing)} not found: {INSTALL}")
    try:
        import selenium  # noqa: F401
    except ImportError as e:
        raise BrowserMissing("selenium is not installed: pip install -e '.[test]'") from e
    return chromium, driver


@contextmanager
def headless_chromium(width: int = 1400, height: int = 1000):
    """A Selenium WebDriver on headless Chromium that records the console (``get_log("browser")``)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = find_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in a container has no user namespace for the sandbox
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--window-size={width},{height}",
        "--allow-file-access-from-files",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


# What each pair card of a stic report shows, read from the page's elements by their classes.
_PAIR_CARDS_JS = """
return [...document.querySelectorAll('.pair-card')].map(c => {
  const one = s => { const e = c.querySelector(s); return e === null ? null : e.textContent; };
  return {id: c.dataset.id, shown_id: one('.pair-id'), image: one('.pair-image'),
          kind: one('.badge.kind'), verdict: one('.verdict'),
          kept: c.querySelector('.badge.kept') !== null,
          prompt: one('.prompt'), chosen_prompt: one('.chosen-prompt'),
          rejected_prompt: one('.rejected-prompt'),
          chosen_head: one('.side.chosen h4'), chosen: one('.side.chosen .text'),
          rejected_head: one('.side.rejected h4'), rejected: one('.side.rejected .text'),
          captions: [...c.querySelectorAll('figcaption, .noimg')].map(e => e.textContent)};
});
"""


def pair_cards(driver) -> list[dict]:
    """The pair cards a stic report shows now, in page order: for each, the text of its id,
    image, kind, verdict (None when kept), the three prompts, each side's header and answer,
    and the image captions."""
    return driver.execute_script(_PAIR_CARDS_JS)
