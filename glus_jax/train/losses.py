"""GLUS training losses on static, padded shapes.

Ports the losses of ``model/GLUS.py`` (``dice_loss``, ``sigmoid_ce_loss``, the loss block at the end of
``generate_masks``) and the ``specific_ce_loss`` branch of ``LlavaLlamaForCausalLM.forward``
(model/llava/model/language_model/llava_llama.py):

- CE: ``CrossEntropyLoss`` (mean) over the shifted positions whose *next label* is [SEG] only
  (``specific_ce_loss=True``, quirk Q9); the general form, every label != -100, is available too.
- BCE: per mask, the mean over pixels of ``BCEWithLogits``; dice: ``1 - (2 sum(p t)/s + eps) /
  (sum(p)/s + sum(t)/s + eps)`` with s = 1000, eps = 1e-6, p = sigmoid(logits).
- Per (sample, query frame) with n masks: ``loss_sum / (n + 1e-8) * n``; the sums over samples and
  frames are divided by ``total_masks + 1e-8`` and weighted 2.0 (BCE) and 0.5 (dice); CE weight 1.0.

Everything is padded: expressions by ``exp_valid`` [B, E], optional pixels by ``pixel_valid`` [B, H, W]
(for a batch mixing frame sizes), CE positions by a weight mask. Padding contributes nothing.
GT masks are float targets and may hold 2 where two objects of one expression overlap (Q9): the
formulas are applied to that value as the reference does.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

IGNORE_INDEX = -100
_NORM_EPS = 1e-8  # the reference's ``num_masks + 1e-8``


@dataclasses.dataclass(frozen=True, kw_only=True)
class LossWeights:
    """train_ds.py defaults: --ce_loss_weight 1.0, --bce_loss_weight 2.0, --dice_loss_weight 0.5."""

    ce: float = 1.0
    bce: float = 2.0
    dice: float = 0.5


def _pixel_weights(shape, pixel_valid):
    if pixel_valid is None:
        return jnp.ones(shape[-2:], jnp.float32)
    return pixel_valid.astype(jnp.float32)


def bce_with_logits(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Elementwise BCE-with-logits in float32, torch's stable form: max(x, 0) - x t + log(1 + exp(-|x|))."""
    x = logits.astype(jnp.float32)
    return jnp.maximum(x, 0.0) - x * targets.astype(jnp.float32) + jnp.log1p(jnp.exp(-jnp.abs(x)))


def per_mask_bce(logits: jax.Array, targets: jax.Array, pixel_valid: jax.Array | None = None) -> jax.Array:
    """Mean over pixels of BCE-with-logits: [..., H, W] -> [...]. ``pixel_valid`` broadcasts to [..., H, W]."""
    loss = bce_with_logits(logits, targets)
    w = jnp.broadcast_to(_pixel_weights(loss.shape, pixel_valid), loss.shape)
    return jnp.sum(loss * w, axis=(-2, -1)) / jnp.maximum(jnp.sum(w, axis=(-2, -1)), 1.0)


def per_mask_dice(
    logits: jax.Array,
    targets: jax.Array,
    pixel_valid: jax.Array | None = None,
    scale: float = 1000.0,
    eps: float = 1e-6,
) -> jax.Array:
    """Dice loss per mask: [..., H, W] -> [...] (GLUS.py ``dice_loss`` before its sum / num_masks)."""
    p = jax.nn.sigmoid(logits.astype(jnp.float32))
    t = targets.astype(jnp.float32)
    w = jnp.broadcast_to(_pixel_weights(p.shape, pixel_valid), p.shape)
    p = p * w
    t = t * w
    numerator = 2.0 * jnp.sum(p / scale * t, axis=(-2, -1))
    denominator = jnp.sum(p / scale, axis=(-2, -1)) + jnp.sum(t / scale, axis=(-2, -1))
    return 1.0 - (numerator + eps) / (denominator + eps)


