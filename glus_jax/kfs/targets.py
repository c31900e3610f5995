"""Training targets of the key-frame selector: the per-frame IoU that GLUS's own plain forward run
achieves on training videos.

GLUS's `kfs/README.md` annotates the training splits by running its inference (`scripts/inference.sh`,
no key frame) and scoring every frame with the MeViS evaluator (`db_eval_iou`). Here
`make_targets` does the same with `GLUSPipeline.segment` and `glus_jax.eval.metrics.jaccard` (J per
frame; a frame where both masks are empty scores 1, as the evaluator's) and also records whether the
target is present in each frame, so training can treat "absent and correctly empty" frames as poor key
frames (`TrainConfig.absent_score`).

Targets file (JSON):

    {"format": "glus-jax-kfs-targets", "version": 1,
     "dataset": {"benchmark": ..., "root": ..., "split": ...}, "model": ...,
     "entries": {"<video>_<exp_id>": {"video", "exp_id", "expression",
                                      "frames": [frame names], "iou": [J per frame],
                                      "present": [target visible per frame]}}}
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from glus_jax.eval.metrics import jaccard
from glus_jax.inference import video_io

TARGETS_FORMAT = "glus-jax-kfs-targets"


class TargetsError(ValueError):
    """A targets file that cannot be used; the message names the file and the entry."""


def expression_targets(gt: np.ndarray, pred: np.ndarray) -> tuple[list[float], list[bool]]:
    """(J per frame, target present per frame) of masks [T, H, W] (gt: any nonzero = target)."""
    gt = np.asarray(gt) != 0
    j = jaccard(gt, np.asarray(pred, bool))
    return [round(float(x), 6) for x in j], [bool(x) for x in gt.reshape(len(gt), -1).any(axis=1)]


def make_targets(
    pipe,
    benchmark: str,
    root: str | Path,
    split: str,
    *,
    out: str | Path | None = None,
    model: str = "",
    videos: Iterable[str] | None = None,
    progress: bool = True,
    save_every: int = 10,
) -> dict:
    """Segment every expression of a split with `pipe` (plain forward run), score each frame against
    the ground truth, return the targets dict (module docstring).

    With `out`, the file is written every `save_every` videos and at the end (atomically), and entries
    already in an existing `out` for the same dataset are kept and not recomputed (resume)."""
    from glus_jax.data.formats import load_dataset

    ds = load_dataset(benchmark, str(root), split)
    data = {
        "format": TARGETS_FORMAT,
        "version": 1,
        "dataset": {"benchmark": benchmark, "root": str(root), "split": split},
        "model": str(model),
        "entries": {},
    }
    if out is not None and Path(out).exists():
        old = load_targets(out)
        if old["dataset"] == data["dataset"]:
            data["entries"] = old["entries"]
    wanted = None if videos is None else set(videos)
    todo = [v for v in ds.videos if (wanted is None or v.name in wanted)]
    todo = [v for v in todo if any(f"{v.name}_{e.exp_id}" not in data["entries"] for e in v.expressions)]
    for v in todo:
        if not v.has_masks:
            raise TargetsError(
                f"{root}/{split}: video {v.name!r} has no ground-truth masks (targets need a training split)"
            )
    t0 = time.perf_counter()
    for n, v in enumerate(tqdm(todo, unit="video", disable=not progress, desc="kfs targets")):
        video = video_io.read_frames(v.frame_paths, v.name, v.frame_names)
        results = pipe.segment(video.frames, [e.text for e in v.expressions])
        hw = video.frames.shape[1:3]
        for i, (e, r) in enumerate(zip(v.expressions, results)):
            gt = np.stack([v.expression_mask(i, t, hw) for t in range(v.length)])
            iou, present = expression_targets(gt, r.masks)
            data["entries"][f"{v.name}_{e.exp_id}"] = {
                "video": v.name,
                "exp_id": str(e.exp_id),
                "expression": e.text,
                "frames": list(v.frame_names),
                "iou": iou,
                "present": present,
            }
        if out is not None and (n + 1) % save_every == 0:
            save_targets(data, out)
    data["seconds"] = time.perf_counter() - t0
    if out is not None:
        save_targets(data, out)
    return data


def save_targets(data: dict, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def load_targets(path: str | Path) -> dict:
    """Read and check a targets file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise TargetsError(f"{path}: no such targets file") from None
    except json.JSONDecodeError as e:
        raise TargetsError(f"{path}: malformed JSON: {e}") from None
    if not isinstance(data, dict) or data.get("format") != TARGETS_FORMAT:
        raise TargetsError(f"{path}: not a key-frame targets file (format {TARGETS_FORMAT!r})")
    entries = data.get("entries")
    if not isinstance(entries, dict):
        raise TargetsError(f"{path}: 'entries' must be an object")
    for key, e in entries.items():
        try:
            n = len(e["frames"])
            ok = len(e["iou"]) == n and len(e["present"]) == n and n > 0 and isinstance(e["expression"], str)
        except (KeyError, TypeError):
            ok = False
        if not ok:
            raise TargetsError(
                f"{path}: entry {key!r} needs 'expression' and equally long non-empty 'frames', 'iou',"
                " 'present'"
            )
    return data
