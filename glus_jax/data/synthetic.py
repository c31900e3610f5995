"""A small synthetic world of referring-video-segmentation data: moving coloured shapes and expressions
that need language *and* motion to resolve, written in the MeViS or the Ref-YouTube-VOS layout.

Real weights and datasets never reach the development machines, so the learning test and the demo train a
tiny GLUS on these videos and segment held-out ones. Everything is seeded: the same (seed, split, index)
gives the same video, and the same call writes byte-identical files.

The world
---------
Each video has T frames (``min_frames..max_frames``) of H x W pixels over a textured, noisy background and
``min_objects..max_objects`` objects (2..6 by default, skewed towards more: with few objects an
expression-blind guess such as "all objects" or "the largest moving one" scores too well). An object has a
shape (``SHAPES``), a colour (``COLORS``), a size, a depth (z-order: objects occlude those below them) and a
motion program along one of four directions:

    static   never moves                  stops    moves, then stands still from its event frame
    linear   moves the whole video        starts   stands still, then moves from its event frame
    turns    moves, then reverses direction at its event frame

Moving objects may enter the frame from outside or leave it. With probability ``p_ambiguous`` a video holds
a pair of identical-looking objects (same shape and colour) whose motion is the same until an event frame
(one starts, stops or turns, the other does not): an expression about that event cannot be resolved from
the early frames. This is what the key-frame selector is measured on.

Expressions
-----------
An expression is a noun phrase built from a fixed vocabulary (``VOCABULARY``; no punctuation, lower case):

    the [leftmost|rightmost|topmost|bottommost] [colour] (shape | "shape" | "object") [clause]
    the [two|three|four] [colour] (shapes | "shapes" | "objects") [clause]     all [colour] (shapes) [clause]
    <singular phrase> and <singular phrase>

with clauses ``moving to the left`` / ``moving up`` / ..., ``that does not move``, ``that stops``,
``that starts moving``, ``that turns around``, ``that enters the scene``, ``that leaves the scene``,
``that appears last``. Every predicate is evaluated on the generator's own ground-truth tracks in three-valued
logic (true / false / unclear: e.g. "moving to the left" is unclear for an object that goes left then right);
an expression is kept only if every object gets a definite value and the true set is exactly its target set
(one object for singular phrases, the stated count for plural ones; multi-object expressions leave at least
two objects out, so "all of them" is never the answer). Kinds (``KINDS``): appearance, motion (direction,
"does not move"), event (stops / starts / turns), border (enters / leaves), order (appears last), position
(superlatives), plural, conjunction; ``WorldConfig.kind_weights`` sets their mix. The same evaluation on the
prefix of frames ``0..t`` gives each expression's ``ambiguous_until``: the first frame index t at which the
frames seen so far single out the target set (objects not yet seen are ignored; targets must have been seen).

Files
-----
MeViS layout (``format="mevis"``; what ``dataset/mevis.py`` and ``utils/eval_mevis.py`` read)::

    ROOT/<split>/JPEGImages/<video>/<frame>.jpg
    ROOT/<split>/meta_expressions.json   {"videos": {video: {"frames": [...], "expressions":
                                              {exp_id: {"exp", "obj_id": ["0", ..], "anno_id": [int, ..]}}}}}
    ROOT/<split>/mask_dict.json          {str(anno_id): [COCO RLE (counts as str) | null per frame]}

Ref-YouTube-VOS layout (``format="refytvos"``; ``dataset/refyoutube_vos.py``); single-object expressions only,
because that format's ``obj_id`` is one id::

    ROOT/<split>/JPEGImages/<video>/<frame>.jpg
    ROOT/<split>/Annotations/<video>/<frame>.png   palette PNG, pixel value = object id (1..N), 0 = background
    ROOT/<split>/meta.json                         {"videos": {video: {"objects": {id: {category, frames}}}}}
    ROOT/meta_expressions/<split>/meta_expressions.json  {"videos": {video: {"expressions": {exp_id: {"exp",
                                                          "obj_id": "1"}}, "frames": [...]}}}

Both layouts add a side file the dataset readers ignore, ``ROOT/<split>/synthetic.json``: the generator
config and seed, and per video its objects (obj_id, anno_id, shape, colour, motion, event frame, centre track,
in-frame fraction and visible pixel count per frame) and per expression its kind, target obj_ids,
``ambiguous_until`` and ``early_ambiguous``. Object masks are the *visible* parts (occluded pixels belong to
the object on top); a frame where an object is invisible has a null RLE.

Each split is written to a temporary directory under ROOT and renamed into place, so an interrupted run
leaves no half-written split (in the Ref-YouTube-VOS layout the split directory is renamed first and its
``meta_expressions/<split>`` directory last; a split without the latter is incomplete and readers refuse it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import tempfile
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from glus_jax.config import from_dict, to_dict

# ----------------------------------------------------------------------------------------------- world

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (225, 45, 40),
    "green": (45, 175, 60),
    "blue": (40, 85, 225),
    "yellow": (240, 215, 40),
    "purple": (150, 60, 200),
    "white": (245, 245, 245),
}
DIRECTIONS: dict[str, tuple[float, float]] = {
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
}
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}
MOTIONS: tuple[str, ...] = ("static", "linear", "stops", "starts", "turns")
# Expression kinds: singular ones by their clause, multi-object ones by construction.
KINDS: tuple[str, ...] = (
    "appearance",
    "motion",
    "event",
    "border",
    "order",
    "position",
    "plural",
    "conjunction",
)
MULTI_KINDS = ("plural", "conjunction")
LAYOUTS = ("mevis", "refytvos")

# Shape outlines relative to the object's size r (pixels). `_EXTENT` bounds each outline, used for placement.
_EXTENT = {"circle": 1.0, "square": 0.85, "triangle": 1.15, "diamond": 1.15, "star": 1.2}


def _regular(n: int, radius: float, phase: float) -> np.ndarray:
    a = phase + 2 * np.pi * np.arange(n) / n
    return np.stack([radius * np.cos(a), radius * np.sin(a)], axis=1)


def _star() -> np.ndarray:
    outer, inner = _regular(5, 1.2, -np.pi / 2), _regular(5, 0.5, -np.pi / 2 + np.pi / 5)
    return np.stack([outer, inner], axis=1).reshape(10, 2)


# Polygons as unit vertices (x, y) with y pointing down, so the triangle and star point up.
_POLYGONS = {
    "square": np.array([[-0.85, -0.85], [0.85, -0.85], [0.85, 0.85], [-0.85, 0.85]]),
    "triangle": _regular(3, 1.15, -np.pi / 2),
    "diamond": _regular(4, 1.15, -np.pi / 2),
    "star": _star(),
}

# Phrase pieces. Clause keys are the predicate names; each has one or more surface forms.
_CLAUSES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {  # key -> (singular forms, plural forms)
    "move:left": (("moving to the left", "moving left"), ("moving to the left", "moving left")),
    "move:right": (("moving to the right", "moving right"), ("moving to the right", "moving right")),
    "move:up": (("moving up", "moving upward"), ("moving up", "moving upward")),
    "move:down": (("moving down", "moving downward"), ("moving down", "moving downward")),
    "still": (("that does not move", "that stays still"), ("that do not move", "that stay still")),
    "stops": (("that stops", "that stops moving"), ("that stop", "that stop moving")),
    "starts": (("that starts moving",), ("that start moving",)),
    "turns": (("that turns around",), ("that turn around",)),
    "enters": (("that enters the scene",), ("that enter the scene",)),
    "leaves": (("that leaves the scene",), ("that leave the scene",)),
    "appears_last": (("that appears last",), ()),  # superlative over the objects the noun phrase names
}
_CLAUSE_KIND = {
    "move:left": "motion",
    "move:right": "motion",
    "move:up": "motion",
    "move:down": "motion",
    "still": "motion",
    "stops": "event",
    "starts": "event",
    "turns": "event",
    "enters": "border",
    "leaves": "border",
    "appears_last": "order",
}
# (axis, sign): the winner maximises sign * coordinate, e.g. leftmost = smallest x.
_SUPERLATIVES = {"leftmost": (0, -1.0), "rightmost": (0, 1.0), "topmost": (1, -1.0), "bottommost": (1, 1.0)}
_GENERIC = (("shape", "object"), ("shapes", "objects"))
_NUMBERS = {2: "two", 3: "three", 4: "four"}  # multi-object sets leave >= 2 of <= 6 objects out


def vocabulary() -> list[str]:
    """Every word an expression can contain, sorted (expressions are lower case, space separated)."""
    words = {
        "the",
        "and",
        "all",
        *SHAPES,
        *(s + "s" for s in SHAPES),
        *COLORS,
        *_SUPERLATIVES,
        *_NUMBERS.values(),
    }
    words.update(w for forms in _GENERIC for f in forms for w in f.split())
    words.update(w for forms in _CLAUSES.values() for fs in forms for f in fs for w in f.split())
    return sorted(words)


VOCABULARY: tuple[str, ...] = tuple(vocabulary())


# ------------------------------------------------------------------------------------------- configs


@dataclasses.dataclass(frozen=True, kw_only=True)
class WorldConfig:
    """Knobs of the synthetic world. Sizes and speeds are fractions of the frame so any resolution works."""

    height: int = 128
    width: int = 128
    min_frames: int = 16
    max_frames: int = 48
    min_objects: int = 2
    max_objects: int = 6
    object_count_draws: int = 3  # objects per video = max of this many uniform draws in [min, max]
    shapes: tuple[str, ...] = SHAPES
    colors: tuple[str, ...] = tuple(COLORS)
    size_range: tuple[float, float] = (0.07, 0.12)  # object size r / min(H, W)
    travel_range: tuple[float, float] = (0.3, 0.7)  # distance a mover would cover in T-1 steps / frame extent
    # Probability of each motion program for objects outside the ambiguous pair, in MOTIONS order.
    motion_weights: tuple[float, ...] = (0.2, 0.3, 0.15, 0.15, 0.2)
    p_ambiguous: float = 0.3  # a video holds an identical-looking pair that only later motion tells apart
    p_enter: float = 0.4  # a video has an object entering from outside the frame
    p_leave: float = 0.4  # a video has an object leaving the frame
    min_expressions: int = 3
    max_expressions: int = 6
    p_multi: float = 0.15  # share of multi-object expressions (MeViS layout only)
    # Expressions per referred object, as in MeViS (several phrasings of one target). GLUS's contrastive
    # loss takes its positives from them (another expression of the same objects at the same frame).
    expressions_per_object: int = 2
    kind_weights: dict[str, float] = dataclasses.field(
        default_factory=lambda: {
            "appearance": 1.0,
            "motion": 1.5,
            "event": 1.5,
            "border": 3.0,
            "order": 2.0,
            "position": 0.75,
            "plural": 1.0,
            "conjunction": 0.5,
        }
    )
    early_ambiguous_fraction: float = 0.25  # early_ambiguous: ambiguous_until >= this fraction of T
    jpeg_quality: int = 95

    def __post_init__(self):
        def bad(msg):
            raise ValueError(f"WorldConfig: {msg}")

        if self.height < 32 or self.width < 32:
            bad(f"height and width must be >= 32, got {self.height}x{self.width}")
        if not 8 <= self.min_frames <= self.max_frames:
            bad(f"need 8 <= min_frames <= max_frames, got {self.min_frames}, {self.max_frames}")
        if not 2 <= self.min_objects <= self.max_objects <= 6:
            bad(f"need 2 <= min_objects <= max_objects <= 6, got {self.min_objects}, {self.max_objects}")
        if unknown := sorted(set(self.shapes) - set(SHAPES)):
            bad(f"unknown shapes {unknown}; known: {list(SHAPES)}")
        if unknown := sorted(set(self.colors) - set(COLORS)):
            bad(f"unknown colors {unknown}; known: {list(COLORS)}")
        if len(self.shapes) < 2 or len(self.colors) < 2:
            bad("need at least two shapes and two colors")
        if (
            len(self.motion_weights) != len(MOTIONS)
            or min(self.motion_weights) < 0
            or sum(self.motion_weights) <= 0
        ):
            bad(f"motion_weights must be {len(MOTIONS)} non-negative weights for {MOTIONS}")
        if unknown := sorted(set(self.kind_weights) - set(KINDS)):
            bad(f"unknown kinds in kind_weights {unknown}; known: {list(KINDS)}")
        if not 1 <= self.min_expressions <= self.max_expressions:
            bad(
                f"need 1 <= min_expressions <= max_expressions, "
                f"got {self.min_expressions}, {self.max_expressions}"
            )
        if self.expressions_per_object < 1:
            bad(f"expressions_per_object must be >= 1, got {self.expressions_per_object}")
        if self.object_count_draws < 1:
            bad(f"object_count_draws must be >= 1, got {self.object_count_draws}")
        for name in ("p_ambiguous", "p_enter", "p_leave", "p_multi", "early_ambiguous_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                bad(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if min(self.kind_weights.values(), default=0.0) < 0 or sum(self.kind_weights.values()) <= 0:
            bad(f"kind_weights must be non-negative with a positive sum, got {self.kind_weights}")
        if not (0 < self.travel_range[0] <= self.travel_range[1]):
            bad(f"travel_range must be positive and ordered, got {self.travel_range}")
        if not (0 < self.size_range[0] <= self.size_range[1] <= 0.25):
            bad(f"size_range must be within (0, 0.25], got {self.size_range}")


@dataclasses.dataclass(frozen=True)
class SyntheticObject:
    """One object's ground truth. Arrays are per frame: ``centers`` [T, 2] (x, y) in pixels (also off-screen),
    ``in_frame`` [T] fraction of the (unoccluded) shape inside the frame, ``visible_pixels`` [T] pixels of it
    drawn on top (its mask area), ``step_labels`` [T-1] "still" or the direction moved from frame t to t+1."""

    shape: str
    color: str
    size: float
    z: int
    motion: str
    direction: str | None
    event_frame: int | None
    centers: np.ndarray
    in_frame: np.ndarray
    visible_pixels: np.ndarray
    step_labels: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class SyntheticExpression:
    """``targets`` are object indices (0-based, into ``SyntheticVideo.objects``)."""

    text: str
    targets: tuple[int, ...]
    kind: str
    ambiguous_until: int
    appearance_suffices: bool  # the same noun phrase without clause/superlative names the same objects


@dataclasses.dataclass(frozen=True)
class SyntheticVideo:
    """``frames`` [T, H, W, 3] uint8 RGB; ``labels`` [T, H, W] uint8 with 0 = background, i+1 = objects[i]
    (the object drawn on top), so ``labels == i + 1`` is object i's visible mask."""

    name: str
    frames: np.ndarray
    labels: np.ndarray
    objects: tuple[SyntheticObject, ...]
    expressions: tuple[SyntheticExpression, ...]
    scenario: str | None  # "starts" | "stops" | "turns" for videos with an identical-looking pair
    early_ambiguous_threshold: int

    @property
    def num_frames(self) -> int:
        return self.frames.shape[0]

    def object_masks(self) -> np.ndarray:
        """[N, T, H, W] bool visible masks."""
        return self.labels[None] == np.arange(1, len(self.objects) + 1, dtype=np.uint8)[:, None, None, None]

    def expression_masks(self, index: int) -> np.ndarray:
        """[T, H, W] bool: union of the target objects' visible masks."""
        ids = np.asarray(self.expressions[index].targets, dtype=np.uint8) + 1
        return np.isin(self.labels, ids)


