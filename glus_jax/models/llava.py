"""LLaVA glue: CLIP features -> token pooling -> projector -> spliced into the LLaMA input.

Ports the parts of GLUS `model/llava/model/llava_arch.py` that GLUS uses:
- `encode_images`: CLIP `hidden_states[select_layer]` without CLS ([N, 256, Dv] at 224 px), then
  `AvgPool1d(kernel_size=4, stride=4)` over the *flattened token sequence* (quirk Q8: 1x4 windows
  of consecutive patches in raster order, not 2x2 patches) -> [N, 64, Dv], then `mm_projector`.
- `prepare_inputs_labels_for_multimodal`: every `<image>` placeholder (-200) in `input_ids` is
  replaced by that image's tokens. The reference builds Python lists per row; here a gather does it
  with static shapes: for each output position we compute which input token (or which token of which
  image) it takes. Rows are padded to a static `max_len` with zero embeddings, label -100 and
  attention False; the attention mask is the reference's (quirk Q9): `expanded - T` Trues
  *prepended* to the original mask, not the mask re-aligned to the tokens.

`text_hidden_fcs` and everything after the LLM belong to the GLUS model (`models/glus.py`).
"""

from __future__ import annotations

import dataclasses
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from glus_jax.config import ConfigError
from glus_jax.layers import Linear, gelu_exact
from glus_jax.models import clip as clip_lib
from glus_jax.models import llama as llama_lib
from glus_jax.models.clip import CLIPVisionConfig, CLIPVisionTower
from glus_jax.models.llama import LlamaConfig, LlamaForCausalLM

IMAGE_TOKEN_INDEX = -200  # the <image> placeholder id in input_ids (LLaVA's IMAGE_TOKEN_INDEX)
IGNORE_INDEX = -100


@dataclasses.dataclass(frozen=True, kw_only=True)
class LlavaConfig:
    """LLaMA + CLIP + how the two are joined."""

    llama: LlamaConfig = dataclasses.field(default_factory=llama_lib.llama_7b)
    clip: CLIPVisionConfig = dataclasses.field(default_factory=clip_lib.clip_vit_l14_224)
    projector_type: Literal["linear", "mlp2x_gelu"] = "linear"
    # <im_start><image><im_end> in prompts (a tokenizer/prompt matter: the splice is the same).
    mm_use_im_start_end: bool = True
    select_layer: int = -2  # CLIP hidden_states index (HF convention)
    pool_size: int = 4  # GLUS AvgPool1d window over the patch sequence; 1 = none (plain LLaVA)
    image_token_index: int = IMAGE_TOKEN_INDEX

    def __post_init__(self):
        if self.clip.num_patches % self.pool_size:
            raise ConfigError(
                f"LlavaConfig: {self.clip.num_patches} patches not divisible by pool_size {self.pool_size}"
            )
        self.clip.layers_for(self.select_layer)  # range check

    @property
    def tokens_per_image(self) -> int:
        return self.clip.num_patches // self.pool_size


def glus_7b(**overrides) -> LlavaConfig:
    """LISA-7B-v1 / GLUS: LLaMA-7B (vocab 32003) + CLIP ViT-L/14 224, linear projector."""
    return LlavaConfig(**overrides)


def tiny(**overrides) -> LlavaConfig:
    """The oracle's GLUS-tiny + clip-vit-tiny."""
    return LlavaConfig(**{"llama": llama_lib.tiny(), "clip": clip_lib.tiny(), **overrides})


def from_hf_config(
    llava_config: dict, clip_config: dict, *, projector_type: str | None = None, dtype: str | None = None
) -> LlavaConfig:
    """From a LLaVA/LISA/GLUS `config.json` and the vision tower's `config.json`.

    `projector_type`: None = the config's `mm_projector_type` (LLaVA 1.5) or "linear" (LLaVA v1,
    LISA, GLUS); the converter detects it from the checkpoint keys instead (`projector_type_of`).
    """
    feature = llava_config.get("mm_vision_select_feature", "patch")
    if feature != "patch":
        raise ConfigError(f"LLaVA config: mm_vision_select_feature {feature!r} is not supported (patch)")
    ptype = projector_type or llava_config.get("mm_projector_type") or "linear"
    if ptype not in ("linear", "mlp2x_gelu"):
        raise ConfigError(f"LLaVA config: mm_projector_type {ptype!r} is not supported (linear, mlp2x_gelu)")
    extra = {} if dtype is None else {"dtype": dtype}
    clip_cfg = clip_lib.from_hf_config(clip_config, **extra)
    mm_hidden = llava_config.get("mm_hidden_size", clip_cfg.hidden_size)
    if mm_hidden != clip_cfg.hidden_size:
        raise ConfigError(
            f"LLaVA config: mm_hidden_size {mm_hidden} != vision tower width {clip_cfg.hidden_size}"
        )
    return LlavaConfig(
        llama=llama_lib.from_hf_config(llava_config, **extra),
        clip=clip_cfg,
        projector_type=ptype,
        mm_use_im_start_end=bool(llava_config.get("mm_use_im_start_end", False)),
        select_layer=int(llava_config.get("mm_vision_select_layer", -2)),
    )


