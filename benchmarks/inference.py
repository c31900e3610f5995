"""Inference benchmark: glus-jax vs the PyTorch reference loop, same random weights, same process.

  .venv/bin/python -m benchmarks.inference --config {tiny,small,glus_s} [--frames 64] [--json FILE]
      [--repeats N] [--memory-frames 512] [--torch-flops] [--profile DIR] [--workdir DIR]
  .venv/bin/python -m benchmarks.inference --config tiny --frames 64 --memory-frames 512 --memory-only

What one run does (docs/PERFORMANCE.md has the method and the numbers):
1. Random PyTorch weights of the config, written as a GLUS checkpoint (benchmarks/common.py), with the
   [SEG] row of lm_head set so that every step emits [SEG] (as the oracle did). A synthetic video of
   `--frames` JPEG frames. One expression.
2. Both sides load that checkpoint through their public loaders: `TorchGLUS.from_pretrained`
   (benchmarks/torch_reference.py: the reference's loop, step by step) and
   `tools.convert_weights.glus.convert_glus` + `GLUSPipeline`.
3. Ours runs once to compile (compile seconds from jax.monitoring; every jitted call is logged for the
   FLOP count), then both sides run `--repeats` times, alternating, each timed from JPEG decoding to the
   binary masks. frames/s = frames / seconds, per expression. Stage breakdowns: `GLUSPipeline.timings`
   and timers wrapped around the reference's stages.
4. Masks: the fraction of equal pixels over all frames. FLOPs per frame (XLA cost analysis, see
   common.py) of ours and of the reference algorithm, their ratio, and the time they would take at the
   device's measured matmul rate (the FLOP-bound time).
5. Peak memory: each side in a fresh subprocess (compiled programs come from a persistent cache filled by
   step 3, so compilation does not count): peak resident memory (GPU: peak device memory) during
   `segment` above the memory before it (model loaded, frames decoded), minus the returned masks and
   logits: the working memory. `--memory-frames 512` adds the same probe on a 512-frame video;
   `--memory-only` runs only ours' probes (no reference run, no FLOP count).

`--config glus_s` on a machine without a GPU is a shape check: the full GLUS-S pipeline runs on abstract
weights (every kernel is shape-evaluated, nothing executes), and the FLOP counts and splits are reported.
"""

from __future__ import annotations

import os

# Torch and JAX share a GPU in one process: JAX must not take most of its memory up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402
from benchmarks import configs as bench_configs  # noqa: E402

CONTRACT_KEYS = (
    "ours_fps", "reference_fps", "speedup", "masks_equal_fraction", "peak_memory_bytes",
    "ours_flops_per_frame", "reference_flops_per_frame",
)


