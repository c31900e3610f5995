"""LLaMA decoder: parity with transformers' LlamaForCausalLM, KV cache, LoRA, remat, sizes."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from glus_jax.config import ConfigError
from glus_jax.models import llama
from tools.convert_weights.engine import ConversionError, convert, load_into, param_shapes
from tools.convert_weights.llava import llama_rules


def _randomize(module: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name:
                p.copy_(1 + 0.1 * noise)
            elif "embed" in name:
                p.copy_(noise)
            else:
                p.copy_(noise * p.shape[-1] ** -0.5)


def _hf_pair(num_heads=5, num_kv_heads=5, hidden=40, seed=0):
    """A tiny random HF LlamaForCausalLM and our converted copy (odd sizes: vocab 37, mlp 56)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    hc = LlamaConfig(
        vocab_size=37,
        hidden_size=hidden,
        intermediate_size=56,
        num_hidden_layers=3,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        rms_norm_eps=1e-6,
        max_position_embeddings=64,
        attn_implementation="eager",
    )
    hf = LlamaForCausalLM(hc).eval()
    _randomize(hf, seed)
    cfg = llama.from_hf_config(hc.to_dict())
    state = {k: v.numpy() for k, v in hf.state_dict().items()}
    flat = convert(
        state,
        llama_rules(cfg),
        param_shapes(nnx.eval_shape(lambda: llama.LlamaForCausalLM(cfg, rngs=nnx.Rngs(0)))),
    )
    return hf, cfg, flat


def _ours(cfg, flat, seed=0):
    model = llama.LlamaForCausalLM(cfg, rngs=nnx.Rngs(seed))
    load_into(model, flat)
    return model


def _batch(b=3, t=11, vocab=37):
    ids = np.random.RandomState(0).randint(0, vocab, (b, t))
    mask = np.ones((b, t), bool)
    mask[1, 7:] = False  # right padding, as GLUS batches are
    mask[2, 4:] = False
    return ids, mask


# Module-level jitted entry points: compiled once per model structure and shape, reused by tests.
_forward = nnx.jit(lambda m, ids, am: m(ids, attention_mask=am))
_forward_pos = nnx.jit(lambda m, ids, am, pos: m(ids, attention_mask=am, positions=pos))
_forward_drop = nnx.jit(lambda m, ids, am, key: m(ids, attention_mask=am, dropout_rng=key))
_prefill = nnx.jit(lambda m, i, a, c: m.prefill(i, attention_mask=a, cache=c))
_decode = nnx.jit(lambda m, i, a, p, c: m.decode(i, attention_mask=a, positions=p, cache=c))


@pytest.mark.parametrize("heads,kv_heads,hidden", [(5, 5, 40), (6, 2, 36)])
def test_parity_with_transformers(heads, kv_heads, hidden):
    hf, cfg, flat = _hf_pair(heads, kv_heads, hidden)
    assert cfg.kv_heads == kv_heads and cfg.dim_head == hidden // heads
    model = _ours(cfg, flat)
    ids, mask = _batch()
    with torch.no_grad():
        out = hf(
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask).long(),
            output_hidden_states=True,
        )
    logits, hidden_states = _forward(model, jnp.asarray(ids), jnp.asarray(mask))
    ref_logits, ref_hidden = (
        out.logits.numpy(),
        out.hidden_states[-1].numpy(),
    )  # hidden_states[-1]: after final norm
    # Every position, padding included (a right-padded query still sees its real prefix).
    assert np.abs(np.asarray(logits) - ref_logits).max() <= 1e-5 * np.abs(ref_logits).max()
    assert np.abs(np.asarray(hidden_states) - ref_hidden).max() <= 1e-5 * np.abs(ref_hidden).max()
    assert logits.dtype == jnp.float32 and logits.shape == (3, 11, 37)


