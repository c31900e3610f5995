"""The GLUS train step: one pure function `(state, batch) -> (state, metrics)`, jitted once with explicit
shardings over the (data, fsdp, tensor) mesh and the state donated.

One call is one optimizer step of `train_ds.py` (DeepSpeed with `gradient_accumulation_steps` A): the
batch carries A micro-batches on a leading axis ([A, B, ...], B = the global micro-batch); a `lax.scan`
runs the training forward and backward of each in order (the contrastive banks advance after each, as the
reference's do after each forward), sums the gradients, and the mean gradient goes through clipping and
AdamW. Gradients are taken with respect to the trainable parameters only; the frozen ones are constants
of the step. The model computes in its config dtype (bfloat16 on accelerators) from float32 master
weights; LLM blocks are rematerialised when `LlamaConfig.remat` is set.

Randomness: the key of step k is `fold_in(state.rng, k)`, split over micro-batches, then into dropout
(LoRA dropout, memory-attention dropout) and the contrastive draws; so a resumed run draws the same.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from glus_jax import sharding as sharding_lib
from glus_jax.train import forward as forward_lib
from glus_jax.train.state import TrainState

Metrics = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True, kw_only=True)
class StepConfig:
    forward: forward_lib.ForwardOptions = forward_lib.ForwardOptions()
    loss: forward_lib.LossOptions = forward_lib.LossOptions()
    dropout: bool = True  # the stochastic ops of model.train() (see ForwardOptions)


def train_step_fn(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    config: StepConfig = StepConfig(),
) -> Callable[[TrainState, Mapping[str, jax.Array]], tuple[TrainState, Metrics]]:
    """The un-jitted train step (see the module docstring). batch: the pipeline's arrays with a leading
    micro-batch axis A."""

    def loss_fn(params, frozen, banks, batch, key):
        # tree.map rebuilds the Variables at this trace level (the non-differentiated `frozen` would
        # otherwise arrive as the caller's Variables, which NNX refuses to use inside its transforms).
        model = nnx.merge(graphdef, *jax.tree.map(lambda x: x, (params, frozen)))
        return forward_lib.batch_loss(
            model,
            batch,
            banks,
            key,
            forward_options=config.forward,
            loss_options=config.loss,
            dropout=config.dropout,
        )

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(state: TrainState, batch: Mapping[str, jax.Array]) -> tuple[TrainState, Metrics]:
        num_micro = jax.tree.leaves(batch)[0].shape[0]
        keys = jax.random.split(jax.random.fold_in(state.rng, state.step), num_micro)

        def micro(carry, xs):
            grads, banks = carry
            mb, key = xs
            (loss, (metrics, banks)), g = grad_fn(state.params, state.frozen, banks, mb, key)
            return (jax.tree.map(jnp.add, grads, g), banks), metrics

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        (grads, banks), metrics = jax.lax.scan(micro, (zeros, state.banks), (dict(batch), keys))
        grads = jax.tree.map(lambda g: g / num_micro, grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {k: jnp.mean(v) for k, v in metrics.items()}
        metrics["grad_norm"] = optax.global_norm(grads)  # before clipping, as DeepSpeed reports it
        metrics["lr"] = jnp.asarray(schedule(state.step), jnp.float32)  # the lr of this update
        new = state.replace(step=state.step + 1, params=params, opt_state=opt_state, banks=banks)
        return new, metrics

    return train_step


def make_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    config: StepConfig = StepConfig(),
    *,
    mesh: Mesh | None = None,
    state_shardings: TrainState | None = None,
    batch_shardings: Mapping[str, NamedSharding] | None = None,
    rules: sharding_lib.Rules = sharding_lib.DEFAULT_RULES,
    donate: bool = True,
):
    """The jitted train step `(state, batch) -> (state, metrics)`.

    Without a mesh: plain `jax.jit` (single device). With a mesh: in/out shardings `state_shardings`
    (`train.state.state_shardings`) and `batch_shardings` (default: `train.state.batch_shardings` of
    the first batch: micro-batch axis unsharded, samples over the batch mesh axes), activations
    constrained by `rules`, metrics replicated. The state is donated unless `donate=False`.
    """
    fn = train_step_fn(graphdef, tx, schedule, config)
    donate_argnums = (0,) if donate else ()
    if mesh is None:
        return jax.jit(fn, donate_argnums=donate_argnums)

    def sharded(state, batch):
        with sharding_lib.use_mesh(mesh, rules):  # constrain() reads it while tracing
            return fn(state, batch)

    replicated = NamedSharding(mesh, PartitionSpec())

    def build(batch_sh):
        return jax.jit(
            sharded,
            in_shardings=(state_shardings, batch_sh),
            out_shardings=(state_shardings, replicated),
            donate_argnums=donate_argnums,
        )

    if batch_shardings is not None:
        return build(dict(batch_shardings))
    cache: dict = {}

    def step(state, batch):
        key = tuple(sorted((k, np.ndim(v)) for k, v in batch.items()))
        if key not in cache:
            from glus_jax.train.state import batch_shardings as default_batch_shardings

            cache[key] = build(default_batch_shardings(batch, mesh, rules, lead=1))
        return cache[key](state, batch)

    return step
