"""Submission zips for the server-scored splits: MeViS `valid` and Ref-YouTube-VOS `valid`.

Both servers (CodaLab) take a zip of the predicted masks, one PNG per video / expression / frame
listed in the split's meta_expressions.json:

  MeViS            <video>/<exp_id>/<frame>.png              (at the zip root)
  Ref-YouTube-VOS  Annotations/<video>/<exp_id>/<frame>.png

(the layouts of the ReVOS/VISA tools `zip_mp_mevis.py` / `zip_mp_refytvos.py`). Ref-YouTube-VOS's
`valid` meta_expressions.json also lists the 305 challenge test videos; like ReferFormer we leave out
the videos of `meta_expressions/test/meta_expressions.json` when that file is present.

The prediction folder is checked for completeness before anything is written; a missing file is an
error listing what is missing. The zip is written to a temporary name and renamed when complete.
"""

from __future__ import annotations

import os
import sys
import zipfile
from pathlib import Path

from glus_jax.eval.readers import DataError, load_json

__all__ = ["SUBMISSION_BENCHMARKS", "SubmissionIncompleteError", "check_submission", "expected_files",
           "package_submission"]

SUBMISSION_BENCHMARKS = ("mevis", "refytvos")
_ARCHIVE_PREFIX = {"mevis": "", "refytvos": "Annotations/"}
_MAX_LISTED = 20


class SubmissionIncompleteError(DataError):
    """Predictions are missing for some video / expression / frame; `.missing` lists them."""

    def __init__(self, message: str, missing: list[str]):
        super().__init__(message)
        self.missing = missing


def _meta_path(benchmark: str, data_root: Path, split: str) -> Path:
    if benchmark == "mevis":
        return data_root / "mevis" / split / "meta_expressions.json"
    if benchmark == "refytvos":
        return data_root / "Refer-YouTube-VOS" / "meta_expressions" / split / "meta_expressions.json"
    raise ValueError(f"no submission format for {benchmark!r}; "
                     f"choose from {', '.join(SUBMISSION_BENCHMARKS)}")


def expected_files(benchmark: str, data_root, split: str = "valid") -> list[tuple[str, str, list[str]]]:
    """[(video, exp_id, frames)] a complete submission holds, in meta_expressions.json order."""
    data_root = Path(data_root)
    meta_path = _meta_path(benchmark, data_root, split)
    meta = load_json(meta_path, f"{benchmark} {split} expressions")
    if not isinstance(meta, dict) or not isinstance(meta.get("videos"), dict):
        raise DataError(f"{meta_path}: expected a JSON object with a 'videos' mapping")
    videos = meta["videos"]
    excluded: set[str] = set()
    if benchmark == "refytvos" and split == "valid":
        test_meta = _meta_path(benchmark, data_root, "test")
        if test_meta.is_file():
            excluded = set(load_json(test_meta, "Ref-YouTube-VOS test expressions")["videos"])
    out = []
    for video, vd in videos.items():
        if video in excluded:
            continue
        frames = [str(f) for f in vd["frames"]]
        for exp_id in vd["expressions"]:
            out.append((video, str(exp_id), frames))
    return out


def check_submission(benchmark: str, pred_dir, data_root, split: str = "valid") -> list[str]:
    """Relative paths ("<video>/<exp_id>/<frame>.png") that are missing or empty in `pred_dir`."""
    pred_dir = Path(pred_dir)
    missing = []
    for video, exp_id, frames in expected_files(benchmark, data_root, split):
        exp_dir = pred_dir / video / exp_id
        try:
            present = {e.name for e in os.scandir(exp_dir) if e.is_file() and e.stat().st_size > 0}
        except (FileNotFoundError, NotADirectoryError):
            present = set()
        missing += [f"{video}/{exp_id}/{f}.png" for f in frames if f"{f}.png" not in present]
    return missing


def package_submission(benchmark: str, pred_dir, data_root, out_zip, split: str = "valid", *,
                       progress: bool = True) -> Path:
    """Check `pred_dir` (`<video>/<exp_id>/<frame>.png`) and zip it in the server's layout.

    Raises SubmissionIncompleteError (listing the missing files) before writing anything if any
    expected file is missing. Returns the zip's path.
    """
    from tqdm import tqdm

    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise DataError(f"prediction folder not found: {pred_dir}")
    missing = check_submission(benchmark, pred_dir, data_root, split)
    if missing:
        shown = "\n  ".join(missing[:_MAX_LISTED])
        more = f"\n  ... and {len(missing) - _MAX_LISTED} more" if len(missing) > _MAX_LISTED else ""
        hint = ""
        if benchmark == "refytvos":
            hint = ("\n(if these are Ref-YouTube-VOS challenge test videos, place "
                    "meta_expressions/test/meta_expressions.json beside the valid one to leave them out)")
        raise SubmissionIncompleteError(
            f"{benchmark} {split} submission is incomplete: {len(missing)} prediction file(s) missing or "
            f"empty under {pred_dir}:\n  {shown}{more}{hint}", missing)
    items = expected_files(benchmark, data_root, split)
    out_zip = Path(out_zip)
    out_zip.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_zip.with_name(out_zip.name + ".partial")
    prefix = _ARCHIVE_PREFIX[benchmark]
    total = sum(len(fr) for _, _, fr in items)
    try:
        # PNGs are already deflate-compressed: store them as they are.
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf, \
                tqdm(total=total, desc=f"zip {benchmark} {split}", unit="png", disable=not progress,
                     file=sys.stderr) as bar:
            for video, exp_id, frames in items:
                for f in frames:
                    rel = f"{video}/{exp_id}/{f}.png"
                    zf.write(pred_dir / rel, arcname=prefix + rel)
                bar.update(len(frames))
        os.replace(tmp, out_zip)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out_zip
