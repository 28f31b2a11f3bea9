"""``stic export``: an adapter in the form other tools load (transformers, vLLM, lmms-eval).

- ``--merge``: the LoRA weights are merged into the base model and the result is saved as a full
  checkpoint (safetensors, config, generation config, processor with its chat template), which
  ``AutoModelForImageTextToText.from_pretrained`` loads as it loads the original hub model.
- without ``--merge``: the adapter's files (config and safetensors weights) plus the base model's
  processor, loadable with ``PeftModel.from_pretrained(base, OUT)``.

Weight names follow the hub layout. transformers 5 renames checkpoint keys on load (its
``conversion_mapping``: e.g. LLaVA's hub ``language_model.model.*`` becomes
``model.language_model.*``, and a CLIP tower's ``vision_model.`` prefix is dropped) and, on save,
reverses only the renamings that were used on load; a model whose checkpoint was saved by
transformers 5 itself (any tiny test model) would then be written with vision-tower keys
``vision_tower.embeddings.*``, which vLLM and older transformers reject. The export reverses the
model class's whole mapping, so every family is written in the layout its hub checkpoints use
(LLaVA: ``vision_tower.vision_model.*``, ``language_model.model.*``, ``language_model.lm_head``,
``multi_modal_projector.*``).

The output is guarded like a stage's: refused when it is, holds or lies inside an input, when it
is an existing folder stic did not write, or when another run holds it; an export made with other
settings is replaced only with ``--overwrite`` (deleting just the files its manifest lists). The
folder appears whole: it is written beside ``OUT`` and renamed into place, or, into an old export
folder that keeps files its manifest did not list, moved in file by file beside them. Its files
and folder get the user's umask (0644/0755 under umask 022), so a server run as another user
can read them.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from stic.runtime.files import read_json
from stic.runtime.output import Output
from stic.stages.runner import StageSummary

STAGE = "export"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


@dataclass(kw_only=True)
class ExportConfig:
    """What an export is made from (the manifest records it; ``overwrite`` is how it runs)."""

    adapter: str
    out: str
    model: str | None = None
    merge: bool = False
    dtype: str = "auto"
    trust_remote_code: bool = False
    overwrite: bool = False

    RUNTIME_FIELDS: ClassVar[tuple[str, ...]] = ("overwrite",)


def base_model_of(adapter: str) -> str:
    """The base model an adapter names in its ``adapter_config.json``."""
    config_file = Path(adapter) / "adapter_config.json"
    if not config_file.is_file():
        raise ValueError(f"{adapter} is not a PEFT adapter folder (no adapter_config.json)")
    base = read_json(config_file).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{config_file} names no base model: give --model")
    return base


def save_in_hub_layout(model, folder: Path) -> None:
    """``model.save_pretrained(folder)`` with weight names in the hub layout of its class.

    transformers reverses, on save, the renamings recorded on the model when it was loaded
    (``_weight_conversions``); setting them to the class's whole conversion mapping makes the
    save reverse every renaming, whichever were used to load this particular checkpoint.
    """
    from transformers.conversion_mapping import get_model_conversion_mapping

    model._weight_conversions = get_model_conversion_mapping(model, add_legacy=False)
    model.save_pretrained(folder, safe_serialization=True)


def export_merged(config: ExportConfig, base: str, folder: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    from stic.modeling.models import check_model_path, load_processor

    check_model_path(base)
    dtype = "auto" if config.dtype == "auto" else getattr(torch, config.dtype)
    model = AutoModelForImageTextToText.from_pretrained(
        base, dtype=dtype, trust_remote_code=config.trust_remote_code, use_safetensors=True
    )
    merged = PeftModel.from_pretrained(model, config.adapter).merge_and_unload()
    save_in_hub_layout(merged, folder)
    processor = load_processor(base, config.trust_remote_code)
    processor.save_pretrained(folder)  # tokenizer, image processor, chat template


def export_adapter(config: ExportConfig, base: str, folder: Path) -> None:
    from stic.modeling.models import load_processor

    source = Path(config.adapter)
    missing = [name for name in ADAPTER_FILES if not (source / name).is_file()]
    if missing:
        raise ValueError(
            f"{source} lacks {', '.join(missing)} (a PEFT adapter saved as safetensors)"
        )
    for name in ADAPTER_FILES:
        # Content only: the copy is created with the user's umask, whatever the source's mode.
        shutil.copyfile(source / name, folder / name)
    load_processor(base, config.trust_remote_code).save_pretrained(folder)


def run_export(config: ExportConfig) -> StageSummary:
    """Write the export at ``config.out``; see the module docstring."""
    base = config.model or base_model_of(config.adapter)
    config = dataclasses.replace(config, model=base)  # checked as an input, recorded
    out = Path(config.out)
    summary = StageSummary(STAGE, str(out))
    with Output(STAGE, config) as output:
        if output.status == "complete" and out.is_dir():
            summary.up_to_date = True
            return summary
        staging = output.staging()  # built aside, moved in whole by finish
        (export_merged if config.merge else export_adapter)(config, base, staging)
        files = sorted(p.name for p in staging.iterdir())
        summary.made = 1
        summary.details = {"merged": config.merge, "base_model": base, "files": files}
        output.finish(summary.to_dict(), files=files)
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stic export",
        description="Export an adapter: merged into a full checkpoint (--merge) that transformers, "
        "vLLM and lmms-eval load like the hub model, or the adapter folder plus the processor.",
        epilog="example: stic export --adapter runs/stic/sft --merge --out exported/stic-llava",
    )
    parser.add_argument("--adapter", required=True, help="PEFT adapter folder (stic dpo / sft)")
    parser.add_argument(
        "--model", help="base model folder or Hub id (default: the one the adapter names)"
    )
    parser.add_argument(
        "--merge", action="store_true", help="merge the adapter into a full checkpoint"
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "bfloat16", "float16", "float32"),
        help="weights dtype of a merged export (auto: the base checkpoint's own)",
    )
    parser.add_argument(
        "--trust-remote-code", action="store_true", help="allow the model folder's own code"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an export made with other settings (only the files its manifest lists)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``stic export``: 0 on success, 1 on a bad input, 2 on a usage error."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse: 0 after --help, 2 on a usage error
        return int(e.code or 0)
    config = ExportConfig(
        adapter=args.adapter,
        out=args.out,
        model=args.model,
        merge=args.merge,
        dtype=args.dtype,
        trust_remote_code=args.trust_remote_code,
        overwrite=args.overwrite,
    )
    try:
        summary = run_export(config)
    except (OSError, ValueError, RuntimeError) as e:
        print(f"stic export: error: {str(e).strip() or type(e).__name__}", file=sys.stderr)
        return 1
    what = "merged checkpoint" if config.merge else "adapter + processor"
    state = "up to date" if summary.up_to_date else "written"
    print(f"stic export: {what} {state} at {config.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
