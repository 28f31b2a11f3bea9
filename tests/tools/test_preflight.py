"""``stic doctor --preflight``: every check passes on a sound tiny model, and each one fails, with
what is wrong and what to do, on a model, template or code path broken on purpose."""

from __future__ import annotations

import functools

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

import stic.modeling.chat
import stic.modeling.models
from stic.tools import preflight
from stic.tools.doctor import main
from stic.tools.preflight import FAIL, PASS, Probe

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def llava(tiny_model_factory):
    return tiny_model_factory("llava")


@pytest.fixture
def probe(llava) -> Probe:
    """A fresh model and processor for each test (checks may break or wrap them)."""
    model = AutoModelForImageTextToText.from_pretrained(llava).eval()
    processor = AutoProcessor.from_pretrained(llava)
    return Probe(model, processor, preflight.sample_images(), 2048, TARGETS)


def _row(rows, check):
    return next(r for r in rows if r.check == check)


def test_every_check_passes_on_a_sound_model(probe):
    rows = preflight.run_checks(probe)
    # The tiny LLaVA's template writes no BOS, as llava-hf's does: sound for stic, a warning
    # for vLLM's chat path and TRL (tests/tools/test_preflight_bos.py).
    expected = [preflight.WARN if r.check == "BOS once" else PASS for r in rows]
    assert len(rows) == len(preflight.CHECKS) and [r.status for r in rows] == expected, rows
    assert "A red circle" in _row(rows, "labels = answers").detail  # the answer span, decoded
    assert "16, 16" in _row(rows, "image tokens kept").detail


def _failed(row, *words):
    assert row.status == FAIL, row
    assert row.advice, row
    text = row.detail + " " + row.advice
    assert all(word in text for word in words), row
    assert "\n" not in row.detail


# (a)
def test_template_whose_generation_prompt_is_not_the_assistant_turn_fails(probe):
    probe.processor.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'user' %}USER: "
        "{% for item in m['content'] %}{% if item['type'] == 'image' %}<image>\n"
        "{% else %}{{ item['text'] }}{% endif %}{% endfor %} "
        "{% else %}ASSISTANT: {{ m['content'][0]['text'] }}</s>{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}ASSISTANT (answer briefly):{% endif %}"
    )
    _failed(preflight.check_template_prefixes(probe), "first 1 message", "turn by turn")


# (b)
def test_max_length_below_the_prompt_fails_naming_the_image_tokens(probe):
    probe.max_length = 20
    row = preflight.check_image_tokens(probe)
    _failed(row, "16 of them image tokens", "max_length is 20", "raise --max-length")


def test_processor_making_fewer_image_tokens_than_features_fails(probe):
    probe.processor.patch_size = 16  # 4 image tokens per image; the vision tower makes 16 features
    _failed(preflight.check_image_tokens(probe), "8 image tokens", "32 image features")


def test_truncation_that_drops_an_image_token_fails(probe, monkeypatch):
    real = stic.modeling.chat.encode_rows
    image_id = probe.model.config.image_token_id

    def lossy(processor, rows, max_length):
        batch = real(processor, rows, max_length)
        first = (batch["input_ids"][0] == image_id).nonzero()[0, 0]
        batch["input_ids"][0, first] = processor.tokenizer.pad_token_id
        return batch

    monkeypatch.setattr(stic.modeling.chat, "encode_rows", lossy)
    _failed(preflight.check_image_tokens(probe), "[15, 16] image tokens", "made [16, 16]")


# (c)
def test_a_processor_tensor_the_forward_does_not_take_fails(probe, monkeypatch):
    real = stic.modeling.chat.encode_rows

    def with_extra(processor, rows, max_length):
        batch = real(processor, rows, max_length)
        batch["pixel_attention_mask"] = torch.ones(2, 32, 32, dtype=torch.long)
        return batch

    monkeypatch.setattr(stic.modeling.chat, "encode_rows", with_extra)
    _failed(
        preflight.check_inputs_reach_forward(probe),
        "pixel_attention_mask",
        "LlavaForConditionalGeneration.forward",
        "never see",
    )


# (d)
def test_a_model_that_attends_to_left_padding_fails(probe):
    forward = probe.model.forward

    @functools.wraps(forward)
    def ignore_padding(*args, **kwargs):
        kwargs["attention_mask"] = None  # every position attends to the pad tokens too
        return forward(*args, **kwargs)

    probe.model.forward = ignore_padding
    _failed(preflight.check_batched_generation(probe), "batched", "alone", "--batch-size 1")


