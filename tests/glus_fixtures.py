"""Inference-test fixtures: the oracle's GLUS-tiny (see tests/golden_model.py), its video, and a
random tiny GLUS model directory for plumbing tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tests.golden_model import CLIP_DIR, GOLDEN, SAM2_YAML
from tests.golden_model import glus_tiny_checkpoint as _glus_tiny_dir


def glus_tiny_checkpoint(root: Path) -> tuple[Path, Path, Path]:
    """Write `root/GLUS-tiny` (HF layout + tokenizer); returns (checkpoint, clip dir, sam2 yaml)."""
    return _glus_tiny_dir(root), CLIP_DIR, SAM2_YAML


def oracle_frames() -> np.ndarray:
    """The oracle video's 10 frames [10, 96, 128, 3] uint8 (decoded from the golden JPEGs)."""
    from glus_jax.inference.video_io import read_video

    return read_video(GOLDEN / "data_video" / "mevis" / "train" / "JPEGImages" / "v0").frames


ORACLE_EXPRESSION = "The red ball moving to the right."


def golden_steps() -> list[dict]:
    return json.loads((GOLDEN / "conv_inference_steps.json").read_text())["infer"]


def random_glus_dir(root: Path, *, image_size: int = 64, seed: int = 0) -> Path:
    """A model directory of a tiny GLUS (the oracle tokenizer, a SAM2 of `image_size` px) with random
    weights: for tests of plumbing (runner, CLI, IO) where the masks themselves do not matter."""
    import jax
    from flax import nnx

    from glus_jax.data.tokenizer import GLUSTokenizer
    from glus_jax.models.glus import GLUS, tiny, tiny_sam2
    from glus_jax.models.io import save_model

    path = root / f"random_glus_{image_size}"
    if path.exists():
        return path
    model = nnx.eval_shape(lambda: GLUS(tiny(sam2=tiny_sam2(image_size)), rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(seed)
    state = nnx.state(model)
    for _, var in nnx.to_flat_state(state):
        var.set_value(jax.numpy.asarray(rng.normal(0, 0.05, var.shape).astype(np.float32)))
    nnx.update(model, state)
    save_model(path, model, GLUSTokenizer.from_dir(GOLDEN / "tok_glus_tiny"), source={"random": seed})
    return path
