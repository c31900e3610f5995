"""glus-jax: GLUS referring video object segmentation in JAX/Flax."""

from flax import nnx as _nnx

# Parameters carry *logical* axis names (see glus_jax.sharding); they are placed on a mesh
# explicitly by `sharding.shard_model`, never eagerly at construction time.
_nnx.use_eager_sharding(False)

__version__ = "0.1.0"