def sigmoid_ce_loss(
    logits: jax.Array,
    targets: jax.Array,
    num_masks: jax.Array | float,
    valid: jax.Array | None = None,
    pixel_valid: jax.Array | None = None,
) -> jax.Array:
    """GLUS.py ``sigmoid_ce_loss``: sum over masks [N, H, W] of the per-mask mean BCE, / (num_masks + 1e-8).
    ``valid`` [N] drops padded masks from the sum."""
    per = per_mask_bce(logits, targets, pixel_valid)
    if valid is not None:
        per = jnp.where(valid, per, 0.0)
    return jnp.sum(per) / (num_masks + _NORM_EPS)


def dice_loss(
    logits: jax.Array,
    targets: jax.Array,
    num_masks: jax.Array | float,
    valid: jax.Array | None = None,
    pixel_valid: jax.Array | None = None,
    scale: float = 1000.0,
    eps: float = 1e-6,
) -> jax.Array:
    """GLUS.py ``dice_loss``: sum over masks [N, H, W] of the per-mask dice loss, / (num_masks + 1e-8)."""
    per = per_mask_dice(logits, targets, pixel_valid, scale, eps)
    if valid is not None:
        per = jnp.where(valid, per, 0.0)
    return jnp.sum(per) / (num_masks + _NORM_EPS)


def next_token_targets(
    labels: jax.Array, *, seg_token_id: int | None = None, ignore_index: int = IGNORE_INDEX
) -> tuple[jax.Array, jax.Array]:
    """Shifted targets of a causal LM: ``targets[:, t] = labels[:, t + 1]`` ([B, T], last position
    ignored) and their weights [B, T] (1 where the target is not ``ignore_index``, and, when
    ``seg_token_id`` is given, only where it is [SEG]: the reference's ``specific_ce_loss``)."""
    targets = jnp.concatenate([labels[:, 1:], jnp.full_like(labels[:, :1], ignore_index)], axis=1)
    keep = targets != ignore_index
    if seg_token_id is not None:
        keep &= targets == seg_token_id
    return jnp.where(keep, targets, 0), keep


