"""`glus-jax convert` and `glus-jax segment`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def add_convert_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="GLUS/LISA HF directory or Hugging Face repo id")
    p.add_argument("--vision-tower", default=None, help="CLIP directory or repo id (default: the config's)")
    p.add_argument("--sam2-config", default="hiera_l", help="hiera_t|hiera_s|hiera_b+|hiera_l or an original SAM2 yaml")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument(
        "--load-fuser-gamma",
        action="store_true",
        help="load the memory encoder's fuser gammas (the original loader leaves them at 1e-6: quirk Q1)",
    )


def convert_main(args: argparse.Namespace) -> int:
    from glus_jax.models.io import save_model
    from tools.convert_weights.glus import convert_glus

    model, tokenizer, source = convert_glus(
        args.checkpoint, args.vision_tower, args.sam2_config, load_fuser_gamma=args.load_fuser_gamma
    )
    path = save_model(args.out, model, tokenizer, source=source)
    print(f"wrote {path}")
    return 0


def add_segment_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model directory (glus-jax convert / train)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--video", help="video file (mp4/webm/avi)")
    src.add_argument("--frames", help="folder of frames")
    src.add_argument("--dataset", help="dataset root in the GLUS layout (with --split)")
    p.add_argument("--benchmark", default="mevis", help="dataset format with --dataset (mevis, refyoutube_vos, ...)")
    p.add_argument("--split", default="valid_u")
    p.add_argument("--expression", action="append", default=[], help="referring expression (repeatable)")
    p.add_argument("--out", required=True)
    p.add_argument("--key-frame", default=None, help="frame name to propagate from (both ways)")
    p.add_argument("--key-frames", default=None, help='score json {"<video>_<exp_id>": "<frame number>"}')
    p.add_argument(
        "--self-refine",
        action="store_true",
        help="choose each expression's key frame from GLUS's own first run, then propagate from it both ways",
    )
    p.add_argument("--save-logits", action="store_true", help="also write logits.npz at the original size")
    p.add_argument("--overlay", action="store_true", help="also write overlay.mp4 per expression")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--mem-stride", type=int, default=3)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--coordinator", default=None, help="jax.distributed coordinator host:port (multi-process)")
    p.add_argument("--num-processes", type=int, default=None)
    p.add_argument("--process-id", type=int, default=None)


def segment_main(args: argparse.Namespace) -> int:
    import jax

    from glus_jax.inference import protocol, runner
    from glus_jax.inference.pipeline import GLUSPipeline
    from glus_jax.models.io import load_model

    if args.coordinator:
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    if (args.video or args.frames) and not args.expression:
        raise SystemExit("glus-jax segment: --expression is required with --video/--frames")
    if args.dataset and args.expression:
        raise SystemExit("glus-jax segment: --expression cannot be used with --dataset (expressions come from it)")
    if args.key_frame and args.key_frames:
        raise SystemExit("glus-jax segment: use --key-frame or --key-frames, not both")
    dtype = {"fp32": "float32", "bf16": "bfloat16"}[args.precision]
    model, tokenizer, _ = load_model(args.model, dtype=dtype)
    pipe = GLUSPipeline(model, tokenizer, mem_stride=args.mem_stride)
    if args.self_refine:
        if args.key_frame or args.key_frames:
            raise SystemExit("glus-jax segment: --self-refine chooses the key frames; drop --key-frame(s)")
        from glus_jax.kfs.self_refine import SelfRefiningPipeline

        pipe = SelfRefiningPipeline(pipe)
    scores = protocol.load_score_json(args.key_frames) if args.key_frames else None
    if args.dataset:
        jobs = runner.shard(runner.dataset_jobs(args.benchmark, args.dataset, args.split), jax.process_index(), jax.process_count())
        stats = runner.run_jobs(pipe, jobs, args.out, key_frame_scores=scores, save_logits=args.save_logits,
                                overlay=args.overlay, progress=not args.no_progress)
    else:
        video, jobs = runner.video_job(args.video or args.frames, args.expression)
        if args.key_frame is not None:
            keys = [runner.frame_index(video, args.key_frame)] * len(jobs)
        elif scores:
            keys = [protocol.key_frame_index(scores, j.video, j.exp_id, video.frame_names) for j in jobs]
        else:
            keys = None
        import time

        t0 = time.perf_counter()
        runner.segment_video(pipe, video, jobs, args.out, keys=keys, save_logits=args.save_logits, overlay=args.overlay)
        stats = {"expressions": len(jobs), "frames": len(jobs) * len(video.frame_names), "seconds": time.perf_counter() - t0}
    fps = stats["frames"] / max(stats["seconds"], 1e-9)
    print(f"segmented {stats['expressions']} expression(s), {stats['frames']} frames in {stats['seconds']:.1f} s "
          f"({fps:.2f} frames/s) -> {args.out}")
    return 0


# The CLI registry expects one module per subcommand: thin views onto the functions above.
class convert:  # noqa: N801
    add_arguments = staticmethod(add_convert_arguments)
    main = staticmethod(convert_main)


class segment:  # noqa: N801
    add_arguments = staticmethod(add_segment_arguments)
    main = staticmethod(segment_main)
