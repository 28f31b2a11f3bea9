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
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_PICKLE = "adapter_model.bin"  # what PEFT reads when there is no safetensors file
PICKLE_ADVICE = "loading a pickle can run code: pass --allow-pickle if you trust the file"


@dataclass(kw_only=True)
class ExportConfig:
    """What an export is made from (the manifest records it; ``overwrite`` is how it runs)."""

    adapter: str
    out: str
    model: str | None = None
    merge: bool = False
    dtype: str = "auto"
    trust_remote_code: bool = False
    allow_pickle: bool = False
    overwrite: bool = False

    # allow_pickle says which files may be read, not what is made (the export is safetensors).
    RUNTIME_FIELDS: ClassVar[tuple[str, ...]] = ("overwrite", "allow_pickle")


def adapter_config(adapter: str) -> dict:
    config_file = Path(adapter) / ADAPTER_CONFIG
    if not config_file.is_file():
        raise ValueError(f"{adapter} is not a PEFT adapter folder (no {ADAPTER_CONFIG})")
    config = read_json(config_file)
    if not isinstance(config, dict):
        raise ValueError(f"{config_file}: expected a JSON object")
    return config


def base_model_of(adapter: str) -> str:
    """The base model an adapter names in its ``adapter_config.json``."""
    base = adapter_config(adapter).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{Path(adapter) / ADAPTER_CONFIG} names no base model: give --model")
    return base


def adapter_weights_file(adapter: str, allow_pickle: bool) -> Path:
    """The adapter's weights file as PEFT picks it (safetensors first); a pickle only with
    ``allow_pickle``."""
    folder = Path(adapter)
    if (folder / ADAPTER_WEIGHTS).is_file():
        return folder / ADAPTER_WEIGHTS
    if (folder / ADAPTER_PICKLE).is_file():
        if not allow_pickle:
            raise ValueError(f"{folder / ADAPTER_PICKLE} holds pickled weights; {PICKLE_ADVICE}")
        return folder / ADAPTER_PICKLE
    raise ValueError(f"{folder} has no adapter weights ({ADAPTER_WEIGHTS})")


def read_adapter_weights(adapter: str, allow_pickle: bool) -> dict:
    """The adapter's tensors by the names PEFT saved them under."""
    import torch
    from safetensors.torch import load_file

    path = adapter_weights_file(adapter, allow_pickle)
    if path.suffix == ".safetensors":
        return load_file(path)
    # --allow-pickle: the user trusts the file; tensors only all the same, as PEFT loads it.
    return torch.load(path, map_location="cpu", weights_only=True)


def check_base_weights(base: str, allow_pickle: bool) -> None:
    """A local base folder with pickled weights only is refused (naming the file) unless
    ``allow_pickle``; a Hub id is left to transformers, which loads safetensors only here."""
    folder = Path(base).expanduser()
    if allow_pickle or not folder.is_dir() or any(folder.glob("*.safetensors")):
        return
    pickles = sorted(folder.glob("pytorch_model*.bin"))
    if pickles:
        raise ValueError(f"{pickles[0]} holds pickled weights; {PICKLE_ADVICE}")


def model_type_of(model: str, trust_remote_code: bool = False) -> str | None:
    """The ``model_type`` of a model folder or cached Hub id, or ``None`` when it cannot be read
    here (a Hub id not in the cache: this machine may be offline)."""
    from transformers import AutoConfig

    local = Path(model).expanduser() / "config.json"
    if local.is_file():
        return read_json(local).get("model_type")
    try:
        config = AutoConfig.from_pretrained(
            model, trust_remote_code=trust_remote_code, local_files_only=True
        )
    except (OSError, ValueError, KeyError):
        return None
    return getattr(config, "model_type", None)


def check_adapter_base(config: ExportConfig, base: str) -> str | None:
    """Refuse an adapter whose recorded base is of another model type than ``base``, naming
    both; returns the recorded base (``None`` if the adapter names none)."""
    trained_on = adapter_config(config.adapter).get("base_model_name_or_path")
    if not trained_on or trained_on == base:
        return trained_on
    theirs = model_type_of(trained_on, config.trust_remote_code)
    ours = model_type_of(base, config.trust_remote_code)
    if theirs and ours and theirs != ours:
        raise ValueError(
            f"adapter {config.adapter} was trained on {trained_on} (a {theirs!r} model), not on "
            f"--model {base} (a {ours!r} model): export it with the base it was trained on"
        )
    return trained_on


def check_every_module_loaded(peft_model, weights: dict, adapter: str, base: str) -> int:
    """Every LoRA module of the adapter's weights holds exactly the saved tensors, and every
    module PEFT wrapped got weights from the file; returns how many modules will be merged.

    PEFT loads an adapter leniently: weights naming a module the model lacks are left out, and a
    targeted module without saved weights keeps its initial (zero) update, with at most a
    warning. A merge of such an adapter would be a different model than the one trained.
    """
    import torch
    from peft.tuners.lora import LoraLayer
    from peft.utils import get_peft_model_state_dict

    loaded = get_peft_model_state_dict(peft_model)
    dropped = sorted(name for name in weights if name not in loaded)
    unfilled = sorted(name for name in loaded if name not in weights)
    differ = sorted(
        name
        for name in weights
        if name in loaded and not torch.equal(loaded[name].cpu(), weights[name].to(loaded[name]))
    )
    trained_on = adapter_config(adapter).get("base_model_name_or_path") or "an unnamed base"
    problems = [
        (dropped, f"of the adapter's {len(weights)} weights name no module of it"),
        (unfilled, f"of the {len(loaded)} LoRA weights PEFT made got no saved value"),
        (differ, f"of the adapter's {len(weights)} weights loaded other values"),
    ]
    for names, what in problems:
        if names:
            raise ValueError(
                f"adapter {adapter} (trained on {trained_on}) does not fit --model {base}: "
                f"{len(names)} {what} (e.g. {names[0]}); merging would not give the trained "
                "model: use the base it was trained on"
            )
    modules = sum(isinstance(module, LoraLayer) for module in peft_model.modules())
    if modules == 0:
        raise ValueError(f"adapter {adapter} wraps no module of {base}: nothing to merge")
    return modules


