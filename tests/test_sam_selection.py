"""benchmarks/sam_selection.py: its prompts, metrics and references, and a 2-step run end to end."""

import json

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

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
    assert list(r["shares"]) == list(sam_selection.SHARES) and r["shares"] == r["rows"][-1]["shares"]
    total = sum(r["shares"].values())  # NaN when no mask of the last step predicted a pixel
    assert np.isnan(total) or abs(total - 1) < 1e-6


def test_lookalikes_are_every_object_of_the_targets_colour_and_shape(tmp_path):
    data = tmp_path / "mevis"
    synthetic.generate(data, "train", 4, 0)
    prompts = sam_selection.PointPrompts(data, "train", 4, 0)
    info = synthetic.load_info(data, "train")
    checked = 0
    for name in prompts.videos:
        _, masks, _ = synthetic.load_object_masks(data, "train", name, info)
        objs = list(info["videos"][name]["objects"].values())
        t = masks.shape[1] // 2
        for o, obj in enumerate(objs):
            sample = prompts.sample(name, t, o)
            frame, target, union, lookalikes, attrs, same_colour, same_shape, attributes = sample
            same = [(q["color"], q["shape"]) == (obj["color"], obj["shape"]) for q in objs]
            colour_only = [q["color"] == obj["color"] and q["shape"] != obj["shape"] for q in objs]
            shape_only = [q["shape"] == obj["shape"] and q["color"] != obj["color"] for q in objs]
            np.testing.assert_array_equal(lookalikes, masks[np.flatnonzero(same), t].any(axis=0))
            np.testing.assert_array_equal(same_colour, masks[np.flatnonzero(colour_only), t].any(axis=0))
            np.testing.assert_array_equal(same_shape, masks[np.flatnonzero(shape_only), t].any(axis=0))
            np.testing.assert_array_equal(target, masks[o, t])
            np.testing.assert_array_equal(union, masks[:, t].any(axis=0))
            colour, shape = list(synthetic.COLORS).index(obj["color"]), synthetic.SHAPES.index(obj["shape"])
            assert attrs.tolist() == [colour, shape]
            assert masks[:, t].sum(0).max() <= 1  # visible masks are disjoint: one attribute pair per pixel
            assert (attributes[:, masks[o, t]] == np.array([[colour + 1], [shape + 1]])).all()
            np.testing.assert_array_equal(attributes[:, ~union], 0)
            checked += sum(same) > 1
    assert checked > 0  # a target with a lookalike was among them, so the union above was not just the target
    frames, targets, unions, lookalikes, attrs, same_colour, same_shape, attributes = prompts.batch(5)
    assert frames.shape == (5, 128, 128, 3) and attrs.shape == (5, 2) and attributes.shape == (5, 2, 128, 128)
    assert (lookalikes >= targets).all() and (unions >= lookalikes).all()
    assert (unions >= same_colour).all() and (unions >= same_shape).all()


def test_pixel_shares_count_each_pixel_once_in_the_first_region_that_covers_it():
    z = np.zeros((2, 4, 10), bool)
    target, look, colour, shape, union = (z.copy() for _ in range(5))
    target[0, 0, :2] = look[0, 0, :4] = True  # a lookalike region that includes the target: 2 pixels more
    colour[0, 1, :3] = shape[0, 2, :1] = True
    union[0] = target[0] | look[0] | colour[0] | shape[0]
    union[0, 3, :2] = True  # another object
    pred = z.copy()
    pred[0, :, :] = True  # 40 pixels: 2 target, 2 lookalike, 3 colour, 1 shape, 2 other, 30 background
    shares = sam_selection.pixel_shares(pred, target, look, colour, shape, union)
    assert shares.shape == (1, len(sam_selection.SHARES))  # the second mask predicts nothing: dropped
    np.testing.assert_allclose(shares[0], np.array([2, 2, 3, 1, 2, 30]) / 40)


