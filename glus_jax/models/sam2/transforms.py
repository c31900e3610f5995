"""SAM2 pre/post-processing and exact PyTorch `F.interpolate` resampling as matrices.

Ports `sam2/utils/transforms.py` (SAM2Transforms: ToTensor, Resize((R, R)), ImageNet Normalize;
`postprocess_masks`) as used by GLUS (oracle README Q10: no hole filling, no padding).

Every resampling here is separable and linear, so a resize along one axis is a fixed
[out, in] weight matrix applied with an einsum. The matrices are built in numpy at trace time
from static shapes and reproduce PyTorch's index and weight formulas exactly (including its
border clamping), which `jax.image.resize` does not (different cubic coefficient, different
border handling). Einsums run at HIGHEST precision: on TPU the default f32 matmul precision
would round the pixels to bfloat16.

Layouts: images NHWC; masks [B, M, H, W] (one channel per mask, as the decoder emits them).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_MODES = ("nearest", "bilinear", "bicubic")


def _cubic_coeffs(t: np.ndarray, a: float = -0.75) -> np.ndarray:
    """PyTorch's `get_cubic_upsample_coefficients` (Keys cubic, A = -0.75): [..., 4] taps."""

    a = np.float32(a)
    one = np.float32(1.0)

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + one

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return np.stack([far(t + one), near(t), near(one - t), far(2 * one - t)], axis=-1)


@functools.lru_cache(maxsize=256)
def resize_weights(
    in_size: int,
    out_size: int,
    mode: str = "bilinear",
    *,
    antialias: bool = False,
    align_corners: bool = False,
    scale_factor: float | None = None,
) -> np.ndarray:
    """[out_size, in_size] float32 matrix M with `F.interpolate(x)` == M @ x along one axis.

    mode: "nearest" | "bilinear" | "bicubic", as in PyTorch (antialias only for bilinear).
    `scale_factor`: the factor passed to F.interpolate instead of a size (then PyTorch's source
    scale is 1/scale_factor rather than in/out; identical for exact integer factors).
    """
    if mode not in _MODES:
        raise ValueError(f"resize mode {mode!r} not supported; expected one of {_MODES}")
    if in_size <= 0 or out_size <= 0:
        raise ValueError(f"resize sizes must be positive, got {in_size} -> {out_size}")
    if antialias and mode != "bilinear":
        raise ValueError("antialias is implemented for bilinear only (the only use in SAM2)")
    if align_corners and (mode == "nearest" or antialias):
        raise ValueError("align_corners applies to plain bilinear/bicubic only")
    # PyTorch evaluates the source coordinates and weights in float32 ("opmath" of float
    # tensors); doing the same keeps these matrices bit-faithful for non-integer scales.
    f32 = np.float32
    w = np.zeros((out_size, in_size), f32)
    dst = np.arange(out_size).astype(f32)
    rows = np.arange(out_size)
    if align_corners:
        scale = f32(in_size - 1) / f32(out_size - 1) if out_size > 1 else f32(0.0)
    else:
        scale = f32(1.0 / scale_factor) if scale_factor is not None else f32(in_size) / f32(out_size)

    if mode == "nearest":
        # PyTorch "nearest" (not "nearest-exact"): src = floor(dst * scale).
        src = np.minimum(np.floor(dst * scale).astype(np.int64), in_size - 1)
        w[rows, src] = 1.0
    elif mode == "bilinear" and antialias:
        # aten UpSampleKernel.cpp `_compute_index_ranges_weights` with the triangle filter: the
        # filter support widens by the downscale factor, weights are renormalised to sum 1.
        support = scale if scale >= 1.0 else f32(1.0)
        invscale = f32(1.0) / scale if scale >= 1.0 else f32(1.0)
        for i in range(out_size):
            center = scale * (f32(i) + f32(0.5))
            xmin = max(int(center - support + f32(0.5)), 0)
            xmax = min(int(center + support + f32(0.5)), in_size)
            j = np.arange(xmin, xmax).astype(f32)
            tri = np.maximum(f32(0.0), f32(1.0) - np.abs((j - center + f32(0.5)) * invscale))
            total = tri.sum(dtype=f32)
            w[i, xmin:xmax] = tri / total if total != 0 else tri
    elif mode == "bilinear":
        src = dst * scale if align_corners else np.maximum(scale * (dst + f32(0.5)) - f32(0.5), f32(0.0))
        i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
        i1 = np.minimum(i0 + 1, in_size - 1)
        l1 = src - i0.astype(f32)
        np.add.at(w, (rows, i0), f32(1.0) - l1)
        np.add.at(w, (rows, i1), l1)
    else:  # bicubic: 4 taps, border taps clamped (replicate), source index not clamped
        src = dst * scale if align_corners else scale * (dst + f32(0.5)) - f32(0.5)
        i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
        t = np.clip(src - i0.astype(f32), f32(0.0), f32(1.0))
        coeffs = _cubic_coeffs(t).astype(f32)
        for k in range(4):
            idx = np.clip(i0 - 1 + k, 0, in_size - 1)
            np.add.at(w, (rows, idx), coeffs[:, k])
    return w.astype(np.float32)


