"""The ``stic`` command: parse, validate, call ``run_<stage>(config)``, print the summary.

Options come from the stage config dataclasses in :mod:`stic.config` (their ``help`` texts are
what ``stic <verb> --help`` shows).
"""

from __future__ import annotations

import importlib
import json
import logging
import sys
from collections.abc import Callable

from stic import __version__
from stic.config import STAGE_CONFIGS, ConfigError, value_errors

VERBS = {
    "pairs": "Stage 1a: build preference pairs from a folder of unlabeled images.",
    "dpo": "Stage 1b: train a LoRA adapter on the pairs with DPO + NLL.",
    "infuse": "Stage 2a: describe instruction-data images and infuse the descriptions into the prompts.",
    "sft": "Stage 2b: train on the infused data (the stage-1 adapter further, or a new LoRA adapter).",
    "eval": "Answer a VQA file (optionally describe-and-respond) and score it.",
    "run": "Run the stages in order from one YAML config (stic run CONFIG.yaml).",
    "merge": "Join the outputs of sharded `stic pairs` or `stic infuse` runs (--shard I/N).",
    "convert": "Convert pairs between stic, the reference code, TRL and LLaMA-Factory formats.",
    "doctor": "Check the environment, a model, an adapter and an image folder before a run.",
    "demo": "STIC's measured effect on a tiny pretrained LLaVA in a synthetic world, on CPU.",
    "demo-model": "Rebuild the demo's tiny base LLaVA from nothing (the package ships a copy).",
}

# Commands that are small programs of their own: module whose main(argv) runs them.
TOOLS = {
    "demo": "stic.demo.run",
    "demo-model": "stic.demo.base_model",
    "merge": "stic.tools.merge",
    "convert": "stic.tools.convert",
    "doctor": "stic.tools.doctor",
}

EXAMPLES = {
    "pairs": "stic pairs --model llava-hf/llava-1.5-7b-hf --images coco/train2014 --out pairs.jsonl --limit 6000",
    "dpo": "stic dpo --model llava-hf/llava-1.5-7b-hf --pairs pairs.jsonl --images coco/train2014 --out stage1",
    "infuse": "stic infuse --model M --adapter stage1 --data llava_5k.json --images llava_images --out infused.json",
    "sft": "stic sft --model M --adapter stage1 --data infused.json --images llava_images --out stage2",
    "eval": "stic eval --model M --adapter stage2 --data vqa.jsonl --images vqa_images --dar --out results.json",
}


def _usage() -> str:
    lines = [
        f"stic {__version__}: Self-Training on Image Comprehension for Hugging Face vision-language models.",
        "",
    ]
    lines.append("usage: stic <command> [options]     (stic <command> --help for its options)")
    lines.append("")
    lines += [f"  {verb:<10} {text}" for verb, text in VERBS.items()]
    lines += [
        "",
        "The paper's workflow: pairs -> dpo -> infuse -> sft -> eval, or all at once with `stic run`.",
    ]
    return "\n".join(lines)


def _parse_stage(verb: str, argv: list[str]):
    import argparse

    from transformers import HfArgumentParser

    class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
        def _get_help_string(self, action):
            # A required option has no default worth showing.
            return action.help if action.required else super()._get_help_string(action)

    cls = STAGE_CONFIGS[verb]
    parser = HfArgumentParser(
        cls,
        prog=f"stic {verb}",
        description=f"{cls.__doc__.strip()}\n\nexample:\n  {EXAMPLES[verb]}",
        epilog="Flags take dashes or underscores (--batch-size = --batch_size). "
        "Booleans: --flag or --flag true/false.",
        formatter_class=Formatter,
    )
    (config,) = parser.parse_args_into_dataclasses(args=argv)
    errors = value_errors(config)
    if errors:
        raise ConfigError("\n".join(errors))
    return config


def _print_summary(label: str, summary) -> None:
    data = summary.to_dict() if hasattr(summary, "to_dict") else summary
    skipped = data.get("skipped") if isinstance(data, dict) else None
    if isinstance(skipped, dict):
        for reason in skipped.values():
            print(f"  skipped {reason}", file=sys.stderr)
        data = {**data, "skipped": len(skipped)}
    print(f"{label}: {json.dumps(data, default=str)}")


def _stage_runner(verb: str) -> Callable:
    if verb == "pairs":
        from stic.stages.pairs import run_pairs as runner
    elif verb == "dpo":
        from stic.stages.dpo import run_dpo as runner
    elif verb == "infuse":
        from stic.stages.infuse import run_infuse as runner
    elif verb == "sft":
        from stic.stages.sft import run_sft as runner
    else:
        from stic.stages.evaluate import run_eval as runner
    return runner


def _run(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print("usage: stic run CONFIG.yaml\n\nRun the stages in order from one YAML config.\n")
        from stic import pipeline

        print(pipeline.__doc__)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    from stic.pipeline import run_pipeline

    for planned, summary in run_pipeline(argv[0]):
        _print_summary(f"{planned.stage} ({planned.name}) -> {planned.config.out}", summary)
    return 0


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
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("stic").setLevel(logging.INFO)
    try:
        if verb == "run":
            return _run(rest)
        if verb in TOOLS:
            return importlib.import_module(TOOLS[verb]).main(rest)
        config = _parse_stage(verb, rest)
        summary = _stage_runner(verb)(config)
        _print_summary(f"{verb} -> {config.out}", summary)
        return 0
    except ConfigError as e:
        print(
            f"stic {verb}: invalid configuration:\n  " + str(e).replace("\n", "\n  "),
            file=sys.stderr,
        )
        return 2
    except (OSError, ValueError, RuntimeError) as e:
        print(f"stic {verb}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
