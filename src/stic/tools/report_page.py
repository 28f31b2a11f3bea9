"""The page of ``stic report``: one HTML file with its styles, script and data inline.

The pair browser renders 50 cards at a time from one inline JSON array, so a run of thousands
of pairs opens at once: the browser parses the array (a few MB) and builds only the visible
cards; the word-level difference of chosen and rejected is computed per shown card (longest
common subsequence of words). Vanilla JavaScript; nothing is fetched.
"""

from __future__ import annotations

import html
import json
import re
import time

from stic.runtime.manifests import library_versions

SECTION_TITLES = {
    "demo": "Demo results",
    "rounds": "Self-training rounds",
    "audit": "Audit of the preference pairs",
    "pairs": "Pair browser",
    "training": "Training",
    "results": "Results",
}

CSS = """
:root { --fg:#1d2330; --muted:#667085; --line:#d9dee7; --bg:#f6f7f9; --card:#fff;
  --chosen:#e7f6ec; --rejected:#fdecec; --accent:#2f5fd0; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
  color:var(--fg); background:var(--bg); }
header.top { background:#1d2330; color:#fff; padding:14px 24px; }
header.top h1 { margin:0 0 4px; font-size:20px; }
header.top .meta { color:#c5cad6; font-size:12px; }
nav { position:sticky; top:0; z-index:5; background:#fff; border-bottom:1px solid var(--line);
  padding:8px 24px; display:flex; gap:18px; }
nav a { color:var(--accent); text-decoration:none; font-weight:600; }
main { padding:8px 24px 40px; max-width:1500px; }
section { margin-top:18px; }
h2 { border-bottom:2px solid var(--line); padding-bottom:4px; }
.muted { color:var(--muted); font-size:12px; }
table { border-collapse:collapse; background:#fff; margin:8px 0; }
th, td { border:1px solid var(--line); padding:4px 8px; text-align:left; vertical-align:top; }
tr.chosen td { font-weight:600; background:var(--chosen); }
td.num { text-align:right; font-variant-numeric:tabular-nums; }
.warning { background:#fff4e5; border:1px solid #f5b041; border-left:5px solid #e67e22;
  padding:8px 12px; margin:8px 0; }
.delta.up { color:#137333; font-weight:600; } .delta.down { color:#b3261e; font-weight:600; }
figure.chart { margin:8px 0; background:#fff; border:1px solid var(--line); display:inline-block; }
figure.chart svg { max-width:100%; height:auto; display:block; }
.filters { display:flex; flex-wrap:wrap; gap:10px 18px; align-items:center; background:#fff;
  border:1px solid var(--line); padding:10px; border-radius:6px; }
.filters label { font-size:12px; color:var(--muted); }
.chip { border:1px solid var(--line); background:#fff; border-radius:14px; padding:3px 10px;
  cursor:pointer; font:inherit; font-size:12px; }
.chip.active { background:var(--accent); border-color:var(--accent); color:#fff; }
.pager { display:flex; gap:10px; align-items:center; margin:10px 0; }
.pager button { font:inherit; padding:3px 10px; }
.pair-card { background:var(--card); border:1px solid var(--line); border-radius:6px;
  padding:10px 12px; margin:10px 0; }
.pair-card header { display:flex; flex-wrap:wrap; gap:8px; align-items:center; margin-bottom:6px; }
.badge { font-size:11px; border-radius:10px; padding:1px 8px; background:#eef1f6; }
.badge.kept { background:#d7f0df; } .badge.dropped { background:#fbd5d3; }
.badge.warn { background:#fff0c2; }
.imgs { display:flex; gap:10px; float:left; margin:0 14px 6px 0; }
.imgs figure { margin:0; text-align:center; }
.imgs img { display:block; width:140px; height:auto; border:1px solid var(--line); }
.imgs figcaption { font-size:11px; color:var(--muted); max-width:140px; }
.noimg { width:120px; height:90px; display:flex; align-items:center; justify-content:center;
  font-size:11px; color:var(--muted); border:1px dashed var(--line); }
.prompts div, .prompts details { margin:2px 0; font-size:13px; }
.sides { display:grid; grid-template-columns:1fr 1fr; gap:10px; clear:both; }
.side { border:1px solid var(--line); border-radius:4px; padding:6px 8px; }
.side.chosen { background:var(--chosen); } .side.rejected { background:var(--rejected); }
.side h4 { margin:0 0 4px; font-size:12px; }
.text { white-space:pre-wrap; word-wrap:break-word; font-size:13px; }
mark.only-c { background:#9fe0b3; } mark.only-r { background:#f6a8a3; }
.example { border-left:4px solid var(--line); padding:4px 10px; margin:6px 0; background:#fff; }
.example.right { border-color:#34a853; } .example.wrong { border-color:#d93025; }
.example .desc { color:#3b4252; font-size:13px; }
details summary { cursor:pointer; }
"""

