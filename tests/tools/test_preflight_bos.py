"""The preflight's BOS check on several tiny families: stic's training sequence starts with the
BOS token once when the tokenizer adds one, as the template's own tokenization does in vLLM's
chat path and TRL (``add_special_tokens=False``) when the template writes it; a template that
writes none for such a tokenizer is a warning naming those clients; twice or missing fails."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

import stic.modeling.chat
from stic.tools import preflight
from stic.tools.preflight import FAIL, PASS, WARN, Probe


def _probe(folder) -> Probe:
    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    return Probe(model, processor, preflight.sample_images(), 2048, ["q_proj"])


def _first_ids(probe: Probe) -> list[int]:
    """The first tokens of the sequence stic trains on (row 0 of the probe's batch)."""
    row = preflight._rows(probe)[0]
    batch = stic.modeling.chat.encode_rows(probe.processor, [row], probe.max_length)
    return batch["input_ids"][0].tolist()[:3]


@pytest.mark.parametrize(
    ("family", "status", "starts_with_bos"),
    [
        ("llava", WARN, True),  # the template writes no <s>, the tokenizer adds one
        ("llava_next", WARN, True),
        ("qwen2_vl", PASS, False),  # no BOS token at all
        ("idefics3", PASS, True),  # the template writes the BOS itself
        pytest.param("mllama", PASS, True, marks=pytest.mark.slow),
        pytest.param("aya_vision", PASS, True, marks=pytest.mark.slow),
    ],
)
def test_bos_once_on_each_family(tiny_model_factory, family, status, starts_with_bos):
    probe = _probe(tiny_model_factory(family))
    row = preflight.check_bos(probe)
    assert row.status == status, row
    tokenizer = probe.processor.tokenizer
    ids = _first_ids(probe)
    bos = tokenizer.bos_token_id
    # Whatever the family: never two BOS tokens, and one exactly when the tokenizer adds one.
    assert (ids[0] == bos) == starts_with_bos and ids[1] != bos, ids
    if status == WARN:
        assert "vLLM's chat path and TRL's DPOTrainer feed none" in row.detail
        assert "{{ bos_token }}" in row.advice


def test_a_template_that_writes_the_bos_passes_and_matches_the_other_clients(
    tiny_model_factory,
):
    probe = _probe(tiny_model_factory("llava"))
    probe.processor.chat_template = "{{ bos_token }}" + probe.processor.chat_template
    row = preflight.check_bos(probe)
    assert row.status == PASS and "written by the template" in row.detail, row
    rendered = "".join(text for text, _ in preflight._rows(probe)[0].segments)
    theirs = probe.processor.tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert (
        _first_ids(probe)[:2] == theirs[:2] == [probe.processor.tokenizer.bos_token_id, theirs[1]]
    )


def test_bos_twice_fails(tiny_model_factory):
    probe = _probe(tiny_model_factory("llava"))
    probe.processor.chat_template = "{{ bos_token }}{{ bos_token }}" + probe.processor.chat_template
    row = preflight.check_bos(probe)
    assert row.status == FAIL and "2 times" in row.detail and row.advice, row


def test_bos_missing_fails(tiny_model_factory, monkeypatch):
    probe = _probe(tiny_model_factory("llava"))
    process = stic.modeling.chat.process

    def without_bos(processor, texts, images, padding_side="right"):
        # A tokenization that forgets the BOS the tokenizer adds (as a bug in stic would).
        batch = process(processor, texts, images, padding_side)
        for key in ("input_ids", "attention_mask"):
            batch[key] = batch[key][:, 1:]
        return batch

    monkeypatch.setattr(stic.modeling.chat, "process", without_bos)
    row = preflight.check_bos(probe)
    assert row.status == FAIL and "no '<s>'" in row.detail, row


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "idefics3"])
def test_vllm_generate_is_fed_the_sequence_stic_trains_on(tiny_model_factory, family):
    # LLM.generate tokenizes a text prompt with special tokens (add_special_tokens=True).
    from stic.modeling.backends import vllm_prompt_text
    from stic.modeling.chat import process, render_prompt

    processor = AutoProcessor.from_pretrained(tiny_model_factory(family))
    for template in (processor.chat_template, "{{ bos_token }}" + processor.chat_template):
        processor.chat_template = template
        text = render_prompt(processor, "What is it?", with_image=False)
        ours = process(processor, [text], [None])["input_ids"][0].tolist()
        vllm = processor.tokenizer(vllm_prompt_text(processor, text))["input_ids"]
        assert vllm == ours, (family, template[:20])


