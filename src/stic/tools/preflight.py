"""``stic doctor --model M --preflight``: a few seconds on the user's model and two images that
catch the silent bugs before hours of GPU time: a template whose prefixes do not render as
prefixes, a BOS token twice or missing (or one that other clients would not feed: a warning),
truncation that drops image tokens, processor tensors the model never receives,
batched generation that differs from one at a time, labels off the answer, generation that
never stops, and a LoRA step that moves more than the adapter.

Each check is a function of one :class:`Probe` (model, processor, two images, the settings) that
returns a :class:`Row`: ``pass``, ``FAIL`` (what is wrong and what to do), ``warn`` (sound for
stic, other clients differ: what to change) or ``skip`` (does not apply to this model). :func:`run_preflight` loads the model and runs them all in order; the last
one wraps the model in a LoRA adapter, so it runs last. Nothing here prints.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from PIL import Image

PASS, FAIL, SKIP = "pass", "FAIL", "skip"
# Sound for stic, but another client of the same model feeds other sequences (the advice says
# what to change); ``stic doctor`` still exits 0.
WARN = "warn"

# Two exchanges: the first (with the image) as in every stage, the second as in SFT data.
QUESTION = "Detail the composition and subjects within the frame."
ANSWER = (
    "A red circle sits in the upper left of the picture, above a small blue square; the "
    "background is a plain gray wall with soft light from the right."
)
FOLLOW_UP = ("Is the circle larger than the square? Answer yes or no.", "Yes.")
GENERATED_TOKENS = 8


class Row(NamedTuple):
    """One line of the preflight table; ``advice`` says what to do when ``status`` is FAIL."""

    status: str
    check: str
    detail: str
    advice: str = ""

    def line(self) -> str:
        text = f"{self.status:<5} {self.check:<24} {self.detail}"
        return text + (f"\n      -> {self.advice}" if self.advice else "")


@dataclass
class Probe:
    """What the checks share: the loaded model (eval mode), its processor and two RGB images."""

    model: Any
    processor: Any
    images: list[Image.Image]
    max_length: int
    lora_targets: list[str]


def _default(field: str) -> Any:
    from stic.config import DPOConfig

    return next(f.default for f in dataclasses.fields(DPOConfig) if f.name == field)


def sample_images() -> list[Image.Image]:
    """Two synthetic images of different sizes and shapes (for ``--preflight`` without ``--images``)."""
    from PIL import ImageDraw

    images = []
    for (width, height), colour in (((96, 64), (220, 40, 40)), ((56, 88), (40, 80, 220))):
        image = Image.new("RGB", (width, height), (128, 128, 128))
        draw = ImageDraw.Draw(image)
        draw.ellipse((8, 8, width // 2, height // 2), fill=colour)
        draw.rectangle((width // 2, height // 2, width - 8, height - 8), fill=(40, 170, 60))
        images.append(image)
    return images


def folder_images(root: str, count: int = 2) -> list[Image.Image]:
    """The first ``count`` images of ``root`` that load (unusable ones are passed over)."""
    from stic.runtime.images import ImageError, load_image, resolve_image_path, scan_images

    images = []
    for image_id in scan_images(root).ids:
        try:
            images.append(load_image(resolve_image_path(root, image_id)))
        except ImageError:
            continue
        if len(images) == count:
            break
    if not images:
        raise ValueError(f"no image under {root} loads")
    return (images * count)[:count]


# --- the checks ---------------------------------------------------------------------------------


def _rows(probe: Probe):
    from stic.modeling.chat import TrainRow, render_segments

    first = render_segments(probe.processor, [(QUESTION, ANSWER)], with_image=True)
    second = render_segments(probe.processor, [(QUESTION, ANSWER), FOLLOW_UP], with_image=True)
    return [TrainRow(first, probe.images[0]), TrainRow(second, probe.images[1])]


def check_template_prefixes(probe: Probe) -> Row:
    """(a) Each prefix of a conversation renders as a prefix of the whole."""
    from stic.modeling.chat import assistant_message, user_message

    messages = [
        user_message(QUESTION, True),
        assistant_message(ANSWER),
        user_message(FOLLOW_UP[0], False),
        assistant_message(FOLLOW_UP[1]),
    ]
    render = probe.processor.apply_chat_template
    whole = render(messages, tokenize=False)
    for end in range(1, len(messages) + 1):
        prompt = messages[end - 1]["role"] == "user"
        text = render(messages[:end], tokenize=False, add_generation_prompt=prompt)
        if not whole.startswith(text):
            return Row(
                FAIL,
                "template prefixes",
                f"the first {end} message(s) end with {text[-50:]!r}, which is not how the "
                "whole conversation goes on",
                "use a chat template that renders a conversation turn by turn (the model's "
                "official one, in the processor's chat_template.jinja): stic cannot tell prompt "
                "from answer tokens otherwise",
            )
    return Row(PASS, "template prefixes", f"{len(messages)} turns render as prefixes of the whole")


def _image_token_id(model, processor) -> int | None:
    for name in ("image_token_id", "image_token_index"):
        value = getattr(model.config, name, None)
        if isinstance(value, int):
            return value
    value = getattr(processor, "image_token_id", None)
    return value if isinstance(value, int) else None


def image_feature_count(model, batch: dict) -> int | None:
    """How many image features (LM positions) the model makes for ``batch``'s images, or None
    when it has no ``get_image_features`` (cross-attention models such as Mllama)."""
    get = getattr(model, "get_image_features", None) or getattr(
        getattr(model, "model", None), "get_image_features", None
    )
    if get is None:
        return None
    accepted = inspect.signature(get).parameters
    with torch.no_grad():
        out = get(**{k: v for k, v in batch.items() if k in accepted})
    features = getattr(out, "pooler_output", out)
    if isinstance(features, torch.Tensor):
        features = [features]
    return sum(f.shape[0] if f.dim() <= 2 else f.shape[0] * f.shape[1] for f in features)


def _leading(ids: list[int], token: int | None) -> int:
    """How many times ``ids`` starts with ``token``."""
    count = 0
    while token is not None and count < len(ids) and ids[count] == token:
        count += 1
    return count


def check_bos(probe: Probe) -> Row:
    """(a2) The sequence stic trains on starts as the template's own tokenization does elsewhere:
    the BOS token once, not twice, not missing.

    stic tokenizes a rendered conversation as transformers' processor does
    (``apply_chat_template(tokenize=True)``): the tokenizer adds its BOS unless the rendered
    text starts with it. vLLM's chat path (``/v1/chat/completions``, ``LLM.chat``) and TRL's
    DPOTrainer tokenize the rendered text with ``add_special_tokens=False``: they get a BOS only
    if the template writes it. A template that writes none for a tokenizer that adds one is
    sound for stic, transformers and lmms-eval, and gives those two clients other sequences
    (a warning). Tools that tokenize the rendered text with special tokens (lmms-eval's
    ``llava_hf``) add one to a template's BOS unless the tokenizer adds none.
    """
    from stic.modeling.chat import encode_rows

    tokenizer = probe.processor.tokenizer
    row = _rows(probe)[0]
    ids = encode_rows(probe.processor, [row], probe.max_length)["input_ids"][0].tolist()
    rendered = "".join(text for text, _ in row.segments)
    theirs = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    bos, name = tokenizer.bos_token_id, tokenizer.bos_token
    adds = bos is not None and tokenizer("a")["input_ids"][:1] == [bos]
    ours, written = _leading(ids, bos), _leading(theirs, bos)
    check = "BOS once"
    if ours > 1:
        return Row(
            FAIL,
            check,
            f"stic's sequence starts with {name!r} {ours} times",
            "the template writes the BOS token and something adds it again: write it once, "
            "at the template's start ({{ bos_token }}), and report it with your model's name",
        )
    if adds and ours == 0:
        return Row(
            FAIL,
            check,
            f"stic's sequence has no {name!r}, which this tokenizer puts first in every text",
            "report it with your model's name: the model would be trained without its BOS",
        )
    if ours == 1 and written == 0:
        return Row(
            WARN,
            check,
            f"stic trains on one {name!r} first, as transformers' processor tokenizes; the "
            "template writes none, so vLLM's chat path and TRL's DPOTrainer feed none",
            "to serve or train the exported model there on the sequences stic trains on, add "
            "{{ bos_token }} at the start of the chat template (chat_template.jinja); stic then "
            "adds none. Or send vLLM chat requests with add_special_tokens=true",
        )
    if ids[ours : ours + 1] != theirs[written : written + 1]:
        return Row(
            FAIL,
            check,
            f"stic's sequence starts with token {ids[ours : ours + 1]} after its BOS tokens, "
            f"the template's own tokenization with {theirs[written : written + 1]}",
            "report it with your model's name",
        )
    if bos is None or ours == 0:
        return Row(PASS, check, "no BOS token: stic's sequence starts as the template's text")
    if not adds:
        return Row(PASS, check, f"one {name!r}, written by the template (the tokenizer adds none)")
    return Row(
        PASS,
        check,
        f"one {name!r}, written by the template, as vLLM's chat path and TRL feed it (tools "
        "that tokenize the rendered text with special tokens, such as lmms-eval's llava_hf, add "
        "a second)",
    )


def check_image_tokens(probe: Probe) -> Row:
    """(b) After truncation every row keeps all its image tokens, as many as the model's features."""
    from stic.modeling.chat import RowTooLong, encode_rows, process

    rows = _rows(probe)
    try:
        batch = encode_rows(probe.processor, rows, probe.max_length)
    except RowTooLong as error:
        what, _, todo = str(error).partition("; ")
        return Row(FAIL, "image tokens kept", what, todo)
    token_id = _image_token_id(probe.model, probe.processor)
    if token_id is None:
        return Row(SKIP, "image tokens kept", "the model names no image token id")
    made = process(probe.processor, [r.segments[0][0] for r in rows], [r.image for r in rows])
    expected = (made["input_ids"] == token_id).sum(1).tolist()
    # Also cut into the answer: one answer token left in the longest row.
    tight = int(made["attention_mask"].sum(1).max()) + 1
    cut = encode_rows(probe.processor, rows, min(tight, probe.max_length))
    for name, encoded in (("at --max-length", batch), (f"cut at {tight} tokens", cut)):
        kept = (encoded["input_ids"] == token_id).sum(1).tolist()
        if kept != expected:
            return Row(
                FAIL,
                "image tokens kept",
                f"{name}, rows hold {kept} image tokens; the processor made {expected}",
                "the training batch lost image tokens: report it with your model's name",
            )
    features = image_feature_count(probe.model, _on_model(made, probe.model))
    if features is None:
        return Row(PASS, "image tokens kept", f"{expected} per row (cross-attention model)")
    if features != sum(expected):
        return Row(
            FAIL,
            "image tokens kept",
            f"the prompts hold {sum(expected)} image tokens but the model makes {features} "
            "image features",
            "the processor and the model disagree on the image size or patch settings: use the "
            "processor saved with this model (preprocessor_config.json)",
        )
    return Row(PASS, "image tokens kept", f"{expected} per row = {features} image features")


