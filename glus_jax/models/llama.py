"""LLaMA decoder (the LLaVA / LISA / GLUS language model): scanned blocks, KV cache, LoRA.

Ports `transformers.models.llama.modeling_llama.LlamaForCausalLM` (as of transformers 4.31, which
GLUS pins): RMSNorm, rotary embeddings (rotate-half convention), SwiGLU MLP, causal attention with a
key padding mask, no biases. The decoder layers are stacked on a leading axis (`nnx.vmap` at
construction) and run with `nnx.scan` (optionally rematerialised), so the compiled program does not
grow with the depth.

KV cache (`KVCache`): fixed-size buffers [L, B, S, Hkv, Dh] plus a per-slot validity mask [B, S]
and a per-row write position `length` [B]. Any call with a cache writes its T new tokens at slots
length..length+T-1 of each row and attends to every valid slot up to its own: prefill (empty cache),
incremental decoding (T = 1) and prefix reuse (a cache holding a shared prefix, extended by new
tokens; `KVCache.rewind` forgets tokens) are the same operation. Causality is by slot, positions for
RoPE are explicit (default: the slot index, as HF does with `past_key_values`).

LoRA (PEFT semantics, as GLUS trains it: r=8, alpha=16, dropout 0.05 on q_proj and v_proj):
`y = x W + dropout(x) A B * alpha / r`, A [in, r] and B [r, out] stored as `LoRAParam` (a subtype of
`nnx.Param`, so optimisers can select or exclude them by type). `merge_lora` folds them into W.

Shapes: B batch, T new tokens, S cache slots, D width, H heads, Hkv key/value heads, Dh head width,
F mlp width, V vocabulary, L layers.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from glus_jax.config import ConfigError
from glus_jax.layers import Linear, RMSNorm, dot_product_attention
from glus_jax.sharding import constrain, with_axes

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


# --------------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True, kw_only=True)
class LlamaConfig:
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int | None = None  # None = num_heads (LLaMA-1 / LLaVA v1: no GQA)
    head_dim: int | None = None  # None = hidden_size // num_heads
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    # LoRA adapters on the linear layers named in `lora_targets` (rank 0 = none).
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    remat: bool = False  # rematerialise each decoder layer in the backward pass
    unroll_layers: bool = False  # layers as straight-line code, not a scan: faster when few and small
    dtype: str = "float32"  # compute dtype; params are stored float32

    def __post_init__(self):
        if self.dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"LlamaConfig.dtype: {self.dtype!r} is not 'float32' or 'bfloat16'")
        if self.head_dim is None and self.hidden_size % self.num_heads:
            raise ConfigError(
                f"LlamaConfig: hidden_size {self.hidden_size} not divisible by num_heads {self.num_heads}"
            )
        if self.num_heads % self.kv_heads:
            raise ConfigError(
                f"LlamaConfig: num_heads {self.num_heads} not divisible by num_kv_heads {self.kv_heads}"
            )
        if self.dim_head % 2:
            raise ConfigError(f"LlamaConfig: head_dim {self.dim_head} must be even for rotary embeddings")
        bad = sorted(set(self.lora_targets) - set(LORA_TARGETS))
        if bad:
            raise ConfigError(f"LlamaConfig.lora_targets: unknown {bad}; known {list(LORA_TARGETS)}")
        if self.lora_rank < 0 or not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(
                f"LlamaConfig: bad LoRA settings rank={self.lora_rank} dropout={self.lora_dropout}"
            )

    @property
    def kv_heads(self) -> int:
        return self.num_heads if self.num_kv_heads is None else self.num_kv_heads

    @property
    def dim_head(self) -> int:
        return self.hidden_size // self.num_heads if self.head_dim is None else self.head_dim


def llama_7b(vocab_size: int = 32003, **overrides) -> LlamaConfig:
    """LLaMA-7B as in LLaVA-7B v1 / LISA-7B-v1 / GLUS (vocabulary resized to 32003 for [SEG],
    <im_start>, <im_end>)."""
    return LlamaConfig(vocab_size=vocab_size, **overrides)


def tiny(**overrides) -> LlamaConfig:
    """The oracle's GLUS-tiny language model: width 64, 2 layers, 4 heads, mlp 128, vocab 515."""
    cfg = LlamaConfig(vocab_size=515, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4)
    return dataclasses.replace(cfg, **overrides)


