"""``stic doctor``: check the environment, a model, an adapter and an image folder before a run.

Each check is a function that returns :class:`Check` lines (status ``ok``, ``warning`` or
``problem`` and one line of plain words); nothing here prints except :func:`main`. Weights are
not loaded unless asked (``--load-weights``): the config, the processor and its chat template
say whether a model folder or Hub id will load, in seconds rather than minutes. No credential is
ever printed: the token check says only where a token comes from, and every line is passed
through :func:`stic.runtime.manifests.redact`.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

OK, WARNING, PROBLEM = "ok", "warning", "problem"

GIB = 1024**3
# A 7B model's bfloat16 weights are about 13 GiB (7e9 x 2 bytes): below this much free GPU
# memory it cannot even be loaded for generation; DPO/SFT with LoRA need a few GiB more.
GPU_MEMORY_FOR_7B_GIB = 16
# Loading a 7B checkpoint passes through CPU memory (bfloat16: ~13 GiB; float32 on CPU: ~26 GiB).
RAM_FOR_7B_GIB = 16
# A 7B checkpoint in the Hub cache is ~14 GB; adapters and checkpoints add a few GB.
DISK_WARNING_GIB = 20
DISK_PROBLEM_GIB = 2  # below this, stage outputs and Trainer checkpoints may not fit
DEFAULT_MAX_IMAGES = 50  # how many images are decoded by the image check
SHOWN_PROBLEMS = 3  # how many reasons one line lists

# Distribution name and the smallest version stic supports (as in pyproject.toml).
PACKAGES = (
    ("torch", "2.4"),
    ("transformers", "5.0"),
    ("peft", "0.17"),
    ("accelerate", "1.0"),
    ("datasets", "3.0"),
    ("torchvision", "0.19"),
    ("safetensors", "0.4"),
    ("tokenizers", "0.21"),
    ("pillow", "10"),
    ("pyyaml", "6"),
)
OWN_LINE = ("torch", "transformers", "peft", "accelerate", "datasets")  # the rest share a line
TOKEN_VARIABLES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


class Check(NamedTuple):
    """One line of the report: ``status`` is ok, warning or problem; ``message`` is one line."""

    status: str
    name: str
    message: str

    def line(self) -> str:
        return f"{self.status:<8} {self.name}: {self.message}"


def _one_line(error: BaseException, limit: int = 300) -> str:
    """The first line of an exception's text (Hub errors run to many lines), shortened."""
    text = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    text = text or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _version_tuple(text: str) -> tuple:
    from packaging.version import InvalidVersion, Version

    try:
        return Version(text).release
    except InvalidVersion:
        return tuple(int(p) for p in text.split(".") if p.isdigit())


# --- environment ------------------------------------------------------------------------------


def check_python(version: tuple = tuple(sys.version_info[:3])) -> Check:
    shown = ".".join(str(p) for p in version)
    if tuple(version[:2]) < (3, 10):
        return Check(PROBLEM, "python", f"{shown}: stic needs Python 3.10 or newer")
    return Check(OK, "python", shown)


def check_packages(version_of: Callable[[str], str | None] = _installed_version) -> list[Check]:
    """A line each for torch, transformers, peft, accelerate and datasets; one for the rest."""
    checks, others, other_problems = [], [], []
    for name, minimum in PACKAGES:
        found = version_of(name)
        if found is None:
            problem = f"{name} is not installed (pip install '{name}>={minimum}')"
        elif name == "transformers" and _version_tuple(found)[:1] != (5,):
            problem = f"transformers {found}: stic needs transformers 5.x (pip install -U 'transformers>=5,<6')"
        elif _version_tuple(found) < _version_tuple(minimum):
            problem = f"{name} {found} is too old; stic needs >= {minimum} (pip install -U '{name}>={minimum}')"
        else:
            problem = None
        if name in OWN_LINE:
            if problem:
                checks.append(Check(PROBLEM, name, problem))
            else:
                note = ""
                if name == "torch":
                    import torch

                    note = f" (built with CUDA {torch.version.cuda})" if torch.version.cuda else ""
                    note = note or " (CPU-only build: no CUDA support)"
                checks.append(Check(OK, name, f"{found}{note}"))
        elif problem:
            other_problems.append(problem)
        else:
            others.append(f"{name} {found}")
    if other_problems:
        checks.append(Check(PROBLEM, "other packages", "; ".join(other_problems)))
    else:
        checks.append(Check(OK, "other packages", ", ".join(others)))
    return checks


