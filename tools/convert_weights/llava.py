"""Conversion table: HF LLaVA / LISA / GLUS checkpoint (LlavaLlamaForCausalLM layout) ->
`glus_jax.models.llava.Llava` (its `llm` and `mm_projector`; the vision tower comes from its own
CLIP checkpoint, see `tools/convert_weights/clip.py`).

Source keys: `model.embed_tokens.weight`, `model.layers.N.{input_layernorm, post_attention_layernorm,
self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj}.weight`, `model.norm.weight`, `lm_head.weight`,
`model.mm_projector.{weight,bias}` (linear) or `model.mm_projector.{0,2}.{weight,bias}`
(mlp2x_gelu). `rotary_emb.inv_freq` buffers (saved by transformers 4.31) are ignored. Keys of other
towers in the same state dict (`model.visual_model.*` SAM2, `model.text_hidden_fcs.*`, a bundled
`model.vision_tower.*`) are refused unless passed in `foreign_prefixes`, so a GLUS-level converter
can split one state dict across tables. The vocabulary size is the checkpoint's (config.json's
`vocab_size` after `resize_token_embeddings`, e.g. 32003 for LISA/GLUS); a mismatch is an error.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
from flax import nnx

from glus_jax.models.llama import LlamaConfig, init_lora
from glus_jax.models.llava import Llava, LlavaConfig, from_hf_config
from tools.convert_weights import clip as clip_table
from tools.convert_weights.engine import (
    ConversionError,
    Rule,
    convert,
    identity,
    linear_t,
    load_into,
    param_shapes,
    read_state_dict,
)

# Buffers saved by older transformers versions: no parameters.
IGNORE = (r"(model\.)?layers\.\d+\.self_attn\.rotary_emb\.inv_freq",)

# Other towers of a GLUS checkpoint, converted by their own tables.
GLUS_FOREIGN_PREFIXES = ("model.visual_model.", "model.text_hidden_fcs.", "model.vision_tower.")

# Target paths the LLaVA table never fills: LoRA adapters (released checkpoints are merged).
LORA_PATHS = (r".*/lora_[ab]",)


def llama_rules(cfg: LlamaConfig | None = None, *, src_prefix: str = "", dst_prefix: str = "") -> list[Rule]:
    """HF `LlamaForCausalLM` keys (`model.*`, `lm_head.weight`) -> LlamaForCausalLM paths."""
    s, d = re.escape(src_prefix), dst_prefix
    layer = s + r"model\.layers\.(\d+)\."
    out = [
        Rule(s + r"model\.embed_tokens\.weight", f"{d}model/embed_tokens"),
        Rule(s + r"model\.norm\.weight", f"{d}model/norm/scale"),
        Rule(s + r"lm_head\.weight", f"{d}lm_head/kernel", linear_t),
        Rule(
            layer + r"(input_layernorm|post_attention_layernorm)\.weight",
            d + "model/layers/{2}/scale",
            identity,
            stack=1,
        ),
        Rule(
            layer + r"self_attn\.([qkvo]_proj)\.weight",
            d + "model/layers/self_attn/{2}/kernel",
            linear_t,
            stack=1,
        ),
        Rule(
            layer + r"mlp\.(gate_proj|up_proj|down_proj)\.weight",
            d + "model/layers/mlp/{2}/kernel",
            linear_t,
            stack=1,
        ),
    ]
    return out


def projector_type_of(keys: Iterable[str], src_prefix: str = "model.mm_projector.") -> str:
    """ "linear" (`mm_projector.weight`) or "mlp2x_gelu" (`mm_projector.{0,2}.weight`), from the keys."""
    keys = set(keys)
    if f"{src_prefix}weight" in keys:
        return "linear"
    if f"{src_prefix}0.weight" in keys and f"{src_prefix}2.weight" in keys:
        return "mlp2x_gelu"
    raise ConversionError(
        f"no mm_projector weights ({src_prefix}weight or {src_prefix}0/2.weight) in the checkpoint"
    )


def projector_rules(
    projector_type: str, *, src_prefix: str = "model.mm_projector.", dst_prefix: str = "mm_projector/"
) -> list[Rule]:
    s, d = re.escape(src_prefix), dst_prefix
    names = {"linear": [("", "fc1")], "mlp2x_gelu": [(r"0\.", "fc1"), (r"2\.", "fc2")]}[projector_type]
    out = []
    for src, dst in names:
        out += [
            Rule(s + src + r"weight", f"{d}{dst}/kernel", linear_t),
            Rule(s + src + r"bias", f"{d}{dst}/bias"),
        ]
    return out


def rules(cfg: LlavaConfig) -> list[Rule]:
    """All rules for a `Llava` model except its vision tower (paths `llm/...`, `mm_projector/...`)."""
    return llama_rules(cfg.llama, dst_prefix="llm/") + projector_rules(cfg.projector_type)


def convert_llava(
    state_dict: Mapping[str, np.ndarray],
    cfg: LlavaConfig,
    model: Llava,
    *,
    foreign_prefixes: Iterable[str] = (),
    ignore: Iterable[str] = (),
    what: str = "LLaVA checkpoint",
) -> None:
    """Load the LLM and projector weights of `state_dict` into `model` in place (strict).

    foreign_prefixes: key prefixes belonging to other tables (e.g. `GLUS_FOREIGN_PREFIXES`);
    ignore: extra regexes of source keys to drop. The vision tower and LoRA adapters are left as
    they are. `model` may be abstract (`nnx.eval_shape`) except for LoRA adapters (`init_lora`).
    """
    found = projector_type_of(state_dict)
    if found != cfg.projector_type:
        raise ConversionError(
            f"{what}: checkpoint has a {found!r} mm_projector, config says {cfg.projector_type!r}"
        )
    targets = {k: v for k, v in param_shapes(model).items() if not k.startswith("vision_tower/")}
    ignore = [*IGNORE, *(re.escape(p) + ".*" for p in foreign_prefixes), *ignore]
    table = rules(cfg)
    clip_table.check_layers(state_dict, table, cfg.llama.num_layers, what=what)
    flat = convert(state_dict, table, targets, ignore=ignore, allow_missing=LORA_PATHS, what=what)
    load_into(model, flat, what=what)


def load_llava(
    path_or_repo: str | Path,
    clip_path_or_repo: str | Path,
    *,
    dtype: str = "float32",
    lora: dict | None = None,
    foreign_prefixes: Iterable[str] = GLUS_FOREIGN_PREFIXES,
    seed: int = 0,
) -> tuple[LlavaConfig, Llava]:
    """Build a `Llava` from a LLaVA/LISA/GLUS checkpoint dir (or repo id) and a CLIP vision dir.

    lora: optional LlamaConfig LoRA fields (lora_rank, lora_alpha, lora_dropout, lora_targets) for
    fresh adapters on top of the loaded weights (initialised with `init_lora`, i.e. B = 0).
    Nothing else is randomly initialised: the model is built abstractly and filled.
    """
    import dataclasses

    path = clip_table.resolve_checkpoint(path_or_repo)
    clip_path = clip_table.resolve_checkpoint(clip_path_or_repo)
    state = read_state_dict(path)
    cfg = from_hf_config(
        clip_table.read_config(path),
        clip_table.read_config(clip_path),
        projector_type=projector_type_of(state),
        dtype=dtype,
    )
    if lora:
        cfg = dataclasses.replace(cfg, llama=dataclasses.replace(cfg.llama, **lora))
    model = nnx.eval_shape(lambda: Llava(cfg, rngs=nnx.Rngs(seed)))
    convert_llava(state, cfg, model, foreign_prefixes=foreign_prefixes, what=f"LLaVA checkpoint {path}")
    clip_table.convert_clip(
        read_state_dict(clip_path), cfg.clip, model.vision_tower, what=f"CLIP checkpoint {clip_path}"
    )
    if cfg.llama.lora_rank:
        init_lora(model, nnx.Rngs(seed))
    return cfg, model
