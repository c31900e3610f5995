"""GLUS: LLaVA (CLIP + LLaMA with a [SEG] token) + SAM2 with GLUS's memory bank.

Ports the model side of GLUS `model/GLUS.py` (`GLUSForCausalLM`): the `text_hidden_fcs` projection
of the [SEG] hidden state, which hidden state that is (quirk Q2: the final-norm state at the
position *before* each [SEG], i.e. the one whose logits predict it), and the per-query-frame SAM2
step over the memory bank (`get_visual_embs` + prompt encoder + mask decoder + `_encode_new_memory`,
quirk Q4). The frame loop is a pure step function run by `lax.scan` over a fixed-size bank; the
inference protocol (prompts, context frames, key frames) lives in `glus_jax/inference/`.

Parameter tree (mirrors the checkpoint names): `llava/{vision_tower, mm_projector, llm}`,
`text_hidden_fcs/{fc1, fc2}`, `visual_model/...` (SAM2Model).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from glus_jax.layers import Linear
from glus_jax.models import llava as llava_lib
from glus_jax.models.llava import Llava, LlavaConfig
from glus_jax.models.sam2 import config as sam2_config
from glus_jax.models.sam2 import memory_attention as mem_attn_lib
from glus_jax.models.sam2 import memory_bank as mb
from glus_jax.models.sam2 import memory_encoder as mem_enc_lib
from glus_jax.models.sam2 import transforms as sam_transforms
from glus_jax.models.sam2.config import SAM2Config
from glus_jax.models.sam2.sam2 import SAM2ImageFeatures, SAM2Model


@dataclasses.dataclass(frozen=True, kw_only=True)
class GLUSConfig:
    llava: LlavaConfig = dataclasses.field(default_factory=llava_lib.glus_7b)
    sam2: SAM2Config = dataclasses.field(default_factory=sam2_config.hiera_l)
    seg_token_id: int = 32000  # "[SEG]" in the LISA/GLUS tokenizer
    context_frames: int = 4
    question_frames: int = 4

    @property
    def out_dim(self) -> int:
        """`text_hidden_fcs` output width = SAM2's prompt dimension (GLUS `--out_dim 256`)."""
        return self.sam2.hidden_dim

    @property
    def tokens_per_image(self) -> int:
        return self.llava.tokens_per_image


def glus_s(**overrides) -> GLUSConfig:
    """GLUS-S / GLUS-A / LISA-7B-v1 architecture: LLaMA-7B + CLIP ViT-L/14-224 + SAM2 hiera-large."""
    return GLUSConfig(**overrides)


def tiny_sam2(image_size: int = 1024, **overrides) -> SAM2Config:
    """The oracle's `sam2_hiera_tiny_oracle.yaml` (sam2_hiera_t with tiny widths), any image size."""
    hiera = sam2_config.HieraConfig(
        embed_dim=16, num_heads=1, stages=(1, 1, 2, 1), global_att_blocks=(3,),
        window_pos_embed_bkg_spatial_size=(7, 7),
    )
    neck = sam2_config.NeckConfig(
        position_encoding=sam2_config.PositionEmbeddingSineConfig(num_pos_feats=64),
        d_model=64,
        backbone_channel_list=hiera.channel_list,
        fpn_top_down_levels=(2, 3),
        fpn_interp_model="nearest",
    )
    base = sam2_config.hiera_t()
    return dataclasses.replace(
        base,
        image_encoder=sam2_config.ImageEncoderConfig(trunk=hiera, neck=neck, scalp=1),
        memory_attention=mem_attn_lib.tiny(),
        memory_encoder=mem_enc_lib.tiny(),
        image_size=image_size,
        **overrides,
    )


def tiny(**overrides) -> GLUSConfig:
    """The oracle's GLUS-tiny: LLaMA 64-wide, CLIP 32-wide, tiny hiera (vocab 515, [SEG] = 512)."""
    return GLUSConfig(**{"llava": llava_lib.tiny(), "sam2": tiny_sam2(), "seg_token_id": 512, **overrides})