def _enable_compile_cache(workdir: Path) -> None:
    jax.config.update("jax_compilation_cache_dir", str(workdir / "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


# ---------------------------------------------------------------------------------------------- setup


def prepare(cfg: bench_configs.BenchConfig, workdir: Path, frames: int, *, seed: int, device: str) -> dict[str, Any]:
    """Checkpoint (calibrated [SEG] row written into it) and the JPEG video. Returns paths and info."""
    from safetensors.torch import load_file, save_file

    t0 = time.perf_counter()
    ckpt = common.build_checkpoint(cfg, workdir / "checkpoint", seed=seed,
                                   save_dtype="bfloat16" if cfg.dtype == "bfloat16" else "float32")
    video = common.write_video(common.synthetic_frames(frames, cfg.frame_size, seed), workdir / f"video{frames}")
    ref = common.load_torch(ckpt, cfg, device=device)
    from glus_jax.inference.video_io import read_video

    decoded = read_video(video).frames
    # Calibrate on the steps of the first window fill, a middle and the last step.
    steps = sorted({0, 1, 2, 3, frames // 2, frames - 1} & set(range(frames)))
    info = common.calibrate_seg_row(ref, None, decoded, common.EXPRESSION, steps)
    state = load_file(str(ckpt.glus_dir / "model.safetensors"))
    seg = ref.seg_token_id
    state["lm_head.weight"][seg] = ref.llm.lm_head.weight[seg].detach().to("cpu", state["lm_head.weight"].dtype)
    save_file(state, str(ckpt.glus_dir / "model.safetensors"))
    del state, ref
    if device != "cpu":
        import torch

        torch.cuda.empty_cache()
    info["prepare_seconds"] = time.perf_counter() - t0
    return {"ckpt": ckpt, "video": video, "calibration": info}


# ---------------------------------------------------------------------------------------- the runs


def run_ours(pipe, video_dir: Path):
    from glus_jax.inference.video_io import read_video

    t0 = time.perf_counter()
    frames = read_video(video_dir).frames
    res = pipe.segment(frames, [common.EXPRESSION])[0]
    return res, time.perf_counter() - t0


def run_reference(ref, video_dir: Path):
    from benchmarks.torch_reference import load_frames

    t0 = time.perf_counter()
    frames = load_frames(video_dir)
    out = ref.segment(frames, common.EXPRESSION)
    if ref.device.type == "cuda":
        import torch

        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def instrument_reference(ref) -> dict[str, float]:
    """Per-stage seconds of the reference (wrappers around its stage methods; cleared by the caller)."""
    timings: dict[str, float] = defaultdict(float)
    sync = ref.device.type == "cuda"

    def wrap(obj, name, stage):
        fn = getattr(obj, name)

        def timed(*a, **k):
            t = time.perf_counter()
            out = fn(*a, **k)
            if sync:
                import torch

                torch.cuda.synchronize()
            timings[stage] += time.perf_counter() - t
            return out

        setattr(obj, name, timed)

    wrap(ref, "preprocess_clip", "clip")
    wrap(ref, "encode_images", "clip")
    wrap(ref, "splice", "llm")
    wrap(ref.llm.model, "forward", "llm")
    wrap(ref.llm.lm_head, "forward", "llm")
    wrap(ref.text_hidden_fc, "forward", "llm")
    wrap(ref, "preprocess_sam", "sam2_trunk")
    wrap(ref.sam, "forward_image", "sam2_trunk")
    wrap(ref.sam.memory_attention, "forward", "propagation")
    wrap(ref, "decode_mask", "propagation")
    wrap(ref, "encode_memory", "propagation")
    return timings


# ------------------------------------------------------------------------------------ memory probes


def _probe(kind: str, cfg_name: str, workdir: Path, video: Path, device: str) -> dict[str, Any]:
    """Run `--probe kind` in a fresh process; returns its JSON."""
    out = workdir / f"probe_{kind}_{video.name}.json"
    cmd = [sys.executable, "-m", "benchmarks.inference", "--probe", kind, "--config", cfg_name,
           "--workdir", str(workdir), "--probe-video", str(video), "--json", str(out), "--device", device]
    subprocess.run(cmd, check=True, cwd=common.REPO)
    return json.loads(out.read_text())


def probe_main(args) -> int:
    """Inside the probe process: load one side, decode, segment once, report peak memory."""
    cfg = bench_configs.get(args.config)
    workdir = Path(args.workdir)
    _enable_compile_cache(workdir)
    if cfg.dtype == "float32":  # as in the measuring process (part of the compiled programs' cache key)
        jax.config.update("jax_default_matmul_precision", "highest")
    ckpt = common.Checkpoint(workdir / "checkpoint" / "glus", workdir / "checkpoint" / "clip",
                             workdir / "checkpoint" / "sam2.yaml")
    video = Path(args.probe_video)
    gpu = args.device != "cpu"
    if args.probe == "ours":
        from glus_jax.inference.pipeline import GLUSPipeline
        from glus_jax.inference.video_io import read_video

        model, tok = common.load_ours(ckpt, cfg)
        pipe = GLUSPipeline(model, tok)
        frames = read_video(video).frames
        dev = jax.devices()[0]
        before = dev.memory_stats()["bytes_in_use"] if gpu else None
        t0 = time.perf_counter()
        with common.PeakRSS() as rss, common.CompileTimer() as ct:
            res = pipe.segment(frames, [common.EXPRESSION])[0]
        seconds = time.perf_counter() - t0
        out_bytes = res.masks.nbytes + res.low_res_logits.nbytes + res.iou.nbytes + res.object_score.nbytes
        peak = (dev.memory_stats()["peak_bytes_in_use"] - before) if gpu else rss.increase
        extra = {"compile_seconds_in_probe": ct.seconds, "segment_seconds": seconds}
    else:
        import torch

        from benchmarks.torch_reference import load_frames

        torch.set_num_threads(args.torch_threads or os.cpu_count())
        ref = common.load_torch(ckpt, cfg, device=args.device)
        frames = load_frames(video)
        if gpu:
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        with common.PeakRSS() as rss:
            out = ref.segment(frames, common.EXPRESSION)
        seconds = time.perf_counter() - t0
        out_bytes = out["masks"].nbytes + out["logits"].nbytes + sum(
            s["logits"].nbytes + (s["low_res_logits"].nbytes if s["low_res_logits"] is not None else 0)
            for s in out["steps"])
        peak = (torch.cuda.max_memory_allocated() - before) if gpu else rss.increase
        extra = {"segment_seconds": seconds}
    result = {
        "side": args.probe, "frames": int(len(frames)), "peak_bytes": int(peak), "output_bytes": int(out_bytes),
        "working_bytes": int(peak - (0 if gpu else out_bytes)), "input_bytes": int(frames.nbytes),
        "measure": "device peak - in use before" if gpu else "peak RSS - RSS before segment()", **extra,
    }
    Path(args.json).write_text(json.dumps(result))
    return 0


# ------------------------------------------------------------------------------------ shape check


def shape_check(cfg, args) -> dict[str, Any]:
    """GLUS-S on abstract weights: the whole pipeline shape-evaluated, FLOPs counted (no execution)."""
    t0 = time.perf_counter()
    model, tok = common.abstract_model(cfg)
    log = common.CallLog()
    pipe = common.DryPipeline(model, tok, log=log)
    frames = common.synthetic_frames(args.frames, cfg.frame_size, args.seed)
    res = pipe.segment(frames, [common.EXPRESSION])[0]
    t, h, w = frames.shape[:3]
    assert res.masks.shape == (t, h, w) and res.masks.dtype == bool, res.masks.shape
    assert len(res.steps[0]) == t and all(r.generated_token == tok.seg_token_id for r in res.steps[0])
    ours = log.flops()
    plan = common.reference_plan(tok, model.config, t, common.EXPRESSION)
    ref = common.reference_flops(model, plan, cfg.frame_size)
    rate = common.matmul_rate(cfg.dtype)
    o, r = sum(ours.values()), sum(ref.values())
    return {
        "config": cfg.name, "mode": "shape check (abstract weights, nothing executed)", "frames": t,
        "ours_fps": None, "reference_fps": None, "speedup": None, "masks_equal_fraction": None,
        "peak_memory_bytes": None,
        "ours_flops_per_frame": o / t, "reference_flops_per_frame": r / t, "flop_ratio": r / o,
        "ours_flops_by_stage": {k: v / t for k, v in ours.items()},
        "reference_flops_by_stage": {k: v / t for k, v in ref.items()}, "reference_split": common.split(ref),
        "device": common.device_name(), "device_matmul_flops_per_s": rate,
        "ours_flop_bound_fps": t / (o / rate), "reference_flop_bound_fps": t / (r / rate),
        "kernel_calls": len(log.calls), "seconds": time.perf_counter() - t0,
    }


# -------------------------------------------------------------------------------------------- main


def measure(cfg, args) -> dict[str, Any]:
    import torch

    from glus_jax.inference.pipeline import GLUSPipeline

    device = args.device
    threads = args.torch_threads or os.cpu_count()
    torch.set_num_threads(threads)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix=f"glus_bench_{cfg.name}_"))
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(workdir / "jax_cache", ignore_errors=True)
    _enable_compile_cache(workdir)
    setup = prepare(cfg, workdir, args.frames, seed=args.seed, device=device)
    ckpt, video = setup["ckpt"], setup["video"]
    ref = common.load_torch(ckpt, cfg, device=device, attn=args.torch_attn)
    model, tok = common.load_ours(ckpt, cfg)
    log = common.CallLog()
    counting = common.CountingPipeline(model, tok, log=log)
    pipe = GLUSPipeline(model, tok)

    # Compile (and log every kernel call for the FLOP count).
    with common.CompileTimer() as ct:
        _, first_s = run_ours(counting, video)
    result: dict[str, Any] = {"config": cfg.name, "description": cfg.description, "frames": args.frames,
                              "frame_size": list(cfg.frame_size), "dtype": cfg.dtype,
                              "compile_seconds": ct.seconds, "ours_first_run_seconds": first_s}
    if args.profile:
        with jax.profiler.trace(args.profile):
            run_ours(pipe, video)
        result["profile_dir"] = args.profile

    ref_timer = instrument_reference(ref)
    ours_s, ref_s, ours_stages, ref_stages = [], [], [], []
    res = out = None
    for _ in range(args.repeats):
        with common.CompileTimer() as ct2, common.PeakRSS() as rss:
            res, s = run_ours(pipe, video)
        if ct2.seconds > 0.5:
            print(f"warning: {ct2.seconds:.1f} s of compilation inside a timed run", file=sys.stderr)
        ours_s.append(s)
        ours_stages.append(dict(pipe.timings))
        in_process_peak = rss.increase
        ref_timer.clear()
        out, s = run_reference(ref, video)
        ref_s.append(s)
        ref_stages.append(dict(ref_timer))
    t = args.frames
    ours_t, ref_t = statistics.median(ours_s), statistics.median(ref_s)
    seg = tok.seg_token_id
    result.update({
        "ours_seconds": ours_s, "reference_seconds": ref_s,
        "ours_fps": t / ours_t, "reference_fps": t / ref_t, "speedup": ref_t / ours_t,
        "masks_equal_fraction": float((res.masks == out["masks"]).mean()),
        "mask_foreground_fraction": float(out["masks"].mean()),
        "seg_emitted": {"ours": sum(r.generated_token == seg for r in res.steps[0]),
                        "reference": sum(out["seg_emitted"]), "steps": t},
        "ours_stage_seconds": _median_dict(ours_stages), "reference_stage_seconds": _median_dict(ref_stages),
    })

    # FLOPs: ours from the logged calls; the reference from its actual run.
    ours = log.flops()
    plan = common.plan_from_reference_run(out, model.config.tokens_per_image)
    refs = common.reference_flops(model, plan, cfg.frame_size)
    o, r = sum(ours.values()), sum(refs.values())
    rate = common.matmul_rate(cfg.dtype)
    result["xla_buffer_bytes_by_kernel"] = log.buffer_bytes()
    result.update({
        "ours_flops_per_frame": o / t, "reference_flops_per_frame": r / t, "flop_ratio": r / o,
        "speedup_over_flop_ratio": result["speedup"] / (r / o),
        "ours_flops_by_stage": {k: v / t for k, v in ours.items()},
        "reference_flops_by_stage": {k: v / t for k, v in refs.items()},
        "reference_split": common.split(refs),
        "device": common.device_name(), "torch_threads": threads, "device_matmul_flops_per_s": rate,
        "ours_flop_bound_fps": t / (o / rate), "reference_flop_bound_fps": t / (r / rate),
        "ours_fraction_of_flop_bound": (o / rate) / ours_t, "reference_fraction_of_flop_bound": (r / rate) / ref_t,
    })
    if args.torch_flops:
        _, tf = common.torch_flops(lambda: ref.segment(
            __import__("benchmarks.torch_reference", fromlist=["load_frames"]).load_frames(video), common.EXPRESSION))
        result["reference_torch_counted_flops_per_frame"] = tf / t
    if cfg.name != "glus_s" and not args.quick:
        gs, gtok = common.abstract_model(bench_configs.GLUS_S)
        gplan = common.reference_plan(gtok, gs.config, t, common.EXPRESSION)
        result["glus_s_reference_split"] = common.split(common.reference_flops(gs, gplan, bench_configs.GLUS_S.frame_size))
        result["split_max_difference_points"] = max(
            abs(result["reference_split"][k] - result["glus_s_reference_split"][k]) for k in ("clip", "llm", "sam2"))
    result["calibration"] = setup["calibration"]
    result["load_average_1_5_15min"] = list(os.getloadavg())  # the CPU is shared: how busy it was

    if args.quick:  # no subprocess probes: the in-process peak (allocator reuse makes it a lower bound)
        out_bytes = res.masks.nbytes + res.low_res_logits.nbytes + res.iou.nbytes + res.object_score.nbytes
        result.update(peak_memory_bytes=in_process_peak, working_memory_bytes=in_process_peak - out_bytes,
                      memory_measure="in-process peak RSS increase of a warm run (a lower bound)")
        return _finish(result, workdir, args)

    # Memory, each side in a fresh process.
    del pipe, counting, model
    probes = {"ours": _probe("ours", cfg.name, workdir, video, device)}
    if not args.skip_reference_memory:
        probes["reference"] = _probe("reference", cfg.name, workdir, video, device)
    result["peak_memory_bytes"] = probes["ours"]["peak_bytes"]
    result["working_memory_bytes"] = probes["ours"]["working_bytes"]
    if "reference" in probes:
        result["reference_peak_memory_bytes"] = probes["reference"]["peak_bytes"]
        result["reference_working_memory_bytes"] = probes["reference"]["working_bytes"]
    if args.memory_frames:
        _long_video_probe(cfg, args, workdir, probes, result)
    result["memory_probes"] = probes
    return _finish(result, workdir, args)


def _long_video_probe(cfg, args, workdir: Path, probes: dict, result: dict) -> None:
    """Ours on a `--memory-frames` video in a fresh process: its peak and working memory, and their
    ratios to the `--frames` video's (issue #9: independent of the video length)."""
    n = args.memory_frames
    long_video = common.write_video(common.synthetic_frames(n, cfg.frame_size, args.seed), workdir / f"video{n}")
    probes[f"ours_{n}"] = p = _probe("ours", cfg.name, workdir, long_video, args.device)
    result[f"peak_memory_bytes_{n}_frames"] = p["peak_bytes"]
    result[f"working_memory_bytes_{n}_frames"] = p["working_bytes"]
    result["working_memory_ratio"] = p["working_bytes"] / probes["ours"]["working_bytes"]
    result["peak_memory_ratio"] = p["peak_bytes"] / probes["ours"]["peak_bytes"]


def memory_only(cfg, args) -> dict[str, Any]:
    """`--memory-only`: ours' memory probes alone (no reference run, no FLOP count): peak and working
    memory of `segment` on the `--frames` video and on the `--memory-frames` one, each in a fresh
    process whose compiled programs come from the persistent cache this process fills."""
    from glus_jax.inference.pipeline import GLUSPipeline

    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix=f"glus_mem_{cfg.name}_"))
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(workdir / "jax_cache", ignore_errors=True)
    _enable_compile_cache(workdir)
    setup = prepare(cfg, workdir, args.frames, seed=args.seed, device=args.device)
    model, tok = common.load_ours(setup["ckpt"], cfg)
    with common.CompileTimer() as ct:
        _, first_s = run_ours(GLUSPipeline(model, tok), setup["video"])
    del model
    probes = {"ours": _probe("ours", cfg.name, workdir, setup["video"], args.device)}
    result: dict[str, Any] = {
        "config": cfg.name, "mode": "memory only (ours)", "frames": args.frames, "memory_frames": args.memory_frames,
        "frame_size": list(cfg.frame_size), "dtype": cfg.dtype, "device": common.device_name(),
        "compile_seconds": ct.seconds, "ours_first_run_seconds": first_s,
        "peak_memory_bytes": probes["ours"]["peak_bytes"], "working_memory_bytes": probes["ours"]["working_bytes"],
    }
    if args.memory_frames:
        _long_video_probe(cfg, args, workdir, probes, result)
    result["ours_fps_by_frames"] = {p["frames"]: p["frames"] / p["segment_seconds"] for p in probes.values()}
    result["memory_probes"] = probes
    result["load_average_1_5_15min"] = list(os.getloadavg())
    return _finish(result, workdir, args)


