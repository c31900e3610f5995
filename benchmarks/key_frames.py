"""Key-frame propagation vs plain forward propagation, on synthetic videos whose target is ambiguous in
the early frames (issue #10).

    .venv/bin/python -m benchmarks.key_frames [--model DIR] [--selector DIR] [--data ROOT --split S]
        [--videos 12] [--train-videos 16] [--selector-steps 300] [--workdir DIR] [--json FILE]

Model: `--model` (default: the embedded trained tiny model `glus_jax/assets/tiny_world` when it exists,
otherwise a tiny random GLUS built in the workdir: the numbers are then meaningless, the run only shows
the whole path works).

Data: `--data ROOT --split S`, a MeViS-layout split written by `glus-jax generate-data`; by default a
held-out split is generated in the workdir with `p_ambiguous = 1` (every video holds an identical-looking
pair that only a later event tells apart) and event-heavy expressions, so many expressions are
`early_ambiguous` (`synthetic.json`): from the first frames one cannot tell which object is meant.

Selector: `--selector DIR`, or one trained here: GLUS segments a generated training split (disjoint
videos), each frame is scored against the ground truth (`glus_jax.kfs.targets`), and a selector is
trained on those targets (`glus_jax.kfs.train`) for `--selector-steps` steps.

Methods, each a full GLUS run per expression (J, F and J&F as MeViS, mean over expressions):
  plain        forward propagation from frame 0 (GLUS without `--use_kf`)
  self-refine  key frame from the plain run's own outputs (`glus_jax.kfs.self_refine`)
  selector     key frame = the selector's best candidate
  oracle       key frame = the frame where the plain run's mask is best (what the selector is trained
               to find; an upper bound for choosing from the plain run's quality)

Key-frame quality: the plain run's true J at the chosen frame, for each method's choice, a random frame
(the mean over frames: the expected value of a uniform draw), frame 0 and the oracle frame.

All figures are reported over all expressions and over the early-ambiguous ones; the table is printed
and everything is written to `--json` (default: WORKDIR/key_frames.json).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
TINY_WORLD = REPO / "glus_jax" / "assets" / "tiny_world"
METHODS = ("plain", "self-refine", "selector", "oracle")
CHOICES = ("frame 0", "random frame", "self-refine", "selector", "oracle")


def _world_config(args, seed_offset: int = 0):
    from glus_jax.data.synthetic import WorldConfig

    kinds = {
        "appearance": 0.5,
        "motion": 1.0,
        "event": 4.0,
        "border": 1.0,
        "order": 1.0,
        "position": 0.5,
        "plural": 0.5,
        "conjunction": 0.25,
    }
    return WorldConfig(
        height=args.size,
        width=args.size,
        min_frames=args.frames,
        max_frames=args.max_frames or args.frames,
        p_ambiguous=1.0,
        kind_weights=kinds,
        min_expressions=2,
        max_expressions=args.expressions,
    )


def _model_dir(args, work: Path) -> tuple[Path, bool]:
    if args.model:
        return Path(args.model), False
    if (TINY_WORLD / "COMPLETE").exists():
        return TINY_WORLD, False
    import sys

    sys.path.insert(0, str(REPO))
    from tests.glus_fixtures import random_glus_dir

    return random_glus_dir(work, image_size=64), True


def _split(root: Path, split: str, videos: int, seed: int, cfg) -> None:
    from glus_jax.data.synthetic import generate

    if not (root / "mevis" / split).exists():
        generate(root / "mevis", split, videos, seed=seed, config=cfg)


def _summary(values: dict[str, list[float]], mask: np.ndarray) -> dict[str, float]:
    return {k: float(np.mean(np.asarray(v)[mask])) if mask.any() else float("nan") for k, v in values.items()}


def run(args) -> dict:
    from glus_jax.data.formats import load_dataset
    from glus_jax.data.synthetic import load_info
    from glus_jax.eval.metrics import jaccard_and_f
    from glus_jax.inference.pipeline import GLUSPipeline
    from glus_jax.inference.video_io import read_frames
    from glus_jax.kfs import selector as sel_lib
    from glus_jax.kfs import targets as targets_lib
    from glus_jax.kfs import train as train_lib
    from glus_jax.kfs.self_refine import frame_scores
    from glus_jax.models.io import load_model

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    model_dir, random_model = _model_dir(args, work)
    model, tok, _ = load_model(model_dir)
    pipe = GLUSPipeline(model, tok, mem_stride=args.mem_stride)
    print(f"model: {model_dir}{'  (RANDOM weights: numbers are meaningless)' if random_model else ''}")

    if args.data:
        data_root, split = Path(args.data), args.split
    else:
        data_root, split = work / "data", "heldout_kf"
        _split(data_root, split, args.videos, args.seed + 1000, _world_config(args))
    ds = load_dataset("mevis", str(data_root), split)
    try:
        info = load_info(data_root / "mevis", split)["videos"]
    except FileNotFoundError:
        info = {}
        print(f"{data_root}/mevis/{split}: no synthetic.json; early_ambiguous unknown (all counted as not)")

    # ------------------------------------------------------------------ the selector
    selector_report = None
    if args.selector:
        selector, stok = sel_lib.load_selector(args.selector, model)
    else:
        train_split = "train_kf"
        _split(data_root, train_split, args.train_videos, args.seed, _world_config(args))
        t0 = time.perf_counter()
        targets = targets_lib.make_targets(
            pipe,
            "mevis",
            data_root,
            train_split,
            out=work / "kfs_targets.json",
            model=str(model_dir),
            progress=not args.no_progress,
        )
        t_targets = time.perf_counter() - t0
        tcfg = train_lib.TrainConfig(
            steps=args.selector_steps,
            batch_size=args.batch_size,
            lr=args.lr,
            log_every=max(1, args.selector_steps // 5),
        )
        scfg = sel_lib.SelectorConfig(num_candidates=args.candidates)
        selector, stok, rep = train_lib.train_from_targets(
            model,
            tok,
            targets,
            work / "selector",
            selector_config=scfg,
            train_config=tcfg,
            log=None if args.no_progress else print,
            source={"model": str(model_dir)},
        )
        selector_report = {
            "targets_seconds": t_targets,
            "train_examples": rep["examples"],
            "l1_before": rep["l1_before"],
            "l1_after": rep["l1_after"],
            "train_seconds": rep["history"][-1]["seconds"] if rep["history"] else 0.0,
        }
    predictor = sel_lib.SelectorPredictor(selector, stok)

    # ------------------------------------------------------------------ the held-out videos
    per_expr = []
    t0 = time.perf_counter()
    for v in ds.videos:
        if not v.expressions:
            continue
        frames = read_frames(v.frame_paths, v.name, v.frame_names).frames
        hw = frames.shape[1:3]
        texts = [e.text for e in v.expressions]
        gts = [
            np.stack([v.expression_mask(i, t, hw) for t in range(v.length)]) > 0 for i in range(len(texts))
        ]
        plain = pipe.segment(frames, texts)
        plain_j = [jaccard_and_f(g, r.masks, with_f=False)[0] for g, r in zip(gts, plain)]
        keys = {
            "plain": [0] * len(texts),
            "self-refine": [int(np.argmax(frame_scores(r))) for r in plain],
            "selector": predictor.select(frames, texts)[0],
            "oracle": [int(np.argmax(j)) for j in plain_j],
        }
        scores = {}
        for method in METHODS:
            results = plain if method == "plain" else pipe.segment(frames, texts, key_frames=keys[method])
            scores[method] = [jaccard_and_f(g, r.masks) for g, r in zip(gts, results)]
        rng = np.random.default_rng(args.seed)
        for i, e in enumerate(v.expressions):
            side = info.get(v.name, {}).get("expressions", {}).get(str(e.exp_id), {})
            rec = {
                "video": v.name,
                "exp_id": e.exp_id,
                "expression": e.text,
                "frames": v.length,
                "early_ambiguous": bool(side.get("early_ambiguous", False)),
                "ambiguous_until": side.get("ambiguous_until"),
                "key_frames": {m: keys[m][i] for m in METHODS},
            }
            for m in METHODS:
                j, f = scores[m][i]
                rec[f"J {m}"], rec[f"F {m}"] = float(j.mean()), float(f.mean())
                rec[f"J&F {m}"] = (rec[f"J {m}"] + rec[f"F {m}"]) / 2
            pj = plain_j[i]
            rec["chosen J"] = {
                "frame 0": float(pj[0]),
                "random frame": float(pj.mean()),
                "random draw": float(pj[rng.integers(len(pj))]),
                "self-refine": float(pj[keys["self-refine"][i]]),
                "selector": float(pj[keys["selector"][i]]),
                "oracle": float(pj[keys["oracle"][i]]),
            }
            per_expr.append(rec)
    t_eval = time.perf_counter() - t0

    early = np.asarray([r["early_ambiguous"] for r in per_expr], bool)
    groups = {"all": np.ones(len(per_expr), bool), "early_ambiguous": early}
    table = {}
    for g, mask in groups.items():
        cols = {f"{k} {m}": [r[f"{k} {m}"] for r in per_expr] for m in METHODS for k in ("J", "F", "J&F")}
        cols.update({f"chosen J {c}": [r["chosen J"][c] for r in per_expr] for c in CHOICES})
        table[g] = {"expressions": int(mask.sum()), **_summary(cols, mask)}
    out = {
        "model": str(model_dir),
        "random_model": random_model,
        "data": str(data_root),
        "split": split,
        "videos": len(ds.videos),
        "expressions": len(per_expr),
        "early_ambiguous": int(early.sum()),
        "selector": str(args.selector) if args.selector else str(work / "selector"),
        "selector_training": selector_report,
        "eval_seconds": t_eval,
        "total_seconds": time.perf_counter() - t_start,
        "table": table,
        "per_expression": per_expr,
    }
    _print_table(out)
    path = Path(args.json) if args.json else work / "key_frames.json"
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")
    return out


def _print_table(out: dict) -> None:
    print(
        f"\n{out['expressions']} expressions in {out['videos']} videos"
        f" ({out['early_ambiguous']} early-ambiguous)" + ("  [random model]" if out["random_model"] else "")
    )
    print(f"{'propagation':<14}" + "".join(f"{g + ' J&F':>24}{'J':>8}{'F':>8}" for g in out["table"]))
    for m in METHODS:
        row = "".join(
            f"{t[f'J&F {m}']:>24.3f}{t[f'J {m}']:>8.3f}{t[f'F {m}']:>8.3f}" for t in out["table"].values()
        )
        print(f"{m:<14}{row}")
    print(f"\n{'key frame':<14}" + "".join(f"{g + ': plain-run J there':>40}" for g in out["table"]))
    for c in CHOICES:
        print(f"{c:<14}" + "".join(f"{t[f'chosen J {c}']:>40.3f}" for t in out["table"].values()))
    s = out["selector_training"]
    if s:
        print(
            f"\nselector: trained on {s['train_examples']} expressions,"
            f" L1 {s['l1_before']:.3f} -> {s['l1_after']:.3f}"
            f" ({s['targets_seconds']:.0f} s targets, {s['train_seconds']:.0f} s training)"
        )
    print(f"evaluation {out['eval_seconds']:.0f} s, total {out['total_seconds']:.0f} s")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model", default=None, help="GLUS model directory (default: the embedded tiny_world, else random)"
    )
    p.add_argument("--selector", default=None, help="selector directory (default: train one here)")
    p.add_argument(
        "--data", default=None, help="dataset root with a MeViS-layout held-out split (default: generate)"
    )
    p.add_argument("--split", default="valid_u")
    p.add_argument("--workdir", default="runs/key_frames")
    p.add_argument("--json", default=None)
    p.add_argument("--videos", type=int, default=12, help="held-out videos to generate")
    p.add_argument("--train-videos", type=int, default=16, help="training videos for the selector's targets")
    p.add_argument("--frames", type=int, default=16, help="frames per generated video (min)")
    p.add_argument("--max-frames", type=int, default=None)
    p.add_argument("--size", type=int, default=128, help="generated frame size (square)")
    p.add_argument("--expressions", type=int, default=4, help="max expressions per generated video")
    p.add_argument("--selector-steps", type=int, default=300)
    p.add_argument("--candidates", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--mem-stride", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    run(p.parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
