"""One packed sequence per pair (stic.stages.shared_prefix) computes what two sequences compute.

- the mask and positions of a packed row, against hand-written ones;
- the collator: prefix once, then the chosen and the rejected answer, each cut as alone;
- per family (fp32, eager and sdpa, a batch of pairs of unequal lengths, so rows are padded):
  per-answer log-probs, the loss and the LoRA gradients of the packed form equal the
  two-sequence form's within 1e-5 relative, with a NON-zero adapter;
- activations kept for the backward pass per pair do not grow on a long-prefix model, and
  gradient checkpointing gives the same gradients;
- which runs share (auto / on / off) and that a run records it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from stic.config import DPOConfig
from stic.data.schemas import PairRecord
from stic.modeling.chat import IGNORE_INDEX
from stic.modeling.losses import dpo_nll_loss
from stic.modeling.models import add_lora
from stic.runtime.identity import config_hash
from stic.stages.dpo import PairCollator, run_dpo
from stic.stages.shared_prefix import (
    EXACT_FAMILIES,
    SharedPairCollator,
    pair_attention_mask,
    pair_logps,
    pair_positions,
    use_shared_prefix,
)
from stic.testing import make_images

# Unequal answer lengths (in tokens, both ways round) so rows of a batch pad differently.
ANSWERS = [
    ("A red circle on the left.", "A red circle, a blue square, a green triangle and a cat."),
    ("A dog.", "Two blue triangles, three people and a car parked at the top of the hill."),
    ("One white circle at the bottom right of the picture.", "Nothing."),
]
# fp32 sums of a few hundred terms, reordered: rounding is ~1e-7 relative (float64 weights give
# 0.0 for most answers: the rest is answer_logps' float32 log-softmax). Gradients are compared
# as whole tensors (norm of the difference over the norm): they sum many contributions that
# cancel, so a single element can lose more digits than the tensor.
RELATIVE = 1e-5
GRADIENT_FP32 = 1e-4
# float64 weights and activations: transformers still computes rotary tables in float32, whose
# rounding (vectorised cos/sin over rows of other lengths) is what is left (up to ~5e-8 seen;
# the rejected answer seeing the chosen one moves its log-prob by ~1e-3).
FP64 = 1e-6


@pytest.fixture(scope="module")
def pairs_on_images(tmp_path_factory) -> tuple[Path, list[PairRecord]]:
    images = tmp_path_factory.mktemp("shared_prefix_images")
    paths = make_images(images, len(ANSWERS), seed=2)
    pairs = [
        PairRecord(
            id=f"pair-{i}",
            image=path.name,
            prompt="Describe the image in detail.",
            chosen=chosen,
            rejected=rejected,
            rejected_kind="bad_prompt",
            chosen_prompt="Describe.",
            rejected_prompt="Imagine.",
        )
        for i, (path, (chosen, rejected)) in enumerate(zip(paths, ANSWERS, strict=True))
    ]
    return images, pairs


def _model(folder: Path, attention: str = "eager"):
    """The tiny model in fp32 with a LoRA adapter whose B matrices are not zero (so it acts)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(
        folder, dtype=torch.float32, attn_implementation=attention
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # LoRA A's initialisation, whatever ran before
        model = add_lora(
            model,
            r=4,
            alpha=8,
            dropout=0.0,
            layer_names=["q_proj", "v_proj", "up_proj", "down_proj"],
        )
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if "lora_B" in name:
                weight.copy_(torch.randn(weight.shape, generator=generator) * 0.05)
    return model.eval(), AutoProcessor.from_pretrained(folder)


def _loss_and_grads(model, batch) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """(logps (2P,), loss, LoRA gradients) of one batch, the reference being the base model."""
    model.zero_grad()
    with torch.no_grad(), model.disable_adapter():
        reference, _ = pair_logps(model, batch)
    policy, tokens = pair_logps(model, batch)
    pairs = policy.shape[0] // 2
    loss, _ = dpo_nll_loss(
        policy[:pairs],
        policy[pairs:],
        reference[:pairs],
        reference[pairs:],
        tokens[:pairs],
        beta=1.0,
        nll_coef=0.5,
        nll_normalization="mean",
    )
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return policy.detach(), loss.detach(), grads


def _assert_close(shared: torch.Tensor, two: torch.Tensor, relative: float = RELATIVE) -> None:
    scale = two.abs().max().clamp(min=1e-12)
    assert ((shared - two).abs().max() / scale).item() < relative


def _assert_same_gradient(shared: torch.Tensor, two: torch.Tensor, relative: float) -> None:
    if two.norm() == 0:  # a layer the loss does not reach (e.g. a cross-attention without images)
        assert shared.norm() == 0
        return
    assert ((shared - two).norm() / two.norm()).item() < relative


def _to_float64(batch: dict) -> dict:
    return {k: v.double() if v.is_floating_point() else v for k, v in batch.items()}


# ----------------------------------------------------------------------------- mask, positions


def test_the_mask_lets_each_answer_see_the_prefix_and_itself_only():
    # prefix 2, chosen 2, rejected 1, padding 1 (P = 1, T = 6); hand-written: 1 = may attend.
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0],  # prefix
            [1, 1, 0, 0, 0, 0],  # prefix
            [1, 1, 1, 0, 0, 0],  # chosen
            [1, 1, 1, 1, 0, 0],  # chosen
            [1, 1, 0, 0, 1, 0],  # rejected: the prefix and itself, not the chosen answer
            [1, 1, 0, 0, 0, 1],  # padding: never an empty row
        ],
        dtype=torch.bool,
    )
    mask = pair_attention_mask(torch.tensor([[2, 2, 1]]), 6, torch.float32)
    assert mask.shape == (1, 1, 6, 6)
    assert torch.equal(mask[0, 0] == 0, expected)
    assert mask[0, 0][~expected].eq(torch.finfo(torch.float32).min).all()


