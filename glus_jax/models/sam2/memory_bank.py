"""GLUS's memory bank as a fixed-size functional ring buffer (jit / lax.scan friendly).

Reference: `GLUSForCausalLM.get_visual_embs` and the inserts after each mask in `generate_masks` /
`evaluate` (GLUS `model/GLUS.py`), where the bank is a Python dict {frame_id: memory}. Oracle README
quirk Q4 summarises it:

* Selection at frame f (`select_memory_frames`): for t_pos in 0..num_maskmem-1, t_rel =
  num_maskmem - t_pos; t_rel == 1 -> frame f-1, otherwise ((f-2) // r) * r - (t_rel-2) * r with the
  stride r (`mem_stride`: 3 in inference, 1 in training). Negative and absent frames are skipped;
  the memories are concatenated oldest first. The strided frames are distinct multiples of r, all
  below f-1, so no frame is selected twice.
* Memory positions are only the memory encoder's sine PE: NO temporal encoding (`maskmem_tpos_enc`
  is unused), no object pointers, no conditioning frames.
* If nothing is selected (empty bank, first frame), `no_mem_embed` is added to the feature instead
  of running memory attention (`condition_on_memory`).
* The bank is cleared at every new clip / video and whenever rel_pos == 0 (`clear`).

Capacity. Frame f is stored in slot f mod S and a lookup checks the stored frame id, so an overwritten
slot reads as "absent", exactly like a missing dict key. Frames are inserted in increasing order
(GLUS's frame ids are positions in the clip, processed in order). The oldest frame selectable at f is
((f-2)//r)*r - (num_maskmem-2)*r >= f-1 - (num_maskmem-1)*r, reached when (f-2) mod r = r-1; the
newest is f-1. A selectable frame g is lost only if a later frame g + kS <= f-1 was inserted, so
S = (num_maskmem-1)*r + 1 slots (7 for r=1, 19 for r=3) keep every selectable frame, and no smaller
S does (with S = (num_maskmem-1)*r, frame f-1 overwrites the oldest selectable one). See
`bank_capacity`. (Keeping only multiples of r plus the previous frame would need num_maskmem+1 slots,
at the price of a selection-dependent insert policy; the ring is simpler and already O(num_maskmem*r).)

Per-frame step (what GLUS does for query frame f; see `condition_frame` / `encode_frame_memory`):
    embed = condition_frame(sam.memory_attention, sam.no_mem_embed[...], feats, pos, bank, f, stride=r)
    (decode the mask from embed), mem, mem_pos = encode_frame_memory(sam.memory_encoder, embed, logits)
    bank = insert(bank, f, mem, mem_pos)
with `bank = clear(bank)` first when f == 0. All pure, so the loop can be an nnx.scan over frames
(pass the modules as scan operands, not closures).

Layout: features / positions [S, *batch, HW, C_mem] (batch = the expressions sharing this frame; GLUS
concatenates all batch items' memories the same way, so frame validity is shared across the batch).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from glus_jax.models.sam2.memory_encoder import mask_for_memory

NUM_MASKMEM = 7


class MemoryBank(NamedTuple):
    """Fixed-size bank (a pytree). Slot s holds frame `frame_ids[s]` when `valid[s]`.

    features:  [S, *batch, HW, C_mem]  memory-encoder output, flattened raster order
    positions: [S, *batch, HW, C_mem]  its sine position encoding (no temporal encoding)
    frame_ids: [S] int32, -1 for never written
    valid:     [S] bool
    """

    features: jax.Array
    positions: jax.Array
    frame_ids: jax.Array
    valid: jax.Array

    @property
    def capacity(self) -> int:
        return self.frame_ids.shape[0]


def bank_capacity(num_maskmem: int = NUM_MASKMEM, stride: int = 1) -> int:
    """Smallest ring size that keeps every frame `select_memory_frames` can pick: (num_maskmem-1)*r + 1."""
    if num_maskmem < 1 or stride < 1:
        raise ValueError(f"bank_capacity: num_maskmem {num_maskmem} and stride {stride} must be >= 1")
    return (num_maskmem - 1) * stride + 1


def init_bank(
    capacity: int, batch_shape: tuple[int, ...], hw: int, mem_dim: int, dtype=jnp.float32
) -> MemoryBank:
    """An empty bank with `capacity` slots of [*batch_shape, hw, mem_dim]."""
    shape = (capacity, *batch_shape, hw, mem_dim)
    return MemoryBank(
        features=jnp.zeros(shape, dtype),
        positions=jnp.zeros(shape, dtype),
        frame_ids=jnp.full((capacity,), -1, jnp.int32),
        valid=jnp.zeros((capacity,), bool),
    )


def clear(bank: MemoryBank) -> MemoryBank:
    """`clear_mem_bank()`: forget every frame (buffers keep their shape; contents become unreachable)."""
    return bank._replace(frame_ids=jnp.full_like(bank.frame_ids, -1), valid=jnp.zeros_like(bank.valid))


def select_memory_frames(frame_id, num_maskmem: int = NUM_MASKMEM, stride=1) -> tuple[jax.Array, jax.Array]:
    """Frame ids GLUS would look up at `frame_id`, oldest first: (ids [num_maskmem] int32, ids >= 0).

    `frame_id` and `stride` may be traced int scalars. Presence in the bank is checked by `gather`.
    """
    f = jnp.asarray(frame_id, jnp.int32)
    r = jnp.asarray(stride, jnp.int32)
    t_rel = num_maskmem - jnp.arange(num_maskmem, dtype=jnp.int32)  # num_maskmem .. 1
    strided = jnp.floor_divide(f - 2, r) * r - (t_rel - 2) * r  # Python floor division semantics
    ids = jnp.where(t_rel == 1, f - 1, strided)
    return ids, ids >= 0


def insert(bank: MemoryBank, frame_id, features: jax.Array, positions: jax.Array) -> MemoryBank:
    """Store frame `frame_id`'s memory ([*batch, HW, C_mem] each) in slot frame_id mod S.

    Re-inserting a frame id replaces it (GLUS never does this between clears).
    """
    f = jnp.asarray(frame_id, jnp.int32)
    slot = jnp.mod(f, bank.capacity)
    return MemoryBank(
        features=jax.lax.dynamic_update_index_in_dim(
            bank.features, features.astype(bank.features.dtype), slot, 0
        ),
        positions=jax.lax.dynamic_update_index_in_dim(
            bank.positions, positions.astype(bank.positions.dtype), slot, 0
        ),
        frame_ids=bank.frame_ids.at[slot].set(f),
        valid=bank.valid.at[slot].set(True),
    )


class SelectedMemory(NamedTuple):
    """Memories selected for one frame, padded to num_maskmem frames.

    memory, memory_pos: [*batch, num_maskmem * HW, C_mem] (oldest frame first)
    mask:               [num_maskmem * HW] bool, True for tokens of present frames
    frame_ids:          [num_maskmem] int32 selected ids (may be negative)
    present:            [num_maskmem] bool, frame selected and found in the bank
    """

    memory: jax.Array
    memory_pos: jax.Array
    mask: jax.Array
    frame_ids: jax.Array
    present: jax.Array

    @property
    def any(self) -> jax.Array:
        """Whether memory attention runs (else GLUS adds no_mem_embed)."""
        return jnp.any(self.present)


def gather(bank: MemoryBank, frame_id, num_maskmem: int = NUM_MASKMEM, stride=1) -> SelectedMemory:
    """Select GLUS's memory frames for `frame_id` from the bank, as padded keys with a validity mask."""
    ids, ok = select_memory_frames(frame_id, num_maskmem, stride)
    slots = jnp.mod(ids, bank.capacity)
    present = ok & bank.valid[slots] & (bank.frame_ids[slots] == ids)

    def flat(x):  # [K, *batch, HW, C] -> [*batch, K*HW, C]
        x = jnp.moveaxis(x[slots], 0, -3)
        return x.reshape(*x.shape[:-3], -1, x.shape[-1])

    hw = bank.features.shape[-2]
    return SelectedMemory(
        memory=flat(bank.features),
        memory_pos=flat(bank.positions),
        mask=jnp.repeat(present, hw),
        frame_ids=ids,
        present=present,
    )


