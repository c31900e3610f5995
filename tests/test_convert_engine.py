"""The conversion framework on a small module and its PyTorch twin: layout transforms, layer stacking,
strict error reporting, and the readers (safetensors, sharded .bin with index, weights-only .pt)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.torch import save_file

from glus_jax.layers import LayerNorm, Linear
from tools.convert_weights import (
    ConversionError,
    Rule,
    conv_oihw_to_hwio,
    conv_transpose_flip,
    convert,
    linear_t,
    load_into,
    param_shapes,
    read_state_dict,
)

L, D = 3, 6


class TorchTwin(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 5, kernel_size=3, padding=1)
        self.up = torch.nn.ConvTranspose2d(5, 4, kernel_size=2, stride=2)
        self.norm = torch.nn.LayerNorm(4)
        self.layers = torch.nn.ModuleList(torch.nn.Linear(D, D) for _ in range(L))
        self.proj = torch.nn.Linear(4, D)
        self.register_buffer("unused_buffer", torch.ones(2))

    def forward(self, x):  # x [B, 3, H, W]
        y = self.up(self.conv(x)).permute(0, 2, 3, 1)  # NHWC
        h = self.proj(self.norm(y))
        for layer in self.layers:
            h = h + torch.tanh(layer(h))
        return h


class FlaxTwin(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(3, 5, (3, 3), padding=1, rngs=rngs)
        self.up = nnx.ConvTranspose(5, 4, (2, 2), strides=(2, 2), padding="VALID", rngs=rngs)
        self.norm = LayerNorm(4)
        self.layers = nnx.Param(jnp.zeros((L, D, D)))  # stacked [layer, in, out]
        self.layers_bias = nnx.Param(jnp.zeros((L, D)))
        self.proj = Linear(4, D, rngs=rngs)

    def __call__(self, x):  # x [B, H, W, 3]
        h = self.proj(self.norm(self.up(self.conv(x))))

        def step(h, wb):
            w, b = wb
            return h + jnp.tanh(h @ w + b), None

        h, _ = jax.lax.scan(step, h, (self.layers[...], self.layers_bias[...]))
        return h


RULES = [
    Rule(r"conv\.weight", "conv/kernel", conv_oihw_to_hwio),
    Rule(r"conv\.bias", "conv/bias"),
    Rule(r"up\.weight", "up/kernel", conv_transpose_flip),
    Rule(r"up\.bias", "up/bias"),
    Rule(r"norm\.weight", "norm/scale"),
    Rule(r"norm\.bias", "norm/bias"),
    Rule(r"layers\.(\d+)\.weight", "layers", linear_t, stack=1),
    Rule(r"layers\.(\d+)\.bias", "layers_bias", stack=1),
    Rule(r"proj\.weight", "proj/kernel", linear_t),
    Rule(r"proj\.bias", "proj/bias"),
]
IGNORE = [r"unused_buffer"]


def _state_dict(tm):
    return {k: v.detach().numpy() for k, v in tm.state_dict().items()}


def _pair():
    torch.manual_seed(0)
    tm = TorchTwin()
    with torch.no_grad():
        for p in tm.parameters():
            p.add_(0.1 * torch.randn_like(p))  # no default-valued norm weights
    return tm, FlaxTwin(nnx.Rngs(0))


def test_converted_twin_matches_pytorch():
    tm, fm = _pair()
    flat = convert(_state_dict(tm), RULES, param_shapes(fm), ignore=IGNORE)
    load_into(fm, flat)
    x = torch.randn(2, 3, 7, 5)
    want = tm(x).detach().numpy()
    got = np.asarray(fm(jnp.asarray(x.numpy().transpose(0, 2, 3, 1))))
    np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max())


def test_missing_unexpected_and_misshaped_keys_are_all_reported():
    tm, fm = _pair()
    sd = _state_dict(tm)
    del sd["proj.bias"]
    sd["surprise.weight"] = np.zeros(3, np.float32)
    sd["conv.bias"] = np.zeros(7, np.float32)
    with pytest.raises(ConversionError) as e:
        convert(sd, RULES, param_shapes(fm), ignore=IGNORE)
    msg = str(e.value)
    assert "missing" in msg and "proj/bias" in msg
    assert "unexpected" in msg and "surprise.weight" in msg
    assert "mis-shaped" in msg and "conv/bias: checkpoint gives (7,), model expects (5,)" in msg
    assert "unused_buffer" not in msg


def test_gaps_in_stacked_layers_are_reported():
    tm, fm = _pair()
    sd = _state_dict(tm)
    del sd["layers.1.weight"]
    with pytest.raises(ConversionError, match=r"layer indices \[0, 2\]"):
        convert(sd, RULES, param_shapes(fm), ignore=IGNORE)


def test_allowed_missing_and_unexpected_pass_explicitly():
    tm, fm = _pair()
    sd = _state_dict(tm)
    del sd["proj.bias"]
    sd["surprise.weight"] = np.zeros(3, np.float32)
    flat = convert(sd, RULES, param_shapes(fm), ignore=IGNORE, allow_missing=[r"proj/bias"], allow_unexpected=True)
    assert "proj/bias" not in flat and "proj/kernel" in flat


def test_load_into_rejects_unknown_paths_and_shapes():
    _, fm = _pair()
    with pytest.raises(ConversionError, match="unknown parameter paths"):
        load_into(fm, {"nope/kernel": np.zeros(3)})
    with pytest.raises(ConversionError, match="proj/bias"):
        load_into(fm, {"proj/bias": np.zeros(3)})


def test_readers_safetensors_sharded_bin_and_pt(tmp_path):
    tm, _ = _pair()
    sd = tm.state_dict()
    want = _state_dict(tm)
    # safetensors file
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "model.safetensors")
    got = read_state_dict(tmp_path / "model.safetensors")
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)
    # sharded HF .bin with index
    hf = tmp_path / "hf"
    hf.mkdir()
    keys = sorted(sd)
    shards = {"pytorch_model-00001-of-00002.bin": keys[:4], "pytorch_model-00002-of-00002.bin": keys[4:]}
    for name, ks in shards.items():
        torch.save({k: sd[k] for k in ks}, hf / name)
    weight_map = {k: name for name, ks in shards.items() for k in ks}
    (hf / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    got = read_state_dict(hf)
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)
    # SAM2-style .pt wrapping the state dict under "model"
    torch.save({"model": sd}, tmp_path / "sam2.pt")
    got = read_state_dict(tmp_path / "sam2.pt", subkey="model")
    assert np.array_equal(got["conv.weight"], want["conv.weight"])


class Evil:
    def __reduce__(self):
        return (print, ("arbitrary code ran",))


def test_pt_with_pickled_object_is_refused(tmp_path):
    torch.save({"model": {"w": torch.zeros(2)}, "evil": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ConversionError, match="refused to unpickle"):
        read_state_dict(tmp_path / "evil.pt", subkey="model")


def test_corrupt_and_missing_files_name_the_path(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ConversionError, match="bad.safetensors"):
        read_state_dict(tmp_path / "bad.safetensors")
    with pytest.raises(ConversionError, match="no such file"):
        read_state_dict(tmp_path / "absent.pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConversionError, match="no safetensors"):
        read_state_dict(tmp_path / "empty")
