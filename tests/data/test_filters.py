"""Quality filters on preference pairs (stic.data.filters)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from stic.data.filters import FILTERS, FilterSettings, drop_reason, filter_pairs, is_near_duplicate
from stic.data.schemas import PairRecord

BASE = PairRecord(
    id="a.jpg",
    image="a.jpg",
    prompt="Summarize the visual content presented.",
    chosen="A red square sits on the left of a grey background.",
    rejected="A red square, a dog and two trees stand in a sunny park.",
    rejected_kind="bad_prompt",
    chosen_prompt="good",
    rejected_prompt="bad",
)


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"rejected": BASE.chosen}, "identical"),
        ({"rejected": "  " + BASE.chosen.replace(" ", "\n ") + " "}, "identical"),
        ({"chosen": "   "}, "empty"),
        ({"rejected": ""}, "empty"),
        ({"chosen_finish": "length"}, "truncated"),
        ({"rejected_finish": "length"}, "truncated"),
        ({"chosen": "I'm sorry, but I cannot describe this image."}, "refusal"),
        ({"rejected": "I cannot help with that."}, "refusal"),
        ({"rejected": "As an AI, I do not see images."}, "refusal"),
        ({"rejected": BASE.chosen.replace("grey", "gray")}, "near_duplicate"),
    ],
)
def test_each_filter_drops_its_kind_of_pair(change, reason):
    assert drop_reason(replace(BASE, **change), FilterSettings()) == reason


def test_a_good_pair_is_kept():
    assert drop_reason(BASE, FilterSettings()) is None
    # "sorry" later in a description is not a refusal.
    assert (
        drop_reason(
            replace(BASE, chosen=BASE.chosen + " The mood is sorry and grey."), FilterSettings()
        )
        is None
    )


@pytest.mark.parametrize("name", FILTERS)
def test_each_filter_can_be_switched_off(name):
    pairs = {
        "identical": replace(BASE, rejected=BASE.chosen),
        "empty": replace(BASE, chosen=""),
        "truncated": replace(BASE, rejected_finish="length"),
        "refusal": replace(BASE, chosen="I'm sorry, I can't."),
        "near_duplicate": replace(BASE, rejected=BASE.chosen + " Nice."),
    }
    assert drop_reason(pairs[name], FilterSettings()) == name
    # Off, that filter no longer fires (an identical pair is still a near duplicate).
    assert drop_reason(pairs[name], FilterSettings(**{name: False})) != name


def test_near_duplicate_threshold():
    a = "one two three four five six seven eight nine ten"
    b = "one two three four five six seven eight nine eleven"
    assert is_near_duplicate(a, b, 0.9)  # 9 of 10 words shared: ratio 0.9
    assert not is_near_duplicate(a, b, 0.95)
    assert not is_near_duplicate(a, "completely different words here", 0.5)


def test_filter_pairs_counts_and_keeps_reasons():
    pairs = [
        BASE,
        replace(BASE, id="b", rejected=BASE.chosen),
        replace(BASE, id="c", chosen_finish="length"),
    ]
    kept, dropped, counts = filter_pairs(pairs, FilterSettings())
    assert [p.id for p in kept] == ["a.jpg"]
    assert [(reason, p.id) for reason, p in dropped] == [("identical", "b"), ("truncated", "c")]
    assert counts == {"identical": 1, "empty": 0, "truncated": 1, "refusal": 0, "near_duplicate": 0}


def test_near_duplicates_are_judged_on_word_order_not_only_on_the_words():
    a = "a red car is parked in front of a small white house near trees"
    reordered = " ".join(reversed(a.split()))  # the same words: quick_ratio 1.0
    assert not is_near_duplicate(a, reordered, 0.9)
    assert is_near_duplicate(a, a.upper(), 0.9)  # case does not count


def test_long_near_duplicate_descriptions_are_found_despite_common_words():
    # Over 200 words, difflib's automatic junk heuristic would treat every word seen more than
    # 1% of the time as junk and find no match at all after a changed first word (ratio 0).
    sentence = (
        "The image shows a kitchen with a table in the middle of the room and a window on the "
        "left side of the wall and a plant on the shelf of the cabinet. "
    )
    chosen = sentence * 12  # about 370 words
    rejected = "In short: " + chosen
    assert len(chosen.split()) > 200
    assert is_near_duplicate(chosen, rejected, 0.9)
