"""stic report on a run whose files and folders hold hostile markup in every string.

Reports are made to be shared: whoever opens one must not run script that a pairs file, a
result, a train log, a manifest or a folder name put there. The run below is the synthetic one
with every string field (and the run, image, adapter, bench and arm folder names, the image file
names, category and metric names, the demo's results.md) carrying script tags, event-handler
attributes, ``</script>``, ``<!--``, ``javascript:`` URLs, quotes and U+2028/2029; values that
should be numbers (``n``, accuracies, steps, losses, metrics) are hostile strings in some
files. Each payload names its field (``[tag]``) and, if it ever ran, would push that tag to
``window.__xss``.

Fast test: the page's HTML, parsed as a browser's tokenizer does, holds no element or attribute
the files put there, and every value is still shown as text. Browser test (slow): headless
Chromium opens it, renders every page of pair cards, filters and searches; no injected script
ran, no injected element exists, and each card shows its record's fields as text.
"""

from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

from stic.runtime.files import atomic_write_json, atomic_write_text, read_json
from stic.testing.browser import BrowserMissing, find_browser, headless_chromium, pair_cards
from stic.testing.synthetic_run import write_synthetic_run
from stic.tools.report import build_report, sources_from_folder, write_report
from tests.tools.test_report_browser import check_cards

N = 55  # more than one page of 50 cards


def _run_js(tag: str) -> str:
    return f"(window.__xss=window.__xss||[]).push('{tag}')"


def hostile(tag: str) -> str:
    """Markup that runs ``_run_js(tag)`` wherever it is put into HTML unescaped."""
    js = _run_js(tag)
    return (
        f' [{tag}] <script>{js}</script><img src=x onerror="{js}"><svg onload={js}>'
        f"\"'><b onmouseover={js} id=injected>b</b></script><script>{js}</script>"
        f"<!--<script>{js}</script>--> javascript:{js} \u2028\u2029</title></textarea>"
        f'<a href="javascript:{js}">link</a>'
    )


def hostile_name(tag: str) -> str:
    """For file and folder names: no ``/``."""
    js = _run_js(tag)
    return f'[{tag}]<img src=x onerror="{js}">"\'<svg onload={js}>'


