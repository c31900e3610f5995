"""SAM2 mask decoder (port of `sam2/modeling/sam/mask_decoder.py`).

Output tokens ([obj_score], iou, 4 mask tokens) + sparse prompt tokens run through the two-way
transformer against the image embedding (+ dense prompt). The image side is upscaled 4x by two
transposed convs; with `use_high_res_features` the stride-8 / stride-4 backbone features (already
projected by `conv_s1` / `conv_s0`, which SAM2Model.encode_image applies once per frame) are added
after each. Each mask token's hypernetwork MLP gives per-pixel weights: masks = tokens . pixels.

Mask selection (quirk Q5): multimask -> tokens 1-3; otherwise, in eval with
`dynamic_multimask_via_stability`, token 0 unless its stability score is below the threshold, then
the best of tokens 1-3 by predicted IoU (a jnp.where, so it stays jit-able); in training always
token 0. `training` is an explicit static argument.

Shapes: image_embeddings [B, h, w, C]; image_pe [1, h, w, C]; sparse [B, N, C]; dense [B, h, w, C];
high_res_features (s0 [B, 4h, 4w, C/8], s1 [B, 2h, 2w, C/4]); masks [B, M, 4h, 4w] (mask index as
channel 1, as PyTorch); iou [B, M]; tokens [B, M', C]; object score logits [B, 1].
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from glus_jax.layers import Linear, torch_linear_init
from glus_jax.models.sam2.config import MaskDecoderConfig
from glus_jax.models.sam2.prompt_encoder import _embedding
from glus_jax.models.sam2.sam2_utils import MLP, LayerNorm2d, compute_dtype, conv_transpose2d, gelu
from glus_jax.models.sam2.two_way_transformer import TwoWayTransformer
from glus_jax.sharding import with_axes


class StackedMLP(nnx.Module):
    """`n` independent MLPs of identical shape (the per-token hypernetworks), run as one batched
    einsum: x [B, n, in] -> [B, n, out]. Params `layers/{i}/{kernel [n, in, out], bias [n, out]}`."""

    def __init__(
        self,
        n: int,
        input_dim: int,
        hidden_dim: int,
        output_dim: int,
        num_layers: int,
        *,
        dtype,
        rngs: nnx.Rngs,
    ):
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nnx.List(
            [_StackedLinear(n, dims[i], dims[i + 1], dtype=dtype, rngs=rngs) for i in range(num_layers)]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        for i, layer in enumerate(self.layers):  # 3 layers of different shapes
            x = layer(x)
            if i < len(self.layers) - 1:
                x = jax.nn.relu(x)
        return x


class _StackedLinear(nnx.Module):
    def __init__(self, n: int, d_in: int, d_out: int, *, dtype, rngs: nnx.Rngs):
        init = torch_linear_init(d_in)
        self.kernel = nnx.Param(
            with_axes(init, (None, "sam_embed", None))(rngs.params(), (n, d_in, d_out), jnp.float32)
        )
        self.bias = nnx.Param(with_axes(init, (None, None))(rngs.params(), (n, d_out), jnp.float32))
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jnp.einsum("bni,nio->bno", x.astype(self.dtype), self.kernel[...].astype(self.dtype))
        return y + self.bias[...].astype(self.dtype)


class OutputUpscaling(nnx.Module):
    """dc1 (ConvT 2x2/2, C -> C/4) -> [+ feat_s1] -> ln1 -> GELU -> dc2 (C/4 -> C/8) -> [+ feat_s0] -> GELU."""

    def __init__(self, dim: int, *, dtype, rngs: nnx.Rngs):
        self.dc1 = conv_transpose2d(dim, dim // 4, 2, stride=2, out_axis=None, dtype=dtype, rngs=rngs)
        self.ln1 = LayerNorm2d(dim // 4, axis_name=None)
        self.dc2 = conv_transpose2d(dim // 4, dim // 8, 2, stride=2, out_axis=None, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, high_res_features: tuple[jax.Array, jax.Array] | None) -> jax.Array:
        y = self.dc1(x)
        if high_res_features is not None:
            y = y + high_res_features[1].astype(y.dtype)
        y = gelu(self.ln1(y))
        y = self.dc2(y)
        if high_res_features is not None:
            y = y + high_res_features[0].astype(y.dtype)
        return gelu(y)


class MaskDecoderOutput(NamedTuple):
    masks: jax.Array  # [B, M, 4h, 4w] low-res mask logits after the output selection
    iou_pred: jax.Array  # [B, M]
    sam_tokens_out: jax.Array  # [B, M', C] mask-token outputs used for object pointers
    object_score_logits: jax.Array  # [B, 1]


class AllMasks(NamedTuple):
    """Every mask token's output, before any selection (`MaskDecoder.predict_masks`)."""

    masks: jax.Array  # [B, T, 4h, 4w], T = num_mask_tokens (token 0 = single-mask token)
    iou_pred: jax.Array  # [B, T]
    mask_tokens_out: jax.Array  # [B, T, C]
    object_score_logits: jax.Array  # [B, 1]


