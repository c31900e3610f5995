"""Conversion table for SAM2's memory side: `memory_attention.*` and `memory_encoder.*`.

Source keys are relative to the SAM2 model root (official SAM2 `.pt` keys as they are; strip
`model.visual_model.` from a GLUS checkpoint first). Flax paths are relative to the SAM2Model root:
`memory_attention/...` and `memory_encoder/...`. Scanned layers (memory-attention layers, fuser
CXBlocks) are stacked along a leading axis. 1x1 convs are Linears in the Flax model.

Quirk Q1 (oracle README): transformers 4.31 renames checkpoint keys containing "gamma" when loading a
GLUS checkpoint, so the fuser CXBlocks keep their constructor value `layer_scale_init_value` (1e-6)
and the stored gammas are never used. `load_fuser_gamma=False` (the default, for GLUS checkpoints)
reproduces that: the gamma keys are consumed but the target is filled with the constructor value.
`load_fuser_gamma=True` loads the stored values (official SAM2 checkpoints, which SAM2/GLUS training
load with `load_state_dict`, and the "fixed loader" variant `infer_gamma_loaded.npz`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from tools.convert_weights.engine import (
    Rule,
    conv_oihw_to_hwio,
    convert,
    identity,
    linear_t,
    load_into,
    param_shapes,
)


def conv1x1_to_linear(x: np.ndarray) -> np.ndarray:
    """1x1 nn.Conv2d weight [out, in, 1, 1] -> Linear kernel [in, out]."""
    if x.ndim != 4 or x.shape[2:] != (1, 1):
        raise ValueError(f"expected a 1x1 conv weight [out, in, 1, 1], got {x.shape}")
    return np.ascontiguousarray(x[:, :, 0, 0].T)


def _constant(value: float):
    def fn(x: np.ndarray) -> np.ndarray:
        return np.full(x.shape, value, np.float32)

    fn.__name__ = f"constant({value})"
    return fn


def _encoder_cfg(cfg):
    """Accept a MemoryEncoderConfig or any config with a `memory_encoder` field (SAM2 config)."""
    return getattr(cfg, "memory_encoder", cfg)


def memory_attention_rules(prefix: str = "memory_attention") -> list[Rule]:
    p = prefix.replace(".", r"\.")
    rules = []
    for attn in ("self_attn", "cross_attn_image"):
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            rules.append(
                Rule(
                    rf"{p}\.layers\.(\d+)\.{attn}\.{proj}\.weight",
                    f"{prefix}/layers/{attn}/{proj}/kernel",
                    linear_t,
                    stack=1,
                )
            )
            rules.append(
                Rule(
                    rf"{p}\.layers\.(\d+)\.{attn}\.{proj}\.bias",
                    f"{prefix}/layers/{attn}/{proj}/bias",
                    identity,
                    stack=1,
                )
            )
    for lin in ("linear1", "linear2"):
        rules.append(
            Rule(rf"{p}\.layers\.(\d+)\.{lin}\.weight", f"{prefix}/layers/{lin}/kernel", linear_t, stack=1)
        )
        rules.append(
            Rule(rf"{p}\.layers\.(\d+)\.{lin}\.bias", f"{prefix}/layers/{lin}/bias", identity, stack=1)
        )
    for norm in ("norm1", "norm2", "norm3"):
        rules.append(
            Rule(rf"{p}\.layers\.(\d+)\.{norm}\.weight", f"{prefix}/layers/{norm}/scale", identity, stack=1)
        )
        rules.append(
            Rule(rf"{p}\.layers\.(\d+)\.{norm}\.bias", f"{prefix}/layers/{norm}/bias", identity, stack=1)
        )
    rules.append(Rule(rf"{p}\.norm\.weight", f"{prefix}/norm/scale"))
    rules.append(Rule(rf"{p}\.norm\.bias", f"{prefix}/norm/bias"))
    return rules


def memory_encoder_rules(
    cfg, *, load_fuser_gamma: bool = False, prefix: str = "memory_encoder"
) -> list[Rule]:
    """`cfg`: MemoryEncoderConfig (or a config with a `memory_encoder` field)."""
    cfg = _encoder_cfg(cfg)
    p = prefix.replace(".", r"\.")
    rules = []
    # MaskDownSampler.encoder is an nn.Sequential: (conv, LayerNorm2d, GELU) x n, then the 1x1 conv.
    n = cfg.mask_num_layers
    ds = f"{prefix}/mask_downsampler"
    for i in range(n):
        rules += [
            Rule(
                rf"{p}\.mask_downsampler\.encoder\.{3 * i}\.weight",
                f"{ds}/layers/{i}/conv/kernel",
                conv_oihw_to_hwio,
            ),
            Rule(rf"{p}\.mask_downsampler\.encoder\.{3 * i}\.bias", f"{ds}/layers/{i}/conv/bias"),
            Rule(rf"{p}\.mask_downsampler\.encoder\.{3 * i + 1}\.weight", f"{ds}/layers/{i}/norm/scale"),
            Rule(rf"{p}\.mask_downsampler\.encoder\.{3 * i + 1}\.bias", f"{ds}/layers/{i}/norm/bias"),
        ]
    rules += [
        Rule(rf"{p}\.mask_downsampler\.encoder\.{3 * n}\.weight", f"{ds}/proj/kernel", conv1x1_to_linear),
        Rule(rf"{p}\.mask_downsampler\.encoder\.{3 * n}\.bias", f"{ds}/proj/bias"),
    ]
    for name in ("pix_feat_proj", "out_proj", "fuser.proj"):
        target = f"{prefix}/{name.replace('.', '/')}"
        key = name.replace(".", r"\.")
        rules += [
            Rule(rf"{p}\.{key}\.weight", f"{target}/kernel", conv1x1_to_linear),
            Rule(rf"{p}\.{key}\.bias", f"{target}/bias"),
        ]
    fl = f"{prefix}/fuser/layers"
    rules += [
        Rule(
            rf"{p}\.fuser\.layers\.(\d+)\.dwconv\.weight", f"{fl}/dwconv/kernel", conv_oihw_to_hwio, stack=1
        ),
        Rule(rf"{p}\.fuser\.layers\.(\d+)\.dwconv\.bias", f"{fl}/dwconv/bias", identity, stack=1),
        Rule(rf"{p}\.fuser\.layers\.(\d+)\.norm\.weight", f"{fl}/norm/scale", identity, stack=1),
        Rule(rf"{p}\.fuser\.layers\.(\d+)\.norm\.bias", f"{fl}/norm/bias", identity, stack=1),
        Rule(rf"{p}\.fuser\.layers\.(\d+)\.pwconv1\.weight", f"{fl}/pwconv1/kernel", linear_t, stack=1),
        Rule(rf"{p}\.fuser\.layers\.(\d+)\.pwconv1\.bias", f"{fl}/pwconv1/bias", identity, stack=1),
        Rule(rf"{p}\.fuser\.layers\.(\d+)\.pwconv2\.weight", f"{fl}/pwconv2/kernel", linear_t, stack=1),
        Rule(rf"{p}\.fuser\.layers\.(\d+)\.pwconv2\.bias", f"{fl}/pwconv2/bias", identity, stack=1),
        Rule(
            rf"{p}\.fuser\.layers\.(\d+)\.gamma",
            f"{fl}/gamma",
            identity if load_fuser_gamma else _constant(cfg.layer_scale_init_value),
            stack=1,
        ),
    ]
    return rules


def rules(cfg, *, load_fuser_gamma: bool = False) -> list[Rule]:
    """All memory-side rules (memory_attention.* and memory_encoder.*), targets relative to SAM2Model.

    `cfg`: a SAM2 config with a `memory_encoder` field, or a MemoryEncoderConfig.
    """
    return memory_attention_rules() + memory_encoder_rules(cfg, load_fuser_gamma=load_fuser_gamma)


def _strip(state_dict: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


def convert_memory_attention(
    state_dict: Mapping[str, np.ndarray], model, *, source_prefix: str = "memory_attention."
) -> None:
    """Load a standalone `MemoryAttention` from the keys under `source_prefix` (others are ignored)."""
    sd = {f"m.{k}": v for k, v in _strip(state_dict, source_prefix).items()}
    flat = convert(
        sd,
        memory_attention_rules("m"),
        {f"m/{k}": s for k, s in param_shapes(model).items()},
        what="memory_attention",
    )
    load_into(model, {k[2:]: v for k, v in flat.items()}, what="memory_attention")


def convert_memory_encoder(
    state_dict: Mapping[str, np.ndarray],
    model,
    *,
    load_fuser_gamma: bool = False,
    source_prefix: str = "memory_encoder.",
) -> None:
    """Load a standalone `MemoryEncoder` from the keys under `source_prefix` (others are ignored)."""
    sd = {f"m.{k}": v for k, v in _strip(state_dict, source_prefix).items()}
    flat = convert(
        sd,
        memory_encoder_rules(model.cfg, load_fuser_gamma=load_fuser_gamma, prefix="m"),
        {f"m/{k}": s for k, s in param_shapes(model).items()},
        what="memory_encoder",
    )
    load_into(model, {k[2:]: v for k, v in flat.items()}, what="memory_encoder")