def check_device() -> list[Check]:
    """CUDA GPUs with their free/total memory and bfloat16 support; a warning on CPU only."""
    import torch

    if not torch.cuda.is_available():
        why = (
            "this torch build has no CUDA support (install a CUDA build of torch)"
            if not torch.version.cuda
            else "torch cannot see a CUDA GPU (driver, CUDA_VISIBLE_DEVICES?)"
        )
        return [
            Check(
                WARNING,
                "device",
                f"no CUDA GPU: {why}. stic will run on the CPU in float32: fine for `stic demo`, "
                "but generating pairs with or training a 7B model will be very slow (days)",
            )
        ]
    checks = []
    count = torch.cuda.device_count()
    most_free = 0.0
    for index in range(count):
        name = torch.cuda.get_device_name(index)
        free, total = (b / GIB for b in torch.cuda.mem_get_info(index))
        most_free = max(most_free, free)
        checks.append(Check(OK, f"gpu {index}", f"{name}, {free:.1f} GiB free of {total:.1f} GiB"))
    if most_free < GPU_MEMORY_FOR_7B_GIB:
        checks.append(
            Check(
                WARNING,
                "gpu memory",
                f"at most {most_free:.1f} GiB free on one GPU: a 7B model needs about 13 GiB for "
                f"its bfloat16 weights alone and more to train (>= {GPU_MEMORY_FOR_7B_GIB} GiB "
                "advised); use a smaller model, --gradient-checkpointing and --batch-size 1",
            )
        )
    if torch.cuda.is_bf16_supported():
        checks.append(Check(OK, "bf16", "supported: --dtype auto loads weights in bfloat16"))
    else:
        checks.append(
            Check(
                WARNING,
                "bf16",
                "not supported by this GPU: --dtype auto falls back to float32 (twice the memory); "
                "--dtype float16 halves it but can overflow in training",
            )
        )
    return checks


def _available_ram() -> tuple[float, float] | None:
    """(available, total) GiB of RAM, or None if it cannot be told."""
    try:
        import psutil

        memory = psutil.virtual_memory()
        return memory.available / GIB, memory.total / GIB
    except ImportError:
        pass
    try:
        fields = {}
        with open("/proc/meminfo") as f:
            for line in f:
                key, value = line.split(":", 1)
                fields[key] = int(value.split()[0]) * 1024
        return fields["MemAvailable"] / GIB, fields["MemTotal"] / GIB
    except (OSError, KeyError, ValueError):
        return None


def check_memory(ram: Callable[[], tuple[float, float] | None] = _available_ram) -> Check:
    found = ram()
    if found is None:
        return Check(WARNING, "ram", "cannot tell how much RAM is free on this system")
    available, total = found
    message = f"{available:.1f} GiB available of {total:.1f} GiB"
    if available < RAM_FOR_7B_GIB:
        return Check(
            WARNING,
            "ram",
            f"{message}: loading a 7B model needs about 13 GiB in bfloat16 (26 GiB in float32 "
            "on the CPU); fine for small models",
        )
    return Check(OK, "ram", message)


def check_disk(path: str | os.PathLike = ".", name: str = "disk") -> Check:
    """Free space on the file system holding ``path`` (or its nearest existing parent)."""
    where = Path(path).expanduser().absolute()
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        free = shutil.disk_usage(where).free / GIB
    except OSError as error:
        return Check(WARNING, name, f"cannot tell the free space at {where}: {_one_line(error)}")
    message = f"{free:.1f} GiB free at {where}"
    if free < DISK_PROBLEM_GIB:
        return Check(PROBLEM, name, f"{message}: stage outputs and checkpoints may not fit")
    if free < DISK_WARNING_GIB:
        return Check(
            WARNING,
            name,
            f"{message}: a 7B checkpoint is about 14 GB, and training checkpoints add more",
        )
    return Check(OK, name, message)