def test_positions_are_explicit():
    _, cfg, flat = _hf_pair()
    model = _ours(cfg, flat)
    ids, mask = _batch()
    ids, am = jnp.asarray(ids), jnp.ones(mask.shape, bool)
    logits, _ = _forward(model, ids, am)
    pos = np.broadcast_to(np.arange(11), (3, 11))
    default, _ = _forward_pos(model, ids, am, jnp.asarray(pos))
    np.testing.assert_array_equal(np.asarray(default), np.asarray(logits))
    # RoPE is relative: a uniform shift changes nothing (up to rounding), a gap does.
    shifted, _ = _forward_pos(model, ids, am, jnp.asarray(pos + 5))
    gapped, _ = _forward_pos(model, ids, am, jnp.asarray(pos + 5 * (pos >= 6)))
    np.testing.assert_allclose(np.asarray(shifted), np.asarray(logits), atol=1e-4)
    np.testing.assert_array_equal(np.asarray(gapped)[:, :6], np.asarray(logits)[:, :6])
    assert np.abs(np.asarray(gapped) - np.asarray(logits))[:, 6:].max() > 1e-2


def test_kv_cache_prefill_decode_and_prefix_reuse():
    _, cfg, flat = _hf_pair()
    model = _ours(cfg, flat)
    ids, mask = _batch()
    full, _ = _forward(model, jnp.asarray(ids), jnp.asarray(mask))
    full = np.asarray(full)
    tol = 1e-5 * np.abs(full).max()

    # Prefill 6 tokens into an empty 16-slot cache, then decode one token at a time.
    logits, _, cache = _prefill(
        model, jnp.asarray(ids[:, :6]), jnp.asarray(mask[:, :6]), model.init_cache(3, 16)
    )
    steps = [np.asarray(logits)]
    for t in range(6, 11):
        pos = jnp.full((3, 1), t, jnp.int32)
        logits, _, cache = _decode(
            model, jnp.asarray(ids[:, t : t + 1]), jnp.asarray(mask[:, t : t + 1]), pos, cache
        )
        steps.append(np.asarray(logits))
    assert np.abs(np.concatenate(steps, axis=1) - full)[mask].max() <= tol
    np.testing.assert_array_equal(np.asarray(cache.length), [11, 11, 11])
    np.testing.assert_array_equal(np.asarray(cache.valid[:, :11]), mask)
    assert not np.asarray(cache.valid[:, 11:]).any()

    # Prefix reuse: keep the first 5 tokens, extend with the other 6 in one call.
    logits, _, _ = _prefill(model, jnp.asarray(ids[:, 5:]), jnp.asarray(mask[:, 5:]), cache.rewind(5))
    assert np.abs(np.asarray(logits) - full[:, 5:])[mask[:, 5:]].max() <= tol

    # One cached prefix (row 0, 5 tokens) shared by three continuations.
    _, _, prefix = _prefill(model, jnp.asarray(ids[:1, :5]), jnp.ones((1, 5), bool), model.init_cache(1, 16))
    conts = ids[[0, 2, 1], 5:]
    logits, _, _ = _prefill(model, jnp.asarray(conts), jnp.ones((3, 6), bool), prefix.repeat(3))
    ref, _ = _forward(
        model,
        jnp.asarray(np.concatenate([np.stack([ids[0, :5]] * 3), conts], axis=1)),
        jnp.ones((3, 11), bool),
    )
    assert np.abs(np.asarray(logits) - np.asarray(ref)[:, 5:]).max() <= tol


def test_cache_with_per_row_lengths_skips_padding():
    # Right-padded prefill, then each row continues right after its last real token.
    _, cfg, flat = _hf_pair()
    model = _ours(cfg, flat)
    ids, mask = _batch()
    ids[0, 10], mask[0, 10] = 0, False  # row lengths 10, 7, 4
    n = mask.sum(1)
    _, _, cache = _prefill(model, jnp.asarray(ids), jnp.asarray(mask), model.init_cache(3, 16))
    nxt = np.array([[3], [5], [7]])
    logits, _, cache = _decode(
        model, jnp.asarray(nxt), jnp.ones((3, 1), bool), jnp.asarray(n)[:, None], cache.rewind(jnp.asarray(n))
    )
    # Reference: each row's real tokens + the new one, right padded, in one full forward.
    seqs, seq_mask = np.zeros((3, 11), ids.dtype), np.zeros((3, 11), bool)
    for b in range(3):
        seqs[b, : n[b] + 1] = np.concatenate([ids[b, : n[b]], nxt[b]])
        seq_mask[b, : n[b] + 1] = True
    ref, _ = _forward(model, jnp.asarray(seqs), jnp.asarray(seq_mask))
    ref = np.asarray(ref)[np.arange(3), n]
    assert np.abs(np.asarray(logits)[:, 0] - ref).max() <= 1e-5 * np.abs(ref).max()


