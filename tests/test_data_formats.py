"""Dataset readers on small datasets written here in the real on-disk formats, RLE against pycocotools,
clear errors on malformed files, and the oracle's MeViS-layout video (tests/golden/data_video)."""

import json
import os

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask

from glus_jax.data import formats, rle
from glus_jax.data.sampling import gt_masks
from tests.conftest import GOLDEN

H, W = 13, 17  # odd sizes catch transposes


# ----------------------------------------------------------------------------- writers of real layouts


def _jpeg(path, h=H, w=W, seed=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    Image.fromarray(img).save(path, quality=90)


def _obj_mask(anno, frame, h=H, w=W):
    """A deterministic mask per (object, frame): a box whose corner moves with the frame."""
    m = np.zeros((h, w), np.uint8)
    r, c = (anno + frame) % (h - 4), (anno * 2 + frame) % (w - 5)
    m[r : r + 4, c : c + 5] = 1
    return m


def _coco(m):
    r = coco_mask.encode(np.asfortranarray(m))
    return {"size": [int(s) for s in r["size"]], "counts": r["counts"].decode()}


VIDEOS = {
    # name: (frame names, {exp_id: (text, obj_ids, anno_ids)}, absent (anno, frame) pairs)
    "vA": (
        [f"{i:05d}" for i in range(6)],
        {"0": ("a cat.", [1], [10]), "1": ("two cats", [1, 2], [10, 11]), "2": ("the dog", [3], [12])},
        {(12, 2)},
    ),
    "vB": (
        [f"{i:05d}" for i in range(5)],
        {"0": ("a bird", [1], [20]), "7": ("the bird.", [1], [20])},
        set(),
    ),
    "vShort": (["00000", "00001", "00002"], {"0": ("x", [1], [30])}, set()),
}


def write_rle_dataset(meta_path, mask_path, image_root, videos=VIDEOS, frames_order=None):
    meta = {"videos": {}}
    mask_dict = {}
    for vid, (frames, exps, absent) in videos.items():
        listed = frames if frames_order is None else [frames[i] for i in frames_order]
        meta["videos"][vid] = {
            "frames": listed,
            "expressions": {
                k: {"exp": t, "obj_id": [str(o) for o in objs], "anno_id": annos}
                for k, (t, objs, annos) in exps.items()
            },
        }
        for _, _, annos in exps.values():
            for a in annos:
                # mask_dict lists follow the json "frames" order
                mask_dict[str(a)] = [
                    None if (a, frames.index(f)) in absent else _coco(_obj_mask(a, frames.index(f)))
                    for f in listed
                ]
        for i, f in enumerate(frames):
            _jpeg(os.path.join(image_root, vid, f + ".jpg"), seed=i)
    os.makedirs(os.path.dirname(meta_path), exist_ok=True)
    os.makedirs(os.path.dirname(mask_path), exist_ok=True)
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    with open(mask_path, "w") as f:
        json.dump(mask_dict, f)


def write_mevis(root, **kw):
    d = os.path.join(root, "train")
    write_rle_dataset(
        os.path.join(d, "meta_expressions.json"),
        os.path.join(d, "mask_dict.json"),
        os.path.join(d, "JPEGImages"),
        **kw,
    )


def _palette_png(path, ids):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    im = Image.fromarray(ids.astype(np.uint8), mode="P")
    im.putpalette([v for i in range(256) for v in ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256)])
    im.save(path)


def _palette_ids(frame, h=H, w=W):
    """Object ids per pixel: objects 1 and 2 as boxes (2 drawn over 1), 0 elsewhere."""
    ids = np.zeros((h, w), np.uint8)
    ids[_obj_mask(1, frame, h, w) == 1] = 1
    ids[_obj_mask(2, frame, h, w) == 1] = 2
    return ids


def write_palette_dataset(root, split="train", nframes=5):
    meta = {
        "videos": {
            "yv": {
                "frames": [f"{i:05d}" for i in range(nframes)][::-1],  # unsorted in the json
                "expressions": {
                    "0": {"exp": "a duck", "obj_id": "1"},
                    "1": {"exp": "the other duck", "obj_id": "2"},
                },
            }
        }
    }
    p = os.path.join(root, "meta_expressions", split, "meta_expressions.json")
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "w") as f:
        json.dump(meta, f)
    for i in range(nframes):
        _jpeg(os.path.join(root, split, "JPEGImages", "yv", f"{i:05d}.jpg"), seed=i)
        _palette_png(os.path.join(root, split, "Annotations", "yv", f"{i:05d}.png"), _palette_ids(i))


