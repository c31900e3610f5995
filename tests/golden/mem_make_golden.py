"""How tests/golden/mem_weights.safetensors and tests/golden/mem_golden.npz were produced.

Not a test; run once from the repo root with the oracle present:
    .venv/bin/python tests/golden/mem_make_golden.py /work/shared/oracle

mem_weights.safetensors: the GLUS-tiny checkpoint's `model.visual_model.memory_encoder.*`,
    `model.visual_model.memory_attention.*` and `model.visual_model.no_mem_embed`, unchanged (keys
    keep their full checkpoint names, gammas included: the loader quirk Q1 is the converter's job).
mem_golden.npz (NHWC / batch-first, float32):
    frame0_backbone   [1, 64, 64, 64]  infer.npz:first_backbone_vision_features_first (top FPN level of frame 0)
    frame1_backbone   [1, 64, 64, 64]  the same for frame 1, which the oracle does not store: computed here
                      with the PyTorch `sam2` package's ImageEncoder (Hiera + FpnNeck, instantiated from
                      the oracle yaml's image_encoder node) loaded with the GLUS-tiny
                      `model.visual_model.image_encoder.*` weights, on frames.npz:frames_rgb[1]
                      preprocessed like SAM2Transforms (ToTensor, bilinear resize to 1024 (upsampling, so
                      antialias is moot), ImageNet normalise). The same pipeline on frame 0 reproduces
                      the oracle's frame-0 feature (checked below, max abs diff printed).
    step0_low_res_mask_logits [256, 256]  infer.npz (decoder output at step 0, frame 0)
    maskmem0_expected [1, 33, 33, 32]  infer.npz:first_maskmem_features_first at rows/cols IDX64
    maskmem0_idx      [33]             IDX64 = 0, 2, ..., 62, 63
    memattn1_expected [1025, 64]       infer.npz:first_memory_attention_out_first[:, 0] at tokens IDX4096
    memattn1_idx      [1025]           IDX4096 = 0, 4, ..., 4092, 4095
The expected outputs are subsampled (borders kept) to keep the golden small; the truth is the oracle.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from safetensors.numpy import load_file, save_file

HERE = Path(__file__).resolve().parent
PREFIX = "model.visual_model."


def sam2_preprocess(rgb_uint8: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(rgb_uint8).permute(2, 0, 1)[None].float() / 255.0
    x = F.interpolate(x, (1024, 1024), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor([0.485, 0.456, 0.406])[None, :, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[None, :, None, None]
    return (x - mean) / std


def main(oracle: Path) -> None:
    sd = load_file(str(oracle / "checkpoint/GLUS-tiny/model.safetensors"))
    keep = {
        k: np.ascontiguousarray(v)
        for k, v in sd.items()
        if k.startswith((PREFIX + "memory_encoder.", PREFIX + "memory_attention."))
        or k == PREFIX + "no_mem_embed"
    }
    save_file(keep, str(HERE / "mem_weights.safetensors"))

    cfg = OmegaConf.load(oracle / "checkpoint/sam2_hiera_tiny_oracle.yaml")
    encoder = instantiate(cfg.model.image_encoder).eval()
    enc_sd = {
        k[len(PREFIX + "image_encoder.") :]: torch.from_numpy(v)
        for k, v in sd.items()
        if k.startswith(PREFIX + "image_encoder.")
    }
    encoder.load_state_dict(enc_sd, strict=True)

    frames = np.load(oracle / "frames.npz")
    infer = np.load(oracle / "infer.npz")
    feats = []
    for i in (0, 1):
        x = sam2_preprocess(frames["frames_rgb"][i])
        # frames_sam_input_stride16 is the exact model input sampled every 16 pixels.
        check = np.abs(x[0, :, ::16, ::16].numpy() - frames["frames_sam_input_stride16"][i]).max()
        print(f"frame {i}: preprocessing max abs diff vs oracle {check:.2e}")
        with torch.no_grad():
            out = encoder(x)
        feats.append(out["backbone_fpn"][-1].numpy())
    ref0 = infer["first_backbone_vision_features_first"]
    print(
        f"frame 0 backbone feature: max abs diff vs oracle {np.abs(feats[0] - ref0).max():.2e} (scale {np.abs(ref0).max():.2f})"
    )

    idx64 = np.unique(np.r_[0:64:2, 63])
    idx4096 = np.unique(np.r_[0:4096:4, 4095])
    maskmem = infer["first_maskmem_features_first"].transpose(0, 2, 3, 1)
    golden = {
        "frame0_backbone": ref0.transpose(0, 2, 3, 1),
        "frame1_backbone": feats[1].transpose(0, 2, 3, 1),
        "step0_low_res_mask_logits": infer["step0_low_res_mask_logits"],
        "maskmem0_expected": maskmem[:, idx64][:, :, idx64],
        "maskmem0_idx": idx64.astype(np.int32),
        "memattn1_expected": infer["first_memory_attention_out_first"][idx4096, 0],
        "memattn1_idx": idx4096.astype(np.int32),
    }
    np.savez_compressed(
        HERE / "mem_golden.npz", **{k: np.ascontiguousarray(v, dtype=v.dtype) for k, v in golden.items()}
    )
    for name in ("mem_weights.safetensors", "mem_golden.npz"):
        print(name, (HERE / name).stat().st_size, "bytes")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/work/shared/oracle"))