def _on_model(batch, model) -> dict:
    """``batch`` without labels, on the model's device, floating tensors in its dtype."""
    parameter = next(p for p in model.parameters() if p.is_floating_point())
    return {
        k: v.to(parameter.device, dtype=parameter.dtype)
        if v.is_floating_point()
        else v.to(parameter.device)
        for k, v in batch.items()
        if k != "labels" and isinstance(v, torch.Tensor)
    }


def forward_parameters(model) -> set[str] | None:
    """Names ``model.forward`` takes explicitly (``**kwargs`` does not count: a tensor that lands
    there is dropped by most models)."""
    return set(inspect.signature(model.forward).parameters)


def check_inputs_reach_forward(probe: Probe) -> Row:
    """(c) Every tensor the processor makes is a parameter of the model's forward."""
    from stic.modeling.chat import encode_rows

    batch = encode_rows(probe.processor, _rows(probe), probe.max_length)
    taken = forward_parameters(probe.model)
    lost = sorted(k for k in batch if k not in taken)
    if lost:
        return Row(
            FAIL,
            "inputs reach forward",
            f"{', '.join(lost)} made by the processor but not a parameter of "
            f"{type(probe.model).__name__}.forward",
            "the model would never see them (e.g. the image grid): load the model class that "
            "matches the processor, or upgrade transformers",
        )
    return Row(PASS, "inputs reach forward", ", ".join(sorted(batch)))


