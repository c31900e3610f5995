"""SAM's two-way transformer (port of `sam2/modeling/sam/transformer.py`: TwoWayTransformer,
TwoWayAttentionBlock, Attention). RoPEAttention of the same file lives in memory_attention.py.

Prompt tokens (queries [B, N, C]) and image tokens (keys [B, h*w, C]) update each other: token
self-attention, token-to-image cross-attention, an MLP on the tokens, image-to-token
cross-attention; then a final token-to-image attention. Cross-attentions project to C / 2
(`attention_downsample_rate`). The first block skips the positional encoding in its self-attention
(and its residual), exactly as the reference.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from glus_jax.layers import LayerNorm, Linear, dot_product_attention
from glus_jax.models.sam2.sam2_utils import MLP, relu


class Attention(nnx.Module):
    """Multi-head attention with q/k/v projected to embedding_dim / downsample_rate channels."""

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        *,
        downsample_rate: int = 1,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        internal = embedding_dim // downsample_rate
        if internal % num_heads:
            raise ValueError(f"Attention: num_heads {num_heads} must divide {internal}")
        self.num_heads = num_heads
        self.q_proj = Linear(embedding_dim, internal, axes=("sam_embed", None), dtype=dtype, rngs=rngs)
        self.k_proj = Linear(embedding_dim, internal, axes=("sam_embed", None), dtype=dtype, rngs=rngs)
        self.v_proj = Linear(embedding_dim, internal, axes=("sam_embed", None), dtype=dtype, rngs=rngs)
        self.out_proj = Linear(internal, embedding_dim, axes=(None, "sam_embed"), dtype=dtype, rngs=rngs)

    def __call__(self, q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
        """q [B, Tq, C], k/v [B, Tk, C] -> [B, Tq, C]."""
        b, tq, _ = q.shape
        tk = k.shape[1]
        q = self.q_proj(q).reshape(b, tq, self.num_heads, -1)
        k = self.k_proj(k).reshape(b, tk, self.num_heads, -1)
        v = self.v_proj(v).reshape(b, tk, self.num_heads, -1)
        return self.out_proj(dot_product_attention(q, k, v).reshape(b, tq, -1))


class TwoWayAttentionBlock(nnx.Module):
    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        *,
        attention_downsample_rate: int = 2,
        skip_first_layer_pe: bool = False,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        kw = {"dtype": dtype, "rngs": rngs}
        self.self_attn = Attention(embedding_dim, num_heads, **kw)
        self.norm1 = LayerNorm(embedding_dim, eps=1e-5, axis_name="sam_embed")
        self.cross_attn_token_to_image = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate, **kw
        )
        self.norm2 = LayerNorm(embedding_dim, eps=1e-5, axis_name="sam_embed")
        self.mlp = MLP(embedding_dim, mlp_dim, embedding_dim, 2, activation=relu, **kw)
        self.norm3 = LayerNorm(embedding_dim, eps=1e-5, axis_name="sam_embed")
        self.norm4 = LayerNorm(embedding_dim, eps=1e-5, axis_name="sam_embed")
        self.cross_attn_image_to_token = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate, **kw
        )
        self.skip_first_layer_pe = skip_first_layer_pe

    def __call__(self, queries, keys, query_pe, key_pe):
        """queries/query_pe [B, N, C], keys/key_pe [B, hw, C] -> (queries, keys)."""
        if self.skip_first_layer_pe:
            # The reference *replaces* the queries here (no residual) in the first block.
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)

        q, k = queries + query_pe, keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, k, keys))

        queries = self.norm3(queries + self.mlp(queries))

        q, k = queries + query_pe, keys + key_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries))
        return queries, keys


class TwoWayTransformer(nnx.Module):
    def __init__(
        self,
        depth: int,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        *,
        attention_downsample_rate: int = 2,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        # depth is 2 in SAM2; layer 0 differs (skip_first_layer_pe), so a Python loop over the
        # (few, not identical) layers is kept rather than a scan.
        self.layers = nnx.List(
            [
                TwoWayAttentionBlock(
                    embedding_dim,
                    num_heads,
                    mlp_dim,
                    attention_downsample_rate=attention_downsample_rate,
                    skip_first_layer_pe=(i == 0),
                    dtype=dtype,
                    rngs=rngs,
                )
                for i in range(depth)
            ]
        )
        self.final_attn_token_to_image = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate, dtype=dtype, rngs=rngs
        )
        self.norm_final_attn = LayerNorm(embedding_dim, eps=1e-5, axis_name="sam_embed")

    def __call__(self, image_embedding: jax.Array, image_pe: jax.Array, point_embedding: jax.Array):
        """image_embedding/image_pe [B, h, w, C], point_embedding [B, N, C] -> (queries [B, N, C], keys [B, hw, C])."""
        b, h, w, c = image_embedding.shape
        keys = image_embedding.reshape(b, h * w, c)
        key_pe = jnp.broadcast_to(image_pe, (b, h, w, c)).reshape(b, h * w, c)
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, key_pe)
        q, k = queries + point_embedding, keys + key_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q, k, keys))
        return queries, keys
