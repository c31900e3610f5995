"""Benchmark evaluators on small generated datasets in each benchmark's on-disk format.

Expected scores come from transcriptions of the reference scripts (GLUS utils/eval_mevis.py,
eval_davis.py, eval_revos.py, eval_reason_vos.py; ReferFormer inference_davis.py + the davis2017
unsupervised evaluation) run on the same files with cv2 reads and the reference metrics.
"""

import json
import re
import shutil
import warnings

import cv2
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as cocomask
from scipy import ndimage
from scipy.optimize import linear_sum_assignment
from test_eval_metrics import ref_boundary, ref_db_statistics, ref_iou

from glus_jax import cli
from glus_jax.eval import evaluators
from glus_jax.eval.evaluators import MissingPredictionWarning, PredictionError
from glus_jax.eval.readers import DataError

H, W = 37, 53  # odd sizes catch transposes
PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0, 0, 0, 128] + [255] * (3 * 251)


def blob(rng, t, h=H, w=W, thresh=0.4):
    """Random smooth shapes; `thresh` in standard deviations of the smoothed field."""
    field = ndimage.gaussian_filter(rng.standard_normal((t, h, w)), (0, 2.5, 2.5))
    return field > thresh * field.std()


def rle(mask):
    r = cocomask.encode(np.asfortranarray(mask.astype(np.uint8)))
    r["counts"] = r["counts"].decode("utf-8")  # MeViS / ReVOS store counts as str
    return r


def save_png(path, arr, palette=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(arr.astype(np.uint8), mode="P" if palette else "L")
    if palette:
        im.putpalette(palette)
    im.save(path)


def save_jpg(path, h=H, w=W):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(path)


def perturb(rng, m):
    """A prediction near the ground truth: shifted, with a little noise."""
    p = np.roll(m, (int(rng.integers(-2, 3)), int(rng.integers(-2, 3))), axis=(-2, -1))
    return p ^ (rng.random(p.shape) < 0.01)


def write_pred(pred_root, video, exp_id, frames, masks, value=255):
    for f, m in zip(frames, masks):
        save_png(pred_root / video / str(exp_id) / f"{f}.png", m.astype(np.uint8) * value)


def cv2_gray(path):
    return cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)


# ---------------------------------------------------------------------------------------------
# MeViS


def make_mevis(root, pred, split="valid_u", seed=0):
    """Two videos, objects with absent frames, an expression naming two objects, one expression
    with no prediction folder and one with a frame missing."""
    rng = np.random.default_rng(seed)
    videos, mask_dict = {}, {}
    anno = 0
    missing = set()
    for v, n_frames, n_obj in (("vidA", 6, 3), ("vid_b", 5, 2)):
        frames = [f"{t:05d}" for t in range(n_frames)]
        ids = []
        for _ in range(n_obj):
            m = blob(rng, n_frames)
            mask_dict[str(anno)] = [None if (t == 2 and anno % 2) else rle(m[t]) for t in range(n_frames)]
            ids.append(anno)
            anno += 1
        exps = {str(k): {"exp": f"object {k}", "obj_id": [k], "anno_id": [ids[k]]} for k in range(n_obj)}
        exps[str(n_obj)] = {"exp": "both", "obj_id": [0, 1], "anno_id": [ids[0], ids[1]]}
        videos[v] = {"expressions": exps, "frames": frames}
        for f in frames:
            save_jpg(root / "mevis" / split / "JPEGImages" / v / f"{f}.jpg")
        for e in exps:
            gt = decode_union(mask_dict, exps[e]["anno_id"], n_frames)
            if (v, e) == ("vidA", "1"):
                missing.add(f"{v}_{e}")
                continue  # no folder at all
            write_pred(pred, v, e, frames, perturb(rng, gt))
            if (v, e) == ("vid_b", "0"):
                (pred / v / e / f"{frames[3]}.png").unlink()
                missing.add(f"{v}_{e}")
    split_dir = root / "mevis" / split
    (split_dir / "meta_expressions.json").write_text(json.dumps({"videos": videos}))
    (split_dir / "mask_dict.json").write_text(json.dumps(mask_dict))
    return videos, mask_dict, missing


