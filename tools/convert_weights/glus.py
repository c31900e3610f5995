"""A released GLUS / LISA checkpoint -> a glus-jax GLUS model (and model directory).

One HF-layout state dict holds three towers; each key prefix goes to its own table:
  model.embed_tokens / model.layers.* / model.norm / lm_head / model.mm_projector  -> llava.py
  model.text_hidden_fcs.0.{0,2}                                                     -> here
  model.visual_model.*                                                              -> sam2.py
The CLIP vision tower is not in these checkpoints: it comes from an openai/clip-vit-large-patch14
layout directory (clip.py). The SAM2 architecture comes from a preset or an original SAM2 yaml.

Quirk Q1: the original loader (transformers 4.31) renames checkpoint keys containing "gamma", so the
memory encoder's fuser layer-scale gammas of a GLUS checkpoint are silently left at 1e-6. The
default here reproduces that (and the original masks); `load_fuser_gamma=True` loads them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from flax import nnx

from glus_jax.config import ConfigError
from glus_jax.data.tokenizer import GLUSTokenizer
from glus_jax.models import llava as llava_lib
from glus_jax.models.glus import GLUS, GLUSConfig
from glus_jax.models.sam2 import config as sam2_config
from tools.convert_weights import clip as clip_table
from tools.convert_weights import llava as llava_table
from tools.convert_weights import sam2 as sam2_table
from tools.convert_weights.engine import ConversionError, Rule, convert, linear_t, load_into, param_shapes, read_state_dict

TEXT_FCS_RULES = [
    Rule(r"model\.text_hidden_fcs\.0\.0\.weight", "fc1/kernel", linear_t),
    Rule(r"model\.text_hidden_fcs\.0\.0\.bias", "fc1/bias"),
    Rule(r"model\.text_hidden_fcs\.0\.2\.weight", "fc2/kernel", linear_t),
    Rule(r"model\.text_hidden_fcs\.0\.2\.bias", "fc2/bias"),
]


def sam2_config_of(spec: str | Path) -> sam2_config.SAM2Config:
    """A preset name (hiera_t, hiera_s, hiera_b+, hiera_l) or an original SAM2 yaml file."""
    if str(spec) in sam2_config.PRESETS:
        return sam2_config.PRESETS[str(spec)]()
    path = Path(spec)
    if not path.is_file():
        raise ConversionError(
            f"--sam2-config {spec!r}: neither a preset ({', '.join(sam2_config.PRESETS)}) nor a yaml file"
        )
    return sam2_config.from_yaml(path)


def convert_glus(
    checkpoint: str | Path,
    vision_tower: str | Path | None = None,
    sam2: str | Path | sam2_config.SAM2Config = "hiera_l",
    *,
    load_fuser_gamma: bool = False,
    dtype: str = "float32",
) -> tuple[GLUS, GLUSTokenizer, dict]:
    """Build a GLUS model from a GLUS/LISA HF directory (or repo id) + CLIP dir (or repo id).

    `vision_tower` defaults to the checkpoint config's `mm_vision_tower`. Returns (model, tokenizer,
    source record for the model directory). Nothing is randomly initialised: the model is built
    abstractly and every parameter is filled by the strict tables."""
    path = clip_table.resolve_checkpoint(checkpoint)
    hf = clip_table.read_config(path)
    vision_tower = vision_tower or hf.get("mm_vision_tower") or hf.get("vision_tower")
    if not vision_tower:
        raise ConversionError(f"{path}/config.json names no vision tower: pass --vision-tower")
    clip_path = clip_table.resolve_checkpoint(vision_tower)
    state = read_state_dict(path)
    try:
        tokenizer = GLUSTokenizer.from_dir(path, add_glus_tokens=False)
    except (FileNotFoundError, ValueError) as e:
        raise ConversionError(f"{path}: cannot load the tokenizer: {e}") from None
    if tokenizer.seg_token_id is None:
        raise ConversionError(f"{path}: the tokenizer has no [SEG] token: not a GLUS/LISA checkpoint")
    sam_cfg = sam2 if isinstance(sam2, sam2_config.SAM2Config) else sam2_config_of(sam2)
    try:
        llava_cfg = llava_lib.from_hf_config(
            hf, clip_table.read_config(clip_path), projector_type=llava_table.projector_type_of(state), dtype=dtype
        )
    except ConfigError as e:
        raise ConversionError(f"{path}: {e}") from None
    if llava_cfg.llama.vocab_size != len(tokenizer):
        raise ConversionError(
            f"{path}: config vocab_size {llava_cfg.llama.vocab_size} != tokenizer size {len(tokenizer)}"
        )
    sam_cfg = dataclasses.replace(sam_cfg, dtype=dtype)
    cfg = GLUSConfig(llava=llava_cfg, sam2=sam_cfg, seg_token_id=tokenizer.seg_token_id)
    fcs_out = state.get("model.text_hidden_fcs.0.2.weight")
    if fcs_out is not None and fcs_out.shape[0] != cfg.out_dim:
        raise ConversionError(
            f"{path}: text_hidden_fcs outputs {fcs_out.shape[0]} dims but the SAM2 config's prompt "
            f"dimension is {cfg.out_dim}: wrong --sam2-config?"
        )
    model = nnx.eval_shape(lambda: GLUS(cfg, rngs=nnx.Rngs(0)))
    what = f"GLUS checkpoint {path}"
    llava_table.convert_llava(state, llava_cfg, model.llava, foreign_prefixes=llava_table.GLUS_FOREIGN_PREFIXES, what=what)
    clip_table.convert_clip(read_state_dict(clip_path), llava_cfg.clip, model.llava.vision_tower, what=f"CLIP checkpoint {clip_path}")
    fcs = {k: v for k, v in state.items() if k.startswith("model.text_hidden_fcs.")}
    load_into(model.text_hidden_fcs, convert(fcs, TEXT_FCS_RULES, param_shapes(model.text_hidden_fcs), what=what), what=what)
    sam2_table.convert_sam2(state, sam_cfg, model.visual_model, prefix=sam2_table.GLUS_PREFIX, load_fuser_gamma=load_fuser_gamma)
    source = {
        "converted_from": str(checkpoint),
        "vision_tower": str(vision_tower),
        "sam2_config": str(sam2) if not isinstance(sam2, sam2_config.SAM2Config) else "object",
        "load_fuser_gamma": load_fuser_gamma,
    }
    return model, tokenizer, source