def condition_on_memory(
    memory_attention,
    curr: jax.Array,
    curr_pos: jax.Array,
    selected: SelectedMemory,
    no_mem_embed: jax.Array,
    *,
    feat_size: tuple[int, int] | None = None,
    dropout_rng: jax.Array | None = None,
) -> jax.Array:
    """GLUS's memory-conditioned top-level feature [B, HW, C] for one frame.

    With any selected memory present: `memory_attention(curr, memory, curr_pos, memory_pos)` over the
    padded, masked bank; otherwise `curr + no_mem_embed` (no_mem_embed [C] or broadcastable to curr).
    curr/curr_pos [B, HW, C]; `selected` from `gather` with batch shape (B,).
    """

    def attend(module, curr, curr_pos, selected, no_mem_embed):
        return module(
            curr,
            selected.memory,
            curr_pos,
            selected.memory_pos,
            memory_mask=selected.mask,
            feat_size=feat_size,
            dropout_rng=dropout_rng,
        ).astype(curr.dtype)

    def no_memory(module, curr, curr_pos, selected, no_mem_embed):
        return curr + jnp.reshape(no_mem_embed, (-1,)).astype(curr.dtype)

    # nnx.cond (not lax.cond): the module is an operand, so this also works inside nnx.jit/nnx.scan.
    # Only the taken branch runs (under vmap both run and are selected, still exact).
    return nnx.cond(selected.any, attend, no_memory, memory_attention, curr, curr_pos, selected, no_mem_embed)