def test_shipped_demo_template_writes_the_bos_and_trains_on_the_same_tokens():
    # The shipped weights were trained with llava-hf's pair (the template writes no BOS, the
    # tokenizer adds it). With the BOS written by the template and none added by the tokenizer
    # every training batch is the same, token for token, so the shipped weights are what
    # `stic demo-model` builds now (no rebuild needed).
    from PIL import Image
    from tokenizers.processors import TemplateProcessing

    from stic.data.prompts import strip_image_placeholder
    from stic.demo.base_model import (
        BaseModelRecipe,
        check_world,
        demo_chat_template,
        labeled_samples,
        shipped_base_path,
    )
    from stic.modeling.chat import TrainRow, encode_rows, render_segments
    from stic.testing import LLAVA_CHAT_TEMPLATE

    shipped = shipped_base_path()
    assert (shipped / "chat_template.jinja").read_text() == demo_chat_template()
    new = AutoProcessor.from_pretrained(shipped)
    old = AutoProcessor.from_pretrained(shipped)
    old.chat_template = LLAVA_CHAT_TEMPLATE
    old.tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", new.tokenizer.bos_token_id)]
    )
    assert old.tokenizer("a")["input_ids"][0] == new.tokenizer.bos_token_id  # as trained
    assert new.tokenizer("a")["input_ids"][0] != new.tokenizer.bos_token_id  # as shipped now
    assert (
        new.chat_template.startswith("{{ bos_token }}") and old.chat_template != new.chat_template
    )
    recipe = BaseModelRecipe(**check_world(shipped))
    samples = labeled_samples(recipe)[::97]  # every prompt kind and conversation length
    image = Image.new("RGB", (recipe.image_size, recipe.image_size), (90, 120, 150))

    def batch(processor):
        rows = [
            TrainRow(
                render_segments(
                    processor, [(strip_image_placeholder(q), a) for q, a in s.exchanges()], True
                ),
                image,
            )
            for s in samples
        ]
        return encode_rows(processor, rows, recipe.max_length)

    ours, before = batch(new), batch(old)
    bos = new.tokenizer.bos_token_id
    assert len(samples) > 40 and (ours["input_ids"][:, 0] == bos).all()
    assert not (ours["input_ids"][:, 1] == bos).any()
    for key in ("input_ids", "attention_mask", "labels"):
        assert torch.equal(ours[key], before[key]), key
    # Every client feeds that one BOS: vLLM's chat path and TRL (no special tokens added),
    # lmms-eval's llava_hf and vLLM's LLM.generate (special tokens added), the processor.
    text = "".join(t for t, _ in render_segments(new, [("Hi", "Yes.")], False))
    for add in (False, True):
        assert new.tokenizer(text, add_special_tokens=add)["input_ids"][:2] == [
            bos,
            ours_second(new, text),
        ]
    assert new(text=text)["input_ids"][0][:2] == [bos, ours_second(new, text)]


def ours_second(processor, text: str) -> int:
    """The token after the BOS in the text's own tokenization."""
    return processor.tokenizer(text, add_special_tokens=False)["input_ids"][1]


@pytest.mark.slow
def test_preflight_bos_passes_on_the_shipped_demo_model():
    from stic.demo.base_model import shipped_base_path

    row = preflight.check_bos(_probe(shipped_base_path()))
    assert row.status == PASS and "(the tokenizer adds none)" in row.detail, row
