"""Speed of `glus-jax evaluate` on a MeViS-format split: 1,000 expressions x 30 frames at 854x480.

  .venv/bin/python -m benchmarks.eval_speed [--expressions 1000] [--frames 30] [--workers N]
                                           [--json FILE] [--reference-sample 20] [--keep DIR]

Generates a MeViS `valid_u`-style dataset in a temporary folder (mask_dict.json with COCO RLE,
meta_expressions.json, 10 expressions per video over 4 moving objects, 30% of expressions naming
two objects) and predictions written as GLUS writes them (0/255 grayscale PNGs) that perturb the
ground truth (shifted and rescaled shapes, a few spurious blobs and empty frames). Then times
`evaluate_mevis` end to end: reading the JSON files, decoding every PNG and RLE, J and F.

`--reference-sample N` also times the reference evaluation loop (GLUS utils/eval_mevis.py: cv2
reads, per-frame RLE decode, the DAVIS metrics with cv2.dilate) on N expressions, in one process,
and extrapolates it to the whole set for comparison.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as cocomask


def _ellipse(h: int, w: int, cy: float, cx: float, ay: float, ax: float) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    y0, y1 = max(int(cy - ay) - 1, 0), min(int(cy + ay) + 2, h)
    x0, x1 = max(int(cx - ax) - 1, 0), min(int(cx + ax) + 2, w)
    if y0 >= y1 or x0 >= x1:
        return m
    yy, xx = np.ogrid[y0:y1, x0:x1]
    m[y0:y1, x0:x1] = ((yy - cy) / ay) ** 2 + ((xx - cx) / ax) ** 2 < 1
    return m


def _make_video(args: tuple) -> tuple[str, dict, dict]:
    """One video: objects' RLEs, expressions, and the prediction PNGs (written here)."""
    vi, n_exp, n_frames, h, w, n_obj, pred_root, seed = args
    rng = np.random.default_rng(seed + vi)
    video = f"vid{vi:04d}"
    frames = [f"{t:05d}" for t in range(n_frames)]
    objs = []
    for _ in range(n_obj):
        objs.append(dict(cy=rng.uniform(0.2, 0.8) * h, cx=rng.uniform(0.2, 0.8) * w,
                         ay=rng.uniform(15, 110), ax=rng.uniform(15, 110),
                         vy=rng.uniform(-4, 4), vx=rng.uniform(-6, 6),
                         absent=rng.random(n_frames) < 0.05))

    def shape(o, t, dy=0.0, dx=0.0, s=1.0):
        cy, cx = o["cy"] + o["vy"] * t + dy, o["cx"] + o["vx"] * t + dx
        return _ellipse(h, w, cy, cx, o["ay"] * s, o["ax"] * s)

    anno_ids = [f"{vi * n_obj + k}" for k in range(n_obj)]
    mask_dict = {}
    for k, o in enumerate(objs):
        rles = []
        for t in range(n_frames):
            m = shape(o, t)
            if o["absent"][t] or not m.any():
                rles.append(None)
                continue
            r = cocomask.encode(np.asfortranarray(m.astype(np.uint8)))
            r["counts"] = r["counts"].decode("utf-8")  # MeViS stores counts as str
            rles.append(r)
        mask_dict[anno_ids[k]] = rles
    expressions = {}
    for e in range(n_exp):
        ks = sorted(rng.choice(n_obj, size=2 if rng.random() < 0.3 else 1, replace=False).tolist())
        expressions[str(e)] = {"exp": f"object {ks}", "obj_id": ks, "anno_id": [int(anno_ids[k]) for k in ks]}
        out = Path(pred_root) / video / str(e)
        out.mkdir(parents=True, exist_ok=True)
        dy, dx, s = rng.uniform(-4, 4), rng.uniform(-4, 4), rng.uniform(0.9, 1.1)
        for t, frame in enumerate(frames):
            m = np.zeros((h, w), dtype=bool)
            if rng.random() > 0.03:  # a few empty predicted frames
                for k in ks:
                    m |= shape(objs[k], t, dy + rng.normal(0, 1), dx + rng.normal(0, 1), s)
                if rng.random() < 0.1:  # a spurious blob
                    m |= _ellipse(h, w, rng.uniform(0, h), rng.uniform(0, w), 12, 20)
            Image.fromarray(m.astype(np.uint8) * 255).save(out / f"{frame}.png")
    return video, {"expressions": expressions, "frames": frames}, mask_dict


