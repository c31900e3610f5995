"""Dropout of the training forward is a switch: the oracle's forward ran without any stochastic op (the
golden test), real training has LoRA dropout (0.05) and SAM2 memory-attention dropout (0.1) as
`model.train()` does. GLUS-tiny, SAM2 at 64 px, a pipeline batch of the golden MeViS video."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from glus_jax.data import pipeline
from glus_jax.train import forward as forward_lib
from glus_jax.train import loop
from tests import train_world


def test_dropout_switch(tmp_path):
    """Without a key nothing is stochastic; with one and only memory-attention dropout on, the LLM side is
    unchanged, frame 0 (empty bank: no memory attention) too, and the later query frames differ."""
    model_dir = train_world.model_dir(tmp_path)
    cfg = train_world.tiny_config(model_dir)
    model, tok, _ = loop.build_model(cfg)
    # Non-zero adapters (B is 0 at init, which would make LoRA dropout invisible).
    attn = model.llava.llm.model.layers.self_attn
    for proj in (attn.q_proj, attn.v_proj):
        proj.lora_b.set_value(jnp.full(proj.lora_b.shape, 0.05))
    graphdef, state = nnx.split(model)
    it = pipeline.make_train_iterator(cfg, tok, 0, 1, batch_size=2)
    local = next(it)
    batch = {k: jnp.asarray(v) for k, v in local.items() if k in loop.STEP_KEYS}
    opts = forward_lib.ForwardOptions(lora_dropout=False, mem_attn_dropout=True)

    @jax.jit
    def both(state):
        m = nnx.merge(graphdef, state)
        plain = forward_lib.forward(m, batch, dropout_rng=None)
        noisy = forward_lib.forward(m, batch, options=opts, dropout_rng=jax.random.PRNGKey(1))
        lora_seg = forward_lib.llm_forward(m, batch, dropout_rng=jax.random.PRNGKey(2))[0]
        return plain, noisy, lora_seg

    plain, noisy, lora_seg = jax.device_get(both(state))
    np.testing.assert_array_equal(noisy.seg_embeds, plain.seg_embeds)  # LoRA dropout off: same LLM
    assert np.abs(lora_seg - plain.seg_embeds).max() > 1e-4  # LoRA dropout on (the adapters are non-zero)
    valid = np.asarray(local["exp_valid"])
    a, b = plain.low_res_logits[valid], noisy.low_res_logits[valid]  # [n, Q, h, w]
    np.testing.assert_array_equal(a[:, 0], b[:, 0])
    assert all(np.abs(a[:, q] - b[:, q]).max() > 1e-4 for q in range(1, a.shape[1]))
