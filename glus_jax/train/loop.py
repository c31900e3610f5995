"""The GLUS training loop: model initialisation, sharded state, resumable checkpoints, logging, export.

Ports the driver of GLUS `train_ds.py` (model set-up, DeepSpeed engine, `train()` loop, auto-resume) to
one jitted step over a device mesh:

    config (configs/*.py) -> model (init_from | convert | preset) -> mesh + shardings -> TrainState
    -> per process: grain iterator of its shard -> A micro-batches stacked -> global arrays -> train step
    -> metrics (console + TensorBoard) -> orbax checkpoints -> merged model directory at the end

Initialisation (`build_model`), as train_ds.py sets the model up:
- `model.init_from`: a glus-jax model directory (e.g. `glus-jax convert` of LISA-7B-v1 with SAM2).
- else `model.lisa_checkpoint` + `model.vision_tower` + `model.sam2_checkpoint` (+ `model.sam2_config`):
  converted here. LLaVA (LLM, projector) from the LISA/GLUS HF checkpoint, CLIP from its directory,
  SAM2 from an official `sam2_hiera_*.pt` (`{"model": state_dict}`) with its real fuser gammas
  (`load_fuser_gamma=True`, quirk Q1: SAM2 is loaded with `load_state_dict` in training), and a *fresh*
  `text_hidden_fcs` (train_ds.py's second `initialize_glus_modules()` rebuilds it with PyTorch's default
  Linear init, dropping LISA's).
- else a random model of `model.preset` (tests, the synthetic world) with the tokenizer `model.tokenizer`.
Then LoRA (`train.lora_*`) is added (PEFT init: A uniform, B = 0), `model.dtype` / `model.remat` set,
and SAM2's input size set to `data.image_size` (the pipeline's).

Checkpoints (`WORKDIR/checkpoints/<step>/`, orbax `CheckpointManager`, asynchronous, `train.keep_checkpoints`
kept): the trainable parameters, optimizer state, contrastive banks, step and PRNG key (`state/`), and
every process's grain iterator position (`data/process_<i>-of-<n>.json`). A run restarted with the same
config and workdir resumes from the newest complete checkpoint onto the same trajectory (frozen
parameters are re-initialised from the same source). Metrics: console and TensorBoard (`WORKDIR/tb`).
At the end the LoRA-merged model is written as a model directory `WORKDIR/model` (with several
processes: gathered to process 0, which alone writes it while the others wait; `export_model`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from glus_jax import sharding as sharding_lib
from glus_jax.config import ConfigError, from_dict, to_dict
from glus_jax.data.tokenizer import GLUSTokenizer
from glus_jax.models import glus as glus_lib
from glus_jax.models import llama as llama_lib
from glus_jax.models.glus import GLUS, GLUSConfig
from glus_jax.train import forward as forward_lib
from glus_jax.train import losses as losses_lib
from glus_jax.train import optimizer as opt_lib
from glus_jax.train import state as state_lib
from glus_jax.train import step as step_lib

# Batch arrays the train step reads (labels are implied by input_ids: CE is at the [SEG] positions).
STEP_KEYS = (
    "clip_pixels",
    "sam_pixels",
    "input_ids",
    "attention_mask",
    "exp_valid",
    "gt_masks",
    "orig_size",
    "seg_keys",
    "expression_ids",
    "dataset_id",
)


# ------------------------------------------------------------------------------------------- model


def training_model_config(base: GLUSConfig, config: Any) -> GLUSConfig:
    """The model config a run trains: `base` with LoRA, dtype, remat, frame counts and SAM2 input size
    from the experiment config."""
    from glus_jax.models.io import with_field

    t, m, d = config.train, config.model, config.data
    cfg = from_dict(GLUSConfig, with_field(to_dict(base), "dtype", str(m.dtype)))
    llama = dataclasses.replace(
        cfg.llava.llama,
        lora_rank=int(t.lora_rank),
        lora_alpha=float(t.lora_alpha),
        lora_dropout=float(t.lora_dropout),
        lora_targets=tuple(t.lora_targets),
        remat=bool(m.remat),
    )
    # The SAM2 parameters do not depend on the input size: the pipeline's size is the model's.
    sam2 = dataclasses.replace(cfg.sam2, image_size=int(d.image_size))
    if int(d.clip_image_size) != cfg.llava.clip.image_size:
        raise ConfigError(
            f"data.clip_image_size {d.clip_image_size} != the model's CLIP input size "
            f"{cfg.llava.clip.image_size}"
        )
    return dataclasses.replace(
        cfg,
        llava=dataclasses.replace(cfg.llava, llama=llama),
        sam2=sam2,
        context_frames=int(d.context_frames),
        question_frames=int(d.question_frames),
    )


def _fill(model: nnx.Module, flat: Mapping[str, Any], skip=None) -> None:
    """Set every (abstract) variable of `model` from `flat` {"a/b/c": array} (paths joined by '/')."""
    state = nnx.state(model, nnx.Not(nnx.RngState))
    for path, var in nnx.to_flat_state(state):
        key = "/".join(str(p) for p in path)
        if skip is not None and skip(path, var):
            continue
        var.set_value(flat[key])
    nnx.update(model, state)


def _abstract_params(state: nnx.State, mesh=None, rules=sharding_lib.DEFAULT_RULES) -> dict:
    """Nested dict (to_pure_dict layout) of ShapeDtypeStructs of `state`'s variables, placed on `mesh` by
    their logical axes when given (so a multi-host restore lands sharded)."""
    out: dict = {}
    for path, var in nnx.to_flat_state(state):
        sharding = None
        if mesh is not None:
            spec = sharding_lib.logical_to_spec(var.get_metadata().get("out_sharding"), rules)
            sharding = jax.sharding.NamedSharding(mesh, sharding_lib._fit_spec(spec, var.shape, mesh))
        node = out
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = jax.ShapeDtypeStruct(var.shape, var.dtype, sharding=sharding)
    return out


def _load_model_dir(
    path: Path, config: Any, mesh=None, rules=sharding_lib.DEFAULT_RULES
) -> tuple[GLUS, GLUSTokenizer, dict]:
    from glus_jax import checkpoint
    from glus_jax.models.io import _flatten

    stored = checkpoint.load_config(path)
    if "model" not in stored:
        raise checkpoint.CheckpointError(
            f"{path}/config.yaml: no 'model' section (not a GLUS model directory)"
        )
    try:
        base = from_dict(GLUSConfig, stored["model"])
    except ConfigError as e:
        raise checkpoint.CheckpointError(f"{path}/config.yaml: {e}") from None
    if base.llava.llama.lora_rank:
        raise checkpoint.CheckpointError(
            f"{path}: holds unmerged LoRA adapters; export a merged model to train from"
        )
    cfg = training_model_config(base, config)
    model = nnx.eval_shape(lambda: GLUS(cfg, rngs=nnx.Rngs(0)))
    base_vars = nnx.state(model, nnx.All(nnx.Not(nnx.RngState), nnx.Not(llama_lib.LoRAParam)))
    flat = _flatten(checkpoint.load_params(path, _abstract_params(base_vars, mesh, rules)))
    _fill(model, flat, skip=lambda p, v: isinstance(v, llama_lib.LoRAParam))
    tokenizer = GLUSTokenizer.from_dir(path / "tokenizer", add_glus_tokens=False)
    return model, tokenizer, {"init_from": str(path)}


def scale_init(model: GLUS, *, qk: float = 1.0, prompt: float = 1.0) -> None:
    """Rescales two parts of a randomly initialised GLUS, in place, so that from the first step the mask
    depends on the expression (a model trained from scratch, e.g. the synthetic world, otherwise never
    learns to ground: nothing tells the expressions apart, and the losses settle on one mask per clip).

    qk: LLaMA q_proj / k_proj kernels x qk (attention logits x qk**2). At the default init a from-scratch
      LLaMA attends almost uniformly over the ~350-token prompt, so the state before [SEG] is nearly the
      same for every expression (cosine 0.99 between expressions of a clip after text_hidden_fcs; 0.43 at
      qk = 3).
    prompt: text_hidden_fcs' last layer x prompt. At the default init the [SEG] prompt token is ~5x
      smaller than SAM2's learnt output tokens it is mixed with in the mask decoder, so it barely moves
      the mask.
    """
    attn = model.llava.llm.model.layers.self_attn
    for layer, s in ((attn.q_proj, qk), (attn.k_proj, qk), (model.text_hidden_fcs.fc2, prompt)):
        if s != 1.0:
            layer.kernel.set_value(layer.kernel[...] * s)
            if getattr(layer, "bias", None) is not None:
                layer.bias.set_value(layer.bias[...] * s)


def torch_linear_init(model: nnx.Module, rngs: nnx.Rngs) -> None:
    """PyTorch's default nn.Linear init (kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in)) for kernel and
    bias) on every Linear of `model`, in place."""
    from glus_jax.layers import Linear

    for _, m in nnx.iter_graph(model):
        if isinstance(m, Linear):
            fan_in = m.kernel.shape[0]
            bound = 1.0 / math.sqrt(fan_in)
            m.kernel.set_value(jax.random.uniform(rngs.params(), m.kernel.shape, jnp.float32, -bound, bound))
            if getattr(m, "bias", None) is not None:
                m.bias.set_value(jax.random.uniform(rngs.params(), m.bias.shape, jnp.float32, -bound, bound))


def _convert(config: Any) -> tuple[GLUS, GLUSTokenizer, dict]:
    from tools.convert_weights import clip as clip_table
    from tools.convert_weights import glus as glus_table
    from tools.convert_weights import llava as llava_table
    from tools.convert_weights import sam2 as sam2_table
    from tools.convert_weights.engine import ConversionError, read_state_dict

    m = config.model
    missing = [k for k in ("lisa_checkpoint", "vision_tower", "sam2_checkpoint") if not m[k]]
    if missing:
        raise ConfigError(
            f"model.init_from is empty and model.{{{', '.join(missing)}}} not set: nothing to train from"
        )
    path = clip_table.resolve_checkpoint(m.lisa_checkpoint)
    clip_path = clip_table.resolve_checkpoint(m.vision_tower)
    hf = clip_table.read_config(path)
    state = read_state_dict(path)
    tokenizer = GLUSTokenizer.from_dir(path, add_glus_tokens=False)
    if tokenizer.seg_token_id is None:
        raise ConversionError(f"{path}: the tokenizer has no [SEG] token: not a LISA/GLUS checkpoint")
    from glus_jax.models import llava as llava_lib

    llava_cfg = llava_lib.from_hf_config(
        hf, clip_table.read_config(clip_path), projector_type=llava_table.projector_type_of(state)
    )
    if llava_cfg.llama.vocab_size != len(tokenizer):
        raise ConversionError(
            f"{path}: config vocab_size {llava_cfg.llama.vocab_size} != tokenizer size {len(tokenizer)}"
        )
    base = GLUSConfig(
        llava=llava_cfg,
        sam2=glus_table.sam2_config_of(m.sam2_config),
        seg_token_id=tokenizer.seg_token_id,
    )
    cfg = training_model_config(base, config)
    model = nnx.eval_shape(lambda: GLUS(cfg, rngs=nnx.Rngs(0)))
    llava_table.convert_llava(
        state,
        cfg.llava,
        model.llava,
        foreign_prefixes=llava_table.GLUS_FOREIGN_PREFIXES,
        what=f"checkpoint {path}",
    )
    clip_table.convert_clip(
        read_state_dict(clip_path), cfg.llava.clip, model.llava.vision_tower, what=f"CLIP {clip_path}"
    )
    # Official SAM2 checkpoints are {"model": state_dict} .pt files; their fuser gammas are real (Q1).
    sam_path = str(m.sam2_checkpoint)
    sam_sd = read_state_dict(sam_path, subkey="model" if sam_path.endswith(".pt") else None)
    sam2_table.convert_sam2(sam_sd, cfg.sam2, model.visual_model, load_fuser_gamma=True)
    # train_ds.py's second initialize_glus_modules() replaces LISA's text_hidden_fcs by a fresh one.
    rngs = nnx.Rngs(int(config.train.seed))
    model.text_hidden_fcs = glus_lib.TextHiddenFcs(
        cfg.llava.llama.hidden_size, cfg.out_dim, dtype=jnp.dtype(cfg.llava.llama.dtype), rngs=rngs
    )
    torch_linear_init(model.text_hidden_fcs, rngs)
    source = {
        "lisa_checkpoint": str(m.lisa_checkpoint),
        "vision_tower": str(m.vision_tower),
        "sam2_checkpoint": str(m.sam2_checkpoint),
        "load_fuser_gamma": True,
    }
    return model, tokenizer, source


def load_sam2_from(model: GLUS, path: Path) -> None:
    """Replace `model`'s SAM2 by the one of the glus-jax model directory `path`, in place. The two SAM2s
    must have the same parameters (names and shapes); only their input size may differ."""
    from glus_jax.models.io import load_model
    from tools.convert_weights.engine import load_into, param_shapes, path_str

    source = load_model(path)[0].visual_model
    want, have = param_shapes(model.visual_model), param_shapes(source)
    diff = sorted(k for k in want.keys() | have.keys() if want.get(k) != have.get(k))
    if diff:
        shown = ", ".join(f"{k}: {have.get(k, 'missing')} (want {want.get(k, 'none')})" for k in diff[:4])
        raise ConfigError(
            f"model.sam2_from {path}: its SAM2 is another architecture "
            f"({len(diff)} parameters differ: {shown})"
        )
    params = {path_str(k): np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(source, nnx.Param))}
    load_into(model.visual_model, params, what=f"SAM2 of {path}")


def build_model(
    config: Any, mesh: jax.sharding.Mesh | None = None, rules: sharding_lib.Rules = sharding_lib.DEFAULT_RULES
) -> tuple[GLUS, GLUSTokenizer, dict]:
    """(model with LoRA adapters initialised, tokenizer, source record) per the module docstring. With a
    mesh, a model directory is restored straight into its shards (needed with several processes)."""
    m = config.model
    seed = int(config.train.seed)
    if m.init_from:
        model, tokenizer, source = _load_model_dir(Path(m.init_from), config, mesh, rules)
    elif m.lisa_checkpoint:
        model, tokenizer, source = _convert(config)
    else:
        if m.preset not in glus_lib.PRESETS:
            raise ConfigError(f"model.preset {m.preset!r}: unknown; known {sorted(glus_lib.PRESETS)}")
        if not m.tokenizer:
            raise ConfigError(
                "model.preset needs model.tokenizer (a tokenizer directory) when model.init_from is empty"
            )
        tokenizer = GLUSTokenizer.from_dir(m.tokenizer, add_glus_tokens=False)
        cfg = training_model_config(glus_lib.PRESETS[m.preset](), config)
        if tokenizer.seg_token_id != cfg.seg_token_id or len(tokenizer) != cfg.llava.llama.vocab_size:
            raise ConfigError(
                f"model.tokenizer {m.tokenizer}: [SEG] id {tokenizer.seg_token_id} / size {len(tokenizer)} "
                f"do not match preset {m.preset!r} ({cfg.seg_token_id} / {cfg.llava.llama.vocab_size})"
            )
        model = GLUS(cfg, rngs=nnx.Rngs(seed))
        scale_init(model, qk=float(m.qk_init_scale), prompt=float(m.prompt_init_scale))
        source = {"preset": m.preset, "seed": seed}
        if m.sam2_from:
            load_sam2_from(model, Path(m.sam2_from))
            source["sam2_from"] = str(m.sam2_from)
    llama_lib.init_lora(model, nnx.Rngs(seed + 1))
    if tokenizer.seg_token_id != model.config.seg_token_id:
        raise ConfigError(
            f"tokenizer [SEG] id {tokenizer.seg_token_id} != model's {model.config.seg_token_id}"
        )
    return model, tokenizer, source


# ------------------------------------------------------------------------------------------- setup


def optimizer_config(config: Any) -> opt_lib.OptimizerConfig:
    t = config.train
    return opt_lib.OptimizerConfig(
        lr=float(t.lr),
        warmup_steps=int(t.warmup_steps),
        total_steps=int(t.steps),
        beta1=float(t.beta1),
        beta2=float(t.beta2),
        weight_decay=float(t.weight_decay),
        grad_clip=float(t.grad_clip),
    )


def step_config(config: Any) -> step_lib.StepConfig:
    t, d = config.train, config.data
    datasets = tuple(d.datasets)
    return step_lib.StepConfig(
        forward=forward_lib.ForwardOptions(
            mem_stride=int(t.mem_stride), image_grad=bool(t.image_grad), ce_trains_llm=bool(t.ce_trains_llm)
        ),
        loss=forward_lib.LossOptions(
            weights=losses_lib.LossWeights(
                ce=float(t.ce_weight), bce=float(t.bce_weight), dice=float(t.dice_weight)
            ),
            contrastive=bool(t.contrastive),
            contrastive_weight=float(t.contrastive_weight),
            contrastive_tau=float(t.contrastive_tau),
            num_negatives=int(t.num_negatives),
            contrastive_datasets=tuple(name == "mevis" for name in datasets),
            word_weight=float(t.word_weight),
        ),
        dropout=bool(t.dropout),
    )


def mesh_rules(config: Any) -> sharding_lib.Rules:
    """`mesh.rules` (pairs of logical axis and mesh axes; lists from a command line are made tuples), or
    the default rules when empty."""
    rules = config.mesh.rules
    if not rules:
        return sharding_lib.DEFAULT_RULES
    return tuple((str(k), v if v is None or isinstance(v, str) else tuple(v)) for k, v in rules)


@dataclasses.dataclass
class Setup:
    """Everything a run derives from its config before the first step."""

    config: Any
    mesh: jax.sharding.Mesh
    rules: sharding_lib.Rules
    model_source: dict
    tokenizer: GLUSTokenizer
    graphdef: nnx.GraphDef
    state: state_lib.TrainState
    shardings: state_lib.TrainState
    tx: Any
    schedule: Any
    step_fn: Callable
    global_batch: int  # samples per micro-batch over all processes
    local_batch: int  # of this process
    grad_accum: int


def data_parallel_size(mesh: jax.sharding.Mesh, rules: sharding_lib.Rules) -> int:
    spec = sharding_lib.logical_to_spec(("batch",), rules)[0]
    names = (spec,) if isinstance(spec, str) else tuple(spec or ())
    return math.prod(mesh.shape[n] for n in names)


def setup(
    config: Any,
    *,
    model: GLUS | None = None,
    tokenizer: GLUSTokenizer | None = None,
    num_groups: int | None = None,
) -> Setup:
    """Mesh, model (sharded), optimizer, initial TrainState and the jitted step. `num_groups` (contrastive
    banks / loss groups) defaults to the data-parallel size; override it only to read a checkpoint of
    another layout (export)."""
    t = config.train
    mesh = sharding_lib.make_mesh(tuple(config.mesh.shape))
    rules = mesh_rules(config)
    source: dict = {}
    if model is None:
        model, tokenizer, source = build_model(config, mesh, rules)
    elif tokenizer is None:
        raise ValueError("setup: pass the tokenizer with the model")
    sharding_lib.shard_model(model, mesh, rules)
    per_device = int(t.batch_size)
    global_batch = per_device * data_parallel_size(mesh, rules)
    if global_batch % jax.process_count():
        raise ConfigError(f"global batch {global_batch} does not split over {jax.process_count()} processes")
    num_groups = global_batch // per_device if num_groups is None else int(num_groups)
    opt_cfg = optimizer_config(config)
    tx = opt_lib.make_optimizer(opt_cfg)
    schedule = opt_lib.lr_schedule(opt_cfg)
    trainable = tuple(t.trainable)
    graphdef, state, shardings = state_lib.create_train_state(
        model, tx, num_groups=num_groups, bank_size=int(t.bank_size), seed=int(t.seed), trainable=trainable,
        mesh=mesh, rules=rules,
    )
    step_fn = step_lib.make_train_step(
        graphdef, tx, schedule, step_config(config), mesh=mesh, state_shardings=shardings,
        batch_shardings=None, rules=rules,
    )
    return Setup(
        config=config, mesh=mesh, rules=rules, model_source=source, tokenizer=tokenizer, graphdef=graphdef,
        state=state, shardings=shardings, tx=tx, schedule=schedule, step_fn=step_fn,
        global_batch=global_batch, local_batch=global_batch // jax.process_count(),
        grad_accum=int(t.grad_accum),
    )


# ------------------------------------------------------------------------------------------ batches


def stack_micro_batches(batches: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """A micro-batches (this process's share, [B_local, ...]) -> {key: [A, B_local, ...]}."""
    return {k: np.stack([np.asarray(b[k]) for b in batches]) for k in batches[0]}


def global_batch(local: Mapping[str, np.ndarray], mesh: jax.sharding.Mesh, rules) -> dict[str, jax.Array]:
    """This process's [A, B_local, ...] arrays -> global jax.Arrays [A, B_global, ...] (STEP_KEYS only)
    sharded over the batch mesh axes (each process holds its own rows;
    `jax.make_array_from_process_local_data`)."""
    local = {k: local[k] for k in STEP_KEYS}
    shardings = state_lib.batch_shardings(local, mesh, rules, lead=1)
    return {k: jax.make_array_from_process_local_data(shardings[k], np.asarray(v)) for k, v in local.items()}


# --------------------------------------------------------------------------------------- checkpoints


def checkpoint_manager(workdir: Path, config: Any):
    import grain
    import orbax.checkpoint as ocp

    t = config.train
    options = ocp.CheckpointManagerOptions(
        max_to_keep=int(t.keep_checkpoints),
        enable_async_checkpointing=bool(t.async_checkpoints),
        create=True,
    )
    return ocp.CheckpointManager(
        (workdir / "checkpoints").absolute(),
        options=options,
        item_handlers={
            "state": ocp.StandardCheckpointHandler(),
            "data": grain.checkpoint.CheckpointHandler(),
        },
    )


def save_checkpoint(mngr, step: int, state: state_lib.TrainState, iterator) -> None:
    import grain
    import orbax.checkpoint as ocp

    mngr.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state_lib.checkpoint_tree(state)),
            data=grain.checkpoint.CheckpointSave(iterator),
        ),
        force=True,
    )


