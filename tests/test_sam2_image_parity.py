"""SAM2 image side vs the PyTorch `sam2` package on tiny random configs (float32).

The package is SAM 2.1; on the image side it equals GLUS's vendored SAM2 2.0 except for GLUS's
`text_embeds` prompt, which `GlusPromptEncoder` below adds the way GLUS's prompt_encoder.py does
(appended to the sparse prompt after points and boxes). Every tolerance: max abs diff <= 1e-5 x the
output's max magnitude (at least 1).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx
from sam2.modeling.backbones import hieradet as t_hieradet
from sam2.modeling.backbones import image_encoder as t_image_encoder
from sam2.modeling.position_encoding import PositionEmbeddingSine as TPositionEmbeddingSine
from sam2.modeling.sam.mask_decoder import MaskDecoder as TMaskDecoder
from sam2.modeling.sam.prompt_encoder import PromptEncoder as TPromptEncoder
from sam2.modeling.sam.transformer import TwoWayTransformer as TTwoWayTransformer

from glus_jax.models.sam2.config import (
    HieraConfig,
    ImageEncoderConfig,
    MaskDecoderConfig,
    NeckConfig,
    PositionEmbeddingSineConfig,
    PromptEncoderConfig,
)
from glus_jax.models.sam2.hieradet import Hiera, block_segments
from glus_jax.models.sam2.image_encoder import FpnNeck, ImageEncoder
from glus_jax.models.sam2.mask_decoder import MaskDecoder, stability_scores
from glus_jax.models.sam2.position_encoding import PositionEmbeddingSine
from glus_jax.models.sam2.prompt_encoder import PromptEncoder
from glus_jax.models.sam2.sam2_utils import conv_transpose2d
from glus_jax.models.sam2.transforms import postprocess_masks, preprocess, resize_weights
from tools.convert_weights.engine import conv_transpose_flip
from tools.convert_weights.sam2 import convert_part

torch.manual_seed(0)


def assert_close(ours, ref, what, rel=1e-5):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} != {ref.shape}"
    scale = max(1.0, float(np.abs(ref).max()))
    err = float(np.abs(ours - ref).max())
    assert err <= rel * scale, f"{what}: max abs diff {err:.3g} > {rel:g} x scale {scale:.3g}"


def randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter and buffer non-trivial values (norm weights != 1, biases != 0, pos embeds
    != 0), so a port that drops or swaps any of them fails."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in list(module.named_parameters()) + list(module.named_buffers()):
            if p.ndim <= 1:
                base = 1.0 if name.endswith("weight") else 0.0
                p.copy_(base + 0.2 * torch.randn(p.shape, generator=g))
            elif (
                p.ndim == 2
                and ("token" in name or "embed" in name)
                or "pos_embed" in name
                or "gaussian" in name
            ):
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            else:
                fan_in = p[0].numel() if p.ndim > 1 else 1
                p.copy_(torch.randn(p.shape, generator=g) / fan_in**0.5)
    module.requires_grad_(False)
    return module.eval()


def abstract(ctor):
    """Build one of our modules without running its random initialisers (each new parameter shape
    would compile an init kernel); every parameter is then filled by the strict conversion."""
    return nnx.eval_shape(ctor)


def sd_numpy(module: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy() for k, v in module.state_dict().items()}


def jit_call(module: nnx.Module, *args, method: str = "__call__", **kwargs):
    """module.method(*args) under one jax.jit (eager nnx calls dispatch op by op: slow)."""
    graphdef, state = nnx.split(module)

    @jax.jit
    def run(state, args):
        m = nnx.merge(graphdef, state)
        if method == "trunk_and_encoder":  # both from one compiled program
            return m.trunk(*args), m(*args)
        return getattr(m, method)(*args, **kwargs)

    return run(state, args)


def nchw(x) -> np.ndarray:
    return np.asarray(x).transpose(0, 3, 1, 2)


def nhwc(t: torch.Tensor) -> jax.Array:
    return jnp.asarray(t.detach().numpy().transpose(0, 2, 3, 1))


# Tiny Hiera: widths 6/12/24/48, stage sizes with a 2-block scanned segment, a global block, a window
# that needs padding (6 on an 8x10 map, 2 on 4x5), a non-square background embedding (5x7 -> 32x40).
TRUNK = HieraConfig(
    embed_dim=6,
    num_heads=1,
    stages=(2, 2, 4, 2),
    global_att_blocks=(5,),
    window_pos_embed_bkg_spatial_size=(5, 7),
    window_spec=(8, 4, 6, 2),
)


def torch_hiera(cfg: HieraConfig) -> t_hieradet.Hiera:
    return t_hieradet.Hiera(
        embed_dim=cfg.embed_dim,
        num_heads=cfg.num_heads,
        q_pool=cfg.q_pool,
        q_stride=cfg.q_stride,
        stages=cfg.stages,
        dim_mul=cfg.dim_mul,
        head_mul=cfg.head_mul,
        window_pos_embed_bkg_spatial_size=cfg.window_pos_embed_bkg_spatial_size,
        window_spec=cfg.window_spec,
        global_att_blocks=cfg.global_att_blocks,
    )


def torch_neck(cfg: NeckConfig) -> t_image_encoder.FpnNeck:
    pe = cfg.position_encoding
    return t_image_encoder.FpnNeck(
        position_encoding=TPositionEmbeddingSine(
            pe.num_pos_feats, temperature=pe.temperature, normalize=pe.normalize, scale=pe.scale
        ),
        d_model=cfg.d_model,
        backbone_channel_list=list(cfg.backbone_channel_list),
        fpn_interp_model=cfg.fpn_interp_model,
        fuse_type=cfg.fuse_type,
        fpn_top_down_levels=None if cfg.fpn_top_down_levels is None else list(cfg.fpn_top_down_levels),
    )


# ------------------------------------------------------------------------------- resampling


@pytest.mark.parametrize(
    "n_in,n_out",
    [
        (7, 256),
        (14, 64),
        (5, 24),
        (7, 13),
        (24, 7),
        (256, 96),
        (256, 128),
        (96, 1024),
        (1280, 1024),
        (1000, 333),
        (1, 5),
    ],
)
def test_resize_weights_match_f_interpolate(n_in, n_out):
    x = torch.eye(n_in, dtype=torch.float32).reshape(n_in, 1, 1, n_in)  # one-hot rows

    def ref(**kw):
        return F.interpolate(x, size=(1, n_out), **kw).reshape(n_in, n_out).T.numpy()

    for mode, kw, ours in [
        ("bilinear", {"mode": "bilinear", "align_corners": False}, resize_weights(n_in, n_out, "bilinear")),
        ("bicubic", {"mode": "bicubic", "align_corners": False}, resize_weights(n_in, n_out, "bicubic")),
        (
            "aa",
            {"mode": "bilinear", "align_corners": False, "antialias": True},
            resize_weights(n_in, n_out, "bilinear", antialias=True),
        ),
        ("nearest", {"mode": "nearest"}, resize_weights(n_in, n_out, "nearest")),
    ]:
        np.testing.assert_allclose(ours, ref(**kw), atol=1e-6, err_msg=mode)


@pytest.mark.parametrize("hw", [(37, 53), (150, 90)])
def test_preprocess_matches_sam2_transforms(hw):
    """ToTensor, Resize((S, S)), Normalize. torchvision's Resize on tensors is
    F.interpolate(bilinear, align_corners=False, antialias=True) (torchvision is not installed here)."""
    rgb = np.random.default_rng(1).integers(0, 256, (2, *hw, 3), dtype=np.uint8)
    t = torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 255.0
    t = F.interpolate(t, size=(64, 64), mode="bilinear", align_corners=False, antialias=True)
    t = (t - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / torch.tensor([0.229, 0.224, 0.225])[
        :, None, None
    ]
    assert_close(preprocess(jnp.asarray(rgb), resolution=64), t.numpy().transpose(0, 2, 3, 1), "preprocess")


def test_postprocess_masks_matches_interpolate():
    logits = torch.randn(2, 3, 16, 16) * 5
    ref = F.interpolate(logits, (11, 23), mode="bilinear", align_corners=False)
    assert_close(postprocess_masks(jnp.asarray(logits.numpy()), (11, 23)), ref.numpy(), "postprocess_masks")


def test_conv_transpose_flip():
    t = torch.nn.ConvTranspose2d(5, 3, kernel_size=2, stride=2)
    x = torch.randn(2, 5, 3, 4)
    m = conv_transpose2d(5, 3, 2, stride=2, rngs=nnx.Rngs(0))
    m.kernel[...] = conv_transpose_flip(t.weight.detach().numpy())
    m.bias[...] = t.bias.detach().numpy()
    assert_close(nchw(m(nhwc(x))), t(x).detach().numpy(), "ConvTranspose2d")


def test_position_embedding_sine():
    for n, h, w in [(16, 7, 5), (64, 64, 64)]:
        ref = TPositionEmbeddingSine(n)(torch.zeros(1, 1, h, w)).numpy()
        assert_close(nchw(PositionEmbeddingSine(n)(h, w)), ref, f"sine PE {h}x{w}")


# -------------------------------------------------------------------------------- trunk + neck


@pytest.mark.parametrize(
    "neck_kw",
    [
        {"fpn_top_down_levels": (2, 3), "fpn_interp_model": "nearest"},
        {"fpn_top_down_levels": None, "fpn_interp_model": "bilinear", "fuse_type": "avg"},
    ],
)
def test_fpn_neck_parity(neck_kw):
    cfg = NeckConfig(
        position_encoding=PositionEmbeddingSineConfig(num_pos_feats=12),
        d_model=12,
        backbone_channel_list=(48, 24, 12, 6),
        **neck_kw,
    )
    ref_model = randomize(torch_neck(cfg))
    ours = abstract(lambda: FpnNeck(cfg, rngs=nnx.Rngs(0)))
    convert_part(sd_numpy(ref_model), ours, "neck")
    # Highest resolution first, as the trunk returns them: 32x40 (6 ch) ... 4x5 (48 ch).
    xs = [torch.randn(2, c, 32 >> i, 40 >> i) for i, c in enumerate(reversed(cfg.backbone_channel_list))]
    with torch.no_grad():
        ref_out, ref_pos = ref_model(xs)
    out, pos = jit_call(ours, [nhwc(x) for x in xs])
    for i in range(4):
        assert_close(nchw(out[i]), ref_out[i].numpy(), f"neck level {i}")
        assert_close(nchw(jnp.broadcast_to(pos[i], out[i].shape)), ref_pos[i].numpy(), f"neck pos {i}")


def test_image_encoder_parity_and_batched_jit():
    """Hiera stages, FPN levels, position encodings and scalp vs the package's ImageEncoder, for a
    batch of 3 frames encoded by one jitted call."""
    assert [len(s) for s in block_segments(TRUNK)] == [2, 1, 1, 1, 1, 2, 1, 1], (
        "test config must cover scanned segments"
    )
    neck = NeckConfig(
        position_encoding=PositionEmbeddingSineConfig(num_pos_feats=12),
        d_model=12,
        backbone_channel_list=TRUNK.channel_list,
        fpn_top_down_levels=(2, 3),
        fpn_interp_model="nearest",
    )
    cfg = ImageEncoderConfig(trunk=TRUNK, neck=neck, scalp=1)
    ref_model = randomize(
        t_image_encoder.ImageEncoder(trunk=torch_hiera(TRUNK), neck=torch_neck(neck), scalp=1)
    )
    ours = abstract(lambda: ImageEncoder(cfg, rngs=nnx.Rngs(0)))
    convert_part(sd_numpy(ref_model), ours, "image_encoder")
    # Own generator: the global torch RNG's state here depends on which tests ran before.
    x = torch.randn(3, 3, 128, 160, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref_stages = ref_model.trunk(x)
        ref = ref_model(x)
    stages, out = jit_call(ours, nhwc(x), method="trunk_and_encoder")
    assert len(stages) == len(ref_stages) == 4
    for i, (a, b) in enumerate(zip(stages, ref_stages)):
        assert_close(nchw(a), b.numpy(), f"trunk stage {i}")
    assert_close(nchw(out.vision_features), ref["vision_features"].numpy(), "vision_features")
    assert len(out.backbone_fpn) == len(ref["backbone_fpn"]) == 3
    for i in range(3):
        assert_close(nchw(out.backbone_fpn[i]), ref["backbone_fpn"][i].numpy(), f"backbone_fpn {i}")
        assert_close(
            nchw(jnp.broadcast_to(out.vision_pos_enc[i], out.backbone_fpn[i].shape)),
            ref["vision_pos_enc"][i].numpy(),
            f"pos {i}",
        )


def _count_primitives(jaxpr, name: str) -> int:
    n = 0
    for eqn in jaxpr.eqns:
        n += eqn.primitive.name == name
        for sub in jax.core.jaxprs_in_params(eqn.params):
            n += _count_primitives(sub, name)
    return n


def test_trunk_has_no_python_loop_over_windows():
    """The traced program is the same size whatever the number of windows (4x more here)."""
    ours = abstract(lambda: Hiera(TRUNK, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(ours)
    counts = []
    for hw in [(128, 160), (256, 320)]:
        jaxpr = jax.make_jaxpr(lambda s, x: nnx.merge(graphdef, s)(x))(state, jnp.zeros((2, *hw, 3)))
        counts.append((_count_primitives(jaxpr.jaxpr, "dot_general"), _count_primitives(jaxpr.jaxpr, "scan")))
    assert counts[0] == counts[1], counts
    assert counts[0][1] == len(block_segments(TRUNK)), "every segment runs as a scan"


# ------------------------------------------------------------------------------ prompt encoder


class GlusPromptEncoder(TPromptEncoder):
    """The package's PromptEncoder plus GLUS's text prompt (model/segment-anything-2/.../prompt_encoder.py)."""

    def forward(self, points, boxes, masks, text_embeds=None):
        if points is None and boxes is None and masks is None and text_embeds is not None:
            sparse = torch.empty((text_embeds.shape[0], 0, self.embed_dim))
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(
                text_embeds.shape[0], -1, *self.image_embedding_size
            )
        else:
            sparse, dense = super().forward(points, boxes, masks)
        if text_embeds is not None:
            sparse = torch.cat([sparse, text_embeds], dim=1)
        return sparse, dense


PE_CFG = PromptEncoderConfig(
    embed_dim=10, image_embedding_size=(6, 5), input_image_size=(96, 80), mask_in_chans=8
)


@pytest.fixture(scope="module")
def prompt_pair():
    c = PE_CFG
    ref = randomize(
        GlusPromptEncoder(c.embed_dim, c.image_embedding_size, c.input_image_size, c.mask_in_chans)
    )
    ours = abstract(lambda: PromptEncoder(c, rngs=nnx.Rngs(0)))
    convert_part(sd_numpy(ref), ours, "prompt_encoder")
    return ref, ours


def test_prompt_encoder_dense_pe(prompt_pair):
    ref, ours = prompt_pair
    assert_close(nchw(ours.get_dense_pe()), ref.get_dense_pe().numpy(), "get_dense_pe")


@pytest.mark.parametrize("use_points,use_boxes,use_masks,use_text", [
    (True, False, False, False),
    (True, True, False, True),
    (False, True, True, False),
    (False, False, False, True),  # GLUS: the text embedding alone
    (True, False, True, True),
])  # fmt: skip
def test_prompt_encoder_parity(prompt_pair, use_points, use_boxes, use_masks, use_text):
    ref, ours = prompt_pair
    b = 3
    coords = torch.rand(b, 5, 2) * torch.tensor([80.0, 96.0])
    labels = torch.tensor([[-1, 0, 1, 2, 3], [1, 1, 0, -1, -1], [3, 2, 1, 0, 1]], dtype=torch.int32)
    boxes = torch.rand(b, 4) * 80
    masks = torch.randn(b, 1, 24, 20)
    text = torch.randn(b, 1, PE_CFG.embed_dim)
    args = (
        (coords, labels) if use_points else None,
        boxes if use_boxes else None,
        masks if use_masks else None,
        text if use_text else None,
    )
    with torch.no_grad():
        ref_sparse, ref_dense = ref(*args)
    sparse, dense = ours(
        points=(jnp.asarray(coords.numpy()), jnp.asarray(labels.numpy())) if use_points else None,
        boxes=jnp.asarray(boxes.numpy()) if use_boxes else None,
        masks=nhwc(masks) if use_masks else None,
        text_embeds=jnp.asarray(text.numpy()) if use_text else None,
    )
    assert_close(sparse, ref_sparse.numpy(), "sparse")
    assert_close(nchw(dense), ref_dense.numpy(), "dense")
    if use_text and not (use_points or use_boxes):
        # GLUS passes [B, D]; it becomes one sparse token equal to the embedding itself.
        sparse2, _ = ours(text_embeds=jnp.asarray(text[:, 0].numpy()))
        np.testing.assert_array_equal(np.asarray(sparse2), text.numpy())


# -------------------------------------------------------------------------------- mask decoder

DEC = MaskDecoderConfig(
    transformer_dim=16,
    transformer_num_heads=2,
    transformer_mlp_dim=24,
    iou_head_hidden_dim=20,
    use_high_res_features=True,
    iou_prediction_use_sigmoid=True,
    dynamic_multimask_via_stability=True,
    pred_obj_scores=True,
    pred_obj_scores_mlp=True,
    use_multimask_token_for_obj_ptr=True,
)


def torch_decoder(cfg: MaskDecoderConfig) -> TMaskDecoder:
    return TMaskDecoder(
        transformer_dim=cfg.transformer_dim,
        transformer=TTwoWayTransformer(
            depth=cfg.transformer_depth,
            embedding_dim=cfg.transformer_dim,
            num_heads=cfg.transformer_num_heads,
            mlp_dim=cfg.transformer_mlp_dim,
            attention_downsample_rate=cfg.attention_downsample_rate,
        ),
        num_multimask_outputs=cfg.num_multimask_outputs,
        iou_head_depth=cfg.iou_head_depth,
        iou_head_hidden_dim=cfg.iou_head_hidden_dim,
        use_high_res_features=cfg.use_high_res_features,
        iou_prediction_use_sigmoid=cfg.iou_prediction_use_sigmoid,
        dynamic_multimask_via_stability=cfg.dynamic_multimask_via_stability,
        dynamic_multimask_stability_delta=cfg.dynamic_multimask_stability_delta,
        dynamic_multimask_stability_thresh=cfg.dynamic_multimask_stability_thresh,
        pred_obj_scores=cfg.pred_obj_scores,
        pred_obj_scores_mlp=cfg.pred_obj_scores_mlp,
        use_multimask_token_for_obj_ptr=cfg.use_multimask_token_for_obj_ptr,
    )


def _decoder_inputs(cfg: MaskDecoderConfig, b=3, h=5, w=6, n_sparse=2):
    c = cfg.transformer_dim
    g = torch.Generator().manual_seed(3)
    img = torch.randn(b, c, h, w, generator=g)
    pe = torch.randn(1, c, h, w, generator=g)
    sparse = torch.randn(b, n_sparse, c, generator=g)
    dense = torch.randn(b, c, h, w, generator=g)
    hr = [
        torch.randn(b, c // 8, 4 * h, 4 * w, generator=g),
        torch.randn(b, c // 4, 2 * h, 2 * w, generator=g),
    ]
    return img, pe, sparse, dense, hr


MODES = [(True, False), (False, True), (False, False)]  # (multimask_output, training)


def _run_pair(cfg, ref, ours, inputs, modes=MODES):
    """Reference outputs per (multimask, training) mode, and ours for all modes from one jit."""
    img, pe, sparse, dense, hr = inputs
    refs = []
    for multimask, training in modes:
        ref.train(training)
        with torch.no_grad():
            refs.append(
                ref(
                    img,
                    pe,
                    sparse,
                    dense,
                    multimask_output=multimask,
                    repeat_image=False,
                    high_res_features=hr if cfg.use_high_res_features else None,
                )
            )
    ref.eval()
    graphdef, state = nnx.split(ours)

    @jax.jit
    def run(state, img, pe, sparse, dense, hr):
        m = nnx.merge(graphdef, state)
        return [
            m(img, pe, sparse, dense, multimask_output=mm, high_res_features=hr, training=tr)
            for mm, tr in modes
        ]

    hr_j = (nhwc(hr[0]), nhwc(hr[1])) if cfg.use_high_res_features else None
    return refs, run(state, nhwc(img), nhwc(pe), jnp.asarray(sparse.numpy()), nhwc(dense), hr_j)


def _check(r, o, tag):
    assert_close(o.masks, r[0].numpy(), f"{tag} masks")
    assert_close(o.iou_pred, r[1].numpy(), f"{tag} iou")
    assert_close(o.sam_tokens_out, r[2].numpy(), f"{tag} tokens")
    assert_close(o.object_score_logits, r[3].numpy(), f"{tag} object score")


@pytest.mark.parametrize(
    "variant",
    [
        {},
        {"pred_obj_scores_mlp": False},
        {
            "pred_obj_scores": False,
            "pred_obj_scores_mlp": False,
            "use_high_res_features": False,
            "iou_prediction_use_sigmoid": False,
        },
    ],
)
def test_mask_decoder_parity(variant):
    cfg = dataclasses.replace(DEC, **variant)
    ref = randomize(torch_decoder(cfg))
    ours = abstract(lambda: MaskDecoder(cfg, rngs=nnx.Rngs(0)))
    convert_part(sd_numpy(ref), ours, "mask_decoder")
    refs, outs = _run_pair(cfg, ref, ours, _decoder_inputs(cfg))
    for (multimask, training), r, o in zip(MODES, refs, outs):
        _check(r, o, f"multimask={multimask} training={training}")


def test_mask_decoder_dynamic_multimask_both_branches():
    """Stability threshold between the samples' token-0 scores: some take token 0, others the best
    multimask token; the jnp.where selection must agree with the reference per sample."""
    ref = randomize(torch_decoder(DEC))
    ours = abstract(lambda: MaskDecoder(DEC, rngs=nnx.Rngs(0)))
    convert_part(sd_numpy(ref), ours, "mask_decoder")
    img, pe, sparse, dense, hr = inputs = _decoder_inputs(DEC, b=4)
    with torch.no_grad():
        all_masks = ref.predict_masks(img, pe, sparse, dense, False, hr)[0]
        ref_scores = ref._get_stability_scores(all_masks[:, 0:1])[:, 0].numpy()
    scores = np.asarray(
        stability_scores(jnp.asarray(all_masks[:, 0].numpy()), DEC.dynamic_multimask_stability_delta)
    )
    np.testing.assert_allclose(scores, ref_scores, atol=1e-6)
    ordered = np.sort(scores)
    assert ordered[1] < ordered[2], "random decoder gave equal stability scores"
    thresh = float((ordered[1] + ordered[2]) / 2)  # two samples stable, two not
    ref.dynamic_multimask_stability_thresh = thresh
    ours.cfg = dataclasses.replace(DEC, dynamic_multimask_stability_thresh=thresh)
    (r,), (o,) = _run_pair(DEC, ref, ours, inputs, modes=[(False, False)])
    _check(r, o, "dynamic")
    stable = scores >= thresh
    picked_token0 = np.abs(np.asarray(o.masks)[:, 0] - all_masks[:, 0].numpy()).max(axis=(1, 2)) < 1e-4
    np.testing.assert_array_equal(picked_token0, stable)