def from_hf_config(d: dict, **overrides) -> LlamaConfig:
    """`LlamaConfig` from a HF LLaMA / LLaVA config dict (transformers 4.x or 5.x spelling).

    Multimodal and training keys of LLaVA/GLUS configs are ignored; settings we do not implement
    (rope scaling, biases, another activation) are refused with a ConfigError naming them."""
    if d.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"LLaMA config: hidden_act {d['hidden_act']!r} is not supported (silu)")
    for key in ("attention_bias", "mlp_bias"):
        if d.get(key):
            raise ConfigError(f"LLaMA config: {key}=true is not supported")
    rope = d.get("rope_parameters") or {}
    if d.get("rope_scaling") or rope.get("rope_type", "default") != "default":
        raise ConfigError(f"LLaMA config: rope scaling {d.get('rope_scaling') or rope} is not supported")
    theta = d.get("rope_theta", rope.get("rope_theta", 10000.0))
    kwargs: dict[str, Any] = {
        "vocab_size": d["vocab_size"],
        "hidden_size": d["hidden_size"],
        "intermediate_size": d["intermediate_size"],
        "num_layers": d["num_hidden_layers"],
        "num_heads": d["num_attention_heads"],
        "num_kv_heads": d.get("num_key_value_heads"),
        "head_dim": d.get("head_dim"),
        "rms_norm_eps": float(d.get("rms_norm_eps", 1e-6)),
        "rope_theta": float(theta),
        "max_position_embeddings": d.get("max_position_embeddings", 2048),
        "tie_word_embeddings": bool(d.get("tie_word_embeddings", False)),
    }
    if kwargs["num_kv_heads"] == kwargs["num_heads"]:
        kwargs["num_kv_heads"] = None
    if kwargs["head_dim"] == kwargs["hidden_size"] // kwargs["num_heads"]:
        kwargs["head_dim"] = None
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


# ------------------------------------------------------------------------------------ LoRA


class LoRAParam(nnx.Param):
    """A LoRA adapter matrix. Filter with `LoRAParam` (adapters only) or
    `nnx.All(nnx.Param, nnx.Not(LoRAParam))` (base weights only)."""


def _lora_a_init(fan_in: int):
    # PEFT: kaiming_uniform_(a=sqrt(5)) on the [r, in] weight = uniform(+-1/sqrt(in)).
    bound = 1.0 / fan_in**0.5
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