def stored_num_groups(mngr, step: int) -> int:
    """The number of contrastive banks (data-parallel groups) a checkpoint was written with."""
    meta = mngr.item_metadata(step)["state"]
    tree = getattr(meta, "tree", meta)
    return int(tree["banks"]["ptr"].shape[0])


def restore_checkpoint(mngr, step: int, s: Setup, iterator=None) -> state_lib.TrainState:
    """The state of checkpoint `step` placed per `s.shardings` (any process count / mesh); the data
    iterator's position too when one is given."""
    import grain
    import orbax.checkpoint as ocp

    abstract = state_lib.abstract_checkpoint_tree(s.state, s.shardings)
    items = {"state": ocp.args.StandardRestore(abstract)}
    if iterator is not None:
        items["data"] = grain.checkpoint.CheckpointRestore(iterator)
    got = mngr.restore(step, args=ocp.args.Composite(**items))
    return state_lib.restore_state(s.state, got["state"])


# ---------------------------------------------------------------------------------------------- run


StepCallback = Callable[[int, state_lib.TrainState, Mapping[str, np.ndarray], Mapping[str, float]], None]


@dataclasses.dataclass
class TrainResult:
    state: state_lib.TrainState
    setup: Setup
    history: list[dict[str, float]]  # metrics of every step (host floats)
    resumed_from: int | None
    export_dir: Path | None


