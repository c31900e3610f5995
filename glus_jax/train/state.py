"""Training state: a pytree the jitted train step takes and returns, its shardings, its checkpoint form.

`TrainState` holds the trainable parameters (float32 master weights; the model computes in its config
dtype, bfloat16 on accelerators), the frozen ones (passed through the step unchanged, never
checkpointed: a resumed run reloads them from the initial model), the optax state of the trainable
parameters only, the contrastive [SEG] banks (one per data-parallel group, see `train/forward.py`), the
optimizer step and the PRNG key. The model's structure (`nnx.GraphDef`) is static and lives outside.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from glus_jax import sharding as sharding_lib
from glus_jax.train import contrastive as contrastive_lib
from glus_jax.train.optimizer import TRAINABLE, trainable_filter


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # [] int32, optimizer steps done
    params: nnx.State  # trainable parameters (float32)
    frozen: nnx.State  # frozen parameters (not checkpointed)
    opt_state: optax.OptState  # of `params` only
    banks: contrastive_lib.SegTokenBank  # leading axis G = data-parallel groups
    rng: jax.Array  # [2] uint32 PRNG key of the run


def split_model(model: nnx.Module, trainable=TRAINABLE) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """(graphdef, trainable params, everything else) of `model` (RNG state included in the latter).
    A name in `trainable` that selects no parameter is an error (a typo would silently train nothing)."""
    paths = ["/".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))]
    if unmatched := [n for n in trainable if not any(n in p.split("/") for p in paths)]:
        raise ValueError(f"train.trainable: {unmatched} name no parameter of the model (e.g. {paths[0]!r})")
    return nnx.split(model, nnx.All(nnx.Param, trainable_filter(trainable)), ...)


def init_banks(num_groups: int, dim: int, size: int) -> contrastive_lib.SegTokenBank:
    """G empty contrastive banks of `size` [SEG] embeddings of width `dim`."""
    bank = contrastive_lib.init_bank(dim, size)
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (num_groups, *x.shape)), bank)


def create_train_state(
    model: nnx.Module,
    tx: optax.GradientTransformation,
    *,
    num_groups: int,
    bank_size: int,
    seed: int,
    trainable=TRAINABLE,
    mesh: Mesh | None = None,
    rules: sharding_lib.Rules = sharding_lib.DEFAULT_RULES,
) -> tuple[nnx.GraphDef, TrainState, TrainState | None]:
    """(graphdef, initial state, its shardings or None) of a run from a model already placed on `mesh`
    (`sharding.shard_model`). With a mesh the optimizer state and banks are created in place."""
    graphdef, params, frozen = split_model(model, trainable)
    dim = model.config.out_dim
    banks = jax.eval_shape(lambda: init_banks(num_groups, dim, bank_size))
    proto = TrainState(
        step=jnp.zeros((), jnp.int32), params=params, frozen=frozen, opt_state=None, banks=banks,
        rng=jax.random.PRNGKey(seed),
    )
    shardings = None if mesh is None else state_shardings(proto, tx, mesh, rules)

    def make(params):
        return tx.init(params), init_banks(num_groups, dim, bank_size)

    jit_kw = {} if shardings is None else {"out_shardings": (shardings.opt_state, shardings.banks)}
    opt_state, banks = jax.jit(make, **jit_kw)(params)
    state = proto.replace(opt_state=opt_state, banks=banks)
    if shardings is not None:
        state = state.replace(
            step=jax.device_put(state.step, shardings.step), rng=jax.device_put(state.rng, shardings.rng)
        )
    return graphdef, state, shardings


# ----------------------------------------------------------------------------------------- shardings


def _replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def opt_state_shardings(tx: optax.GradientTransformation, params: nnx.State, param_shardings, mesh: Mesh):
    """Shardings of `tx.init(params)`: every sub-tree shaped like the params (Adam's mu / nu) is
    sharded like them, every other leaf (step counts) replicated."""
    abstract = jax.eval_shape(tx.init, params)
    treedef = jax.tree.structure(params)

    def like_params(x):
        return not isinstance(x, jax.ShapeDtypeStruct) and jax.tree.structure(x) == treedef

    return jax.tree.map(
        lambda x: param_shardings if like_params(x) else _replicated(mesh), abstract, is_leaf=like_params
    )


def state_shardings(
    state_or_abstract: TrainState,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    rules: sharding_lib.Rules = sharding_lib.DEFAULT_RULES,
) -> TrainState:
    """A TrainState of NamedShardings (tree prefixes) for jit in/out_shardings: parameters by their
    logical axes and `rules`, optimizer moments like their parameters, banks along the batch axes."""
    s = state_or_abstract
    params = sharding_lib.state_shardings(s.params, mesh, rules)
    frozen = sharding_lib.state_shardings(s.frozen, mesh, rules)

    def bank_leaf(x):
        spec = sharding_lib.logical_to_spec(("batch",) + (None,) * (len(x.shape) - 1), rules)
        return NamedSharding(mesh, sharding_lib._fit_spec(spec, x.shape, mesh))

    return TrainState(
        step=_replicated(mesh),
        params=params,
        frozen=frozen,
        opt_state=opt_state_shardings(tx, s.params, params, mesh),
        banks=jax.tree.map(bank_leaf, s.banks),
        rng=_replicated(mesh),
    )


def batch_shardings(batch: Mapping[str, Any], mesh: Mesh, rules=sharding_lib.DEFAULT_RULES, lead: int = 1):
    """Shardings of a (stacked) batch: `lead` leading axes (gradient-accumulation micro-batches)
    unsharded, then the sample axis over the batch mesh axes."""

    def one(x):
        axes = (None,) * lead + ("batch",) + (None,) * (np.ndim(x) - lead - 1)
        return NamedSharding(mesh, sharding_lib.logical_to_spec(axes, rules))

    return {k: one(v) for k, v in batch.items()}


# -------------------------------------------------------------------------------------- checkpointing


def _key_name(k) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    raise TypeError(f"unsupported pytree key {k!r}")


def to_nested(tree) -> dict:
    """Any pytree -> nested dict of str keys (its key paths) with the same leaves (orbax-friendly)."""
    out: dict = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        node = out
        names = [_key_name(k) for k in path] or ["value"]
        for n in names[:-1]:
            node = node.setdefault(n, {})
        node[names[-1]] = leaf
    return out


def from_nested(template, nested: Mapping):
    """Inverse of `to_nested`: the leaves of `nested` in the structure of `template`."""
    paths, treedef = jax.tree_util.tree_flatten_with_path(template)
    leaves = []
    for path, _ in paths:
        node = nested
        for n in [_key_name(k) for k in path] or ["value"]:
            node = node[n]
        leaves.append(node)
    return jax.tree.unflatten(treedef, leaves)


def checkpoint_tree(state: TrainState) -> dict:
    """What a training checkpoint stores of the state (everything but the frozen parameters)."""
    return to_nested(
        {"step": state.step, "params": state.params, "opt_state": state.opt_state, "banks": state.banks,
         "rng": state.rng}
    )


def restore_state(state: TrainState, tree: Mapping) -> TrainState:
    """`state` with the checkpointed parts replaced by `tree` (from `checkpoint_tree`)."""
    template = {"step": state.step, "params": state.params, "opt_state": state.opt_state,
                "banks": state.banks, "rng": state.rng}
    got = from_nested(template, tree)
    return state.replace(**got)


def abstract_checkpoint_tree(state: TrainState, shardings: TrainState | None = None) -> dict:
    """ShapeDtypeStructs (with target shardings) of `checkpoint_tree(state)`, for an orbax restore."""
    tree = checkpoint_tree(state)
    if shardings is None:
        sh = jax.tree.map(lambda x: getattr(x, "sharding", None), tree)
    else:
        sh = checkpoint_tree(_expand(shardings, state))
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s), tree, sh)


def _expand(prefix, full):
    """Broadcast a sharding tree prefix over the leaves of `full`."""
    return jax.tree.map(
        lambda s, sub: jax.tree.map(lambda _: s, sub),
        prefix,
        full,
        is_leaf=lambda x: isinstance(x, jax.sharding.Sharding),
    )
