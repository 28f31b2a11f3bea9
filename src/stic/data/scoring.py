"""Exact-match scoring of VQA answers, open-ended and multiple choice.

Open questions are compared after :func:`normalize_answer` (case, punctuation, articles and
number words do not count). Multiple-choice questions are compared by the option letter the
model chose (:func:`parse_choice`), falling back to the option text when it wrote no letter.
"""

from __future__ import annotations

import logging
import re
import string
import unicodedata

logger = logging.getLogger(__name__)

_ARTICLES = frozenset({"a", "an", "the"})
_NUMBER_WORDS = {
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_APOSTROPHES = frozenset("'\u2018\u2019`")
_THOUSANDS_COMMA = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")

# A letter alone, or leading the answer as "(B) ...", "[B] ...", "B) ...", "B. ...", "B: ...".
# A bare letter followed by a space is not enough: "a dog" and "A dog" start with an article.
_LEADING_LETTER = re.compile(r"^(?:\(([A-Za-z])\)|\[([A-Za-z])\]|([A-Za-z])(?=[.:)]|$))")
# "Answer: B", "the answer is (b)", "The correct option is C." - a lowercase letter counts only
# in parentheses or before a full stop / end, so "the answer is a dog" names no letter.
_ANSWER_PHRASE = re.compile(
    r"\b(?i:answer|option|choice)\b"
    r"(?:\s+(?i:is|would\s+be|should\s+be|will\s+be))?\s*[:\-]?\s*"
    r"(?:\(([A-Za-z])\)|([A-Z])\b(?!')|([a-z])(?=[.:)]|\s*$))"
)
_PARENTHESISED_LETTER = re.compile(r"\(([A-Za-z])\)")
_GOLD_LETTER = re.compile(r"^\(?([A-Za-z])\)?\.?$")
_DECORATION = " \t\r\n*_`'\"\u201c\u201d"


def normalize_answer(text: str) -> str:
    """Canonical form of a short answer for exact matching.

    Lowercases; removes thousands separators ("1,000" -> "1000"); removes apostrophes
    ("dog's" -> "dogs"); turns every other punctuation or symbol character into a space, except
    a decimal point between digits ("3.5" stays) and a minus sign starting a number ("-2"
    stays), so a trailing full stop goes; drops the articles a/an/the; maps the number words
    zero..ten to digits; collapses whitespace.

    Examples: ``"A cat."`` -> ``"cat"``, ``"Two"`` -> ``"2"``, ``" 3.5 "`` -> ``"3.5"``.
    """
    text = _THOUSANDS_COMMA.sub("", text.lower().strip())
    chars: list[str] = []
    for i, char in enumerate(text):
        prev_char = text[i - 1] if i > 0 else ""
        next_char = text[i + 1] if i + 1 < len(text) else ""
        if char in _APOSTROPHES:
            continue
        if char == "." and prev_char.isdigit() and next_char.isdigit():
            chars.append(char)
        elif char == "-" and next_char.isdigit() and (not prev_char or prev_char.isspace()):
            chars.append(char)
        elif char in string.punctuation or unicodedata.category(char)[0] in "PS":
            chars.append(" ")
        else:
            chars.append(char)
    words = [_NUMBER_WORDS.get(word, word) for word in "".join(chars).split()]
    return " ".join(word for word in words if word not in _ARTICLES)


def parse_choice(prediction: str, num_choices: int) -> int | None:
    """The option the model chose, as a 0-based index (A -> 0), or None if it named none.

    Rules, tried in order; letters beyond the ``num_choices``-th are ignored:

    1. the answer is or starts with a marked letter: ``"B"``, ``"b"``, ``"B."``, ``"(B)"``,
       ``"B) text"``, ``"(c) dog"`` (markdown ``**B**`` and quotes around it are ignored);
    2. an answer phrase: ``"Answer: B"``, ``"The answer is B."``, ``"the correct option is
       (c)"``; with several, the last one (the model's conclusion) wins;
    3. a parenthesised letter anywhere, ``"I think (B) fits"``, if exactly one distinct letter
       is so marked.

    A bare word-like letter ("A dog", "the answer is a cat") is not read as a choice.

    Raises:
        ValueError: ``num_choices`` not in 1..26.
    """
    if not 1 <= num_choices <= 26:
        raise ValueError(f"num_choices must be in 1..26, got {num_choices!r}")

    def index(letter: str) -> int | None:
        position = ord(letter.upper()) - ord("A")
        return position if position < num_choices else None

    text = prediction.strip(_DECORATION)
    leading = _LEADING_LETTER.match(text)
    if leading is not None:
        found = index(next(group for group in leading.groups() if group))
        if found is not None:
            return found

    for phrase in reversed(list(_ANSWER_PHRASE.finditer(text))):
        found = index(next(group for group in phrase.groups() if group))
        if found is not None:
            return found

    marked = {index(letter) for letter in _PARENTHESISED_LETTER.findall(text)} - {None}
    if len(marked) == 1:
        return marked.pop()
    return None


def answer_index(answer: str, choices: list[str]) -> int:
    """The 0-based index of the gold answer among ``choices``.

    ``answer`` is either an option letter (``"B"``, ``"b"``, ``"(B)"``, ``"B."``) within range,
    which takes precedence, or the text of a choice, matched after :func:`normalize_answer`
    (the first such choice if several match).

    Raises:
        ValueError: ``choices`` empty or longer than 26, or ``answer`` is neither.
    """
    if not 1 <= len(choices) <= 26:
        raise ValueError(f"choices must hold 1..26 options, got {len(choices)}")
    letter = _GOLD_LETTER.match(answer.strip())
    if letter is not None:
        position = ord(letter.group(1).upper()) - ord("A")
        if position < len(choices):
            return position
    target = normalize_answer(answer)
    if target:
        for position, choice in enumerate(choices):
            if normalize_answer(choice) == target:
                return position
    raise ValueError(f"answer {answer!r} is neither an option letter nor one of {choices!r}")


def is_correct(prediction: str, answer: str, choices: list[str] | None = None) -> bool:
    """Whether ``prediction`` matches the gold ``answer`` exactly.

    Open question (``choices`` is None): equal after :func:`normalize_answer`, and not empty.
    Multiple choice: if :func:`parse_choice` finds a letter, it must be the gold index
    (:func:`answer_index`); otherwise the normalized prediction must equal the normalized text
    of the gold choice.

    Raises:
        ValueError: the gold answer cannot be located among ``choices``.
    """
    if choices is None:
        normalized = normalize_answer(prediction)
        return bool(normalized) and normalized == normalize_answer(answer)
    gold = answer_index(answer, choices)
    chosen = parse_choice(prediction, len(choices))
    if chosen is not None:
        return chosen == gold
    normalized = normalize_answer(prediction)
    return bool(normalized) and normalized == normalize_answer(choices[gold])
