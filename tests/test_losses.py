"""GLUS losses: the oracle's training-forward losses from its dumped arrays, and a PyTorch transcription
of the reference formulas (model/GLUS.py, llava_llama.py specific_ce_loss) on random padded inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F

from glus_jax.train import losses
from tests.conftest import GOLDEN

SEG = 512  # [SEG] id of the oracle's tokenizer


# ----------------------------------------------------------------------------- PyTorch transcription


def _t_dice(inputs, targets, num_masks, scale=1000, eps=1e-6):
    inputs = inputs.sigmoid().flatten(1, 2)
    targets = targets.flatten(1, 2)
    numerator = 2 * (inputs / scale * targets).sum(-1)
    denominator = (inputs / scale).sum(-1) + (targets / scale).sum(-1)
    loss = 1 - (numerator + eps) / (denominator + eps)
    return loss.sum() / (num_masks + 1e-8)


def _t_bce(inputs, targets, num_masks):
    loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    return loss.flatten(1, 2).mean(1).sum() / (num_masks + 1e-8)


def _t_glus_mask_losses(pred_masks, gt_masks, bce_w=2.0, dice_w=0.5):
    """GLUS.py generate_masks' loss loop. pred_masks[f][b] [n_b, H, W]; gt_masks[b] [n_b, F, H, W]."""
    bce, dice, num_masks = 0, 0, 0
    for b in range(len(gt_masks)):
        for f in range(gt_masks[b].shape[1]):
            gt = gt_masks[b][:, f]
            pred = pred_masks[f][b]
            bce += _t_bce(pred, gt, num_masks=gt.shape[0]) * gt.shape[0]
            dice += _t_dice(pred, gt, num_masks=gt.shape[0]) * gt.shape[0]
            num_masks += gt.shape[0]
    return bce_w * bce / (num_masks + 1e-8), dice_w * dice / (num_masks + 1e-8)


def _t_specific_ce(logits, labels, seg):
    shift_logits = logits[..., :-1, :]
    shift_labels = labels[..., 1:]
    m = shift_labels == seg
    return torch.nn.CrossEntropyLoss()(shift_logits[m], shift_labels[m])


def _t_full_ce(logits, labels):
    return torch.nn.CrossEntropyLoss()(
        logits[..., :-1, :].reshape(-1, logits.shape[-1]), labels[..., 1:].reshape(-1)
    )


# ----------------------------------------------------------------------------- golden


def test_oracle_training_losses():
    """loss 3.710733 = ce 2.960498 + bce 0.348965 + dice 0.401270 (train_forward.json), rtol 1e-5."""
    g = np.load(GOLDEN / "data_train_losses.npz")
    # The positions whose next (expanded) label is [SEG] are the oracle's ce_positions.
    rows, cols, valid = losses.seg_prediction_positions(jnp.asarray(g["expanded_labels"]), SEG, 16)
    np.testing.assert_array_equal(np.stack([rows, cols], 1), g["ce_positions"])
    assert bool(valid.all())
    targets = jnp.asarray(g["expanded_labels"])[rows, cols + 1]
    assert (np.asarray(targets) == SEG).all()

    pred = jnp.asarray(g["pred_mask_logits"])  # [B=2, E=2, F=4, 96, 128]
    gt = jnp.asarray(g["gt_masks"], jnp.float32)
    loss_fn = jax.jit(losses.glus_loss)
    loss, m = loss_fn(
        ce_logits=jnp.asarray(g["ce_logits"]),
        ce_targets=targets,
        ce_weights=valid,
        pred_masks=pred,
        gt_masks=gt,
        exp_valid=jnp.ones((2, 2), bool),
    )
    np.testing.assert_allclose(float(m["ce_loss"]), 2.9604976177215576, rtol=1e-5)
    np.testing.assert_allclose(float(m["mask_bce_loss"]), 0.34896543622016907, rtol=1e-5)
    np.testing.assert_allclose(float(m["mask_dice_loss"]), 0.4012700617313385, rtol=1e-5)
    np.testing.assert_allclose(float(m["mask_loss"]), 0.7502354979515076, rtol=1e-5)
    np.testing.assert_allclose(float(loss), 3.71073317527771, rtol=1e-5)
    assert float(m["num_masks"]) == 16

    # Padding contributes nothing: a third, invalid expression with garbage, and 5x7 invalid pixels.
    rng = np.random.default_rng(0)
    pred_p = np.pad(np.asarray(pred), ((0, 0), (0, 1), (0, 0), (0, 5), (0, 7)))
    gt_p = np.pad(np.asarray(gt), ((0, 0), (0, 1), (0, 0), (0, 5), (0, 7)))
    pred_p[:, 2] = rng.normal(size=pred_p[:, 2].shape) * 10
    gt_p[:, 2] = 1.0
    pred_p[..., 96:, :] = 30.0
    pred_p[..., 128:] = -30.0
    gt_p[..., 96:, :] = 1.0
    pix = np.zeros((2, 101, 135), bool)
    pix[:, :96, :128] = True
    ce_pad = np.concatenate([g["ce_logits"], rng.normal(size=(4, 515)).astype(np.float32)])
    loss_p, m_p = loss_fn(
        ce_logits=jnp.asarray(ce_pad),
        ce_targets=jnp.concatenate([targets, jnp.zeros(4, targets.dtype)]),
        ce_weights=jnp.concatenate([valid, jnp.zeros(4, bool)]),
        pred_masks=jnp.asarray(pred_p),
        gt_masks=jnp.asarray(gt_p),
        exp_valid=jnp.array([[True, True, False]] * 2),
        pixel_valid=jnp.asarray(pix),
    )
    for k in ("ce_loss", "mask_bce_loss", "mask_dice_loss", "num_masks"):
        np.testing.assert_allclose(float(m_p[k]), float(m[k]), rtol=1e-6, err_msg=k)
    np.testing.assert_allclose(float(loss_p), 3.71073317527771, rtol=1e-5)


