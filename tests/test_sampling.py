"""Training-sample drawing: hand-computed frames/masks on small on-disk datasets, distribution checks
against the reference's draws (a transcription of ReferVideoSegDataset.__getitem__'s random calls), and
the oracle batch's GT masks."""

import pickle
import random
from collections import Counter
from itertools import permutations

import numpy as np
import pytest

from glus_jax.data import formats, sampling
from glus_jax.data.sampling import SamplePlan, SamplingConfig
from tests.conftest import GOLDEN
from tests.test_data_formats import (
    _obj_mask,
    _palette_ids,
    write_mevis,
    write_palette_dataset,
    write_rle_dataset,
)

CFG = SamplingConfig()


def _assert_uniform(counts: Counter, support, n, sigmas=5.0):
    """Each value of ``support`` has frequency 1/|support| within ``sigmas`` binomial std devs."""
    assert set(counts) <= set(support), set(counts) - set(support)
    p = 1.0 / len(support)
    sd = np.sqrt(n * p * (1 - p))
    for v in support:
        assert abs(counts[v] - n * p) <= sigmas * sd, (v, counts[v], n * p)


# ----------------------------------------------------------------------------- frames


def test_context_segments_hand():
    assert sampling.context_segments(10, 4).tolist() == [0, 2, 5, 7, 10]
    assert sampling.context_segments(4, 4).tolist() == [0, 1, 2, 3, 4]
    assert sampling.context_segments(5, 4).tolist() == [0, 1, 2, 3, 5]
    assert sampling.context_segments(73, 4).tolist() == [0, 18, 36, 54, 73]


def test_draw_frames_hand():
    rng = np.random.default_rng(0)
    for _ in range(20):  # 4 frames: every choice is forced
        assert sampling.draw_frames(rng, 4, CFG).tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    seen = Counter(tuple(sampling.draw_frames(rng, 5, CFG).tolist()) for _ in range(400))
    # context 0,1,2 then 3 or 4; query start 0 or 1
    assert set(seen) == {(0, 1, 2, c, s, s + 1, s + 2, s + 3) for c in (3, 4) for s in (0, 1)}
    with pytest.raises(ValueError, match="shorter"):
        sampling.draw_frames(rng, 3, CFG)


def _reference_frames(length, r_py, r_np, ctx=4, q=4):
    """The reference's draws (refer_video_seg_dataset.py), with its two generators."""
    start = r_py.randint(0, length - q)
    query = list(range(start, start + q))
    b = np.linspace(0, length, ctx + 1, dtype=int)
    context = [r_np.choice(range(b[i], b[i + 1])) for i in range(ctx)]
    return context + query


def test_frame_distribution_matches_reference():
    length, n = 11, 8000
    rng = np.random.default_rng(1)
    ours = np.stack([sampling.draw_frames(rng, length, CFG) for _ in range(n)])
    r_py, r_np = random.Random(2), np.random.RandomState(3)
    ref = np.array([_reference_frames(length, r_py, r_np) for _ in range(n)])
    b = sampling.context_segments(length, 4)
    for i in range(4):  # every context frame in its segment, uniform there
        assert ((ours[:, i] >= b[i]) & (ours[:, i] < b[i + 1])).all()
        _assert_uniform(Counter(ours[:, i].tolist()), range(b[i], b[i + 1]), n)
    assert (np.diff(ours[:, 4:], axis=1) == 1).all()  # consecutive query frames
    _assert_uniform(Counter(ours[:, 4].tolist()), range(length - 3), n)
    # Same marginals as the reference's draws: total variation per position < 0.03.
    for k in range(8):
        po = np.bincount(ours[:, k], minlength=length) / n
        pr = np.bincount(ref[:, k], minlength=length) / n
        assert 0.5 * np.abs(po - pr).sum() < 0.03, k


# ----------------------------------------------------------------------------- expressions / templates


def test_draw_expressions():
    rng = np.random.default_rng(0)
    assert sampling.draw_expressions(rng, 2, 3) == (0, 1)  # fewer than 3: all, in order
    assert sampling.draw_expressions(rng, 1, 3) == (0,)
    assert sorted(sampling.draw_expressions(rng, 3, 3)) == [0, 1, 2]
    n = 6000
    counts = Counter(sampling.draw_expressions(rng, 5, 3) for _ in range(n))
    _assert_uniform(counts, list(permutations(range(5), 3)), n)  # uniform ordered subsets, no repeats


def _tiny_datasets(tmp_path):
    write_mevis(str(tmp_path / "mevis"))
    write_palette_dataset(str(tmp_path / "Refer-YouTube-VOS"))
    return [
        formats.load_dataset("mevis", str(tmp_path)),
        formats.load_dataset("refyoutube_vos", str(tmp_path)),
    ]


