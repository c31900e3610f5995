"""Attention core and activations shared by every tower. Layout [B, T, H, D]."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    mask: jax.Array | None = None,
    scale: float | None = None,
) -> jax.Array:
    """softmax(q k^T * scale + mask) v with the softmax in float32.

    q: [B, Tq, H, D], k/v: [B, Tk, H, D] (H of k/v may divide H of q: grouped-query attention).
    mask: boolean, broadcastable to [B, H, Tq, Tk]; True = attend.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if k.shape[2] != q.shape[2]:
        rep = q.shape[2] // k.shape[2]
        k, v = jnp.repeat(k, rep, axis=2), jnp.repeat(v, rep, axis=2)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) * scale
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v)


def gelu_exact(x: jax.Array) -> jax.Array:
    """PyTorch nn.GELU() (erf form); SAM2 uses it."""
    return jax.nn.gelu(x, approximate=False)


def quick_gelu(x: jax.Array) -> jax.Array:
    """CLIP's quick-GELU: x * sigmoid(1.702 x)."""
    return x * jax.nn.sigmoid(1.702 * x)
