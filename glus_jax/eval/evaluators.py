"""Benchmark evaluators: MeViS, Ref-DAVIS17, ReVOS, ReasonVOS, Ref-YouTube-VOS (splits with masks).

Predictions live in `PRED/<video>/<exp_id>/<frame>.png` (what `glus-jax segment` and GLUS's
`inference_iter.py` write; nonzero = foreground). Ground truth is read in each benchmark's released
layout under the GLUS `DATASET_ROOT` (GLUS README):

  mevis      ROOT/mevis/<split>/{meta_expressions.json, mask_dict.json}     (GLUS utils/eval_mevis.py)
  davis17    ROOT/DAVIS17/meta_expressions/<split>/meta_expressions.json,
             ROOT/DAVIS17/<split>/Annotations/<video>/<frame>.png           (utils/eval_davis.py; and
             the official protocol: ReferFormer inference_davis.py + davis2017 eval_davis.py)
  revos      ROOT/ReVOS/{meta_expressions_<split>_.json, mask_dict.json, mask_dict_foreground.json}
                                                                           (utils/eval_revos.py)
  reasonvos  ROOT/ReasonVOS/{meta_expressions.json, Annotations/<src>_<video>_<obj>/*.png}
                                                                           (utils/eval_reason_vos.py)
  refytvos   ROOT/Refer-YouTube-VOS/meta_expressions/<split>/meta_expressions.json,
             ROOT/Refer-YouTube-VOS/<split>/Annotations/<video>/<frame>.png (train only; `valid` is
             scored by the server: see `submission.py`)

Each expression's J and F are means over its frames; a benchmark's J and F are means over
expressions (ReVOS: over referring and reasoning expressions separately, then averaged; the official
Ref-DAVIS17 protocol: over objects, per annotator, then averaged). Work is split per video (its
ground truth is decoded once for all its expressions) over worker processes.

A missing prediction (expression folder or any frame) scores 0 and is reported by a warning naming
it, as the reference scripts do for a missing video; a prediction whose size differs from the
ground truth raises `PredictionError` naming the file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import multiprocessing as mp
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from pycocotools import mask as cocomask
from scipy.optimize import linear_sum_assignment

from glus_jax.eval import metrics
from glus_jax.eval.readers import (
    DataError,
    decode_rle_clip,
    image_size,
    load_json,
    read_label_png,
    read_mask_png,
    rle_size,
)

__all__ = [
    "BENCHMARKS",
    "DEFAULT_SPLITS",
    "SERVER_SPLITS",
    "DataError",
    "EvalResult",
    "MissingPredictionWarning",
    "PredictionError",
    "evaluate",
    "evaluate_davis17",
    "evaluate_mevis",
    "evaluate_reasonvos",
    "evaluate_refytvos",
    "evaluate_revos",
]

BENCHMARKS = ("mevis", "davis17", "revos", "reasonvos", "refytvos")
DEFAULT_SPLITS = {"mevis": "valid_u", "davis17": "valid", "revos": "valid", "reasonvos": "valid",
                  "refytvos": "valid"}
# Splits whose masks are withheld: scored by the benchmark's server from a zip (submission.py).
SERVER_SPLITS = {("mevis", "valid"), ("refytvos", "valid"), ("refytvos", "test")}


class PredictionError(ValueError):
    """A prediction file exists but cannot be scored (wrong size, unreadable); names the file."""


class MissingPredictionWarning(UserWarning):
    """An expression has no (complete) prediction; it scores 0."""


# ----------------------------------------------------------------------------------------------
# Results


@dataclasses.dataclass
class EvalResult:
    """Scores of one benchmark split. Fractions in [0, 1].

    per_expression: "<video>_<exp_id>" -> [J, F] (means over the expression's frames).
    groups: extra rows of the summary table, name -> {"J", "F", "J&F", ...} (ReVOS splits, DAVIS
      annotators).
    extra: benchmark-specific JSON-able details (e.g. ReVOS accuracy / robustness per expression).
    missing: keys of expressions that scored 0 for lack of a prediction.
    """

    benchmark: str
    split: str
    j: float
    f: float
    per_expression: dict[str, list[float]]
    groups: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    missing: list[str] = dataclasses.field(default_factory=list)

    @property
    def jf(self) -> float:
        return (self.j + self.f) / 2

    def to_json(self) -> dict[str, Any]:
        out = {"J": _num(self.j), "F": _num(self.f), "J&F": _num(self.jf),
               "per_expression": {k: [_num(x) for x in v] for k, v in self.per_expression.items()},
               "benchmark": self.benchmark, "split": self.split,
               "groups": {g: {k: _num(x) for k, x in row.items()} for g, row in self.groups.items()},
               "missing": list(self.missing)}
        out.update(self.extra)
        return out

    def table(self) -> str:
        """A plain-text summary table (percent)."""
        cols = ["J&F", "J", "F"]
        for row in self.groups.values():
            cols += [k for k in row if k not in cols]
        rows = [(f"{self.benchmark} {self.split}", {"J&F": self.jf, "J": self.j, "F": self.f})]
        rows += list(self.groups.items())
        name_w = max(len(r[0]) for r in rows)
        lines = [f"{'':{name_w}}  " + "  ".join(f"{c:>7}" for c in cols)]
        for name, row in rows:
            cells = [f"{100 * row[c]:7.2f}" if c in row and row[c] is not None else f"{'-':>7}" for c in cols]
            lines.append(f"{name:{name_w}}  " + "  ".join(cells))
        lines.append(f"expressions: {len(self.per_expression)}, missing predictions: {len(self.missing)}")
        return "\n".join(lines)


def _num(x):
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else x


# ----------------------------------------------------------------------------------------------
# Reading predictions


def _read_prediction(pred_dir: Path, video: str, exp_id: str, frames: Sequence[str],
                     size: tuple[int, int] | None) -> tuple[np.ndarray | None, str | None]:
    """[T, H, W] uint8 prediction of one expression, or (None, message) if it is missing."""
    exp_dir = pred_dir / video / str(exp_id)
    if not exp_dir.is_dir():
        return None, f"{video}/{exp_id}: no prediction folder {exp_dir}"
    out = None
    missing = []
    for t, frame in enumerate(frames):
        path = exp_dir / f"{frame}.png"
        try:
            m = read_mask_png(path)
        except FileNotFoundError:
            missing.append(f"{frame}.png")
            continue
        if size is None:
            size = m.shape
        if m.shape != tuple(size):
            raise PredictionError(f"{path}: prediction is {m.shape[1]}x{m.shape[0]} (WxH) but the ground "
                                  f"truth is {size[1]}x{size[0]}")
        if out is None:
            out = np.empty((len(frames), *size), dtype=np.uint8)
        out[t] = m
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        return None, f"{video}/{exp_id}: {len(missing)} of {len(frames)} frames missing in {exp_dir} " \
                     f"({shown})"
    if out is None:  # no frames at all
        out = np.zeros((0, *(size or (0, 0))), dtype=np.uint8)
    return out, None


def _mean(x: np.ndarray) -> float:
    return float(np.mean(x)) if len(x) else float("nan")


# ----------------------------------------------------------------------------------------------
# Workers (module-level so they pickle; each takes one video's task and returns plain data)


@dataclasses.dataclass
class _RleVideo:
    """MeViS / ReVOS: ground truth as per-frame RLEs per annotation id."""

    video: str
    frames: list[str]
    pred_dir: Path
    expressions: list[tuple[str, list[str]]]  # (exp_id, anno ids)
    rles: dict[str, list]  # anno id -> per-frame RLE (None = absent)
    image: Path | None  # a frame of the video (size fallback when every RLE is empty)
    foreground_area: list[float] | None = None  # ReVOS: per-frame sum of instance areas

    @property
    def cost(self) -> int:
        return len(self.expressions) * len(self.frames)


def _eval_rle_video(task: _RleVideo) -> dict:
    size = None
    for ids in (a for _, a in task.expressions):
        for a in ids:
            size = size or rle_size(task.rles[a])
    if size is None and task.image is not None and task.image.is_file():
        size = image_size(task.image)
    decoded: dict[str, np.ndarray] = {}
    scores, notes = [], []
    for exp_id, ids in task.expressions:
        key = f"{task.video}_{exp_id}"
        pred, msg = _read_prediction(task.pred_dir, task.video, exp_id, task.frames, size)
        if pred is None:
            notes.append(msg)
            scores.append((key, 0.0, 0.0, 0.0, 0.0, True))
            continue
        size = pred.shape[1:]
        gt = None
        for a in ids:  # union of the expression's objects (the reference sums, then binarizes)
            if a not in decoded:
                decoded[a] = decode_rle_clip(task.rles[a], size, what=f"mask_dict[{a}]")
            gt = decoded[a] if gt is None else gt | decoded[a]
        if gt is None:
            gt = np.zeros(pred.shape, dtype=bool)
        j, f = metrics.jaccard_and_f(gt, pred)
        a_r = (0.0, 0.0)
        if task.foreground_area is not None:
            acc = metrics.r2vos_accuracy(gt, pred)
            neg = np.count_nonzero((pred != 0) & ~gt, axis=(1, 2))
            pos = np.asarray(task.foreground_area, dtype=np.float64)
            rob = np.maximum(1 - neg / (pos + 1e-6), 0.0)
            a_r = (_mean(acc), _mean(rob))
        scores.append((key, _mean(j), _mean(f), *a_r, False))
    return {"scores": scores, "notes": notes}


@dataclasses.dataclass
class _LabelVideo:
    """Ref-DAVIS17 / Ref-YouTube-VOS: ground truth as object-id palette PNGs per frame."""

    video: str
    frames: list[str]
    pred_dir: Path
    ann_dir: Path
    expressions: list[tuple[str, int, int]]  # (exp_id, obj_id, annotator)
    official: bool = False  # Ref-DAVIS17 official protocol (per annotator, DAVIS unsupervised eval)

    @property
    def cost(self) -> int:
        return len(self.expressions) * len(self.frames)


def _read_labels(task: _LabelVideo) -> np.ndarray:
    labels = None
    for t, frame in enumerate(task.frames):
        path = task.ann_dir / f"{frame}.png"
        if not path.is_file():
            raise DataError(f"ground-truth annotation missing: {path}")
        lab = read_label_png(path)
        if labels is None:
            labels = np.empty((len(task.frames), *lab.shape), dtype=np.uint8)
        elif lab.shape != labels.shape[1:]:
            raise DataError(f"{path}: annotation is {lab.shape[1]}x{lab.shape[0]}, earlier frames are "
                            f"{labels.shape[2]}x{labels.shape[1]}")
        labels[t] = lab
    if labels is None:
        raise DataError(f"video {task.video} lists no frames")
    return labels


def _eval_label_video(task: _LabelVideo) -> dict:
    labels = _read_labels(task)
    if task.official:
        return _eval_davis_official_video(task, labels)
    scores, notes = [], []
    for exp_id, obj_id, _ in task.expressions:
        key = f"{task.video}_{exp_id}"
        pred, msg = _read_prediction(task.pred_dir, task.video, exp_id, task.frames, labels.shape[1:])
        if pred is None:
            notes.append(msg)
            scores.append((key, 0.0, 0.0, True))
            continue
        j, f = metrics.jaccard_and_f(labels == obj_id, pred)
        scores.append((key, _mean(j), _mean(f), False))
    return {"scores": scores, "notes": notes}


_MAX_PROPOSALS = 20  # davis2017 unsupervised evaluation refuses more predicted objects


def _eval_davis_official_video(task: _LabelVideo, labels: np.ndarray) -> dict:
    """The Ref-DAVIS17 protocol of ReferFormer and its successors, for one video.

    Per annotator: the expressions' score maps (PNG value / 255) below 0.5 are zeroed and merged into
    one label map by argmax against a background score of 0.1 (first object wins ties), written as
    object `obj_id`; then the DAVIS-2017 *unsupervised* evaluation (ReferFormer's eval_davis.py
    default): ground-truth objects 1..max(first frame), void = 255, every frame, predicted objects
    matched to ground-truth objects by the Hungarian algorithm on mean (J + F) / 2.
    """
    void = labels == 255
    gt_labels = np.where(void, 0, labels)
    n_gt = int(gt_labels[0].max())
    size = labels.shape[1:]
    notes, per_annotator, exp_scores = [], {}, {}
    by_annotator: dict[int, list[tuple[str, int]]] = {}
    for exp_id, obj_id, annotator in task.expressions:
        by_annotator.setdefault(annotator, []).append((exp_id, obj_id))
    for annotator, exps in sorted(by_annotator.items()):
        best = np.zeros(labels.shape, dtype=np.uint8)  # winning score * 255 (0: background)
        merged = np.zeros(labels.shape, dtype=np.uint8)
        missing = []
        for exp_id, obj_id in sorted(exps, key=lambda e: e[1]):
            pred, msg = _read_prediction(task.pred_dir, task.video, exp_id, task.frames, size)
            if pred is None:
                notes.append(msg)
                missing.append(f"{task.video}_{exp_id}")
                continue
            # score = v / 255; kept iff >= 0.5 (v >= 128), then it beats background 0.1 and loses
            # to an earlier object with an equal or higher score (torch / numpy argmax).
            s = np.where(pred >= 128, pred, 0)
            win = s > best
            best[win] = s[win]
            merged[win] = obj_id
        n_res = int(merged.max())
        if n_res > _MAX_PROPOSALS:
            raise PredictionError(f"{task.pred_dir / task.video}: annotator {annotator} has object id "
                                  f"{n_res}, more than the {_MAX_PROPOSALS} proposals the DAVIS evaluation "
                                  f"allows")
        n_rows = max(n_res, n_gt)
        j_all = np.zeros((n_rows, n_gt, len(task.frames)))
        f_all = np.zeros((n_rows, n_gt, len(task.frames)))
        for ii in range(n_gt):
            gt_obj = gt_labels == ii + 1
            for jj in range(n_rows):
                res = merged == jj + 1 if jj < n_res else np.zeros_like(gt_obj)
                j_all[jj, ii], f_all[jj, ii] = metrics.jaccard_and_f(gt_obj, res, void)
        objects = []
        if n_gt:
            cost = (np.mean(j_all, axis=2) + np.mean(f_all, axis=2)) / 2
            rows, cols = linear_sum_assignment(-cost)
            for r_, c_ in zip(rows, cols):
                jm, jr, jd = metrics.db_statistics(j_all[r_, c_])
                fm, fr, fd = metrics.db_statistics(f_all[r_, c_])
                objects.append({"object": int(c_) + 1, "J": jm, "J-Recall": jr, "J-Decay": jd,
                                "F": fm, "F-Recall": fr, "F-Decay": fd})
        per_annotator[annotator] = objects
        by_obj = {o["object"]: o for o in objects}
        for exp_id, obj_id in exps:
            key = f"{task.video}_{exp_id}"
            o = by_obj.get(obj_id)
            exp_scores[key] = (key, o["J"] if o else 0.0, o["F"] if o else 0.0, key in missing)
    scores = [exp_scores[f"{task.video}_{e}"] for e, _, _ in task.expressions]  # meta order
    return {"scores": scores, "notes": notes, "annotators": per_annotator}


@dataclasses.dataclass
class _PngVideo:
    """ReasonVOS: ground truth as binary PNGs per expression, frames = the ground-truth files."""

    video: str
    pred_dir: Path
    expressions: list[tuple[str, Path]]  # (exp_id, ground-truth folder)

    @property
    def cost(self) -> int:
        return len(self.expressions) * 100


def _eval_png_video(task: _PngVideo) -> dict:
    scores, notes = [], []
    cache: dict[Path, tuple[list[str], np.ndarray]] = {}
    for exp_id, gt_dir in task.expressions:
        key = f"{task.video}_{exp_id}"
        if gt_dir not in cache:
            names = sorted(p.name for p in gt_dir.iterdir() if p.name.endswith("png"))
            gt = None
            for t, name in enumerate(names):
                m = read_mask_png(gt_dir / name)
                if gt is None:
                    gt = np.empty((len(names), *m.shape), dtype=np.uint8)
                elif m.shape != gt.shape[1:]:
                    raise DataError(f"{gt_dir / name}: ground truth is {m.shape[1]}x{m.shape[0]}, earlier "
                                    f"frames are {gt.shape[2]}x{gt.shape[1]}")
                gt[t] = m
            cache[gt_dir] = (names, gt)
        names, gt = cache[gt_dir]
        if gt is None:
            notes.append(f"{task.video}/{exp_id}: ground-truth folder {gt_dir} has no PNG; skipped")
            continue
        frames = [n[: -len(".png")] if n.endswith(".png") else n for n in names]
        pred, msg = _read_prediction(task.pred_dir, task.video, exp_id, frames, gt.shape[1:])
        if pred is None:
            notes.append(msg)
            scores.append((key, 0.0, 0.0, True))
            continue
        j, f = metrics.jaccard_and_f(gt, pred)
        scores.append((key, _mean(j), _mean(f), False))
    return {"scores": scores, "notes": notes}


# ----------------------------------------------------------------------------------------------
# Running tasks


def _tune_malloc() -> None:
    """Worker processes keep freed memory instead of returning it to the OS at every call: the
    per-clip temporaries are a few MB each, and with glibc's defaults every call page-faults them
    in again (measured: the metrics take ~1.7x as long without this)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, (1 << 31) - 1)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def _worker_init() -> None:
    _tune_malloc()
    warnings.simplefilter("ignore", RuntimeWarning)


