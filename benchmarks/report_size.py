"""Size and speed of `stic report` on a synthetic 6,000-pair run (no model; see
stic.testing.synthetic_run): 640x480 photo-like JPEGs, chosen answers of 120-250 words, rejected
ones of 40-120, a third of each rejected kind. Prints the file size, what takes the space, the
build time and, with --browser, how long headless Chromium takes to show the first page of pairs.
Each timing is taken --repeats times (default 3; build and browser interleaved) and printed as
its median [min-max], with how busy the machine was meanwhile (benchmarks/measure.py).

    python benchmarks/report_size.py --pairs 6000 --out /tmp/report6k --browser

With --rounds N the run has N self-training rounds of --pairs pairs each (write_synthetic_rounds):
the page shows the chosen round's pairs and a column per round in the audit, and the time the
per-round audits take (every round's records read, no image) is printed apart.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import LoadMonitor, interleaved, spread  # noqa: E402  (benchmarks/measure.py)

from stic.testing.synthetic_run import write_synthetic_rounds, write_synthetic_run  # noqa: E402
from stic.tools.report import (  # noqa: E402
    LARGE_THUMBNAILS,
    ReportSources,
    sources_from_folder,
    write_report,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=6000)
    parser.add_argument("--out", default="/tmp/stic_report_size")
    parser.add_argument("--large-thumbnails", type=int, default=LARGE_THUMBNAILS)
    parser.add_argument("--browser", action="store_true", help="time opening it in Chromium")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each timing (default 3)")
    parser.add_argument("--rounds", type=int, default=1, help="self-training rounds (default 1)")
    parser.add_argument(
        "--image-size", default="640x480", help="WxH of the synthetic images (default 640x480)"
    )
    args = parser.parse_args()
    root = Path(args.out)
    start = time.time()
    size = tuple(int(v) for v in args.image_size.split("x"))
    shape = dict(image_size=size, chosen_words=(120, 250), rejected_words=(40, 120))
    if args.rounds > 1:
        run = write_synthetic_rounds(root, args.pairs, rounds=args.rounds, **shape)
    else:
        run = write_synthetic_run(root, args.pairs, **shape)
    print(f"synthetic run: {args.rounds} x {args.pairs} pairs in {time.time() - start:.0f} s")
    out = root / "report.html"
    sources = sources_from_folder(run, ReportSources())

    def build() -> float:
        began = time.perf_counter()
        write_report(sources, out, args.large_thumbnails)
        return time.perf_counter() - began

    runs = {"build s": build}
    if args.rounds > 1:
        from stic.tools.report_rounds import read_rounds, round_audits

        def audits() -> float:
            began = time.perf_counter()
            round_audits(read_rounds(sources.rounds), sources)
            return time.perf_counter() - began

        runs[f"audits of {args.rounds} rounds s"] = audits
    with LoadMonitor() as load:
        if args.browser:
            from stic.testing.browser import headless_chromium

            with headless_chromium() as driver:
                runs.update(_browser_runs(driver, out))
                figures = interleaved(runs, args.repeats)
        else:
            figures = interleaved(runs, args.repeats)
    text = out.read_text(encoding="utf-8")
    images = sum(len(m) for m in re.findall(r"data:image/jpeg;base64,[A-Za-z0-9+/=]+", text))
    data = re.search(r'<script type="application/json" id="pairs-data">(.*?)</script>', text, re.S)
    rows = json.loads(data.group(1))["rows"]
    words = sum(len(r["c"]) + len(r["r"]) for r in rows)
    print(
        f"report: {out.stat().st_size / 1e6:.1f} MB for {len(rows)} pairs; thumbnails "
        f"{images / 1e6:.1f} MB ({args.large_thumbnails} pairs at 160 px, the rest 64 px), "
        f"answer texts {words / 1e6:.1f} MB"
    )
    for name, values in figures.items():
        print(f"{name:>28}: {spread(values)} (median [min-max] of {len(values)} runs)")
    print(load.report())


def _browser_runs(driver, out: Path) -> dict:
    """Seconds Chromium takes to load the page and show its first pair cards, and the next page."""

    def load_page() -> float:
        began = time.perf_counter()
        driver.get(out.resolve().as_uri())
        cards = driver.execute_script("return document.querySelectorAll('.pair-card').length")
        if not cards:
            raise RuntimeError("the report showed no pair cards")
        return time.perf_counter() - began

    def next_page() -> float:
        began = time.perf_counter()
        driver.find_element("css selector", "#next").click()
        driver.execute_script("return document.querySelectorAll('.pair-card').length")
        return time.perf_counter() - began

    return {"chromium: load, first page s": load_page, "chromium: next page s": next_page}


if __name__ == "__main__":
    main()
