"""Conversion table for a whole SAM2 (`SAM2Base` state dict -> `SAM2Model`).

Sources:
  - official SAM2 checkpoints `sam2_hiera_*.pt` (`{"model": state_dict}`; read with
    `read_state_dict(path, subkey="model")`), keys `image_encoder.trunk.*`, `sam_mask_decoder.*`, ...;
  - GLUS checkpoints: the same keys under `model.visual_model.` (pass `prefix="model.visual_model."`;
    the other keys of the file are left alone).
Targets are SAM2Model paths ("/"-joined; see glus_jax/models/sam2/sam2.py for the layout).

The image side is here; the memory side (`memory_attention.*`, `memory_encoder.*`) comes from
`tools/convert_weights/sam2_memory.py` (`rules(cfg, load_fuser_gamma=...)`), so one call converts all
of SAM2. For GLUS checkpoints the memory encoder's fuser gammas keep their constructor value by
default, as the original loader does (oracle README Q1); `load_fuser_gamma=True` loads them.

Layout changes: Linear weights transposed; convs OIHW -> HWIO; 1x1 convs become Linears; transposed
convs get the spatial kernel flip (`conv_transpose_flip`); Hiera's pos embeds NCHW -> NHWC; the four
prompt point embeddings and the per-token hypernetwork MLPs are stacked; Hiera blocks are stacked per
segment (runs of identical blocks, `hieradet.block_segments`), for which the source keys
`image_encoder.trunk.blocks.{i}.*` are first renamed `image_encoder.trunk.segments.{s}.blocks.{j}.*`
(error messages show the renamed keys).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from glus_jax.models.sam2.config import HieraConfig, SAM2Config
from glus_jax.models.sam2.hieradet import block_segments
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
)
from tools.convert_weights.sam2_memory import conv1x1_to_linear
from tools.convert_weights.sam2_memory import rules as MEMORY_RULES

GLUS_PREFIX = "model.visual_model."


def nchw_to_nhwc(x: np.ndarray) -> np.ndarray:
    """[1, C, H, W] position embedding -> [1, H, W, C]."""
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def embedding_row(x: np.ndarray) -> np.ndarray:
    """nn.Embedding(1, D).weight [1, D] -> [D] (one row of a stacked table)."""
    if x.ndim != 2 or x.shape[0] != 1:
        raise ValueError(f"expected an nn.Embedding(1, D) weight [1, D], got {x.shape}")
    return x[0]


def _esc(prefix: str) -> str:
    return re.escape(prefix)


def _linear(src: str, dst: str) -> list[Rule]:
    """Rules for an nn.Linear at source key prefix `src` (regex, may hold groups) -> `dst`."""
    return [Rule(rf"{src}\.weight", f"{dst}/kernel", linear_t), Rule(rf"{src}\.bias", f"{dst}/bias")]


def _norm(src: str, dst: str, stack: int | None = None) -> list[Rule]:
    return [
        Rule(rf"{src}\.weight", f"{dst}/scale", identity, stack),
        Rule(rf"{src}\.bias", f"{dst}/bias", identity, stack),
    ]


def _mlp(src: str, dst: str) -> list[Rule]:
    """sam2_utils.MLP -> our MLP (`layers/{i}`)."""
    return _linear(rf"{src}\.layers\.(\d+)", f"{dst}/layers/{{1}}")


# ------------------------------------------------------------------------------ image encoder


def trunk_rules(src: str = "image_encoder.trunk", dst: str = "image_encoder/trunk") -> list[Rule]:
    """Hiera rules over *renamed* block keys (see `rename_trunk_blocks`)."""
    s = _esc(src)
    blk = rf"{s}\.segments\.(\d+)\.blocks\.(\d+)"
    tgt = f"{dst}/segments/{{1}}/blocks"
    rules = [
        Rule(rf"{s}\.patch_embed\.proj\.weight", f"{dst}/patch_embed/proj/kernel", conv_oihw_to_hwio),
        Rule(rf"{s}\.patch_embed\.proj\.bias", f"{dst}/patch_embed/proj/bias"),
        Rule(rf"{s}\.pos_embed", f"{dst}/pos_embed", nchw_to_nhwc),
        Rule(rf"{s}\.pos_embed_window", f"{dst}/pos_embed_window", nchw_to_nhwc),
    ]
    for name in ("attn.qkv", "attn.proj", "mlp.layers.0", "mlp.layers.1", "proj"):
        path = name.replace(".", "/")
        rules += [
            Rule(rf"{blk}\.{_esc(name)}\.weight", f"{tgt}/{path}/kernel", linear_t, stack=2),
            Rule(rf"{blk}\.{_esc(name)}\.bias", f"{tgt}/{path}/bias", identity, stack=2),
        ]
    for norm in ("norm1", "norm2"):
        rules += _norm(rf"{blk}\.{norm}", f"{tgt}/{norm}", stack=2)
    return rules


def rename_trunk_blocks(
    state_dict: Mapping[str, np.ndarray], cfg: HieraConfig, src: str = "image_encoder.trunk"
) -> dict[str, np.ndarray]:
    """`{src}.blocks.{i}.*` -> `{src}.segments.{s}.blocks.{j}.*` (block i is the j-th of segment s).

    A block index beyond the config's depth is left as is, so it is reported as unexpected.
    """
    where = {i: (s, j) for s, idx in enumerate(block_segments(cfg)) for j, i in enumerate(idx)}
    pat = re.compile(rf"{_esc(src)}\.blocks\.(\d+)\.(.*)")
    out = {}
    for k, v in state_dict.items():
        m = pat.fullmatch(k)
        if m and int(m.group(1)) in where:
            s, j = where[int(m.group(1))]
            k = f"{src}.segments.{s}.blocks.{j}.{m.group(2)}"
        out[k] = v
    return out


def neck_rules(src: str = "image_encoder.neck", dst: str = "image_encoder/neck") -> list[Rule]:
    s = _esc(src)
    return [
        Rule(rf"{s}\.convs\.(\d+)\.conv\.weight", f"{dst}/convs/{{1}}/kernel", conv1x1_to_linear),
        Rule(rf"{s}\.convs\.(\d+)\.conv\.bias", f"{dst}/convs/{{1}}/bias"),
    ]


# ---------------------------------------------------------------------------------- SAM heads


def prompt_encoder_rules(src: str = "sam_prompt_encoder", dst: str = "sam_prompt_encoder") -> list[Rule]:
    s = _esc(src)
    md = rf"{s}\.mask_downscaling"
    return [
        Rule(
            rf"{s}\.pe_layer\.positional_encoding_gaussian_matrix",
            f"{dst}/pe_layer/positional_encoding_gaussian_matrix",
        ),
        Rule(rf"{s}\.point_embeddings\.(\d+)\.weight", f"{dst}/point_embeddings", embedding_row, stack=1),
        Rule(rf"{s}\.not_a_point_embed\.weight", f"{dst}/not_a_point_embed"),
        Rule(rf"{s}\.no_mask_embed\.weight", f"{dst}/no_mask_embed"),
        # mask_downscaling = Sequential(conv, LN2d, GELU, conv, LN2d, GELU, conv1x1)
        Rule(rf"{md}\.0\.weight", f"{dst}/mask_downscaling/conv1/kernel", conv_oihw_to_hwio),
        Rule(rf"{md}\.0\.bias", f"{dst}/mask_downscaling/conv1/bias"),
        *_norm(rf"{md}\.1", f"{dst}/mask_downscaling/norm1"),
        Rule(rf"{md}\.3\.weight", f"{dst}/mask_downscaling/conv2/kernel", conv_oihw_to_hwio),
        Rule(rf"{md}\.3\.bias", f"{dst}/mask_downscaling/conv2/bias"),
        *_norm(rf"{md}\.4", f"{dst}/mask_downscaling/norm2"),
        Rule(rf"{md}\.6\.weight", f"{dst}/mask_downscaling/conv3/kernel", conv1x1_to_linear),
        Rule(rf"{md}\.6\.bias", f"{dst}/mask_downscaling/conv3/bias"),
    ]


def mask_decoder_rules(src: str = "sam_mask_decoder", dst: str = "sam_mask_decoder") -> list[Rule]:
    s = _esc(src)
    t = rf"{s}\.transformer"
    rules = [
        Rule(rf"{s}\.iou_token\.weight", f"{dst}/iou_token"),
        Rule(rf"{s}\.mask_tokens\.weight", f"{dst}/mask_tokens"),
        Rule(rf"{s}\.obj_score_token\.weight", f"{dst}/obj_score_token"),
        # output_upscaling = Sequential(ConvT, LN2d, GELU, ConvT, GELU)
        Rule(rf"{s}\.output_upscaling\.0\.weight", f"{dst}/output_upscaling/dc1/kernel", conv_transpose_flip),
        Rule(rf"{s}\.output_upscaling\.0\.bias", f"{dst}/output_upscaling/dc1/bias"),
        *_norm(rf"{s}\.output_upscaling\.1", f"{dst}/output_upscaling/ln1"),
        Rule(rf"{s}\.output_upscaling\.3\.weight", f"{dst}/output_upscaling/dc2/kernel", conv_transpose_flip),
        Rule(rf"{s}\.output_upscaling\.3\.bias", f"{dst}/output_upscaling/dc2/bias"),
        Rule(rf"{s}\.conv_s([01])\.weight", f"{dst}/conv_s{{1}}/kernel", conv1x1_to_linear),
        Rule(rf"{s}\.conv_s([01])\.bias", f"{dst}/conv_s{{1}}/bias"),
        Rule(
            rf"{s}\.output_hypernetworks_mlps\.(\d+)\.layers\.(\d+)\.weight",
            f"{dst}/output_hypernetworks_mlps/layers/{{2}}/kernel",
            linear_t,
            stack=1,
        ),
        Rule(
            rf"{s}\.output_hypernetworks_mlps\.(\d+)\.layers\.(\d+)\.bias",
            f"{dst}/output_hypernetworks_mlps/layers/{{2}}/bias",
            identity,
            stack=1,
        ),
        *_mlp(rf"{s}\.iou_prediction_head", f"{dst}/iou_prediction_head"),
        *_mlp(rf"{s}\.pred_obj_score_head", f"{dst}/pred_obj_score_head"),
        *_linear(rf"{s}\.pred_obj_score_head", f"{dst}/pred_obj_score_head"),  # the non-MLP variant
        # TwoWayTransformer
        *_linear(
            rf"{t}\.layers\.(\d+)\.(self_attn|cross_attn_token_to_image|cross_attn_image_to_token)\.(q|k|v|out)_proj",
            f"{dst}/transformer/layers/{{1}}/{{2}}/{{3}}_proj",
        ),
        *_linear(
            rf"{t}\.layers\.(\d+)\.mlp\.layers\.(\d+)", f"{dst}/transformer/layers/{{1}}/mlp/layers/{{2}}"
        ),
        *_norm(rf"{t}\.layers\.(\d+)\.(norm\d)", f"{dst}/transformer/layers/{{1}}/{{2}}"),
        *_linear(
            rf"{t}\.final_attn_token_to_image\.(q|k|v|out)_proj",
            f"{dst}/transformer/final_attn_token_to_image/{{1}}_proj",
        ),
        *_norm(rf"{t}\.norm_final_attn", f"{dst}/transformer/norm_final_attn"),
    ]
    return rules


def top_level_rules() -> list[Rule]:
    """SAM2Base's own parameters."""
    return [
        Rule(r"no_mem_embed", "no_mem_embed"),
        Rule(r"no_mem_pos_enc", "no_mem_pos_enc"),
        Rule(r"maskmem_tpos_enc", "maskmem_tpos_enc"),
        Rule(r"no_obj_ptr", "no_obj_ptr"),
        Rule(r"mask_downsample\.weight", "mask_downsample/kernel", conv_oihw_to_hwio),
        Rule(r"mask_downsample\.bias", "mask_downsample/bias"),
        *_mlp(r"obj_ptr_proj", "obj_ptr_proj"),
        *_linear(r"obj_ptr_proj", "obj_ptr_proj"),  # the non-MLP variant
        *_linear(r"obj_ptr_tpos_proj", "obj_ptr_tpos_proj"),
    ]


