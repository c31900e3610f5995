"""SAM2 configs: presets vs the released yamls, strict yaml reading, full-size parameter counts, and
the conversion table's strictness."""

from __future__ import annotations

import dataclasses
import os
from unittest import mock

import numpy as np
import pytest
import sam2
import torch
import yaml
from flax import nnx
from hydra.utils import instantiate
from omegaconf import OmegaConf

from glus_jax.config import ConfigError, from_dict, to_dict
from glus_jax.models.sam2 import config as C
from glus_jax.models.sam2.hieradet import block_segments
from glus_jax.models.sam2.sam2 import SAM2Model
from tests.conftest import GOLDEN
from tools.convert_weights.engine import ConversionError, param_shapes
from tools.convert_weights.sam2 import convert_sam2

PKG_CONFIGS = os.path.join(os.path.dirname(sam2.__file__), "configs")
PRESETS = [("t", C.hiera_t), ("s", C.hiera_s), ("b+", C.hiera_b_plus), ("l", C.hiera_l)]


@pytest.mark.parametrize("name,preset", PRESETS)
def test_presets_equal_released_yamls(name, preset):
    # The package's configs/sam2/*.yaml are the SAM2 2.0 yamls GLUS vendors, except RoPE feat_sizes
    # (64 vs 32), which is recomputed from the feature size and so not part of the config.
    assert C.from_yaml(f"{PKG_CONFIGS}/sam2/sam2_hiera_{name}.yaml") == preset()


def test_oracle_yaml():
    cfg = C.from_yaml(GOLDEN / "sam2_hiera_tiny_oracle.yaml")
    t = cfg.image_encoder.trunk
    assert (t.embed_dim, t.stages, t.global_att_blocks, t.window_spec) == (
        16,
        (1, 1, 2, 1),
        (3,),
        (8, 4, 14, 7),
    )
    assert cfg.hidden_dim == 64 and cfg.mem_dim == 32 and cfg.image_embedding_size == 64
    assert cfg.mask_decoder.dynamic_multimask_via_stability  # build_sam2(apply_postprocessing=True)
    assert cfg.memory_attention.num_layers == 2 and cfg.memory_attention.kv_in_dim == 32
    assert cfg.memory_encoder.layer_scale_init_value == 1e-6
    assert from_dict(C.SAM2Config, to_dict(cfg)) == cfg  # model-directory round trip
    assert not C.from_yaml(
        GOLDEN / "sam2_hiera_tiny_oracle.yaml", apply_postprocessing=False
    ).dynamic_multimask_via_stability


def _write(tmp_path, data) -> str:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda m: m["image_encoder"]["trunk"].update(bogus=1), "bogus"),
        (lambda m: m["image_encoder"]["trunk"].update(drop_path_rate=0.1), "drop_path_rate"),
        (lambda m: m["image_encoder"].update(_target_="my.Encoder"), "my.Encoder"),
        (lambda m: m["image_encoder"]["neck"].update(kernel_size=3), "1x1"),
        (lambda m: m.update(no_obj_embed_spatial=True), "no_obj_embed_spatial"),  # a SAM 2.1-only flag
        (lambda m: m["memory_attention"]["layer"]["cross_attention"].update(num_heads=2), "num_heads"),
        (lambda m: m["memory_attention"]["layer"].pop("dropout"), "dropout"),
        (lambda m: m.update(image_size=1000), "image_size"),
    ],
)
def test_from_yaml_is_strict(tmp_path, edit, message):
    data = yaml.safe_load((GOLDEN / "sam2_hiera_tiny_oracle.yaml").read_text())
    edit(data["model"])
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError, match=message) as info:
        C.from_yaml(path)
    assert "bad.yaml" in str(info.value)


def test_from_yaml_refuses_sam21_configs():
    with pytest.raises(ConfigError, match="no_obj_embed_spatial|proj_tpos_enc|use_signed_tpos"):
        C.from_yaml(f"{PKG_CONFIGS}/sam2.1/sam2.1_hiera_t.yaml")


