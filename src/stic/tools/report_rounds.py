"""The self-training rounds of a ``stic run`` (``rounds: N``, issue 24) in ``stic report``.

A run with rounds has ``round_<r>/pairs.jsonl``, ``round_<r>/dpo/``, ``rounds.json`` (rounds x
the select metric, the chosen round and why) and ``dpo/``, a copy of the chosen round whose
manifest names that round. The report shows:

- **Self-training rounds**: ``rounds.json``'s table (each round's pairs trained, training loss,
  DPO reference and select metric; the chosen round and why) and what ``dpo/``'s manifest says
  it is, checked against the table.
- **Audit**: one column per round (pairs by kind, kept, dropped by filter, median lengths and
  their ratio, truncated, near-duplicates; verdicts from that round's ``dropped_pairs.jsonl``)
  and each round's warnings, then the full audit (per kind, histograms) of the round the pair
  browser shows.
- **Pair browser**: one round's pairs, the chosen round's by default (``stic report RUN --round
  N`` for round N). All rounds' pairs in one page would multiply its size and its opening time
  by N: thumbnails are most of the file (18.9 of 30.7 MB for 6,000 pairs), a fresh round's
  images are other images than the last round's, and the browser parses the whole inline array
  before it shows the first card. One round keeps a 6,000-pairs-a-round run's page at one
  round's size whatever N; the per-round columns are computed here from the records (no image
  is read for them) and add a few kB.
- **Training**: every round's DPO curves (loss, its DPO and NLL parts, reward margin and
  accuracy) in one chart, one line per round, against each round's own optimizer step.

Every round's files are found by the layout under the run folder (``round_<r>/``), not by the
absolute paths recorded in ``rounds.json``: a run folder that was moved or copied still shows.
Values read from ``rounds.json`` and the manifests are escaped where they go into the page.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stic.runtime.files import read_json
from stic.runtime.manifests import read_manifest
from stic.tools.report import (
    ReportError,
    ReportSources,
    _cell,
    _figure,
    _fmt,
    _mapping,
    _number,
    _series,
    audit,
    collect_pairs,
    read_train_log,
    svg,
)

# (panel title, train log key): the quantities compared across rounds.
ROUND_PANELS = (
    ("loss", "loss"),
    ("DPO part of the loss", "loss/dpo"),
    ("NLL part of the loss", "loss/nll"),
    ("reward margin", "rewards/margin"),
    ("reward accuracy", "rewards/accuracy"),
)


@dataclass(frozen=True)
class Round:
    """One round of ``rounds.json``; ``pairs`` and ``dpo`` are where the run's layout puts them."""

    number: int
    pairs: Path
    dpo: Path
    value: float | None  # the select metric; None without select (or not a number)
    pairs_trained: Any
    train_loss: Any
    reference: Any


@dataclass(frozen=True)
class Rounds:
    """``rounds.json``, checked: rounds numbered 1..N, the chosen one among them."""

    path: Path
    rounds: list[Round]
    chosen: int
    reason: str
    select: dict | None  # {"entry", "metric", "mode"}: strings as the file has them

    def get(self, number: int) -> Round:
        for r in self.rounds:
            if r.number == number:
                return r
        raise ReportError(
            f"round {number}: {self.path} has rounds 1-{len(self.rounds)} (--round takes one)"
        )

    def label(self, number: int) -> str:
        return f"round {number}" + (" (chosen)" if number == self.chosen else "")


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_rounds(path: str | Path) -> Rounds:
    """``rounds.json`` of a ``stic run``; a file that cannot say which rounds there are and
    which was chosen is refused (:class:`ReportError` naming the key)."""
    path = Path(path)
    try:
        document = read_json(path)
    except (OSError, json.JSONDecodeError) as e:
        raise ReportError(f"{path}: cannot be read ({e})") from None
    if not isinstance(document, dict):
        raise ReportError(f"{path}: not a JSON object")
    table = document.get("table")
    if not isinstance(table, list) or not table or not all(isinstance(r, dict) for r in table):
        raise ReportError(f"{path}: table: not a list of rounds")
    numbers = [row.get("round") for row in table]
    if numbers != list(range(1, len(table) + 1)):
        raise ReportError(
            f"{path}: table: rounds {', '.join(map(repr, numbers))} are not 1-{len(table)} in order"
        )
    chosen = document.get("chosen")
    if not _integer(chosen) or not 1 <= chosen <= len(table):
        raise ReportError(f"{path}: chosen: {chosen!r} is not one of the rounds 1-{len(table)}")
    select = document.get("select")
    if select is not None and not isinstance(select, dict):
        raise ReportError(f"{path}: select: not an object or null")
    if select is not None:
        select = {k: str(select.get(k, "?")) for k in ("entry", "metric", "mode")}
    folder = path.parent
    rounds = [
        Round(
            number=row["round"],
            pairs=folder / f"round_{row['round']}" / "pairs.jsonl",
            dpo=folder / f"round_{row['round']}" / "dpo",
            value=_number(row.get(select["metric"])) if select else None,
            pairs_trained=row.get("pairs_trained"),
            train_loss=row.get("train_loss"),
            reference=row.get("reference_model"),
        )
        for row in table
    ]
    return Rounds(path, rounds, chosen, str(document.get("reason", "")), select)


