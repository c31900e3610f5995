"""`make demo` / `glus-jax demo`: GLUS segments a video it has never seen, on a fresh machine, offline.

Real weights and datasets cannot be downloaded here, so the demo lives in the synthetic world
(`glus_jax.data.synthetic`): it generates a held-out video with its referring expressions (MeViS layout,
split `valid_u`: the name of MeViS's public validation split, disjoint from the `train` videos the model
learnt from), runs `glus-jax segment` on it with the model embedded in the package
(`glus_jax/assets/tiny_world/`, trained by `glus-jax train --config configs/synthetic.py`), writes the
masks and an overlay video per expression, and scores them against the generated ground truth with the
MeViS evaluator (`glus-jax evaluate`). The last line printed is `J&F: <value>` (a fraction).

    python -m glus_jax.demo [--model DIR | --random-model] [--out runs/demo] [--seed 2025] [--video 0]

Output (OUT = --out):
    OUT/data/mevis/valid_u/...          the generated video (JPEGs, meta_expressions.json, mask_dict.json)
    OUT/masks/<video>/<exp_id>/*.png    predicted masks (0/255), one per frame
    OUT/masks/<video>/<exp_id>/overlay.mp4
    OUT/scores.json                     J, F, J&F overall and per expression

`--random-model` builds a randomly initialised model of the same architecture first (OUT/random_model):
it checks the plumbing, and its J&F is that of an untrained model (near 0).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import time
import warnings
from pathlib import Path
from typing import TextIO

SPLIT = "valid_u"  # the generated split (see the module docstring)
DEMO_SEED = 2025  # generator seed of the demo video (the training data use seed 0, split "train")


def embedded_model_dir() -> Path:
    """Where the package keeps the trained synthetic-world model (package data)."""
    return Path(__file__).resolve().parent / "assets" / "tiny_world"


class DemoError(RuntimeError):
    """A demo input is missing or unusable; the message says what to do."""


@dataclasses.dataclass
class DemoResult:
    jf: float
    j: float
    f: float
    video: str
    expressions: dict[str, str]  # exp_id -> text
    per_expression: dict[str, tuple[float, float]]  # exp_id -> (J, F)
    masks_dir: Path
    overlays: list[Path]
    scores_json: Path
    seconds: float


def build_random_model(path: str | Path, *, seed: int = 0, config=None) -> Path:
    """A model directory of the synthetic-world architecture (`presets_synthetic.synthetic_world()`,
    or `config`) with random weights and the world tokenizer; returns `path`.

    The weights are drawn with numpy on the abstract model (biases 0, norm scales 1, everything else
    N(0, 0.02)) rather than by the modules' initialisers: running those eagerly compiles hundreds of
    small programs (about a minute on a laptop CPU) for a model whose outputs are noise either way."""
    import numpy as np
    from flax import nnx

    from glus_jax.data.synthetic_tokenizer import build_world_tokenizer
    from glus_jax.models.glus import GLUS
    from glus_jax.models.io import save_model
    from glus_jax.models.presets_synthetic import synthetic_world

    cfg = config or synthetic_world()
    tokenizer = build_world_tokenizer()
    if (tokenizer.seg_token_id, len(tokenizer)) != (cfg.seg_token_id, cfg.llava.llama.vocab_size):
        raise DemoError(
            f"model config ([SEG] {cfg.seg_token_id}, vocabulary {cfg.llava.llama.vocab_size}) does not fit the "
            f"world tokenizer ([SEG] {tokenizer.seg_token_id}, {len(tokenizer)} tokens)"
        )
    model = nnx.eval_shape(lambda: GLUS(cfg, rngs=nnx.Rngs(seed)))
    rng = np.random.default_rng(seed)
    state = nnx.state(model, nnx.Param)
    for p, var in nnx.to_flat_state(state):
        name = str(p[-1])
        if name == "bias":
            value = np.zeros(var.shape, np.float32)
        elif name == "scale":
            value = np.ones(var.shape, np.float32)
        else:
            value = rng.normal(0.0, 0.02, var.shape).astype(np.float32)
        var.set_value(value)
    nnx.update(model, state)
    return save_model(path, model, tokenizer, source={"random_init": seed, "preset": "synthetic_world"})


def _check_model_dir(model_dir: Path, embedded: bool) -> None:
    if (model_dir / "config.yaml").is_file():
        return
    if embedded:
        raise DemoError(
            f"the embedded model is missing: {model_dir} has no model directory (config.yaml).\n"
            f"  Train it:  glus-jax generate-data --root runs/world_data/mevis --split train --videos 400 --seed 0\n"
            f"             python -m benchmarks.sam_selection --prompt appearance --prompt-scale 4 "
            f"--bce-weight 0 --dice-weight 1 --steps 600 --out runs/sam_pre --save runs/sam_pre/model\n"
            f"             glus-jax train --config configs/synthetic.py --workdir runs/world\n"
            f"             and copy runs/world/model to {model_dir};\n"
            f"  or pass --model DIR (any glus-jax model directory of the world tokenizer), or --random-model to "
            f"check the plumbing with an untrained model."
        )
    raise DemoError(f"--model {model_dir}: not a glus-jax model directory (no config.yaml)")


def run_demo(
    model_dir: str | Path | None = None,
    out_dir: str | Path = "runs/demo",
    *,
    seed: int = DEMO_SEED,
    video_index: int = 0,
    world=None,
    precision: str = "fp32",
    mem_stride: int = 3,
    stream: TextIO | None = None,
) -> DemoResult:
    """Generate the held-out video, segment it with `model_dir` (default: the embedded model) through
    `glus-jax segment`, score it with `glus-jax evaluate`'s MeViS evaluator and print a report to
    `stream` whose last line is `J&F: <value>`.

    world: the generator's `WorldConfig` (default: the one the world model is trained on).
    video_index: which video of the demo split (the split holds videos 0..video_index).
    """
    from glus_jax import cli
    from glus_jax.data import synthetic
    from glus_jax.eval.evaluators import evaluate

    stream = stream or sys.stdout
    t0 = time.perf_counter()
    embedded = model_dir is None
    model_dir = Path(model_dir) if model_dir is not None else embedded_model_dir()
    _check_model_dir(model_dir, embedded)
    out = Path(out_dir)
    data_root = out / "data"
    masks = out / "masks"

    def say(*parts):
        print(*parts, file=stream, flush=True)

    # 1. The held-out video (rewritten each run: it is a pure function of the seed).
    summary = synthetic.generate(
        data_root / "mevis", SPLIT, video_index + 1, seed, config=world or synthetic.WorldConfig(), overwrite=True
    )
    meta = json.loads((Path(summary.path) / "meta_expressions.json").read_text())["videos"]
    video = synthetic.video_name(SPLIT, video_index)
    if video_index:  # keep only the chosen video in the split the segmenter and evaluator read
        _keep_only(Path(summary.path), video)
    info = meta[video]
    expressions = {k: v["exp"] for k, v in info["expressions"].items()}
    say(f"video {video}: {len(info['frames'])} frames, generated with seed {seed} -> {summary.path}")
    for k, text in expressions.items():
        say(f"  expression {k}: {text}")

    # 2. glus-jax segment (same entry point as the command line), masks + overlay videos.
    if masks.exists():
        import shutil

        shutil.rmtree(masks)
    argv = [
        "segment", "--model", str(model_dir), "--dataset", str(data_root), "--benchmark", "mevis",
        "--split", SPLIT, "--out", str(masks), "--overlay", "--precision", precision,
        "--mem-stride", str(mem_stride), "--no-progress",
    ]
    say("$ glus-jax " + " ".join(argv))
    with contextlib.redirect_stdout(stream), warnings.catch_warnings():
        # imageio starts ffmpeg with a fork from this (multithreaded) JAX process; the child only execs.
        warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
        rc = cli.main(argv)
    if rc:
        raise DemoError(f"glus-jax segment failed with exit status {rc}")

    # 3. Score against the generated ground truth (glus-jax evaluate --benchmark mevis).
    result = evaluate("mevis", masks, data_root, SPLIT, workers=1, progress=False)
    scores = out / "scores.json"
    scores.write_text(json.dumps({**result.to_json(), "expressions": expressions, "model": str(model_dir)}, indent=1))
    per = {}
    for k in expressions:
        j, f = result.per_expression[f"{video}_{k}"]
        per[k] = (j, f)
    overlays = sorted(masks.glob(f"{video}/*/overlay.mp4"))
    say("")
    say(f"{'exp':>3}  {'J&F':>6}  {'J':>6}  {'F':>6}  expression")
    for k, text in expressions.items():
        j, f = per[k]
        say(f"{k:>3}  {(j + f) / 2:6.3f}  {j:6.3f}  {f:6.3f}  {text}")
    seconds = time.perf_counter() - t0
    say(f"masks and overlay videos: {masks / video}/<exp_id>/ ({len(overlays)} overlay.mp4); scores: {scores}")
    say(f"model: {model_dir}; demo took {seconds:.1f} s")
    say(f"J: {result.j:.4f}")
    say(f"F: {result.f:.4f}")
    say(f"J&F: {result.jf:.4f}")
    return DemoResult(
        jf=result.jf, j=result.j, f=result.f, video=video, expressions=expressions, per_expression=per,
        masks_dir=masks, overlays=overlays, scores_json=scores, seconds=seconds,
    )


def _keep_only(split_dir: Path, video: str) -> None:
    """Drop every other video from a generated MeViS split (meta_expressions.json; frames stay on disk)."""
    path = split_dir / "meta_expressions.json"
    meta = json.loads(path.read_text())
    meta["videos"] = {video: meta["videos"][video]}
    path.write_text(json.dumps(meta))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--model", default=None, help=f"model directory (default: the embedded {embedded_model_dir()})")
    model.add_argument(
        "--random-model", action="store_true", help="build an untrained model of the same architecture (plumbing check)"
    )
    parser.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    parser.add_argument("--seed", type=int, default=DEMO_SEED, help=f"generator seed (default {DEMO_SEED})")
    parser.add_argument("--video", type=int, default=0, help="index of the generated video (default 0)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")


def main(args: argparse.Namespace) -> int:
    model = args.model
    try:
        if args.random_model:
            model = build_random_model(Path(args.out) / "random_model")
        run_demo(model, args.out, seed=args.seed, video_index=args.video, precision=args.precision)
    except DemoError as e:
        print(f"glus-jax demo: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m glus_jax.demo", description=__doc__.split("\n")[0])
    add_arguments(p)
    sys.exit(main(p.parse_args()))
