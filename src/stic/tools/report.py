"""``stic report RUN --out report.html``: one offline HTML page to look at a run.

What a run was trained on and what changed, for someone auditing a self-training run:

- **Pairs**: every preference pair with its clean image and, for corruption pairs, the corrupted
  image rebuilt from the record's parameters (what the model saw), the stored prompt and the two
  generating prompts, chosen and rejected side by side with a word-level difference, lengths,
  finish reasons and the quality-filter verdict. Paged (50 a page) from one inline JSON array,
  with filters and a text search.
- **Audit**: counts by rejected kind and by filter, length and length-ratio histograms per kind,
  a warning when the chosen side is systematically longer (DPO is known to exploit length), the
  share truncated and the near-duplicate rate.
- **Training**: the DPO and SFT train logs against step.
- **Rounds** (a run with ``rounds: N``): rounds.json's table, each round's audit and DPO curves,
  and one round's pairs in the browser (:mod:`stic.tools.report_rounds` says why one).
- **Results**: every eval and bench result with its delta against the base model's result on the
  same data, per category where there is one, and describe-and-respond examples.

Charts: matplotlib, rendered to inline SVG: maintained, offline and small (plotly would inline
~3.5 MB of JavaScript in every file). Everything (script, styles, thumbnails) is inline: the page
opens from disk with no network.

Size: thumbnails are 160 px JPEGs for the first ``--large-thumbnails`` pairs (default 1,000) and
64 px for the rest. A synthetic 6,000-pair run (``benchmarks/report_size.py``: 640x480 images,
answers of 120-250 and 40-120 words) gives 30.7 MB: 18.9 MB of thumbnails, 10.3 MB of answer
texts; headless Chromium shows its first page of pairs 1.1 s after opening it.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import logging
import math
import re
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stic.data.filters import FILTERS, FilterSettings, drop_reason, is_near_duplicate
from stic.data.schemas import PairRecord
from stic.runtime.files import read_json, read_jsonl
from stic.runtime.manifests import manifest_path, read_manifest
from stic.runtime.output import OUTPUT_ERRORS, Output

logger = logging.getLogger(__name__)

PAGE_SIZE = 50
THUMB_PX = 160
SMALL_THUMB_PX = 64
LARGE_THUMBNAILS = 1000
# Above this median chosen/rejected length ratio the page warns that the chosen side is
# systematically longer.
LENGTH_RATIO_WARNING = 1.5
GENERATOR = "stic report"
DAR_EXAMPLES = 4
KIND_ORDER = ("bad_prompt", "corrupt_lowres", "corrupt_color", "imported")
INSTALL_HINT = "pip install 'stic[report]'"


class ReportError(ValueError):
    """Nothing to report, or an input that cannot be read; the message names it."""


@dataclass
class ReportSources:
    """What one report shows; every part is optional, at least one must be present.

    ``evals``/``benches``: result JSON files of ``stic eval`` / ``stic bench``. ``notes``:
    Markdown files shown as they are (the demo's ``results.md``). ``rounds``: the
    ``rounds.json`` of a run with self-training rounds; ``round``: the round whose pairs the
    browser shows (default: the chosen one). ``pairs_dpo``: the DPO folder that trained on
    ``pairs`` (its ``dropped_pairs.jsonl`` and filter settings give the verdicts; default
    ``dpo``).
    """

    title: str = "stic run"
    root: Path | None = None
    pairs: Path | None = None
    images: Path | None = None
    dpo: Path | None = None
    sft: Path | None = None
    rounds: Path | None = None
    round: int | None = None
    pairs_dpo: Path | None = None
    evals: list[Path] = field(default_factory=list)
    benches: list[Path] = field(default_factory=list)
    notes: list[Path] = field(default_factory=list)
    model: str | None = None

    def empty(self) -> bool:
        return not (
            self.pairs
            or self.dpo
            or self.sft
            or self.rounds
            or self.evals
            or self.benches
            or self.notes
        )


# ----------------------------------------------------------------------------- finding outputs


def _config(out: Path) -> dict:
    manifest = read_manifest(out) if manifest_path(out).exists() else None
    config = manifest.get("config") if isinstance(manifest, dict) else None
    return config if isinstance(config, dict) else {}


def _config_text(config: dict, key: str) -> str | None:
    """``config[key]`` when it is a non-empty string (a path or a model name), else None."""
    value = config.get(key)
    return value if isinstance(value, str) and value else None


def _number(value: Any) -> float | None:
    """``value`` when it is a finite number (not a boolean), else None: result files are read
    as they are, and a value that is not a number is shown as missing, never computed with."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if math.isfinite(value) else None


def _mapping(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _cell(value: Any) -> str:
    """Any value read from a file, as HTML text."""
    return html.escape(str(value))


def _run_outputs(run: Path, sources: ReportSources) -> None:
    """Fill what the ``stic run`` folder ``run`` holds (its layout is pipeline.plan's)."""
    if sources.rounds is None and (run / "rounds.json").is_file():
        from stic.tools.report_rounds import read_rounds

        sources.rounds = run / "rounds.json"
        rounds = read_rounds(sources.rounds)  # a broken file is refused here, saying what
        if sources.pairs is None:
            shown = rounds.get(sources.round or rounds.chosen)  # refuses a round not run
            sources.round, sources.pairs = shown.number, shown.pairs
            sources.pairs_dpo = shown.dpo if shown.dpo.is_dir() else None
    if sources.pairs is None and (run / "pairs" / "pairs.jsonl").is_file():
        sources.pairs = run / "pairs" / "pairs.jsonl"
    if sources.dpo is None and (run / "dpo").is_dir():
        sources.dpo = run / "dpo"
    if sources.sft is None and (run / "sft").is_dir():
        sources.sft = run / "sft"
    # bench results may sit one level down (bench/<at>/<benchmark>.json, as stic compare reads)
    for kind, pattern in (("evals", "eval/*.json"), ("benches", "bench/**/*.json")):
        found = sorted(
            p
            for p in run.glob(pattern)
            if not p.name.endswith(".manifest.json") and p.is_file() and _is_result(p)
        )
        getattr(sources, kind).extend(p for p in found if p not in getattr(sources, kind))


def _is_result(path: Path) -> bool:
    """A stic eval or bench result (not a judge cache or another JSON file beside them)."""
    try:
        with open(path, encoding="utf-8") as f:
            head = f.read(4096)
    except OSError:
        return False
    return head.lstrip().startswith("{") and any(
        f'"{key}"' in head for key in ("accuracy", "benchmark", "metrics")
    )


def sources_from_folder(folder: str | Path, sources: ReportSources | None = None) -> ReportSources:
    """What a ``stic run`` output folder or a ``stic demo`` folder holds.

    A demo folder (``results.json`` and ``seed*/`` run folders) shows its results table, the
    first seed's ``stic`` run (pairs, training) and every run's results of that seed and of the
    base model. Explicit entries of ``sources`` are kept.
    """
    folder = Path(folder)
    sources = sources or ReportSources()
    sources.root = folder
    if not folder.is_dir():
        raise ReportError(f"{folder}: not a folder")
    seeds = sorted(p for p in folder.glob("seed*") if p.is_dir() and p.name[4:].isdigit())
    if (folder / "results.json").is_file() and seeds:
        sources.title = f"stic demo: {folder}"
        if (folder / "results.md").is_file():
            sources.notes.append(folder / "results.md")
        first = seeds[0]
        runs = [first / "stic"] + sorted(p for p in first.iterdir() if p.is_dir())
        runs.append(folder / "base")
        for run in dict.fromkeys(runs):
            if (run / "resolved_config.yaml").is_file():
                _run_outputs(run, sources)
    else:
        sources.title = f"stic run: {folder}"
        _run_outputs(folder, sources)
    if sources.empty():
        raise ReportError(
            f"{folder}: no stic outputs found (pairs/pairs.jsonl, dpo/, sft/, eval/*.json, "
            "bench/*.json, or a demo's results.json)"
        )
    if sources.round is not None and sources.rounds is None:
        raise ReportError(f"{folder}: --round {sources.round} needs a run with rounds.json")
    return sources


# ----------------------------------------------------------------------------- pairs


def _length_counter(model: str | None):
    """``(count(text) -> int, label)``: the model's tokenizer when its ``tokenizer.json`` is on
    this machine (a local folder or the Hugging Face cache; nothing is downloaded), else a
    whitespace word count."""
    words = (lambda text: len(text.split()), "words (whitespace split)")
    if not model:
        return words
    try:
        path = Path(model).expanduser() / "tokenizer.json"
    except RuntimeError:  # "~someone" with no such user
        path = Path(model) / "tokenizer.json"
    if not path.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(model, "tokenizer.json")
            path = Path(cached) if isinstance(cached, str) else path
        except Exception:  # not a repo id, or no cache: fall back to words
            pass
    if not path.is_file():
        return words
    try:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(path))
    except Exception as e:  # an unreadable tokenizer file is no reason to fail the report
        logger.warning("could not load %s (%s); counting words", path, e)
        return words
    name = Path(model).name or model
    return (
        lambda text: len(tokenizer.encode(text, add_special_tokens=False).ids),
        f"tokens ({name} tokenizer)",
    )


def _jpeg_data_uri(image, size: int) -> str:
    from PIL import Image

    thumb = image.copy()
    thumb.thumbnail((size, size), Image.Resampling.BICUBIC, reducing_gap=2.0)
    buffer = io.BytesIO()
    thumb.convert("RGB").save(buffer, format="JPEG", quality=70 if size > 100 else 60)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def pair_thumbnails(pair: PairRecord, images: Path | None, size: int) -> tuple[str, str, str]:
    """``(clean, corrupted, problem)``: data URIs of the clean image and, for a corruption pair,
    the corrupted image rebuilt from ``pair.corruption`` and shown at the clean one's size
    (a low-resolution image is upsampled back, as the model's image processor does). Empty
    strings and the reason when the image cannot be shown."""
    from PIL import Image

    from stic.data.corruptions import apply_corruption
    from stic.runtime.images import load_image, resolve_image_path

    if images is None:
        return "", "", "no image folder given"
    try:
        image = load_image(resolve_image_path(images, pair.image))
    except Exception as e:
        return "", "", f"image not shown: {str(e).strip() or type(e).__name__}"
    # Thumbnails are made from a copy at twice their size (large photos decode once, and the
    # corruption runs on far fewer pixels: colour jitter is per pixel, and a 20-px image looks the
    # same whether it was shrunk from 320 px or from 640).
    image.thumbnail((2 * THUMB_PX, 2 * THUMB_PX), Image.Resampling.BICUBIC, reducing_gap=2.0)
    clean = _jpeg_data_uri(image, size)
    if not pair.corruption:
        return clean, "", ""
    try:
        corrupted = apply_corruption(image, pair.corruption)
    except (ValueError, TypeError) as e:  # edited parameters: a value of the wrong type
        return clean, "", f"corruption not rebuilt: {e}"
    if corrupted.size != image.size:
        corrupted = corrupted.resize(image.size, Image.Resampling.BICUBIC)
    return clean, _jpeg_data_uri(corrupted, size), ""


def _corruption_text(params: dict | None) -> str:
    if not params:
        return ""
    rest = ", ".join(
        f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
        for k, v in params.items()
        if k != "kind"
    )
    return f"{params.get('kind', '?')}: {rest}" if rest else str(params.get("kind", "?"))


def _read_pair_file(path: Path) -> list[PairRecord]:
    rows = read_jsonl(path, strict=True)
    return [PairRecord.from_dict(row, where=f"{path}:{i + 1}") for i, row in enumerate(rows)]


def _filter_settings(dpo: Path | None) -> FilterSettings:
    config = _config(dpo) if dpo is not None else {}
    try:
        return FilterSettings(
            identical=config.get("filter_identical", True),
            empty=config.get("filter_empty", True),
            truncated=config.get("filter_truncated", True),
            refusal=config.get("filter_refusals", True),
            near_duplicate=config.get("filter_near_duplicates", True),
            near_duplicate_threshold=float(config.get("near_duplicate_threshold", 0.9)),
        )
    except (TypeError, ValueError):
        return FilterSettings()


def collect_pairs(
    sources: ReportSources, large_thumbnails: int = LARGE_THUMBNAILS, thumbnails: bool = True
) -> dict[str, Any] | None:
    """The pair browser's data: prompts (deduplicated), one compact row per pair, and where the
    verdicts and lengths come from. ``thumbnails=False``: no image is read (rows for the audit
    alone, ``img``/``cimg``/``why`` empty)."""
    if sources.pairs is None:
        return None
    pairs = _read_pair_file(sources.pairs)
    pairs_config = _config(sources.pairs)
    dpo = sources.pairs_dpo or sources.dpo
    images = sources.images
    if images is None and _config_text(pairs_config, "images"):
        images = Path(_config_text(pairs_config, "images"))
    if images is None and dpo is not None and _config_text(_config(dpo), "images"):
        images = Path(_config_text(_config(dpo), "images"))
    model = (
        sources.model
        or _config_text(pairs_config, "model")
        or next((p.model for p in pairs if p.model), None)
    )
    count, length_unit = _length_counter(model)
    settings = _filter_settings(dpo)
    dropped_file = dpo / "dropped_pairs.jsonl" if dpo is not None else None
    if dropped_file is not None and dropped_file.is_file():
        # a dropped pair without a (string) reason is still dropped: "?"
        dropped = {
            row["id"]: str(row.get("reason") or "?") for row in read_jsonl(dropped_file, key="id")
        }
        verdict_source = f"the DPO stage's {dropped_file.name} ({dpo})"

        def verdict(pair: PairRecord) -> str:
            return dropped.get(pair.id, "")
    else:
        verdict_source = "recomputed here with the " + (
            "DPO config's filter settings" if dpo is not None else "default filters"
        )

        def verdict(pair: PairRecord) -> str:
            return drop_reason(pair, settings) or ""

    prompts: dict[str, int] = {}

    def prompt_index(text: str) -> int:
        return prompts.setdefault(text, len(prompts))

    rows = []
    problems: Counter = Counter()
    for index, pair in enumerate(pairs):
        size = THUMB_PX if index < large_thumbnails else SMALL_THUMB_PX
        clean, corrupted, problem = (
            pair_thumbnails(pair, images, size) if thumbnails else ("", "", "")
        )
        if problem:
            problems[problem.split(":")[0]] += 1
        chosen_len, rejected_len = count(pair.chosen), count(pair.rejected)
        rows.append(
            {
                "id": pair.id,
                # the image path only where it is not the id (stic pairs: always the id)
                **({"image": pair.image} if pair.image != pair.id else {}),
                "kind": pair.rejected_kind,
                "p": prompt_index(pair.prompt),
                "cp": prompt_index(pair.chosen_prompt),
                "rp": prompt_index(pair.rejected_prompt),
                "c": pair.chosen,
                "r": pair.rejected,
                "cf": pair.chosen_finish,
                "rf": pair.rejected_finish,
                "cl": chosen_len,
                "rl": rejected_len,
                "ratio": round(chosen_len / rejected_len, 3) if rejected_len else None,
                "v": verdict(pair),
                "nd": is_near_duplicate(
                    pair.chosen.strip(), pair.rejected.strip(), settings.near_duplicate_threshold
                ),
                "corr": _corruption_text(pair.corruption),
                "img": clean,
                "cimg": corrupted,
                "why": problem,
            }
        )
    return {
        "rows": rows,
        "prompts": list(prompts),
        "length_unit": length_unit,
        "verdict_source": verdict_source,
        "threshold": settings.near_duplicate_threshold,
        "images": str(images) if images else None,
        "image_problems": dict(problems),
        "large_thumbnails": min(large_thumbnails, len(rows)),
        "path": str(sources.pairs),
    }


# ----------------------------------------------------------------------------- audit


def _kinds(rows: list[dict]) -> list[str]:
    present = {r["kind"] for r in rows}
    return [k for k in KIND_ORDER if k in present] + sorted(present - set(KIND_ORDER))


def audit(data: dict) -> dict:
    """Counts, medians, shares and the length warning of the pairs (pure; no charts)."""
    rows = data["rows"]
    n = len(rows)
    kinds = _kinds(rows)
    by_kind = {}
    for kind in kinds + ["all"]:
        members = rows if kind == "all" else [r for r in rows if r["kind"] == kind]
        ratios = [r["ratio"] for r in members if r["ratio"] is not None]
        reasons = Counter(r["v"] for r in members if r["v"])
        by_kind[kind] = {
            "n": len(members),
            "kept": sum(1 for r in members if not r["v"]),
            "dropped": {
                name: reasons.get(name, 0)
                for name in (*FILTERS, *sorted(set(reasons) - set(FILTERS)))
            },
            "median_chosen": statistics.median([r["cl"] for r in members]) if members else 0,
            "median_rejected": statistics.median([r["rl"] for r in members]) if members else 0,
            "median_ratio": statistics.median(ratios) if ratios else None,
            "truncated": sum(1 for r in members if "length" in (r["cf"], r["rf"])),
            "near_duplicate": sum(1 for r in members if r["nd"]),
        }
    warnings = []
    longer = [
        (k, b["median_ratio"])
        for k, b in by_kind.items()
        if b["median_ratio"] is not None and b["median_ratio"] > LENGTH_RATIO_WARNING
    ]
    if longer:
        where = ", ".join(f"{k} {r:.2f}×" for k, r in longer)
        warnings.append(
            f"The chosen answers are systematically longer than the rejected ones (median "
            f"chosen/rejected length ratio above {LENGTH_RATIO_WARNING}: {where}). DPO can learn "
            "'longer is better' from such pairs instead of 'faithful is better'; compare lengths "
            "of the trained model's answers with the base model's, or filter or balance pairs "
            "by length."
        )
    truncated = by_kind["all"]["truncated"]
    if n and truncated / n > 0.05:
        warnings.append(
            f"{truncated} of {n} pairs ({100 * truncated / n:.1f}%) have an answer cut off at the "
            "token limit; raise --max-new-tokens or keep the truncation filter on."
        )
    return {"n": n, "kinds": kinds, "by_kind": by_kind, "warnings": warnings}


# ----------------------------------------------------------------------------- charts


def _figure(width: float, height: float):
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ReportError(f"stic report draws its charts with matplotlib: {INSTALL_HINT}") from e
    # A Figure without pyplot: no global backend or figure registry is touched.
    return Figure(figsize=(width, height), layout="constrained")


def svg(fig, name: str) -> str:
    """The figure as an inline ``<svg>`` element (text kept as text; ids salted by ``name`` so
    that several charts in one page never share an id)."""
    import matplotlib

    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": name}):
        fig.savefig(buffer, format="svg", metadata={"Date": None})
    text = buffer.getvalue()
    text = text[text.index("<svg") :]
    return f'<figure class="chart" data-chart="{html.escape(name)}">{text}</figure>'


def length_charts(data: dict, summary: dict) -> str:
    """Histograms of chosen lengths, rejected lengths and their ratio, one line per kind."""
    rows, unit = data["rows"], data["length_unit"].split(" ")[0]
    fig = _figure(11, 3.2)
    axes = fig.subplots(1, 3)
    longest = max([max(r["cl"], r["rl"]) for r in rows] + [1])
    bins = [longest * i / 30 for i in range(31)]
    ratios = [r["ratio"] for r in rows if r["ratio"]]
    low, high = (min(ratios), max(ratios)) if ratios else (0.5, 2.0)
    low, high = min(low, 0.5), max(high, 2.0)
    ratio_bins = [low * (high / low) ** (i / 30) for i in range(31)]
    for kind in summary["kinds"]:
        members = [r for r in rows if r["kind"] == kind]
        style = {"histtype": "step", "linewidth": 1.6, "label": f"{kind} ({len(members)})"}
        axes[0].hist([r["cl"] for r in members], bins=bins, **style)
        axes[1].hist([r["rl"] for r in members], bins=bins, **style)
        axes[2].hist([r["ratio"] for r in members if r["ratio"]], bins=ratio_bins, **style)
    axes[0].set(title="chosen length", xlabel=unit, ylabel="pairs")
    axes[1].set(title="rejected length", xlabel=unit)
    axes[2].set(title="chosen / rejected length", xlabel="ratio (log scale)", xscale="log")
    from matplotlib.ticker import FixedLocator, NullFormatter, ScalarFormatter

    ticks = [t for t in (0.25, 0.5, 1, 1.5, 2, 3, 5, 10, 20) if low <= t <= high]
    axes[2].xaxis.set_major_locator(FixedLocator(ticks))
    axes[2].xaxis.set_major_formatter(ScalarFormatter())
    axes[2].xaxis.set_minor_formatter(NullFormatter())
    axes[2].axvline(1.0, color="grey", linestyle=":")
    axes[2].axvline(LENGTH_RATIO_WARNING, color="tab:red", linestyle="--", linewidth=1)
    axes[0].legend(fontsize=8)
    return svg(fig, "lengths")


def _series(log: list[dict], key: str) -> tuple[list[float], list[float]]:
    points = [
        (e["step"], e[key])
        for e in log
        if _number(e.get("step")) is not None and _number(e.get(key)) is not None
    ]
    return [p[0] for p in points], [p[1] for p in points]


TRAIN_PANELS = {
    "dpo": (
        ("loss", ("loss", "loss/dpo", "loss/nll")),
        ("reward margin", ("rewards/margin",)),
        ("reward accuracy", ("rewards/accuracy",)),
        ("learning rate", ("learning_rate",)),
    ),
    "sft": (("loss", ("loss",)), ("learning rate", ("learning_rate",))),
}


def training_chart(log: list[dict], stage: str) -> str:
    """One panel per quantity of the stage's train log, against the optimizer step."""
    panels = [
        (title, [k for k in keys if _series(log, k)[0]]) for title, keys in TRAIN_PANELS[stage]
    ]
    panels = [(t, k) for t, k in panels if k]
    if not panels:
        return '<p class="muted">The train log has no step entries.</p>'
    fig = _figure(3.0 * len(panels) + 1, 2.8)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, keys) in zip(axes, panels, strict=True):
        for key in keys:
            xs, ys = _series(log, key)
            ax.plot(xs, ys, marker="." if len(xs) < 30 else None, label=key)
        ax.set(title=title, xlabel="step")
        if len(keys) > 1:
            ax.legend(fontsize=8)
        if title == "learning rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    return svg(fig, f"train-{stage}")