# (e)
def test_labels_on_a_prompt_token_fail(probe, monkeypatch):
    real = stic.modeling.chat.encode_rows

    def leaky(processor, rows, max_length):
        batch = real(processor, rows, max_length)
        batch["labels"][0, 1] = batch["input_ids"][0, 1]  # a prompt token trained on
        return batch

    monkeypatch.setattr(stic.modeling.chat, "encode_rows", leaky)
    _failed(preflight.check_labels(probe), "row 0", "decode to")


def test_labels_that_are_not_the_input_tokens_fail(probe, monkeypatch):
    real = stic.modeling.chat.encode_rows

    def shifted(processor, rows, max_length):
        batch = real(processor, rows, max_length)
        labelled = batch["labels"] != -100
        batch["labels"][labelled] = (batch["labels"][labelled] + 1) % 100
        return batch

    monkeypatch.setattr(stic.modeling.chat, "encode_rows", shifted)
    _failed(preflight.check_labels(probe), "is not the input token")


# (f)
def test_generation_that_does_not_stop_at_the_end_of_turn_fails(probe):
    tokenizer = probe.processor.tokenizer
    tokenizer.eos_token = "<unk>"
    probe.model.generation_config.eos_token_id = tokenizer.unk_token_id
    _failed(preflight.check_stops_at_end_of_turn(probe), "'</s>'", "['<unk>']", "generation_config")


def test_a_template_without_an_end_of_turn_token_fails(probe):
    probe.processor.chat_template = probe.processor.chat_template.replace("'</s>'", "'\\n'")
    _failed(preflight.check_stops_at_end_of_turn(probe), "no special token")


# (g)
def test_an_adapter_that_is_not_a_no_op_at_step_0_fails(probe, monkeypatch):
    real = stic.modeling.models.add_lora

    def noisy(model, **kwargs):
        wrapped = real(model, **kwargs)
        with torch.no_grad():
            for name, p in wrapped.named_parameters():
                if "lora_B" in name:
                    p.fill_(0.05)
        return wrapped

    monkeypatch.setattr(stic.modeling.models, "add_lora", noisy)
    _failed(preflight.check_lora_step(probe), "at step 0", "differ from the reference", "no-op")


def test_a_trainable_projector_fails(probe, monkeypatch):
    real = stic.modeling.models.add_lora

    def leaky(model, **kwargs):
        wrapped = real(model, **kwargs)
        for p in model.model.multi_modal_projector.parameters():
            p.requires_grad_(True)
        return wrapped

    monkeypatch.setattr(stic.modeling.models, "add_lora", leaky)
    _failed(preflight.check_lora_step(probe), "are trainable", "multi_modal_projector", "frozen")


def test_a_step_that_moves_the_vision_tower_fails(probe, monkeypatch):
    real = stic.modeling.models.add_lora

    def drifting(model, **kwargs):
        wrapped = real(model, **kwargs)
        step = torch.optim.SGD.step

        def step_and_drift(self, *args, **kw):
            with torch.no_grad():
                next(model.model.vision_tower.parameters()).add_(1.0)
            return step(self, *args, **kw)

        monkeypatch.setattr(torch.optim.SGD, "step", step_and_drift)
        return wrapped

    monkeypatch.setattr(stic.modeling.models, "add_lora", drifting)
    _failed(preflight.check_lora_step(probe), "changed", "vision_tower")


def test_a_check_that_raises_is_a_fail_row(probe, monkeypatch):
    def broken(processor, rows, max_length):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(stic.modeling.chat, "encode_rows", broken)
    row = preflight.run_checks(probe, checks=(preflight.check_labels,))[0]
    _failed(row, "RuntimeError: boom")


# --- the command ----------------------------------------------------------------------------


def test_doctor_preflight_prints_the_table_and_exits_0(llava, image_dir, capsys):
    code = main(["--model", str(llava), "--preflight", "--images", str(image_dir)])
    out = capsys.readouterr().out
    assert "preflight of" in out and "0 of 8 preflight checks failed" in out
    assert sum(line.startswith(PASS) for line in out.splitlines()) == 7
    # A warning is shown with its advice and does not fail the preflight.
    warned = [line for line in out.splitlines() if line.startswith(f"{preflight.WARN:<5} ")]
    assert len(warned) == 1 and "BOS once" in warned[0] and "{{ bos_token }}" in out
    assert code == 0


def test_doctor_preflight_failure_exits_1_with_advice(llava, capsys):
    code = main(["--model", str(llava), "--preflight", "--max-length", "20"])
    out = capsys.readouterr().out
    assert code == 1
    assert "FAIL  image tokens kept" in out and "-> raise --max-length above" in out


def test_doctor_preflight_needs_a_model(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["--preflight"])
    assert caught.value.code == 2
    assert "--preflight needs --model" in capsys.readouterr().err