def _mp_context():
    # fork is cheapest (no re-import of the package); it is unsafe only once JAX has started its
    # runtime threads in this process, and then we spawn instead. Workers never touch JAX.
    if sys.platform.startswith("linux"):
        xb = sys.modules.get("jax._src.xla_bridge")
        if xb is None or not getattr(xb, "_backends", None):
            return mp.get_context("fork")
    return mp.get_context("spawn")


def _call(job: tuple[Callable[[Any], dict], int, Any]) -> tuple[int, dict]:
    fn, i, task = job
    return i, fn(task)


def _run(fn: Callable[[Any], dict], tasks: list, workers: int | None, progress: bool,
         desc: str) -> list[dict]:
    """Run `fn` over tasks on `workers` processes (largest first, for balance), with a progress
    bar counting expressions. Results come back in task order, so the output is deterministic."""
    from tqdm import tqdm

    order = sorted(range(len(tasks)), key=lambda i: -tasks[i].cost)
    total = sum(len(t.expressions) for t in tasks)
    workers = (os.cpu_count() or 1) if workers is None else int(workers)
    workers = max(1, min(workers, len(tasks)))
    out: list[dict | None] = [None] * len(tasks)
    jobs = [(fn, i, tasks[i]) for i in order]
    with tqdm(total=total, desc=desc, unit="exp", disable=not progress, file=sys.stderr) as bar:
        if workers == 1:
            done = map(_call, jobs)
            for i, res in done:
                out[i] = res
                bar.update(len(tasks[i].expressions))
        else:
            with _mp_context().Pool(workers, initializer=_worker_init) as pool:
                for i, res in pool.imap_unordered(_call, jobs):
                    out[i] = res
                    bar.update(len(tasks[i].expressions))
    return out


