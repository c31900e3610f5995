"""`glus-jax train`: train GLUS from an experiment config (configs/*.py), resumably.

    glus-jax train --config configs/glus_s.py --config.data.root=/data --workdir runs/glus_s \\
        [--config.model.init_from=MODEL_DIR] [--config.train.steps=3000] [--max-steps N] [--no-export]
    glus-jax train --config ... --workdir runs/glus_s --export-only   # merged model of the newest checkpoint

Any `--config.a.b=value` overrides the config. Re-running the same command resumes from the newest
checkpoint in the workdir. Multi-host: run one process per host with `--coordinator HOST:PORT
--num-processes N --process-id I` (or nothing on TPU pods / SLURM, where `jax.distributed.initialize()`
finds them itself when `--distributed` is given); each process reads its own shard of the data. At the end
process 0 writes the merged model (the parameters gathered from every process); `--export-only` writes
it again from the newest checkpoint (one process, or all of a multi-process run).
"""

from __future__ import annotations

import argparse
import logging
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="experiment config file (configs/*.py)")
    parser.add_argument("--workdir", required=True, help="checkpoints, TensorBoard logs and the final model")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many steps of this run")
    parser.add_argument("--no-export", action="store_true", help="do not write the merged model at the end")
    parser.add_argument(
        "--export-only",
        action="store_true",
        help="only write WORKDIR/model from the newest checkpoint",
    )
    dist = parser.add_argument_group("multi-process (jax.distributed)")
    dist.add_argument("--distributed", action="store_true", help="call jax.distributed.initialize()")
    dist.add_argument("--coordinator", default=None, help="coordinator address HOST:PORT")
    dist.add_argument("--num-processes", type=int, default=None)
    dist.add_argument("--process-id", type=int, default=None)
    parser.set_defaults(_accepts_unknown=True)  # --config.x=y overrides arrive in args.unknown


def initialize_distributed(coordinator=None, num_processes=None, process_id=None) -> None:
    """`jax.distributed.initialize` (before any other JAX call); CPU processes talk over gloo."""
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = {}
    if coordinator is not None:
        kwargs = dict(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)
    jax.distributed.initialize(**kwargs)


def main(args: argparse.Namespace) -> int:
    if args.distributed or args.coordinator:
        initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    from glus_jax.config import ConfigError, load_experiment_config
    from glus_jax.train import loop

    bad = [u for u in args.unknown if not u.startswith("--config.")]
    if bad:
        print(f"glus-jax train: unrecognized arguments: {' '.join(bad)}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    try:
        config = load_experiment_config(args.config, args.unknown)
    except ConfigError as e:
        print(f"glus-jax train: {e}", file=sys.stderr)
        return 2
    if args.export_only:
        print(f"[train] model written to {loop.export_from_checkpoint(config, args.workdir)}", flush=True)
        return 0
    result = loop.train(config, args.workdir, export=not args.no_export, max_steps=args.max_steps)
    if result.export_dir is not None:
        print(f"[train] model written to {result.export_dir}", flush=True)
    return 0