def model_from_state(s: Setup, state: state_lib.TrainState, merge: bool = True) -> GLUS:
    """The model of a state; with `merge`, LoRA folded into the base weights (W + A B alpha / r) and the
    config made that of a plain model (no adapters, no remat)."""
    return _model_of(s.graphdef, state.params, state.frozen, merge)


def _model_of(graphdef: nnx.GraphDef, params, frozen, merge: bool) -> GLUS:
    # Fresh Variables (tree.map): merging LoRA below must not write into the state's own Variables.
    model = nnx.merge(graphdef, *jax.tree.map(lambda x: x, (params, frozen)))
    if not merge:
        return model
    llama_lib.merge_lora(model)
    cfg = model.config
    llama = dataclasses.replace(cfg.llava.llama, lora_rank=0, remat=False)
    model.config = dataclasses.replace(cfg, llava=dataclasses.replace(cfg.llava, llama=llama))
    return model


def host_copy(tree, keep: bool = True):
    """Host (numpy) copies of the arrays of `tree`, global values of arrays sharded over the processes
    (`process_allgather`). With several processes every process must call it (a collective per leaf,
    in the same order); only where `keep` is the copy kept and returned (None elsewhere), so a process
    that does not keep it never holds more than one gathered leaf."""
    from jax.experimental import multihost_utils

    leaves, treedef = jax.tree.flatten(tree)
    out = []
    for x in leaves:
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            x = multihost_utils.process_allgather(x, tiled=True)
        out.append(np.asarray(x) if keep else None)
    return jax.tree.unflatten(treedef, out) if keep else None


