"""The tokenizer of the synthetic world: a small sentencepiece BPE model trained on the world's words.

The LLaMA tokenizer (32000 pieces) cannot reach the development machines and would dwarf a tiny model, so
the synthetic world (`glus_jax.data.synthetic`) gets its own sentencepiece model, built like LLaMA's: BPE
with byte fallback (no text ever maps to `<unk>`), identity normalisation, `<unk>`, `<s>`, `</s>` = 0, 1,
2. It is trained in memory, single-threaded, on a fixed corpus: the generator's vocabulary
(`synthetic.VOCABULARY`) and every GLUS prompt and answer text (`conversation.SYSTEM`, `CONTEXT_INFO_LIST`,
`SHORT_QUESTION_LIST`, `ANSWER_LIST`, the inference answers, the role names), so each of those words is
one piece and the result is byte-identical run to run.

One deliberate difference from LLaMA: leading, trailing and repeated whitespace is dropped
(`remove_extra_whitespaces`). The inference prompt ends with the answer prefix "... result is " and
GLUS takes the [SEG] embedding from the state of its last token; LLaMA turns that trailing space into a
lone `▁` piece, which training conversations ("... result is [SEG].") never contain before [SEG]. A
pretrained LLaMA copes; a model learnt from scratch would read an untrained embedding exactly where its
[SEG] state is formed. Here the prompt ends with `▁is`, the token that precedes [SEG] in training. (The
reference's label arithmetic in `conversation.training_targets`, which subtracts that lone `▁`, then
also labels the ":" of "ASSISTANT:"; the train step reads the CE only at the [SEG] positions.)

`GLUSTokenizer` wraps it exactly as it wraps LLaMA's: `[SEG]`, `<im_start>`, `<im_end>` are appended after
the `SP_VOCAB_SIZE` pieces (ids `SEG_TOKEN_ID`, +1, +2; `VOCAB_SIZE` in all, the LLM's vocabulary).

    tok = build_world_tokenizer("runs/world_tokenizer")   # writes a tokenizer directory, returns it
    GLUSTokenizer.from_dir(world_tokenizer_dir(), add_glus_tokens=False)   # the packaged copy

`python -m glus_jax.data.synthetic_tokenizer OUT_DIR` writes the directory (how the packaged copy under
`glus_jax/assets/world_tokenizer/` was made).
"""

from __future__ import annotations

import argparse
import io
import os
import re
import string
from pathlib import Path

import sentencepiece as spm

from glus_jax.data import conversation as conv
from glus_jax.data.synthetic import VOCABULARY
from glus_jax.data.tokenizer import GLUS_ADDED_TOKENS, GLUSTokenizer

# Pieces of the sentencepiece model: 3 specials + 256 byte pieces + characters + BPE merges. The smallest
# round size at which every corpus word (split at punctuation, as sentencepiece splits it) is one piece;
# tests/test_synthetic_tokenizer.py checks that property.
SP_VOCAB_SIZE = 640
SEG_TOKEN_ID = SP_VOCAB_SIZE  # [SEG]; <im_start>, <im_end> follow
VOCAB_SIZE = SP_VOCAB_SIZE + len(GLUS_ADDED_TOKENS)

# Characters kept as pieces even if the corpus lacks them, so an expression typed by a user composes
# from characters rather than bytes (inference lowercases expressions).
_REQUIRED_CHARS = string.ascii_lowercase + string.digits + ".,?!'-:"
# Text between these is what sentencepiece sees (GLUSTokenizer splits around them); `{class_name}` is
# the expression slot of the question templates.
_SPLIT_RE = re.compile(r"\[SEG\]|<im_start>|<im_end>|<image>|</s>|<s>|<unk>|\{class_name\}")


def corpus_texts() -> list[str]:
    """Every prompt / answer text of GLUS (conversation.py) and the roles (before splitting)."""
    return [
        conv.SYSTEM,
        *conv.CONTEXT_INFO_LIST,
        *conv.SHORT_QUESTION_LIST,
        *conv.ANSWER_LIST,
        conv.INFERENCE_ANSWER_PREFIX,
        conv.INFERENCE_PAST_ANSWER,
        conv.INFERENCE_FAILED_ANSWER,
        *(role + ":" for role in conv.ROLES),
    ]


def corpus_words() -> list[str]:
    """The training corpus: one whitespace-free word per sentence, templates first, then the world's
    vocabulary (BPE never merges across whitespace, so sentences beyond words carry no information)."""
    words: list[str] = []
    for text in corpus_texts():
        for chunk in _SPLIT_RE.split(text):
            words.extend(chunk.split())
    words.extend(VOCABULARY)
    return words


def train_sp_model(vocab_size: int = SP_VOCAB_SIZE) -> bytes:
    """The serialized sentencepiece model (deterministic: fixed corpus order, one thread)."""
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus_words()),
        model_writer=out,
        model_type="bpe",
        vocab_size=vocab_size,
        character_coverage=1.0,
        required_chars=_REQUIRED_CHARS,
        byte_fallback=True,
        split_digits=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=True,
        add_dummy_prefix=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    return out.getvalue()


def build_world_tokenizer(out_dir: str | os.PathLike | None = None) -> GLUSTokenizer:
    """The world's GLUSTokenizer (sentencepiece model + [SEG], <im_start>, <im_end>).

    With `out_dir`, also writes it there as a tokenizer directory (tokenizer.model, added_tokens.json,
    special_tokens_map.json, tokenizer_config.json) that `GLUSTokenizer.from_dir` and model directories
    read."""
    proto = train_sp_model()
    sp = spm.SentencePieceProcessor()
    sp.LoadFromSerializedProto(proto)
    tok = GLUSTokenizer(sp, GLUS_ADDED_TOKENS, source="<synthetic world tokenizer>")
    if (tok.seg_token_id, len(tok)) != (SEG_TOKEN_ID, VOCAB_SIZE):  # a changed corpus or trainer
        raise RuntimeError(
            f"world tokenizer: [SEG] id {tok.seg_token_id} / size {len(tok)}, expected {SEG_TOKEN_ID} / "
            f"{VOCAB_SIZE}"
        )
    if out_dir is not None:
        tok.save(out_dir)
    return tok


def world_tokenizer_dir() -> Path:
    """The packaged tokenizer directory (`glus_jax/assets/world_tokenizer/`)."""
    return Path(__file__).resolve().parent.parent / "assets" / "world_tokenizer"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Write the synthetic world's tokenizer directory.")
    p.add_argument("out_dir")
    args = p.parse_args(argv)
    tok = build_world_tokenizer(args.out_dir)
    print(f"wrote {args.out_dir}: {len(tok)} tokens ([SEG] = {tok.seg_token_id})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