# ----------------------------------------------------------------------------- vs the torch formulas


def test_mask_losses_match_torch_transcription():
    """Samples with 1, 3 and 2 expressions (padded to 3), GT with overlaps (value 2, quirk Q9)."""
    rng = np.random.default_rng(1)
    b, e, f, h, w = 3, 3, 4, 11, 9
    n_exp = [1, 3, 2]
    pred = (rng.normal(size=(b, e, f, h, w)) * 3).astype(np.float32)
    gt = rng.integers(0, 3, size=(b, e, f, h, w)).astype(np.float32)
    gt[0, 0, 1] = 0.0  # an empty GT mask
    valid = np.array([[i < n for i in range(e)] for n in n_exp])

    t_pred = [[torch.from_numpy(pred[bi, : n_exp[bi], fi]) for bi in range(b)] for fi in range(f)]
    t_gt = [torch.from_numpy(gt[bi, : n_exp[bi]]) for bi in range(b)]
    t_bce, t_dice = _t_glus_mask_losses(t_pred, t_gt)

    _, m = jax.jit(losses.glus_loss)(
        ce_logits=jnp.zeros((1, 5)),
        ce_targets=jnp.zeros((1,), jnp.int32),
        ce_weights=jnp.ones((1,)),
        pred_masks=jnp.asarray(pred),
        gt_masks=jnp.asarray(gt),
        exp_valid=jnp.asarray(valid),
    )
    np.testing.assert_allclose(float(m["mask_bce_loss"]), float(t_bce), rtol=1e-5)
    np.testing.assert_allclose(float(m["mask_dice_loss"]), float(t_dice), rtol=1e-5)
    assert float(m["num_masks"]) == sum(n_exp) * f

    # The building blocks on their own.
    x, t = torch.from_numpy(pred[1, :, 2]), torch.from_numpy(gt[1, :, 2])
    jx, jt = jnp.asarray(pred[1, :, 2]), jnp.asarray(gt[1, :, 2])
    bce_fn, dice_fn = jax.jit(losses.sigmoid_ce_loss), jax.jit(losses.dice_loss)
    np.testing.assert_allclose(float(bce_fn(jx, jt, 3)), float(_t_bce(x, t, 3)), rtol=1e-5)
    np.testing.assert_allclose(float(dice_fn(jx, jt, 3)), float(_t_dice(x, t, 3)), rtol=1e-5)
    # valid drops masks from the sum while num_masks stays the caller's
    np.testing.assert_allclose(
        float(dice_fn(jx, jt, 2, valid=jnp.array([1, 0, 1], bool))),
        float(_t_dice(x[[0, 2]], t[[0, 2]], 2)),
        rtol=1e-5,
    )


