"""benchmarks/sam_selection.py: its prompts, metrics and references, and a 2-step run end to end."""

import json

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import sam_selection
from glus_jax.data import synthetic
from glus_jax.eval.metrics import jaccard


def test_points_fall_inside_their_masks():
    rng = np.random.default_rng(0)
    masks = np.zeros((6, 20, 30), bool)
    for i, m in enumerate(masks):
        y, x = rng.integers(0, 15), rng.integers(0, 25)
        m[y : y + 1 + i % 3, x : x + 2] = True
    points = np.asarray(sam_selection.draw_points(jnp.asarray(masks), jax.random.key(1)))
    assert points.shape == (6, 2)
    xs, ys = points[:, 0].astype(int), points[:, 1].astype(int)
    assert masks[np.arange(6), ys, xs].all()


def test_iou_and_disk_reference():
    a = np.zeros((2, 10, 10), bool)
    b = np.zeros((2, 10, 10), bool)
    a[0, :4, :5] = True  # 20 pixels
    b[0, 2:6, :5] = True  # 20 pixels, 10 shared
    np.testing.assert_allclose(jaccard(b, a), [10 / 30, 1.0])  # the IoU the benchmark reports
    # A disk exactly the target's: IoU 1 at its radius.
    yy, xx = np.mgrid[:40, :40]
    target = ((yy - 20) ** 2 + (xx - 20) ** 2 <= 36)[None]
    disk = sam_selection.disk_reference(np.asarray([[20.0, 20.0]]), target)
    assert disk[6] == 1.0 and disk[4] < 1.0 and disk[16] < 1.0


def test_two_steps_end_to_end_with_the_pytorch_twin(tmp_path):
    data = tmp_path / "mevis"
    synthetic.generate(data, "train", 2, 0)
    out = tmp_path / "out"
    argv = ["--data", str(data), "--videos", "2", "--steps", "2", "--batch", "2", "--log-every", "1",
            "--torch", "--out", str(out)]
    assert sam_selection.main(argv) == 0
    r = json.loads((out / "sam_selection.json").read_text())
    assert [row["step"] for row in r["rows"]] == [1, 2]
    for row in r["rows"]:
        for side in ("", "torch_"):
            assert np.isfinite(row[side + "loss"]) and 0 <= row[side + "iou"] <= 1 and 0 <= row[side + "iou_all"] <= 1
    assert 0 < r["references"]["all_objects"] <= 1
    assert set(r["references"]["disk"]) == {str(x) for x in sam_selection.DISK_RADII}
