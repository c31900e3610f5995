"""J and F: hand-computed cases, properties, and bit-equality with the DAVIS-2017 reference.

The reference below is a transcription of `db_eval_iou`, `db_eval_boundary` / `f_measure` and
`_seg2bmap` as used by MeViS / GLUS (utils/metrics.py): per-frame loop, cv2.dilate with
skimage's disk (defined inline: skimage is not installed), zero border.
"""

import math
import warnings

import cv2
import numpy as np
import pytest
from scipy import ndimage

from glus_jax.eval import metrics

# ---------------------------------------------------------------------------------------------
# Reference transcription (independent of glus_jax.eval.metrics).


def ref_disk(radius):
    grid = np.arange(-radius, radius + 1)
    x, y = np.meshgrid(grid, grid)
    return np.array((x**2 + y**2) <= radius**2, dtype=np.uint8)


def ref_iou(annotation, segmentation, void_pixels=None):
    annotation = annotation.astype(bool)
    segmentation = segmentation.astype(bool)
    void_pixels = np.zeros_like(segmentation) if void_pixels is None else void_pixels.astype(bool)
    inters = np.sum((segmentation & annotation) & np.logical_not(void_pixels), axis=(-2, -1))
    union = np.sum((segmentation | annotation) & np.logical_not(void_pixels), axis=(-2, -1))
    with np.errstate(invalid="ignore"):
        j = inters / union
    if j.ndim == 0:
        j = 1 if np.isclose(union, 0) else j
    else:
        j[np.isclose(union, 0)] = 1
    return j


def ref_seg2bmap(seg):
    seg = seg.astype(bool)
    e, s, se = np.zeros_like(seg), np.zeros_like(seg), np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = seg ^ e | seg ^ s | seg ^ se
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = 0
    return b


def ref_f_measure(foreground_mask, gt_mask, void_pixels=None, bound_th=0.008):
    if void_pixels is None:
        void_pixels = np.zeros_like(foreground_mask).astype(bool)
    void_pixels = void_pixels.astype(bool)
    bound_pix = bound_th if bound_th >= 1 else np.ceil(bound_th * np.linalg.norm(foreground_mask.shape))
    fg_boundary = ref_seg2bmap(foreground_mask * np.logical_not(void_pixels))
    gt_boundary = ref_seg2bmap(gt_mask * np.logical_not(void_pixels))
    fg_dil = cv2.dilate(fg_boundary.astype(np.uint8), ref_disk(bound_pix).astype(np.uint8))
    gt_dil = cv2.dilate(gt_boundary.astype(np.uint8), ref_disk(bound_pix).astype(np.uint8))
    gt_match = gt_boundary * fg_dil
    fg_match = fg_boundary * gt_dil
    n_fg, n_gt = np.sum(fg_boundary), np.sum(gt_boundary)
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1, 0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0, 1
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1, 1
    else:
        precision = np.sum(fg_match) / float(n_fg)
        recall = np.sum(gt_match) / float(n_gt)
    return 0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def ref_boundary(annotation, segmentation, void_pixels=None, bound_th=0.008):
    f = np.zeros(annotation.shape[0])
    for i in range(annotation.shape[0]):
        v = None if void_pixels is None else void_pixels[i]
        f[i] = ref_f_measure(segmentation[i], annotation[i], v, bound_th)
    return f