def _value(value: Any) -> str:
    number = _number(value)
    return "–" if number is None else f"{number:.6g}"


def chosen_adapter(rounds: Rounds) -> dict:
    """What ``dpo/`` (the adapter stage 2 and the test entries read) says it is: its manifest's
    ``round``, ``reason`` and ``select`` (``None`` each where it has none), and ``problem`` when
    that is not the round ``rounds.json`` chose."""
    folder = rounds.path.parent / "dpo"
    try:
        manifest = read_manifest(folder)
    except (OSError, json.JSONDecodeError) as e:
        return {"folder": str(folder), "round": None, "problem": f"manifest unreadable: {e}"}
    summary = _mapping(_mapping(manifest).get("summary"))
    number = summary.get("round")
    found = {
        "folder": str(folder),
        "round": number if _integer(number) else None,
        "reason": summary.get("reason"),
        "select": summary.get("select"),
        "problem": "",
    }
    if manifest is None:
        found["problem"] = f"{folder} has no stic manifest"
    elif found["round"] != rounds.chosen:
        found["problem"] = (
            f"its manifest names round {number!r}, but {rounds.path.name} chose round "
            f"{rounds.chosen}"
        )
    return found


def rounds_html(rounds: Rounds, sources: ReportSources) -> str:
    """The rounds section: the table of ``rounds.json``, the choice, and what is shown where."""
    select = rounds.select
    head = ["round", "pairs trained", "mean training loss", "DPO reference"]
    if select:
        head.append(f"{select['entry']} {select['metric']} ({select['mode']})")
    head += ["chosen", "why"]
    body = []
    for r in rounds.rounds:
        chosen = r.number == rounds.chosen
        cells = [
            str(r.number),
            _value(r.pairs_trained),
            _value(r.train_loss),
            _cell(r.reference if r.reference is not None else "–"),
        ]
        if select:
            cells.append(_value(r.value))
        cells += ["✓" if chosen else "", _cell(rounds.reason) if chosen else ""]
        body.append(
            f"<tr{' class=chosen' if chosen else ''} data-round={r.number}>"
            + "".join(f"<td>{c}</td>" for c in cells)
            + "</tr>"
        )
    adapter = chosen_adapter(rounds)
    if adapter["problem"]:
        check = (
            f'<div class="warning" role="alert">⚠ dpo/ ({_cell(adapter["folder"])}): '
            f"{_cell(adapter['problem'])}</div>"
        )
    else:
        check = (
            f"<p>dpo/, the adapter stage 2 and the test entries read, is round "
            f"{adapter['round']} by its manifest ({_cell(adapter['reason'])}).</p>"
        )
    if sources.round is not None and sources.pairs == rounds.get(sources.round).pairs:
        shown = (
            f"The audit has a column per round; the pair browser and the audit below them show "
            f"{rounds.label(sources.round)}'s pairs ({_cell(sources.pairs)}): "
            "<code>stic report RUN --round N</code> shows round N's."
        )
    else:
        shown = f"The audit has a column per round; the pair browser shows {_cell(sources.pairs)}."
    return (
        f"<p class=muted>{_cell(rounds.path)}: {len(rounds.rounds)} rounds.</p>"
        + "<table class=results><tr>"
        + "".join(f"<th>{_cell(h)}</th>" for h in head)
        + "</tr>"
        + "".join(body)
        + "</table>"
        + check
        + f"<p class=muted>{shown} Training has every round's DPO curves.</p>"
    )


