"""SAM2 memory encoder: fuses a frame's feature with its predicted mask into a memory.

Port of `sam2/modeling/memory_encoder.py` (MaskDownSampler, CXBlock, Fuser, MemoryEncoder), as
vendored by GLUS (SAM2 2.0; identical in the `sam2` 2.1 package), plus the mask preparation of
`SAM2Base._encode_new_memory` (`mask_for_memory`).

Layout NHWC throughout: pix_feat [B, H, W, in_dim], masks [B, H*s, W*s, 1] (s = total stride,
16 in SAM2: 1024 -> 64), outputs [B, H, W, out_dim].

GLUS specifics (oracle README, Q1 and Q4): the pix_feat GLUS feeds is the *memory-conditioned*
top-level feature (after memory attention or `+ no_mem_embed`), the mask is the low-res logits
upsampled to 1024 and mapped by sigmoid * 20 - 10 (`mask_for_memory`), and a GLUS checkpoint leaves
the fuser's layer-scale gammas at their constructor value 1e-6 (the converter's default; see
tools/convert_weights/sam2_memory.py).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from glus_jax.layers import Linear
from glus_jax.models.sam2.position_encoding import PositionEmbeddingSine
from glus_jax.models.sam2.sam2_utils import LayerNorm2d, compute_dtype, conv2d, depthwise_conv2d, gelu
from glus_jax.models.sam2.transforms import postprocess_masks
from glus_jax.sharding import with_axes

# ----------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True, kw_only=True)
class MemoryEncoderConfig:
    """`memory_encoder` block of a SAM2 yaml."""

    in_dim: int = 256  # channels of pix_feat (= the SAM2 hidden dim)
    out_dim: int = 64  # memory channels
    # MaskDownSampler
    mask_kernel_size: int = 3
    mask_stride: int = 2
    mask_padding: int = 1
    mask_total_stride: int = 16
    mask_embed_dim: int = 256
    # Fuser of CXBlocks
    fuser_num_layers: int = 2
    fuser_input_projection: bool = False
    fuser_dim: int = 256
    fuser_kernel_size: int = 7
    fuser_padding: int = 3
    layer_scale_init_value: float = 1e-6  # CXBlock gamma init; <= 0 means no gamma
    use_dwconv: bool = True
    unroll_layers: bool = False  # layers as straight-line code, not a scan: faster when few and small
    # PositionEmbeddingSine of the output
    pos_num_feats: int = 64
    pos_temperature: float = 10000.0
    pos_normalize: bool = True
    pos_scale: float | None = None
    dtype: str = "float32"

    @property
    def mask_num_layers(self) -> int:
        return int(math.log2(self.mask_total_stride) // math.log2(self.mask_stride))

    def __post_init__(self):
        where = "MemoryEncoderConfig"
        if self.mask_stride**self.mask_num_layers != self.mask_total_stride:
            raise ValueError(
                f"{where}: mask_total_stride {self.mask_total_stride} is not a power of {self.mask_stride}"
            )
        if self.mask_embed_dim != self.in_dim:
            raise ValueError(f"{where}: mask_embed_dim {self.mask_embed_dim} must equal in_dim {self.in_dim}")
        if self.fuser_dim != self.in_dim:
            raise ValueError(f"{where}: fuser_dim {self.fuser_dim} must equal in_dim {self.in_dim}")
        if self.pos_num_feats % 2:
            raise ValueError(f"{where}: pos_num_feats {self.pos_num_feats} must be even")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"{where}: dtype {self.dtype!r} must be float32 or bfloat16")


def hiera_l() -> MemoryEncoderConfig:
    """sam2_hiera_l.yaml (identical in the t/s/b+ configs and in GLUS)."""
    return MemoryEncoderConfig()


def tiny() -> MemoryEncoderConfig:
    """The oracle's sam2_hiera_tiny_oracle.yaml."""
    return MemoryEncoderConfig(in_dim=64, out_dim=32, mask_embed_dim=64, fuser_dim=64, pos_num_feats=32)


