"""Small SAM2 building blocks shared by the SAM2 modules (ports of `sam2/modeling/sam2_utils.py`).

- `MLP`: SAM2's MLP (Linear layers with an activation between them, optional sigmoid output).
- `conv2d` / `conv_transpose2d`: NHWC `nnx.Conv` / `nnx.ConvTranspose` with PyTorch's default init
  and logical axis names. Kernels are HWIO; PyTorch weights convert with `conv_oihw_to_hwio` and
  (transposed convs) `conv_transpose_flip`.
- `LayerNorm2d`: SAM's channel LayerNorm; on NHWC activations it is the shared LayerNorm (eps 1e-6).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from glus_jax.layers import Linear, torch_linear_init
from glus_jax.layers.norm import LayerNorm
from glus_jax.sharding import LogicalAxes, with_axes

Activation = Callable[[jax.Array], jax.Array]


def relu(x: jax.Array) -> jax.Array:
    return jax.nn.relu(x)


def gelu(x: jax.Array) -> jax.Array:
    """nn.GELU(): the exact erf form."""
    return jax.nn.gelu(x, approximate=False)


def LayerNorm2d(dim: int, *, eps: float = 1e-6, axis_name: str | None = "sam_embed") -> LayerNorm:
    """sam2_utils.LayerNorm2d normalises over channels; activations are NHWC, so it is a LayerNorm."""
    return LayerNorm(dim, eps=eps, axis_name=axis_name)


class MLP(nnx.Module):
    """sam2_utils.MLP: `num_layers` Linear layers, `activation` between them, optional sigmoid.

    x: [..., input_dim] -> [..., output_dim]. Params `layers/{i}/{kernel,bias}`.
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        output_dim: int,
        num_layers: int,
        *,
        activation: Activation = relu,
        sigmoid_output: bool = False,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nnx.List(
            [
                Linear(
                    dims[i],
                    dims[i + 1],
                    axes=(
                        "sam_embed" if i == 0 else "sam_mlp",
                        "sam_mlp" if i < num_layers - 1 else "sam_embed",
                    ),
                    dtype=dtype,
                    rngs=rngs,
                )
                for i in range(num_layers)
            ]
        )
        self.activation = activation
        self.sigmoid_output = sigmoid_output

    def __call__(self, x: jax.Array) -> jax.Array:
        n = len(self.layers)
        for i, layer in enumerate(self.layers):  # 2-3 layers of different shapes
            x = layer(x)
            if i < n - 1:
                x = self.activation(x)
        if self.sigmoid_output:
            x = jax.nn.sigmoid(x.astype(jnp.float32))
        return x


def _torch_conv_init(fan_in: int, axes: LogicalAxes):
    # nn.Conv2d's default (kaiming_uniform(a=sqrt(5))) is uniform(+-1/sqrt(fan_in)), bias too.
    return with_axes(torch_linear_init(fan_in), axes)


def conv2d(
    in_features: int,
    out_features: int,
    kernel_size: int,
    *,
    stride: int = 1,
    padding: int = 0,
    groups: int = 1,
    out_axis: str | None = "sam_embed",
    dtype=jnp.float32,
    rngs: nnx.Rngs,
) -> nnx.Conv:
    """nn.Conv2d(in, out, k, stride, padding, groups) on NHWC inputs (kernel [k, k, in/groups, out])."""
    fan_in = in_features // groups * kernel_size * kernel_size
    return nnx.Conv(
        in_features,
        out_features,
        kernel_size=(kernel_size, kernel_size),
        strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        feature_group_count=groups,
        kernel_init=_torch_conv_init(fan_in, (None, None, None, out_axis)),
        bias_init=_torch_conv_init(fan_in, (out_axis,)),
        dtype=dtype,
        param_dtype=jnp.float32,
        rngs=rngs,
    )


def depthwise_conv2d(x: jax.Array, kernel: jax.Array, bias: jax.Array | None, padding: int) -> jax.Array:
    """Depthwise nn.Conv2d (groups = channels, stride 1) on NHWC `x` with kernel [k, k, 1, C] (the
    layout of :func:`conv2d`'s kernel), as a sum of k*k shifted, scaled copies: one fused elementwise
    loop. XLA:CPU's grouped convolution is 20-30x slower than this at the memory encoder's shapes
    (benchmarks/kernels.py); on accelerators both are memory-bound alike."""
    kernel = kernel.astype(x.dtype)
    k = kernel.shape[0]
    h_out = x.shape[1] + 2 * padding - k + 1
    w_out = x.shape[2] + 2 * padding - k + 1
    xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    out = sum(
        xp[:, dy : dy + h_out, dx : dx + w_out, :] * kernel[dy, dx, 0] for dy in range(k) for dx in range(k)
    )
    return out if bias is None else out + bias.astype(x.dtype)


def conv_transpose2d(
    in_features: int,
    out_features: int,
    kernel_size: int,
    *,
    stride: int,
    out_axis: str | None = "sam_embed",
    dtype=jnp.float32,
    rngs: nnx.Rngs,
) -> nnx.ConvTranspose:
    """nn.ConvTranspose2d(in, out, k, stride) with padding 0 on NHWC (output size (n-1)*s + k).

    The kernel is a plain (un-transposed) HWIO kernel: PyTorch weights need the spatial flip of
    `conv_transpose_flip` (a transposed conv is a dilated conv with the flipped kernel).
    """
    # PyTorch computes the ConvTranspose fan-in from weight.size(1) * k * k = out * k * k.
    fan_in = out_features * kernel_size * kernel_size
    return nnx.ConvTranspose(
        in_features,
        out_features,
        kernel_size=(kernel_size, kernel_size),
        strides=(stride, stride),
        padding="VALID",
        kernel_init=_torch_conv_init(fan_in, (None, None, None, out_axis)),
        bias_init=_torch_conv_init(fan_in, (out_axis,)),
        dtype=dtype,
        param_dtype=jnp.float32,
        rngs=rngs,
    )


def compute_dtype(name: str):
    """Config dtype string -> jnp dtype ("float32" | "bfloat16")."""
    table = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
    if name not in table:
        raise ValueError(f"dtype {name!r} not supported; expected one of {sorted(table)}")
    return table[name]
