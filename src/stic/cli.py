"""The ``stic`` command: parse, validate, call ``run_<stage>(config)``, print the summary.

Options come from the stage config dataclasses in :mod:`stic.config` (their ``help`` texts are
what ``stic <verb> --help`` shows).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import sys

from stic import __version__
from stic.config import ConfigError, LaunchOptions, value_errors
from stic.stages.registry import STAGES, run_stage

# Commands that are small programs of their own: name -> (module whose main(argv) runs it, help).
TOOLS = {
    "run": (
        "stic.pipeline",
        "Run the stages in order from one YAML config (stic run CONFIG.yaml).",
    ),
    "merge": (
        "stic.tools.merge",
        "Join the outputs of sharded `stic pairs` or `stic infuse` runs (--shard I/N).",
    ),
    "convert": (
        "stic.tools.convert",
        "Convert pairs between stic, the reference code, TRL and LLaMA-Factory formats.",
    ),
    "doctor": (
        "stic.tools.doctor",
        "Check the environment, a model, an adapter and an image folder before a run.",
    ),
    "compare": (
        "stic.tools.compare",
        "The paper's Table 1 in form: bench results of several runs, deltas, 95% intervals.",
    ),
    "export": (
        "stic.tools.export",
        "Export an adapter for other tools: merged into a full checkpoint (--merge), or as is.",
    ),
    "demo": (
        "stic.demo.run",
        "STIC's measured effect on a tiny pretrained LLaVA in a synthetic world, on CPU.",
    ),
    "demo-model": (
        "stic.demo.base_model",
        "Rebuild the demo's tiny base LLaVA from nothing (the package ships a copy).",
    ),
    "plan": (
        "stic.tools.plan",
        "Peak GPU memory and time of each stage of a run config, before running it.",
    ),
    "report": (
        "stic.tools.report",
        "One offline HTML page of a run: pairs with images, length audit, curves, results.",
    ),
}

LAUNCH_HELP = {f.name: f.metadata["help"] for f in dataclasses.fields(LaunchOptions)}

# Commands that are a sub-verb of a stage: "<stage> <word>" -> (module whose main(argv) runs it,
# help). `stic bench score ...` is one; `stic bench ...` is the stage.
SUBTOOLS = {
    "bench score": (
        "stic.tools.bench_score",
        "Score a predictions JSONL by a benchmark's official rule (no model).",
    ),
}

# Every command with its one-line help, in the order `stic --help` lists them.
VERBS = {
    **{name: stage.help for name, stage in STAGES.items()},
    "run": "Run the stages in order from one YAML config (stic run CONFIG.yaml).",
    **{name: text for name, (_, text) in TOOLS.items()},
}


def _usage() -> str:
    lines = [
        f"stic {__version__}: Self-Training on Image Comprehension for Hugging Face vision-language models.",
        "",
    ]
    lines.append("usage: stic <command> [options]     (stic <command> --help for its options)")
    lines.append("")
    lines += [f"  {verb:<10} {text}" for verb, text in VERBS.items()]
    lines += [f"  {verb:<10} {text}" for verb, (_, text) in SUBTOOLS.items()]
    lines += [
        "",
        "The paper's workflow: " + " -> ".join(STAGES) + ", or all at once with `stic run`.",
    ]
    return "\n".join(lines)


def _parse_stage(verb: str, argv: list[str]):
    import argparse

    from transformers import HfArgumentParser

    class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
        def _get_help_string(self, action):
            # A required option has no default worth showing.
            return action.help if action.required else super()._get_help_string(action)

    stage = STAGES[verb]
    parser = HfArgumentParser(
        stage.config,
        prog=f"stic {verb}",
        description=f"{stage.config.__doc__.strip()}\n\nexample:\n  {stage.example}",
        epilog="Flags take dashes or underscores (--batch-size = --batch_size). "
        "Booleans: --flag or --flag true/false.",
        formatter_class=Formatter,
    )
    (config,) = parser.parse_args_into_dataclasses(args=argv)
    errors = value_errors(config)
    if errors:
        raise ConfigError("\n".join(errors))
    return config


def _run(argv: list[str]) -> int:
    import argparse

    from stic import pipeline

    parser = argparse.ArgumentParser(
        prog="stic run",
        usage="stic run CONFIG.yaml [--overwrite] [--gpus N]",
        description="Run the stages in order from one YAML config.\n\n" + (pipeline.__doc__ or ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", metavar="CONFIG.yaml", help="the run config")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="every stage whose output was made with another config deletes it (only the files "
        "its manifest lists) and starts over; without it such a stage stops the run",
    )
    parser.add_argument(
        "--gpus",
        type=int,
        default=None,
        metavar="N",
        help="replaces the config's gpus: " + LAUNCH_HELP["gpus"],
    )
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: 0 after --help, 2 on a usage error
        return int(e.code or 0)
    runs = pipeline.run_pipeline(args.config, overwrite=args.overwrite, gpus=args.gpus)
    for planned, summary in runs:
        print_summary(f"{planned.stage} ({planned.name}) -> {planned.config.out}", summary)
    _write_report(args.config)
    return 0


def _plan(argv: list[str]) -> int:
    """``stic plan``: the run config's stages, validated as ``stic run`` does, then planned."""
    from stic import pipeline
    from stic.tools import plan

    try:
        args = plan.parser().parse_args(argv)
    except SystemExit as e:  # argparse: 0 after --help, 2 on a usage error
        return int(e.code or 0)
    stages = pipeline.load_run_config(args.config, check_inputs=False)
    if args.gpus is None:  # the config's gpus: key, else one GPU
        args.gpus = pipeline.configured_gpus(args.config) or 1
    if args.gpus < 1:
        return plan.run(args, stages)  # refused there, with its message
    # Planned as `stic run --gpus N` runs them: each process's share of every global batch.
    return plan.run(args, pipeline.scaled(stages, args.gpus))