def test_plan_distribution(tmp_path):
    datasets = _tiny_datasets(tmp_path)
    rng = np.random.default_rng(5)
    n = 6000
    plans = [sampling.draw_plan(rng, datasets, [1, 3]) for _ in range(n)]
    ds_counts = Counter(p.dataset_index for p in plans)
    assert abs(ds_counts[0] / n - 0.25) < 5 * np.sqrt(0.25 * 0.75 / n)
    mevis = [p for p in plans if p.dataset_index == 0]
    _assert_uniform(Counter(p.video_index for p in mevis), [0, 1], len(mevis))
    for p in plans:
        v = datasets[p.dataset_index].videos[p.video_index]
        ne = len(v.expressions)
        assert len(p.expression_indices) == min(ne, 3) and len(set(p.expression_indices)) == len(
            p.expression_indices
        )
        assert p.question_templates.shape == p.answer_templates.shape == (len(p.expression_indices), 4)
        assert p.context_templates.tolist() == [0] * len(p.expression_indices)
    q = np.concatenate([p.question_templates.ravel() for p in plans])
    a = np.concatenate([p.answer_templates.ravel() for p in plans])
    _assert_uniform(Counter(q.tolist()), range(4), q.size)
    _assert_uniform(Counter(a.tolist()), range(5), a.size)
    # vA has 3 expressions: every ordered triple; vB has 2: both in json order
    va = Counter(p.expression_indices for p in mevis if p.video_index == 0)
    _assert_uniform(va, list(permutations(range(3))), sum(va.values()))
    assert {p.expression_indices for p in mevis if p.video_index == 1} == {(0, 1)}


def test_eligibility(tmp_path):
    write_mevis(str(tmp_path / "mevis"))
    # min_frames=0 keeps the 3-frame video; the sampler must still never draw it (needs max(4, 4) frames)
    ds = formats.load_mevis(str(tmp_path / "mevis"), min_frames=0)
    assert [v.name for v in ds.videos] == ["vA", "vB", "vShort"]
    assert sampling.eligible_videos(ds, CFG).tolist() == [0, 1]
    assert sampling.eligible_videos(ds, SamplingConfig(query_frames=6)).tolist() == [0]
    rng = np.random.default_rng(0)
    assert {sampling.draw_plan(rng, [ds], [1]).video_index for _ in range(300)} == {0, 1}
    with pytest.raises(ValueError, match="has no video with expressions and at least 7 frames"):
        sampling.draw_plan(rng, [ds], [1], SamplingConfig(context_frames=7))
    with pytest.raises(ValueError, match="1 datasets but 2 sample rates"):
        sampling.draw_plan(rng, [ds], [1, 1])


# ----------------------------------------------------------------------------- masks


def test_load_sample_masks_every_format(tmp_path):
    datasets = _tiny_datasets(tmp_path)
    rv, lv = tmp_path / "ReVOS", tmp_path / "LVVIS"
    write_rle_dataset(
        str(rv / "meta_expressions_train_.json"), str(rv / "mask_dict.json"), str(rv / "JPEGImages")
    )
    write_rle_dataset(
        str(lv / "meta_expressions.json"), str(lv / "mask_dict.json"), str(lv / "train" / "JPEGImages")
    )
    write_palette_dataset(str(tmp_path / "DAVIS17"))
    datasets += [formats.load_dataset(n, str(tmp_path)) for n in ("davis17", "revos", "lvvis")]
    rng = np.random.default_rng(11)
    seen = set()
    for _ in range(60):
        plan = sampling.draw_plan(rng, datasets, [1] * 5)
        s = sampling.load_sample(plan, datasets)
        v = datasets[plan.dataset_index].videos[plan.video_index]
        assert s.video == v.name
        q = s.query_indices
        assert s.gt_masks.shape == (len(plan.expression_indices), 4, 13, 17) and s.gt_masks.dtype == np.uint8
        assert s.context_indices.tolist() == plan.frame_indices[:4].tolist()
        assert s.frame_paths == tuple(v.frame_paths[i] for i in plan.frame_indices)
        for i, e in enumerate(plan.expression_indices):
            exp = v.expressions[e]
            assert s.texts[i] == exp.text.removesuffix(".")
            assert s.str_ids[i] == v.str_id(e)
            for j, f in enumerate(q):
                if s.dataset in ("mevis", "revos", "lvvis"):
                    # hand-computed: sum of the objects' boxes; anno 12 absent at frame 2 (null RLE)
                    want = sum(
                        (np.zeros((13, 17), np.uint8) if (a, f) == (12, 2) else _obj_mask(a, f))
                        for a in exp.anno_ids
                    )
                else:
                    want = (_palette_ids(f) == exp.obj_ids[0]).astype(np.uint8)
                np.testing.assert_array_equal(s.gt_masks[i, j], want)
        seen.add(s.dataset)
    assert seen == set(formats.DATASET_DIRS)


