"""The oracle's GLUS-tiny checkpoint, reassembled from the golden pieces in tests/golden.

The pieces are stored once each (LLM + projector + text_hidden_fcs, SAM2 image side, SAM2 memory side,
CLIP, tokenizer, SAM2 yaml); `glus_tiny_checkpoint` writes them back into the released HF layout so
tests can run `glus-jax convert` on it exactly as a user would on a real checkpoint.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

GOLDEN = Path(__file__).resolve().parent / "golden"
SAM_PIECES = ("sam2_visual_model.safetensors", "mem_weights.safetensors")


def glus_tiny_checkpoint(root: Path) -> tuple[Path, Path, Path]:
    """Write `root/GLUS-tiny` (HF layout + tokenizer); returns (checkpoint, clip dir, sam2 yaml)."""
    ckpt = root / "GLUS-tiny"
    if not ckpt.exists():
        ckpt.mkdir(parents=True)
        state = dict(load_file(str(GOLDEN / "llava_glus_tiny" / "model.safetensors")))
        for piece in SAM_PIECES:
            for k, v in load_file(str(GOLDEN / piece)).items():
                key = k if k.startswith("model.visual_model.") else "model.visual_model." + k
                state[key] = v
        save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(ckpt / "model.safetensors"))
        shutil.copy(GOLDEN / "llava_glus_tiny" / "config.json", ckpt / "config.json")
        for f in (GOLDEN / "tok_glus_tiny").iterdir():
            shutil.copy(f, ckpt / f.name)
    return ckpt, GOLDEN / "llava_clip_vit_tiny", GOLDEN / "sam2_hiera_tiny_oracle.yaml"


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
