"""Mesh construction, logical-axis rules, and a sharded forward equal to the unsharded one on 8 fake
CPU devices (in a subprocess: the device count is fixed when jax initialises)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest
from jax.sharding import PartitionSpec as P

from glus_jax import sharding


def test_logical_to_spec_uses_rules_and_each_mesh_axis_once():
    rules = (("batch", ("data", "fsdp")), ("embed", "fsdp"), ("mlp", "tensor"), ("none", None))
    assert sharding.logical_to_spec(("embed", "mlp"), rules) == P("fsdp", "tensor")
    assert sharding.logical_to_spec(("batch", "embed"), rules) == P(("data", "fsdp"), None)
    assert sharding.logical_to_spec((None, "none"), rules) == P(None, None)
    with pytest.raises(KeyError, match="'unknown'"):
        sharding.logical_to_spec(("unknown",), rules)


def test_make_mesh_fills_and_validates():
    n = jax.device_count()
    mesh = sharding.make_mesh((1, -1, 1))
    assert dict(mesh.shape) == {"data": 1, "fsdp": n, "tensor": 1}
    with pytest.raises(ValueError, match="at most one axis"):
        sharding.make_mesh((-1, -1, 1))
    with pytest.raises(ValueError, match="needs"):
        sharding.make_mesh((n + 1, 1, 1))
    with pytest.raises(ValueError, match="unknown mesh axes"):
        sharding.make_mesh({"model": 1})


def test_sharded_forward_equals_unsharded_on_8_devices():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    script = Path(__file__).with_name("sharded_forward_check.py")
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300,
                          cwd=script.parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["max_abs_diff"] <= 1e-5
    # The (llm_embed, llm_mlp) kernel [16, 24] is split over fsdp x tensor = 2 x 2.
    assert out["kernel_spec"] == ["fsdp", "tensor"]
    assert out["kernel_shard_shape"] == [8, 12]
