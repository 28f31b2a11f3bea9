"""One dataclass per stage, and the run config that chains them.

Every field has ``help`` (it becomes ``stic <verb> --help``) and, where the default is not
obvious, says where it comes from. Values are checked once, here, where they enter (command
line or YAML): :func:`validate` collects every problem into one :class:`ConfigError` that names
the key, the bad value and what is allowed. Inner code trusts the config.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from stic.runtime.identity import (  # noqa: F401  (re-exported: config identity lives beside the manifest)
    FILE_SUFFIXES,
    PATH_FIELDS,
    config_hash,
    differing_keys,
    identity,
    normalize_path,
    normalized,
    to_dict,
)

DTYPES = ("auto", "bfloat16", "float16", "float32")


class ConfigError(ValueError):
    """Invalid configuration; the message lists every problem, one a line, each naming its key."""


def _help(text: str, **kw: Any) -> Any:
    return field(metadata={"help": text}, **kw)


def _shard_field() -> Any:
    return _help(
        "Process only shard I of N, written I/N (0-based, e.g. 0/4): items are split by a hash of "
        "their id, so N runs cover every item once; join the outputs with `stic merge`.",
        default=None,
    )


@dataclass(kw_only=True)
class ModelOptions:
    """Options every stage that loads a model shares."""

    model: str = _help(
        "Model folder or Hub id, loaded with AutoModelForImageTextToText and AutoProcessor."
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = _help(
        "Weights dtype. auto: bfloat16 on a CUDA GPU that supports it, float32 on CPU.",
        default="auto",
    )
    trust_remote_code: bool = _help(
        "Allow the model folder's own Python code to run (off: only code in transformers runs).",
        default=False,
    )
    allow_pickle: bool = _help(
        "Also load pickled (.bin) weights; off: safetensors only (unpickling can run arbitrary code).",
        default=False,
    )
    seed: int = _help(
        "Seed of every random decision; per-item decisions derive from (seed, item id).", default=42
    )
    overwrite: bool = _help(
        "Start over when the output exists but was made with a different config (otherwise: error).",
        default=False,
    )

    # Fields that change how fast a stage runs or how it is resumed, never what it computes:
    # left out of the config hash so that a rerun with another value resumes the same output.
    RUNTIME_FIELDS: ClassVar[tuple[str, ...]] = ("overwrite",)


@dataclass(kw_only=True)
class GenerationOptions(ModelOptions):
    """Options of the stages that generate text."""

    device: str = _help(
        "Device for generation: auto (cuda if available, else cpu), cpu, cuda, cuda:1.",
        default="auto",
    )
    backend: Literal["hf", "vllm"] = _help(
        "Generation engine. hf: transformers generate, batch_size requests per left-padded "
        "batch. vllm: vLLM's engine (paged KV cache, continuous batching; pip install "
        "'stic[vllm]'), batch_size requests per engine call, so give it hundreds; each request "
        "sampled with its own seed. Same prompts, decisions and record fields; the generated text "
        "may differ in the last bits of the arithmetic, so the backend is part of the config "
        "hash: a run is never resumed with the other backend's answers mixed in.",
        default="hf",
    )
    batch_size: int = _help("Images per generate() call (left-padded batch).", default=8)
    vllm_gpu_memory: float = _help(
        "With --backend vllm on GPUs: the share of each GPU's memory vLLM takes for weights, "
        "activations and KV cache (vLLM's gpu_memory_utilization); lower it when another process "
        "shares the GPU. On CPU stic sizes vLLM's KV cache from batch_size and the model (set "
        "VLLM_CPU_KVCACHE_SPACE, in GiB, to choose it yourself).",
        default=0.9,
    )
    limit: int | None = _help(
        "Process at most this many items (the first ones in id order).", default=None
    )
    # Ray (pip install 'stic[ray]'): the same batches made by a pool of workers, each holding
    # the model; only the driver writes. What is computed does not change, so these are
    # runtime fields: a run may be resumed with or without Ray, or with another pool.
    ray: str | None = field(
        default=None,
        metadata={
            "help": "Run the generation on a Ray cluster (pip install 'stic[ray]'): local (start "
            "one on this machine, e.g. one worker per GPU), auto (the cluster this machine joined "
            "with `ray start`, or RAY_ADDRESS; also what a bare --ray means) or the address of a "
            "cluster's head (HEAD_IP:6379). A pool of --workers actors each holds the model and "
            "makes whole batches, the same batches as one process; a worker that dies is "
            "restarted and its batch redone; only this process writes the output. Unset: one "
            "process, no Ray.",
            # `--ray` alone, as `--ray auto`.
            "nargs": "?",
            "const": "auto",
        },
    )
    workers: int | None = _help(
        "With --ray: how many workers (actors, each with its own copy of the model). Unset: one "
        "per worker_gpus GPUs of the cluster, or 1 on a cluster without GPUs.",
        default=None,
    )
    worker_gpus: float | None = _help(
        "With --ray: GPUs per worker (a fraction shares a GPU between workers). Unset: 1 on a "
        "cluster with GPUs, else 0.",
        default=None,
    )
    worker_cpus: float = _help(
        "With --ray: CPU cores per worker (Ray gives its torch that many threads).", default=1.0
    )
    ray_timeout: float = _help(
        "With --ray ADDRESS: seconds to wait for the cluster's head to answer before stopping "
        "with an error (Ray itself would retry for minutes).",
        default=30.0,
    )

    RUNTIME_FIELDS: ClassVar[tuple[str, ...]] = (
        "overwrite",
        "device",
        "batch_size",
        "vllm_gpu_memory",
        "limit",
        "ray",
        "workers",
        "worker_gpus",
        "worker_cpus",
        "ray_timeout",
    )


@dataclass(kw_only=True)
class PairsConfig(GenerationOptions):
    """Stage 1a: build the preference set from a folder of unlabeled images."""

    # What --out must end with (a folder output: none of FILE_SUFFIXES).
    OUT_SUFFIXES: ClassVar[tuple[str, ...]] = (".jsonl",)
    # Requests per image in one backend call (chosen and rejected, grouped by image for vLLM):
    # what vLLM's KV cache on CPU is sized for, per image of a batch.
    REQUESTS_PER_ITEM: ClassVar[int] = 2

    images: str = _help(
        "Folder of unlabeled images (searched recursively); ids are paths relative to it."
    )
    out: str = _help("Output JSONL file of pair records (appended per batch; a rerun resumes).")
    shard: str | None = _shard_field()
    max_new_tokens: int = _help("Longest description generated (paper: 1024).", default=1024)
    temperature: float = _help(
        "Sampling temperature for both answers (paper: 0.2; 0 = greedy).", default=0.2
    )
    top_p: float = _help("Nucleus sampling threshold (1.0 = off, as in the paper).", default=1.0)
    bad_prompt_prob: float = _help(
        "Probability that the rejected answer comes from a hallucination-inducing prompt on the clean "
        "image; otherwise from a plain prompt on a corrupted image (paper: 0.5).",
        default=0.5,
    )
    lowres_prob: float = _help(
        "Among corrupted images, the probability of lowering the resolution; otherwise colour jitter (paper: 0.5).",
        default=0.5,
    )
    lowres_short_side: int = _help(
        "Low-resolution corruption: shorter side resized to this many pixels (paper: 20).",
        default=20,
    )
    jitter_brightness: float = _help(
        "Colour jitter brightness, torchvision ColorJitter semantics: factor uniform in [1-b, 1+b] (paper: 0.5).",
        default=0.5,
    )
    jitter_hue: float = _help(
        "Colour jitter hue, torchvision ColorJitter semantics: shift uniform in [-h, h] of the hue circle (paper: 0.3).",
        default=0.3,
    )
    adapter: str | None = _help(
        "PEFT adapter applied while generating both answers (none: the base model, as in the "
        "paper). `stic run` with rounds >= 2 sets it to the previous round's DPO adapter, so "
        "that round's pairs are on-policy for the model being trained.",
        default=None,
    )

    # Fields added after outputs were made: left out of the identity while at their default,
    # so that those outputs keep their config hash and manifests (see runtime.identity).
    OMIT_AT_DEFAULT: ClassVar[tuple[str, ...]] = ("adapter",)


@dataclass(kw_only=True)
class TrainOptions(ModelOptions):
    """Options of the two training stages (a transformers.Trainer underneath)."""

    OUT_SUFFIXES: ClassVar[tuple[str, ...]] = ()  # a folder

    out: str = _help(
        "Output folder: the PEFT adapter, the training log and checkpoints while running."
    )
    images: str = _help("Folder the records' image paths are relative to.")
    lr: float = _help("Peak learning rate.", default=2e-5)
    epochs: float = _help("Training epochs.", default=1.0)
    max_steps: int | None = _help(
        "Stop after this many optimizer steps (overrides --epochs).", default=None
    )
    batch_size: int = _help("Examples per device per forward pass.", default=1)
    grad_accum: int = _help(
        "Gradient accumulation steps (global batch = batch_size x grad_accum x GPUs).", default=8
    )
    warmup_ratio: float = _help(
        "Fraction of the training steps spent in linear warm-up, in [0, 1) (paper: 0.03).",
        default=0.03,
    )
    lr_scheduler: str = _help("transformers scheduler name (paper: cosine).", default="cosine")
    weight_decay: float = _help("AdamW weight decay (paper: 0).", default=0.0)
    max_length: int = _help(
        "Longest training sequence in tokens, image tokens included; only the answer's tail is cut.",
        default=2048,
    )
    gradient_checkpointing: bool = _help(
        "Recompute activations in the backward pass to save memory.", default=False
    )
    keep_global_batch: bool = _help(
        "Under a launcher of N processes (torchrun, accelerate launch): batch_size x grad_accum "
        "is the GLOBAL batch, split over the N processes (grad_accum / N each where it divides, "
        "else a smaller per-device batch; an error where no split gives it), so that N processes "
        "train the steps of one; the split is recorded in the manifest. `stic run --gpus N` sets "
        "it. Off: every process takes batch_size x grad_accum (a global batch N times larger).",
        default=False,
    )
    save_steps: int = _help("Save a resumable checkpoint every this many steps.", default=100)
    logging_steps: int = _help("Log metrics every this many steps.", default=10)
    report_to: str = _help(
        "Where transformers reports metrics: none, tensorboard, wandb, ...", default="none"
    )
    dataloader_num_workers: int = _help("Worker processes that load images.", default=0)
    # Settings of a new LoRA adapter: stage 1b always makes one, stage 2 only without --adapter
    # (a given adapter keeps the settings it was made with).
    lora_r: int = _help(
        "LoRA rank of a new adapter: dpo's, or sft's without --adapter (reference: 128).",
        default=128,
    )
    lora_alpha: int = _help(
        "LoRA alpha of a new adapter: dpo's, or sft's without --adapter (reference: 256).",
        default=256,
    )
    lora_dropout: float = _help(
        "LoRA dropout of a new adapter: dpo's, or sft's without --adapter (reference: 0.05).",
        default=0.05,
    )
    lora_targets: str = _help(
        "Comma-separated names of the language model's linear layers that get LoRA in a new "
        "adapter: dpo's, or sft's without --adapter (the vision tower and projector never do).",
        default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
    )

    RUNTIME_FIELDS: ClassVar[tuple[str, ...]] = (
        "overwrite",
        "save_steps",
        "logging_steps",
        "report_to",
        "dataloader_num_workers",
        "gradient_checkpointing",
        # The same global batch over any number of processes: the same steps, the same run.
        "keep_global_batch",
    )


@dataclass(kw_only=True)
class DPOConfig(TrainOptions):
    """Stage 1b: DPO plus an NLL term on the chosen answer, LoRA on the language model."""

    pairs: str = _help(
        "Pair records: `stic pairs` JSONL, the reference code's JSON/JSONL, or LLaMA-Factory's "
        "ranking JSON (see --pairs-format)."
    )
    pairs_format: Literal["auto", "stic", "stic-reference", "llamafactory"] = _help(
        "Format of --pairs; auto detects it from the first record.", default="auto"
    )
    filter_identical: bool = _help("Drop pairs whose two answers are the same text.", default=True)
    filter_empty: bool = _help("Drop pairs with an empty or whitespace-only answer.", default=True)
    filter_truncated: bool = _help(
        "Drop pairs with an answer cut off at the generation token limit.", default=True
    )
    filter_refusals: bool = _help(
        'Drop pairs with an answer that is a refusal ("I\'m sorry", "I cannot", ...).', default=True
    )
    filter_near_duplicates: bool = _help(
        "Drop pairs whose rejected answer nearly copies the chosen one (see --near-duplicate-threshold).",
        default=True,
    )
    near_duplicate_threshold: float = _help(
        "Word-level similarity (0-1, difflib ratio) at or above which a pair counts as a near duplicate.",
        default=0.9,
    )
    beta: float = _help("DPO temperature beta (paper: 0.1).", default=0.1)
    alpha: float = _help(
        "Weight of the NLL term on the chosen answer (paper/reference: 1/1024 on the SUMMED "
        "log-prob). TRL calls a similar term rpo_alpha / 'sft' loss, but token-averaged.",
        default=1 / 1024,
    )
    nll_normalization: Literal["sum", "mean"] = _help(
        "sum: alpha x summed log-prob of the chosen answer (the paper); mean: alpha x its per-token mean.",
        default="sum",
    )
    lr: float = _help("Peak learning rate (reference: 1e-7).", default=1e-7)
    batch_size: int = _help(
        "Pairs per device per forward pass (each pair one packed sequence, or two: --share-prefix).",
        default=1,
    )
    precompute_reference: Literal["auto", "on", "off"] = _help(
        "Reference log-probs: on = computed once before training (one no-grad pass over the pairs "
        "with the adapter disabled, stored in <out>/reference_logps.jsonl by pair id and model, "
        "resumable), saving the reference forward pass of every step; off = computed at every "
        "step, as TRL does by default. auto = on when that is exact: the reference is the base "
        "model with its adapters disabled, so LoRA dropout never reaches it, and it is exact "
        "whenever the base model has no active dropout of its own (LLaVA and Qwen2-VL configs "
        "set 0); with such dropout, auto computes per step.",
        default="auto",
    )
    share_prefix: Literal["auto", "on", "off"] = _help(
        "One sequence per pair: the image and prompt once, then the chosen and the rejected "
        "answer, each attending to the prompt and itself only (a 4-D mask; positions restart), "
        "so the vision tower and the prompt run once instead of twice. Same log-probs as two "
        "sequences up to float rounding. auto = on for the families tested exact (LLaVA, "
        "LLaVA-NeXT, Qwen2-VL, Qwen2.5-VL, ...; see stic.stages.shared_prefix) with eager or "
        "sdpa attention, else two sequences (logged); on = also for untested families (refused "
        "where known inexact: flash-attention, LFM2-VL); off = two sequences, as TRL does.",
        default="auto",
    )

    adapter: str | None = _help(
        "PEFT adapter to continue training (loaded trainable; it keeps the LoRA settings it was "
        "made with, so lora_* are not used) instead of a new LoRA adapter: round r >= 2 of "
        "`stic run` starts from round r-1's adapter. None: a new adapter (the paper).",
        default=None,
    )
    reference: Literal["start", "base"] = _help(
        "The DPO reference model when --adapter is given. start: the adapter as it is before "
        "training, frozen (iterative DPO, as RLAIF-V and CSR train their rounds: each round is "
        "held near the previous round's model); its log-probs are computed once, before "
        "training, so --precompute-reference off is refused with it. base: the base model "
        "(adapters disabled), as in round 1. Without --adapter both are the base model (a new "
        "adapter starts as a zero change). TRL: ref_model / ref_adapter_name.",
        default="start",
    )

    # share_prefix changes how the same numbers are computed, not what is computed.
    RUNTIME_FIELDS: ClassVar[tuple[str, ...]] = (*TrainOptions.RUNTIME_FIELDS, "share_prefix")
    # Fields added after outputs were made: left out of the identity while at their default,
    # so that those outputs keep their config hash and manifests (see runtime.identity).
    OMIT_AT_DEFAULT: ClassVar[tuple[str, ...]] = ("adapter", "reference")


@dataclass(kw_only=True)
class InfuseConfig(GenerationOptions):
    """Stage 2, part 1: describe each instruction image and infuse the description into its prompt."""

    OUT_SUFFIXES: ClassVar[tuple[str, ...]] = (".json",)

    data: str = _help("LLaVA-format instruction data: a JSON list of {id, image, conversations}.")
    images: str = _help("Folder the samples' image paths are relative to.")
    out: str = _help("Output JSON list in the same format, first human turn rewritten.")
    shard: str | None = _shard_field()
    adapter: str | None = _help(
        "Stage-1 PEFT adapter (none: describe with the base model).", default=None
    )
    max_new_tokens: int = _help("Longest description generated.", default=1024)
    temperature: float = _help(
        "Sampling temperature (0 = greedy; paper's generation setting: 0.2).", default=0.2
    )


@dataclass(kw_only=True)
class SFTConfig(TrainOptions):
    """Stage 2, part 2: train the stage-1 adapter further (or a fresh one) on description-infused data."""

    data: str = _help("Description-infused instruction data written by `stic infuse` (JSON list).")
    adapter: str | None = _help(
        "The stage-1 PEFT adapter, trained further; none: a fresh LoRA adapter on the base model "
        "(e.g. the stage-2-only control).",
        default=None,
    )
    lr: float = _help("Peak learning rate (paper: 2e-5).", default=2e-5)
    batch_size: int = _help("Samples per device per forward pass.", default=4)
    grad_accum: int = _help("Gradient accumulation steps (paper: global batch 32).", default=8)


@dataclass(kw_only=True)
class EvalConfig(GenerationOptions):
    """Answer VQA questions greedily and score them by exact match."""

    OUT_SUFFIXES: ClassVar[tuple[str, ...]] = (".json",)

    data: str = _help('VQA JSONL: {"id", "image", "question", "answer", "choices"?} per line.')
    images: str = _help("Folder the items' image paths are relative to.")
    out: str = _help("Output JSON: accuracy and per-item results.")
    adapter: str | None = _help("PEFT adapter to apply (none: the base model).", default=None)
    dar: bool = _help(
        "Describe-and-respond: describe the image first, then answer with the description in the prompt.",
        default=False,
    )
    max_new_tokens: int = _help("Longest answer generated.", default=64)
    dar_max_new_tokens: int = _help(
        "Longest description generated in describe-and-respond.", default=1024
    )
    instruction: str | None = _help(
        "Instruction appended to each question (default: LLaVA's short-answer or choose-a-letter one; '' for none).",
        default=None,
    )


# The names of ``stic.data.benchmarks.BENCHMARKS``, the one benchmark registry (config may not
# import data; tests/stages/test_bench.py checks that the two lists are the same).
BENCHMARK_NAMES = (
    "scienceqa_img",
    "textvqa",
    "chartqa",
    "mmbench_en_dev",
    "mathvista_testmini",
    "llava_bench_wild",
    "mmvet",
    "pope_adversarial",
    "pope_popular",
    "pope_random",
    "amber_discriminative",
    "amber_generative",
)


@dataclass(kw_only=True)
class BenchConfig(GenerationOptions):
    """Answer one of the paper's benchmarks by its protocol and score it by its official rule.

    Greedy decoding, LLaVA-1.5's prompts and limits (recorded in the result). Scoring an existing
    predictions file needs no model: see `stic bench score --help`; tabulate runs with
    `stic compare`.
    """

    OUT_SUFFIXES: ClassVar[tuple[str, ...]] = (".json",)

    benchmark: Literal[BENCHMARK_NAMES] = _help(
        "Benchmark to run (docs/benchmarks.md: where to get each, what --data takes)."
    )
    data: str = _help(
        "The benchmark as downloaded: hub parquet files or a save_to_disk folder, or the "
        "original release files (format detected)."
    )
    images: str | None = _help(
        "Image folder of the original release (e.g. COCO val2014 for POPE); default: where the "
        "release keeps it. Not needed for hub parquet or MMBench's TSV (images inside).",
        default=None,
    )
    out: str = _help(
        "Output JSON: metrics (percent), per-category metrics, every item's prediction, extracted "
        "answer and score, the protocol, model, adapter and dar."
    )
    adapter: str | None = _help("PEFT adapter to apply (none: the base model).", default=None)
    dar: bool = _help(
        "Describe-and-respond: describe the image first (the image is given), then answer with "
        "the description in front of the question.",
        default=False,
    )
    max_new_tokens: int | None = _help(
        "Longest answer generated (default: the benchmark protocol's limit, 128 or 1024).",
        default=None,
    )
    dar_max_new_tokens: int = _help(
        "Longest description generated in describe-and-respond (LLaVA-1.5: 1024).", default=1024
    )
    dar_cache: str | None = _help(
        "JSONL cache of describe-and-respond descriptions, keyed by (model, adapter, image bytes, "
        "prompt, token limit) and shared by every benchmark that uses it, so an image is "
        "described once (default: dar_descriptions.jsonl beside --out).",
        default=None,
    )
    judge_url: str | None = _help(
        "Judge: an OpenAI-compatible chat-completions endpoint (e.g. http://127.0.0.1:8000/v1); "
        "required for llava_bench_wild and mmvet, optional for mathvista_testmini.",
        default=None,
    )
    judge_model: str | None = _help(
        "Judge model name (sent with each request and recorded in the result).", default=None
    )
    judge_key_env: str | None = _help(
        "NAME of the environment variable holding the judge's API key (the key is never written).",
        default=None,
    )
    judge_cache: str | None = _help(
        "JSONL cache of raw judge replies (default: <out>.judge_cache.jsonl); a rerun pays only "
        "for prompts it does not hold.",
        default=None,
    )
    judge_concurrency: int = _help("Judge requests in flight.", default=4)
    judge_timeout: float = _help("Seconds to wait for one judge reply.", default=120.0)
    judge_retry_after_max: float = _help(
        "Longest Retry-After (seconds) the judge client waits out before a retry; a judge that "
        "asks for longer fails that request at once, saying so (rerun later: failures are not "
        "cached).",
        default=60.0,
    )
    judge_max_reply_bytes: int = _help(
        "Largest judge reply body read; a larger one is a judge failure with that reason.",
        default=1 << 20,
    )

    # The judge's address, key and cache and the description cache change where things come
    # from, never the result; the judge model is part of the result.
    RUNTIME_FIELDS: ClassVar[tuple[str, ...]] = (
        *GenerationOptions.RUNTIME_FIELDS,
        "dar_cache",
        "judge_url",
        "judge_key_env",
        "judge_cache",
        "judge_concurrency",
        "judge_timeout",
        "judge_retry_after_max",
        "judge_max_reply_bytes",
    )


LAUNCHERS = ("torchrun", "accelerate")


@dataclass(kw_only=True)
class LaunchOptions:
    """How ``stic run`` spreads a run over the GPUs of one machine: top-level keys of a run
    config (``gpus`` also ``stic run --gpus N``). None of them is part of any stage's config
    hash: a run with N=1 and one with N=8 are the same run, and either may resume the other."""

    gpus: int | None = _help(
        "GPUs (processes) every stage uses. Generating stages (pairs, infuse, eval, bench): a "
        "local Ray pool of that many workers (one GPU each where there are GPUs; what --ray "
        "local --workers N is). Training stages (dpo, sft): that many data-parallel processes "
        "started by the launcher, each with its share of the global batch (batch_size x "
        "grad_accum, kept). Unset: the GPUs this machine has (torch.cuda.device_count()), 1 "
        "without a GPU; 1: every stage in this process, as without the key.",
        default=None,
    )
    launcher: Literal["torchrun", "accelerate"] = _help(
        "What starts the training processes when gpus > 1: torchrun (python -m "
        "torch.distributed.run --standalone, plain DDP) or accelerate (accelerate launch "
        "--config_file accelerate_config).",
        default="torchrun",
    )
    accelerate_config: str | None = _help(
        "With launcher: accelerate, the accelerate config file (default: the shipped "
        "configs/accelerate/ddp.yaml; deepspeed_zero2.yaml, deepspeed_zero3.yaml and fsdp.yaml "
        "ship beside it). Its num_processes is replaced by gpus.",
        default=None,
    )

    RUNTIME_FIELDS: ClassVar[tuple[str, ...]] = ("gpus", "launcher", "accelerate_config")


@dataclass(kw_only=True)
class RoundsConfig:
    """``stic run``'s choice among its self-training rounds (``rounds: N`` >= 2), planned by
    :mod:`stic.pipeline`, never given by hand.

    After the N rounds it reads each round's validation result (the ``select`` entry's output),
    writes ``table`` (``<output_dir>/rounds.json``, and ``rounds.md`` beside it) and copies the
    chosen round's adapter to ``out`` (``<output_dir>/dpo``), which the rest of the run uses.
    """

    OUT_SUFFIXES: ClassVar[tuple[str, ...]] = ()  # a folder: the chosen adapter

    out: str = _help("Where the chosen round's adapter is copied (<output_dir>/dpo).")
    table: str = _help("The rounds x metric table (<output_dir>/rounds.json; rounds.md beside).")
    round_adapters: list[str] = _help("Each round's DPO adapter folder, round 1 first.")
    round_pairs: list[str] = _help("Each round's pairs file, round 1 first.")
    round_results: list[str] = _help(
        "Each round's result of the select entry, round 1 first (empty without select)."
    )
    select_entry: str | None = _help(
        "The eval or bench entry run on validation data after each round (none: the last "
        "round is chosen).",
        default=None,
    )
    select_metric: str | None = _help("Its result key that decides.", default=None)
    select_mode: Literal["max", "min"] | None = _help(
        "max: the highest value wins; min: the lowest.", default=None
    )
    round_reference: Literal["previous", "base"] = _help(
        "The DPO reference of rounds >= 2 (recorded).", default="previous"
    )
    round_images: Literal["fresh", "same"] = _help(
        "Whether each round read its own shard of the images (recorded).", default="fresh"
    )
    overwrite: bool = _help(
        "Replace a table or chosen adapter made from other rounds or settings.", default=False
    )

    RUNTIME_FIELDS: ClassVar[tuple[str, ...]] = ("overwrite",)


def _type_ok(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return value in typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, tuple):
        return isinstance(value, (list, tuple))
    if annotation is Any:
        return True
    return isinstance(value, annotation)


def _describe(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def type_errors(cls: type, data: dict, where: str) -> list[str]:
    """Problems with ``data`` as keyword arguments of dataclass ``cls``: unknown keys, wrong types."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    errors = []
    for key, value in data.items():
        if key not in fields:
            close = [
                name
                for name in fields
                if name.replace("_", "") == key.replace("_", "").replace("-", "")
            ]
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            errors.append(f"{where}{key}: unknown key{hint}")
        elif not _type_ok(value, hints[key]):
            errors.append(f"{where}{key}: {value!r} is not {_describe(hints[key])}")
    return errors


