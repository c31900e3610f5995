"""How tests/golden/ref_infer.npz was made (for tests/test_torch_reference.py).

Not a test; run once from the repo root with the oracle present:
    .venv/bin/python tests/golden/ref_make_golden.py /work/shared/oracle

ref_infer.npz, sliced from the oracle (float32 unless stated):
    frames_sha256            str        sha256 of frames.npz:frames_rgb (the test decodes the same frames from
                                        tests/golden/data_video JPEGs with cv2 and checks this hash)
    input_ids_step{k}        int64 [L]  infer.npz step{k}_input_ids (with -200 image placeholders)
    generated_tokens         int64 [10] argmax of infer.npz step{k}_lm_logits_last
    lm_logits_last           [10, 515]  infer.npz step{k}_lm_logits_last
    text_embeds_used         [10, 64]   infer.npz step{k}_text_embeds_used
    seg_embeddings_step{k}   [n, 64]    infer.npz step{k}_seg_embeddings_all
    seg_positions_step{k}    int64 [n]  inference_steps.json infer[k].seg_positions_expanded
    memory_frames            int64 [10, 6]  inference_steps.json memory_frames_used(oldest_first), -1 padded
    pred_mask_logits         [10, 96, 128]  infer.npz step{k}_pred_mask_logits
    gamma_pred_mask_logits   [4, 96, 128]   infer_gamma_loaded.npz step{k}_pred_mask_logits, k < 4
    context_frames           int64 [4]  inference_steps.json infer[0].context_frames
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

GAMMA_STEPS = 4


def main(oracle: Path) -> None:
    out_dir = Path(__file__).resolve().parent
    infer = np.load(oracle / "infer.npz")
    gamma = np.load(oracle / "infer_gamma_loaded.npz")
    steps = json.loads((oracle / "inference_steps.json").read_text())["infer"]
    frames = np.load(oracle / "frames.npz")["frames_rgb"]
    n = len(steps)
    arrays: dict[str, np.ndarray] = {
        "frames_sha256": np.array(hashlib.sha256(np.ascontiguousarray(frames).tobytes()).hexdigest()),
        "generated_tokens": np.array([infer[f"step{k}_lm_logits_last"].argmax() for k in range(n)], np.int64),
        "lm_logits_last": np.stack([infer[f"step{k}_lm_logits_last"] for k in range(n)]),
        "text_embeds_used": np.stack([infer[f"step{k}_text_embeds_used"] for k in range(n)]),
        "pred_mask_logits": np.stack([infer[f"step{k}_pred_mask_logits"] for k in range(n)]),
        "gamma_pred_mask_logits": np.stack([gamma[f"step{k}_pred_mask_logits"] for k in range(GAMMA_STEPS)]),
        "context_frames": np.array(steps[0]["context_frames"], np.int64),
    }
    memory = np.full((n, 6), -1, np.int64)
    for k, step in enumerate(steps):
        used = step["memory_frames_used(oldest_first)"]
        memory[k, : len(used)] = used
        arrays[f"input_ids_step{k}"] = infer[f"step{k}_input_ids"].astype(np.int64)
        arrays[f"seg_embeddings_step{k}"] = infer[f"step{k}_seg_embeddings_all"]
        arrays[f"seg_positions_step{k}"] = np.array(step["seg_positions_expanded"], np.int64)
    arrays["memory_frames"] = memory
    np.savez_compressed(out_dir / "ref_infer.npz", **arrays)
    print("wrote", out_dir / "ref_infer.npz", (out_dir / "ref_infer.npz").stat().st_size, "bytes")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/work/shared/oracle"))
