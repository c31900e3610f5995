"""Host-side (numpy / PIL) image work of the training input pipeline, run in grain workers.

- :func:`decode_image`: JPEG (path or bytes) -> uint8 RGB [H, W, 3], errors naming the frame.
- :func:`sam_preprocess`: ``SAM2Transforms`` of ``sam2/utils/transforms.py`` as the GLUS training dataset
  applies it (``dataset/refer_video_seg_dataset.py``): ToTensor (/255), torchvision ``Resize((S, S))`` on a
  tensor (antialiased bilinear: a widened triangle filter when downsampling, exactly ``align_corners=False``
  bilinear when upsampling), ImageNet Normalize. It equals ``glus_jax.models.sam2.transforms.preprocess``
  (the jnp version the inference path uses) and ``F.interpolate(..., "bilinear", antialias=True)``.

The resize runs in PIL's C resampler on float32 channels (~40 ms for a 720p frame to 1024 x 1024; the jnp
transform's dense [1024, 1280] weight matrices would cost ~10 GFLOP per frame on the host).

Frames are decoded with PIL (``convert("RGB")``), as the inference path does
(``glus_jax.inference.video_io.read_image``); the reference training code decodes with ``cv2.imread``,
which gives the same bytes for baseline JPEGs (both wrap libjpeg-turbo with the default IDCT).
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence

import numpy as np

from glus_jax.data.formats import DataFormatError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageDecodeError(DataFormatError):
    """A frame that cannot be decoded; the message names the frame (file or record) and the video."""


def decode_image(data: bytes | str | os.PathLike, where: str = "") -> np.ndarray:
    """A JPEG/PNG file path or encoded bytes -> uint8 RGB [H, W, 3].

    ``where`` describes the frame for errors (e.g. "video 'v1', frame '00003'"); a path names itself.
    """
    from PIL import Image, UnidentifiedImageError

    src = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    name = "" if isinstance(src, io.BytesIO) else f"{os.fspath(data)}: "
    try:
        with Image.open(src) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ImageDecodeError(f"{name}cannot decode frame{' of ' + where if where else ''}: {e}") from None


def resize_antialias(x: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """float32 [H, W, C] -> [h, w, C]: ``F.interpolate(mode="bilinear", align_corners=False,
    antialias=True)``, via PIL's float ("F" mode) bilinear resize, one channel at a time.

    PyTorch's antialiased kernel is a port of PIL's resampling (support widened by the downscale factor,
    weights renormalised per output pixel, plain triangle weights when upsampling); PIL evaluates it in
    double precision, so the two agree to float32 rounding (tests: max |diff| < 1e-6 on [0, 1] inputs).
    """
    from PIL import Image

    x = np.asarray(x, np.float32)
    h, w = int(size[0]), int(size[1])
    out = np.empty((h, w, x.shape[-1]), np.float32)
    for c in range(x.shape[-1]):
        im = Image.fromarray(np.ascontiguousarray(x[..., c]))  # 2-D float32 -> mode "F"
        out[..., c] = np.asarray(im.resize((w, h), Image.Resampling.BILINEAR))
    return out


def sam_preprocess(frames: Sequence[np.ndarray] | np.ndarray, size: int = 1024) -> np.ndarray:
    """SAM2Transforms of uint8 RGB frames (each [H, W, 3], sizes may differ) -> float32 [N, size, size, 3]."""
    mean = np.asarray(IMAGENET_MEAN, np.float32)
    std = np.asarray(IMAGENET_STD, np.float32)
    out = np.empty((len(frames), size, size, 3), np.float32)
    for i, frame in enumerate(frames):
        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[-1] != 3:
            raise ValueError(
                f"sam_preprocess: frame {i} must be uint8 [H, W, 3], got {frame.dtype} {frame.shape}"
            )
        x = frame.astype(np.float32) / np.float32(255.0)  # ToTensor
        out[i] = (resize_antialias(x, (size, size)) - mean) / std
    return out
