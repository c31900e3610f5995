"""SAM2 image side vs the original GLUS run on the tiny oracle checkpoint (tests/golden/sam2_*).

Weights: tests/golden/sam2_visual_model.safetensors (image side) + mem_weights.safetensors (memory
side), i.e. every `model.visual_model.*` tensor of GLUS-tiny, converted with the GLUS prefix and the
oracle's own yaml. Inputs/expectations are described in tests/golden/sam2_make_golden.py.
Tolerances (oracle README section 7): features 1e-4 x scale, mask logits 1e-3 absolute, IoUs and
scores 1e-4; the dynamic multimask decision must be identical.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

from glus_jax.models.sam2.config import from_yaml
from glus_jax.models.sam2.mask_decoder import stability_scores
from glus_jax.models.sam2.sam2 import SAM2Model
from glus_jax.models.sam2.transforms import postprocess_masks, preprocess
from tests.conftest import GOLDEN
from tools.convert_weights.sam2 import GLUS_PREFIX, convert_sam2


@pytest.fixture(scope="module")
def golden():
    return dict(np.load(GOLDEN / "sam2_image.npz"))


@pytest.fixture(scope="module")
def model():
    cfg = from_yaml(GOLDEN / "sam2_hiera_tiny_oracle.yaml")
    weights = {
        **load_file(str(GOLDEN / "sam2_visual_model.safetensors")),
        **load_file(str(GOLDEN / "mem_weights.safetensors")),
    }
    m = nnx.eval_shape(lambda: SAM2Model(cfg, rngs=nnx.Rngs(0)))
    convert_sam2(weights, cfg, m, prefix=GLUS_PREFIX)  # strict: every key used, every param filled
    return m


@pytest.fixture(scope="module")
def features(model, golden):
    graphdef, state = nnx.split(model)

    @jax.jit
    def encode(state, frames):
        return nnx.merge(graphdef, state).encode_image(preprocess(frames))

    return encode(state, jnp.asarray(golden["frames_rgb"][:1]))


def test_preprocess_matches_sam2_transforms(golden):
    x = np.asarray(jax.jit(preprocess)(jnp.asarray(golden["frames_rgb"])), np.float64)
    assert x.shape == (3, 1024, 1024, 3)
    np.testing.assert_allclose(
        x[:, ::16, ::16].transpose(0, 3, 1, 2), golden["sam_input_stride16"], atol=1e-5
    )
    np.testing.assert_allclose(x.mean(axis=(1, 2)), golden["sam_input_mean"], atol=1e-5)
    np.testing.assert_allclose(x.std(axis=(1, 2), ddof=1), golden["sam_input_std"], atol=1e-5)


def _check_feature(ours, ref_slice, ref_chan_sum, slicer, what):
    ours = np.asarray(ours, np.float64)[0].transpose(2, 0, 1)  # -> [C, H, W] like the oracle
    scale = max(1.0, np.abs(ref_slice).max())
    err = np.abs(ours[slicer] - ref_slice).max()
    assert err <= 1e-4 * scale, f"{what}: max abs diff {err:.3g} (scale {scale:.3g})"
    n = ours.shape[1] * ours.shape[2]
    np.testing.assert_allclose(
        ours.sum((1, 2)) / n, ref_chan_sum / n, atol=1e-5 * scale, err_msg=f"{what} channel means"
    )


def test_image_features(features, golden):
    f = features
    assert f.vision_features.shape == (1, 64, 64, 64)
    assert f.vision_pos_enc.shape == (1, 64, 64, 64)
    assert [h.shape for h in f.high_res_feats] == [(1, 256, 256, 8), (1, 128, 128, 16)]
    _check_feature(
        f.vision_features,
        golden["vision_slice"],
        golden["vision_chan_sum"],
        np.s_[:, 1::3, 1::3],
        "vision_features",
    )
    _check_feature(
        f.high_res_feats[0],
        golden["s0_slice"],
        golden["s0_chan_sum"],
        np.s_[:, 1::7, 1::7],
        "high_res_feat_s0",
    )
    _check_feature(
        f.high_res_feats[1], golden["s1_slice"], golden["s1_chan_sum"], np.s_[:, ::5, ::5], "high_res_feat_s1"
    )


def test_decode_step0_dynamic_multimask(model, features, golden):
    """Inference step 0: empty bank (+ no_mem_embed), text prompt, eval-mode dynamic multimask."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, feats, text):
        m = nnx.merge(graphdef, state)
        embed = m.add_no_mem_embed(feats.vision_features)
        out = m.decode(embed, feats.high_res_feats, text_embeds=text, multimask_output=False, training=False)
        sparse, dense = m.sam_prompt_encoder(text_embeds=text)
        every = m.sam_mask_decoder.predict_masks(
            embed, m.sam_prompt_encoder.get_dense_pe(), sparse, dense, feats.high_res_feats
        )
        return out, every

    out, every = run(state, features, jnp.asarray(golden["text_embeds"])[None])
    ious = np.asarray(every.iou_pred)[0]
    np.testing.assert_allclose(ious, golden["iou_predictions_all4"], atol=1e-4)
    stab = float(stability_scores(every.masks[:, 0], 0.05)[0])
    assert abs(stab - float(golden["stability_score_token0"])) < 1e-4
    np.testing.assert_allclose(
        np.asarray(out.object_score_logits)[0, 0], golden["object_score_logit"], atol=1e-4
    )
    # The decision: token 0 is not stable (0.83 < 0.98), so the best multimask token by IoU (token 2).
    assert not bool(golden["stable_token0"]) and stab < 0.98
    chosen = 1 + int(np.argmax(ious[1:]))
    assert chosen == 1 + int(np.argmax(golden["iou_predictions_all4"][1:])) == 2
    low = np.asarray(out.masks)
    assert low.shape == (1, 1, 256, 256)
    np.testing.assert_array_equal(low[0, 0], np.asarray(every.masks)[0, chosen])
    np.testing.assert_allclose(low[0, 0], golden["low_res_mask_logits"], atol=1e-3)
    np.testing.assert_allclose(float(np.asarray(out.iou_pred)[0, 0]), ious[chosen], atol=0)
    pred = np.asarray(jax.jit(postprocess_masks, static_argnums=1)(out.masks, (96, 128)))
    np.testing.assert_allclose(pred[0, 0], golden["pred_mask_logits"], atol=1e-3)


def test_decode_train_mode_token0(model, features, golden):
    """Training forward, sample 0 / question frame 0 (= video frame 0, empty bank), two expressions:
    the decoder in train mode always returns token 0 (quirk Q5)."""
    graphdef, state = nnx.split(model)
    text = jnp.asarray(golden["train_text_embeds"])
    n = text.shape[0]

    @jax.jit
    def run(state, feats, text):
        m = nnx.merge(graphdef, state)
        embed = m.add_no_mem_embed(feats.vision_features)

        def rep(x):  # one frame, n expressions
            return jnp.broadcast_to(x, (n,) + x.shape[1:])

        out = m.decode(
            rep(embed), tuple(rep(h) for h in feats.high_res_feats), text_embeds=text, training=True
        )
        return out, postprocess_masks(out.masks, (96, 128))

    out, pred = run(state, features, text)
    np.testing.assert_allclose(
        np.asarray(out.masks)[:, 0, ::2, ::2], golden["train_low_res_slice"], atol=1e-3
    )
    np.testing.assert_allclose(np.asarray(pred)[:, 0], golden["train_pred_mask_logits"], atol=1e-3)