def _with_random_lora(cfg, flat, **lora):
    model = _ours(dataclasses.replace(cfg, **lora), flat, seed=1)
    key = jax.random.key(7)
    for _, m in nnx.iter_graph(model):
        if isinstance(m, llama.LoRALinear) and m.lora_b is not None:
            key, sub = jax.random.split(key)
            m.lora_b.set_value(0.3 * jax.random.normal(sub, m.lora_b.shape))
    return model


def test_lora_merge_equals_unmerged_and_dropout_only_in_training():
    _, cfg, flat = _hf_pair()
    ids, mask = _batch()
    base, _ = _forward(_ours(cfg, flat), jnp.asarray(ids), jnp.asarray(mask))
    model = _with_random_lora(
        cfg,
        flat,
        lora_rank=3,
        lora_alpha=5.0,
        lora_dropout=0.25,
        lora_targets=("q_proj", "v_proj", "down_proj"),
    )
    lora_state = nnx.state(model, llama.LoRAParam)
    shapes = {"/".join(map(str, p)): v.shape for p, v in nnx.to_flat_state(lora_state)}
    assert shapes == {
        "model/layers/self_attn/q_proj/lora_a": (3, 40, 3),
        "model/layers/self_attn/q_proj/lora_b": (3, 3, 40),
        "model/layers/self_attn/v_proj/lora_a": (3, 40, 3),
        "model/layers/self_attn/v_proj/lora_b": (3, 3, 40),
        "model/layers/mlp/down_proj/lora_a": (3, 56, 3),
        "model/layers/mlp/down_proj/lora_b": (3, 3, 40),
    }
    am = jnp.asarray(mask)
    unmerged, _ = _forward(model, jnp.asarray(ids), am)
    unmerged = np.asarray(unmerged)
    assert np.abs(unmerged - np.asarray(base)).max() > 0.1  # the adapters do something
    # Same rng -> same dropout mask; different rng or none -> different output.
    d1 = np.asarray(_forward_drop(model, jnp.asarray(ids), am, jax.random.key(0))[0])
    d1b = np.asarray(_forward_drop(model, jnp.asarray(ids), am, jax.random.key(0))[0])
    d2 = np.asarray(_forward_drop(model, jnp.asarray(ids), am, jax.random.key(1))[0])
    np.testing.assert_array_equal(d1, d1b)
    assert np.abs(d1 - unmerged).max() > 1e-2 and np.abs(d1 - d2).max() > 1e-2

    # Gradients w.r.t. the adapters only (what a LoRA optimiser would update).
    def loss(m):
        return m(jnp.asarray(ids), attention_mask=am, dropout_rng=jax.random.key(0))[0].mean()

    grads = nnx.jit(nnx.grad(loss, argnums=nnx.DiffState(0, llama.LoRAParam)))(model)
    assert len(jax.tree.leaves(grads)) == 6 and all(
        float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads)
    )

    llama.merge_lora(model)
    assert model.config.lora_rank == 0 and not jax.tree.leaves(nnx.state(model, llama.LoRAParam))
    merged, _ = _forward(model, jnp.asarray(ids), am)
    assert np.abs(np.asarray(merged) - unmerged).max() <= 1e-5 * np.abs(unmerged).max()


def test_init_lora_is_identity():
    _, cfg, flat = _hf_pair()
    ids, mask = _batch()
    base, _ = _forward(_ours(cfg, flat), jnp.asarray(ids), jnp.asarray(mask))
    model = _with_random_lora(
        cfg,
        flat,
        lora_rank=3,
        lora_alpha=5.0,
        lora_dropout=0.25,
        lora_targets=("q_proj", "v_proj", "down_proj"),
    )
    llama.init_lora(model, nnx.Rngs(3))
    out, _ = _forward(model, jnp.asarray(ids), jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(out), np.asarray(base), atol=1e-6)
    assert float(jnp.abs(model.model.layers.self_attn.q_proj.lora_a[...]).min()) > 0


