"""COCO run-length encoding (RLE) of binary masks, in pure numpy.

MeViS, ReVOS and LV-VIS store their masks as COCO RLE dicts ``{"size": [H, W], "counts": ...}`` where
``counts`` is either the compressed string of ``pycocotools`` (``maskApi.c: rleToString``) or a plain
list of run lengths. Runs alternate 0/1 starting with 0 and walk the mask in column-major (Fortran)
order. We decode ourselves instead of calling ``pycocotools.mask.decode`` so that a corrupt entry is a
clear ``RLEError`` (pycocotools does not check that the runs add up to H*W) and so that nothing here
depends on a compiled extension. Results are bit-identical to pycocotools (tests/test_data_formats.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


class RLEError(ValueError):
    """A run-length encoded mask that cannot be decoded (bad string, runs not summing to H*W, ...)."""


def counts_from_string(s: str | bytes) -> np.ndarray:
    """Decodes the compressed COCO counts string into run lengths (``rleFrString`` in maskApi.c).

    Each run is a little-endian base-32 varint over the characters ``chr(48 + v)``, 5 payload bits per
    character, bit 0x20 = "more characters follow", sign taken from bit 0x10 of the last character;
    from the third run on, the value is a delta to the run two places before.
    """
    data = s.encode("ascii") if isinstance(s, str) else bytes(s)
    counts: list[int] = []
    p, n = 0, len(data)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                raise RLEError("compressed RLE string ends inside a run")
            c = data[p] - 48
            if not 0 <= c < 64:
                raise RLEError(f"compressed RLE string has an invalid character {chr(data[p])!r}")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return np.asarray(counts, dtype=np.int64)


def counts_to_string(counts: Sequence[int] | np.ndarray) -> str:
    """Inverse of :func:`counts_from_string` (``rleToString`` in maskApi.c)."""
    out = bytearray()
    cnts = [int(c) for c in counts]
    for i, c in enumerate(cnts):
        x = c - cnts[i - 2] if i > 2 else c
        more = True
        while more:
            ch = x & 0x1F
            x >>= 5
            more = (x != -1) if (ch & 0x10) else (x != 0)
            if more:
                ch |= 0x20
            out.append(ch + 48)
    return out.decode("ascii")


def decode(rle: Mapping[str, Any]) -> np.ndarray:
    """COCO RLE dict -> uint8 mask [H, W] with values 0/1.

    Raises RLEError when the dict lacks ``size``/``counts``, the counts are not a string or a list of
    non-negative ints, or the runs do not cover exactly H*W pixels.
    """
    if not isinstance(rle, Mapping) or "size" not in rle or "counts" not in rle:
        raise RLEError(f"an RLE must be a dict with 'size' and 'counts', got {type(rle).__name__}")
    size = rle["size"]
    if not (
        isinstance(size, Sequence) and len(size) == 2 and all(isinstance(v, int) and v >= 0 for v in size)
    ):
        raise RLEError(f"RLE 'size' must be [H, W] with non-negative ints, got {size!r}")
    h, w = int(size[0]), int(size[1])
    raw = rle["counts"]
    if isinstance(raw, (str, bytes)):
        counts = counts_from_string(raw)
    elif isinstance(raw, Sequence) and all(isinstance(c, int) for c in raw):
        counts = np.asarray(raw, dtype=np.int64)
    else:
        raise RLEError(f"RLE 'counts' must be a string or a list of ints, got {type(raw).__name__}")
    if counts.size and counts.min() < 0:
        raise RLEError("RLE has a negative run length")
    total = int(counts.sum())
    if total != h * w:
        raise RLEError(f"RLE runs cover {total} pixels but 'size' {h}x{w} has {h * w}")
    values = (np.arange(counts.size) % 2).astype(np.uint8)
    flat = np.repeat(values, counts)
    # Column-major walk: the flat runs fill columns first.
    return flat.reshape(w, h).T.copy()


def encode(mask: np.ndarray) -> dict[str, Any]:
    """Binary mask [H, W] -> COCO RLE dict with a compressed ``counts`` string (as pycocotools)."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"encode expects a [H, W] mask, got shape {m.shape}")
    h, w = m.shape
    flat = (m.T.reshape(-1) != 0).astype(np.int8)
    # Run boundaries; runs start with zeros, so a mask starting with 1 gets a leading 0-length run.
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0] == 1:
        runs = [0] + runs
    return {"size": [h, w], "counts": counts_to_string(runs)}