def value_errors(config: Any, where: str = "", cls: type | None = None) -> list[str]:
    """Range checks that types cannot express (``cls``: the config class, if ``config`` is not one)."""
    errors = []
    errors += _out_errors(getattr(config, "out", None), cls or type(config), where)

    def check(name: str, ok: bool, allowed: str) -> None:
        if hasattr(config, name) and not ok:
            errors.append(f"{where}{name}: {getattr(config, name)!r} is not allowed ({allowed})")

    for name in (
        "batch_size",
        "grad_accum",
        "max_new_tokens",
        "dar_max_new_tokens",
        "lora_r",
        "lora_alpha",
        "max_length",
        "save_steps",
        "logging_steps",
        "lowres_short_side",
        "judge_concurrency",
        "judge_max_reply_bytes",
    ):
        if getattr(config, name, None) is not None:  # max_new_tokens None: the protocol's
            check(name, getattr(config, name) >= 1, "must be >= 1")
    for name in ("limit", "max_steps", "workers", "gpus"):
        value = getattr(config, name, None)
        check(name, value is None or value >= 1, "must be >= 1 or null")
    gpus = getattr(config, "worker_gpus", None)
    check("worker_gpus", gpus is None or gpus >= 0, "must be >= 0 or null")
    check("worker_cpus", getattr(config, "worker_cpus", 1) > 0, "must be > 0")
    check("ray_timeout", getattr(config, "ray_timeout", 1) > 0, "must be > 0")
    share = getattr(config, "vllm_gpu_memory", 0.9)
    check("vllm_gpu_memory", 0 < share <= 1, "must be in (0, 1]")
    for name in (
        "temperature",
        "lr",
        "beta",
        "alpha",
        "weight_decay",
        "epochs",
        "dataloader_num_workers",
    ):
        if hasattr(config, name):
            check(name, getattr(config, name) >= 0, "must be >= 0")
    for name in (
        "top_p",
        "bad_prompt_prob",
        "lowres_prob",
        "lora_dropout",
        "jitter_brightness",
        "near_duplicate_threshold",
    ):
        if hasattr(config, name):
            check(name, 0 <= getattr(config, name) <= 1, "must be in [0, 1]")
    # transformers reads a warm-up value >= 1 as a number of steps: 1.0 would mean ONE step.
    check("judge_timeout", getattr(config, "judge_timeout", 1) > 0, "must be > 0")
    check("judge_retry_after_max", getattr(config, "judge_retry_after_max", 0) >= 0, "must be >= 0")
    if bool(getattr(config, "judge_url", None)) != bool(getattr(config, "judge_model", None)):
        errors.append(f"{where}judge_url, judge_model: give both or neither")
    ratio = getattr(config, "warmup_ratio", 0)
    check("warmup_ratio", 0 <= ratio < 1, "must be in [0, 1): a fraction of the training steps")
    check("jitter_hue", 0 <= getattr(config, "jitter_hue", 0) <= 0.5, "must be in [0, 0.5]")
    check("beta", getattr(config, "beta", 1) > 0, "must be > 0")
    if (
        getattr(config, "adapter", None)
        and getattr(config, "reference", None) == "start"
        and getattr(config, "precompute_reference", None) == "off"
    ):
        errors.append(
            f"{where}precompute_reference: 'off' is not allowed with adapter and reference "
            "'start' (the starting adapter's log-probs are computed once, before training; "
            "use auto or on, or reference: base)"
        )
    targets = getattr(config, "lora_targets", None)
    if isinstance(targets, str):
        check("lora_targets", any(n.strip() for n in targets.split(",")), "must name a layer")
    shard = getattr(config, "shard", None)
    if isinstance(shard, str):
        from stic.runtime.shards import parse_shard

        try:
            parse_shard(shard)
        except ValueError as e:
            errors.append(f"{where}shard: {e}")
    if (
        getattr(config, "accelerate_config", None)
        and getattr(config, "launcher", "") != "accelerate"
    ):
        errors.append(f"{where}accelerate_config: only read with launcher: accelerate")
    for name in ("model", "images", "out", "pairs", "data", "adapter", "ray", "accelerate_config"):
        value = getattr(config, name, None)
        if isinstance(value, str) and not value.strip():
            errors.append(f"{where}{name}: must not be empty")
    return errors


