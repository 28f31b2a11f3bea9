"""``stic run CONFIG.yaml``: the stages in order from one YAML file.

The YAML's keys mirror the command-line flags (underscores or dashes)::

    model: llava-hf/llava-1.5-7b-hf      # shared: model, dtype, seed, trust_remote_code, allow_pickle, overwrite
    output_dir: runs/llava15
    pairs:  {images: /data/coco/train2014, limit: 6000}
    dpo:    {lr: 1.0e-7}
    infuse: {data: /data/llava_5k.json, images: /data/llava}
    sft:    {lr: 2.0e-5}
    eval:
      - {name: vqa, data: /data/vqa.jsonl, images: /data/vqa, dar: true}
    bench:
      - {benchmark: pope_random, data: /data/POPE, images: /data/coco/val2014, at: final, dar: true}

A stage runs when its section is present. The pipeline wires outputs to inputs (pairs -> dpo ->
infuse -> sft -> eval, bench) under ``output_dir``; those keys cannot be set by hand. Each eval
and bench entry may say ``at: base | stage1 | final`` (default: the last adapter trained); an
``at`` that no stage of the config trains is an error before anything runs (final with no dpo or
sft would be the base model filed as final), unless the entry names its weights with
``adapter: PATH`` instead of ``at``. Eval entries write ``eval/<name>.json``, bench entries
``bench/<name>.json`` (name default: ``<at>[_dar]/<benchmark>``, ``adapter_<folder name>`` in
place of ``<at>`` for an ``adapter:``), so ``stic compare`` can read each arm. A stage whose output is
complete for the same config is skipped, so a rerun after a crash picks up where it stopped.
Relative paths are taken from the current directory.

``gpus: N`` (or ``stic run --gpus N``; default: the machine's GPUs) runs the generating stages on
a local Ray pool of N workers and the training stages as N data-parallel processes started by
``launcher: torchrun | accelerate`` (``accelerate_config:`` its config file), keeping each
global batch (batch_size x grad_accum); N is in no config hash (see stic.stages.launch).

Self-training rounds (README: Self-training rounds)::

    rounds: 3                  # default 1 (the run above, unchanged)
    round_reference: previous  # round r's DPO reference: round r-1's model (iterative DPO), or base
    round_images: fresh        # round r reads shard r-1 of N of pairs.images; same: all, each round
    select: {entry: val, metric: accuracy, mode: max}   # an eval/bench entry on validation data

With rounds >= 2 each round writes ``round_<r>/pairs.jsonl``, ``round_<r>/dpo/`` and the select
entry's ``round_<r>/<eval|bench>/<name>.json``; round r >= 2 generates with and trains from round
r-1's adapter. Then ``rounds.json``/``rounds.md`` record rounds x metric and the chosen round
(best value, ties to the earliest; no select: the last), and ``dpo/`` is a copy of that round's
adapter, which infuse, sft and the entries at stage1/final read. A select entry whose data a test
entry also reads is refused.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from stic.config import ConfigError, LaunchOptions, RoundsConfig, build, normalize_path, normalized
from stic.runtime.manifests import redact
from stic.runtime.output import Output
from stic.stages import launch
from stic.stages.registry import STAGES, run_stage

if TYPE_CHECKING:
    from stic.stages.runner import StageSummary

logger = logging.getLogger(__name__)

STAGE_ORDER = tuple(STAGES)
SHARED_KEYS = ("model", "dtype", "seed", "trust_remote_code", "allow_pickle", "overwrite")
# How the run is spread over the machine's GPUs (stic.stages.launch): not given to any stage.
LAUNCH_KEYS = tuple(f.name for f in dataclasses.fields(LaunchOptions))
EVAL_AT = ("base", "stage1", "final")
# Stages whose section is a list of entries, each run at one adapter (``at``).
ENTRY_STAGES = ("eval", "bench")


# Top-level keys of self-training rounds (see plan_rounds).
ROUND_KEYS = ("rounds", "round_reference", "round_images", "select")
SELECT_KEYS = ("entry", "metric", "mode")
# The stage that chooses among the rounds (stic.stages.rounds); not a command of its own.
ROUNDS_STAGE = "rounds"


@dataclass(frozen=True)
class PlannedStage:
    """One stage run of the plan. ``where``: the prefix its config's errors are named by
    (``pairs.``, ``eval[2].``); default ``<stage>.``."""

    stage: str
    name: str
    config: Any
    where: str = ""


@dataclass(frozen=True)
class RoundSettings:
    """The run config's round keys, validated (defaults: one round, as without them)."""

    rounds: int = 1
    reference: str = "previous"
    images: str = "fresh"
    select: dict | None = None


