"""Hiera trunk of SAM2 (port of `sam2/modeling/backbones/hieradet.py` and `backbones/utils.py`).

Activations are NHWC. The trunk is a patch embedding (7x7 conv, stride 4), a windowed absolute
position embedding (a learned background embedding bicubically resized to the feature size plus a
tiled per-window embedding), then `sum(stages)` MultiScaleBlocks. Each block attends within
non-overlapping windows (or globally), and the first block of each of the first `q_pool` later
stages max-pools its queries 2x2 (halving the resolution) while widening channels and heads.

Blocks are grouped into *segments*: maximal runs of consecutive blocks with the same structure
(dims, heads, window size, pooling) that do not cross a stage end. A segment's parameters are stacked
along a leading axis and run with `nnx.scan`, so hiera-l's 48 blocks compile as 12 scanned bodies.
Parameter paths: `segments/{s}/{norm1,attn/qkv,attn/proj,norm2,mlp/layers/i,proj}/...` with a leading
[n_blocks_in_segment] axis; `block_segments(cfg)` maps PyTorch block indices to (segment, index).

Windows are formed by reshapes/transposes over the whole batch (no Python loop over windows).
As in the reference, zero padding added to fill the last window takes part in attention unmasked.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from glus_jax.layers import LayerNorm, Linear, dot_product_attention
from glus_jax.layers.attention import tile_for
from glus_jax.models.sam2.config import HieraConfig
from glus_jax.models.sam2.sam2_utils import MLP, compute_dtype, conv2d, gelu
from glus_jax.models.sam2.transforms import resize_weights
from glus_jax.sharding import constrain, with_axes

# ----------------------------------------------------------------------------- structure


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """Static structure of one MultiScaleBlock."""

    dim: int
    dim_out: int
    num_heads: int
    window_size: int  # 0 = global attention
    q_stride: int | None  # pooling stride of the queries (stage transition) or None


def block_specs(cfg: HieraConfig) -> list[BlockSpec]:
    """Per-block structure, following `Hiera.__init__` (window sizes lag one block at transitions)."""
    stage_ends = stage_end_blocks(cfg)
    q_pool_blocks = [e + 1 for e in stage_ends[:-1]][: cfg.q_pool]
    specs, dim, heads, cur_stage = [], cfg.embed_dim, cfg.num_heads, 1
    for i in range(sum(cfg.stages)):
        dim_out = dim
        # The first block of a stage still uses the previous stage's window size.
        window = cfg.window_spec[cur_stage - 1]
        if i in cfg.global_att_blocks:
            window = 0
        if i - 1 in stage_ends:
            dim_out = int(dim * cfg.dim_mul)
            heads = int(heads * cfg.head_mul)
            cur_stage += 1
        specs.append(BlockSpec(dim, dim_out, heads, window, cfg.q_stride[0] if i in q_pool_blocks else None))
        dim = dim_out
    return specs


def stage_end_blocks(cfg: HieraConfig) -> list[int]:
    return [sum(cfg.stages[: i + 1]) - 1 for i in range(len(cfg.stages))]


def block_segments(cfg: HieraConfig) -> list[list[int]]:
    """Block indices of each segment (runs of identical BlockSpecs, cut after every stage end)."""
    specs, ends = block_specs(cfg), set(stage_end_blocks(cfg))
    segments: list[list[int]] = []
    for i, spec in enumerate(specs):
        if segments and specs[segments[-1][-1]] == spec and segments[-1][-1] not in ends:
            segments[-1].append(i)
        else:
            segments.append([i])
    return segments


# ------------------------------------------------------------------------------- windows


def window_partition(x: jax.Array, window_size: int) -> tuple[jax.Array, tuple[int, int]]:
    """[B, H, W, C] -> ([B * nH * nW, ws, ws, C], (Hp, Wp)); zero-pads H, W up to multiples of ws."""
    b, h, w, c = x.shape
    pad_h, pad_w = -h % window_size, -w % window_size
    if pad_h or pad_w:
        x = jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
    hp, wp = h + pad_h, w + pad_w
    x = x.reshape(b, hp // window_size, window_size, wp // window_size, window_size, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, c), (hp, wp)


def window_unpartition(
    windows: jax.Array, window_size: int, pad_hw: tuple[int, int], hw: tuple[int, int]
) -> jax.Array:
    """Inverse of `window_partition`: [B * nH * nW, ws, ws, C] -> [B, H, W, C] (padding cropped)."""
    hp, wp = pad_hw
    h, w = hw
    nh, nw = hp // window_size, wp // window_size
    b = windows.shape[0] // (nh * nw)
    x = windows.reshape(b, nh, nw, window_size, window_size, -1)
    x = x.transpose(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    return x[:, :h, :w, :]


def max_pool(x: jax.Array, stride: int) -> jax.Array:
    """nn.MaxPool2d(kernel=stride, stride=stride, ceil_mode=False) on NHWC (trailing rows dropped)."""
    b, h, w, c = x.shape
    ho, wo = h // stride, w // stride
    x = x[:, : ho * stride, : wo * stride]
    return x.reshape(b, ho, stride, wo, stride, c).max(axis=(2, 4))


# -------------------------------------------------------------------------------- blocks


class MultiScaleAttention(nnx.Module):
    """Multi-head attention over the tokens of each input map; queries optionally max-pooled."""

    def __init__(
        self, dim: int, dim_out: int, num_heads: int, q_stride: int | None, *, dtype, rngs: nnx.Rngs
    ):
        self.num_heads = num_heads
        self.q_stride = q_stride
        self.qkv = Linear(dim, 3 * dim_out, axes=("sam_embed", "sam_mlp"), dtype=dtype, rngs=rngs)
        self.proj = Linear(dim_out, dim_out, axes=("sam_mlp", "sam_embed"), dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x [N, h, w, dim] -> [N, h', w', dim_out] (h' = h // q_stride when pooling)."""
        n, h, w, _ = x.shape
        qkv = self.qkv(x).reshape(n, h, w, 3, self.num_heads, -1)  # channel order (3, heads, hd)
        q, k, v = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]
        if self.q_stride:
            q = max_pool(q.reshape(n, h, w, -1), self.q_stride)
            q = q.reshape(*q.shape[:3], self.num_heads, -1)
        hq, wq = q.shape[1:3]
        out = dot_product_attention(  # tiled when global (a whole map of tokens), plain in windows
            q.reshape(n, hq * wq, self.num_heads, -1),
            k.reshape(n, h * w, self.num_heads, -1),
            v.reshape(n, h * w, self.num_heads, -1),
            block=tile_for(n, self.num_heads),
        )
        return self.proj(out.reshape(n, hq, wq, -1))


