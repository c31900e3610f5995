"""The training input pipeline: seeded, resumable, per-process sharded grain batches with static shapes.

Ports the data side of GLUS's ``train_ds.py``: ``HybridDataset`` / ``ReferVideoSegDataset.__getitem__``
(``dataset/refer_video_seg_dataset.py``: frame decoding, CLIP and SAM2 preprocessing, conversations, GT
masks) and ``collate_fn`` (``dataset/dataset.py``: tokenization, label masking), with every ragged
dimension padded to a static size so that one compiled train step serves the whole run.

One batch (numpy, per process; B = per-process batch, C/Q = context/query frames, E = max expressions,
T = max_seq_len, S = SAM2 input size, Hm x Wm = ``max_mask_size``)::

    clip_pixels     float32 [B, C+Q, 224, 224, 3]  CLIPImageProcessor of context then query frames (NHWC)
    sam_pixels      float32 [B, Q, S, S, 3]        SAM2Transforms of the query frames (NHWC)
    input_ids       int32   [B, E, T]              one conversation per expression; padding rows = 0 (pad)
    labels          int32   [B, E, T]              -100 outside the answers and on padding rows
    attention_mask  bool    [B, E, T]              input_ids != pad (False on padding rows)
    exp_valid       bool    [B, E]                 which expression rows are real
    gt_masks        uint8   [B, E, Q, Hm, Wm]      GT at the original size in the top-left corner, zeros
                                                   elsewhere and on padding rows; values may be 2 (Q9)
    orig_size       int32   [B, 2]                 (H, W) of the sample's frames (of its last query frame)
    seg_keys        int32   [B, E, Q, 5]           contrastive-bank keys (``Sample.seg_token_keys``), 0-padded
    expression_ids  int32   [B, E, L]              token ids of each expression as its question spells it,
                                                   -1 after its end and on padding rows (L =
                                                   MAX_EXPRESSION_TOKENS; longer ones are cut): the
                                                   targets of the expression-word loss (train.word_weight)
    dataset_id      int32   [B]                    index into the run's dataset list
    sample_index    int32   [B]                    global sample index (what the sample is a function of)

Sample ``i`` of a run is ``sampling.sample_at(seed, i, ...)``: a pure function of (seed, i, data). Process
``p`` of ``P`` builds its batch ``k`` from the global sample indices ``(k * P + p) * B + b`` (b < B), so the
processes read disjoint streams and the P batches of step k together form one global batch. The grain
graph is ``MapDataset.range -> map(example) -> batch -> to_iter_dataset -> mp_prefetch``: batch k is
element k of a MapDataset, so it does not depend on the number of workers or threads. :class:`TrainIterator`
(what :func:`make_train_iterator` returns) is a grain ``DatasetIterator`` whose state is just the position
``{"next_batch": k}``: ``set_state`` restores the exact following batches, also into a run with other
worker / thread counts.

Frames come from a :class:`VideoSource`: :class:`FileSource` reads a dataset in its on-disk layout
(``glus_jax.data.formats``); ``glus_jax.data.tfds_builder.TFDSSource`` reads the same videos from the
array_record files of a TFDS build. Both produce ``formats.Video``-like records, so sampling and every
array of a batch are identical for the two (tests/test_tfds_builder.py).

Deliberate deviations from the reference:
- Frames larger than ``max_mask_size`` raise an error naming the video (static shapes; the loss needs the
  full-resolution GT, so we neither crop nor resize it). Set ``data.max_mask_size`` to the largest frame
  size of the training data.
- Conversations longer than ``max_seq_len`` raise (the reference pads to the longest row of the batch).
- Frames are decoded with PIL instead of ``cv2.imread`` (same bytes for baseline JPEGs), once per distinct
  frame index (a context frame can also be a query frame).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from glus_jax.data import conversation as conv_lib
from glus_jax.data import formats, image_ops, sampling
from glus_jax.data.formats import Video, VideoDataset
from glus_jax.data.tokenizer import GLUSTokenizer

CLIP_IMAGE_SIZE = 224
# "Infinite" run length: batches of a run are indexed lazily, so this only bounds the index space.
MAX_BATCHES = 2**40
# Tokens kept per expression in `expression_ids` (the world's longest expression is 14).
MAX_EXPRESSION_TOKENS = 32
BATCH_KEYS = (
    "clip_pixels",
    "sam_pixels",
    "input_ids",
    "labels",
    "attention_mask",
    "exp_valid",
    "gt_masks",
    "orig_size",
    "seg_keys",
    "expression_ids",
    "dataset_id",
    "sample_index",
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PipelineConfig:
    """Static shapes and loader settings (experiment-config field in brackets).

    batch_size: samples per batch of *this process* [train.batch_size x local devices].
    context_frames / question_frames / max_expressions: C, Q, E [data.*]; C must be 4 (the context prompt
      of GLUS's conversations holds 4 ``<image>`` tokens).
    max_seq_len: T [data.max_seq_len]. image_size: SAM2 input S [data.image_size].
    clip_image_size [data.clip_image_size]. max_mask_size: (Hm, Wm) [data.max_mask_size].
    seed [data.seed]. num_workers: grain worker processes, 0 = decode in this process [data.num_workers].
    num_threads: threads per process computing batches in parallel [data.num_threads].
    prefetch: batches buffered per process [data.prefetch]; each holds B x (C+Q+Q*S*S/224^2) frames.
    """

    batch_size: int = 2
    context_frames: int = 4
    question_frames: int = 4
    max_expressions: int = 3
    max_seq_len: int = 512
    image_size: int = 1024
    clip_image_size: int = CLIP_IMAGE_SIZE
    max_mask_size: tuple[int, int] = (1280, 1280)
    seed: int = 0
    num_workers: int = 0
    num_threads: int = 1
    prefetch: int = 2
    inference_templates: bool = False  # [data.inference_templates]: see sampling.SamplingConfig

    def __post_init__(self):
        for f in (
            "batch_size",
            "context_frames",
            "question_frames",
            "max_expressions",
            "max_seq_len",
            "image_size",
            "clip_image_size",
            "num_threads",
            "prefetch",
        ):
            if int(getattr(self, f)) < 1:
                raise ValueError(f"PipelineConfig.{f} must be >= 1, got {getattr(self, f)}")
        if self.num_workers < 0:
            raise ValueError(f"PipelineConfig.num_workers must be >= 0, got {self.num_workers}")
        if len(self.max_mask_size) != 2 or min(self.max_mask_size) < 1:
            raise ValueError(f"PipelineConfig.max_mask_size must be (H, W) >= 1, got {self.max_mask_size}")
        if self.context_frames != conv_lib.CONTEXT_FRAME_NUM:
            raise ValueError(
                f"PipelineConfig.context_frames is {self.context_frames}, but GLUS's context prompt "
                f"(conversation.CONTEXT_INFO_LIST) holds {conv_lib.CONTEXT_FRAME_NUM} <image> tokens"
            )

    @property
    def sampling(self) -> sampling.SamplingConfig:
        return sampling.SamplingConfig(
            context_frames=self.context_frames,
            query_frames=self.question_frames,
            max_expressions=self.max_expressions,
            inference_templates=self.inference_templates,
        )


# --------------------------------------------------------------------------------------------- sources


class VideoSource:
    """One dataset split the sampler draws from: a ``formats.VideoDataset`` (possibly with lazily read
    videos) plus frame decoding. Sources must pickle cheaply (grain workers unpickle them): subclasses keep
    only their arguments in the pickle and reopen their data in the worker."""

    name: str

    @property
    def dataset(self) -> VideoDataset:
        raise NotImplementedError

    def eligible(self, cfg: sampling.SamplingConfig) -> np.ndarray:
        """Indices of the videos the sampler may draw (``sampling.eligible_videos``)."""
        return sampling.eligible_videos(self.dataset, cfg)

    def read_frame(self, video: Video, index: int) -> np.ndarray:
        """uint8 RGB [H, W, 3] of frame ``index`` of ``video`` (a video of :attr:`dataset`)."""
        raise NotImplementedError


class FileSource(VideoSource):
    """A dataset in its released on-disk layout, read with ``formats.load_dataset(name, dataset_dir,
    split, **load_kwargs)`` on first use (in each process that uses it; the json index, and for
    MeViS/ReVOS/LV-VIS the whole mask_dict.json, is held in memory by every worker: prefer a TFDS build
    for many workers on large datasets)."""

    def __init__(self, name: str, dataset_dir: str, split: str = "train", **load_kwargs: Any):
        if name not in formats.DATASET_DIRS:
            raise ValueError(f"unknown dataset {name!r}; known: {sorted(formats.DATASET_DIRS)}")
        self.name, self.dataset_dir, self.split, self.load_kwargs = name, dataset_dir, split, load_kwargs
        self._lock = threading.Lock()
        self._dataset: VideoDataset | None = None

    def __getstate__(self):
        return {
            "name": self.name,
            "dataset_dir": self.dataset_dir,
            "split": self.split,
            "load_kwargs": self.load_kwargs,
        }

    def __setstate__(self, state):
        self.__init__(state["name"], state["dataset_dir"], state["split"], **state["load_kwargs"])

    def __repr__(self) -> str:
        return f"FileSource({self.name!r}, {self.dataset_dir!r}, {self.split!r})"

    @property
    def dataset(self) -> VideoDataset:
        with self._lock:
            if self._dataset is None:
                self._dataset = formats.load_dataset(
                    self.name, self.dataset_dir, self.split, **self.load_kwargs
                )
            return self._dataset

    def read_frame(self, video: Video, index: int) -> np.ndarray:
        where = f"video {video.name!r} of {self.name}, frame {video.frame_names[index]!r}"
        return image_ops.decode_image(video.frame_paths[index], where)


# --------------------------------------------------------------------------------------------- examples


def _check_mask_size(h: int, w: int, cfg: PipelineConfig, sample: sampling.Sample) -> None:
    mh, mw = cfg.max_mask_size
    if h > mh or w > mw:
        raise ValueError(
            f"video {sample.video!r} of {sample.dataset} has {h}x{w} (HxW) frames, larger than "
            f"data.max_mask_size {mh}x{mw}: raise data.max_mask_size to the largest frame size of the data"
        )


def build_example(
    sample: sampling.Sample,
    expression_texts: Sequence[str],
    frames: Sequence[np.ndarray],
    tokenizer: GLUSTokenizer,
    cfg: PipelineConfig,
    sample_index: int = 0,
) -> dict[str, np.ndarray]:
    """One padded example (the batch arrays without the leading B) from a drawn sample.

    expression_texts [n]: the raw json texts of the sample's expressions (``training_conversation`` strips
      one '.' itself, as the reference does once; ``Sample.texts`` already had it stripped).
    frames [C+Q]: uint8 RGB frames of ``sample.frame_indices`` (context, then query).
    """
    plan = sample.plan
    n, q = sample.gt_masks.shape[:2]
    e_max, t = cfg.max_expressions, cfg.max_seq_len
    if n > e_max or q != cfg.question_frames or len(frames) != cfg.context_frames + q:
        raise ValueError(
            f"sample of video {sample.video!r}: {n} expressions / {q} query frames / {len(frames)} frames do "
            f"not fit the pipeline's E={e_max}, Q={cfg.question_frames}, C+Q={cfg.context_frames + cfg.question_frames}"
        )
    conversations = [
        conv_lib.training_conversation(
            expression_texts[i],
            plan.question_templates[i],
            plan.answer_templates[i],
            int(plan.context_templates[i]),
        )
        for i in range(n)
    ]
    try:
        text = conv_lib.collate_conversations(tokenizer, conversations, t)
    except ValueError as e:
        raise ValueError(
            f"video {sample.video!r} of {sample.dataset}, expressions {list(sample.exp_ids)}: {e} "
            f"(data.max_seq_len)"
        ) from None
    input_ids = np.full((e_max, t), tokenizer.pad_id, np.int32)
    labels = np.full((e_max, t), conv_lib.IGNORE_INDEX, np.int32)
    attention = np.zeros((e_max, t), bool)
    input_ids[:n], labels[:n], attention[:n] = text["input_ids"], text["labels"], text["attention_mask"]

    h, w = sample.gt_masks.shape[2:]
    _check_mask_size(h, w, cfg, sample)
    gt = np.zeros((e_max, q, *cfg.max_mask_size), np.uint8)
    gt[:n, :, :h, :w] = sample.gt_masks
    seg_keys = np.zeros((e_max, q, 5), np.int32)
    seg_keys[:n] = sample.seg_token_keys()
    exp_valid = np.arange(e_max) < n
    expression_ids = np.full((e_max, MAX_EXPRESSION_TOKENS), -1, np.int32)
    for i in range(n):
        ids = tokenizer.encode(conv_lib.training_expression(expression_texts[i]), add_special_tokens=False)
        ids = ids[:MAX_EXPRESSION_TOKENS]
        expression_ids[i, : len(ids)] = ids

    from glus_jax.models.clip import clip_preprocess

    return {
        "clip_pixels": clip_preprocess(list(frames), size=cfg.clip_image_size),
        "sam_pixels": image_ops.sam_preprocess(frames[len(frames) - q :], cfg.image_size),
        "input_ids": input_ids,
        "labels": labels,
        "attention_mask": attention,
        "exp_valid": exp_valid,
        "gt_masks": gt,
        "orig_size": np.asarray([h, w], np.int32),
        "seg_keys": seg_keys,
        "expression_ids": expression_ids,
        "dataset_id": np.int32(plan.dataset_index),
        "sample_index": np.int32(sample_index),
    }


class ExampleBuilder:
    """Sample ``i`` of a run -> its padded example; picklable (sources reopen their data in workers)."""

    def __init__(
        self,
        sources: Sequence[VideoSource],
        sample_rates: Sequence[float],
        tokenizer: GLUSTokenizer,
        cfg: PipelineConfig,
    ):
        if len(sources) != len(sample_rates) or not sources:
            raise ValueError(f"got {len(sources)} sources but {len(sample_rates)} sample rates")
        self.sources = tuple(sources)
        self.sample_rates = tuple(float(r) for r in sample_rates)
        self.tokenizer = tokenizer
        self.cfg = cfg
        self._eligible: list[np.ndarray] | None = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_eligible"] = None  # recomputed from the sources (cheap; keeps the pickle small)
        return state

    @property
    def datasets(self) -> list[VideoDataset]:
        return [s.dataset for s in self.sources]

    @property
    def eligible(self) -> list[np.ndarray]:
        if self._eligible is None:
            self._eligible = [s.eligible(self.cfg.sampling) for s in self.sources]
        return self._eligible

    def validate(self) -> None:
        """Loads every source now (so a malformed dataset fails here, naming its file) and checks that
        every dataset with a positive rate has a drawable video."""
        elig = self.eligible
        for s, e, r in zip(self.sources, elig, self.sample_rates):
            if r > 0 and len(e) == 0:
                raise ValueError(
                    f"{s!r}: no video with expressions and at least "
                    f"{max(self.cfg.context_frames, self.cfg.question_frames)} frames"
                )

    def sample(self, index: int) -> sampling.Sample:
        return sampling.sample_at(
            self.cfg.seed, index, self.datasets, self.sample_rates, self.cfg.sampling, self.eligible
        )

    def __call__(self, index: int) -> dict[str, np.ndarray]:
        index = int(index)
        sample = self.sample(index)
        plan = sample.plan
        source = self.sources[plan.dataset_index]
        video = source.dataset.videos[plan.video_index]
        decoded: dict[int, np.ndarray] = {}
        for f in plan.frame_indices.tolist():
            if f not in decoded:
                decoded[f] = source.read_frame(video, f)
        frames = [decoded[f] for f in plan.frame_indices.tolist()]
        texts = [video.expressions[e].text for e in plan.expression_indices]
        return build_example(sample, texts, frames, self.tokenizer, self.cfg, sample_index=index)


def global_sample_index(local: int, batch_size: int, process_index: int, process_count: int) -> int:
    """Global index of the ``local``-th sample of process ``process_index``: slot b of its batch k is
    sample ``(k * process_count + process_index) * batch_size + b``."""
    k, b = divmod(int(local), batch_size)
    return (k * process_count + process_index) * batch_size + b


class _ProcessExample:
    """Local sample index -> example of this process's share of the stream."""

    def __init__(self, builder: ExampleBuilder, batch_size: int, process_index: int, process_count: int):
        self.builder, self.batch_size = builder, batch_size
        self.process_index, self.process_count = process_index, process_count

    def __call__(self, local: int) -> dict[str, np.ndarray]:
        return self.builder(
            global_sample_index(local, self.batch_size, self.process_index, self.process_count)
        )


