"""SAM2 image encoder: Hiera trunk + FPN neck (port of `sam2/modeling/backbones/image_encoder.py`).

NHWC throughout. The neck projects every trunk stage to `d_model` channels with a 1x1 conv
(stored as a Linear over channels), then walks from the lowest to the highest resolution adding the
2x-upsampled running feature to the levels listed in `fpn_top_down_levels` (GLUS/SAM2: levels 2, 3,
i.e. only the two lowest resolutions get top-down features). Each output level gets a sine position
encoding. `ImageEncoder` drops the `scalp` lowest-resolution levels (SAM2: 1, leaving strides 4, 8, 16).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from glus_jax.layers import Linear
from glus_jax.models.sam2.config import ImageEncoderConfig, NeckConfig
from glus_jax.models.sam2.hieradet import Hiera
from glus_jax.models.sam2.position_encoding import PositionEmbeddingSine
from glus_jax.models.sam2.sam2_utils import compute_dtype
from glus_jax.models.sam2.transforms import resize


class FpnNeck(nnx.Module):
    """Modified FPN (no output convs). Params `convs/{i}/{kernel,bias}`, i = 0 for the lowest resolution."""

    def __init__(self, cfg: NeckConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.cfg = cfg
        self.convs = nnx.List(
            [
                Linear(c, cfg.d_model, axes=(None, "sam_embed"), dtype=dtype, rngs=rngs)
                for c in cfg.backbone_channel_list
            ]
        )
        pe = cfg.position_encoding
        self.position_encoding = PositionEmbeddingSine(
            pe.num_pos_feats, temperature=pe.temperature, normalize=pe.normalize, scale=pe.scale
        )
        n = len(cfg.backbone_channel_list)
        levels = range(n) if cfg.fpn_top_down_levels is None else cfg.fpn_top_down_levels
        self.top_down_levels = tuple(levels)

    def _upsample(self, x: jax.Array) -> jax.Array:
        if self.cfg.fpn_interp_model == "nearest":
            return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        # F.interpolate(scale_factor=2, mode="bilinear", align_corners=False, antialias=False)
        return resize(x, (2 * x.shape[1], 2 * x.shape[2]), mode="bilinear", scale_factor=2.0).astype(x.dtype)

    def __call__(self, xs: list[jax.Array]) -> tuple[list[jax.Array], list[jax.Array]]:
        """xs: trunk features, highest resolution first -> (features, pos), same order, d_model channels.

        pos entries are [1, H, W, d_model] float32 (batch-independent; broadcast as needed).
        """
        n = len(self.convs)
        if len(xs) != n:
            raise ValueError(f"FpnNeck: got {len(xs)} feature levels, expected {n}")
        out: list = [None] * n
        pos: list = [None] * n
        prev = None
        for i in range(n - 1, -1, -1):  # top-down, lowest resolution first; levels differ in shape
            lateral = self.convs[n - 1 - i](xs[i])
            if i in self.top_down_levels and prev is not None:
                prev = lateral + self._upsample(prev)
                if self.cfg.fuse_type == "avg":
                    prev = prev / 2
            else:
                prev = lateral
            out[i] = prev
            pos[i] = self.position_encoding(prev.shape[1], prev.shape[2])
        return out, pos


class ImageEncoderOutput(NamedTuple):
    vision_features: jax.Array  # [B, h, w, d_model]: the lowest-resolution kept level
    vision_pos_enc: list[jax.Array]  # per kept level, [1, H_i, W_i, d_model]
    backbone_fpn: list[jax.Array]  # per kept level, [B, H_i, W_i, d_model], highest resolution first


class ImageEncoder(nnx.Module):
    """Trunk + neck, dropping the `scalp` lowest-resolution levels. pixels [B, H, W, 3] (normalised)."""

    def __init__(self, cfg: ImageEncoderConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.trunk = Hiera(cfg.trunk, rngs=rngs)
        self.neck = FpnNeck(cfg.neck, dtype=compute_dtype(cfg.trunk.dtype), rngs=rngs)
        self.scalp = cfg.scalp

    def __call__(self, pixels: jax.Array) -> ImageEncoderOutput:
        features, pos = self.neck(self.trunk(pixels))
        if self.scalp > 0:
            features, pos = features[: -self.scalp], pos[: -self.scalp]
        return ImageEncoderOutput(vision_features=features[-1], vision_pos_enc=pos, backbone_fpn=features)
