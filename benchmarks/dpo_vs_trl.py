"""DPO pairs/s side by side: TRL's DPOTrainer, stic with two sequences per pair, stic with the
shared prefix, and stic with the shared prefix and the precomputed reference.

The same job for every trainer: the same tiny model (built offline, random weights), the same
pairs (one image file each, all the same picture; the chosen answer the same text for every pair
so that TRL's token-mean "sft" term and stic's per-pair mean NLL are the same number, whichever
pairs each sampler draws first), LoRA r=8 on every linear layer of
the language model (dropout 0), beta, NLL weight, batch, steps, learning rate and optimizer.
TRL gets ``loss_type=["sigmoid", "sft"]`` with ``loss_weights=[1, alpha]``; stic
``nll_normalization="mean"`` with ``alpha``. Both run in the model's precision, mixed precision
only for a bf16/fp16 model on CUDA (stic's rule; TRL's configs would default to bf16 autocast,
even on CPU). Their step-0 losses are printed side by side: equal losses mean the trainers scored
the same tokens in the same precision (tests/benchmarks/test_dpo_vs_trl.py checks it).

Families, shaped like the real ones in what matters here (the prefix is most of a pair's tokens):
a LLaVA-NeXT-shaped model (any-resolution tiles: base + 4 tiles of 64 image tokens, ~340 in
all), a LLaVA-1.5-shaped one (256 image tokens) and a Qwen2-VL-shaped one (144 merged image
tokens, M-RoPE); a 4-layer, 256-wide language model; answers of tens of tokens.

    python benchmarks/dpo_vs_trl.py [--families llava_next llava qwen2_vl] [--rounds 3]

Figures are pairs/s of ``Trainer.train()`` (model loading not counted), median [min-max] over
interleaved rounds (benchmarks/measure.py), each ratio taken within a round. "+ precomputed"
also shows pairs/s counting its one-time reference pass over the same pairs.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from measure import LoadMonitor, interleaved, ratios, spread  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

LORA_LAYERS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
BETA = 0.1
ALPHA = 0.5  # large enough that a different NLL term would show in the step-0 losses
LR = 1e-5
PROMPT = "Describe the image in detail."
CHOSEN = (
    "A red circle on the left and a blue square at the top right of the image, "
    "next to a small green triangle near the bottom edge."
)
REJECTED = [
    "A cat sleeping on a sofa.",
    "A red circle, a cat, a tree and a car parked next to a green house on a sunny day.",
    "Two people walking a dog along a beach at sunset, with boats far away on the water.",
    "Nothing but a plain grey wall.",
]
TEXT = {
    "hidden_size": 256,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 32,
    "intermediate_size": 512,
    "num_hidden_layers": 4,
}
# image side in pixels and the changes to the tiny family that give its image-token count
SHAPES = {
    "llava_next": {"image": 64, "patch": 4},  # base + 4 tiles of (32/4)^2 = 64 tokens, + newlines
    "llava": {"image": 32, "patch": 2},  # (32/2)^2 = 256 tokens
    "qwen2_vl": {"image": 336, "pixels": 336 * 336},  # (336/14)^2 / 2^2 = 144 merged tokens
}


def template_writes_bos(folder: Path) -> None:
    """Make the chat template of the model in ``folder`` write the BOS token itself, as the real
    LLaVA templates do: TRL tokenizes the rendered prompt without special tokens, stic adds BOS
    only where the template does not, so both trainers then score the same token ids."""
    bos = json.loads((folder / "tokenizer_config.json").read_text()).get("bos_token")
    template = folder / "chat_template.jinja"
    if bos and not template.read_text().startswith(bos):
        template.write_text(bos + template.read_text())


def shaped_model(family: str, folder: Path) -> Path:
    """A tiny ``family`` model built offline, reshaped: wider language model, more image tokens."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    from stic.testing import build_tiny_model

    build_tiny_model(family, folder)
    shape = SHAPES[family]
    config = json.loads((folder / "config.json").read_text())
    config["text_config"].update(TEXT)
    if "layer_types" in config["text_config"]:
        kinds = config["text_config"]["layer_types"]
        config["text_config"]["layer_types"] = kinds[:1] * TEXT["num_hidden_layers"]
    processor = json.loads((folder / "processor_config.json").read_text())
    if "patch" in shape:
        config["vision_config"]["patch_size"] = shape["patch"]
        processor["patch_size"] = shape["patch"]
    if family == "qwen2_vl":
        config["text_config"]["rope_parameters"]["mrope_section"] = [8, 4, 4]  # head_dim / 2
        config["vision_config"]["hidden_size"] = TEXT["hidden_size"]
        image_processor = processor["image_processor"]
        image_processor["size"] = {"shortest_edge": 28 * 28, "longest_edge": shape["pixels"]}
        for key in ("max_pixels",):
            if key in image_processor:
                image_processor[key] = shape["pixels"]
    template_writes_bos(folder)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "processor_config.json").write_text(json.dumps(processor))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(folder))
    model.save_pretrained(folder)
    return folder