# --------------------------------------------------------------------------------------------- pipeline


def make_dataset(
    sources: Sequence[VideoSource],
    sample_rates: Sequence[float],
    tokenizer: GLUSTokenizer,
    cfg: PipelineConfig,
    *,
    process_index: int = 0,
    process_count: int = 1,
    start_batch: int = 0,
    num_batches: int = MAX_BATCHES,
    validate: bool = True,
) -> grain.IterDataset:
    """The grain ``IterDataset`` of this process's batches ``start_batch, ..., num_batches - 1``.

    Batch k is a pure function of (cfg.seed, k, process_index, process_count, data). ``validate`` loads
    the sources here first, so malformed files fail before any worker starts.
    """
    builder = ExampleBuilder(sources, sample_rates, tokenizer, cfg)
    if validate:
        builder.validate()
    return _grain_dataset(builder, process_index, process_count, start_batch, num_batches)


def _grain_dataset(
    builder: ExampleBuilder, process_index: int, process_count: int, start_batch: int, num_batches: int
) -> grain.IterDataset:
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    if not 0 <= start_batch <= num_batches:
        raise ValueError(f"start_batch {start_batch} not in [0, {num_batches}]")
    cfg = builder.cfg
    b = cfg.batch_size
    ds = (
        grain.MapDataset.range(int(start_batch) * b, int(num_batches) * b)
        .map(_ProcessExample(builder, b, process_index, process_count))
        .batch(b, drop_remainder=True)
    )
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=cfg.num_threads, prefetch_buffer_size=cfg.prefetch))
    if cfg.num_workers > 0:
        _mark_absl_flags_parsed()
        it = it.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=cfg.num_workers, per_worker_buffer_size=1)
        )
    return it


