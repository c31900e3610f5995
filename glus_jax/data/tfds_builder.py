"""TFDS builds of the RefVOS training datasets (array_record, no TensorFlow) and their pipeline source.

``prepare(name, dataset_dir, data_dir)`` reads a dataset in its released layout once (``formats.load_dataset``:
MeViS, Ref-YouTube-VOS, Ref-DAVIS17, ReVOS, LV-VIS) and writes one record per video to
``<data_dir>/glus_refvos/<name>/1.0.0/glus_refvos-<split>.array_record-*``; :class:`TFDSSource` reads it
back through ``tfds.data_source`` into the training pipeline (``glus_jax.data.pipeline``), where it is
interchangeable with the raw files: the same videos in the same order, the same frames (the original JPEG
bytes, not re-encoded) and the same ground truth, so the batches are identical (tests/test_tfds_builder.py).
The CLI is ``glus-jax prepare-tfds --dataset mevis --dataset-dir DIR --data-dir OUT``.

Why: a record per video is one random read of a compact file instead of ~8 JPEG opens plus a json index and,
for MeViS-style datasets, a multi-GB ``mask_dict.json`` that every loader process must hold in memory.

Record of one video (plain ``tfds.features.Tensor``/``Text`` features: tfds encodes and decodes them with
numpy and its bundled example proto, no TensorFlow needed). L frames, N expressions, A annotation ids::

    video            Text                 the video's name
    frame_names      str    [L]           sorted, as ``Video.frame_names``
    frames           bytes  [L]           the frame files' bytes (JPEG)
    frame_sizes      int32  [L, 2]        (H, W) from each frame's header
    exp_ids, exp_texts  str [N]           json expression ids and raw texts
    exp_obj_ids      int64  [sum n_obj]   obj_ids of all expressions, concatenated; exp_num_obj_ids [N]
    exp_anno_ids     int64  [sum n_anno]  anno_ids likewise; exp_num_anno_ids [N]
    has_masks        bool   []
    mask_anno_ids    int64  [A]           the distinct anno ids of the video's expressions, sorted
    mask_rles        str    [A * L]       row a*L + f: compressed COCO RLE counts of anno id a at frame f
                                          (size = frame_sizes[f]); "" = no pixel (or null in mask_dict)

GT is stored per *annotation id*, not per expression: an expression's mask is the uint8 sum of its ids'
masks (quirk Q9: overlaps give 2), which a binary RLE per expression could not hold, and expressions
sharing objects share storage. Building decodes every mask of the split through the dataset reader, so a
missing id, a wrong-size or corrupt RLE or PNG fails the build with the reader's error (naming the file),
not a training step later.

Records are written unshuffled in json order (``disable_shuffling``), so record i is video i of the raw
reader; the builder's metadata (``metadata.json``) lists per split the video names, frame and expression
counts, which :class:`TFDSSource` uses to find the drawable videos without reading records, and checks
against every record it reads.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import threading
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from glus_jax.data import formats, image_ops, rle, sampling
from glus_jax.data.formats import DataFormatError, Expression, Video, VideoDataset
from glus_jax.data.pipeline import VideoSource

BUILDER_NAME = "glus_refvos"
BUILD_VERSION = "1.0.0"


def _features():
    import tensorflow_datasets as tfds

    t = tfds.features.Tensor
    return tfds.features.FeaturesDict(
        {
            "video": tfds.features.Text(),
            "frame_names": t(shape=(None,), dtype=np.str_),
            "frames": t(shape=(None,), dtype=np.object_),
            "frame_sizes": t(shape=(None, 2), dtype=np.int32),
            "exp_ids": t(shape=(None,), dtype=np.str_),
            "exp_texts": t(shape=(None,), dtype=np.str_),
            "exp_obj_ids": t(shape=(None,), dtype=np.int64),
            "exp_num_obj_ids": t(shape=(None,), dtype=np.int32),
            "exp_anno_ids": t(shape=(None,), dtype=np.int64),
            "exp_num_anno_ids": t(shape=(None,), dtype=np.int32),
            "has_masks": t(shape=(), dtype=np.bool_),
            "mask_anno_ids": t(shape=(None,), dtype=np.int64),
            "mask_rles": t(shape=(None,), dtype=np.str_),
        }
    )


def _read_bytes(path: str, video: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise DataFormatError(f"{path}: cannot read frame of video {video!r}: {e}") from None


def video_record(video: Video) -> dict[str, Any]:
    """The record of one video of a ``formats`` dataset (reads its frames and decodes all its masks)."""
    sizes = [video.frame_size(f) for f in range(video.length)]
    exps = video.expressions
    record = {
        "video": video.name,
        "frame_names": list(video.frame_names),
        "frames": [_read_bytes(p, video.name) for p in video.frame_paths],
        "frame_sizes": np.asarray(sizes, np.int32).reshape(-1, 2),
        "exp_ids": [e.exp_id for e in exps],
        "exp_texts": [e.text for e in exps],
        "exp_obj_ids": np.asarray([o for e in exps for o in e.obj_ids], np.int64),
        "exp_num_obj_ids": np.asarray([len(e.obj_ids) for e in exps], np.int32),
        "exp_anno_ids": np.asarray([a for e in exps for a in e.anno_ids], np.int64),
        "exp_num_anno_ids": np.asarray([len(e.anno_ids) for e in exps], np.int32),
        "has_masks": video.has_masks,
    }
    annos = sorted({a for e in exps for a in e.anno_ids}) if video.has_masks else []
    rles = []
    for a in annos:
        # The mask of one annotation id through the reader's public path: a one-id expression.
        single = dataclasses.replace(video, expressions=(Expression(f"anno {a}", "", (), (a,)),))
        for f in range(video.length):
            m = single.expression_mask(0, f, sizes[f])
            if m.max(initial=0) > 1:  # cannot happen for one id; guard the binary RLE below
                raise DataFormatError(f"video {video.name!r}: anno_id {a} has mask values > 1 at frame {f}")
            rles.append(rle.encode(m)["counts"] if m.any() else "")
    record["mask_anno_ids"] = np.asarray(annos, np.int64)
    record["mask_rles"] = rles
    return record


def _split_index(dataset: VideoDataset) -> dict[str, Any]:
    return {
        "videos": [v.name for v in dataset.videos],
        "num_frames": [v.length for v in dataset.videos],
        "num_expressions": [len(v.expressions) for v in dataset.videos],
    }


@functools.cache
def builder_class() -> type:
    """The ``glus_refvos`` GeneratorBasedBuilder (created, and registered with tfds, on first use so that
    importing this module does not import tensorflow_datasets). One builder config per dataset name."""
    import tensorflow_datasets as tfds

    class GlusRefvos(tfds.core.GeneratorBasedBuilder):
        """RefVOS videos with expressions and per-annotation RLE masks; see glus_jax.data.tfds_builder."""

        name = BUILDER_NAME
        VERSION = tfds.core.Version(BUILD_VERSION)
        RELEASE_NOTES: ClassVar = {
            BUILD_VERSION: "One record per video: frames, expressions, per-id RLE masks."
        }
        BUILDER_CONFIGS: ClassVar = [tfds.core.BuilderConfig(name=n) for n in formats.DATASET_DIRS]

        def __init__(
            self,
            *,
            dataset_dir: str | None = None,
            splits: Sequence[str] = ("train",),
            load_kwargs: dict[str, Any] | None = None,
            **kwargs: Any,
        ):
            self._dataset_dir = dataset_dir
            self._splits = tuple(splits)
            self._load_kwargs = dict(load_kwargs or {})
            super().__init__(**kwargs)

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                description=f"{self.builder_config.name} in GLUS's training format (glus_jax.data.tfds_builder).",
                features=_features(),
                disable_shuffling=True,  # record i = video i of the reader (json order)
                metadata=tfds.core.MetadataDict(),
            )

        def _split_generators(self, dl_manager):
            if not self._dataset_dir:
                raise ValueError(f"{BUILDER_NAME}: building needs dataset_dir (GLUS's --dataset_dir)")
            name = self.builder_config.name
            out, index = {}, {}
            for split in self._splits:
                ds = formats.load_dataset(name, self._dataset_dir, split, **self._load_kwargs)
                index[split] = _split_index(ds)
                out[split] = self._generate_examples(ds)
            self.info.metadata["source"] = {
                "dataset": name,
                "dataset_dir": os.path.abspath(self._dataset_dir),
            }
            self.info.metadata["splits"] = index
            return out

        def _generate_examples(self, ds: VideoDataset):
            for i, v in enumerate(ds.videos):
                yield i, video_record(v)

    return GlusRefvos


def prepare(
    name: str,
    dataset_dir: str,
    data_dir: str,
    splits: Sequence[str] = ("train",),
    **load_kwargs: Any,
) -> str:
    """Builds (once) the array_record files of dataset ``name`` from its layout under ``dataset_dir``
    into ``data_dir``; returns the build directory. An existing complete build is kept (tfds skips it)."""
    if name not in formats.DATASET_DIRS:
        raise ValueError(f"unknown dataset {name!r}; known: {sorted(formats.DATASET_DIRS)}")
    builder = builder_class()(
        config=name,
        data_dir=data_dir,
        dataset_dir=dataset_dir,
        splits=splits,
        load_kwargs=load_kwargs,
        file_format="array_record",
    )
    builder.download_and_prepare(download_dir=os.path.join(data_dir, "downloads"))
    return os.fspath(builder.data_dir)


# ------------------------------------------------------------------------------------------ reading


@dataclasses.dataclass(frozen=True, eq=False)
class RecordVideo(Video):
    """A ``formats.Video`` whose frames and masks come from a TFDS record: ``frame_data`` holds the encoded
    frames, ``frame_sizes`` their (H, W); ``frame_paths`` are descriptive pseudo-paths (no files)."""

    frame_data: tuple[bytes, ...] = dataclasses.field(default=(), repr=False)
    frame_sizes: tuple[tuple[int, int], ...] = dataclasses.field(default=(), repr=False)

    def frame_size(self, frame: int) -> tuple[int, int]:
        return self.frame_sizes[frame]


class _RecordMasks:
    """The mask store of one record, with the ``expression_mask(anno_ids, frame, hw, where)`` interface of
    the readers' stores: the uint8 sum of the ids' masks (an id without a stored row contributes zeros, as a
    missing id of a non-strict reader)."""

    def __init__(self, where: str, anno_ids: np.ndarray, rles: np.ndarray, sizes: np.ndarray):
        self.where = where
        self.row = {int(a): i for i, a in enumerate(anno_ids.tolist())}
        self.num_frames = len(sizes)
        self.rles, self.sizes = rles, sizes

    def expression_mask(
        self, anno_ids: Sequence[int], frame: int, hw: tuple[int, int], where: str
    ) -> np.ndarray:
        out = np.zeros(hw, np.uint8)
        size = tuple(int(v) for v in self.sizes[frame])
        for a in anno_ids:
            r = self.row.get(int(a))
            if r is None:
                continue
            counts = self.rles[r * self.num_frames + frame]
            if not counts:
                continue
            if size != tuple(hw):
                raise DataFormatError(
                    f"{self.where}: anno_id {a}, {where}: RLE size {list(size)} differs from the frame size {list(hw)}"
                )
            try:
                out += rle.decode({"size": list(size), "counts": counts})
            except rle.RLEError as e:
                raise DataFormatError(f"{self.where}: anno_id {a}, {where}: {e}") from None
        return out


def _str(x: Any) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def _split_ids(flat: np.ndarray, counts: np.ndarray) -> list[tuple[int, ...]]:
    ends = np.cumsum(counts)
    return [tuple(int(v) for v in flat[e - n : e]) for n, e in zip(counts.tolist(), ends.tolist())]


def record_to_video(record: dict[str, Any], dataset: str, where: str) -> RecordVideo:
    """A decoded record (``tfds`` numpy dict) -> :class:`RecordVideo`; ``where`` names the record for errors."""
    name = _str(record["video"])
    frame_names = tuple(_str(f) for f in record["frame_names"])
    sizes = np.asarray(record["frame_sizes"], np.int32).reshape(-1, 2)
    ids = [_str(e) for e in record["exp_ids"]]
    texts = [_str(e) for e in record["exp_texts"]]
    obj = _split_ids(np.asarray(record["exp_obj_ids"]), np.asarray(record["exp_num_obj_ids"]))
    anno = _split_ids(np.asarray(record["exp_anno_ids"]), np.asarray(record["exp_num_anno_ids"]))
    if not (len(ids) == len(texts) == len(obj) == len(anno)) or len(sizes) != len(frame_names):
        raise DataFormatError(f"{where}: inconsistent record of video {name!r}")
    masks = None
    if bool(record["has_masks"]):
        rles = np.asarray([_str(r) for r in record["mask_rles"]], dtype=object)
        masks = _RecordMasks(f"{where} (video {name!r})", np.asarray(record["mask_anno_ids"]), rles, sizes)
    return RecordVideo(
        dataset=dataset,
        name=name,
        frame_names=frame_names,
        frame_paths=tuple(f"{where}/{name}/{f}" for f in frame_names),
        expressions=tuple(Expression(i, t, o, a) for i, t, o, a in zip(ids, texts, obj, anno)),
        masks=masks,
        mask_frame_index=tuple(range(len(frame_names))),
        frame_data=tuple(bytes(b) for b in record["frames"]),
        frame_sizes=tuple((int(h), int(w)) for h, w in sizes),
    )


class _RecordVideos(Sequence):
    """``VideoDataset.videos`` backed by a tfds data source: videos are read on access (a few are cached,
    since a sample reads its video twice: to draw the plan and to load it)."""

    def __init__(self, source: TFDSSource):
        self._source = source
        self._cache: dict[int, RecordVideo] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._source.index["videos"])

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"video {i} out of range for {len(self)} videos")
        with self._lock:
            if i in self._cache:
                return self._cache[i]
        src = self._source
        where = f"{src.build_dir} [{src.split} record {i}]"
        video = record_to_video(src.data_source[i], src.name, where)
        expected = src.index["videos"][i]
        if video.name != expected:
            raise DataFormatError(
                f"{where}: holds video {video.name!r} but the build's metadata lists {expected!r} "
                f"(corrupt or mixed build: rebuild it)"
            )
        with self._lock:
            if len(self._cache) >= 8:
                self._cache.pop(next(iter(self._cache)))
            self._cache[i] = video
        return video


class TFDSSource(VideoSource):
    """A ``glus_refvos/<name>`` TFDS build under ``data_dir`` as a pipeline source. Pickles as its
    arguments; the data source is opened lazily in each process."""

    def __init__(self, name: str, data_dir: str, split: str = "train"):
        if name not in formats.DATASET_DIRS:
            raise ValueError(f"unknown dataset {name!r}; known: {sorted(formats.DATASET_DIRS)}")
        self.name, self.data_dir, self.split = name, data_dir, split
        self._lock = threading.RLock()
        self._opened: tuple[Any, dict[str, Any], str] | None = None
        self._dataset: VideoDataset | None = None

    def __getstate__(self):
        return {"name": self.name, "data_dir": self.data_dir, "split": self.split}

    def __setstate__(self, state):
        self.__init__(state["name"], state["data_dir"], state["split"])

    def __repr__(self) -> str:
        return f"TFDSSource({self.name!r}, {self.data_dir!r}, {self.split!r})"

    def _open(self) -> tuple[Any, dict[str, Any], str]:
        with self._lock:
            if self._opened is None:
                import tensorflow_datasets as tfds

                builder_class()  # registers glus_refvos
                build_dir = os.path.join(self.data_dir, BUILDER_NAME, self.name, BUILD_VERSION)
                if not os.path.exists(os.path.join(build_dir, "dataset_info.json")):
                    raise DataFormatError(
                        f"{build_dir}: no TFDS build of {self.name} (run `glus-jax prepare-tfds --dataset "
                        f"{self.name} --dataset-dir <dir> --data-dir {self.data_dir}`)"
                    )
                builder = tfds.builder(f"{BUILDER_NAME}/{self.name}:{BUILD_VERSION}", data_dir=self.data_dir)
                splits = (builder.info.metadata or {}).get("splits", {})
                if self.split not in splits or self.split not in builder.info.splits:
                    raise DataFormatError(
                        f"{build_dir}: the build has no split {self.split!r} ({sorted(splits)})"
                    )
                source = tfds.data_source(
                    f"{BUILDER_NAME}/{self.name}:{BUILD_VERSION}",
                    split=self.split,
                    data_dir=self.data_dir,
                    download=False,
                )
                index = splits[self.split]
                if len(source) != len(index["videos"]):
                    raise DataFormatError(
                        f"{build_dir}: split {self.split!r} has {len(source)} records but its metadata lists "
                        f"{len(index['videos'])} videos"
                    )
                self._opened = (source, index, build_dir)
            return self._opened

    @property
    def data_source(self):
        return self._open()[0]

    @property
    def index(self) -> dict[str, Any]:
        return self._open()[1]

    @property
    def build_dir(self) -> str:
        return self._open()[2]

    @property
    def dataset(self) -> VideoDataset:
        self._open()
        with self._lock:
            if self._dataset is None:
                self._dataset = VideoDataset(
                    name=self.name, root=self.build_dir, split=self.split, videos=_RecordVideos(self)
                )
            return self._dataset

    def eligible(self, cfg: sampling.SamplingConfig) -> np.ndarray:
        """``sampling.eligible_videos`` from the build's metadata (no record reads)."""
        need = max(cfg.context_frames, cfg.query_frames)
        idx = self.index
        return np.asarray(
            [i for i, (n, e) in enumerate(zip(idx["num_frames"], idx["num_expressions"])) if e and n >= need],
            dtype=np.int64,
        )

    def read_frame(self, video: Video, index: int) -> np.ndarray:
        where = f"video {video.name!r} of {self.name} ({self.build_dir}), frame {video.frame_names[index]!r}"
        return image_ops.decode_image(video.frame_data[index], where)


# ------------------------------------------------------------------------------------------ CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dataset",
        required=True,
        action="append",
        choices=sorted(formats.DATASET_DIRS),
        help="dataset to build (repeatable)",
    )
    parser.add_argument("--dataset-dir", required=True, help="GLUS's --dataset_dir (holds mevis/, ...)")
    parser.add_argument(
        "--data-dir", required=True, help="TFDS data_dir to write (the config's data.tfds_dir)"
    )
    parser.add_argument("--split", action="append", default=None, help="split(s) to build (default: train)")


def main(args: argparse.Namespace) -> int:
    for name in args.dataset:
        path = prepare(name, args.dataset_dir, args.data_dir, splits=tuple(args.split or ("train",)))
        print(f"{name}: {path}")
    return 0
