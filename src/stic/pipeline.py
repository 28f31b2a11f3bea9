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

A stage runs when its section is present. The pipeline wires outputs to inputs (pairs -> dpo ->
infuse -> sft -> eval) under ``output_dir``; those keys cannot be set by hand. Each eval entry
may say ``at: base | stage1 | final`` (default: the last adapter trained). A stage whose output is
complete for the same config is skipped, so a rerun after a crash picks up where it stopped.
Relative paths are taken from the current directory.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from stic.config import STAGE_CONFIGS, ConfigError, build, to_dict
from stic.runtime.files import atomic_write_text
from stic.runtime.manifests import redact

logger = logging.getLogger(__name__)

STAGE_ORDER = ("pairs", "dpo", "infuse", "sft", "eval")
SHARED_KEYS = ("model", "dtype", "seed", "trust_remote_code", "allow_pickle", "overwrite")
EVAL_AT = ("base", "stage1", "final")


@dataclass(frozen=True)
class PlannedStage:
    stage: str
    name: str
    config: Any


def _normalize_keys(section: Any, where: str, errors: list[str]) -> dict:
    if section is None:
        return {}
    if not isinstance(section, dict):
        errors.append(f"{where.rstrip('.')}: must be a mapping of keys to values")
        return {}
    return {str(k).replace("-", "_"): v for k, v in section.items()}


def plan(data: Any) -> list[PlannedStage]:
    """Validate a run config (the parsed YAML) into stage configs, all problems in one error."""
    errors: list[str] = []
    top = _normalize_keys(data, "", errors)
    if errors:
        raise ConfigError("the run config must be a YAML mapping")
    allowed = set(SHARED_KEYS) | {"output_dir"} | set(STAGE_ORDER)
    errors += [
        f"{k}: unknown key (allowed: {', '.join(sorted(allowed))})" for k in top if k not in allowed
    ]
    if "model" not in top:
        errors.append("model: required")
    if "output_dir" not in top:
        errors.append("output_dir: required")
    elif not isinstance(top["output_dir"], str):
        errors.append(f"output_dir: {top['output_dir']!r} is not str")
    if errors:
        raise ConfigError("\n".join(errors))
    shared = {k: top[k] for k in SHARED_KEYS if k in top}
    root = Path(top["output_dir"])
    present = [s for s in STAGE_ORDER if s in top]
    if not present:
        raise ConfigError(f"no stage sections: add one or more of {', '.join(STAGE_ORDER)}")

    sections = {s: top[s] for s in present if s != "eval"}
    for stage in sections:
        sections[stage] = _normalize_keys(sections[stage], f"{stage}.", errors)

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
    adapters.setdefault("final", adapters.get("stage1"))

    planned = []
    for stage, section in sections.items():
        for key in wired.get(stage, {}):
            if key in section:
                errors.append(f"{stage}.{key}: set by the pipeline (remove it)")
        merged = {**shared, **section, **wired.get(stage, {})}
        try:
            planned.append(
                PlannedStage(stage, stage, build(STAGE_CONFIGS[stage], merged, f"{stage}."))
            )
        except ConfigError as e:
            errors += str(e).splitlines()

    if "eval" in top:
        entries = top["eval"] if isinstance(top["eval"], list) else [top["eval"]]
        names = set()
        for i, entry in enumerate(entries):
            where = f"eval[{i}]."
            entry = _normalize_keys(entry, where, errors)
            name = entry.pop("name", f"eval{i}")
            at = entry.pop("at", "final")
            if at not in EVAL_AT:
                errors.append(f"{where}at: {at!r} is not one of {', '.join(EVAL_AT)}")
                continue
            if at != "base" and at not in adapters:
                errors.append(f"{where}at: {at!r} needs the stage that trains it in this config")
                continue
            if name in names:
                errors.append(f"{where}name: {name!r} is used twice")
            names.add(name)
            for key in ("out", "adapter"):
                if key in entry:
                    errors.append(
                        f"{where}{key}: set by the pipeline (use 'at' to pick the adapter)"
                    )
            merged = {
                **shared,
                **entry,
                "out": str(root / "eval" / f"{name}.json"),
                "adapter": adapters[at],
            }
            try:
                planned.append(
                    PlannedStage("eval", name, build(STAGE_CONFIGS["eval"], merged, where))
                )
            except ConfigError as e:
                errors += str(e).splitlines()
    if errors:
        raise ConfigError("\n".join(errors))
    return planned


def load_run_config(path: str | Path) -> list[PlannedStage]:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    return plan(data)


def run_stage(planned: PlannedStage) -> Any:
    from stic.stages.dpo import run_dpo
    from stic.stages.evaluate import run_eval
    from stic.stages.infuse import run_infuse
    from stic.stages.pairs import run_pairs
    from stic.stages.sft import run_sft

    runners = {
        "pairs": run_pairs,
        "dpo": run_dpo,
        "infuse": run_infuse,
        "sft": run_sft,
        "eval": run_eval,
    }
    return runners[planned.stage](planned.config)


def write_resolved(stages: list[PlannedStage], output_dir: str | Path) -> Path:
    path = Path(output_dir) / "resolved_config.yaml"
    resolved = {
        f"{s.stage}:{s.name}" if s.stage == "eval" else s.stage: to_dict(s.config) for s in stages
    }
    atomic_write_text(path, yaml.safe_dump(redact(resolved), sort_keys=False))
    return path


def run_pipeline(path: str | Path) -> Iterator[tuple[PlannedStage, Any]]:
    """Run every stage of the config at ``path`` in order, yielding each one's summary as it ends."""
    stages = load_run_config(path)
    output_dir = Path(yaml.safe_load(Path(path).read_text(encoding="utf-8"))["output_dir"])
    write_resolved(stages, output_dir)
    for planned in stages:
        logger.info("stage %s (%s)", planned.stage, planned.name)
        yield planned, run_stage(planned)