def stability_scores(mask_logits: jax.Array, delta: float) -> jax.Array:
    """IoU of the masks thresholded at +delta and -delta: [..., H, W] -> [...] (1 where both empty)."""
    flat = mask_logits.reshape(*mask_logits.shape[:-2], -1)
    area_i = jnp.sum(flat > delta, axis=-1).astype(jnp.float32)
    area_u = jnp.sum(flat > -delta, axis=-1).astype(jnp.float32)
    return jnp.where(area_u > 0, area_i / jnp.maximum(area_u, 1.0), 1.0)


class MaskDecoder(nnx.Module):
    def __init__(self, cfg: MaskDecoderConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        dtype = compute_dtype(cfg.dtype)
        self.dtype = dtype
        c = cfg.transformer_dim
        t = cfg.num_mask_tokens
        self.transformer = TwoWayTransformer(
            cfg.transformer_depth,
            c,
            cfg.transformer_num_heads,
            cfg.transformer_mlp_dim,
            attention_downsample_rate=cfg.attention_downsample_rate,
            dtype=dtype,
            rngs=rngs,
        )
        self.iou_token = _embedding(rngs, 1, c)
        self.mask_tokens = _embedding(rngs, t, c)
        self.obj_score_token = _embedding(rngs, 1, c) if cfg.pred_obj_scores else None
        self.output_upscaling = OutputUpscaling(c, dtype=dtype, rngs=rngs)
        if cfg.use_high_res_features:
            # 1x1 convs, stored as Linears over channels.
            self.conv_s0 = Linear(c, c // 8, axes=("sam_embed", None), dtype=dtype, rngs=rngs)
            self.conv_s1 = Linear(c, c // 4, axes=("sam_embed", None), dtype=dtype, rngs=rngs)
        else:
            self.conv_s0 = self.conv_s1 = None
        self.output_hypernetworks_mlps = StackedMLP(t, c, c, c // 8, 3, dtype=dtype, rngs=rngs)
        self.iou_prediction_head = MLP(
            c,
            cfg.iou_head_hidden_dim,
            t,
            cfg.iou_head_depth,
            sigmoid_output=cfg.iou_prediction_use_sigmoid,
            dtype=dtype,
            rngs=rngs,
        )
        if not cfg.pred_obj_scores:
            self.pred_obj_score_head = None
        elif cfg.pred_obj_scores_mlp:
            self.pred_obj_score_head = MLP(c, c, 1, 3, dtype=dtype, rngs=rngs)
        else:
            self.pred_obj_score_head = Linear(c, 1, axes=("sam_embed", None), dtype=dtype, rngs=rngs)

    def predict_masks(
        self,
        image_embeddings: jax.Array,
        image_pe: jax.Array,
        sparse_prompt_embeddings: jax.Array,
        dense_prompt_embeddings: jax.Array,
        high_res_features: tuple[jax.Array, jax.Array] | None = None,
    ) -> AllMasks:
        """All T mask tokens' masks and IoUs (no selection)."""
        cfg = self.cfg
        dt = self.dtype
        b = sparse_prompt_embeddings.shape[0]
        if image_embeddings.shape[0] != b:
            raise ValueError(
                f"MaskDecoder: {image_embeddings.shape[0]} images vs {b} prompts (repeat_image is not supported)"
            )
        if cfg.use_high_res_features and high_res_features is None:
            raise ValueError("MaskDecoder: use_high_res_features needs high_res_features (s0, s1)")
        tokens = [self.iou_token[...], self.mask_tokens[...]]
        if self.obj_score_token is not None:
            tokens.insert(0, self.obj_score_token[...])
        s = 1 if self.obj_score_token is not None else 0
        out_tokens = jnp.broadcast_to(
            jnp.concatenate(tokens, axis=0)[None], (b, s + 1 + cfg.num_mask_tokens, cfg.transformer_dim)
        )
        tokens = jnp.concatenate([out_tokens.astype(dt), sparse_prompt_embeddings.astype(dt)], axis=1)

        src = image_embeddings.astype(dt) + dense_prompt_embeddings.astype(dt)
        hs, src = self.transformer(src, image_pe.astype(dt), tokens)
        iou_token_out = hs[:, s]
        mask_tokens_out = hs[:, s + 1 : s + 1 + cfg.num_mask_tokens]

        _, h, w, c = image_embeddings.shape
        up = self.output_upscaling(
            src.reshape(b, h, w, c), high_res_features if cfg.use_high_res_features else None
        )
        hyper_in = self.output_hypernetworks_mlps(mask_tokens_out)  # [B, T, C/8]
        masks = jnp.einsum("btc,bhwc->bthw", hyper_in, up).astype(jnp.float32)

        iou_pred = self.iou_prediction_head(iou_token_out).astype(jnp.float32)
        if self.pred_obj_score_head is not None:
            object_score_logits = self.pred_obj_score_head(hs[:, 0]).astype(jnp.float32)
        else:
            # The reference defaults to 10 ("object present", sigmoid(10) ~ 1).
            object_score_logits = jnp.full((b, 1), 10.0, jnp.float32)
        return AllMasks(masks, iou_pred, mask_tokens_out, object_score_logits)

    def dynamic_multimask_via_stability(
        self, all_masks: jax.Array, all_ious: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """Token 0 where its stability score >= threshold, else the best of tokens 1.. by IoU.
        [B, T, H, W], [B, T] -> [B, 1, H, W], [B, 1]."""
        cfg = self.cfg
        multi_ious = all_ious[:, 1:]
        best = jnp.argmax(multi_ious, axis=-1)  # first maximum, as torch.argmax
        best_masks = jnp.take_along_axis(all_masks[:, 1:], best[:, None, None, None], axis=1)
        best_ious = jnp.take_along_axis(multi_ious, best[:, None], axis=1)
        single_masks, single_ious = all_masks[:, 0:1], all_ious[:, 0:1]
        is_stable = (
            stability_scores(single_masks, cfg.dynamic_multimask_stability_delta)
            >= cfg.dynamic_multimask_stability_thresh
        )
        masks = jnp.where(is_stable[..., None, None], single_masks, best_masks)
        ious = jnp.where(is_stable, single_ious, best_ious)
        return masks, ious

    def __call__(
        self,
        image_embeddings: jax.Array,
        image_pe: jax.Array,
        sparse_prompt_embeddings: jax.Array,
        dense_prompt_embeddings: jax.Array,
        *,
        multimask_output: bool,
        high_res_features: tuple[jax.Array, jax.Array] | None = None,
        training: bool = False,
    ) -> MaskDecoderOutput:
        """MaskDecoder.forward with repeat_image=False. `multimask_output` and `training` are static."""
        cfg = self.cfg
        out = self.predict_masks(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, high_res_features
        )
        if multimask_output:
            masks, ious = out.masks[:, 1:], out.iou_pred[:, 1:]
        elif cfg.dynamic_multimask_via_stability and not training:
            masks, ious = self.dynamic_multimask_via_stability(out.masks, out.iou_pred)
        else:
            masks, ious = out.masks[:, 0:1], out.iou_pred[:, 0:1]
        if multimask_output and cfg.use_multimask_token_for_obj_ptr:
            tokens = out.mask_tokens_out[:, 1:]
        else:
            tokens = out.mask_tokens_out[:, 0:1]
        return MaskDecoderOutput(masks, ious, tokens, out.object_score_logits)
