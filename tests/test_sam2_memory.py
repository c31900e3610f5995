"""Parity of the SAM2 memory side (memory attention, RoPE, memory encoder) with the PyTorch `sam2`
package on tiny random configs, the weight-conversion table (incl. the CXBlock gamma quirk Q1), and
parameter counts of the full-size (hiera_l) modules."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from sam2.modeling.memory_attention import MemoryAttention as TMemoryAttention
from sam2.modeling.memory_attention import MemoryAttentionLayer as TMemoryAttentionLayer
from sam2.modeling.memory_encoder import CXBlock as TCXBlock
from sam2.modeling.memory_encoder import Fuser as TFuser
from sam2.modeling.memory_encoder import MaskDownSampler as TMaskDownSampler
from sam2.modeling.memory_encoder import MemoryEncoder as TMemoryEncoder
from sam2.modeling.position_encoding import PositionEmbeddingSine as TPositionEmbeddingSine
from sam2.modeling.position_encoding import compute_axial_cis
from sam2.modeling.sam.transformer import RoPEAttention as TRoPEAttention

from glus_jax.models.sam2 import memory_attention as ma
from glus_jax.models.sam2 import memory_encoder as me
from tools.convert_weights.engine import ConversionError, param_shapes
from tools.convert_weights.sam2_memory import convert_memory_attention, convert_memory_encoder, rules


def rel_err(out, ref) -> float:
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(out - ref).max() / np.abs(ref).max())


def randomize(module: torch.nn.Module, seed: int, std: float = 0.3) -> None:
    """Every parameter random (no zeros / ones left), so a dropped bias or norm weight shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)