def synthetic_world(**overrides) -> GLUSConfig:
    """The synthetic-world GLUS (`presets_synthetic`; imported lazily: it builds on this module)."""
    from glus_jax.models.presets_synthetic import synthetic_world as build

    return build(**overrides)


PRESETS = {"glus_s": glus_s, "tiny": tiny, "synthetic_world": synthetic_world}


class TextHiddenFcs(nnx.Module):
    """`text_hidden_fcs[0]`: Linear(D, D) -> ReLU -> Linear(D, out) -> Dropout(0)."""

    def __init__(self, in_dim: int, out_dim: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.fc1 = Linear(in_dim, in_dim, axes=("llm_embed", None), dtype=dtype, rngs=rngs)
        self.fc2 = Linear(in_dim, out_dim, axes=(None, "sam_embed"), dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(jax.nn.relu(self.fc1(x)))


class GLUS(nnx.Module):
    def __init__(self, cfg: GLUSConfig, *, rngs: nnx.Rngs):
        self.config = cfg
        self.llava = Llava(cfg.llava, rngs=rngs)
        self.text_hidden_fcs = TextHiddenFcs(
            cfg.llava.llama.hidden_size, cfg.out_dim, dtype=jnp.dtype(cfg.llava.llama.dtype), rngs=rngs
        )
        self.visual_model = SAM2Model(cfg.sam2, rngs=rngs)


# ------------------------------------------------------------------------ SAM2 frame step


class FrameOutput(NamedTuple):
    """Per query frame and expression."""

    low_res_logits: jax.Array  # [E, 4h, 4w] the chosen mask logits (blank when no [SEG])
    iou: jax.Array  # [E] predicted IoU of the chosen mask
    object_score: jax.Array  # [E] object-score logit (unused by GLUS, kept for key-frame scoring)


BLANK_LOGIT = -1e4  # a frame without [SEG] gets an all-background mask (the reference's blank mask)


def frame_step_features(
    sam: SAM2Model,
    bank: mb.MemoryBank,
    feats: SAM2ImageFeatures,
    text_embeds: jax.Array,
    seg_ok: jax.Array,
    frame_id: jax.Array,
    *,
    stride: int | jax.Array,
    training: bool = False,
    freeze_memory: bool = True,
    dropout_rng: jax.Array | None = None,
    compact_memory: bool = False,
    image_grad: bool = False,
    memory_frames: int | None = None,
) -> tuple[mb.MemoryBank, FrameOutput]:
    """One query frame of GLUS for E expressions that share the frame (each has its own bank), from
    the frame's image features (`sam.encode_image` of one frame, batch 1): callers run the image trunk
    themselves, batched over frames (inference: a chunk; training: a sample's query frames).

    text_embeds [E, C] (projected [SEG] states), seg_ok [E] (False: the LLM did not emit [SEG]: blank
    mask and no memory, as the reference's fallback), frame_id: position of the frame in the clip (bank
    cleared at 0; memory selection by stride). bank: batch shape (E,) per slot entry, i.e. features
    [slots, E, HW, C_mem]. With freeze_memory the memories are stored under stop-gradient (GLUS runs
    memory under no_grad), and so is the attended image embedding unless image_grad.

    compact_memory: attend only to the memory frames present, as the reference does (`lax.switch`
    over the count, one compiled branch per count), instead of to every slot of the padded bank
    with the absent ones masked. Same result; up to num_maskmem times less memory-attention work on
    the first frames of a clip. For a scan over frames (inference): under `vmap` a switch runs every
    branch.
    memory_frames: a static bound from a caller that knows the frame id statically (the training
    forward): only the newest `memory_frames` selected frames can be present (`gather` lists them
    oldest first; the older ids are negative), so attention runs over those alone, and not at all
    when 0. Works under `vmap`."""
    cfg = sam.cfg
    bank = jax.lax.cond(frame_id == 0, mb.clear, lambda b: b, bank)
    e = text_embeds.shape[0]
    _, h, w, c = feats.vision_features.shape
    curr = jnp.broadcast_to(feats.vision_features.reshape(1, h * w, c), (e, h * w, c))
    curr_pos = jnp.broadcast_to(feats.vision_pos_enc.reshape(1, h * w, c), (e, h * w, c))

    # Memory attention per expression over its own padded bank; an expression with no usable
    # memory gets `+ no_mem_embed` instead (computed for all, selected per expression).
    selected = jax.vmap(lambda b: mb.gather(b, frame_id, cfg.num_maskmem, stride))(_bank_per_expression(bank))
    if memory_frames is not None:
        selected = _newest_frames(selected, memory_frames, h * w)
    has_memory = jnp.any(selected.present, axis=-1)
    if memory_frames == 0:
        attended = curr
    elif compact_memory:
        attended = _attend_compact(sam, curr, curr_pos, selected, (h, w), dropout_rng)
    else:
        def attend(sam, curr, curr_pos, selected):
            return sam.memory_attention(
                curr,
                selected.memory[:, 0],
                curr_pos,
                selected.memory_pos[:, 0],
                memory_mask=selected.mask,
                feat_size=(h, w),
                dropout_rng=dropout_rng,
            ).astype(curr.dtype)

        # Skipped when no expression has memory (the first frame of a clip). nnx.cond: the module
        # is an operand (modules may not be closed over inside jit / scan bodies).
        attended = nnx.cond(jnp.any(has_memory), attend, lambda sam, curr, *_: curr, sam, curr, curr_pos, selected)
    no_mem = curr + sam.no_mem_embed[...].reshape(-1).astype(curr.dtype)
    image_embed = jnp.where(has_memory[:, None, None], attended, no_mem).reshape(e, h, w, c)
    if freeze_memory and not image_grad:
        image_embed = jax.lax.stop_gradient(image_embed)

    high_res = tuple(jnp.broadcast_to(x, (e, *x.shape[1:])) for x in feats.high_res_feats)
    out = sam.decode(image_embed, high_res, text_embeds=text_embeds, training=training)
    low = out.masks[:, 0]

    mem_feats, mem_pos = mb.encode_frame_memory(
        sam.memory_encoder,
        image_embed,
        jax.lax.stop_gradient(low) if freeze_memory else low,
        image_size=cfg.image_size,
        sigmoid_scale=cfg.sigmoid_scale_for_mem_enc,
        sigmoid_bias=cfg.sigmoid_bias_for_mem_enc,
    )
    if freeze_memory:
        mem_feats, mem_pos = jax.lax.stop_gradient(mem_feats), jax.lax.stop_gradient(mem_pos)
    new_bank = _insert_where(bank, frame_id, mem_feats, mem_pos, seg_ok)
    low = jnp.where(seg_ok[:, None, None], low, BLANK_LOGIT)
    return new_bank, FrameOutput(low, out.iou_pred[:, 0], out.object_score_logits[:, 0])


def _attend_compact(sam: SAM2Model, curr, curr_pos, selected: mb.SelectedMemory, feat_size, dropout_rng):
    """Memory attention over the present memory frames only: they are moved to the front (keeping
    their oldest-first order, the reference's concatenation order), and branch n of a switch attends
    to the first n frames (n = the most any expression has; an expression with fewer keeps its
    extra frames masked). Branch 0 (no memory anywhere) returns `curr` unchanged."""
    e, hw, _ = curr.shape
    k = selected.present.shape[-1]
    cm = selected.memory.shape[-1]
    order = jnp.argsort(~selected.present, axis=-1, stable=True)  # [E, K]: present frames first
    valid = jnp.take_along_axis(selected.present, order, axis=-1)

    def frames(x):  # [E, 1, K*HW, Cm] -> [E, K, HW, Cm], present frames first
        return jnp.take_along_axis(x[:, 0].reshape(e, k, hw, cm), order[:, :, None, None], axis=1)

    memory, memory_pos = frames(selected.memory), frames(selected.memory_pos)

    def branch(n):
        def attend(sam, curr, curr_pos, memory, memory_pos, valid):
            if n == 0:
                return curr
            mask = None if e == 1 else jnp.repeat(valid[:, :n], hw, axis=1)  # one expression: all valid
            return sam.memory_attention(
                curr,
                memory[:, :n].reshape(e, n * hw, cm),
                curr_pos,
                memory_pos[:, :n].reshape(e, n * hw, cm),
                memory_mask=mask,
                feat_size=feat_size,
                dropout_rng=dropout_rng,
            ).astype(curr.dtype)

        return attend

    count = jnp.max(jnp.sum(selected.present, axis=-1))
    return nnx.switch(count, [branch(n) for n in range(k + 1)], sam, curr, curr_pos, memory, memory_pos, valid)


def _newest_frames(selected: mb.SelectedMemory, n: int, hw: int) -> mb.SelectedMemory:
    """The newest n of the selected memory frames (the last n: `gather` orders them oldest first)."""
    k = selected.present.shape[-1]
    if not 0 <= n <= k:
        raise ValueError(f"memory_frames {n} must be in [0, {k}]")
    tokens = slice((k - n) * hw, None)
    return mb.SelectedMemory(
        memory=selected.memory[..., tokens, :],
        memory_pos=selected.memory_pos[..., tokens, :],
        mask=selected.mask[..., tokens],
        frame_ids=selected.frame_ids[..., k - n :],
        present=selected.present[..., k - n :],
    )


def _bank_per_expression(bank: mb.MemoryBank) -> mb.MemoryBank:
    """[slots, E, ...] features -> [E, slots, 1, ...] so `gather` runs per expression under vmap,
    with per-expression validity ([E, slots])."""
    return mb.MemoryBank(
        features=jnp.moveaxis(bank.features, 1, 0)[:, :, None],
        positions=jnp.moveaxis(bank.positions, 1, 0)[:, :, None],
        frame_ids=bank.frame_ids,
        valid=bank.valid,
    )


def _insert_where(bank: mb.MemoryBank, frame_id, feats, pos, ok) -> mb.MemoryBank:
    """Insert frame `frame_id`'s memory for the expressions where `ok` [E] (per-expression validity)."""
    f = jnp.asarray(frame_id, jnp.int32)
    slot = jnp.mod(f, bank.features.shape[0])  # not bank.capacity: ids are [E, slots] here
    keep_f = bank.features[slot]
    keep_p = bank.positions[slot]
    sel = ok[:, None, None]
    return mb.MemoryBank(
        features=bank.features.at[slot].set(jnp.where(sel, feats.astype(keep_f.dtype), keep_f)),
        positions=bank.positions.at[slot].set(jnp.where(sel, pos.astype(keep_p.dtype), keep_p)),
        frame_ids=bank.frame_ids.at[:, slot].set(jnp.where(ok, f, bank.frame_ids[:, slot])),
        valid=bank.valid.at[:, slot].set(jnp.where(ok, True, bank.valid[:, slot])),
    )


def init_bank(cfg: SAM2Config, num_expressions: int, stride: int, dtype=jnp.float32) -> mb.MemoryBank:
    """An empty bank for E expressions: features [slots, E, HW, C_mem], ids/validity [E, slots]."""
    slots = mb.bank_capacity(cfg.num_maskmem, stride)
    hw = cfg.image_embedding_size**2
    bank = mb.init_bank(slots, (num_expressions,), hw, cfg.mem_dim, dtype)
    return bank._replace(
        frame_ids=jnp.full((num_expressions, slots), -1, jnp.int32),
        valid=jnp.zeros((num_expressions, slots), bool),
    )


def sam_preprocess(frames: jax.Array, image_size: int) -> jax.Array:
    """uint8 frames [..., H, W, 3] -> SAM2 pixels [..., S, S, 3] (SAM2Transforms)."""
    lead = frames.shape[:-3]
    x = sam_transforms.preprocess(frames.reshape(-1, *frames.shape[-3:]), image_size)
    return x.reshape(*lead, *x.shape[1:])


def upsample_logits(low_res: jax.Array, size: tuple[int, int]) -> jax.Array:
    """[..., h, w] low-res logits -> [..., H, W] (`postprocess_masks`: bilinear, align_corners=False)."""
    lead = low_res.shape[:-2]
    x = low_res.reshape(-1, 1, *low_res.shape[-2:])
    return sam_transforms.postprocess_masks(x, size).reshape(*lead, *size)