def _normalize_keys(section: Any, where: str, errors: list[str]) -> dict:
    if section is None:
        return {}
    if not isinstance(section, dict):
        errors.append(f"{where.rstrip('.')}: must be a mapping of keys to values")
        return {}
    out: dict[str, Any] = {}
    spelled: dict[str, Any] = {}
    for key, value in section.items():
        name = str(key).replace("-", "_")
        if name in out:  # batch-size and batch_size: one key written twice
            errors.append(f"{where}{name}: given twice (as {spelled[name]!r} and {key!r})")
        out[name] = value
        spelled[name] = key
    return out


def plan(data: Any) -> list[PlannedStage]:
    """Validate a run config (the parsed YAML) into stage configs, all problems in one error.

    Every problem is collected, at every depth: an unknown top-level key does not hide unknown
    keys inside the stage sections.
    """
    errors: list[str] = []
    top = _normalize_keys(data, "", errors)
    if errors:
        raise ConfigError("the run config must be a YAML mapping")
    allowed = (
        set(SHARED_KEYS) | set(LAUNCH_KEYS) | {"output_dir"} | set(STAGE_ORDER) | set(ROUND_KEYS)
    )
    errors += [
        f"{k}: unknown key (allowed: {', '.join(sorted(allowed))})" for k in top if k not in allowed
    ]
    if "model" not in top:
        errors.append("model: required")
    if "output_dir" not in top:
        errors.append("output_dir: required")
    elif not isinstance(top["output_dir"], str):
        errors.append(f"output_dir: {top['output_dir']!r} is not str")
    try:
        build(LaunchOptions, {k: top[k] for k in LAUNCH_KEYS if k in top})
    except ConfigError as e:
        errors += str(e).splitlines()
    shared = {k: top[k] for k in SHARED_KEYS if k in top}
    # Stand-ins for a missing model or output_dir (already reported), so that the sections are
    # still checked and their problems reported with these.
    shared.setdefault("model", "<model>")
    root = Path(top["output_dir"] if isinstance(top.get("output_dir"), str) else "<output_dir>")
    present = [s for s in STAGE_ORDER if s in top]
    if not present:
        errors.append(f"no stage sections: add one or more of {', '.join(STAGE_ORDER)}")

    sections = {s: top[s] for s in present if s not in ENTRY_STAGES}
    for stage in sections:
        sections[stage] = _normalize_keys(sections[stage], f"{stage}.", errors)
    rounds = _round_settings(top, sections, errors)

    # What the pipeline wires, stage by stage.
    wired: dict[str, dict[str, Any]] = {}
    adapters = {"base": None}
    if "pairs" in sections:
        wired["pairs"] = {"out": str(root / "pairs" / "pairs.jsonl")}
    if "dpo" in sections:
        wired["dpo"] = {"out": str(root / "dpo")}
        if "pairs" in sections:
            wired["dpo"]["pairs"] = wired["pairs"]["out"]
            if "images" in sections["pairs"]:
                sections["dpo"].setdefault("images", sections["pairs"]["images"])
        adapters["stage1"] = wired["dpo"]["out"]
    if "infuse" in sections:
        wired["infuse"] = {"out": str(root / "infuse" / "infused.json")}
        if "dpo" in sections:
            wired["infuse"]["adapter"] = adapters["stage1"]
    if "sft" in sections:
        wired["sft"] = {"out": str(root / "sft")}
        if "infuse" in sections:
            wired["sft"]["data"] = wired["infuse"]["out"]
            if "images" in sections["infuse"]:
                sections["sft"].setdefault("images", sections["infuse"]["images"])
        if "dpo" in sections:
            wired["sft"]["adapter"] = adapters["stage1"]
        adapters["final"] = wired["sft"]["out"]
    if "stage1" in adapters:  # final = the last adapter trained; none trained: no final
        adapters.setdefault("final", adapters["stage1"])

    planned = []
    for stage, section in sections.items():
        if rounds.rounds > 1 and stage in ("pairs", "dpo"):
            continue  # planned once per round, below
        for key in wired.get(stage, {}):
            if key in section:
                errors.append(f"{stage}.{key}: set by the pipeline (remove it)")
        merged = {**shared, **section, **wired.get(stage, {})}
        try:
            planned.append(
                PlannedStage(stage, stage, build(STAGES[stage].config, merged, f"{stage}."))
            )
        except ConfigError as e:
            errors += str(e).splitlines()

    round_stages = plan_rounds(rounds, sections, shared, root, errors)
    round_adapters = [s.config.out for s in round_stages if s.stage == "dpo"]
    tests: list[PlannedStage] = []
    selected: list[PlannedStage] = []  # the select entry, once per round
    for kind in ENTRY_STAGES:
        if kind in top:
            found, per_round = _plan_entries(
                kind, top[kind], shared, root, adapters, errors, rounds.select, round_adapters
            )
            tests += found
            selected += per_round
    if round_stages:
        if rounds.select is not None:
            errors += _select_problems(rounds.select["entry"], selected, tests)
        # Each round: its pairs, its dpo, its select entry; then the choice; then the rest.
        ordered = []
        for number in range(1, rounds.rounds + 1):
            ordered += [s for s in round_stages if s.name == f"round_{number}"]
            ordered += [s for s in selected if s.name.startswith(f"round_{number}/")]
        planned = [*ordered, _rounds_stage(rounds, root, ordered, shared), *planned]
    planned += tests
    if errors:
        raise ConfigError("\n".join(errors))
    return planned


