"""stic.modeling.generation: what ``generate`` reports and how it decodes, on tiny real models.

The stages trust three things it says: ``finish`` (truncated answers are filtered or kept on it),
that a seed reproduces a sampled batch (resume and sharding rely on it), and that a batch decodes
as its requests would one at a time (left padding must not change an answer).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from stic.data.prompts import PLAIN_PROMPTS
from stic.modeling.generation import Generation, Request, batched, generate
from stic.runtime.images import load_image
from stic.testing import make_images


@pytest.fixture(scope="module")
def llava(tiny_model_factory):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    folder = tiny_model_factory("llava")
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32).eval()
    return model, AutoProcessor.from_pretrained(folder)


@pytest.fixture(scope="module")
def requests(tmp_path_factory) -> list[Request]:
    """Four requests of different prompt lengths and image sizes (so the batch is padded)."""
    paths = make_images(tmp_path_factory.mktemp("gen_images"), 4, seed=3)
    prompts = [PLAIN_PROMPTS[0], PLAIN_PROMPTS[5] + " " + PLAIN_PROMPTS[7], "Describe.", "Hi"]
    return [Request(p, load_image(path)) for p, path in zip(prompts, paths, strict=True)]


def test_hitting_the_token_limit_is_reported_as_length(llava, requests):
    model, processor = llava
    outputs = generate(model, processor, requests, max_new_tokens=2)
    assert len(outputs) == len(requests)
    for out in outputs:
        assert isinstance(out, Generation)
        assert out.finish == "length", out
        assert out.num_tokens == 2
        assert out.text


@pytest.mark.slow
def test_an_end_of_turn_token_is_reported_as_stop(tiny_model_factory, requests):
    """A model whose every next token is the end-of-turn token: empty answers that stopped."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    folder = tiny_model_factory("llava")
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(folder)
    eos = processor.tokenizer.eos_token_id
    head = model.lm_head
    stopper = nn.Linear(head.in_features, head.out_features, bias=True)
    with torch.no_grad():
        stopper.weight.zero_()
        stopper.bias.fill_(-10.0)
        stopper.bias[eos] = 10.0
    model.lm_head = stopper
    outputs = generate(model, processor, requests[:2], max_new_tokens=5)
    assert [(o.text, o.finish, o.num_tokens) for o in outputs] == [("", "stop", 0)] * 2


@pytest.mark.slow
def test_the_same_seed_gives_the_same_samples_and_another_seed_others(llava, requests):
    model, processor = llava
    options = dict(max_new_tokens=12, temperature=3.0, top_p=1.0)
    first = generate(model, processor, requests, seed=11, **options)
    again = generate(model, processor, requests, seed=11, **options)
    other = generate(model, processor, requests, seed=12, **options)
    assert [o.text for o in again] == [o.text for o in first]
    assert [o.text for o in other] != [o.text for o in first]
    # The model does sample: the four answers of one batch are not all the same text.
    assert len({o.text for o in first}) > 1


def test_a_seeded_sample_leaves_the_callers_random_state_alone(llava, requests):
    model, processor = llava
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    generate(model, processor, requests[:1], max_new_tokens=4, temperature=1.0, seed=5)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.slow
def test_greedy_batch_equals_one_request_at_a_time(llava, requests):
    model, processor = llava
    together = generate(model, processor, requests, max_new_tokens=10)
    alone = [generate(model, processor, [r], max_new_tokens=10)[0] for r in requests]
    assert together == alone
    # Greedy decoding ignores the seed.
    assert generate(model, processor, requests, max_new_tokens=10, seed=99) == together


def test_no_requests_no_generations(llava):
    model, processor = llava
    assert generate(model, processor, [], max_new_tokens=4) == []


def test_batched_cuts_in_order_with_a_short_last_batch():
    assert [list(b) for b in batched(list(range(7)), 3)] == [[0, 1, 2], [3, 4, 5], [6]]
    assert [list(b) for b in batched([], 3)] == []


def test_end_of_turn_ids_come_from_the_generation_config_and_the_tokenizer():
    """Chat models often stop on several ids (a list in generation_config) besides the
    tokenizer's EOS; an answer ending on any of them finished with "stop"."""
    from types import SimpleNamespace

    from stic.modeling.generation import _eos_ids, end_of_turn_ids

    def ids(config_eos, tokenizer_eos):
        model = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=config_eos))
        return _eos_ids(model, SimpleNamespace(eos_token_id=tokenizer_eos))

    assert ids([5, 7], 2) == {2, 5, 7}
    assert ids(3, 2) == {2, 3}
    assert ids(None, 2) == {2}
    assert ids([5], None) == {5}
    assert ids(None, None) == set()
    # The public name (what stic doctor --preflight checks) gives the same ids.
    model = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=[5, 7]))
    assert end_of_turn_ids(model, SimpleNamespace(eos_token_id=2)) == {2, 5, 7}