def decode_union(mask_dict, anno_ids, n_frames):
    gt = np.zeros((n_frames, H, W), dtype=np.uint8)
    for t in range(n_frames):
        for a in anno_ids:
            r = mask_dict[str(a)][t]
            if r:
                gt[t] += cocomask.decode(r)
    return gt.astype(bool)


def ref_mevis(videos, mask_dict, pred):
    """GLUS utils/eval_mevis.py eval_queue on our files (a missing frame counts as missing)."""
    out = {}
    for v, vd in videos.items():
        for e, ed in vd["expressions"].items():
            paths = [pred / v / e / f"{f}.png" for f in vd["frames"]]
            if not all(p.is_file() for p in paths):
                out[f"{v}_{e}"] = [0, 0]
                continue
            n = len(vd["frames"])
            gt = np.zeros((n, H, W), dtype=np.uint8)
            pr = np.zeros((n, H, W), dtype=np.uint8)
            for t in range(n):
                for a in ed["anno_id"]:
                    r = mask_dict[str(a)][t]
                    if r:
                        gt[t] += cocomask.decode(r)
                pr[t] = cv2_gray(paths[t])
            out[f"{v}_{e}"] = [ref_iou(gt, pr).mean(), ref_boundary(gt, pr).mean()]
    return out


def assert_scores(result, expected):
    assert set(result.per_expression) == set(expected)
    for k, (j, f) in expected.items():
        np.testing.assert_allclose(result.per_expression[k], [j, f], rtol=0, atol=1e-12, err_msg=k)
    j = np.mean([v[0] for v in expected.values()])
    f = np.mean([v[1] for v in expected.values()])
    assert result.j == pytest.approx(j, abs=1e-12) and result.f == pytest.approx(f, abs=1e-12)
    assert result.jf == pytest.approx((j + f) / 2, abs=1e-12)


def test_mevis_matches_reference_with_missing_predictions(tmp_path):
    root, pred = tmp_path / "data", tmp_path / "pred"
    videos, mask_dict, missing = make_mevis(root, pred)
    with pytest.warns(MissingPredictionWarning) as rec:
        res = evaluators.evaluate_mevis(pred, root, "valid_u", workers=1, progress=False)
    msgs = [str(w.message) for w in rec]
    assert any("vidA/1" in m and "no prediction folder" in m for m in msgs)
    assert any("vid_b/0" in m and "00003.png" in m for m in msgs)
    assert sorted(res.missing) == sorted(missing)
    expected = ref_mevis(videos, mask_dict, pred)
    assert expected["vidA_1"] == [0, 0]
    assert_scores(res, expected)
    # Worker processes give the same numbers, in the same order.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MissingPredictionWarning)
        res2 = evaluators.evaluate_mevis(pred, root, "valid_u", workers=2, progress=False)
    assert list(res2.per_expression.items()) == list(res.per_expression.items())


def test_workers_under_spawn(tmp_path, monkeypatch):
    # Once JAX has started its runtime in the calling process, workers are spawned, not forked:
    # tasks and worker functions must pickle and import cleanly.
    import multiprocessing as mp

    root, pred = tmp_path / "data", tmp_path / "pred"
    make_mevis(root, pred)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MissingPredictionWarning)
        ref = evaluators.evaluate_mevis(pred, root, workers=1, progress=False)
        monkeypatch.setattr(evaluators, "_mp_context", lambda: mp.get_context("spawn"))
        res = evaluators.evaluate_mevis(pred, root, workers=2, progress=False)
    assert res.per_expression == ref.per_expression and res.missing == ref.missing


def test_mevis_wrong_size_prediction_is_an_error_naming_the_file(tmp_path):
    root, pred = tmp_path / "data", tmp_path / "pred"
    make_mevis(root, pred)
    bad = pred / "vidA" / "0" / "00004.png"
    save_png(bad, np.zeros((H + 1, W), np.uint8))
    for workers in (1, 2):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MissingPredictionWarning)
            with pytest.raises(PredictionError, match=re.escape(str(bad)) + r".*53x38.*53x37"):
                evaluators.evaluate_mevis(pred, root, "valid_u", workers=workers, progress=False)