def _round_settings(top: dict, sections: dict, errors: list[str]) -> RoundSettings:
    """The round keys of the run config, checked; problems added to ``errors``."""
    number = top.get("rounds", 1)
    if isinstance(number, bool) or not isinstance(number, int) or number < 1:
        errors.append(
            f"rounds: {number!r} is not allowed (an integer >= 1; 1 = one pass of pairs and dpo)"
        )
        number = None
    values = {}
    for key, allowed in (
        ("round_reference", ("previous", "base")),
        ("round_images", ("fresh", "same")),
    ):
        value = top.get(key, allowed[0])
        if value not in allowed:
            errors.append(f"{key}: {value!r} is not one of {', '.join(map(repr, allowed))}")
        values[key] = value
    select = None
    if "select" in top:
        section = _normalize_keys(top["select"], "select.", errors)
        select = {}
        for key in section:
            if key not in SELECT_KEYS:
                errors.append(f"select.{key}: unknown key (allowed: {', '.join(SELECT_KEYS)})")
        for key in SELECT_KEYS:
            value = section.get(key)
            if key not in section:
                errors.append(f"select.{key}: required")
            elif key == "mode" and value not in ("max", "min"):
                errors.append(f"select.mode: {value!r} is not one of 'max', 'min'")
            elif not isinstance(value, str) or not value.strip():
                errors.append(f"select.{key}: {value!r} is not a non-empty string")
            select[key] = value
    if number == 1:
        errors += [
            f"{key}: only used with rounds >= 2 (rounds is 1)"
            for key in ROUND_KEYS[1:]
            if key in top
        ]
    if number is not None and number > 1:
        errors += [
            f"rounds: {number} needs a {stage} section (each round makes pairs and trains dpo on them)"
            for stage in ("pairs", "dpo")
            if stage not in sections
        ]
    return RoundSettings(number or 1, values["round_reference"], values["round_images"], select)


