"""PyTorch -> glus-jax weight conversion: engine + one table per tower."""

from tools.convert_weights.engine import (
    ConversionError,
    Rule,
    conv_oihw_to_hwio,
    conv_transpose_flip,
    convert,
    identity,
    linear_t,
    load_into,
    param_shapes,
    read_state_dict,
    reshape,
)

__all__ = [
    "ConversionError",
    "Rule",
    "conv_oihw_to_hwio",
    "conv_transpose_flip",
    "convert",
    "identity",
    "linear_t",
    "load_into",
    "param_shapes",
    "read_state_dict",
    "reshape",
]