def _collect(results: list[dict]) -> tuple[dict[str, tuple], list[str]]:
    scores, missing = {}, []
    for res in results:
        for note in res["notes"]:
            warnings.warn(note, MissingPredictionWarning, stacklevel=3)
        for row in res["scores"]:
            key = row[0]
            if key in scores:
                raise DataError(f"two expressions share the key {key!r} (video + '_' + exp_id)")
            scores[key] = row[1:]
            if row[-1]:
                missing.append(key)
    return scores, sorted(missing)


def _simple_result(benchmark: str, split: str, scores: dict[str, tuple], missing: list[str]) -> EvalResult:
    per = {k: [float(v[0]), float(v[1])] for k, v in scores.items()}
    j = _mean(np.array([v[0] for v in per.values()]))
    f = _mean(np.array([v[1] for v in per.values()]))
    return EvalResult(benchmark, split, j, f, per, missing=missing)


@contextlib.contextmanager
def _malformed(path: Path):
    """Turn a missing key / wrong type while reading annotation JSON into a DataError naming it."""
    try:
        yield
    except DataError:
        raise
    except (KeyError, TypeError, AttributeError, ValueError, IndexError) as e:
        raise DataError(f"{path}: malformed annotation ({type(e).__name__}: {e})") from e


def _videos(meta: dict, path: Path) -> dict:
    if not isinstance(meta, dict) or not isinstance(meta.get("videos"), dict):
        raise DataError(f"{path}: expected a JSON object with a 'videos' mapping")
    return meta["videos"]