# --------------------------------------------------------------------------------- modules


def pool_image_tokens(x: jax.Array, k: int = 4) -> jax.Array:
    """GLUS `downsample_layer`: AvgPool1d(k, stride k) over the token axis. [N, P, D] -> [N, P // k, D].

    Tokens are pooled in groups of k consecutive patches in raster order (quirk Q8)."""
    n, p, d = x.shape
    if p % k:
        raise ValueError(f"pool_image_tokens: {p} tokens not divisible by {k}")
    return x.reshape(n, p // k, k, d).mean(axis=2)


class MMProjector(nnx.Module):
    """LLaVA `mm_projector`: Linear (v1, GLUS) or Linear-GELU-Linear (`mlp2x_gelu`)."""

    def __init__(
        self, in_dim: int, out_dim: int, projector_type: str = "linear", *, dtype=jnp.float32, rngs: nnx.Rngs
    ):
        self.fc1 = Linear(in_dim, out_dim, axes=("clip_embed", "llm_embed"), dtype=dtype, rngs=rngs)
        self.fc2 = (
            Linear(out_dim, out_dim, axes=(None, "llm_embed"), dtype=dtype, rngs=rngs)
            if projector_type == "mlp2x_gelu"
            else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.fc1(x)
        return x if self.fc2 is None else self.fc2(gelu_exact(x))


class SplicedInputs(NamedTuple):
    """LLM inputs after replacing image placeholders; T' = the static `max_len`."""

    inputs_embeds: jax.Array  # [B, T', D]
    attention_mask: jax.Array  # [B, T'] bool (the reference's expanded mask, quirk Q9)
    labels: jax.Array | None  # [B, T'] int32, IGNORE_INDEX on image tokens and padding
    positions: jax.Array  # [B, T'] int32 (0..T'-1: the reference passes no position ids)
    token_pos: jax.Array  # [B, T] output position of each input token (first image token for a placeholder)
    source: jax.Array  # [B, T'] input token index each output position comes from, -1 on padding
    lengths: jax.Array  # [B] expanded length of each row; > T' means the row was cut


def expanded_lengths(
    input_ids: np.ndarray, tokens_per_image: int, image_token_index: int = IMAGE_TOKEN_INDEX
) -> np.ndarray:
    """Host-side: the length of each row after splicing ([B]); use its max to choose `max_len`."""
    ids = np.asarray(input_ids)
    return ids.shape[1] + (tokens_per_image - 1) * (ids == image_token_index).sum(axis=1)


def default_image_index(input_ids: jax.Array, image_token_index: int = IMAGE_TOKEN_INDEX) -> jax.Array:
    """Which image each placeholder takes, as the reference's running `cur_image_idx` does: images
    are consumed in order over rows, then positions; a row without any placeholder still consumes
    one image (the reference increments `cur_image_idx` for it). [B, T]: image id at each
    placeholder position (meaningless elsewhere)."""
    is_img = input_ids == image_token_index
    count = is_img.sum(axis=1)
    row_offset = jnp.cumsum(jnp.maximum(count, 1)) - jnp.maximum(count, 1)
    return row_offset[:, None] + jnp.cumsum(is_img, axis=1) - 1


def splice_image_tokens(
    input_ids: jax.Array,
    image_features: jax.Array,
    text_embeds: jax.Array,
    *,
    max_len: int,
    attention_mask: jax.Array | None = None,
    labels: jax.Array | None = None,
    image_index: jax.Array | None = None,
    image_token_index: int = IMAGE_TOKEN_INDEX,
    ignore_index: int = IGNORE_INDEX,
) -> SplicedInputs:
    """Replace every placeholder in `input_ids` [B, T] by the F tokens of an image.

    image_features: [N, F, D] (images in call order: the k-th placeholder overall takes image k, as
    in the reference; or pass `image_index`) or [B, K, F, D] (row b's k-th placeholder takes
    [b, k]). text_embeds: [B, T, D], the token embeddings of `input_ids` (placeholder rows are not
    read). image_index: optional [B, T] image id at each placeholder position.
    Rows longer than `max_len` are cut (check `lengths`).
    """
    b, t = input_ids.shape
    if image_features.ndim == 4:
        if image_index is not None:
            raise ValueError("splice_image_tokens: image_index is implied by [B, K, F, D] features")
        k_max = image_features.shape[1]
        is_img = input_ids == image_token_index
        image_index = jnp.arange(b)[:, None] * k_max + jnp.clip(jnp.cumsum(is_img, axis=1) - 1, 0, k_max - 1)
        image_features = image_features.reshape((-1,) + image_features.shape[2:])
    n_img, f, _ = image_features.shape
    if image_index is None:
        image_index = default_image_index(input_ids, image_token_index)
    is_img = input_ids == image_token_index
    width = jnp.where(is_img, f, 1)
    ends = jnp.cumsum(width, axis=1)  # [B, T] exclusive end of each token's span
    starts = ends - width
    lengths = ends[:, -1]
    p = jnp.arange(max_len)
    # Source token of output position p: the first i with ends[i] > p (T past the end).
    src = jax.vmap(lambda e: jnp.searchsorted(e, p, side="right"))(ends)
    inside = p[None, :] < lengths[:, None]
    src_c = jnp.minimum(src, t - 1)
    offset = p[None, :] - jnp.take_along_axis(starts, src_c, axis=1)
    from_img = jnp.take_along_axis(is_img, src_c, axis=1) & inside
    img_id = jnp.clip(jnp.take_along_axis(image_index, src_c, axis=1), 0, n_img - 1)

    text = jnp.take_along_axis(text_embeds, src_c[..., None], axis=1)
    image = image_features[img_id, jnp.clip(offset, 0, f - 1)].astype(text.dtype)
    embeds = jnp.where(from_img[..., None], image, text)
    embeds = jnp.where(inside[..., None], embeds, 0)

    out_labels = None
    if labels is not None:
        out_labels = jnp.take_along_axis(labels, src_c, axis=1).astype(jnp.int32)
        out_labels = jnp.where(from_img | ~inside, ignore_index, out_labels)

    # Q9: (lengths - T) Trues prepended to the original mask, False after the row's end.
    am = jnp.ones((b, t), bool) if attention_mask is None else attention_mask.astype(bool)
    n_left = (lengths - t)[:, None]
    orig = jnp.take_along_axis(am, jnp.clip(p[None, :] - n_left, 0, t - 1), axis=1)
    mask = jnp.where(p[None, :] < n_left, True, orig) & inside

    return SplicedInputs(
        inputs_embeds=embeds,
        attention_mask=mask,
        labels=out_labels,
        positions=jnp.broadcast_to(p.astype(jnp.int32), (b, max_len)),
        token_pos=starts.astype(jnp.int32),
        source=jnp.where(inside, src_c, -1).astype(jnp.int32),
        lengths=lengths.astype(jnp.int32),
    )


class Llava(nnx.Module):
    """`vision_tower` (CLIPVisionTower) + `mm_projector` + `llm` (LlamaForCausalLM)."""

    def __init__(self, cfg: LlavaConfig, *, rngs: nnx.Rngs):
        self.config = cfg
        self.vision_tower = CLIPVisionTower(cfg.clip, rngs=rngs)
        self.mm_projector = MMProjector(
            cfg.clip.hidden_size,
            cfg.llama.hidden_size,
            cfg.projector_type,
            dtype=jnp.dtype(cfg.llama.dtype),
            rngs=rngs,
        )
        self.llm = LlamaForCausalLM(cfg.llama, rngs=rngs)

    def encode_images(self, pixel_values: jax.Array) -> jax.Array:
        """GLUS `encode_images`: [N, 224, 224, 3] CLIP pixels (NHWC) -> [N, tokens_per_image, D_llm]."""
        cfg = self.config
        feats = self.vision_tower(pixel_values, select_layer=cfg.select_layer)
        return self.mm_projector(pool_image_tokens(feats, cfg.pool_size))

    def embed_multimodal(
        self,
        input_ids: jax.Array,
        image_features: jax.Array,
        *,
        max_len: int,
        attention_mask: jax.Array | None = None,
        labels: jax.Array | None = None,
        image_index: jax.Array | None = None,
    ) -> SplicedInputs:
        """Embed `input_ids` [B, T] (with placeholders) and splice in `image_features` (see
        `splice_image_tokens`; features from `encode_images`)."""
        tok = self.config.image_token_index
        text = self.llm.model.embed(jnp.where(input_ids == tok, 0, input_ids))
        return splice_image_tokens(
            input_ids,
            image_features,
            text,
            max_len=max_len,
            attention_mask=attention_mask,
            labels=labels,
            image_index=image_index,
            image_token_index=tok,
        )

    def __call__(
        self,
        input_ids: jax.Array,
        pixel_values: jax.Array,
        *,
        max_len: int,
        attention_mask: jax.Array | None = None,
        labels: jax.Array | None = None,
        image_index: jax.Array | None = None,
        dropout_rng: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array, SplicedInputs]:
        """The reference's `LlavaLlamaForCausalLM.forward` up to the logits: pixels [N, 224, 224, 3]
        in call order -> (logits [B, T', V], final-norm hidden [B, T', D], spliced inputs)."""
        spliced = self.embed_multimodal(
            input_ids,
            self.encode_images(pixel_values),
            max_len=max_len,
            attention_mask=attention_mask,
            labels=labels,
            image_index=image_index,
        )
        logits, hidden = self.llm(
            inputs_embeds=spliced.inputs_embeds,
            attention_mask=spliced.attention_mask,
            positions=spliced.positions,
            dropout_rng=dropout_rng,
        )
        return logits, hidden, spliced
