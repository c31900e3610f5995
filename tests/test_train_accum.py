"""Gradient accumulation and the accelerator settings of the train step (GLUS-tiny, SAM2 at 64 px):

- Accumulating 2 micro-batches of 2 samples (`train.grad_accum=2`, one group each) is one optimizer step
  on their mean gradient, i.e. the same as one step on the 4 samples split into 2 groups (DeepSpeed's
  mean over accumulation steps = mean over GPUs). Dropout and the contrastive bank (whose history
  differs between the two layouts) are off. Metrics rtol 1e-5; parameters within 1e-5 except <= 0.01%
  float-noise entries (Adam's first step, see test_train_sharded) within 2 lr.
- bfloat16 compute with rematerialised LLM blocks (configs/glus_s.py's settings): finite, float32
  master weights and optimizer state, loss within 5% of the float32 loss on the same batch.

Slow: three train-step compilations, 3-5 minutes here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from glus_jax.data import pipeline
from glus_jax.train import loop
from tests import train_world

pytestmark = pytest.mark.slow

COMMON = ["--config.train.steps=20", "--config.train.warmup_steps=0", "--config.train.lr=1e-3",
          "--config.train.dropout=false", "--config.train.contrastive=false"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return train_world.model_dir(tmp_path_factory.mktemp("accum"))


@pytest.fixture(scope="module")
def batches(model_dir):
    cfg = train_world.tiny_config(model_dir)
    _, tok, _ = loop.build_model(cfg)
    it = pipeline.make_train_iterator(cfg, tok, 0, 1, batch_size=2)
    return [next(it) for _ in range(2)]


def _flat(state):
    return {"/".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(state)}


def _run(s, local, steps=2):
    state, history = s.state, []
    for _ in range(steps):
        state, m = s.step_fn(state, loop.global_batch(local, s.mesh, s.rules))
        history.append({k: float(v) for k, v in jax.device_get(m).items()})
    return state, history


def test_grad_accumulation_equals_one_larger_batch(model_dir, batches):
    accum = loop.setup(train_world.tiny_config(model_dir, overrides=[*COMMON, "--config.train.grad_accum=2"]))
    state_a, hist_a = _run(accum, loop.stack_micro_batches(batches))  # [2, 2, ...]
    wide = loop.setup(train_world.tiny_config(model_dir, overrides=[*COMMON, "--config.train.batch_size=4"]),
                      num_groups=2)
    merged = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    state_b, hist_b = _run(wide, loop.stack_micro_batches([merged]))  # [1, 4, ...]
    for a, b in zip(hist_a, hist_b):
        for k in ("loss", "ce_loss", "mask_bce_loss", "mask_dice_loss", "grad_norm", "lr"):
            np.testing.assert_allclose(a[k], b[k], rtol=1e-5, err_msg=k)
    lr = hist_a[1]["lr"]
    pa, pb = _flat(state_a.params), _flat(state_b.params)
    total = loose = 0
    for k in pa:
        diff = np.abs(pa[k].astype(np.float64) - pb[k])
        total, loose = total + diff.size, loose + int((diff > 1e-5).sum())
        assert diff.max() <= 2 * lr, (k, diff.max())
    assert loose <= 1e-4 * total, (loose, total)


def test_bfloat16_with_remat(model_dir, batches):
    f32 = loop.setup(train_world.tiny_config(model_dir, overrides=COMMON))
    bf16 = loop.setup(train_world.tiny_config(
        model_dir, overrides=[*COMMON, "--config.model.dtype=bfloat16", "--config.model.remat=true"]))
    lora_a = bf16.state.params["llava"]["llm"]["model"]["layers"]["self_attn"]["q_proj"]["lora_a"]
    assert lora_a.get_value().dtype == jnp.float32
    local = loop.stack_micro_batches(batches[:1])
    _, ref = _run(f32, local, steps=1)
    state, hist = _run(bf16, local, steps=2)
    assert all(np.isfinite(list(h.values())).all() for h in hist)
    np.testing.assert_allclose(hist[0]["loss"], ref[0]["loss"], rtol=0.05)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))
    assert all(x.dtype in (jnp.float32, jnp.int32) for x in jax.tree.leaves(state.opt_state))
