"""The synthetic world's tokenizer (glus_jax/data/synthetic_tokenizer.py) and the model preset built on it."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from glus_jax.data import conversation as conv
from glus_jax.data import synthetic
from glus_jax.data import synthetic_tokenizer as wt
from glus_jax.data.tokenizer import IMAGE_TOKEN_INDEX, GLUSTokenizer

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tok() -> GLUSTokenizer:
    return wt.build_world_tokenizer()


@pytest.fixture(scope="module")
def expressions() -> list[str]:
    """Expressions of generated videos (all kinds, both layouts' rules) plus the longest the grammar
    allows: two 7-word singular phrases joined by "and"."""
    texts = []
    for i in range(12):
        texts += [e.text for e in synthetic.make_video(3, "train", i, multi=True).expressions]
    texts.append("the yellow triangle moving to the right and the white diamond that enters the scene")
    return texts


def _no_unk(t: GLUSTokenizer, ids: list[int], what: str) -> None:
    assert t.unk_id not in ids, f"<unk> in {what}: {[t.id_to_token(i) for i in ids if i >= 0]}"


def test_deterministic_bytes(tmp_path, tok):
    a, b = wt.train_sp_model(), wt.train_sp_model()
    assert a == b
    wt.build_world_tokenizer(tmp_path / "x")
    wt.build_world_tokenizer(tmp_path / "y")
    for f in ("tokenizer.model", "added_tokens.json", "special_tokens_map.json", "tokenizer_config.json"):
        assert (tmp_path / "x" / f).read_bytes() == (tmp_path / "y" / f).read_bytes(), f
    assert (tmp_path / "x" / "tokenizer.model").read_bytes() == a


def test_packaged_copy_matches_a_fresh_build(tok):
    """glus_jax/assets/world_tokenizer is what build_world_tokenizer writes (same pieces, ids, added
    tokens); regenerate with `python -m glus_jax.data.synthetic_tokenizer glus_jax/assets/world_tokenizer`."""
    packaged = GLUSTokenizer.from_dir(wt.world_tokenizer_dir(), add_glus_tokens=False)
    pieces = [tok.sp.id_to_piece(i) for i in range(tok.sp.get_piece_size())]
    assert [packaged.sp.id_to_piece(i) for i in range(packaged.sp.get_piece_size())] == pieces
    assert packaged.added_tokens == tok.added_tokens
    assert (packaged.bos_id, packaged.eos_id, packaged.unk_id, packaged.pad_id) == (1, 2, 0, 0)


def test_added_token_ids_follow_the_sp_vocabulary(tok):
    n = tok.sp.get_piece_size()
    assert n == wt.SP_VOCAB_SIZE
    assert (tok.seg_token_id, tok.im_start_id, tok.im_end_id) == (n, n + 1, n + 2)
    assert len(tok) == wt.VOCAB_SIZE == n + 3
    assert [tok.id_to_token(i) for i in (n, n + 1, n + 2)] == ["[SEG]", "<im_start>", "<im_end>"]
    # The added tokens are not sentencepiece pieces (they would then not be added after the vocabulary).
    for t in ("[SEG]", "<im_start>", "<im_end>", "<image>"):
        assert tok.sp.piece_to_id(t) == tok.unk_id
    assert tok.tokenize_ids("is [SEG].") == [tok.token_to_id("▁is"), n, tok.token_to_id("▁.")]
    assert "▁" not in [tok.id_to_token(i) for i in tok.tokenize_ids(conv.INFERENCE_ANSWER_PREFIX)]


def test_every_world_and_template_word_is_one_piece(tok):
    words = set(synthetic.VOCABULARY)
    for text in wt.corpus_texts():
        words.update(re.findall(r"[A-Za-z]+", re.sub(r"\[SEG\]|<[a-z_/]+>|\{class_name\}", " ", text)))
    split = {w: tok.tokenize_ids(w) for w in sorted(words)}
    assert {w: [tok.id_to_token(i) for i in ids] for w, ids in split.items() if len(ids) != 1} == {}


def test_inference_prompts_have_no_unk_and_round_trip(tok, expressions):
    for e in expressions:
        for rounds in range(1, conv.CONTEXT_FRAME_NUM + 1):
            ids = tok.tokenizer_image_token(conv.inference_prompt(e, rounds))
            _no_unk(tok, ids, f"inference prompt of {e!r}")
            assert ids.count(IMAGE_TOKEN_INDEX) == conv.CONTEXT_FRAME_NUM + rounds
            # The answer prefix's trailing space is dropped: the prompt ends with the token that precedes
            # [SEG] in training ("... result is [SEG]."), not with LLaMA's lone "▁" (module docstring).
            assert ids[-1] == tok.token_to_id("▁is")
        # The history text inference derives from the prompt + [SEG] (answer_from_output).
        ids = tok.tokenizer_image_token(conv.inference_prompt(e, 2)) + [tok.seg_token_id]
        assert conv.answer_from_output(tok, ids) == conv.INFERENCE_PAST_ANSWER
        # Expressions decode back to themselves.
        assert tok.decode(tok.encode(e), skip_special_tokens=True) == e


def test_training_conversations_have_no_unk_and_label_the_answers(tok, expressions):
    rng = np.random.default_rng(0)
    for e in expressions:
        q_ids, a_ids = conv.sample_template_indices(rng, 1, conv.CONTEXT_FRAME_NUM)
        text = conv.with_mm_start_end(conv.training_conversation(e, q_ids[0], a_ids[0]))
        ids, labels = conv.training_targets(tok, text)
        _no_unk(tok, [i for i in ids if i >= 0], f"training conversation of {e!r}")
        labelled = [i for i, lab in zip(ids, labels) if lab != conv.IGNORE_INDEX]
        answers = [conv.ANSWER_LIST[a] for a in a_ids[0]]
        # The labelled tokens are the answers, each followed by </s>, and (without LLaMA's lone "▁" after
        # "ASSISTANT:", which the reference's arithmetic subtracts) preceded by the ":".
        colon = tok.token_to_id(":")
        want = [i for a in answers for i in [colon, *tok.tokenize_ids(a), tok.eos_id]]
        assert labelled == want, (tok.decode(labelled), answers)
        assert labelled.count(tok.seg_token_id) == conv.CONTEXT_FRAME_NUM


def test_answers_decode_to_themselves(tok):
    for a in [*conv.ANSWER_LIST, conv.INFERENCE_PAST_ANSWER]:
        # LLaMA's slow decode joins an added token to the text around it with spaces ("[SEG] .").
        assert tok.decode(tok.tokenize_ids(a)).replace(" .", ".") == a


def test_unseen_text_falls_back_to_bytes(tok):
    text = "the Ünïcode 🐙 Thing, 42!"
    ids = tok.encode(text)
    _no_unk(tok, ids, text)
    assert tok.decode(ids, skip_special_tokens=True) == text


def test_longest_conversation_fits_the_synthetic_config(tok):
    """configs/synthetic.py's data.max_seq_len holds the longest possible world conversation: the
    longest expression (15 words, each one token) asked with the longest template in every round."""
    from glus_jax.config import load_experiment_config

    cfg = load_experiment_config(ROOT / "configs" / "synthetic.py")
    e = "the yellow triangle moving to the right and the white diamond that enters the scene"
    longest = 0
    for q in range(len(conv.SHORT_QUESTION_LIST)):
        for a in range(len(conv.ANSWER_LIST)):
            text = conv.with_mm_start_end(conv.training_conversation(e, [q] * 4, [a] * 4))
            longest = max(longest, len(conv.training_targets(tok, text)[0]))
    assert longest <= cfg.data.max_seq_len
    assert longest > cfg.data.max_seq_len - 8  # and does not waste much padding
    assert cfg.model.tokenizer == str(wt.world_tokenizer_dir())


def test_world_preset_matches_the_tokenizer_and_fits_the_package():
    import jax
    from flax import nnx

    from glus_jax.models.glus import GLUS
    from glus_jax.models.presets_synthetic import synthetic_world

    cfg = synthetic_world()
    assert cfg.llava.llama.vocab_size == wt.VOCAB_SIZE and cfg.seg_token_id == wt.SEG_TOKEN_ID
    assert cfg.tokens_per_image == 16
    model = nnx.eval_shape(lambda: GLUS(cfg, rngs=nnx.Rngs(0)))
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert 1_000_000 < n and 4 * n < 30e6, n  # float32 model directory within the 30 MB budget
