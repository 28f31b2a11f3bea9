"""chat.extend_prompts: the processed prompts followed by their answer tokens, right-padded."""

from types import SimpleNamespace

import torch

from stic.modeling.chat import IGNORE_INDEX, extend_prompts


def test_prompts_are_extended_with_their_tails_and_token_aligned_tensors_with_the_last_value():
    tokenizer = SimpleNamespace(pad_token_id=0, eos_token_id=9)
    batch = {  # two left-padded prompts: [5, 6] and [7]
        "input_ids": torch.tensor([[5, 6], [0, 7]]),
        "attention_mask": torch.tensor([[1, 1], [0, 1]]),
        "token_type_ids": torch.tensor([[1, 2], [0, 3]]),
        "pixel_values": torch.ones(2, 3),
    }
    labels = [[IGNORE_INDEX, IGNORE_INDEX, 11], [IGNORE_INDEX, 12, 13]]
    out = extend_prompts(tokenizer, batch, [[11], [12, 13]], labels)
    assert out["input_ids"].tolist() == [[5, 6, 11], [7, 12, 13]]
    assert out["token_type_ids"].tolist() == [[1, 2, 2], [3, 3, 3]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 1]]
    assert out["labels"].tolist() == labels
    assert out["pixel_values"] is batch["pixel_values"]
    short = extend_prompts(tokenizer, batch, [[], [12, 13]], [[IGNORE_INDEX] * 2, labels[1]])
    assert short["input_ids"].tolist() == [[5, 6, 0], [7, 12, 13]]  # right-padded
    assert short["token_type_ids"][0].tolist() == [1, 2, 0]
    assert short["attention_mask"][0].tolist() == [1, 1, 0]
    assert short["labels"][0].tolist() == [IGNORE_INDEX] * 3