def read_train_log(folder: Path) -> tuple[list[dict], str]:
    """``(entries, problem)``: the dict entries of ``folder/train_log.json``, or ``[]`` and why
    there are none."""
    path = folder / "train_log.json"
    if not path.is_file():
        return [], f"{path} does not exist"
    log = read_json(path)
    if not isinstance(log, list):
        return [], f"{path} is not a list"
    return [e for e in log if isinstance(e, dict)], ""


def collect_training(folder: Path | None, stage: str) -> dict | None:
    if folder is None:
        return None
    log, problem = read_train_log(folder)
    if problem:
        return {"stage": stage, "folder": str(folder), "missing": problem}
    final = next((e for e in reversed(log) if _number(e.get("train_loss")) is not None), {})
    steps = [e["step"] for e in log if _number(e.get("step")) is not None]
    return {
        "stage": stage,
        "folder": str(folder),
        "chart": training_chart(log, stage),
        "steps": max(steps) if steps else 0,
        "train_loss": final.get("train_loss"),
        "last": next((e for e in reversed(log) if "loss" in e), {}),
    }


# ----------------------------------------------------------------------------- results


def _describe_result(path: Path, kind: str) -> dict:
    document = read_json(path)
    if not isinstance(document, dict):
        raise ReportError(f"{path}: not a stic {kind} result")
    config = _config(path)
    adapter = config.get("adapter", document.get("adapter"))
    adapter = None if adapter is None else str(adapter)
    folder = next((p for p in path.parents if p.name == kind), None)
    # run: the `stic run` folder holding eval/ or bench/; name: the result's path inside it
    run = folder.parent.name if folder else path.parent.name
    name = path.relative_to(folder).with_suffix("").as_posix() if folder else path.stem
    if adapter is None:
        at = "base"
    else:
        at = {"dpo": "stage1", "sft": "final"}.get(Path(adapter).name, Path(adapter).name)
    return {
        "name": name,
        "run": run,
        "at": at,
        "dar": bool(document.get("dar", config.get("dar"))),
        "data": config.get("data") or (document.get("benchmark") if kind == "bench" else None),
        "document": document,
    }


