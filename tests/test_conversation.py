"""GLUS conversations against the oracle: inference prompts/ids per step and the collated training batch."""

import json

import numpy as np
import pytest

from glus_jax.data import conversation as conv
from glus_jax.data.tokenizer import GLUSTokenizer
from tests.conftest import GOLDEN


@pytest.fixture(scope="module")
def tok():
    return GLUSTokenizer.from_dir(GOLDEN / "tok_glus_tiny")


@pytest.fixture(scope="module")
def steps():
    return json.loads((GOLDEN / "conv_inference_steps.json").read_text())


@pytest.fixture(scope="module")
def train():
    return json.loads((GOLDEN / "conv_train_forward.json").read_text()), np.load(
        GOLDEN / "conv_train_forward.npz"
    )


def test_inference_prompts_and_ids(tok, steps):
    cases = [c for c in steps if c != "expression"]
    assert cases == ["infer", "infer_gamma_loaded"]
    for case in cases:
        assert len(steps[case]) == 10
        for i, step in enumerate(steps[case], start=1):
            # Step i of the clip: the window holds min(i, question_frame_num=4) question rounds.
            rounds = min(i, 4)
            assert step["question_frame_num"] == rounds
            prompt = conv.inference_prompt(steps["expression"], rounds)
            assert prompt == step["prompt"], (case, i)
            assert tok.tokenizer_image_token(prompt) == step["input_ids"], (case, i)


def test_past_answer_comes_from_decoding(tok, steps):
    # inference_frames stores the decoded prompt + generated [SEG] as the round's answer.
    for step in steps["infer"][:5]:
        assert (
            conv.answer_from_output(tok, step["input_ids"] + [tok.seg_token_id]) == conv.INFERENCE_PAST_ANSWER
        )


def test_inference_prompt_details():
    prompt = conv.inference_prompt("The Ball.", 2, [conv.INFERENCE_FAILED_ANSWER], use_mm_start_end=False)
    assert prompt.count("Can you segment the the ball in this frame?") == 2
    assert prompt.count("<image>") == 4 + 2 and "<im_start>" not in prompt
    assert "ASSISTANT: Sure, the segmentation result is [SEG] .</s>USER: <image>\nCan" in prompt
    assert prompt.endswith("ASSISTANT: Sure, the segmentation result is ")
    with pytest.raises(ValueError, match="past answers"):
        conv.inference_prompt("x", 3, ["a"])


def _recorded_template_indices(record):
    """Question / answer template indices of every conversation row, recovered from the recorded strings."""
    rows = []
    for classes, questions in zip(record["sampled_classes_list"], record["questions_list"]):
        for expression, qs in zip(classes, questions):
            options = [
                t.format(class_name=conv.training_expression(expression)) for t in conv.SHORT_QUESTION_LIST
            ]
            answers = conv.parse_answers(record["conversation_list"][len(rows)])
            rows.append(
                (expression, [options.index(q) for q in qs], [conv.ANSWER_LIST.index(a) for a in answers])
            )
    return rows


def test_training_batch(tok, train):
    record, arrays = train
    rows = _recorded_template_indices(record)
    conversations = [conv.training_conversation(e, q, a) for e, q, a in rows]
    assert [conv.with_mm_start_end(c) for c in conversations] == record["conversation_list"]
    for e, q, _ in rows[:1]:
        assert conv.training_questions(e, q) == record["questions_list"][0][0]

    batch = conv.collate_conversations(tok, conversations, max_len=189)
    np.testing.assert_array_equal(batch["input_ids"], arrays["input_ids"])
    np.testing.assert_array_equal(batch["labels"], arrays["labels"])
    np.testing.assert_array_equal(batch["attention_mask"], arrays["attention_masks"])
    assert batch["input_ids"].dtype == np.int32 and batch["attention_mask"].dtype == bool

    # A longer static length only adds padding; a shorter one is refused.
    wide = conv.collate_conversations(tok, conversations, max_len=200)
    np.testing.assert_array_equal(wide["input_ids"][:, :189], arrays["input_ids"])
    assert (wide["input_ids"][:, 189:] == 0).all() and (wide["labels"][:, 189:] == -100).all()
    assert not wide["attention_mask"][:, 189:].any()
    with pytest.raises(ValueError, match="max_len=180"):
        conv.collate_conversations(tok, conversations, max_len=180)


def test_labels_cover_exactly_the_answers(tok, train):
    record, _ = train
    expression, q, a = _recorded_template_indices(record)[1]
    batch = conv.collate_conversations(tok, [conv.training_conversation(expression, q, a)], max_len=189)
    labels = batch["labels"][0]
    kept = labels[labels != -100]
    # Each answer is labelled from the token after "ASSISTANT:" ("▁ASSISTANT", ":") through its "</s>".
    expected = [
        t
        for i in a
        for t in tok.encode(f"ASSISTANT: {conv.ANSWER_LIST[i]}</s>", add_special_tokens=False)[2:]
    ]
    assert kept.tolist() == expected
    assert (kept == tok.eos_id).sum() == len(a) and (kept == tok.seg_token_id).sum() == len(a)


def test_sample_template_indices_deterministic():
    q1, a1 = conv.sample_template_indices(np.random.default_rng(3), 2, 4)
    q2, a2 = conv.sample_template_indices(np.random.default_rng(3), 2, 4)
    np.testing.assert_array_equal(q1, q2)
    np.testing.assert_array_equal(a1, a2)
    assert q1.shape == a1.shape == (2, 4)
    assert q1.max() < len(conv.SHORT_QUESTION_LIST) and a1.max() < len(conv.ANSWER_LIST)
