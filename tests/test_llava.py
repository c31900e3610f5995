"""LLaVA glue: golden outputs of the original GLUS on the tiny checkpoint, pooling, splicing,
projector types and the checkpoint conversion table."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.numpy import load_file

from glus_jax.models import llama, llava
from glus_jax.models.clip import clip_preprocess
from tests.conftest import GOLDEN
from tools.convert_weights.engine import ConversionError
from tools.convert_weights.llava import GLUS_FOREIGN_PREFIXES, convert_llava, load_llava, projector_type_of

GLUS_DIR = GOLDEN / "llava_glus_tiny"  # GLUS-tiny without the SAM2 (model.visual_model.*) tensors
CLIP_DIR = GOLDEN / "llava_clip_vit_tiny"


@pytest.fixture(scope="module")
def golden():
    return dict(np.load(GOLDEN / "llava_golden.npz"))


@pytest.fixture(scope="module")
def tiny_model():
    return load_llava(GLUS_DIR, CLIP_DIR)


# ---------------------------------------------------------------------------------- golden


def test_golden_encode_images_and_full_prefill(golden, tiny_model):
    """Step 0 of the original inference: CLIP -> AvgPool1d(4) -> mm_projector for the 5 frames of
    the call (context frames 1, 3, 6, 8 then question frame 0), then the full spliced prefill."""
    cfg, model = tiny_model
    assert cfg == llava.tiny()
    pixels = jnp.asarray(clip_preprocess(golden["frames_rgb"][golden["step0_frames_in_call"]]))
    ids = golden["step0_input_ids"][None]
    assert (ids == llava.IMAGE_TOKEN_INDEX).sum() == 5
    max_len = int(llava.expanded_lengths(ids, cfg.tokens_per_image).max())
    assert max_len == 400

    @nnx.jit(static_argnums=3)
    def run(m, pixels, ids, max_len):
        feats = m.encode_images(pixels)
        return (feats,) + m(ids, pixels, max_len=max_len)

    feats, logits, hidden, spliced = run(model, pixels, jnp.asarray(ids), max_len)
    np.testing.assert_allclose(np.asarray(feats), golden["encode_images_out"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(np.asarray(logits[0]), golden["lm_logits_full_step0"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(
        np.asarray(hidden[0, -1]), golden["step0_final_hidden_last"], rtol=0, atol=1e-4
    )
    assert int(jnp.argmax(logits[0, -1])) == 512  # [SEG]
    assert np.asarray(spliced.attention_mask).all() and int(spliced.lengths[0]) == 400


def test_golden_training_splice_labels_and_mask(golden):
    """`prepare_inputs_labels_for_multimodal` of the original training forward: 4 right-padded rows,
    8 images each; expanded labels and the Q9 attention mask."""
    ids, labels, mask = golden["train_input_ids"], golden["train_labels"], golden["train_attention_masks"]
    n_img = int((ids == llava.IMAGE_TOKEN_INDEX).sum())
    feats = jnp.zeros((n_img, 64, 8))
    text = jnp.zeros(ids.shape + (8,))
    out = jax.jit(llava.splice_image_tokens, static_argnames="max_len")(
        jnp.asarray(ids),
        feats,
        text,
        max_len=693,
        attention_mask=jnp.asarray(mask),
        labels=jnp.asarray(labels),
    )
    np.testing.assert_array_equal(np.asarray(out.labels), golden["train_expanded_labels"])
    np.testing.assert_array_equal(np.asarray(out.attention_mask), golden["train_expanded_attention_mask"])


# ------------------------------------------------------------------------------ components


def test_pool_image_tokens_equals_avgpool1d():
    x = np.random.RandomState(0).randn(3, 256, 5).astype(np.float32)
    ref = (
        torch.nn.AvgPool1d(kernel_size=4, stride=4)(torch.from_numpy(x).permute(0, 2, 1))
        .permute(0, 2, 1)
        .numpy()
    )
    ours = np.asarray(llava.pool_image_tokens(jnp.asarray(x), 4))
    assert ours.shape == (3, 64, 5)
    np.testing.assert_allclose(ours, ref, atol=1e-6)
    np.testing.assert_allclose(ours[0, 1], x[0, 4:8].mean(0), atol=1e-6)  # 1x4 raster windows (Q8)


def _reference_splice(ids, labels, mask, feats_in_order, text, ignore=-100, tok=-200):
    """The reference algorithm, written plainly with Python lists (llava_arch.py)."""
    rows, row_labels, img = [], [], 0
    for b in range(ids.shape[0]):
        if not (ids[b] == tok).any():
            rows.append(list(text[b]))
            row_labels.append(list(labels[b]))
            img += 1  # the reference consumes an image for a text-only row
            continue
        emb, lab = [], []
        for i, t in enumerate(ids[b]):
            if t == tok:
                emb += list(feats_in_order[img])
                lab += [ignore] * len(feats_in_order[img])
                img += 1
            else:
                emb.append(text[b, i])
                lab.append(labels[b, i])
        rows.append(emb)
        row_labels.append(lab)
    max_len = max(len(r) for r in rows)
    d = text.shape[-1]
    embeds = np.zeros((len(rows), max_len, d), np.float32)
    out_labels = np.full((len(rows), max_len), ignore)
    out_mask = np.zeros((len(rows), max_len), bool)
    for b, (r, lab) in enumerate(zip(rows, row_labels)):
        embeds[b, : len(r)] = np.stack(r)
        out_labels[b, : len(r)] = lab
        out_mask[b, : len(r)] = np.concatenate([np.ones(len(r) - ids.shape[1], bool), mask[b]])
    return embeds, out_labels, out_mask


def test_splice_equals_python_reference():
    rs = np.random.RandomState(0)
    b, t, f, d = 4, 13, 5, 3
    ids = rs.randint(1, 50, (b, t))
    ids[0, [2, 6]] = -200
    ids[1, [0, 1, 12]] = -200  # adjacent placeholders, one at the very end
    ids[3, [4]] = -200  # row 2 has no image (consumes one anyway)
    mask = np.ones((b, t), bool)
    mask[0, 10:] = False
    mask[3, 7:] = False
    labels = np.where(rs.rand(b, t) < 0.5, -100, ids)
    feats = rs.randn(7, f, d).astype(np.float32)
    text = rs.randn(b, t, d).astype(np.float32)
    ref_emb, ref_lab, ref_mask = _reference_splice(ids, labels, mask, feats, text)
    max_len = ref_emb.shape[1] + 3  # extra static padding
    out = jax.jit(llava.splice_image_tokens, static_argnames="max_len")(
        jnp.asarray(ids),
        jnp.asarray(feats),
        jnp.asarray(text),
        max_len=max_len,
        attention_mask=jnp.asarray(mask),
        labels=jnp.asarray(labels),
    )
    n = ref_emb.shape[1]
    np.testing.assert_array_equal(np.asarray(out.inputs_embeds[:, :n]), ref_emb)
    np.testing.assert_array_equal(np.asarray(out.inputs_embeds[:, n:]), 0)
    np.testing.assert_array_equal(np.asarray(out.labels[:, :n]), ref_lab)
    np.testing.assert_array_equal(np.asarray(out.attention_mask[:, :n]), ref_mask)
    assert not np.asarray(out.labels[:, n:] != -100).any() and not np.asarray(out.attention_mask[:, n:]).any()
    np.testing.assert_array_equal(np.asarray(out.lengths), llava.expanded_lengths(ids, f))
    np.testing.assert_array_equal(
        np.asarray(out.positions), np.broadcast_to(np.arange(max_len), (b, max_len))
    )
    # Index maps: every input token lands where `source` says it comes from.
    token_pos, source = np.asarray(out.token_pos), np.asarray(out.source)
    for row in range(b):
        for i in range(t):
            assert source[row, token_pos[row, i]] == i
            if ids[row, i] != -200:
                np.testing.assert_array_equal(
                    np.asarray(out.inputs_embeds[row, token_pos[row, i]]), text[row, i]
                )
    assert (source[:, n:] == -1).all()


def test_splice_per_row_features_and_cut_rows():
    rs = np.random.RandomState(1)
    ids = np.array([[5, -200, 6, -200, 7], [-200, 8, 9, 10, 11]])
    per_row = rs.randn(2, 2, 3, 4).astype(np.float32)  # [B, K, F, D]
    text = rs.randn(2, 5, 4).astype(np.float32)
    splice = jax.jit(llava.splice_image_tokens, static_argnames="max_len")
    out = splice(jnp.asarray(ids), jnp.asarray(per_row), jnp.asarray(text), max_len=9)
    emb = np.asarray(out.inputs_embeds)
    np.testing.assert_array_equal(emb[0, 1:4], per_row[0, 0])
    np.testing.assert_array_equal(emb[0, 5:8], per_row[0, 1])
    np.testing.assert_array_equal(emb[1, 0:3], per_row[1, 0])  # row 1's own first image
    np.testing.assert_array_equal(emb[0, 8], text[0, 4])
    np.testing.assert_array_equal(np.asarray(out.lengths), [9, 7])
    # A row longer than max_len is cut; `lengths` tells.
    cut = splice(jnp.asarray(ids), jnp.asarray(per_row), jnp.asarray(text), max_len=6)
    assert int(cut.lengths[0]) == 9 and cut.inputs_embeds.shape == (2, 6, 4)
    np.testing.assert_array_equal(np.asarray(cut.inputs_embeds), emb[:, :6])


def test_projector_types_and_conversion_errors():
    state = load_file(str(GLUS_DIR / "model.safetensors"))
    assert projector_type_of(state) == "linear"
    cfg = llava.tiny()
    target = lambda c: nnx.eval_shape(lambda: llava.Llava(c, rngs=nnx.Rngs(0)))
    # text_hidden_fcs belongs to the GLUS table: refused unless declared foreign.
    with pytest.raises(ConversionError, match=r"unexpected[\s\S]*model\.text_hidden_fcs\.0\.0\.weight"):
        convert_llava(state, cfg, target(cfg))
    convert_llava(state, cfg, target(cfg), foreign_prefixes=GLUS_FOREIGN_PREFIXES)
    with pytest.raises(ConversionError, match=r"missing[\s\S]*llm/model/norm/scale"):
        convert_llava(
            {k: v for k, v in state.items() if k != "model.norm.weight"},
            cfg,
            target(cfg),
            foreign_prefixes=GLUS_FOREIGN_PREFIXES,
        )
    with pytest.raises(
        ConversionError, match=r"self_attn/k_proj/kernel: no checkpoint tensor for layer\(s\) \[1\]"
    ):
        convert_llava(
            {k: v for k, v in state.items() if k != "model.layers.1.self_attn.k_proj.weight"},
            cfg,
            target(cfg),
            foreign_prefixes=GLUS_FOREIGN_PREFIXES,
        )
    with pytest.raises(ConversionError, match=r"unexpected[\s\S]*model\.layers\.0\.mlp\.extra\.weight"):
        convert_llava(
            {**state, "model.layers.0.mlp.extra.weight": np.zeros(2)},
            cfg,
            target(cfg),
            foreign_prefixes=GLUS_FOREIGN_PREFIXES,
        )
    bad = {**state, "model.embed_tokens.weight": np.zeros((512, 64), np.float32)}
    with pytest.raises(
        ConversionError,
        match=r"llm/model/embed_tokens: checkpoint gives \(512, 64\), model expects \(515, 64\)",
    ):
        convert_llava(bad, cfg, target(cfg), foreign_prefixes=GLUS_FOREIGN_PREFIXES)
    with pytest.raises(ConversionError, match="'linear' mm_projector, config says 'mlp2x_gelu'"):
        convert_llava(state, dataclasses.replace(cfg, projector_type="mlp2x_gelu"), target(cfg))

    # An mlp2x_gelu projector (LLaVA-1.5 layout) is detected and converted.
    rs = np.random.RandomState(0)
    mlp_state = {k: v for k, v in state.items() if not k.startswith("model.mm_projector.")}
    w0, b0, w2, b2 = rs.randn(64, 32), rs.randn(64), rs.randn(64, 64), rs.randn(64)
    mlp_state.update(
        {
            "model.mm_projector.0.weight": w0,
            "model.mm_projector.0.bias": b0,
            "model.mm_projector.2.weight": w2,
            "model.mm_projector.2.bias": b2,
        }
    )
    assert projector_type_of(mlp_state) == "mlp2x_gelu"
    mcfg = dataclasses.replace(cfg, projector_type="mlp2x_gelu")
    model = target(mcfg)
    convert_llava(mlp_state, mcfg, model, foreign_prefixes=GLUS_FOREIGN_PREFIXES)
    x = rs.randn(2, 32).astype(np.float32)
    ref = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 64))
    with torch.no_grad():
        for i, (w, bias) in zip((0, 2), ((w0, b0), (w2, b2))):
            ref[i].weight.copy_(torch.from_numpy(w))
            ref[i].bias.copy_(torch.from_numpy(bias))
        expected = ref(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.asarray(model.mm_projector(jnp.asarray(x))), expected, atol=1e-4)


def test_load_with_fresh_lora_adapters(golden, tiny_model):
    _, base = tiny_model
    cfg, model = load_llava(
        GLUS_DIR, CLIP_DIR, lora={"lora_rank": 8, "lora_alpha": 16.0, "lora_dropout": 0.05}
    )
    assert cfg.llama.lora_rank == 8
    q = model.llm.model.layers.self_attn.q_proj
    assert q.lora_a.shape == (2, 64, 8) and float(jnp.abs(q.lora_b[...]).max()) == 0.0
    ids = jnp.asarray(golden["step0_input_ids"][None, :40])
    run = nnx.jit(lambda m, ids: m(ids)[0])
    ref, out = run(base.llm, ids), run(model.llm, ids)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5)
    llama.merge_lora(model)
    assert model.config.llama.lora_rank == 0 and model.llm.config.lora_rank == 0 and q.lora_a is None


def test_presets_and_config_from_hf():
    cfg = llava.glus_7b()
    assert cfg.llama.vocab_size == 32003 and cfg.clip.hidden_size == 1024 and cfg.tokens_per_image == 64
    assert cfg.select_layer == -2 and cfg.projector_type == "linear" and cfg.mm_use_im_start_end
    from glus_jax.config import ConfigError, from_dict, to_dict

    assert from_dict(llava.LlavaConfig, to_dict(cfg)) == cfg
    with pytest.raises(ConfigError, match="mm_vision_select_feature 'cls_patch'"):
        llava.from_hf_config({"mm_vision_select_feature": "cls_patch"}, {})