class LoRALinear(Linear):
    """Linear (kernel [in, out]) plus an optional low-rank adapter.

    Rank 0 gives a plain `Linear` (`lora_a`/`lora_b` are None). The adapter is applied as in PEFT:
    dropout on the *input* of A (only when a `dropout_rng` is given), scale alpha / rank.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        axes,
        rank: int = 0,
        alpha: float = 16.0,
        dropout: float = 0.0,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        super().__init__(in_features, out_features, axes=axes, use_bias=False, dtype=dtype, rngs=rngs)
        self.lora_scale = alpha / rank if rank else 0.0
        self.lora_dropout = dropout
        a = b = None
        if rank:
            a = LoRAParam(
                _lora_a_init(in_features)(rngs.params(), (in_features, rank)),
                out_sharding=(axes[0], "lora_rank"),
            )
            b = LoRAParam(jnp.zeros((rank, out_features)), out_sharding=("lora_rank", axes[1]))
        # nnx.data: the attributes stay data (pytree leaves) even when None, so merge_lora can clear them.
        self.lora_a: LoRAParam | None = nnx.data(a)
        self.lora_b: LoRAParam | None = nnx.data(b)

    def __call__(self, x: jax.Array, dropout_rng: jax.Array | None = None) -> jax.Array:
        y = super().__call__(x)
        if self.lora_a is None:
            return y
        h = x.astype(self.dtype)
        if dropout_rng is not None and self.lora_dropout > 0.0:
            keep = jax.random.bernoulli(dropout_rng, 1.0 - self.lora_dropout, h.shape)
            h = jnp.where(keep, h / (1.0 - self.lora_dropout), 0).astype(self.dtype)
        delta = jnp.dot(jnp.dot(h, self.lora_a[...].astype(self.dtype)), self.lora_b[...].astype(self.dtype))
        return y + delta * jnp.asarray(self.lora_scale, self.dtype)


def _lora_modules(model: nnx.Module):
    return [m for _, m in nnx.iter_graph(model) if isinstance(m, LoRALinear) and m.lora_a is not None]


def merge_lora(model: nnx.Module) -> nnx.Module:
    """Fold every LoRA adapter into its base kernel (W += A B * alpha / r) and remove the
    adapters, in place. Returns `model`; the `config` of every module holding a LlamaConfig (or a
    config with a `llama` field, e.g. Llava's) gets lora_rank=0."""
    for m in _lora_modules(model):
        a, b = m.lora_a[...], m.lora_b[...]  # stacked layers: [L, in, r], [L, r, out]
        delta = jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST) * m.lora_scale
        m.kernel.set_value((m.kernel[...] + delta).astype(m.kernel[...].dtype))
        m.lora_a = m.lora_b = None
        m.lora_scale = 0.0
    for _, sub in nnx.iter_graph(model):
        cfg = getattr(sub, "config", None)
        if isinstance(cfg, LlamaConfig):
            sub.config = dataclasses.replace(cfg, lora_rank=0)
        elif isinstance(getattr(cfg, "llama", None), LlamaConfig):  # a config bundling a LlamaConfig (Llava)
            sub.config = dataclasses.replace(cfg, llama=dataclasses.replace(cfg.llama, lora_rank=0))
    return model


def init_lora(model: nnx.Module, rngs: nnx.Rngs) -> nnx.Module:
    """(Re)initialise every LoRA adapter as PEFT does: A uniform(+-1/sqrt(in)), B = 0 (so the
    adapted model equals the base model). Also materialises adapters of an abstract model whose
    base weights were loaded from a checkpoint. In place; returns `model`."""
    for m in _lora_modules(model):
        shape_a, shape_b = m.lora_a.shape, m.lora_b.shape
        m.lora_a.set_value(_lora_a_init(shape_a[-2])(rngs.params(), shape_a))
        m.lora_b.set_value(jnp.zeros(shape_b, jnp.float32))
    return model


# ---------------------------------------------------------------------------------- rotary