def make_pairs(count: int, side: int, images: Path) -> list:
    from stic.data.prompts import BAD_PROMPTS, GOOD_PROMPT
    from stic.data.schemas import PairRecord

    images.mkdir(parents=True, exist_ok=True)
    pairs = []
    for i in range(count):
        # The same picture in every file: whichever pairs a trainer's sampler puts first, its
        # step-0 loss is the same number (the DPO term is log 2 there, the NLL term the chosen
        # answer's, the same text for every pair).
        image = Image.new("RGB", (side, side), (40, 120, 200))
        ImageDraw.Draw(image).ellipse(
            (side // 8, side // 8, side // 2, side // 2), fill=(200, 30, 30)
        )
        image.save(images / f"img_{i:03d}.png")
        pairs.append(
            PairRecord(
                id=f"pair-{i}",
                image=f"img_{i:03d}.png",
                prompt=PROMPT,
                chosen=CHOSEN,
                rejected=REJECTED[i % len(REJECTED)],
                rejected_kind="bad_prompt",
                chosen_prompt=GOOD_PROMPT,
                rejected_prompt=BAD_PROMPTS[0],
            )
        )
    return pairs


def load(folder: Path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from stic.modeling.models import add_lora

    model = AutoModelForImageTextToText.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="sdpa"
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = add_lora(model, r=8, alpha=16, dropout=0.0, layer_names=LORA_LAYERS)
    return model, AutoProcessor.from_pretrained(folder)


def recording(trainer_class):
    """``trainer_class`` whose first loss is kept in ``first_loss``."""

    class Recording(trainer_class):
        first_loss: float | None = None

        def compute_loss(self, *args, **kwargs):
            loss = super().compute_loss(*args, **kwargs)
            value = loss[0] if isinstance(loss, tuple) else loss
            if self.first_loss is None:
                self.first_loss = value.item()
            return loss

    return Recording


def trainer_options(
    out: Path, batch: int, steps: int, dtype: torch.dtype, gradient_checkpointing: bool = False
) -> dict:
    """The Trainer arguments both trainers get, for a model of ``dtype``."""
    return dict(
        output_dir=str(out),
        per_device_train_batch_size=batch,
        max_steps=steps,
        learning_rate=LR,
        lr_scheduler_type="constant",
        report_to="none",
        save_strategy="no",
        logging_steps=10**6,
        use_cpu=not torch.cuda.is_available(),
        remove_unused_columns=False,
        seed=0,
        # Mixed precision by stic's rule (stic.stages.training.training_arguments): only for a
        # bf16/fp16 model on CUDA, the same for both trainers. TRL's configs default to bf16=True,
        # autocast even on CPU: left at that, TRL's forward ran its matmuls and convolutions in
        # bf16 while stic's ran in fp32, and the step-0 losses differed by 8e-6 to 1.1e-4
        # relative, of either sign, on the same tokens.
        bf16=dtype == torch.bfloat16 and torch.cuda.is_available(),
        fp16=dtype == torch.float16 and torch.cuda.is_available(),
        gradient_checkpointing=gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if gradient_checkpointing else None,
    )


def run_trl(
    loader, pairs, images: Path, batch: int, steps: int, out: Path, checkpointing: bool = False
) -> dict:
    """TRL's DPOTrainer on ``pairs``; ``loader()`` gives a fresh (LoRA model, processor)."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    model, processor = loader()
    rows = [
        {
            "images": [Image.open(images / p.image).convert("RGB")],
            "prompt": [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": p.prompt}]}
            ],
            "chosen": [{"role": "assistant", "content": [{"type": "text", "text": p.chosen}]}],
            "rejected": [{"role": "assistant", "content": [{"type": "text", "text": p.rejected}]}],
        }
        for p in pairs
    ]
    trainer = recording(DPOTrainer)(
        model=model,
        args=DPOConfig(
            **trainer_options(out, batch, steps, model.dtype, checkpointing),
            beta=BETA,
            loss_type=["sigmoid", "sft"],
            loss_weights=[1.0, ALPHA],
            max_length=None,
        ),
        train_dataset=Dataset.from_list(rows),
        processing_class=processor,
    )
    started = time.perf_counter()
    trainer.train()
    return {"seconds": time.perf_counter() - started, "first_loss": trainer.first_loss}


def run_stic(
    loader,
    pairs,
    images: Path,
    batch: int,
    steps: int,
    out: Path,
    mode: str,
    checkpointing: bool = False,
) -> dict:
    """stic's DPOTrainer on ``pairs``: ``mode`` off (two sequences), on (shared prefix) or
    precomputed (shared prefix and the reference log-probs computed once before training)."""
    from transformers import TrainingArguments

    from stic.stages.dpo import DPOTrainer, PairCollator, WithReference, precompute_reference_logps
    from stic.stages.shared_prefix import SharedPairCollator

    model, processor = loader()
    make = PairCollator if mode == "off" else SharedPairCollator
    collator = make(processor, str(images), 4096)
    pass_seconds = 0.0
    if mode == "precomputed":
        started = time.perf_counter()
        reference = precompute_reference_logps(
            model,
            pairs,
            collator,
            out / f"reference-{time.time_ns()}.jsonl",
            "bench",
            batch_size=batch,
            append=lambda rows: None,
        )
        pass_seconds = time.perf_counter() - started
        collator = WithReference(collator, reference)
    trainer = recording(DPOTrainer)(
        model=model,
        args=TrainingArguments(**trainer_options(out, batch, steps, model.dtype, checkpointing)),
        train_dataset=pairs,
        data_collator=collator,
        beta=BETA,
        nll_coef=ALPHA,
        nll_normalization="mean",
    )
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "first_loss": trainer.first_loss, "pass_seconds": pass_seconds}


def prefix_share(folder: Path, pairs, images: Path) -> tuple[float, float]:
    """Mean prefix tokens and answer tokens (chosen + rejected) per pair."""
    from transformers import AutoProcessor

    from stic.stages.shared_prefix import SharedPairCollator

    spans = SharedPairCollator(AutoProcessor.from_pretrained(folder), str(images), 4096)(pairs)[
        "pair_spans"
    ].float()
    return spans[:, 0].mean().item(), spans[:, 1:].sum(-1).mean().item()


def activation_mib(folder: Path, pairs, images: Path, batch: int) -> dict[str, float]:
    """MiB per pair that autograd keeps for the backward pass (each storage once), both forms.

    Counted with ``torch.autograd.graph.saved_tensors_hooks`` over one policy forward of a
    batch: what a step holds between its forward and its backward, on any device.
    """
    from stic.stages.dpo import PairCollator
    from stic.stages.shared_prefix import SharedPairCollator, pair_logps

    model, processor = load(folder)
    model.train()
    figures = {}
    for name, make in (("two sequences", PairCollator), ("shared prefix", SharedPairCollator)):
        seen: dict[tuple[int, int], int] = {}

        def keep(tensor, seen=seen):
            storage = tensor.untyped_storage()
            seen[(storage.data_ptr(), storage.nbytes())] = storage.nbytes()
            return tensor

        batch_inputs = make(processor, str(images), 4096)(pairs[:batch])
        with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
            logps, _ = pair_logps(model, batch_inputs)
        logps.sum().backward()
        figures[name] = sum(seen.values()) / 2**20 / batch
    return figures


CONFIGS = (
    "TRL DPOTrainer",
    "stic, two sequences",
    "stic, shared prefix",
    "stic, shared + precomputed",
)


def bench_family(family: str, root: Path, args) -> dict:
    folder = shaped_model(family, root / family / "model")
    images = root / family / "images"
    pairs = make_pairs(args.batch * args.steps, SHAPES[family]["image"], images)
    prefix, answers = prefix_share(folder, pairs, images)
    memory = activation_mib(folder, pairs, images, args.batch)
    figures = compare_trainers(
        lambda: load(folder),
        pairs,
        images,
        args.batch,
        args.steps,
        root / family / "out",
        args.rounds,
    )
    return {
        "family": family,
        "prefix_tokens": prefix,
        "answer_tokens": answers,
        **figures,
        "activation_mib_per_pair": memory,
    }


def compare_trainers(
    loader,
    pairs,
    images: Path,
    batch: int,
    steps: int,
    out: Path,
    rounds: int,
    checkpointing: bool = False,
) -> dict:
    """The four trainers on the same job, ``rounds`` interleaved rounds: pairs/s of each (median
    and range), the ratios within a round, and each trainer's step-0 loss (first round)."""
    count = batch * steps
    runs = {
        CONFIGS[0]: lambda: run_trl(loader, pairs, images, batch, steps, out, checkpointing),
        **{
            name: lambda mode=mode: run_stic(
                loader, pairs, images, batch, steps, out, mode, checkpointing
            )
            for name, mode in zip(CONFIGS[1:], ("off", "on", "precomputed"), strict=True)
        },
    }
    results: dict[str, list[dict]] = {name: [] for name in runs}

    def once(name):
        def call() -> float:
            result = runs[name]()
            results[name].append(result)
            return count / result["seconds"]

        return call

    figures = interleaved({name: once(name) for name in runs}, rounds)
    with_pass = [count / (r["seconds"] + r["pass_seconds"]) for r in results[CONFIGS[3]]]
    return {
        "pairs_per_s": {name: spread(values) for name, values in figures.items()},
        "precomputed_with_pass": spread(with_pass),
        "vs_trl": {name: ratios(figures, name, CONFIGS[0]) for name in CONFIGS[1:]},
        "shared_vs_two": ratios(figures, CONFIGS[2], CONFIGS[1]),
        "first_loss": {name: results[name][0]["first_loss"] for name in runs},
    }


def print_family(result: dict, args) -> None:
    print(
        f"\n{result['family']}: {args.steps} steps x {args.batch} pairs; prefix "
        f"{result['prefix_tokens']:.0f} tokens, answers {result['answer_tokens']:.0f} tokens per pair"
    )
    print(f"{'':30} {'pairs/s':>22} {'x TRL':>20} {'step-0 loss':>12}")
    for name in CONFIGS:
        ratio = "1" if name == CONFIGS[0] else str(result["vs_trl"][name])
        print(
            f"{name:30} {str(result['pairs_per_s'][name]):>22} {ratio:>20} "
            f"{result['first_loss'][name]:>12.6f}"
        )
    print(f"{'  + its one-time reference pass':30} {str(result['precomputed_with_pass']):>22}")
    print(f"shared prefix vs two sequences: {result['shared_vs_two']}x")
    losses = result["first_loss"]
    gap = abs(losses[CONFIGS[0]] - losses[CONFIGS[1]]) / abs(losses[CONFIGS[1]])
    print(f"step-0 loss, TRL vs stic two sequences: {gap:.1e} relative (float32 ulp ~1.2e-7)")
    memory = result["activation_mib_per_pair"]
    print(
        "activations kept for backward, MiB per pair: "
        + ", ".join(f"{name} {value:.1f}" for name, value in memory.items())
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds (A B C D A B C D ...)"
    )
    args = parser.parse_args()
    import transformers
    import trl

    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}; "
        f"{torch.get_num_threads()} threads; "
        f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}; fp32, sdpa"
    )
    with LoadMonitor() as monitor, tempfile.TemporaryDirectory() as tmp:
        for family in args.families:
            print_family(bench_family(family, Path(tmp), args), args)
    print(monitor.report())


if __name__ == "__main__":
    main()
