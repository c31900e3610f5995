"""CLIP vision transformer (the LLaVA / GLUS image encoder) and CLIP image preprocessing.

Ports `transformers.models.clip.modeling_clip.CLIPVisionModel` (vision side only) as used by
GLUS `model/llava/model/multimodal_encoder/clip_encoder.py`: LLaVA reads `hidden_states[select_layer]`
(GLUS: -2) and drops the CLS token ("patch" features), so at 224 px a frame gives [256, D] tokens.

HF's `hidden_states` tuple has L + 1 entries: entry 0 is the encoder input (embeddings after
`pre_layrnorm`), entry k the output of layer k-1. `hidden_states[s]` therefore needs the first
`s` layers (s >= 0) or the first `L + 1 + s` layers (s < 0); only those are run here. The
post-layernorm is not applied to any `hidden_states` entry (GLUS quirk Q8); it is kept for the
pooled output and so that a checkpoint converts one to one.

Axis letters in shapes: N images, H/W pixels, P patches (+1 with CLS), D width, F mlp width.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from glus_jax.config import ConfigError
from glus_jax.layers import LayerNorm, Linear, dot_product_attention, gelu_exact, quick_gelu
from glus_jax.sharding import constrain, with_axes

# OpenAI CLIP normalisation (transformers.image_utils.OPENAI_CLIP_MEAN / _STD).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# --------------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True, kw_only=True)
class CLIPVisionConfig:
    """Vision half of a HF `CLIPConfig` (field names shortened; see `from_hf_config`)."""

    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_layers: int = 24
    num_heads: int = 16
    patch_size: int = 14
    image_size: int = 224
    num_channels: int = 3
    layer_norm_eps: float = 1e-5
    hidden_act: Literal["quick_gelu", "gelu"] = "quick_gelu"
    unroll_layers: bool = False  # layers as straight-line code, not a scan: faster when few and small
    dtype: str = "float32"  # compute dtype; params are stored float32

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"CLIPVisionConfig: hidden_size {self.hidden_size} not divisible by num_heads "
                f"{self.num_heads}"
            )
        if self.image_size % self.patch_size:
            raise ConfigError(
                f"CLIPVisionConfig: image_size {self.image_size} not divisible by patch_size "
                f"{self.patch_size}"
            )
        if self.dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"CLIPVisionConfig.dtype: {self.dtype!r} is not 'float32' or 'bfloat16'")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid**2

    def layers_for(self, select_layer: int) -> int:
        """How many encoder layers `hidden_states[select_layer]` needs (HF indexing)."""
        n = self.num_layers + 1 + select_layer if select_layer < 0 else select_layer
        if not 0 <= n <= self.num_layers:
            raise ValueError(f"select_layer {select_layer} is out of range for {self.num_layers} layers")
        return n


def clip_vit_l14_224(**overrides) -> CLIPVisionConfig:
    """openai/clip-vit-large-patch14 vision tower (LLaVA-7B v1 / LISA / GLUS)."""
    return dataclasses.replace(CLIPVisionConfig(), **overrides)


def tiny(**overrides) -> CLIPVisionConfig:
    """The oracle's clip-vit-tiny: 224 px, patch 14, width 32, 2 layers, 2 heads, mlp 64."""
    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2)
    return dataclasses.replace(cfg, **overrides)


_HF_KEYS = {
    "hidden_size": "hidden_size",
    "intermediate_size": "intermediate_size",
    "num_hidden_layers": "num_layers",
    "num_attention_heads": "num_heads",
    "patch_size": "patch_size",
    "image_size": "image_size",
    "num_channels": "num_channels",
    "layer_norm_eps": "layer_norm_eps",
    "hidden_act": "hidden_act",
}


def from_hf_config(d: dict, **overrides) -> CLIPVisionConfig:
    """`CLIPVisionConfig` from a HF config dict (a `clip_vision_model` config, or a full `clip`
    config whose `vision_config` is used). Keys we do not model (projection_dim, init ranges,
    dropout 0) are ignored; unsupported values are refused."""
    if "vision_config" in d and isinstance(d["vision_config"], dict):
        d = d["vision_config"]
    kwargs = {}
    for hf_key, ours in _HF_KEYS.items():
        if hf_key in d:
            kwargs[ours] = d[hf_key]
    act = kwargs.get("hidden_act", "quick_gelu")
    if act not in ("quick_gelu", "gelu"):
        raise ConfigError(f"CLIP config: hidden_act {act!r} is not supported (quick_gelu, gelu)")
    if float(d.get("attention_dropout", 0.0) or 0.0) != 0.0:
        raise ConfigError(
            f"CLIP config: attention_dropout {d['attention_dropout']} is not supported (must be 0)"
        )
    if "layer_norm_eps" in kwargs:
        kwargs["layer_norm_eps"] = float(kwargs["layer_norm_eps"])
    kwargs.update(overrides)
    return CLIPVisionConfig(**kwargs)


# --------------------------------------------------------------------------------- modules