def test_saved_sam2_warm_starts_a_world_model_run(tmp_path):
    """`--prompt appearance --save DIR` then `model.sam2_from=DIR`: the run's SAM2 is the benchmark's,
    everything else random; a model directory of another SAM2 architecture is refused naming the directory."""
    import dataclasses

    import pytest
    from flax import nnx

    from configs import synthetic as synthetic_config
    from glus_jax.config import ConfigError
    from glus_jax.models import glus as glus_lib
    from glus_jax.models import io
    from glus_jax.train import loop

    data = tmp_path / "mevis"
    synthetic.generate(data, "train", 2, 0)
    saved = tmp_path / "sam"
    argv = ["--data", str(data), "--videos", "2", "--steps", "1", "--batch", "2", "--log-every", "1",
            "--prompt", "appearance", "--out", str(tmp_path / "out"), "--save", str(saved)]
    assert sam_selection.main(argv) == 0
    r = json.loads((tmp_path / "out" / "sam_selection.json").read_text())
    assert r["settings"]["prompt"] == "appearance"
    assert r["references"]["all_objects"] <= r["references"]["lookalikes"] <= 1

    def params(module):
        return {k: np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(module, nnx.Param))}

    cfg = synthetic_config.get_config()
    cfg.model.sam2_from = ""  # the config's own pretrained SAM2 is not in a clean clone
    random_model = loop.build_model(cfg)[0]
    cfg.model.sam2_from = str(saved)
    model, _, source = loop.build_model(cfg)
    saved_model, saved_tokenizer, _ = io.load_model(saved)
    want = params(saved_model.visual_model)
    got, fresh = params(model.visual_model), params(random_model.visual_model)
    assert source["sam2_from"] == str(saved)
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    assert any(not np.array_equal(fresh[k], want[k]) for k in want)  # the load changed something
    for k, v in params(random_model.llava).items():  # the LLM is the same random init either way
        np.testing.assert_array_equal(params(model.llava)[k], v, err_msg=k)

    # Another SAM2 architecture (its object-pointer projection an MLP instead of a Linear) is refused.
    base = glus_lib.synthetic_world()
    flipped = not base.sam2.use_mlp_for_obj_ptr_proj
    other_cfg = dataclasses.replace(base, sam2=dataclasses.replace(base.sam2, use_mlp_for_obj_ptr_proj=flipped))
    other = tmp_path / "other"
    io.save_model(other, glus_lib.GLUS(other_cfg, rngs=nnx.Rngs(0)), saved_tokenizer)
    cfg.model.sam2_from = str(other)
    with pytest.raises(ConfigError, match=f"{other}.*another architecture.*obj_ptr_proj"):
        loop.build_model(cfg)


def test_attribute_spread_separates_what_the_features_carry():
    rng = np.random.default_rng(0)
    n, h, w, c = 40, 4, 4, 8
    attributes = np.zeros((n, 2, 16, 16), np.int32)
    grid = np.stack([rng.integers(0, 4, (n, h, w)), rng.integers(1, 4, (n, h, w))], 1)  # colour 0: background
    attributes[:] = np.repeat(np.repeat(grid, 4, axis=2), 4, axis=3)  # each 4 x 4 cell one attribute pair
    colour_vectors, shape_vectors = rng.normal(size=(4, c)), rng.normal(size=(4, c))
    noise = 0.01 * rng.normal(size=(n, h, w, c))
    features = colour_vectors[grid[:, 0]] + 0.1 * shape_vectors[grid[:, 1]] + noise
    spread = sam_selection.attribute_spread(features, attributes)
    assert spread["cells"] == int((grid[:, 0] > 0).sum())
    assert spread["colour"] > 5 * spread["shape"] > 5 * 2 * spread["shape_shuffled"]
    # Colour alone: the shape spread is what shuffling gives.
    spread = sam_selection.attribute_spread(colour_vectors[grid[:, 0]] + noise, attributes)
    assert spread["shape"] < 3 * spread["shape_shuffled"] + 1e-3


def test_oracle_features_read_each_cells_attributes():
    oracle = sam_selection.OracleFeatures([(2, 3), (4, 5)], 0.5, nnx.Rngs(0))
    attributes = np.zeros((1, 2, 8, 8), np.int32)
    attributes[0, :, :4, :4] = [[[2]], [[3]]]  # the top-left quarter: colour index 1, shape index 2
    embedding, (high_res,) = oracle(jnp.asarray(attributes))
    assert embedding.shape == (1, 2, 2, 3) and high_res.shape == (1, 4, 4, 5)
    colour, shape = oracle.colour[0][...], oracle.shape[0][...]
    np.testing.assert_allclose(embedding[0, 0, 0], colour[2] + 0.5 * shape[3], rtol=1e-6)
    np.testing.assert_allclose(embedding[0, 1, 1], colour[0] + 0.5 * shape[0], rtol=1e-6)
    colour, shape = oracle.colour[1][...], oracle.shape[1][...]
    np.testing.assert_allclose(high_res[0, 1, 1], colour[2] + 0.5 * shape[3], rtol=1e-6)
    np.testing.assert_allclose(high_res[0, 2, 1], colour[0] + 0.5 * shape[0], rtol=1e-6)


def test_oracle_features_end_to_end_report_a_weak_shape(tmp_path):
    data = tmp_path / "mevis"
    synthetic.generate(data, "train", 2, 0)
    out = tmp_path / "out"
    argv = ["--data", str(data), "--videos", "2", "--steps", "2", "--batch", "4", "--log-every", "1",
            "--prompt", "appearance", "--image-features", "oracle", "--oracle-shape-scale", "0.2",
            "--out", str(out)]
    assert sam_selection.main(argv) == 0
    spread = json.loads((out / "sam_selection.json").read_text())["spread"]
    # Two steps hardly move the vectors: the embedding's shape part stays ~0.2 of its colour part.
    assert 0.05 < spread["shape"] / spread["colour"] < 0.5
    assert spread["shape_shuffled"] < spread["shape"]