def test_positions_restart_the_rejected_answer_at_the_prefix_end():
    model = torch.nn.Linear(1, 1)  # no get_rope_index: 1-D positions
    inputs = {
        "input_ids": torch.zeros(2, 7, dtype=torch.long),
        "attention_mask": torch.ones(2, 7, dtype=torch.long),
        "pair_spans": torch.tensor([[3, 2, 2], [2, 1, 3]]),
    }
    positions = pair_positions(model, inputs)
    assert positions[0].tolist() == [0, 1, 2, 3, 4, 3, 4]
    assert positions[1].tolist()[:6] == [0, 1, 2, 2, 3, 4]


# ----------------------------------------------------------------------------- the collator


def test_the_collator_packs_prefix_chosen_rejected_and_cuts_each_answer_as_alone(
    tiny_model_factory, pairs_on_images
):
    from transformers import AutoProcessor

    images, pairs = pairs_on_images
    processor = AutoProcessor.from_pretrained(tiny_model_factory("llava"))
    tokenizer = processor.tokenizer
    two = PairCollator(processor, str(images), max_length=512)(pairs)
    packed = SharedPairCollator(processor, str(images), max_length=512)(pairs)
    assert packed["input_ids"].shape[0] == len(pairs)
    assert packed["pixel_values"].shape[0] == len(pairs)  # each image once
    for i, (prefix, chosen, rejected) in enumerate(packed["pair_spans"].tolist()):
        row = packed["input_ids"][i]
        alone_chosen = two["input_ids"][i][two["attention_mask"][i].bool()]
        alone_rejected = two["input_ids"][len(pairs) + i][
            two["attention_mask"][len(pairs) + i].bool()
        ]
        assert torch.equal(row[: prefix + chosen], alone_chosen)
        assert torch.equal(
            row[prefix + chosen : prefix + chosen + rejected], alone_rejected[prefix:]
        )
        assert int(packed["attention_mask"][i].sum()) == prefix + chosen + rejected
        labels = packed["labels"][i]
        text = [
            tokenizer.decode(part[part != IGNORE_INDEX], skip_special_tokens=True).strip()
            for part in (labels[: prefix + chosen], labels[prefix + chosen :])
        ]
        assert text == [pairs[i].chosen, pairs[i].rejected]
    # A max_length that cuts the answers cuts each one to what it keeps alone.
    short = int(packed["pair_spans"][:, 0].max()) + 4
    two = PairCollator(processor, str(images), max_length=short)(pairs)
    packed = SharedPairCollator(processor, str(images), max_length=short)(pairs)
    alone = two["attention_mask"].sum(-1).tolist()
    spans = packed["pair_spans"].tolist()
    assert [p + c for p, c, _ in spans] == alone[: len(pairs)]
    assert [p + r for p, _, r in spans] == alone[len(pairs) :]


