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
