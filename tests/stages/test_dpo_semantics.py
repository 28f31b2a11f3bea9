"""Stage 1b trains in the right direction: tests that fail when the method is silently inverted.

tests/stages/test_dpo.py checks the structure of a run (files, adapter, logs, resume). These
tests check its meaning, each against a computation made independently of the trainer:

- the collator puts the chosen answers first and the rejected ones second;
- a few steps at a visible learning rate raise log pi(chosen) - log pi(rejected) over the base
  model's, measured afterwards on freshly loaded weights;
- the reference is the base model: with a NON-zero adapter (so a reference pass that kept the
  adapter on would differ) and LoRA dropout 0, the loss equals one computed by hand from the
  base model's and the adapted model's log-probs, including the mean-normalised NLL term, whose
  divisor is the chosen answer's own token count read from the labels;
- reference log-probs computed once before training give the per-step loss and gradients.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from stic.config import DPOConfig
from stic.data.prompts import BAD_PROMPTS, GOOD_PROMPT, PLAIN_PROMPTS
from stic.data.schemas import PairRecord
from stic.modeling.chat import IGNORE_INDEX, TrainRow, encode_rows, render_segments
from stic.modeling.losses import answer_logps
from stic.runtime.files import append_jsonl, read_jsonl
from stic.runtime.images import load_image
from stic.stages.dpo import (
    REFERENCE,
    DPOTrainer,
    PairCollator,
    WithReference,
    precompute_reference_logps,
    reference_is_exact,
    run_dpo,
)
from stic.testing import make_images

pytestmark = pytest.mark.slow

# Chosen and rejected answers of clearly different lengths (in tokens), so that dividing by the
# wrong side's length changes the mean-normalised NLL.
ANSWERS = [
    ("A red circle on the left.", "A red circle, a blue square, a green triangle and a cat."),
    (
        "A yellow square in the center of the image, next to a small purple triangle.",
        "A dog.",
    ),
    ("Two blue triangles.", "Two blue triangles, three people and a car parked at the top."),
    ("One white circle at the bottom right.", "Nothing."),
]
# Larger than the paper's 0.1 so that a reference pass with the adapter on moves the loss far
# beyond the comparison's tolerance.
BETA = 1.0
LORA_LAYERS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"


@pytest.fixture(scope="module")
def llava(tiny_model_factory) -> Path:
    return tiny_model_factory("llava")


@pytest.fixture(scope="module")
def pair_files(tmp_path_factory) -> tuple[Path, Path, list[PairRecord]]:
    """(pairs.jsonl, images folder, the records): hand-written pairs on four images."""
    root = tmp_path_factory.mktemp("dpo_semantics")
    images = root / "images"
    paths = make_images(images, len(ANSWERS), seed=5)
    pairs = [
        PairRecord(
            id=path.name,
            image=path.name,
            prompt=PLAIN_PROMPTS[i],
            chosen=chosen,
            rejected=rejected,
            rejected_kind="bad_prompt",
            chosen_prompt=GOOD_PROMPT,
            rejected_prompt=BAD_PROMPTS[i],
        )
        for i, (path, (chosen, rejected)) in enumerate(zip(paths, ANSWERS, strict=True))
    ]
    out = root / "pairs.jsonl"
    out.write_text("".join(json.dumps(p.to_dict()) + "\n" for p in pairs))
    return out, images, pairs


def _load_base(llava):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(llava, dtype=torch.float32)
    return model.eval(), AutoProcessor.from_pretrained(llava)


def _answer_batch(processor, images: Path, pairs: list[PairRecord], side: str) -> dict:
    """One row per pair: its stored prompt and image, answered with ``side`` (built by hand,
    not by the collator under test)."""
    rows = [
        TrainRow(
            render_segments(processor, [(p.prompt, getattr(p, side))], with_image=True),
            load_image(images / p.image),
        )
        for p in pairs
    ]
    return encode_rows(processor, rows, max_length=512)


@torch.no_grad()
def _logps(model, batch: dict) -> torch.Tensor:
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    return answer_logps(model(**inputs).logits, batch["labels"])[0]


def _answer_token_counts(labels: torch.Tensor) -> torch.Tensor:
    """Tokens that are scored: every labelled position but the first (nothing predicts it)."""
    return (labels[:, 1:] != IGNORE_INDEX).sum(-1)


# ----------------------------------------------------------------------------- the collator


def test_collator_puts_the_chosen_answers_first_and_the_rejected_ones_second(llava, pair_files):
    _, images, pairs = pair_files
    _, processor = _load_base(llava)
    batch = PairCollator(processor, str(images), max_length=512)(pairs[:3])
    num = 3
    assert batch["labels"].shape[0] == 2 * num
    tokenizer = processor.tokenizer
    decoded = [
        tokenizer.decode(row[row != IGNORE_INDEX], skip_special_tokens=True).strip()
        for row in batch["labels"]
    ]
    assert decoded[:num] == [p.chosen for p in pairs[:3]]
    assert decoded[num:] == [p.rejected for p in pairs[:3]]
    # Both halves answer the same stored prompt about the same image.
    for i, pair in enumerate(pairs[:3]):
        for row in (i, i + num):
            prompt_ids = batch["input_ids"][row][batch["labels"][row] == IGNORE_INDEX]
            assert pair.prompt in tokenizer.decode(prompt_ids, skip_special_tokens=True)
        assert torch.equal(batch["pixel_values"][i], batch["pixel_values"][i + num])


# ----------------------------------------------------------------------------- the direction


def test_training_raises_the_chosen_over_rejected_margin_against_the_base(
    llava, pair_files, tmp_path
):
    from peft import PeftModel

    pairs_path, images, pairs = pair_files
    out = tmp_path / "stage1"
    run_dpo(
        DPOConfig(
            model=str(llava),
            pairs=str(pairs_path),
            images=str(images),
            out=str(out),
            max_steps=4,
            batch_size=2,
            grad_accum=1,
            lr=1e-2,
            warmup_ratio=0.0,
            lora_r=4,
            lora_alpha=8,
            lora_dropout=0.0,
            alpha=1 / 1024,
            logging_steps=1,
            save_steps=100,
        )
    )
    base, processor = _load_base(llava)
    chosen = _answer_batch(processor, images, pairs, "chosen")
    rejected = _answer_batch(processor, images, pairs, "rejected")
    margin_base = _logps(base, chosen) - _logps(base, rejected)

    trained_base, _ = _load_base(llava)
    trained = PeftModel.from_pretrained(trained_base, str(out)).eval()
    margin_trained = _logps(trained, chosen) - _logps(trained, rejected)

    gain = margin_trained - margin_base
    # Every pair moved toward its chosen answer, by a visible amount (nats of log-prob).
    assert (gain > 0.5).all(), gain.tolist()


# ----------------------------------------------------------------------------- the loss


@pytest.fixture(scope="module")
def adapted(llava):
    """A LoRA model whose adapter is NOT zero (B random), dropout 0, and its processor."""
    from stic.modeling.models import add_lora

    model, processor = _load_base(llava)
    peft_model = add_lora(model, r=4, alpha=8, dropout=0.0, layer_names=LORA_LAYERS.split(","))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            # Both LoRA matrices from a seeded generator: the result must not depend on the
            # global RNG (test order); B random, so the adapter is not the identity.
            if "lora_A" in name or "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    return peft_model.eval(), processor


def _trainer(model, tmp_path, nll_coef: float, normalization: str) -> DPOTrainer:
    from transformers import TrainingArguments

    args = TrainingArguments(
        output_dir=str(tmp_path / "trainer"), report_to="none", use_cpu=True, save_strategy="no"
    )
    return DPOTrainer(
        model=model,
        args=args,
        beta=BETA,
        nll_coef=nll_coef,
        nll_normalization=normalization,
    )


@pytest.mark.parametrize("normalization", ["sum", "mean"])
def test_loss_uses_the_base_model_as_reference_and_the_chosen_lengths(
    llava, pair_files, adapted, tmp_path, normalization
):
    _, images, pairs = pair_files
    model, processor = adapted
    batch = PairCollator(processor, str(images), max_length=512)(pairs)
    num = len(pairs)
    # Summed log-probs are tens of nats: a small weight keeps the DPO term visible in the sum.
    nll_coef = {"sum": 1 / 64, "mean": 0.5}[normalization]

    # Independent log-probs: the adapted model, and a freshly loaded base model (no adapter).
    base, _ = _load_base(llava)
    policy = _logps(model, batch)
    reference = _logps(base, batch)
    assert (policy - reference).abs().max() > 0.1, "the adapter must change the log-probs"
    chosen_tokens = _answer_token_counts(batch["labels"][:num])
    rejected_tokens = _answer_token_counts(batch["labels"][num:])
    assert (chosen_tokens != rejected_tokens).all()  # the fixture's answers differ in length

    def by_hand(ref: torch.Tensor) -> float:
        z = BETA * ((policy[:num] - ref[:num]) - (policy[num:] - ref[num:]))
        nll = -policy[:num] / (chosen_tokens if normalization == "mean" else 1)
        return (-F.logsigmoid(z) + nll_coef * nll).mean().item()

    trainer = _trainer(model, tmp_path, nll_coef, normalization)
    with torch.no_grad():
        loss = trainer.compute_loss(model, dict(batch)).item()
    assert math.isfinite(loss)
    assert loss == pytest.approx(by_hand(reference), rel=1e-5, abs=1e-6)
    # The check can tell: a reference pass that kept the adapter on gives another value.
    assert abs(by_hand(policy) - by_hand(reference)) > 0.05


# ----------------------------------------------------------------------------- reference computed once


def _loss_and_grads(model, trainer, batch) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad()
    model.train()  # as the Trainer runs it: the per-step reference pass is in train mode too
    loss = trainer.compute_loss(model, dict(batch))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.eval()
    return loss.item(), grads


def _appender(path):
    """What the stage's output object does with the rows: append them, fsynced, to ``path``."""
    return functools.partial(append_jsonl, path)


