"""``stic convert``: preference pairs to and from the files other tools read.

The formats and their readers and writers live in :mod:`stic.data.formats`; this is the command.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from stic.data import formats
from stic.data.formats import (
    FORMATS,
    LLAMAFACTORY,
    READ_FORMATS,
    TRL,
    llamafactory_dataset_info,
    read_pairs_any,
    write_pairs_as,
)
from stic.runtime.images import ImageError
from stic.runtime.output import OUTPUT_ERRORS, Output

_EXAMPLES = """\
examples:
  # the reference code's pairs -> stic pairs, ready for `stic dpo --pairs`
  stic convert --from stic-reference --to stic stic_pairs.json pairs.jsonl
  # stic pairs -> a TRL data set with the images embedded (folder, or a .parquet file)
  stic convert --to trl pairs.jsonl trl_pairs --images coco/train2014
  stic convert --to trl pairs.jsonl trl_pairs.parquet --images coco/train2014
  # stic pairs -> LLaMA-Factory (absolute image paths); prints the dataset_info.json entry and,
  # with --model, the LLaMA-Factory template to name
  stic convert --to llamafactory pairs.jsonl LLaMA-Factory/data/stic_pairs.json --images coco/train2014 \
      --model llava-hf/llava-1.5-7b-hf
"""

# model_type -> the LLaMA-Factory template (its src/llamafactory/data/template.py) for it.
LLAMAFACTORY_TEMPLATES = {
    "llava": "llava",  # LLaVA-1.5 (and stic's demo model)
    "llava_next": "llava_next",  # vicuna-based; llava_next_mistral for llava-v1.6-mistral
    "qwen2_vl": "qwen2_vl",
    "qwen2_5_vl": "qwen2_vl",
    "qwen3_vl": "qwen3_vl",
    "mllama": "mllama",
    "glm4v": "glm4v",
    "internvl": "intern_vl",
    "lfm2_vl": "lfm2_vl",
    "mistral3": "mistral_small",
}

# What TRL's DPOTrainer (1.x, its vision collator) does with a model's chat template.
TRL_NOTE = (
    "TRL's DPOTrainer renders these conversations with the processor's chat template and "
    "tokenizes them without special tokens: it feeds a BOS token only where the template "
    "writes one. llava-hf's templates write none (stic, like transformers' processor, trains "
    "with the tokenizer's BOS), stic's demo model's does; `stic doctor --model M --preflight` "
    "says which (row 'BOS once', and how to make them agree)."
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stic convert",
        description="Convert preference pairs between stic and other tools' files.\n\n"
        + (formats.__doc__ or "").split("\n\n", 1)[1]
        + "\n"
        + _EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--from",
        dest="source",
        default="auto",
        choices=("auto", *READ_FORMATS),
        help="Format of IN (default: auto, detected from its first record).",
    )
    parser.add_argument(
        "--to", dest="target", required=True, choices=FORMATS, help="Format of OUT."
    )
    parser.add_argument("input", metavar="IN", help="The pair file to read.")
    parser.add_argument(
        "output",
        metavar="OUT",
        help="Where to write: a file; for trl a folder (no suffix) or a .parquet file.",
    )
    parser.add_argument(
        "--images",
        default=None,
        help="The images folder the pairs' image paths are relative to. Required for --to trl "
        "(the images are embedded); for --to llamafactory it makes image paths absolute; for "
        "--from llamafactory it turns absolute image paths back into relative ones.",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="Replace an existing OUT (a file, or for --to trl a folder holding a saved data set "
        "and nothing else). Without it an existing OUT is refused.",
    )
    parser.add_argument(
        "--model",
        default=None,
        help="For --to llamafactory: the model folder or Hub id the pairs will train, to name "
        "its LLaMA-Factory template.",
    )
    parser.add_argument(
        "--name",
        default=None,
        help="Name of the dataset_info.json entry printed for --to llamafactory (default: OUT's "
        "file name without its suffix).",
    )
    return parser


def check_paths(
    source: str, target: str, images: str | None, overwrite: bool, folder_output: bool
) -> None:
    """Refuse an OUT that would overwrite IN or the images, or an existing OUT without ``overwrite``.

    ``folder_output``: OUT is written as a folder (a trl data set). Raises ``ValueError`` (one
    line) naming the paths and the way forward.
    """
    out = Path(target).expanduser().resolve()
    for what, value in (("IN", source), ("--images", images)):
        if value is None:
            continue
        path = Path(value).expanduser().resolve()
        if out == path:
            raise ValueError(f"OUT {target} is {what} ({value}): choose another OUT")
        if path in out.parents:
            raise ValueError(f"OUT {target} lies inside {what} ({value}): choose another OUT")
        if out in path.parents:
            raise ValueError(f"OUT {target} contains {what} ({value}): choose another OUT")
    target_path = Path(target)
    if target_path.is_symlink() or (target_path.exists() and not target_path.is_dir()):
        if not overwrite:
            raise ValueError(
                f"OUT {target} already exists; pass --overwrite to replace it, or choose another OUT"
            )
    elif target_path.is_dir():
        if not folder_output:
            raise ValueError(f"OUT {target} is a folder; give a file path")
        if any(target_path.iterdir()) and not overwrite:
            raise ValueError(
                f"OUT {target} is a folder that is not empty; pass --overwrite to replace it "
                "(only a saved data set is replaced), or choose another OUT"
            )


def convert_output(args: argparse.Namespace, folder_output: bool) -> Output:
    """OUT's output object: guarded against IN and the images, locked; an existing OUT is
    replaced as :func:`check_paths` allows (``--overwrite``)."""
    return Output(
        "convert",
        {"input": args.input, "target": args.target, "images": args.images},
        out=args.output,
        inputs={"IN": args.input, "--images": args.images},
        file=not folder_output,
        adopt=lambda: [],  # an OUT stic did not write: check_paths decides
        replace=True,
        command="stic convert",
    )


def main(argv: list[str]) -> int:
    """``stic convert``: 0 on success, 1 on a bad input, 2 on a usage error."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits 2 on usage errors and 0 on --help
        return int(e.code or 0)
    if args.target == TRL and args.images is None:
        print(
            "stic convert: error: --to trl needs --images (the images are embedded)",
            file=sys.stderr,
        )
        return 2
    try:
        folder_output = args.target == TRL and Path(args.output).suffix == ""
        check = (args.input, args.output, args.images, args.overwrite, folder_output)
        check_paths(*check)  # first: no lock file is ever made inside an input
        with convert_output(args, folder_output) as output:
            check_paths(*check)  # again, now that no other stic run can write OUT
            pairs = read_pairs_any(args.input, args.source, args.images)
            # The format's writer stages and renames its own file or saved data set (a
            # save_to_disk folder is written by datasets), at the path the object guards.
            write_pairs_as(pairs, args.output, args.target, args.images, overwrite=args.overwrite)
            if not folder_output:  # a saved data set folder holds only what datasets writes
                output.finish({"pairs": len(pairs)})
    except (OSError, ValueError, ImageError, *OUTPUT_ERRORS) as e:
        print(f"stic convert: error: {e}", file=sys.stderr)
        return 1
    print(f"stic convert: {len(pairs)} pairs {args.input} -> {args.output} ({args.target})")
    if args.target == LLAMAFACTORY:
        out = Path(args.output)
        entry = llamafactory_dataset_info(args.name or out.stem, out.name)
        paths = "absolute image paths" if args.images else "image paths relative to media_dir"
        print(llamafactory_template_note(args.model))
        print(
            f"Put {out.name} in LLaMA-Factory's dataset_dir ({paths}) and add to its "
            "dataset_info.json:"
        )
        print(json.dumps(entry, indent=2)[1:-1].strip("\n"))
    if args.target == TRL:
        print(TRL_NOTE)
    return 0


def llamafactory_template_note(model: str | None) -> str:
    """Which ``template:`` to put in LLaMA-Factory's training YAML for ``model``."""
    from stic.tools.export import model_type_of

    known = ", ".join(f"{t} ({m})" for m, t in LLAMAFACTORY_TEMPLATES.items())
    where = (
        "LLaMA-Factory formats the turns with its own template, not the model's chat template "
        "(its llava template adds LLaVA's system prompt and writes no BOS)"
    )
    kind = model_type_of(model) if model else None
    if model is None:
        return f"Set `template:` in the training YAML to the model's: {known}; {where}."
    if kind in LLAMAFACTORY_TEMPLATES:
        return f"Set `template: {LLAMAFACTORY_TEMPLATES[kind]}` in the training YAML ({model} is a {kind!r} model); {where}."
    what = f"a {kind!r} model" if kind else "a model whose config cannot be read here"
    return f"stic knows no LLaMA-Factory template for {model} ({what}); the known ones: {known}."