def test_ce_losses_match_torch_transcription():
    rng = np.random.default_rng(2)
    b, t, v = 3, 17, 23
    seg = 19
    logits = rng.normal(size=(b, t, v)).astype(np.float32) * 2
    labels = rng.integers(0, v, size=(b, t))
    labels[:, :5] = -100
    labels[1, 12:] = -100  # right padding
    labels[0, [6, 9, 16]] = seg
    labels[2, [5, 10]] = seg
    labels[1, 0] = seg  # position 0 is never a target (nothing predicts it)
    tl, tlab = torch.from_numpy(logits), torch.from_numpy(labels)

    ce = jax.jit(losses.lm_ce_loss, static_argnames="seg_token_id")
    spec = ce(jnp.asarray(logits), jnp.asarray(labels), seg_token_id=seg)
    np.testing.assert_allclose(float(spec), float(_t_specific_ce(tl, tlab, seg)), rtol=1e-5)
    full = ce(jnp.asarray(logits), jnp.asarray(labels))
    np.testing.assert_allclose(float(full), float(_t_full_ce(tl, tlab)), rtol=1e-5)

    # gathering the [SEG]-predicting positions first gives the same loss (static size 8 >= 5 positions)
    rows, cols, valid = jax.jit(losses.seg_prediction_positions, static_argnums=(1, 2))(
        jnp.asarray(labels), seg, 8
    )
    assert int(valid.sum()) == 5
    assert sorted(zip(np.asarray(rows)[:5].tolist(), np.asarray(cols)[:5].tolist())) == [
        (0, 5),
        (0, 8),
        (0, 15),
        (2, 4),
        (2, 9),
    ]
    gathered = jax.jit(losses.cross_entropy_loss)(jnp.asarray(logits)[rows, cols], jnp.full((8,), seg), valid)
    np.testing.assert_allclose(float(gathered), float(spec), rtol=1e-6)


def test_loss_gradients_are_finite_and_padding_gets_none():
    rng = np.random.default_rng(3)
    pred = jnp.asarray(rng.normal(size=(2, 3, 4, 7, 5)) * 50, jnp.float32)  # saturated logits
    gt = jnp.asarray(rng.integers(0, 2, size=(2, 3, 4, 7, 5)), jnp.float32)
    valid = jnp.array([[True, False, True], [True, True, False]])

    def f(p):
        loss, _ = losses.glus_loss(
            ce_logits=jnp.zeros((1, 3)),
            ce_targets=jnp.zeros((1,), jnp.int32),
            ce_weights=jnp.ones((1,)),
            pred_masks=p,
            gt_masks=gt,
            exp_valid=valid,
        )
        return loss

    g = jax.jit(jax.grad(f))(pred)
    assert bool(jnp.isfinite(g).all())
    assert float(jnp.abs(g[0, 1]).max()) == 0.0 and float(jnp.abs(g[1, 2]).max()) == 0.0
    assert float(jnp.abs(g[0, 0]).max()) > 0.0


def test_contrastive_term_added_only_when_applied():
    kw = {
        "ce_logits": jnp.zeros((1, 3)),
        "ce_targets": jnp.zeros((1,), jnp.int32),
        "ce_weights": jnp.ones((1,)),
        "pred_masks": jnp.zeros((1, 1, 1, 3, 3)),
        "gt_masks": jnp.zeros((1, 1, 1, 3, 3)),
        "exp_valid": jnp.ones((1, 1), bool),
    }
    fn = jax.jit(losses.glus_loss)
    base, _ = fn(**kw)
    on, m = fn(**kw, contrastive_loss=jnp.float32(0.25), contrastive_applied=jnp.bool_(True))
    off, _ = fn(**kw, contrastive_loss=jnp.float32(0.25), contrastive_applied=jnp.bool_(False))
    np.testing.assert_allclose(float(on), float(base) + 0.25, rtol=1e-6)
    assert float(off) == float(base) and float(m["contrastive_loss"]) == 0.25
