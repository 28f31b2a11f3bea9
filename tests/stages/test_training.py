"""What dpo and sft share (stic.stages.training): the collator names the record it cannot fit."""

from __future__ import annotations

import dataclasses

import pytest
from transformers import AutoProcessor

from stic.data.schemas import PairRecord
from stic.modeling.chat import RowTooLong
from stic.stages.dpo import PairCollator
from stic.testing import make_images


def test_a_pair_whose_prompt_fills_max_length_is_refused_naming_it(tiny_model_factory, tmp_path):
    llava = tiny_model_factory("llava")
    make_images(tmp_path, 1, seed=3)
    pair = PairRecord(
        id="too-long-pair",
        image="img_0000.png",
        prompt="Describe.",
        chosen="a red square",
        rejected="a blue dog",
        rejected_kind="bad_prompt",
        chosen_prompt="Describe carefully.",
        rejected_prompt="Imagine.",
    )
    other = dataclasses.replace(pair, id="other-pair")
    collate = PairCollator(AutoProcessor.from_pretrained(llava), str(tmp_path), max_length=8)
    with pytest.raises(RowTooLong, match="'too-long-pair', 'other-pair'.*max-length"):
        collate([pair, other])
