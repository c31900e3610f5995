"""Video object segmentation metrics: region similarity J and boundary accuracy F.

Same numbers as the DAVIS-2017 evaluation code used by MeViS, Ref-DAVIS17, ReVOS and ReasonVOS
(GLUS `utils/metrics.py`: `db_eval_iou`, `db_eval_boundary`, `f_measure`, `_seg2bmap`), vectorized
over frames. Every function takes masks as `[T, H, W]` (or a single `[H, W]` frame); any nonzero
value is foreground, as `astype(bool)` in the reference.

How F stays exact while skipping most of the image:
  * The reference boundary map (`seg2bmap`) of a pixel only looks at its east, south and south-east
    neighbours, with the last row / column special-cased. So boundary pixels lie in the bounding box
    of the mask grown by one pixel up / left; we cut, per frame, a window holding both masks' boxes
    plus one pixel of margin on every side, and the reference `seg2bmap` run on a window gives the
    same boundary as on the full frame: a window's last row / column is either the image's own (same
    special case) or all zeros (boundary 0 either way). Frames with similar window sizes share one
    window shape and are processed as one array; frames where a mask is empty need no window.
  * The reference dilates each boundary map with `cv2.dilate(b, skimage.morphology.disk(r))`,
    `r = ceil(0.008 * ||(H, W)||)` (zero border), and counts boundary pixels of the other mask under
    it. We never dilate: a pixel (y, x) is under the dilated map iff for some row offset dy in
    [-r, r] the other map has a pixel in row y + dy within columns x +- isqrt(r^2 - dy^2) (the disk is
    the union of these row runs). With a row-wise prefix sum of the other map that is 2 * (2r + 1)
    lookups per boundary pixel, whatever the image size.
  * Precision, recall and F use the reference's float operations in the same order, so values are
    bit-identical (the tests compare against a transcription of the reference).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "BOUND_TH",
    "boundary_radius",
    "db_eval_boundary",
    "db_eval_iou",
    "db_statistics",
    "disk",
    "f_measure",
    "jaccard",
    "jaccard_and_f",
    "r2vos_accuracy",
    "r2vos_robustness",
    "seg2bmap",
]

BOUND_TH = 0.008  # boundary tolerance as a fraction of the image diagonal (DAVIS)


def _as_clip(x: np.ndarray, name: str) -> np.ndarray:
    """[T, H, W] or [H, W] -> [T, H, W], any dtype (nonzero = foreground); bool stays bool."""
    x = np.asarray(x)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise ValueError(f"{name} must be [T, H, W] or [H, W], got shape {x.shape}")
    return x


def _as_bool_clip(x: np.ndarray, name: str) -> np.ndarray:
    x = _as_clip(x, name)
    return x if x.dtype == bool else x != 0


def _occupancy(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns holding a nonzero value, per frame: [T, H, W] -> ([T, H], [T, W]) bool.

    `max` on the raw bytes is a vectorized reduction (`any` is not), and no bool copy is made.
    """
    if m.dtype == bool:
        m = m.view(np.uint8)
    elif m.dtype.kind != "u":
        m = (m != 0).view(np.uint8)  # signed ints, floats (-0.0, NaN): compare, as astype(bool) does
    return m.max(axis=2) != 0, m.max(axis=1) != 0


def _check_shapes(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None) -> None:
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} shapes differ")
    if void is not None and void.shape != gt.shape:
        raise ValueError(f"void mask {void.shape} and ground truth {gt.shape} shapes differ")


def disk(radius: int) -> np.ndarray:
    """`skimage.morphology.disk(radius)`: [2r+1, 2r+1] uint8, 1 where dy^2 + dx^2 <= r^2."""
    r = int(radius)
    d = np.arange(-r, r + 1)
    return ((d[:, None] ** 2 + d[None, :] ** 2) <= r * r).astype(np.uint8)


def boundary_radius(height: int, width: int, bound_th: float = BOUND_TH) -> int:
    """Dilation radius in pixels: `bound_th` itself if >= 1, else ceil(bound_th * diagonal)."""
    if bound_th >= 1:
        if float(bound_th) != int(bound_th):
            # The reference would build a disk on a half-integer grid (an even-sized kernel whose
            # anchor cv2 puts off-centre); we only support integer radii.
            raise ValueError(f"bound_th >= 1 is a radius in pixels and must be an integer, got {bound_th}")
        return int(bound_th)
    return int(np.ceil(bound_th * np.linalg.norm((height, width))))


