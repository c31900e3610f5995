"""Model directories: round trip, atomic replacement under a real SIGKILL, mismatch errors."""

import os
import signal
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest

from glus_jax import checkpoint as ckpt


def _params(scale=1.0):
    return {
        "tower": {"layers": {0: {"kernel": jnp.full((3, 4), scale)}, 1: {"kernel": jnp.full((3, 4), 2 * scale)}}},
        "head": {"bias": jnp.arange(5, dtype=jnp.float32) * scale},
    }


def test_roundtrip_with_config_and_tokenizer(tmp_path):
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer.model").write_bytes(b"\x00sp")
    ckpt.save_model_dir(tmp_path / "m", _params(), {"model": {"depth": 2}}, tokenizer_dir=tok)
    assert ckpt.load_config(tmp_path / "m") == {"model": {"depth": 2}}
    assert (tmp_path / "m" / "tokenizer" / "tokenizer.model").read_bytes() == b"\x00sp"
    restored = ckpt.load_params(tmp_path / "m", ckpt.abstract_of(_params()))
    np.testing.assert_array_equal(restored["tower"]["layers"]["1"]["kernel"], np.full((3, 4), 2.0))
    np.testing.assert_array_equal(restored["head"]["bias"], np.arange(5))


def test_mismatched_params_list_every_path(tmp_path):
    ckpt.save_model_dir(tmp_path / "m", _params(), {})
    other = {"tower": {"layers": {0: {"kernel": jnp.zeros((3, 5))}}}, "extra": {"w": jnp.zeros(2)}}
    with pytest.raises(ckpt.CheckpointError) as e:
        ckpt.load_params(tmp_path / "m", ckpt.abstract_of(other))
    msg = str(e.value)
    assert "extra/w" in msg and "tower/layers/1/kernel" in msg and "head/bias" in msg
    assert "tower/layers/0/kernel: stored (3, 4), model expects (3, 5)" in msg


def test_missing_or_incomplete_directory(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="does not exist"):
        ckpt.load_params(tmp_path / "nope")
    ckpt.save_model_dir(tmp_path / "m", _params(), {})
    (tmp_path / "m" / "COMPLETE").unlink()
    with pytest.raises(ckpt.CheckpointError, match="incomplete model directory, COMPLETE is missing"):
        ckpt.load_config(tmp_path / "m")


def test_kill_mid_save_leaves_previous_directory_intact(tmp_path):
    ckpt.save_model_dir(tmp_path / "m", _params(1.0), {"version": 1})
    # A second save is killed (SIGKILL, no cleanup handlers) after its params are on disk but
    # before the directory is swapped in.
    script = textwrap.dedent(f"""
        import os, shutil, signal
        import jax.numpy as jnp
        from glus_jax import checkpoint as ckpt
        def killed(*a, **k):
            os.kill(os.getpid(), signal.SIGKILL)
        shutil.copytree = killed
        params = {{"tower": {{"layers": {{0: {{"kernel": jnp.full((3, 4), 9.0)}}, 1: {{"kernel": jnp.zeros((3, 4))}}}}}},
                   "head": {{"bias": jnp.zeros(5)}}}}
        ckpt.save_model_dir({str(tmp_path / "m")!r}, params, {{"version": 2}}, tokenizer_dir={str(tmp_path)!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert ckpt.load_config(tmp_path / "m") == {"version": 1}
    restored = ckpt.load_params(tmp_path / "m", ckpt.abstract_of(_params()))
    np.testing.assert_array_equal(restored["tower"]["layers"]["0"]["kernel"], np.ones((3, 4)))
    # The next save cleans up what the killed one left behind.
    ckpt.save_model_dir(tmp_path / "m", _params(3.0), {"version": 3})
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".m.")]
    assert ckpt.load_config(tmp_path / "m") == {"version": 3}
