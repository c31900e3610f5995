"""The GLUS training forward and its losses, on the static-shape batches of `glus_jax.data.pipeline`.

Ports `GLUSForCausalLM.generate_masks` (GLUS `model/GLUS.py`, training branch) as `train_ds.py` runs it:

1. LLM. Every conversation of a sample (one per expression, E rows, padded rows masked) goes through
   LLaVA in one padded batch: CLIP -> 1x4 token pooling -> `mm_projector` for the sample's C+Q frames,
   each row's `<image>` placeholders take the sample's frames in order (the reference's block repeat of
   `images_clip`, quirk Q9), LLaMA with the reference's expanded attention mask. Full vocabulary logits
   are never formed: the only positions any loss reads are the Q positions per row whose *next* token
   is [SEG]. Their final-norm hidden states give (a) the CE logits (`specific_ce_loss`, Q9) and (b) the
   [SEG] embeddings after `text_hidden_fcs` (quirk Q2: the state *before* [SEG]).
2. SAM2. Per sample, its Q query frames go in order through the memory bank (`glus.frame_step_features`,
   stride 1, bank cleared at frame 0, memories detached as the reference's `.detach()` / `torch.no_grad()`)
   in an unrolled loop whose memory attention covers only the memories that can exist at each frame
   (`sam_forward`); all E expressions of a sample share the frame and each has its own bank. The decoder runs
   in training mode (token 0, quirk Q5), prompted with the expression's [SEG] embedding of that frame.
3. Losses. The low-res logits are upsampled to each sample's true frame size (bilinear,
   align_corners=False, as `postprocess_masks(orig_hw=label.shape)`) inside the padded [Hm, Wm] canvas by
   per-sample interpolation matrices built from the traced `orig_size`; padded pixels are masked. BCE,
   dice and CE as `train.losses.glus_loss`; the [SEG] contrastive loss against the bank
   (`train.contrastive`), MeViS samples only.

Data parallelism as the reference does it. DeepSpeed computes the loss of each GPU's micro-batch (its
`batch_size` samples: CE mean over that micro-batch's [SEG] positions, mask losses normalised by its mask
count, its own contrastive bank) and averages the gradients over GPUs and accumulation steps. Here the
global batch is cut into *groups* of `group_size` samples (= `train.batch_size`, the per-device batch);
each group gets exactly that per-micro-batch loss and its own contrastive bank, and the total is the mean
over groups. So the result does not depend on how the batch is laid out over devices or processes.

Shapes: B samples, G = B / group_size groups, E expressions, C context / Q query frames, T tokens, T' the
spliced length T + (F - 1)(C + Q), F tokens per image, D LLM width, V vocabulary, C_p prompt width,
h x w low-res mask, Hm x Wm padded mask canvas, S SAM2 input size.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from glus_jax.models import glus as glus_lib
from glus_jax.models.glus import GLUS
from glus_jax.models.sam2 import memory_bank as mb
from glus_jax.models.sam2.sam2 import SAM2ImageFeatures
from glus_jax.train import contrastive as contrastive_lib
from glus_jax.train import losses as losses_lib

Batch = Mapping[str, jax.Array]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ForwardOptions:
    """What differs between the reference's training forward and an evaluation-like one.

    mem_stride: GLUS trains with the default `mem_stride=1`.
    lora_dropout / mem_attn_dropout: the stochastic ops of `model.train()` (LoRA dropout 0.05 on the
      adapters' inputs; SAM2 memory-attention dropout 0.1). Both only act when a dropout key is given.
      The oracle's training forward ran memory attention in eval mode (`memory_attention.eval()`), so
      the golden test turns them off.
    image_grad: let gradients into SAM2's image encoder and through the memory path (GLUS computes
      them under no_grad; for training SAM2 from scratch, e.g. the synthetic world).
    ce_trains_llm: let the [SEG] CE loss train the LLM below `lm_head` (GLUS: yes). The CE is read at
      the very state that prompts SAM2 (Q2) and its target is always [SEG]; in an LLM trained from
      scratch it pulls that state to one constant for every expression (the prompts collapse), so the
      synthetic world trains only `lm_head` with it.
    """

    mem_stride: int = 1
    lora_dropout: bool = True
    mem_attn_dropout: bool = True
    image_grad: bool = False
    ce_trains_llm: bool = True


class ForwardOutput(NamedTuple):
    """The training forward of a batch (float32 except where noted)."""

    seg_embeds: jax.Array  # [B, E, Q, C_p] text_hidden_fcs of the state before each [SEG] (Q2)
    seg_found: jax.Array  # [B, E, Q] bool: the row has a q-th [SEG] (False on padded rows)
    seg_positions: jax.Array  # [B, E, Q] int32 spliced position whose state / logits are used
    ce_logits: jax.Array  # [B, E, Q, V] LM logits there (they predict [SEG])
    # [B, E, Q, V] the same logits with gradients into the LLM also when the CE's stop there
    # (ce_trains_llm=False): the expression-word loss reads them. Unused, XLA drops them.
    word_logits: jax.Array
    low_res_logits: jax.Array  # [B, E, Q, h, w] mask decoder output (token 0), BLANK on padded rows


# ------------------------------------------------------------------------------------------ LLM side


def _seg_rows(input_ids: jax.Array, token_pos: jax.Array, seg_token_id: int, q: int):
    """Per row [R, T]: the spliced positions (token_pos - 1) of the first q [SEG] tokens, and whether each
    exists. The reference's seg_token_mask construction picks exactly these rows (Q2)."""
    is_seg = input_ids == seg_token_id
    idx = jax.vmap(lambda m: jnp.nonzero(m, size=q, fill_value=0)[0])(is_seg)  # [R, q]
    found = jnp.arange(q)[None, :] < jnp.sum(is_seg, axis=1, keepdims=True)
    pos = jnp.take_along_axis(token_pos, idx, axis=1) - 1
    return jnp.where(found, pos, 0).astype(jnp.int32), found


