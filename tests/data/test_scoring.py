import pytest

from stic.data.scoring import answer_index, is_correct, normalize_answer, parse_choice

CHOICES = ["cat", "bird", "dog"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("A cat.", "cat"),
        ("  The   Cat  ", "cat"),
        ("an apple", "apple"),
        ("Two", "2"),
        ("ten dogs", "10 dogs"),
        ("3.5", "3.5"),
        ("3.5.", "3.5"),
        ("It costs $3.50!", "it costs 3.50"),
        ("1,000", "1000"),
        ("red, white", "red white"),
        ("-2", "-2"),
        ("dog's bowl", "dogs bowl"),
        ("t-shirt", "t shirt"),
        ("Yes.", "yes"),
        ("\u201cquoted\u201d", "quoted"),
        ("", ""),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


@pytest.mark.parametrize(
    ("prediction", "expected"),
    [
        ("B", 1),
        ("b", 1),
        ("B.", 1),
        ("(B)", 1),
        ("B) a bird", 1),
        ("(c) dog", 2),
        ("C: dog", 2),
        ("**A**", 0),
        ("Answer: B", 1),
        ("answer: (c)", 2),
        ("The answer is B.", 1),
        ("The correct option is C", 2),
        ("First I thought the answer is A, but the answer is C.", 2),
        ("I think (B) is right.", 1),
        ("dog", None),
        ("A dog.", None),  # an article, not a choice
        ("the answer is a dog", None),
        ("D", None),  # out of range for 3 choices
        ("The answer is E.", None),
        ("(A) or (B)", 0),  # a leading marked letter wins
        ("maybe (A), maybe (B)", None),  # two different marked letters: undecided
        ("", None),
    ],
)
def test_parse_choice(prediction, expected):
    assert parse_choice(prediction, 3) == expected


def test_parse_choice_out_of_range_falls_through_to_a_valid_letter():
    assert parse_choice("E. no wait, the answer is B", 4) == 1
    assert parse_choice("Z", 26) == 25


@pytest.mark.parametrize("num_choices", [0, 27])
def test_parse_choice_validates_num_choices(num_choices):
    with pytest.raises(ValueError, match="num_choices"):
        parse_choice("A", num_choices)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [("B", 1), ("b", 1), ("(C)", 2), ("A.", 0), ("dog", 2), ("The Bird.", 1), (" cat ", 0)],
)
def test_answer_index(answer, expected):
    assert answer_index(answer, CHOICES) == expected


@pytest.mark.parametrize("answer", ["D", "fish", "", "the"])
def test_answer_index_unknown(answer):
    with pytest.raises(ValueError):
        answer_index(answer, CHOICES)


def test_answer_index_prefers_the_letter():
    assert answer_index("A", ["B", "A"]) == 0


@pytest.mark.parametrize(
    ("prediction", "answer", "expected"),
    [
        ("A cat.", "cat", True),
        ("two", "2", True),
        ("2", "Two", True),
        ("3.5", "3.50", False),
        ("cats", "cat", False),
        ("", "", False),
        ("The dog", "dog", True),
        ("a black dog", "dog", False),
    ],
)
def test_is_correct_open(prediction, answer, expected):
    assert is_correct(prediction, answer) is expected


@pytest.mark.parametrize(
    ("prediction", "answer", "expected"),
    [
        ("B", "B", True),
        ("B", "bird", True),
        ("(c) dog", "dog", True),
        ("(c) dog", "C", True),
        ("the answer is A", "C", False),
        ("The answer is C.", "dog", True),
        ("dog", "C", True),  # the right choice's text, no letter
        ("A dog.", "dog", True),
        ("cat", "C", False),
        ("A) dog", "C", False),  # the letter decides, not the text after it
        ("D", "C", False),  # out of range: no letter, and "d" is not the gold text
        ("", "C", False),
    ],
)
def test_is_correct_multiple_choice(prediction, answer, expected):
    assert is_correct(prediction, answer, CHOICES) is expected


def test_is_correct_rejects_unknown_gold():
    with pytest.raises(ValueError):
        is_correct("A", "fish", CHOICES)


# --- boundaries and messages (mutants that survived `make mutation`; see docs/mutation.md) -----


def test_one_to_twenty_six_choices_are_allowed():
    assert parse_choice("A", 1) == 0
    assert parse_choice("Z", 26) == 25
    letters = [chr(ord("A") + i) for i in range(26)]
    assert answer_index("only", ["only"]) == 0
    assert answer_index("Z", letters) == 25
    with pytest.raises(ValueError, match="num_choices must be in 1..26, got 27"):
        parse_choice("A", 27)
    with pytest.raises(ValueError, match="choices must hold 1..26 options, got 27"):
        answer_index("A", letters + ["extra"])
    with pytest.raises(ValueError, match="choices must hold 1..26 options, got 0"):
        answer_index("A", [])


def test_answer_index_error_names_the_answer():
    with pytest.raises(ValueError, match="answer 'dog' is neither an option letter"):
        answer_index("dog", ["cat", "bird"])


def test_a_minus_sign_after_a_space_and_a_point_before_a_letter():
    assert normalize_answer("move -2 steps") == "move -2 steps"
    assert normalize_answer("version 3.x") == "version 3 x"
