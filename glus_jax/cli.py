"""`glus-jax` command line. Each subcommand lives in its own module exposing
`add_arguments(parser)` and `main(args) -> int`; only working subcommands are registered here."""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (target, one-line help). A target is a module, or "module:object", exposing
# `add_arguments(parser)` and `main(args)`.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "convert": ("glus_jax.inference.cli:convert", "Convert a released GLUS/LISA checkpoint to a model directory."),
    "segment": ("glus_jax.inference.cli:segment", "Segment a video, frame folder or dataset split."),
    "select-key-frames": ("glus_jax.kfs.cli:select_key_frames", "Choose a key frame per expression (selector or self-refinement) as a score JSON."),
    "kfs-targets": ("glus_jax.kfs.cli:kfs_targets", "Per-frame IoU targets for the key-frame selector."),
    "train-selector": ("glus_jax.kfs.cli:train_selector", "Train the key-frame selector on targets."),
    "evaluate": ("glus_jax.eval.cli", "Score predicted masks on a benchmark, or zip a server submission."),
    "generate-data": ("glus_jax.data.synthetic", "Write a synthetic RefVOS dataset (MeViS or Ref-YTVOS)."),
    "train": ("glus_jax.train.cli", "Train GLUS from an experiment config (resumes from the workdir)."),
    "demo": ("glus_jax.demo", "Segment a generated held-out video with the embedded world model and score it."),
    "prepare-tfds": ("glus_jax.data.tfds_builder", "Build TFDS array_record files of a RefVOS training dataset."),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="glus-jax", description="GLUS referring video segmentation in JAX.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        _target(module).add_arguments(p)
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "_accepts_unknown", False):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.unknown = unknown
    return int(_target(args._module).main(args) or 0)


def _target(spec: str):
    module, _, attr = spec.partition(":")
    obj = importlib.import_module(module)
    return getattr(obj, attr) if attr else obj


if __name__ == "__main__":
    sys.exit(main())