def test_mevis_bad_inputs_are_clear_errors(tmp_path):
    root, pred = tmp_path / "data", tmp_path / "pred"
    make_mevis(root, pred)
    with pytest.raises(DataError, match="prediction folder not found"):
        evaluators.evaluate_mevis(tmp_path / "nope", root, workers=1, progress=False)
    with pytest.raises(DataError, match=re.escape(str(root / "mevis" / "valid_x" / "meta_expressions.json"))):
        evaluators.evaluate_mevis(pred, root, "valid_x", workers=1, progress=False)
    with pytest.raises(DataError, match="server"):
        evaluators.evaluate_mevis(pred, root, "valid", workers=1, progress=False)
    meta = root / "mevis" / "valid_u" / "meta_expressions.json"
    good = meta.read_text()
    bad_meta = json.loads(good)
    del bad_meta["videos"]["vid_b"]["frames"]
    meta.write_text(json.dumps(bad_meta))
    with pytest.raises(DataError, match=re.escape(str(meta)) + ".*malformed.*frames"):
        evaluators.evaluate_mevis(pred, root, workers=1, progress=False)
    meta.write_text(good)
    md = root / "mevis" / "valid_u" / "mask_dict.json"
    d = json.loads(md.read_text())
    del d["4"]
    md.write_text(json.dumps(d))
    with pytest.raises(DataError, match="no anno_id 4"):
        evaluators.evaluate_mevis(pred, root, workers=1, progress=False)


# ---------------------------------------------------------------------------------------------
# CLI contract


def test_cli_evaluate_end_to_end(tmp_path, capsys):
    root, pred = tmp_path / "data", tmp_path / "pred"
    videos, mask_dict, _ = make_mevis(root, pred)
    out = tmp_path / "scores" / "mevis.json"
    rc = cli.main(["evaluate", "--benchmark", "mevis", "--split", "valid_u", "--pred", str(pred),
                   "--data-root", str(root), "--out", str(out), "--workers", "2", "--no-progress"])
    assert rc == 0
    captured = capsys.readouterr()
    assert "vidA/1" in captured.err  # the missing prediction is named
    last = captured.out.strip().splitlines()[-3:]
    assert re.fullmatch(r"J: 0\.\d{4}", last[0]) and re.fullmatch(r"F: 0\.\d{4}", last[1])
    assert re.fullmatch(r"J&F: 0\.\d{4}", last[2])
    expected = ref_mevis(videos, mask_dict, pred)
    j = np.mean([v[0] for v in expected.values()])
    f = np.mean([v[1] for v in expected.values()])
    assert last == [f"J: {j:.4f}", f"F: {f:.4f}", f"J&F: {(j + f) / 2:.4f}"]
    data = json.loads(out.read_text())
    assert data["J"] == pytest.approx(j, abs=1e-12) and data["F"] == pytest.approx(f, abs=1e-12)
    assert data["J&F"] == pytest.approx((j + f) / 2, abs=1e-12)
    assert set(data["per_expression"]) == set(expected)
    for k, v in expected.items():
        np.testing.assert_allclose(data["per_expression"][k], v, atol=1e-12)
        assert all(0 <= x <= 1 for x in data["per_expression"][k])
    assert data["missing"] == ["vidA_1", "vid_b_0"]


def test_cli_errors_exit_2_with_message(tmp_path, capsys):
    root, pred = tmp_path / "data", tmp_path / "pred"
    make_mevis(root, pred)
    bad = pred / "vid_b" / "2" / "00001.png"
    save_png(bad, np.zeros((H, W + 2), np.uint8))
    rc = cli.main(["evaluate", "--benchmark", "mevis", "--pred", str(pred), "--data-root", str(root),
                   "--workers", "1", "--no-progress"])
    assert rc == 2
    assert str(bad) in capsys.readouterr().err
    rc = cli.main(["evaluate", "--benchmark", "refytvos", "--pred", str(pred), "--data-root", str(root),
                   "--no-progress"])
    assert rc == 2 and "--package" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Ref-DAVIS17 (palette annotations) and Ref-YouTube-VOS train


