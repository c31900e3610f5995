"""`glus-jax select-key-frames`, `glus-jax kfs-targets`, `glus-jax train-selector`.

    glus-jax kfs-targets --model M --dataset ROOT --split train --out targets.json
    glus-jax train-selector --model M --targets targets.json --out SELECTOR_DIR [--steps N]
    glus-jax select-key-frames --model M --dataset ROOT --split valid_u --out scores.json \\
        [--method selector --selector SELECTOR_DIR | --method self-refine]
    glus-jax segment --model M --dataset ROOT --split valid_u --key-frames scores.json --out masks/

The score file is the reference's `{"<video>_<exp_id>": "<frame number>"}` (GLUS `inference_iter.py
--use_kf --score_json`), so published GLUS score files and ours are interchangeable. Each class below is
a subcommand for the `glus_jax.cli` registry (`add_arguments`, `main`); `python -m glus_jax.kfs.cli
<name> ...` runs them without it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="GLUS model directory (glus-jax convert / train)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--no-progress", action="store_true")


def _load(args):
    from glus_jax.models.io import load_model

    dtype = {"fp32": "float32", "bf16": "bfloat16"}[args.precision]
    return load_model(args.model, dtype=dtype)


# ------------------------------------------------------------------------------ select-key-frames


def add_select_arguments(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("--dataset", required=True, help="dataset root in the GLUS layout")
    p.add_argument("--split", required=True)
    p.add_argument("--benchmark", default="mevis", help="dataset format (mevis, refyoutube_vos, ...)")
    p.add_argument("--out", required=True, help='score file {"<video>_<exp_id>": "<frame number>"}')
    p.add_argument(
        "--method",
        choices=("selector", "self-refine"),
        default=None,
        help="default: selector with --selector, else self-refine",
    )
    p.add_argument("--selector", default=None, help="selector directory (glus-jax train-selector)")
    p.add_argument("--mem-stride", type=int, default=3, help="self-refine: GLUS memory stride")
    p.add_argument("--frame-scores", default=None, help="also write every scored frame's score to this JSON")


def select_main(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from glus_jax.data.formats import load_dataset
    from glus_jax.inference import protocol, video_io

    method = args.method or ("selector" if args.selector else "self-refine")
    if method == "selector" and not args.selector:
        raise SystemExit("glus-jax select-key-frames: --method selector needs --selector DIR")
    if method == "self-refine" and args.selector:
        raise SystemExit("glus-jax select-key-frames: --selector is only used with --method selector")
    model, tokenizer, _ = _load(args)
    ds = load_dataset(args.benchmark, args.dataset, args.split)
    if method == "selector":
        from glus_jax.kfs.selector import SelectorPredictor, load_selector

        selector, stok = load_selector(args.selector, model)
        predictor = SelectorPredictor(selector, stok)

        def choose(frames, texts):
            keys, cand, s = predictor.select(frames, texts)
            return keys, [{"frames": cand.tolist(), "scores": row.tolist()} for row in s]
    else:
        from glus_jax.inference.pipeline import GLUSPipeline
        from glus_jax.kfs.self_refine import self_refine_scores

        pipe = GLUSPipeline(model, tokenizer, mem_stride=args.mem_stride)

        def choose(frames, texts):
            _, keys, s = self_refine_scores(pipe, frames, texts)
            return keys, [{"frames": list(range(len(row))), "scores": row.tolist()} for row in s]

    scores: dict[str, int] = {}
    detail: dict[str, dict] = {}
    t0 = time.perf_counter()
    for v in tqdm(ds.videos, unit="video", disable=args.no_progress, desc=f"key frames ({method})"):
        if not v.expressions:
            continue
        video = video_io.read_frames(v.frame_paths, v.name, v.frame_names)
        # Key frames are written as frame numbers of the video's frames sorted by number, the order
        # `protocol.key_frame_index` reads them back in.
        order = sorted(range(v.length), key=lambda i: protocol.frame_number(v.frame_names[i]))
        frames = video.frames[order]
        keys, info = choose(frames, [e.text for e in v.expressions])
        for e, k, d in zip(v.expressions, keys, info):
            name = f"{v.name}_{e.exp_id}"
            scores[name] = protocol.frame_number(v.frame_names[order[k]])
            detail[name] = {**d, "key_frame": scores[name]}
    protocol.save_score_json(scores, args.out)
    if args.frame_scores:
        Path(args.frame_scores).write_text(json.dumps({"method": method, "expressions": detail}))
    print(
        f"chose key frames of {len(scores)} expression(s) ({method}) in {time.perf_counter() - t0:.1f} s"
        f" -> {args.out}"
    )
    return 0


# ------------------------------------------------------------------------------------ kfs-targets


def add_targets_arguments(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("--dataset", required=True, help="dataset root in the GLUS layout (a split with masks)")
    p.add_argument("--split", default="train")
    p.add_argument("--benchmark", default="mevis")
    p.add_argument("--out", required=True, help="targets JSON (resumed when it exists)")
    p.add_argument("--mem-stride", type=int, default=3)


def targets_main(args: argparse.Namespace) -> int:
    from glus_jax.inference.pipeline import GLUSPipeline
    from glus_jax.kfs.targets import make_targets

    model, tokenizer, _ = _load(args)
    pipe = GLUSPipeline(model, tokenizer, mem_stride=args.mem_stride)
    data = make_targets(
        pipe,
        args.benchmark,
        args.dataset,
        args.split,
        out=args.out,
        model=str(args.model),
        progress=not args.no_progress,
    )
    print(f"wrote targets of {len(data['entries'])} expression(s) -> {args.out}")
    return 0


# --------------------------------------------------------------------------------- train-selector


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    from glus_jax.kfs.selector import SelectorConfig
    from glus_jax.kfs.train import TrainConfig

    s, t = SelectorConfig(), TrainConfig()
    _common(p)
    p.add_argument("--targets", required=True, help="targets JSON (glus-jax kfs-targets)")
    p.add_argument("--dataset", default=None, help="dataset root (default: the one recorded in the targets)")
    p.add_argument("--out", required=True, help="selector directory to write")
    p.add_argument("--steps", type=int, default=t.steps)
    p.add_argument("--batch-size", type=int, default=t.batch_size)
    p.add_argument("--lr", type=float, default=t.lr)
    p.add_argument("--warmup-steps", type=int, default=t.warmup_steps)
    p.add_argument("--seed", type=int, default=t.seed)
    p.add_argument("--num-candidates", type=int, default=s.num_candidates)
    p.add_argument("--lora-rank", type=int, default=s.lora_rank)
    p.add_argument("--lora-alpha", type=float, default=s.lora_alpha)
    p.add_argument("--head-hidden", type=int, default=s.head_hidden)
    p.add_argument(
        "--keep-absent",
        action="store_true",
        help="keep the evaluator's J = 1 on frames without the target (default: target 0 there)",
    )
    p.add_argument("--report", default=None, help="write the training report (L1 before/after, history) here")


def train_main(args: argparse.Namespace) -> int:
    from glus_jax.kfs.selector import SelectorConfig
    from glus_jax.kfs.targets import load_targets
    from glus_jax.kfs.train import TrainConfig, train_from_targets

    model, tokenizer, _ = _load(args)
    targets = load_targets(args.targets)
    scfg = SelectorConfig(
        num_candidates=args.num_candidates,
        lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha,
        head_hidden=args.head_hidden,
    )
    tcfg = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        seed=args.seed,
        absent_score=None if args.keep_absent else 0.0,
    )
    _, _, report = train_from_targets(
        model,
        tokenizer,
        targets,
        args.out,
        selector_config=scfg,
        train_config=tcfg,
        root=args.dataset,
        log=None if args.no_progress else print,
        source={"model": str(args.model), "targets": str(args.targets)},
    )
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=1))
    print(
        f"trained selector on {report['examples']} expression(s): L1 {report['l1_before']:.4f} -> "
        f"{report['l1_after']:.4f} -> {args.out}"
    )
    return 0


# The registry expects a module per subcommand: thin views onto the functions above.
class select_key_frames:
    add_arguments = staticmethod(add_select_arguments)
    main = staticmethod(select_main)


class kfs_targets:
    add_arguments = staticmethod(add_targets_arguments)
    main = staticmethod(targets_main)


class train_selector:
    add_arguments = staticmethod(add_train_arguments)
    main = staticmethod(train_main)


COMMANDS = {
    "select-key-frames": select_key_frames,
    "kfs-targets": kfs_targets,
    "train-selector": train_selector,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m glus_jax.kfs.cli")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, cmd in COMMANDS.items():
        cmd.add_arguments(sub.add_parser(name))
    args = parser.parse_args(argv)
    return int(COMMANDS[args.command].main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
