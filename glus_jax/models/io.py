"""Model directories of GLUS: build the model from its stored config, restore its parameters.

A GLUS model directory (`glus_jax.checkpoint` layout) stores under `config.yaml`:
  model:       `to_dict(GLUSConfig)`
  source:      where the weights came from (conversion options, training run), informational
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from glus_jax import checkpoint
from glus_jax.config import ConfigError, from_dict, to_dict
from glus_jax.data.tokenizer import GLUSTokenizer
from glus_jax.models.glus import GLUS, GLUSConfig


def model_params(model: nnx.Module) -> dict:
    """Every variable but RNG state, as a nested dict of arrays (what a model directory stores)."""
    return nnx.state(model, nnx.Not(nnx.RngState)).to_pure_dict()


def save_model(path: str | Path, model: GLUS, tokenizer: GLUSTokenizer, *, source: Mapping | None = None) -> Path:
    """Write a GLUS model directory atomically (params, config, tokenizer files)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save(tmp)
        config = {"model": to_dict(model.config), "source": dict(source or {})}
        return checkpoint.save_model_dir(path, model_params(model), config, tokenizer_dir=tmp)


def _flatten(tree: Mapping, prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for k, v in tree.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        out.update(_flatten(v, key) if isinstance(v, Mapping) else {key: v})
    return out


def load_model(
    path: str | Path, *, dtype: str | None = None, local: bool = True
) -> tuple[GLUS, GLUSTokenizer, dict]:
    """(model, tokenizer, stored config dict) from a model directory.

    `dtype`: compute dtype override ("float32" / "bfloat16") for every tower; params keep theirs.
    A directory of another architecture fails listing the mismatched parameter paths.
    `local`: each JAX process loads the whole model on its own (inference workers)."""
    path = resolve_model_dir(path)
    stored = checkpoint.load_config(path)
    if "model" not in stored:
        raise checkpoint.CheckpointError(f"{path}/config.yaml: no 'model' section (not a GLUS model directory)")
    try:
        cfg = from_dict(GLUSConfig, with_field(stored["model"], "dtype", dtype) if dtype else stored["model"])
    except ConfigError as e:
        raise checkpoint.CheckpointError(f"{path}/config.yaml: {e}") from None
    model = nnx.eval_shape(lambda: GLUS(cfg, rngs=nnx.Rngs(0)))
    abstract = jax.tree.map(
        lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), model_params(model)
    )
    params = checkpoint.load_params(path, abstract, local=local)
    flat = _flatten(params)
    state = nnx.state(model, nnx.Not(nnx.RngState))
    for p, var in nnx.to_flat_state(state):
        var.set_value(np.asarray(flat["/".join(str(x) for x in p)]))
    nnx.update(model, state)
    tokenizer = GLUSTokenizer.from_dir(path / "tokenizer", add_glus_tokens=False)
    return model, tokenizer, stored


def resolve_model_dir(path_or_repo: str | Path) -> Path:
    """A local model directory, or a Hugging Face repo id holding one (downloaded when no such local
    path exists; offline machines get a clear error)."""
    path = Path(path_or_repo)
    if path.exists() or str(path_or_repo).startswith((".", "/", "~")) or str(path_or_repo).count("/") != 1:
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(path_or_repo)))
    except Exception as e:  # offline, unknown repo, ...
        raise checkpoint.CheckpointError(f"{path_or_repo}: not a local model directory and not fetchable: {e}") from None


def with_field(model_cfg: dict, name: str, value) -> dict:
    """Set every field `name` (e.g. each tower's `dtype`) of a (nested) config dict."""
    out = {}
    for k, v in model_cfg.items():
        out[k] = with_field(v, name, value) if isinstance(v, dict) else (value if k == name else v)
    return out
