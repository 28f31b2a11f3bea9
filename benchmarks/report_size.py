"""Size and speed of `stic report` on a synthetic 6,000-pair run (no model; see
stic.testing.synthetic_run): 640x480 photo-like JPEGs, chosen answers of 120-250 words, rejected
ones of 40-120, a third of each rejected kind. Prints the file size, what takes the space, the
build time and, with --browser, how long headless Chromium takes to show the first page of pairs.

    python benchmarks/report_size.py --pairs 6000 --out /tmp/report6k --browser
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

from stic.testing.synthetic_run import write_synthetic_run
from stic.tools.report import LARGE_THUMBNAILS, ReportSources, sources_from_folder, write_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=6000)
    parser.add_argument("--out", default="/tmp/stic_report_size")
    parser.add_argument("--large-thumbnails", type=int, default=LARGE_THUMBNAILS)
    parser.add_argument("--browser", action="store_true", help="time opening it in Chromium")
    args = parser.parse_args()
    root = Path(args.out)
    start = time.time()
    run = write_synthetic_run(
        root,
        args.pairs,
        image_size=(640, 480),
        chosen_words=(120, 250),
        rejected_words=(40, 120),
    )
    print(f"synthetic run: {args.pairs} pairs in {time.time() - start:.0f} s")
    start = time.time()
    out = write_report(
        sources_from_folder(run, ReportSources()), root / "report.html", args.large_thumbnails
    )
    built = time.time() - start
    text = out.read_text(encoding="utf-8")
    images = sum(len(m) for m in re.findall(r"data:image/jpeg;base64,[A-Za-z0-9+/=]+", text))
    data = re.search(r'<script type="application/json" id="pairs-data">(.*?)</script>', text, re.S)
    rows = json.loads(data.group(1))["rows"]
    words = sum(len(r["c"]) + len(r["r"]) for r in rows)
    print(
        f"report: {out.stat().st_size / 1e6:.1f} MB for {len(rows)} pairs, built in {built:.0f} s; "
        f"thumbnails {images / 1e6:.1f} MB ({args.large_thumbnails} pairs at 160 px, the rest "
        f"64 px), answer texts {words / 1e6:.1f} MB"
    )
    if args.browser:
        from stic.testing.browser import headless_chromium

        with headless_chromium() as driver:
            start = time.time()
            driver.get(out.resolve().as_uri())
            cards = driver.execute_script("return document.querySelectorAll('.pair-card').length")
            print(
                f"chromium: {time.time() - start:.1f} s to load the page and show {cards} pair cards"
            )
            start = time.time()
            driver.find_element("css selector", "#next").click()
            driver.execute_script("return document.querySelectorAll('.pair-card').length")
            print(f"chromium: {time.time() - start:.2f} s to show the next page")


if __name__ == "__main__":
    main()