def plan_rounds(
    rounds: RoundSettings, sections: dict, shared: dict, root: Path, errors: list[str]
) -> list[PlannedStage]:
    """Round r's pairs and dpo (r = 1..N), under ``<output_dir>/round_<r>/``; none for one round.

    Round r >= 2 generates its pairs with round r-1's adapter applied and trains DPO from that
    adapter, against it (``round_reference: previous``, iterative DPO) or the base model.
    With ``round_images: fresh`` round r reads shard r-1 of N of ``pairs.images``.
    """
    if rounds.rounds <= 1 or "pairs" not in sections or "dpo" not in sections:
        return []
    set_here = {
        "pairs": ("out", "adapter") + (("shard",) if rounds.images == "fresh" else ()),
        "dpo": ("out", "pairs", "adapter", "reference"),
    }
    failed = False
    for stage, keys in set_here.items():
        for key in keys:
            if key in sections[stage]:
                errors.append(f"{stage}.{key}: set by the rounds (remove it)")
                failed = True
    dpo_section = dict(sections["dpo"])
    if "images" in sections["pairs"]:
        dpo_section.setdefault("images", sections["pairs"]["images"])
    planned: list[PlannedStage] = []
    previous = None
    for number in range(1, rounds.rounds + 1):
        folder = root / f"round_{number}"
        pairs = {"out": str(folder / "pairs.jsonl")}
        dpo = {"out": str(folder / "dpo"), "pairs": pairs["out"]}
        if rounds.images == "fresh":
            pairs["shard"] = f"{number - 1}/{rounds.rounds}"
        if previous is not None:
            pairs["adapter"] = dpo["adapter"] = previous
            dpo["reference"] = "start" if rounds.reference == "previous" else "base"
        for stage, section, wired in (
            ("pairs", sections["pairs"], pairs),
            ("dpo", dpo_section, dpo),
        ):
            merged = {**shared, **section, **wired}
            try:
                config = build(STAGES[stage].config, merged, f"{stage}.")
            except ConfigError as e:
                if not failed:  # the same problem in every round: said once
                    errors += str(e).splitlines()
                failed = True
                continue
            planned.append(PlannedStage(stage, f"round_{number}", config, f"{stage}."))
        previous = dpo["out"]
    return [] if failed else planned


def _rounds_stage(
    rounds: RoundSettings, root: Path, ordered: list[PlannedStage], shared: dict
) -> PlannedStage:
    select = rounds.select or {}
    config = RoundsConfig(
        out=str(root / "dpo"),
        table=str(root / "rounds.json"),
        round_adapters=[s.config.out for s in ordered if s.stage == "dpo"],
        round_pairs=[s.config.out for s in ordered if s.stage == "pairs"],
        round_results=[s.config.out for s in ordered if s.stage in ENTRY_STAGES],
        select_entry=select.get("entry"),
        select_metric=select.get("metric"),
        select_mode=select.get("mode"),
        round_reference=rounds.reference,
        round_images=rounds.images,
        overwrite=bool(shared.get("overwrite", False)),
    )
    return PlannedStage(ROUNDS_STAGE, ROUNDS_STAGE, config, "rounds.")


def _overlaps(a: str, b: str) -> bool:
    """Whether two data paths are the same, or one lies inside the other (a release folder and
    one of its files)."""
    a_path, b_path = Path(normalize_path(a)), Path(normalize_path(b))
    return a_path == b_path or a_path in b_path.parents or b_path in a_path.parents


