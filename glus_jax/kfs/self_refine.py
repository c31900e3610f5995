"""Self-refinement: key-frame propagation without a trained selector.

GLUS run once as usual (plain forward propagation from frame 0) already says, per frame, how sure it
is of its mask. `frame_scores` combines three of its own signals into a score per frame:

* `iou`: the SAM2 mask decoder's predicted IoU of the chosen mask (`SegmentResult.iou`), clipped to
  [0, 1];
* `object`: sigmoid of SAM2's object-score logit (`SegmentResult.object_score`): is anything there;
* `agreement`: temporal stability, the mean IoU of the frame's mask with its neighbours' (t-1, t+1)
  masks; a pair of empty masks counts as 0 (no agreement on an object), a frame without neighbours
  (a one-frame video) gets 1. A frame where propagation flips between objects disagrees with a
  neighbour; a frame in the middle of a stable track agrees with both.

    score_t = present_t * (w_iou * iou_t + w_object * object_t + w_agreement * agreement_t)
              / (w_iou + w_object + w_agreement)

with present_t = the mask covers at least `min_area` of the frame (a frame where GLUS found nothing is
no key frame). The key frame is the argmax (the first on ties, so an all-zero score gives frame 0, the
plain run). `self_refine` then re-runs GLUS propagating from that key frame to the end and back to
the start (`GLUSPipeline.segment(..., key_frames=...)`); an expression whose key frame is 0 keeps its
first run (it would be identical). Masks are compared at the low-resolution logits' size
([T, 4h, 4w], SAM2's 256 x 256 at 1024 px), which is cheap and resolution independent.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from glus_jax.config import ConfigError


@dataclasses.dataclass(frozen=True, kw_only=True)
class SelfRefineConfig:
    w_iou: float = 1.0
    w_object: float = 1.0
    w_agreement: float = 1.0
    min_area: float = 1e-3  # fraction of the frame a mask must cover to count as a detection

    def __post_init__(self):
        ws = (self.w_iou, self.w_object, self.w_agreement)
        if min(ws) < 0 or sum(ws) <= 0:
            raise ConfigError(f"SelfRefineConfig: weights must be >= 0 with a positive sum, got {ws}")
        if not 0.0 <= self.min_area < 1.0:
            raise ConfigError(f"SelfRefineConfig.min_area must be in [0, 1), got {self.min_area}")


def mask_agreement(masks: np.ndarray) -> np.ndarray:
    """[T, h, w] bool -> [T]: mean IoU of each frame's mask with its neighbours' (module docstring)."""
    m = np.asarray(masks, bool).reshape(len(masks), -1)
    t = len(m)
    if t == 1:
        return np.ones(1)
    inter = np.count_nonzero(m[1:] & m[:-1], axis=1)
    union = np.count_nonzero(m[1:] | m[:-1], axis=1)
    pair = np.where(union > 0, inter / np.maximum(union, 1), 0.0)  # [T-1], IoU of (t, t+1)
    total = np.zeros(t)
    count = np.zeros(t)
    total[:-1] += pair
    count[:-1] += 1
    total[1:] += pair
    count[1:] += 1
    return total / count


def frame_scores(result, config: SelfRefineConfig = SelfRefineConfig()) -> np.ndarray:
    """Per-frame key-frame score [T] of one `SegmentResult` of a plain run (module docstring)."""
    masks = np.asarray(result.low_res_logits) > 0
    iou = np.clip(np.asarray(result.iou, np.float64), 0.0, 1.0)
    obj = 1.0 / (1.0 + np.exp(-np.asarray(result.object_score, np.float64)))
    agree = mask_agreement(masks)
    present = masks.reshape(len(masks), -1).mean(axis=1) >= max(config.min_area, 1e-12)
    c = config
    score = (c.w_iou * iou + c.w_object * obj + c.w_agreement * agree) / (
        c.w_iou + c.w_object + c.w_agreement
    )
    return np.where(present, score, 0.0)


def self_refine_scores(
    pipe, frames: np.ndarray, expressions: Sequence[str], *, config: SelfRefineConfig = SelfRefineConfig()
) -> tuple[list, list[int], np.ndarray]:
    """The first (plain forward) run only: (its results, key frame per expression, scores [E, T])."""
    plain = pipe.segment(frames, list(expressions))
    scores = np.stack([frame_scores(r, config) for r in plain]) if plain else np.zeros((0, len(frames)))
    keys = [int(np.argmax(s)) for s in scores]
    return plain, keys, scores


def self_refine(
    pipe, frames: np.ndarray, expressions: Sequence[str], *, config: SelfRefineConfig = SelfRefineConfig()
) -> tuple[list, list[int], np.ndarray]:
    """GLUS with self-chosen key frames: (results, key frame index per expression, scores [E, T]).

    `pipe`: a `GLUSPipeline`. Runs it once plainly, scores every frame (`frame_scores`), and re-runs
    the expressions whose best frame is not 0 with key-frame propagation from it."""
    plain, keys, scores = self_refine_scores(pipe, frames, expressions, config=config)
    results = list(plain)
    redo = [i for i, k in enumerate(keys) if k != 0]
    if redo:
        refined = pipe.segment(frames, [expressions[i] for i in redo], key_frames=[keys[i] for i in redo])
        for i, r in zip(redo, refined):
            results[i] = r
    return results, keys, scores


class SelfRefiningPipeline:
    """A `GLUSPipeline` whose `segment` self-refines (for `glus-jax segment --self-refine` and the
    runner, which only call `segment`). Explicit key frames other than 0 are refused: the two modes
    exclude each other. `last_key_frames` / `last_scores` keep the latest choice."""

    def __init__(self, pipe, config: SelfRefineConfig = SelfRefineConfig()):
        self.pipe = pipe
        self.refine_config = config
        self.last_key_frames: list[int] = []
        self.last_scores: np.ndarray | None = None

    def segment(
        self, frames: np.ndarray, expressions: Sequence[str], key_frames: Sequence[int] | None = None
    ):
        if key_frames is not None and any(int(k) != 0 for k in key_frames):
            raise ValueError("self-refinement chooses its own key frames; do not pass key frames as well")
        results, self.last_key_frames, self.last_scores = self_refine(
            self.pipe, frames, expressions, config=self.refine_config
        )
        return results

    def __getattr__(self, name):
        return getattr(self.pipe, name)