def check_batched_generation(probe: Probe) -> Row:
    """(d) Greedy generation in a left-padded batch equals one-at-a-time generation."""
    from stic.modeling.generation import Request, generate

    requests = [
        Request(QUESTION, probe.images[0]),
        Request("What is in the image? " + FOLLOW_UP[0], probe.images[1]),
    ]
    together = generate(probe.model, probe.processor, requests, max_new_tokens=GENERATED_TOKENS)
    alone = [
        generate(probe.model, probe.processor, [r], max_new_tokens=GENERATED_TOKENS)[0]
        for r in requests
    ]
    differ = [i for i, (a, b) in enumerate(zip(together, alone, strict=True)) if a.text != b.text]
    if differ:
        i = differ[0]
        return Row(
            FAIL,
            "batched = one at a time",
            f"request {i}: batched {together[i].text!r} but alone {alone[i].text!r}",
            "left padding changes this model's answers (position ids or attention mask of "
            "padded rows): generate with --batch-size 1, or upgrade transformers",
        )
    return Row(PASS, "batched = one at a time", f"{len(requests)} greedy answers identical")


def check_labels(probe: Probe) -> Row:
    """(e) Labels cover exactly the answer tokens; shows one row's decoded answer span."""
    from stic.modeling.chat import IGNORE_INDEX, encode_rows

    rows = _rows(probe)
    batch = encode_rows(probe.processor, rows, probe.max_length)
    tokenizer = probe.processor.tokenizer
    for i, row in enumerate(rows):
        labels = batch["labels"][i].tolist()
        ids = batch["input_ids"][i].tolist()
        spans, current = [], []
        for position, label in enumerate(labels):
            if label != IGNORE_INDEX:
                if label != ids[position]:
                    return Row(
                        FAIL,
                        "labels = answers",
                        f"row {i}: label {label} at position {position} is not the input "
                        f"token {ids[position]}",
                        "report it with your model's name",
                    )
                current.append(label)
            elif current:
                spans.append(current)
                current = []
        if current:
            spans.append(current)
        decoded = [tokenizer.decode(span) for span in spans]
        expected = [text for text, trainable in row.segments if trainable]
        if decoded != expected:
            return Row(
                FAIL,
                "labels = answers",
                f"row {i}: the labelled tokens decode to {decoded!r}, the answers are {expected!r}",
                "the tokenizer merges text across the prompt/answer boundary: report it with "
                "your model's name",
            )
    shown = tokenizer.decode([t for t in batch["labels"][0].tolist() if t != IGNORE_INDEX])
    return Row(PASS, "labels = answers", f"row 0 trains on {shown!r}")