def test_texts_and_object_sets(tmp_path):
    datasets = _tiny_datasets(tmp_path)
    plan = SamplePlan(
        dataset_index=0,
        video_index=1,
        expression_indices=(1, 0),
        frame_indices=np.array([0, 1, 2, 4, 1, 2, 3, 4]),
        context_templates=np.zeros(2, int),
        question_templates=np.zeros((2, 4), int),
        answer_templates=np.zeros((2, 4), int),
    )
    s = sampling.load_sample(plan, datasets)
    assert s.texts == ("the bird", "a bird") and s.exp_ids == ("7", "0")
    assert s.str_ids == ("mevis_vB_7", "mevis_vB_0")
    assert s.object_set_ids.tolist() == [0, 0]  # both refer to object 1: contrastive positives
    assert s.query_frame_names == ("00001", "00002", "00003", "00004")
    np.testing.assert_array_equal(s.gt_masks[0], s.gt_masks[1])
    keys = s.seg_token_keys()  # [E, Q, (dataset, video, expression, object set, frame)]
    assert keys.shape == (2, 4, 5) and keys.dtype == np.int32
    assert keys[0, 2].tolist() == [0, 1, 1, 0, 3] and keys[1, 0].tolist() == [0, 1, 0, 0, 1]
    pickle.loads(pickle.dumps(s))  # plain data: no mask store inside
    assert len(pickle.dumps(s)) < 10_000


def test_inference_templates_fix_every_round_and_change_nothing_else(tmp_path):
    from glus_jax.data import conversation

    datasets = _tiny_datasets(tmp_path)
    fixed = SamplingConfig(inference_templates=True)
    for seed in range(20):
        a = sampling.draw_plan(np.random.default_rng(seed), datasets, [1, 3])
        b = sampling.draw_plan(np.random.default_rng(seed), datasets, [1, 3], fixed)
        assert (b.video_index, b.expression_indices) == (a.video_index, a.expression_indices)
        np.testing.assert_array_equal(b.frame_indices, a.frame_indices)
        assert set(b.question_templates.ravel()) == {conversation.INFERENCE_QUESTION_TEMPLATE}
        assert set(b.answer_templates.ravel()) == {conversation.INFERENCE_ANSWER_TEMPLATE}
    answer = conversation.ANSWER_LIST[conversation.INFERENCE_ANSWER_TEMPLATE]
    assert answer == conversation.INFERENCE_PAST_ANSWER


def test_sample_at_is_deterministic(tmp_path):
    datasets = _tiny_datasets(tmp_path)
    elig = [sampling.eligible_videos(d, CFG) for d in datasets]
    a = sampling.sample_at(7, 123, datasets, [1, 1], CFG, elig)
    b = sampling.sample_at(7, 123, datasets, [1, 1])
    np.testing.assert_array_equal(a.gt_masks, b.gt_masks)
    np.testing.assert_array_equal(a.frame_indices, b.frame_indices)
    assert a.str_ids == b.str_ids
    np.testing.assert_array_equal(a.plan.question_templates, b.plan.question_templates)
    others = {tuple(sampling.sample_at(7, i, datasets, [1, 1]).frame_indices.tolist()) for i in range(20)}
    assert len(others) > 5


# ----------------------------------------------------------------------------- the oracle batch


def test_oracle_batch_masks():
    """The reference's training batch (train_forward.json): with its frames and expressions, our sample
    has its GT masks, texts and frame names."""
    ds = formats.load_mevis(str(GOLDEN / "data_video" / "mevis"))
    golden = np.load(GOLDEN / "data_train_losses.npz")
    classes = [
        ["The red ball moving to the right", "the blue box moving down"],
        ["The red ball moving to the right", "the ball and the box"],
    ]
    frames = [["00000", "00001", "00002", "00003"], ["00004", "00005", "00006", "00007"]]
    assert golden["frame_indices"].tolist() == [[0, 2, 5, 8, 0, 1, 2, 3], [1, 4, 5, 9, 4, 5, 6, 7]]
    for b, exps in enumerate([(0, 1), (0, 2)]):
        fi = golden["frame_indices"][b]
        # the context frames are one per linspace segment of the 10-frame video
        seg = sampling.context_segments(10, 4)
        assert all(seg[i] <= fi[i] < seg[i + 1] for i in range(4))
        plan = SamplePlan(0, 0, exps, fi, np.zeros(2, int), np.zeros((2, 4), int), np.zeros((2, 4), int))
        s = sampling.load_sample(plan, [ds])
        np.testing.assert_array_equal(s.gt_masks, golden["gt_masks"][b])
        assert list(s.texts) == classes[b]
        assert list(s.query_frame_names) == frames[b]
        assert list(s.str_ids) == [f"mevis_v0_{e}" for e in exps]