class TrainIterator(grain.DatasetIterator):
    """This process's batches as a grain ``DatasetIterator`` whose state is only its position:
    ``get_state() == {"next_batch": k}``. Since batch k is a pure function of k, a state restores the
    same following batches whatever the worker / thread counts of the saving and the restoring run
    (grain's own multi-worker state records per-worker positions and only restores into the same worker
    count). ``set_state`` to another position restarts the underlying grain pipeline there. Works with
    grain's orbax ``CheckpointHandler`` (json of the state) like any ``DatasetIterator``.
    """

    def __init__(
        self,
        builder: ExampleBuilder,
        process_index: int = 0,
        process_count: int = 1,
        start_batch: int = 0,
        num_batches: int = MAX_BATCHES,
    ):
        super().__init__()
        self._builder = builder
        self._process = (int(process_index), int(process_count))
        self._num_batches = int(num_batches)
        self._next = int(start_batch)
        self._inner: grain.DatasetIterator | None = None
        _grain_dataset(builder, *self._process, self._next, self._num_batches)  # checks the arguments

    def _ensure(self) -> grain.DatasetIterator:
        if self._inner is None:
            self._inner = iter(_grain_dataset(self._builder, *self._process, self._next, self._num_batches))
        return self._inner

    def __next__(self) -> dict[str, np.ndarray]:
        self._assert_not_closed()
        batch = next(self._ensure())
        self._next += 1
        return batch

    def get_state(self) -> dict[str, Any]:
        return {"next_batch": self._next}

    def set_state(self, state: dict[str, Any]) -> None:
        k = int(state["next_batch"])
        if not 0 <= k <= self._num_batches:
            raise ValueError(f"iterator state next_batch={k} out of range [0, {self._num_batches}]")
        if k != self._next:
            self._close_inner()
            self._next = k

    def start_prefetch(self) -> None:
        self._assert_not_closed()
        self._ensure().start_prefetch()

    def _close_inner(self) -> None:
        if self._inner is not None:
            self._inner.close()
            self._inner = None

    def close(self) -> None:
        self._close_inner()
        super().close()

    def __str__(self) -> str:
        return f"TrainIterator(next_batch={self._next}, process={self._process})"