def _finish(result: dict[str, Any], workdir: Path, args) -> dict[str, Any]:
    result["workdir"] = str(workdir)
    if not args.workdir and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def _median_dict(ds: list[dict[str, float]]) -> dict[str, float]:
    keys = sorted({k for d in ds for k in d})
    return {k: statistics.median(d.get(k, 0.0) for d in ds) for k in keys}


# -------------------------------------------------------------------------------------------- output


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def print_table(r: dict[str, Any]) -> None:
    gb = 1e9
    rows = [("config", r["config"]), ("frames", r["frames"]), ("device", r.get("device"))]
    if r.get("ours_fps") is not None:
        rows += [
            ("frames/s ours | reference", f"{r['ours_fps']:.3f} | {r['reference_fps']:.3f}"),
            ("speedup | FLOP ratio | speedup / ratio",
             f"{r['speedup']:.2f}x | {r['flop_ratio']:.2f}x | {r['speedup_over_flop_ratio']:.2f}"),
            ("masks equal (fraction of pixels)", f"{r['masks_equal_fraction']:.6f}"),
            ("[SEG] emitted ours | reference", f"{r['seg_emitted']['ours']} | {r['seg_emitted']['reference']}"),
            ("compile seconds", f"{r['compile_seconds']:.1f}"),
            ("stage seconds ours", ", ".join(f"{k} {v:.2f}" for k, v in r["ours_stage_seconds"].items())),
            ("stage seconds reference", ", ".join(f"{k} {v:.2f}" for k, v in r["reference_stage_seconds"].items())),
            ("working memory ours | reference (MB)",
             f"{r['working_memory_bytes'] / 1e6:.0f} | {r.get('reference_working_memory_bytes', float('nan')) / 1e6:.0f}"),
            ("peak memory ours (MB)", f"{r['peak_memory_bytes'] / 1e6:.0f}"),
            ("XLA working buffers per kernel (MB)",
             ", ".join(f"{k} {v / 1e6:.0f}" for k, v in r.get("xla_buffer_bytes_by_kernel", {}).items())),
        ]
        if "working_memory_ratio" in r:
            rows.append(("working memory long video / this video", f"{r['working_memory_ratio']:.3f}"))
            rows.append(("peak memory long video / this video", f"{r['peak_memory_ratio']:.3f}"))
    rows += [
        ("GFLOPs/frame ours | reference", f"{r['ours_flops_per_frame'] / gb:.2f} | {r['reference_flops_per_frame'] / gb:.2f}"),
        ("FLOP-bound frames/s ours | reference", f"{r['ours_flop_bound_fps']:.3f} | {r['reference_flop_bound_fps']:.3f}"),
        ("reference FLOP split clip/llm/sam2 %", "/".join(f"{r['reference_split'][k]:.1f}" for k in ("clip", "llm", "sam2"))),
    ]
    if "glus_s_reference_split" in r:
        rows.append(("GLUS-S reference split clip/llm/sam2 %",
                     "/".join(f"{r['glus_s_reference_split'][k]:.1f}" for k in ("clip", "llm", "sam2"))))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {_fmt(v)}")


