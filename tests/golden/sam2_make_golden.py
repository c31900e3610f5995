"""How tests/golden/sam2_* were produced (not a test; run once from the repo root with the oracle):

    .venv/bin/python tests/golden/sam2_make_golden.py /work/shared/oracle

sam2_visual_model.safetensors: the GLUS-tiny checkpoint's `model.visual_model.*` tensors that are not
    already in mem_weights.safetensors (the memory helper's share: memory_attention.*, memory_encoder.*,
    no_mem_embed), unchanged, full key names. The two files together are the whole SAM2 of GLUS-tiny.
sam2_hiera_tiny_oracle.yaml: checkpoint/sam2_hiera_tiny_oracle.yaml, verbatim.
sam2_image.npz (oracle layouts, float32 unless noted):
    frames_rgb            [3, 96, 128, 3] uint8   frames.npz:frames_rgb[:3]
    sam_input_stride16    [3, 3, 64, 64]          frames.npz:frames_sam_input_stride16[:3] (= input[..., ::16, ::16])
    sam_input_mean/std    [3, 3]                  frames.npz per-channel mean / std (ddof 1) of the 1024^2 input
    vision_slice          [64, 22, 22]            first_backbone_vision_features_first[0, :, 1::3, 1::3]
    vision_chan_sum       [64] float64            ... summed over H, W (the whole map enters the check)
    s0_slice              [8, 37, 37]             first_high_res_feat_s0_first[0, :, 1::7, 1::7]
    s0_chan_sum           [8] float64
    s1_slice              [16, 26, 26]            first_high_res_feat_s1_first[0, :, ::5, ::5]
    s1_chan_sum           [16] float64
    text_embeds           [64]                    infer.npz:step0_text_embeds_used
    low_res_mask_logits   [256, 256]              infer.npz:step0_low_res_mask_logits
    pred_mask_logits      [96, 128]               infer.npz:step0_pred_mask_logits
    iou_predictions_all4  [4]                     inference_steps.json infer[0] (sigmoid IoUs of tokens 0-3)
    stability_score_token0, object_score_logit   scalars from the same record; stable_token0 (bool)
    train_text_embeds     [2, 64]                 train_forward.npz:text_embeds_frame0_sample0 (question frame 0 of
                                                  sample 0 is video frame 0, memory bank empty; decoder in train mode)
    train_low_res_slice   [2, 128, 128]           train_forward.npz:low_res_mask_logits_frame0_sample0[:, ::2, ::2]
    train_pred_mask_logits [2, 96, 128]           train_forward.npz:pred_mask_logits_frame0_sample0
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

GOLDEN = Path(__file__).resolve().parent


def main(oracle: Path) -> None:
    ckpt = load_file(str(oracle / "checkpoint/GLUS-tiny/model.safetensors"))
    mem = load_file(str(GOLDEN / "mem_weights.safetensors"))
    visual = {k: v for k, v in ckpt.items() if k.startswith("model.visual_model.") and k not in mem}
    save_file(visual, str(GOLDEN / "sam2_visual_model.safetensors"))
    shutil.copyfile(oracle / "checkpoint/sam2_hiera_tiny_oracle.yaml", GOLDEN / "sam2_hiera_tiny_oracle.yaml")

    tf = np.load(oracle / "train_forward.npz")
    fr = np.load(oracle / "frames.npz")
    inf = np.load(oracle / "infer.npz")
    step0 = json.loads((oracle / "inference_steps.json").read_text())["infer"][0]
    vis = inf["first_backbone_vision_features_first"][0]
    s0 = inf["first_high_res_feat_s0_first"][0]
    s1 = inf["first_high_res_feat_s1_first"][0]
    np.savez_compressed(
        GOLDEN / "sam2_image.npz",
        frames_rgb=fr["frames_rgb"][:3],
        sam_input_stride16=fr["frames_sam_input_stride16"][:3],
        sam_input_mean=fr["frames_sam_input_mean"][:3],
        sam_input_std=fr["frames_sam_input_std"][:3],
        vision_slice=vis[:, 1::3, 1::3],
        vision_chan_sum=vis.astype(np.float64).sum((1, 2)),
        s0_slice=s0[:, 1::7, 1::7],
        s0_chan_sum=s0.astype(np.float64).sum((1, 2)),
        s1_slice=s1[:, ::5, ::5],
        s1_chan_sum=s1.astype(np.float64).sum((1, 2)),
        text_embeds=inf["step0_text_embeds_used"],
        low_res_mask_logits=inf["step0_low_res_mask_logits"],
        pred_mask_logits=inf["step0_pred_mask_logits"],
        iou_predictions_all4=np.asarray(step0["iou_predictions_all4"], np.float32),
        stability_score_token0=np.float32(step0["stability_score_token0"]),
        object_score_logit=np.float32(step0["object_score_logit(unused)"]),
        stable_token0=np.bool_(step0["stable(token0_used)"]),
        train_text_embeds=tf["text_embeds_frame0_sample0"],
        train_low_res_slice=tf["low_res_mask_logits_frame0_sample0"][:, ::2, ::2],
        train_pred_mask_logits=tf["pred_mask_logits_frame0_sample0"],
    )


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/work/shared/oracle"))