def _select_problems(
    entry: Any, selected: list[PlannedStage], tests: list[PlannedStage]
) -> list[str]:
    """The select entry must exist and read data that no test entry reads."""
    if not isinstance(entry, str):
        return []  # reported with the select keys
    if not selected:
        names = sorted({s.name for s in tests})
        return [
            f"select.entry: {entry!r} is not the name of an eval or bench entry of this config"
            + (f" (names: {', '.join(names)})" if names else "")
        ]
    first = selected[0]
    problems = []
    for test in tests:
        if _overlaps(first.config.data, test.config.data):
            problems.append(
                f"select.entry: {entry!r} ({first.where}data) reads {first.config.data}, and "
                f"the test entry {test.name!r} ({test.where}data) reads {test.config.data}: "
                "rounds are chosen on validation data that no test entry uses"
            )
    return problems


def _default_name(kind: str, index: int, entry: dict, at: str) -> str:
    """eval: ``eval<i>``; bench: ``<at>[_dar]/<benchmark>``, so that each arm's results are one
    folder of ``<benchmark>.json`` files, as ``stic compare`` reads them."""
    if kind != "bench" or not isinstance(entry.get("benchmark"), str):
        return f"{kind}{index}"
    return f"{at}{'_dar' if entry.get('dar') is True else ''}/{entry['benchmark']}"


def _plan_entries(
    kind: str,
    section: Any,
    shared: dict,
    root: Path,
    adapters: dict[str, str | None],
    errors: list[str],
    select: dict | None = None,
    round_adapters: Sequence[str] = (),
) -> tuple[list[PlannedStage], list[PlannedStage]]:
    """The planned runs of an entry list (``eval:`` or ``bench:``): one per entry, each at the
    adapter its ``at`` names, writing ``<output_dir>/<kind>/<name>.json``; and the entry that
    ``select`` names, once per round at that round's adapter, writing
    ``<output_dir>/round_<r>/<kind>/<name>.json`` (it takes no ``at``: the rounds set it)."""
    entries = section if isinstance(section, list) else [section]
    names: set[str] = set()
    planned = []
    per_round = []
    select_name = (select or {}).get("entry")
    for i, entry in enumerate(entries):
        where = f"{kind}[{i}]."
        entry = _normalize_keys(entry, where, errors)
        raw = dict(entry)
        # The weights: `at` (default final), or an `adapter:` the user names instead.
        given = entry.pop("adapter", None) if "at" not in entry else None
        at = entry.pop("at", "final")
        label = at if given is None else f"adapter_{Path(str(given)).name or 'adapter'}"
        name = entry.pop("name", None) or _default_name(kind, i, entry, label)
        if not isinstance(name, str) or Path(name).is_absolute() or ".." in Path(name).parts:
            errors.append(f"{where}name: {name!r} must be a relative name without '..'")
            continue
        if round_adapters and name == select_name:
            if "at" in raw or "adapter" in raw:
                key = "at" if "at" in raw else "adapter"
                errors.append(
                    f"{where}{key}: set by select (the select entry runs after every round, on "
                    "that round's adapter; remove it)"
                )
                continue
            for number, adapter in enumerate(round_adapters, start=1):
                merged = {
                    **shared,
                    **entry,
                    "out": str(root / f"round_{number}" / kind / f"{name}.json"),
                    "adapter": adapter,
                }
                try:
                    config = build(STAGES[kind].config, merged, where)
                except ConfigError as e:
                    errors += str(e).splitlines()
                    break
                per_round.append(PlannedStage(kind, f"round_{number}/{name}", config, where))
            names.add(name)
            continue
        if given is None and at not in EVAL_AT:
            errors.append(f"{where}at: {at!r} is not one of {', '.join(EVAL_AT)}")
            continue
        if given is None and at not in adapters:
            # Without this, `at: final` with no training stage would evaluate the base model and
            # file it as final: a base compared with itself.
            trains = {"stage1": "dpo", "final": "dpo or sft"}[at]
            errors.append(
                f"{where}at: {at!r}{' (the default)' if at == 'final' else ''} needs the stage "
                f"that trains it in this config ({trains}); use at: base for the base model, "
                "or name the weights with adapter: PATH"
            )
            # (the entry's other keys are still checked, below, with the base as a stand-in)
        if name in names:
            errors.append(f"{where}name: {name!r} is used twice")
        names.add(name)
        for key in ("out", "adapter"):
            if key in entry:
                errors.append(
                    f"{where}{key}: set by the pipeline (use 'at' to pick the adapter"
                    + (", or adapter: PATH without at)" if key == "adapter" else ")")
                )
        merged = {
            **shared,
            **entry,
            "out": str(root / kind / f"{name}.json"),
            "adapter": adapters.get(at) if given is None else given,
        }
        try:
            config = build(STAGES[kind].config, merged, where)
        except ConfigError as e:
            errors += str(e).splitlines()
            continue
        if kind == "bench" and not config.judge_url:
            from stic.data.benchmarks import get_spec  # not stic.stages.bench: no torch here

            if get_spec(config.benchmark).judge == "required":
                errors.append(
                    f"{where}judge_url: {config.benchmark} is scored by a judge model; give "
                    "judge_url and judge_model (any OpenAI-compatible chat-completions endpoint)"
                )
        planned.append(PlannedStage(kind, name, config, where))
    return planned, per_round


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that records keys written twice in one mapping (YAML would keep the last)."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self.duplicates: list[str] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *defaults` merges; overriding a merged key is what it is for
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:
                continue  # an unhashable key: the constructor reports it
            if first is None:
                seen[key] = line
            else:
                self.duplicates.append(
                    f"line {line}: key {key!r} appears twice in one mapping (first on line "
                    f"{first}); keep one"
                )
        return super().construct_mapping(node, deep=deep)