class MultiScaleBlock(nnx.Module):
    """Pre-norm (window) attention block with optional q-pooling + GELU MLP (ratio 4)."""

    def __init__(self, spec: BlockSpec, *, dtype, rngs: nnx.Rngs):
        self.spec = spec
        self.norm1 = LayerNorm(spec.dim, eps=1e-6, axis_name="sam_embed")
        self.attn = MultiScaleAttention(
            spec.dim, spec.dim_out, spec.num_heads, spec.q_stride, dtype=dtype, rngs=rngs
        )
        self.norm2 = LayerNorm(spec.dim_out, eps=1e-6, axis_name="sam_embed")
        self.mlp = MLP(
            spec.dim_out, 4 * spec.dim_out, spec.dim_out, 2, activation=gelu, dtype=dtype, rngs=rngs
        )
        self.proj = (
            Linear(spec.dim, spec.dim_out, axes=("sam_embed", "sam_mlp"), dtype=dtype, rngs=rngs)
            if spec.dim != spec.dim_out
            else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """x [B, H, W, dim] -> [B, H', W', dim_out]."""
        spec = self.spec
        shortcut = x
        x = self.norm1(x)
        if self.proj is not None:
            # The shortcut is projected from the *normalised* input, then pooled like the queries.
            shortcut = self.proj(x)
            if spec.q_stride:
                shortcut = max_pool(shortcut, spec.q_stride)
        ws = spec.window_size
        if ws > 0:
            h, w = x.shape[1:3]
            x, pad_hw = window_partition(x, ws)
        x = self.attn(x)
        if ws > 0:
            if spec.q_stride:
                # Windows shrank with the pooled queries; unpartition on the pooled grid.
                pooled_hw = (pad_hw[0] // ws * (ws // spec.q_stride), pad_hw[1] // ws * (ws // spec.q_stride))
                ws = ws // spec.q_stride
                h, w = shortcut.shape[1:3]
                pad_hw = (h + (-h % ws), w + (-w % ws))
                if pooled_hw != pad_hw:  # PyTorch fails here too (a view of the wrong size)
                    raise ValueError(
                        f"Hiera block {spec}: pooled windows tile {pooled_hw}, but the pooled map "
                        f"{(h, w)} needs {pad_hw}; choose window sizes divisible by q_stride"
                    )
            x = window_unpartition(x, ws, pad_hw, (h, w))
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class HieraSegment(nnx.Module):
    """`n` structurally identical consecutive blocks; params stacked on a leading axis, scanned."""

    def __init__(self, spec: BlockSpec, n: int, *, unroll: bool = False, dtype, rngs: nnx.Rngs):
        # A block that changes the shape (stage transition) cannot be a scan carry; such blocks
        # are always alone in their segment and are mapped over their length-1 stack instead.
        self.shape_preserving = spec.dim == spec.dim_out and not spec.q_stride
        if n > 1 and not self.shape_preserving:
            raise ValueError(f"HieraSegment: {n} shape-changing blocks cannot be scanned")

        @nnx.split_rngs(splits=n)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: None})
        def make(r):
            return MultiScaleBlock(spec, dtype=dtype, rngs=r)

        self.blocks = make(rngs)
        self.unroll = unroll

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.shape_preserving:

            @nnx.scan(
                in_axes=(nnx.Carry, 0), out_axes=nnx.Carry, transform_metadata={nnx.PARTITION_NAME: None},
                unroll=self.unroll,
            )
            def run(h, block):
                return block(h)

            return run(x, self.blocks)

        @nnx.scan(
            in_axes=(0, None), out_axes=0, transform_metadata={nnx.PARTITION_NAME: None}, unroll=self.unroll
        )
        def apply(block, h):
            return block(h)

        return apply(self.blocks, x)[0]


