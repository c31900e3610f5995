"""GLUSTokenizer against the original slow LLaMA tokenizer (transformers 4.31) as recorded by the oracle."""

import json
import shutil

import numpy as np
import pytest

from glus_jax.data.tokenizer import IMAGE_TOKEN_INDEX, GLUSTokenizer
from tests.conftest import GOLDEN

TOK_DIR = GOLDEN / "tok_glus_tiny"


@pytest.fixture(scope="module")
def tok():
    return GLUSTokenizer.from_dir(TOK_DIR)


def test_vocabulary_and_ids(tok):
    assert len(tok) == 515
    assert (tok.seg_token_id, tok.im_start_id, tok.im_end_id) == (512, 513, 514)
    assert (tok.bos_id, tok.eos_id, tok.unk_id, tok.pad_id) == (1, 2, 0, 0)
    assert tok.encode("[SEG]", add_special_tokens=False) == [512]


def test_split_around_added_tokens(tok):
    # Added tokens strip whitespace (newlines included) on both sides; </s> (an AddedToken with
    # lstrip=rstrip=False in special_tokens_map.json) strips nothing.
    assert tok.split("USER: <im_start><image><im_end>\nCan [SEG]. </s> USER") == [
        "USER:",
        "<im_start>",
        "<image>",
        "<im_end>",
        "Can",
        "[SEG]",
        ". ",
        "</s>",
        " USER",
    ]
    assert tok.split("<im_end> <im_start>") == ["<im_end>", "<im_start>"]
    assert tok.split("plain text ") == ["plain text "]


def test_pieces_get_their_own_dummy_prefix(tok):
    # Quirk Q3: "is [SEG]." -> ▁is [SEG] ▁ . ; every piece is encoded with sentencepiece's dummy prefix.
    sp = tok.sp
    assert tok.encode("is [SEG].", add_special_tokens=False) == sp.encode("is") + [512] + sp.encode(".")
    assert [sp.id_to_piece(i) for i in sp.encode(".")] == ["▁", "."]
    assert tok.encode("a</s>b") == [1, *sp.encode("a"), 2, *sp.encode("b")]
    # The inference answer prefix ends with a lone "▁".
    assert tok.id_to_token(tok.encode("Sure, the segmentation result is ")[-1]) == "▁"


def test_plain_string_special_tokens_strip():
    # A special_tokens_map with plain strings (no AddedToken flags) strips around <s>/</s> like an added token.
    base = GLUSTokenizer.from_dir(TOK_DIR)
    smap = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    tok = GLUSTokenizer(base.sp, ["[SEG]"], special_tokens_map=smap)
    assert tok.split("a </s> b") == ["a", "</s>", "b"]


def test_tokenizer_image_token(tok):
    ids = tok.tokenizer_image_token("<image>\nhi <im_start><image><im_end> x")
    assert ids == [
        1,
        IMAGE_TOKEN_INDEX,
        *tok.sp.encode("\nhi"),
        513,
        IMAGE_TOKEN_INDEX,
        514,
        *tok.sp.encode("x"),
    ]


def test_decode_answer_round_trip(tok):
    text = "Sure, the segmentation result is [SEG]."
    ids = tok.encode(text, add_special_tokens=False)
    # The 4.31 decoder joins added tokens to the text with a space; the text after [SEG] loses its dummy
    # prefix space unless a special token follows it (" " is then put before the special token).
    assert tok.decode(ids) == "Sure, the segmentation result is [SEG] ."
    assert tok.decode([*ids, tok.eos_id]) == "Sure, the segmentation result is [SEG]  .</s>"
    # The inference history text: the prompt's answer prefix plus the generated [SEG], cleaned as
    # inference_frames does (strip, "  " -> " ") and given back its ".".
    prefix = tok.encode("Sure, the segmentation result is ", add_special_tokens=False)
    assert tok.decode([*prefix, tok.seg_token_id]).strip().replace("  ", " ") + "." == text
    plain = "A chat between a curious human, and an assistant."
    assert tok.decode(tok.encode(plain, add_special_tokens=False)) == plain
    assert tok.decode([1, *tok.encode(plain, add_special_tokens=False)]) == f"<s>{plain}"
    # 4.31's convert_tokens_to_string puts a space before a text run that ends at a special token.
    assert tok.decode([1, *tok.encode(plain, add_special_tokens=False), 2]) == f"<s> {plain}</s>"
    assert tok.decode([1, *tok.encode(plain, add_special_tokens=False), 2], skip_special_tokens=True) == plain
    with pytest.raises(ValueError, match="-200"):
        tok.decode([1, IMAGE_TOKEN_INDEX])


def test_decode_matches_recorded_training_rows(tok):
    ids = np.load(GOLDEN / "conv_train_forward.npz")["input_ids"]
    decoded = json.loads((GOLDEN / "conv_train_forward.json").read_text())["decoded_input_ids"]
    for row, expected in zip(ids, decoded):
        assert tok.decode(row[row != IMAGE_TOKEN_INDEX]) == expected


def test_save_round_trip(tok, tmp_path):
    tok.save(tmp_path)
    for name in ("tokenizer.model", "added_tokens.json", "special_tokens_map.json", "tokenizer_config.json"):
        assert (tmp_path / name).read_bytes() == (TOK_DIR / name).read_bytes(), name
    again = GLUSTokenizer.from_dir(tmp_path)
    text = "USER: <im_start><image><im_end>\nCan you segment the ball? ASSISTANT: It is [SEG].</s>"
    assert again.tokenizer_image_token(text) == tok.tokenizer_image_token(text)


def test_base_tokenizer_gets_glus_tokens(tmp_path):
    shutil.copyfile(TOK_DIR / "tokenizer.model", tmp_path / "tokenizer.model")
    tok = GLUSTokenizer.from_dir(tmp_path)  # no added_tokens.json: appended as train_ds.py does
    assert (len(tok), tok.seg_token_id, tok.im_start_id, tok.im_end_id) == (515, 512, 513, 514)
    bare = GLUSTokenizer.from_sp_model(tmp_path / "tokenizer.model", added_tokens=())
    assert len(bare) == 512 and bare.seg_token_id is None


def test_missing_or_corrupt_model_file(tmp_path):
    for name in ("added_tokens.json", "special_tokens_map.json"):
        shutil.copyfile(TOK_DIR / name, tmp_path / name)
    with pytest.raises(FileNotFoundError, match="tokenizer.model"):
        GLUSTokenizer.from_dir(tmp_path)
    (tmp_path / "tokenizer.model").write_bytes(b"not a sentencepiece model")
    with pytest.raises(ValueError, match="tokenizer.model"):
        GLUSTokenizer.from_dir(tmp_path)


def test_bad_added_token_ids(tmp_path):
    shutil.copyfile(TOK_DIR / "tokenizer.model", tmp_path / "tokenizer.model")
    (tmp_path / "added_tokens.json").write_text(json.dumps({"[SEG]": 600}))
    with pytest.raises(ValueError, match="added_tokens.json.*600"):
        GLUSTokenizer.from_dir(tmp_path)