# ----------------------------------------------------------------------------- audit


def round_audits(
    rounds: Rounds,
    sources: ReportSources,
    shown: dict | None = None,
    shown_summary: dict | None = None,
) -> list[dict]:
    """Each round's audit: ``{"round", "label", "pairs", "summary", "problem"}`` (``summary``:
    :func:`~stic.tools.report.audit` of its pairs with its DPO stage's verdicts, or None and
    ``problem`` saying why). ``shown``/``shown_summary``: the browser's round, already read."""
    out = []
    for r in rounds.rounds:
        entry = {
            "round": r.number,
            "label": rounds.label(r.number),
            "pairs": str(r.pairs),
            "summary": None,
            "problem": "",
        }
        if shown is not None and sources.round == r.number and sources.pairs == r.pairs:
            entry["summary"] = shown_summary or audit(shown)
        elif not r.pairs.is_file():
            entry["problem"] = f"{r.pairs} does not exist"
        else:
            data = collect_pairs(
                ReportSources(
                    pairs=r.pairs,
                    pairs_dpo=r.dpo if r.dpo.is_dir() else None,
                    images=sources.images,
                    model=sources.model,
                ),
                thumbnails=False,
            )
            entry["summary"] = audit(data)
        out.append(entry)
    return out


def round_audits_html(
    rounds: Rounds, sources: ReportSources, shown: dict | None, shown_summary: dict | None
) -> str:
    """The audit's columns per round, before the full audit of the browser's round."""
    audits = round_audits(rounds, sources, shown, shown_summary)
    present = [a for a in audits if a["summary"] is not None]
    kinds = list(dict.fromkeys(k for a in present for k in a["summary"]["kinds"]))
    reasons = list(
        dict.fromkeys(r for a in present for r in a["summary"]["by_kind"]["all"]["dropped"])
    )

    def everything(a: dict) -> dict:
        return a["summary"]["by_kind"]["all"]

    def share(count: int, n: int) -> str:
        return f"{count} ({100 * count / n:.1f}%)" if n else "0"

    measures = [
        ("pairs", lambda a: str(everything(a)["n"])),
        *(
            (
                f"pairs: {kind}",
                lambda a, kind=kind: str(_mapping(a["summary"]["by_kind"].get(kind)).get("n", 0)),
            )
            for kind in kinds
        ),
        ("kept", lambda a: share(everything(a)["kept"], everything(a)["n"])),
        *(
            (f"dropped: {reason}", lambda a, r=reason: str(everything(a)["dropped"].get(r, 0)))
            for reason in reasons
        ),
        ("median chosen length", lambda a: _fmt(everything(a)["median_chosen"], 0)),
        ("median rejected length", lambda a: _fmt(everything(a)["median_rejected"], 0)),
        ("median chosen / rejected", lambda a: _fmt(everything(a)["median_ratio"], 2)),
        (
            "truncated (either answer)",
            lambda a: share(everything(a)["truncated"], everything(a)["n"]),
        ),
        ("near-duplicate", lambda a: share(everything(a)["near_duplicate"], everything(a)["n"])),
    ]
    head = "".join(
        f"<th{' class=chosen' if a['round'] == rounds.chosen else ''}>{_cell(a['label'])}</th>"
        for a in audits
    )
    rows = "".join(
        f"<tr><th>{_cell(name)}</th>"
        + "".join(
            f"<td class=num>{cell(a) if a['summary'] is not None else '–'}</td>" for a in audits
        )
        + "</tr>"
        for name, cell in measures
    )
    # One box for every round's warnings (the browser's round has its own again below).
    warned = "".join(
        f"<li>{_cell(a['label'])}: {_cell(w)}</li>"
        for a in present
        for w in a["summary"]["warnings"]
    )
    warnings = (
        f'<div class="warning" role="alert">⚠ By round:<ul>{warned}</ul></div>' if warned else ""
    )
    problems = "".join(
        f"<li>{_cell(a['label'])}: {_cell(a['problem'])}</li>" for a in audits if a["problem"]
    )
    return (
        "<h3>By round</h3>"
        + f"<table class=audit id=round-audit><tr><th></th>{head}</tr>{rows}</table>"
        + (f"<ul>{problems}</ul>" if problems else "")
        + warnings
        + "<p class=muted>Each round's own pairs file, its verdicts from that round's DPO stage "
        "(its dropped_pairs.jsonl, else recomputed with its filter settings); lengths counted as "
        "below.</p>"
        + (
            f"<h3>{_cell(rounds.label(sources.round))}: the pairs in the browser</h3>"
            if sources.round is not None and shown is not None
            else ""
        )
    )