def _check_pred_dir(pred_dir) -> Path:
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise DataError(f"prediction folder not found: {pred_dir}")
    return pred_dir


def _server_only(benchmark: str, split: str) -> None:
    if (benchmark, split) in SERVER_SPLITS:
        raise DataError(f"{benchmark} {split} has no public masks: it is scored by the benchmark's "
                        f"server. Package the predictions with `glus-jax evaluate --benchmark {benchmark} "
                        f"--split {split} --pred DIR --data-root ROOT --package OUT.zip` and submit the zip.")


# ----------------------------------------------------------------------------------------------
# Benchmarks


def evaluate_mevis(pred_dir, data_root, split: str = "valid_u", *, workers: int | None = None,
                   progress: bool = True) -> EvalResult:
    """MeViS (`valid_u`, or `train`): GLUS utils/eval_mevis.py. An expression's ground truth is the
    union of its `anno_id` objects' masks from `mask_dict.json`."""
    _server_only("mevis", split)
    pred_dir = _check_pred_dir(pred_dir)
    base = Path(data_root) / "mevis" / split
    meta_path = base / "meta_expressions.json"
    videos = _videos(load_json(meta_path, "MeViS expressions"), meta_path)
    mask_dict = load_json(base / "mask_dict.json", "MeViS masks (mask_dict.json)")
    with _malformed(meta_path):
        tasks = [_rle_task(v, vd, mask_dict, pred_dir, base / "JPEGImages", "mask_dict.json")
                 for v, vd in videos.items()]
    scores, missing = _collect(_run(_eval_rle_video, tasks, workers, progress, f"mevis {split}"))
    return _simple_result("mevis", split, scores, missing)


