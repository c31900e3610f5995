"""Mesh, logical axis vocabulary and rules, parameter placement, activation constraints.

Every parameter is created through `with_axes` / `param` and so carries logical axis names
(metadata `out_sharding`). A *rules table* maps logical names to mesh axes; tables are plain
data (tuples) so experiment configs can override them. Each tower has its own vocabulary
(`llm_*`, `clip_*`, `sam_*`) so small towers can stay replicated while the LLM is sharded.

Mesh axes: `data` (pure data parallel), `fsdp` (data parallel + parameter sharding), `tensor`
(model parallel).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

LogicalAxes = tuple[str | None, ...]
Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

# Default rules: the LLM is FSDP x tensor sharded, CLIP and SAM2 replicated (they are small
# next to the LLM and their activations are large). Batch goes over data and fsdp.
DEFAULT_RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("llm_vocab", "tensor"),
    ("llm_embed", "fsdp"),
    ("llm_mlp", "tensor"),
    ("llm_heads", "tensor"),
    ("llm_kv", None),
    ("llm_layers", None),
    ("lora_rank", None),
    ("clip_embed", None),
    ("clip_mlp", None),
    ("sam_embed", None),
    ("sam_mlp", None),
    ("seq", None),
)


def with_axes(init, axes: LogicalAxes):
    """Wrap an initializer so the Param it creates carries logical axis names."""
    return nnx.with_partitioning(init, tuple(axes))


def param(rngs: nnx.Rngs, init, shape: Sequence[int], axes: LogicalAxes, dtype=np.float32) -> nnx.Param:
    """A Param initialised by `init(key, shape, dtype)` with logical axis names."""
    if len(axes) != len(shape):
        raise ValueError(f"axes {axes} do not match shape {tuple(shape)}")
    return nnx.Param(init(rngs.params(), tuple(shape), dtype), out_sharding=tuple(axes))


# ----------------------------------------------------------------------------- mesh


def make_mesh(shape: Sequence[int] | dict[str, int] = (1, -1, 1), devices=None) -> Mesh:
    """Mesh over (data, fsdp, tensor); one size may be -1 (= fill with the remaining devices)."""
    devices = list(jax.devices() if devices is None else devices)
    if isinstance(shape, dict):
        unknown = set(shape) - set(MESH_AXES)
        if unknown:
            raise ValueError(f"unknown mesh axes {sorted(unknown)}; expected {MESH_AXES}")
        shape = [shape.get(a, 1) for a in MESH_AXES]
    shape = list(shape)
    if len(shape) != len(MESH_AXES):
        raise ValueError(f"mesh shape {shape} must have {len(MESH_AXES)} entries {MESH_AXES}")
    if shape.count(-1) > 1:
        raise ValueError(f"mesh shape {shape}: at most one axis may be -1")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices cannot fill mesh {shape}")
        shape[shape.index(-1)] = len(devices) // known
    if math.prod(shape) != len(devices):
        raise ValueError(f"mesh {dict(zip(MESH_AXES, shape))} needs {math.prod(shape)} devices, have {len(devices)}")
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def logical_to_spec(axes: LogicalAxes | None, rules: Rules = DEFAULT_RULES) -> PartitionSpec:
    """Logical axis names -> PartitionSpec. Unknown names are an error; a mesh axis is used once."""
    if axes is None:
        return PartitionSpec()
    table = dict(rules)
    used: set[str] = set()
    out = []
    for name in axes:
        if name is None:
            out.append(None)
            continue
        if name not in table:
            raise KeyError(f"logical axis {name!r} has no sharding rule")
        target = table[name]
        targets = (target,) if isinstance(target, str) else tuple(target or ())
        targets = tuple(t for t in targets if t not in used)
        used.update(targets)
        out.append(None if not targets else targets[0] if len(targets) == 1 else targets)
    return PartitionSpec(*out)


def _fit_spec(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
    """Drop mesh axes that do not divide the dimension (e.g. a vocab of 32003 over 2 devices)."""
    out = []
    for dim, entry in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        names = (entry,) if isinstance(entry, str) else tuple(entry or ())
        size = math.prod(mesh.shape[n] for n in names)
        out.append(entry if names and dim % size == 0 else None)
    return PartitionSpec(*out)


def state_shardings(state: nnx.State, mesh: Mesh, rules: Rules = DEFAULT_RULES):
    """A pytree of NamedSharding matching `state` (an nnx.State of Variables)."""

    def one(var):
        axes = var.get_metadata().get("out_sharding") if isinstance(var, nnx.Variable) else None
        value = var.get_value() if isinstance(var, nnx.Variable) else var
        spec = logical_to_spec(axes, rules)
        return NamedSharding(mesh, _fit_spec(spec, np.shape(value), mesh))

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def shard_model(model: nnx.Module, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> nnx.Module:
    """Place every variable of `model` on `mesh` according to its logical axes (in place)."""
    state = nnx.state(model)
    shardings = state_shardings(state, mesh, rules)
    values = jax.tree.map(
        lambda v: v.get_value() if isinstance(v, nnx.Variable) else v,
        state,
        is_leaf=lambda x: isinstance(x, nnx.Variable),
    )
    placed = jax.device_put(values, shardings)
    nnx.update(model, placed)
    return model


# ------------------------------------------------------------------ activation constraints

_CURRENT: contextvars.ContextVar[tuple[Mesh, Rules] | None] = contextvars.ContextVar("glus_mesh", default=None)


@contextlib.contextmanager
def use_mesh(mesh: Mesh, rules: Rules = DEFAULT_RULES):
    """Within this context `constrain` pins activations to `mesh` by `rules`."""
    token = _CURRENT.set((mesh, rules))
    try:
        yield mesh
    finally:
        _CURRENT.reset(token)


def constrain(x: Any, axes: LogicalAxes) -> Any:
    """Sharding constraint on an activation by logical axes; a no-op outside `use_mesh`."""
    current = _CURRENT.get()
    if current is None:
        return x
    mesh, rules = current
    spec = _fit_spec(logical_to_spec(axes, rules), x.shape, mesh)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def batch_sharding(mesh: Mesh, ndim: int, rules: Rules = DEFAULT_RULES) -> NamedSharding:
    """Sharding of an input array whose leading axis is the batch."""
    return NamedSharding(mesh, logical_to_spec(("batch",) + (None,) * (ndim - 1), rules))
