"""Run in a subprocess with 8 fake CPU devices (XLA_FLAGS set by the caller): a small module with
logical axis annotations, sharded over a (data=2, fsdp=2, tensor=2) mesh, must give the same output
as unsharded, and its parameters must really be split across devices."""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import glus_jax  # noqa: F401  (disables eager sharding)
from glus_jax import sharding
from glus_jax.layers import Linear, RMSNorm

jax.config.update("jax_default_matmul_precision", "highest")


class Block(nnx.Module):
    def __init__(self, rngs):
        self.norm = RMSNorm(16, axis_name="llm_embed")
        self.up = Linear(16, 24, axes=("llm_embed", "llm_mlp"), rngs=rngs)
        self.down = Linear(24, 16, axes=("llm_mlp", "llm_embed"), rngs=rngs)

    def __call__(self, x):
        h = jax.nn.silu(self.up(self.norm(x)))
        h = sharding.constrain(h, ("batch", None, "llm_mlp"))
        return x + self.down(h)


def main():
    assert jax.device_count() == 8, jax.device_count()
    model = Block(nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (8, 5, 16))
    expected = np.asarray(nnx.jit(lambda m, x: m(x))(model, x))

    mesh = sharding.make_mesh((2, 2, 2))
    sharding.shard_model(model, mesh)
    kernel = model.up.kernel.get_value()
    spec = kernel.sharding.spec
    shard_shape = kernel.addressable_shards[0].data.shape
    with sharding.use_mesh(mesh):
        xs = jax.device_put(x, sharding.batch_sharding(mesh, x.ndim))
        got = nnx.jit(lambda m, x: m(x))(model, xs)
    out = {
        "max_abs_diff": float(np.max(np.abs(np.asarray(got) - expected))),
        "kernel_spec": [str(s) for s in spec],
        "kernel_shard_shape": list(shard_shape),
        "out_spec": [str(s) for s in got.sharding.spec],
    }
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