def generate(root: Path, pred_root: Path, n_expressions: int, n_frames: int, h: int, w: int,
             exp_per_video: int = 10, n_obj: int = 4, seed: int = 0, workers: int = 2) -> None:
    n_videos = math.ceil(n_expressions / exp_per_video)
    jobs = [(vi, min(exp_per_video, n_expressions - vi * exp_per_video), n_frames, h, w, n_obj,
             str(pred_root), seed) for vi in range(n_videos)]
    with mp.get_context("fork").Pool(workers) as pool:
        parts = pool.map(_make_video, jobs)
    split = root / "mevis" / "valid_u"
    split.mkdir(parents=True, exist_ok=True)
    videos, mask_dict = {}, {}
    for video, vd, md in parts:
        videos[video] = vd
        mask_dict.update(md)
    (split / "meta_expressions.json").write_text(json.dumps({"videos": videos}))
    (split / "mask_dict.json").write_text(json.dumps(mask_dict))


def reference_seconds_per_expression(root: Path, pred_root: Path, n: int) -> float:
    """The reference loop (GLUS utils/eval_mevis.py eval_queue with utils/metrics.py), one process."""
    import cv2

    def disk(r):
        d = np.arange(-r, r + 1)
        return ((d[:, None] ** 2 + d[None, :] ** 2) <= r**2).astype(np.uint8)

    def seg2bmap(seg):
        seg = seg.astype(bool)
        e, s, se = np.zeros_like(seg), np.zeros_like(seg), np.zeros_like(seg)
        e[:, :-1], s[:-1, :], se[:-1, :-1] = seg[:, 1:], seg[1:, :], seg[1:, 1:]
        b = seg ^ e | seg ^ s | seg ^ se
        b[-1, :] = seg[-1, :] ^ e[-1, :]
        b[:, -1] = seg[:, -1] ^ s[:, -1]
        b[-1, -1] = 0
        return b

    def f_measure(fg, gt, th=0.008):
        r = np.ceil(th * np.linalg.norm(fg.shape))
        fb, gb = seg2bmap(fg), seg2bmap(gt)
        fd = cv2.dilate(fb.astype(np.uint8), disk(r))
        gd = cv2.dilate(gb.astype(np.uint8), disk(r))
        n_fg, n_gt = np.sum(fb), np.sum(gb)
        if n_fg == 0 and n_gt > 0:
            p, rc = 1, 0
        elif n_fg > 0 and n_gt == 0:
            p, rc = 0, 1
        elif n_fg == 0 and n_gt == 0:
            p, rc = 1, 1
        else:
            p, rc = np.sum(fb * gd) / float(n_fg), np.sum(gb * fd) / float(n_gt)
        return 0 if p + rc == 0 else 2 * p * rc / (p + rc)

    split = root / "mevis" / "valid_u"
    videos = json.loads((split / "meta_expressions.json").read_text())["videos"]
    mask_dict = json.loads((split / "mask_dict.json").read_text())
    items = [(v, e) for v in videos for e in videos[v]["expressions"]][:n]
    t0 = time.perf_counter()
    for v, e in items:
        vid = videos[v]
        p0 = cv2.imread(f"{pred_root}/{v}/{e}/{vid['frames'][0]}.png", cv2.IMREAD_GRAYSCALE)
        h, w = p0.shape
        gt = np.zeros((len(vid["frames"]), h, w), dtype=np.uint8)
        pr = np.zeros_like(gt)
        for t, fr in enumerate(vid["frames"]):
            for a in vid["expressions"][e]["anno_id"]:
                rle = mask_dict[str(a)][t]
                if rle:
                    gt[t] += cocomask.decode(rle)
            pr[t] = cv2.imread(f"{pred_root}/{v}/{e}/{fr}.png", cv2.IMREAD_GRAYSCALE)
        g, p = gt.astype(bool), pr.astype(bool)
        inter, union = np.sum(g & p, axis=(1, 2)), np.sum(g | p, axis=(1, 2))
        j = inter / np.maximum(union, 1)
        f = [f_measure(pr[t], gt[t]) for t in range(len(gt))]
        _ = (j.mean(), np.mean(f))
    return (time.perf_counter() - t0) / len(items)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--expressions", type=int, default=1000)
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=854)
    ap.add_argument("--workers", type=int, default=None,
                    help="evaluation worker processes (default: all cores)")
    ap.add_argument("--json", type=Path, default=None, help="write the measurements here")
    ap.add_argument("--reference-sample", type=int, default=0,
                    help="also time the reference loop on this many expressions (needs opencv)")
    ap.add_argument("--keep", type=Path, default=None,
                    help="generate into (or reuse) this folder and keep it")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from glus_jax.eval.evaluators import evaluate_mevis

    workers = args.workers or os.cpu_count() or 1
    tmp = None
    if args.keep is not None:
        base = args.keep
    else:
        tmp = tempfile.mkdtemp(prefix="glus_eval_speed_")
        base = Path(tmp)
    root, pred = base / "data", base / "pred"
    try:
        t0 = time.perf_counter()
        if not (root / "mevis" / "valid_u" / "mask_dict.json").is_file():
            generate(root, pred, args.expressions, args.frames, args.height, args.width, seed=args.seed,
                     workers=os.cpu_count() or 1)
        gen_s = time.perf_counter() - t0
        print(f"data: {args.expressions} expressions x {args.frames} frames at {args.width}x{args.height} "
              f"in {base} ({gen_s:.1f} s to generate)")

        c0, t0 = os.times(), time.perf_counter()
        res = evaluate_mevis(pred, root, "valid_u", workers=workers, progress=False)
        wall = time.perf_counter() - t0
        c1 = os.times()
        cpu = (c1.user - c0.user) + (c1.system - c0.system) + (c1.children_user - c0.children_user) + \
            (c1.children_system - c0.children_system)
        out = {
            "expressions": len(res.per_expression), "frames_per_expression": args.frames,
            "height": args.height, "width": args.width, "workers": workers, "cpu_count": os.cpu_count(),
            "eval_seconds": round(wall, 3), "eval_cpu_seconds": round(cpu, 3),
            "ms_per_frame_cpu": round(1000 * cpu / (len(res.per_expression) * args.frames), 4),
            "load_average_1min": round(os.getloadavg()[0], 2),
            "J": res.j, "F": res.f, "J&F": res.jf, "generate_seconds": round(gen_s, 1),
        }
        print(f"evaluate_mevis: {out['eval_seconds']:.2f} s wall, {out['eval_cpu_seconds']:.2f} s CPU on "
              f"{workers} workers ({out['ms_per_frame_cpu']:.3f} ms CPU per frame; load average "
              f"{out['load_average_1min']}); J&F {res.jf:.4f}")
        if args.reference_sample:
            per = reference_seconds_per_expression(root, pred, args.reference_sample)
            out["reference_seconds_per_expression"] = round(per, 4)
            out["reference_extrapolated_seconds_one_process"] = round(per * len(res.per_expression), 1)
            print(f"reference loop: {per * 1000:.1f} ms per expression in one process -> "
                  f"{per * len(res.per_expression):.0f} s for all (ours: "
                  f"{1000 * cpu / len(res.per_expression):.1f} ms CPU per expression)")
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(out, indent=1))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
