"""How tests/golden/train_forward.npz was made (for tests/test_train_golden.py).

Not a test; run once from the repo root with the oracle present:
    .venv/bin/python tests/golden/train_make_golden.py /work/shared/oracle

train_forward.npz, sliced from the oracle's training forward (train_forward.npz / .json, README section 6):
    seg_embeddings           float32 [4, 4, 64]  text_hidden_fcs output at the [SEG] rows, per conversation row
                                                 (sample-major: rows 0-1 = sample 0) and question frame
    seg_positions_expanded   int64 [4, 4]        the spliced rows those embeddings come from
    losses                   float64 [4]         loss, ce_loss, mask_bce_loss, mask_dice_loss (LOSS_NAMES)
The test also reads conv_train_forward.npz (input_ids, labels, attention_masks), data_train_losses.npz
(frame_indices, gt_masks, ce_positions, ce_logits, pred_mask_logits) and the data_video JPEGs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

LOSS_NAMES = ("loss", "ce_loss", "mask_bce_loss", "mask_dice_loss")


def main(oracle: str) -> None:
    root = Path(oracle)
    arrays = np.load(root / "train_forward.npz")
    losses = json.loads((root / "train_forward.json").read_text())["losses"]
    out = Path(__file__).resolve().parent / "train_forward.npz"
    np.savez_compressed(
        out,
        seg_embeddings=arrays["seg_embeddings"].astype(np.float32),
        seg_positions_expanded=arrays["seg_positions_expanded"],
        losses=np.asarray([losses[k] for k in LOSS_NAMES], np.float64),
    )
    print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/work/shared/oracle")
