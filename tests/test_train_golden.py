"""The training forward against the original GLUS's own training forward (oracle README section 6).

The oracle ran `GLUSForCausalLM.generate_masks` in train mode (memory-attention dropout off, no LoRA) on a
batch its own `HybridDataset` + `collate_fn` built from the MeViS-layout video: 2 samples x 2 expressions,
4 context + 4 query frames, 1024 px SAM2 input, 96x128 frames. We rebuild that batch in the pipeline's
static layout (frames decoded from tests/golden/data_video, the oracle's token ids, GT masks placed in a
*larger* padded canvas so the masking of padded pixels is exercised), run the converted GLUS-tiny through
`train.forward.forward_and_loss` (the function the train step differentiates) and compare:
[SEG] embeddings and CE logits (atol 1e-4), the spliced [SEG] rows (exact), mask logits at the original
size (atol 1e-3) and every loss (rtol 1e-5). One group of 2 samples = the oracle's per-GPU micro-batch.
"""

from __future__ import annotations

import cv2
import jax
import numpy as np
import pytest
from flax import nnx

from glus_jax.data import image_ops
from glus_jax.models.clip import clip_preprocess
from glus_jax.train import forward as forward_lib
from glus_jax.train.state import init_banks
from tests.golden_model import GOLDEN, convert_glus_tiny

LOSS_NAMES = ("loss", "ce_loss", "mask_bce_loss", "mask_dice_loss")
CANVAS = (101, 131)  # padded mask canvas; the frames are 96 x 128


@pytest.fixture(scope="module")
def golden():
    return {
        "conv": np.load(GOLDEN / "conv_train_forward.npz"),
        "data": np.load(GOLDEN / "data_train_losses.npz"),
        "train": np.load(GOLDEN / "train_forward.npz"),
    }


def _frames():
    folder = GOLDEN / "data_video" / "mevis" / "train" / "JPEGImages" / "v0"
    decode = [cv2.imread(str(folder / f"{i:05d}.jpg")) for i in range(10)]
    return np.stack([cv2.cvtColor(x, cv2.COLOR_BGR2RGB) for x in decode])


def _batch(golden):
    conv, data = golden["conv"], golden["data"]
    frames, fi = _frames(), data["frame_indices"]
    b, e = 2, 2  # offset [0, 2, 4]: rows 0-1 are sample 0
    gt = np.zeros((b, e, 4, *CANVAS), np.uint8)
    gt[..., :96, :128] = data["gt_masks"]
    return {
        "input_ids": conv["input_ids"].reshape(b, e, -1).astype(np.int32),
        "attention_mask": conv["attention_masks"].reshape(b, e, -1),
        "exp_valid": np.ones((b, e), bool),
        "clip_pixels": np.stack([clip_preprocess(frames[fi[i]]) for i in range(b)]),
        "sam_pixels": np.stack([image_ops.sam_preprocess(frames[fi[i, 4:]], 1024) for i in range(b)]),
        "gt_masks": gt,
        "orig_size": np.asarray([[96, 128]] * b, np.int32),
        "seg_keys": np.zeros((b, e, 4, 5), np.int32),
        "dataset_id": np.zeros((b,), np.int32),
    }


@pytest.fixture(scope="module")
def result(golden, tmp_path_factory):
    # The oracle loaded GLUS-tiny with transformers 4.31 (fuser gammas left at 1e-6, quirk Q1).
    model, _, _ = convert_glus_tiny(tmp_path_factory.mktemp("glus"), load_fuser_gamma=False)
    graphdef, state = nnx.split(model)
    batch = _batch(golden)

    @jax.jit
    def run(state, batch):
        m = nnx.merge(graphdef, state)
        loss, metrics, _, out = forward_lib.forward_and_loss(
            m,
            batch,
            init_banks(1, 64, 8),
            jax.random.PRNGKey(0),
            loss_options=forward_lib.LossOptions(contrastive=False),
            dropout=False,  # the oracle's forward had no stochastic op
        )
        pred, valid = forward_lib.upsample_to_canvas(out.low_res_logits, batch["orig_size"], CANVAS)
        return loss, metrics, out, pred, valid

    return jax.device_get(run(state, batch))


def test_seg_embeddings_and_ce_logits(result, golden):
    _, _, out, _, _ = result
    g, d = golden["train"], golden["data"]
    assert out.seg_found.all()
    np.testing.assert_array_equal(out.seg_positions.reshape(4, 4), g["seg_positions_expanded"])
    np.testing.assert_allclose(out.seg_embeds.reshape(4, 4, 64),
                               g["seg_embeddings"], atol=1e-4, rtol=0)
    # CE rows: (conversation row, position) in row-major order = ours flattened (sample, expression, frame).
    rows = np.repeat(np.arange(4), 4)
    np.testing.assert_array_equal(d["ce_positions"], np.stack([rows, out.seg_positions.reshape(-1)], 1))
    np.testing.assert_allclose(out.ce_logits.reshape(16, -1), d["ce_logits"], atol=1e-4, rtol=0)


def test_mask_logits_at_original_size(result, golden):
    _, _, _, pred, valid = result
    want = golden["data"]["pred_mask_logits"]  # [sample, expression, frame, 96, 128]
    assert pred.shape == (2, 2, 4, *CANVAS)
    np.testing.assert_allclose(pred[..., :96, :128], want, atol=1e-3, rtol=0)
    assert valid[:, :96, :128].all() and not valid[:, 96:].any() and not valid[:, :, 128:].any()


def test_losses(result, golden):
    loss, metrics, _, _, _ = result
    want = dict(zip(LOSS_NAMES, golden["train"]["losses"]))
    np.testing.assert_allclose(float(loss), want["loss"], rtol=1e-5)
    for name in LOSS_NAMES:
        np.testing.assert_allclose(float(metrics[name]), want[name], rtol=1e-5, err_msg=name)
    assert float(metrics["num_masks"]) == 16