def seg_prediction_positions(
    labels: jax.Array, seg_token_id: int, max_positions: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Static-size (rows [N], cols [N], valid [N]) of the positions whose next label is [SEG], in
    row-major order (N = ``max_positions``; extra positions beyond N are dropped, so size it to the
    number of [SEG] answers, rows x query frames). Lets a train step compute LM logits only there."""
    _, keep = next_token_targets(labels, seg_token_id=seg_token_id)
    rows, cols = jnp.nonzero(keep, size=max_positions, fill_value=0)
    valid = jnp.arange(max_positions) < jnp.sum(keep)
    return rows, cols, valid


def cross_entropy_loss(logits: jax.Array, targets: jax.Array, weights: jax.Array) -> jax.Array:
    """Weighted mean CE: logits [..., V], integer targets [...], weights [...] (0 = ignored).

    The mean of ``torch.nn.CrossEntropyLoss`` over the kept positions. Deviation: with no kept position
    torch returns NaN; this returns 0."""
    logits = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    w = weights.astype(jnp.float32)
    return jnp.sum((lse - picked) * w) / jnp.maximum(jnp.sum(w), 1.0)


def expression_word_loss(word_logits: jax.Array, expression_ids: jax.Array, weights: jax.Array) -> jax.Array:
    """Multi-label BCE of which vocabulary tokens an expression contains, read from LM logits.

    word_logits [B, E, Q, V] (at the states before [SEG]), expression_ids [B, E, L] (the expression's token
    ids, negative = none), weights [B, E, Q] (0 = ignored). Mean over the vocabulary, then the weighted
    mean over positions (0 when none is kept). Not in GLUS: an auxiliary loss for an LLM trained from
    scratch, whose state before [SEG] otherwise stops depending on the expression (train.word_weight)."""
    v = word_logits.shape[-1]
    present = jnp.any(expression_ids[..., None] == jnp.arange(v), axis=-2)  # [B, E, V]
    bce = jnp.mean(bce_with_logits(word_logits, present[:, :, None, :]), axis=-1)
    w = weights.astype(jnp.float32)
    return jnp.sum(bce * w) / jnp.maximum(jnp.sum(w), 1.0)


def lm_ce_loss(
    logits: jax.Array, labels: jax.Array, *, seg_token_id: int | None = None, ignore_index: int = IGNORE_INDEX
) -> jax.Array:
    """CE of full LM logits [B, T, V] against unshifted labels [B, T] (-100 = ignore); with
    ``seg_token_id`` only at positions predicting [SEG] (GLUS training)."""
    targets, keep = next_token_targets(labels, seg_token_id=seg_token_id, ignore_index=ignore_index)
    return cross_entropy_loss(logits, targets, keep)


def mask_losses(
    pred_masks: jax.Array,
    gt_masks: jax.Array,
    exp_valid: jax.Array,
    pixel_valid: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Unweighted (bce, dice, num_masks) with GLUS's normalisation.

    pred_masks: mask logits [B, E, F, H, W] at the GT resolution; gt_masks [B, E, F, H, W] (0/1, or 2 on
    overlaps); exp_valid [B, E]; pixel_valid [B, H, W] or None.
    Per sample b and frame f with n_b valid masks: ``sum_e loss / (n_b + 1e-8) * n_b``; summed over b, f,
    then divided by ``sum_b n_b * F + 1e-8``.
    """
    if pred_masks.shape != gt_masks.shape or pred_masks.ndim != 5:
        raise ValueError(f"pred {pred_masks.shape} and gt {gt_masks.shape} must both be [B, E, F, H, W]")
    num_frames = pred_masks.shape[2]
    pv = None if pixel_valid is None else pixel_valid[:, None, None, :, :]
    bce = per_mask_bce(pred_masks, gt_masks, pv)  # [B, E, F]
    dice = per_mask_dice(pred_masks, gt_masks, pv)
    valid = exp_valid.astype(bool)[:, :, None]
    n = jnp.sum(exp_valid.astype(jnp.float32), axis=1)[:, None]  # [B, 1]
    # Per (sample, frame): sigmoid_ce_loss(num_masks=n) * n, as the reference writes it.
    bce_bf = jnp.sum(jnp.where(valid, bce, 0.0), axis=1) / (n + _NORM_EPS) * n  # [B, F]
    dice_bf = jnp.sum(jnp.where(valid, dice, 0.0), axis=1) / (n + _NORM_EPS) * n
    num_masks = jnp.sum(n) * num_frames
    return (
        jnp.sum(bce_bf) / (num_masks + _NORM_EPS),
        jnp.sum(dice_bf) / (num_masks + _NORM_EPS),
        num_masks,
    )


def glus_loss(
    *,
    ce_logits: jax.Array,
    ce_targets: jax.Array,
    ce_weights: jax.Array,
    pred_masks: jax.Array,
    gt_masks: jax.Array,
    exp_valid: jax.Array,
    pixel_valid: jax.Array | None = None,
    contrastive_loss: jax.Array | None = None,
    contrastive_applied: jax.Array | None = None,
    weights: LossWeights = LossWeights(),
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The total GLUS loss and its parts (the dict keys of ``generate_masks``' return value).

    ce_logits [..., V] / ce_targets [...] / ce_weights [...]: either the full shifted LM logits with
    :func:`next_token_targets`, or logits gathered at :func:`seg_prediction_positions`.
    pred_masks / gt_masks [B, E, F, H, W], exp_valid [B, E], pixel_valid [B, H, W] | None: see
    :func:`mask_losses`. ``contrastive_loss`` (already weighted, see train/contrastive.py) is added
    where ``contrastive_applied``.
    """
    ce = cross_entropy_loss(ce_logits, ce_targets, ce_weights) * weights.ce
    bce, dice, num_masks = mask_losses(pred_masks, gt_masks, exp_valid, pixel_valid)
    bce = bce * weights.bce
    dice = dice * weights.dice
    mask = bce + dice
    loss = ce + mask
    metrics = {
        "ce_loss": ce,
        "mask_bce_loss": bce,
        "mask_dice_loss": dice,
        "mask_loss": mask,
        "num_masks": num_masks,
    }
    if contrastive_loss is not None:
        applied = jnp.asarray(True) if contrastive_applied is None else contrastive_applied
        c = jnp.where(applied, contrastive_loss, 0.0)
        loss = loss + c
        metrics["contrastive_loss"] = c
        metrics["contrastive_applied"] = applied
    metrics["loss"] = loss
    return loss, metrics