def _out_errors(out: Any, cls: type, where: str) -> list[str]:
    """An output path whose suffix says another kind of output than the stage writes."""
    suffixes = getattr(cls, "OUT_SUFFIXES", None)
    if not isinstance(out, str) or not out.strip() or suffixes is None:
        return []
    suffix = Path(out).suffix
    if suffixes and suffix not in suffixes:
        return [
            f"{where}out: {out!r} must end with {' or '.join(suffixes)} (the stage writes a file)"
        ]
    if not suffixes and suffix in FILE_SUFFIXES:
        return [
            f"{where}out: {out!r} must be a folder, not a {suffix} file (the stage writes a folder)"
        ]
    return []


def build(cls: type, data: dict, where: str = "") -> Any:
    """Build stage config ``cls`` from a dict (a YAML section), validating every key.

    Raises :class:`ConfigError` listing all problems at once (unknown keys, wrong types, missing
    keys, values out of range); ``where`` prefixes each key (``"dpo."``).
    """
    errors = type_errors(cls, data, where)
    fields = dataclasses.fields(cls)
    errors += [
        f"{where}{f.name}: required"
        for f in fields
        if f.name not in data
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    # Range checks on every value that has the right type (defaults for the rest).
    bad = {line.split(":", 1)[0].removeprefix(where) for line in errors}
    values = {f.name: f.default for f in fields if f.default is not dataclasses.MISSING}
    values.update({k: v for k, v in data.items() if k not in bad})
    errors += value_errors(types.SimpleNamespace(**values), where, cls)
    if errors:
        raise ConfigError("\n".join(errors))
    return cls(**data)
