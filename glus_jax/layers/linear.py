"""Dense layers with logical axis names. Kernels are stored [in, out] (PyTorch Linear.weight.T)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from glus_jax.sharding import LogicalAxes, with_axes


def torch_linear_init(fan_in: int):
    """PyTorch nn.Linear's default init, uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kernel and bias)."""
    bound = 1.0 / max(fan_in, 1) ** 0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class Linear(nnx.Module):
    """y = x @ kernel + bias, computed in `dtype`, params in `param_dtype`.

    `axes` names the (in, out) kernel axes for sharding; the bias takes the out axis.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        axes: LogicalAxes = (None, None),
        use_bias: bool = True,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        init = torch_linear_init(in_features)
        self.in_features, self.out_features = in_features, out_features
        self.kernel = nnx.Param(with_axes(init, axes)(rngs.params(), (in_features, out_features), param_dtype))
        self.bias = (
            nnx.Param(with_axes(init, (axes[1],))(rngs.params(), (out_features,), param_dtype)) if use_bias else None
        )
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jnp.dot(x.astype(self.dtype), self.kernel[...].astype(self.dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y
