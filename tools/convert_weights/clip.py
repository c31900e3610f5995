"""Conversion table: HF `CLIPVisionModel` / `CLIPModel` (openai/clip-vit-large-patch14 layout) ->
`glus_jax.models.clip.CLIPVisionTower`.

Source keys are `vision_model.*`; text-tower keys and the projection heads of a full `CLIPModel`
are ignored. Encoder layers `vision_model.encoder.layers.N.*` are stacked on a leading axis.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
from flax import nnx

from glus_jax.models.clip import CLIPVisionConfig, CLIPVisionTower, from_hf_config
from tools.convert_weights.engine import (
    ConversionError,
    Rule,
    conv_oihw_to_hwio,
    convert,
    identity,
    linear_t,
    load_into,
    param_shapes,
    read_state_dict,
)

# Keys of a full CLIPModel that the vision tower does not use, and non-persistent buffers that
# older transformers versions saved.
IGNORE = (
    r"text_model\..*",
    r"text_projection\.weight",
    r"visual_projection\.weight",
    r"logit_scale",
    r"(vision_model\.)?embeddings\.position_ids",
)


def rules(
    cfg: CLIPVisionConfig | None = None, *, src_prefix: str = "vision_model.", dst_prefix: str = ""
) -> list[Rule]:
    """Rules from `{src_prefix}...` keys to `{dst_prefix}...` CLIPVisionTower paths."""
    s, d = re.escape(src_prefix), dst_prefix
    layer = s + r"encoder\.layers\.(\d+)\."

    def lin(src: str, dst: str) -> list[Rule]:
        return [
            Rule(layer + re.escape(src) + r"\.weight", f"{d}layers/{dst}/kernel", linear_t, stack=1),
            Rule(layer + re.escape(src) + r"\.bias", f"{d}layers/{dst}/bias", identity, stack=1),
        ]

    def ln(src: str, dst: str, stacked: bool) -> list[Rule]:
        pre = layer if stacked else s
        tgt = f"{d}layers/{dst}" if stacked else f"{d}{dst}"
        st = 1 if stacked else None
        return [
            Rule(pre + re.escape(src) + r"\.weight", f"{tgt}/scale", identity, stack=st),
            Rule(pre + re.escape(src) + r"\.bias", f"{tgt}/bias", identity, stack=st),
        ]

    out = [
        Rule(s + r"embeddings\.patch_embedding\.weight", f"{d}patch_embedding", conv_oihw_to_hwio),
        Rule(s + r"embeddings\.class_embedding", f"{d}class_embedding"),
        Rule(s + r"embeddings\.position_embedding\.weight", f"{d}position_embedding"),
        # HF spells it "pre_layrnorm"; we keep the spelling so the two can be read side by side.
        *ln("pre_layrnorm", "pre_layrnorm", stacked=False),
        *ln("post_layernorm", "post_layernorm", stacked=False),
        *ln("layer_norm1", "layer_norm1", stacked=True),
        *ln("layer_norm2", "layer_norm2", stacked=True),
    ]
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        out += lin(f"self_attn.{name}", f"self_attn/{name}")
    out += lin("mlp.fc1", "mlp/fc1") + lin("mlp.fc2", "mlp/fc2")
    return out


def check_layers(
    state_dict: Mapping[str, np.ndarray], rules: Iterable[Rule], num_layers: int, *, what: str
) -> None:
    """Every stacked rule must match layers 0..num_layers-1 exactly: name each absent (or extra)
    layer of each target. (engine.convert only sees the indices present, so a dropped last layer
    would otherwise surface as a shape mismatch.)"""
    seen: dict[str, set[int]] = {}
    stacked = [r for r in rules if r.stack is not None]
    for key in state_dict:
        for rule in stacked:
            m = rule.match(key)
            if m:
                seen.setdefault(rule.target_for(m), set()).add(int(m.group(rule.stack)))
                break
    problems = []
    for target, layers in sorted(seen.items()):
        absent = sorted(set(range(num_layers)) - layers)
        extra = sorted(layers - set(range(num_layers)))
        if absent:
            problems.append(f"  {target}: no checkpoint tensor for layer(s) {absent}")
        if extra:
            problems.append(f"  {target}: checkpoint has layer(s) {extra} beyond the model's {num_layers}")
    if problems:
        raise ConversionError(f"cannot convert {what}:\nmissing or extra layers:\n" + "\n".join(problems))


def convert_clip(
    state_dict: Mapping[str, np.ndarray],
    cfg: CLIPVisionConfig,
    model: CLIPVisionTower,
    *,
    src_prefix: str | None = None,
    ignore: Iterable[str] = (),
    what: str = "CLIP vision checkpoint",
) -> None:
    """Load a HF CLIP vision state dict into `model` in place (strict: see `engine.convert`).

    `src_prefix`: the key prefix of the vision model. None = "vision_model." when keys carry it
    (checkpoints saved by transformers 4.x, full CLIPModels), else "" (CLIPVisionModel saved by
    transformers 5). `ignore`: extra regexes of source keys to drop (other towers of a combined dict).
    `model` may be abstract (`nnx.eval_shape`): every parameter is filled.
    """
    if src_prefix is None:
        src_prefix = "vision_model." if any(k.startswith("vision_model.") for k in state_dict) else ""
    table = rules(cfg, src_prefix=src_prefix)
    check_layers(state_dict, table, cfg.num_layers, what=what)
    flat = convert(
        state_dict,
        table,
        param_shapes(model),
        ignore=[*IGNORE, *ignore],
        what=what,
    )
    load_into(model, flat, what=what)


def resolve_checkpoint(path_or_repo: str | Path) -> Path:
    """A local checkpoint directory/file, or a HF repo id fetched with `snapshot_download`
    (only when no such local path exists)."""
    path = Path(path_or_repo)
    if path.exists():
        return path
    text = str(path_or_repo)
    if text.startswith((".", "/", "~")) or text.count("/") != 1:
        raise ConversionError(f"{text}: no such file or directory (and not a Hugging Face repo id)")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(text, allow_patterns=["*.json", "*.safetensors", "*.bin", "*.model"]))
    except (OSError, ValueError, ImportError) as e:  # offline, unknown repo (HTTP errors are OSErrors), ...
        raise ConversionError(
            f"{text}: not a local path and could not be fetched from the Hub: {e}"
        ) from None


def read_config(path: Path) -> dict:
    cfg_file = path / "config.json" if path.is_dir() else path.parent / "config.json"
    if not cfg_file.exists():
        raise ConversionError(f"{cfg_file}: missing (needed to build the model)")
    try:
        return json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise ConversionError(f"{cfg_file}: malformed JSON: {e}") from None


def load_clip(
    path_or_repo: str | Path, *, dtype: str = "float32"
) -> tuple[CLIPVisionConfig, CLIPVisionTower]:
    """Build a CLIPVisionTower from a HF CLIP(Vision)Model directory or repo id and load its weights."""
    path = resolve_checkpoint(path_or_repo)
    cfg = from_hf_config(read_config(path), dtype=dtype)
    # Abstract model: every parameter is filled from the checkpoint (strict conversion), so
    # nothing is randomly initialised (ViT-L is 303 M parameters).
    model = nnx.eval_shape(lambda: CLIPVisionTower(cfg, rngs=nnx.Rngs(0)))
    convert_clip(read_state_dict(path), cfg, model, what=f"CLIP vision checkpoint {path}")
    return cfg, model
