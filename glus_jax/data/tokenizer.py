"""The GLUS tokenizer: the slow LLaMA tokenizer of transformers 4.31 (legacy=True) on plain sentencepiece.

GLUS loads its tokenizer with `AutoTokenizer.from_pretrained(..., use_fast=False)` (transformers 4.31) and sets it
up as `train_ds.py` does: pad = unk, `add_tokens("[SEG]")`, `add_tokens(["<im_start>", "<im_end>"],
special_tokens=True)`. Newer transformers releases no longer reproduce that tokenizer's ids, so this module
re-implements the pieces of it GLUS relies on:

- `PreTrainedTokenizer.tokenize` (tokenization_utils.py): the text is split around the "no split" tokens
  (the added tokens and `<s>`, `</s>`, `<unk>`); each remaining piece is encoded by sentencepiece on its own, so
  every piece gets sentencepiece's dummy-prefix `▁`. Whitespace (spaces *and* newlines) next to an added token
  is stripped on both sides (added tokens are plain strings there, whose default is to strip); around `<s>`,
  `</s>`, `<unk>` the `lstrip` / `rstrip` flags of their AddedToken entries in special_tokens_map.json apply
  (false in LLaMA checkpoints, so nothing is stripped next to them). Quirk Q3 of the oracle README.
- `LlamaTokenizer.build_inputs_with_special_tokens`: BOS prepended (`add_bos_token`), no EOS.
- `PreTrainedTokenizer._decode` + `LlamaTokenizer.convert_tokens_to_string`: decoding, including its spacing
  around added and special tokens.
- `model/llava/mm_utils.py: tokenizer_image_token`: `<image>` -> IMAGE_TOKEN_INDEX (-200).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import sentencepiece as spm

IMAGE_TOKEN_INDEX = -200
DEFAULT_IMAGE_TOKEN = "<image>"
SEG_TOKEN = "[SEG]"
IM_START_TOKEN = "<im_start>"
IM_END_TOKEN = "<im_end>"
GLUS_ADDED_TOKENS = (SEG_TOKEN, IM_START_TOKEN, IM_END_TOKEN)

MODEL_FILE = "tokenizer.model"
ADDED_TOKENS_FILE = "added_tokens.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"


def _added_token_dict(content: str) -> dict[str, Any]:
    # The AddedToken layout transformers 4.31 writes for LLaMA's <s>, </s>, <unk>.
    return {"content": content, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read tokenizer file as JSON: {e}") from e


class GLUSTokenizer:
    """LLaMA slow tokenizer (transformers 4.31, legacy=True) with GLUS's added tokens.

    Attributes: `bos_id`, `eos_id`, `unk_id`, `pad_id` (= unk, as GLUS sets it), `seg_token_id`,
    `im_start_id`, `im_end_id` (None when the token is absent), `model_max_length`; `len(tok)` is the
    sentencepiece vocabulary plus the added tokens (the LLM's vocabulary size).
    """

    def __init__(
        self,
        sp_model: spm.SentencePieceProcessor,
        added_tokens: Sequence[str] = (),
        *,
        special_tokens_map: Mapping[str, Any] | None = None,
        tokenizer_config: Mapping[str, Any] | None = None,
        source: str = "<in memory>",
    ):
        self.sp = sp_model
        self.source = source
        self.special_tokens_map = dict(special_tokens_map or self._default_special_tokens_map())
        self.tokenizer_config = dict(tokenizer_config or self._default_tokenizer_config())

        defaults = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}

        def special(name: str) -> tuple[str, bool, bool]:
            # 4.31: LlamaTokenizer.__init__ wraps string bos/eos/unk (tokenizer_config or defaults) as
            # AddedToken(lstrip=False, rstrip=False); special_tokens_map.json then overrides them, and a plain
            # string there is not an AddedToken, so it gets the default strip-both-sides treatment.
            value = self.special_tokens_map.get(name)
            if isinstance(value, str):
                return value, True, True
            value = value or self.tokenizer_config.get(name) or defaults[name]
            if isinstance(value, str):
                return value, False, False
            if isinstance(value, Mapping) and isinstance(value.get("content"), str):
                return value["content"], bool(value.get("lstrip")), bool(value.get("rstrip"))
            raise ValueError(f"{source}: bad '{name}' entry {value!r} in the tokenizer files")

        self.bos_token, self.eos_token, self.unk_token = (
            special(n)[0] for n in ("bos_token", "eos_token", "unk_token")
        )
        self.bos_id, self.eos_id, self.unk_id = (
            self.sp.piece_to_id(t) for t in (self.bos_token, self.eos_token, self.unk_token)
        )
        self.pad_id = self.unk_id  # GLUS: tokenizer.pad_token = tokenizer.unk_token
        self.add_bos = bool(self.tokenizer_config.get("add_bos_token", True))
        self.add_eos = bool(self.tokenizer_config.get("add_eos_token", False))
        self.model_max_length = int(self.tokenizer_config.get("model_max_length", 512))
        # (lstrip, rstrip) of every token the text is split around.
        self._strip = {special(n)[0]: special(n)[1:] for n in ("bos_token", "eos_token", "unk_token")}
        self._special_ids = {self.bos_id, self.eos_id, self.unk_id}
        self.added_tokens: dict[str, int] = {}
        self.add_tokens(added_tokens)

    # ------------------------------------------------------------------ construction
    @staticmethod
    def _default_special_tokens_map() -> dict[str, Any]:
        return {
            "bos_token": _added_token_dict("<s>"),
            "eos_token": _added_token_dict("</s>"),
            "pad_token": "<unk>",
            "unk_token": _added_token_dict("<unk>"),
        }

    @staticmethod
    def _default_tokenizer_config() -> dict[str, Any]:
        return {
            "add_bos_token": True,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
            "legacy": True,
            "model_max_length": 512,
            "padding_side": "right",
            "tokenizer_class": "LlamaTokenizer",
        }

    @staticmethod
    def _load_sp(path: Path) -> spm.SentencePieceProcessor:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: sentencepiece model file not found")
        sp = spm.SentencePieceProcessor()
        try:
            sp.Load(str(path))
        except (OSError, RuntimeError) as e:
            raise ValueError(f"{path}: not a valid sentencepiece model: {e}") from e
        return sp

    @classmethod
    def from_sp_model(
        cls, model_file: str | Path, added_tokens: Sequence[str] = GLUS_ADDED_TOKENS
    ) -> GLUSTokenizer:
        """A tokenizer from a bare sentencepiece model file, with `added_tokens` appended after its vocabulary."""
        path = Path(model_file)
        return cls(cls._load_sp(path), added_tokens, source=str(path))

    @classmethod
    def from_dir(cls, path: str | Path, *, add_glus_tokens: bool = True) -> GLUSTokenizer:
        """Load a HF-layout tokenizer directory (tokenizer.model, added_tokens.json, special_tokens_map.json,
        tokenizer_config.json), as `AutoTokenizer.from_pretrained(..., use_fast=False)` does.

        added_tokens.json ids must follow the sentencepiece vocabulary consecutively (the slow tokenizer
        refuses anything else). With `add_glus_tokens`, `[SEG]`, `<im_start>`, `<im_end>` are appended when
        missing, as train_ds.py does for a base LLaVA tokenizer.
        """
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: tokenizer directory not found")
        sp = cls._load_sp(path / MODEL_FILE)
        added: list[str] = []
        if (path / ADDED_TOKENS_FILE).is_file():
            table = _read_json(path / ADDED_TOKENS_FILE)
            if not isinstance(table, dict):
                raise ValueError(f"{path / ADDED_TOKENS_FILE}: expected a JSON object token -> id")
            for i, (token, index) in enumerate(sorted(table.items(), key=lambda kv: kv[1])):
                if index != sp.get_piece_size() + i:
                    raise ValueError(
                        f"{path / ADDED_TOKENS_FILE}: added token {token!r} has id {index}, expected "
                        f"{sp.get_piece_size() + i} (ids must follow the {sp.get_piece_size()}-piece vocabulary)"
                    )
                added.append(token)
        smap = (
            _read_json(path / SPECIAL_TOKENS_MAP_FILE) if (path / SPECIAL_TOKENS_MAP_FILE).is_file() else None
        )
        tcfg = _read_json(path / TOKENIZER_CONFIG_FILE) if (path / TOKENIZER_CONFIG_FILE).is_file() else None
        if tcfg is not None and tcfg.get("legacy") is False:  # 4.31 treats a missing / null legacy as True
            raise ValueError(
                f"{path / TOKENIZER_CONFIG_FILE}: only legacy=True LLaMA tokenizers are supported"
            )
        tok = cls(sp, added, special_tokens_map=smap, tokenizer_config=tcfg, source=str(path))
        if add_glus_tokens:
            tok.add_tokens(GLUS_ADDED_TOKENS)
        return tok

    def save(self, path: str | Path) -> None:
        """Write tokenizer.model, added_tokens.json, special_tokens_map.json, tokenizer_config.json to `path`."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / MODEL_FILE).write_bytes(self.sp.serialized_model_proto())

        def dump(name: str, obj: Any) -> None:
            # Same formatting as transformers' save_pretrained.
            (path / name).write_text(
                json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n", "utf-8"
            )

        dump(ADDED_TOKENS_FILE, self.added_tokens)
        dump(SPECIAL_TOKENS_MAP_FILE, self.special_tokens_map)
        dump(TOKENIZER_CONFIG_FILE, self.tokenizer_config)

    def add_tokens(self, tokens: Iterable[str]) -> int:
        """Append tokens that are neither in the sentencepiece vocabulary nor added yet (`_add_tokens`)."""
        n = 0
        for token in tokens:
            if (
                token in self.added_tokens
                or token == self.unk_token
                or self.sp.piece_to_id(token) != self.unk_id
            ):
                continue
            self.added_tokens[token] = len(self)
            n += 1
        self._added_by_id = {i: t for t, i in self.added_tokens.items()}
        no_split = sorted(set(self.added_tokens) | set(self._strip), key=len, reverse=True)
        self._split_re = re.compile("(" + "|".join(re.escape(t) for t in no_split) + ")")
        return n

    # ------------------------------------------------------------------ vocabulary
    def __len__(self) -> int:
        return self.sp.get_piece_size() + len(self.added_tokens)

    def token_to_id(self, token: str) -> int | None:
        if token in self.added_tokens:
            return self.added_tokens[token]
        i = self.sp.piece_to_id(token)
        return None if i == self.unk_id and token != self.unk_token else i

    def id_to_token(self, token_id: int) -> str:
        """The added token or sentencepiece piece of `token_id` (`convert_ids_to_tokens`)."""
        if not 0 <= token_id < len(self):
            raise ValueError(f"token id {token_id} is outside the vocabulary [0, {len(self)})")
        return self._added_by_id.get(token_id) or self.sp.id_to_piece(token_id)

    @property
    def seg_token_id(self) -> int | None:
        return self.added_tokens.get(SEG_TOKEN)

    @property
    def im_start_id(self) -> int | None:
        return self.added_tokens.get(IM_START_TOKEN)

    @property
    def im_end_id(self) -> int | None:
        return self.added_tokens.get(IM_END_TOKEN)

    # ------------------------------------------------------------------ encoding
    def split(self, text: str) -> list[str]:
        """Split `text` around the no-split tokens and strip whitespace next to them (`tokenize`, 4.31).

        Empty pieces are dropped. Example: "is [SEG]. </s> USER" -> ["is", "[SEG]", ".", "</s>", " USER"].
        """
        parts = self._split_re.split(text)
        for i, part in enumerate(parts):
            if i % 2 == 0:  # re.split with one group: odd indices are the matched tokens
                continue
            lstrip, rstrip = self._strip.get(part, (True, True))
            if rstrip and parts[i + 1]:
                parts[i + 1] = parts[i + 1].lstrip()
            if lstrip and parts[i - 1]:
                parts[i - 1] = parts[i - 1].rstrip()
        return [p for p in parts if p]

    def tokenize_ids(self, text: str) -> list[int]:
        """Token ids of `text` without BOS/EOS (`tokenizer(text, add_special_tokens=False).input_ids`)."""
        ids: list[int] = []
        for piece in self.split(text):
            token_id = self.added_tokens.get(piece)
            if token_id is None and piece in self._strip:
                token_id = self.sp.piece_to_id(piece)
            if token_id is not None:
                ids.append(token_id)
            else:
                ids.extend(self.sp.encode(piece))  # sentencepiece adds its dummy prefix to every piece
        return ids

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """`tokenizer(text).input_ids`: BOS + ids (+ EOS if the config asks for it)."""
        ids = self.tokenize_ids(text)
        if add_special_tokens:
            ids = [self.bos_id] * self.add_bos + ids + [self.eos_id] * self.add_eos
        return ids

    __call__ = encode

    def tokenizer_image_token(self, prompt: str, image_token_index: int = IMAGE_TOKEN_INDEX) -> list[int]:
        """Port of llava `mm_utils.tokenizer_image_token`: each `<image>` becomes `image_token_index`.

        Every chunk between `<image>`s is encoded on its own (with its own dummy prefix); only the first
        chunk's BOS is kept.
        """
        chunks = [self.encode(chunk) for chunk in prompt.split(DEFAULT_IMAGE_TOKEN)]
        offset = int(bool(chunks[0]) and chunks[0][0] == self.bos_id)
        ids = chunks[0][:offset]
        for k, chunk in enumerate(chunks):
            if k:
                ids.append(image_token_index)
            ids.extend(chunk[offset:])
        return ids

    # ------------------------------------------------------------------ decoding
    def _pieces_to_string(self, ids: list[int]) -> str:
        # LlamaTokenizer.convert_tokens_to_string: <s>, </s>, <unk> are written literally (a space before
        # one that follows ordinary text), the rest decoded by sentencepiece.
        out, run, prev_special = "", [], False
        for i, token_id in enumerate(ids):
            if token_id in self._special_ids:
                if not prev_special and i != 0:
                    out += " "
                out += self.sp.decode(run) + self.sp.id_to_piece(token_id)
                run, prev_special = [], True
            else:
                run.append(token_id)
                prev_special = False
        return out + self.sp.decode(run)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """`tokenizer.decode(ids)` of transformers 4.31 (slow, clean_up_tokenization_spaces=False).

        Added tokens are joined to the surrounding text with single spaces, e.g. the ids of
        "result is [SEG].</s>" decode to "result is [SEG]  .</s>". Negative ids (image placeholders) are refused.
        """
        texts, run = [], []
        for token_id in (int(i) for i in ids):
            self.id_to_token(token_id)  # range check
            if skip_special_tokens and token_id in self._special_ids:
                continue
            if token_id in self._added_by_id:
                if run:
                    texts.append(self._pieces_to_string(run))
                    run = []
                texts.append(self._added_by_id[token_id])
            else:
                run.append(token_id)
        if run:
            texts.append(self._pieces_to_string(run))
        return " ".join(texts)