# --------------------------------------------------------------------------------- trunk


class PatchEmbed(nnx.Module):
    """7x7 conv, stride 4, padding 3: [B, H, W, 3] -> [B, H/4, W/4, embed_dim]."""

    def __init__(self, embed_dim: int, *, dtype, rngs: nnx.Rngs):
        self.proj = conv2d(3, embed_dim, 7, stride=4, padding=3, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.proj(x)


class Hiera(nnx.Module):
    """SAM2's Hiera image trunk.

    __call__(pixels [B, H, W, 3]) -> per-stage features [B, H/4/2^i, W/4/2^i, C_i], highest
    resolution first (the order of PyTorch's outputs, which are NCHW).
    The feature size H/4 must be a multiple of window_spec[0] (the per-window embedding is tiled).
    """

    def __init__(self, cfg: HieraConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        dtype = compute_dtype(cfg.dtype)
        self.dtype = dtype
        self.patch_embed = PatchEmbed(cfg.embed_dim, dtype=dtype, rngs=rngs)
        bh, bw = cfg.window_pos_embed_bkg_spatial_size
        w0 = cfg.window_spec[0]
        # Stored NHWC ([1, h, w, C]); PyTorch stores [1, C, h, w]. Zero init as in PyTorch.
        zeros = with_axes(nnx.initializers.zeros, (None, None, None, "sam_embed"))
        self.pos_embed = nnx.Param(zeros(None, (1, bh, bw, cfg.embed_dim), jnp.float32))
        self.pos_embed_window = nnx.Param(zeros(None, (1, w0, w0, cfg.embed_dim), jnp.float32))
        specs = block_specs(cfg)
        self.segment_blocks = tuple(tuple(s) for s in block_segments(cfg))
        self.segments = nnx.List(
            [
                HieraSegment(specs[idx[0]], len(idx), unroll=cfg.unroll_layers, dtype=dtype, rngs=rngs)
                for idx in self.segment_blocks
            ]
        )
        ends = set(stage_end_blocks(cfg))
        self._stage_output = tuple(idx[-1] in ends for idx in self.segment_blocks)

    def _get_pos_embed(self, h: int, w: int) -> jax.Array:
        """Background embedding bicubically resized to (h, w) (exactly F.interpolate(mode="bicubic",
        align_corners=False)) + the window embedding tiled over the map: [1, h, w, C]."""
        w0 = self.cfg.window_spec[0]
        if h % w0 or w % w0:
            raise ValueError(
                f"Hiera: feature map {h}x{w} (input / 4) must be a multiple of window_spec[0]={w0} "
                "(the window position embedding is tiled over it)"
            )
        bh, bw = self.pos_embed.shape[1:3]
        wy = jnp.asarray(resize_weights(bh, h, "bicubic"))
        wx = jnp.asarray(resize_weights(bw, w, "bicubic"))
        pos = jnp.einsum("yi,xj,bijc->byxc", wy, wx, self.pos_embed[...], precision=jax.lax.Precision.HIGHEST)
        return pos + jnp.tile(self.pos_embed_window[...], (1, h // w0, w // w0, 1))

    def __call__(self, x: jax.Array) -> list[jax.Array]:
        x = self.patch_embed(x.astype(self.dtype))
        x = x + self._get_pos_embed(*x.shape[1:3]).astype(x.dtype)
        outputs = []
        for segment, is_stage_end in zip(self.segments, self._stage_output):  # few segments, distinct shapes
            x = constrain(segment(x), ("batch", None, None, "sam_embed"))
            if is_stage_end:
                outputs.append(x)
        return outputs