# ----------------------------------------------------------------------------- RLE


@pytest.mark.parametrize("shape", [(13, 17), (1, 1), (7, 3), (40, 29)])
def test_rle_matches_pycocotools(shape):
    rng = np.random.default_rng(shape[0] * 100 + shape[1])
    for density in (0.0, 0.3, 0.9, 1.0):
        m = (rng.random(shape) < density).astype(np.uint8)
        ref = coco_mask.encode(np.asfortranarray(m))
        ours = rle.encode(m)
        assert ours["counts"] == ref["counts"].decode()
        assert ours["size"] == list(shape)
        np.testing.assert_array_equal(rle.decode({"size": list(shape), "counts": ref["counts"].decode()}), m)
        np.testing.assert_array_equal(rle.decode({"size": list(shape), "counts": ref["counts"]}), m)  # bytes
        np.testing.assert_array_equal(coco_mask.decode(rle.encode(m)), m)


def test_rle_uncompressed_counts_and_large_runs():
    m = np.zeros((300, 400), np.uint8)
    m[:, 200:] = 1  # runs of 60000: several varint characters, deltas across runs
    m[5, 3] = 1
    np.testing.assert_array_equal(rle.decode(rle.encode(m)), m)
    assert rle.decode({"size": [2, 3], "counts": [1, 2, 3]}).tolist() == [
        [0, 1, 0],
        [1, 0, 0],
    ]  # column-major runs 0,11,000


def test_rle_errors():
    with pytest.raises(rle.RLEError, match="cover 6 pixels"):
        rle.decode({"size": [2, 4], "counts": [1, 2, 3]})
    with pytest.raises(rle.RLEError, match="invalid character"):
        rle.decode({"size": [2, 4], "counts": "a b"})
    with pytest.raises(rle.RLEError, match="'size' and 'counts'"):
        rle.decode({"counts": "0"})
    with pytest.raises(rle.RLEError, match="ends inside a run"):
        rle.decode({"size": [2, 4], "counts": "o"})  # continuation bit set on the last character


# ----------------------------------------------------------------------------- MeViS (RLE)


def test_mevis_reader(tmp_path):
    write_mevis(str(tmp_path / "mevis"))
    ds = formats.load_mevis(str(tmp_path / "mevis"))
    assert ds.name == "mevis" and ds.split == "train"
    assert [v.name for v in ds.videos] == ["vA", "vB"]  # vShort (3 frames) skipped as in GLUS
    va = ds.videos[0]
    assert va.frame_names == tuple(f"{i:05d}" for i in range(6))
    assert va.frame_paths[4] == str(tmp_path / "mevis" / "train" / "JPEGImages" / "vA" / "00004.jpg")
    assert [e.exp_id for e in va.expressions] == ["0", "1", "2"]
    assert va.expressions[1] == formats.Expression(
        exp_id="1", text="two cats", obj_ids=(1, 2), anno_ids=(10, 11)
    )
    assert va.str_id(2) == "mevis_vA_2"
    assert va.object_set_ids == (0, 1, 2)
    assert ds.videos[1].object_set_ids == (0, 0)  # same object -> same set
    assert va.frame_size(3) == (H, W)
    for f in range(6):
        np.testing.assert_array_equal(va.expression_mask(0, f), _obj_mask(10, f))
        # union as a uint8 sum: overlapping pixels are 2 (quirk Q9)
        np.testing.assert_array_equal(va.expression_mask(1, f), _obj_mask(10, f) + _obj_mask(11, f))
    assert (va.expression_mask(1, 0) == 2).any()
    np.testing.assert_array_equal(va.expression_mask(2, 2), np.zeros((H, W)))  # null entry: not visible
    np.testing.assert_array_equal(va.expression_mask(2, 3), _obj_mask(12, 3))
    assert va.expression_mask(0, 0).dtype == np.uint8


def test_mevis_unsorted_frames(tmp_path):
    """Frames are sorted as in GLUS; masks follow the json order of the per-frame lists."""
    vids = {"vA": VIDEOS["vA"]}
    write_mevis(str(tmp_path / "m"), videos=vids, frames_order=[3, 0, 5, 1, 2, 4])
    v = formats.load_mevis(str(tmp_path / "m")).videos[0]
    assert v.frame_names == tuple(f"{i:05d}" for i in range(6))
    for f in range(6):
        np.testing.assert_array_equal(v.expression_mask(0, f), _obj_mask(10, f))