# ------------------------------------------------------------------------------------- rasterisation


def _shape_mask(
    shape: str, cx: float, cy: float, r: float, cache: dict | None = None
) -> tuple[int, int, np.ndarray]:
    """Unclipped mask of a shape centred at (cx, cy): (y0, x0, bool [h, w]), pixel centres at +0.5.

    With `cache`, masks are reused across integer translations (same shape, size and sub-pixel offset)."""
    if cache is not None:
        ix, iy = np.floor(cx), np.floor(cy)
        key = (shape, r, cx - ix, cy - iy)
        if key not in cache:
            cache[key] = _shape_mask(shape, cx - ix, cy - iy, r)
        y0, x0, m = cache[key]
        return y0 + int(iy), x0 + int(ix), m
    e = _EXTENT[shape] * r
    x0, y0 = int(np.floor(cx - e)) - 1, int(np.floor(cy - e)) - 1
    x1, y1 = int(np.ceil(cx + e)) + 1, int(np.ceil(cy + e)) + 1
    px = (np.arange(x0, x1) + 0.5 - cx)[None, :] / r
    py = (np.arange(y0, y1) + 0.5 - cy)[:, None] / r
    if shape == "circle":
        return y0, x0, px * px + py * py <= 1.0
    verts = _POLYGONS[shape]
    inside = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    for (ax, ay), (bx, by) in zip(verts, np.roll(verts, -1, axis=0)):
        if ay == by:
            continue
        crosses = (ay > py) != (by > py)  # [h, 1]: the edge spans this row
        x_at = ax + (py - ay) * (bx - ax) / (by - ay)  # [h, 1]
        inside ^= crosses & (px < x_at)  # even-odd rule, works for the (non-convex) star
    return y0, x0, inside


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A muted, low-saturation texture [H, W, 3] float32: smooth blobs plus fixed fine grain."""
    base = rng.uniform(60, 140)  # mid grey: every object colour (white included) keeps its contrast
    tint = rng.uniform(-12, 12, size=3)
    out = np.zeros((h, w, 3), np.float32)
    for cells, amp in ((4, 24.0), (10, 10.0)):
        coarse = rng.normal(size=(cells + 1, cells + 1)).astype(np.float32)
        ys, xs = np.linspace(0, cells, h), np.linspace(0, cells, w)
        iy, ix = np.minimum(ys.astype(int), cells - 1), np.minimum(xs.astype(int), cells - 1)
        fy, fx = (ys - iy)[:, None], (xs - ix)[None, :]
        c = coarse
        smooth = (
            c[iy][:, ix] * (1 - fy) * (1 - fx)
            + c[iy + 1][:, ix] * fy * (1 - fx)
            + c[iy][:, ix + 1] * (1 - fy) * fx
            + c[iy + 1][:, ix + 1] * fy * fx
        )
        out += amp * smooth[..., None]
    out += base + tint + rng.normal(0, 5, size=(h, w, 3)).astype(np.float32)
    return out


# ----------------------------------------------------------------------------------------- motions


@dataclasses.dataclass
class _Spec:
    shape: str
    color: str
    size: float
    motion: str
    direction: str | None
    event: int | None
    speed: float
    border: str = "inside"  # "inside" | "enters" | "leaves"


def _velocities(spec: _Spec, steps: int) -> np.ndarray:
    """[steps, 2] displacement from frame t to t+1."""
    v = np.zeros((steps, 2))
    if spec.motion == "static":
        return v
    d = np.asarray(DIRECTIONS[spec.direction]) * spec.speed
    t = np.arange(steps)[:, None]
    if spec.motion == "linear":
        return v + d
    if spec.motion == "stops":
        return np.where(t < spec.event, d, 0.0)
    if spec.motion == "starts":
        return np.where(t >= spec.event, d, 0.0)
    if spec.motion == "turns":
        return np.where(t < spec.event, d, -d)
    raise AssertionError(spec.motion)


def _place(rng: np.random.Generator, spec: _Spec, cum: np.ndarray, h: int, w: int) -> np.ndarray | None:
    """Start centre (x, y) for cumulative displacements cum [T, 2], honouring spec.border, or None."""
    e = _EXTENT[spec.shape] * spec.size + 1.0
    extent = np.array([w, h], float)
    start = np.zeros(2)
    axis = None if spec.direction is None else (0 if spec.direction in ("left", "right") else 1)
    for a in range(2):
        lo, hi = e - cum[:, a].min(), extent[a] - e - cum[:, a].max()  # fully inside the whole video
        if a == axis and spec.border != "inside":
            # Work in the coordinate u' that grows along the motion (x or y, mirrored for left/up):
            # u'(t) = u'_0 + u(t), with u(t) non-decreasing for the motions that enter or leave.
            sign = DIRECTIONS[spec.direction][a]
            u = cum[:, a] * sign
            T = len(u)
            if spec.border == "enters":  # fully outside at frame 0, (partly) in from frame t_in on
                steps = np.diff(u)
                ok = np.flatnonzero((np.arange(1, T) < T // 2) & (steps > 0))  # still moving when it comes in
                if len(ok) == 0:
                    return None
                t_in = int(rng.choice(ok)) + 1
                u0 = -e + rng.uniform(0.1, 0.9) * steps[t_in - 1] - u[t_in]
            else:  # leaves: fully inside at frame 0, fully outside from frame t_out on
                ok = np.flatnonzero((np.arange(T) >= T // 2) & (u >= 2 * e + 1.0) & (u <= extent[a] - 1.0))
                if len(ok) == 0:  # too slow or too short a video to cross the border from inside
                    return None
                t_out = int(rng.choice(ok))
                u0 = extent[a] + e - u[t_out] + rng.uniform(0.0, 1.0)  # in [e, extent - e]
            start[a] = u0 if sign > 0 else extent[a] - u0
            continue
        if lo > hi:
            return None
        start[a] = rng.uniform(lo, hi)
    return start


def _sample_specs(rng: np.random.Generator, cfg: WorldConfig, T: int) -> tuple[list[_Spec], str | None]:
    # The largest of `object_count_draws` uniform draws: skewed towards more objects, so that an
    # expression-blind guess (one object, or all of them) is right less often.
    n = int(max(rng.integers(cfg.min_objects, cfg.max_objects + 1, size=cfg.object_count_draws)))
    shapes = list(rng.choice(cfg.shapes, size=min(len(cfg.shapes), int(rng.integers(2, 4))), replace=False))
    colors = list(rng.choice(cfg.colors, size=min(len(cfg.colors), int(rng.integers(2, 4))), replace=False))
    m = min(cfg.height, cfg.width)
    lo_ev, hi_ev = round(0.35 * (T - 1)), round(0.65 * (T - 1))

    def speed(direction: str) -> float:
        ext = cfg.width if direction in ("left", "right") else cfg.height
        return max(0.75, rng.uniform(*cfg.travel_range) * ext / (T - 1))

    def size() -> float:
        return float(rng.uniform(*cfg.size_range) * m)

    specs: list[_Spec] = []
    scenario = None
    if rng.random() < cfg.p_ambiguous:
        scenario = str(rng.choice(["starts", "stops", "turns"]))
        shape, color = str(rng.choice(shapes)), str(rng.choice(colors))
        d = str(rng.choice(list(DIRECTIONS)))
        ev, sp, r = int(rng.integers(lo_ev, hi_ev + 1)), speed(d), size()
        twin = "static" if scenario == "starts" else "linear"
        specs.append(_Spec(shape, color, r, scenario, d, ev, sp))
        specs.append(
            _Spec(shape, color, r * rng.uniform(0.9, 1.1), twin, None if twin == "static" else d, None, sp)
        )
    p = np.asarray(cfg.motion_weights, float) / sum(cfg.motion_weights)
    while len(specs) < n:
        motion = str(rng.choice(MOTIONS, p=p))
        d = None if motion == "static" else str(rng.choice(list(DIRECTIONS)))
        ev = int(rng.integers(lo_ev, hi_ev + 1)) if motion in ("stops", "starts", "turns") else None
        specs.append(
            _Spec(
                str(rng.choice(shapes)),
                str(rng.choice(colors)),
                size(),
                motion,
                d,
                ev,
                speed(d) if d else 0.0,
            )
        )
    free = list(range(2 if scenario else 0, len(specs)))
    for border, p_border, motions in (
        ("enters", cfg.p_enter, ("linear", "stops")),
        ("leaves", cfg.p_leave, ("linear", "starts")),
    ):
        if rng.random() < p_border:
            cands = [i for i in free if specs[i].motion in motions and specs[i].border == "inside"]
            if cands:
                s = specs[int(rng.choice(cands))]
                s.border = border
                # Fast enough to cross the border (twice its extent) while it moves: before a stop when it
                # enters, after a start when it leaves.
                moving = {"linear": T // 2, "stops": s.event, "starts": T - 1 - (s.event or 0)}[s.motion]
                need = 3.0 * (_EXTENT[s.shape] * s.size + 1.0) / max(moving, 1)
                ext = cfg.width if s.direction in ("left", "right") else cfg.height
                s.speed = float(min(max(s.speed, need), 0.08 * ext))
    return specs, scenario


# ------------------------------------------------------------------------------------ render a video


def _render(rng, cfg: WorldConfig, T: int, specs: list[_Spec], scenario: str | None):
    """Place, move and draw the objects. Returns (frames, labels, objects) or None to retry."""
    h, w = cfg.height, cfg.width
    n = len(specs)
    centers = np.zeros((n, T, 2))
    for i, spec in enumerate(specs):
        vel = _velocities(spec, T - 1)
        cum = np.concatenate([np.zeros((1, 2)), np.cumsum(vel, axis=0)])
        for _ in range(30):
            start = _place(rng, spec, cum, h, w)
            if start is None and spec.border != "inside":
                spec.border = "inside"  # cannot enter/leave at this speed and length: stay in the frame
                start = _place(rng, spec, cum, h, w)
            if start is None:
                return None
            # Quarter-pixel centres: the rasterised shapes repeat, so their masks are cached (_shape_mask).
            c = np.round((start + cum) * 4.0) / 4.0
            ok = True
            for j in range(i):
                # A clear gap to earlier objects at frame 0; the identical-looking pair keeps it all along, so
                # telling them apart never hinges on who passes in front of whom.
                frames = slice(0, T) if (scenario is not None and i == 1) else slice(0, 1)
                gap = (_EXTENT[spec.shape] * spec.size + _EXTENT[specs[j].shape] * specs[j].size) * 1.05
                if np.min(np.linalg.norm(c[frames] - centers[j, frames], axis=-1)) < gap:
                    ok = False
                    break
            if ok:
                centers[i] = c
                break
        else:
            return None
    z = rng.permutation(n)  # z[i]: depth rank of object i, larger is drawn on top
    order = np.argsort(z)
    labels = np.zeros((T, h, w), np.uint8)
    in_frame = np.zeros((n, T))
    cache: dict = {}
    for t in range(T):
        lab = labels[t]
        for i in order:
            y0, x0, m = _shape_mask(specs[i].shape, *centers[i, t], specs[i].size, cache)
            total = m.sum()
            ya, xa = max(y0, 0), max(x0, 0)
            yb, xb = min(y0 + m.shape[0], h), min(x0 + m.shape[1], w)
            if ya >= yb or xa >= xb:
                continue
            mc = m[ya - y0 : yb - y0, xa - x0 : xb - x0]
            in_frame[i, t] = mc.sum() / total
            lab[ya:yb, xa:xb][mc] = i + 1
    visible = np.stack([(labels == i + 1).sum(axis=(1, 2)) for i in range(n)]) if n else np.zeros((0, T))
    # Every object must be well visible for a good part of the video; otherwise its masks are mostly empty.
    for i, spec in enumerate(specs):
        full = _full_area(spec)
        seen = visible[i] >= _seen_threshold(full)
        if seen.sum() < max(4, int(0.35 * T)):
            return None
        inside = in_frame[i] > 0
        if np.mean(visible[i][inside] / np.maximum(in_frame[i][inside] * full, 1)) < 0.6:
            return None
    frames = _paint(rng, cfg, labels, specs)
    objects = []
    for i, spec in enumerate(specs):
        steps = np.diff(centers[i], axis=0)
        step_labels = tuple(_step_label(s) for s in steps)
        objects.append(
            SyntheticObject(
                shape=spec.shape,
                color=spec.color,
                size=round(spec.size, 3),
                z=int(z[i]),
                motion=spec.motion,
                direction=spec.direction,
                event_frame=spec.event,
                centers=np.round(centers[i], 3),
                in_frame=np.round(in_frame[i], 4),
                visible_pixels=visible[i].astype(np.int64),
                step_labels=step_labels,
            )
        )
    return frames, labels, tuple(objects)


def _full_area(spec: _Spec) -> float:
    unit = {
        "circle": np.pi,
        "square": 4 * 0.85**2,
        "triangle": 3 * np.sqrt(3) / 4 * 1.15**2,
        "diamond": 2 * 1.15**2,
        "star": 5 * 1.2 * 0.5 * np.sin(np.pi / 5),
    }[spec.shape]
    return unit * spec.size**2


def _seen_threshold(full_area: float) -> float:
    return max(3.0, 0.1 * full_area)


def _step_label(step: np.ndarray) -> str:
    dx, dy = float(step[0]), float(step[1])
    if abs(dx) < 1e-6 and abs(dy) < 1e-6:
        return "still"
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


def _paint(rng, cfg: WorldConfig, labels: np.ndarray, specs: list[_Spec]) -> np.ndarray:
    T, h, w = labels.shape
    bg = np.clip(_background(rng, h, w), 0, 255).astype(np.int16)
    palette = np.zeros((len(specs) + 1, 3), np.int16)
    for i, s in enumerate(specs):
        palette[i + 1] = np.clip(np.asarray(COLORS[s.color]) + rng.integers(-12, 13, size=3), 0, 255)
    # Sensor noise, fresh every frame: uniform integers in [-6, 6] from raw random bytes (fast).
    noise = (np.frombuffer(rng.bytes(T * h * w * 3), np.uint8) % 13).reshape(T, h, w, 3).astype(np.int16)
    img = np.empty((T, h, w, 3), np.int16)
    img[:] = bg - 6
    on = labels > 0
    img[on] = palette[labels[on]] - 6
    img += noise
    np.clip(img, 0, 255, out=img)
    return img.astype(np.uint8)


# ------------------------------------------------------------------------ predicates (three-valued)

# Truth values: True, False, or None (unclear). Runs shorter than this many steps make motion facts unclear.
_MIN_RUN = 3


class _Facts:
    """Per-object facts evaluated on the frame window 0..t_end (inclusive)."""

    def __init__(self, video_objects: Sequence[SyntheticObject], full_areas: Sequence[float], t_end: int):
        self.t_end = t_end
        self.n = len(video_objects)
        self.objects = video_objects
        self.seen_frames = []
        self.motion: list[dict[str, bool | None]] = []
        for obj, full in zip(video_objects, full_areas):
            vis = obj.visible_pixels[: t_end + 1] >= _seen_threshold(full)
            self.seen_frames.append(vis)
            self.motion.append(self._motion(obj, t_end))
        self.present = [i for i in range(self.n) if self.seen_frames[i].any()]

    @staticmethod
    def _motion(obj: SyntheticObject, t_end: int) -> dict[str, bool | None]:
        f = obj.in_frame[: t_end + 1]
        inside = f > 0
        # Steps the viewer can observe: the object is (partly) in the frame before or after the step.
        obs = [obj.step_labels[s] for s in range(t_end) if inside[s] or inside[s + 1]]
        runs: list[list] = []
        for lab in obs:
            if runs and runs[-1][0] == lab:
                runs[-1][1] += 1
            else:
                runs.append([lab, 1])
        out: dict[str, bool | None] = {}
        if not runs or any(k < _MIN_RUN for _, k in runs) or len(runs) > 2:
            for key in ("still", "stops", "starts", "turns", *(f"move:{d}" for d in DIRECTIONS)):
                out[key] = None
        else:
            pat = [lab for lab, _ in runs]
            dirs = [p for p in pat if p != "still"]
            out["still"] = pat == ["still"] or (False if dirs else None)
            for d in DIRECTIONS:
                out[f"move:{d}"] = (
                    True if dirs and all(x == d for x in dirs) else (False if d not in dirs else None)
                )
            two = len(pat) == 2
            out["stops"] = two and pat[0] != "still" and pat[1] == "still"
            out["starts"] = two and pat[0] == "still" and pat[1] != "still"
            out["turns"] = two and "still" not in pat and OPPOSITE[pat[0]] == pat[1]
        out["enters"] = True if (f[0] == 0 and f.max() > 0) else (False if f[0] >= 1.0 else None)
        out["leaves"] = True if (f[-1] == 0 and f.max() > 0) else (False if f[-1] >= 1.0 else None)
        return out


@dataclasses.dataclass(frozen=True)
class _Query:
    color: str | None
    shape: str | None
    clause: str | None = None  # a key of _CLAUSES
    superlative: str | None = None  # a key of _SUPERLATIVES
    plural: bool = False
    number: int | None = None  # plural only: the stated count ("the two squares")

    @property
    def kind(self) -> str:
        if self.plural:
            return "plural"
        if self.superlative:
            return "position"
        return _CLAUSE_KIND[self.clause] if self.clause else "appearance"


def _and(a: bool | None, b: bool | None) -> bool | None:
    if a is False or b is False:
        return False
    if a is None or b is None:
        return None
    return True


def _evaluate(q: _Query, facts: _Facts) -> tuple[int, ...] | None:
    """The set of (seen) objects q denotes on the window, or None if unclear / not a valid reference."""
    objs = facts.objects
    present = facts.present
    base = {
        i: (q.color is None or objs[i].color == q.color) and (q.shape is None or objs[i].shape == q.shape)
        for i in present
    }
    truth: dict[int, bool | None]
    if q.superlative or q.clause == "appears_last":
        group = [i for i in present if base[i]]
        if len(group) < 2:
            return None
        winner = _superlative(q, group, facts)
        if winner is None:
            return None
        truth = {i: i == winner for i in present}
    elif q.clause is not None:
        truth = {i: _and(base[i], facts.motion[i][q.clause]) for i in present}
    else:
        truth = dict(base)
    if any(v is None for v in truth.values()):
        return None
    chosen = tuple(i for i in present if truth[i])
    if q.plural:
        if len(chosen) < 2 or (q.number is not None and q.number != len(chosen)):
            return None
    elif len(chosen) != 1:
        return None
    return chosen


def _superlative(q: _Query, group: list[int], facts: _Facts) -> int | None:
    t1 = facts.t_end + 1
    if q.clause == "appears_last":
        first = {i: int(np.argmax(facts.seen_frames[i])) for i in group}
        ranked = sorted(group, key=lambda i: -first[i])
        return ranked[0] if first[ranked[0]] >= first[ranked[1]] + 2 else None
    axis, sign = _SUPERLATIVES[q.superlative]
    objs = facts.objects
    winners = []
    for o in group:
        ok = True
        for p in group:
            if p == o:
                continue
            both = (objs[o].in_frame[:t1] > 0) & (objs[p].in_frame[:t1] > 0)
            vo, vp = sign * objs[o].centers[:t1, axis], sign * objs[p].centers[:t1, axis]
            margin = 0.5 * (objs[o].size + objs[p].size)
            if not both.any() or not np.all(vo[both] > vp[both] + margin):
                ok = False
                break
        if ok:
            winners.append(o)
    return winners[0] if len(winners) == 1 else None


def _text(q: _Query, rng: np.random.Generator) -> str:
    color = f"{q.color} " if q.color else ""
    if q.plural:
        noun = f"{q.shape}s" if q.shape else str(rng.choice(_GENERIC[1]))
        head = "all" if (q.number is None and rng.random() < 0.3) else "the"
        count = f"{_NUMBERS[q.number]} " if q.number else ""
        words = f"{head} {count}{color}{noun}"
        if q.clause:
            words += " " + str(rng.choice(_CLAUSES[q.clause][1]))
        return words
    noun = q.shape if q.shape else str(rng.choice(_GENERIC[0]))
    sup = f"{q.superlative} " if q.superlative else ""
    words = f"the {sup}{color}{noun}"
    if q.clause:
        words += " " + str(rng.choice(_CLAUSES[q.clause][0]))
    return words


def _candidates(
    objects: Sequence[SyntheticObject], facts: _Facts, multi: bool
) -> list[tuple[_Query, tuple[int, ...]]]:
    colors = sorted({o.color for o in objects})
    shapes = sorted({o.shape for o in objects})
    descs = [(c, s) for c in [None, *colors] for s in [None, *shapes]]
    out = []
    for c, s in descs:
        for clause in [None, *_CLAUSES]:
            q = _Query(c, s, clause)
            if (r := _evaluate(q, facts)) is not None:
                out.append((q, r))
        for sup in _SUPERLATIVES:
            q = _Query(c, s, None, sup)
            if (r := _evaluate(q, facts)) is not None:
                out.append((q, r))
        if multi:
            for clause in [None, *(k for k, v in _CLAUSES.items() if v[1])]:
                q = _Query(c, s, clause, plural=True)
                if (r := _evaluate(q, facts)) is not None:
                    out.append((q, r))
                    if len(r) in _NUMBERS:
                        out.append((dataclasses.replace(q, number=len(r)), r))
    return out


# ------------------------------------------------------------------------------- making a video


def _video_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """Independent stream per (seed, split, index): a video does not depend on how many others are made."""
    return np.random.default_rng(
        np.random.SeedSequence(entropy=seed, spawn_key=(zlib.crc32(split.encode()), index))
    )


def video_name(split: str, index: int) -> str:
    return f"{split}_{index:05d}"


def make_video(
    seed: int, split: str, index: int, config: WorldConfig | None = None, *, multi: bool = True
) -> SyntheticVideo:
    """Generates video `index` of `split` in memory. `multi=False` keeps only single-object expressions."""
    cfg = config or WorldConfig()
    rng = _video_rng(seed, split, index)
    for _attempt in range(200):
        T = int(rng.integers(cfg.min_frames, cfg.max_frames + 1))
        specs, scenario = _sample_specs(rng, cfg, T)
        rendered = _render(rng, cfg, T, specs, scenario)
        if rendered is None:
            continue
        frames, labels, objects = rendered
        exps = _choose_expressions(rng, cfg, objects, specs, scenario, multi)
        if exps is None:
            continue
        return SyntheticVideo(
            name=video_name(split, index),
            frames=frames,
            labels=labels,
            objects=objects,
            expressions=exps,
            scenario=scenario,
            early_ambiguous_threshold=max(2, int(np.ceil(cfg.early_ambiguous_fraction * T))),
        )
    raise RuntimeError(
        f"synthetic video {split}/{index} (seed {seed}): no valid layout in 200 attempts; "
        f"the config is too constrained (objects too large or too fast for {cfg.height}x{cfg.width})"
    )


def _choose_expressions(rng, cfg: WorldConfig, objects, specs, scenario, multi: bool):
    areas = [_full_area(s) for s in specs]
    T = len(objects[0].in_frame)
    full = _Facts(objects, areas, T - 1)
    cands = _candidates(objects, full, multi)
    if not cands:
        return None
    appearance = {
        (q.color, q.shape, q.plural): r for q, r in cands if q.clause is None and q.superlative is None
    }

    def weight(q: _Query, r) -> float:
        wgt = cfg.kind_weights.get(q.kind, 0.0)
        if q.kind != "appearance" and appearance.get((q.color, q.shape, q.plural)) == r:
            wgt *= 0.5  # the clause is redundant: prefer expressions that need it
        return wgt

    singles = [(q, r) for q, r in cands if not q.plural and weight(q, r) > 0]
    # Multi-object expressions leave at least two objects out: "all of them" is what an expression-blind guess
    # predicts.
    plurals = [(q, r) for q, r in cands if q.plural and weight(q, r) > 0 and len(r) <= len(objects) - 2]
    k = int(rng.integers(cfg.min_expressions, cfg.max_expressions + 1))
    chosen: list[tuple[str, tuple, str, list[_Query]]] = []  # text, targets, kind, queries
    texts: set[str] = set()

    def add(qs: list[_Query], targets: tuple[int, ...], kind: str) -> bool:
        text = " and ".join(_text(q, rng) for q in qs)
        if text in texts:
            return False
        texts.add(text)
        chosen.append((text, targets, kind, qs))
        return True

    def pick(pool):
        # First a kind (by kind_weights, among the kinds this pool offers), then a phrase of that kind, so a
        # kind's share does not depend on how many phrasings it happens to have.
        kinds = sorted({q.kind for q, _ in pool}, key=KINDS.index)
        kw = np.asarray([cfg.kind_weights.get(k, 0.0) for k in kinds])
        kind = kinds[int(rng.choice(len(kinds), p=kw / kw.sum()))]
        sub = [(q, r) for q, r in pool if q.kind == kind]
        wts = np.asarray([weight(q, r) for q, r in sub])
        return sub[int(rng.choice(len(sub), p=wts / wts.sum()))]

    if scenario is not None:  # the expression only the event resolves: the reason this video exists
        forced = [(q, r) for q, r in singles if q.clause == scenario and r == (0,)]
        if not forced:
            return None
        q, r = forced[int(rng.integers(len(forced)))]
        add([q], r, q.kind)
    order = list(rng.permutation(len(objects)))
    cursor = 0
    for _ in range(4 * k):
        if len(chosen) >= k:
            break
        if multi and rng.random() < cfg.p_multi:
            w_pl, w_conj = cfg.kind_weights.get("plural", 0.0), cfg.kind_weights.get("conjunction", 0.0)
            if plurals and rng.random() < w_pl / max(w_pl + w_conj, 1e-9):
                q, r = pick(plurals)
                add([q], r, "plural")
                continue
            if w_conj > 0 and len({r for _, r in singles}) >= 2:
                qa, ra = pick(singles)
                others = [(q, r) for q, r in singles if r != ra and len(objects) >= 4]
                if others:
                    qb, rb = pick(others)
                    add([qa, qb], tuple(sorted(ra + rb)), "conjunction")
                continue
        # Round-robin over objects so every object is referred to about equally often.
        target = int(order[cursor % len(order)])
        cursor += 1
        pool = [(q, r) for q, r in singles if r == (target,)]
        for _ in range(cfg.expressions_per_object):
            if not pool or len(chosen) >= k:
                break
            q, r = pick(pool)
            add([q], r, q.kind)
            pool = [(p, t) for p, t in pool if p != q]
    if not chosen:
        return None
    cache: dict[int, _Facts] = {T - 1: full}

    def facts_at(t: int) -> _Facts:
        if t not in cache:
            cache[t] = _Facts(objects, areas, t)
        return cache[t]

    exps = []
    for text, targets, kind, qs in chosen:
        until = 0
        for q in qs:
            want = _evaluate(q, full)
            t = next(t for t in range(T) if _evaluate(q, facts_at(t)) == want)
            until = max(until, t)
        suff = all(appearance.get((q.color, q.shape, q.plural)) == _evaluate(q, full) for q in qs)
        exps.append(SyntheticExpression(text, tuple(targets), kind, until, suff))
    return tuple(exps)


# ------------------------------------------------------------------------------ expression-blind baselines


def _tracks_from_masks(object_masks: np.ndarray) -> np.ndarray:
    """Centroids [N, T, 2] (x, y) of visible masks, NaN where empty."""
    h, w = object_masks.shape[2:]
    area = object_masks.sum(axis=(2, 3)).astype(float)
    xs = (object_masks.sum(axis=2) * np.arange(w)).sum(-1)
    ys = (object_masks.sum(axis=3) * np.arange(h)).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.stack([xs / area, ys / area], axis=-1)


def largest_moving_object_masks(
    object_masks: np.ndarray, centers: np.ndarray | None = None, min_travel: float = 0.05
) -> np.ndarray:
    """Expression-blind baseline: the masks [T, H, W] of the object with the largest mean visible area among
    the objects that move (centre path length >= min_travel * max(H, W)); the largest object if none moves.

    object_masks: [N, T, H, W] bool visible masks of every object in the video (ground truth).
    centers: optional [N, T, 2] ground-truth centre tracks (x, y); without them, mask centroids are used
    (occlusion then shifts a still object's centroid a little).
    """
    masks = np.asarray(object_masks, bool)
    if masks.ndim != 4 or masks.shape[0] == 0:
        raise ValueError(f"object_masks must be [N>=1, T, H, W], got {masks.shape}")
    n, T, h, w = masks.shape
    c = _tracks_from_masks(masks) if centers is None else np.asarray(centers, float)
    if c.shape != (n, T, 2):
        raise ValueError(f"centers must be [N, T, 2] = {(n, T, 2)}, got {c.shape}")
    travel = np.zeros(n)
    for i in range(n):
        ok = ~np.isnan(c[i]).any(-1) & (masks[i].any(axis=(1, 2)) if centers is None else True)
        pts = c[i][ok]
        travel[i] = np.linalg.norm(np.diff(pts, axis=0), axis=-1).sum() if len(pts) > 1 else 0.0
    area = masks.sum(axis=(2, 3)).mean(axis=1)
    moving = travel >= min_travel * max(h, w)
    pick = int(np.argmax(np.where(moving, area, -1.0))) if moving.any() else int(np.argmax(area))
    return masks[pick].copy()


def expression_blind_baselines(
    object_masks: np.ndarray, centers: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Several expression-blind predictions [T, H, W] for one video: report the best of them."""
    masks = np.asarray(object_masks, bool)
    area = masks.sum(axis=(2, 3)).mean(axis=1)
    return {
        "largest_moving": largest_moving_object_masks(masks, centers),
        "largest": masks[int(np.argmax(area))].copy(),
        "all_objects": masks.any(axis=0),
    }


def appearance_oracle_masks(
    text: str, appearances: Sequence[tuple[str, str]], object_masks: np.ndarray
) -> np.ndarray:
    """What grounding colour and shape alone can reach: the union [T, H, W] of the ground-truth masks of
    every object whose (colour, shape) in `appearances` matches a phrase of `text` (phrases joined by
    "and"; a phrase naming no colour or no shape matches any). Motion, events, order and position are
    ignored, so this bounds a model that reads only the appearance words (with perfect masks)."""
    masks = np.asarray(object_masks, bool)
    out = np.zeros(masks.shape[1:], bool)
    for phrase in text.split(" and "):
        words = phrase.split()
        colors = [w for w in words if w in COLORS]
        shapes = [w.removesuffix("s") for w in words if w.removesuffix("s") in SHAPES]
        for i, (color, shape) in enumerate(appearances):
            if (not colors or color == colors[0]) and (not shapes or shape == shapes[0]):
                out |= masks[i]
    return out


def target_lookalike_masks(
    targets: Sequence[int],
    appearances: Sequence[tuple[str, str]],
    object_masks: np.ndarray,
    by: Sequence[str],
) -> np.ndarray:
    """What selecting by appearance reaches when the model knows *which* objects are meant: the union
    [T, H, W] of the ground-truth masks of every object that shares, with one of the `targets` (indices
    into `appearances`), its attributes named in `by` ("color", "shape" or both). With both it is the
    target plus its identical-looking twins; with "color" alone, what a decoder that selects by colour but
    not by shape can reach."""
    keys = {"color": 0, "shape": 1}
    unknown = set(by) - keys.keys()
    if unknown or not by:
        raise ValueError(f"target_lookalike_masks: by must name 'color' and/or 'shape', got {list(by)}")

    def key(i: int) -> tuple[str, ...]:
        return tuple(appearances[i][keys[b]] for b in by)

    wanted = {key(i) for i in targets}
    masks = np.asarray(object_masks, bool)
    chosen = [i for i in range(len(appearances)) if key(i) in wanted]
    return masks[chosen].any(0) if chosen else np.zeros(masks.shape[1:], bool)


# ----------------------------------------------------------------------------------------------- writing


def _rle_per_frame(masks: np.ndarray) -> list[dict | None]:
    """[T, H, W] bool -> per frame COCO RLE with str counts; None where empty (MeViS's absent objects)."""
    enc = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    out = []
    for t, r in enumerate(enc):
        if not masks[t].any():
            out.append(None)
        else:
            out.append(
                {"size": [int(r["size"][0]), int(r["size"][1])], "counts": r["counts"].decode("ascii")}
            )
    return out


def _palette() -> list[int]:
    """The VOC/DAVIS colour map that Ref-YouTube-VOS annotation PNGs use."""
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


_PALETTE = _palette()


def _dump(obj: Any, path: Path) -> None:
    path.write_text(json.dumps(obj, separators=(",", ":")))


@dataclasses.dataclass(frozen=True)
class SplitSummary:
    path: str
    format: str
    split: str
    num_videos: int
    num_expressions: int
    num_frames: int
    early_ambiguous_expressions: int
    seconds: float


def _frame_names(T: int) -> list[str]:
    return [f"{t:05d}" for t in range(T)]


def generate(
    root: str | os.PathLike,
    split: str,
    num_videos: int,
    seed: int = 0,
    *,
    format: str = "mevis",  # the name of the CLI flag
    config: WorldConfig | None = None,
    overwrite: bool = False,
) -> SplitSummary:
    """Writes `num_videos` synthetic videos as split `split` under `root` in the given layout (module doc).

    Videos of different splits are disjoint (names carry the split, contents come from independent streams).
    Raises FileExistsError if the split exists and not `overwrite`.
    """
    if format not in LAYOUTS:
        raise ValueError(f"format must be one of {LAYOUTS}, got {format!r}")
    if not split or "/" in split or split.startswith("."):
        raise ValueError(f"bad split name {split!r}")
    if num_videos < 1:
        raise ValueError(f"num_videos must be >= 1, got {num_videos}")
    cfg = config or WorldConfig()
    root = Path(root)
    final = root / split
    final_meta = root / "meta_expressions" / split
    targets = [final] + ([final_meta] if format == "refytvos" else [])
    existing = [p for p in targets if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{existing[0]}: split {split!r} already exists (pass overwrite=True / --overwrite)"
        )
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{split}.tmp-", dir=root))
    try:
        stats = _write_split(tmp, split, num_videos, seed, format, cfg)
        trash = Path(tempfile.mkdtemp(prefix=f".{split}.old-", dir=root)) if existing else None
        for i, p in enumerate(existing):
            os.replace(p, trash / str(i))
        os.replace(tmp / split, final)
        if format == "refytvos":
            final_meta.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / "meta_expressions" / split, final_meta)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return SplitSummary(
        str(final), format, split, num_videos, stats[0], stats[1], stats[2], time.perf_counter() - t0
    )