def make_iterator(
    sources: Sequence[VideoSource],
    sample_rates: Sequence[float],
    tokenizer: GLUSTokenizer,
    cfg: PipelineConfig,
    *,
    process_index: int = 0,
    process_count: int = 1,
    start_batch: int = 0,
    num_batches: int = MAX_BATCHES,
) -> TrainIterator:
    """:class:`TrainIterator` over :func:`make_dataset`'s batches (sources validated here)."""
    builder = ExampleBuilder(sources, sample_rates, tokenizer, cfg)
    builder.validate()
    return TrainIterator(builder, process_index, process_count, start_batch, num_batches)


def _mark_absl_flags_parsed() -> None:
    """grain 0.2.18 reads absl flags when it starts worker processes and fails if the program did not
    parse them (google/grain#1355; we use argparse, not absl.app). Marking them parsed keeps their
    defaults, the workaround grain's maintainers point to."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _get(group: Any, key: str, default: Any) -> Any:
    return group.get(key, default) if hasattr(group, "get") else getattr(group, key, default)


def pipeline_config(config: Any, batch_size: int | None = None) -> PipelineConfig:
    """PipelineConfig from an experiment ConfigDict (``configs/base.py``); fields missing from the config
    take the defaults of :class:`PipelineConfig`. ``batch_size`` (per process) defaults to
    ``train.batch_size`` (per device) x ``jax.local_device_count()``."""
    d = config.data
    if batch_size is None:
        import jax

        batch_size = int(config.train.batch_size) * jax.local_device_count()
    defaults = PipelineConfig()
    return PipelineConfig(
        batch_size=int(batch_size),
        context_frames=int(d.context_frames),
        question_frames=int(d.question_frames),
        max_expressions=int(d.max_expressions),
        max_seq_len=int(d.max_seq_len),
        image_size=int(_get(d, "image_size", defaults.image_size)),
        clip_image_size=int(_get(d, "clip_image_size", defaults.clip_image_size)),
        max_mask_size=tuple(int(v) for v in _get(d, "max_mask_size", defaults.max_mask_size)),
        seed=int(d.seed),
        num_workers=int(d.num_workers),
        num_threads=int(_get(d, "num_threads", defaults.num_threads)),
        prefetch=int(_get(d, "prefetch", defaults.prefetch)),
        inference_templates=bool(_get(d, "inference_templates", defaults.inference_templates)),
    )


def make_sources(config: Any, split: str = "train") -> list[VideoSource]:
    """One source per ``data.datasets`` entry: ``data.source = "files"`` (default) reads ``data.root``
    (GLUS's --dataset_dir layout); ``"tfds"`` reads the TFDS builds under ``data.tfds_dir``
    (``glus-jax prepare-tfds``)."""
    d = config.data
    kind = _get(d, "source", "files")
    if kind == "files":
        if not d.root:
            raise ValueError("data.root is empty: set it to the dataset directory (GLUS's --dataset_dir)")
        return [FileSource(name, d.root, split) for name in d.datasets]
    if kind == "tfds":
        from glus_jax.data.tfds_builder import TFDSSource

        tfds_dir = _get(d, "tfds_dir", "")
        if not tfds_dir:
            raise ValueError("data.source is 'tfds' but data.tfds_dir is empty")
        return [TFDSSource(name, tfds_dir, split) for name in d.datasets]
    raise ValueError(f"data.source must be 'files' or 'tfds', got {kind!r}")


def make_train_iterator(
    config: Any,
    tokenizer: GLUSTokenizer,
    process_index: int | None = None,
    process_count: int | None = None,
    *,
    batch_size: int | None = None,
    sources: Sequence[VideoSource] | None = None,
):
    """The training batch iterator of this JAX process: a :class:`TrainIterator` (a grain
    ``DatasetIterator``; ``next(it)`` gives a dict of numpy arrays, ``it.get_state()`` /
    ``it.set_state(state)`` checkpoint its position, ``it.close()`` stops its worker processes).

    process_index / process_count default to ``jax.process_index()`` / ``jax.process_count()``;
    batch_size (per process) to ``train.batch_size x jax.local_device_count()``; sources to
    :func:`make_sources` (config). Reads ``data.{root, datasets, sample_rates, context_frames,
    question_frames, max_expressions, max_seq_len, num_workers, seed}`` and, when present,
    ``data.{image_size, clip_image_size, max_mask_size, num_threads, prefetch, source, tfds_dir}``.
    """
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    cfg = pipeline_config(config, batch_size)
    sources = make_sources(config) if sources is None else sources
    return make_iterator(
        sources,
        config.data.sample_rates,
        tokenizer,
        cfg,
        process_index=int(process_index),
        process_count=int(process_count),
    )