def test_mevis_valid_split_without_masks(tmp_path):
    d = tmp_path / "mevis" / "valid"
    d.mkdir(parents=True)
    (d / "meta_expressions.json").write_text(
        json.dumps({"videos": {"v": {"frames": ["a", "b", "c", "d"], "expressions": {"0": {"exp": "it"}}}}})
    )
    for f in "abcd":
        _jpeg(str(d / "JPEGImages" / "v" / f"{f}.jpg"))
    ds = formats.load_mevis(str(tmp_path / "mevis"), "valid")
    v = ds.videos[0]
    assert not v.has_masks and v.expressions[0].anno_ids == ()
    with pytest.raises(formats.DataFormatError, match="no ground-truth"):
        v.expression_mask(0, 0)


def _mevis_files(tmp_path):
    root = tmp_path / "mevis"
    write_mevis(str(root))
    d = root / "train"
    return root, d / "meta_expressions.json", d / "mask_dict.json"


def test_mevis_bad_json(tmp_path):
    root, meta, _ = _mevis_files(tmp_path)
    meta.write_text('{"videos": {')
    with pytest.raises(formats.DataFormatError, match=r"meta_expressions\.json: invalid JSON"):
        formats.load_mevis(str(root))


def test_mevis_missing_keys(tmp_path):
    root, meta, _ = _mevis_files(tmp_path)
    m = json.loads(meta.read_text())
    del m["videos"]["vB"]["expressions"]["7"]["exp"]
    meta.write_text(json.dumps(m))
    with pytest.raises(
        formats.DataFormatError, match=r"meta_expressions\.json: video 'vB', expression '7' has no key 'exp'"
    ):
        formats.load_mevis(str(root))
    meta.write_text(json.dumps({"vids": {}}))
    with pytest.raises(formats.DataFormatError, match="top level has no key 'videos'"):
        formats.load_mevis(str(root))


def test_mevis_missing_anno_id(tmp_path):
    root, _, masks = _mevis_files(tmp_path)
    md = json.loads(masks.read_text())
    del md["11"]
    masks.write_text(json.dumps(md))
    with pytest.raises(
        formats.DataFormatError,
        match=r"mask_dict\.json: no entry for anno_id 11 \(video 'vA', expression '1'\)",
    ):
        formats.load_mevis(str(root))
    # strict=False: the reference's silent skip -> only the other object's mask
    v = formats.load_mevis(str(root), strict=False).videos[0]
    np.testing.assert_array_equal(v.expression_mask(1, 2), _obj_mask(10, 2))


def test_mevis_wrong_frame_count(tmp_path):
    root, _, masks = _mevis_files(tmp_path)
    md = json.loads(masks.read_text())
    md["20"] = md["20"][:-1]
    masks.write_text(json.dumps(md))
    with pytest.raises(formats.DataFormatError, match="anno_id 20 has 4 frame entries but video 'vB' has 5"):
        formats.load_mevis(str(root))


def test_mevis_rle_wrong_size_and_corrupt(tmp_path):
    root, _, masks = _mevis_files(tmp_path)
    md = json.loads(masks.read_text())
    md["12"][4] = _coco(np.ones((H + 1, W), np.uint8))
    md["10"][1] = {"size": [H, W], "counts": [5, 3]}
    masks.write_text(json.dumps(md))
    v = formats.load_mevis(str(root)).videos[0]  # RLEs are decoded lazily
    with pytest.raises(
        formats.DataFormatError,
        match=r"anno_id 12, video 'vA', expression '2', frame 4 \('00004'\): RLE size \[14, 17\]",
    ):
        v.expression_mask(2, 4)
    with pytest.raises(
        formats.DataFormatError,
        match=r"mask_dict\.json: anno_id 10, video 'vA', expression '0', frame 1.*cover 8 pixels",
    ):
        v.expression_mask(0, 1)


def test_mevis_missing_frame(tmp_path):
    root, _, _ = _mevis_files(tmp_path)
    os.remove(root / "train" / "JPEGImages" / "vB" / "00003.jpg")
    with pytest.raises(formats.DataFormatError, match=r"vB/00003\.jpg: frame of video 'vB' is missing"):
        formats.load_mevis(str(root))
    v = formats.load_mevis(str(root), check_files=False).videos[1]
    with pytest.raises(formats.DataFormatError, match="cannot read frame 3 of video 'vB'"):
        v.expression_mask(0, 3)