def _write_report(config_path: str) -> None:
    """OUTPUT_DIR/report.html after `stic run`: a view of the run, so it never fails the run."""
    try:
        import yaml

        from stic.tools.report import write_run_report

        with open(config_path, encoding="utf-8") as f:
            output_dir = yaml.safe_load(f)["output_dir"]
        print(f"report -> {write_run_report(output_dir)}")
    except Exception as e:  # a report that cannot be drawn is not a failed run
        logging.getLogger("stic.cli").warning("could not write the run's report.html: %s", e)


def print_summary(label: str, summary) -> None:
    """One line per stage: its figures as JSON; each left-out item on stderr."""
    data = summary.to_dict()
    for reason in data.get("bad_items", {}).values():
        print(f"  left out {reason}", file=sys.stderr)
    data["bad_items"] = len(data.get("bad_items", {}))
    print(f"{label}: {json.dumps(data, default=str)}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        print(f"stic {__version__}")
        return 0
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        print(f"stic: unknown command {verb!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    # Started by `stic run --gpus N` (a training process): end with it, even if it is killed.
    from stic.stages.launch import exit_with_parent

    exit_with_parent()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("stic").setLevel(logging.INFO)
    try:
        if verb == "run":
            return _run(rest)
        if verb == "plan":
            return _plan(rest)
        if verb in TOOLS:
            return importlib.import_module(TOOLS[verb][0]).main(rest)
        if rest and f"{verb} {rest[0]}" in SUBTOOLS:
            return importlib.import_module(SUBTOOLS[f"{verb} {rest[0]}"][0]).main(rest[1:])
        config = _parse_stage(verb, rest)
        print_summary(f"{verb} -> {config.out}", run_stage(verb, config))
        return 0
    except ConfigError as e:
        print(
            f"stic {verb}: invalid configuration:\n  " + str(e).replace("\n", "\n  "),
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(
            f"\nstic {verb}: stopped; rerun the same command to resume where it stopped",
            file=sys.stderr,
        )
        return 130
    except (OSError, ValueError, RuntimeError) as e:
        print(f"stic {verb}: error: {_one_line(e)}", file=sys.stderr)
        return 1


def _one_line(error: BaseException) -> str:
    """The error's message (a list of problems keeps its lines); a bare error, its type's name."""
    return str(error).strip() or type(error).__name__


if __name__ == "__main__":
    sys.exit(main())