# ----------------------------------------------------------------------------- training


def round_training(rounds: Rounds) -> list[dict]:
    """Each round's DPO train log: ``{"round", "label", "folder", "series", "steps",
    "train_loss", "problem"}``; ``series``: train log key -> ``(steps, values)`` of the keys in
    :data:`ROUND_PANELS` that the log has."""
    out = []
    for r in rounds.rounds:
        log, problem = read_train_log(r.dpo)
        series = {key: _series(log, key) for _, key in ROUND_PANELS}
        steps = [e["step"] for e in log if _number(e.get("step")) is not None]
        final = next((e for e in reversed(log) if _number(e.get("train_loss")) is not None), {})
        out.append(
            {
                "round": r.number,
                "label": rounds.label(r.number),
                "folder": str(r.dpo),
                "series": {k: v for k, v in series.items() if v[0]},
                "steps": max(steps) if steps else 0,
                "train_loss": final.get("train_loss"),
                "problem": problem,
            }
        )
    return out


def round_training_chart(entries: list[dict]) -> str:
    """One panel per quantity, one line per round (the same colour in every panel)."""
    panels = [(t, k) for t, k in ROUND_PANELS if any(k in e["series"] for e in entries)]
    if not panels:
        return '<p class="muted">No round\'s train log has step entries.</p>'
    columns = min(3, len(panels))
    lines = -(-len(panels) // columns)
    fig = _figure(3.4 * columns + 0.6, 2.7 * lines)
    axes = fig.subplots(lines, columns, squeeze=False).ravel()
    for ax, (title, key) in zip(axes, panels, strict=False):
        for index, entry in enumerate(entries):
            if key in entry["series"]:
                xs, ys = entry["series"][key]
                style = {"marker": "." if len(xs) < 30 else None, "color": f"C{index % 10}"}
                ax.plot(xs, ys, label=entry["label"], **style)
        ax.set(title=title, xlabel="step (of that round)")
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    axes[0].legend(fontsize=8)
    return svg(fig, "train-rounds")


def round_training_html(rounds: Rounds) -> str:
    """Training's stage-1 part for a run with rounds: every round's curves, labelled."""
    entries = round_training(rounds)
    items = "".join(
        f"<li>{_cell(e['label'])}: {_cell(e['folder'])}: "
        + (
            _cell(e["problem"])
            if e["problem"]
            else f"{_cell(e['steps'])} steps"
            + (
                f", mean training loss {e['train_loss']:.4g}"
                if _number(e["train_loss"]) is not None
                else ""
            )
        )
        + "</li>"
        for e in entries
    )
    return (
        "<h3>Stage 1: DPO + NLL, each round</h3>"
        + f"<ul>{items}</ul>"
        + round_training_chart(entries)
        + "<p class=muted>dpo/ is a copy of the chosen round: its curves are that round's.</p>"
    )
