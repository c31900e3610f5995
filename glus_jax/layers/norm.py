"""Normalisations. Statistics are always computed in float32 and cast back."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from glus_jax.sharding import with_axes


class LayerNorm(nnx.Module):
    """LayerNorm over the last axis (PyTorch nn.LayerNorm semantics: biased variance)."""

    def __init__(self, dim: int, *, eps: float = 1e-5, axis_name: str | None = None, param_dtype=jnp.float32, rngs=None):
        self.eps = eps
        self.scale = nnx.Param(with_axes(nnx.initializers.ones, (axis_name,))(None, (dim,), param_dtype))
        self.bias = nnx.Param(with_axes(nnx.initializers.zeros, (axis_name,))(None, (dim,), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        mean = xf.mean(-1, keepdims=True)
        var = jnp.square(xf - mean).mean(-1, keepdims=True)
        y = (xf - mean) * jax.lax.rsqrt(var + self.eps)
        return (y * self.scale[...] + self.bias[...]).astype(x.dtype)


class LayerNorm2d(LayerNorm):
    """SAM's LayerNorm2d: normalises over channels. Inputs are NHWC here, so it is LayerNorm."""


class RMSNorm(nnx.Module):
    """LLaMA RMSNorm: x * rsqrt(mean(x^2) + eps) in float32, cast back, times the weight."""

    def __init__(self, dim: int, *, eps: float = 1e-6, axis_name: str | None = None, param_dtype=jnp.float32, rngs=None):
        self.eps = eps
        self.scale = nnx.Param(with_axes(nnx.initializers.ones, (axis_name,))(None, (dim,), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        y = xf * jax.lax.rsqrt(jnp.square(xf).mean(-1, keepdims=True) + self.eps)
        # HF LLaMA casts back to the input dtype before multiplying by the weight.
        return self.scale[...].astype(x.dtype) * y.astype(x.dtype)
