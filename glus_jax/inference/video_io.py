"""Video input and mask output: frame folders or video files in, 0/255 PNGs and overlays out.

Outputs follow the benchmark layout `<out>/<video>/<exp_id>/<frame>.png`. An expression counts as
done only once a `.done` marker is written after all its frames, so an interrupted run redoes
partial expressions and skips finished ones.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
VIDEO_SUFFIXES = (".mp4", ".webm", ".avi", ".mov", ".mkv")
DONE_MARKER = ".done"


class VideoError(ValueError):
    """A video or frame folder cannot be read, or its frames do not form one video."""


@dataclasses.dataclass(frozen=True)
class Video:
    name: str
    frames: np.ndarray  # [T, H, W, 3] uint8 RGB
    frame_names: tuple[str, ...]  # names without suffix, e.g. "00000"

    @property
    def size(self) -> tuple[int, int]:
        return self.frames.shape[1], self.frames.shape[2]


def read_image(path: str | Path) -> np.ndarray:
    """[H, W, 3] uint8 RGB (PIL decodes the benchmark JPEGs to the same bytes as cv2)."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as e:
        raise VideoError(f"{path}: cannot decode image: {e}") from None


def read_frames(paths: Sequence[str | Path], name: str, frame_names: Sequence[str] | None = None) -> Video:
    """Decode the given frame files (in this order) into one Video; all frames must share a size."""
    if not paths:
        raise VideoError(f"{name}: no frames")
    frames = []
    for p in paths:
        img = read_image(p)
        if frames and img.shape != frames[0].shape:
            raise VideoError(
                f"{p}: frame of size {img.shape[1]}x{img.shape[0]} in a video of "
                f"{frames[0].shape[1]}x{frames[0].shape[0]} frames"
            )
        frames.append(img)
    names = tuple(frame_names) if frame_names is not None else tuple(Path(p).stem for p in paths)
    return Video(name=name, frames=np.stack(frames), frame_names=names)


def read_video(source: str | Path) -> Video:
    """A folder of frames (sorted by name, as the reference sorts frame names) or a video file."""
    source = Path(source)
    if not source.exists():
        raise VideoError(f"{source}: no such file or directory")
    if source.is_dir():
        paths = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise VideoError(f"{source}: folder holds no frames ({', '.join(IMAGE_SUFFIXES)})")
        return read_frames(paths, source.name)
    if source.suffix.lower() not in VIDEO_SUFFIXES:
        raise VideoError(f"{source}: not a video file ({', '.join(VIDEO_SUFFIXES)}) or a frame folder")
    import imageio.v3 as iio

    try:
        frames = np.asarray(iio.imread(source, plugin="pyav" if _has_pyav() else None, index=None))
    except Exception as e:  # imageio raises many types for corrupt containers
        raise VideoError(f"{source}: cannot decode video: {e}") from None
    if frames.ndim != 4 or frames.shape[0] == 0:
        raise VideoError(f"{source}: video has no frames")
    frames = frames[..., :3].astype(np.uint8)
    return Video(name=source.stem, frames=frames, frame_names=tuple(f"{i:05d}" for i in range(len(frames))))


def _has_pyav() -> bool:
    try:
        import av  # noqa: F401

        return True
    except ImportError:
        return False


# ----------------------------------------------------------------------------------- outputs


def expression_dir(out: str | Path, video: str, exp_id: str) -> Path:
    return Path(out) / video / str(exp_id)


def is_done(out: str | Path, video: str, exp_id: str) -> bool:
    return (expression_dir(out, video, exp_id) / DONE_MARKER).exists()


def write_expression(
    out: str | Path,
    video: str,
    exp_id: str,
    frame_names: Sequence[str],
    masks: np.ndarray,
    logits: np.ndarray | None = None,
) -> Path:
    """Write `<out>/<video>/<exp_id>/<frame>.png` (0/255) for every frame, optional logits.npz, then
    the done marker. masks: [T, H, W] bool; logits: [T, H, W] float (original resolution)."""
    d = expression_dir(out, video, exp_id)
    d.mkdir(parents=True, exist_ok=True)
    (d / DONE_MARKER).unlink(missing_ok=True)
    if len(frame_names) != len(masks):
        raise ValueError(f"{len(masks)} masks for {len(frame_names)} frames")
    for name, mask in zip(frame_names, masks):
        _atomic_png(d / f"{name}.png", (np.asarray(mask) > 0).astype(np.uint8) * 255)
    if logits is not None:
        tmp = d / "logits.tmp.npz"
        np.savez_compressed(tmp, **{name: np.asarray(l, np.float32) for name, l in zip(frame_names, logits)})
        os.replace(tmp, d / "logits.npz")
    (d / DONE_MARKER).write_text("ok\n")
    return d


def _atomic_png(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(array).save(tmp, format="PNG")
    os.replace(tmp, path)


def overlay(frames: np.ndarray, masks: np.ndarray, color=(255, 64, 32), alpha: float = 0.5) -> np.ndarray:
    """Blend masks [T, H, W] onto frames [T, H, W, 3] uint8."""
    m = (np.asarray(masks) > 0)[..., None]
    tint = np.asarray(color, np.float32)
    out = np.where(m, (1 - alpha) * frames + alpha * tint, frames)
    return out.round().astype(np.uint8)


def write_overlay_video(path: str | Path, frames: np.ndarray, masks: np.ndarray, fps: int = 8) -> Path:
    """An mp4 of the masks blended onto the frames (sizes padded to even for H.264)."""
    import imageio.v2 as imageio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    video = overlay(frames, masks)
    h, w = video.shape[1:3]
    video = np.pad(video, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    with imageio.get_writer(tmp, fps=fps, codec="libx264", quality=7, macro_block_size=1) as writer:
        for frame in video:
            writer.append_data(frame)
    os.replace(tmp, path)
    return path
