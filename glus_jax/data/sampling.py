"""Training-sample drawing of GLUS, as pure functions of an explicit ``numpy.random.Generator``.

Ports ``HybridDataset.__getitem__`` / ``ReferVideoSegDataset.__getitem__`` (dataset/dataset.py,
dataset/refer_video_seg_dataset.py). A sample is drawn in two steps so that a grain pipeline can keep
the random part deterministic and resumable and do the I/O in a separate map:

1. :func:`draw_plan` (cheap, no I/O): dataset by sample rate, a video uniformly among those long enough,
   up to ``max_expressions`` of its expressions, 4 consecutive query frames, one context frame from each
   of the 4 ``np.linspace(0, L, 5, dtype=int)`` segments, and the prompt template indices.
2. :func:`load_sample`: reads the GT masks of the plan's expressions at the query frames.

:func:`sample_at` makes sample ``index`` of a run a pure function of ``(seed, index)``.

The draws are equal *in distribution* to the reference's, not stream-identical (the reference mixes
Python's ``random`` with the global numpy generator):

- dataset: ``random.choices(names, weights=rates)``                     -> ``rng.choice(p=rates/sum)``
- video: ``random.randint`` over the loaded videos, redrawn until it has expressions and at least
  ``max(context_frames, query_frames)`` frames                          -> uniform over the eligible videos
- expressions: ``np.random.choice(n, k, replace=False)`` if ``n >= k`` (a random ordered subset), else all
  ``n`` in json order                                                    -> same
- query start: ``random.randint(0, L - q)``; context: ``np.random.choice(range(b[i], b[i+1]))`` per segment
- templates: per expression, per query frame one question and one answer template, then per expression
  one context template (``random.choice`` over SHORT_QUESTION_LIST / ANSWER_LIST / CONTEXT_INFO_LIST).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from glus_jax.data.conversation import INFERENCE_ANSWER_TEMPLATE, INFERENCE_QUESTION_TEMPLATE
from glus_jax.data.formats import Video, VideoDataset


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplingConfig:
    """GLUS training defaults (train_ds.py / scripts/train_glus_*.sh, utils/utils.py template lists)."""

    context_frames: int = 4  # --context_frame_num
    query_frames: int = 4  # --total_question_frame_num
    max_expressions: int = 3  # --num_classes_per_sample
    num_context_templates: int = 1  # len(CONTEXT_INFO_LIST)
    num_question_templates: int = 4  # len(SHORT_QUESTION_LIST)
    num_answer_templates: int = 5  # len(ANSWER_LIST)
    # Every round asks and answers as GLUS's inference prompt does (question 0, answer 3) instead of a
    # random template: for an LLM trained from scratch (the synthetic world), whose state before [SEG]
    # otherwise varies more with the template (it sits on "is", "," or ":") than with the expression.
    inference_templates: bool = False

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, bool) and value < 1:
                raise ValueError(f"SamplingConfig.{f.name} must be >= 1, got {value}")


@dataclasses.dataclass(frozen=True)
class SamplePlan:
    """Which frames / expressions / templates one training sample uses (no pixels yet).

    frame_indices [C + Q]: context frames (ascending, one per segment) then query frames (consecutive),
    indices into ``video.frame_names``. Template arrays: context [E], question [E, Q], answer [E, Q].
    """

    dataset_index: int
    video_index: int
    expression_indices: tuple[int, ...]
    frame_indices: np.ndarray
    context_templates: np.ndarray
    question_templates: np.ndarray
    answer_templates: np.ndarray


@dataclasses.dataclass(frozen=True, eq=False)
class Sample:
    """One training sample with its ground truth; plain data only (cheap to pickle between grain
    workers: it does not hold the dataset's mask store).

    video: the video's name; frame_paths [C + Q]: JPEG paths of ``plan.frame_indices`` (context, then query).
    query_frame_names [Q]: the reference's ``sampled_frames``.
    texts: the expressions with one trailing '.' removed (the reference's ``sampled_classes``; the
      question template then uses ``text.strip().lower()``).
    exp_ids / str_ids: json expression ids / the reference's ``f"mevis_{video}_{exp_id}"``.
    object_set_ids [E]: equal iff two expressions of the video refer to the same object set.
    gt_masks: uint8 [E, Q, H, W], each the *sum* of the expression's object masks (quirk Q9).
    """

    plan: SamplePlan
    dataset: str
    video: str
    frame_paths: tuple[str, ...]
    query_frame_names: tuple[str, ...]
    texts: tuple[str, ...]
    exp_ids: tuple[str, ...]
    str_ids: tuple[str, ...]
    object_set_ids: np.ndarray
    gt_masks: np.ndarray

    @property
    def num_query_frames(self) -> int:
        return self.gt_masks.shape[1]

    @property
    def frame_indices(self) -> np.ndarray:
        return self.plan.frame_indices

    @property
    def context_indices(self) -> np.ndarray:
        return self.plan.frame_indices[: len(self.plan.frame_indices) - self.num_query_frames]

    @property
    def query_indices(self) -> np.ndarray:
        return self.plan.frame_indices[len(self.plan.frame_indices) - self.num_query_frames :]

    def seg_token_keys(self) -> np.ndarray:
        """int32 [E, Q, 5] contrastive-bank keys of this sample's [SEG] tokens, in the field order of
        ``glus_jax.train.contrastive`` (dataset, video, expression, object set, frame): dataset index in
        the run's dataset list, video index in its dataset, expression index in its video, object-set
        id, frame index in the video."""
        e, q = self.gt_masks.shape[:2]
        keys = np.zeros((e, q, 5), np.int32)
        keys[..., 0] = self.plan.dataset_index
        keys[..., 1] = self.plan.video_index
        keys[..., 2] = np.asarray(self.plan.expression_indices, np.int32)[:, None]
        keys[..., 3] = self.object_set_ids[:, None]
        keys[..., 4] = self.query_indices[None, :]
        return keys


def eligible_videos(dataset: VideoDataset, cfg: SamplingConfig) -> np.ndarray:
    """Indices of the videos the reference can draw: with expressions and at least
    ``max(context_frames, query_frames)`` frames."""
    need = max(cfg.context_frames, cfg.query_frames)
    return np.asarray(
        [i for i, v in enumerate(dataset.videos) if v.expressions and v.length >= need], dtype=np.int64
    )


def context_segments(length: int, num_context: int) -> np.ndarray:
    """Segment bounds [C + 1]: ``np.linspace(0, L, C + 1, dtype=int)``; context frame i is drawn from
    ``[b[i], b[i+1])``."""
    return np.linspace(0, length, num_context + 1, dtype=int)


def draw_frames(rng: np.random.Generator, length: int, cfg: SamplingConfig) -> np.ndarray:
    """[C + Q] frame indices: one uniform context frame per segment, then Q consecutive query frames
    starting uniformly in ``[0, L - Q]``."""
    if length < max(cfg.context_frames, cfg.query_frames):
        raise ValueError(
            f"video of {length} frames is shorter than {max(cfg.context_frames, cfg.query_frames)}"
        )
    start = int(rng.integers(0, length - cfg.query_frames + 1))
    b = context_segments(length, cfg.context_frames)
    context = rng.integers(b[:-1], b[1:])
    return np.concatenate([context, np.arange(start, start + cfg.query_frames)]).astype(np.int64)


def draw_expressions(rng: np.random.Generator, num: int, max_expressions: int) -> tuple[int, ...]:
    """A random ordered subset of size ``max_expressions`` if there are that many, else all in order."""
    if num >= max_expressions:
        return tuple(int(i) for i in rng.choice(num, size=max_expressions, replace=False))
    return tuple(range(num))


def draw_plan(
    rng: np.random.Generator,
    datasets: Sequence[VideoDataset],
    sample_rates: Sequence[float],
    cfg: SamplingConfig = SamplingConfig(),
    eligible: Sequence[np.ndarray] | None = None,
) -> SamplePlan:
    """Draws one :class:`SamplePlan`. ``eligible`` (per dataset, from :func:`eligible_videos`) may be
    passed to avoid recomputing it per sample."""
    if len(datasets) != len(sample_rates) or not datasets:
        raise ValueError(f"got {len(datasets)} datasets but {len(sample_rates)} sample rates")
    rates = np.asarray(sample_rates, dtype=np.float64)
    if (rates < 0).any() or rates.sum() <= 0:
        raise ValueError(f"sample rates must be non-negative with a positive sum, got {list(sample_rates)}")
    if eligible is None:
        eligible = [eligible_videos(d, cfg) for d in datasets]
    for d, e, r in zip(datasets, eligible, rates):
        if r > 0 and len(e) == 0:
            raise ValueError(
                f"dataset {d.name!r} ({d.root}, {d.split}) has no video with expressions and at least "
                f"{max(cfg.context_frames, cfg.query_frames)} frames"
            )
    di = int(rng.choice(len(datasets), p=rates / rates.sum()))
    vi = int(eligible[di][rng.integers(len(eligible[di]))])
    video = datasets[di].videos[vi]
    exps = draw_expressions(rng, len(video.expressions), cfg.max_expressions)
    frames = draw_frames(rng, video.length, cfg)
    n = len(exps)
    # Reference order: per expression, per frame (question, answer); then per expression the context.
    qa = rng.integers(
        0, [cfg.num_question_templates, cfg.num_answer_templates], size=(n, cfg.query_frames, 2)
    )
    if cfg.inference_templates:
        qa[..., 0], qa[..., 1] = INFERENCE_QUESTION_TEMPLATE, INFERENCE_ANSWER_TEMPLATE
    ctx = rng.integers(0, cfg.num_context_templates, size=n)
    return SamplePlan(
        dataset_index=di,
        video_index=vi,
        expression_indices=exps,
        frame_indices=frames,
        context_templates=ctx.astype(np.int64),
        question_templates=qa[..., 0].astype(np.int64),
        answer_templates=qa[..., 1].astype(np.int64),
    )


def expression_text(raw: str) -> str:
    """The reference's ``sent[:-1] if sent.endswith('.') else sent``."""
    return raw.removesuffix(".")


def gt_masks(video: Video, expression_indices: Sequence[int], frames: Sequence[int]) -> np.ndarray:
    """uint8 [E, F, H, W]: per expression and frame, the sum of the expression's object masks (Q9).
    H, W is the size of the last frame (as the reference, which sizes masks by the last decoded image);
    every frame's GT must have that size."""
    frames = [int(f) for f in frames]
    hw = video.frame_size(frames[-1])
    out = np.zeros((len(expression_indices), len(frames), *hw), np.uint8)
    for i, e in enumerate(expression_indices):
        for j, f in enumerate(frames):
            out[i, j] = video.expression_mask(e, f, hw)
    return out


def load_sample(
    plan: SamplePlan, datasets: Sequence[VideoDataset], num_query_frames: int | None = None
) -> Sample:
    """Materialises a plan: texts, ids and GT masks [E, Q, H, W] at the query frames."""
    ds = datasets[plan.dataset_index]
    video = ds.videos[plan.video_index]
    q = num_query_frames if num_query_frames is not None else plan.question_templates.shape[1]
    query = plan.frame_indices[len(plan.frame_indices) - q :]
    exps = plan.expression_indices
    set_ids = video.object_set_ids
    return Sample(
        plan=plan,
        dataset=ds.name,
        video=video.name,
        frame_paths=tuple(video.frame_paths[i] for i in plan.frame_indices),
        query_frame_names=tuple(video.frame_names[i] for i in query),
        texts=tuple(expression_text(video.expressions[e].text) for e in exps),
        exp_ids=tuple(video.expressions[e].exp_id for e in exps),
        str_ids=tuple(video.str_id(e) for e in exps),
        object_set_ids=np.asarray([set_ids[e] for e in exps], np.int64),
        gt_masks=gt_masks(video, exps, query),
    )


def sample_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of sample ``index`` of a run seeded ``seed``: independent streams, random access."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))


def sample_at(
    seed: int,
    index: int,
    datasets: Sequence[VideoDataset],
    sample_rates: Sequence[float],
    cfg: SamplingConfig = SamplingConfig(),
    eligible: Sequence[np.ndarray] | None = None,
) -> Sample:
    """Sample ``index`` of the run: a pure function of (seed, index, data)."""
    plan = draw_plan(sample_rng(seed, index), datasets, sample_rates, cfg, eligible)
    return load_sample(plan, datasets, cfg.query_frames)
