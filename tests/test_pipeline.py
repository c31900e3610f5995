"""The grain training pipeline on small generated MeViS + Ref-YouTube-VOS datasets: static shapes, exact
content (conversations, GT masks, keys, pixels), determinism, state restore, process sharding, workers,
padding, errors; and the numpy SAM2 preprocessing against torch and the jnp transform."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from glus_jax.data import conversation as conv
from glus_jax.data import formats, image_ops, pipeline, rle
from glus_jax.data.pipeline import FileSource, PipelineConfig
from glus_jax.data.tokenizer import GLUSTokenizer
from tests.conftest import GOLDEN

# ----------------------------------------------------------------------------------------- test data
# (video, frame sizes (H, W), number of frames, expressions: (text, obj_ids)); odd sizes, one portrait.
MEVIS = {
    "va": (
        (21, 30),
        7,
        [
            ("the red box.", (1,)),
            ("both boxes", (1, 2)),
            ("the other box..", (2,)),
            ("a box", (1,)),
            ("Some Box  ", (2,)),
        ],
    ),
    "vb": ((17, 25), 5, [("the blue one", (3,)), ("blue", (3,))]),
    "vc": ((20, 20), 3, [("too short", (1,))]),  # fewer frames than needed: never drawn
    "vd": ((26, 19), 4, [("tall", (4,))]),
}
YTVOS = {
    "ya": ((19, 23), 6, [("a duck", (1,)), ("the duck behind", (2,))]),
}
SIZES = {**{k: v[0] for k, v in MEVIS.items()}, **{k: v[0] for k, v in YTVOS.items()}}


def _frame_names(n):
    return [f"{i * 5:05d}" for i in range(n)]


def _obj_mask(obj, frame, hw):
    """A box per (object, frame); objects 1 and 2 overlap (so 'both boxes' sums to 2 there)."""
    h, w = hw
    m = np.zeros(hw, np.uint8)
    top, left = (obj * 3 + frame) % (h // 2), (obj * 5 + 2 * frame) % (w // 2)
    m[top : top + h // 2, left : left + w // 2] = 1
    return m


def _jpeg(path, hw, seed):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
    Image.fromarray(img).save(path, quality=90)


def write_datasets(root):
    """A MeViS train split (RLE masks, json frame lists unsorted for 'vb', one null RLE) and a
    Ref-YouTube-VOS train split (palette PNGs) under ``root`` (GLUS's --dataset_dir layout)."""
    d = os.path.join(root, "mevis", "train")
    meta, mask_dict, anno = {"videos": {}}, {}, 100
    for vi, (vid, (hw, n, exps)) in enumerate(MEVIS.items()):
        frames = _frame_names(n)
        listed = frames[::-1] if vid == "vb" else frames
        expressions = {}
        for ei, (text, objs) in enumerate(exps):
            annos = []
            for o in objs:
                anno += 1
                annos.append(anno)
                mask_dict[str(anno)] = [
                    None
                    if (vid, o, f) == ("va", 1, frames[2])
                    else rle.encode(_obj_mask(o, frames.index(f), hw))
                    for f in listed
                ]
            expressions[str(ei)] = {"exp": text, "obj_id": [str(o) for o in objs], "anno_id": annos}
        meta["videos"][vid] = {"frames": listed, "expressions": expressions}
        for fi, f in enumerate(frames):
            _jpeg(os.path.join(d, "JPEGImages", vid, f + ".jpg"), hw, seed=100 * vi + fi)
    with open(os.path.join(d, "meta_expressions.json"), "w") as f:
        json.dump(meta, f)
    with open(os.path.join(d, "mask_dict.json"), "w") as f:
        json.dump(mask_dict, f)

    y = os.path.join(root, "Refer-YouTube-VOS")
    meta = {"videos": {}}
    for vi, (vid, (hw, n, exps)) in enumerate(YTVOS.items()):
        frames = _frame_names(n)
        meta["videos"][vid] = {
            "frames": frames,
            "expressions": {str(i): {"exp": t, "obj_id": str(o[0])} for i, (t, o) in enumerate(exps)},
        }
        for fi, f in enumerate(frames):
            _jpeg(os.path.join(y, "train", "JPEGImages", vid, f + ".jpg"), hw, seed=1000 + fi)
            ids = np.zeros(hw, np.uint8)
            for o in (1, 2):
                ids[_obj_mask(o, fi, hw) == 1] = o
            path = os.path.join(y, "train", "Annotations", vid, f + ".png")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            im = Image.fromarray(ids, mode="P")
            im.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
            im.save(path)
    os.makedirs(os.path.join(y, "meta_expressions", "train"), exist_ok=True)
    with open(os.path.join(y, "meta_expressions", "train", "meta_expressions.json"), "w") as f:
        json.dump(meta, f)
    return root


CFG = PipelineConfig(batch_size=2, max_seq_len=256, image_size=32, max_mask_size=(27, 31), seed=7)
RATES = (2, 1)


@pytest.fixture(scope="module")
def tok():
    return GLUSTokenizer.from_dir(GOLDEN / "tok_glus_tiny")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_datasets(str(tmp_path_factory.mktemp("refvos")))


def file_sources(root):
    return [FileSource("mevis", root), FileSource("refyoutube_vos", root)]


def take(it, n):
    return [next(it) for _ in range(n)]


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert sorted(x) == sorted(y)
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


# ----------------------------------------------------------------------------------------- SAM2 pixels


@pytest.mark.parametrize("hw", [(37, 53), (19, 23), (50, 20), (7, 64)])
def test_sam_preprocess_matches_torch_and_jnp(hw):
    import torch
    import torch.nn.functional as F

    from glus_jax.models.sam2.transforms import preprocess

    s = 32  # (37, 53): down, (19, 23): up, (50, 20) and (7, 64): one axis each way
    img = np.random.default_rng(hw[0]).integers(0, 256, (*hw, 3), dtype=np.uint8)
    ours = image_ops.sam_preprocess([img], s)
    assert ours.shape == (1, s, s, 3) and ours.dtype == np.float32
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    ref = F.interpolate(x, (s, s), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(image_ops.IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(image_ops.IMAGENET_STD)[:, None, None]
    ref = ((ref - mean) / std)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(ours[0], ref, atol=1e-5, rtol=0)
    np.testing.assert_allclose(ours, np.asarray(preprocess(img[None], s)), atol=1e-5, rtol=0)


def test_decode_errors_name_the_frame(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(image_ops.ImageDecodeError, match="broken.jpg"):
        image_ops.decode_image(str(bad), "video 'v', frame '0'")
    with pytest.raises(image_ops.ImageDecodeError, match="video 'v'"):
        image_ops.decode_image(b"junk", "video 'v', frame '0'")


# ----------------------------------------------------------------------------------------- batches


def _expected_example(builder, index, tok):
    """The example of global sample ``index``, recomputed from its parts outside the pipeline."""
    sample = builder.sample(index)
    plan = sample.plan
    source = builder.sources[plan.dataset_index]
    video = source.dataset.videos[plan.video_index]
    n = len(plan.expression_indices)
    convs = [
        conv.training_conversation(
            video.expressions[e].text,
            plan.question_templates[i],
            plan.answer_templates[i],
            int(plan.context_templates[i]),
        )
        for i, e in enumerate(plan.expression_indices)
    ]
    text = conv.collate_conversations(tok, convs, CFG.max_seq_len)
    frames = [np.asarray(Image.open(video.frame_paths[f]).convert("RGB")) for f in plan.frame_indices]
    gt = np.stack(
        [[video.expression_mask(e, f) for f in sample.query_indices] for e in plan.expression_indices]
    )
    return sample, video, n, text, frames, gt


def test_batch_shapes_and_content(root, tok):
    ds = pipeline.make_dataset(file_sources(root), RATES, tok, CFG, num_batches=6)
    batches = list(ds)
    assert len(batches) == 6
    e, q, t, (hm, wm) = CFG.max_expressions, CFG.question_frames, CFG.max_seq_len, CFG.max_mask_size
    shapes = {
        "clip_pixels": ((2, 8, 224, 224, 3), np.float32),
        "sam_pixels": ((2, q, 32, 32, 3), np.float32),
        "input_ids": ((2, e, t), np.int32),
        "labels": ((2, e, t), np.int32),
        "attention_mask": ((2, e, t), np.bool_),
        "exp_valid": ((2, e), np.bool_),
        "gt_masks": ((2, e, q, hm, wm), np.uint8),
        "orig_size": ((2, 2), np.int32),
        "seg_keys": ((2, e, q, 5), np.int32),
        "expression_ids": ((2, e, pipeline.MAX_EXPRESSION_TOKENS), np.int32),
        "dataset_id": ((2,), np.int32),
        "sample_index": ((2,), np.int32),
    }
    assert sorted(shapes) == sorted(pipeline.BATCH_KEYS)
    builder = pipeline.ExampleBuilder(file_sources(root), RATES, tok, CFG)
    seen_padding = seen_two = False
    seen_videos, seen_datasets = set(), set()
    from glus_jax.models.clip import clip_preprocess

    for k, batch in enumerate(batches):
        assert sorted(batch) == sorted(shapes)
        for key, (shape, dtype) in shapes.items():
            assert batch[key].shape == shape and batch[key].dtype == dtype, (key, batch[key].shape)
        np.testing.assert_array_equal(batch["sample_index"], [2 * k, 2 * k + 1])
        for b in range(2):
            sample, video, n, text, frames, gt = _expected_example(builder, 2 * k + b, tok)
            seen_videos.add(video.name)
            seen_datasets.add(sample.plan.dataset_index)
            assert batch["dataset_id"][b] == sample.plan.dataset_index
            np.testing.assert_array_equal(batch["exp_valid"][b], np.arange(e) < n)
            # conversations: exactly the builder's ids/labels for the drawn templates
            np.testing.assert_array_equal(batch["input_ids"][b, :n], text["input_ids"])
            np.testing.assert_array_equal(batch["labels"][b, :n], text["labels"])
            np.testing.assert_array_equal(batch["attention_mask"][b, :n], text["attention_mask"])
            # GT at the original size, equal to Video.expression_mask, zero around it
            h, w = SIZES[video.name]
            np.testing.assert_array_equal(batch["orig_size"][b], [h, w])
            np.testing.assert_array_equal(batch["gt_masks"][b, :n, :, :h, :w], gt)
            assert not batch["gt_masks"][b, :, :, h:].any() and not batch["gt_masks"][b, :, :, :, w:].any()
            seen_two |= bool((gt == 2).any())
            np.testing.assert_array_equal(batch["seg_keys"][b, :n], sample.seg_token_keys())
            for i, e_idx in enumerate(sample.plan.expression_indices):  # the question's spelling, -1 after
                want = tok.encode(video.expressions[e_idx].text.removesuffix(".").strip().lower(), False)
                got = batch["expression_ids"][b, i]
                np.testing.assert_array_equal(got[: len(want)], want)
                assert (got[len(want) :] == -1).all() and want
            # padding rows are inert
            if n < e:
                seen_padding = True
                assert (batch["input_ids"][b, n:] == 0).all() and (batch["labels"][b, n:] == -100).all()
                assert not batch["attention_mask"][b, n:].any() and not batch["gt_masks"][b, n:].any()
                assert not batch["seg_keys"][b, n:].any() and (batch["expression_ids"][b, n:] == -1).all()
            # pixels: CLIP of context + query frames, SAM2 of the query frames
            np.testing.assert_array_equal(batch["clip_pixels"][b], clip_preprocess(frames))
            np.testing.assert_array_equal(batch["sam_pixels"][b], image_ops.sam_preprocess(frames[4:], 32))
    assert seen_padding and seen_two and seen_datasets == {0, 1}
    assert "vc" not in seen_videos and len(seen_videos) >= 3


def test_double_period_expression_is_stripped_once(tok):
    # The reference strips one '.' (sampled_classes), training_conversation must not strip a second.
    c = conv.training_conversation("the other box..", [0], [0])
    assert "the other box." in c
    assert "the other box. in this frame" in c


def test_deterministic_and_state_restore(root, tok):
    it = pipeline.make_iterator(file_sources(root), RATES, tok, CFG)
    first = take(it, 3)
    state = it.get_state()
    assert state == {"next_batch": 3}
    after = take(it, 3)
    fresh = pipeline.make_iterator(file_sources(root), RATES, tok, CFG)
    fresh.set_state(state)
    assert_batches_equal(take(fresh, 3), after)
    # rewinding restarts the pipeline there; a new run with the same seed reproduces the stream
    fresh.set_state({"next_batch": 1})
    assert_batches_equal(take(fresh, 2), first[1:])
    assert_batches_equal(take(pipeline.make_iterator(file_sources(root), RATES, tok, CFG), 3), first)
    # the plain grain dataset (grain's own iterator and state) gives the same stream
    ds_it = iter(pipeline.make_dataset(file_sources(root), RATES, tok, CFG, start_batch=2))
    assert_batches_equal(take(ds_it, 4), first[2:] + after)
    seed8 = PipelineConfig(**{**CFG.__dict__, "seed": 8})
    other = take(pipeline.make_iterator(file_sources(root), RATES, tok, seed8), 1)[0]
    assert not all(np.array_equal(other[k], first[0][k]) for k in ("input_ids", "clip_pixels"))


def test_grain_checkpoint_handler_round_trip(root, tok, tmp_path):
    import grain
    from etils import epath

    it = pipeline.make_iterator(file_sources(root), RATES, tok, CFG)
    take(it, 2)
    grain.checkpoint.CheckpointHandler().save(epath.Path(tmp_path), it)
    want = take(it, 1)
    fresh = pipeline.make_iterator(file_sources(root), RATES, tok, CFG)
    grain.checkpoint.CheckpointHandler().restore(epath.Path(tmp_path), fresh)
    assert fresh.get_state() == {"next_batch": 2}
    assert_batches_equal(take(fresh, 1), want)


def test_processes_get_disjoint_streams(root, tok):
    its = [
        iter(pipeline.make_dataset(file_sources(root), RATES, tok, CFG, process_index=p, process_count=2))
        for p in range(2)
    ]
    batches = [take(it, 3) for it in its]
    idx = [np.concatenate([b["sample_index"] for b in bs]) for bs in batches]
    assert set(idx[0].tolist()).isdisjoint(idx[1].tolist())
    # step k of the two processes together = global samples [4k, 4k + 4)
    for k in range(3):
        np.testing.assert_array_equal(
            np.concatenate([batches[0][k]["sample_index"], batches[1][k]["sample_index"]]),
            np.arange(4 * k, 4 * k + 4),
        )
    # process 1's content is sample (2k+1)*2+b of the single-process pipeline's stream
    single = pipeline.ExampleBuilder(file_sources(root), RATES, tok, CFG)
    ex = single(int(batches[1][2]["sample_index"][1]))
    for key in pipeline.BATCH_KEYS:
        np.testing.assert_array_equal(batches[1][2][key][1], ex[key], err_msg=key)


def test_workers_give_identical_batches(root, tok):
    cfg2 = PipelineConfig(**{**CFG.__dict__, "num_workers": 2})
    it0 = pipeline.make_iterator(file_sources(root), RATES, tok, CFG)
    b0 = take(it0, 3)
    state0 = it0.get_state()
    b0 += take(it0, 2)
    it = pipeline.make_iterator(file_sources(root), RATES, tok, cfg2)
    try:
        b2 = take(it, 2)
        state2 = it.get_state()
        b2 += take(it, 1)
        assert_batches_equal(b2, b0[:3])
        # a state saved with 0 workers restores into 2 workers, and the reverse
        it.set_state(state0)
        assert_batches_equal(take(it, 2), b0[3:])
    finally:
        it.close()
    it0.set_state(state2)
    assert_batches_equal(take(it0, 3), b0[2:])


def test_make_train_iterator_from_config(root, tok):
    from configs.tiny import get_config

    c = get_config()
    c.data.root = root
    c.data.datasets = ("mevis", "refyoutube_vos")
    c.data.sample_rates = RATES
    c.data.seed = 7
    c.data.image_size = 32
    c.data.max_mask_size = (27, 31)
    it = pipeline.make_train_iterator(c, tok, process_index=0, process_count=1, batch_size=2)
    got = take(it, 2)
    assert_batches_equal(got, take(iter(pipeline.make_dataset(file_sources(root), RATES, tok, CFG)), 2))


# ----------------------------------------------------------------------------------------- errors


def test_malformed_dataset_file_fails_with_its_name(tmp_path, tok):
    root = write_datasets(str(tmp_path))
    meta = os.path.join(root, "mevis", "train", "meta_expressions.json")
    with open(meta, "w") as f:
        f.write("{not json")
    with pytest.raises(formats.DataFormatError, match="meta_expressions.json"):
        pipeline.make_dataset(file_sources(root), RATES, tok, CFG)


def test_corrupt_frame_fails_with_its_name(tmp_path, tok):
    root = write_datasets(str(tmp_path))
    for f in _frame_names(6):  # every frame of the only Ref-YTVOS video: header intact, data truncated
        path = os.path.join(root, "Refer-YouTube-VOS", "train", "JPEGImages", "ya", f + ".jpg")
        with open(path, "rb") as fh:
            data = fh.read()
        with open(path, "wb") as fh:
            fh.write(data[: data.index(b"\xff\xda") + 20])  # cut inside the entropy-coded data
    it = iter(pipeline.make_dataset(file_sources(root), (0, 1), tok, CFG))
    with pytest.raises(image_ops.ImageDecodeError, match=r"ya/\d+\.jpg: cannot decode frame of video 'ya'"):
        next(it)


def test_frames_larger_than_max_mask_size_fail_naming_the_video(root, tok):
    small = PipelineConfig(**{**CFG.__dict__, "max_mask_size": (26, 29)})  # va is 21 x 30, the rest fit
    builder = pipeline.ExampleBuilder([FileSource("mevis", root)], (1,), tok, small)
    with pytest.raises(ValueError, match="video 'va'.*21x30.*max_mask_size"):
        for i in range(40):
            builder(i)


def test_config_errors(root, tok):
    with pytest.raises(ValueError, match="context_frames"):
        PipelineConfig(context_frames=3)
    short = PipelineConfig(**{**CFG.__dict__, "max_seq_len": 64})
    with pytest.raises(ValueError, match="max_seq_len"):
        pipeline.ExampleBuilder(file_sources(root), RATES, tok, short)(0)
    with pytest.raises(ValueError, match="unknown dataset"):
        FileSource("coco", root)
