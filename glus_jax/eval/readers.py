"""Reading ground truth and predictions for evaluation: mask PNGs, palette PNGs, COCO RLE, JSON.

Decoding choices follow the reference evaluation scripts: predictions and ReasonVOS ground truth
are read as `cv2.imread(path, cv2.IMREAD_GRAYSCALE)` would (palette and colour images through
their luma; nonzero = foreground); DAVIS / Ref-YouTube-VOS annotations as palette indices (object
ids, 255 = void), as the DAVIS toolkit's `np.array(Image.open(path))`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image
from pycocotools import mask as cocomask

__all__ = [
    "DataError",
    "decode_rle_clip",
    "image_size",
    "load_json",
    "read_label_png",
    "read_mask_png",
    "rle_size",
]


class DataError(ValueError):
    """A dataset or prediction file is missing, unreadable or inconsistent (the message names it)."""


def load_json(path: str | os.PathLike, what: str = "file") -> Any:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read {what} {path}: {e}") from e


def read_mask_png(path: str | os.PathLike) -> np.ndarray:
    """A mask image as `cv2.IMREAD_GRAYSCALE` reads it: [H, W] uint8 (nonzero = foreground).

    L images as stored; 1-bit as 0/255; palette / RGB(A) / LA through their ITU-R 601 luma (the
    formula cv2 uses); 16-bit scaled to 8 bits (>> 8) as cv2 does.
    """
    try:
        with Image.open(path) as im:
            mode = im.mode
            if mode == "L":
                return np.asarray(im)
            if mode == "1":
                return np.asarray(im, dtype=np.uint8) * np.uint8(255)
            if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
                a = np.asarray(im)
                return (np.clip(a, 0, 65535).astype(np.uint32) >> 8).astype(np.uint8)
            return np.asarray(im.convert("L"))
    except FileNotFoundError:
        raise
    except OSError as e:
        raise DataError(f"cannot read mask image {path}: {e}") from e


def read_label_png(path: str | os.PathLike) -> np.ndarray:
    """An object-id annotation (DAVIS / YouTube-VOS palette PNG): [H, W] uint8 indices."""
    try:
        with Image.open(path) as im:
            if im.mode in ("P", "L"):
                return np.asarray(im)
            if im.mode == "1":
                return np.asarray(im, dtype=np.uint8)
            raise DataError(f"{path}: expected a palette (P) or grayscale (L) annotation, got mode {im.mode}")
    except FileNotFoundError:
        raise
    except OSError as e:
        raise DataError(f"cannot read annotation {path}: {e}") from e


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(H, W) of an image from its header."""
    with Image.open(path) as im:
        w, h = im.size
    return h, w


def rle_size(rles: Sequence[dict | None]) -> tuple[int, int] | None:
    """(H, W) of the first non-empty RLE of a list, or None if all frames are empty."""
    for r in rles:
        if r:
            h, w = r["size"]
            return int(h), int(w)
    return None


_EMPTY_RLE: dict[tuple[int, int], dict] = {}


def _compressed(rle: dict, h: int, w: int) -> dict:
    counts = rle["counts"]
    if isinstance(counts, list):  # uncompressed RLE
        return cocomask.frPyObjects(rle, h, w)
    return rle


def decode_rle_clip(rles: Sequence[dict | None], size: tuple[int, int], what: str = "mask") -> np.ndarray:
    """Decode one object's per-frame COCO RLEs (None / empty = absent) into [T, H, W] bool.

    `counts` may be a str (as MeViS / ReVOS store it), bytes, or an uncompressed list. The result
    is a column-major view (each frame is stored transposed, as pycocotools decodes), which the
    metrics read without a copy.
    """
    h, w = size
    if (h, w) not in _EMPTY_RLE:
        _EMPTY_RLE[(h, w)] = cocomask.encode(np.zeros((h, w), dtype=np.uint8, order="F"))
    objs = []
    for i, r in enumerate(rles):
        if not r:
            objs.append(_EMPTY_RLE[(h, w)])
            continue
        rh, rw = (int(v) for v in r["size"])
        if (rh, rw) != (h, w):
            raise DataError(f"{what}: frame {i} RLE is {rw}x{rh}, expected {w}x{h}")
        objs.append(_compressed(r, h, w))
    if not objs:
        return np.zeros((0, h, w), dtype=bool)
    try:
        dec = cocomask.decode(objs)  # [H, W, T] uint8, Fortran order
    except Exception as e:  # pycocotools raises bare exceptions on malformed counts
        raise DataError(f"{what}: cannot decode RLE: {e}") from e
    return dec.view(bool).transpose(2, 0, 1)
