"""Tests for stic.data.prompts: the three prompt banks verbatim from the method, and the templates."""

from __future__ import annotations

import pytest

from stic.data.prompts import (
    BAD_PROMPTS,
    CHOICE_INSTRUCTION,
    DAR_DESCRIBE_PROMPT,
    DESCRIPTION_HEADER,
    GOOD_PROMPT,
    IMAGE_TOKEN,
    PLAIN_PROMPTS,
    SHORT_ANSWER_INSTRUCTION,
    infuse_description,
    question_prompt,
    strip_image_placeholder,
)

# Copied from docs/method.md (the paper's prompts), not from the module under test.
GOOD_FIRST = "Please provide a detailed description of the image, focusing on the following."
GOOD_THIRD = (
    "Describe the setting of the image. Is it indoors or outdoors? "
    "What kind of environment or location does it depict?"
)
GOOD_LAST = (
    "If applicable, provide interpretations of what the image might represent or communicate."
)
BAD_FIRST = "Describe the image with imaginative objects that may exist in the scene."
BAD_SEVENTH = (
    "Conceive of and detail natural elements, such as weather or animals, that could "
    "realistically enter the scene. Make the description affirmative."
)
BAD_LAST = (
    "Invent and incorporate details of practical tools, vehicles, or gadgets that could be "
    "expected in a similar scenario."
)
PLAIN_FIRST = "Illustrate the details of the picture."
PLAIN_LAST = "Identify and describe the main focal points in the visual."


def test_good_prompt_is_seven_lines_verbatim():
    lines = GOOD_PROMPT.split("\n")
    assert len(lines) == 7
    assert lines[0] == GOOD_FIRST
    assert lines[2] == GOOD_THIRD
    assert lines[-1] == GOOD_LAST
    assert GOOD_PROMPT.startswith(GOOD_FIRST + "\n")
    assert GOOD_PROMPT.endswith("\n" + GOOD_LAST)
    assert all(line == line.strip() and line for line in lines)
    assert (
        lines[3] == "What mood does the image convey? Are there any specific elements (such as "
        "lighting, weather, expressions) that contribute to this atmosphere?"
    )


def test_bad_prompts_verbatim():
    assert len(BAD_PROMPTS) == 8
    assert len(set(BAD_PROMPTS)) == 8
    assert BAD_PROMPTS[0] == BAD_FIRST
    assert BAD_PROMPTS[6] == BAD_SEVENTH
    assert BAD_PROMPTS[-1] == BAD_LAST
    assert (
        BAD_PROMPTS[3]
        == "Incorporate elements that, though absent, would seamlessly fit into the context of the picture."
    )


def test_plain_prompts_verbatim():
    assert len(PLAIN_PROMPTS) == 8
    assert len(set(PLAIN_PROMPTS)) == 8
    assert PLAIN_PROMPTS[0] == PLAIN_FIRST
    assert PLAIN_PROMPTS[-1] == PLAIN_LAST
    assert PLAIN_PROMPTS[5] == "Convey the atmosphere and mood represented in the snapshot."


def test_banks_do_not_overlap_and_hold_no_placeholder():
    assert not set(BAD_PROMPTS) & set(PLAIN_PROMPTS)
    for prompt in (GOOD_PROMPT, *BAD_PROMPTS, *PLAIN_PROMPTS):
        assert IMAGE_TOKEN not in prompt


def test_dar_describe_prompt():
    assert DAR_DESCRIBE_PROMPT == "Detail the composition and subjects within the frame."
    assert DAR_DESCRIBE_PROMPT in PLAIN_PROMPTS


def test_description_header():
    assert DESCRIPTION_HEADER == "Image description:\n"


def test_infuse_keeps_the_image_placeholder_first():
    text = "<image>\nWhat color is the car?"
    assert (
        infuse_description(text, "A red car on a street.")
        == "<image>\nImage description:\nA red car on a street.\n\nWhat color is the car?"
    )


def test_infuse_prefixes_a_turn_without_placeholder():
    assert (
        infuse_description("What color is the car?", "A red car.")
        == "Image description:\nA red car.\n\nWhat color is the car?"
    )


def test_infuse_placeholder_not_at_the_start_is_prefixed():
    # Only a leading "<image>\n" is the LLaVA convention to keep first.
    text = "Look: <image>\nWhat is it?"
    assert infuse_description(text, "D") == "Image description:\nD\n\nLook: <image>\nWhat is it?"
    # "<image>" without its newline is not the placeholder line either.
    assert infuse_description("<image>Q", "D") == "Image description:\nD\n\n<image>Q"


def test_infuse_multiline_description_is_kept_verbatim():
    description = "Line one.\nLine two."
    assert (
        infuse_description("<image>\nQ", description)
        == "<image>\nImage description:\nLine one.\nLine two.\n\nQ"
    )


def test_question_prompt_short_answer_default():
    assert (
        question_prompt("  What color is the car? \n")
        == "What color is the car?\nAnswer the question using a single word or phrase."
    )
    assert SHORT_ANSWER_INSTRUCTION == "Answer the question using a single word or phrase."


def test_question_prompt_with_choices_default():
    assert question_prompt("Which animal?", ["cat", "dog", "bird"]) == (
        "Which animal?\nA. cat\nB. dog\nC. bird\n"
        "Answer with the option's letter from the given choices directly."
    )
    assert CHOICE_INSTRUCTION == "Answer with the option's letter from the given choices directly."


@pytest.mark.parametrize("choices", [None, []])
def test_question_prompt_without_choices_uses_short_answer(choices):
    assert question_prompt("Q?", choices) == "Q?\n" + SHORT_ANSWER_INSTRUCTION


def test_question_prompt_empty_instruction_adds_none():
    assert question_prompt("Q?", instruction="") == "Q?"
    assert question_prompt("Q?", ["x", "y"], instruction="") == "Q?\nA. x\nB. y"


def test_question_prompt_custom_instruction():
    assert question_prompt("Q?", instruction="Answer briefly.") == "Q?\nAnswer briefly."
    assert question_prompt("Q?", ["x", "y"], instruction="Pick one.") == "Q?\nA. x\nB. y\nPick one."


def test_strip_image_placeholder():
    assert strip_image_placeholder("<image>\nWhat is this?") == "What is this?"
    assert strip_image_placeholder("What is this?\n<image>") == "What is this?"
    assert strip_image_placeholder("  no placeholder  ") == "no placeholder"
    assert strip_image_placeholder("A <image> B") == "A  B"
    assert strip_image_placeholder("<image>") == ""
