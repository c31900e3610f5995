"""Segment whole videos or dataset splits to disk: resumable, sharded across JAX processes.

Each expression is written as `<out>/<video>/<exp_id>/<frame>.png` and marked done only after all
its frames (`video_io.write_expression`); a restart skips done expressions and redoes partial ones.
With several JAX processes (`jax.distributed`), expression i of the split's sorted list belongs to
process i % process_count, so a pod segments a split in parallel and each process writes its own
share. Expressions of one video are segmented together (shared image features, batched SAM2 scan).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from glus_jax.inference import protocol, video_io
from glus_jax.inference.pipeline import GLUSPipeline


@dataclasses.dataclass(frozen=True)
class Job:
    """One expression to segment."""

    video: str
    exp_id: str
    expression: str
    frame_paths: tuple[str, ...]
    frame_names: tuple[str, ...]


def dataset_jobs(benchmark: str, root: str | Path, split: str) -> list[Job]:
    """Every (video, expression) of a dataset split, in a stable order."""
    from glus_jax.data.formats import load_dataset

    ds = load_dataset(benchmark, str(root), split)
    jobs = []
    for video in ds.videos:
        for exp in video.expressions:
            jobs.append(
                Job(video.name, str(exp.exp_id), exp.text, tuple(map(str, video.frame_paths)), tuple(video.frame_names))
            )
    return sorted(jobs, key=lambda j: (j.video, j.exp_id))


def shard(jobs: Sequence[Job], process_index: int, process_count: int) -> list[Job]:
    if not 0 <= process_index < process_count:
        raise ValueError(f"process index {process_index} outside {process_count} processes")
    return list(jobs[process_index::process_count])


def run_jobs(
    pipe: GLUSPipeline,
    jobs: Sequence[Job],
    out: str | Path,
    *,
    key_frame_scores: dict[str, int] | None = None,
    save_logits: bool = False,
    overlay: bool = False,
    progress: bool = True,
) -> dict:
    """Segment `jobs` (skipping those already done) and write them under `out`. Returns stats."""
    out = Path(out)
    todo = [j for j in jobs if not video_io.is_done(out, j.video, j.exp_id)]
    by_video: dict[str, list[Job]] = {}
    for j in todo:
        by_video.setdefault(j.video, []).append(j)
    frames_done, t0 = 0, time.perf_counter()
    bar = tqdm(total=len(todo), unit="expr", disable=not progress, desc="segment")
    for video_name, group in by_video.items():
        first = group[0]
        if any(j.frame_paths != first.frame_paths for j in group):
            raise ValueError(f"video {video_name!r}: expressions list different frames")
        video = video_io.read_frames(first.frame_paths, video_name, first.frame_names)
        keys = [
            protocol.key_frame_index(key_frame_scores, j.video, j.exp_id, video.frame_names) if key_frame_scores else 0
            for j in group
        ]
        segment_video(pipe, video, group, out, keys=keys, save_logits=save_logits, overlay=overlay)
        frames_done += len(group) * len(video.frame_names)
        bar.update(len(group))
        bar.set_postfix(fps=f"{frames_done / (time.perf_counter() - t0):.2f}")
    bar.close()
    return {
        "expressions": len(todo),
        "skipped": len(jobs) - len(todo),
        "frames": frames_done,
        "seconds": time.perf_counter() - t0,
    }


def video_job(source: str | Path, expressions: Sequence[str]) -> tuple[video_io.Video, list[Job]]:
    """A single video (file or frame folder) and its expressions as jobs `<stem>/<i>`."""
    video = video_io.read_video(source)
    jobs = [Job(video.name, str(i), e, (), video.frame_names) for i, e in enumerate(expressions)]
    return video, jobs


def frame_index(video: video_io.Video, name: str) -> int:
    """Index of the frame called `name` ('00004', '00004.jpg' or a frame number)."""
    stem = Path(name).stem
    if stem in video.frame_names:
        return video.frame_names.index(stem)
    try:
        number = int(stem)
    except ValueError:
        number = None
    numbers = [protocol.frame_number(n) if n.isdigit() else None for n in video.frame_names]
    if number is not None and number in numbers:
        return numbers.index(number)
    raise protocol.ProtocolError(f"key frame {name!r} is not a frame of {video.name!r}")


def segment_video(
    pipe: GLUSPipeline,
    video: video_io.Video,
    jobs: Sequence[Job],
    out: str | Path,
    *,
    keys: Sequence[int] | None = None,
    save_logits: bool = False,
    overlay: bool = False,
) -> list:
    """Segment one decoded video for every job's expression (key frame index per job, default 0)
    and write each expression's masks (and logits / overlay)."""
    results = pipe.segment(video.frames, [j.expression for j in jobs], key_frames=keys)
    for job, res in zip(jobs, results):
        logits = res.logits(video.size) if save_logits else None
        video_io.write_expression(out, job.video, job.exp_id, video.frame_names, res.masks, logits)
        if overlay:
            video_io.write_overlay_video(Path(out) / job.video / job.exp_id / "overlay.mp4", video.frames, res.masks)
    return results