def make_davis(root, pred, seed=1, base="DAVIS17", split="valid", davis=True):
    """Two videos with 2 and 3 objects (the third appears after frame 0), void pixels, 4 expressions
    per object (annotators), predictions as soft 0..255 score maps, some overlapping."""
    rng = np.random.default_rng(seed)
    videos = {}
    for v, n_frames, n_obj in (("bear", 7, 2), ("dogs-jump", 6, 3)):
        frames = [f"{t:05d}" for t in range(n_frames)]
        labels = np.zeros((n_frames, H, W), np.uint8)
        objs = []
        for k in range(n_obj):
            m = blob(rng, n_frames, thresh=0.6)
            if k == 2:
                m[0] = False
            labels[m] = k + 1
            objs.append(labels == k + 1)
        labels[:, :2, :3] = 255  # void
        for t, f in enumerate(frames):
            save_png(root / base / split / "Annotations" / v / f"{f}.png", labels[t], PALETTE)
            save_jpg(root / base / split / "JPEGImages" / v / f"{f}.jpg")
        exps = {}
        for k in range(n_obj):
            for a in range(4 if davis else 1):
                e = str(len(exps))
                exps[e] = {"exp": f"object {k + 1} by annotator {a}", "obj_id": str(k + 1)}
                noise = rng.random((n_frames, H, W)) * 0.3
                score = np.clip(perturb(rng, objs[k]) * rng.uniform(0.3, 1.0) + noise, 0, 1)
                write_pred(pred, v, e, frames, np.round(score * 255).astype(np.uint8), value=1)
        videos[v] = {"expressions": exps, "frames": frames}
    meta = root / base / "meta_expressions" / split / "meta_expressions.json"
    meta.parent.mkdir(parents=True, exist_ok=True)
    meta.write_text(json.dumps({"videos": videos}))
    return videos


def ref_label_expressions(videos, ann_root, pred):
    """GLUS eval_davis.py per expression, with the ground truth of the expression's object."""
    out = {}
    for v, vd in videos.items():
        labels = np.stack([np.array(Image.open(ann_root / v / f"{f}.png")) for f in vd["frames"]])
        for e, ed in vd["expressions"].items():
            pr = np.stack([cv2_gray(pred / v / e / f"{f}.png") for f in vd["frames"]])
            gt = (labels == int(ed["obj_id"])).astype(np.uint8)
            out[f"{v}_{e}"] = [ref_iou(gt, pr).mean(), ref_boundary(gt, pr).mean()]
    return out


def ref_davis_official(videos, ann_root, pred):
    """ReferFormer inference_davis.py merge + davis2017 DAVISEvaluation(task='unsupervised')."""
    per_anno = []
    for anno_id in range(4):
        jm, fm = [], []
        for v, vd in videos.items():
            keys = list(vd["expressions"])
            num_obj = len(keys) // 4
            scores = []
            for obj in range(num_obj):
                e = keys[obj * 4 + anno_id]
                if not (pred / v / e).is_dir():  # missing: an all-zero score map (ours warns)
                    scores.append(np.zeros((len(vd["frames"]), H, W)))
                    continue
                s = np.stack([np.array(Image.open(pred / v / e / f"{f}.png")) for f in vd["frames"]]) / 255.0
                s[s < 0.5] = 0.0
                scores.append(s)
            t = len(vd["frames"])
            stacked = np.concatenate([0.1 * np.ones((1, t, H, W)), np.stack(scores)], axis=0)
            res_labels = np.argmax(stacked, axis=0)
            # davis2017 DAVIS.get_all_masks / Results.read_masks
            masks = np.stack([np.array(Image.open(ann_root / v / f"{f}.png")) for f in vd["frames"]])
            masks = masks.astype(float)
            void = masks == 255
            masks[void] = 0
            n_gt = int(np.max(masks[0]))
            gt = np.arange(1, n_gt + 1)[:, None, None, None] == masks[None]
            n_res = int(np.max(res_labels))
            res = np.arange(1, n_res + 1)[:, None, None, None] == res_labels[None]
            if n_res < n_gt:
                res = np.concatenate([res, np.zeros((n_gt - n_res, *res.shape[1:]))], axis=0)
            jr = np.zeros((res.shape[0], n_gt, t))
            fr = np.zeros((res.shape[0], n_gt, t))
            for ii in range(n_gt):
                for jj in range(res.shape[0]):
                    jr[jj, ii] = ref_iou(gt[ii], res[jj], void)
                    fr[jj, ii] = ref_boundary(gt[ii], res[jj], void)
            all_metrics = (np.mean(jr, axis=2) + np.mean(fr, axis=2)) / 2
            rows, cols = linear_sum_assignment(-all_metrics)
            for a, b in zip(jr[rows, cols], fr[rows, cols]):
                jm.append(ref_db_statistics(a)[0])
                fm.append(ref_db_statistics(b)[0])
        per_anno.append((np.mean(jm), np.mean(fm)))
    return per_anno


