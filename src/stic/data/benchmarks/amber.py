"""AMBER (LLM-free hallucination benchmark): a discriminative and a generative part.

Format read (the release, ``junyangwang0410/AMBER``): ``data/query/query_discriminative.json``
or ``data/query/query_generative.json`` (a JSON list of ``{"id", "image", "query"}``),
``data/annotations.json`` (a list whose entry ``id - 1`` is the annotation of query ``id``:
``type``, ``truth`` and, for descriptions, ``hallu``), and for the generative part
``data/relation.json`` (object word -> its associated words) and ``data/safe_words.txt``.
``--data`` is the repository folder, its ``data/`` folder or the query file. Images: the
release's image folder (``--images``; default ``image/`` beside ``data/``), ``AMBER_<n>.jpg``.

Item ids are AMBER's query ids (1-1004 descriptions, 1005-15220 yes/no questions).

Prompt: the query as released, nothing added ("Describe this image." for the generative part;
"Is there a dog in this image?" and the like for the discriminative part).

Scoring follows AMBER's ``inference.py`` (docs/benchmarks.md lists where stic cannot run it):

- discriminative: a reply is the answer "yes" only if it is exactly ``Yes`` and "no" only if it
  is exactly ``No`` (so "Yes." and "no" are wrong whatever the truth). Precision and recall take
  "no" as the positive class. Every count starts at 0.001 (the release's ``metrics.txt``), every
  percentage is rounded to 1 decimal before F1 is formed from the rounded precision and recall
  with 0.0001 (existence: 0.001) added to the denominator. Reported overall and per dimension:
  existence (type ``discriminative-hallucination``), attribute (state, number, action) and
  relation (every other type);
- generative: the nouns of the description (nltk ``word_tokenize``, ``pos_tag`` tags ``NN*``,
  WordNet lemmas) that are in the relation vocabulary are matched against the image's truth and
  hallucination words and their associated words, exactly and then by spaCy
  ``en_core_web_lg`` similarity above 0.8. CHAIR = nouns matching no truth word (safe words
  excepted) / nouns; Cover = truth objects mentioned / truth objects; Hal = descriptions with
  a hallucinated noun; Cog = hallucination-list objects mentioned / hallucination-list objects.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from stic.data.benchmarks.records import (
    BenchItem,
    BenchmarkDataError,
    ImageRef,
    Judge,
)
from stic.data.benchmarks.tables import bad_record, checked, text_list, unique_ids
from stic.runtime.images import resolve_image_path

# read_benchmark checks the images exist when they are needed (not for bench score).
IMAGES_HINT = "the AMBER image folder (AMBER_<n>.jpg)"

DISCRIMINATIVE_NAME = "amber_discriminative"
GENERATIVE_NAME = "amber_generative"
PROTOCOL = "AMBER: the released query, nothing added"
# AMBER states none; yes/no replies need few tokens, descriptions LLaVA's open-ended budget.
DISCRIMINATIVE_MAX_NEW_TOKENS = 128
GENERATIVE_MAX_NEW_TOKENS = 1024
SIMILARITY_THRESHOLD = 0.8  # inference.py's --similarity_score default
START = 0.001  # every count of the release's metrics.txt starts here (no division by zero)

# Annotation type -> (dimension, attribute kind); every other non-generative type is relation.
_KINDS = {
    "discriminative-hallucination": ("existence", None),
    "discriminative-attribute-state": ("attribute", "state"),
    "discriminative-attribute-number": ("attribute", "number"),
    "discriminative-attribute-action": ("attribute", "action"),
}
DIMENSIONS = ("existence", "attribute", "relation")
ATTRIBUTES = ("state", "number", "action")
_PRF = ("accuracy", "precision", "recall", "f1")
DISCRIMINATIVE_METRICS = _PRF + tuple(f"{d}_{m}" for d in DIMENSIONS for m in _PRF)
GENERATIVE_METRICS = ("chair", "cover", "hal", "cog")


# --- reading the release ------------------------------------------------------------------


def _release_files(data: Path, query_name: str, name: str) -> tuple[Path, Path]:
    """(the query file, the release's data/ folder) from the repository, data/ or query file."""
    if data.is_file():
        query = data
        folder = data.parent.parent if data.parent.name == "query" else data.parent
    else:
        if not data.exists():
            raise BenchmarkDataError(f"{name}: {data} does not exist")
        folder = data / "data" if (data / "data" / "annotations.json").is_file() else data
        query = folder / "query" / query_name
        if not query.is_file():
            query = folder / query_name
    if not query.is_file() or not (folder / "annotations.json").is_file():
        raise BenchmarkDataError(
            f"{name}: {data} holds neither data/query/{query_name} nor data/annotations.json "
            "(give the AMBER repository folder, its data/ folder or the query file)"
        )
    return query, folder


def _load_json(path: Path, name: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BenchmarkDataError(f"{name}: {path}: not valid JSON ({e})") from e


def _annotations(folder: Path, name: str) -> tuple[Path, list]:
    path = folder / "annotations.json"
    document = _load_json(path, name)
    if not isinstance(document, list):
        raise BenchmarkDataError(f"{name}: {path} is not a JSON list of annotations")
    for position, record in enumerate(document):
        key = checked(name, path, f"#{position}", record, "id", (int,))
        # inference.py reads annotation ``id - 1`` by position: any other order misjudges.
        if key != position + 1:
            raise bad_record(
                name,
                path,
                key,
                f"is at position {position + 1}; the official scorer reads "
                "annotation n at position n",
            )
        checked(name, path, key, record, "type", (str,))
    return path, document


def _queries(
    query_path: Path, annotations: list, images: Path, name: str, generative: bool
) -> list[tuple[BenchItem, dict]]:
    document = _load_json(query_path, name)
    if not isinstance(document, list):
        raise BenchmarkDataError(f"{name}: {query_path} is not a JSON list of queries")
    ids = [
        str(checked(name, query_path, f"#{n}", row, "id", (int,))) for n, row in enumerate(document)
    ]
    unique_ids(name, query_path, ids)
    out = []
    for key, row in zip(ids, document, strict=True):
        question = checked(name, query_path, key, row, "query", (str,))
        image_name = checked(name, query_path, key, row, "image", (str,))
        try:
            image = resolve_image_path(images, image_name)
        except ValueError as e:
            raise bad_record(name, query_path, key, str(e)) from None
        if not 1 <= int(key) <= len(annotations):
            raise bad_record(name, query_path, key, "has no annotation in annotations.json")
        annotation = annotations[int(key) - 1]
        if (annotation["type"] == "generative") != generative:
            raise bad_record(
                name, query_path, key, f"is annotated as {annotation['type']!r}, not part of {name}"
            )
        item = BenchItem(id=key, image=ImageRef(path=str(image)), question=question)
        out.append((item, annotation))
    return out


def _images_root(folder: Path, images: str | Path | None) -> Path:
    return Path(images) if images is not None else folder.parent / "image"


def categories_of(kind: str) -> dict[str, tuple[str, ...]]:
    """The dimension (and attribute kind) of annotation type ``kind``, as inference.py groups
    them: every type that is neither existence nor attribute counts as relation."""
    dimension, attribute = _KINDS.get(kind, ("relation", None))
    return {"dimension": (dimension,), **({"attribute": (attribute,)} if attribute else {})}


def read_discriminative(data: str | Path, images: str | Path | None = None) -> list[BenchItem]:
    """The yes/no questions of ``query_discriminative.json`` with their annotated answers."""
    name = DISCRIMINATIVE_NAME
    query_path, folder = _release_files(Path(data), "query_discriminative.json", name)
    annotations_path, annotations = _annotations(folder, name)
    root = _images_root(folder, images)
    items = []
    for item, annotation in _queries(query_path, annotations, root, name, generative=False):
        truth = checked(name, annotations_path, item.id, annotation, "truth", (str,))
        if truth not in ("yes", "no"):
            raise bad_record(name, annotations_path, item.id, f"truth {truth!r:.40} is not yes/no")
        items.append(
            BenchItem(
                id=item.id,
                image=item.image,
                question=item.question,
                answers=(truth,),
                categories=categories_of(annotation["type"]),
                meta={"type": annotation["type"]},
            )
        )
    return items


def _relation(folder: Path, name: str) -> dict[str, list[str]]:
    path = folder / "relation.json"
    if not path.is_file():
        raise BenchmarkDataError(f"{name}: {folder} lacks relation.json (the word associations)")
    document = _load_json(path, name)
    if not isinstance(document, dict):
        raise BenchmarkDataError(f"{name}: {path} is not a JSON object of word -> words")
    for word in document:
        checked(name, path, word, document, word, (list,))
    return {word: text_list(name, path, word, document, word) for word in document}


def _safe_words(folder: Path, name: str) -> tuple[str, ...]:
    path = folder / "safe_words.txt"
    if not path.is_file():
        raise BenchmarkDataError(f"{name}: {folder} lacks safe_words.txt")
    # inference.py keeps each line up to its newline (universal newlines), blank ones included.
    lines = path.read_text(encoding="utf-8").split("\n")
    return tuple(lines[:-1] if lines[-1] == "" else lines)


def read_generative(data: str | Path, images: str | Path | None = None) -> list[BenchItem]:
    """The description queries of ``query_generative.json``; each item's ``meta`` holds its
    ``truth`` and ``hallu`` objects, and the release's ``association`` table and ``safe_words``
    (shared by every item) that scoring reads."""
    name = GENERATIVE_NAME
    query_path, folder = _release_files(Path(data), "query_generative.json", name)
    annotations_path, annotations = _annotations(folder, name)
    association = _relation(folder, name)
    safe_words = _safe_words(folder, name)
    root = _images_root(folder, images)
    items = []
    for item, annotation in _queries(query_path, annotations, root, name, generative=True):
        words = {}
        for key in ("truth", "hallu"):
            checked(name, annotations_path, item.id, annotation, key, (list,))
            words[key] = tuple(text_list(name, annotations_path, item.id, annotation, key))
            unknown = [w for w in words[key] if w not in association]
            if unknown:
                raise bad_record(
                    name,
                    annotations_path,
                    item.id,
                    f"{key} word {unknown[0]!r} is not in relation.json",
                )
        items.append(
            BenchItem(
                id=item.id,
                image=item.image,
                question=item.question,
                # The truth objects, so that data_hash changes with the annotation.
                answers=words["truth"],
                choices=words["hallu"],
                meta={**words, "association": association, "safe_words": safe_words},
            )
        )
    return items


def prompt(item: BenchItem) -> str:
    return item.question


# --- discriminative scoring -----------------------------------------------------------------


def extract_yes_no(prediction: str) -> str | None:
    """ "yes" for exactly ``Yes``, "no" for exactly ``No``, else None (inference.py compares the
    reply as it is: "Yes." and " No" are neither)."""
    return {"Yes": "yes", "No": "no"}.get(prediction)


def score_discriminative(
    pairs: Sequence[tuple[BenchItem, str]], judge: Judge | None = None
) -> list[dict]:
    rows = []
    for item, prediction in pairs:
        extracted = extract_yes_no(prediction)
        rows.append(
            {
                "id": item.id,
                "prediction": prediction,
                "extracted": extracted,
                "answer": item.answers[0],
                "score": float(extracted == item.answers[0]),
                "categories": dict(item.categories),
            }
        )
    return rows


@dataclass
class _Counts:
    """One group's counters as inference.py keeps them (the ``*_num`` ones start at 0.001)."""

    asked: float = START  # qa_correct_num
    right: int = 0  # qa_correct_score
    truth_no: float = START  # qa_no_num
    truth_no_right: int = 0  # qa_no_score
    answered_no: float = START  # qa_ans_no_num
    answered_no_right: int = 0  # qa_ans_no_score

    def add(self, row: dict) -> None:
        self.asked += 1
        self.right += row["score"] == 1.0
        if row["answer"] == "no":
            self.truth_no += 1
            self.truth_no_right += row["extracted"] == "no"
        if row["extracted"] == "no":
            self.answered_no += 1
            self.answered_no_right += row["answer"] == "no"


def _prf(counts: Sequence[_Counts], f1_epsilon: float = 0.0001) -> dict:
    """Accuracy, precision, recall and F1 of the summed counts, as inference.py rounds them."""

    def rate(score: str, num: str) -> float:
        total = sum(getattr(c, num) for c in counts)
        return round(sum(getattr(c, score) for c in counts) / total * 100, 1)

    precision = rate("answered_no_right", "answered_no")
    recall = rate("truth_no_right", "truth_no")
    f1 = 2 * (precision / 100) * (recall / 100) / (precision / 100 + recall / 100 + f1_epsilon)
    return {
        "accuracy": rate("right", "asked"),
        "precision": precision,
        "recall": recall,
        "f1": round(f1 * 100, 1),
    }


def _tally(rows: Sequence[dict]) -> tuple[_Counts, dict[str, _Counts]]:
    overall, by_kind = _Counts(), {k: _Counts() for k in ("existence", "relation", *ATTRIBUTES)}
    for row in rows:
        overall.add(row)
        categories = row["categories"]
        by_kind[(categories.get("attribute") or categories["dimension"])[0]].add(row)
    return overall, by_kind


def metrics_discriminative(rows: Sequence[dict]) -> dict:
    """Overall and per-dimension accuracy, precision, recall, F1 ("no" positive), in percent."""
    overall, by_kind = _tally(rows)
    out = _prf([overall])
    for dimension, metrics in _dimension_metrics(by_kind).items():
        out.update({f"{dimension}_{key}": value for key, value in metrics.items()})
    return out


def _dimension_metrics(by_kind: dict[str, _Counts]) -> dict[str, dict]:
    return {
        "existence": _prf([by_kind["existence"]], f1_epsilon=0.001),  # as inference.py has it
        "attribute": _prf([by_kind[k] for k in ATTRIBUTES]),
        "relation": _prf([by_kind["relation"]]),
    }


def summarize_discriminative(rows: Sequence[dict]) -> dict:
    overall, by_kind = _tally(rows)
    counts = {
        kind: sum(
            1
            for r in rows
            if (r["categories"].get("attribute") or r["categories"]["dimension"])[0] == kind
        )
        for kind in by_kind
    }
    dimensions = _dimension_metrics(by_kind)
    dimensions["attribute"]["n"] = sum(counts[k] for k in ATTRIBUTES)
    dimensions["existence"]["n"] = counts["existence"]
    dimensions["relation"]["n"] = counts["relation"]
    return {
        "metrics": metrics_discriminative(rows),
        "categories": {
            "dimension": dimensions,
            "attribute": {k: {**_prf([by_kind[k]]), "n": counts[k]} for k in ATTRIBUTES},
        },
    }


# --- generative scoring ---------------------------------------------------------------------

NounExtractor = Callable[[str], list[str]]
Similarity = Callable[[str, str], bool]

_INSTALL = (
    "pip install nltk spacy && python -m nltk.downloader punkt_tab "
    "averaged_perceptron_tagger_eng wordnet && python -m spacy download en_core_web_lg"
)


class ScorerUnavailable(ValueError):
    """The generative scorer's nltk/spaCy parts are not installed (a ValueError, so that every
    front end that reports a scoring error in one line reports this one)."""


@functools.cache
def official_tools() -> tuple[NounExtractor, Similarity]:
    """inference.py's noun extraction (nltk) and near-synonym test (spaCy ``en_core_web_lg``),
    loaded on first use; raises :class:`ScorerUnavailable` with the install command when either is missing."""
    try:
        import nltk
        import spacy
        from nltk.stem import WordNetLemmatizer
    except ImportError as e:
        raise ScorerUnavailable(
            f"{GENERATIVE_NAME} is scored with nltk and spaCy ({e.name} is missing): {_INSTALL}"
        ) from None
    try:
        nlp = spacy.load("en_core_web_lg")
        lemmatizer = WordNetLemmatizer()
        nltk.pos_tag(nltk.word_tokenize("A check."))
        lemmatizer.lemmatize("checks")
    except (OSError, LookupError) as e:
        raise ScorerUnavailable(
            f"{GENERATIVE_NAME}: the nltk data or the spaCy model is missing "
            f"({str(e).strip().splitlines()[0]}): {_INSTALL}"
        ) from None

    def nouns(text: str) -> list[str]:
        tagged = nltk.pos_tag(nltk.word_tokenize(text))
        return [lemmatizer.lemmatize(word) for word, pos in tagged if pos.startswith("NN")]

    @functools.cache
    def similar(word1: str, word2: str) -> bool:
        return nlp(word1).similarity(nlp(word2)) > SIMILARITY_THRESHOLD

    return nouns, similar


def _mark(flags: list[int], owners: list[int], j: int, n_objects: int) -> None:
    """Mark the object behind match ``j`` as mentioned: an associated word (before the last
    ``n_objects`` places) marks the object it belongs to, an object marks itself."""
    if j < len(flags) - n_objects:
        flags[owners[j] + len(flags) - n_objects] = 1
    else:
        flags[j] = 1


def judge_description(
    nouns: Sequence[str],
    truth: Sequence[str],
    hallu: Sequence[str],
    association: dict[str, list[str]],
    safe_words: Sequence[str],
    similar: Similarity,
) -> dict:
    """inference.py's verdict on one description whose extracted nouns are ``nouns``.

    Returns ``nouns`` (those in the relation vocabulary), ``hallucinated`` (the nouns CHAIR
    counts), ``covered`` (per truth object, 0/1) and ``cog`` (per hallucination object, 0/1).
    Duplicate objects, the first-match rule and the order of the checks are the official ones:
    an exact hallucination match is followed by the similarity checks, and a noun similar to a
    truth word is never a hallucination.
    """
    vocabulary = set(association) | {w for words in association.values() for w in words}
    kept = [noun for noun in nouns if noun in vocabulary]

    def expand(objects: Sequence[str]) -> tuple[list[str], list[int]]:
        words, owners = [], []
        for index, word in enumerate(objects):
            words += association[word]
            owners += [index] * len(association[word])
        return words + list(objects), owners + [0] * len(objects)

    safe, safe_flags = expand(truth)
    hallu_words, hallu_flags = expand(hallu)
    safe_owners, hallu_owners = list(safe_flags), list(hallu_flags)
    global_safe = set(safe_words)
    hallucinated = []
    for noun in kept:
        if noun in global_safe:
            continue
        if noun in safe:
            _mark(safe_flags, safe_owners, safe.index(noun), len(truth))
            continue
        if noun in hallu_words:
            _mark(hallu_flags, hallu_owners, hallu_words.index(noun), len(hallu))
        for j, word in enumerate(hallu_words):
            if similar(noun, word):
                _mark(hallu_flags, hallu_owners, j, len(hallu))
                break
        match = next((j for j, word in enumerate(safe) if similar(noun, word)), None)
        if match is not None:
            _mark(safe_flags, safe_owners, match, len(truth))
            continue
        hallucinated.append(noun)
    return {
        "nouns": kept,
        "hallucinated": hallucinated,
        "covered": safe_flags[len(safe_flags) - len(truth) :],
        "cog": hallu_flags[len(hallu_flags) - len(hallu) :],
    }


def score_generative(
    pairs: Sequence[tuple[BenchItem, str]],
    judge: Judge | None = None,
    tools: tuple[NounExtractor, Similarity] | None = None,
) -> list[dict]:
    """One row per description; ``tools`` (nouns, similar) defaults to :func:`official_tools`."""
    if not pairs:
        return []
    nouns_of, similar = tools or official_tools()
    rows = []
    for item, prediction in pairs:
        verdict = judge_description(
            nouns_of(prediction),
            item.meta["truth"],
            item.meta["hallu"],
            item.meta["association"],
            item.meta["safe_words"],
            similar,
        )
        rows.append(
            {
                "id": item.id,
                "prediction": prediction,
                "extracted": verdict["nouns"],
                **verdict,
                "truth": list(item.meta["truth"]),
                "hallu": list(item.meta["hallu"]),
                # 1.0 for a description without a hallucinated object: its mean is 100 - Hal.
                "score": float(not verdict["hallucinated"]),
                "categories": {},
            }
        )
    return rows


def metrics_generative(rows: Sequence[dict]) -> dict:
    """CHAIR, Cover, Hal and Cog in percent, counted and rounded as inference.py does."""
    counts = dict.fromkeys(("chair_num", "cover_num", "cog_num", "described"), START)
    counts.update(dict.fromkeys(("chair", "cover", "cog", "clean"), 0))
    for row in rows:
        counts["chair"] += len(row["hallucinated"])
        counts["chair_num"] += len(row["nouns"])
        counts["cover"] += sum(row["covered"])
        counts["cover_num"] += len(row["covered"])
        counts["cog"] += sum(row["cog"])
        counts["cog_num"] += len(row["cog"])
        counts["clean"] += not row["hallucinated"]
        counts["described"] += 1
    return {
        "chair": round(counts["chair"] / counts["chair_num"] * 100, 1),
        "cover": round(counts["cover"] / counts["cover_num"] * 100, 1),
        "hal": round(100 - counts["clean"] / counts["described"] * 100, 1),
        "cog": round(counts["cog"] / counts["cog_num"] * 100, 1),
    }


def summarize_generative(rows: Sequence[dict]) -> dict:
    return {"metrics": metrics_generative(rows), "categories": {}}


# The two benchmarks as the registry reads them (see stic.data.benchmarks._spec).
DISCRIMINATIVE = SimpleNamespace(
    read=read_discriminative,
    prompt=prompt,
    score=score_discriminative,
    summarize=summarize_discriminative,
    metrics_of=metrics_discriminative,
    METRICS=DISCRIMINATIVE_METRICS,
    PRIMARY="f1",  # AMBER's score is (100 - CHAIR + F1) / 2
    MAX_NEW_TOKENS=DISCRIMINATIVE_MAX_NEW_TOKENS,
    PROTOCOL=PROTOCOL,
)
GENERATIVE = SimpleNamespace(
    read=read_generative,
    prompt=prompt,
    score=score_generative,
    summarize=summarize_generative,
    metrics_of=metrics_generative,
    METRICS=GENERATIVE_METRICS,
    PRIMARY="chair",  # lower is better
    MAX_NEW_TOKENS=GENERATIVE_MAX_NEW_TOKENS,
    PROTOCOL=PROTOCOL,
)
