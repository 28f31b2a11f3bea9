"""The demo's base model: a tiny LLaVA-1.5 trained from nothing on the synthetic world.

Built the way real LVLMs are, in miniature, by ``stic demo-model`` (about the recipe's
``minutes`` on two CPU cores; the result ships in the package as ``stic/demo/tiny_llava``):

1. A tokenizer trained with ``tokenizers`` on the world's texts and STIC's prompts, with a
   LLaVA-1.5 chat template (``<s>USER: <image>\\n... ASSISTANT: ...</s>``) that writes the BOS
   token itself, which the tokenizer does not add (:func:`demo_chat_template`).
2. A CLIP vision tower pre-trained on abundant synthetic images (the stand-in for CLIP's web-scale
   pre-training, free here): per grid cell it must tell the object (colour and shape, or none)
   and its size, plus the background. Then frozen, as LLaVA freezes CLIP.
3. The projector and language model instruction-tuned on a LIMITED labeled set
   (:func:`labeled_samples`), every prompt kind STIC will use: plain and good description
   prompts, misleading prompts, VQA conversations and description-infused questions. In the
   labeled scenes each anchor object has its usual (small, faint) companion ``companion_rate``
   (70%) of the time, in unlabeled and test scenes 35% (:class:`stic.demo.world.Priors`), and the
   plain-prompt captions name the companion even when it is absent (``caption_prior_rate``:
   captions written from habit, as web captions are), while answers to the careful
   step-by-step prompt are always faithful. Its questions never name an absent companion
   (``ask_absent_companions``), as LLaVA's instruction data almost never asks about an object
   the image lacks. So the model learns the co-occurrence prior and invents the companion in
   its plain descriptions: the hallucination STIC is meant to reduce, with a careful prompt
   that elicits better descriptions, STIC's premise.

Everything is seeded; the same recipe, torch version and thread count give the same weights.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, replace
from importlib import resources
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from stic.data import prompts
from stic.data.prompts import strip_image_placeholder
from stic.data.schemas import InstructSample
from stic.demo import world
from stic.modeling.chat import TrainRow, encode_rows, render_segments
from stic.runtime.output import Output
from stic.runtime.rng import item_rng

logger = logging.getLogger(__name__)

SHIPPED = "tiny_llava"
RECIPE_FILE = "stic_recipe.json"


@dataclass(frozen=True)
class BaseModelRecipe:
    """Everything that decides the base model's weights."""

    seed: int = 0
    image_size: int = 48
    # One patch per grid cell: each image token holds one cell's object, as a CLIP token
    # holds a region.
    patch_size: int = 16
    vision_hidden: int = 128
    vision_layers: int = 3
    text_hidden: int = 128
    text_layers: int = 3
    vocab_size: int = 1200
    # Vision pre-training: fresh scenes every step (synthetic data is free). 1,200 steps read
    # small objects 96% right on the probe (300 steps: 68%), a strong frozen tower like CLIP.
    vision_steps: int = 1200
    vision_batch: int = 128
    vision_lr: float = 2e-3
    # Instruction tuning on the limited labeled set, where an anchor's companion is present
    # this often (test and unlabeled scenes: 0.35).
    labeled_scenes: int = 600
    companion_rate: float = 0.7
    # VQA conversations per labeled scene (each with its own distractors and order).
    qa_conversations: int = 3
    # Share of plain-prompt captions of scenes lacking an anchor's companion that name it
    # anyway (captions written from habit); good-prompt answers are always faithful.
    caption_prior_rate: float = 1.0
    # Whether labeled questions ever name an absent companion (existence questions, multiple-
    # choice distractors). LLaVA's instruction data almost never asks about an object the image
    # lacks, which is why LVLMs answer "yes" to POPE's co-occurring distractors.
    ask_absent_companions: bool = False
    tune_epochs: int = 14
    tune_batch: int = 32
    tune_lr: float = 1e-3
    max_length: int = 400


def shipped_base_path() -> Path:
    """The base model folder that ships inside the package."""
    return Path(str(resources.files("stic.demo") / SHIPPED))


# ----------------------------------------------------------------------------- data