def state(module: torch.nn.Module, prefix: str) -> dict[str, np.ndarray]:
    return {prefix + k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


# ------------------------------------------------------------------------ reference builders


def torch_rope_attention(cfg: ma.MemoryAttentionConfig, *, cross: bool) -> TRoPEAttention:
    return TRoPEAttention(
        embedding_dim=cfg.d_model,
        num_heads=cfg.num_heads,
        downsample_rate=cfg.downsample_rate,
        dropout=cfg.dropout,
        kv_in_dim=cfg.kv_in_dim if cross else None,
        rope_theta=cfg.rope_theta,
        rope_k_repeat=cfg.rope_k_repeat if cross else False,
        feat_sizes=(32, 32),  # GLUS's (unused: recomputed from the token count)
    )


def torch_memory_attention(cfg: ma.MemoryAttentionConfig) -> TMemoryAttention:
    layer = TMemoryAttentionLayer(
        activation=cfg.activation,
        cross_attention=torch_rope_attention(cfg, cross=True),
        d_model=cfg.d_model,
        dim_feedforward=cfg.dim_feedforward,
        dropout=cfg.dropout,
        pos_enc_at_attn=cfg.pos_enc_at_attn,
        pos_enc_at_cross_attn_keys=cfg.pos_enc_at_cross_attn_keys,
        pos_enc_at_cross_attn_queries=cfg.pos_enc_at_cross_attn_queries,
        self_attention=torch_rope_attention(cfg, cross=False),
    )
    return TMemoryAttention(
        d_model=cfg.d_model, pos_enc_at_input=cfg.pos_enc_at_input, layer=layer, num_layers=cfg.num_layers
    )


def torch_memory_encoder(cfg: me.MemoryEncoderConfig) -> TMemoryEncoder:
    return TMemoryEncoder(
        out_dim=cfg.out_dim,
        mask_downsampler=TMaskDownSampler(
            embed_dim=cfg.mask_embed_dim,
            kernel_size=cfg.mask_kernel_size,
            stride=cfg.mask_stride,
            padding=cfg.mask_padding,
            total_stride=cfg.mask_total_stride,
        ),
        fuser=TFuser(
            TCXBlock(
                dim=cfg.fuser_dim,
                kernel_size=cfg.fuser_kernel_size,
                padding=cfg.fuser_padding,
                layer_scale_init_value=cfg.layer_scale_init_value,
                use_dwconv=cfg.use_dwconv,
            ),
            num_layers=cfg.fuser_num_layers,
            dim=cfg.fuser_dim,
            input_projection=cfg.fuser_input_projection,
        ),
        position_encoding=TPositionEmbeddingSine(
            num_pos_feats=cfg.pos_num_feats,
            normalize=cfg.pos_normalize,
            scale=cfg.pos_scale,
            temperature=cfg.pos_temperature,
        ),
        in_dim=cfg.in_dim,
    )


# Odd sizes everywhere: 2 heads of dim 12, kv 20, FFN 36, a 5x5 map (or 3x5), 3 memory frames.
TINY_ATTN = ma.MemoryAttentionConfig(d_model=24, num_layers=2, num_heads=2, dim_feedforward=36, kv_in_dim=20)
TINY_ENC = me.MemoryEncoderConfig(
    in_dim=24,
    out_dim=12,
    mask_kernel_size=3,
    mask_stride=2,
    mask_padding=1,
    mask_total_stride=4,
    mask_embed_dim=24,
    fuser_dim=24,
    fuser_kernel_size=5,
    fuser_padding=2,
    pos_num_feats=12,
)


def build_attention_pair(cfg, seed=0):
    tm = torch_memory_attention(cfg).eval()
    randomize(tm, seed)
    model = ma.MemoryAttention(cfg, rngs=nnx.Rngs(seed))
    convert_memory_attention(state(tm, "memory_attention."), model)
    return tm, model


def attention_inputs(rng, b, hw, n_mem, cfg):
    f = lambda *s: rng.normal(size=s).astype(np.float32)
    return (
        f(b, hw, cfg.d_model),
        f(b, n_mem, cfg.kv_in_dim),
        f(b, hw, cfg.d_model),
        f(b, n_mem, cfg.kv_in_dim),
    )


@functools.partial(nnx.jit, static_argnames=("feat_size",))
def apply_attention(model, curr, mem, cpos, mpos, memory_mask=None, feat_size=None, dropout_rng=None):
    """Jitted (compiled once per config and shape; eager nnx.scan would recompile every call)."""
    return model(curr, mem, cpos, mpos, memory_mask=memory_mask, feat_size=feat_size, dropout_rng=dropout_rng)


@functools.partial(nnx.jit, static_argnames=("skip_mask_sigmoid",))
def apply_encoder(model, pix, mask, skip_mask_sigmoid=False):
    return model(pix, mask, skip_mask_sigmoid=skip_mask_sigmoid)


def run_torch_attention(tm, curr, mem, cpos, mpos, **kw):
    seq = lambda x: torch.from_numpy(np.ascontiguousarray(x.transpose(1, 0, 2)))
    with torch.no_grad():
        out = tm(curr=seq(curr), memory=seq(mem), curr_pos=seq(cpos), memory_pos=seq(mpos), **kw)
    return out.numpy().transpose(1, 0, 2)


# ------------------------------------------------------------------------------------- RoPE


def test_rope_angles_match_compute_axial_cis():
    # A non-square map: 5 rows (y) x 7 columns (x); torch's end_x is the width.
    angles = ma.axial_rope_angles(12, 5, 7, 10000.0)
    cis = compute_axial_cis(dim=12, end_x=7, end_y=5, theta=10000.0)
    assert angles.shape == tuple(cis.shape) == (35, 6)
    np.testing.assert_allclose(np.cos(angles), cis.real.numpy(), atol=1e-6, rtol=0)
    np.testing.assert_allclose(np.sin(angles), cis.imag.numpy(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("n_frames,exclude", [(1, 0), (3, 0), (2, 4)])
def test_rope_attention_parity(n_frames, exclude):
    """Cross-attention over several memory frames (rope_k_repeat) and unrotated trailing keys."""
    cfg = TINY_ATTN
    tm = torch_rope_attention(cfg, cross=True).eval()
    randomize(tm, 1)
    model = ma.RoPEAttention(
        cfg.d_model, cfg.num_heads, kv_in_dim=cfg.kv_in_dim, rope_k_repeat=True, rngs=nnx.Rngs(0)
    )
    sd = state(tm, "")
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        getattr(model, name).kernel.set_value(jnp.asarray(sd[f"{name}.weight"].T))
        getattr(model, name).bias.set_value(jnp.asarray(sd[f"{name}.bias"]))
    rng = np.random.default_rng(2)
    q = rng.normal(size=(2, 25, cfg.d_model)).astype(np.float32)
    k = rng.normal(size=(2, 25 * n_frames + exclude, cfg.kv_in_dim)).astype(np.float32)
    v = rng.normal(size=k.shape).astype(np.float32)
    with torch.no_grad():
        ref = tm(
            torch.from_numpy(q), torch.from_numpy(k), torch.from_numpy(v), num_k_exclude_rope=exclude
        ).numpy()
    out = model(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), feat_size=(5, 5), num_k_exclude_rope=exclude)
    assert rel_err(out, ref) <= 1e-5


# ------------------------------------------------------------------------- memory attention


@pytest.mark.parametrize(
    "cfg",
    [
        TINY_ATTN,
        # every optional positional-encoding site on, GELU (same shapes: compiled kernels are reused)
        dataclasses.replace(
            TINY_ATTN,
            activation="gelu",
            pos_enc_at_attn=True,
            pos_enc_at_cross_attn_queries=True,
            pos_enc_at_input=False,
        ),
    ],
    ids=["default", "variant"],
)
def test_memory_attention_parity_multi_frame(cfg):
    tm, model = build_attention_pair(cfg)
    rng = np.random.default_rng(3)
    curr, mem, cpos, mpos = attention_inputs(rng, 2, 25, 3 * 25, cfg)  # 3 memory frames of 5x5
    ref = run_torch_attention(tm, curr, mem, cpos, mpos)
    out = apply_attention(model, jnp.asarray(curr), jnp.asarray(mem), jnp.asarray(cpos), jnp.asarray(mpos))
    assert out.shape == (2, 25, cfg.d_model)
    assert rel_err(out, ref) <= 1e-5


def padded_bank(rng, mem, mpos, hw, slots, present):
    """The memories / positions of len(present) frames placed in `slots` slots of hw tokens (the
    others garbage) and the validity mask [slots * hw]."""
    b, _, c = mem.shape
    pad_mem = rng.normal(size=(b, slots * hw, c)).astype(np.float32) * 50
    pad_pos = rng.normal(size=(b, slots * hw, c)).astype(np.float32) * 50
    mask = np.zeros(slots * hw, bool)
    for i, s in enumerate(present):
        pad_mem[:, s * hw : (s + 1) * hw] = mem[:, i * hw : (i + 1) * hw]
        pad_pos[:, s * hw : (s + 1) * hw] = mpos[:, i * hw : (i + 1) * hw]
        mask[s * hw : (s + 1) * hw] = True
    return pad_mem, pad_pos, mask


def test_memory_attention_padded_bank_equals_unpadded():
    """3 present frames scattered among 7 slots of garbage; masked, equals the unpadded reference."""
    cfg = TINY_ATTN
    tm, model = build_attention_pair(cfg)
    rng = np.random.default_rng(4)
    hw, slots, present = 25, 7, [1, 4, 5]
    curr, mem, cpos, mpos = attention_inputs(rng, 2, hw, len(present) * hw, cfg)
    ref = run_torch_attention(tm, curr, mem, cpos, mpos)
    pad_mem, pad_pos, mask = padded_bank(rng, mem, mpos, hw, slots, present)
    out = apply_attention(
        model,
        jnp.asarray(curr),
        jnp.asarray(pad_mem),
        jnp.asarray(cpos),
        jnp.asarray(pad_pos),
        jnp.asarray(mask),
    )
    assert rel_err(out, ref) <= 1e-5
    unpadded = apply_attention(
        model, jnp.asarray(curr), jnp.asarray(mem), jnp.asarray(cpos), jnp.asarray(mpos)
    )
    assert rel_err(out, unpadded) <= 1e-6
    # The mask matters: without it the garbage slots change the output.
    unmasked = apply_attention(
        model, jnp.asarray(curr), jnp.asarray(pad_mem), jnp.asarray(cpos), jnp.asarray(pad_pos)
    )
    assert rel_err(unmasked, ref) > 1e-2


def test_memory_attention_tiled_matches_torch(monkeypatch):
    """The flash-style tiled path (used at inference when the memory is long) with tiles that split
    neither the 25 queries nor the 7 x 25 padded bank evenly: equals the PyTorch reference."""
    cfg = TINY_ATTN
    tm, model = build_attention_pair(cfg)
    rng = np.random.default_rng(5)
    hw, slots, present = 25, 7, [0, 2, 6]
    curr, mem, cpos, mpos = attention_inputs(rng, 2, hw, len(present) * hw, cfg)
    ref = run_torch_attention(tm, curr, mem, cpos, mpos)
    pad_mem, pad_pos, mask = padded_bank(rng, mem, mpos, hw, slots, present)
    tiles = []
    monkeypatch.setattr(ma, "tile_for", lambda b, h: tiles.append((b, h)) or 10)  # 25 -> 3 blocks of 9
    # Eager (not the cached apply_attention): the patched tile size must be traced.
    out = model(jnp.asarray(curr), jnp.asarray(pad_mem), jnp.asarray(cpos), jnp.asarray(pad_pos),
                memory_mask=jnp.asarray(mask)[None])
    assert tiles, "the tiled path was not taken"
    assert rel_err(out, ref) <= 1e-5


def test_memory_attention_non_square_map():
    """A 3x5 map: the RoPE grid follows feat_size; equals torch's RoPE math built for that grid."""
    cfg = TINY_ATTN
    _, model = build_attention_pair(cfg)
    rng = np.random.default_rng(5)
    curr, mem, cpos, mpos = attention_inputs(rng, 1, 15, 30, cfg)
    args = [jnp.asarray(a) for a in (curr, mem, cpos, mpos)]
    out = apply_attention(model, *args, feat_size=(3, 5))
    assert out.shape == (1, 15, cfg.d_model)
    with pytest.raises(ValueError, match="not a square map"):
        apply_attention(model, *args)
    # Transposing the grid is a different rotation: the result must change.
    assert rel_err(apply_attention(model, *args, feat_size=(5, 3)), out) > 1e-3


def test_memory_attention_dropout_only_with_a_key():
    cfg = TINY_ATTN
    _, model = build_attention_pair(cfg)
    rng = np.random.default_rng(6)
    args = [jnp.asarray(a) for a in attention_inputs(rng, 1, 25, 50, cfg)]
    det = apply_attention(model, *args)
    key = jax.random.key(0)
    d1, d2 = apply_attention(model, *args, dropout_rng=key), apply_attention(model, *args, dropout_rng=key)
    np.testing.assert_array_equal(np.asarray(d1), np.asarray(d2))  # reproducible per key
    assert rel_err(d1, det) > 1e-3
    assert rel_err(apply_attention(model, *args, dropout_rng=jax.random.key(1)), d1) > 1e-3


def test_memory_attention_jit_and_bfloat16():
    cfg = dataclasses.replace(TINY_ATTN, dtype="bfloat16")
    tm, model = build_attention_pair(cfg)
    rng = np.random.default_rng(7)
    curr, mem, cpos, mpos = attention_inputs(rng, 2, 25, 50, cfg)
    ref = run_torch_attention(tm, curr, mem, cpos, mpos)
    out = apply_attention(model, *[jnp.asarray(a) for a in (curr, mem, cpos, mpos)])
    assert out.dtype == jnp.bfloat16
    assert rel_err(out.astype(jnp.float32), ref) < 5e-2


# ---------------------------------------------------------------------------- memory encoder


def build_encoder_pair(cfg, seed=0, load_fuser_gamma=True):
    tm = torch_memory_encoder(cfg).eval()
    randomize(tm, seed)
    model = me.MemoryEncoder(cfg, rngs=nnx.Rngs(seed))
    convert_memory_encoder(state(tm, "memory_encoder."), model, load_fuser_gamma=load_fuser_gamma)
    return tm, model


@pytest.mark.parametrize(
    "cfg,skip_sigmoid",
    [
        (TINY_ENC, False),
        (dataclasses.replace(TINY_ENC, out_dim=24, pos_num_feats=24, fuser_input_projection=True), True),
    ],
    ids=["default", "no_out_proj_with_fuser_proj_skip_sigmoid"],
)
def test_memory_encoder_parity(cfg, skip_sigmoid):
    tm, model = build_encoder_pair(cfg)
    rng = np.random.default_rng(8)
    b, h, w, s = 2, 5, 7, cfg.mask_total_stride
    pix = rng.normal(size=(b, cfg.in_dim, h, w)).astype(np.float32)
    mask = (rng.normal(size=(b, 1, h * s, w * s)) * 4).astype(np.float32)
    with torch.no_grad():
        ref = tm(torch.from_numpy(pix), torch.from_numpy(mask), skip_mask_sigmoid=skip_sigmoid)
    feats, pos = apply_encoder(
        model, jnp.asarray(pix.transpose(0, 2, 3, 1)), jnp.asarray(mask.transpose(0, 2, 3, 1)), skip_sigmoid
    )
    ref_feats = ref["vision_features"].numpy().transpose(0, 2, 3, 1)
    ref_pos = ref["vision_pos_enc"][0].numpy().transpose(0, 2, 3, 1)
    assert feats.shape == (b, h, w, cfg.out_dim) and pos.shape == (b, h, w, cfg.pos_num_feats)
    assert rel_err(feats, ref_feats) <= 1e-5
    assert np.abs(np.asarray(pos) - ref_pos).max() <= 1e-5


def test_memory_encoder_rejects_mismatched_mask():
    _, model = build_encoder_pair(TINY_ENC)
    with pytest.raises(ValueError, match="does not match pix_feat"):
        apply_encoder(model, jnp.zeros((1, 5, 7, 24)), jnp.zeros((1, 20, 20, 1)))


def test_mask_for_memory_matches_sam2_encode_new_memory():
    rng = np.random.default_rng(9)
    low = (rng.normal(size=(2, 16, 16)) * 5).astype(np.float32)
    up = torch.nn.functional.interpolate(
        torch.from_numpy(low)[:, None], (64, 64), mode="bilinear", align_corners=False
    )
    ref = (torch.sigmoid(up) * 20.0 - 10.0).numpy().transpose(0, 2, 3, 1)
    out = me.mask_for_memory(jnp.asarray(low), 64)
    assert out.shape == (2, 64, 64, 1)
    assert np.abs(np.asarray(out) - ref).max() <= 1e-5


# ---------------------------------------------------------------------------- conversion


def test_fuser_gamma_quirk():
    """Default: gammas stay at layer_scale_init_value (1e-6) although the checkpoint stores others (Q1)."""
    cfg = TINY_ENC
    tm = torch_memory_encoder(cfg)
    randomize(tm, 10)
    sd = state(tm, "memory_encoder.")
    stored = np.stack([sd[f"memory_encoder.fuser.layers.{i}.gamma"] for i in range(2)])
    assert np.abs(stored).min() > 0 and not np.allclose(stored, 1e-6)

    default = me.MemoryEncoder(cfg, rngs=nnx.Rngs(0))
    default.fuser.layers.gamma.set_value(
        jnp.full((2, cfg.fuser_dim), 7.0)
    )  # a stale value must be overwritten
    convert_memory_encoder(sd, default)
    np.testing.assert_array_equal(
        np.asarray(default.fuser.layers.gamma[...]), np.full((2, cfg.fuser_dim), 1e-6, np.float32)
    )

    loaded = me.MemoryEncoder(cfg, rngs=nnx.Rngs(0))
    convert_memory_encoder(sd, loaded, load_fuser_gamma=True)
    np.testing.assert_array_equal(np.asarray(loaded.fuser.layers.gamma[...]), stored)


def test_rules_cover_a_sam2_root_and_refuse_bad_checkpoints():
    """The combined table maps every memory key of a SAM2 state dict to a path of the two modules."""
    from tools.convert_weights.engine import convert

    enc_cfg, attn_cfg = TINY_ENC, TINY_ATTN
    te, ta = torch_memory_encoder(enc_cfg), torch_memory_attention(attn_cfg)
    sd = {**state(te, "memory_encoder."), **state(ta, "memory_attention.")}
    shapes = {
        f"memory_encoder/{k}": v for k, v in param_shapes(me.MemoryEncoder(enc_cfg, rngs=nnx.Rngs(0))).items()
    }
    shapes |= {
        f"memory_attention/{k}": v
        for k, v in param_shapes(ma.MemoryAttention(attn_cfg, rngs=nnx.Rngs(0))).items()
    }
    flat = convert(sd, rules(enc_cfg), shapes)
    assert set(flat) == set(shapes)
    assert flat["memory_attention/layers/cross_attn_image/k_proj/kernel"].shape == (2, 20, 24)
    assert flat["memory_encoder/mask_downsampler/layers/1/conv/kernel"].shape == (3, 3, 4, 16)

    broken = dict(sd)
    del broken["memory_attention.layers.0.norm2.bias"]
    broken["memory_encoder.pix_feat_proj.weight"] = broken["memory_encoder.pix_feat_proj.weight"][:5]
    with pytest.raises(ConversionError) as err:
        convert(broken, rules(enc_cfg), shapes)
    assert "layers/norm2/bias: layer indices [1]" in str(err.value) and "pix_feat_proj/kernel" in str(
        err.value
    )


# ------------------------------------------------------------------------ full-size counts


def _torch_count(build) -> int:
    with torch.device("meta"):
        module = build()
    return sum(p.numel() for p in module.parameters())


def _nnx_count(build) -> int:
    abstract = nnx.eval_shape(build)
    return sum(int(np.prod(s)) for s in param_shapes(abstract).values())


def test_hiera_l_parameter_counts():
    attn, enc = ma.hiera_l(), me.hiera_l()
    n_attn = _nnx_count(lambda: ma.MemoryAttention(attn, rngs=nnx.Rngs(0)))
    n_enc = _nnx_count(lambda: me.MemoryEncoder(enc, rngs=nnx.Rngs(0)))
    assert n_attn == _torch_count(lambda: torch_memory_attention(attn))
    assert n_enc == _torch_count(lambda: torch_memory_encoder(enc))
    assert (n_attn, n_enc) == (5_922_304, 1_384_608)