# ----------------------------------------------------------------------------- exactness


FAMILY_CASES = [
    pytest.param(family, attention, marks=[] if family == "llava" else [pytest.mark.slow])
    for family in sorted(EXACT_FAMILIES)
    for attention in ("eager", "sdpa")
]


@pytest.mark.parametrize(("family", "attention"), FAMILY_CASES)
def test_packed_pairs_give_the_two_sequence_logps_loss_and_gradients(
    family, attention, tiny_model_factory, pairs_on_images
):
    images, pairs = pairs_on_images
    model, processor = _model(tiny_model_factory(family), attention)
    two = PairCollator(processor, str(images), max_length=512)(pairs)
    packed = SharedPairCollator(processor, str(images), max_length=512)(pairs)
    assert packed["input_ids"].shape[0] == len(pairs)
    two_logps, two_loss, two_grads = _loss_and_grads(model, two)
    logps, loss, grads = _loss_and_grads(model, packed)
    _assert_close(logps, two_logps)
    _assert_close(loss, two_loss)
    assert grads.keys() == two_grads.keys() and grads
    for name, grad in grads.items():
        _assert_same_gradient(grad, two_grads[name], GRADIENT_FP32)
    # The reference pass with the adapter disabled really differs (the adapter acts), so the
    # equalities above compare adapted log-probs, not base ones.
    with torch.no_grad(), model.disable_adapter():
        base, _ = pair_logps(model, packed)
    assert (base - logps).abs().max() > 1e-3
    # In float64 the forms agree to float64 rounding: the float32 differences are rounding only.
    model.double()
    two_logps, two_loss, two_grads = _loss_and_grads(model, _to_float64(two))
    logps, loss, grads = _loss_and_grads(model, _to_float64(packed))
    assert logps.dtype == torch.float64
    _assert_close(logps, two_logps, FP64)
    _assert_close(loss, two_loss, FP64)
    for name, grad in grads.items():
        _assert_same_gradient(grad, two_grads[name], FP64)


def test_a_rejected_answer_that_saw_the_chosen_one_would_be_caught(
    tiny_model_factory, pairs_on_images
):
    # The same comparison with a mask that lets the rejected answer see the chosen one differs:
    # the exactness test above can fail.
    images, pairs = pairs_on_images
    model, processor = _model(tiny_model_factory("llava"))
    packed = SharedPairCollator(processor, str(images), max_length=512)(pairs)
    two = PairCollator(processor, str(images), max_length=512)(pairs)
    with torch.no_grad():
        right, _ = pair_logps(model, two)
        inputs = {k: v for k, v in packed.items() if k not in ("labels", "pair_spans")}
        causal_logits = model(**inputs).logits  # plain causal mask, no restarted positions
    from stic.stages.shared_prefix import shared_answer_logps

    wrong, _ = shared_answer_logps(causal_logits, packed["labels"], packed["pair_spans"])
    pairs_n = len(pairs)
    assert ((wrong[pairs_n:] - right[pairs_n:]).abs() / right[pairs_n:].abs()).max() > RELATIVE
    assert torch.allclose(wrong[:pairs_n], right[:pairs_n], rtol=RELATIVE)  # chosen: unaffected


# ----------------------------------------------------------------------------- memory


