"""Regenerate the llava_* golden files from the oracle (/work/shared/oracle, see its README).

    .venv/bin/python tests/golden/llava_make_golden.py [ORACLE_DIR]

- llava_clip_vit_tiny/: the oracle's clip-vit-tiny (config, preprocessor config, weights).
- llava_glus_tiny/: GLUS-tiny's config.json and its model.safetensors without the SAM2
  (`model.visual_model.*`) tensors: LLM, mm_projector, text_hidden_fcs, rotary inv_freq buffers.
- llava_golden.npz: frames, exact CLIP pixel hashes, step-0 inference arrays, training splice arrays.
"""

import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

ORACLE = Path(sys.argv[1] if len(sys.argv) > 1 else "/work/shared/oracle")
OUT = Path(__file__).resolve().parent


def main() -> None:
    clip_dir, glus_dir = OUT / "llava_clip_vit_tiny", OUT / "llava_glus_tiny"
    clip_dir.mkdir(exist_ok=True)
    glus_dir.mkdir(exist_ok=True)
    for name in ("config.json", "model.safetensors", "preprocessor_config.json"):
        shutil.copy(ORACLE / "checkpoint/clip-vit-tiny" / name, clip_dir / name)
    shutil.copy(ORACLE / "checkpoint/GLUS-tiny/config.json", glus_dir / "config.json")
    state = load_file(str(ORACLE / "checkpoint/GLUS-tiny/model.safetensors"))
    keep = {k: v for k, v in state.items() if not k.startswith("model.visual_model.")}
    save_file(keep, str(glus_dir / "model.safetensors"), metadata={"format": "pt"})

    frames = np.load(ORACLE / "frames.npz")
    infer = np.load(ORACLE / "infer.npz")
    train = np.load(ORACLE / "train_forward.npz")
    steps = json.loads((ORACLE / "inference_steps.json").read_text())["infer"]
    pixels = frames["frames_clip_pixel_values"]  # [10, 3, 224, 224] NCHW
    np.savez_compressed(
        OUT / "llava_golden.npz",
        frames_rgb=frames["frames_rgb"],
        clip_pixel_sha256=np.array(
            [hashlib.sha256(np.ascontiguousarray(p, dtype="<f4").tobytes()).hexdigest() for p in pixels]
        ),
        clip_pixel_rows=pixels[:, :, ::56, :],
        step0_frames_in_call=np.array(steps[0]["frames_in_call"]),
        step0_input_ids=infer["step0_input_ids"],
        encode_images_out=infer["first_encode_images_out_first"],
        lm_logits_full_step0=infer["first_lm_logits_full_step0"],
        step0_final_hidden_last=infer["step0_final_hidden_last"],
        train_input_ids=train["input_ids"].astype(np.int32),
        train_labels=train["labels"].astype(np.int32),
        train_attention_masks=train["attention_masks"],
        train_expanded_labels=train["expanded_labels"].astype(np.int32),
        train_expanded_attention_mask=train["expanded_attention_mask"],
    )


if __name__ == "__main__":
    main()