def export_model(
    s: Setup, state: state_lib.TrainState, path: Path, extra_source: Mapping | None = None
) -> Path:
    """Write the LoRA-merged model as a model directory (float32 params, the run's model config),
    atomically (`glus_jax.checkpoint.save_model_dir`).

    With several JAX processes every process must call it: the trainable and frozen parameters are
    gathered from their shards to process 0, which alone merges LoRA (on its CPU: the whole model need
    not fit one accelerator) and writes the directory; the others wait for it at a barrier, which also
    carries process 0's success or failure to them. Returns `path` on every process."""
    source = {**s.model_source, "trained_steps": int(state.step), **dict(extra_source or {})}
    if jax.process_count() == 1:
        return _write_model(s, state.params, state.frozen, path, source, local=False)
    from jax.experimental import multihost_utils

    writer = jax.process_index() == 0
    params = host_copy(state.params, keep=writer)
    frozen = host_copy(state.frozen, keep=writer)
    error = None
    if writer:
        try:
            with jax.default_device(jax.local_devices(backend="cpu")[0]):
                _write_model(s, params, frozen, path, source, local=True)
        except Exception as e:  # noqa: BLE001 - re-raised below, after the others are released
            error = e
        del params, frozen
    failed = multihost_utils.broadcast_one_to_all(np.int32(error is not None), is_source=writer)
    if error is not None:
        raise error
    if int(failed):
        raise RuntimeError(f"process 0 failed to write the merged model {path} (see its log)")
    return Path(path).absolute()