def _load_yaml(path: str | Path) -> tuple[Any, list[str]]:
    """The parsed YAML of a run config, and its keys written twice (one line each)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such config file")
    loader = _UniqueKeyLoader(path.read_text(encoding="utf-8"))
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    finally:
        loader.dispose()
    return data, [f"{path}: {d}" for d in loader.duplicates]


# Stage config keys that name something a stage reads (``out`` is what it writes).
INPUT_KEYS = ("pairs", "data", "images", "adapter")
_FOLDERS = ("images", "adapter", "model")


def _looks_local(model: str) -> bool:
    # The rule of stic.modeling.models.check_model_path: Hub ids look like org/name.
    return model.startswith((".", "/", "~")) or model.count("/") > 1


def _path_problem(key: str, value: str, file_or_folder: bool = False) -> str | None:
    path = Path(value).expanduser()
    if not path.exists():
        return f"{value} does not exist"
    if file_or_folder:
        pass
    elif key in _FOLDERS and not path.is_dir():
        return f"{value} is not a folder"
    elif key not in _FOLDERS and not path.is_file():
        return f"{value} is not a file"
    if not os.access(path, os.R_OK | (os.X_OK if path.is_dir() else 0)):
        return f"{value} is not readable"
    if key == "adapter" and not (path / "adapter_config.json").is_file():
        return f"{value} is not a PEFT adapter folder (no adapter_config.json)"
    return None


def input_problems(stages: list[PlannedStage]) -> list[str]:
    """Inputs the stages read that no stage of this run makes, and that are missing or unreadable.

    Checked before the first stage starts, so that a missing ``infuse.data`` is found now and
    not after hours of pairs and DPO. An input that an earlier stage of the run writes (its
    ``out``) is not checked. One line per problem, naming the key (``infuse.data: ...``).
    """
    problems: list[str] = []
    reported: set[Path] = set()
    produced: set[Path] = set()

    def check(where: str, key: str, value: Any, file_or_folder: bool = False) -> bool:
        """False when a problem with ``value`` is (or was already) reported."""
        if not isinstance(value, str) or not value:
            return True
        resolved = Path(value).expanduser().resolve()
        if resolved in produced:
            return True
        if resolved in reported:
            return False
        problem = _path_problem(key, value, file_or_folder)
        if problem:
            reported.add(resolved)
            problems.append(f"{where}{key}: {problem}")
        return problem is None

    models = {s.config.model for s in stages if isinstance(getattr(s.config, "model", None), str)}
    for model in sorted(models):
        if _looks_local(model):
            check("", "model", model)
    benchmarks_read: dict[tuple, str | None] = {}
    for index, stage in enumerate(stages):
        if stage.where:
            where = stage.where
        elif stage.stage in ENTRY_STAGES:
            where = f"{stage.stage}[{sum(s.stage == stage.stage for s in stages[:index])}]."
        else:
            where = f"{stage.stage}."
        config = stage.config
        if stage.stage == "bench":
            # A benchmark is a file or a folder (hub parquet shards, a release folder), read
            # now as the stage will read it: a wrong folder is found before hours of training.
            ok = check(where, "data", config.data, file_or_folder=True)
            ok = check(where, "images", config.images) and ok
            ok = check(where, "adapter", config.adapter) and ok
            source = (config.benchmark, config.data, config.images)
            if ok and source not in benchmarks_read:
                benchmarks_read[source] = _benchmark_problem(*source)
            if ok and benchmarks_read[source]:
                problems.append(f"{where}data: {benchmarks_read[source]}")
            problems += judge_problems(where, config)
        else:
            for key in INPUT_KEYS:
                check(where, key, getattr(config, key, None))
        produced.add(Path(config.out).expanduser().resolve())
    return problems


def judge_problems(where: str, config: Any) -> list[str]:
    """A bench entry's judge checked before the first stage: its key variable is set and its
    endpoint is an http(s) URL with a host (found now, not when the entry starts hours later)."""
    import os
    import urllib.parse

    problems = []
    key_env = getattr(config, "judge_key_env", None)
    if key_env and not os.environ.get(key_env):
        problems.append(f"{where}judge_key_env: environment variable {key_env} is not set")
    url = getattr(config, "judge_url", None)
    if url:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            problems.append(f"{where}judge_url: {url!r} is not an http(s) URL with a host")
    return problems


def _benchmark_problem(benchmark: str, data: str, images: str | None) -> str | None:
    """Why ``data`` cannot be read as ``benchmark`` (the reader's one line), or None."""
    from stic.data.benchmarks import BenchmarkDataError, read_benchmark

    try:
        read_benchmark(benchmark, data, images)
    except (BenchmarkDataError, OSError, ValueError) as e:
        return str(e)
    except Exception as e:  # a pre-check reports, it never ends in a traceback
        return f"{benchmark}: {data}: cannot be read ({type(e).__name__}: {str(e)[:120]})"
    return None


def load_run_config(path: str | Path, check_inputs: bool = True) -> list[PlannedStage]:
    """The planned stages of the run config at ``path``; every problem in one ConfigError.

    Problems: keys written twice, unknown keys and bad values at any depth, and (with
    ``check_inputs``) input paths that do not exist or cannot be read.
    """
    data, duplicates = _load_yaml(path)
    try:
        stages = plan(data)
    except ConfigError as e:
        raise ConfigError("\n".join([*duplicates, str(e)])) from None
    if duplicates:
        raise ConfigError("\n".join(duplicates))
    if check_inputs:
        problems = input_problems(stages)
        if problems:  # a path may hold a token: errors are printed, and logged by some
            raise ConfigError("\n".join(redact(problems)))
    return stages


RESOLVED_CONFIG = "resolved_config.yaml"


def resolved_config(stages: list[PlannedStage]) -> str:
    """Every stage's config as it runs (paths absolute, credentials redacted), as YAML."""
    resolved = {
        f"{s.stage}:{s.name}"
        if s.stage in ENTRY_STAGES or s.name != s.stage
        else s.stage: normalized(s.config)
        for s in stages
    }
    return yaml.safe_dump(redact(resolved), sort_keys=False)


def run_output(config_path: str | Path, output_dir: str | Path) -> Output:
    """``stic run``'s own output, ``<output_dir>/resolved_config.yaml``: its lock is held for the
    whole run (one ``stic run`` per output folder at a time); each stage has its own."""
    return Output(
        "run",
        {"config": str(Path(config_path).resolve())},
        out=Path(output_dir) / RESOLVED_CONFIG,
        file=True,
        inputs={"config": str(config_path)},
        adopt=lambda: [],  # written by a stic before manifests: it is only a record
        replace=True,
        command="stic run",
    )


def launch_options(data: dict, gpus: int | None = None) -> LaunchOptions:
    """The run config's launch keys (``gpus``, ``launcher``, ``accelerate_config``; ``gpus``
    from ``stic run --gpus`` when given), resolved: unset ``gpus`` is this machine's GPUs."""
    given = {k.replace("-", "_"): v for k, v in data.items()}
    values = {k: given[k] for k in LAUNCH_KEYS if k in given}
    if gpus is not None:
        values["gpus"] = gpus
    return launch.resolve_options(build(LaunchOptions, values))


def configured_gpus(path: str | Path) -> int | None:
    """The ``gpus:`` key of the run config at ``path`` (validated as ``stic run`` does), or None
    when it is not set: what ``stic plan`` plans for when ``--gpus`` is not given."""
    data, _ = _load_yaml(path)
    if not isinstance(data, dict):
        return None
    given = {str(k).replace("-", "_"): v for k, v in data.items()}
    if given.get("gpus") is None:
        return None
    return build(LaunchOptions, {"gpus": given["gpus"]}).gpus


def scaled(stages: list[PlannedStage], gpus: int) -> list[PlannedStage]:
    """The stages as they run on ``gpus`` GPUs (:func:`stic.stages.launch.scaled_config`: runtime
    fields only, every config hash unchanged); every global batch that cannot be split over
    them is named in one ConfigError."""
    errors, out = [], []
    for s in stages:
        try:
            out.append(
                dataclasses.replace(
                    s, config=launch.scaled_config(s.stage, s.config, gpus, f"{s.stage}.")
                )
            )
        except ConfigError as e:
            errors.append(str(e))
    if errors:
        raise ConfigError("\n".join(errors))
    return out


def run_pipeline(
    path: str | Path, overwrite: bool = False, gpus: int | None = None
) -> Iterator[tuple[PlannedStage, StageSummary]]:
    """Run every stage of the config at ``path`` in order, yielding each one's summary as it ends.

    ``overwrite`` (``stic run --overwrite``) sets every stage's ``overwrite``. ``gpus``
    (``stic run --gpus``) replaces the config's ``gpus``: with more than one, the generating
    stages run on a local Ray pool and the training stages as that many processes
    (:mod:`stic.stages.launch`).
    """
    stages = load_run_config(path)
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    options = launch_options(data, gpus)
    stages = scaled(stages, options.gpus)
    if overwrite:
        stages = [
            dataclasses.replace(s, config=dataclasses.replace(s.config, overwrite=True))
            for s in stages
        ]
    output_dir = Path(data["output_dir"])
    with run_output(path, output_dir) as output:
        output.write_text(resolved_config(stages))
        output.finish({"stages": len(stages), "gpus": options.gpus, "launcher": options.launcher})
        # Each generating stage starts its local Ray instance and stops it when it ends: one
        # kept for the whole run left a worker (and on a GPU, its copy of the model) alive
        # after the stage on this CPU, into the training stage that needs the GPU.
        for planned in stages:
            logger.info("stage %s (%s)", planned.stage, planned.name)
            if planned.stage == ROUNDS_STAGE:
                from stic.stages.rounds import run_rounds

                yield planned, run_rounds(planned.config)
            elif options.gpus > 1 and planned.stage in launch.TRAINING_STAGES:
                yield planned, launch.run_training(planned.stage, planned.config, options)
            else:
                yield planned, run_stage(planned.stage, planned.config)