def world_corpus() -> list[str]:
    """Texts the tokenizer is trained on: STIC's prompts and everything the world writes."""
    texts = [prompts.GOOD_PROMPT, *prompts.BAD_PROMPTS, *prompts.PLAIN_PROMPTS]
    texts += [prompts.SHORT_ANSWER_INSTRUCTION, prompts.CHOICE_INSTRUCTION]
    texts += [prompts.DESCRIPTION_HEADER, "USER: ASSISTANT:"]
    for scene in world.make_scenes(12345, "labeled", 300):
        rng = item_rng(12345, scene.id, "corpus")
        samples = world.instruction_samples(scene, rng)
        for sample in samples.values():
            texts += [turn.value for turn in sample.conversations]
    return texts


def labeled_scenes(recipe: BaseModelRecipe) -> list[world.Scene]:
    """The limited labeled set the base model is instruction-tuned on."""
    priors = world.Priors(p_labeled=recipe.companion_rate)
    return world.make_scenes(
        recipe.seed, "labeled", recipe.labeled_scenes, priors=priors, size=recipe.image_size
    )


def labeled_samples(recipe: BaseModelRecipe) -> list[InstructSample]:
    """The base model's instruction data, per labeled scene: one sample of every prompt kind
    (:func:`stic.demo.world.instruction_samples`; the plain caption from :func:`prior_caption` when
    the scene lacks an anchor's companion, ``caption_prior_rate`` of the time) and
    ``qa_conversations`` multi-turn conversations asking every VQA question about the scene and
    :func:`existence_questions` (LLaVA's instruction data is mostly such conversations)."""
    out = []
    ask = recipe.ask_absent_companions
    for scene in labeled_scenes(recipe):
        rng = item_rng(recipe.seed, scene.id, "base-instructions")
        samples = world.instruction_samples(scene, rng, ask_absent_companions=ask)
        noisy = recipe.caption_prior_rate and scene.absent_companions()
        if noisy and rng.random() < recipe.caption_prior_rate:
            samples["plain"] = prior_caption(samples["plain"], scene, rng)
        out += list(samples.values())
        for k in range(recipe.qa_conversations):
            items = world.vqa_items(scene, rng, ask) + existence_questions(scene, rng, ask)
            rng.shuffle(items)
            sample_id = f"{scene.id}-vqa" + (f"{k}" if k else "")
            out.append(world.vqa_conversation(sample_id, items, f"{scene.id}.png"))
    return out


def prior_caption(sample: InstructSample, scene: world.Scene, rng) -> InstructSample:
    """``sample`` (a plain-prompt description) answered as if the scene had its absent prior
    companion: the caption an annotator writes from habit."""
    extra = world.invented_objects(scene, rng, 1)
    objects = tuple(sorted(scene.objects + tuple(extra), key=lambda o: o.cell))
    text = world.describe_detailed(replace(scene, objects=objects))
    human = sample.conversations[0]
    return replace(sample, conversations=(human, replace(sample.conversations[1], value=text)))


def existence_questions(scene: world.Scene, rng, ask_absent_companions: bool = True) -> list[dict]:
    """Yes/no questions about every object in the scene and as many absent ones (an absent
    prior companion first unless ``ask_absent_companions`` is false, then near misses: a present
    shape in another colour or a present colour on another shape, never an unasked
    companion). Answering "is there X?" means matching both words to the image, which the tiny
    model learns slowly; LLaVA's data are full of such questions."""
    kinds = scene.kinds()
    asked = [(kind, "yes") for kind in sorted(kinds)]
    companions = scene.absent_companions()
    absent = list(companions) if ask_absent_companions else []
    while len(absent) < len(asked):
        obj = rng.choice(scene.objects)
        if rng.random() < 0.5:
            kind = (rng.choice(sorted(world.COLOURS)), obj.shape)
        else:
            kind = (obj.colour, rng.choice(world.SHAPES))
        if kind not in kinds and kind not in absent and kind not in companions:
            absent.append(kind)
    asked += [(kind, "no") for kind in absent]
    return [
        {
            "id": f"{scene.id}-exists-{i}",
            "question": f"Is there a {colour} {shape}?",
            "answer": answer,
            "type": "exists",
        }
        for i, ((colour, shape), answer) in enumerate(asked)
    ]


