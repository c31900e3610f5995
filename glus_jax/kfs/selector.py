"""Key-frame selector on the GLUS backbone: LLaVA + LoRA, one `[SCORE]` token per candidate frame, an MLP
head regressing each candidate's IoU.

GLUS's own selector (`kfs/`: VISA on Chat-UniVi-7B) is a second 7B model. This one reuses the LLaVA that
GLUS already carries (CLIP ViT + projector + LLaMA, `models/llava.py`), adds LoRA adapters on the same
modules GLUS trains (q_proj, v_proj; r 8, alpha 16, dropout 0.05) and trains only those, the `[SCORE]`
embedding row and the head. The prompt follows VISA's (`kfs/utils/utils.py` UNIFIED_SHORT_QUESTION_LIST,
`kfs/utils/rvos_dataset.py`: numbered frames, then the expression, then an answer with one `[SCORE]` per
frame), in GLUS's llava_v1 template with `<im_start><image><im_end>`:

    <system> USER: Reference Video: (0)<image>, (1)<image>, ..., (K-1)<image> \\n
    Does each frame provide enough information for localizing and segmenting the <expr> in the Reference
    Video? Please respond with a confidence score for each frame. ASSISTANT: Sure, (0) [SCORE], ...,
    (K-1) [SCORE].</s>

Every `[SCORE]` sees all K frames and the expression (causal attention), so its score can be
comparative. Deviations from VISA, on purpose:
* the predicted IoU is read at the `[SCORE]` position itself (VISA, like GLUS's [SEG], reads the state
  one position earlier); this makes the trained `[SCORE]` embedding row part of what is scored;
* the head is a two-layer MLP D -> hidden -> 1 (VISA: `text_hidden_fcs` with out_dim 1), output
  unbounded (the L1 target is in [0, 1]; only the argmax is used);
* K candidate frames, uniform over the video (segment centres at inference, a random frame in each
  segment in training), so every prompt has the same static shape; VISA scores 8..12 sampled frames.

`[SCORE]` is added to the tokenizer after `[SEG]`, `<im_start>`, `<im_end>` (id = the LLM's vocabulary
size), but never looked up in the embedding table: its embedding is the separate trainable `score_embed`
row (initialised from the `[SEG]` row), so the 7B embedding table is neither resized nor trained.

Shapes: B prompts (expressions), T prompt tokens (with one placeholder per frame), K candidate frames,
F image tokens per frame, D LLM width, T' = T + (F - 1) K spliced length.
"""

from __future__ import annotations

import dataclasses
import functools
import tempfile
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from glus_jax import checkpoint
from glus_jax.config import ConfigError, from_dict, to_dict
from glus_jax.data import conversation as conv
from glus_jax.data.tokenizer import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX, SEG_TOKEN, GLUSTokenizer
from glus_jax.layers import Linear
from glus_jax.models.clip import clip_preprocess
from glus_jax.models.llama import LoRAParam, init_lora, merge_lora
from glus_jax.models.llava import Llava, LlavaConfig, splice_image_tokens
from glus_jax.sharding import with_axes

SCORE_TOKEN = "[SCORE]"
SELECTOR_FORMAT = "glus-jax-kfs-selector"


class SelectorError(ValueError):
    """A selector directory, prompt or input that does not fit."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class SelectorConfig:
    num_candidates: int = 8  # K frames scored per prompt (static)
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.05
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    head_hidden: int = 256
    init_token: str = SEG_TOKEN  # the `[SCORE]` row starts as a copy of this token's embedding
    score_token_id: int = -1  # set from the tokenizer by `from_glus`
    length_bucket: int = 32  # prompt token lengths are padded to a multiple of this (few compiles)

    def __post_init__(self):
        if self.num_candidates < 1:
            raise ConfigError(f"SelectorConfig.num_candidates must be >= 1, got {self.num_candidates}")
        if self.lora_rank < 1:
            raise ConfigError(f"SelectorConfig.lora_rank must be >= 1, got {self.lora_rank}")
        if self.head_hidden < 1 or self.length_bucket < 1:
            raise ConfigError("SelectorConfig: head_hidden and length_bucket must be >= 1")


def with_lora(llava_cfg: LlavaConfig, cfg: SelectorConfig) -> LlavaConfig:
    """The LLaVA config with the selector's LoRA adapters."""
    llama = dataclasses.replace(
        llava_cfg.llama,
        lora_rank=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        lora_targets=tuple(cfg.lora_targets),
    )
    return dataclasses.replace(llava_cfg, llama=llama)


