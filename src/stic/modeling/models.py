"""The one place that loads models, processors and adapters, and attaches LoRA.

Any ``AutoModelForImageTextToText`` whose ``AutoProcessor`` has a chat template taking content
lists (``{"type": "image"}``, ``{"type": "text"}``) works; the families tested end to end are
listed in ``stic.testing.support_table`` (and the README). A model that cannot work fails here,
at load time, with a :class:`ModelLoadError` saying why: no chat template, a processor that
needs a package that is not installed, an encoder-decoder model, a model type stic knows to be
unusable (:data:`UNSUPPORTED`).
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from stic.runtime.files import read_json

logger = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """A model, processor or adapter that cannot be loaded; the message says which and why."""


# model_type -> why stic cannot train or run it. Families needing an adapter of their own would
# get one small named entry in one place like this; none of the tested ones needs one.
UNSUPPORTED: dict[str, str] = {}


def check_supported(config, model: str) -> None:
    """Refuse, with the reason, a model stic cannot work with (before its weights are read)."""
    kind = getattr(config, "model_type", "?")
    if kind in UNSUPPORTED:
        raise ModelLoadError(
            f"{model!r} is a {kind!r} model, which stic cannot use: {UNSUPPORTED[kind]}"
        )
    if getattr(config, "is_encoder_decoder", False):
        raise ModelLoadError(
            f"{model!r} is an encoder-decoder {kind!r} model; stic trains decoder-only "
            "vision-language models (the answer is generated after the prompt in one sequence)"
        )


def _missing_package(error: ImportError, model: str, what: str) -> ModelLoadError:
    """A processor or model that needs a package: the install command, on one line."""
    name = getattr(error, "name", None)
    found = re.search(r"pip install (\S+)", str(error))
    package = found.group(1).strip("`'\".") if found else name
    todo = f"pip install {package}" if package else "install the package it names"
    first = next((x for x in str(error).splitlines() if x.strip()), type(error).__name__)
    return ModelLoadError(
        f"the {what} of {model!r} needs a package that is missing ({first}); {todo}"
    )


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: the first CUDA GPU if there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {name!r} asked for, but no CUDA GPU is available")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto``: bfloat16 on a CUDA GPU that supports it, float32 elsewhere (CPU half is slow and lossy)."""
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, name)


def load_processor(model: str, trust_remote_code: bool = False):
    from transformers import AutoProcessor

    check_model_path(model)
    try:
        processor = AutoProcessor.from_pretrained(model, trust_remote_code=trust_remote_code)
    except ImportError as e:
        raise _missing_package(e, model, "processor") from e
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot load a processor from {model!r}: {e}") from e
    if not getattr(processor, "chat_template", None):
        raise ModelLoadError(
            f"the processor of {model!r} has no chat template; stic needs one that takes "
            "content lists with {'type': 'image'} and {'type': 'text'} items"
        )
    return processor


def load_model(
    model: str,
    *,
    dtype: str = "auto",
    device: str | torch.device = "auto",
    trust_remote_code: bool = False,
    adapter: str | None = None,
    trainable_adapter: bool = False,
    allow_pickle: bool = False,
):
    """Load ``(model, processor)``; with ``adapter``, the PEFT adapter is applied on top.

    ``device`` may be ``None`` to leave the model on the CPU for a Trainer to place. Weights
    load from safetensors only unless ``allow_pickle`` (pickled ``.bin`` files can run code).
    """
    from transformers import AutoConfig, AutoModelForImageTextToText

    check_model_path(model)
    try:
        config = AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as e:
        raise ModelLoadError(f"cannot load the config of {model!r}: {e}") from e
    check_supported(config, model)
    target = resolve_device(device) if isinstance(device, str) else device
    # With no target the Trainer places the model: pick the dtype for where it will go.
    torch_dtype = resolve_dtype(dtype, target if target is not None else resolve_device("auto"))
    processor = load_processor(model, trust_remote_code)
    try:
        net = AutoModelForImageTextToText.from_pretrained(
            model,
            dtype=torch_dtype,
            trust_remote_code=trust_remote_code,
            use_safetensors=None if allow_pickle else True,
        )
    except ImportError as e:
        raise _missing_package(e, model, "model") from e
    except (OSError, ValueError) as e:
        hint = (
            ""
            if allow_pickle
            else " (only safetensors weights are loaded; --allow-pickle loads .bin files you trust)"
        )
        raise ModelLoadError(f"cannot load model {model!r}: {e}{hint}") from e
    if adapter is not None:
        net = load_adapter(net, adapter, trainable=trainable_adapter, allow_pickle=allow_pickle)
    if target is not None:
        net.to(target)
    return net, processor