def _write_split(tmp: Path, split: str, num_videos: int, seed: int, layout: str, cfg: WorldConfig):
    base = tmp / split
    (base / "JPEGImages").mkdir(parents=True)
    meta: dict[str, Any] = {}
    mask_dict: dict[str, Any] = {}
    side: dict[str, Any] = {}
    yt_meta: dict[str, Any] = {}
    anno = 0
    n_exp = n_frames = n_early = 0
    for index in range(num_videos):
        v = make_video(seed, split, index, cfg, multi=layout == "mevis")
        T = v.num_frames
        names = _frame_names(T)
        vdir = base / "JPEGImages" / v.name
        vdir.mkdir()
        for t in range(T):
            Image.fromarray(v.frames[t]).save(vdir / f"{names[t]}.jpg", quality=cfg.jpeg_quality)
        # Object ids: MeViS uses per-video "0".. plus split-wide anno_ids; Ref-YTVOS palette values 1..N.
        if layout == "mevis":
            obj_ids = [str(i) for i in range(len(v.objects))]
            anno_ids = list(range(anno, anno + len(v.objects)))
            anno += len(v.objects)
            masks = v.object_masks()
            for i, a in enumerate(anno_ids):
                mask_dict[str(a)] = _rle_per_frame(masks[i])
        else:
            obj_ids = [str(i + 1) for i in range(len(v.objects))]
            anno_ids = [i + 1 for i in range(len(v.objects))]
            adir = base / "Annotations" / v.name
            adir.mkdir(parents=True)
            for t in range(T):
                im = Image.frombytes("P", (v.labels.shape[2], v.labels.shape[1]), v.labels[t].tobytes())
                im.putpalette(_PALETTE)
                im.save(adir / f"{names[t]}.png")
            yt_meta[v.name] = {
                "objects": {
                    obj_ids[i]: {
                        "category": o.shape,
                        "frames": [names[t] for t in np.flatnonzero(o.visible_pixels)],
                    }
                    for i, o in enumerate(v.objects)
                }
            }
        exps = {}
        for e_id, e in enumerate(v.expressions):
            if layout == "mevis":
                exps[str(e_id)] = {
                    "exp": e.text,
                    "obj_id": [obj_ids[i] for i in e.targets],
                    "anno_id": [anno_ids[i] for i in e.targets],
                }
            else:
                exps[str(e_id)] = {"exp": e.text, "obj_id": obj_ids[e.targets[0]]}
        meta[v.name] = (
            {"frames": names, "expressions": exps}
            if layout == "mevis"
            else {"expressions": exps, "frames": names}
        )
        side[v.name] = _side_entry(v, obj_ids, anno_ids)
        n_exp += len(v.expressions)
        n_frames += T
        n_early += sum(x["early_ambiguous"] for x in side[v.name]["expressions"].values())
    info = {
        "generator": "glus_jax.data.synthetic",
        "version": 1,
        "format": layout,
        "split": split,
        "seed": seed,
        "config": to_dict(cfg),
        "vocabulary": list(VOCABULARY),
        "videos": side,
    }
    if layout == "mevis":
        _dump({"videos": meta}, base / "meta_expressions.json")
        _dump(mask_dict, base / "mask_dict.json")
    else:
        _dump({"videos": yt_meta}, base / "meta.json")
        (tmp / "meta_expressions" / split).mkdir(parents=True)
        _dump({"videos": meta}, tmp / "meta_expressions" / split / "meta_expressions.json")
    _dump(info, base / "synthetic.json")
    return n_exp, n_frames, n_early


