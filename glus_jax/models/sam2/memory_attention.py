"""SAM2 memory attention: the current frame's top-level feature attends to the memory bank.

Port of `sam2/modeling/memory_attention.py` (MemoryAttention, MemoryAttentionLayer) and of
`RoPEAttention` / `compute_axial_cis` / `apply_rotary_enc` (`sam2/modeling/sam/transformer.py`,
`sam2/modeling/position_encoding.py`), as vendored by GLUS (SAM2 2.0; the `sam2` 2.1 package has the
same memory attention, only RoPEAttention's unused `feat_sizes` default differs).

Layout is batch-first: tokens [B, T, C] (PyTorch's MemoryAttention takes and returns sequence-first
[T, B, C]). The memory is a *padded* set of key tokens [B, M, C_mem] with a validity mask [B|1, M]:
keys of empty bank slots get no weight in the softmax, so one compiled program serves every frame
(see `memory_bank.py`). Masked, the output equals the unpadded computation.

Axis letters in einsums: b batch, q query tokens, k key tokens, h heads, d head dim.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from glus_jax.layers import LayerNorm, Linear, dot_product_attention
from glus_jax.layers.attention import tile_for
from glus_jax.models.sam2.sam2_utils import compute_dtype

# ----------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True, kw_only=True)
class MemoryAttentionConfig:
    """`memory_attention` block of a SAM2 yaml (self- and cross-attention share head settings,
    as in every released SAM2 config)."""

    d_model: int = 256
    num_layers: int = 4
    num_heads: int = 1
    downsample_rate: int = 1
    dim_feedforward: int = 2048
    kv_in_dim: int = 64  # memory channels (memory_encoder.out_dim)
    activation: str = "relu"  # "relu" | "gelu" (exact)
    dropout: float = 0.1  # active only when a dropout key is passed (GLUS trains with model.train())
    pos_enc_at_input: bool = True  # curr + 0.1 * curr_pos before the first layer
    pos_enc_at_attn: bool = False  # add query_pos to self-attention q/k
    pos_enc_at_cross_attn_keys: bool = True  # add memory_pos to cross-attention keys
    pos_enc_at_cross_attn_queries: bool = False  # add query_pos to cross-attention queries
    rope_theta: float = 10000.0
    rope_k_repeat: bool = True  # cross-attention: repeat the query RoPE over each memory frame
    unroll_layers: bool = False  # layers as straight-line code, not a scan: faster when few and small
    dtype: str = "float32"

    def __post_init__(self):
        internal = self.d_model // self.downsample_rate
        if internal % self.num_heads:
            raise ValueError(f"MemoryAttentionConfig: num_heads {self.num_heads} must divide {internal}")
        if (internal // self.num_heads) % 4:
            # compute_axial_cis gives head_dim/4 frequencies per axis (x and y), each a complex pair.
            raise ValueError(
                f"MemoryAttentionConfig: head dim {internal // self.num_heads} must be a multiple of 4"
            )
        if self.activation not in ("relu", "gelu"):
            raise ValueError(
                f"MemoryAttentionConfig: activation {self.activation!r} not supported (relu, gelu)"
            )
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"MemoryAttentionConfig: dtype {self.dtype!r} must be float32 or bfloat16")


def hiera_l() -> MemoryAttentionConfig:
    """sam2_hiera_l.yaml (identical in the t/s/b+ configs and in GLUS)."""
    return MemoryAttentionConfig()


def tiny() -> MemoryAttentionConfig:
    """The oracle's sam2_hiera_tiny_oracle.yaml."""
    return MemoryAttentionConfig(d_model=64, num_layers=2, dim_feedforward=256, kv_in_dim=32)


# ------------------------------------------------------------------------------- RoPE