# -------------------------------------------------------------------------- primitives


def mask_for_memory(
    low_res_logits: jax.Array,
    image_size: int = 1024,
    *,
    sigmoid_scale: float = 20.0,
    sigmoid_bias: float = -10.0,
) -> jax.Array:
    """GLUS's memory-encoder mask: logits [B, h, w] (256 x 256) -> [B, S, S, 1], S = image_size.

    `SAM2Transforms.postprocess_masks(low_res, (1024, 1024))` (bilinear, align_corners=False; no hole
    filling since max_hole_area = 0), then `_encode_new_memory`: sigmoid, * scale, + bias. GLUS never
    binarises (masks are not from points) and has no object-score gating (SAM2 2.0).
    """
    up = postprocess_masks(low_res_logits[:, None].astype(jnp.float32), (image_size, image_size))
    return jax.nn.sigmoid(jnp.moveaxis(up, 1, -1)) * sigmoid_scale + sigmoid_bias


# ------------------------------------------------------------------------------ blocks


class _DownLayer(nnx.Module):
    def __init__(self, in_ch, out_ch, cfg: MemoryEncoderConfig, *, dtype, rngs):
        self.conv = conv2d(
            in_ch,
            out_ch,
            cfg.mask_kernel_size,
            stride=cfg.mask_stride,
            padding=cfg.mask_padding,
            out_axis=None,
            dtype=dtype,
            rngs=rngs,
        )
        self.norm = LayerNorm2d(out_ch, eps=1e-6, axis_name=None)

    def __call__(self, x):
        return gelu(self.norm(self.conv(x)))


class MaskDownSampler(nnx.Module):
    """(conv stride s -> LayerNorm2d -> GELU) x n, channels 1 -> s^2 -> s^4 ..., then 1x1 to embed_dim.

    [B, H*T, W*T, 1] -> [B, H, W, embed_dim] with T = total_stride = s^n.
    """

    def __init__(self, cfg: MemoryEncoderConfig, *, dtype, rngs):
        chans = [cfg.mask_stride ** (2 * i) for i in range(cfg.mask_num_layers + 1)]
        self.layers = nnx.List(
            [
                _DownLayer(chans[i], chans[i + 1], cfg, dtype=dtype, rngs=rngs)
                for i in range(cfg.mask_num_layers)
            ]
        )
        # The final 1x1 conv, stored as a Linear over channels.
        self.proj = Linear(chans[-1], cfg.mask_embed_dim, axes=(None, "sam_embed"), dtype=dtype, rngs=rngs)

    def __call__(self, x):
        for layer in self.layers:  # a handful of stages of different shapes
            x = layer(x)
        return self.proj(x)


class CXBlock(nnx.Module):
    """ConvNeXt block: depthwise conv -> LayerNorm -> Linear(4x) -> GELU -> Linear -> * gamma, residual."""

    def __init__(self, cfg: MemoryEncoderConfig, *, dtype, rngs):
        dim = cfg.fuser_dim
        self.dwconv = conv2d(
            dim,
            dim,
            cfg.fuser_kernel_size,
            padding=cfg.fuser_padding,
            groups=dim if cfg.use_dwconv else 1,
            dtype=dtype,
            rngs=rngs,
        )
        self.norm = LayerNorm2d(dim, eps=1e-6)
        self.pwconv1 = Linear(dim, 4 * dim, axes=("sam_embed", "sam_mlp"), dtype=dtype, rngs=rngs)
        self.pwconv2 = Linear(4 * dim, dim, axes=("sam_mlp", "sam_embed"), dtype=dtype, rngs=rngs)
        self.gamma = (
            nnx.Param(
                with_axes(
                    lambda *_: jnp.full((dim,), cfg.layer_scale_init_value, jnp.float32), ("sam_embed",)
                )(None, None)
            )
            if cfg.layer_scale_init_value > 0
            else None
        )

    def __call__(self, x):
        conv = self.dwconv
        if conv.feature_group_count > 1:
            pad = conv.padding[0][0]  # symmetric, as conv2d builds it
            y = depthwise_conv2d(x, conv.kernel[...], conv.bias[...], pad)
        else:
            y = conv(x)
        y = self.pwconv2(gelu(self.pwconv1(self.norm(y))))
        if self.gamma is not None:
            y = self.gamma[...].astype(y.dtype) * y
        return x + y