def _side_entry(v: SyntheticVideo, obj_ids: list[str], anno_ids: list[int]) -> dict[str, Any]:
    objects = {}
    for i, o in enumerate(v.objects):
        objects[obj_ids[i]] = {
            "anno_id": anno_ids[i],
            "shape": o.shape,
            "color": o.color,
            "size": o.size,
            "z": o.z,
            "motion": o.motion,
            "direction": o.direction,
            "event_frame": o.event_frame,
            "centers": o.centers.tolist(),
            "in_frame": o.in_frame.tolist(),
            "visible_pixels": o.visible_pixels.tolist(),
            "step_labels": list(o.step_labels),
        }
    exps = {}
    for e_id, e in enumerate(v.expressions):
        exps[str(e_id)] = {
            "kind": e.kind,
            "obj_id": [obj_ids[i] for i in e.targets],
            "ambiguous_until": e.ambiguous_until,
            "early_ambiguous": e.ambiguous_until >= v.early_ambiguous_threshold,
            "appearance_suffices": e.appearance_suffices,
        }
    return {
        "num_frames": v.num_frames,
        "height": int(v.frames.shape[1]),
        "width": int(v.frames.shape[2]),
        "scenario": v.scenario,
        "objects": objects,
        "expressions": exps,
    }


# ------------------------------------------------------------------------------------------ reading back