def image_rules() -> list[Rule]:
    """Everything but the memory side, over renamed trunk keys."""
    return trunk_rules() + neck_rules() + prompt_encoder_rules() + mask_decoder_rules() + top_level_rules()


def rules(cfg: SAM2Config, *, load_fuser_gamma: bool = False) -> list[Rule]:
    """All SAM2 rules (image side + MEMORY_RULES of sam2_memory.py), over renamed trunk keys."""
    return image_rules() + MEMORY_RULES(cfg, load_fuser_gamma=load_fuser_gamma)


# ------------------------------------------------------------------------------------ entry


def strip_prefix(state_dict: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """Keys under `prefix`, with it removed (a GLUS checkpoint's `model.visual_model.`)."""
    out = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if prefix and not out:
        raise ConversionError(
            f"no checkpoint keys start with {prefix!r}: not a GLUS/SAM2 checkpoint of this layout"
        )
    return out


def convert_sam2(
    state_dict: Mapping[str, np.ndarray],
    cfg: SAM2Config,
    model=None,
    *,
    prefix: str = "",
    load_fuser_gamma: bool = False,
    target_shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> dict[str, np.ndarray]:
    """Convert a SAM2 state dict to {SAM2Model path: array}; load it into `model` if given.

    `prefix`: "" for official SAM2 checkpoints, GLUS_PREFIX for GLUS checkpoints (other keys of the
    file are not SAM2's and are skipped). `target_shapes` defaults to `param_shapes(model)`.
    Every SAM2 key must be consumed and every parameter filled (ConversionError otherwise).
    """
    if target_shapes is None:
        if model is None:
            raise ValueError("convert_sam2 needs a model or target_shapes")
        target_shapes = param_shapes(model)
    sd = strip_prefix(state_dict, prefix) if prefix else dict(state_dict)
    sd = rename_trunk_blocks(sd, cfg.image_encoder.trunk)
    flat = convert(
        sd,
        rules(cfg, load_fuser_gamma=load_fuser_gamma),
        target_shapes,
        what=f"SAM2 weights{f' ({prefix}*)' if prefix else ''}",
    )
    if model is not None:
        load_into(model, flat, what="SAM2 weights")
    return flat


# Standalone submodules: PyTorch module state dict (keys relative to the module) -> our module.
_PARTS = {
    "image_encoder": "image_encoder",
    "trunk": "image_encoder.trunk",
    "neck": "image_encoder.neck",
    "prompt_encoder": "sam_prompt_encoder",
    "mask_decoder": "sam_mask_decoder",
}


def convert_part(state_dict: Mapping[str, np.ndarray], model, part: str) -> dict[str, np.ndarray]:
    """Load one SAM2 submodule (`part` in image_encoder | trunk | neck | prompt_encoder | mask_decoder)
    from the state dict of the matching PyTorch module (e.g. a `Hiera`'s own `state_dict()`).
    Strict like `convert_sam2`. Returns the flat {path: array} that was loaded."""
    if part not in _PARTS:
        raise ValueError(f"unknown SAM2 part {part!r}; expected one of {sorted(_PARTS)}")
    src = _PARTS[part]
    dst = src.replace(".", "/")
    sd = {f"{src}.{k}": v for k, v in state_dict.items()}
    if part in ("trunk", "image_encoder"):
        trunk_cfg = model.cfg if part == "trunk" else model.cfg.trunk
        sd = rename_trunk_blocks(sd, trunk_cfg)
    shapes = {f"{dst}/{k}": s for k, s in param_shapes(model).items()}
    flat = convert(sd, image_rules(), shapes, what=f"SAM2 {part}")
    local = {k[len(dst) + 1 :]: v for k, v in flat.items()}
    load_into(model, local, what=f"SAM2 {part}")
    return local