def _saved_bytes(model, batch) -> int:
    """Bytes of the tensors autograd keeps for the backward pass (activations), counted once each."""
    seen: dict[tuple[int, int], int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        seen[(storage.data_ptr(), storage.nbytes())] = storage.nbytes()
        return tensor

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logps, _ = pair_logps(model, batch)
    logps.sum().backward()
    model.zero_grad()
    return sum(seen.values())


@pytest.mark.slow
def test_activation_memory_per_pair_does_not_grow_with_a_long_prefix(
    tiny_model_factory, pairs_on_images
):
    images, pairs = pairs_on_images
    model, processor = _model(tiny_model_factory("llava_next"), "sdpa")
    two = PairCollator(processor, str(images), max_length=512)(pairs)
    packed = SharedPairCollator(processor, str(images), max_length=512)(pairs)
    # any-resolution tiles: the prefix is most of each row
    assert packed["pair_spans"][:, 0].min() > packed["pair_spans"][:, 1:].sum(-1).max()
    assert _saved_bytes(model, packed) < _saved_bytes(model, two)


@pytest.mark.slow
def test_gradient_checkpointing_gives_the_same_gradients(tiny_model_factory, pairs_on_images):
    images, pairs = pairs_on_images
    model, processor = _model(tiny_model_factory("qwen2_vl"))
    packed = SharedPairCollator(processor, str(images), max_length=512)(pairs)
    _, loss, grads = _loss_and_grads(model, packed)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    model.train()  # checkpointing acts in training mode only (LoRA dropout is 0 here)
    _, checkpointed_loss, checkpointed = _loss_and_grads(model, packed)
    _assert_close(checkpointed_loss, loss)
    for name, grad in grads.items():
        _assert_same_gradient(checkpointed[name], grad, GRADIENT_FP32)


# ----------------------------------------------------------------------------- who shares


def _fake_model(family: str, attention: str = "sdpa"):
    text = SimpleNamespace(_attn_implementation=attention)
    config = SimpleNamespace(model_type=family, get_text_config=lambda: text)
    return SimpleNamespace(config=config)


def test_auto_shares_for_tested_families_and_says_once_why_it_does_not(caplog):
    with caplog.at_level(logging.INFO, logger="stic.stages.shared_prefix"):
        assert use_shared_prefix("auto", _fake_model("llava_next"))
        assert not use_shared_prefix("auto", _fake_model("lfm2_vl"))
        assert not use_shared_prefix("auto", _fake_model("llava", "flash_attention_2"))
        assert not use_shared_prefix("auto", _fake_model("some_new_vlm"))
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 3
    assert "short convolutions" in said[0] and "flash_attention_2" in said[1]
    assert "not tested" in said[2]
    assert not use_shared_prefix("off", _fake_model("llava"))
    assert use_shared_prefix("on", _fake_model("some_new_vlm"))
    with pytest.raises(ValueError, match="share_prefix: on.*flash_attention_2"):
        use_shared_prefix("on", _fake_model("llava", "flash_attention_2"))


def test_share_prefix_is_validated_by_name_and_left_out_of_the_hash(tmp_path):
    from stic.config import type_errors

    errors = type_errors(DPOConfig, {"share_prefix": "yes"}, "dpo")
    assert any("share_prefix" in e and "'auto'" in e for e in errors)
    base = DPOConfig(pairs="p.jsonl", images="i", out=str(tmp_path / "o"), model="m")
    assert config_hash(base) == config_hash(dataclasses.replace(base, share_prefix="off"))


@pytest.mark.slow
def test_a_run_records_how_it_packed_and_trains_the_same_either_way(
    tiny_model_factory, pairs_on_images, tmp_path
):
    images, pairs = pairs_on_images
    pairs_file = tmp_path / "pairs.jsonl"
    pairs_file.write_text("".join(json.dumps(p.to_dict()) + "\n" for p in pairs))
    summaries, losses = {}, {}
    for mode in ("auto", "off"):
        config = DPOConfig(
            pairs=str(pairs_file),
            images=str(images),
            out=str(tmp_path / mode),
            model=str(tiny_model_factory("llava")),
            dtype="float32",
            batch_size=3,
            max_steps=2,
            lr=1e-3,
            lora_r=4,
            lora_alpha=8,
            lora_dropout=0.0,
            logging_steps=1,
            share_prefix=mode,
            **{f: False for f in ("filter_near_duplicates", "filter_refusals")},
        )
        summaries[mode] = run_dpo(config)
        log = json.loads((tmp_path / mode / "train_log.json").read_text())
        # the metrics, not the Trainer's "loss" (rounded to 4 decimals)
        losses[mode] = torch.tensor(
            [[e["loss/dpo"], e["logps/chosen"]] for e in log if "loss/dpo" in e],
            dtype=torch.float64,
        )
    assert summaries["auto"].details["prefix"] == "shared"
    assert summaries["off"].details["prefix"] == "two sequences"
    assert len(losses["off"]) == 2
    # Step 0 exactly as above; step 1 after an Adam step, which can amplify rounding in
    # near-zero gradients (sign(g) updates), hence a looser bound there.
    _assert_close(losses["auto"][0], losses["off"][0])
    assert torch.allclose(losses["auto"], losses["off"], rtol=1e-4, atol=0)