def load_info(root: str | os.PathLike, split: str) -> dict[str, Any]:
    """The side file ``ROOT/<split>/synthetic.json`` (objects, tracks, expression kinds and ambiguity)."""
    path = Path(root) / split / "synthetic.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no synthetic side file (was this split written by generate-data?)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: malformed JSON: {e}") from None


def load_object_masks(
    root: str | os.PathLike, split: str, video: str, info: dict[str, Any] | None = None
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Every object of a generated video: (obj_ids, visible masks [N, T, H, W] bool, centres [N, T, 2]).

    Reads the MeViS ``mask_dict.json`` or the Ref-YouTube-VOS palette PNGs, whichever layout the split has.
    Pass `info` (from :func:`load_info`) when loading many videos to parse the side file once.
    """
    info = info or load_info(root, split)
    if video not in info["videos"]:
        raise KeyError(f"{Path(root) / split / 'synthetic.json'}: no video {video!r}")
    v = info["videos"][video]
    obj_ids = list(v["objects"])
    T, h, w = v["num_frames"], v["height"], v["width"]
    masks = np.zeros((len(obj_ids), T, h, w), bool)
    if info["format"] == "mevis":
        mask_dict = _mask_dict_cache(Path(root) / split / "mask_dict.json")
        for i, oid in enumerate(obj_ids):
            for t, rle in enumerate(mask_dict[str(v["objects"][oid]["anno_id"])]):
                if rle:
                    masks[i, t] = mask_utils.decode(rle).astype(bool)
    else:
        adir = Path(root) / split / "Annotations" / video
        for t, name in enumerate(_frame_names(T)):
            lab = np.asarray(Image.open(adir / f"{name}.png"))
            for i, oid in enumerate(obj_ids):
                masks[i, t] = lab == int(oid)
    centers = np.asarray([v["objects"][o]["centers"] for o in obj_ids], float)
    return obj_ids, masks, centers


_MASK_DICTS: dict[tuple[str, float], dict] = {}


def _mask_dict_cache(path: Path) -> dict:
    key = (str(path), path.stat().st_mtime)
    if key not in _MASK_DICTS:
        _MASK_DICTS.clear()
        _MASK_DICTS[key] = json.loads(path.read_text())
    return _MASK_DICTS[key]


# ------------------------------------------------------------------------------------------------ CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = WorldConfig()
    parser.add_argument("--root", required=True, help="dataset root; the split goes to ROOT/<split>/")
    parser.add_argument("--split", default="train")
    parser.add_argument("--videos", type=int, default=200, help="number of videos")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", choices=LAYOUTS, default="mevis")
    parser.add_argument("--min-frames", type=int, default=d.min_frames)
    parser.add_argument("--max-frames", type=int, default=d.max_frames)
    parser.add_argument("--height", type=int, default=d.height)
    parser.add_argument("--width", type=int, default=d.width)
    parser.add_argument("--min-objects", type=int, default=d.min_objects)
    parser.add_argument("--max-objects", type=int, default=d.max_objects)
    parser.add_argument("--config-json", help="JSON object of further WorldConfig fields (strict keys)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing split")


def main(args: argparse.Namespace) -> int:
    fields = {
        "min_frames": args.min_frames,
        "max_frames": args.max_frames,
        "height": args.height,
        "width": args.width,
        "min_objects": args.min_objects,
        "max_objects": args.max_objects,
    }
    if args.config_json:
        try:
            extra = json.loads(args.config_json)
        except json.JSONDecodeError as e:
            raise SystemExit(f"--config-json: not valid JSON: {e}") from None
        fields.update(extra)
    try:
        cfg = from_dict(WorldConfig, fields)
        summary = generate(
            args.root,
            args.split,
            args.videos,
            args.seed,
            format=args.format,
            config=cfg,
            overwrite=args.overwrite,
        )
    except (ValueError, FileExistsError) as e:
        raise SystemExit(f"generate-data: {e}") from None
    print(
        f"wrote {summary.num_videos} videos ({summary.num_frames} frames, "
        f"{summary.num_expressions} expressions, "
        f"{summary.early_ambiguous_expressions} early-ambiguous) to {summary.path} in {summary.seconds:.1f}s"
    )
    return 0
