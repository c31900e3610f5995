"""Model directories: orbax params + config YAML + tokenizer files, written atomically.

    MODEL_DIR/
      config.yaml         model config (plain YAML, `glus_jax.config.to_dict` of the dataclass)
      params/             orbax checkpoint of the parameter tree (nested dict of arrays)
      params_index.json   {"path/to/param": [shape, dtype]}: checked before restoring, so a model
                          directory of another architecture fails with the mismatched paths listed
      tokenizer/          tokenizer files (tokenizer.model, added tokens, ...), copied verbatim

A save writes everything into a temporary sibling directory and renames it into place only when
complete, so a crash mid-save leaves the previous directory intact.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
import yaml


class CheckpointError(ValueError):
    """A model directory is missing, incomplete or does not match the requested model."""


def _flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in tree.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out


def param_index(params: Mapping) -> dict[str, list]:
    return {k: [list(np.shape(v)), str(getattr(v, "dtype", np.asarray(v).dtype))] for k, v in _flatten(params).items()}


def _plain(tree: Mapping) -> dict:
    """nnx pure dicts may have int keys (nnx.List); orbax wants str keys."""
    return {str(k): _plain(v) if isinstance(v, Mapping) else v for k, v in tree.items()}


def save_model_dir(
    path: str | Path,
    params: Mapping,
    config: Mapping,
    *,
    tokenizer_dir: str | Path | None = None,
    extra_files: Mapping[str, str | bytes] | None = None,
    local: bool = False,
) -> Path:
    """Atomically (re)write the model directory `path`. `local`: this process alone writes (host
    arrays), without barriers with the other JAX processes (process 0 exporting after a multi-process
    run, while the others wait)."""
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.tmp-*"):  # left by a killed earlier save
        shutil.rmtree(stale, ignore_errors=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        (tmp / "config.yaml").write_text(yaml.safe_dump(dict(config), sort_keys=False))
        plain = _plain(params)
        (tmp / "params_index.json").write_text(json.dumps(param_index(plain), indent=1))
        with _checkpointer(local) as ckptr:
            ckptr.save(tmp / "params", plain)
        if tokenizer_dir is not None:
            shutil.copytree(tokenizer_dir, tmp / "tokenizer")
        for name, content in (extra_files or {}).items():
            mode = "wb" if isinstance(content, bytes) else "w"
            with open(tmp / name, mode) as f:
                f.write(content)
        (tmp / "COMPLETE").write_text("ok\n")
        old = None
        if path.exists():
            old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(path, old)
        os.rename(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def load_config(path: str | Path) -> dict:
    path = Path(path)
    _check_complete(path)
    try:
        cfg = yaml.safe_load((path / "config.yaml").read_text())
    except yaml.YAMLError as e:
        raise CheckpointError(f"{path / 'config.yaml'}: malformed YAML: {e}") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path / 'config.yaml'}: expected a mapping")
    return cfg


def _check_complete(path: Path) -> None:
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a model directory (does not exist)")
    for name in ("config.yaml", "params", "params_index.json", "COMPLETE"):
        if not (path / name).exists():
            raise CheckpointError(f"{path}: incomplete model directory, {name} is missing")


def check_params_match(path: str | Path, expected: Mapping[str, tuple[tuple[int, ...], Any]]) -> None:
    """Raise listing every path whose presence or shape differs between `path` and `expected`."""
    path = Path(path)
    stored = json.loads((path / "params_index.json").read_text())
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    shapes = sorted(
        f"  {k}: stored {tuple(stored[k][0])}, model expects {tuple(expected[k][0])}"
        for k in set(stored) & set(expected)
        if tuple(stored[k][0]) != tuple(expected[k][0])
    )
    if missing or unexpected or shapes:
        parts = [f"{path}: parameters do not match the model config"]
        if missing:
            parts.append("missing in the directory:\n" + "\n".join(f"  {k}" for k in missing))
        if unexpected:
            parts.append("not in the model:\n" + "\n".join(f"  {k}" for k in unexpected))
        if shapes:
            parts.append("mis-shaped:\n" + "\n".join(shapes))
        raise CheckpointError("\n".join(parts))


def _checkpointer(local: bool) -> ocp.StandardCheckpointer:
    if local and jax.process_count() > 1:
        # This process alone reads / writes the directory: no barriers with the other processes.
        me = jax.process_index()
        opts = ocp.options.MultiprocessingOptions(
            primary_host=None, active_processes={me}, barrier_sync_key_prefix=f"local{me}"
        )
        return ocp.StandardCheckpointer(multiprocessing_options=opts)
    return ocp.StandardCheckpointer()


def load_params(path: str | Path, abstract: Mapping | None = None, *, local: bool = False) -> dict:
    """Restore the parameter tree. `abstract`: a tree of jax.ShapeDtypeStruct (optionally with
    `.sharding`) to restore into (dtype cast + placement); its paths/shapes are checked first.
    `local`: every process reads the whole tree on its own, without cross-process barriers
    (independent inference workers); the default restores collectively, as training does."""
    path = Path(path).absolute()
    _check_complete(path)
    with _checkpointer(local) as ckptr:
        if abstract is None:
            return ckptr.restore(path / "params")
        plain = _plain(abstract)
        if local:  # place every leaf on this process's first device unless told otherwise
            device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
            plain = jax.tree.map(
                lambda x: x if getattr(x, "sharding", None) else jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                plain,
            )
        check_params_match(path, {k: (tuple(v.shape), v.dtype) for k, v in _flatten(plain).items()})
        return ckptr.restore(path / "params", plain)


def abstract_of(tree: Mapping) -> dict:
    """A tree of ShapeDtypeStruct (keeping shardings) for `load_params`."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=getattr(x, "sharding", None)), _plain(tree)
    )
