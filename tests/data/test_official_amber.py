"""stic's AMBER verdicts against AMBER's own inference.py, item for item and in aggregate.

Fixtures (tests/data/official_verdicts/amber_{discriminative,generative}.json; their ``origin``
names junyangwang0410/AMBER@534babf, inference.py): replies written for this test on real
AMBER ids and annotations, scored by the unmodified inference.py outside this repository.
- discriminative (53 replies): the official code ran as released (spaCy, never called there,
  stubbed).
- generative (42 descriptions): nltk's tagger data and spaCy's en_core_web_lg cannot be
  installed here, so inference.py ran with its extract_nouns replaced by each item's ``nouns``
  and check_synonyms_word by ``similar_pairs``; these tests give stic the same two stand-ins, so
  they check everything after extraction (vocabulary filter, safe words, associations, first-match
  marking, duplicates, CHAIR/Cover/Hal/Cog counting and rounding), not the extraction itself.
"""

from __future__ import annotations

import pytest

from stic.data.benchmarks import BenchItem, ImageRef, amber, score_predictions
from tests.data.official_verdicts import load

DISCRIMINATIVE = load("amber_discriminative")
GENERATIVE = load("amber_generative")
# inference.py's printed section -> stic's metric prefix
SECTIONS = {
    "Descriminative Task": "",
    "Exsitence": "existence_",
    "Attribute": "attribute_",
    "Relation": "relation_",
}
SUBSECTIONS = {"State": "state", "Number": "number", "Action": "action"}


@pytest.fixture(scope="module")
def discriminative():
    items = [
        BenchItem(
            id=str(c["id"]),
            image=ImageRef(path=c["image"]),
            question=c["query"],
            answers=(c["truth"],),
            categories=amber.categories_of(c["type"]),
        )
        for c in DISCRIMINATIVE["items"]
    ]
    predictions = {str(c["id"]): c["response"] for c in DISCRIMINATIVE["items"]}
    return score_predictions("amber_discriminative", items, predictions)


def test_discriminative_fixture_covers_the_reply_forms():
    replies = {c["response"] for c in DISCRIMINATIVE["items"]}
    assert {"Yes", "No", "Yes.", "yes", "No, there is not.", " No", "", "**Yes**"} <= replies
    assert {"I cannot tell from this image.", "Yes, wait, no. No."} <= replies
    kinds = {c["type"] for c in DISCRIMINATIVE["items"]}
    assert len(DISCRIMINATIVE["items"]) == 53 and len(kinds) == 6


@pytest.mark.parametrize(
    "case", DISCRIMINATIVE["items"], ids=[str(c["id"]) for c in DISCRIMINATIVE["items"]]
)
def test_discriminative_verdict_equals_official(discriminative, case):
    row = next(r for r in discriminative["items"] if r["id"] == str(case["id"]))
    assert row["score"] == case["official"]["correct"]
    assert (row["extracted"] == "no") == case["official"]["answered_no"]


def test_discriminative_aggregate_equals_official(discriminative):
    official = DISCRIMINATIVE["aggregate"]
    metrics = discriminative["metrics"]
    for section, prefix in SECTIONS.items():
        for name, value in official[section].items():
            assert metrics[prefix + name.lower()] == value, (section, name)
    for section, kind in SUBSECTIONS.items():
        got = discriminative["categories"]["attribute"][kind]
        assert {k: got[k] for k in ("accuracy", "precision", "recall", "f1")} == {
            name.lower(): value for name, value in official[section].items()
        }
    # The quirks the official counts carry: 2 of 3 is 66.6, 1 of 1 is 99.9.
    assert official["Number"]["Precision"] == 66.6 and official["Action"]["Precision"] == 99.9


def _similar(a: str, b: str) -> bool:
    return a == b or sorted((a, b)) in GENERATIVE["similar_pairs"]


@pytest.fixture(scope="module")
def generative():
    nouns = {c["response"]: c["nouns"] for c in GENERATIVE["items"]}
    items = [
        BenchItem(
            id=str(c["id"]),
            image=ImageRef(path=f"AMBER_{c['id']}.jpg"),
            question="Describe this image.",
            answers=tuple(c["truth"]),
            meta={
                "truth": tuple(c["truth"]),
                "hallu": tuple(c["hallu"]),
                "association": GENERATIVE["association"],
                "safe_words": tuple(GENERATIVE["safe_words"]),
            },
        )
        for c in GENERATIVE["items"]
    ]
    pairs = [(item, c["response"]) for item, c in zip(items, GENERATIVE["items"], strict=True)]
    rows = amber.score_generative(pairs, tools=(lambda text: list(nouns[text]), _similar))
    return rows


def test_generative_fixture_covers_the_description_forms():
    cases = GENERATIVE["items"]
    assert len(cases) == 42
    responses = [c["response"] for c in cases]
    assert "" in responses and any(r.startswith("**Objects:**") for r in responses)
    assert any("wait, there is no" in r for r in responses)
    safe = set(GENERATIVE["safe_words"])
    assert any(safe & set(c["nouns"]) for c in cases)  # safe words named
    assert any(c["official"]["chair_score"] for c in cases)  # hallucinated objects
    assert any(c["official"]["hallu_cover_score"] for c in cases)
    assert any(len(set(c["truth"])) < len(c["truth"]) for c in cases)  # duplicate objects


@pytest.mark.parametrize(
    "case", GENERATIVE["items"], ids=[str(c["id"]) for c in GENERATIVE["items"]]
)
def test_generative_verdict_equals_official(generative, case):
    row = next(r for r in generative if r["id"] == str(case["id"]))
    official = case["official"]
    assert len(row["hallucinated"]) == official["chair_score"]
    assert len(row["nouns"]) == official["chair_num"]
    assert sum(row["covered"]) == official["safe_cover_score"]
    assert len(row["covered"]) == official["safe_cover_num"]
    assert sum(row["cog"]) == official["hallu_cover_score"]
    assert len(row["cog"]) == official["hallu_cover_num"]
    assert row["score"] == official["non_hallu_score"]


def test_generative_aggregate_equals_official(generative):
    official = GENERATIVE["aggregate"]["Generative Task"]
    metrics = amber.summarize_generative(generative)["metrics"]
    assert metrics == {name.lower(): value for name, value in official.items()}