def _rle_task(video: str, vd: dict, mask_dict: dict, pred_dir: Path, image_root: Path, mask_file: str,
              foreground_area: list[float] | None = None) -> _RleVideo:
    frames = [str(x) for x in vd["frames"]]
    exps, rles = [], {}
    for exp_id, e in vd["expressions"].items():
        ids = [str(a) for a in e["anno_id"]]
        for a in ids:
            if a not in mask_dict:
                raise DataError(f"{mask_file} has no anno_id {a} (video {video}, expression {exp_id})")
            if len(mask_dict[a]) != len(frames):
                raise DataError(f"{mask_file}[{a}] has {len(mask_dict[a])} frames, video {video} has "
                                f"{len(frames)}")
            rles[a] = mask_dict[a]
        exps.append((str(exp_id), ids))
    image = image_root / video / f"{frames[0]}.jpg" if frames else None
    return _RleVideo(video, frames, pred_dir, exps, rles, image, foreground_area)


def evaluate_revos(pred_dir, data_root, split: str = "valid", *, workers: int | None = None,
                   progress: bool = True) -> EvalResult:
    """ReVOS: GLUS utils/eval_revos.py (the ReVOS/VISA script). J, F, accuracy A and robustness R
    per expression; means over referring (type_id 0) and reasoning (type_id 1) expressions, each
    of per-expression percentages rounded to 2 decimals as the reference does; "overall" is the
    mean of the two (type_id 2 counts in neither). Result J / F are the overall ones."""
    pred_dir = _check_pred_dir(pred_dir)
    base = Path(data_root) / "ReVOS"
    meta_path = base / f"meta_expressions_{split}_.json"
    videos = _videos(load_json(meta_path, "ReVOS expressions"), meta_path)
    mask_dict = load_json(base / "mask_dict.json", "ReVOS masks (mask_dict.json)")
    fg_dict = load_json(base / "mask_dict_foreground.json",
                        "ReVOS foreground masks (mask_dict_foreground.json)")
    tasks = []
    with _malformed(meta_path):
        _revos_tasks(videos, mask_dict, fg_dict, pred_dir, base, tasks)
    scores, missing = _collect(_run(_eval_rle_video, tasks, workers, progress, f"revos {split}"))
    return _revos_result(split, videos, scores, missing)