def _write_model(s: Setup, params, frozen, path: Path, source: Mapping, *, local: bool) -> Path:
    import tempfile

    from glus_jax import checkpoint
    from glus_jax.models.io import model_params

    model = _model_of(s.graphdef, params, frozen, merge=True)
    tree = jax.tree.map(np.asarray, model_params(model))
    with tempfile.TemporaryDirectory() as tmp:
        s.tokenizer.save(tmp)
        config = {"model": to_dict(model.config), "source": dict(source)}
        return checkpoint.save_model_dir(path, tree, config, tokenizer_dir=tmp, local=local)


def export_from_checkpoint(
    config: Any, workdir: str | Path, step: int | None = None, path: str | Path | None = None
) -> Path:
    """Restore checkpoint `step` (default: the newest) of `workdir` and write the merged model
    directory to `path` (default WORKDIR/model). Runs in one process, or in all of a multi-process
    run (`export_model`)."""
    workdir = Path(workdir)
    mngr = checkpoint_manager(workdir, config)
    try:
        step = mngr.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{workdir}/checkpoints: no checkpoint to export")
        s = setup(config, num_groups=stored_num_groups(mngr, step))
        state = restore_checkpoint(mngr, step, s)
    finally:
        mngr.close()
    return export_model(s, state, Path(path) if path else workdir / "model", {"checkpoint_step": int(step)})


