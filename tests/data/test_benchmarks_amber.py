"""AMBER's readers (the release's files), prompts, scorers and `stic bench score` on a tiny release."""

from __future__ import annotations

import json

import pytest

from stic.data.benchmarks import (
    BenchItem,
    BenchmarkDataError,
    ImageRef,
    amber,
    get_spec,
    read_benchmark,
)
from stic.tools.bench_score import main as bench_score
from tests.data.bench_fixtures import write_jsonl, write_png

# A release of 2 descriptions and 4 questions, annotated in the release's schema.
ANNOTATIONS = [
    {"id": 1, "type": "generative", "truth": ["dog", "grass"], "hallu": ["cat", "ball"]},
    {"id": 2, "type": "generative", "truth": ["person", "person"], "hallu": ["dog"]},
    {"id": 3, "type": "discriminative-hallucination", "truth": "no"},
    {"id": 4, "type": "discriminative-attribute-state", "truth": "yes"},
    {"id": 5, "type": "discriminative-attribute-number", "truth": "no"},
    {"id": 6, "type": "relation", "truth": "no"},
]
GENERATIVE = [{"id": n, "image": f"AMBER_{n}.jpg", "query": "Describe this image."} for n in (1, 2)]
DISCRIMINATIVE = [
    {"id": 3, "image": "AMBER_1.jpg", "query": "Is there a cat in this image?"},
    {"id": 4, "image": "AMBER_1.jpg", "query": "Is the dog running in this image?"},
    {"id": 5, "image": "AMBER_1.jpg", "query": "Are there three dogs in this image?"},
    {"id": 6, "image": "AMBER_2.jpg", "query": "Is there direct contact between the person and dog?"},
]  # fmt: skip
RELATION = {
    "dog": [],
    "grass": ["ground"],
    "cat": [],
    "ball": [],
    "person": ["man", "people"],
    "tree": ["bush"],
    "lamp": ["light"],
}


def _write(path, document):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document), encoding="utf-8")


def _release(tmp_path, **replace):
    """The repository layout: data/query/*.json, data/*.json, data/safe_words.txt, image/."""
    files = {
        "data/annotations.json": ANNOTATIONS,
        "data/query/query_generative.json": GENERATIVE,
        "data/query/query_discriminative.json": DISCRIMINATIVE,
        "data/relation.json": RELATION,
        **replace,
    }
    for name, document in files.items():
        _write(tmp_path / "AMBER" / name, document)
    (tmp_path / "AMBER/data/safe_words.txt").write_text("light\nsign\n", encoding="utf-8")
    for n in (1, 2):
        write_png(tmp_path / "AMBER" / "image" / f"AMBER_{n}.jpg", n)
    return tmp_path / "AMBER"


def test_discriminative_read_from_repository_data_or_query_file(tmp_path):
    root = _release(tmp_path)
    for data in (root, root / "data", root / "data/query/query_discriminative.json"):
        items = read_benchmark("amber_discriminative", data)
        assert [i.id for i in items] == ["3", "4", "5", "6"]
    assert items[1].answers == ("yes",) and items[1].image.path == str(root / "image/AMBER_1.jpg")
    assert items[0].categories == {"dimension": ("existence",)}
    assert items[2].categories == {"dimension": ("attribute",), "attribute": ("number",)}
    assert items[3].categories == {"dimension": ("relation",)}
    assert get_spec("amber_discriminative").prompt(items[0]) == "Is there a cat in this image?"


def test_generative_read_holds_annotation_and_release_tables(tmp_path):
    items = read_benchmark("amber_generative", _release(tmp_path))
    assert [i.id for i in items] == ["1", "2"]
    assert items[1].meta["truth"] == ("person", "person") and items[0].meta["hallu"] == (
        "cat",
        "ball",
    )
    assert items[0].meta["safe_words"] == ("light", "sign")
    assert get_spec("amber_generative").prompt(items[0]) == "Describe this image."


@pytest.mark.parametrize(
    "reply, extracted", [("Yes", "yes"), ("No", "no"), ("Yes.", None), ("no", None), (" No", None)]
)
def test_only_exact_yes_and_no_are_answers(reply, extracted):
    assert amber.extract_yes_no(reply) == extracted


def _similar(a, b):
    return a == b or {a, b} == {"tree", "grass"}


