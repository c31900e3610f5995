"""Attention core and activations shared by every tower. Layout [B, T, H, D]."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

# Score elements per tile of the flash-style path (4 MB of float32 across batch and heads): small
# enough to stay in a CPU core's cache, large enough for efficient matmuls (benchmarks/kernels.py).
TILE_SCORES = 1 << 20


def tile_for(batch: int, heads: int) -> int:
    """Tile side for `dot_product_attention(block=...)` at this batch x heads: 1024 for one head,
    512 for four."""
    return max(128, math.isqrt(TILE_SCORES // max(1, batch * heads)))


def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    mask: jax.Array | None = None,
    scale: float | None = None,
    block: int | None = None,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
) -> jax.Array:
    """softmax(q k^T * scale + mask) v with the softmax in float32.

    q: [B, Tq, H, D], k/v: [B, Tk, H, D] (H of k/v may divide H of q: grouped-query attention).
    mask: boolean, broadcastable to [B, H, Tq, Tk]; True = attend.
    block: when set and Tq or Tk is longer, attention runs in [block x block] tiles with an online
    softmax (flash-attention style), so the [Tq, Tk] score matrix is never materialised: the same
    result up to float rounding, at a fraction of the memory traffic (:func:`tile_for`: SAM2's memory
    and global attention, which XLA:CPU runs 3-8x slower than PyTorch's fused kernel when unfused).
    dropout_rate / dropout_rng: dropout on the probabilities, as F.scaled_dot_product_attention does
    in training (SAM2's memory attention); only on the unfused path, which dropout then selects.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if k.shape[2] != q.shape[2]:
        rep = q.shape[2] // k.shape[2]
        k, v = jnp.repeat(k, rep, axis=2), jnp.repeat(v, rep, axis=2)
    dropout = dropout_rng is not None and dropout_rate > 0.0
    if block is not None and max(q.shape[1], k.shape[1]) > block and not dropout:
        return _tiled_attention(q, k, v, mask=mask, scale=scale, block=block)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) * scale
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1)
    if dropout:
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs.shape)
        probs = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0)
    return jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v)


def gelu_exact(x: jax.Array) -> jax.Array:
    """PyTorch nn.GELU() (erf form); SAM2 uses it."""
    return jax.nn.gelu(x, approximate=False)


def quick_gelu(x: jax.Array) -> jax.Array:
    """CLIP's quick-GELU: x * sigmoid(1.702 x)."""
    return x * jax.nn.sigmoid(1.702 * x)


def _tiled_attention(q, k, v, *, mask, scale, block):
    """dot_product_attention in [block x block] tiles: queries in blocks, keys in blocks with
    a running max and normaliser (lax.scan), as flash attention does. No score matrix larger than a
    tile is ever written, which is what makes the unfused version memory-bound on CPU.

    Masked scores take float32's min, as the unfused path, so a row whose keys are all masked gets the
    same uniform average; a key block entirely masked for a row adds exp(min - m) = 0 once a valid key
    has been seen, and is wiped by the rescale exp(min - m_new) = 0 when it came first. Padding keys
    (to a whole number of blocks) score -inf, so they count for nothing even in a fully masked row.
    """
    b, tq, h, d = q.shape
    tk = k.shape[1]
    # Equal query blocks of at most `block` (784 queries: 2 x 392, not 512 + 272 padded); SAM2's
    # memory keys are whole frames of the query map, so the same size splits them without padding.
    block = -(-tq // -(-tq // block))
    nq, nk = -(-tq // block), -(-tk // block)
    if mask is None:
        mask = jnp.ones((1, 1, 1, tk), bool)
    mask = jnp.broadcast_to(mask, (*mask.shape[:-1], tk))
    per_query = mask.shape[-2] != 1
    pad_k = [(0, 0)] * (mask.ndim - 1) + [(0, nk * block - tk)]
    mask = jnp.pad(mask, pad_k)
    if per_query:
        mask = jnp.pad(mask, [(0, 0)] * (mask.ndim - 2) + [(0, nq * block - tq), (0, 0)])
    k = jnp.pad(k, ((0, 0), (0, nk * block - tk), (0, 0), (0, 0)))
    v = jnp.pad(v, ((0, 0), (0, nk * block - tk), (0, 0), (0, 0)))
    q = jnp.pad(q, ((0, 0), (0, nq * block - tq), (0, 0), (0, 0)))
    k_blocks = jnp.moveaxis(k.reshape(b, nk, block, h, d), 1, 0)
    v_blocks = jnp.moveaxis(v.reshape(b, nk, block, h, d), 1, 0)
    real = (jnp.arange(nk * block) < tk).reshape(nk, block)
    neg = jnp.finfo(jnp.float32).min

    def one_query_block(args):
        qb, mq = args  # [b, block, h, d], mask [..., block | 1, nk * block]
        m_blocks = jnp.moveaxis(mq.reshape(*mq.shape[:-1], nk, block), -2, 0)

        def step(carry, blk):
            m, l, acc = carry
            kb, vb, mb, rb = blk
            s = jnp.einsum("bqhd,bkhd->bhqk", qb, kb).astype(jnp.float32) * scale
            s = jnp.where(rb, jnp.where(mb, s, neg), -jnp.inf)
            m_new = jnp.maximum(m, jnp.max(s, axis=-1))
            p = jnp.exp(s - m_new[..., None])
            corr = jnp.exp(m - m_new)
            l = l * corr + jnp.sum(p, axis=-1)
            pv = jnp.einsum("bhqk,bkhd->bhqd", p.astype(v.dtype), vb).astype(jnp.float32)
            return (m_new, l, acc * corr[..., None] + pv), None

        init = (
            jnp.full((b, h, block), neg, jnp.float32),
            jnp.zeros((b, h, block), jnp.float32),
            jnp.zeros((b, h, block, d), jnp.float32),
        )
        (_, l, acc), _ = jax.lax.scan(step, init, (k_blocks, v_blocks, m_blocks, real))
        return jnp.swapaxes(acc / l[..., None], 1, 2).astype(v.dtype)  # [b, block, h, d]

    q_blocks = jnp.moveaxis(q.reshape(b, nq, block, h, d), 1, 0)
    # lax.scan rather than lax.map: benchmarks count FLOPs by unrolling every jax.lax.scan.
    if per_query:
        m_q = jnp.moveaxis(mask.reshape(*mask.shape[:-2], nq, block, mask.shape[-1]), -3, 0)
        _, out = jax.lax.scan(lambda c, x: (c, one_query_block(x)), None, (q_blocks, m_q))
    else:
        _, out = jax.lax.scan(lambda c, qb: (c, one_query_block((qb, mask))), None, q_blocks)
    return jnp.moveaxis(out, 0, 1).reshape(b, nq * block, h, d)[:, :tq]