def test_davis17_expression_protocol(tmp_path):
    root, pred = tmp_path / "data", tmp_path / "pred"
    videos = make_davis(root, pred)
    res = evaluators.evaluate_davis17(pred, root, "valid", protocol="expression", workers=1, progress=False)
    assert_scores(res, ref_label_expressions(videos, root / "DAVIS17" / "valid" / "Annotations", pred))
    assert res.extra["protocol"] == "expression"


def test_davis17_expression_protocol_from_mask_dict(tmp_path):
    # GLUS eval_davis.py reads per-expression RLEs with anno ids counted over sorted videos and
    # string-sorted exp ids ("10" before "2"); same masks as the palette annotations here.
    root, pred = tmp_path / "data", tmp_path / "pred"
    videos = make_davis(root, pred)
    ann_root = root / "DAVIS17" / "valid" / "Annotations"
    mask_dict, anno = {}, 0
    for v in sorted(videos):
        labels = np.stack([np.array(Image.open(ann_root / v / f"{f}.png")) for f in videos[v]["frames"]])
        for e in sorted(videos[v]["expressions"]):
            obj = int(videos[v]["expressions"][e]["obj_id"])
            mask_dict[str(anno)] = [rle(m) if m.any() else None for m in labels == obj]
            anno += 1
    assert "10" in videos["dogs-jump"]["expressions"]
    (root / "DAVIS17" / "valid" / "mask_dict.json").write_text(json.dumps(mask_dict))
    res = evaluators.evaluate_davis17(pred, root, "valid", workers=1, progress=False)
    assert res.extra["ground_truth"] == "mask_dict.json"
    assert_scores(res, ref_label_expressions(videos, ann_root, pred))
    assert list(res.per_expression) == [f"{v}_{e}" for v in videos for e in videos[v]["expressions"]]


def test_davis17_official_protocol(tmp_path):
    root, pred = tmp_path / "data", tmp_path / "pred"
    videos = make_davis(root, pred)
    shutil.rmtree(pred / "dogs-jump" / "6")  # object 2, annotator 2
    with pytest.warns(MissingPredictionWarning, match="dogs-jump/6"):
        res = evaluators.evaluate_davis17(pred, root, "valid", protocol="official", workers=2, progress=False)
    assert res.missing == ["dogs-jump_6"]
    expected = ref_davis_official(videos, root / "DAVIS17" / "valid" / "Annotations", pred)
    assert sorted(res.groups) == [f"annotator {a}" for a in range(4)]
    for a, (j, f) in enumerate(expected):
        g = res.groups[f"annotator {a}"]
        assert g["J"] == pytest.approx(j, abs=1e-12) and g["F"] == pytest.approx(f, abs=1e-12)
        assert g["J&F"] == pytest.approx((j + f) / 2, abs=1e-12)
    assert res.j == pytest.approx(np.mean([e[0] for e in expected]), abs=1e-12)
    assert res.f == pytest.approx(np.mean([e[1] for e in expected]), abs=1e-12)