def _revos_tasks(videos, mask_dict, fg_dict, pred_dir, base, tasks) -> None:
    for v, vd in videos.items():
        if v not in fg_dict:
            raise DataError(f"mask_dict_foreground.json has no video {v}")
        fg = fg_dict[v]["masks_rle"]
        if len(fg) != len(vd["frames"]):
            raise DataError(f"mask_dict_foreground.json[{v}] has {len(fg)} frames, the video has "
                            f"{len(vd['frames'])}")
        # Robustness only needs the per-frame sum of the foreground instances' areas.
        area = [float(np.sum(cocomask.area(r if isinstance(r, list) else [r]))) if r else 0.0 for r in fg]
        tasks.append(_rle_task(v, vd, mask_dict, pred_dir, base / "JPEGImages", "mask_dict.json", area))


def _revos_result(split: str, videos: dict, scores: dict, missing: list[str]) -> EvalResult:
    type_of = {f"{v}_{e}": int(ed.get("type_id", -1)) for v, vd in videos.items()
               for e, ed in vd["expressions"].items()}
    groups = {}
    for name, type_id in (("referring", 0), ("reason", 1)):
        rows = [s for k, s in scores.items() if type_of[k] == type_id]
        # The reference averages per-expression percentages rounded to 2 decimals.
        col = {m: np.array([round(100 * r[i], 2) for r in rows]) for i, m in enumerate("JFAR")}
        g = {m: _mean(c) / 100 for m, c in col.items()}
        g["J&F"] = (g["J"] + g["F"]) / 2
        groups[name] = g
    groups["overall"] = {m: (groups["referring"][m] + groups["reason"][m]) / 2
                         for m in ("J", "F", "A", "R", "J&F")}
    per = {k: [float(v[0]), float(v[1])] for k, v in scores.items()}
    extra = {"per_expression_AR": {k: [float(v[2]), float(v[3])] for k, v in scores.items()}}
    overall = groups["overall"]
    return EvalResult("revos", split, overall["J"], overall["F"], per, groups, extra, missing)