def _hub_cache() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def check_hub(environ: dict | None = None) -> list[Check]:
    """Offline mode and whether a Hub token is set; the token itself is never read or shown."""
    environ = os.environ if environ is None else environ
    offline = _truthy(environ.get("HF_HUB_OFFLINE")) or _truthy(environ.get("TRANSFORMERS_OFFLINE"))
    if offline:
        mode = Check(
            OK,
            "hub",
            "offline (HF_HUB_OFFLINE): models load only from local folders and the Hub cache "
            f"({_hub_cache()})",
        )
    else:
        mode = Check(OK, "hub", f"online: Hub ids are downloaded on first use into {_hub_cache()}")
    source = next((name for name in TOKEN_VARIABLES if environ.get(name)), None)
    if source is None:
        from huggingface_hub import constants

        if Path(constants.HF_TOKEN_PATH).is_file():
            source = f"the token file {constants.HF_TOKEN_PATH}"
    if source is not None:
        token = Check(OK, "hub token", f"set (from {source}; not shown)")
    else:
        token = Check(
            OK,
            "hub token",
            "none: public models (LLaVA, Qwen2-VL) download without one; gated ones need "
            "`hf auth login` or HF_TOKEN",
        )
    return [mode, token]


# --- model, adapter, images ---------------------------------------------------------------------


def check_model(
    model: str, *, trust_remote_code: bool = False, load_weights: bool = False
) -> list[Check]:
    """Whether ``model`` (folder or Hub id) loads: config, processor, chat template, weights.

    Weights are loaded only with ``load_weights`` (on the device ``--device auto`` picks).
    """
    from stic.modeling.models import ModelLoadError, check_model_path, load_processor

    try:
        check_model_path(model)
    except ModelLoadError as error:
        return [Check(PROBLEM, "model", _one_line(error))]
    offline_hint = ""
    if _truthy(os.environ.get("HF_HUB_OFFLINE")) and not Path(model).expanduser().exists():
        offline_hint = " (HF_HUB_OFFLINE is set: a Hub id must already be in the Hub cache)"

    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    try:
        config = AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as error:
        return [
            Check(
                PROBLEM,
                "model",
                f"cannot load the config of {model!r}{offline_hint}: {_one_line(error)}",
            )
        ]
    kind = config.model_type
    if kind not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        checks = [
            Check(
                PROBLEM,
                "model",
                f"{model!r} is a {kind!r} model, not an image-text-to-text (vision-language) "
                "model that AutoModelForImageTextToText loads",
            )
        ]
    else:
        checks = [Check(OK, "model", f"{model}: config loads ({kind})")]
    checks.append(_check_weight_files(model))

    try:
        processor = load_processor(model, trust_remote_code)
    except ModelLoadError as error:
        checks.append(Check(PROBLEM, "processor", f"{_one_line(error)}{offline_hint}"))
        return checks
    checks.append(_check_chat_template(processor))

    if load_weights:
        checks.append(_check_weights_load(model, trust_remote_code))
    return checks


def _check_weight_files(model: str) -> Check:
    folder = Path(model).expanduser()
    if not folder.is_dir():
        return Check(OK, "weights", "a Hub id: the weight files are checked when they are loaded")
    safetensors = list(folder.glob("*.safetensors"))
    pickled = list(folder.glob("*.bin")) + list(folder.glob("*.pt"))
    if safetensors:
        size = sum(p.stat().st_size for p in safetensors)
        shown = f"{size / GIB:.1f} GiB" if size >= GIB / 10 else f"{size / 1024**2:.1f} MiB"
        return Check(OK, "weights", f"{len(safetensors)} safetensors file(s), {shown}")
    if pickled:
        return Check(
            WARNING,
            "weights",
            "only pickled weights (.bin/.pt): stic loads safetensors only unless --allow-pickle "
            "(pickle can run code; use it only for files you trust)",
        )
    return Check(PROBLEM, "weights", f"no weight files (*.safetensors, *.bin) in {folder}")


def _check_chat_template(processor) -> Check:
    """The template must render a user turn made of an image item and a text item."""
    messages = [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}],
        }
    ]
    try:
        text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as error:  # a user's template can fail in any way; report, don't crash
        return Check(
            PROBLEM,
            "chat template",
            f"cannot render an image + text message: {_one_line(error)}",
        )
    image_token = getattr(processor, "image_token", None)
    if isinstance(image_token, str) and image_token and image_token not in text:
        return Check(
            PROBLEM,
            "chat template",
            f"renders no image token ({image_token!r}) for an {{'type': 'image'}} item: the "
            "model would never see the image",
        )
    return Check(OK, "chat template", "renders image + text messages")


