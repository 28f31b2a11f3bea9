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