# ----------------------------------------------------------------------------- ReVOS / LV-VIS layouts


def test_revos_and_lvvis_layouts(tmp_path):
    rv = tmp_path / "data" / "ReVOS"
    write_rle_dataset(
        str(rv / "meta_expressions_train_.json"), str(rv / "mask_dict.json"), str(rv / "JPEGImages")
    )
    lv = tmp_path / "data" / "LVVIS"
    write_rle_dataset(
        str(lv / "meta_expressions.json"), str(lv / "mask_dict.json"), str(lv / "train" / "JPEGImages")
    )
    for name in ("revos", "lvvis"):
        ds = formats.load_dataset(name, str(tmp_path / "data"))
        assert ds.name == name and [v.name for v in ds.videos] == ["vA", "vB"]
        v = ds.videos[0]
        assert v.str_id(0) == f"{name}_vA_0"
        np.testing.assert_array_equal(v.expression_mask(1, 5), _obj_mask(10, 5) + _obj_mask(11, 5))
    assert (
        formats.load_dataset("lvvis", str(tmp_path / "data"))
        .videos[0]
        .frame_paths[0]
        .endswith(os.path.join("LVVIS", "train", "JPEGImages", "vA", "00000.jpg"))
    )


# ----------------------------------------------------------------------------- palette PNG layouts


@pytest.mark.parametrize("name,sub", [("refyoutube_vos", "Refer-YouTube-VOS"), ("davis17", "DAVIS17")])
def test_palette_readers(tmp_path, name, sub):
    write_palette_dataset(str(tmp_path / sub))
    ds = formats.load_dataset(name, str(tmp_path))
    v = ds.videos[0]
    assert v.frame_names == tuple(f"{i:05d}" for i in range(5))
    assert v.expressions[0].obj_ids == (1,) and v.expressions[0].anno_ids == (1,)
    assert v.str_id(1) == {"refyoutube_vos": "youtube", "davis17": "davis17"}[name] + "_yv_1"
    for f in range(5):
        ids = _palette_ids(f)
        # the PNG's palette indices are the ids (not its RGB colours)
        np.testing.assert_array_equal(v.expression_mask(0, f), (ids == 1).astype(np.uint8))
        np.testing.assert_array_equal(v.expression_mask(1, f), (ids == 2).astype(np.uint8))
    assert v.expression_mask(1, 0).sum() > 0


def test_palette_missing_annotation(tmp_path):
    root = tmp_path / "Refer-YouTube-VOS"
    write_palette_dataset(str(root))
    os.remove(root / "train" / "Annotations" / "yv" / "00002.png")
    with pytest.raises(formats.DataFormatError, match=r"yv/00002\.png: annotation of video 'yv' is missing"):
        formats.load_refyoutube_vos(str(root))


def test_palette_wrong_size(tmp_path):
    root = tmp_path / "DAVIS17"
    write_palette_dataset(str(root))
    _palette_png(str(root / "train" / "Annotations" / "yv" / "00001.png"), np.zeros((H, W + 2)))
    v = formats.load_davis17(str(root)).videos[0]
    with pytest.raises(formats.DataFormatError, match=r"00001\.png: annotation size \[13, 19\] differs"):
        v.expression_mask(0, 1)


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset 'ytvos'"):
        formats.load_dataset("ytvos", "/nonexistent")


# ----------------------------------------------------------------------------- the oracle's video


def test_oracle_video_gt_masks():
    """Our MeViS reader on the oracle's files (MeViS layout in tests/golden/data_video) gives the GT masks
    the reference's dataset produced for the training-forward batch (train_forward.npz)."""
    ds = formats.load_mevis(str(GOLDEN / "data_video" / "mevis"))
    (v,) = ds.videos
    assert v.length == 10
    golden = np.load(GOLDEN / "data_train_losses.npz")
    # train_forward.json: sampled_str_ids_list [[mevis_v0_0, mevis_v0_1], [mevis_v0_0, mevis_v0_2]]
    for b, exps in enumerate([(0, 1), (0, 2)]):
        assert [v.str_id(e) for e in exps] == [f"mevis_v0_{e}" for e in exps]
        got = gt_masks(v, exps, golden["frame_indices"][b, 4:])
        np.testing.assert_array_equal(got, golden["gt_masks"][b])
    assert v.object_set_ids == (0, 1, 2)
