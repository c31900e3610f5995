"""SAM2 prompt encoder with GLUS's text prompt (port of `sam2/modeling/sam/prompt_encoder.py`).

GLUS adds a `text_embeds` argument: the projected [SEG] embedding [B, T, D] is appended to the
sparse prompt after any point and box embeddings (GLUS calls it with points = boxes = masks = None,
so the sparse prompt is the text embedding alone, with no padding point; see model/GLUS.py).

Shapes: points (coords [B, N, 2] as (x, y) in input-image pixels, labels [B, N] int with
-1 = padding / not a point, 0 = negative, 1 = positive, 2 / 3 = box corners); boxes [B, 4]
(x0, y0, x1, y1); masks [B, 4h, 4w, 1] logits; outputs sparse [B, n, D] and dense [B, h, w, D]
(NHWC; PyTorch returns [B, D, h, w]).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from glus_jax.layers import Linear
from glus_jax.models.sam2.config import PromptEncoderConfig
from glus_jax.models.sam2.position_encoding import PositionEmbeddingRandom
from glus_jax.models.sam2.sam2_utils import LayerNorm2d, conv2d, gelu
from glus_jax.sharding import with_axes


def _embedding(rngs: nnx.Rngs, n: int, dim: int) -> nnx.Param:
    """nn.Embedding(n, dim).weight: N(0, 1) init, shape [n, dim]."""
    return nnx.Param(
        with_axes(nnx.initializers.normal(1.0), (None, "sam_embed"))(rngs.params(), (n, dim), jnp.float32)
    )


class PromptEncoder(nnx.Module):
    def __init__(self, cfg: PromptEncoderConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        d = cfg.embed_dim
        self.pe_layer = PositionEmbeddingRandom(d // 2, rngs=rngs)
        # The 4 point embeddings (neg, pos, box top-left, box bottom-right) stacked: [4, D].
        self.point_embeddings = _embedding(rngs, 4, d)
        self.not_a_point_embed = _embedding(rngs, 1, d)
        self.no_mask_embed = _embedding(rngs, 1, d)
        c = cfg.mask_in_chans
        self.mask_downscaling = MaskDownscaling(c, d, rngs=rngs)

    @property
    def mask_input_size(self) -> tuple[int, int]:
        h, w = self.cfg.image_embedding_size
        return (4 * h, 4 * w)

    def get_dense_pe(self) -> jax.Array:
        """Positional encoding of the image-embedding grid: [1, h, w, D]."""
        h, w = self.cfg.image_embedding_size
        return self.pe_layer(h, w)[None]

    def _embed_points(self, coords: jax.Array, labels: jax.Array, *, pad: bool) -> jax.Array:
        coords = coords.astype(jnp.float32) + 0.5  # centre of the pixel
        labels = labels.astype(jnp.int32)
        if pad:
            b = coords.shape[0]
            coords = jnp.concatenate([coords, jnp.zeros((b, 1, 2), coords.dtype)], axis=1)
            labels = jnp.concatenate([labels, -jnp.ones((b, 1), labels.dtype)], axis=1)
        emb = self.pe_layer.forward_with_coords(coords, self.cfg.input_image_size)
        lab = labels[..., None]
        # Padding points carry only the not-a-point embedding; others PE + their label's embedding.
        emb = jnp.where(lab == -1, self.not_a_point_embed[...][0], emb)
        table = self.point_embeddings[...]
        for k in range(4):  # the 4 label kinds (elementwise selects, not a loop over points)
            emb = jnp.where(lab == k, emb + table[k], emb)
        return emb

    def _embed_boxes(self, boxes: jax.Array) -> jax.Array:
        corners = boxes.astype(jnp.float32).reshape(-1, 2, 2) + 0.5
        emb = self.pe_layer.forward_with_coords(corners, self.cfg.input_image_size)
        return emb + self.point_embeddings[...][2:4]

    def __call__(
        self,
        points: tuple[jax.Array, jax.Array] | None = None,
        boxes: jax.Array | None = None,
        masks: jax.Array | None = None,
        text_embeds: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """-> (sparse [B, n, D], dense [B, h, w, D]); text_embeds [B, T, D] or [B, D] (= one token)."""
        d = self.cfg.embed_dim
        if text_embeds is not None and text_embeds.ndim == 2:
            text_embeds = text_embeds[:, None, :]
        if points is not None:
            bs = points[0].shape[0]
        elif boxes is not None:
            bs = boxes.shape[0]
        elif masks is not None:
            bs = masks.shape[0]
        elif text_embeds is not None:
            bs = text_embeds.shape[0]
        else:
            bs = 1
        parts = []
        if points is not None:
            parts.append(self._embed_points(points[0], points[1], pad=boxes is None))
        if boxes is not None:
            parts.append(self._embed_boxes(boxes))
        if text_embeds is not None:
            parts.append(text_embeds)
        sparse = jnp.concatenate(parts, axis=1) if parts else jnp.zeros((bs, 0, d), jnp.float32)
        if masks is not None:
            if tuple(masks.shape[1:3]) != self.mask_input_size:
                raise ValueError(
                    f"PromptEncoder: mask input {masks.shape[1:3]} must be {self.mask_input_size}"
                )
            dense = self.mask_downscaling(masks)
        else:
            h, w = self.cfg.image_embedding_size
            dense = jnp.broadcast_to(self.no_mask_embed[...][0], (bs, h, w, d))
        return sparse, dense


class MaskDownscaling(nnx.Module):
    """conv 2x2/2 -> LayerNorm2d -> GELU -> conv 2x2/2 -> LayerNorm2d -> GELU -> 1x1 conv (a Linear)."""

    def __init__(self, mask_in_chans: int, embed_dim: int, *, rngs: nnx.Rngs):
        c = mask_in_chans
        self.conv1 = conv2d(1, c // 4, 2, stride=2, out_axis=None, rngs=rngs)
        self.norm1 = LayerNorm2d(c // 4, axis_name=None)
        self.conv2 = conv2d(c // 4, c, 2, stride=2, out_axis=None, rngs=rngs)
        self.norm2 = LayerNorm2d(c, axis_name=None)
        self.conv3 = Linear(c, embed_dim, axes=(None, "sam_embed"), rngs=rngs)

    def __call__(self, masks: jax.Array) -> jax.Array:
        """[B, 4h, 4w, 1] -> [B, h, w, D]."""
        x = gelu(self.norm1(self.conv1(masks.astype(jnp.float32))))
        x = gelu(self.norm2(self.conv2(x)))
        return self.conv3(x)