def base_llava_config(llava_cfg: LlavaConfig) -> LlavaConfig:
    """The LLaVA config without adapters (what the selector's frozen base must match)."""
    return dataclasses.replace(llava_cfg, llama=dataclasses.replace(llava_cfg.llama, lora_rank=0))


# ------------------------------------------------------------------------------------ frames, prompts


def candidate_frames(num_frames: int, k: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """K frame indices spread uniformly over a video of `num_frames`: the video is cut into K equal
    segments and each gives its centre frame (or, with `rng`, a random frame of it, as VISA's
    "uniform" sampling). Shorter videos repeat frames, so the count is always K. [K] int, sorted."""
    if num_frames < 1:
        raise SelectorError("a video needs at least one frame")
    edges = np.arange(k + 1) * num_frames / k
    if rng is None:
        idx = np.floor((edges[:-1] + edges[1:]) / 2)
    else:
        lo = np.floor(edges[:-1])
        hi = np.maximum(np.ceil(edges[1:]) - 1, lo)
        idx = lo + np.floor(rng.random(k) * (hi - lo + 1))
    return np.clip(idx, 0, num_frames - 1).astype(np.int64)


def selector_prompt(expression: str, num_candidates: int, *, use_mm_start_end: bool = True) -> str:
    """The selector's prompt with its teacher-forced answer (module docstring)."""
    frames = ", ".join(f"({i}){DEFAULT_IMAGE_TOKEN}" for i in range(num_candidates))
    question = (
        f"Reference Video: {frames} \n"
        f"Does each frame provide enough information for localizing and segmenting the "
        f"{conv.inference_expression(expression)} in the Reference Video? "
        f"Please respond with a confidence score for each frame."
    )
    answer = "Sure, " + ", ".join(f"({i}) {SCORE_TOKEN}" for i in range(num_candidates)) + "."
    prompt = conv.llava_v1_prompt([(conv.ROLES[0], question), (conv.ROLES[1], answer)])
    return conv.with_mm_start_end(prompt) if use_mm_start_end else prompt


def with_score_token(tokenizer: GLUSTokenizer) -> GLUSTokenizer:
    """A copy of `tokenizer` with `[SCORE]` added after its added tokens (the input is not changed)."""
    added = [t for t, _ in sorted(tokenizer.added_tokens.items(), key=lambda kv: kv[1])]
    tok = GLUSTokenizer(
        tokenizer.sp,
        added,
        special_tokens_map=tokenizer.special_tokens_map,
        tokenizer_config=tokenizer.tokenizer_config,
        source=tokenizer.source,
    )
    tok.add_tokens([SCORE_TOKEN])
    return tok


def _bucket(n: int, multiple: int) -> int:
    return max(multiple, -(-n // multiple) * multiple)


def encode_prompts(
    tokenizer: GLUSTokenizer,
    expressions: Sequence[str],
    cfg: SelectorConfig,
    *,
    length: int | None = None,
    use_mm_start_end: bool = True,
) -> dict[str, np.ndarray]:
    """Tokenized prompts, right-padded to `length` (default: the bucketed longest).

    Returns input_ids int32 [B, T] (placeholders = IMAGE_TOKEN_INDEX), attention_mask bool [B, T],
    score_index int32 [B, K] (the token index of each `[SCORE]`)."""
    score_id = tokenizer.token_to_id(SCORE_TOKEN)
    if score_id is None or score_id != cfg.score_token_id:
        raise SelectorError(
            f"tokenizer {SCORE_TOKEN} id {score_id} != the selector's score_token_id {cfg.score_token_id}"
        )
    k = cfg.num_candidates
    rows = []
    for e in expressions:
        ids = tokenizer.tokenizer_image_token(selector_prompt(e, k, use_mm_start_end=use_mm_start_end))
        arr = np.asarray(ids)
        if (arr == IMAGE_TOKEN_INDEX).sum() != k or (arr == score_id).sum() != k:
            raise SelectorError(f"prompt of {e!r} does not have {k} frames and {k} {SCORE_TOKEN} tokens")
        rows.append(arr)
    longest = max(len(r) for r in rows)
    t = _bucket(longest, cfg.length_bucket) if length is None else length
    if longest > t:
        raise SelectorError(f"a prompt has {longest} tokens, more than the static length {t}")
    ids = np.full((len(rows), t), tokenizer.pad_id, np.int32)
    mask = np.zeros((len(rows), t), bool)
    index = np.zeros((len(rows), k), np.int32)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        mask[i, : len(r)] = True
        index[i] = np.nonzero(r == score_id)[0]
    return {"input_ids": ids, "attention_mask": mask, "score_index": index}


def spliced_length(num_tokens: int, cfg: SelectorConfig, tokens_per_image: int) -> int:
    """T' for prompts of `num_tokens` tokens (each has K placeholders of F tokens)."""
    return num_tokens + (tokens_per_image - 1) * cfg.num_candidates


# -------------------------------------------------------------------------------------------- model


class ScoreHead(nnx.Module):
    """Linear(D, hidden) -> ReLU -> Linear(hidden, 1): final hidden state -> predicted IoU."""

    def __init__(self, in_dim: int, hidden: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.fc1 = Linear(in_dim, hidden, axes=("llm_embed", None), dtype=dtype, rngs=rngs)
        self.fc2 = Linear(hidden, 1, axes=(None, None), dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """[..., D] -> [...] float32."""
        return self.fc2(jax.nn.relu(self.fc1(x)))[..., 0].astype(jnp.float32)


class KeyFrameSelector(nnx.Module):
    """`llava` (GLUS's LLaVA with LoRA), `score_embed` [D] (the `[SCORE]` row), `score_head`.

    Trained: `trainable_filter()` (LoRA adapters, `score_embed`, `score_head`); the rest is GLUS's,
    frozen."""

    def __init__(self, cfg: SelectorConfig, llava_cfg: LlavaConfig, *, rngs: nnx.Rngs):
        self.config = cfg
        self.base_config = llava_cfg  # GLUS's LLaVA, as it was before the adapters
        self.llava = Llava(with_lora(llava_cfg, cfg), rngs=rngs)
        d = llava_cfg.llama.hidden_size
        self.score_embed = nnx.Param(with_axes(nnx.initializers.zeros, ("llm_embed",))(rngs.params(), (d,)))
        self.score_head = ScoreHead(d, cfg.head_hidden, dtype=jnp.dtype(llava_cfg.llama.dtype), rngs=rngs)

    def encode_frames(self, pixels: jax.Array) -> jax.Array:
        """CLIP pixels [N, 224, 224, 3] -> image tokens [N, F, D] (frozen GLUS towers)."""
        return self.llava.encode_images(pixels)

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array,
        image_features: jax.Array,
        score_index: jax.Array,
        *,
        max_len: int,
        dropout_rng: jax.Array | None = None,
    ) -> jax.Array:
        """Predicted IoU [B, K] (float32) of each candidate frame.

        input_ids / attention_mask [B, T] (from `encode_prompts`), image_features [B, K, F, D] (row b's
        k-th placeholder takes [b, k]), score_index [B, K] token index of each `[SCORE]`; max_len: T'
        (static); dropout_rng enables LoRA dropout (training)."""
        llm = self.llava.llm
        score_id = self.config.score_token_id
        is_score = input_ids == score_id
        lookup = jnp.where((input_ids == IMAGE_TOKEN_INDEX) | is_score, 0, input_ids)
        text = llm.model.embed(lookup)
        text = jnp.where(is_score[..., None], self.score_embed[...].astype(text.dtype), text)
        sp = splice_image_tokens(
            input_ids, image_features, text, max_len=max_len, attention_mask=attention_mask
        )
        hidden, _ = llm.model(
            inputs_embeds=sp.inputs_embeds,
            attention_mask=sp.attention_mask,
            positions=sp.positions,
            dropout_rng=dropout_rng,
        )
        pos = jnp.take_along_axis(sp.token_pos, score_index, axis=1)  # [B, K] spliced positions
        h = jnp.take_along_axis(hidden, pos[..., None], axis=1)  # [B, K, D]
        return self.score_head(h)


def trainable_filter() -> nnx.filterlib.Filter:
    """What the selector trains: LoRA adapters, the `[SCORE]` row and the head."""
    return nnx.Any(LoRAParam, nnx.PathContains("score_embed"), nnx.PathContains("score_head"))


def _flat(state: nnx.State) -> dict[str, nnx.Variable]:
    return {"/".join(map(str, p)): v for p, v in nnx.to_flat_state(state)}


def from_glus(
    glus_model,
    tokenizer: GLUSTokenizer,
    cfg: SelectorConfig = SelectorConfig(),
    *,
    seed: int = 0,
) -> tuple[KeyFrameSelector, GLUSTokenizer]:
    """A fresh selector on a GLUS model's LLaVA: (selector, tokenizer with `[SCORE]`).

    The base weights are GLUS's own arrays (shared, not copied; a GLUS model whose LLM still carries
    LoRA adapters is merged into a copy first); LoRA starts as PEFT does (B = 0, so the LLM starts
    exactly as GLUS's), `score_embed` as the `cfg.init_token` row, the head at random."""
    llava = glus_model.llava
    if llava.config.llama.lora_rank:
        llava = merge_lora(nnx.clone(llava))
    tok = with_score_token(tokenizer)
    init_id = tok.token_to_id(cfg.init_token)
    if init_id is None or init_id >= llava.config.llama.vocab_size:
        raise SelectorError(f"init_token {cfg.init_token!r} is not a row of the LLM's embedding table")
    cfg = dataclasses.replace(cfg, score_token_id=tok.token_to_id(SCORE_TOKEN))
    llava_cfg = base_llava_config(llava.config)
    rngs = nnx.Rngs(seed)
    sel = nnx.eval_shape(lambda: KeyFrameSelector(cfg, llava_cfg, rngs=nnx.Rngs(0)))
    base = _flat(nnx.state(llava))
    for path, var in _flat(nnx.state(sel.llava, nnx.Not(LoRAParam))).items():
        if path not in base or base[path].shape != var.shape:
            raise SelectorError(f"GLUS LLaVA has no parameter {path} of shape {var.shape}")
        var.set_value(base[path].get_value())
    init_lora(sel.llava, rngs)
    table = llava.llm.model.embed_tokens[...]
    sel.score_embed.set_value(jnp.asarray(table[init_id], jnp.float32))
    sel.score_head = ScoreHead(
        llava_cfg.llama.hidden_size, cfg.head_hidden, dtype=jnp.dtype(llava_cfg.llama.dtype), rngs=rngs
    )
    return sel, tok


# --------------------------------------------------------------------------------- save / load


def trainable_params(selector: KeyFrameSelector) -> dict:
    return nnx.state(selector, trainable_filter()).to_pure_dict()


def save_selector(
    path: str | Path, selector: KeyFrameSelector, tokenizer: GLUSTokenizer, *, source=None
) -> Path:
    """Write a selector directory: its trained parameters only (LoRA, `[SCORE]` row, head), its config,
    the LLaVA config of the GLUS it was trained on (checked on load), the tokenizer with `[SCORE]`."""
    config = {
        "format": SELECTOR_FORMAT,
        "selector": to_dict(selector.config),
        "llava": to_dict(selector.base_config),
        "source": dict(source or {}),
    }
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save(tmp)
        return checkpoint.save_model_dir(path, trainable_params(selector), config, tokenizer_dir=tmp)


def _comparable(d):
    """A config dict without compute dtypes and LoRA settings (a selector serves its GLUS in fp32 or
    bf16 alike, and GLUS's own adapters are merged before the selector's are added)."""
    if isinstance(d, dict):
        return {k: _comparable(v) for k, v in d.items() if k != "dtype" and not k.startswith("lora_")}
    return d


def load_selector(path: str | Path, glus_model) -> tuple[KeyFrameSelector, GLUSTokenizer]:
    """(selector, tokenizer) from a selector directory, on `glus_model`'s LLaVA (which must be the
    architecture it was trained on)."""
    path = Path(path)
    stored = checkpoint.load_config(path)
    if stored.get("format") != SELECTOR_FORMAT:
        raise SelectorError(
            f"{path}/config.yaml: not a key-frame selector directory (format {stored.get('format')!r})"
        )
    try:
        cfg = from_dict(SelectorConfig, stored["selector"])
    except (ConfigError, KeyError) as e:
        raise SelectorError(f"{path}/config.yaml: bad selector section: {e}") from None
    try:
        trained_on = from_dict(LlavaConfig, stored["llava"])
    except (ConfigError, KeyError, TypeError) as e:
        raise SelectorError(f"{path}/config.yaml: bad llava section: {e}") from None
    have = _comparable(to_dict(base_llava_config(glus_model.llava.config)))
    if _comparable(to_dict(trained_on)) != have:
        raise SelectorError(f"{path}: trained on another LLaVA architecture than the GLUS model given")
    tokenizer = GLUSTokenizer.from_dir(path / "tokenizer", add_glus_tokens=False)
    if tokenizer.token_to_id(SCORE_TOKEN) != cfg.score_token_id:
        raise SelectorError(
            f"{path}/tokenizer: {SCORE_TOKEN} id differs from the config's {cfg.score_token_id}"
        )
    selector, _ = from_glus(
        glus_model, _without_score(tokenizer), dataclasses.replace(cfg, score_token_id=-1)
    )
    if selector.config != cfg:
        raise SelectorError(
            f"{path}: selector config does not rebuild identically ({selector.config} != {cfg})"
        )
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), trainable_params(selector))
    params = checkpoint.load_params(path, abstract, local=True)
    state = nnx.state(selector, trainable_filter())
    flat = {"/".join(map(str, p)): v for p, v in _flat_dict(params)}
    for p, var in nnx.to_flat_state(state):
        var.set_value(jnp.asarray(flat["/".join(map(str, p))]))
    nnx.update(selector, state)
    return selector, tokenizer


def _flat_dict(tree, prefix=()):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _flat_dict(v, (*prefix, k))
        else:
            yield (*prefix, k), v


def _without_score(tokenizer: GLUSTokenizer) -> GLUSTokenizer:
    added = [t for t, _ in sorted(tokenizer.added_tokens.items(), key=lambda kv: kv[1]) if t != SCORE_TOKEN]
    return GLUSTokenizer(
        tokenizer.sp,
        added,
        special_tokens_map=tokenizer.special_tokens_map,
        tokenizer_config=tokenizer.tokenizer_config,
        source=tokenizer.source,
    )


# ---------------------------------------------------------------------------------------- inference


class SelectorPredictor:
    """Scores candidate frames of videos with a selector: `scores(frames, expressions)`,
    `select(frames, expressions)`. Image tokens are computed once per video; expressions run batched
    (padded to `batch` rows)."""

    def __init__(self, selector: KeyFrameSelector, tokenizer: GLUSTokenizer, *, batch: int = 8):
        self.config = selector.config
        self.tokenizer = tokenizer
        self.tokens_per_image = selector.llava.config.tokens_per_image
        self.use_mm_start_end = selector.llava.config.mm_use_im_start_end
        self.batch = batch
        self.graphdef, self.state = nnx.split(selector)

    def frame_features(self, frames: np.ndarray) -> jax.Array:
        """uint8 frames [K, H, W, 3] -> image tokens [K, F, D]."""
        return _encode(self.graphdef, self.state, clip_preprocess(np.asarray(frames)))

    def scores(self, frames: np.ndarray, expressions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(candidates [K] frame indices, predicted IoU [E, K]) for a video [T, H, W, 3] uint8."""
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise SelectorError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
        cand = candidate_frames(len(frames), self.config.num_candidates)
        feats = self.frame_features(frames[cand])
        return cand, self.scores_from_features(feats, expressions)

    def scores_from_features(self, feats: jax.Array, expressions: Sequence[str]) -> np.ndarray:
        """Predicted IoU [E, K] from the candidates' image tokens [K, F, D]."""
        enc = encode_prompts(self.tokenizer, expressions, self.config, use_mm_start_end=self.use_mm_start_end)
        max_len = spliced_length(enc["input_ids"].shape[1], self.config, self.tokens_per_image)
        out = []
        b = self.batch
        for i in range(0, len(expressions), b):
            rows = {k: v[i : i + b] for k, v in enc.items()}
            pad = b - len(rows["input_ids"])
            if pad:
                rows = {k: np.concatenate([v, np.repeat(v[-1:], pad, axis=0)]) for k, v in rows.items()}
            f = jnp.broadcast_to(feats[None], (b, *feats.shape))
            s = _score(
                self.graphdef,
                self.state,
                rows["input_ids"],
                rows["attention_mask"],
                f,
                rows["score_index"],
                max_len=max_len,
            )
            out.append(np.asarray(s)[: b - pad])
        return np.concatenate(out)

    def select(
        self, frames: np.ndarray, expressions: Sequence[str]
    ) -> tuple[list[int], np.ndarray, np.ndarray]:
        """(key frame index per expression, candidates [K], predicted IoU [E, K]): the candidate with
        the highest predicted IoU (the first on ties)."""
        cand, s = self.scores(frames, expressions)
        return [int(cand[int(np.argmax(row))]) for row in s], cand, s


@functools.partial(jax.jit, static_argnums=0)
def _encode(graphdef, state, pixels):
    return nnx.merge(graphdef, state).encode_frames(pixels)


@functools.partial(jax.jit, static_argnums=0, static_argnames=("max_len",))
def _score(graphdef, state, ids, mask, feats, score_index, *, max_len):
    return nnx.merge(graphdef, state)(ids, mask, feats, score_index, max_len=max_len)