def end_of_turn_id(processor) -> int | None:
    """The token a rendered assistant turn ends with (its last token), or None when that is not a
    special (added) token, i.e. the template marks no end of turn."""
    from stic.modeling.chat import render_segments

    segments = render_segments(processor, [(QUESTION, ANSWER)], with_image=False)
    answer = next(text for text, trainable in segments if trainable)
    tokenizer = processor.tokenizer
    ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    # Special: one of the tokenizer's added tokens (never split), as end-of-turn markers are.
    if not ids or ids[-1] not in tokenizer.added_tokens_decoder:
        return None
    return ids[-1]


def check_stops_at_end_of_turn(probe: Probe) -> Row:
    """(f) The eos ids generation stops at include the token that ends an assistant turn."""
    from stic.modeling.generation import end_of_turn_ids

    tokenizer = probe.processor.tokenizer
    eot = end_of_turn_id(probe.processor)
    stops = end_of_turn_ids(probe.model, tokenizer)
    shown = sorted(tokenizer.convert_ids_to_tokens(sorted(stops)))
    if eot is None:
        return Row(
            FAIL,
            "stops at end of turn",
            "the template ends an assistant turn with no special token",
            "use the model's official chat template: without an end-of-turn token answers "
            "run on to --max-new-tokens and training never learns where to stop",
        )
    if eot not in stops:
        token = tokenizer.convert_ids_to_tokens(eot)
        return Row(
            FAIL,
            "stops at end of turn",
            f"the template ends a turn with {token!r} (id {eot}) but generation stops only at "
            f"{shown}",
            f"add {eot} to eos_token_id in the model's generation_config.json",
        )
    return Row(PASS, "stops at end of turn", f"{tokenizer.convert_ids_to_tokens(eot)!r} in {shown}")