def print_memory_table(r: dict[str, Any]) -> None:
    rows = [("config", r["config"]), ("device", r["device"])]
    for p in r["memory_probes"].values():
        rows.append((f"ours, {p['frames']} frames: peak | working memory (MB) | frames/s",
                     f"{p['peak_bytes'] / 1e6:.0f} | {p['working_bytes'] / 1e6:.0f} | "
                     f"{p['frames'] / p['segment_seconds']:.3f}"))
    if "working_memory_ratio" in r:
        rows.append((f"{r['memory_frames']} / {r['frames']} frames: peak | working ratio",
                     f"{r['peak_memory_ratio']:.3f} | {r['working_memory_ratio']:.3f}"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {_fmt(v)}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="small", choices=sorted(bench_configs.CONFIGS))
    p.add_argument("--frames", type=int, default=64)
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--repeats", type=int, default=1, help="timed runs of each side (median reported)")
    p.add_argument("--memory-frames", type=int, default=None, help="also probe ours' memory on this many frames")
    p.add_argument("--skip-reference-memory", action="store_true")
    p.add_argument("--memory-only", action="store_true",
                   help="only ours' memory probes (--frames and --memory-frames videos), no reference run")
    p.add_argument("--quick", action="store_true",
                   help="no memory subprocesses (in-process peak only) and no GLUS-S split (smoke test)")
    p.add_argument("--torch-flops", action="store_true", help="also count the reference with torch FlopCounterMode")
    p.add_argument("--torch-threads", type=int, default=None)
    p.add_argument("--torch-attn", default="eager", choices=["eager", "sdpa"])
    p.add_argument("--profile", default=None, help="write a jax.profiler trace of one run of ours here")
    p.add_argument("--workdir", default=None, help="keep checkpoint, video and compile cache here")
    p.add_argument("--keep", action="store_true", help="keep the temporary workdir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="torch device (default: cuda when JAX has a GPU, else cpu)")
    p.add_argument("--shape-check", action="store_true", help="abstract weights only (default for glus_s on CPU)")
    p.add_argument("--probe", choices=["ours", "reference"], help=argparse.SUPPRESS)
    p.add_argument("--probe-video", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.device = args.device or ("cuda" if common.on_gpu() else "cpu")
    if args.probe:
        return probe_main(args)
    cfg = bench_configs.get(args.config)
    if args.shape_check or (cfg.name == "glus_s" and not common.on_gpu()):
        result = shape_check(cfg, args)
    else:
        if cfg.dtype == "float32":
            jax.config.update("jax_default_matmul_precision", "highest")  # as the parity tests: exact f32
        result = memory_only(cfg, args) if args.memory_only else measure(cfg, args)
    if args.memory_only:
        print_memory_table(result)
    else:
        print_table(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
