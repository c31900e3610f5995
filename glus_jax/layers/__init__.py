"""Building blocks written once and used by every tower (CLIP, LLaMA, SAM2)."""

from glus_jax.layers.attention import dot_product_attention, gelu_exact, quick_gelu
from glus_jax.layers.linear import Linear, torch_linear_init
from glus_jax.layers.norm import LayerNorm, LayerNorm2d, RMSNorm

__all__ = [
    "Linear",
    "LayerNorm",
    "LayerNorm2d",
    "RMSNorm",
    "dot_product_attention",
    "gelu_exact",
    "quick_gelu",
    "torch_linear_init",
]
