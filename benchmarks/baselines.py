"""Expression-blind baselines (and optionally a GLUS model) on held-out synthetic-world videos.

  .venv/bin/python -m benchmarks.baselines [--videos 50] [--seed 7] [--out runs/baselines]
                                           [--model DIR] [--workers N]

The synthetic world (`glus_jax.data.synthetic`) is only a test of language grounding if the expression
matters: a method that ignores it must score poorly. This writes N held-out videos (MeViS layout, split
`valid_u`, seed fixed; the world model trains on split `train` with seed 0), predicts every expression of
each video with each expression-blind baseline of `synthetic.expression_blind_baselines` (they see every
object's *ground-truth* mask and track, only not the expression: "the largest moving object", "the
largest object", "all objects"), and with the appearance oracle (`synthetic.appearance_oracle_masks`: the
ground-truth masks of every object of the colour and shape the expression names, i.e. what grounding
appearance alone can reach), and with three oracles told which objects are meant
(`synthetic.target_lookalike_masks`: every object sharing the targets' colour, their shape, or both: what
a decoder that selects only by colour, only by shape, or by both can reach), writes the predictions in the
benchmark layout and scores them with our MeViS evaluator (`glus_jax.eval.evaluate("mevis", ...)`, the
J&F of `glus-jax evaluate`).

`--model DIR` also segments the same videos with a GLUS model directory through the command line
(`glus-jax segment --dataset ... --benchmark mevis` then `glus-jax evaluate --benchmark mevis`) and
reports its J&F beside the baselines. Every row is broken down by expression kind (appearance, motion,
event, border, order, position, plural, conjunction).

Writes OUT/baselines.json: {"videos", "seed", "split", "expressions", "rows": {name: {"J", "F", "J&F",
"kinds": {kind: {"J&F", "n"}}}}, "best_blind": name, "best_blind_jf", "model": {...} (with --model)}.
Issue #8's bar: the best expression-blind baseline at most 0.35, the embedded world model at least 0.60.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from glus_jax.data import synthetic

SPLIT = "valid_u"
SEED = 7  # held-out stream: neither the training data (seed 0) nor the demo video (seed 2025)
BASELINES = ("largest_moving", "largest", "all_objects")
# Not blind: every object of the colour and shape the expression names, with ground-truth masks. What
# appearance alone can reach; the rest needs motion, events, order and position.
APPEARANCE_ORACLE = "appearance_oracle"
# Not blind either: the model is told which objects are meant and selects every object that shares their
# colour, their shape, or both (`synthetic.target_lookalike_masks`). What a decoder that selects only by
# colour, only by shape, or by both can reach with a perfect LLM and perfect masks.
TARGET_ORACLES = {"target_colour_oracle": ("color",), "target_shape_oracle": ("shape",),
                  "target_appearance_oracle": ("color", "shape")}


def generate_videos(data_root: Path, num_videos: int, seed: int) -> Path:
    """The held-out split under data_root/mevis/valid_u (reused when it already holds these videos)."""
    split_dir = data_root / "mevis" / SPLIT
    info_path = split_dir / "synthetic.json"
    if info_path.exists():
        info = json.loads(info_path.read_text())
        if info.get("seed") == seed and len(info.get("videos", {})) == num_videos:
            return split_dir
    synthetic.generate(data_root / "mevis", SPLIT, num_videos, seed, overwrite=True)
    return split_dir


def _pngs(masks: np.ndarray) -> list[Image.Image]:
    return [Image.fromarray(m.astype(np.uint8) * 255) for m in masks]


def write_reference_predictions(data_root: Path, pred_root: Path) -> dict[str, Path]:
    """For each baseline and oracle, pred_root/<name>/<video>/<exp_id>/<frame>.png (0/255)
    for every expression (the blind baselines give the same masks to all expressions of a video)."""
    info = synthetic.load_info(data_root / "mevis", SPLIT)
    meta = json.loads((data_root / "mevis" / SPLIT / "meta_expressions.json").read_text())["videos"]
    out = {name: pred_root / name for name in (*BASELINES, APPEARANCE_ORACLE, *TARGET_ORACLES)}
    for video, vd in meta.items():
        obj_ids, masks, centers = synthetic.load_object_masks(data_root / "mevis", SPLIT, video, info)
        objects = info["videos"][video]["objects"]
        appearances = [(objects[o]["color"], objects[o]["shape"]) for o in obj_ids]
        blind = {name: _pngs(m) for name, m in synthetic.expression_blind_baselines(masks, centers).items()}
        for exp_id, e in vd["expressions"].items():
            named = synthetic.appearance_oracle_masks(e["exp"], appearances, masks)
            oracles = {APPEARANCE_ORACLE: _pngs(named)}
            targets = [obj_ids.index(o) for o in e["obj_id"]]
            for name, by in TARGET_ORACLES.items():
                oracles[name] = _pngs(synthetic.target_lookalike_masks(targets, appearances, masks, by))
            for name, pngs in {**blind, **oracles}.items():
                d = out[name] / video / exp_id
                d.mkdir(parents=True, exist_ok=True)
                for frame, im in zip(vd["frames"], pngs):
                    im.save(d / f"{frame}.png")
    return out


def _kinds(data_root: Path) -> dict[str, str]:
    """"<video>_<exp_id>" -> expression kind (from the generator's side file)."""
    info = synthetic.load_info(data_root / "mevis", SPLIT)
    return {f"{v}_{e}": x["kind"] for v, vd in info["videos"].items() for e, x in vd["expressions"].items()}


def summarize(per_expression: dict[str, list[float]], j: float, f: float, kinds: dict[str, str]) -> dict:
    by_kind: dict[str, list[float]] = {}
    for key, (ej, ef) in per_expression.items():
        by_kind.setdefault(kinds[key], []).append((ej + ef) / 2)
    return {
        "J": j,
        "F": f,
        "J&F": (j + f) / 2,
        "kinds": {k: {"J&F": float(np.mean(v)), "n": len(v)} for k, v in sorted(by_kind.items())},
    }


def evaluate_references(data_root: Path, pred_root: Path, workers: int | None) -> dict[str, dict]:
    from glus_jax.eval.evaluators import evaluate

    kinds = _kinds(data_root)
    rows = {}
    for name, pred in write_reference_predictions(data_root, pred_root).items():
        r = evaluate("mevis", pred, data_root, SPLIT, workers=workers, progress=False)
        if r.missing:
            raise RuntimeError(f"baseline {name}: {len(r.missing)} expressions without predictions")
        rows[name] = summarize(r.per_expression, r.j, r.f, kinds)
    return rows


def evaluate_model(model_dir: Path, data_root: Path, pred_dir: Path, workers: int | None) -> dict:
    """`glus-jax segment --dataset` then `glus-jax evaluate`, as a user runs them."""
    cmd = [sys.executable, "-m", "glus_jax.cli"]
    t0 = time.perf_counter()
    subprocess.run(
        [*cmd, "segment", "--model", str(model_dir), "--dataset", str(data_root), "--benchmark", "mevis",
         "--split", SPLIT, "--out", str(pred_dir), "--no-progress"],
        check=True,
    )
    seconds = time.perf_counter() - t0
    scores = pred_dir.parent / "model_scores.json"
    ev = [*cmd, "evaluate", "--benchmark", "mevis", "--split", SPLIT, "--pred", str(pred_dir),
          "--data-root", str(data_root), "--out", str(scores), "--no-progress"]
    if workers:
        ev += ["--workers", str(workers)]
    subprocess.run(ev, check=True, stdout=subprocess.DEVNULL)
    r = json.loads(scores.read_text())
    row = summarize(r["per_expression"], r["J"], r["F"], _kinds(data_root))
    row.update(model=str(model_dir), segment_seconds=seconds, missing=len(r["missing"]))
    return row


def table(rows: dict[str, dict]) -> str:
    kinds = sorted({k for r in rows.values() for k in r["kinds"]})
    name_w = max(len(n) for n in rows)
    head = f"{'':{name_w}}  {'J&F':>6}  {'J':>6}  {'F':>6}  " + "  ".join(f"{k[:8]:>8}" for k in kinds)
    lines = [head]
    for name, r in rows.items():
        cells = [f"{r['kinds'][k]['J&F']:8.3f}" if k in r["kinds"] else f"{'-':>8}" for k in kinds]
        lines.append(f"{name:{name_w}}  {r['J&F']:6.3f}  {r['J']:6.3f}  {r['F']:6.3f}  " + "  ".join(cells))
    counts = next(iter(rows.values()))["kinds"]
    lines.append(f"{'(expressions)':{name_w}}  {'':6}  {'':6}  {'':6}  " + "  ".join(f"{counts[k]['n']:8d}" for k in kinds))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--videos", type=int, default=50)
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--out", type=Path, default=Path("runs/baselines"))
    p.add_argument("--model", type=Path, default=None, help="also segment and score with this GLUS model directory")
    p.add_argument("--workers", type=int, default=None, help="evaluator processes (default: all cores)")
    args = p.parse_args(argv)

    data_root = args.out / "data"
    t0 = time.perf_counter()
    generate_videos(data_root, args.videos, args.seed)
    meta = json.loads((data_root / "mevis" / SPLIT / "meta_expressions.json").read_text())["videos"]
    n_exp = sum(len(v["expressions"]) for v in meta.values())
    rows = evaluate_references(data_root, args.out / "pred", args.workers)
    best = max(BASELINES, key=lambda n: rows[n]["J&F"])
    result = {
        "videos": args.videos, "seed": args.seed, "split": SPLIT, "expressions": n_exp, "rows": rows,
        "best_blind": best, "best_blind_jf": rows[best]["J&F"],
    }
    if args.model is not None:
        import shutil

        pred = args.out / "pred" / "model"
        shutil.rmtree(pred, ignore_errors=True)
        result["model"] = evaluate_model(args.model, data_root, pred, args.workers)
        rows = {**rows, "GLUS (" + args.model.name + ")": result["model"]}
    out_json = args.out / "baselines.json"
    tmp = out_json.with_name(out_json.name + ".partial")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, out_json)
    print(f"{args.videos} held-out synthetic videos (seed {args.seed}, split {SPLIT}), {n_exp} expressions; "
          f"J&F with glus_jax.eval (MeViS protocol):")
    print(table(rows))
    print(f"best expression-blind baseline: {best} J&F {rows[best]['J&F']:.4f}")
    if "model" in result:
        print(f"model J&F: {result['model']['J&F']:.4f}")
    print(f"wrote {out_json} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