def _label_tasks(videos: dict, ann_root: Path, pred_dir: Path, official: bool,
                 davis: bool) -> list[_LabelVideo]:
    tasks = []
    for v, vd in videos.items():
        frames = sorted(str(x) for x in vd["frames"])  # the GLUS readers sort a video's frames
        exps = []
        for i, (exp_id, e) in enumerate(vd["expressions"].items()):
            if "obj_id" not in e:
                raise DataError(f"video {v} expression {exp_id} has no obj_id")
            # Ref-DAVIS17 meta (ReferFormer's convert_davis_to_ytvos.py) lists each object's 4
            # expressions in a row: annotator 1 first-frame, 1 full-video, 2 first-frame, 2 full-video.
            obj_id = int(e["obj_id"])
            if not 1 <= obj_id <= 254:
                raise DataError(f"video {v} expression {exp_id}: obj_id {obj_id} is not an object id "
                                f"(1..254)")
            exps.append((str(exp_id), obj_id, i % 4 if davis else 0))
        tasks.append(_LabelVideo(v, frames, pred_dir, ann_root / v, exps, official))
    return tasks


def evaluate_davis17(pred_dir, data_root, split: str = "valid", *, protocol: str = "expression",
                     workers: int | None = None, progress: bool = True) -> EvalResult:
    """Ref-DAVIS17 under either protocol in use:

    "expression" (GLUS utils/eval_davis.py, Sa2VA, VISA): every expression scored on its own against
      its object's masks over all frames; J, F = means over all expressions. The masks come from
      `DAVIS17/<split>/mask_dict.json` when present (the VISA release's per-expression RLEs, as
      the GLUS script reads them: one anno id per expression, counted over sorted videos and sorted
      exp ids; convert their mask_dict.pkl to JSON, we never unpickle), else from the palette
      Annotations (`== obj_id`).
    "official" (ReferFormer and most RVOS papers): per annotator (4: two people, first-frame and
      full-video expressions) the expressions' masks are merged into one object-id map per frame and
      scored with the DAVIS-2017 unsupervised evaluation; J, F = means over the 4 annotators of the
      DAVIS J-Mean / F-Mean. Per-annotator results (with recall and decay) are in `groups`.
    """
    if protocol not in ("expression", "official"):
        raise ValueError(f"protocol must be 'expression' or 'official', got {protocol!r}")
    pred_dir = _check_pred_dir(pred_dir)
    base = Path(data_root) / "DAVIS17"
    meta_path = base / "meta_expressions" / split / "meta_expressions.json"
    videos = _videos(load_json(meta_path, "Ref-DAVIS17 expressions"), meta_path)
    ann_root = base / split / "Annotations"
    mask_json = base / split / "mask_dict.json"
    if protocol == "expression" and mask_json.is_file():
        mask_dict = load_json(mask_json, "Ref-DAVIS17 masks (mask_dict.json)")
        with _malformed(meta_path):
            tasks = _davis_mask_dict_tasks(videos, mask_dict, pred_dir, base / split / "JPEGImages")
        results = _run(_eval_rle_video, tasks, workers, progress, f"davis17 {split}")
        ground_truth = "mask_dict.json"
    else:
        if not ann_root.is_dir():
            raise DataError(f"Ref-DAVIS17 annotations not found: {ann_root}")
        with _malformed(meta_path):
            tasks = _label_tasks(videos, ann_root, pred_dir, protocol == "official", davis=True)
        results = _run(_eval_label_video, tasks, workers, progress, f"davis17 {split}")
        ground_truth = "Annotations"
    scores, missing = _collect(results)
    if ground_truth == "mask_dict.json":  # back to meta_expressions.json order
        order = [f"{v}_{e}" for v, vd in videos.items() for e in vd["expressions"]]
        scores = {k: scores[k] for k in order}
    res = _simple_result("davis17", split, scores, missing)
    res.extra.update(protocol=protocol, ground_truth=ground_truth)
    if protocol == "official":
        per_ann: dict[int, list[dict]] = {}
        for r in results:
            for a, objs in r["annotators"].items():
                per_ann.setdefault(a, []).extend(objs)
        groups = {}
        for a, objs in sorted(per_ann.items()):
            g = {m: _mean(np.array([o[m] for o in objs])) for m in
                 ("J", "J-Recall", "J-Decay", "F", "F-Recall", "F-Decay")}
            g["J&F"] = (g["J"] + g["F"]) / 2
            groups[f"annotator {a}"] = g
        res.groups = groups
        res.j = _mean(np.array([g["J"] for g in groups.values()]))
        res.f = _mean(np.array([g["F"] for g in groups.values()]))
    return res


