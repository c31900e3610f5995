"""Training benchmark: step time, samples/s, tokens/s and model FLOPs utilization of the GLUS train step.

  .venv/bin/python -m benchmarks.train --config {tiny,glus_s,synthetic} [--steps 10] [--warmup 2]
      [--json FILE] [--image-size S] [--batch-size B] [--workdir DIR] [--shape-check] [--scan-layers]

What one run does (docs/PERFORMANCE.md has the method and the numbers):
1. The experiment config `configs/<config>.py` (tiny: GLUS-tiny, float32, batch 2 x 3 expressions,
   4 context + 4 query frames; glus_s: GLUS-S, bfloat16, LoRA, remat; synthetic: the world model's
   recipe, every tower trained, layers unrolled) with random weights of its preset and the config's
   tokenizer, else the tiny GLUS one (token ids only need to be below the vocabulary), on a generated
   MeViS-layout dataset (`glus_jax.data.synthetic`, 96 x 128 frames) written into the workdir.
2. The batches are drawn from the real grain pipeline (`pipeline.make_train_iterator`) *before* timing:
   the step time is the jitted train step alone (`train.step.make_train_step`: forward, backward, AdamW,
   contrastive banks), the input pipeline's seconds per batch are reported beside it.
3. Compile: the step is lowered and compiled once (ahead of time); its wall seconds and JAX's compile
   events are reported, then `--warmup` untimed steps and `--steps` timed steps, each until its metrics
   are on the host. Step time = median.
4. FLOPs per step: XLA's cost analysis of the step program lowered with every `lax.scan` unrolled
   (`benchmarks.common.lowered_flops`; the compiled program's own count sees each loop body once, so it
   is reported beside it but not used): the work the program asks for (forward, backward of the
   trainable paths, optimizer). With remat on, that includes the recomputed forward; the model FLOPs
   are then counted on the same step without remat. MFU = model FLOPs per step / step time / the
   device's measured matmul rate (`common.matmul_rate`); hardware FLOPs utilization uses the executed
   count.
5. Throughput: samples/s (clips of C + Q frames, E expressions each), expressions/s (valid
   conversations), tokens/s (LLM positions after the image tokens are spliced in: the non-padded ones
   and all processed ones).

`--shape-check` (default for glus_s without a GPU): the step is only lowered on abstract weights and
batches; FLOPs per step and the FLOP-bound step time on this device are reported, nothing executes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from benchmarks import common

CONFIG_FILES = {"tiny": "configs/tiny.py", "glus_s": "configs/glus_s.py", "synthetic": "configs/synthetic.py"}
FRAME_SIZE = (96, 128)  # generated videos (H, W); the mask canvas is this size


def experiment_config(name: str, data_root: Path, args) -> Any:
    from glus_jax.config import load_experiment_config

    # The synthetic world's tokenizer is its own; SAM2 stays random (`model.sam2_from` off): timing only.
    overrides = [f"--config.data.root={data_root}", "--config.data.num_workers=0",
                 "--config.train.ckpt_every=0", "--config.model.sam2_from="]
    if args.batch_size:
        overrides.append(f"--config.train.batch_size={args.batch_size}")
    if args.max_seq_len:
        overrides.append(f"--config.data.max_seq_len={args.max_seq_len}")
    if args.grad_accum:
        overrides.append(f"--config.train.grad_accum={args.grad_accum}")
    cfg = load_experiment_config(common.REPO / CONFIG_FILES[name], overrides)
    if not cfg.model.tokenizer:
        cfg.model.tokenizer = str(common.TOKENIZER_DIR)
    if args.image_size:
        cfg.data.image_size = int(args.image_size)
    cfg.data.max_mask_size = FRAME_SIZE
    cfg.data.datasets, cfg.data.sample_rates = ("mevis",), (1,)  # the generated data are MeViS-layout
    cfg.mesh.shape = (1, 1, 1)  # one device
    return cfg


def build_model(cfg, tokenizer, *, abstract: bool, scan_layers: bool = False):
    """GLUS of the config's preset with the run's LoRA / dtype / remat / image size, random weights (or
    abstract), its [SEG] id set to the tokenizer's (the tiny tokenizer stands in for GLUS-S's)."""
    from flax import nnx

    from glus_jax.config import from_dict, to_dict
    from glus_jax.models import glus as glus_lib
    from glus_jax.models import llama as llama_lib
    from glus_jax.models.io import with_field
    from glus_jax.train import loop

    base = glus_lib.PRESETS[cfg.model.preset](seg_token_id=tokenizer.seg_token_id)
    gcfg = loop.training_model_config(base, cfg)
    if scan_layers:  # the preset's towers as scans over their layers (the side-by-side of `unroll_layers`)
        gcfg = from_dict(glus_lib.GLUSConfig, with_field(to_dict(gcfg), "unroll_layers", False))
    if gcfg.llava.llama.vocab_size < len(tokenizer):
        raise ValueError(f"preset {cfg.model.preset}: vocabulary {gcfg.llava.llama.vocab_size} "
                         f"< tokenizer {len(tokenizer)}")
    seed = int(cfg.train.seed)

    def make():
        model = glus_lib.GLUS(gcfg, rngs=nnx.Rngs(seed))
        llama_lib.init_lora(model, nnx.Rngs(seed + 1))
        return model

    return nnx.eval_shape(make) if abstract else make()


def make_data(root: Path, videos: int, seed: int) -> Path:
    from glus_jax.data import synthetic

    world = synthetic.WorldConfig(height=FRAME_SIZE[0], width=FRAME_SIZE[1], min_frames=8, max_frames=16)
    if not (root / "mevis" / "train" / "meta_expressions.json").exists():
        synthetic.generate(root / "mevis", "train", videos, seed=seed, config=world, overwrite=True)
    return root


def batch_tokens(batch: dict[str, np.ndarray], tokens_per_image: int) -> tuple[int, int, int]:
    """(non-padded LLM positions, processed LLM positions, valid expressions) of a [A, B, ...] batch."""
    ids = batch["input_ids"]  # [A, B, E, T]
    mask = batch["attention_mask"].astype(bool)
    valid = batch["exp_valid"].astype(bool)  # [A, B, E]
    images = (ids < 0).sum(-1)  # image placeholders per row (IMAGE_TOKEN_INDEX = -200)
    real = int(((mask.sum(-1) + (tokens_per_image - 1) * images) * valid).sum())
    k = batch["clip_pixels"].shape[2]
    processed = int(np.prod(ids.shape[:3])) * (ids.shape[-1] + (tokens_per_image - 1) * k)
    return real, processed, int(valid.sum())


def step_flops(graphdef, tx, schedule, step_cfg, state, batch) -> float:
    from benchmarks.common import abstract, lowered_flops
    from glus_jax.train import step as step_lib

    fn = step_lib.train_step_fn(graphdef, tx, schedule, step_cfg)
    return lowered_flops(fn, abstract(state), abstract(batch))


def run(args) -> dict[str, Any]:
    from glus_jax.data import pipeline
    from glus_jax.data.tokenizer import GLUSTokenizer
    from glus_jax.train import loop
    from glus_jax.train import optimizer as opt_lib
    from glus_jax.train import state as state_lib
    from glus_jax.train import step as step_lib

    t_start = time.perf_counter()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix=f"glus_train_bench_{args.config}_"))
    workdir.mkdir(parents=True, exist_ok=True)
    data_root = make_data(workdir / "data", args.videos, args.seed)
    cfg = experiment_config(args.config, data_root, args)
    shape_check = args.shape_check or (args.config == "glus_s" and not common.on_gpu())
    tokenizer = GLUSTokenizer.from_dir(cfg.model.tokenizer, add_glus_tokens=False)
    model = build_model(cfg, tokenizer, abstract=shape_check, scan_layers=args.scan_layers)
    gcfg = model.config
    opt_cfg = loop.optimizer_config(cfg)
    tx, schedule = opt_lib.make_optimizer(opt_cfg), opt_lib.lr_schedule(opt_cfg)
    step_cfg = loop.step_config(cfg)
    per_step = int(cfg.train.batch_size)
    trainable = tuple(cfg.train.get("trainable", opt_lib.TRAINABLE))
    accum = int(cfg.train.grad_accum)

    # Batches from the real pipeline, drawn before timing.
    it = pipeline.make_train_iterator(cfg, tokenizer, 0, 1, batch_size=per_step)
    n_batches = 1 if shape_check else args.warmup + args.steps
    t0 = time.perf_counter()
    batches = []
    for _ in range(n_batches):
        local = loop.stack_micro_batches([next(it) for _ in range(accum)])
        batches.append({k: local[k] for k in loop.STEP_KEYS})
    data_seconds = (time.perf_counter() - t0) / (n_batches * accum)
    if hasattr(it, "close"):
        it.close()

    if shape_check:
        graphdef, params, frozen = state_lib.split_model(model, trainable)
        state = state_lib.TrainState(
            step=jax.ShapeDtypeStruct((), np.int32), params=params, frozen=frozen,
            opt_state=jax.eval_shape(tx.init, params),
            banks=jax.eval_shape(lambda: state_lib.init_banks(1, gcfg.out_dim, int(cfg.train.bank_size))),
            rng=jax.ShapeDtypeStruct((2,), np.uint32),
        )
    else:
        graphdef, state, _ = state_lib.create_train_state(
            model, tx, num_groups=1, bank_size=int(cfg.train.bank_size), seed=int(cfg.train.seed),
            trainable=trainable)
    n_trainable = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    n_frozen = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.frozen))

    t0 = time.perf_counter()
    flops = step_flops(graphdef, tx, schedule, step_cfg, state, batches[0])
    model_flops = flops
    if gcfg.llava.llama.remat:  # model FLOPs: the same step without the recomputed forward
        cfg.model.remat = False
        plain, _, _ = state_lib.split_model(
            build_model(cfg, tokenizer, abstract=True, scan_layers=args.scan_layers), trainable)
        cfg.model.remat = True
        model_flops = step_flops(plain, tx, schedule, step_cfg, state, batches[0])
    flops_seconds = time.perf_counter() - t0
    rate = common.matmul_rate(gcfg.llava.llama.dtype)
    real, processed, exps = batch_tokens(batches[0], gcfg.tokens_per_image)
    samples = per_step * accum
    result: dict[str, Any] = {
        "config": args.config, "device": common.device_name(), "dtype": gcfg.llava.llama.dtype,
        "remat": gcfg.llava.llama.remat, "unroll_layers": gcfg.llava.llama.unroll_layers,
        "batch_size": per_step, "grad_accum": accum,
        "samples_per_step": samples, "expressions_per_step": exps,
        "llm_tokens_per_step": real, "llm_positions_per_step": processed,
        "sam2_image_size": gcfg.sam2.image_size, "frame_size": list(FRAME_SIZE),
        "max_seq_len": int(cfg.data.max_seq_len), "trainable_params": n_trainable, "frozen_params": n_frozen,
        "flops_per_step": flops, "model_flops_per_step": model_flops, "flops_count_seconds": flops_seconds,
        "device_matmul_flops_per_s": rate, "flop_bound_step_seconds": flops / rate,
        "data_seconds_per_batch": data_seconds,
    }
    if shape_check:
        result.update(mode="shape check (abstract weights, nothing executed)", step_seconds=None, mfu=None)
        result["seconds"] = time.perf_counter() - t_start
        return _finish(result, workdir, args)

    # Compile once, ahead of time; the compiled program runs every step.
    jitted = step_lib.make_train_step(graphdef, tx, schedule, step_cfg)
    with common.CompileTimer() as ct:
        t0 = time.perf_counter()
        compiled = jitted.lower(state, batches[0]).compile()
        compile_wall = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    mem = compiled.memory_analysis()
    host_metrics = []
    times = []
    for i, b in enumerate(batches):
        t0 = time.perf_counter()
        state, metrics = compiled(state, b)
        host_metrics.append({k: float(v) for k, v in jax.device_get(metrics).items()})
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    losses = [m["loss"] for m in host_metrics]
    if not all(np.isfinite(losses)):
        raise FloatingPointError(f"non-finite losses {losses}")
    result.update({
        "compile_seconds": ct.seconds, "compile_wall_seconds": compile_wall,
        "xla_compiled_flops_loop_bodies_once": float(cost.get("flops", 0.0)),
        "xla_temp_bytes": int(mem.temp_size_in_bytes), "xla_argument_bytes": int(mem.argument_size_in_bytes),
        "steps": args.steps, "warmup": args.warmup, "step_seconds_all": times,
        "step_seconds": step_s, "step_seconds_mean": statistics.fmean(times),
        "step_seconds_min": min(times),
        "samples_per_s": samples / step_s, "expressions_per_s": exps / step_s,
        "tokens_per_s": real / step_s, "positions_per_s": processed / step_s,
        "model_flops_per_s": model_flops / step_s, "mfu": model_flops / step_s / rate,
        "hardware_flops_utilization": flops / step_s / rate,
        "losses": losses,
    })
    result["seconds"] = time.perf_counter() - t_start
    result["load_average_1_5_15min"] = list(os.getloadavg())  # a shared CPU: how busy it was
    return _finish(result, workdir, args)


def _finish(result, workdir: Path, args):
    result["workdir"] = str(workdir)
    if not args.workdir and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def print_table(r: dict[str, Any]) -> None:
    rows = [("config", r["config"]), ("device", r["device"]),
            ("dtype | remat", f"{r['dtype']} | {r['remat']}"),
            ("samples | expressions | LLM tokens per step",
             f"{r['samples_per_step']} | {r['expressions_per_step']} | {r['llm_tokens_per_step']}"
             f" (of {r['llm_positions_per_step']} positions)"),
            ("SAM2 input px", r["sam2_image_size"]),
            ("GFLOPs per step: executed | model (no remat)",
             f"{r['flops_per_step'] / 1e9:.2f} | {r['model_flops_per_step'] / 1e9:.2f}"),
            ("device matmul GFLOP/s", f"{r['device_matmul_flops_per_s'] / 1e9:.1f}"),
            ("FLOP-bound step seconds", f"{r['flop_bound_step_seconds']:.4f}")]
    if r.get("step_seconds") is not None:
        rows += [
            ("compile seconds (JAX events | wall)",
             f"{r['compile_seconds']:.1f} | {r['compile_wall_seconds']:.1f}"),
            ("step seconds median | min | mean",
             f"{r['step_seconds']:.3f} | {r['step_seconds_min']:.3f} | {r['step_seconds_mean']:.3f}"),
            ("samples/s | expressions/s", f"{r['samples_per_s']:.3f} | {r['expressions_per_s']:.3f}"),
            ("tokens/s (non-padded | processed)", f"{r['tokens_per_s']:.0f} | {r['positions_per_s']:.0f}"),
            ("MFU", f"{100 * r['mfu']:.1f} %"),
            ("input pipeline seconds per batch", f"{r['data_seconds_per_batch']:.3f}"),
        ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="tiny", choices=sorted(CONFIG_FILES))
    p.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation")
    p.add_argument("--json", default=None)
    p.add_argument("--image-size", type=int, default=None, help="SAM2 input size (default: the config's)")
    p.add_argument("--batch-size", type=int, default=None, help="samples per step (default: the config's)")
    p.add_argument("--grad-accum", type=int, default=None)
    p.add_argument("--max-seq-len", type=int, default=None)
    p.add_argument("--videos", type=int, default=8, help="generated training videos")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default=None, help="keep the generated data here")
    p.add_argument("--keep", action="store_true")
    p.add_argument("--shape-check", action="store_true", help="lower only (FLOPs), no execution")
    p.add_argument("--scan-layers", action="store_true",
                   help="run every tower's layers as a scan even where the preset unrolls them")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    result = run(args)
    print_table(result)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
