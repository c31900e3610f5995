"""glus_jax.layers.dot_product_attention, plain and tiled (flash-style online softmax), against NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glus_jax.layers import dot_product_attention


def numpy_attention(q, k, v, mask=None):
    """float64 softmax(q k^T / sqrt(d)) v with masked scores at float32's min (the module's convention)."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    if k.shape[2] != q.shape[2]:
        rep = q.shape[2] // k.shape[2]
        k, v = np.repeat(k, rep, axis=2), np.repeat(v, rep, axis=2)
    s = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    if mask is not None:
        s = np.where(np.asarray(mask), s, np.finfo(np.float32).min)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", p, v)


def _qkv(rng, b, tq, tk, h, hk, d):
    return (
        rng.standard_normal((b, tq, h, d)).astype(np.float32),
        rng.standard_normal((b, tk, hk, d)).astype(np.float32),
        rng.standard_normal((b, tk, hk, d)).astype(np.float32),
    )


@pytest.mark.parametrize(
    "tk,block,heads",
    [(48, 16, (2, 2)), (50, 16, (2, 2)), (50, 7, (4, 2)), (16, 16, (1, 1)), (5, 2, (1, 1))],
)
def test_tiled_matches_numpy(tk, block, heads):
    rng = np.random.default_rng(tk * 31 + block)
    h, hk = heads
    q, k, v = _qkv(rng, 2, 12, tk, h, hk, 8)
    want = numpy_attention(q, k, v)
    plain = dot_product_attention(q, k, v)
    blocked = jax.jit(lambda q, k, v: dot_product_attention(q, k, v, block=block))(q, k, v)
    np.testing.assert_allclose(np.asarray(plain), want, atol=2e-6, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(blocked), want, atol=2e-6, rtol=1e-5)


def test_tiled_masks_whole_blocks_and_rows():
    """Per-batch key masks that empty whole key blocks (first, middle) and one entirely masked batch
    row: the tiled path gives the unfused answer, including the uniform average of a row with
    no valid key, and the keys padded to a whole block count for nothing."""
    rng = np.random.default_rng(0)
    q, k, v = _qkv(rng, 3, 6, 40, 2, 2, 8)
    mask = np.ones((3, 1, 1, 40), bool)
    mask[0, ..., :16] = False  # the first two blocks of 8 of sample 0
    mask[1, ..., 8:33] = False  # the middle of sample 1, leaving 8 + 7 keys
    mask[2] = False  # no valid key at all: uniform over the 40 real keys
    want = numpy_attention(q, k, v, mask)
    for block in (8, 12):  # 12: 40 keys padded to 48
        got = dot_product_attention(q, k, v, mask=jnp.asarray(mask), block=block)
        np.testing.assert_allclose(np.asarray(got), want, atol=2e-6, rtol=1e-5)
    np.testing.assert_allclose(want[2], np.broadcast_to(v[2].mean(0), want[2].shape), atol=1e-6)


def test_tiled_gradients_and_bfloat16():
    rng = np.random.default_rng(1)
    q, k, v = _qkv(rng, 1, 10, 30, 2, 2, 8)

    def loss(q, k, v, block):
        return jnp.sum(jnp.sin(dot_product_attention(q, k, v, block=block)))

    g_plain = jax.grad(loss, argnums=(0, 1, 2))(q, k, v, None)
    g_blocked = jax.grad(loss, argnums=(0, 1, 2))(q, k, v, 8)
    for a, b in zip(g_plain, g_blocked):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=2e-6, rtol=1e-5)

    bf = [jnp.asarray(a, jnp.bfloat16) for a in (q, k, v)]
    got = dot_product_attention(*bf, block=8)
    assert got.dtype == jnp.bfloat16
    want = numpy_attention(*(np.asarray(a, np.float32) for a in bf))
    np.testing.assert_allclose(np.asarray(got, np.float32), want, atol=3e-2)


def test_tiled_per_query_mask():
    """A causal-with-prefix mask [B, 1, Tq, Tk] (the LLM's shape): query tiles carry their mask rows;
    Tq and Tk are not whole numbers of tiles, so both are padded."""
    rng = np.random.default_rng(2)
    tq, tk = 13, 29
    q, k, v = _qkv(rng, 2, tq, tk, 4, 2, 8)
    prefix = np.array([16, 10])  # per-row cached prefix length, then causal over the new tokens
    rows = np.arange(tq)[:, None]
    cols = np.arange(tk)[None, :]
    mask = np.stack([(cols < p) | ((cols >= p) & (cols - p <= rows)) for p in prefix])[:, None]
    want = numpy_attention(q, k, v, mask)
    for block in (4, 5, 13):
        got = jax.jit(lambda q, k, v, m: dot_product_attention(q, k, v, mask=m, block=block))(q, k, v, mask)
        np.testing.assert_allclose(np.asarray(got), want, atol=2e-6, rtol=1e-5)