def resize(
    x: jax.Array,
    size: Sequence[int],
    *,
    axes: tuple[int, int] = (1, 2),
    mode: str = "bilinear",
    antialias: bool = False,
    align_corners: bool = False,
    scale_factor: float | None = None,
) -> jax.Array:
    """Resize the two spatial `axes` of `x` to `size` exactly as `F.interpolate` does.

    The computation is in float32 (or x's dtype if wider) at HIGHEST matmul precision.
    """
    h_ax, w_ax = (a % x.ndim for a in axes)
    out_h, out_w = int(size[0]), int(size[1])
    in_h, in_w = x.shape[h_ax], x.shape[w_ax]
    kw = {"mode": mode, "antialias": antialias, "align_corners": align_corners, "scale_factor": scale_factor}
    dtype = jnp.promote_types(x.dtype, jnp.float32)
    y = x.astype(dtype)
    hi = jax.lax.Precision.HIGHEST
    wh = jnp.asarray(resize_weights(in_h, out_h, **kw), dtype)
    y = jnp.moveaxis(jnp.tensordot(wh, y, axes=((1,), (h_ax,)), precision=hi), 0, h_ax)
    wv = jnp.asarray(resize_weights(in_w, out_w, **kw), dtype)
    y = jnp.moveaxis(jnp.tensordot(wv, y, axes=((1,), (w_ax,)), precision=hi), 0, w_ax)
    return y


def preprocess(frames: jax.Array, resolution: int = 1024) -> jax.Array:
    """SAM2Transforms: uint8 RGB frames [B, H, W, 3] -> normalised pixels [B, R, R, 3] float32.

    ToTensor (/255), Resize((R, R)) (torchvision on tensors: bilinear, antialias=True; exactly
    `align_corners=False` bilinear when upsampling, a widened triangle filter when downsampling),
    then ImageNet Normalize, in that order (as SAM2Transforms applies them).
    Float inputs are taken as already scaled to [0, 1].
    """
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"preprocess expects frames [B, H, W, 3], got shape {frames.shape}")
    x = frames.astype(jnp.float32)
    if jnp.issubdtype(frames.dtype, jnp.integer):
        x = x / 255.0
    x = resize(x, (resolution, resolution), mode="bilinear", antialias=True)
    mean = jnp.asarray(IMAGENET_MEAN, jnp.float32)
    std = jnp.asarray(IMAGENET_STD, jnp.float32)
    return (x - mean) / std


def postprocess_masks(masks: jax.Array, orig_hw: Sequence[int]) -> jax.Array:
    """SAM2Transforms.postprocess_masks: mask logits [B, M, h, w] -> [B, M, H, W].

    One bilinear interpolation with align_corners=False and no antialiasing (also when
    downsampling, as F.interpolate does by default). Hole/sprinkle filling is off in GLUS
    (max_hole_area = max_sprinkle_area = 0), so it is not implemented.
    """
    if masks.ndim != 4:
        raise ValueError(f"postprocess_masks expects [B, M, h, w] logits, got shape {masks.shape}")
    return resize(masks.astype(jnp.float32), orig_hw, axes=(2, 3), mode="bilinear")