def axial_rope_angles(head_dim: int, h: int, w: int, theta: float = 10000.0) -> np.ndarray:
    """Angles of SAM2's 2-D axial RoPE, [h*w, head_dim // 2] float32 (a static constant).

    `compute_axial_cis` as real numbers: token t = y * w + x (raster order); complex pair j < head_dim/4
    rotates by x * f_j, pair head_dim/4 + j by y * f_j, with f_j = theta^(-4j / head_dim). Computed in
    float32 with the reference's operation order, so cos/sin match torch.polar's to an ulp.
    """
    n = head_dim // 4
    exps = np.arange(0, head_dim, 4, dtype=np.float32)[:n] / np.float32(head_dim)
    freqs = np.float32(1.0) / np.power(np.float32(theta), exps, dtype=np.float32)
    t = np.arange(h * w)
    t_x, t_y = (t % w).astype(np.float32), (t // w).astype(np.float32)  # exact integer grid
    return np.concatenate([np.outer(t_x, freqs), np.outer(t_y, freqs)], axis=-1).astype(np.float32)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate consecutive channel pairs (x[2j], x[2j+1]) of x [B, T, H, D] by angles given as
    cos/sin [T, D/2] (= `apply_rotary_enc`'s complex product, in float32, cast back)."""
    xf = x.astype(jnp.float32).reshape(*x.shape[:-1], -1, 2)
    re, im = xf[..., 0], xf[..., 1]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    out = jnp.stack([re * c - im * s, re * s + im * c], axis=-1)
    return out.reshape(x.shape).astype(x.dtype)


def _dropout(x, rate, rng):
    if rng is None or rate <= 0.0:
        return x
    keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


class RoPEAttention(nnx.Module):
    """Multi-head attention with 2-D axial RoPE on queries and keys (sam2 `RoPEAttention`).

    Queries are the tokens of an h x w map. With `rope_k_repeat`, keys are any number of such maps
    concatenated (memory frames): key token i gets the rotation of query token i mod (h*w).
    The last `num_k_exclude_rope` keys (object pointers in SAM2; none in GLUS) are not rotated.
    """

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        *,
        downsample_rate: int = 1,
        kv_in_dim: int | None = None,
        rope_theta: float = 10000.0,
        rope_k_repeat: bool = False,
        dropout: float = 0.0,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        kv_in_dim = embedding_dim if kv_in_dim is None else kv_in_dim
        internal = embedding_dim // downsample_rate
        self.num_heads = num_heads
        self.head_dim = internal // num_heads
        self.rope_theta = rope_theta
        self.rope_k_repeat = rope_k_repeat
        self.dropout = dropout
        self.q_proj = Linear(embedding_dim, internal, axes=("sam_embed", None), dtype=dtype, rngs=rngs)
        self.k_proj = Linear(kv_in_dim, internal, axes=(None, None), dtype=dtype, rngs=rngs)
        self.v_proj = Linear(kv_in_dim, internal, axes=(None, None), dtype=dtype, rngs=rngs)
        self.out_proj = Linear(internal, embedding_dim, axes=(None, "sam_embed"), dtype=dtype, rngs=rngs)

    def __call__(
        self,
        q: jax.Array,
        k: jax.Array,
        v: jax.Array,
        *,
        feat_size: tuple[int, int],
        key_mask: jax.Array | None = None,
        num_k_exclude_rope: int = 0,
        dropout_rng: jax.Array | None = None,
    ) -> jax.Array:
        """q [B, h*w, C], k/v [B, Tk, C_kv], key_mask bool [B|1, Tk] (True = attend) -> [B, h*w, C]."""
        b, tq, _ = q.shape
        tk = k.shape[1]
        h, w = feat_size
        if tq != h * w:
            raise ValueError(f"RoPEAttention: {tq} query tokens do not form the {h}x{w} map")
        q = self.q_proj(q).reshape(b, tq, self.num_heads, self.head_dim)
        k = self.k_proj(k).reshape(b, tk, self.num_heads, self.head_dim)
        v = self.v_proj(v).reshape(b, tk, self.num_heads, self.head_dim)

        angles = axial_rope_angles(self.head_dim, h, w, self.rope_theta)
        cos, sin = jnp.asarray(np.cos(angles)), jnp.asarray(np.sin(angles))
        q = apply_rope(q, cos, sin)
        n_rope = tk - num_k_exclude_rope
        if n_rope > 0:
            if n_rope != tq:
                if not self.rope_k_repeat or n_rope % tq:
                    raise ValueError(
                        f"RoPEAttention: {n_rope} rotated keys vs {tq} queries needs rope_k_repeat "
                        "and a whole number of maps"
                    )
                reps = n_rope // tq
                cos_k, sin_k = jnp.tile(cos, (reps, 1)), jnp.tile(sin, (reps, 1))
            else:
                cos_k, sin_k = cos, sin
            k = jnp.concatenate([apply_rope(k[:, :n_rope], cos_k, sin_k), k[:, n_rope:]], axis=1)

        mask = None if key_mask is None else key_mask[:, None, None, :]
        # Tiled (the memory keys are up to 7 frames of the query map) unless dropout is on (training).
        out = dot_product_attention(
            q, k, v, mask=mask, block=tile_for(b, self.num_heads),
            dropout_rate=self.dropout, dropout_rng=dropout_rng,
        )
        return self.out_proj(out.reshape(b, tq, self.num_heads * self.head_dim))


# ------------------------------------------------------------------------------ layers


class MemoryAttentionLayer(nnx.Module):
    """Pre-norm block: RoPE self-attention, RoPE cross-attention to memory, ReLU FFN."""

    def __init__(self, cfg: MemoryAttentionConfig, *, rngs: nnx.Rngs):
        dtype = compute_dtype(cfg.dtype)
        self.cfg = cfg
        common = {
            "downsample_rate": cfg.downsample_rate,
            "rope_theta": cfg.rope_theta,
            "dropout": cfg.dropout,
            "dtype": dtype,
            "rngs": rngs,
        }
        # RoPEAttention for self-attention is built with rope_k_repeat=False in every config.
        self.self_attn = RoPEAttention(cfg.d_model, cfg.num_heads, **common)
        self.cross_attn_image = RoPEAttention(
            cfg.d_model, cfg.num_heads, kv_in_dim=cfg.kv_in_dim, rope_k_repeat=cfg.rope_k_repeat, **common
        )
        self.linear1 = Linear(
            cfg.d_model, cfg.dim_feedforward, axes=("sam_embed", "sam_mlp"), dtype=dtype, rngs=rngs
        )
        self.linear2 = Linear(
            cfg.dim_feedforward, cfg.d_model, axes=("sam_mlp", "sam_embed"), dtype=dtype, rngs=rngs
        )
        self.norm1 = LayerNorm(cfg.d_model, eps=1e-5, axis_name="sam_embed")
        self.norm2 = LayerNorm(cfg.d_model, eps=1e-5, axis_name="sam_embed")
        self.norm3 = LayerNorm(cfg.d_model, eps=1e-5, axis_name="sam_embed")

    def __call__(
        self, tgt, memory, query_pos, memory_pos, *, feat_size, memory_mask, num_k_exclude_rope, rngs
    ):
        """tgt/query_pos [B, HW, C], memory/memory_pos [B, M, C_mem]; `rngs`: 6 dropout keys or None."""
        cfg = self.cfg
        r = (lambda i: None) if rngs is None else (lambda i: rngs[i])
        x = self.norm1(tgt)
        qk = x + query_pos if cfg.pos_enc_at_attn else x
        tgt = tgt + _dropout(
            self.self_attn(qk, qk, x, feat_size=feat_size, dropout_rng=r(0)), cfg.dropout, r(1)
        )

        x = self.norm2(tgt)
        x = self.cross_attn_image(
            x + query_pos if cfg.pos_enc_at_cross_attn_queries else x,
            memory + memory_pos if cfg.pos_enc_at_cross_attn_keys else memory,
            memory,
            feat_size=feat_size,
            key_mask=memory_mask,
            num_k_exclude_rope=num_k_exclude_rope,
            dropout_rng=r(2),
        )
        tgt = tgt + _dropout(x, cfg.dropout, r(3))

        act = jax.nn.relu if cfg.activation == "relu" else (lambda y: jax.nn.gelu(y, approximate=False))
        x = self.linear2(_dropout(act(self.linear1(self.norm3(tgt))), cfg.dropout, r(4)))
        return tgt + _dropout(x, cfg.dropout, r(5))


class MemoryAttention(nnx.Module):
    """Stack of `MemoryAttentionLayer`s (scanned; parameters carry a leading layer axis) + final norm."""

    def __init__(self, cfg: MemoryAttentionConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg

        @nnx.split_rngs(splits=cfg.num_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: None})
        def make(r):
            return MemoryAttentionLayer(cfg, rngs=r)

        self.layers = make(rngs)
        self.norm = LayerNorm(cfg.d_model, eps=1e-5, axis_name="sam_embed")

    def __call__(
        self,
        curr: jax.Array,
        memory: jax.Array,
        curr_pos: jax.Array,
        memory_pos: jax.Array,
        *,
        memory_mask: jax.Array | None = None,
        feat_size: tuple[int, int] | None = None,
        num_obj_ptr_tokens: int = 0,
        dropout_rng: jax.Array | None = None,
    ) -> jax.Array:
        """Condition the current frame on memory.

        curr, curr_pos: [B, HW, d_model] (top-level feature of an h x w map and its sine PE).
        memory, memory_pos: [B, M, kv_in_dim], M = frames * HW (+ object pointers, none in GLUS).
        memory_mask: bool [B, M] or [M] (True = valid key) or None (all valid). At least one key per
          row must be valid (with none the output is meaningless; GLUS then uses no_mem_embed).
        feat_size: (h, w); None = square map (the reference infers h = w = sqrt(HW)).
        dropout_rng: None = inference (no dropout); a key = training-mode dropout (rate cfg.dropout).
        Returns [B, HW, d_model] (the reference's output transposed to batch-first).
        """
        cfg = self.cfg
        hw = curr.shape[1]
        if feat_size is None:
            side = math.isqrt(hw)
            if side * side != hw:
                raise ValueError(f"MemoryAttention: {hw} tokens are not a square map; pass feat_size")
            feat_size = (side, side)
        if memory_mask is not None and memory_mask.ndim == 1:
            memory_mask = memory_mask[None]
        dtype = compute_dtype(cfg.dtype)
        x = curr.astype(dtype)
        if cfg.pos_enc_at_input:
            x = x + 0.1 * curr_pos.astype(dtype)
        curr_pos, memory, memory_pos = curr_pos.astype(dtype), memory.astype(dtype), memory_pos.astype(dtype)

        if dropout_rng is None:
            keys = jnp.zeros((cfg.num_layers,), jnp.uint32)  # placeholder, ignored
            deterministic = True
        else:
            keys = jax.random.split(dropout_rng, cfg.num_layers)
            deterministic = False

        @nnx.scan(in_axes=(nnx.Carry, 0, 0), out_axes=nnx.Carry, unroll=cfg.unroll_layers)
        def run(h, layer, key):
            rngs = None if deterministic else jax.random.split(key, 6)
            h = layer(
                h,
                memory,
                curr_pos,
                memory_pos,
                feat_size=feat_size,
                memory_mask=memory_mask,
                num_k_exclude_rope=num_obj_ptr_tokens,
                rngs=rngs,
            )
            return h

        x = run(x, self.layers, keys)
        return self.norm(x)