def _base_for(result: dict, results: list[dict], key: str) -> dict | None:
    """The base model's result on the same data (the same DaR setting first), if any. Without
    a recorded data file, only a single base result is taken as the base."""
    bases = [r for r in results if r["at"] == "base" and r is not result]
    same = [b for b in bases if b[key] == result[key]]
    if not same and result[key] is None and len(bases) == 1:
        same = bases
    for candidate in same:
        if candidate["dar"] == result["dar"]:
            return candidate
    return same[0] if same else None


def _fmt(value: Any, digits: int = 1) -> str:
    value = _number(value)
    return "–" if value is None else f"{value:.{digits}f}"


def _delta(value: Any, base: Any) -> str:
    value, base = _number(value), _number(base)
    if value is None or base is None:
        return "–"
    d = value - base
    cls = "up" if d > 0 else "down" if d < 0 else ""
    return f'<span class="delta {cls}">{d:+.1f}</span>'


def results_html(evals: list[Path], benches: list[Path]) -> str:
    """Tables of every eval and bench result with deltas against the base, categories, and
    describe-and-respond examples."""
    parts = []
    if evals:
        results = [_describe_result(p, "eval") for p in evals]
        rows = []
        for r in sorted(results, key=lambda r: (str(r["data"]), r["at"] != "base", r["name"])):
            acc = _number(r["document"].get("accuracy"))
            acc = None if acc is None else 100 * acc
            base = _base_for(r, results, "data")
            base_acc = None
            if base is not None and _number(base["document"].get("accuracy")) is not None:
                base_acc = 100 * base["document"]["accuracy"]
            rows.append(
                f"<tr><td>{html.escape(r['name'])}</td><td>{html.escape(r['run'])}</td>"
                f"<td>{html.escape(r['at'])}</td><td>{'yes' if r['dar'] else ''}</td>"
                f"<td>{html.escape(Path(str(r['data'])).name if r['data'] else '?')}</td>"
                f"<td class=num>{_cell(r['document'].get('n', '–'))}</td>"
                f"<td class=num>{_fmt(acc)}</td>"
                f"<td class=num>{'' if r['at'] == 'base' or base is None else _delta(acc, base_acc)}"
                f"</td><td>{'' if base is None or r['at'] == 'base' else html.escape(base['name'])}</td></tr>"
            )
        parts.append(
            "<h3>Evaluations (stic eval)</h3><p class=muted>Accuracy in percent; Δ in points "
            "against the base model's result on the same data file (with the same "
            "describe-and-respond setting when there is one).</p><table class=results>"
            "<tr><th>result</th><th>run</th><th>weights</th><th>DaR</th><th>data</th>"
            "<th>n</th><th>accuracy</th><th>Δ vs base</th><th>base</th></tr>"
            + "".join(rows)
            + "</table>"
        )
        parts.append(_examples_html(results))
    if benches:
        results = [_describe_result(p, "bench") for p in benches]
        parts.append(_bench_html(results))
        parts.append(_examples_html([r for r in results if r["dar"]]))
    if not parts:
        return '<p class="muted">No eval or bench results in this run.</p>'
    return "".join(parts)