def test_remat_gives_same_values_and_grads():
    _, cfg, flat = _hf_pair()
    ids, mask = _batch()

    def loss(m):
        logits, _ = m(jnp.asarray(ids), attention_mask=jnp.asarray(mask))
        return jnp.mean(logits**2)

    results = []
    for remat in (False, True):
        model = _ours(dataclasses.replace(cfg, remat=remat), flat)
        value, grads = nnx.jit(nnx.value_and_grad(loss))(model)
        results.append((float(value), grads))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    for a, b in zip(jax.tree.leaves(results[0][1]), jax.tree.leaves(results[1][1])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_bfloat16_compute_is_close():
    _, cfg, flat = _hf_pair()
    ids, mask = _batch()
    ref, _ = _forward(_ours(cfg, flat), jnp.asarray(ids), jnp.asarray(mask))
    logits, hidden = _forward(
        _ours(dataclasses.replace(cfg, dtype="bfloat16"), flat), jnp.asarray(ids), jnp.asarray(mask)
    )
    assert logits.dtype == jnp.float32 and hidden.dtype == jnp.bfloat16
    assert np.abs(np.asarray(logits) - np.asarray(ref)).max() <= 0.1 * np.abs(np.asarray(ref)).max()


def test_llama_7b_parameter_count_equals_transformers():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = llama.llama_7b()
    assert (cfg.vocab_size, cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.intermediate_size) == (
        32003,
        4096,
        32,
        32,
        11008,
    )
    assert (cfg.rms_norm_eps, cfg.rope_theta, cfg.max_position_embeddings, cfg.kv_heads) == (
        1e-6,
        10000.0,
        2048,
        32,
    )
    with torch.device("meta"):
        hf = LlamaForCausalLM(
            LlamaConfig(
                vocab_size=32003,
                hidden_size=4096,
                intermediate_size=11008,
                num_hidden_layers=32,
                num_attention_heads=32,
                max_position_embeddings=2048,
                rms_norm_eps=1e-6,
            )
        )
    hf_count = sum(p.numel() for p in hf.parameters())
    model = nnx.eval_shape(lambda: llama.LlamaForCausalLM(cfg, rngs=nnx.Rngs(0)))
    shapes = param_shapes(model)
    assert sum(int(np.prod(s)) for s in shapes.values()) == hf_count
    assert shapes["model/layers/self_attn/q_proj/kernel"] == (32, 4096, 4096)
    # The GLUS training setup adds 2 * 32 * (4096 * 8 + 8 * 4096) LoRA parameters.
    lora = nnx.eval_shape(lambda: llama.LlamaForCausalLM(llama.llama_7b(lora_rank=8), rngs=nnx.Rngs(0)))
    n_lora = sum(int(np.prod(v.shape)) for _, v in nnx.to_flat_state(nnx.state(lora, llama.LoRAParam)))
    assert n_lora == 2 * 32 * 2 * 4096 * 8


def test_config_from_hf_and_refusals():
    d = {
        "vocab_size": 515,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": 2048,
        "rope_scaling": None,
        "mm_hidden_size": 32,
        "hidden_act": "silu",
    }
    assert llama.from_hf_config(d) == llama.tiny()
    with pytest.raises(ConfigError, match="rope scaling"):
        llama.from_hf_config({**d, "rope_scaling": {"type": "linear", "factor": 2.0}})
    with pytest.raises(ConfigError, match="attention_bias"):
        llama.from_hf_config({**d, "attention_bias": True})
    with pytest.raises(ConfigError, match="lora_targets"):
        llama.tiny(lora_targets=("qkv",))


def test_conversion_errors_name_the_tensor():
    hf, cfg, _ = _hf_pair()
    state = {k: v.numpy() for k, v in hf.state_dict().items()}
    shapes = param_shapes(nnx.eval_shape(lambda: llama.LlamaForCausalLM(cfg, rngs=nnx.Rngs(0))))
    with pytest.raises(ConversionError, match=r"missing[\s\S]*model/norm/scale"):
        convert({k: v for k, v in state.items() if k != "model.norm.weight"}, llama_rules(cfg), shapes)
    with pytest.raises(ConversionError, match=r"unexpected[\s\S]*model\.layers\.0\.self_attn\.q_proj\.bias"):
        convert({**state, "model.layers.0.self_attn.q_proj.bias": np.zeros(40)}, llama_rules(cfg), shapes)
    bad = {**state, "lm_head.weight": np.zeros((36, 40), np.float32)}
    with pytest.raises(
        ConversionError, match=r"lm_head/kernel: checkpoint gives \(40, 36\), model expects \(40, 37\)"
    ):
        convert(bad, llama_rules(cfg), shapes)
