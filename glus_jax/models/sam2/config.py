"""SAM2 configs: frozen dataclasses, the four released presets, and a strict reader of SAM2 yamls.

The dataclasses mirror the constructor arguments of GLUS's vendored SAM2 2.0 modules
(`model/segment-anything-2/sam2/modeling/**`), with the same defaults, so a yaml key that is absent
means the same thing here as there. Values SAM2Base hard-codes in `_build_sam_heads` (prompt encoder
`mask_in_chans=16`, TwoWayTransformer depth 2 / 8 heads / MLP 2048, IoU head 3 x 256) and the
`build_sam2(apply_postprocessing=True)` overrides GLUS relies on (dynamic multimask via stability,
delta 0.05, threshold 0.98; quirk Q5) are defaults of `PromptEncoderConfig` / `MaskDecoderConfig`;
`SAM2Config.prompt_encoder` / `.mask_decoder` derive the module configs from the SAM2Base flags.

`from_yaml(path)` reads an original SAM2 yaml (`model: {_target_: ...SAM2Base, image_encoder: ...}`)
and refuses unknown keys, unexpected `_target_`s and values this port does not implement.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

import yaml

from glus_jax.config import ConfigError, from_dict, to_dict
from glus_jax.models.sam2.memory_attention import MemoryAttentionConfig
from glus_jax.models.sam2.memory_encoder import MemoryEncoderConfig

_DTYPES = ("float32", "bfloat16")


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


# ------------------------------------------------------------------------------ image encoder


@dataclasses.dataclass(frozen=True, kw_only=True)
class HieraConfig:
    """`sam2.modeling.backbones.hieradet.Hiera` (defaults = the constructor's = hiera-b+)."""

    embed_dim: int = 96
    num_heads: int = 1
    drop_path_rate: float = 0.0  # stochastic depth: only 0 (every released config) is implemented
    q_pool: int = 3  # number of stage transitions with q-pooling
    q_stride: tuple[int, int] = (2, 2)
    stages: tuple[int, ...] = (2, 3, 16, 3)
    dim_mul: float = 2.0
    head_mul: float = 2.0
    window_pos_embed_bkg_spatial_size: tuple[int, int] = (14, 14)
    window_spec: tuple[int, ...] = (8, 4, 14, 7)
    global_att_blocks: tuple[int, ...] = (12, 16, 20)
    unroll_layers: bool = False  # layers as straight-line code, not a scan: faster when few and small
    dtype: str = "float32"

    def __post_init__(self):
        w = "HieraConfig"
        _check(
            len(self.stages) == len(self.window_spec),
            f"{w}: stages {self.stages} and window_spec {self.window_spec} differ in length",
        )
        _check(
            all(s >= 1 for s in self.stages), f"{w}: every stage needs at least one block, got {self.stages}"
        )
        _check(
            0 <= self.q_pool <= len(self.stages) - 1,
            f"{w}: q_pool {self.q_pool} must be in [0, {len(self.stages) - 1}]",
        )
        _check(
            self.q_stride[0] == self.q_stride[1],
            f"{w}: q_stride {self.q_stride} must be square (Hiera divides windows by q_stride[0])",
        )
        _check(
            self.drop_path_rate == 0.0,
            f"{w}: drop_path_rate {self.drop_path_rate} > 0 (stochastic depth) is not implemented",
        )
        _check(self.dtype in _DTYPES, f"{w}: dtype {self.dtype!r} must be one of {_DTYPES}")
        _check(
            self.dim_mul != 1.0 or self.q_pool == 0,
            f"{w}: q-pooling needs dim_mul != 1 (Hiera pools the projected shortcut)",
        )

    @property
    def channel_list(self) -> tuple[int, ...]:
        """Output channels per stage, lowest resolution first (as `Hiera.channel_list`)."""
        dims, d = [], self.embed_dim
        for i in range(len(self.stages)):
            dims.append(d)
            d = int(d * self.dim_mul)
        return tuple(reversed(dims))


@dataclasses.dataclass(frozen=True, kw_only=True)
class PositionEmbeddingSineConfig:
    num_pos_feats: int = 256
    temperature: float = 10000.0
    normalize: bool = True
    scale: float | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class NeckConfig:
    """`sam2.modeling.backbones.image_encoder.FpnNeck` (1x1 lateral convs, top-down fusion)."""

    position_encoding: PositionEmbeddingSineConfig = dataclasses.field(
        default_factory=PositionEmbeddingSineConfig
    )
    d_model: int = 256
    backbone_channel_list: tuple[int, ...] = (768, 384, 192, 96)
    kernel_size: int = 1
    stride: int = 1
    padding: int = 0
    fpn_interp_model: Literal["nearest", "bilinear"] = "bilinear"
    fuse_type: Literal["sum", "avg"] = "sum"
    fpn_top_down_levels: tuple[int, ...] | None = None  # None = every level

    def __post_init__(self):
        w = "NeckConfig"
        _check(
            (self.kernel_size, self.stride, self.padding) == (1, 1, 0),
            f"{w}: only 1x1 lateral convs (kernel 1, stride 1, padding 0) are implemented",
        )
        _check(
            self.fpn_interp_model in ("nearest", "bilinear"),
            f"{w}: fpn_interp_model {self.fpn_interp_model!r} not supported",
        )
        _check(self.fuse_type in ("sum", "avg"), f"{w}: fuse_type {self.fuse_type!r} not supported")
        _check(
            self.position_encoding.num_pos_feats == self.d_model,
            f"{w}: position_encoding.num_pos_feats must equal d_model {self.d_model}",
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class ImageEncoderConfig:
    """`sam2.modeling.backbones.image_encoder.ImageEncoder`: trunk + neck, drop `scalp` lowest levels."""

    trunk: HieraConfig = dataclasses.field(default_factory=HieraConfig)
    neck: NeckConfig = dataclasses.field(default_factory=NeckConfig)
    scalp: int = 0

    def __post_init__(self):
        _check(
            self.trunk.channel_list == tuple(self.neck.backbone_channel_list),
            f"ImageEncoderConfig: trunk channels {self.trunk.channel_list} != neck backbone_channel_list {tuple(self.neck.backbone_channel_list)}",
        )
        _check(
            0 <= self.scalp < len(self.trunk.stages), f"ImageEncoderConfig: scalp {self.scalp} out of range"
        )


# ------------------------------------------------------------------------------- SAM heads


@dataclasses.dataclass(frozen=True, kw_only=True)
class PromptEncoderConfig:
    """`sam2.modeling.sam.prompt_encoder.PromptEncoder` (GLUS adds the text_embeds input)."""

    embed_dim: int = 256
    image_embedding_size: tuple[int, int] = (64, 64)
    input_image_size: tuple[int, int] = (1024, 1024)
    mask_in_chans: int = 16  # SAM2Base hard-codes 16

    def __post_init__(self):
        _check(self.embed_dim % 2 == 0, f"PromptEncoderConfig: embed_dim {self.embed_dim} must be even")
        _check(
            self.mask_in_chans % 4 == 0,
            f"PromptEncoderConfig: mask_in_chans {self.mask_in_chans} must be a multiple of 4",
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class MaskDecoderConfig:
    """`MaskDecoder` + its `TwoWayTransformer`, with the values SAM2Base._build_sam_heads passes."""

    transformer_dim: int = 256
    num_multimask_outputs: int = 3
    transformer_depth: int = 2
    transformer_num_heads: int = 8
    transformer_mlp_dim: int = 2048
    attention_downsample_rate: int = 2
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    use_high_res_features: bool = False
    iou_prediction_use_sigmoid: bool = False
    # build_sam2(apply_postprocessing=True) sets these through sam_mask_decoder_extra_args
    dynamic_multimask_via_stability: bool = False
    dynamic_multimask_stability_delta: float = 0.05
    dynamic_multimask_stability_thresh: float = 0.98
    pred_obj_scores: bool = False
    pred_obj_scores_mlp: bool = False
    use_multimask_token_for_obj_ptr: bool = False
    dtype: str = "float32"

    def __post_init__(self):
        w = "MaskDecoderConfig"
        _check(
            self.transformer_dim % 8 == 0,
            f"{w}: transformer_dim {self.transformer_dim} must be a multiple of 8",
        )
        internal = self.transformer_dim // self.attention_downsample_rate
        _check(
            internal % self.transformer_num_heads == 0,
            f"{w}: {self.transformer_num_heads} heads must divide {internal}",
        )
        _check(
            self.transformer_dim % self.transformer_num_heads == 0, f"{w}: heads must divide transformer_dim"
        )
        _check(self.transformer_depth >= 1, f"{w}: transformer_depth must be >= 1")
        _check(self.dtype in _DTYPES, f"{w}: dtype {self.dtype!r} must be one of {_DTYPES}")

    @property
    def num_mask_tokens(self) -> int:
        return self.num_multimask_outputs + 1


# --------------------------------------------------------------------------------- SAM2Base


@dataclasses.dataclass(frozen=True, kw_only=True)
class SAM2Config:
    """`sam2.modeling.sam2_base.SAM2Base` as built by GLUS's `build_sam2` (SAM2 2.0).

    Field defaults are SAM2Base's constructor defaults; the presets set what the released yamls set.
    Many flags steer SAM2's own video tracking loop, which GLUS replaces (oracle README Q4); they
    are kept because they decide which parameters exist (`obj_ptr_proj`, `mask_downsample`,
    `no_obj_ptr`, ...) and so what a checkpoint must contain.
    """

    image_encoder: ImageEncoderConfig = dataclasses.field(default_factory=ImageEncoderConfig)
    memory_attention: MemoryAttentionConfig = dataclasses.field(default_factory=MemoryAttentionConfig)
    memory_encoder: MemoryEncoderConfig = dataclasses.field(default_factory=MemoryEncoderConfig)
    num_maskmem: int = 7
    image_size: int = 512
    backbone_stride: int = 16
    sigmoid_scale_for_mem_enc: float = 1.0
    sigmoid_bias_for_mem_enc: float = 0.0
    binarize_mask_from_pts_for_mem_enc: bool = False
    use_mask_input_as_output_without_sam: bool = False
    max_cond_frames_in_attn: int = -1
    directly_add_no_mem_embed: bool = False
    use_high_res_features_in_sam: bool = False
    multimask_output_in_sam: bool = False
    multimask_min_pt_num: int = 1
    multimask_max_pt_num: int = 1
    multimask_output_for_tracking: bool = False
    use_multimask_token_for_obj_ptr: bool = False
    iou_prediction_use_sigmoid: bool = False
    memory_temporal_stride_for_eval: int = 1
    add_all_frames_to_correct_as_cond: bool = False
    non_overlap_masks_for_mem_enc: bool = False
    use_obj_ptrs_in_encoder: bool = False
    max_obj_ptrs_in_encoder: int = 16
    add_tpos_enc_to_obj_ptrs: bool = True
    proj_tpos_enc_in_obj_ptrs: bool = False
    only_obj_ptrs_in_the_past_for_eval: bool = False
    pred_obj_scores: bool = False
    pred_obj_scores_mlp: bool = False
    fixed_no_obj_ptr: bool = False
    soft_no_obj_ptr: bool = False
    use_mlp_for_obj_ptr_proj: bool = False
    compile_image_encoder: bool = False  # torch.compile flag; ignored (everything here is jitted)
    # build_sam2(apply_postprocessing=True), which GLUS uses, adds these decoder overrides.
    dynamic_multimask_via_stability: bool = True
    dynamic_multimask_stability_delta: float = 0.05
    dynamic_multimask_stability_thresh: float = 0.98
    dtype: str = "float32"

    def __post_init__(self):
        w = "SAM2Config"
        d = self.hidden_dim
        _check(
            self.image_size % self.backbone_stride == 0,
            f"{w}: image_size {self.image_size} not a multiple of backbone_stride {self.backbone_stride}",
        )
        # SAM2 2.0 takes hidden_dim from memory_attention.d_model, 2.1 from the neck; they must agree.
        _check(
            self.memory_attention.d_model == d,
            f"{w}: memory_attention.d_model {self.memory_attention.d_model} != neck d_model {d}",
        )
        _check(
            self.memory_encoder.in_dim == d,
            f"{w}: memory_encoder.in_dim {self.memory_encoder.in_dim} != hidden dim {d}",
        )
        _check(
            self.memory_attention.kv_in_dim == self.mem_dim,
            f"{w}: memory_attention.kv_in_dim {self.memory_attention.kv_in_dim} != memory dim {self.mem_dim}",
        )
        if self.fixed_no_obj_ptr:
            _check(
                self.pred_obj_scores and self.use_obj_ptrs_in_encoder,
                f"{w}: fixed_no_obj_ptr needs pred_obj_scores and use_obj_ptrs_in_encoder",
            )
        if self.proj_tpos_enc_in_obj_ptrs:
            _check(
                self.add_tpos_enc_to_obj_ptrs,
                f"{w}: proj_tpos_enc_in_obj_ptrs needs add_tpos_enc_to_obj_ptrs",
            )
        _check(self.dtype in _DTYPES, f"{w}: dtype {self.dtype!r} must be one of {_DTYPES}")
        n_levels = len(self.image_encoder.trunk.stages) - self.image_encoder.scalp
        _check(
            n_levels >= self.num_feature_levels,
            f"{w}: {n_levels} FPN levels after scalp, need {self.num_feature_levels}",
        )

    @property
    def hidden_dim(self) -> int:
        return self.image_encoder.neck.d_model

    @property
    def mem_dim(self) -> int:
        return self.memory_encoder.out_dim

    @property
    def num_feature_levels(self) -> int:
        return 3 if self.use_high_res_features_in_sam else 1

    @property
    def image_embedding_size(self) -> int:
        return self.image_size // self.backbone_stride

    @property
    def prompt_encoder(self) -> PromptEncoderConfig:
        s = self.image_embedding_size
        return PromptEncoderConfig(
            embed_dim=self.hidden_dim,
            image_embedding_size=(s, s),
            input_image_size=(self.image_size, self.image_size),
        )

    @property
    def mask_decoder(self) -> MaskDecoderConfig:
        return MaskDecoderConfig(
            transformer_dim=self.hidden_dim,
            use_high_res_features=self.use_high_res_features_in_sam,
            iou_prediction_use_sigmoid=self.iou_prediction_use_sigmoid,
            dynamic_multimask_via_stability=self.dynamic_multimask_via_stability,
            dynamic_multimask_stability_delta=self.dynamic_multimask_stability_delta,
            dynamic_multimask_stability_thresh=self.dynamic_multimask_stability_thresh,
            pred_obj_scores=self.pred_obj_scores,
            pred_obj_scores_mlp=self.pred_obj_scores_mlp,
            use_multimask_token_for_obj_ptr=self.use_multimask_token_for_obj_ptr,
            dtype=self.dtype,
        )


# ----------------------------------------------------------------------------------- presets

# Flags shared by every released sam2_hiera_*.yaml (and GLUS's copies).
_RELEASED_FLAGS: dict[str, Any] = {
    "num_maskmem": 7,
    "image_size": 1024,
    "sigmoid_scale_for_mem_enc": 20.0,
    "sigmoid_bias_for_mem_enc": -10.0,
    "use_mask_input_as_output_without_sam": True,
    "directly_add_no_mem_embed": True,
    "use_high_res_features_in_sam": True,
    "multimask_output_in_sam": True,
    "iou_prediction_use_sigmoid": True,
    "use_obj_ptrs_in_encoder": True,
    "add_tpos_enc_to_obj_ptrs": False,
    "only_obj_ptrs_in_the_past_for_eval": True,
    "pred_obj_scores": True,
    "pred_obj_scores_mlp": True,
    "fixed_no_obj_ptr": True,
    "multimask_output_for_tracking": True,
    "use_multimask_token_for_obj_ptr": True,
    "multimask_min_pt_num": 0,
    "multimask_max_pt_num": 1,
    "use_mlp_for_obj_ptr_proj": True,
    "compile_image_encoder": False,
}


def _released(trunk: HieraConfig, **overrides) -> SAM2Config:
    channels = trunk.channel_list
    neck = NeckConfig(
        position_encoding=PositionEmbeddingSineConfig(num_pos_feats=256),
        d_model=256,
        backbone_channel_list=channels,
        fpn_top_down_levels=(2, 3),
        fpn_interp_model="nearest",
    )
    kw = dict(_RELEASED_FLAGS)
    kw.update(overrides)
    return SAM2Config(
        image_encoder=ImageEncoderConfig(trunk=trunk, neck=neck, scalp=1),
        memory_attention=MemoryAttentionConfig(),
        memory_encoder=MemoryEncoderConfig(),
        **kw,
    )


def hiera_t(**overrides) -> SAM2Config:
    """sam2_hiera_t.yaml."""
    return _released(
        HieraConfig(
            embed_dim=96,
            num_heads=1,
            stages=(1, 2, 7, 2),
            global_att_blocks=(5, 7, 9),
            window_pos_embed_bkg_spatial_size=(7, 7),
        ),
        **overrides,
    )


def hiera_s(**overrides) -> SAM2Config:
    """sam2_hiera_s.yaml."""
    return _released(
        HieraConfig(
            embed_dim=96,
            num_heads=1,
            stages=(1, 2, 11, 2),
            global_att_blocks=(7, 10, 13),
            window_pos_embed_bkg_spatial_size=(7, 7),
        ),
        **overrides,
    )


def hiera_b_plus(**overrides) -> SAM2Config:
    """sam2_hiera_b+.yaml (the Hiera defaults apart from width and heads)."""
    return _released(HieraConfig(embed_dim=112, num_heads=2), **overrides)


def hiera_l(**overrides) -> SAM2Config:
    """sam2_hiera_l.yaml (GLUS's SAM2)."""
    return _released(
        HieraConfig(
            embed_dim=144,
            num_heads=2,
            stages=(2, 6, 36, 4),
            global_att_blocks=(23, 33, 43),
            window_pos_embed_bkg_spatial_size=(7, 7),
            window_spec=(8, 4, 16, 8),
        ),
        **overrides,
    )


PRESETS = {"hiera_t": hiera_t, "hiera_s": hiera_s, "hiera_b+": hiera_b_plus, "hiera_l": hiera_l}


# ------------------------------------------------------------------------------- yaml reader

_T_SAM2 = "sam2.modeling.sam2_base.SAM2Base"
_T_IMAGE_ENCODER = "sam2.modeling.backbones.image_encoder.ImageEncoder"
_T_HIERA = "sam2.modeling.backbones.hieradet.Hiera"
_T_FPN = "sam2.modeling.backbones.image_encoder.FpnNeck"
_T_SINE = "sam2.modeling.position_encoding.PositionEmbeddingSine"
_T_MEM_ATTN = "sam2.modeling.memory_attention.MemoryAttention"
_T_MEM_LAYER = "sam2.modeling.memory_attention.MemoryAttentionLayer"
_T_ROPE = "sam2.modeling.sam.transformer.RoPEAttention"
_T_MEM_ENC = "sam2.modeling.memory_encoder.MemoryEncoder"
_T_MASK_DS = "sam2.modeling.memory_encoder.MaskDownSampler"
_T_FUSER = "sam2.modeling.memory_encoder.Fuser"
_T_CX = "sam2.modeling.memory_encoder.CXBlock"


class _Node:
    """A yaml mapping being consumed: every key must be taken, `_target_` must match."""

    def __init__(self, data: Any, where: str, target: str | None):
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected a mapping, got {data!r}")
        self.data, self.where = dict(data), where
        got = self.data.pop("_target_", None)
        if target is not None and got != target:
            raise ConfigError(f"{where}: _target_ {got!r} is not supported (expected {target!r})")

    def take(self, key: str, default: Any = dataclasses.MISSING) -> Any:
        if key in self.data:
            return self.data.pop(key)
        if default is dataclasses.MISSING:
            raise ConfigError(f"{self.where}: missing key {key!r}")
        return default

    def child(self, key: str, target: str | None) -> _Node:
        return _Node(self.take(key), f"{self.where}.{key}", target)

    def done(self) -> None:
        if self.data:
            raise ConfigError(f"{self.where}: unknown or unsupported keys {sorted(self.data)}")


def _build(cls, node: _Node, values: dict) -> Any:
    """cls(**values) with dataclass-level validation errors reported at `node.where`."""
    try:
        return from_dict(cls, values, where=node.where)
    except ValueError as e:
        raise ConfigError(f"{node.where}: {e}") from None


def _opt_tuple(v):
    return None if v is None else tuple(v)


def _parse_sine(node: _Node) -> dict:
    out = {
        "num_pos_feats": node.take("num_pos_feats"),
        "temperature": node.take("temperature", 10000),
        "normalize": node.take("normalize", True),
        "scale": node.take("scale", None),
    }
    node.done()
    return out


def _parse_image_encoder(node: _Node) -> ImageEncoderConfig:
    t = node.child("trunk", _T_HIERA)
    trunk = {}
    for key in (
        "embed_dim", "num_heads", "drop_path_rate", "q_pool", "q_stride", "stages", "dim_mul", "head_mul",
        "window_pos_embed_bkg_spatial_size", "window_spec", "global_att_blocks",
    ):  # fmt: skip
        if key in t.data:
            trunk[key] = t.take(key)
    if not t.take("return_interm_layers", True):
        raise ConfigError(
            f"{t.where}: return_interm_layers=False is not supported (the FPN neck needs every stage)"
        )
    if t.take("weights_path", None) is not None:
        raise ConfigError(
            f"{t.where}: weights_path (loading a separate Hiera checkpoint) is not supported; convert the SAM2 checkpoint instead"
        )
    t.done()
    n = node.child("neck", _T_FPN)
    neck = {"position_encoding": _parse_sine(n.child("position_encoding", _T_SINE))}
    for key in (
        "d_model",
        "backbone_channel_list",
        "kernel_size",
        "stride",
        "padding",
        "fpn_interp_model",
        "fuse_type",
        "fpn_top_down_levels",
    ):
        if key in n.data:
            neck[key] = n.take(key)
    n.done()
    scalp = node.take("scalp", 0)
    node.done()
    try:
        trunk_cfg = _build(HieraConfig, t, trunk)
        neck_cfg = _build(NeckConfig, n, neck)
        return ImageEncoderConfig(trunk=trunk_cfg, neck=neck_cfg, scalp=scalp)
    except ValueError as e:
        raise ConfigError(f"{node.where}: {e}") from None


def _parse_rope(node: _Node, *, cross: bool) -> dict:
    out = {
        "embedding_dim": node.take("embedding_dim"),
        "num_heads": node.take("num_heads"),
        "downsample_rate": node.take("downsample_rate", 1),
        "dropout": node.take("dropout", 0.0),
        "rope_theta": node.take("rope_theta", 10000.0),
        "rope_k_repeat": node.take("rope_k_repeat", False),
        "kv_in_dim": node.take("kv_in_dim", None),
    }
    # The RoPE tables are rebuilt for the actual feature size, as RoPEAttention itself does
    # when its cached table does not match; the configured size is therefore irrelevant.
    node.take("feat_sizes", None)
    node.done()
    if not cross and (out["rope_k_repeat"] or out["kv_in_dim"] is not None):
        raise ConfigError(f"{node.where}: self-attention with rope_k_repeat or kv_in_dim is not supported")
    return out


def _parse_memory_attention(node: _Node) -> MemoryAttentionConfig:
    d_model = node.take("d_model")
    pos_enc_at_input = node.take("pos_enc_at_input")
    num_layers = node.take("num_layers")
    if not node.take("batch_first", True):
        raise ConfigError(f"{node.where}: batch_first=False is not supported")
    layer = node.child("layer", _T_MEM_LAYER)
    lw = layer.where
    # MemoryAttentionLayer has no defaults: every argument is required, as hydra would insist.
    activation = layer.take("activation")
    dim_feedforward = layer.take("dim_feedforward")
    dropout = layer.take("dropout")
    pos_enc_at_attn = layer.take("pos_enc_at_attn")
    layer_d = layer.take("d_model")
    keys = layer.take("pos_enc_at_cross_attn_keys")
    queries = layer.take("pos_enc_at_cross_attn_queries")
    sa = _parse_rope(layer.child("self_attention", _T_ROPE), cross=False)
    ca = _parse_rope(layer.child("cross_attention", _T_ROPE), cross=True)
    layer.done()
    node.done()
    for name, attn in (("self_attention", sa), ("cross_attention", ca)):
        if attn["embedding_dim"] != d_model or layer_d != d_model:
            raise ConfigError(
                f"{lw}.{name}: embedding_dim/d_model must all equal memory_attention.d_model {d_model}"
            )
        if attn["dropout"] != dropout:
            raise ConfigError(
                f"{lw}.{name}: attention dropout {attn['dropout']} != layer dropout {dropout} (one rate is supported)"
            )
    for key in ("num_heads", "downsample_rate", "rope_theta"):
        if sa[key] != ca[key]:
            raise ConfigError(
                f"{lw}: self/cross attention {key} differ ({sa[key]} vs {ca[key]}); one value is supported"
            )
    values = {
        "d_model": d_model,
        "num_layers": num_layers,
        "num_heads": sa["num_heads"],
        "downsample_rate": sa["downsample_rate"],
        "dim_feedforward": dim_feedforward,
        "kv_in_dim": ca["kv_in_dim"] if ca["kv_in_dim"] is not None else d_model,
        "activation": activation,
        "dropout": dropout,
        "pos_enc_at_input": pos_enc_at_input,
        "pos_enc_at_attn": pos_enc_at_attn,
        "pos_enc_at_cross_attn_keys": keys,
        "pos_enc_at_cross_attn_queries": queries,
        "rope_theta": float(sa["rope_theta"]),
        "rope_k_repeat": ca["rope_k_repeat"],
    }
    return _build(MemoryAttentionConfig, node, values)


def _parse_memory_encoder(node: _Node) -> MemoryEncoderConfig:
    out_dim = node.take("out_dim")
    in_dim = node.take("in_dim", 256)
    pe = _parse_sine(node.child("position_encoding", _T_SINE))
    ds = node.child("mask_downsampler", _T_MASK_DS)
    ds_vals = {
        "mask_embed_dim": ds.take("embed_dim", 256),
        "mask_kernel_size": ds.take("kernel_size", 4),
        "mask_stride": ds.take("stride", 4),
        "mask_padding": ds.take("padding", 0),
        "mask_total_stride": ds.take("total_stride", 16),
    }
    if ds.take("activation", None) is not None:
        raise ConfigError(f"{ds.where}: a custom activation is not supported (GELU)")
    ds.done()
    fu = node.child("fuser", _T_FUSER)
    fuser_layers = fu.take("num_layers")
    fuser_input_projection = fu.take("input_projection", False)
    fuser_dim = fu.take("dim", None)
    cx = fu.child("layer", _T_CX)
    cx_vals = {
        "fuser_dim": cx.take("dim"),
        "fuser_kernel_size": cx.take("kernel_size", 7),
        "fuser_padding": cx.take("padding", 3),
        "layer_scale_init_value": float(cx.take("layer_scale_init_value", 1e-6)),
        "use_dwconv": cx.take("use_dwconv", True),
    }
    if cx.take("drop_path", 0.0) != 0.0:
        raise ConfigError(f"{cx.where}: drop_path > 0 is not implemented")
    cx.done()
    fu.done()
    if fuser_dim is not None and fuser_dim != cx_vals["fuser_dim"]:
        raise ConfigError(f"{fu.where}: dim {fuser_dim} != layer.dim {cx_vals['fuser_dim']}")
    node.done()
    values = dict(
        in_dim=in_dim,
        out_dim=out_dim,
        fuser_num_layers=fuser_layers,
        fuser_input_projection=fuser_input_projection,
        pos_num_feats=pe["num_pos_feats"],
        pos_temperature=float(pe["temperature"]),
        pos_normalize=pe["normalize"],
        pos_scale=pe["scale"],
        **ds_vals,
        **cx_vals,
    )
    return _build(MemoryEncoderConfig, node, values)


_DECODER_EXTRA_ARGS = (
    "dynamic_multimask_via_stability",
    "dynamic_multimask_stability_delta",
    "dynamic_multimask_stability_thresh",
)


def from_yaml(path: str | Path, *, apply_postprocessing: bool = True) -> SAM2Config:
    """Read an original SAM2 yaml (as passed to `build_sam2`) into a SAM2Config, strictly.

    `apply_postprocessing` mirrors `build_sam2`'s argument (default True, as GLUS calls it): it adds
    the dynamic-multimask decoder overrides unless the yaml's `sam_mask_decoder_extra_args` sets them.
    Unknown keys, other `_target_`s and unimplemented values raise ConfigError naming the file.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read SAM2 yaml: {e}") from None
    try:
        return _from_mapping(data, apply_postprocessing=apply_postprocessing)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def _from_mapping(data: Any, *, apply_postprocessing: bool) -> SAM2Config:
    if not isinstance(data, dict) or "model" not in data:
        raise ConfigError("expected a top-level 'model' mapping (an original SAM2 yaml)")
    extra = sorted(set(data) - {"model"})
    if extra:
        raise ConfigError(f"unsupported top-level keys {extra} (only 'model' is read)")
    root = _Node(data["model"], "model", _T_SAM2)
    image_encoder = _parse_image_encoder(root.child("image_encoder", _T_IMAGE_ENCODER))
    memory_attention = _parse_memory_attention(root.child("memory_attention", _T_MEM_ATTN))
    memory_encoder = _parse_memory_encoder(root.child("memory_encoder", _T_MEM_ENC))
    flags = {}
    known = {f.name for f in dataclasses.fields(SAM2Config)} - {
        "image_encoder",
        "memory_attention",
        "memory_encoder",
        "dtype",
        *_DECODER_EXTRA_ARGS,
    }
    for key in list(root.data):
        if key in known:
            flags[key] = root.take(key)
    extra_args = root.take("sam_mask_decoder_extra_args", None) or {}
    root.done()
    if not isinstance(extra_args, dict) or set(extra_args) - set(_DECODER_EXTRA_ARGS):
        raise ConfigError(
            f"model.sam_mask_decoder_extra_args: only {list(_DECODER_EXTRA_ARGS)} are supported, got {extra_args!r}"
        )
    decoder = {"dynamic_multimask_via_stability": False}
    if apply_postprocessing:
        decoder = {
            "dynamic_multimask_via_stability": True,
            "dynamic_multimask_stability_delta": 0.05,
            "dynamic_multimask_stability_thresh": 0.98,
        }
    decoder.update(extra_args)
    values = dict(
        flags,
        **decoder,
        image_encoder=to_dict(image_encoder),
        memory_attention=to_dict(memory_attention),
        memory_encoder=to_dict(memory_encoder),
    )
    try:
        return from_dict(SAM2Config, values, where="model")
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(f"model: {e}") from None