def test_generative_verdicts_by_hand(tmp_path):
    items = read_benchmark("amber_generative", _release(tmp_path))
    nouns = {
        # dog exact, ground for grass, cat hallucinated, light safe, car outside the vocabulary,
        # tree not annotated but similar to grass: covered, not a hallucination
        "first": ["dog", "ground", "cat", "light", "car", "tree"],
        # man -> person: only the first of the two "person" objects is marked
        "second": ["man", "people"],
    }
    rows = amber.score_generative(
        [(items[0], "first"), (items[1], "second")], tools=(nouns.__getitem__, _similar)
    )
    assert rows[0]["nouns"] == ["dog", "ground", "cat", "light", "tree"]
    assert rows[0]["hallucinated"] == ["cat"] and rows[0]["covered"] == [1, 1]
    assert rows[0]["cog"] == [1, 0] and rows[0]["score"] == 0.0
    # the row as written: the reply, its vocabulary nouns, the verdict and the annotation
    assert rows[1] == {
        "id": "2",
        "prediction": "second",
        "extracted": ["man", "people"],
        "nouns": ["man", "people"],
        "hallucinated": [],
        "covered": [1, 0],
        "cog": [0],
        "truth": ["person", "person"],
        "hallu": ["dog"],
        "score": 1.0,
        "categories": {},
    }
    # CHAIR 1/7 nouns, Cover 3/4, Hal 1 of 2 descriptions, Cog 1/3, each count from 0.001.
    assert amber.metrics_generative(rows) == {
        "chair": 14.3,
        "cover": 75.0,
        "hal": 50.0,
        "cog": 33.3,
    }


def test_generative_scoring_without_nltk_names_the_install(tmp_path, monkeypatch):
    items = read_benchmark("amber_generative", _release(tmp_path))
    amber.official_tools.cache_clear()
    monkeypatch.setitem(__import__("sys").modules, "nltk", None)
    with pytest.raises(amber.ScorerUnavailable, match="pip install nltk spacy"):
        amber.score_generative([(items[0], "A dog.")])
    amber.official_tools.cache_clear()


_MISSING = {k: v for k, v in ANNOTATIONS[2].items() if k != "truth"}
MALFORMED = [
    ("query not a list", {"data/query/query_discriminative.json": {"id": 3}}, "query_discriminative.json", "not a JSON list"),
    ("query record not an object", {"data/query/query_discriminative.json": ["x"]}, "query_discriminative.json", "record #0: is str"),
    ("query id not int", {"data/query/query_discriminative.json": [{**DISCRIMINATIVE[0], "id": "3"}]}, "query_discriminative.json", "'id' is str"),
    ("query lacks query", {"data/query/query_discriminative.json": [{"id": 3, "image": "AMBER_1.jpg"}]}, "query_discriminative.json", "record 3: lacks 'query'"),
    ("duplicate id", {"data/query/query_discriminative.json": DISCRIMINATIVE + DISCRIMINATIVE[:1]}, "query_discriminative.json", "record 3: its id appears twice"),
    ("empty query file", {"data/query/query_discriminative.json": []}, "query_discriminative.json", "holds no records"),
    ("image escapes folder", {"data/query/query_discriminative.json": [{**DISCRIMINATIVE[0], "image": "../x.jpg"}]}, "query_discriminative.json", "escapes the image folder"),
    ("image absolute", {"data/query/query_discriminative.json": [{**DISCRIMINATIVE[0], "image": "/etc/x.jpg"}]}, "query_discriminative.json", "is absolute"),
    ("id without annotation", {"data/query/query_discriminative.json": [{**DISCRIMINATIVE[0], "id": 99}]}, "query_discriminative.json", "record 99: has no annotation"),
    ("description asked as question", {"data/query/query_discriminative.json": [{**DISCRIMINATIVE[0], "id": 1}]}, "query_discriminative.json", "annotated as 'generative'"),
    ("label not yes/no", {"data/annotations.json": ANNOTATIONS[:2] + [{**ANNOTATIONS[2], "truth": "maybe"}] + ANNOTATIONS[3:]}, "annotations.json", "record 3: truth 'maybe' is not yes/no"),
    ("label missing", {"data/annotations.json": ANNOTATIONS[:2] + [_MISSING] + ANNOTATIONS[3:]}, "annotations.json", "record 3: lacks 'truth'"),
    ("annotations out of order", {"data/annotations.json": ANNOTATIONS[1:2] + ANNOTATIONS[:1] + ANNOTATIONS[2:]}, "annotations.json", "record 2: is at position 1"),
    ("annotation type missing", {"data/annotations.json": [{"id": 1}]}, "annotations.json", "record 1: lacks 'type'"),
    ("annotations not a list", {"data/annotations.json": {"1": {}}}, "annotations.json", "not a JSON list"),
]  # fmt: skip
MALFORMED_GENERATIVE = [
    ("truth not a list", {"data/annotations.json": [{**ANNOTATIONS[0], "truth": "dog"}] + ANNOTATIONS[1:]}, "annotations.json", "record 1: 'truth' is str"),
    ("hallu word not text", {"data/annotations.json": [{**ANNOTATIONS[0], "hallu": ["cat", 3]}] + ANNOTATIONS[1:]}, "annotations.json", "'hallu' is not a list of strings"),
    ("word outside relation.json", {"data/annotations.json": [{**ANNOTATIONS[0], "truth": ["unicorn"]}] + ANNOTATIONS[1:]}, "annotations.json", "truth word 'unicorn' is not in relation.json"),
    ("relation value not a list", {"data/relation.json": {**RELATION, "dog": "puppy"}}, "relation.json", "record dog: 'dog' is str"),
    ("relation not an object", {"data/relation.json": ["dog"]}, "relation.json", "not a JSON object"),
    ("question asked as description", {"data/query/query_generative.json": [{**GENERATIVE[0], "id": 3}]}, "query_generative.json", "not part of amber_generative"),
]  # fmt: skip