def test_refytvos_train_and_server_only_valid(tmp_path):
    root, pred = tmp_path / "data", tmp_path / "pred"
    videos = make_davis(root, pred, seed=4, base="Refer-YouTube-VOS", split="train", davis=False)
    res = evaluators.evaluate("refytvos", pred, root, "train", workers=1, progress=False)
    ann_root = root / "Refer-YouTube-VOS" / "train" / "Annotations"
    assert_scores(res, ref_label_expressions(videos, ann_root, pred))
    with pytest.raises(DataError, match="--package"):
        evaluators.evaluate("refytvos", pred, root, "valid", workers=1, progress=False)


# ---------------------------------------------------------------------------------------------
# ReVOS


def make_revos(root, pred, seed=2):
    rng = np.random.default_rng(seed)
    base = root / "ReVOS"
    videos, mask_dict, fg_dict = {}, {}, {}
    anno = 0
    for v, n_frames in (("JPEG_vid1", 5), ("vid2", 6)):
        frames = [f"{t:05d}" for t in range(n_frames)]
        objs = []
        # Disjoint instances, as ReVOS's (from palette annotations). Overlapping ones would make the
        # reference's uint8 sum of masks wrap in A and R (we score the binarized union instead).
        layers = [blob(rng, n_frames, thresh=0.5) for _ in range(3)]
        for k in range(3):
            m = layers[k] & ~np.any(layers[:k], axis=0) if k else layers[0]
            mask_dict[str(anno)] = [rle(m[t]) if m[t].any() else None for t in range(n_frames)]
            objs.append((anno, m))
            anno += 1
        # foreground: all instances of the video, per frame a list of RLEs (they may overlap)
        fg_dict[v] = {"masks_rle": [[rle(m[t]) for _, m in objs] for t in range(n_frames)]}
        exps = {}
        for e, (ids, type_id) in enumerate((([0], 0), ([1, 2], 1), ([2], 0), ([0, 1], 1), ([1], 2))):
            anno_ids = [objs[i][0] for i in ids]
            exps[str(e)] = {"exp": f"e{e}", "obj_id": ids, "anno_id": anno_ids, "type_id": type_id}
            gt = np.any([objs[i][1] for i in ids], axis=0)
            if (v, e) != ("vid2", 3):
                write_pred(pred, v, e, frames, perturb(rng, gt), value=1)  # 0/1 PNGs, as ReVOS tools write
        videos[v] = {"expressions": exps, "frames": frames}
        for f in frames:
            save_jpg(base / "JPEGImages" / v / f"{f}.jpg")
    base.mkdir(parents=True, exist_ok=True)
    (base / "meta_expressions_valid_.json").write_text(json.dumps({"videos": videos}))
    (base / "mask_dict.json").write_text(json.dumps(mask_dict))
    (base / "mask_dict_foreground.json").write_text(json.dumps(fg_dict))
    return videos, mask_dict, fg_dict


def ref_revos(videos, mask_dict, fg_dict, pred):
    """GLUS utils/eval_revos.py: per-expression J, F, A, R and the rounded-percent summary."""
    data = []
    for v, vd in videos.items():
        for e, ed in vd["expressions"].items():
            n = len(vd["frames"])
            if not (pred / v).exists() or not (pred / v / e).exists():
                j = f = a = r = 0.0
            else:
                gt = np.zeros((n, H, W), np.uint8)
                pr = np.zeros((n, H, W), np.uint8)
                fg = np.zeros((n, H, W), np.uint8)
                for t, fr in enumerate(vd["frames"]):
                    for aid in ed["anno_id"]:
                        rl = mask_dict[str(aid)][t]
                        if rl:
                            gt[t] += cocomask.decode(rl)
                    mf = cocomask.decode(fg_dict[v]["masks_rle"][t])
                    fg[t] = mf.sum(axis=2).astype(np.uint8) if mf.ndim == 3 else mf.astype(np.uint8)
                    pr[t] = cv2_gray(pred / v / e / f"{fr}.png")
                j = ref_iou(gt, pr).mean()
                f = ref_boundary(gt, pr).mean()
                a = np.array([np.mean(g == p) for g, p in zip(gt, pr)]).mean()
                r = np.array([max(1 - ((1 - g) * p).sum() / (q.sum() + 1e-6), 0.0)
                              for g, p, q in zip(gt, pr, fg)]).mean()
            data.append({"key": f"{v}_{e}", "raw": (j, f, a, r), "J": round(100 * j, 2),
                         "F": round(100 * f, 2), "A": round(100 * a, 2), "R": round(100 * r, 2),
                         "type_id": ed["type_id"]})
    summary = {}
    for name, tid in (("referring", 0), ("reason", 1)):
        summary[name] = {m: np.array([d[m] for d in data if d["type_id"] == tid]).mean() for m in "JFAR"}
        summary[name]["JF"] = (summary[name]["J"] + summary[name]["F"]) / 2
    summary["overall"] = {m: (summary["referring"][m] + summary["reason"][m]) / 2
                          for m in ("J", "F", "A", "R", "JF")}
    return data, summary