def test_precomputed_reference_gives_the_per_step_loss_and_gradients(pair_files, adapted, tmp_path):
    _, images, pairs = pair_files
    model, processor = adapted
    for param_name, param in model.named_parameters():
        param.requires_grad_("lora_" in param_name)
    collator = PairCollator(processor, str(images), max_length=512)
    # Scored one pair at a time, in reverse order: other padding than the training batch.
    path = tmp_path / REFERENCE
    reference = precompute_reference_logps(
        model, pairs[::-1], collator, path, "m", batch_size=1, append=_appender(path)
    )
    trainer = _trainer(model, tmp_path, nll_coef=1 / 64, normalization="sum")
    batch = collator(pairs)
    loss, grads = _loss_and_grads(model, trainer, batch)
    with_reference = WithReference(collator, reference)(pairs)
    assert with_reference["reference_logps"].shape == (2 * len(pairs),)
    loss_pre, grads_pre = _loss_and_grads(model, trainer, with_reference)
    assert loss_pre == pytest.approx(loss, rel=1e-5, abs=1e-6)
    assert grads.keys() == grads_pre.keys() and grads
    for name, grad in grads.items():
        torch.testing.assert_close(grads_pre[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    # The stored values are the reference's: another (wrong) reference gives another loss.
    shifted = {k: (c + 1.0, r) for k, (c, r) in reference.items()}
    wrong, _ = _loss_and_grads(model, trainer, WithReference(collator, shifted)(pairs))
    assert abs(wrong - loss) > 1e-3


def test_reference_logps_resume_and_are_keyed_by_model(pair_files, adapted, tmp_path):
    _, images, pairs = pair_files
    model, processor = adapted
    collator = PairCollator(processor, str(images), max_length=512)
    path = tmp_path / REFERENCE
    first = precompute_reference_logps(
        model, pairs[:2], collator, path, "m", batch_size=2, append=_appender(path)
    )
    calls = []
    counting = lambda chunk: calls.append(len(chunk)) or collator(chunk)  # noqa: E731
    both = precompute_reference_logps(
        model, pairs, counting, path, "m", batch_size=4, append=_appender(path)
    )
    assert calls == [len(pairs) - 2]  # only the pairs not stored yet
    assert {k: both[k] for k in first} == first
    assert [r["id"] for r in read_jsonl(path)] == [p.id for p in pairs]
    calls.clear()
    precompute_reference_logps(
        model, pairs, counting, path, "another model", batch_size=4, append=_appender(path)
    )
    assert calls == [len(pairs)]  # another model's values are not reused


def test_exactness_is_decided_by_the_base_models_dropout(llava):
    from stic.modeling.models import add_lora

    model, _ = _load_base(llava)
    peft_model = add_lora(model, r=4, alpha=8, dropout=0.3, layer_names=LORA_LAYERS.split(","))
    assert reference_is_exact(peft_model)  # LoRA dropout never reaches the reference
    next(m for m in peft_model.modules() if hasattr(m, "attention_dropout")).attention_dropout = 0.1
    assert not reference_is_exact(peft_model)


def test_a_dpo_run_stores_its_reference_and_says_so(llava, pair_files, tmp_path):
    pairs_path, images, pairs = pair_files
    config = DPOConfig(
        model=str(llava),
        pairs=str(pairs_path),
        images=str(images),
        out=str(tmp_path / "dpo"),
        max_steps=2,
        batch_size=2,
        lora_r=4,
        lora_alpha=8,
        save_steps=100,
        logging_steps=1,
    )
    summary = run_dpo(config)
    assert summary.details["reference"] == "precomputed"
    rows = read_jsonl(tmp_path / "dpo" / REFERENCE)
    assert sorted(r["id"] for r in rows) == sorted(p.id for p in pairs)
    assert all(json.loads(r["model"])["model"] == str(llava) for r in rows)
    off = run_dpo(
        DPOConfig(
            **{**config.__dict__, "out": str(tmp_path / "off"), "precompute_reference": "off"}
        )
    )
    assert off.details["reference"] == "per step"
    assert not (tmp_path / "off" / REFERENCE).exists()