def seg2bmap(seg: np.ndarray) -> np.ndarray:
    """One-pixel-wide boundary map of binary masks (the DAVIS `_seg2bmap`), [..., H, W] -> bool.

    A pixel is on the boundary if it differs from its east, south or south-east neighbour (zero
    outside the image); on the last row only the east neighbour counts, on the last column only the
    south one, and the bottom-right pixel is never a boundary.
    """
    seg = np.asarray(seg)
    seg = seg if seg.dtype == bool else seg.astype(bool)
    b = np.zeros(seg.shape, dtype=bool)
    c = seg[..., :-1, :-1]
    inner = b[..., :-1, :-1]
    np.bitwise_xor(c, seg[..., :-1, 1:], out=inner)
    inner |= c ^ seg[..., 1:, :-1]
    inner |= c ^ seg[..., 1:, 1:]
    np.bitwise_xor(seg[..., -1, :-1], seg[..., -1, 1:], out=b[..., -1, :-1])
    np.bitwise_xor(seg[..., :-1, -1], seg[..., 1:, -1], out=b[..., :-1, -1])
    return b


def jaccard(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None) -> np.ndarray:
    """Region similarity J per frame: |gt & pred| / |gt | pred| (void pixels excluded); an empty
    union scores 1. [T, H, W] x2 -> [T] float64 ([H, W] -> scalar array)."""
    return jaccard_and_f(gt, pred, void, with_f=False)[0]


def f_measure(
    gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None, bound_th: float = BOUND_TH
) -> np.ndarray:
    """Boundary F-measure per frame (the DAVIS `f_measure`), [T, H, W] x2 -> [T] float64.

    precision = pred-boundary pixels within the tolerance disk of the gt boundary / pred-boundary
    pixels, recall the other way round; an empty boundary on one side gives F = 0, on both F = 1.
    """
    return jaccard_and_f(gt, pred, void, bound_th, with_j=False)[1]