def _check_weights_load(model: str, trust_remote_code: bool) -> Check:
    from stic.modeling.models import ModelLoadError, load_model

    try:
        net, _ = load_model(model, trust_remote_code=trust_remote_code)
    except (ModelLoadError, OSError, RuntimeError, ValueError) as error:
        return Check(PROBLEM, "weights load", _one_line(error))
    count = sum(p.numel() for p in net.parameters())
    first = next(net.parameters())
    message = f"{count / 1e6:,.1f}M parameters, {first.dtype}, on {first.device}"
    del net
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return Check(OK, "weights load", message)


def check_adapter(adapter: str, model: str | None = None) -> list[Check]:
    """A PEFT adapter folder: its config, its weights file, and the base model it was made on."""
    folder = Path(adapter).expanduser()
    if not folder.is_dir():
        return [Check(PROBLEM, "adapter", f"adapter folder {adapter!r} does not exist")]
    config_path = folder / "adapter_config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return [
            Check(PROBLEM, "adapter", f"{adapter!r} is not a PEFT adapter (no adapter_config.json)")
        ]
    except (OSError, ValueError) as error:
        return [Check(PROBLEM, "adapter", f"{config_path}: unreadable ({_one_line(error)})")]
    if not isinstance(config, dict):
        return [Check(PROBLEM, "adapter", f"{config_path}: expected a JSON object")]
    kind, rank = config.get("peft_type", "?"), config.get("r", "?")
    base = config.get("base_model_name_or_path")
    checks = [Check(OK, "adapter", f"{adapter}: {kind} adapter, rank {rank}, base {base!r}")]
    if (folder / "adapter_model.safetensors").is_file():
        checks.append(Check(OK, "adapter weights", "adapter_model.safetensors"))
    elif (folder / "adapter_model.bin").is_file():
        checks.append(
            Check(
                WARNING,
                "adapter weights",
                "only adapter_model.bin (pickle): loaded only with --allow-pickle",
            )
        )
    else:
        checks.append(
            Check(PROBLEM, "adapter weights", f"no adapter_model.safetensors in {adapter}")
        )
    if model is not None and base and not _same_model(base, model):
        checks.append(
            Check(
                WARNING,
                "adapter base",
                f"the adapter was made on {base!r}, not on --model {model!r}: it loads only if "
                "the layer names and shapes match",
            )
        )
    return checks


def _same_model(a: str, b: str) -> bool:
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def check_images(root: str, max_images: int = DEFAULT_MAX_IMAGES) -> list[Check]:
    """The folder lists images, and the first ``max_images`` of them decode."""
    from stic.runtime.images import ImageError, load_image, resolve_image_path, scan_images

    try:
        scan = scan_images(root)
    except (OSError, ValueError) as error:
        return [Check(PROBLEM, "images", _one_line(error, limit=600))]
    checks = [Check(OK, "images", f"{len(scan.ids):,} image files under {root}")]
    if scan.skipped:
        shown = "; ".join(list(scan.skipped.values())[:SHOWN_PROBLEMS])
        more = (
            f" (and {len(scan.skipped) - SHOWN_PROBLEMS} more)"
            if len(scan.skipped) > SHOWN_PROBLEMS
            else ""
        )
        checks.append(
            Check(
                WARNING,
                "image listing",
                f"{len(scan.skipped)} entries left out (a run skips them): {shown}{more}",
            )
        )
    sample = scan.ids[:max_images]
    failures = []
    for image_id in sample:
        path = resolve_image_path(root, image_id)
        try:
            load_image(path)
        except ImageError as error:
            failures.append(f"{image_id}: {str(error).removeprefix(f'{path}: ')}")
    if not failures:
        checks.append(Check(OK, "image decoding", f"the first {len(sample)} decode to RGB"))
    else:
        shown = "; ".join(failures[:SHOWN_PROBLEMS])
        more = (
            f" (and {len(failures) - SHOWN_PROBLEMS} more)"
            if len(failures) > SHOWN_PROBLEMS
            else ""
        )
        status = PROBLEM if len(failures) == len(sample) else WARNING
        checks.append(
            Check(
                status,
                "image decoding",
                f"{len(failures)} of the first {len(sample)} cannot be used (a run skips them): "
                f"{shown}{more}",
            )
        )
    return checks