def vision_targets(scene: world.Scene) -> dict[str, torch.Tensor]:
    """Per-cell object class (0 = empty, else 1 + colour x shape index) and size, plus background."""
    kinds = [(c, s) for c in world.COLOURS for s in world.SHAPES]
    cls = torch.zeros(world.GRID * world.GRID, dtype=torch.long)
    size = torch.full((world.GRID * world.GRID,), -100, dtype=torch.long)
    for obj in scene.objects:
        cell = obj.cell[0] * world.GRID + obj.cell[1]
        cls[cell] = 1 + kinds.index(obj.kind)
        size[cell] = world.SIZES.index(obj.size_class)
    background = sorted(world.BACKGROUNDS).index(scene.background) * 2 + sorted(
        world.NOISE_STD
    ).index(scene.noise)
    return {"cls": cls, "size": size, "background": torch.tensor(background)}


# ----------------------------------------------------------------------------- model


def demo_chat_template() -> str:
    """LLaVA-1.5's chat template, starting with the BOS token (the tokenizer adds none).

    llava-hf's template writes no BOS and leaves it to the tokenizer, which adds one: stic and
    transformers' processor then feed ``<s>USER: ...``, while vLLM's chat path and TRL's
    DPOTrainer, which tokenize the rendered text without special tokens, feed ``USER: ...``
    (TRL's chosen log-prob -2.57 where stic's was -0.96 on one pair). A template that writes the
    BOS for a tokenizer that adds one too gives two to the clients that tokenize the rendered
    text with special tokens (lmms-eval's ``llava_hf``, vLLM's ``LLM.generate`` on text). With
    the BOS in the template and none added by the tokenizer (:func:`no_added_bos`), every client
    feeds it once, and stic trains on the same tokens as with llava-hf's pair.
    """
    from stic.testing import LLAVA_CHAT_TEMPLATE

    return "{{ bos_token }}" + LLAVA_CHAT_TEMPLATE


def no_added_bos(tokenizer) -> None:
    """Make ``tokenizer`` add no special tokens to a text (:func:`demo_chat_template` writes the
    BOS); it is saved so in ``tokenizer.json``."""
    from tokenizers.processors import TemplateProcessing

    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(single="$A", pair="$A $B:1")


def build_untrained(recipe: BaseModelRecipe):
    """A random LlavaForConditionalGeneration and its processor, from the recipe."""
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    from stic.testing import build_tokenizer

    tokenizer = build_tokenizer("llava", world_corpus(), vocab_size=recipe.vocab_size)
    no_added_bos(tokenizer)  # the template writes it
    patches = (recipe.image_size // recipe.patch_size) ** 2
    vision = CLIPVisionConfig(
        hidden_size=recipe.vision_hidden,
        intermediate_size=recipe.vision_hidden * 2,
        num_hidden_layers=recipe.vision_layers,
        num_attention_heads=4,
        image_size=recipe.image_size,
        patch_size=recipe.patch_size,
        projection_dim=recipe.vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=recipe.text_hidden,
        intermediate_size=recipe.text_hidden * 3,
        num_hidden_layers=recipe.text_layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids(prompts.IMAGE_TOKEN),
        image_seq_length=patches,
        vision_feature_select_strategy="default",
        # The last layer: the vision tower is pre-trained to make its read-out there.
        vision_feature_layer=-1,
    )
    model = LlavaForConditionalGeneration(config)
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": recipe.image_size},
            crop_size={"height": recipe.image_size, "width": recipe.image_size},
        ),
        tokenizer=tokenizer,
        patch_size=recipe.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=demo_chat_template(),
    )
    return model, processor


class VisionProbe(nn.Module):
    """Read-out heads on the vision tower's patch features: per cell (mean of its patches) the
    object class and size, and the background from the mean of all patches."""

    def __init__(self, hidden: int, grid_patches: int):
        super().__init__()
        kinds = len(world.COLOURS) * len(world.SHAPES)
        self.grid_patches = grid_patches
        self.cls = nn.Linear(hidden, kinds + 1)
        self.size = nn.Linear(hidden, len(world.SIZES))
        self.background = nn.Linear(hidden, len(world.BACKGROUNDS) * len(world.NOISE_STD))

    def forward(self, patches: torch.Tensor) -> dict[str, torch.Tensor]:
        b, n, h = patches.shape
        g = self.grid_patches
        side = g // world.GRID
        grid = patches.reshape(b, g, g, h)
        cells = grid.reshape(b, world.GRID, side, world.GRID, side, h).mean(dim=(2, 4))
        cells = cells.reshape(b, world.GRID * world.GRID, h)
        return {
            "cls": self.cls(cells),
            "size": self.size(cells),
            "background": self.background(patches.mean(dim=1)),
        }