def rope_cos_sin(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """positions [B, T] -> cos, sin [B, T, Dh] in float32 (HF: freqs repeated twice, not interleaved)."""
    inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq, jnp.float32)
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x [B, T, H, Dh]; x * cos + rotate_half(x) * sin, with rotate_half(x) = [-x2, x1]."""
    x1, x2 = jnp.split(x, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    cos, sin = cos[:, :, None, :].astype(x.dtype), sin[:, :, None, :].astype(x.dtype)
    return x * cos + rotated * sin


# -------------------------------------------------------------------------------- KV cache


@flax.struct.dataclass
class KVCache:
    """Fixed-size key/value cache of all layers (a pytree; pass it through jit).

    k, v: [L, B, S, Hkv, Dh] (keys after RoPE); valid: [B, S] bool (slot holds a non-padding token);
    length: [B] int32, the slot the next token of each row is written to.
    """

    k: jax.Array
    v: jax.Array
    valid: jax.Array
    length: jax.Array

    @classmethod
    def create(cls, cfg: LlamaConfig, batch: int, max_len: int, dtype=None) -> KVCache:
        dtype = jnp.dtype(cfg.dtype) if dtype is None else dtype
        shape = (cfg.num_layers, batch, max_len, cfg.kv_heads, cfg.dim_head)
        return cls(
            k=jnp.zeros(shape, dtype),
            v=jnp.zeros(shape, dtype),
            valid=jnp.zeros((batch, max_len), bool),
            length=jnp.zeros((batch,), jnp.int32),
        )

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    @property
    def batch(self) -> int:
        return self.k.shape[1]

    def rewind(self, length) -> KVCache:
        """Forget every token at slot >= `length` (int or [B]): the next call writes there."""
        length = jnp.broadcast_to(jnp.asarray(length, jnp.int32), self.length.shape)
        valid = self.valid & (jnp.arange(self.max_len)[None, :] < length[:, None])
        return self.replace(valid=valid, length=length)

    def repeat(self, n: int) -> KVCache:
        """Each row repeated n times along the batch (a shared prefix for n continuations)."""
        return KVCache(
            k=jnp.repeat(self.k, n, axis=1),
            v=jnp.repeat(self.v, n, axis=1),
            valid=jnp.repeat(self.valid, n, axis=0),
            length=jnp.repeat(self.length, n, axis=0),
        )


def _write_rows(buf: jax.Array, new: jax.Array, start: jax.Array) -> jax.Array:
    """buf [B, S, ...] <- new [B, T, ...] at slot start[b] of each row."""

    def one(b, n, s):
        return jax.lax.dynamic_update_slice(b, n.astype(b.dtype), (s,) + (0,) * (b.ndim - 1))

    return jax.vmap(one)(buf, new, start)


# --------------------------------------------------------------------------------- modules


def _lora_kwargs(cfg: LlamaConfig, name: str) -> dict:
    if cfg.lora_rank and name in cfg.lora_targets:
        return {"rank": cfg.lora_rank, "alpha": cfg.lora_alpha, "dropout": cfg.lora_dropout}
    return {}


class LlamaAttention(nnx.Module):
    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
        d, hd, dt = cfg.hidden_size, cfg.dim_head, jnp.dtype(cfg.dtype)
        self.num_heads, self.kv_heads, self.head_dim = cfg.num_heads, cfg.kv_heads, hd
        self.q_proj = LoRALinear(
            d,
            cfg.num_heads * hd,
            axes=("llm_embed", "llm_heads"),
            dtype=dt,
            rngs=rngs,
            **_lora_kwargs(cfg, "q_proj"),
        )
        self.k_proj = LoRALinear(
            d,
            cfg.kv_heads * hd,
            axes=("llm_embed", "llm_heads"),
            dtype=dt,
            rngs=rngs,
            **_lora_kwargs(cfg, "k_proj"),
        )
        self.v_proj = LoRALinear(
            d,
            cfg.kv_heads * hd,
            axes=("llm_embed", "llm_heads"),
            dtype=dt,
            rngs=rngs,
            **_lora_kwargs(cfg, "v_proj"),
        )
        self.o_proj = LoRALinear(
            cfg.num_heads * hd,
            d,
            axes=("llm_heads", "llm_embed"),
            dtype=dt,
            rngs=rngs,
            **_lora_kwargs(cfg, "o_proj"),
        )

    def __call__(self, x, *, cos, sin, mask, kv=None, write_idx=None, keys=None):
        """x [B, T, D]; mask [B, 1, T, T or S]; kv: this layer's cached (k, v) [B, S, Hkv, Dh]
        or None. Returns (out [B, T, D], updated (k, v) or None)."""
        b, t, _ = x.shape
        key = (lambda i: None) if keys is None else (lambda i: jax.random.fold_in(keys, i))
        q = self.q_proj(x, key(0)).reshape(b, t, self.num_heads, self.head_dim)
        k = self.k_proj(x, key(1)).reshape(b, t, self.kv_heads, self.head_dim)
        v = self.v_proj(x, key(2)).reshape(b, t, self.kv_heads, self.head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if kv is not None:
            k_all, v_all = _write_rows(kv[0], k, write_idx), _write_rows(kv[1], v, write_idx)
            kv = (k_all, v_all)
            k, v = k_all.astype(q.dtype), v_all.astype(q.dtype)
        out = dot_product_attention(q, k, v, mask=mask)
        return self.o_proj(out.reshape(b, t, -1), key(3)), kv


class LlamaMLP(nnx.Module):
    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
        d, f, dt = cfg.hidden_size, cfg.intermediate_size, jnp.dtype(cfg.dtype)
        self.gate_proj = LoRALinear(
            d, f, axes=("llm_embed", "llm_mlp"), dtype=dt, rngs=rngs, **_lora_kwargs(cfg, "gate_proj")
        )
        self.up_proj = LoRALinear(
            d, f, axes=("llm_embed", "llm_mlp"), dtype=dt, rngs=rngs, **_lora_kwargs(cfg, "up_proj")
        )
        self.down_proj = LoRALinear(
            f, d, axes=("llm_mlp", "llm_embed"), dtype=dt, rngs=rngs, **_lora_kwargs(cfg, "down_proj")
        )

    def __call__(self, x, keys=None):
        key = (lambda i: None) if keys is None else (lambda i: jax.random.fold_in(keys, i))
        return self.down_proj(jax.nn.silu(self.gate_proj(x, key(4))) * self.up_proj(x, key(5)), key(6))


class LlamaDecoderLayer(nnx.Module):
    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
        self.input_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, axis_name="llm_embed")
        self.self_attn = LlamaAttention(cfg, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, axis_name="llm_embed")
        self.mlp = LlamaMLP(cfg, rngs=rngs)

    def __call__(self, x, *, cos, sin, mask, kv=None, write_idx=None, keys=None):
        h, kv = self.self_attn(
            self.input_layernorm(x), cos=cos, sin=sin, mask=mask, kv=kv, write_idx=write_idx, keys=keys
        )
        x = x + h
        x = x + self.mlp(self.post_attention_layernorm(x), keys)
        return constrain(x, ("batch", "seq", "llm_embed")), kv


_LAYER_AXIS = {nnx.PARTITION_NAME: "llm_layers"}


class LlamaModel(nnx.Module):
    """Token embedding, L stacked decoder layers, final RMSNorm."""

    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
        self.config = cfg
        self.embed_tokens = nnx.Param(
            with_axes(nnx.initializers.normal(0.02), ("llm_vocab", "llm_embed"))(
                rngs.params(), (cfg.vocab_size, cfg.hidden_size)
            )
        )

        @nnx.split_rngs(splits=cfg.num_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata=_LAYER_AXIS)
        def make_layers(rngs: nnx.Rngs) -> LlamaDecoderLayer:
            return LlamaDecoderLayer(cfg, rngs=rngs)

        self.layers = make_layers(rngs)
        self.norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, axis_name="llm_embed")

    def embed(self, input_ids: jax.Array) -> jax.Array:
        """input_ids [B, T] -> [B, T, D] in the compute dtype (ids must be in [0, V))."""
        return jnp.take(self.embed_tokens[...], input_ids, axis=0).astype(jnp.dtype(self.config.dtype))

    def __call__(
        self,
        input_ids: jax.Array | None = None,
        *,
        inputs_embeds: jax.Array | None = None,
        attention_mask: jax.Array | None = None,
        positions: jax.Array | None = None,
        cache: KVCache | None = None,
        dropout_rng: jax.Array | None = None,
    ) -> tuple[jax.Array, KVCache | None]:
        """Final-norm hidden states [B, T, D] and the updated cache (None without one).

        input_ids [B, T] or inputs_embeds [B, T, D]; attention_mask [B, T] bool (True = real token,
        default all True); positions [B, T] int (default: slot index, i.e. arange(T) without a
        cache); dropout_rng: enables LoRA dropout (training).
        """
        cfg = self.config
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("LlamaModel: pass exactly one of input_ids and inputs_embeds")
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds.astype(jnp.dtype(cfg.dtype))
        b, t, _ = x.shape
        am = jnp.ones((b, t), bool) if attention_mask is None else attention_mask.astype(bool)
        if cache is None:
            slots = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
            mask = am[:, None, None, :] & (slots[:, None, :, None] >= slots[:, None, None, :])
            kv, write_idx, new_cache = None, None, None
        else:
            if cache.batch != b:
                raise ValueError(f"LlamaModel: cache batch {cache.batch} != input batch {b}")
            write_idx = cache.length
            slots = write_idx[:, None] + jnp.arange(t, dtype=jnp.int32)[None, :]
            valid = _write_rows(cache.valid, am, write_idx)
            key_slots = jnp.arange(cache.max_len, dtype=jnp.int32)
            mask = valid[:, None, None, :] & (key_slots[None, None, None, :] <= slots[:, None, :, None])
            kv = (cache.k, cache.v)
            new_cache = cache.replace(valid=valid, length=write_idx + t)
        positions = slots if positions is None else positions
        cos, sin = rope_cos_sin(positions, cfg.dim_head, cfg.rope_theta)
        keys = None if dropout_rng is None else jax.random.split(dropout_rng, cfg.num_layers)

        def body(x, layer, kv, keys, cos, sin, mask, write_idx):
            return layer(x, cos=cos, sin=sin, mask=mask, kv=kv, write_idx=write_idx, keys=keys)

        if cfg.remat:
            body = nnx.remat(body)
        scan = nnx.scan(
            body,
            in_axes=(nnx.Carry, 0, 0, 0, None, None, None, None),
            out_axes=(nnx.Carry, 0),
            transform_metadata=_LAYER_AXIS,
            unroll=cfg.unroll_layers,
        )
        x, kv = scan(x, self.layers, kv, keys, cos, sin, mask, write_idx)
        if new_cache is not None:
            new_cache = new_cache.replace(k=kv[0], v=kv[1])
        return self.norm(x), new_cache


class LlamaForCausalLM(nnx.Module):
    """`model` (LlamaModel) + `lm_head` (kernel [D, V], absent when embeddings are tied)."""

    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
        self.config = cfg
        self.model = LlamaModel(cfg, rngs=rngs)
        self.lm_head = (
            None
            if cfg.tie_word_embeddings
            else Linear(
                cfg.hidden_size,
                cfg.vocab_size,
                axes=("llm_embed", "llm_vocab"),
                use_bias=False,
                dtype=jnp.dtype(cfg.dtype),
                rngs=rngs,
            )
        )

    def logits(self, hidden: jax.Array) -> jax.Array:
        """Final-norm hidden [..., D] -> logits [..., V] in float32.

        Apply it to selected rows only (e.g. the positions a loss needs) to save memory."""
        if self.lm_head is None:
            table = self.model.embed_tokens[...].astype(hidden.dtype)
            return jnp.einsum("...d,vd->...v", hidden, table).astype(jnp.float32)
        return self.lm_head(hidden).astype(jnp.float32)

    def __call__(
        self,
        input_ids: jax.Array | None = None,
        *,
        inputs_embeds: jax.Array | None = None,
        attention_mask: jax.Array | None = None,
        positions: jax.Array | None = None,
        dropout_rng: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """Full forward without a cache: (logits [B, T, V] float32, final-norm hidden [B, T, D])."""
        hidden, _ = self.model(
            input_ids,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            positions=positions,
            dropout_rng=dropout_rng,
        )
        return self.logits(hidden), hidden

    def init_cache(self, batch: int, max_len: int, dtype=None) -> KVCache:
        return KVCache.create(self.config, batch, max_len, dtype)

    def prefill(
        self,
        input_ids: jax.Array | None = None,
        *,
        inputs_embeds: jax.Array | None = None,
        attention_mask: jax.Array | None = None,
        positions: jax.Array | None = None,
        cache: KVCache | None = None,
        max_len: int | None = None,
    ) -> tuple[jax.Array, jax.Array, KVCache]:
        """Run T tokens through the model, appending them to `cache` (a new empty cache of
        `max_len` slots when None; a cache holding a prefix extends it).
        Returns (logits [B, T, V], hidden [B, T, D], cache)."""
        if cache is None:
            ref = input_ids if input_ids is not None else inputs_embeds
            if max_len is None:
                raise ValueError("prefill: pass a cache or max_len")
            cache = self.init_cache(ref.shape[0], max_len)
        hidden, cache = self.model(
            input_ids,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            positions=positions,
            cache=cache,
        )
        return self.logits(hidden), hidden, cache

    def decode(
        self,
        input_ids: jax.Array | None = None,
        *,
        inputs_embeds: jax.Array | None = None,
        cache: KVCache,
        positions: jax.Array | None = None,
        attention_mask: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array, KVCache]:
        """Incremental step(s) on top of `cache` (input [B, 1] for greedy decoding).

        Same contract as `prefill` (positions default to the slot index)."""
        return self.prefill(
            input_ids,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            positions=positions,
            cache=cache,
        )