SCRIPT = r"""
(function () {
  "use strict";
  var holder = document.getElementById("pairs-data");
  if (!holder) return;
  var D = JSON.parse(holder.textContent);
  var rows = D.rows, prompts = D.prompts, PAGE = D.page_size;
  var state = { kind: "all", verdict: "all", trunc: "all", rmin: NaN, rmax: NaN, q: "" };
  var page = 0, shown = [];
  var hay = new Array(rows.length);
  function $(id) { return document.getElementById(id); }
  function esc(s) {
    return String(s).replace(/[&<>"']/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c];
    });
  }
  function haystack(i) {
    if (hay[i] === undefined) {
      var r = rows[i];
      hay[i] = (r.id + "\n" + r.c + "\n" + r.r + "\n" + prompts[r.p] + "\n" + prompts[r.rp]).toLowerCase();
    }
    return hay[i];
  }
  function keep(i) {
    var r = rows[i];
    if (state.kind !== "all" && r.kind !== state.kind) return false;
    if (state.verdict === "kept" && r.v) return false;
    if (state.verdict === "dropped" && !r.v) return false;
    if (state.verdict.indexOf("dropped:") === 0 && r.v !== state.verdict.slice(8)) return false;
    var cut = r.cf === "length" || r.rf === "length";
    if (state.trunc === "yes" && !cut) return false;
    if (state.trunc === "no" && cut) return false;
    if (!isNaN(state.rmin) && !(r.ratio !== null && r.ratio >= state.rmin)) return false;
    if (!isNaN(state.rmax) && !(r.ratio !== null && r.ratio <= state.rmax)) return false;
    if (state.q && haystack(i).indexOf(state.q) < 0) return false;
    return true;
  }
  // Word-level difference: longest common subsequence of words (case-insensitive), each word
  // keeping its trailing whitespace so that line breaks survive.
  function words(s) { return s.match(/\S+\s*/g) || []; }
  function lead(s) { return s.match(/^\s*/)[0]; }  // whitespace before the first word, shown as is
  function lcsMarks(a, b) {
    var n = a.length, m = b.length;
    if (n * m > 4000000) return null;
    var ka = a.map(function (t) { return t.trim().toLowerCase(); });
    var kb = b.map(function (t) { return t.trim().toLowerCase(); });
    var W = m + 1, L = new Uint16Array((n + 1) * (m + 1));
    for (var i = n - 1; i >= 0; i--) {
      for (var j = m - 1; j >= 0; j--) {
        L[i * W + j] = ka[i] === kb[j] ? L[(i + 1) * W + j + 1] + 1
          : Math.max(L[(i + 1) * W + j], L[i * W + j + 1]);
      }
    }
    var ma = new Array(n).fill(true), mb = new Array(m).fill(true);
    i = 0; j = 0;
    while (i < n && j < m) {
      if (ka[i] === kb[j]) { ma[i] = false; mb[j] = false; i++; j++; }
      else if (L[(i + 1) * W + j] >= L[i * W + j + 1]) i++;
      else j++;
    }
    return [ma, mb];
  }
  function marked(tokens, marks, cls) {
    if (!marks) return esc(tokens.join(""));
    var out = "", open = false;
    for (var i = 0; i < tokens.length; i++) {
      if (marks[i] && !open) { out += '<mark class="' + cls + '">'; open = true; }
      if (!marks[i] && open) { out += "</mark>"; open = false; }
      out += esc(tokens[i]);
    }
    return out + (open ? "</mark>" : "");
  }
  function image(src, caption, why) {
    if (!src) return '<figure><div class="noimg">' + esc(why || "no image") + "</div><figcaption>" + esc(caption) + "</figcaption></figure>";
    return '<figure><img src="' + esc(src) + '" alt="' + esc(caption) + '"><figcaption>' + esc(caption) + "</figcaption></figure>";
  }
  function card(i) {
    var r = rows[i], a = words(r.c), b = words(r.r), m = lcsMarks(a, b);
    var verdict = r.v ? '<span class="badge dropped">dropped: <span class="verdict">' + esc(r.v) + "</span></span>"
      : '<span class="badge kept">kept</span>';
    var flags = (r.nd ? ' <span class="badge warn">near-duplicate</span>' : "") +
      ((r.cf === "length" || r.rf === "length") ? ' <span class="badge warn">truncated</span>' : "");
    var imgs = image(r.img, "clean image", r.why);
    if (r.corr) imgs += image(r.cimg, "corrupted: " + r.corr, r.why || "not rebuilt");
    var unit = esc(D.unit);
    return '<article class="pair-card" data-id="' + esc(r.id) + '" data-kind="' + esc(r.kind) + '">' +
      '<header><b class="pair-id">' + esc(r.id) + "</b>" + (r.image ? ' <span class="muted">image <span class="pair-image">' + esc(r.image) + "</span></span>" : "") + ' <span class="badge kind">' + esc(r.kind) + "</span> " + verdict + flags +
      ' <span class="muted">pair ' + (i + 1) + " of " + rows.length +
      (r.ratio === null ? "" : " · length ratio " + esc(r.ratio.toFixed(2))) + "</span></header>" +
      '<div class="imgs">' + imgs + "</div>" +
      '<div class="prompts"><div><b>stored prompt</b> (the user turn both answers are trained under): <span class="prompt">' + esc(prompts[r.p]) + "</span></div>" +
      '<details><summary><b>chosen prompt</b> (generated the chosen answer)</summary><span class="chosen-prompt">' + esc(prompts[r.cp]) + "</span></details>" +
      '<div><b>rejected prompt</b>: <span class="rejected-prompt">' + esc(prompts[r.rp]) + "</span></div></div>" +
      '<div class="sides"><div class="side chosen"><h4>chosen · ' + esc(r.cl) + " " + unit + " · finish " + esc(r.cf) + "</h4>" +
      '<div class="text">' + esc(lead(r.c)) + marked(a, m && m[0], "only-c") + "</div></div>" +
      '<div class="side rejected"><h4>rejected · ' + esc(r.rl) + " " + unit + " · finish " + esc(r.rf) + "</h4>" +
      '<div class="text">' + esc(lead(r.r)) + marked(b, m && m[1], "only-r") + "</div></div></div>" +
      (m ? "" : '<p class="muted">Too long for a word difference.</p>') + "</article>";
  }
  function render() {
    var pages = Math.max(1, Math.ceil(shown.length / PAGE));
    page = Math.min(Math.max(page, 0), pages - 1);
    var start = page * PAGE, html = [];
    for (var k = start; k < Math.min(start + PAGE, shown.length); k++) html.push(card(shown[k]));
    $("cards").innerHTML = html.join("") ||
      '<p class="muted">No pair matches these filters.</p>';
    $("count").textContent = shown.length + " of " + rows.length + " pairs match";
    $("pageinfo").textContent = "page " + (page + 1) + " of " + pages;
    $("prev").disabled = page === 0;
    $("next").disabled = page >= pages - 1;
  }
  function apply() {
    shown = [];
    for (var i = 0; i < rows.length; i++) if (keep(i)) shown.push(i);
    page = 0;
    render();
  }
  document.querySelectorAll("#kind-chips .chip").forEach(function (chip) {
    chip.addEventListener("click", function () {
      document.querySelectorAll("#kind-chips .chip").forEach(function (c) { c.classList.remove("active"); });
      chip.classList.add("active");
      state.kind = chip.getAttribute("data-kind");
      apply();
    });
  });
  $("verdict").addEventListener("change", function (e) { state.verdict = e.target.value; apply(); });
  $("trunc").addEventListener("change", function (e) { state.trunc = e.target.value; apply(); });
  $("rmin").addEventListener("input", function (e) { state.rmin = parseFloat(e.target.value); apply(); });
  $("rmax").addEventListener("input", function (e) { state.rmax = parseFloat(e.target.value); apply(); });
  var timer = null;
  $("search").addEventListener("input", function (e) {
    clearTimeout(timer);
    timer = setTimeout(function () { state.q = e.target.value.trim().toLowerCase(); apply(); }, 150);
  });
  $("prev").addEventListener("click", function () { page--; render(); window.scrollTo(0, $("pairs").offsetTop); });
  $("next").addEventListener("click", function () { page++; render(); window.scrollTo(0, $("pairs").offsetTop); });
  apply();
})();
"""


