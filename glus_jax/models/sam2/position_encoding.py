"""SAM2 position encodings (port of `sam2/modeling/position_encoding.py`).

- `PositionEmbeddingSine`: DETR-style sine encoding of a feature map's grid; depends only on the
  (static) spatial size, so it is a pure function of the shape, returned NHWC [1, H, W, C].
- `PositionEmbeddingRandom`: random Fourier features (the prompt encoder's), with the Gaussian
  matrix as a parameter (a buffer in PyTorch; kept as an `nnx.Param` so conversion and model
  directories carry it; GLUS trains only the mask decoder, never this matrix).

The RoPE helpers of the same PyTorch file belong to memory attention (memory_attention.py).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from glus_jax.sharding import with_axes


class PositionEmbeddingSine(nnx.Module):
    """Sine/cosine encoding of (y, x) grid positions; half the channels each, y first.

    `num_pos_feats` is the total channel count (PyTorch halves it internally).
    """

    def __init__(
        self,
        num_pos_feats: int,
        *,
        temperature: float = 10000,
        normalize: bool = True,
        scale: float | None = None,
    ):
        if num_pos_feats % 4:
            # Each half (y, x) interleaves sin and cos over pairs of channels.
            raise ValueError(
                f"PositionEmbeddingSine: num_pos_feats must be a multiple of 4, got {num_pos_feats}"
            )
        if scale is not None and not normalize:
            raise ValueError("PositionEmbeddingSine: normalize should be True if scale is passed")
        self.num_pos_feats = num_pos_feats // 2
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale

    def _dim_t(self) -> jax.Array:
        dim_t = jnp.arange(self.num_pos_feats, dtype=jnp.float32)
        return jnp.float32(self.temperature) ** (2 * (dim_t // 2) / self.num_pos_feats)

    def __call__(self, height: int, width: int) -> jax.Array:
        """Encoding of an H x W grid: [1, H, W, 2 * num_pos_feats] float32."""
        y = jnp.arange(1, height + 1, dtype=jnp.float32)
        x = jnp.arange(1, width + 1, dtype=jnp.float32)
        if self.normalize:
            eps = 1e-6
            y = y / (y[-1] + eps) * self.scale
            x = x / (x[-1] + eps) * self.scale
        dim_t = self._dim_t()

        def encode(pos):  # [n] -> [n, F]: sin on even, cos on odd channels, interleaved
            p = pos[:, None] / dim_t
            return jnp.stack([jnp.sin(p[:, 0::2]), jnp.cos(p[:, 1::2])], axis=2).reshape(pos.shape[0], -1)

        pos_y = jnp.broadcast_to(encode(y)[:, None, :], (height, width, self.num_pos_feats))
        pos_x = jnp.broadcast_to(encode(x)[None, :, :], (height, width, self.num_pos_feats))
        return jnp.concatenate([pos_y, pos_x], axis=-1)[None]


class PositionEmbeddingRandom(nnx.Module):
    """Random spatial-frequency encoding: [sin(2 pi (2c - 1) G), cos(...)] of coords c in [0, 1]^2."""

    def __init__(self, num_pos_feats: int = 64, *, scale: float | None = None, rngs: nnx.Rngs):
        if scale is None or scale <= 0.0:
            scale = 1.0

        def init(key, shape, dtype=jnp.float32):
            return scale * jax.random.normal(key, shape, dtype)

        self.positional_encoding_gaussian_matrix = nnx.Param(
            with_axes(init, (None, None))(rngs.params(), (2, num_pos_feats), jnp.float32)
        )

    def _pe_encoding(self, coords: jax.Array) -> jax.Array:
        """coords [..., 2] (x, y) in [0, 1] -> [..., 2 * num_pos_feats]."""
        coords = 2 * coords.astype(jnp.float32) - 1
        # K = 2 contraction: HIGHEST precision costs nothing and keeps TPUs off bf16 passes.
        coords = jnp.dot(
            coords, self.positional_encoding_gaussian_matrix[...], precision=jax.lax.Precision.HIGHEST
        )
        coords = 2 * jnp.pi * coords
        return jnp.concatenate([jnp.sin(coords), jnp.cos(coords)], axis=-1)

    def __call__(self, height: int, width: int) -> jax.Array:
        """Dense encoding of pixel centres of an H x W grid: [H, W, C]."""
        y = (jnp.arange(height, dtype=jnp.float32) + 0.5) / height
        x = (jnp.arange(width, dtype=jnp.float32) + 0.5) / width
        grid = jnp.stack(jnp.meshgrid(x, y, indexing="xy"), axis=-1)  # [H, W, 2] as (x, y)
        return self._pe_encoding(grid)

    def forward_with_coords(self, coords: jax.Array, image_size: tuple[int, int]) -> jax.Array:
        """Pixel coords [B, N, 2] (x, y) of an image of size (H, W) -> [B, N, C]."""
        coords = coords.astype(jnp.float32)
        norm = jnp.asarray([image_size[1], image_size[0]], jnp.float32)
        return self._pe_encoding(coords / norm)
