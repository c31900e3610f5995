"""SAM2Model: the `SAM2Base` parameter container and its image-side entry points.

Holds, under PyTorch's attribute names (so the parameter tree reads like the state dict):
  image_encoder, sam_prompt_encoder, sam_mask_decoder, memory_attention, memory_encoder,
  and the top-level parameters no_mem_embed [1, 1, C], no_mem_pos_enc [1, 1, C],
  maskmem_tpos_enc [num_maskmem, 1, 1, C_mem], plus, depending on flags, mask_downsample (4x4/4 conv),
  no_obj_ptr [1, C], obj_ptr_proj (MLP or Linear), obj_ptr_tpos_proj (Linear).
GLUS uses only no_mem_embed of these (oracle README Q4: no temporal encoding, no object pointers),
but a checkpoint carries all of them, so they exist here and conversion stays strict.

Entry points (all jit-able; shapes static):
  encode_image(pixels [B, S, S, 3]) -> SAM2ImageFeatures   (SAM2Base.forward_image +
      _prepare_backbone_features: conv_s0 / conv_s1 applied once per frame)
  decode(image_embed, high_res_feats, text_embeds=..., ...) -> MaskDecoderOutput
      (GLUS's `sam_prompt_encoder(points=None, boxes=None, masks=None, text_embeds)` followed by
      `sam_mask_decoder(..., multimask_output=False, repeat_image=False)`)
  add_no_mem_embed(vision_features): the empty-memory-bank conditioning.
Memory methods (memory attention over the bank, memory encoding) are added by the memory side.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from glus_jax.layers import Linear
from glus_jax.models.sam2.config import SAM2Config
from glus_jax.models.sam2.image_encoder import ImageEncoder
from glus_jax.models.sam2.mask_decoder import MaskDecoder, MaskDecoderOutput
from glus_jax.models.sam2.memory_attention import MemoryAttention
from glus_jax.models.sam2.memory_encoder import MemoryEncoder
from glus_jax.models.sam2.prompt_encoder import PromptEncoder
from glus_jax.models.sam2.sam2_utils import MLP, conv2d
from glus_jax.sharding import with_axes


class SAM2ImageFeatures(NamedTuple):
    """Per-frame image features (what GLUS computes once per frame and caches)."""

    vision_features: jax.Array  # [B, h, w, C] top-level FPN feature (stride 16), before any memory
    vision_pos_enc: jax.Array  # [1, h, w, C] its sine position encoding (batch-independent)
    high_res_feats: tuple[
        jax.Array, ...
    ]  # (s0 [B, 4h, 4w, C/8], s1 [B, 2h, 2w, C/4]) after conv_s0/s1; () without high-res


def _trunc_normal(std: float):
    # torch.nn.init.trunc_normal_(std=std) truncates at +-2 (absolute), i.e. +-2/std sigmas for std 0.02.
    def init(key, shape, dtype=jnp.float32):
        return std * jax.random.truncated_normal(key, -2.0 / std, 2.0 / std, shape, dtype)

    return init


class SAM2Model(nnx.Module):
    def __init__(self, cfg: SAM2Config, *, rngs: nnx.Rngs):
        """`cfg.dtype` is the compute dtype of every SAM2 part (it overrides the sub-configs' own
        `dtype`, which only matters when a part is built standalone). Params are float32."""
        self.cfg = cfg
        c, mem = cfg.hidden_dim, cfg.mem_dim
        ie = cfg.image_encoder
        ie = dataclasses.replace(ie, trunk=dataclasses.replace(ie.trunk, dtype=cfg.dtype))
        self.image_encoder = ImageEncoder(ie, rngs=rngs)
        self.sam_prompt_encoder = PromptEncoder(cfg.prompt_encoder, rngs=rngs)
        self.sam_mask_decoder = MaskDecoder(cfg.mask_decoder, rngs=rngs)
        self.memory_attention = MemoryAttention(
            dataclasses.replace(cfg.memory_attention, dtype=cfg.dtype), rngs=rngs
        )
        self.memory_encoder = MemoryEncoder(
            dataclasses.replace(cfg.memory_encoder, dtype=cfg.dtype), rngs=rngs
        )

        def free(shape, axes):
            return nnx.Param(with_axes(_trunc_normal(0.02), axes)(rngs.params(), shape, jnp.float32))

        self.maskmem_tpos_enc = free((cfg.num_maskmem, 1, 1, mem), (None, None, None, None))
        self.no_mem_embed = free((1, 1, c), (None, None, "sam_embed"))
        self.no_mem_pos_enc = free((1, 1, c), (None, None, "sam_embed"))
        use_ptrs = cfg.use_obj_ptrs_in_encoder
        self.mask_downsample = conv2d(1, 1, 4, stride=4, out_axis=None, rngs=rngs) if use_ptrs else None
        self.no_obj_ptr = free((1, c), (None, "sam_embed")) if (cfg.pred_obj_scores and use_ptrs) else None
        if not use_ptrs:
            self.obj_ptr_proj = None  # nn.Identity in the reference
        elif cfg.use_mlp_for_obj_ptr_proj:
            self.obj_ptr_proj = MLP(c, c, c, 3, rngs=rngs)
        else:
            self.obj_ptr_proj = Linear(c, c, axes=("sam_embed", "sam_embed"), rngs=rngs)
        self.obj_ptr_tpos_proj = (
            Linear(c, mem, axes=("sam_embed", None), rngs=rngs) if cfg.proj_tpos_enc_in_obj_ptrs else None
        )

    # ------------------------------------------------------------------------- image side

    def encode_image(self, pixels: jax.Array) -> SAM2ImageFeatures:
        """pixels [B, S, S, 3] (`transforms.preprocess` output, S = image_size) -> SAM2ImageFeatures."""
        cfg = self.cfg
        if pixels.ndim != 4 or pixels.shape[-1] != 3:
            raise ValueError(f"SAM2Model.encode_image expects NHWC pixels [B, S, S, 3], got {pixels.shape}")
        out = self.image_encoder(pixels)
        fpn, pos = out.backbone_fpn, out.vision_pos_enc
        if cfg.use_high_res_features_in_sam:
            dec = self.sam_mask_decoder
            # SAM2Base.forward_image: project levels 0 and 1 once here, not on every decoder call.
            high_res = (dec.conv_s0(fpn[0]), dec.conv_s1(fpn[1]))
        else:
            high_res = ()
        return SAM2ImageFeatures(vision_features=fpn[-1], vision_pos_enc=pos[-1], high_res_feats=high_res)

    def add_no_mem_embed(self, vision_features: jax.Array) -> jax.Array:
        """Empty memory bank (`directly_add_no_mem_embed`): [B, h, w, C] + no_mem_embed."""
        return vision_features + self.no_mem_embed[...][0, 0].astype(vision_features.dtype)

    def decode(
        self,
        image_embed: jax.Array,
        high_res_feats: tuple[jax.Array, ...] = (),
        *,
        text_embeds: jax.Array | None = None,
        points: tuple[jax.Array, jax.Array] | None = None,
        boxes: jax.Array | None = None,
        mask_inputs: jax.Array | None = None,
        multimask_output: bool = False,
        training: bool = False,
    ) -> MaskDecoderOutput:
        """Prompt encoder + mask decoder on a (memory-conditioned) image embedding [B, h, w, C].

        GLUS: `text_embeds` [B, D] (or [B, T, D]) only, multimask_output=False, training=False at
        inference (dynamic multimask via stability) and True in training (token 0; quirk Q5).
        mask_inputs: [B, 4h, 4w, 1] logits at the prompt encoder's mask_input_size.
        Returns low-res logits [B, M, 4h, 4w], IoUs [B, M], tokens, object-score logits [B, 1].
        """
        sparse, dense = self.sam_prompt_encoder(
            points=points, boxes=boxes, masks=mask_inputs, text_embeds=text_embeds
        )
        return self.sam_mask_decoder(
            image_embed,
            self.sam_prompt_encoder.get_dense_pe(),
            sparse,
            dense,
            multimask_output=multimask_output,
            high_res_features=tuple(high_res_feats) if high_res_feats else None,
            training=training,
        )
