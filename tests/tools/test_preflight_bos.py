"""The preflight's BOS check on several tiny families: stic's training sequence starts with the
BOS token once when the tokenizer adds one, as the template's own tokenization does in vLLM's
chat path and TRL (``add_special_tokens=False``) when the template writes it; a template that
writes none for such a tokenizer is a warning naming those clients; twice or missing fails."""

from __future__ import annotations

import pytest
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