@pytest.mark.parametrize("case, files, where, message", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_discriminative_is_one_line(tmp_path, case, files, where, message):
    root = _release(tmp_path, **files)
    with pytest.raises(BenchmarkDataError) as error:
        read_benchmark("amber_discriminative", root)
    text = str(error.value)
    assert "\n" not in text and where in text and message in text


@pytest.mark.parametrize(
    "case, files, where, message", MALFORMED_GENERATIVE, ids=[m[0] for m in MALFORMED_GENERATIVE]
)
def test_malformed_generative_is_one_line(tmp_path, case, files, where, message):
    root = _release(tmp_path, **files)
    with pytest.raises(BenchmarkDataError) as error:
        read_benchmark("amber_generative", root)
    text = str(error.value)
    assert "\n" not in text and where in text and message in text


def test_invalid_json_and_missing_files(tmp_path):
    root = _release(tmp_path)
    (root / "data/annotations.json").write_text("[{", encoding="utf-8")
    with pytest.raises(BenchmarkDataError, match="annotations.json: not valid JSON"):
        read_benchmark("amber_discriminative", root)
    with pytest.raises(BenchmarkDataError, match="neither data/query/query_generative.json"):
        read_benchmark("amber_generative", tmp_path)
    (root / "image/AMBER_2.jpg").unlink()
    (root / "data/annotations.json").write_text(json.dumps(ANNOTATIONS), encoding="utf-8")
    with pytest.raises(BenchmarkDataError, match="1 of 4 images not found"):
        read_benchmark("amber_discriminative", root)


def test_bench_score_discriminative(tmp_path):
    root = _release(tmp_path)
    predictions = write_jsonl(
        tmp_path / "pred.jsonl",
        [
            {"id": "3", "prediction": "No"},
            {"id": "4", "prediction": "Yes."},
            {"id": "5", "prediction": "No"},
            {"id": "6", "prediction": "Yes"},
        ],
    )
    out = tmp_path / "out" / "amber_discriminative.json"
    argv = ["--benchmark", "amber_discriminative", "--data", str(root)]
    assert bench_score([*argv, "--predictions", str(predictions), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["n"] == 4 and [r["score"] for r in result["items"]] == [1.0, 0.0, 1.0, 0.0]
    # 2 right of 4.001; "no" precision 2/2.001 -> 100.0, recall 2/3.001 -> 66.6;
    # F1 = 2 * 1.0 * .666 / (1.0 + .666 + .0001) -> 79.9; existence (1 of 1): 99.9 each
    metrics = result["metrics"]
    assert (metrics["accuracy"], metrics["precision"], metrics["recall"]) == (50.0, 100.0, 66.6)
    assert metrics["f1"] == 79.9 and result["primary_metric"] == "f1"
    assert result["categories"]["dimension"]["existence"] == {
        "accuracy": 99.9, "precision": 99.9, "recall": 99.9, "f1": 99.9, "n": 1,
    }  # fmt: skip


def test_bench_score_generative_with_the_official_tools_replaced(tmp_path, monkeypatch):
    root = _release(tmp_path)
    nouns = {"Two dogs on the grass.": ["dog", "grass"], "A man with a cat.": ["man", "cat"]}
    amber.official_tools.cache_clear()
    monkeypatch.setattr(amber, "official_tools", lambda: (nouns.__getitem__, _similar))
    predictions = write_jsonl(
        tmp_path / "pred.jsonl",
        [{"id": str(n), "prediction": text} for n, text in zip((1, 2), nouns, strict=True)],
    )
    out = tmp_path / "out" / "amber_generative.json"
    argv = ["--benchmark", "amber_generative", "--data", str(root), "--out", str(out)]
    assert bench_score([*argv, "--predictions", str(predictions)]) == 0
    result = json.loads(out.read_text())
    assert result["metrics"] == {"chair": 25.0, "cover": 75.0, "hal": 50.0, "cog": 0.0}
    assert result["items"][1]["hallucinated"] == ["cat"] and result["primary_metric"] == "chair"


def test_bench_score_generative_without_the_tools_fails_in_one_line(tmp_path, monkeypatch, capsys):
    root = _release(tmp_path)
    amber.official_tools.cache_clear()
    monkeypatch.setitem(__import__("sys").modules, "nltk", None)
    predictions = write_jsonl(tmp_path / "pred.jsonl", [{"id": "1", "prediction": "A dog."}])
    out = tmp_path / "out" / "amber_generative.json"
    argv = ["--benchmark", "amber_generative", "--data", str(root), "--out", str(out)]
    assert bench_score([*argv, "--predictions", str(predictions)]) == 2
    assert "pip install nltk spacy" in capsys.readouterr().err and not out.exists()
    amber.official_tools.cache_clear()


# (id, annotation type, truth, reply): one question of each dimension and attribute kind.
QUESTIONS = [
    ("3", "discriminative-hallucination", "no", "No"),  # right
    ("4", "discriminative-attribute-state", "yes", "Yes"),  # right
    ("5", "discriminative-attribute-number", "no", "Yes"),  # wrong
    ("6", "discriminative-attribute-action", "no", "No"),  # right
    ("7", "relation", "yes", "No"),  # wrong, answered no
    ("8", "discriminative-attribute-number", "yes", "Yes."),  # no answer: wrong
]


def _scored_questions():
    pairs = [(_question(key, kind, truth), reply) for key, kind, truth, reply in QUESTIONS]
    return amber.score_discriminative(pairs)


def _question(key, kind, truth):
    return BenchItem(
        id=key,
        image=ImageRef(path=f"AMBER_{key}.jpg"),
        question="Is there a cat in this image?",
        answers=(truth,),
        categories=amber.categories_of(kind),
    )


def test_discriminative_rows_as_written():
    rows = json.loads(json.dumps(_scored_questions()))
    assert rows[0] == {
        "id": "3",
        "prediction": "No",
        "extracted": "no",
        "answer": "no",
        "score": 1.0,
        "categories": {"dimension": ["existence"]},
    }
    assert rows[5] == {
        "id": "8",
        "prediction": "Yes.",
        "extracted": None,
        "answer": "yes",
        "score": 0.0,
        "categories": {"dimension": ["attribute"], "attribute": ["number"]},
    }


def test_discriminative_dimensions_and_attribute_kinds_by_hand():
    categories = amber.summarize_discriminative(_scored_questions())["categories"]
    # Counts start at 0.001 and percentages are rounded to 1 decimal; "no" is the positive class.
    # existence (3): 1 right of 1.001 -> 99.9 each; F1 2*.999*.999/(1.998 + .001) = .998500 -> 99.9.
    # attribute (4, 5, 6, 8): 2 right of 4.003 -> 50.0; truth no 5, 6: 1 of 2.003 -> 49.9;
    # answered no 6: 1 of 1.003 -> 99.7; F1 2*.997*.499/(.997 + .499 + .0001) -> 66.5.
    # relation (7): nothing right, no truth no, its "no" wrong -> all 0.0.
    assert categories["dimension"] == {
        "existence": {"accuracy": 99.9, "precision": 99.9, "recall": 99.9, "f1": 99.9, "n": 1},
        "attribute": {"accuracy": 50.0, "precision": 99.7, "recall": 49.9, "f1": 66.5, "n": 4},
        "relation": {"accuracy": 0.0, "precision": 0.0, "recall": 0.0, "f1": 0.0, "n": 1},
    }
    # state (4): 1 right of 1.001, nothing said or true "no"; number (5, 8): none right;
    # action (6): right "no" -> 99.9 each, F1 2*.999*.999/(1.998 + .0001) -> 99.9.
    assert categories["attribute"] == {
        "state": {"accuracy": 99.9, "precision": 0.0, "recall": 0.0, "f1": 0.0, "n": 1},
        "number": {"accuracy": 0.0, "precision": 0.0, "recall": 0.0, "f1": 0.0, "n": 2},
        "action": {"accuracy": 99.9, "precision": 99.9, "recall": 99.9, "f1": 99.9, "n": 1},
    }