def check_lora_step(probe: Probe) -> Row:
    """(g) At step 0 the policy equals the reference (adapter on vs off); one optimizer step
    changes only LoRA weights. Wraps ``probe.model`` in a LoRA adapter: run it last."""
    from stic.modeling.chat import encode_rows
    from stic.modeling.losses import answer_logps
    from stic.modeling.models import add_lora, language_model

    base = probe.model
    # Keyed by the Parameter objects: PEFT renames the layers it wraps, not their weights.
    inside = {id(p) for p in language_model(base).parameters()}
    before = {}
    for name, p in base.named_parameters():
        if id(p) in inside:  # the language model: a checksum (a copy of 7B weights is too big)
            before[id(p)] = (name, p, p.detach().double().abs().sum().item())
        else:  # vision tower, projector, output head: an exact copy
            before[id(p)] = (name, p, p.detach().clone())
    model = add_lora(base, r=8, alpha=16, dropout=0.0, layer_names=probe.lora_targets)
    batch = encode_rows(probe.processor, _rows(probe), probe.max_length)
    inputs = _on_model(batch, model)
    labels = batch["labels"].to(inputs["input_ids"].device)
    model.eval()
    with torch.no_grad():
        policy, _ = answer_logps(model(**inputs).logits, labels)
        with model.disable_adapter():
            reference, _ = answer_logps(model(**inputs).logits, labels)
    if not torch.allclose(policy, reference, rtol=1e-4, atol=1e-3):
        return Row(
            FAIL,
            "LoRA step",
            f"at step 0 the policy's log-probs {[round(x, 3) for x in policy.tolist()]} differ "
            f"from the reference's {[round(x, 3) for x in reference.tolist()]}",
            "a new adapter must start as a no-op (lora_B zero, adapter disabled = base model): "
            "DPO's reward margins would be wrong from the first step; upgrade peft",
        )
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    not_lora = [n for n, _ in trainable if "lora_" not in n]
    lora_before = {n: p.detach().clone() for n, p in trainable if "lora_" in n}
    model.train()
    optimizer = torch.optim.SGD([p for _, p in trainable], lr=1.0)
    loss = model(**inputs, labels=labels).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    model.eval()
    moved = [
        name
        for name, p, old in before.values()
        if (
            not torch.equal(p.detach(), old)
            if isinstance(old, torch.Tensor)
            else p.detach().double().abs().sum().item() != old
        )
    ]
    if not_lora or moved:
        return Row(
            FAIL,
            "LoRA step",
            f"weights outside the LoRA adapter {'are trainable' if not_lora else 'changed'}: "
            f"{', '.join((not_lora or moved)[:3])}",
            "the vision tower, projector and base weights must stay frozen: --lora-targets "
            "must name only the language model's linear layers",
        )
    lora_moved = sum(
        not torch.equal(p.detach(), lora_before[n]) for n, p in trainable if n in lora_before
    )
    if not lora_moved or not torch.isfinite(loss):
        return Row(
            FAIL,
            "LoRA step",
            f"one step left the adapter unchanged (loss {loss.item():.4g})",
            "the loss does not reach the LoRA weights: check --lora-targets and that the "
            "answers have labels",
        )
    layers = sum(n.endswith("lora_A.default.weight") for n, _ in trainable)
    total = sum(isinstance(m, torch.nn.Linear) for m in language_model(base).modules()) - layers * 2
    return Row(
        PASS,
        "LoRA step",
        f"policy = reference at step 0; one step moved only LoRA weights (on {layers} of the "
        f"language model's {total} linear layers)",
    )


CHECKS: tuple[Callable[[Probe], Row], ...] = (
    check_template_prefixes,
    check_bos,
    check_image_tokens,
    check_inputs_reach_forward,
    check_labels,
    check_stops_at_end_of_turn,
    check_batched_generation,
    check_lora_step,
)


def run_checks(probe: Probe, checks=CHECKS) -> list[Row]:
    """Every check on ``probe``; a check that raises is a FAIL row naming the error."""
    rows = []
    for check in checks:
        name = (check.__doc__ or check.__name__).split(")")[0].strip("( ")
        try:
            rows.append(check(probe))
        except Exception as error:  # the preflight reports; it must not die on what it examines
            first = next((x for x in str(error).splitlines() if x.strip()), type(error).__name__)
            rows.append(
                Row(
                    FAIL,
                    check.__name__.removeprefix("check_").replace("_", " "),
                    f"({name}) raised {type(error).__name__}: {first[:300]}",
                    "fix what the error names before a long run",
                )
            )
    return rows


def run_preflight(
    model: str,
    *,
    images: str | None = None,
    max_length: int | None = None,
    lora_targets: str | None = None,
    trust_remote_code: bool = False,
    device: str = "auto",
    dtype: str = "auto",
) -> list[Row]:
    """Load ``model`` and run every check on two images (the first two of ``images`` that load,
    or two synthetic ones). ``max_length``/``lora_targets``: as for ``stic dpo`` (its defaults)."""
    from stic.modeling.models import load_model

    net, processor = load_model(
        model, dtype=dtype, device=device, trust_remote_code=trust_remote_code
    )
    net.eval()
    targets = lora_targets or _default("lora_targets")
    probe = Probe(
        model=net,
        processor=processor,
        images=folder_images(images) if images else sample_images(),
        max_length=max_length or _default("max_length"),
        lora_targets=[n.strip() for n in targets.split(",") if n.strip()],
    )
    return run_checks(probe)