def _pairs_section(pairs: dict | None, page_size: int) -> tuple[str, str]:
    """The pair browser's controls and its data ``<script>``."""
    if pairs is None:
        return '<p class="muted">No pairs in this report.</p>', ""
    rows = pairs["rows"]
    kinds: dict[str, int] = {}
    for row in rows:
        kinds[row["kind"]] = kinds.get(row["kind"], 0) + 1
    reasons = sorted({row["v"] for row in rows if row["v"]})
    chips = f'<button class="chip active" data-kind="all">all ({len(rows)})</button>' + "".join(
        f'<button class="chip" data-kind="{html.escape(k)}">{html.escape(k)} ({n})</button>'
        for k, n in kinds.items()
    )
    verdicts = "".join(
        f'<option value="dropped:{html.escape(r)}">dropped: {html.escape(r)}</option>'
        for r in reasons
    )
    large = pairs["large_thumbnails"]
    controls = f"""
<p class="muted">{len(rows)} pairs from {html.escape(pairs["path"])}; images from
{html.escape(str(pairs["images"]))}. Thumbnails: 160 px for the first {large} pairs, 64 px after.
Highlighted: words only in the chosen answer (green) or only in the rejected one (red).</p>
<div class="filters">
  <div><label>rejected kind</label><br><span id="kind-chips">{chips}</span></div>
  <div><label for="verdict">filter verdict</label><br><select id="verdict">
    <option value="all">all</option><option value="kept">kept</option>
    <option value="dropped">dropped (any)</option>{verdicts}</select></div>
  <div><label for="trunc">truncated</label><br><select id="trunc"><option value="all">all</option>
    <option value="yes">truncated</option><option value="no">not truncated</option></select></div>
  <div><label>chosen/rejected length ratio</label><br>
    <input id="rmin" type="number" step="0.1" min="0" placeholder="min" style="width:70px">
    – <input id="rmax" type="number" step="0.1" min="0" placeholder="max" style="width:70px"></div>
  <div><label for="search">search (id, answers, prompts)</label><br>
    <input id="search" type="search" placeholder="text…" style="width:220px"></div>
</div>
<div class="pager"><button id="prev">‹ previous</button><span id="pageinfo"></span>
  <button id="next">next ›</button><span id="count" class="muted"></span></div>
<div id="cards"></div>
"""
    data = {
        "rows": rows,
        "prompts": pairs["prompts"],
        "page_size": page_size,
        "unit": pairs["length_unit"].split(" ")[0],
    }
    return controls, f'<script type="application/json" id="pairs-data">{script_json(data)}</script>'