class MetricsWriter:
    """Console + TensorBoard (process 0 only)."""

    def __init__(self, workdir: Path | None):
        self.tb = None
        if workdir is not None and jax.process_index() == 0:
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(str(workdir / "tb"))

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        if jax.process_index() != 0:
            return
        text = " ".join(f"{k}={v:.5g}" for k, v in sorted(metrics.items()))
        print(f"[train] step {step} {text}", flush=True)
        if self.tb is not None:
            for k, v in metrics.items():
                group = "metrics" if k in ("lr", "grad_norm", "samples_per_sec", "step_time") else "train"
                self.tb.add_scalar(f"{group}/{k}", v, step)
            self.tb.flush()

    def close(self):
        if self.tb is not None:
            self.tb.close()


def train(
    config: Any,
    workdir: str | Path,
    *,
    sources: Sequence[Any] | None = None,
    model: GLUS | None = None,
    tokenizer: GLUSTokenizer | None = None,
    on_step: StepCallback | None = None,
    export: bool = True,
    max_steps: int | None = None,
) -> TrainResult:
    """Train per `config` in `workdir`, resuming from its newest checkpoint if there is one.

    sources: data sources overriding `data.*` (see `glus_jax.data.pipeline.make_train_iterator`);
    model / tokenizer: a model to train instead of `build_model(config)`; on_step(step, state, local
    batch, metrics): called after every step (step = optimizer steps done); max_steps: stop after this
    many steps of this call (the schedule still runs to `train.steps`). Returns the final state and the
    metrics history of this call.
    """
    from glus_jax.data import pipeline

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    t = config.train
    s = setup(config, model=model, tokenizer=tokenizer)
    iterator = pipeline.make_train_iterator(
        config,
        s.tokenizer,
        jax.process_index(),
        jax.process_count(),
        batch_size=s.local_batch,
        sources=sources,
    )
    mngr = checkpoint_manager(workdir, config)
    state = s.state
    resumed = mngr.latest_step()
    if resumed is not None:
        groups = stored_num_groups(mngr, resumed)
        if groups != state.banks.ptr.shape[0]:
            raise ValueError(
                f"{workdir}: checkpoint {resumed} was written with {groups} data-parallel groups "
                f"(contrastive banks), this mesh has {state.banks.ptr.shape[0]}: resume with the same "
                "data-parallel size"
            )
        state = restore_checkpoint(mngr, resumed, s, iterator)
        print(f"[train] resumed from step {resumed} of {workdir}", flush=True)
    writer = MetricsWriter(workdir)
    total = int(t.steps)
    start = int(state.step)
    end = total if max_steps is None else min(total, start + int(max_steps))
    history: list[dict[str, float]] = []
    pending: list[dict[str, float]] = []  # metrics since the last logged line
    log_every, ckpt_every = max(1, int(t.log_every)), int(t.ckpt_every)
    samples_per_step = s.global_batch * s.grad_accum
    try:
        for step in range(start, end):
            t0 = time.perf_counter()
            local = stack_micro_batches([next(iterator) for _ in range(s.grad_accum)])
            t_data = time.perf_counter() - t0
            state, metrics = s.step_fn(state, global_batch(local, s.mesh, s.rules))
            host = {k: float(v) for k, v in jax.device_get(metrics).items()}
            if not all(math.isfinite(v) for k, v in host.items() if k != "num_masks"):
                raise FloatingPointError(f"step {step + 1}: non-finite metrics {host}")
            dt = time.perf_counter() - t0
            host.update(step_time=dt, data_time=t_data, samples_per_sec=samples_per_step / dt)
            history.append(host)
            pending.append(host)
            done = step + 1
            if done % log_every == 0 or done == end:  # the mean since the last line: single steps are noisy
                writer.write(done, {k: sum(h[k] for h in pending) / len(pending) for k in host})
                pending = []
            if (ckpt_every > 0 and done % ckpt_every == 0) or done == end:  # the last step is always saved
                save_checkpoint(mngr, done, state, iterator)
            if on_step is not None:
                on_step(done, state, local, host)
    finally:
        mngr.wait_until_finished()
        mngr.close()
        writer.close()
    export_dir = None
    if export and int(state.step) == total:  # every process takes part; process 0 writes
        export_dir = export_model(s, state, workdir / "model")
    return TrainResult(state=state, setup=s, history=history, resumed_from=resumed, export_dir=export_dir)