# --- command --------------------------------------------------------------------------------------


def run_checks(args: argparse.Namespace) -> list[Check]:
    """Every check the arguments ask for; a check that fails unexpectedly becomes a problem line."""
    planned: list[tuple[str, Callable[[], Check | list[Check]]]] = [
        ("python", check_python),
        ("packages", check_packages),
        ("device", check_device),
        ("ram", check_memory),
        ("disk", lambda: check_disk(".", "disk (working folder)")),
        ("disk", lambda: check_disk(_hub_cache(), "disk (Hub cache)")),
        ("hub", check_hub),
    ]
    if args.model:
        planned.append(
            (
                "model",
                lambda: check_model(
                    args.model,
                    trust_remote_code=args.trust_remote_code,
                    load_weights=args.load_weights,
                ),
            )
        )
    if args.adapter:
        planned.append(("adapter", lambda: check_adapter(args.adapter, args.model)))
    if args.images:
        planned.append(("images", lambda: check_images(args.images, args.max_images)))
    checks: list[Check] = []
    for name, run in planned:
        try:
            result = run()
        except Exception as error:  # the doctor reports; it must not die on what it examines
            result = Check(PROBLEM, name, f"the check itself failed: {_one_line(error)}")
        checks += result if isinstance(result, list) else [result]
    return checks


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="stic doctor",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Prints one line per check (ok / warning / problem); exits 1 if any problem.",
    )
    parser.add_argument("--model", help="Model folder or Hub id to check (config, processor).")
    parser.add_argument("--images", help="Image folder to check (listing, and decoding a sample).")
    parser.add_argument("--adapter", help="PEFT adapter folder to check.")
    parser.add_argument(
        "--load-weights",
        action="store_true",
        help="Also load the model's weights (slow for a 7B model; off: config and processor only).",
    )
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="Allow the model folder's own Python code to run while loading it.",
    )
    parser.add_argument(
        "--preflight",
        action="store_true",
        help="Also load --model and run the preflight on two images (the first two of --images, "
        "or two made in code): template prefixes, image tokens kept after truncation, inputs "
        "reaching forward, labels on answers, end-of-turn stop, batched = one-at-a-time "
        "generation, a LoRA step that moves only LoRA weights. A few seconds on a GPU.",
    )
    parser.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="The --max-length of your training runs, for the preflight (default: dpo's).",
    )
    parser.add_argument(
        "--max-images",
        type=int,
        default=DEFAULT_MAX_IMAGES,
        help=f"How many images to decode (default: {DEFAULT_MAX_IMAGES}).",
    )
    args = parser.parse_args(argv)
    if args.max_images < 1:
        parser.error(f"--max-images must be >= 1, got {args.max_images}")
    if args.preflight and not args.model:
        parser.error("--preflight needs --model")
    if args.max_length is not None and args.max_length < 1:
        parser.error(f"--max-length must be >= 1, got {args.max_length}")
    from stic.runtime.manifests import redact

    checks = run_checks(args)
    for check in checks:
        print(redact(check.line()))  # no credential from the environment is ever shown
    problems = sum(c.status == PROBLEM for c in checks)
    warnings = sum(c.status == WARNING for c in checks)
    print(f"\n{problems} problem(s), {warnings} warning(s)")
    failed = 0
    if args.preflight:
        rows = preflight_rows(args)
        print(f"\npreflight of {args.model}:")
        for row in rows:
            print(redact(row.line()))
        failed = sum(row.status == "FAIL" for row in rows)
        print(f"\n{failed} of {len(rows)} preflight checks failed")
    return 1 if problems or failed else 0


def preflight_rows(args: argparse.Namespace) -> list:
    """The preflight table for ``args`` (one FAIL row if the model does not even load)."""
    from stic.tools.preflight import FAIL, Row, run_preflight

    try:
        return run_preflight(
            args.model,
            images=args.images,
            max_length=args.max_length,
            trust_remote_code=args.trust_remote_code,
        )
    except Exception as error:  # the doctor reports; it must not die on what it examines
        return [Row(FAIL, "load", _one_line(error), "fix the model folder first (see above)")]