# Inside <script> the HTML parser looks for "</script" and "<!--" whatever the JSON means, so "<"
# (and ">", "&" with it) are written as JSON escapes; U+2028/U+2029 are line ends to older
# JavaScript parsers. JSON.parse reads every one back as the same character.
_SCRIPT_ESCAPES = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}


def script_json(data) -> str:
    """``data`` as JSON text that can stand inside a ``<script>`` element unchanged."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return re.sub("[<>&\u2028\u2029]", lambda m: _SCRIPT_ESCAPES[m.group()], text)


def render_page(
    title: str,
    sections: dict[str, str],
    pairs: dict | None,
    sources: dict,
    page_size: int,
    seconds: float,
) -> str:
    """The whole page; ``sections``: id -> inner HTML (demo, audit, training, results)."""
    controls, data = _pairs_section(pairs, page_size)
    if pairs is not None:
        sections = {**sections, "pairs": controls}
        order = [k for k in SECTION_TITLES if k in sections]
    else:
        order = [k for k in SECTION_TITLES if k in sections]
    nav = "".join(f'<a href="#{k}">{SECTION_TITLES[k]}</a>' for k in order)
    body = "".join(
        f'<section id="{k}"><h2>{SECTION_TITLES[k]}</h2>{sections[k]}</section>' for k in order
    )
    described = " · ".join(f"{k}: {html.escape(str(v))}" for k, v in sources.items() if v)
    stamp = time.strftime("%Y-%m-%d %H:%M")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="generator" content="stic report">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<link rel="icon" href="data:,">
<style>{CSS}</style></head>
<body>
<header class="top"><h1>{html.escape(title)}</h1>
<div class="meta">stic {library_versions().get("stic", "?")} report, {stamp} ({seconds:.1f} s to build) · {described}</div></header>
<nav>{nav}</nav>
<main>{body}</main>
{data}
<script>{SCRIPT}</script>
</body></html>
"""