def llm_forward(
    model: GLUS, batch: Batch, *, dropout_rng: jax.Array | None = None, ce_trains_llm: bool = True
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
    """(seg_embeds [B, E, Q, C_p], ce_logits [B, E, Q, V], word_logits [B, E, Q, V], positions [B, E, Q],
    found [B, E, Q]). ce_trains_llm: see `ForwardOptions`; word_logits: see `ForwardOutput`."""
    cfg = model.config
    ids = batch["input_ids"]
    b, e, t = ids.shape
    clip = batch["clip_pixels"]  # [B, K, 224, 224, 3], K = C + Q
    k = clip.shape[1]
    q = cfg.question_frames
    feats = model.llava.encode_images(clip.reshape(b * k, *clip.shape[2:]))
    f = feats.shape[1]
    feats = feats.reshape(b, k, f, feats.shape[-1])
    # Row (b, e) takes sample b's frames in order: the reference's block repeat of images_clip.
    row_feats = jnp.repeat(feats, e, axis=0)  # [B*E, K, F, D]
    rows = ids.reshape(b * e, t)
    spliced = model.llava.embed_multimodal(
        rows,
        row_feats,
        max_len=t + (f - 1) * k,
        attention_mask=batch["attention_mask"].reshape(b * e, t),
    )
    hidden, _ = model.llava.llm.model(
        inputs_embeds=spliced.inputs_embeds,
        attention_mask=spliced.attention_mask,
        positions=spliced.positions,
        dropout_rng=dropout_rng,
    )
    pos, found = _seg_rows(rows, spliced.token_pos, cfg.seg_token_id, q)
    h = jnp.take_along_axis(hidden, pos[..., None], axis=1)  # [B*E, Q, D]
    seg = model.text_hidden_fcs(h).astype(jnp.float32)
    word_logits = model.llava.llm.logits(h)
    logits = word_logits if ce_trains_llm else model.llava.llm.logits(jax.lax.stop_gradient(h))
    found = found & batch["exp_valid"].reshape(b * e)[:, None]
    return (
        seg.reshape(b, e, q, -1),
        logits.reshape(b, e, q, -1),
        word_logits.reshape(b, e, q, -1),
        pos.reshape(b, e, q),
        found.reshape(b, e, q),
    )


# ----------------------------------------------------------------------------------------- SAM2 side


def memory_frame_counts(num_frames: int, num_maskmem: int, stride: int) -> tuple[int, ...]:
    """For each query frame f < num_frames of a clip (bank cleared at frame 0): how many of the
    frames GLUS selects as memory (`select_memory_frames`) exist, i.e. are >= 0. They are the newest
    ones of the selection, so memory attention at frame f needs only those (static per frame)."""
    with jax.ensure_compile_time_eval():
        counts = []
        for f in range(num_frames):
            ids, ok = mb.select_memory_frames(f, num_maskmem, stride)
            n = int(jnp.sum(ok))
            if not bool(jnp.all(ok[num_maskmem - n :])):  # gather's order: oldest (negative) first
                raise AssertionError(f"frame {f}: existing memory frames {ids} are not the newest")
            counts.append(n)
    return tuple(counts)


def sam_forward(
    model: GLUS,
    sam_pixels: jax.Array,
    seg_embeds: jax.Array,
    seg_ok: jax.Array,
    *,
    mem_stride: int = 1,
    dropout_rng: jax.Array | None = None,
    image_grad: bool = False,
) -> jax.Array:
    """Low-res mask logits [B, E, Q, h, w] of the query frames sam_pixels [B, Q, S, S, 3] prompted by
    seg_embeds [B, E, Q, C_p]; seg_ok [B, E] (padded expressions: blank, no memory).

    Per sample: the image encoder on its Q frames at once (under stop-gradient unless `image_grad`, as
    GLUS runs it under no_grad), then the frames in order through the memory bank. The frame loop is
    unrolled (Q = 4 static steps, each of a different shape): at query frame f at most
    `memory_frame_counts(...)[f]` memories exist (0, 1, 2, 3 at stride 1), so memory attention runs
    over those slots only instead of all num_maskmem (7) with the absent ones masked, and not at all
    at frame 0. Same result, and at SAM2's 1024 px the attention logits [E, 4096, n x 4096] of the
    7-slot bank dominated memory (XLA temp of a GLUS-tiny train step, 2 samples x 3 expressions at
    1024 px: 22.1 GB with the padded bank in a scan, 8.5 GB unrolled). (A scan would need one static
    bank width for all frames; under the vmap over samples a `lax.switch` over the count would run
    every branch.)"""
    sam_graph, sam_state = nnx.split(model.visual_model)
    cfg = model.config.sam2
    _, e, q, _ = seg_embeds.shape
    counts = memory_frame_counts(q, cfg.num_maskmem, mem_stride)

    def one_sample(sam_state, pixels, text, ok, key):
        sam = nnx.merge(sam_graph, sam_state)
        feats = sam.encode_image(pixels)  # [Q, ...]
        if not image_grad:
            feats = jax.tree.map(jax.lax.stop_gradient, feats)
        bank = glus_lib.init_bank(cfg, e, mem_stride)
        low = []
        for f in range(q):
            frame = SAM2ImageFeatures(
                vision_features=feats.vision_features[f : f + 1],
                vision_pos_enc=feats.vision_pos_enc,  # [1, h, w, C]: the same for every frame
                high_res_feats=tuple(x[f : f + 1] for x in feats.high_res_feats),
            )
            bank, out = glus_lib.frame_step_features(
                sam, bank, frame, text[:, f], ok, f,
                stride=mem_stride, training=True, freeze_memory=True,
                dropout_rng=None if key is None else jax.random.fold_in(key, f),
                image_grad=image_grad, memory_frames=counts[f],
            )
            low.append(out.low_res_logits)
        return jnp.stack(low, axis=1)  # [E, Q, h, w]

    keys = None if dropout_rng is None else jax.random.split(dropout_rng, sam_pixels.shape[0])
    return jax.vmap(one_sample, in_axes=(None, 0, 0, 0, None if keys is None else 0))(
        sam_state, sam_pixels, seg_embeds, seg_ok, keys
    )


def forward(
    model: GLUS,
    batch: Batch,
    *,
    options: ForwardOptions = ForwardOptions(),
    dropout_rng: jax.Array | None = None,
) -> ForwardOutput:
    """The GLUS training forward of one (micro-)batch (module docstring). `dropout_rng` None = no
    dropout anywhere (deterministic, as the golden run)."""
    lora_key = sam_key = None
    if dropout_rng is not None:
        lora_key, sam_key = jax.random.split(dropout_rng)
        lora_key = lora_key if options.lora_dropout else None
        sam_key = sam_key if options.mem_attn_dropout else None
    seg, logits, word_logits, pos, found = llm_forward(
        model, batch, dropout_rng=lora_key, ce_trains_llm=options.ce_trains_llm
    )
    low = sam_forward(
        model,
        batch["sam_pixels"],
        seg,
        batch["exp_valid"].astype(bool),
        mem_stride=options.mem_stride,
        dropout_rng=sam_key,
        image_grad=options.image_grad,
    )
    return ForwardOutput(seg, found, pos, logits, word_logits, low)


# -------------------------------------------------------------------------------------------- losses


def bilinear_matrix(out_size: jax.Array, in_size: int, max_size: int) -> jax.Array:
    """[max_size, in_size] float32: rows < out_size are `F.interpolate(bilinear, align_corners=False)`
    from in_size to the (traced) out_size, in PyTorch's float32 arithmetic; rows beyond are zero."""
    f32 = jnp.float32
    dst = jnp.arange(max_size, dtype=f32)
    scale = f32(in_size) / jnp.asarray(out_size).astype(f32)
    src = jnp.maximum(scale * (dst + f32(0.5)) - f32(0.5), f32(0.0))
    i0 = jnp.minimum(jnp.floor(src).astype(jnp.int32), in_size - 1)
    i1 = jnp.minimum(i0 + 1, in_size - 1)
    l1 = src - i0.astype(f32)
    cols = jnp.arange(in_size)
    w = (1.0 - l1)[:, None] * (cols[None, :] == i0[:, None]) + l1[:, None] * (cols[None, :] == i1[:, None])
    return jnp.where(dst[:, None] < out_size, w, 0.0).astype(f32)


def upsample_to_canvas(
    low_res: jax.Array, orig_size: jax.Array, canvas: tuple[int, int]
) -> tuple[jax.Array, jax.Array]:
    """low_res [B, ..., h, w] -> (logits [B, ..., Hm, Wm] at each sample's true size orig_size [B, 2] in the
    top-left corner, pixel_valid [B, Hm, Wm])."""
    h, w = low_res.shape[-2:]
    hm, wm = canvas
    my = jax.vmap(lambda s: bilinear_matrix(s, h, hm))(orig_size[:, 0])  # [B, Hm, h]
    mx = jax.vmap(lambda s: bilinear_matrix(s, w, wm))(orig_size[:, 1])  # [B, Wm, w]
    x = low_res.astype(jnp.float32)
    hi = jax.lax.Precision.HIGHEST  # exact resampling also where float32 matmuls default to bf16 passes
    x = jnp.einsum("b...hw,bWw->b...hW", x, mx, precision=hi)
    x = jnp.einsum("b...hW,bHh->b...HW", x, my, precision=hi)
    valid = (jnp.arange(hm)[None, :, None] < orig_size[:, 0, None, None]) & (
        jnp.arange(wm)[None, None, :] < orig_size[:, 1, None, None]
    )
    return x, valid


@dataclasses.dataclass(frozen=True, kw_only=True)
class LossOptions:
    """train.* settings of the loss (defaults: train_ds.py / GLUS-S)."""

    weights: losses_lib.LossWeights = losses_lib.LossWeights()
    contrastive: bool = True
    contrastive_weight: float = contrastive_lib.WEIGHT
    contrastive_tau: float = contrastive_lib.TAU
    num_negatives: int = contrastive_lib.NUM_NEGATIVES
    # Datasets (by batch `dataset_id`) whose [SEG] embeddings enter the contrastive bank: the reference
    # banks and queries MeViS only.
    contrastive_datasets: tuple[bool, ...] = (True,)
    # Not in GLUS (0 = off): weight of `losses.expression_word_loss`, the state before each [SEG] naming
    # its expression's tokens through lm_head (batch "expression_ids").
    word_weight: float = 0.0


def group_losses(
    out: ForwardOutput,
    batch: Batch,
    bank: contrastive_lib.SegTokenBank,
    rng: jax.Array,
    *,
    seg_token_id: int,
    options: LossOptions = LossOptions(),
) -> tuple[jax.Array, dict[str, jax.Array], contrastive_lib.SegTokenBank]:
    """The reference's loss of one micro-batch (one group: all B samples of `out` / `batch`) and its
    contrastive bank after this batch. Returns (loss, metrics, bank)."""
    b, e, q = out.seg_found.shape
    canvas = batch["gt_masks"].shape[-2:]
    pred, pixel_valid = upsample_to_canvas(out.low_res_logits, batch["orig_size"], canvas)
    exp_valid = batch["exp_valid"].astype(bool)
    contrastive = applied = None
    if options.contrastive:
        banked = jnp.asarray(options.contrastive_datasets, bool)[batch["dataset_id"]]  # [B]
        valid = (out.seg_found & exp_valid[:, :, None] & banked[:, None, None]).reshape(-1)
        # Order of the reference's appends and queries: sample, expression, frame.
        bank, contrastive, applied = contrastive_lib.update_and_loss(
            bank,
            out.seg_embeds.reshape(b * e * q, -1),
            batch["seg_keys"].reshape(b * e * q, -1),
            valid,
            rng,
            tau=options.contrastive_tau,
            weight=options.contrastive_weight,
            num_negatives=options.num_negatives,
        )
    loss, metrics = losses_lib.glus_loss(
        ce_logits=out.ce_logits,
        ce_targets=jnp.full(out.seg_found.shape, seg_token_id, jnp.int32),
        ce_weights=out.seg_found,
        pred_masks=pred,
        gt_masks=batch["gt_masks"],
        exp_valid=exp_valid,
        pixel_valid=pixel_valid,
        contrastive_loss=contrastive,
        contrastive_applied=applied,
        weights=options.weights,
    )
    if options.word_weight:
        word = options.word_weight * losses_lib.expression_word_loss(
            out.word_logits, batch["expression_ids"], out.seg_found
        )
        loss = loss + word
        metrics = {**metrics, "word_loss": word, "loss": loss}
    return loss, metrics, bank


def split_groups(tree, num_groups: int):
    """Leading batch axis B -> [G, B / G] on every leaf."""

    def one(x):
        if x.shape[0] % num_groups:
            raise ValueError(f"batch of {x.shape[0]} does not split into {num_groups} groups")
        return x.reshape(num_groups, x.shape[0] // num_groups, *x.shape[1:])

    return jax.tree.map(one, tree)


def forward_and_loss(
    model: GLUS,
    batch: Batch,
    banks: contrastive_lib.SegTokenBank,
    rng: jax.Array,
    *,
    forward_options: ForwardOptions = ForwardOptions(),
    loss_options: LossOptions = LossOptions(),
    dropout: bool = True,
) -> tuple[jax.Array, dict[str, jax.Array], contrastive_lib.SegTokenBank, ForwardOutput]:
    """The training forward of one micro-batch and the mean over groups of the per-group loss (module
    docstring). banks: the contrastive banks, leading axis G (the number of groups); rng: this
    micro-batch's key (dropout when `dropout`, contrastive draws).
    Returns (loss, metrics averaged over groups, new banks, forward output)."""
    num_groups = banks.ptr.shape[0]
    k_drop, k_con = jax.random.split(rng)
    out = forward(model, batch, options=forward_options, dropout_rng=k_drop if dropout else None)
    per_group = jax.vmap(
        lambda o, bt, bank, key: group_losses(
            o, bt, bank, key, seg_token_id=model.config.seg_token_id, options=loss_options
        )
    )
    keys = jax.random.split(k_con, num_groups)
    groups_out, groups_batch = split_groups(out, num_groups), split_groups(dict(batch), num_groups)
    loss, metrics, banks = per_group(groups_out, groups_batch, banks, keys)
    metrics = {k: jnp.mean(v.astype(jnp.float32)) for k, v in metrics.items()}
    metrics["seg_cos"] = seg_cosine(out.seg_embeds, out.seg_found)  # seg_found is False on padded rows
    return jnp.mean(loss), metrics, banks, out


def seg_cosine(seg_embeds: jax.Array, valid: jax.Array) -> jax.Array:
    """Mean cosine between the [SEG] embeddings [B, E, Q, C] of different expressions of one sample at
    the same query frame (valid [B, E, Q]). A health metric of grounding: near 1 the prompts do not
    depend on the expression (a collapsed LLM), so every expression of a video gets the same mask."""
    x = seg_embeds.astype(jnp.float32)
    x = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-8)
    sims = jnp.einsum("beqc,bfqc->bqef", x, x)
    e = x.shape[1]
    v = jnp.swapaxes(valid, 1, 2)  # [B, Q, E]
    pair = v[..., :, None] & v[..., None, :] & (jnp.arange(e)[:, None] < jnp.arange(e)[None, :])
    return jnp.sum(jnp.where(pair, sims, 0.0)) / jnp.maximum(jnp.sum(pair), 1)


def batch_loss(model: GLUS, batch: Batch, banks: contrastive_lib.SegTokenBank, rng: jax.Array, **kwargs):
    """`forward_and_loss` shaped for `jax.value_and_grad(has_aux=True)`: (loss, (metrics, banks))."""
    loss, metrics, banks, _ = forward_and_loss(model, batch, banks, rng, **kwargs)
    return loss, (metrics, banks)