def save_in_hub_layout(model, folder: Path) -> None:
    """``model.save_pretrained(folder)`` with weight names in the hub layout of its class.

    transformers reverses, on save, the renamings recorded on the model when it was loaded
    (``_weight_conversions``); setting them to the class's whole conversion mapping makes the
    save reverse every renaming, whichever were used to load this particular checkpoint.
    """
    from transformers.conversion_mapping import get_model_conversion_mapping

    model._weight_conversions = get_model_conversion_mapping(model, add_legacy=False)
    model.save_pretrained(folder, safe_serialization=True)


def export_merged(config: ExportConfig, base: str, folder: Path) -> dict:
    """Merge the adapter into ``base`` and save the checkpoint into ``folder``; returns the
    summary's details (``merged_modules``)."""
    import torch
    from transformers import AutoModelForImageTextToText

    from stic.modeling.models import check_model_path, load_adapter, load_processor

    check_model_path(base)
    check_base_weights(base, config.allow_pickle)
    weights = read_adapter_weights(config.adapter, config.allow_pickle)
    dtype = "auto" if config.dtype == "auto" else getattr(torch, config.dtype)
    model = AutoModelForImageTextToText.from_pretrained(
        base,
        dtype=dtype,
        trust_remote_code=config.trust_remote_code,
        use_safetensors=None if config.allow_pickle else True,
    )
    # load_adapter refuses shapes that do not fit in one line naming the first weight.
    peft_model = load_adapter(model, config.adapter, allow_pickle=config.allow_pickle)
    modules = check_every_module_loaded(peft_model, weights, config.adapter, base)
    merged = peft_model.merge_and_unload()
    save_in_hub_layout(merged, folder)
    processor = load_processor(base, config.trust_remote_code)
    processor.save_pretrained(folder)  # tokenizer, image processor, chat template
    return {"merged_modules": modules}


def export_adapter(config: ExportConfig, base: str, folder: Path) -> dict:
    """Copy the adapter (config + safetensors weights) and save ``base``'s processor beside it;
    an adapter in a pickle (with ``--allow-pickle``) is written as safetensors."""
    from safetensors.torch import save_file

    from stic.modeling.models import load_processor

    source = Path(config.adapter)
    weights = adapter_weights_file(config.adapter, config.allow_pickle)
    # Content only: the copies are created with the user's umask, whatever the source's mode.
    shutil.copyfile(source / ADAPTER_CONFIG, folder / ADAPTER_CONFIG)
    if weights.name == ADAPTER_WEIGHTS:
        shutil.copyfile(weights, folder / ADAPTER_WEIGHTS)
    else:
        tensors = read_adapter_weights(config.adapter, config.allow_pickle)
        save_file({k: v.contiguous() for k, v in tensors.items()}, folder / ADAPTER_WEIGHTS)
    load_processor(base, config.trust_remote_code).save_pretrained(folder)
    return {}


def run_export(config: ExportConfig) -> StageSummary:
    """Write the export at ``config.out``; see the module docstring."""
    base = config.model or base_model_of(config.adapter)
    config = dataclasses.replace(config, model=base)  # checked as an input, recorded
    out = Path(config.out)
    summary = StageSummary(STAGE, str(out))
    with Output(STAGE, config) as output:
        if output.status == "complete" and out.is_dir():
            summary.up_to_date = True
            summary.details = dict((output.recorded or {}).get("summary", {}).get("details", {}))
            return summary
        trained_on = check_adapter_base(config, base)  # before anything is built
        staging = output.staging()  # built aside, moved in whole by finish
        made = (export_merged if config.merge else export_adapter)(config, base, staging)
        files = sorted(p.name for p in staging.iterdir())
        summary.made = 1
        summary.details = {
            "merged": config.merge,
            "base_model": base,
            "adapter_base_model": trained_on,
            **made,
            "files": files,
        }
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
        "--allow-pickle",
        action="store_true",
        help="read pickled weights (adapter_model.bin, pytorch_model.bin), which can run code "
        "when loaded; only for files you trust (the export is written as safetensors)",
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
        allow_pickle=args.allow_pickle,
        overwrite=args.overwrite,
    )
    try:
        summary = run_export(config)
    except (OSError, ValueError, RuntimeError) as e:
        print(f"stic export: error: {str(e).strip() or type(e).__name__}", file=sys.stderr)
        return 1
    what = "merged checkpoint" if config.merge else "adapter + processor"
    state = "up to date" if summary.up_to_date else "written"
    modules = summary.details.get("merged_modules")
    merged = f" ({modules} LoRA modules merged)" if modules else ""
    print(f"stic export: {what} {state} at {config.out}{merged}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