def ref_db_statistics(per_frame_values):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        m = np.nanmean(per_frame_values)
        o = np.nanmean(per_frame_values > 0.5)
    ids = np.round(np.linspace(1, len(per_frame_values), 5) + 1e-10) - 1
    ids = ids.astype(np.uint8)
    bins = [per_frame_values[ids[i] : ids[i + 1] + 1] for i in range(0, 4)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        return m, o, np.nanmean(bins[0]) - np.nanmean(bins[3])


# ---------------------------------------------------------------------------------------------
# Hand-computed values


def square(h, w, y0, x0, size):
    m = np.zeros((h, w), dtype=bool)
    m[y0 : y0 + size, x0 : x0 + size] = True
    return m


def test_square_vs_shifted_square_on_paper():
    # 41x57 image: diagonal 70.2 -> tolerance ceil(0.008 * 70.2) = 1 pixel.
    h, w = 41, 57
    assert metrics.boundary_radius(h, w) == 1
    gt = square(h, w, 10, 10, 10)
    # seg2bmap of a 10x10 square at rows / cols 10..19 is the ring of the 11x11 square 9..19
    # (boundaries sit half a pixel towards the origin): 4 * 11 - 4 = 40 pixels.
    ring = square(h, w, 9, 9, 11) & ~square(h, w, 10, 10, 9)
    np.testing.assert_array_equal(metrics.seg2bmap(gt), ring)
    # Shift by 3 columns. J = 7*10 / (100 + 100 - 70) = 7/13.
    pred = square(h, w, 10, 13, 10)
    j, f = metrics.jaccard_and_f(gt, pred)
    assert j == pytest.approx(7 / 13, abs=1e-15)
    # Pred ring: columns 12..22. Matched (distance <= 1 to the gt ring, columns 9..19):
    # top and bottom rows 12..20 (9 each), left column rows 10 and 18 (next to the gt rows),
    # right column none -> 20 of 40; by symmetry recall is 20/40 too -> F = 0.5.
    assert f == pytest.approx(0.5, abs=1e-15)
    # Shift by 1: every ring pixel within 1 of the other ring -> F = 1; J = 90 / 110.
    j1, f1 = metrics.jaccard_and_f(gt, square(h, w, 10, 11, 10))
    assert (j1, f1) == (pytest.approx(9 / 11, abs=1e-15), 1.0)


def test_disk_matches_skimage_definition():
    for r in range(0, 12):
        np.testing.assert_array_equal(metrics.disk(r), ref_disk(r))
    assert metrics.boundary_radius(480, 854) == 8  # ceil(0.008 * 979.6)
    assert metrics.boundary_radius(480, 854, bound_th=3) == 3
    with pytest.raises(ValueError, match="integer"):
        metrics.boundary_radius(480, 854, bound_th=2.5)


def test_empty_and_one_sided():
    z = np.zeros((3, 23, 31), dtype=bool)
    m = z.copy()
    m[:, 5:9, 7:20] = True
    full = np.ones_like(z)
    j, f = metrics.jaccard_and_f(z, z)
    np.testing.assert_array_equal(j, 1.0)  # empty / empty: 1 (the DAVIS convention)
    np.testing.assert_array_equal(f, 1.0)
    j, f = metrics.jaccard_and_f(m, z)
    np.testing.assert_array_equal(j, 0.0)
    np.testing.assert_array_equal(f, 0.0)
    j, f = metrics.jaccard_and_f(z, full)  # a full mask has no boundary pixel: F = 1 but J = 0
    np.testing.assert_array_equal(j, 0.0)
    np.testing.assert_array_equal(f, 1.0)
    assert metrics.jaccard(m[0], m[0]) == 1.0 and metrics.f_measure(m[0], m[0]) == 1.0


def test_properties_symmetry_identity_monotone():
    rng = np.random.default_rng(0)
    h, w = 67, 91
    blobs = smooth(rng, (6, h, w), 3) > 0.2
    other = smooth(rng, (6, h, w), 3) > 0.2
    j_ab, f_ab = metrics.jaccard_and_f(blobs, other)
    j_ba, f_ba = metrics.jaccard_and_f(other, blobs)
    np.testing.assert_array_equal(j_ab, j_ba)
    np.testing.assert_array_equal(f_ab, f_ba)  # F is the harmonic mean: symmetric too
    j, f = metrics.jaccard_and_f(blobs, blobs)
    np.testing.assert_array_equal(j, 1.0)
    np.testing.assert_array_equal(f, 1.0)
    # A disk shifted further and further: F never increases and ends at 0; within the tolerance it
    # stays 1. Tolerance here: ceil(0.008 * 112.9) = 1 px.
    yy, xx = np.mgrid[:h, :w]
    gt = (yy - 33) ** 2 + (xx - 30) ** 2 < 15**2
    fs = [metrics.f_measure(gt, np.roll(gt, d, axis=1)) for d in range(0, 12)]
    assert fs[0] == fs[1] == 1.0
    assert all(a >= b for a, b in zip(fs, fs[1:])) and fs[-1] < 0.2 and fs[2] < 1.0


def smooth(rng, shape, sigma):
    """Gaussian-smoothed noise scaled to unit standard deviation (thresholds in std units)."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), (0, sigma, sigma))
    return field / max(field.std(), 1e-12)


def random_masks(rng, t, h, w, kind):
    if kind == "noise":
        return rng.random((t, h, w)) < 0.5
    if kind == "blobs":
        return smooth(rng, (t, h, w), 2.5) > 0.3
    if kind == "fine":
        return smooth(rng, (t, h, w), 0.8) > 0
    m = np.zeros((t, h, w), dtype=bool)  # "border": touching the image edges, full and empty frames
    m[:, : max(1, h // 3), -max(1, w // 4) :] = True
    m[:, -1, : max(1, w // 2)] = True
    m[0] = True
    m[-1] = False
    return m


@pytest.mark.parametrize("h,w", [(1, 1), (1, 9), (7, 1), (2, 3), (13, 17), (40, 29), (97, 123), (480, 854)])
def test_equals_reference_on_random_masks(h, w):
    rng = np.random.default_rng(h * 1000 + w)
    t = 3 if h * w > 100_000 else 8
    for kind in ("noise", "blobs", "fine", "border"):
        gt = random_masks(rng, t, h, w, kind)
        pred = random_masks(rng, t, h, w, rng.choice(["blobs", "border", "fine"]))
        pred[t // 2] = False  # one side empty
        if t > 3:
            gt[1], pred[1] = False, False  # both empty
        void = rng.random((t, h, w)) < 0.05
        for v in (None, void):
            j_ref, f_ref = ref_iou(gt, pred, v), ref_boundary(gt, pred, v)
            # Ground truth as bool, as column-major frames (RLE decode layout) and as 0/255 uint8.
            col_major = np.asfortranarray(gt.transpose(1, 2, 0)).transpose(2, 0, 1)
            labels = gt * rng.choice(np.array([2, 254, -3, 0.5]), size=gt.shape)  # any nonzero counts
            for g in (gt, col_major, gt.astype(np.uint8) * 255, labels):
                j, f = metrics.jaccard_and_f(g, pred.astype(np.uint8) * 2, v)
                np.testing.assert_array_equal(j, j_ref, err_msg=f"J {kind} {h}x{w} void={v is not None}")
                np.testing.assert_array_equal(f, f_ref, err_msg=f"F {kind} {h}x{w} void={v is not None}")
        # Tolerance given in pixels.
        f3 = metrics.f_measure(gt, pred, bound_th=3)
        np.testing.assert_array_equal(f3, ref_boundary(gt, pred, None, 3))


def test_far_apart_objects_and_mixed_window_sizes():
    # Frames whose masks span the whole image next to frames with tiny masks (different window
    # groups), multi-component masks and masks on the last row / column.
    rng = np.random.default_rng(7)
    h, w = 120, 161
    gt = np.zeros((10, h, w), dtype=bool)
    pred = np.zeros_like(gt)
    for t in range(10):
        y, x = rng.integers(0, h - 8), rng.integers(0, w - 8)
        gt[t, y : y + 6, x : x + 7] = True
        pred[t, y + 1 : y + 7, x : x + 8] = True
        if t % 3 == 0:
            pred[t, 0, 0] = True
            gt[t, -1, -5:] = True
            pred[t, -3:, -1] = True
    j, f = metrics.jaccard_and_f(gt, pred)
    np.testing.assert_array_equal(j, ref_iou(gt, pred))
    np.testing.assert_array_equal(f, ref_boundary(gt, pred))


def test_official_names_and_argument_order():
    rng = np.random.default_rng(3)
    a = random_masks(rng, 4, 30, 41, "blobs")
    b = random_masks(rng, 4, 30, 41, "blobs")
    np.testing.assert_array_equal(metrics.db_eval_iou(a, b), ref_iou(a, b))
    np.testing.assert_array_equal(metrics.db_eval_boundary(a, b), ref_boundary(a, b))
    assert metrics.db_eval_iou(a[0], b[0]) == ref_iou(a[0], b[0])
    assert metrics.db_eval_boundary(a[0], b[0]) == ref_f_measure(b[0], a[0])
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.jaccard_and_f(a, b[:, :-1])


def test_db_statistics_matches_reference():
    rng = np.random.default_rng(5)
    for n in (1, 2, 5, 17, 80, 300):
        v = rng.random(n)
        v[rng.random(n) < 0.1] = np.nan
        if np.all(np.isnan(v)):
            continue
        ours, ref = metrics.db_statistics(v), ref_db_statistics(v)
        for a, b in zip(ours, ref):
            assert (math.isnan(a) and math.isnan(b)) or a == b


def test_r2vos_accuracy_and_robustness_match_reference_on_binary_masks():
    rng = np.random.default_rng(11)
    gt = (rng.random((5, 19, 23)) < 0.3).astype(np.uint8)
    pred = (rng.random((5, 19, 23)) < 0.3).astype(np.uint8)
    fg = gt + (rng.random((5, 19, 23)) < 0.2).astype(np.uint8)  # instance counts per pixel
    acc_ref = np.array([np.mean(g == p) for g, p in zip(gt, pred)])
    rob_ref = np.array([max(1 - ((1 - g) * p).sum() / (f.sum() + 1e-6), 0.0)
                        for g, p, f in zip(gt, pred, fg)])
    np.testing.assert_array_equal(metrics.r2vos_accuracy(gt, pred), acc_ref)
    np.testing.assert_array_equal(metrics.r2vos_robustness(gt, pred, fg), rob_ref)
    # 0/255 predictions are binarized (the reference's raw uint8 arithmetic would not be).
    np.testing.assert_array_equal(metrics.r2vos_robustness(gt, pred * 255, fg), rob_ref)
