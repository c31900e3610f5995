"""The reference inference protocol as pure functions of frame counts (GLUS `inference_iter.py`).

Which frames are context frames, which query frames each LLM step sees, in what order a key-frame
run visits the video and under which names the masks are written. Kept free of JAX and IO so each
rule can be tested against hand-computed expectations.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np


class ProtocolError(ValueError):
    """A score file, key frame or frame list does not fit the video."""


def frame_clips(num_frames: int, context_frame_num: int = 4) -> list[list[int]]:
    """`inference_video`'s clips: clip i takes frame min(indices[j] + i, indices[j+1] - 1) of each of
    the `context_frame_num` linspace segments (indices = linspace(0, n, c + 1) truncated to int)."""
    if num_frames < 1:
        raise ProtocolError("a video needs at least one frame")
    bounds = np.linspace(0, num_frames, context_frame_num + 1, dtype=int).tolist()
    clips = []
    for i in range(math.ceil(num_frames / context_frame_num)):
        clips.append([min(bounds[j] + i, bounds[j + 1] - 1) for j in range(context_frame_num)])
    return clips


def context_frames(num_frames: int, context_frame_num: int = 4) -> list[int]:
    """The context frames the reference uses: the middle clip, `frame_clips[len // 2]`."""
    clips = frame_clips(num_frames, context_frame_num)
    return clips[len(clips) // 2]


def question_window(step: int, question_frame_num: int = 4) -> list[int]:
    """Query positions (0-based, within the pass) in the prompt of LLM step `step` (0-based): the last
    `question_frame_num` query frames up to and including the current one (`rel_pos_list`)."""
    return list(range(max(0, step + 1 - question_frame_num), step + 1))


def key_frame_passes(num_frames: int, key_index: int) -> list[list[int]]:
    """Frame orders of the propagation passes: forward k..n-1, then (if k > 0) backward k..0.

    Each pass is an independent `inference_frames` call (fresh memory bank, same context frames)."""
    if not 0 <= key_index < num_frames:
        raise ProtocolError(f"key frame index {key_index} outside a video of {num_frames} frames")
    passes = [list(range(key_index, num_frames))]
    if key_index > 0:
        passes.append(list(range(key_index, -1, -1)))
    return passes


def merge_passes(passes: Sequence[Sequence[int]], num_frames: int) -> list[tuple[int, int]]:
    """For every frame, (pass index, position in that pass) of the mask written for it.

    Later passes win (the reference's backward pass overwrites the key frame). Unlike the reference
    (quirk Q6: the forward pass writes frame k+i under the name of frame i), every frame is written
    under its own name."""
    chosen: dict[int, tuple[int, int]] = {}
    for p, order in enumerate(passes):
        for pos, frame in enumerate(order):
            chosen[frame] = (p, pos)
    missing = [f for f in range(num_frames) if f not in chosen]
    if missing:
        raise ProtocolError(f"passes leave frames {missing} without a mask")
    return [chosen[f] for f in range(num_frames)]


def frame_number(name: str) -> int:
    """'00045.jpg' / '00045' -> 45 (the reference's `int(x.split('.')[0])`)."""
    try:
        return int(Path(name).name.split(".")[0])
    except ValueError:
        raise ProtocolError(f"frame name {name!r} is not a frame number") from None


def load_score_json(path: str | Path) -> dict[str, int]:
    """Read a key-frame score file `{"<video>_<exp_id>": "<frame number>"}` (values str or int)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ProtocolError(f"{path}: no such key-frame file") from None
    except json.JSONDecodeError as e:
        raise ProtocolError(f"{path}: malformed JSON: {e}") from None
    if not isinstance(data, dict):
        raise ProtocolError(f"{path}: expected an object mapping '<video>_<exp_id>' to a frame number")
    out = {}
    for key, value in data.items():
        try:
            out[key] = int(value)
        except (TypeError, ValueError):
            raise ProtocolError(f"{path}: entry {key!r} has frame {value!r}, not a frame number") from None
    return out


def key_frame_index(scores: dict[str, int], video: str, exp_id: str, frame_names: Sequence[str]) -> int:
    """Index of the scored key frame among the video's frames sorted by number; 0 when the
    expression has no entry (as the reference)."""
    key = f"{video}_{exp_id}"
    if key not in scores:
        return 0
    numbers = sorted(frame_number(n) for n in frame_names)
    try:
        return numbers.index(scores[key])
    except ValueError:
        raise ProtocolError(f"key frame {scores[key]} of {key!r} is not a frame of video {video!r}") from None


def save_score_json(scores: dict[str, int], path: str | Path) -> None:
    """Write scores in the reference's format (frame numbers as strings)."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps({k: str(v) for k, v in scores.items()}, indent=1))
    tmp.replace(path)