def test_hiera_l_segments():
    segs = block_segments(C.hiera_l().image_encoder.trunk)
    assert sum(len(s) for s in segs) == 48 and len(segs) == 12
    assert [len(s) for s in segs] == [2, 1, 5, 1, 14, 1, 9, 1, 9, 1, 1, 3]


def _torch_counts(name: str) -> dict[str, int]:
    """Parameters + buffers per top-level module of the package's SAM2Base built from the yaml on the
    meta device (Hiera's drop-path schedule needs a real linspace)."""
    cfg = OmegaConf.load(f"{PKG_CONFIGS}/sam2/sam2_hiera_{name}.yaml")
    linspace = torch.linspace
    with (
        torch.device("meta"),
        mock.patch("torch.linspace", lambda *a, **k: linspace(*a, **{**k, "device": "cpu"})),
    ):
        model = instantiate(cfg.model, _recursive_=True)
    counts: dict[str, int] = {}
    for key, p in list(model.named_parameters()) + list(model.named_buffers()):
        counts[key.split(".")[0]] = counts.get(key.split(".")[0], 0) + p.numel()
    return counts


@pytest.mark.parametrize("name,preset", PRESETS)
def test_full_size_parameter_counts(name, preset):
    """nnx.eval_shape of each preset has exactly the parameters of the PyTorch model (the package is
    SAM 2.1 code, but with these 2.0 yamls it builds the 2.0 parameter set; the prompt encoder's
    Gaussian matrix is a buffer there and a Param here)."""
    model = nnx.eval_shape(lambda: SAM2Model(preset(), rngs=nnx.Rngs(0)))
    ours: dict[str, int] = {}
    for path, shape in param_shapes(model).items():
        ours[path.split("/")[0]] = ours.get(path.split("/")[0], 0) + int(np.prod(shape))
    assert ours == _torch_counts(name)
    if name == "l":
        assert sum(ours.values()) == 224_430_386  # SAM2 hiera-large: ~224.4 M


def test_convert_is_strict():
    cfg = C.from_yaml(GOLDEN / "sam2_hiera_tiny_oracle.yaml")
    model = nnx.eval_shape(lambda: SAM2Model(cfg, rngs=nnx.Rngs(0)))
    from safetensors.numpy import load_file

    sd = {
        **load_file(str(GOLDEN / "sam2_visual_model.safetensors")),
        **load_file(str(GOLDEN / "mem_weights.safetensors")),
    }
    shapes = param_shapes(model)
    flat = convert_sam2(sd, cfg, target_shapes=shapes, prefix="model.visual_model.")
    assert set(flat) == set(shapes)
    # Tiny trunk: blocks 0..4 are all structurally different (segments of one); block 2 opens stage 3.
    assert block_segments(cfg.image_encoder.trunk) == [[0], [1], [2], [3], [4]]
    np.testing.assert_array_equal(
        flat["image_encoder/trunk/segments/2/blocks/attn/qkv/kernel"][0],
        sd["model.visual_model.image_encoder.trunk.blocks.2.attn.qkv.weight"].T,
    )
    bad = dict(sd)
    bad.pop("model.visual_model.sam_mask_decoder.iou_token.weight")
    bad["model.visual_model.sam_mask_decoder.extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ConversionError, match="iou_token(.|\n)*extra"):
        convert_sam2(bad, cfg, target_shapes=shapes, prefix="model.visual_model.")
    with pytest.raises(ConversionError, match="no checkpoint keys"):
        convert_sam2(sd, cfg, target_shapes=shapes, prefix="visual.")
    other = dataclasses.replace(
        cfg,
        image_encoder=dataclasses.replace(
            cfg.image_encoder, trunk=dataclasses.replace(cfg.image_encoder.trunk, stages=(1, 1, 3, 1))
        ),
    )
    with pytest.raises(ConversionError):
        convert_sam2(
            sd,
            other,
            target_shapes=param_shapes(nnx.eval_shape(lambda: SAM2Model(other, rngs=nnx.Rngs(0)))),
            prefix="model.visual_model.",
        )