def model_loader(
    config, model=None, processor=None, adapter: str | None = None
) -> Callable[[], tuple]:
    """A function giving ``(model, processor)`` in eval mode, loaded from ``config`` on first call.

    Stages call it only when an item needs the model, so a rerun with nothing left to do (or
    only unreadable images) loads nothing. A local model path that does not exist fails here,
    before any output is written. ``model``/``processor`` given: those are used instead.
    """
    if model is None:
        check_model_path(config.model)

    @functools.cache
    def get() -> tuple:
        net, proc = (
            (model, processor)
            if model is not None
            else load_model(
                config.model,
                dtype=config.dtype,
                device=config.device,
                trust_remote_code=config.trust_remote_code,
                adapter=adapter,
                allow_pickle=config.allow_pickle,
            )
        )
        net.eval()
        return net, proc

    return get


def load_adapter(
    model: nn.Module, adapter: str, trainable: bool = False, allow_pickle: bool = False
):
    from peft import PeftModel

    if not (Path(adapter) / "adapter_config.json").exists():
        raise ModelLoadError(f"{adapter!r} is not a PEFT adapter folder (no adapter_config.json)")
    if not allow_pickle and not (Path(adapter) / "adapter_model.safetensors").exists():
        raise ModelLoadError(
            f"{adapter!r} has no adapter_model.safetensors; pickled weights can run code when loaded "
            "(pass --allow-pickle if you trust them)"
        )
    try:
        return PeftModel.from_pretrained(model, adapter, is_trainable=trainable)
    except (RuntimeError, ValueError) as e:
        if isinstance(e, RuntimeError) and not _SIZE_MISMATCH.search(str(e)):
            raise
        raise adapter_mismatch(adapter, model, e) from None


# torch's load_state_dict lists every mismatching weight; the first one says enough.
_SIZE_MISMATCH = re.compile(
    r"size mismatch for (?P<name>\S+): copying a param with shape (?P<saved>.+?) from "
    r"checkpoint, the shape in current model is (?P<now>.+?)\.?$",
    re.MULTILINE,
)


def _shape(text: str) -> str:
    return text.replace("torch.Size(", "").rstrip(")")


def adapter_mismatch(adapter: str, model: nn.Module, error: Exception) -> ModelLoadError:
    """One line saying why ``adapter`` does not load on ``model``: the base it was trained on,
    this base, and the first weight whose shape differs (not torch's list of every one)."""
    base = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
    try:
        trained_on = read_json(Path(adapter) / "adapter_config.json").get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError):
        trained_on = None
    origin = f" (it was trained on {trained_on!r})" if trained_on and trained_on != base else ""
    found = _SIZE_MISMATCH.search(str(error))
    if found:
        name = found["name"].removeprefix("base_model.model.")
        why = (
            f"the first mismatching weight, {name}, has shape {_shape(found['saved'])} in the "
            f"adapter and {_shape(found['now'])} in the model"
        )
    else:
        lines = str(error).strip().splitlines()
        why = lines[0] if lines else type(error).__name__
    return ModelLoadError(
        f"adapter {adapter!r} does not fit the base model {base!r}{origin}: {why}; "
        "use the base model the adapter was trained on"
    )


def language_model(model: nn.Module) -> nn.Module:
    """The text decoder inside a vision-language model (transformers 5 layout, with fallbacks)."""
    for path in ("model.language_model", "language_model", "model.text_model"):
        module = model
        for name in path.split("."):
            module = getattr(module, name, None)
            if module is None:
                break
        if isinstance(module, nn.Module):
            return module
    if hasattr(model, "get_decoder"):
        return model.get_decoder()
    raise ModelLoadError(f"cannot find the language model inside {type(model).__name__}")


def lora_target_names(model: nn.Module, layer_names: list[str]) -> list[str]:
    """Full names of the language model's ``nn.Linear`` layers whose last name is in ``layer_names``.

    Full names, not suffixes: the vision tower of LLaVA has ``q_proj`` layers too, and the
    method keeps it frozen.
    """
    inside = {id(m) for m in language_model(model).modules()}
    wanted = set(layer_names)
    names = [
        name
        for name, module in model.named_modules()
        if id(module) in inside
        and isinstance(module, nn.Linear)
        and name.rsplit(".", 1)[-1] in wanted
    ]
    if not names:
        raise ModelLoadError(f"no linear layers named {sorted(wanted)} in the language model")
    return names


def add_lora(model: nn.Module, *, r: int, alpha: int, dropout: float, layer_names: list[str]):
    """Wrap ``model`` in a PEFT LoRA model on the language model's linear layers only."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=lora_target_names(model, layer_names),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def check_model_path(model: str) -> None:
    """Fail at once for a local path that does not exist (rather than asking the Hub for it).

    Hub ids look like ``org/name``; anything else that is absolute, starts with ``.`` or ``~``,
    or has more than two parts is a path.
    """
    looks_local = model.startswith((".", "/", "~")) or model.count("/") > 1
    if looks_local and not Path(model).expanduser().exists():
        raise ModelLoadError(f"model folder {model!r} does not exist")