class CLIPAttention(nnx.Module):
    """Multi-head self-attention with biased q/k/v/out projections (no mask: ViT)."""

    def __init__(self, cfg: CLIPVisionConfig, *, rngs: nnx.Rngs):
        d, dt = cfg.hidden_size, jnp.dtype(cfg.dtype)
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.q_proj = Linear(d, d, axes=("clip_embed", None), dtype=dt, rngs=rngs)
        self.k_proj = Linear(d, d, axes=("clip_embed", None), dtype=dt, rngs=rngs)
        self.v_proj = Linear(d, d, axes=("clip_embed", None), dtype=dt, rngs=rngs)
        self.out_proj = Linear(d, d, axes=(None, "clip_embed"), dtype=dt, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [N, P, D] -> [N, P, D]."""
        n, p, _ = x.shape
        split = lambda t: t.reshape(n, p, self.num_heads, self.head_dim)
        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        out = dot_product_attention(q, k, v)
        return self.out_proj(out.reshape(n, p, -1))


class CLIPMLP(nnx.Module):
    def __init__(self, cfg: CLIPVisionConfig, *, rngs: nnx.Rngs):
        dt = jnp.dtype(cfg.dtype)
        self.fc1 = Linear(
            cfg.hidden_size, cfg.intermediate_size, axes=("clip_embed", "clip_mlp"), dtype=dt, rngs=rngs
        )
        self.fc2 = Linear(
            cfg.intermediate_size, cfg.hidden_size, axes=("clip_mlp", "clip_embed"), dtype=dt, rngs=rngs
        )
        self.act = quick_gelu if cfg.hidden_act == "quick_gelu" else gelu_exact

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(self.act(self.fc1(x)))


class CLIPEncoderLayer(nnx.Module):
    """Pre-LN transformer block: x + attn(ln1(x)); x + mlp(ln2(x))."""

    def __init__(self, cfg: CLIPVisionConfig, *, rngs: nnx.Rngs):
        self.layer_norm1 = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, axis_name="clip_embed")
        self.self_attn = CLIPAttention(cfg, rngs=rngs)
        self.layer_norm2 = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, axis_name="clip_embed")
        self.mlp = CLIPMLP(cfg, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.self_attn(self.layer_norm1(x))
        x = x + self.mlp(self.layer_norm2(x))
        return constrain(x, ("batch", None, "clip_embed"))


# CLIP has no layer axis in the logical vocabulary: the stacked axis stays replicated.
_LAYER_AXIS = {nnx.PARTITION_NAME: None}


class CLIPVisionTower(nnx.Module):
    """CLIP ViT image encoder returning LLaVA's selected hidden states.

    Parameter layout (mirrors HF `vision_model.*`): `patch_embedding` [p, p, C, D] (HWIO, no bias),
    `class_embedding` [D], `position_embedding` [P+1, D], `pre_layrnorm`, `layers` (all L layers
    stacked on a leading axis, run with `nnx.scan`), `post_layernorm`.
    """

    def __init__(self, cfg: CLIPVisionConfig, *, rngs: nnx.Rngs):
        self.config = cfg
        d, p = cfg.hidden_size, cfg.patch_size
        normal = nnx.initializers.normal(0.02)
        self.patch_embedding = nnx.Param(
            with_axes(normal, (None, None, None, "clip_embed"))(rngs.params(), (p, p, cfg.num_channels, d))
        )
        self.class_embedding = nnx.Param(with_axes(normal, ("clip_embed",))(rngs.params(), (d,)))
        self.position_embedding = nnx.Param(
            with_axes(normal, (None, "clip_embed"))(rngs.params(), (cfg.num_patches + 1, d))
        )
        self.pre_layrnorm = LayerNorm(d, eps=cfg.layer_norm_eps, axis_name="clip_embed")

        @nnx.split_rngs(splits=cfg.num_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata=_LAYER_AXIS)
        def make_layers(rngs: nnx.Rngs) -> CLIPEncoderLayer:
            return CLIPEncoderLayer(cfg, rngs=rngs)

        self.layers = make_layers(rngs)
        self.post_layernorm = LayerNorm(d, eps=cfg.layer_norm_eps, axis_name="clip_embed")

    def embed(self, pixel_values: jax.Array) -> jax.Array:
        """pixel_values: [N, H, W, C] (NHWC, CLIP-normalised) -> [N, P+1, D] after pre_layrnorm.

        The stride-p patch conv is a matmul over non-overlapping p x p x C patches in raster
        order (row-major over the grid), the order of HF's `flatten(2).transpose(1, 2)`.
        """
        cfg = self.config
        n, h, w, c = pixel_values.shape
        if (h, w, c) != (cfg.image_size, cfg.image_size, cfg.num_channels):
            raise ValueError(
                f"CLIPVisionTower expects [N, {cfg.image_size}, {cfg.image_size}, {cfg.num_channels}] (NHWC) "
                f"pixels, got {tuple(pixel_values.shape)}"
            )
        dt = jnp.dtype(cfg.dtype)
        p, g = cfg.patch_size, cfg.grid
        x = (
            pixel_values.astype(dt)
            .reshape(n, g, p, g, p, c)
            .transpose(0, 1, 3, 2, 4, 5)
            .reshape(n, g * g, p * p * c)
        )
        kernel = self.patch_embedding[...].astype(dt).reshape(p * p * c, cfg.hidden_size)
        patches = jnp.dot(x, kernel)
        cls = jnp.broadcast_to(self.class_embedding[...].astype(dt), (n, 1, cfg.hidden_size))
        x = jnp.concatenate([cls, patches], axis=1) + self.position_embedding[...].astype(dt)
        return self.pre_layrnorm(x)

    def encode(self, pixel_values: jax.Array, num_layers: int) -> jax.Array:
        """[N, H, W, C] -> [N, P+1, D]: embeddings then the first `num_layers` encoder layers."""
        x = self.embed(pixel_values)
        if num_layers == 0:
            return x
        layers = self.layers
        if num_layers < self.config.num_layers:
            graphdef, state = nnx.split(self.layers)
            layers = nnx.merge(graphdef, jax.tree.map(lambda a: a[:num_layers], state))

        @nnx.scan(
            in_axes=(nnx.Carry, 0), out_axes=nnx.Carry, transform_metadata=_LAYER_AXIS,
            unroll=self.config.unroll_layers,
        )
        def run(x, layer):
            return layer(x)

        return run(x, layers)

    def __call__(
        self, pixel_values: jax.Array, *, select_layer: int = -2, drop_cls: bool = True
    ) -> jax.Array:
        """LLaVA image features: HF `hidden_states[select_layer]`, CLS dropped when `drop_cls`.

        pixel_values: [N, H, W, C] NHWC (see `clip_preprocess`) -> [N, P, D] ([N, P+1, D] with CLS).
        """
        x = self.encode(pixel_values, self.config.layers_for(select_layer))
        return x[:, 1:] if drop_cls else x

    def pooled_output(self, pixel_values: jax.Array) -> jax.Array:
        """HF `pooler_output`: post_layernorm of the last layer's CLS token. [N, D]."""
        x = self.encode(pixel_values, self.config.num_layers)
        return self.post_layernorm(x[:, 0])


# --------------------------------------------------------------------------- preprocessing


def _resize_shortest_edge(frame: np.ndarray, size: int) -> np.ndarray:
    """PIL bicubic resize so the short edge is `size` (HF `get_resize_output_image_size`:
    the long edge is int(size * long / short), truncated)."""
    from PIL import Image

    h, w = frame.shape[:2]
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(size * long / short)
    new_h, new_w = (new_long, size) if w <= h else (size, new_long)
    return np.asarray(Image.fromarray(frame).resize((new_w, new_h), resample=Image.BICUBIC))


def _center_crop(img: np.ndarray, size: int) -> np.ndarray:
    """HF `center_crop` (top/left = floor((orig - crop) / 2); zero-pads images smaller than the crop)."""
    h, w = img.shape[:2]
    if h < size or w < size:
        nh, nw = max(h, size), max(w, size)
        top_pad, left_pad = -(-(nh - h) // 2), -(-(nw - w) // 2)
        padded = np.zeros((nh, nw) + img.shape[2:], img.dtype)
        padded[top_pad : top_pad + h, left_pad : left_pad + w] = img
        top, left = (h - size) // 2 + top_pad, (w - size) // 2 + left_pad
        return padded[top : top + size, left : left + size]
    top, left = (h - size) // 2, (w - size) // 2
    return img[top : top + size, left : left + size]


def clip_preprocess(
    frames: np.ndarray | Sequence[np.ndarray],
    *,
    size: int = 224,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
) -> np.ndarray:
    """Equal to transformers' `CLIPImageProcessor()` defaults (the slow, PIL path of
    transformers 4.31 that GLUS ran), bit for bit: resize the short edge to `size` with PIL
    bicubic on uint8, center crop `size`, rescale by 1/255 (in float64, cast to float32),
    normalise with CLIP mean/std in float32.

    frames: [N, H, W, 3] uint8 RGB, or a sequence of [H, W, 3] uint8 frames of any sizes.
    Returns [N, size, size, 3] float32 (NHWC; HF returns NCHW).
    """
    if isinstance(frames, np.ndarray):
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"clip_preprocess: expected frames [N, H, W, 3], got shape {frames.shape}")
        frames = list(frames)
    mean32, std32 = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    out = np.empty((len(frames), size, size, 3), np.float32)
    for i, frame in enumerate(frames):
        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[-1] != 3:
            raise ValueError(
                f"clip_preprocess: frame {i} must be uint8 [H, W, 3] RGB, got {frame.dtype} {frame.shape}"
            )
        img = _center_crop(_resize_shortest_edge(frame, size), size)
        img = (img.astype(np.float64) * (1 / 255)).astype(np.float32)
        out[i] = (img - mean32) / std32
    return out