# ----------------------------------------------------------------------- per-frame GLUS step


def condition_frame(
    memory_attention,
    no_mem_embed: jax.Array,
    vision_features: jax.Array,
    vision_pos_enc: jax.Array,
    bank: MemoryBank,
    frame_id,
    *,
    num_maskmem: int = NUM_MASKMEM,
    stride=1,
    dropout_rng: jax.Array | None = None,
) -> jax.Array:
    """GLUS `get_visual_embs` memory part: the image embedding of frame `frame_id`, NHWC.

    vision_features [B, h, w, C] (top FPN level), vision_pos_enc [1|B, h, w, C] (its sine PE),
    no_mem_embed [1, 1, C] (SAM2Model.no_mem_embed[...]); bank with batch shape (B,).
    Returns [B, h, w, C]: memory attention over the selected frames, or + no_mem_embed if none.
    """
    b, h, w, c = vision_features.shape
    curr = vision_features.reshape(b, h * w, c)
    curr_pos = jnp.broadcast_to(vision_pos_enc, (b, h, w, c)).reshape(b, h * w, c)
    selected = gather(bank, frame_id, num_maskmem, stride)
    out = condition_on_memory(
        memory_attention, curr, curr_pos, selected, no_mem_embed, feat_size=(h, w), dropout_rng=dropout_rng
    )
    return out.reshape(b, h, w, c)


def encode_frame_memory(
    memory_encoder,
    image_embed: jax.Array,
    low_res_masks: jax.Array,
    *,
    image_size: int = 1024,
    sigmoid_scale: float = 20.0,
    sigmoid_bias: float = -10.0,
) -> tuple[jax.Array, jax.Array]:
    """GLUS's `_encode_new_memory` call: memory of a frame from its *memory-conditioned* embedding.

    image_embed [B, h, w, C] (`condition_frame`'s output, Q4), low_res_masks [B, 4h, 4w] (the chosen
    decoder mask logits). Returns (features, positions) [B, h*w, C_mem] ready for `insert`.
    Defaults are GLUS's SAM2 yaml values (image_size 1024, sigmoid_scale_for_mem_enc 20,
    sigmoid_bias_for_mem_enc -10); pass SAM2Config's fields.
    """
    mask = mask_for_memory(low_res_masks, image_size, sigmoid_scale=sigmoid_scale, sigmoid_bias=sigmoid_bias)
    feats, pos = memory_encoder(image_embed, mask, skip_mask_sigmoid=True)
    b, h, w, c = feats.shape
    return feats.reshape(b, h * w, c), pos.reshape(b, h * w, pos.shape[-1])
