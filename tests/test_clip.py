"""CLIP vision tower: preprocessing, parity with transformers' CLIPVisionModel, conversion, sizes."""

import hashlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from glus_jax.config import ConfigError
from glus_jax.models import clip
from tests.conftest import GOLDEN
from tools.convert_weights.clip import convert_clip, load_clip
from tools.convert_weights.engine import ConversionError, param_shapes


def _randomize(module: torch.nn.Module, seed: int = 0) -> None:
    """Every parameter random and away from its default (norm weights 1 + noise, biases nonzero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * noise)
            elif p.ndim == 1:
                p.copy_(0.3 * noise)
            else:
                p.copy_(noise * p[0].numel() ** -0.5)


def _hf_tiny(**kw):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    hc = CLIPVisionConfig(
        hidden_size=24,
        intermediate_size=40,
        num_hidden_layers=3,
        num_attention_heads=3,
        patch_size=7,
        image_size=35,
        **kw,
    )
    model = CLIPVisionModel(hc).eval()
    _randomize(model)
    return hc, model


# --------------------------------------------------------------------------- preprocessing


@pytest.mark.parametrize(
    "shape", [(96, 128), (128, 96), (301, 200), (224, 224), (50, 61), (225, 1000), (17, 500)]
)
def test_preprocess_equals_hf_clip_image_processor(shape):
    # The PIL backend of transformers' CLIPImageProcessor (the torchvision one needs torchvision,
    # not installed); it is the code path GLUS ran with transformers 4.31.
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    img = np.random.RandomState(sum(shape)).randint(0, 256, size=shape + (3,), dtype=np.uint8)
    ref = CLIPImageProcessorPil()(images=[img], return_tensors="np")["pixel_values"][0]
    ours = clip.clip_preprocess(img[None])[0]
    assert ours.shape == (224, 224, 3) and ours.dtype == np.float32
    np.testing.assert_array_equal(ours.transpose(2, 0, 1), ref)


def test_preprocess_equals_golden_pixel_values():
    g = np.load(GOLDEN / "llava_golden.npz")
    ours = clip.clip_preprocess(g["frames_rgb"]).transpose(0, 3, 1, 2)  # golden is NCHW
    np.testing.assert_array_equal(ours[:, :, ::56, :], g["clip_pixel_rows"])
    hashes = [hashlib.sha256(np.ascontiguousarray(p, dtype="<f4").tobytes()).hexdigest() for p in ours]
    assert hashes == list(g["clip_pixel_sha256"])


def test_preprocess_accepts_list_of_sizes_and_rejects_bad_input():
    frames = [np.zeros((30, 40, 3), np.uint8), np.full((80, 20, 3), 255, np.uint8)]
    out = clip.clip_preprocess(frames)
    assert out.shape == (2, 224, 224, 3)
    np.testing.assert_allclose(
        out[1, 0, 0], (1 - np.array(clip.CLIP_MEAN)) / np.array(clip.CLIP_STD), rtol=1e-6
    )
    with pytest.raises(ValueError, match="frame 0 must be uint8"):
        clip.clip_preprocess([np.zeros((30, 40, 3), np.float32)])
    with pytest.raises(ValueError, match=r"expected frames \[N, H, W, 3\]"):
        clip.clip_preprocess(np.zeros((30, 40, 3), np.uint8))


# ------------------------------------------------------------------------------------ model


def test_clip_parity_with_transformers():
    hc, hm = _hf_tiny(hidden_act="quick_gelu")
    cfg = clip.from_hf_config(hc.to_dict())
    assert (cfg.num_layers, cfg.num_heads, cfg.patch_size, cfg.grid) == (3, 3, 7, 5)
    model = clip.CLIPVisionTower(cfg, rngs=nnx.Rngs(0))
    convert_clip({k: v.numpy() for k, v in hm.state_dict().items()}, cfg, model)

    x = np.random.RandomState(1).randn(2, 3, 35, 35).astype(np.float32)
    with torch.no_grad():
        out = hm(torch.from_numpy(x), output_hidden_states=True)
    pixels = jnp.asarray(x.transpose(0, 2, 3, 1))

    @nnx.jit
    def run(m, p):
        # HF hidden_states[0] is the embeddings output (after pre_layrnorm), [k] after k layers.
        return {s: m(p, select_layer=s, drop_cls=False) for s in (-2, -1, -4, 1)}, m(p), m.pooled_output(p)

    by_layer, feats, pooled = run(model, pixels)
    for select, ours in by_layer.items():
        ref = out.hidden_states[select].numpy()
        assert np.abs(np.asarray(ours) - ref).max() <= 1e-5 * np.abs(ref).max(), select
    # LLaVA features: hidden_states[-2] with CLS dropped.
    assert feats.shape == (2, 25, 24)
    ref = out.hidden_states[-2].numpy()[:, 1:]
    assert np.abs(np.asarray(feats) - ref).max() <= 1e-5 * np.abs(ref).max()
    ref = out.pooler_output.numpy()
    assert np.abs(np.asarray(pooled) - ref).max() <= 1e-5 * np.abs(ref).max()


def test_clip_exact_gelu_variant():
    hc, hm = _hf_tiny(hidden_act="gelu")
    cfg = clip.from_hf_config(hc.to_dict())
    assert cfg.hidden_act == "gelu"
    model = clip.CLIPVisionTower(cfg, rngs=nnx.Rngs(0))
    convert_clip({k: v.numpy() for k, v in hm.state_dict().items()}, cfg, model)
    x = np.random.RandomState(2).randn(1, 3, 35, 35).astype(np.float32)
    with torch.no_grad():
        ref = hm(torch.from_numpy(x), output_hidden_states=True).hidden_states[-2].numpy()[:, 1:]
    ours = np.asarray(model(jnp.asarray(x.transpose(0, 2, 3, 1))))
    assert np.abs(ours - ref).max() <= 1e-5 * np.abs(ref).max()


def test_only_needed_layers_run():
    cfg = clip.tiny(num_layers=3, image_size=28)
    model = clip.CLIPVisionTower(cfg, rngs=nnx.Rngs(0))
    pixels = jnp.asarray(np.random.RandomState(0).randn(1, 28, 28, 3), jnp.float32)
    run = nnx.jit(lambda m, p: (m(p, select_layer=-2), m(p, select_layer=-1)))
    ref, _ = run(model, pixels)
    assert ref.shape == (1, 4, 32)
    # Corrupting the last layer must not change hidden_states[-2].
    model.layers.mlp.fc2.kernel.set_value(model.layers.mlp.fc2.kernel[...].at[-1].set(jnp.nan))
    second_last, last = run(model, pixels)
    np.testing.assert_array_equal(np.asarray(second_last), np.asarray(ref))
    assert np.isnan(np.asarray(last)).all()
    with pytest.raises(ValueError, match="out of range"):
        model(pixels, select_layer=-5)
    with pytest.raises(ValueError, match="expects"):
        model(pixels[:, :14])


def test_config_presets_and_refusals():
    cfg = clip.clip_vit_l14_224()
    assert (
        cfg.hidden_size,
        cfg.num_layers,
        cfg.num_heads,
        cfg.intermediate_size,
        cfg.patch_size,
        cfg.image_size,
    ) == (1024, 24, 16, 4096, 14, 224)
    assert cfg.hidden_act == "quick_gelu" and cfg.layer_norm_eps == 1e-5 and cfg.num_patches == 256
    assert cfg.layers_for(-2) == 23 and cfg.layers_for(0) == 0
    full = {
        "model_type": "clip",
        "vision_config": {"hidden_size": 48, "num_attention_heads": 4, "num_hidden_layers": 2},
    }
    assert clip.from_hf_config(full).hidden_size == 48
    with pytest.raises(ConfigError, match="hidden_act 'relu'"):
        clip.from_hf_config({"hidden_act": "relu"})
    with pytest.raises(ConfigError, match="dtype"):
        clip.tiny(dtype="float16")


def test_vit_l14_parameter_count_equals_transformers():
    from transformers import CLIPVisionConfig, CLIPVisionModel

    with torch.device("meta"):
        hf = CLIPVisionModel(
            CLIPVisionConfig(
                hidden_size=1024,
                intermediate_size=4096,
                num_hidden_layers=24,
                num_attention_heads=16,
                patch_size=14,
                image_size=224,
            )
        )
    hf_count = sum(p.numel() for p in hf.parameters())
    model = nnx.eval_shape(lambda: clip.CLIPVisionTower(clip.clip_vit_l14_224(), rngs=nnx.Rngs(0)))
    ours = sum(int(np.prod(s)) for s in param_shapes(model).values())
    assert ours == hf_count
    assert 303_000_000 < ours < 304_000_000


def test_load_clip_dir_and_conversion_errors():
    cfg, model = load_clip(GOLDEN / "llava_clip_vit_tiny")
    assert cfg == clip.tiny()
    assert not any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(nnx.state(model)))

    from safetensors.numpy import load_file

    sd = load_file(str(GOLDEN / "llava_clip_vit_tiny" / "model.safetensors"))
    target = nnx.eval_shape(lambda: clip.CLIPVisionTower(cfg, rngs=nnx.Rngs(0)))
    missing = {k: v for k, v in sd.items() if k != "vision_model.encoder.layers.1.mlp.fc1.bias"}
    with pytest.raises(
        ConversionError, match=r"layers/mlp/fc1/bias: no checkpoint tensor for layer\(s\) \[1\]"
    ):
        convert_clip(missing, cfg, target)
    with pytest.raises(ConversionError, match=r"missing[\s\S]*\n  patch_embedding($|\n)"):
        convert_clip({k: v for k, v in sd.items() if "patch_embedding" not in k}, cfg, target)
    with pytest.raises(ConversionError, match=r"unexpected[\s\S]*vision_model\.extra_head\.weight"):
        convert_clip({**sd, "vision_model.extra_head.weight": np.zeros(3)}, cfg, target)
    bad = dict(sd)
    bad["vision_model.embeddings.position_embedding.weight"] = np.zeros((256, 32), np.float32)
    with pytest.raises(
        ConversionError, match=r"mis-shaped[\s\S]*position_embedding: checkpoint gives \(256, 32\)"
    ):
        convert_clip(bad, cfg, target)
    # Text-tower keys of a full CLIPModel are ignored.
    convert_clip(
        {**sd, "text_model.embeddings.token_embedding.weight": np.zeros((5, 4)), "logit_scale": np.zeros(())},
        cfg,
        target,
    )
    with pytest.raises(ConversionError, match="no such file"):
        load_clip(GOLDEN / "does_not_exist")