def jaccard_and_f(
    gt: np.ndarray,
    pred: np.ndarray,
    void: np.ndarray | None = None,
    bound_th: float = BOUND_TH,
    *,
    with_j: bool = True,
    with_f: bool = True,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """J and F per frame in one pass over the masks. [T, H, W] x2 -> ([T], [T]) float64.

    2-D inputs give 0-d results. Either result is None when not requested.
    """
    squeeze = np.ndim(gt) == 2
    g = _as_clip(gt, "ground truth")
    p = _as_clip(pred, "prediction")
    v = None if void is None else _as_bool_clip(void, "void mask")
    _check_shapes(g, p, v)
    if v is not None:
        # The reference masks void pixels out of both inputs (J and F alike).
        g = _as_bool_clip(g, "ground truth") & ~v
        p = _as_bool_clip(p, "prediction") & ~v
    t, h, w = g.shape

    g_rows, g_cols = _occupancy(g)  # each mask reduced in its own memory layout (ground truth
    p_rows, p_cols = _occupancy(p)  # decoded from RLE arrives column-major)
    g_any, p_any = g_rows.any(axis=1), p_rows.any(axis=1)
    j_out = np.ones(t)  # both masks empty: J = F = 1
    f_out = np.ones(t)

    # Exactly one mask empty: J = 0, and F = 0 unless the other mask has no boundary pixel either,
    # which (any two 4-adjacent pixels that differ put one on the boundary) means it fills the frame.
    one = np.flatnonzero(g_any ^ p_any)
    if one.size:
        j_out[one] = 0.0
        f_out[one] = 0.0
        for i in one:
            rows_i, cols_i, m = (g_rows[i], g_cols[i], g[i]) if g_any[i] else (p_rows[i], p_cols[i], p[i])
            if rows_i.all() and cols_i.all() and np.all(m):
                f_out[i] = 1.0

    both = np.flatnonzero(g_any & p_any)
    if both.size:
        rows, cols = (g_rows | p_rows)[both], (g_cols | p_cols)[both]
        # Window: the box of gt | pred plus one pixel each side (the boundary extends one pixel up /
        # left of a mask; one zero row / column below / right keeps the last-row case honest).
        top = np.maximum(rows.argmax(axis=1) - 1, 0)
        left = np.maximum(cols.argmax(axis=1) - 1, 0)
        bottom = np.minimum(h - rows[:, ::-1].argmax(axis=1), h - 1)  # last row + 1, clipped
        right = np.minimum(w - cols[:, ::-1].argmax(axis=1), w - 1)
        need_h, need_w = bottom - top + 1, right - left + 1
        r = boundary_radius(h, w, bound_th)
        for grp in _window_groups(need_h, need_w):
            wh, ww = int(need_h[grp].max()), int(need_w[grp].max())
            frames = both[grp]
            tops, lefts = np.minimum(top[grp], h - wh), np.minimum(left[grp], w - ww)
            gw = np.lib.stride_tricks.sliding_window_view(g, (wh, ww), axis=(1, 2))[frames, tops, lefts]
            pw = np.lib.stride_tricks.sliding_window_view(p, (wh, ww), axis=(1, 2))[frames, tops, lefts]
            gw = gw if gw.dtype == bool else gw != 0  # [n, wh, ww] copies
            pw = pw if pw.dtype == bool else pw != 0
            if with_j:
                inter = np.count_nonzero(gw & pw, axis=(1, 2))
                union = np.count_nonzero(gw | pw, axis=(1, 2))
                j_out[frames] = inter / union
            if with_f:
                f_out[frames] = _f_from_boundaries(seg2bmap(gw), seg2bmap(pw), r)
    if not with_j:
        j_out = None
    if not with_f:
        f_out = None
    if squeeze:
        j_out = None if j_out is None else j_out[0]
        f_out = None if f_out is None else f_out[0]
    return j_out, f_out


def _window_groups(need_h: np.ndarray, need_w: np.ndarray, slack: float = 1.5) -> list[np.ndarray]:
    """Split frames into groups that share one window size (the group's max height and width),
    largest first, so that a group's padded area stays within `slack` x its frames' own areas:
    one frame with a far-flung mask must not blow up every frame's window."""
    area = need_h.astype(np.int64) * need_w
    order = np.argsort(-area, kind="stable")
    groups, cur = [], []
    gh = gw = tot = 0
    for i in order.tolist():
        nh, nw = max(gh, int(need_h[i])), max(gw, int(need_w[i]))
        if cur and nh * nw * (len(cur) + 1) > slack * (tot + int(area[i])):
            groups.append(np.array(cur))
            cur, nh, nw, tot = [], int(need_h[i]), int(need_w[i]), 0
        cur.append(i)
        gh, gw, tot = nh, nw, tot + int(area[i])
    if cur:
        groups.append(np.array(cur))
    return groups


def _f_from_boundaries(gb: np.ndarray, pb: np.ndarray, r: int) -> np.ndarray:
    """F per frame from boundary maps [n, h, w] (gt, pred) and the tolerance radius r."""
    n_gt = np.count_nonzero(gb, axis=(1, 2))
    n_fg = np.count_nonzero(pb, axis=(1, 2))
    both = (n_gt > 0) & (n_fg > 0)
    f = np.where((n_gt == 0) & (n_fg == 0), 1.0, 0.0)  # one side empty: P or R is 0 -> F = 0
    sel = np.flatnonzero(both)
    if sel.size:
        fg_match = _count_near(pb[sel], gb[sel], r)  # pred boundary pixels near the gt boundary
        gt_match = _count_near(gb[sel], pb[sel], r)
        precision = fg_match / n_fg[sel].astype(np.float64)
        recall = gt_match / n_gt[sel].astype(np.float64)
        denom = precision + recall
        with np.errstate(invalid="ignore", divide="ignore"):
            fs = 2 * precision * recall / denom
        f[sel] = np.where(denom == 0, 0.0, fs)
    return f


def _count_near(a: np.ndarray, b: np.ndarray, r: int) -> np.ndarray:
    """Per frame, the number of True pixels of `a` [n, h, w] that lie inside `b` dilated by
    disk(r) (zero border), i.e. `sum(a * cv2.dilate(b, disk(r)))`."""
    n, h, w = b.shape
    zh, zw = h + 2 * r, w + 2 * r + 1
    # z[f, r + y, k]: number of b pixels in row y left of column k - r - 1 (rows padded by r, so
    # row offsets never leave a frame; columns padded by r + 1, so runs never leave a row).
    z = np.zeros((n, zh, zw), dtype=np.int32)
    np.cumsum(b, axis=2, dtype=np.int32, out=z[:, r : r + h, r + 1 : r + 1 + w])
    z[:, r : r + h, r + 1 + w :] = z[:, r : r + h, r + w : r + w + 1]
    zf = z.reshape(-1)
    itype = np.int32 if z.size < 2**31 else np.int64
    flat = np.flatnonzero(a).astype(itype, copy=False)
    frame, rem = np.divmod(flat, itype(h * w))
    y, x = np.divmod(rem, itype(w))
    pending = frame * itype(zh * zw) + (y + r) * itype(zw) + (x + r)  # padded flat positions
    del flat, rem, y, x
    hit_frames = []
    # Row offsets nearest first: most matched pixels are found within a few rows, and every
    # found pixel leaves the candidate set, so later (rarer) offsets test far fewer pixels.
    for dy in sorted(range(-r, r + 1), key=abs):
        if pending.size == 0:
            break
        half = math.isqrt(r * r - dy * dy)
        row = pending + itype(dy * zw)
        hit = zf[row + itype(half + 1)] > zf[row - itype(half)]
        hit_frames.append(frame[hit])
        keep = ~hit
        pending, frame = pending[keep], frame[keep]
    if not hit_frames:
        return np.zeros(n, dtype=np.int64)
    return np.bincount(np.concatenate(hit_frames), minlength=n)


# ----------------------------------------------------------------------------------------------
# The reference's names and argument order (annotation first, then segmentation).


def db_eval_iou(annotation: np.ndarray, segmentation: np.ndarray, void_pixels: np.ndarray | None = None):
    """DAVIS `db_eval_iou(annotation, segmentation, void_pixels)`: J per frame."""
    return jaccard(annotation, segmentation, void_pixels)


def db_eval_boundary(
    annotation: np.ndarray,
    segmentation: np.ndarray,
    void_pixels: np.ndarray | None = None,
    bound_th: float = BOUND_TH,
):
    """DAVIS `db_eval_boundary(annotation, segmentation, void_pixels, bound_th)`: F per frame."""
    return f_measure(annotation, segmentation, void_pixels, bound_th)


def db_statistics(per_frame_values: np.ndarray) -> tuple[float, float, float]:
    """DAVIS `db_statistics`: (mean, recall = fraction of frames > 0.5, decay = mean of the first
    quarter minus mean of the last quarter). The bin edges are cast to uint8 as in the reference
    (they wrap past 255 frames; kept for identical numbers)."""
    v = np.asarray(per_frame_values, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        m = float(np.nanmean(v)) if np.any(~np.isnan(v)) else float("nan")
        o = float(np.nanmean(v > 0.5)) if v.size else float("nan")
    ids = (np.round(np.linspace(1, len(v), 5) + 1e-10) - 1).astype(np.uint8)
    first, last = v[ids[0] : ids[1] + 1], v[ids[3] : ids[4] + 1]

    def _nanmean(x):
        return float(np.nanmean(x)) if np.any(~np.isnan(x)) else float("nan")

    return m, o, _nanmean(first) - _nanmean(last)


# ----------------------------------------------------------------------------------------------
# ReVOS robustness / accuracy (GLUS `utils/metrics.py` get_r2vos_*), on binary masks.


def r2vos_accuracy(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Pixel accuracy per frame, mean(gt == pred) on binary masks. [T, H, W] x2 -> [T].

    The reference compares raw values; this equals it for 0/1 masks (what the ReVOS tools write).
    On 0/255 PNGs the reference would only count pixels where both are 0; we binarize first.
    """
    g = _as_bool_clip(gt, "ground truth")
    p = _as_bool_clip(pred, "prediction")
    _check_shapes(g, p, None)
    return np.count_nonzero(g == p, axis=(1, 2)) / float(g.shape[1] * g.shape[2])


def r2vos_robustness(gt: np.ndarray, pred: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """Robustness per frame: max(1 - |pred & ~gt| / (sum(foreground) + 1e-6), 0). [T, H, W] x3 -> [T].

    `foreground` counts, per pixel, how many annotated objects of the video cover it (the ReVOS
    `mask_dict_foreground` instances summed), so it is summed as is, not binarized. Like the
    accuracy, the false positives are counted on binarized masks (= the reference on 0/1 masks).
    """
    g = _as_bool_clip(gt, "ground truth")
    p = _as_bool_clip(pred, "prediction")
    fg = np.asarray(foreground)
    fg = fg[None] if fg.ndim == 2 else fg
    _check_shapes(g, p, None)
    if fg.shape != g.shape:
        raise ValueError(f"foreground {fg.shape} and ground truth {g.shape} shapes differ")
    neg = np.count_nonzero(p & ~g, axis=(1, 2))
    pos = fg.sum(axis=(1, 2), dtype=np.int64)
    return np.maximum(1 - neg / (pos + 1e-6), 0.0)