def _item_correct(item: dict) -> bool:
    """An eval item's ``correct``; a bench row's ``score`` above 0."""
    if "correct" in item:
        return bool(item["correct"])
    score = item.get("score")
    return isinstance(score, (int, float)) and score > 0


def _examples_html(results: list[dict]) -> str:
    """A few answers of each result: describe-and-respond ones with their description, right and
    wrong ones both."""
    blocks = []
    for r in results:
        items = r["document"].get("items")
        items = [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []
        if not items:
            continue
        right = [i for i in items if _item_correct(i)]
        wrong = [i for i in items if not _item_correct(i)]
        picked = (
            right[: DAR_EXAMPLES // 2] + wrong[: DAR_EXAMPLES - min(len(right), DAR_EXAMPLES // 2)]
        )
        picked = picked[:DAR_EXAMPLES]
        cards = []
        for item in picked:
            description = item.get("description")
            expected = item.get("answer")
            correct = _item_correct(item)
            cards.append(
                f'<div class="example {"right" if correct else "wrong"}">'
                + (
                    f"<div class=desc><b>description</b> {html.escape(str(description))}</div>"
                    if description
                    else ""
                )
                + (
                    f"<div><b>question</b> {html.escape(str(item['question']))}</div>"
                    if item.get("question")
                    else f"<div><b>item</b> {html.escape(str(item.get('id', '')))}</div>"
                )
                + f"<div><b>answer</b> {html.escape(str(item.get('prediction', '')))} "
                + (
                    f"<span class=muted>(expected {html.escape(str(expected))})</span> "
                    if expected is not None
                    else ""
                )
                + f"<b>{'✓ correct' if correct else '✗ wrong'}</b></div></div>"
            )
        label = "describe-and-respond" if r["dar"] else "answers"
        blocks.append(
            f"<details{' open' if r['dar'] else ''}><summary>{html.escape(r['run'])} / "
            f"{html.escape(r['name'])}: {label}, {len(picked)} of {len(items)}</summary>"
            + "".join(cards)
            + "</details>"
        )
    if not blocks:
        return ""
    return "<h3>Examples</h3>" + "".join(blocks)


def _bench_html(results: list[dict]) -> str:
    rows, categories = [], []
    for r in sorted(results, key=lambda r: (str(r["data"]), r["at"] != "base", r["name"])):
        doc = r["document"]
        metrics = _mapping(doc.get("metrics"))
        metric = doc.get("primary_metric")
        metric = metric if isinstance(metric, str) else next(iter(metrics), None)
        value = metrics.get(metric)
        base = _base_for(r, results, "data")
        base_doc = base["document"] if base else {}
        base_value = _mapping(base_doc.get("metrics")).get(metric)
        show_delta = base is not None and r["at"] != "base"
        rows.append(
            f"<tr><td>{_cell(doc.get('benchmark', r['name']))}</td>"
            f"<td>{html.escape(r['name'])}</td><td>{html.escape(r['run'])}</td>"
            f"<td>{html.escape(r['at'])}</td>"
            f"<td>{_cell(metric)}</td><td class=num>{_cell(doc.get('n', '–'))}</td>"
            f"<td class=num>{_fmt(value)}</td>"
            f"<td class=num>{_delta(value, base_value) if show_delta else ''}</td></tr>"
        )
        for axis, labels in _mapping(doc.get("categories")).items():
            base_labels = _mapping(_mapping(base_doc.get("categories")).get(axis))
            for label, metrics in _mapping(labels).items():
                metrics = _mapping(metrics)
                v = metrics.get(metric)
                b = _mapping(base_labels.get(label)).get(metric)
                categories.append(
                    f"<tr><td>{html.escape(r['name'])}</td><td>{_cell(axis)}</td>"
                    f"<td>{_cell(label)}</td><td class=num>{_cell(metrics.get('n', '–'))}</td>"
                    f"<td class=num>{_fmt(v)}</td>"
                    f"<td class=num>{_delta(v, b) if show_delta else ''}</td></tr>"
                )
    out = (
        "<h3>Benchmarks (stic bench)</h3><p class=muted>Each benchmark's primary metric; Δ in "
        "points against the base model's result on the same benchmark.</p><table class=results>"
        "<tr><th>benchmark</th><th>result</th><th>run</th><th>weights</th><th>metric</th>"
        "<th>n</th><th>value</th><th>Δ vs base</th></tr>" + "".join(rows) + "</table>"
    )
    if categories:
        out += (
            "<h4>Per category</h4><table class=results><tr><th>result</th><th>axis</th>"
            "<th>category</th><th>n</th><th>value</th><th>Δ vs base</th></tr>"
            + "".join(categories)
            + "</table>"
        )
    return out


def markdown_html(text: str) -> str:
    """The subset of Markdown that results files use: pipe tables, headings and paragraphs."""
    out, table, paragraph = [], [], []

    def flush() -> None:
        if table:
            head, *body = [
                [html.escape(c.strip()) for c in line.strip().strip("|").split("|")]
                for line in table
                if not re.fullmatch(r"\|?[\s\-:|]+\|?", line.strip())
            ]
            out.append(
                "<table class=results><tr>"
                + "".join(f"<th>{c}</th>" for c in head)
                + "</tr>"
                + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in body)
                + "</table>"
            )
            table.clear()
        if paragraph:
            out.append(f"<p>{html.escape(' '.join(paragraph))}</p>")
            paragraph.clear()

    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("|"):
            if paragraph:
                out.append(f"<p>{html.escape(' '.join(paragraph))}</p>")
                paragraph.clear()
            table.append(stripped)
        elif not stripped:
            flush()
        elif stripped.startswith("#"):
            flush()
            level = min(len(stripped) - len(stripped.lstrip("#")) + 2, 6)
            out.append(f"<h{level}>{html.escape(stripped.lstrip('#').strip())}</h{level}>")
        else:
            if table:
                flush()
            paragraph.append(stripped)
    flush()
    return "".join(out)


# ----------------------------------------------------------------------------- page


def _audit_html(data: dict, summary: dict) -> str:
    kinds = summary["kinds"] + ["all"]
    reasons = list(summary["by_kind"]["all"]["dropped"])
    head = "".join(f"<th>{html.escape(k)}</th>" for k in kinds)

    def row(label: str, cell) -> str:
        return (
            f"<tr><th>{html.escape(label)}</th>"
            + "".join(f"<td class=num>{cell(summary['by_kind'][k])}</td>" for k in kinds)
            + "</tr>"
        )

    def share(count: int, n: int) -> str:
        return f"{count} ({100 * count / n:.1f}%)" if n else "0"

    rows = [
        row("pairs", lambda b: b["n"]),
        row("kept", lambda b: share(b["kept"], b["n"])),
        *(row(f"dropped: {r}", lambda b, r=r: b["dropped"].get(r, 0)) for r in reasons),
        row(
            f"median chosen length ({data['length_unit'].split(' ')[0]})",
            lambda b: _fmt(b["median_chosen"], 0),
        ),
        row("median rejected length", lambda b: _fmt(b["median_rejected"], 0)),
        row("median chosen / rejected", lambda b: _fmt(b["median_ratio"], 2)),
        row("truncated (either answer)", lambda b: share(b["truncated"], b["n"])),
        row(
            f"near-duplicate (similarity ≥ {data['threshold']:g})",
            lambda b: share(b["near_duplicate"], b["n"]),
        ),
    ]
    warnings = "".join(
        f'<div class="warning" role="alert">⚠ {html.escape(w)}</div>' for w in summary["warnings"]
    )
    problems = "".join(
        f"<li>{count} pairs: {html.escape(reason)}</li>"
        for reason, count in data["image_problems"].items()
    )
    return (
        warnings
        + f"<table class=audit><tr><th></th>{head}</tr>{''.join(rows)}</table>"
        + f"<p class=muted>Verdicts: {html.escape(data['verdict_source'])}. Lengths: "
        f"{html.escape(data['length_unit'])}. Near-duplicate: word-level similarity of chosen "
        "and rejected (the DPO filter's measure), counted whatever the filters did.</p>"
        + (f"<p>Images not shown:</p><ul>{problems}</ul>" if problems else "")
        + length_charts(data, summary)
    )


def build_report(sources: ReportSources, large_thumbnails: int = LARGE_THUMBNAILS) -> str:
    """The whole page as one HTML string."""
    from stic.tools.report_page import render_page

    started = time.time()
    if sources.empty():
        raise ReportError(
            "nothing to report: give a run folder or --pairs/--dpo/--sft/--eval/--bench"
        )
    rounds = None
    if sources.rounds is not None:
        from stic.tools import report_rounds

        rounds = report_rounds.read_rounds(sources.rounds)
    pairs = collect_pairs(sources, large_thumbnails)
    sections: dict[str, str] = {}
    for note in sources.notes:
        sections.setdefault("demo", "")
        sections["demo"] += markdown_html(note.read_text(encoding="utf-8"))
    if rounds is not None:
        sections["rounds"] = report_rounds.rounds_html(rounds, sources)
    summary = audit(pairs) if pairs is not None else None
    if rounds is not None:
        sections["audit"] = report_rounds.round_audits_html(rounds, sources, pairs, summary)
    if pairs is not None:
        sections["audit"] = sections.get("audit", "") + _audit_html(pairs, summary)
    # With rounds, dpo/ is a copy of the chosen round: its curves are shown with every round's.
    training = [
        t
        for t in (
            collect_training(sources.dpo, "dpo") if rounds is None else None,
            collect_training(sources.sft, "sft"),
        )
        if t
    ]
    if training or rounds is not None:
        blocks = [] if rounds is None else [report_rounds.round_training_html(rounds)]
        for t in training:
            title = {"dpo": "Stage 1: DPO + NLL", "sft": "Stage 2: description-infused SFT"}[
                t["stage"]
            ]
            if "missing" in t:
                blocks.append(f"<h3>{title}</h3><p class=muted>{html.escape(t['missing'])}</p>")
                continue
            loss = t["train_loss"]
            blocks.append(
                f"<h3>{title}</h3><p class=muted>{html.escape(t['folder'])}: "
                f"{_cell(t['steps'])} steps"
                + (f", mean training loss {loss:.4g}" if _number(loss) is not None else "")
                + "</p>"
                + t["chart"]
            )
        sections["training"] = "".join(blocks)
    if sources.evals or sources.benches:
        sections["results"] = results_html(sources.evals, sources.benches)
    described = {
        "pairs": str(sources.pairs) if sources.pairs else None,
        "images": pairs["images"] if pairs else None,
        "dpo": str(sources.dpo) if sources.dpo else None,
        "sft": str(sources.sft) if sources.sft else None,
        "rounds": str(sources.rounds) if sources.rounds else None,
        "results": len(sources.evals) + len(sources.benches),
    }
    return render_page(
        title=sources.title,
        sections=sections,
        pairs=pairs,
        sources=described,
        page_size=PAGE_SIZE,
        seconds=time.time() - started,
    )


def _is_our_file(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(2048)
    return f'<meta name="generator" content="{GENERATOR}">'.encode() in head


def write_report(
    sources: ReportSources, out: str | Path, large_thumbnails: int = LARGE_THUMBNAILS
) -> Path:
    """Build the page and write it atomically to ``out``; a file stic report did not write is
    refused (ReportError)."""
    out = Path(out)
    if out.is_dir():
        raise ReportError(f"{out}: is a folder; --out names the .html file to write")
    try:
        with report_output(sources, out) as output:
            output.write_text(build_report(sources, large_thumbnails))
            output.finish()
    except OUTPUT_ERRORS as e:
        raise ReportError(str(e)) from None
    return out


def report_output(sources: ReportSources, out: Path) -> Output:
    """The page's output object: never one of the files it shows; an older page stic report
    wrote (no manifest beside it, its generator tag in it) is replaced like one with."""
    inputs = {
        "pairs": sources.pairs,
        "images": sources.images,
        "dpo": sources.dpo,
        "sft": sources.sft,
        "rounds": sources.rounds,
        "pairs dpo": sources.pairs_dpo,
        **{f"eval {p}": p for p in sources.evals},
        **{f"bench {p}": p for p in sources.benches},
        **{f"notes {p}": p for p in sources.notes},
    }
    settings = {k: None if v is None else str(v) for k, v in inputs.items()}
    return Output(
        "report",
        settings,
        out=out,
        inputs=inputs,
        file=True,
        adopt=lambda: [] if out.is_file() and _is_our_file(out) else ["not written by stic report"],
        replace=True,
        command="stic report",
    )


def write_run_report(output_dir: str | Path) -> Path:
    """``output_dir/report.html`` for a finished ``stic run`` or ``stic demo`` folder."""
    output_dir = Path(output_dir)
    return write_report(sources_from_folder(output_dir), output_dir / "report.html")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="stic report",
        description="Write one self-contained HTML page (works offline) to look at a run: the "
        "preference pairs with their images, an audit of lengths and filters, the training "
        "curves and the results against the base model.",
        epilog="example:\n  stic report runs/llava15 --out runs/llava15/report.html\n"
        "  stic report --pairs run/pairs.jsonl --images coco/train2014 --dpo run/stage1 "
        "--eval run/vqa.json --out report.html",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "run", nargs="?", help="a `stic run` output folder or a `stic demo` folder (optional)"
    )
    parser.add_argument("--out", required=True, help="the HTML file to write")
    parser.add_argument("--pairs", help="pairs JSONL (stic pairs)")
    parser.add_argument("--images", help="the pairs' image folder (default: from its manifest)")
    parser.add_argument("--dpo", help="stage-1 adapter folder (stic dpo)")
    parser.add_argument("--sft", help="stage-2 adapter folder (stic sft)")
    parser.add_argument(
        "--eval", action="append", default=[], help="a stic eval result JSON (repeatable)"
    )
    parser.add_argument(
        "--bench", action="append", default=[], help="a stic bench result JSON (repeatable)"
    )
    parser.add_argument(
        "--model", help="model whose tokenizer counts lengths (default: the pairs')"
    )
    parser.add_argument(
        "--round",
        type=int,
        help="a run with self-training rounds: the round whose pairs the browser shows "
        "(default: the chosen round; every round's audit and curves are shown either way)",
    )
    parser.add_argument("--title", help="page title")
    parser.add_argument(
        "--large-thumbnails",
        type=int,
        default=LARGE_THUMBNAILS,
        help=f"pairs shown with {THUMB_PX} px thumbnails; the rest get {SMALL_THUMB_PX} px, to "
        f"bound the file size (default: {LARGE_THUMBNAILS})",
    )
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    path = lambda value: Path(value) if value else None  # noqa: E731
    sources = ReportSources(
        pairs=path(args.pairs),
        images=path(args.images),
        dpo=path(args.dpo),
        sft=path(args.sft),
        evals=[Path(p) for p in args.eval],
        benches=[Path(p) for p in args.bench],
        model=args.model,
        round=args.round,
    )
    for given in [sources.pairs, *sources.evals, *sources.benches]:
        if given is not None and not given.is_file():
            raise ReportError(f"{given}: no such file")
    for given in (sources.dpo, sources.sft, sources.images):
        if given is not None and not given.is_dir():
            raise ReportError(f"{given}: no such folder")
    if args.round is not None and not args.run:
        raise ReportError("--round needs a run folder (the rounds.json of a `stic run`)")
    if args.run:
        sources = sources_from_folder(args.run, sources)
    if args.title:
        sources.title = args.title
    elif not args.run:
        sources.title = f"stic report: {sources.pairs or sources.dpo or sources.sft or 'results'}"
    out = write_report(sources, args.out, args.large_thumbnails)
    size = out.stat().st_size
    print(f"report -> {out} ({size / 1e6:.1f} MB)")
    return 0