def _append(value, tag: str):
    """Every string inside ``value`` with its own payload appended."""
    if isinstance(value, str):
        return value + hostile(tag)
    if isinstance(value, dict):
        return {k: _append(v, f"{tag}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_append(v, f"{tag}.{i}") for i, v in enumerate(value)]
    return value


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


# Fields the pairs reader allows only a fixed set of values in (it refuses anything else).
# The corruption is kept too (but on two pairs below) so that the rebuilt images are shown.
ENUMERATED = ("rejected_kind", "chosen_finish", "rejected_finish", "schema_version", "corruption")


def write_hostile_run(root: Path) -> dict:
    """A `stic demo`-shaped folder around a hostile synthetic run; returns what was written:
    ``folder`` (to report on), ``pairs`` (the records as written) and ``dropped`` (id ->
    reason)."""
    made = write_synthetic_run(root, N, image_size=(48, 36))
    images = root / f"images{hostile_name('images-folder')}"
    (root / "images").rename(images)
    demo = root / f"demo{hostile_name('demo-folder')}"
    run = demo / "seed0" / "stic"
    run.parent.mkdir(parents=True)
    made.rename(run)

    pairs = []
    for i, row in enumerate(read_jsonl_rows(run / "pairs" / "pairs.jsonl")):
        name = f"img_{i:05d}{hostile_name(f'p{i}.file')}.jpg"
        (images / row["image"]).rename(images / name)
        fixed = {k: row[k] for k in ENUMERATED}
        row = _append(row, f"p{i}")
        row.update(fixed, image=name, id=name if i % 2 else name + hostile(f"p{i}.id"))
        row["source"] = {"tool": hostile(f"p{i}.source")}
        if i == 1:  # a value of the wrong type: the corruption is not rebuilt, and says why
            row["corruption"] = {"kind": "lowres", "short_side": hostile("p1.corruption.value")}
        if i == 2:
            row["corruption"] = {"kind": hostile("p2.corruption.kind")}
        pairs.append(row)
    _write_jsonl(run / "pairs" / "pairs.jsonl", pairs)
    manifest = run / "pairs" / "pairs.jsonl.manifest.json"
    config = read_json(manifest)["config"]
    config = {**_append(config, "pairs-manifest"), "images": str(images.resolve())}
    atomic_write_json(manifest, {"stage": hostile("stage"), "status": "complete", "config": config})

    by_id = {p["id"]: p for p in pairs}
    old = read_jsonl_rows(run / "dpo" / "dropped_pairs.jsonl")
    dropped = {}
    for row in old:
        index = int(row["id"][4:9])
        pair = pairs[index]
        dropped[pair["id"]] = row["reason"] + hostile(f"reason.{row['reason']}")
    assert set(dropped) <= set(by_id)
    _write_jsonl(
        run / "dpo" / "dropped_pairs.jsonl",
        [{"reason": reason, **by_id[pid]} for pid, reason in dropped.items()],
    )
    dpo_manifest = run / "dpo" / "stic_manifest.json"
    atomic_write_json(dpo_manifest, _append(read_json(dpo_manifest), "dpo-manifest"))
    for stage in ("dpo", "sft"):
        log = read_json(run / stage / "train_log.json")
        log[1:1] = [
            {"step": hostile(f"{stage}.step"), "loss": hostile(f"{stage}.loss")},
            hostile(f"{stage}.entry"),
            {"train_loss": hostile(f"{stage}.train_loss"), "note": hostile(f"{stage}.note")},
        ]
        atomic_write_json(run / stage / "train_log.json", log)

    # eval results: strings hostile; the adapter folder and the data file have hostile names
    data = str(root / f"vqa{hostile_name('data-file')}.jsonl")
    adapter = str(root / hostile_name("adapter-folder"))
    for path in sorted((run / "eval").glob("*.json")):
        if path.name.endswith(".manifest.json"):
            continue
        atomic_write_json(path, _append(read_json(path), f"eval.{path.stem}"))
        manifest = path.with_name(path.name + ".manifest.json")
        config = read_json(manifest)["config"]
        config = {
            **_append(config, f"eval-manifest.{path.stem}"),
            "data": data,
            "dar": config["dar"],
            "adapter": None if config["adapter"] is None else adapter,
        }
        atomic_write_json(manifest, {"stage": "eval", "status": "complete", "config": config})
    broken = run / "eval" / f"{hostile_name('eval-file')}.json"
    atomic_write_json(
        broken,
        {"accuracy": hostile("eval.accuracy"), "n": hostile("eval.n"), "dar": hostile("eval.dar"),
         "adapter": adapter + "2", "items": hostile("eval.items")},
    )  # fmt: skip

    # bench results: the final one under a hostile folder name, with hostile metric names
    benchmark, metric = hostile("bench.benchmark"), hostile("bench.metric")
    axis, label = hostile("bench.axis"), hostile("bench.label")
    final = run / "bench" / hostile_name("bench-folder")
    (run / "bench" / "final").rename(final)
    for folder, score in ((run / "bench" / "base", 40.0), (final, 44.5)):
        path = folder / "textvqa.json"
        document = {
            "benchmark": benchmark,
            "n": hostile("bench.n"),
            "primary_metric": metric,
            "metrics": {metric: score},
            "categories": {axis: {label: {metric: score - 5, "n": hostile("bench.category.n")}}},
            "adapter": None if folder.name == "base" else adapter,
            "dar": folder.name != "base",
            "items": [
                {
                    "id": hostile(f"bench.item{i}.id"),
                    "question": hostile(f"bench.item{i}.q"),
                    "description": hostile(f"bench.item{i}.description"),
                    "answer": hostile(f"bench.item{i}.answer"),
                    "prediction": hostile(f"bench.item{i}.prediction"),
                    "score": i % 2,
                }
                for i in range(4)
            ],  # fmt: skip
        }
        atomic_write_json(path, document)
        atomic_write_json(
            path.with_name(path.name + ".manifest.json"),
            {"config": {"adapter": document["adapter"], "benchmark": benchmark}},
        )
    atomic_write_json(
        run / "bench" / "base" / "broken.json",
        {"benchmark": hostile("broken.benchmark"), "metrics": hostile("broken.metrics"),
         "categories": [hostile("broken.categories")], "n": 3, "items": [hostile("broken.item")]},
    )  # fmt: skip

    # the demo around it: another arm under a hostile folder name, and results.md
    arm = demo / "seed0" / hostile_name("arm-folder")
    shutil.copytree(run / "eval", arm / "eval")
    atomic_write_text(arm / "resolved_config.yaml", "model: m\n")
    atomic_write_json(demo / "results.json", {"arms": {}})
    atomic_write_text(
        demo / "results.md",
        f"# STIC demo{hostile('md.heading')}\n\nSome words{hostile('md.text')}\n\n"
        f"| arm | VQA{hostile('md.head')} |\n|---|---|\n| base{hostile('md.cell')} | 50.0 |\n",
    )
    return {"folder": demo, "pairs": pairs, "dropped": dropped}


def read_jsonl_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    return write_hostile_run(tmp_path_factory.mktemp("hostile"))


# Tags whose values the page shows as static HTML (the pair cards are drawn by the page's script
# and checked in the browser test).
STATIC_TAGS = (
    "demo-folder", "arm-folder", "adapter-folder", "bench-folder", "data-file", "eval-file",
    "reason.truncated", "reason.near_duplicate", "eval.stic.items.0.question",
    "eval.stic_dar.items.1.description", "eval.stic_dar.items.7.prediction", "eval.n",
    "bench.benchmark", "bench.metric", "bench.axis", "bench.label", "bench.n", "bench.category.n",
    "bench.item0.description", "bench.item1.answer", "broken.benchmark", "md.heading", "md.text",
    "md.head", "md.cell", "images-folder",
)  # fmt: skip


class _Page(HTMLParser):
    """What an HTML tokenizer makes of the page: its elements, attributes, scripts and text."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags, self.attributes, self.scripts, self.text, self.title = [], [], [], [], ""
        self._in = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attributes += [(tag, name, value or "") for name, value in attrs]
        if tag in ("script", "style", "title"):
            self._in.append([tag, dict(attrs), ""])

    def handle_endtag(self, tag):
        if self._in and self._in[-1][0] == tag:
            name, attrs, content = self._in.pop()
            if name == "script":
                self.scripts.append((attrs, content))
            elif name == "title":
                self.title = content

    def handle_data(self, data):
        if self._in:
            self._in[-1][2] += data
        else:
            self.text.append(data)


def _injected(page: _Page) -> list[str]:
    """Elements and attributes the page's own code never writes."""
    problems = [f"{tag} {name}={value!r}" for tag, name, value in page.attributes
                if name.startswith("on") or value.strip().lower().startswith("javascript:")
                or (name == "id" and value == "injected")]  # fmt: skip
    problems += [tag for tag in page.tags if tag in ("img", "iframe", "object", "embed", "form")]
    problems += [
        f"a href={v!r}" for t, n, v in page.attributes if t == "a" and not v.startswith("#")
    ]
    if page.tags.count("script") != 2:
        problems.append(f"{page.tags.count('script')} script elements")
    if page.tags.count("svg") != page.tags.count("figure"):
        problems.append("an svg outside the charts")
    return problems


def test_hostile_values_are_shown_as_text_and_inject_nothing(hostile_run):
    html = build_report(sources_from_folder(hostile_run["folder"]))
    page = _Page()
    page.feed(html)
    page.close()
    assert _injected(page) == []
    data_attrs, data = page.scripts[0]
    assert data_attrs == {"type": "application/json", "id": "pairs-data"}
    for forbidden in ("</script", "<!--", "\u2028", "\u2029", "<", ">"):
        assert forbidden not in data
    rows = json.loads(data)["rows"]  # the data block reads back as the records
    assert [(r["id"], r["c"], r["r"]) for r in rows] == [
        (p["id"], p["chosen"], p["rejected"]) for p in hostile_run["pairs"]
    ]
    text = "".join(page.text)
    missing = [tag for tag in STATIC_TAGS if f"[{tag}]" not in text]
    assert missing == []
    assert page.title == f"stic demo: {hostile_run['folder']}"  # the folder name, as text
    # a value that is no number is shown as text and never computed with
    assert hostile("eval.n").strip()[:40] in text


# ----------------------------------------------------------------------------- browser

INJECTED_JS = """
const bad = [];
for (const e of document.querySelectorAll('*')) {
  for (const a of e.attributes) {
    if (a.name.startsWith('on') || a.value.trim().toLowerCase().startsWith('javascript:'))
      bad.push(e.tagName + ' ' + a.name);
  }
}
for (const i of document.querySelectorAll('img'))
  if (!i.getAttribute('src').startsWith('data:image/jpeg;base64,')) bad.push('img ' + i.src);
if (document.querySelectorAll('script').length !== 2) bad.push('scripts');
if (document.getElementById('injected')) bad.push('#injected');
for (const a of document.querySelectorAll('a'))
  if (!a.getAttribute('href').startsWith('#')) bad.push('a ' + a.href);
return {bad: bad, ran: window.__xss || []};
"""


@pytest.mark.slow
def test_a_hostile_report_runs_no_injected_script_in_chromium(hostile_run, tmp_path):
    try:
        find_browser()
    except BrowserMissing as e:
        pytest.fail(str(e))
    from selenium.webdriver.support.ui import WebDriverWait

    path = write_report(sources_from_folder(hostile_run["folder"]), tmp_path / "report.html")
    pairs, dropped = hostile_run["pairs"], hostile_run["dropped"]

    def clean(driver) -> None:
        found = driver.execute_script(INJECTED_JS)
        assert found == {"bad": [], "ran": []}

    with headless_chromium() as driver:
        driver.get(path.resolve().as_uri())
        clean(driver)
        assert driver.title == f"stic demo: {hostile_run['folder']}"
        assert driver.find_element("id", "count").text == f"{N} of {N} pairs match"
        first = pair_cards(driver)
        assert [c["id"] for c in first] == [p["id"] for p in pairs[:50]]
        check_cards(first, pairs, dropped)
        # the corruption that could not be rebuilt says why, as text
        captions = " ".join(first[1]["captions"] + first[2]["captions"])
        assert "[p1.corruption.value]" in captions and "[p2.corruption.kind]" in captions

        driver.find_element("id", "next").click()
        clean(driver)
        rest = pair_cards(driver)
        assert [c["id"] for c in rest] == [p["id"] for p in pairs[50:]]
        check_cards(rest, pairs, dropped)

        # a verdict whose name is hostile markup still filters
        reason = next(iter(set(dropped.values())))
        options = driver.find_elements("css selector", "#verdict option")
        next(o for o in options if o.get_attribute("value") == "dropped:" + reason).click()
        clean(driver)
        cards = pair_cards(driver)
        assert sorted(c["id"] for c in cards) == sorted(
            i for i, r in dropped.items() if r == reason
        )
        check_cards(cards, pairs, dropped)
        driver.find_element("css selector", "#verdict option[value='all']").click()

        # search finds one pair by a payload of its rejected answer
        driver.find_element("id", "search").send_keys("[p7.rejected]")
        WebDriverWait(driver, 10).until(lambda d: len(pair_cards(d)) == 1)
        clean(driver)
        (card,) = pair_cards(driver)
        assert card["id"] == pairs[7]["id"]
        check_cards([card], pairs, dropped)

        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