def _patch_features(vision_tower, pixel_values: torch.Tensor) -> torch.Tensor:
    out = vision_tower(pixel_values=pixel_values, output_hidden_states=True)
    return out.hidden_states[-1][:, 1:]  # what LLaVA's "default" strategy passes on


def _scene_batch(scenes, processor, device) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    images = [world.render(s) for s in scenes]
    pixels = processor.image_processor(images, return_tensors="pt")["pixel_values"]
    targets = [vision_targets(s) for s in scenes]
    stacked = {k: torch.stack([t[k] for t in targets]).to(device) for k in targets[0]}
    return pixels.to(device), stacked


def pretrain_vision(model, processor, recipe: BaseModelRecipe, progress: bool = True) -> dict:
    """Train the vision tower on fresh synthetic scenes; returns held-out probe accuracies."""
    tower = model.model.vision_tower
    grid_patches = recipe.image_size // recipe.patch_size
    device = next(tower.parameters()).device
    probe = VisionProbe(recipe.vision_hidden, grid_patches).to(device)
    params = list(tower.parameters()) + list(probe.parameters())
    optimizer = torch.optim.AdamW(params, lr=recipe.vision_lr, weight_decay=0.01)
    schedule = _cosine(optimizer, recipe.vision_steps)
    loss_fn = nn.CrossEntropyLoss(ignore_index=-100)
    tower.train()
    bar = tqdm(range(recipe.vision_steps), desc="vision pre-training", disable=not progress)
    for step in bar:
        scenes = world.make_scenes(
            recipe.seed * 100_003 + step, "unlabeled", recipe.vision_batch, size=recipe.image_size
        )
        pixels, targets = _scene_batch(scenes, processor, device)
        logits = probe(_patch_features(tower, pixels))
        loss = sum(
            loss_fn(logits[k].reshape(-1, logits[k].shape[-1]), targets[k].reshape(-1))
            for k in logits
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    tower.eval()
    for p in tower.parameters():
        p.requires_grad_(False)
    return probe_accuracy(tower, probe, processor, recipe)


@torch.no_grad()
def probe_accuracy(tower, probe, processor, recipe: BaseModelRecipe) -> dict:
    """Accuracy of the read-out on held-out scenes: object class per cell, by object size."""
    scenes = world.make_scenes(recipe.seed + 777, "test", 512, size=recipe.image_size)
    pixels, targets = _scene_batch(scenes, processor, next(tower.parameters()).device)
    logits = probe(_patch_features(tower, pixels))
    pred = logits["cls"].argmax(-1)
    occupied = targets["cls"] > 0
    small = occupied & (targets["size"] == world.SIZES.index("small"))
    large = occupied & (targets["size"] == world.SIZES.index("large"))
    right = pred == targets["cls"]
    return {
        "cell_accuracy": right.float().mean().item(),
        "object_accuracy": right[occupied].float().mean().item(),
        "small_object_accuracy": right[small].float().mean().item(),
        "large_object_accuracy": right[large].float().mean().item(),
        "background_accuracy": (logits["background"].argmax(-1) == targets["background"])
        .float()
        .mean()
        .item(),
    }


def _cosine(optimizer, total: int, warmup: float = 0.05):
    warm = max(1, int(total * warmup))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def instruction_tune(model, processor, recipe: BaseModelRecipe, progress: bool = True) -> dict:
    """Train projector and language model on :func:`labeled_samples` (answers only)."""
    samples = labeled_samples(recipe)
    scenes = {s.id: s for s in labeled_scenes(recipe)}
    images = {f"{sid}.png": world.render(scene) for sid, scene in scenes.items()}
    rows = []
    for sample in samples:
        exchanges = [(strip_image_placeholder(q), a) for q, a in sample.exchanges()]
        rows.append(TrainRow(render_segments(processor, exchanges, True), images[sample.image]))
    trainable = [p for n, p in model.named_parameters() if "vision_tower" not in n]
    for p in model.model.vision_tower.parameters():
        p.requires_grad_(False)
    device = next(model.parameters()).device
    steps_per_epoch = math.ceil(len(rows) / recipe.tune_batch)
    total = steps_per_epoch * recipe.tune_epochs
    optimizer = torch.optim.AdamW(trainable, lr=recipe.tune_lr, weight_decay=0.0)
    schedule = _cosine(optimizer, total, warmup=0.03)
    generator = torch.Generator().manual_seed(recipe.seed)
    model.train()
    model.model.vision_tower.eval()
    losses = []
    bar = tqdm(total=total, desc="instruction tuning", disable=not progress)
    for _ in range(recipe.tune_epochs):
        order = torch.randperm(len(rows), generator=generator).tolist()
        for start in range(0, len(rows), recipe.tune_batch):
            batch = encode_rows(
                processor,
                [rows[i] for i in order[start : start + recipe.tune_batch]],
                recipe.max_length,
            )
            batch = {k: v.to(device) for k, v in batch.items()}
            loss = model(**batch).loss
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()
    return {
        "samples": len(rows),
        "steps": total,
        "final_loss": sum(losses[-20:]) / len(losses[-20:]),
    }


def world_fingerprint() -> dict:
    """What of :mod:`stic.demo.world` a base model is bound to besides the recipe: how it draws
    companions (the demo's images must be drawn the same way)."""
    return {"companion_contrast": world.COMPANION_CONTRAST}


def check_world(base: str | Path) -> dict:
    """The recipe of the base model in ``base``; raises if it was built for another world."""
    report = json.loads((Path(base) / RECIPE_FILE).read_text())
    built_for = report.get("world")
    if built_for != world_fingerprint():
        raise ValueError(
            f"the base model in {base} was built for a world drawn with {built_for}, but this "
            f"version of stic draws {world_fingerprint()}: rebuild it with `stic demo-model`"
        )
    return report["recipe"]


def build_base_model(
    out: str | Path, recipe: BaseModelRecipe | None = None, progress=True, device: str = "cpu"
) -> dict:
    """Build the base model into ``out`` (model + processor, safetensors); returns a report.

    ``device`` other than the CPU is faster but gives other weights than the shipped ones.
    """
    from transformers import GenerationConfig

    recipe = recipe or BaseModelRecipe()
    out = Path(out)
    start = time.time()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        model, processor = build_untrained(recipe)
        model.to(device)
        probe = pretrain_vision(model, processor, recipe, progress)
        vision_seconds = time.time() - start
        tune = instruction_tune(model, processor, recipe, progress)
    model.generation_config = GenerationConfig(
        bos_token_id=processor.tokenizer.bos_token_id,
        eos_token_id=processor.tokenizer.eos_token_id,
        pad_token_id=processor.tokenizer.pad_token_id,
    )
    model.to("cpu")
    with model_output(out, recipe, device) as output:
        folder = output.staging()  # built whole beside OUT, moved in when complete
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        report = _report(recipe, model, probe, tune, vision_seconds, start, device, folder)
        (folder / RECIPE_FILE).write_text(json.dumps(report, indent=2) + "\n")
        output.finish({"weights_sha256": report["weights_sha256"]})
    return report


def model_output(out: Path, recipe: BaseModelRecipe, device: str) -> Output:
    """``stic demo-model``'s output object: the model folder, made anew each time. A folder that
    an older stic built (its recipe file is there, no manifest) is replaced too."""

    def adopt() -> list[str]:
        return [] if (out / RECIPE_FILE).is_file() else ["it holds no stic demo model"]

    return Output(
        "demo-model",
        {**asdict(recipe), "device": device},
        out=out,
        file=False,
        inputs={},
        adopt=adopt,
        replace=True,
        command="stic demo-model",
    )


def _report(recipe, model, probe, tune, vision_seconds, start, device, folder: Path) -> dict:
    weights = (folder / "model.safetensors").read_bytes()
    report = {
        "recipe": asdict(recipe),
        "world": world_fingerprint(),
        "vision_probe": probe,
        "instruction_tuning": tune,
        "parameters": sum(p.numel() for p in model.parameters()),
        "vision_seconds": round(vision_seconds, 1),
        "seconds": round(time.time() - start, 1),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": device,
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
    }
    return report


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="stic demo-model",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--out",
        default="runs/demo_base",
        help="Folder to write the model to (default: runs/demo_base; the shipped copy is "
        "src/stic/demo/tiny_llava).",
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of everything (default: 0).")
    parser.add_argument(
        "--device",
        default="cpu",
        help="Where to train (default: cpu, which reproduces the shipped weights; cuda is faster).",
    )
    args = parser.parse_args(argv)
    report = build_base_model(args.out, BaseModelRecipe(seed=args.seed), device=args.device)
    print(json.dumps({k: v for k, v in report.items() if k != "recipe"}, indent=2))
    print(f"base model written to {args.out} in {report['seconds']:.0f} s")
    return 0
