"""The prompts STIC uses, verbatim from the paper's method, and the two templates built on them.

Stage 1a generates the preferred description with GOOD_PROMPT, the dis-preferred one with a
BAD_PROMPT (clean image) or a PLAIN_PROMPT (corrupted image), and stores one PLAIN_PROMPT as the
pair's user turn. Stage 2 and describe-and-respond put a description in front of a question with
:func:`infuse_description`.
"""

from __future__ import annotations

GOOD_PROMPT = "\n".join(
    [
        "Please provide a detailed description of the image, focusing on the following.",
        "Identify the main subjects (people, animals, objects) in the image and describe what they are doing.",
        "Describe the setting of the image. Is it indoors or outdoors? What kind of environment or location does it depict?",
        "What mood does the image convey? Are there any specific elements (such as lighting, weather, expressions) that contribute to this atmosphere?",
        "Describe the dominant colors and the overall composition. How do these elements affect the image's impact?",
        "Point out any details or symbols that might be relevant to understanding the image's meaning or context.",
        "If applicable, provide interpretations of what the image might represent or communicate.",
    ]
)

# Hallucination-inducing prompts: answered on the clean image, they give the dis-preferred side.
BAD_PROMPTS = (
    "Describe the image with imaginative objects that may exist in the scene.",
    "Enrich the description by adding hypothetical objects or characters that could be part of the scene.",
    "Suggest and detail practical items or people that could logically inhabit the image's setting.",
    "Incorporate elements that, though absent, would seamlessly fit into the context of the picture.",
    "Imagine and describe additional everyday objects or activities taking place just out of frame.",
    "Augment the scene with details of potential events or items that are plausible.",
    "Conceive of and detail natural elements, such as weather or animals, that could realistically enter the scene. Make the description affirmative.",
    "Invent and incorporate details of practical tools, vehicles, or gadgets that could be expected in a similar scenario.",
)

# Plain description requests: the stored prompt of every pair, the prompt used on corrupted
# images, and the prompt stage 2 uses to describe instruction-data images.
PLAIN_PROMPTS = (
    "Illustrate the details of the picture.",
    "Summarize the visual content presented.",
    "Explain what is depicted in the photograph.",
    "Outline the key elements captured in the image.",
    "Detail the composition and subjects within the frame.",
    "Convey the atmosphere and mood represented in the snapshot.",
    "Interpret the scene shown in the image.",
    "Identify and describe the main focal points in the visual.",
)

# Describe-and-respond, step 1: always this plain prompt (the paper's choice).
DAR_DESCRIBE_PROMPT = PLAIN_PROMPTS[4]

IMAGE_TOKEN = "<image>"
DESCRIPTION_HEADER = "Image description:\n"

# Evaluation instructions in the style of LLaVA-1.5's benchmark prompts.
SHORT_ANSWER_INSTRUCTION = "Answer the question using a single word or phrase."
CHOICE_INSTRUCTION = "Answer with the option's letter from the given choices directly."
CHOICE_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def strip_image_placeholder(text: str) -> str:
    """LLaVA data marks the image with ``<image>``; the chat template places it instead."""
    return text.replace(IMAGE_TOKEN, "").strip()


def infuse_description(text: str, description: str) -> str:
    """Put ``description`` in front of a user turn, as stage 2 and describe-and-respond do.

    A turn that starts with the LLaVA image placeholder keeps it first:
    ``"<image>\\nQ"`` becomes ``"<image>\\nImage description:\\n{d}\\n\\nQ"``; any other turn
    is prefixed with ``"Image description:\\n{d}\\n\\n"``.
    """
    block = f"{DESCRIPTION_HEADER}{description}\n\n"
    placeholder = IMAGE_TOKEN + "\n"
    if text.startswith(placeholder):
        return placeholder + block + text[len(placeholder) :]
    return block + text


def question_prompt(
    question: str,
    choices: list[str] | None = None,
    instruction: str | None = None,
) -> str:
    """The text of an evaluation question: the question, lettered choices, an instruction.

    ``instruction=None`` picks :data:`CHOICE_INSTRUCTION` for multiple choice and
    :data:`SHORT_ANSWER_INSTRUCTION` otherwise; ``""`` adds none.
    """
    lines = [question.strip()]
    if choices:
        lines += [f"{CHOICE_LETTERS[i]}. {choice}" for i, choice in enumerate(choices)]
    if instruction is None:
        instruction = CHOICE_INSTRUCTION if choices else SHORT_ANSWER_INSTRUCTION
    if instruction:
        lines.append(instruction)
    return "\n".join(lines)
