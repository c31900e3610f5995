"""Model sizes of the inference benchmark: `tiny`, `small` and `glus_s`.

Each config names the LLaMA, CLIP and SAM2 sizes of a GLUS model plus the synthetic video it runs on.
The GLUS protocol is the same for all of them (4 context frames, a window of 4 question frames, CLIP at
224 px with 14 px patches, so 64 image tokens per frame after the 1x4 average pool), so every config runs
the same prompts and the same memory-bank schedule; only the widths and depths differ.

- `tiny`: the oracle's GLUS-tiny architecture (LLaMA 64 wide, CLIP 32 wide, the tiny hiera at 1024 px).
- `small`: the CPU proxy of GLUS-S. Its per-frame FLOP split between CLIP, the LLM and SAM2 *in the
  reference algorithm* is within a few points of GLUS-S's (the benchmark prints both), so the work GLUS
  removes (CLIP once per frame instead of 8 times per step, the shared prompt prefix, one logit row) has the
  same weight as at full size, and the reference's 64-frame run takes 1 to 5 minutes on 2 CPU cores.
- `glus_s`: the full GLUS-S architecture (LLaMA-7B, CLIP ViT-L/14-224, SAM2 hiera-L at 1024 px).
- `micro`: `tiny` with SAM2 at 256 px, for the benchmark's smoke test.

The LLM vocabulary is 515 (the tiny GLUS tokenizer in tests/golden/tok_glus_tiny: token ids only need to be
consistent between the two sides). `glus_s` counts FLOPs with LLaMA-7B's real 32003-row vocabulary
(`count_vocab`); a run with random weights uses 515 rows, since the tokenizer must match the embedding.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

# The GLUS vendored SAM2 2.0 `sam2_hiera_l.yaml` model node; `sam2_yaml` fills in the sizes.
_SAM2_TEMPLATE: dict[str, Any] = {
    "_target_": "sam2.modeling.sam2_base.SAM2Base",
    "image_encoder": {
        "_target_": "sam2.modeling.backbones.image_encoder.ImageEncoder",
        "scalp": 1,
        "trunk": {"_target_": "sam2.modeling.backbones.hieradet.Hiera"},
        "neck": {
            "_target_": "sam2.modeling.backbones.image_encoder.FpnNeck",
            "position_encoding": {
                "_target_": "sam2.modeling.position_encoding.PositionEmbeddingSine",
                "normalize": True,
                "scale": None,
                "temperature": 10000,
            },
            "fpn_top_down_levels": [2, 3],
            "fpn_interp_model": "nearest",
        },
    },
    "memory_attention": {
        "_target_": "sam2.modeling.memory_attention.MemoryAttention",
        "pos_enc_at_input": True,
        "layer": {
            "_target_": "sam2.modeling.memory_attention.MemoryAttentionLayer",
            "activation": "relu",
            "dropout": 0.1,
            "pos_enc_at_attn": False,
            "self_attention": {
                "_target_": "sam2.modeling.sam.transformer.RoPEAttention",
                "rope_theta": 10000.0,
                "feat_sizes": [32, 32],
                "num_heads": 1,
                "downsample_rate": 1,
                "dropout": 0.1,
            },
            "pos_enc_at_cross_attn_keys": True,
            "pos_enc_at_cross_attn_queries": False,
            "cross_attention": {
                "_target_": "sam2.modeling.sam.transformer.RoPEAttention",
                "rope_theta": 10000.0,
                "feat_sizes": [32, 32],
                "rope_k_repeat": True,
                "num_heads": 1,
                "downsample_rate": 1,
                "dropout": 0.1,
            },
        },
    },
    "memory_encoder": {
        "_target_": "sam2.modeling.memory_encoder.MemoryEncoder",
        "position_encoding": {
            "_target_": "sam2.modeling.position_encoding.PositionEmbeddingSine",
            "normalize": True,
            "scale": None,
            "temperature": 10000,
        },
        "mask_downsampler": {
            "_target_": "sam2.modeling.memory_encoder.MaskDownSampler",
            "kernel_size": 3,
            "stride": 2,
            "padding": 1,
        },
        "fuser": {
            "_target_": "sam2.modeling.memory_encoder.Fuser",
            "layer": {
                "_target_": "sam2.modeling.memory_encoder.CXBlock",
                "kernel_size": 7,
                "padding": 3,
                "layer_scale_init_value": 1e-6,
                "use_dwconv": True,
            },
        },
    },
    "num_maskmem": 7,
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


@dataclasses.dataclass(frozen=True, kw_only=True)
class SAM2Sizes:
    """The sizes a SAM2 2.0 yaml varies between hiera-t and hiera-l (plus the tiny oracle's widths)."""

    image_size: int = 1024
    embed_dim: int = 144  # hiera stage-1 width (doubles per stage)
    num_heads: int = 2
    stages: tuple[int, ...] = (2, 6, 36, 4)
    global_att_blocks: tuple[int, ...] = (23, 33, 43)
    window_spec: tuple[int, ...] = (8, 4, 16, 8)
    d_model: int = 256  # FPN / memory attention / mask decoder / memory encoder input width
    memory_layers: int = 4
    memory_ffn: int = 2048
    mem_dim: int = 64  # memory encoder output (memory attention kv_in_dim)

    def yaml(self) -> dict[str, Any]:
        """The SAM2 yaml (a `{"model": ...}` mapping, as `sam2_hiera_l.yaml` parses) of these sizes."""
        m = copy.deepcopy(_SAM2_TEMPLATE)
        d, e = self.d_model, self.embed_dim
        m["image_size"] = self.image_size
        m["image_encoder"]["trunk"].update(
            embed_dim=e,
            num_heads=self.num_heads,
            stages=list(self.stages),
            global_att_blocks=list(self.global_att_blocks),
            window_pos_embed_bkg_spatial_size=[7, 7],
            window_spec=list(self.window_spec),
        )
        neck = m["image_encoder"]["neck"]
        neck["position_encoding"]["num_pos_feats"] = d
        neck["d_model"] = d
        neck["backbone_channel_list"] = [e * 8, e * 4, e * 2, e]
        ma = m["memory_attention"]
        ma["d_model"], ma["num_layers"] = d, self.memory_layers
        ma["layer"].update(d_model=d, dim_feedforward=self.memory_ffn)
        ma["layer"]["self_attention"]["embedding_dim"] = d
        ma["layer"]["cross_attention"].update(embedding_dim=d, kv_in_dim=self.mem_dim)
        me = m["memory_encoder"]
        me.update(out_dim=self.mem_dim, in_dim=d)
        me["position_encoding"]["num_pos_feats"] = self.mem_dim
        me["mask_downsampler"]["embed_dim"] = d
        me["fuser"]["layer"]["dim"] = d
        me["fuser"]["num_layers"] = 2
        return {"model": m}


@dataclasses.dataclass(frozen=True, kw_only=True)
class BenchConfig:
    name: str
    # LLaMA (HF config.json names)
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    vocab_size: int = 515
    count_vocab: int | None = None  # vocabulary for FLOP counting (None: vocab_size)
    # CLIP vision tower (224 px, patch 14: 64 LLM tokens per frame)
    clip_hidden: int
    clip_mlp: int
    clip_layers: int
    clip_heads: int
    sam2: SAM2Sizes
    # the synthetic video
    frame_size: tuple[int, int] = (240, 320)  # (H, W)
    dtype: str = "float32"  # compute dtype of both sides
    description: str = ""

    @property
    def out_dim(self) -> int:
        return self.sam2.d_model

    def hf_config(self) -> dict[str, Any]:
        """The GLUS config.json (LLaVA-LLaMA fields, as the released checkpoints carry them)."""
        return {
            "_name_or_path": f"GLUS-bench-{self.name}",
            "architectures": ["GLUSForCausalLM"],
            "model_type": "llava",
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": 0,
            "hidden_act": "silu",
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_attention_heads,
            "max_position_embeddings": 2048,
            "rms_norm_eps": 1e-6,
            "rope_scaling": None,
            "tie_word_embeddings": False,
            "vocab_size": self.vocab_size,
            "mm_hidden_size": self.clip_hidden,
            "mm_use_im_patch_token": False,
            "mm_use_im_start_end": True,
            "mm_vision_select_feature": "patch",
            "mm_vision_select_layer": -2,
            "mm_vision_tower": "clip",
            "vision_tower": "clip",
            "out_dim": self.out_dim,
            "use_cache": False,
            "torch_dtype": "float32",
        }

    def clip_config(self) -> dict[str, Any]:
        """The CLIPVisionModel config.json."""
        return {
            "architectures": ["CLIPVisionModel"],
            "model_type": "clip_vision_model",
            "attention_dropout": 0.0,
            "hidden_act": "quick_gelu",
            "hidden_size": self.clip_hidden,
            "intermediate_size": self.clip_mlp,
            "num_hidden_layers": self.clip_layers,
            "num_attention_heads": self.clip_heads,
            "image_size": 224,
            "patch_size": 14,
            "num_channels": 3,
            "layer_norm_eps": 1e-5,
            "projection_dim": self.clip_hidden,
            "initializer_factor": 1.0,
            "initializer_range": 0.02,
        }


TINY = BenchConfig(
    name="tiny",
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    clip_hidden=32,
    clip_mlp=64,
    clip_layers=2,
    clip_heads=2,
    sam2=SAM2Sizes(
        image_size=1024,
        embed_dim=16,
        num_heads=1,
        stages=(1, 1, 2, 1),
        global_att_blocks=(3,),
        window_spec=(8, 4, 14, 7),
        d_model=64,
        memory_layers=2,
        memory_ffn=256,
        mem_dim=32,
    ),
    frame_size=(96, 128),
    description="the oracle's GLUS-tiny architecture (LLaMA 64x2, CLIP 32x2, tiny hiera at 1024 px)",
)

# CPU proxy of GLUS-S: LLaMA 1024 wide x 6 layers, CLIP 320 wide x 3 layers, SAM2 at 448 px (hiera-t-like depths
# (1, 2, 9, 2) at width 64, a 28x28 feature map: memory attention (128 wide) over up to 7 x 784 tokens, 2
# layers). Reference algorithm, 64 frames: about 168 GFLOPs per frame, split CLIP 11 % / LLM 70 % / SAM2 19 %
# (GLUS-S: 10 / 71 / 19), so that the reference's 64-frame run takes over a minute on 2 idle cores. (The hiera
# width is a multiple of 16: XLA:CPU's patch-embedding convolution is 10x slower at widths like 24.)
SMALL = BenchConfig(
    name="small",
    hidden_size=1024,
    intermediate_size=2752,
    num_hidden_layers=6,
    num_attention_heads=16,
    clip_hidden=320,
    clip_mlp=1280,
    clip_layers=3,
    clip_heads=4,
    sam2=SAM2Sizes(
        image_size=448,
        embed_dim=64,
        num_heads=1,
        stages=(1, 2, 9, 2),
        global_att_blocks=(5, 7, 9),
        window_spec=(8, 4, 14, 7),
        d_model=128,
        memory_layers=2,
        memory_ffn=1024,
        mem_dim=64,
    ),
    frame_size=(240, 320),
    description="CPU proxy of GLUS-S (same FLOP split between CLIP, LLM and SAM2 in the reference)",
)

GLUS_S = BenchConfig(
    name="glus_s",
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    count_vocab=32003,
    clip_hidden=1024,
    clip_mlp=4096,
    clip_layers=24,
    clip_heads=16,
    sam2=SAM2Sizes(),
    frame_size=(480, 854),
    dtype="bfloat16",
    description="GLUS-S: LLaMA-7B + CLIP ViT-L/14-224 + SAM2 hiera-L at 1024 px",
)

# The tiny architecture with SAM2 at 256 px and a small frame: the benchmark's smoke test (seconds per run).
MICRO = dataclasses.replace(
    TINY,
    name="micro",
    sam2=dataclasses.replace(TINY.sam2, image_size=256),
    frame_size=(48, 64),
    description="tiny at 256 px (smoke test only)",
)

CONFIGS = {c.name: c for c in (MICRO, TINY, SMALL, GLUS_S)}


def get(name: str) -> BenchConfig:
    if name not in CONFIGS:
        raise ValueError(f"unknown benchmark config {name!r}; known: {', '.join(CONFIGS)}")
    return CONFIGS[name]