class Fuser(nnx.Module):
    """Optional 1x1 input projection, then `num_layers` CXBlocks (scanned: leading layer axis)."""

    def __init__(self, cfg: MemoryEncoderConfig, *, dtype, rngs):
        self.proj = (
            Linear(cfg.fuser_dim, cfg.fuser_dim, axes=("sam_embed", None), dtype=dtype, rngs=rngs)
            if cfg.fuser_input_projection
            else None
        )

        @nnx.split_rngs(splits=cfg.fuser_num_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: None})
        def make(r):
            return CXBlock(cfg, dtype=dtype, rngs=r)

        self.layers = make(rngs)
        self.unroll = cfg.unroll_layers

    def __call__(self, x):
        if self.proj is not None:
            x = self.proj(x)

        @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry, unroll=self.unroll)
        def run(h, block):
            return block(h)

        return run(x, self.layers)


class MemoryEncoder(nnx.Module):
    """pix_feat [B, H, W, in_dim] + mask [B, H*T, W*T, 1] -> (memory [B, H, W, out_dim], pos [B, H, W, out_dim])."""

    def __init__(self, cfg: MemoryEncoderConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        dtype = compute_dtype(cfg.dtype)
        self.mask_downsampler = MaskDownSampler(cfg, dtype=dtype, rngs=rngs)
        self.pix_feat_proj = Linear(cfg.in_dim, cfg.in_dim, axes=("sam_embed", None), dtype=dtype, rngs=rngs)
        self.fuser = Fuser(cfg, dtype=dtype, rngs=rngs)
        self.out_proj = (
            Linear(cfg.in_dim, cfg.out_dim, axes=(None, None), dtype=dtype, rngs=rngs)
            if cfg.out_dim != cfg.in_dim
            else None
        )
        self.position_encoding = PositionEmbeddingSine(
            cfg.pos_num_feats,
            temperature=cfg.pos_temperature,
            normalize=cfg.pos_normalize,
            scale=cfg.pos_scale,
        )

    def __call__(
        self, pix_feat: jax.Array, masks: jax.Array, *, skip_mask_sigmoid: bool = False
    ) -> tuple[jax.Array, jax.Array]:
        """`masks` are logits unless `skip_mask_sigmoid` (GLUS/SAM2 pass `mask_for_memory(...)` with
        skip_mask_sigmoid=True). Returns (vision_features, vision_pos_enc), both NHWC."""
        cfg = self.cfg
        dtype = compute_dtype(cfg.dtype)
        m = masks.astype(dtype)
        if not skip_mask_sigmoid:
            m = jax.nn.sigmoid(m)
        m = self.mask_downsampler(m)
        if m.shape[1:3] != pix_feat.shape[1:3]:
            raise ValueError(
                f"MemoryEncoder: mask {masks.shape[1:3]} / {cfg.mask_total_stride} = {m.shape[1:3]} "
                f"does not match pix_feat {pix_feat.shape[1:3]}"
            )
        x = self.pix_feat_proj(pix_feat.astype(dtype)) + m
        x = self.fuser(x)
        if self.out_proj is not None:
            x = self.out_proj(x)
        b, h, w, _ = x.shape
        pos = self.position_encoding(h, w).astype(x.dtype)
        return x, jnp.broadcast_to(pos, (b, h, w, cfg.pos_num_feats))
