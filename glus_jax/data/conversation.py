"""GLUS conversations: the llava_v1 template, GLUS's phrase lists, inference prompts and training targets.

Ports (pure functions; template choices are explicit indices so the data pipeline stays deterministic):
- `model/llava/conversation.py`: `conv_llava_v1` (SeparatorStyle.TWO) and `Conversation.get_prompt`.
- `utils/utils.py`: CONTEXT_INFO_LIST, SHORT_QUESTION_LIST, ANSWER_LIST (verbatim, typos included).
- `inference_iter.py: inference_frames`: the per-step prompt (quirk Q7 of the oracle README).
- `dataset/refer_video_seg_dataset.py: ReferVideoSegDataset.__getitem__`: the training conversation per expression.
- `dataset/dataset.py: collate_fn`: `<image>` -> `<im_start><image><im_end>`, tokenization, label masking.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from glus_jax.data.tokenizer import (
    DEFAULT_IMAGE_TOKEN,
    IM_END_TOKEN,
    IM_START_TOKEN,
    GLUSTokenizer,
)

IGNORE_INDEX = -100

# conv_llava_v1 (SeparatorStyle.TWO).
SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
ROLES = ("USER", "ASSISTANT")
SEP = " "
SEP2 = "</s>"

CONTEXT_FRAME_NUM = 4  # utils.py builds CONTEXT_INFO_LIST with this many <image>s
CONTEXT_INFO_LIST = [
    DEFAULT_IMAGE_TOKEN * CONTEXT_FRAME_NUM
    + "\n"
    + "Please finished the following tasks on the context frames above."
    + "\n",
]
SHORT_QUESTION_LIST = [
    DEFAULT_IMAGE_TOKEN + "\n" + "Can you segment the {class_name} in this frame?",
    DEFAULT_IMAGE_TOKEN + "\n" + "Please segment the {class_name} in this frame.",
    DEFAULT_IMAGE_TOKEN + "\n" + "What is {class_name} in this frame? Please respond with segmentation mask.",
    DEFAULT_IMAGE_TOKEN + "\n" + "What is {class_name} in this frame? Please output segmentation mask.",
]
ANSWER_LIST = [
    "It is [SEG].",
    "Sure, [SEG].",
    "Sure, it is [SEG].",
    "Sure, the segmentation result is [SEG].",
    "[SEG].",
]

# Inference: the assistant turn of the newest round is this prefix (the trailing space is kept: the prompt is
# cut before its "</s>"), and the past rounds' answers are the decoded text of the previous steps, which is
# INFERENCE_PAST_ANSWER whenever the model emitted [SEG] (see `answer_from_output`).
INFERENCE_ANSWER_PREFIX = "Sure, the segmentation result is "
INFERENCE_PAST_ANSWER = "Sure, the segmentation result is [SEG]."
# What inference_frames appends to the answer prefix when the model did not emit [SEG].
INFERENCE_FAILED_ANSWER = INFERENCE_ANSWER_PREFIX + "[SEG] ."
# The templates of inference rounds, as indices into SHORT_QUESTION_LIST / ANSWER_LIST.
INFERENCE_QUESTION_TEMPLATE = 0
INFERENCE_ANSWER_TEMPLATE = ANSWER_LIST.index(INFERENCE_PAST_ANSWER)


def llava_v1_prompt(messages: Sequence[tuple[str, str]]) -> str:
    """`Conversation.get_prompt` for llava_v1: system, then "ROLE: msg" + " " (user) / "</s>" (assistant)."""
    out = SYSTEM + SEP
    for i, (role, message) in enumerate(messages):
        out += f"{role}: {message}{(SEP, SEP2)[i % 2]}" if message else f"{role}:"
    return out


def with_mm_start_end(text: str) -> str:
    """`<image>` -> `<im_start><image><im_end>` (use_mm_start_end=True in inference and collate_fn)."""
    return text.replace(DEFAULT_IMAGE_TOKEN, IM_START_TOKEN + DEFAULT_IMAGE_TOKEN + IM_END_TOKEN)


# ---------------------------------------------------------------------------------------------- inference
def inference_expression(expression: str) -> str:
    """inference_video/inference_frames: one trailing "." dropped, then lowercased (no whitespace strip)."""
    return expression.removesuffix(".").lower()


def inference_prompt(
    expression: str,
    num_question_rounds: int,
    past_answers: Sequence[str] | None = None,
    *,
    use_mm_start_end: bool = True,
) -> str:
    """The prompt string `inference_frames` passes to `tokenizer_image_token` at one step.

    Step i (1-based) of a clip has `num_question_rounds = min(i, question_frame_num)` rounds: the sliding
    window of the newest question frames. The first round carries the context frames
    (CONTEXT_INFO_LIST[0] + question); every round asks SHORT_QUESTION_LIST[0] (hence "the the <expr>" for
    expressions starting with "the"); the last assistant turn is the answer prefix with its trailing space.

    Args:
      expression: the raw referring expression (normalised with `inference_expression`).
      num_question_rounds: rounds in the window (>= 1).
      past_answers: the assistant texts of the first `num_question_rounds - 1` rounds (oldest first);
        default: INFERENCE_PAST_ANSWER for each.
    """
    if num_question_rounds < 1:
        raise ValueError(f"num_question_rounds must be >= 1, got {num_question_rounds}")
    if past_answers is None:
        past_answers = [INFERENCE_PAST_ANSWER] * (num_question_rounds - 1)
    if len(past_answers) != num_question_rounds - 1:
        raise ValueError(f"need {num_question_rounds - 1} past answers, got {len(past_answers)}")
    question = SHORT_QUESTION_LIST[INFERENCE_QUESTION_TEMPLATE].format(class_name=inference_expression(expression))
    messages = []
    for k, answer in enumerate([*past_answers, INFERENCE_ANSWER_PREFIX]):
        messages += [(ROLES[0], CONTEXT_INFO_LIST[0] + question if k == 0 else question), (ROLES[1], answer)]
    prompt = llava_v1_prompt(messages)
    prompt = SEP2.join(prompt.split(SEP2)[:-1])  # drop the last "</s>" (and what follows it: nothing)
    return with_mm_start_end(prompt) if use_mm_start_end else prompt


def answer_from_output(tokenizer: GLUSTokenizer, output_ids: Sequence[int]) -> str:
    """The text inference_frames stores as the step's answer in the history.

    `output_ids` are the prompt ids followed by the generated ids (image placeholders are dropped, as the
    reference does). Decoding the prompt + [SEG] and keeping what follows the last "ASSISTANT: " gives
    INFERENCE_PAST_ANSWER.
    """
    text = tokenizer.decode([int(i) for i in output_ids if int(i) >= 0]).strip()
    text = text.replace("\n", "").replace("  ", " ")
    return text.split(ROLES[1] + ": ")[-1].split(SEP2)[0] + "."


# ---------------------------------------------------------------------------------------------- training
def training_expression(expression: str) -> str:
    """ReferVideoSegDataset: one trailing "." dropped, whitespace stripped, lowercased (in the question format)."""
    return expression.removesuffix(".").strip().lower()


def sample_template_indices(
    rng: np.random.Generator, num_expressions: int, question_frame_num: int
) -> tuple[np.ndarray, np.ndarray]:
    """Uniform question / answer template choices, as `random.choice` in ReferVideoSegDataset.

    Returns (question_ids, answer_ids), each int [num_expressions, question_frame_num]. (The original draws
    from Python's `random`; we draw from an explicit generator, so the choices differ but are distributed alike.)
    """
    shape = (num_expressions, question_frame_num)
    return rng.integers(0, len(SHORT_QUESTION_LIST), shape), rng.integers(0, len(ANSWER_LIST), shape)


def training_questions(expression: str, question_ids: Sequence[int]) -> list[str]:
    """The per-frame questions of one expression (the dataset's `questions_per_text`)."""
    name = training_expression(expression)
    return [SHORT_QUESTION_LIST[int(q)].format(class_name=name) for q in question_ids]


def training_conversation(
    expression: str, question_ids: Sequence[int], answer_ids: Sequence[int], context_id: int = 0
) -> str:
    """The conversation of one expression over the question frames (before the `<im_start>` replacement).

    Round j asks SHORT_QUESTION_LIST[question_ids[j]] and answers ANSWER_LIST[answer_ids[j]]; round 0 is
    prefixed with CONTEXT_INFO_LIST[context_id].
    """
    if len(question_ids) != len(answer_ids):
        raise ValueError(f"{len(question_ids)} question ids but {len(answer_ids)} answer ids")
    messages = []
    for j, (question, a) in enumerate(zip(training_questions(expression, question_ids), answer_ids)):
        user = CONTEXT_INFO_LIST[context_id] + question if j == 0 else question
        messages += [(ROLES[0], user), (ROLES[1], ANSWER_LIST[int(a)])]
    return llava_v1_prompt(messages)


def training_targets(tokenizer: GLUSTokenizer, conversation: str) -> tuple[list[int], list[int]]:
    """Token ids and labels of one conversation (already `<im_start>`-replaced), as collate_fn computes them.

    Labels are the ids with IGNORE_INDEX everywhere except the assistant answers. The reference's length
    arithmetic is kept as is: each "</s>"-separated round is re-tokenized alone (its BOS stands in for the
    removed "</s>"), and the instruction ("... ASSISTANT: ") is masked for its token count minus 2 (its BOS
    and the lone "▁" its trailing space becomes), so the first label is that "▁" or the answer's first token.
    """
    ids = tokenizer.tokenizer_image_token(conversation)

    def length(text: str) -> int:
        if DEFAULT_IMAGE_TOKEN in conversation:
            return len(tokenizer.tokenizer_image_token(text))
        return len(tokenizer.encode(text))

    labels = list(ids)
    separator = SEP + ROLES[1] + ": "
    cur = 1
    labels[:cur] = [IGNORE_INDEX] * cur
    for turn in conversation.split(SEP2):
        if turn == "":
            break
        parts = turn.split(separator)
        if len(parts) != 2:
            raise ValueError(f"round without exactly one {separator!r}: {turn!r}")
        instruction = length(parts[0] + separator) - 2
        labels[cur : cur + instruction] = [IGNORE_INDEX] * len(labels[cur : cur + instruction])
        cur += length(turn)
    labels[cur:] = [IGNORE_INDEX] * len(labels[cur:])
    total = sum(i != tokenizer.pad_id for i in ids)
    if cur < tokenizer.model_max_length and cur != total:
        # collate_fn asserts this: the per-round lengths must add up to the whole conversation's.
        raise ValueError(
            f"round lengths add up to {cur} tokens but the conversation has {total}: {conversation!r}"
        )
    return ids, labels


def collate_conversations(
    tokenizer: GLUSTokenizer, conversations: Sequence[str], max_len: int, *, use_mm_start_end: bool = True
) -> dict[str, np.ndarray]:
    """Port of collate_fn's text side for a batch of conversation rows.

    Returns input_ids int32 [N, max_len] (right-padded with pad = unk = 0; `<image>` = -200), labels int32
    [N, max_len] (IGNORE_INDEX = -100 outside the answers and on padding) and attention_mask bool
    [N, max_len] (`input_ids != pad`, as the reference computes it). The reference pads to the longest row;
    we pad to the static `max_len` and refuse longer rows.
    """
    n = len(conversations)
    input_ids = np.full((n, max_len), tokenizer.pad_id, np.int32)
    labels = np.full((n, max_len), IGNORE_INDEX, np.int32)
    for r, conversation in enumerate(conversations):
        if use_mm_start_end:
            conversation = with_mm_start_end(conversation)
        ids, lab = training_targets(tokenizer, conversation)
        if len(ids) > max_len:
            raise ValueError(f"conversation {r} has {len(ids)} tokens, more than max_len={max_len}")
        input_ids[r, : len(ids)] = ids
        labels[r, : len(lab)] = lab
    return {"input_ids": input_ids, "labels": labels, "attention_mask": input_ids != tokenizer.pad_id}


def parse_answers(conversation: str) -> list[str]:
    """The assistant answers of a llava_v1 conversation, in order (for inspecting recorded conversations)."""
    return re.findall(re.escape(ROLES[1] + ": ") + "(.*?)" + re.escape(SEP2), conversation)