def test_revos_matches_reference(tmp_path):
    root, pred = tmp_path / "data", tmp_path / "pred"
    videos, mask_dict, fg_dict = make_revos(root, pred)
    with pytest.warns(MissingPredictionWarning, match="vid2/3"):
        res = evaluators.evaluate_revos(pred, root, "valid", workers=2, progress=False)
    data, summary = ref_revos(videos, mask_dict, fg_dict, pred)
    for d in data:
        j, f, a, r = d["raw"]
        np.testing.assert_allclose(res.per_expression[d["key"]], [j, f], atol=1e-12)
        np.testing.assert_allclose(res.extra["per_expression_AR"][d["key"]], [a, r], atol=1e-12)
    for g in ("referring", "reason", "overall"):
        for m, m_ref in (("J", "J"), ("F", "F"), ("A", "A"), ("R", "R"), ("J&F", "JF")):
            assert res.groups[g][m] == pytest.approx(summary[g][m_ref] / 100, abs=1e-12), (g, m)
    assert res.j == pytest.approx(summary["overall"]["J"] / 100, abs=1e-12)
    assert res.missing == ["vid2_3"]


# ---------------------------------------------------------------------------------------------
# ReasonVOS


def test_reasonvos_matches_reference(tmp_path):
    rng = np.random.default_rng(3)
    root, pred = tmp_path / "data", tmp_path / "pred"
    base = root / "ReasonVOS"
    videos = {}
    expected = {}
    for v, src, n_frames in (("v1", "mevis", 5), ("v_2", "davis", 4)):
        frames = [f"{t:05d}" for t in range(n_frames)]
        exps = []
        for k, obj_id in enumerate((1, 2, 3)):
            exps.append({"obj_id": obj_id, "exp_id": k, "exp_text": f"t{k}", "is_sent": True})
            if (v, obj_id) == ("v_2", 3):
                continue  # ground truth folder missing: not scored (as the reference)
            gt = blob(rng, n_frames)
            for f, m in zip(frames, gt):
                save_png(base / "Annotations" / f"{src}_{v}_{obj_id}" / f"{f}.png", m.astype(np.uint8) * 255)
            if (v, k) == ("v1", 1):
                expected[f"{v}_{k}"] = [0, 0]  # missing prediction: 0 (the reference would skip it)
                continue
            write_pred(pred, v, k, frames, perturb(rng, gt))
            gt_dir = base / "Annotations" / f"{src}_{v}_{obj_id}"
            gt_u8 = np.stack([cv2_gray(gt_dir / f"{f}.png") for f in frames])
            pr = np.stack([cv2_gray(pred / v / str(k) / f"{f}.png") for f in frames])
            expected[f"{v}_{k}"] = [ref_iou(gt_u8, pr).mean(), ref_boundary(gt_u8, pr).mean()]
        videos[v] = {"source": src, "expressions": exps, "frames": frames}
    base.mkdir(parents=True, exist_ok=True)
    (base / "meta_expressions.json").write_text(json.dumps({"videos": videos}))
    with pytest.warns(MissingPredictionWarning) as rec:
        res = evaluators.evaluate("reasonvos", pred, root, workers=1, progress=False)
    msgs = " ".join(str(w.message) for w in rec)
    assert "v1/1" in msgs and "davis_v_2_3" in msgs
    assert_scores(res, expected)