def _davis_mask_dict_tasks(videos: dict, mask_dict: dict, pred_dir: Path,
                           image_root: Path) -> list[_RleVideo]:
    tasks, anno = [], 0
    for v in sorted(videos):  # GLUS / VISA get_meta_exp: string-sorted videos and exp ids
        vd = videos[v]
        exps = {}
        for e in sorted(vd["expressions"]):
            exps[e] = {"anno_id": [anno]}
            anno += 1
        vd = {"frames": vd["frames"], "expressions": exps}
        tasks.append(_rle_task(v, vd, mask_dict, pred_dir, image_root, "mask_dict.json"))
    return tasks


def evaluate_refytvos(pred_dir, data_root, split: str = "train", *, workers: int | None = None,
                      progress: bool = True) -> EvalResult:
    """Ref-YouTube-VOS on a split with released masks (train, e.g. a held-out subset listed in its
    meta_expressions.json): each expression against its object's masks. `valid` / `test` are
    scored by the server: package them with `submission.package_submission`."""
    _server_only("refytvos", split)
    pred_dir = _check_pred_dir(pred_dir)
    base = Path(data_root) / "Refer-YouTube-VOS"
    meta_path = base / "meta_expressions" / split / "meta_expressions.json"
    videos = _videos(load_json(meta_path, "Ref-YouTube-VOS expressions"), meta_path)
    ann_root = base / split / "Annotations"
    if not ann_root.is_dir():
        raise DataError(f"Ref-YouTube-VOS annotations not found: {ann_root}")
    with _malformed(meta_path):
        tasks = _label_tasks(videos, ann_root, pred_dir, official=False, davis=False)
    scores, missing = _collect(_run(_eval_label_video, tasks, workers, progress, f"refytvos {split}"))
    return _simple_result("refytvos", split, scores, missing)


def evaluate_reasonvos(pred_dir, data_root, split: str = "valid", *, workers: int | None = None,
                       progress: bool = True) -> EvalResult:
    """ReasonVOS: GLUS utils/eval_reason_vos.py. Ground truth in
    `Annotations/<source>_<video>_<obj_id>/`, whose PNG files define the frames scored.
    Deviation: a missing prediction scores 0 (the reference leaves it out of the mean); an
    expression whose ground-truth folder is missing is left out, as in the reference."""
    pred_dir = _check_pred_dir(pred_dir)
    base = Path(data_root) / "ReasonVOS"
    meta_path = base / "meta_expressions.json"
    videos = _videos(load_json(meta_path, "ReasonVOS expressions"), meta_path)
    ann_root = base / "Annotations"
    tasks, notes = [], []
    with _malformed(meta_path):
        for v, vd in videos.items():
            exps = []
            for e in vd["expressions"]:
                gt_dir = ann_root / f"{vd['source']}_{v}_{e['obj_id']}"
                if not gt_dir.is_dir():
                    notes.append(f"{v}/{e['exp_id']}: ground truth {gt_dir} not found; not scored (as "
                                 f"the reference)")
                    continue
                exps.append((str(e["exp_id"]), gt_dir))
            if exps:
                tasks.append(_PngVideo(v, pred_dir, exps))
    for n in notes:
        warnings.warn(n, MissingPredictionWarning, stacklevel=2)
    scores, missing = _collect(_run(_eval_png_video, tasks, workers, progress, "reasonvos"))
    return _simple_result("reasonvos", split, scores, missing)


_EVALUATORS: dict[str, Callable[..., EvalResult]] = {
    "mevis": evaluate_mevis,
    "davis17": evaluate_davis17,
    "revos": evaluate_revos,
    "reasonvos": evaluate_reasonvos,
    "refytvos": evaluate_refytvos,
}


def evaluate(benchmark: str, pred_dir, data_root, split: str | None = None, *, workers: int | None = None,
             progress: bool = True, **kwargs) -> EvalResult:
    """Evaluate predictions on one benchmark split (see the module docstring for layouts)."""
    if benchmark not in _EVALUATORS:
        raise ValueError(f"unknown benchmark {benchmark!r}; choose from {', '.join(BENCHMARKS)}")
    split = split or DEFAULT_SPLITS[benchmark]
    return _EVALUATORS[benchmark](pred_dir, data_root, split, workers=workers, progress=progress, **kwargs)
