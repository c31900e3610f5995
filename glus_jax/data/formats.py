"""Readers for the referring-video-segmentation datasets GLUS trains on, in their on-disk formats.

Ports the loaders of the GLUS repository (``dataset/mevis.py``, ``refyoutube_vos.py``, ``davis17.py``,
``revos.py``, ``lvvis.py``) plus the mask lookup of ``dataset/refer_video_seg_dataset.py``. Everything
returned is plain Python / numpy, so it can feed a grain pipeline or a test.

Layouts (``dataset_dir`` is GLUS's ``--dataset_dir``; :data:`DATASET_DIRS` names each subdirectory)::

    mevis/<split>/meta_expressions.json          {"videos": {vid: {"frames": [...], "expressions":
    mevis/<split>/mask_dict.json                     {exp_id: {"exp", "obj_id": [..], "anno_id": [..]}}}}}
    mevis/<split>/JPEGImages/<vid>/<frame>.jpg   mask_dict: {str(anno_id): [COCO RLE | null per frame]}
    ReVOS/meta_expressions_<split>_.json, ReVOS/mask_dict.json, ReVOS/JPEGImages/<vid>/<frame>.jpg
    LVVIS/meta_expressions.json, LVVIS/mask_dict.json, LVVIS/<split>/JPEGImages/<vid>/<frame>.jpg
    Refer-YouTube-VOS/meta_expressions/<split>/meta_expressions.json   expressions: {"exp", "obj_id": "3"}
    Refer-YouTube-VOS/<split>/JPEGImages/<vid>/<frame>.jpg
    Refer-YouTube-VOS/<split>/Annotations/<vid>/<frame>.png   palette PNG, pixel value = object id
    DAVIS17/...  the same layout as Refer-YouTube-VOS (GLUS's converted Ref-DAVIS17)

Ground truth of an (expression, frame): the masks of all the expression's annotation ids added up as
uint8 (quirk Q9: overlapping objects give 2). For RLE datasets an id whose entry for that frame is
``null`` contributes nothing (the object is not visible there); for palette datasets the mask of id k is
``png == k``.

Deliberate deviations from the reference, all about broken inputs: the reference wraps the RLE lookup in
a bare ``try/except: continue``, so a missing annotation id, a too-short frame list or an RLE of the
wrong size silently yields an empty mask. Here they raise :class:`DataFormatError` naming the file, the
video and the expression (``strict=False`` restores the silent empty mask for missing ids / frames).
Mask lists are indexed by the frame's position in the json ``frames`` list, the reference by its
position after sorting; the two agree whenever the json lists frames sorted, as every released dataset
does.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from glus_jax.data import rle as rle_lib

# Subdirectory of --dataset_dir for each dataset name used in configs (GLUS's --refer_video_seg_data).
DATASET_DIRS = {
    "mevis": "mevis",
    "refyoutube_vos": "Refer-YouTube-VOS",
    "davis17": "DAVIS17",
    "revos": "ReVOS",
    "lvvis": "LVVIS",
}
# Prefix of the reference's ``str_id`` (``f"{prefix}_{video}_{exp_id}"``); the contrastive loss keys on it.
STR_ID_PREFIX = {
    "mevis": "mevis",
    "refyoutube_vos": "youtube",
    "davis17": "davis17",
    "revos": "revos",
    "lvvis": "lvvis",
}


class DataFormatError(ValueError):
    """A dataset file that does not have the expected content; the message names file and entry."""


@dataclasses.dataclass(frozen=True)
class Expression:
    """One referring expression of a video.

    ``text`` is the raw json string (the sampler strips a trailing '.', as the reference does).
    ``obj_ids`` are the dataset's object ids (the contrastive loss groups expressions by this set);
    ``anno_ids`` are the keys of the GT masks: mask_dict keys (MeViS/ReVOS/LV-VIS) or palette values
    (Ref-YouTube-VOS/DAVIS17, where they equal ``obj_ids``). Both are empty for splits without GT.
    """

    exp_id: str
    text: str
    obj_ids: tuple[int, ...]
    anno_ids: tuple[int, ...]


class _RLEMasks:
    """Ground truth stored as ``mask_dict.json``: {str(anno_id): [RLE or None per frame]}."""

    def __init__(self, path: str, mask_dict: Mapping[str, Any], strict: bool):
        self.path = path
        self.mask_dict = mask_dict
        self.strict = strict

    def validate(self, video: str, exp: Expression, num_frames: int) -> None:
        for a in exp.anno_ids:
            entry = self.mask_dict.get(str(a))
            if entry is None:
                if self.strict:
                    raise DataFormatError(
                        f"{self.path}: no entry for anno_id {a} (video {video!r}, expression {exp.exp_id!r})"
                    )
                continue
            if not isinstance(entry, list):
                raise DataFormatError(
                    f"{self.path}: entry of anno_id {a} must be a list of per-frame RLEs, got "
                    f"{type(entry).__name__} (video {video!r}, expression {exp.exp_id!r})"
                )
            if self.strict and len(entry) != num_frames:
                raise DataFormatError(
                    f"{self.path}: anno_id {a} has {len(entry)} frame entries but video {video!r} has "
                    f"{num_frames} frames (expression {exp.exp_id!r})"
                )

    def expression_mask(
        self, anno_ids: Sequence[int], frame: int, hw: tuple[int, int], where: str
    ) -> np.ndarray:
        out = np.zeros(hw, np.uint8)
        for a in anno_ids:
            entry = self.mask_dict.get(str(a))
            if entry is None or frame >= len(entry):
                if self.strict:
                    raise DataFormatError(f"{self.path}: no mask of anno_id {a} for {where}")
                continue
            rle = entry[frame]
            if rle is None:  # object not visible in this frame
                continue
            try:
                m = rle_lib.decode(rle)
            except rle_lib.RLEError as e:
                raise DataFormatError(f"{self.path}: anno_id {a}, {where}: {e}") from None
            if m.shape != hw:
                raise DataFormatError(
                    f"{self.path}: anno_id {a}, {where}: RLE size {list(m.shape)} differs from the frame "
                    f"size {list(hw)}"
                )
            out += m  # uint8 sum, quirk Q9
        return out


class _PaletteMasks:
    """Ground truth as one palette PNG per frame whose pixel values are object ids."""

    def __init__(self, paths: Sequence[str]):
        self.paths = tuple(paths)

    def expression_mask(
        self, anno_ids: Sequence[int], frame: int, hw: tuple[int, int], where: str
    ) -> np.ndarray:
        from PIL import Image

        path = self.paths[frame]
        try:
            with Image.open(path) as im:
                if im.mode not in ("P", "L", "I", "I;16"):
                    raise DataFormatError(
                        f"{path}: annotation must be a palette/grayscale PNG, got mode {im.mode}"
                    )
                ids = np.asarray(im)
        except OSError as e:
            raise DataFormatError(f"{path}: cannot read annotation for {where}: {e}") from None
        if ids.shape != hw:
            raise DataFormatError(
                f"{path}: annotation size {list(ids.shape)} differs from the frame size {list(hw)}"
            )
        out = np.zeros(hw, np.uint8)
        for a in anno_ids:
            out += ids == a  # uint8 sum, quirk Q9
        return out


@dataclasses.dataclass(frozen=True, eq=False)
class Video:
    """A video with its referring expressions.

    frame_names / frame_paths are sorted by name (GLUS sorts them). ``masks`` is None for splits without
    ground truth.
    """

    dataset: str
    name: str
    frame_names: tuple[str, ...]
    frame_paths: tuple[str, ...]
    expressions: tuple[Expression, ...]
    masks: Any = dataclasses.field(default=None, repr=False)
    # Position of each sorted frame in the json "frames" list (index into the per-frame mask lists).
    mask_frame_index: tuple[int, ...] = dataclasses.field(default=(), repr=False)

    @property
    def length(self) -> int:
        return len(self.frame_names)

    @property
    def has_masks(self) -> bool:
        return self.masks is not None

    def str_id(self, exp: int) -> str:
        """The reference's ``str_id`` of expression ``exp`` (``mevis_<video>_<exp_id>``)."""
        return f"{STR_ID_PREFIX.get(self.dataset, self.dataset)}_{self.name}_{self.expressions[exp].exp_id}"

    @functools.cached_property
    def object_set_ids(self) -> tuple[int, ...]:
        """Per expression, an id of its *set* of object ids, equal iff the sorted obj_id lists are equal
        (the contrastive loss's positives: ``np.array_equal(sorted obj ids)`` in utils/contrastive_loss.py).
        Ids are numbered by first appearance."""
        table: dict[tuple[int, ...], int] = {}
        return tuple(table.setdefault(tuple(sorted(e.obj_ids)), len(table)) for e in self.expressions)

    def frame_size(self, frame: int) -> tuple[int, int]:
        """(H, W) of frame ``frame``, read from the image header."""
        from PIL import Image

        path = self.frame_paths[frame]
        try:
            with Image.open(path) as im:
                w, h = im.size
        except OSError as e:
            raise DataFormatError(f"{path}: cannot read frame {frame} of video {self.name!r}: {e}") from None
        return h, w

    def expression_mask(self, exp: int, frame: int, hw: tuple[int, int] | None = None) -> np.ndarray:
        """uint8 [H, W]: the sum of the masks of expression ``exp``'s annotation ids at frame ``frame``
        (an index into ``frame_names``). ``hw`` defaults to the frame's image size."""
        if self.masks is None:
            raise DataFormatError(
                f"video {self.name!r} of {self.dataset} has no ground-truth masks in this split"
            )
        if not 0 <= frame < self.length:
            raise IndexError(f"frame {frame} out of range for video {self.name!r} with {self.length} frames")
        e = self.expressions[exp]
        hw = self.frame_size(frame) if hw is None else tuple(hw)
        where = f"video {self.name!r}, expression {e.exp_id!r}, frame {frame} ({self.frame_names[frame]!r})"
        return self.masks.expression_mask(e.anno_ids, self.mask_frame_index[frame], hw, where)


@dataclasses.dataclass(frozen=True, eq=False)
class VideoDataset:
    """All videos of one dataset split, in json order."""

    name: str
    root: str
    split: str
    videos: tuple[Video, ...]

    def __len__(self) -> int:
        return len(self.videos)


# --------------------------------------------------------------------------------------------------
# json helpers with errors that name the file and the entry


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataFormatError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise DataFormatError(f"{path}: invalid JSON: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataFormatError(f"{path}: cannot read: {e}") from None


def _get(d: Any, key: str, path: str, where: str, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(d, Mapping) or key not in d:
        raise DataFormatError(f"{path}: {where} has no key {key!r}")
    v = d[key]
    if not isinstance(v, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise DataFormatError(f"{path}: {where}: {key!r} must be {names}, got {type(v).__name__}")
    return v


def _int_list(v: Any, path: str, where: str, key: str) -> tuple[int, ...]:
    items = v if isinstance(v, list) else [v]
    try:
        return tuple(int(x) for x in items)
    except (TypeError, ValueError):
        raise DataFormatError(f"{path}: {where}: {key!r} must hold integer ids, got {v!r}") from None


def _check_frames_exist(paths: Sequence[str], video: str, what: str) -> None:
    dirs: dict[str, set[str]] = {}
    for p in paths:
        d, base = os.path.split(p)
        if d not in dirs:
            try:
                dirs[d] = set(os.listdir(d))
            except OSError:
                raise DataFormatError(f"{d}: {what} directory of video {video!r} not found") from None
        if base not in dirs[d]:
            raise DataFormatError(f"{p}: {what} of video {video!r} is missing")


def _read_videos(
    *,
    dataset: str,
    meta_path: str,
    image_root: str,
    parse_ids: Callable[[Mapping[str, Any], str], tuple[tuple[int, ...], tuple[int, ...]]] | None,
    make_masks: Callable[[str, list[str]], Any] | None,
    min_frames: int,
    check_files: bool,
    validate: Callable[[str, Expression, int], None] | None = None,
) -> list[Video]:
    meta = _read_json(meta_path)
    videos_json = _get(meta, "videos", meta_path, "top level", dict)
    out = []
    for vid, vdata in videos_json.items():
        where_v = f"video {vid!r}"
        frames_raw = _get(vdata, "frames", meta_path, where_v, list)
        if not all(isinstance(f, str) for f in frames_raw):
            raise DataFormatError(f"{meta_path}: {where_v}: 'frames' must be a list of strings")
        order = sorted(range(len(frames_raw)), key=lambda i: frames_raw[i])
        frames = [frames_raw[i] for i in order]
        if len(frames) < min_frames:  # GLUS's loaders skip videos with fewer than 4 frames
            continue
        exps_json = _get(vdata, "expressions", meta_path, where_v, dict)
        exps = []
        for exp_id, edata in exps_json.items():
            where_e = f"video {vid!r}, expression {exp_id!r}"
            text = _get(edata, "exp", meta_path, where_e, str)
            obj_ids, anno_ids = parse_ids(edata, where_e) if parse_ids is not None else ((), ())
            exps.append(Expression(exp_id=str(exp_id), text=text, obj_ids=obj_ids, anno_ids=anno_ids))
        frame_paths = [os.path.join(image_root, vid, f + ".jpg") for f in frames]
        if check_files:
            _check_frames_exist(frame_paths, vid, "frame")
        masks = make_masks(vid, frames) if make_masks is not None else None
        if validate is not None:
            for e in exps:
                validate(vid, e, len(frames))
        out.append(
            Video(
                dataset=dataset,
                name=vid,
                frame_names=tuple(frames),
                frame_paths=tuple(frame_paths),
                expressions=tuple(exps),
                masks=masks,
                mask_frame_index=tuple(order),
            )
        )
    return out


def _rle_ids(meta_path: str, require: bool):
    def parse(edata: Mapping[str, Any], where: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
        if not require and ("obj_id" not in edata or "anno_id" not in edata):
            return (), ()
        obj = _int_list(_get(edata, "obj_id", meta_path, where, (list, int, str)), meta_path, where, "obj_id")
        ann = _int_list(
            _get(edata, "anno_id", meta_path, where, (list, int, str)), meta_path, where, "anno_id"
        )
        return obj, ann

    return parse


def _palette_ids(meta_path: str, require: bool):
    def parse(edata: Mapping[str, Any], where: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
        if not require and "obj_id" not in edata:
            return (), ()
        obj = _int_list(_get(edata, "obj_id", meta_path, where, (list, int, str)), meta_path, where, "obj_id")
        return obj, obj

    return parse


def _rle_dataset(
    dataset: str,
    root: str,
    split: str,
    meta_path: str,
    mask_path: str,
    image_root: str,
    *,
    min_frames: int,
    strict: bool,
    check_files: bool,
) -> VideoDataset:
    has_gt = split == "train" or os.path.exists(mask_path)
    masks = None
    if has_gt:
        mask_dict = _read_json(mask_path)
        if not isinstance(mask_dict, dict):
            raise DataFormatError(f"{mask_path}: top level must be a dict anno_id -> per-frame RLEs")
        masks = _RLEMasks(mask_path, mask_dict, strict)
    videos = _read_videos(
        dataset=dataset,
        meta_path=meta_path,
        image_root=image_root,
        parse_ids=_rle_ids(meta_path, require=split == "train"),
        make_masks=(lambda vid, frames: masks) if has_gt else None,
        min_frames=min_frames,
        check_files=check_files,
        validate=masks.validate if masks is not None else None,
    )
    return VideoDataset(name=dataset, root=root, split=split, videos=tuple(videos))


def _palette_dataset(
    dataset: str, root: str, split: str, *, min_frames: int, check_files: bool
) -> VideoDataset:
    meta_path = os.path.join(root, "meta_expressions", split, "meta_expressions.json")
    image_root = os.path.join(root, split, "JPEGImages")
    mask_root = os.path.join(root, split, "Annotations")
    has_gt = split == "train" or os.path.isdir(mask_root)

    def make_masks(vid: str, frames: list[str]) -> _PaletteMasks:
        paths = [os.path.join(mask_root, vid, f + ".png") for f in frames]
        if check_files:
            _check_frames_exist(paths, vid, "annotation")
        return _PaletteMasks(paths)

    videos = _read_videos(
        dataset=dataset,
        meta_path=meta_path,
        image_root=image_root,
        parse_ids=_palette_ids(meta_path, require=split == "train"),
        make_masks=make_masks if has_gt else None,
        min_frames=min_frames,
        check_files=check_files,
    )
    # Palette masks are looked up by sorted position already (one PNG per sorted frame name).
    videos = [dataclasses.replace(v, mask_frame_index=tuple(range(v.length))) for v in videos]
    return VideoDataset(name=dataset, root=root, split=split, videos=tuple(videos))


# --------------------------------------------------------------------------------------------------
# public readers: ``root`` is the dataset's own directory (e.g. <dataset_dir>/mevis)


def load_mevis(
    root: str, split: str = "train", *, min_frames: int = 4, strict: bool = True, check_files: bool = True
) -> VideoDataset:
    """MeViS: ``<root>/<split>/{meta_expressions.json, mask_dict.json, JPEGImages/}`` (dataset/mevis.py).

    GT is loaded for ``train`` (required) and for other splits when their mask_dict.json exists
    (valid_u has one)."""
    d = os.path.join(root, split)
    return _rle_dataset(
        "mevis",
        root,
        split,
        os.path.join(d, "meta_expressions.json"),
        os.path.join(d, "mask_dict.json"),
        os.path.join(d, "JPEGImages"),
        min_frames=min_frames,
        strict=strict,
        check_files=check_files,
    )


def load_revos(
    root: str, split: str = "train", *, min_frames: int = 4, strict: bool = True, check_files: bool = True
) -> VideoDataset:
    """ReVOS: ``<root>/meta_expressions_<split>_.json``, ``<root>/mask_dict.json``, ``<root>/JPEGImages/``
    (dataset/revos.py; note the trailing underscore in the json name). The reference keeps short videos in
    non-train splits: pass ``min_frames=0`` there."""
    return _rle_dataset(
        "revos",
        root,
        split,
        os.path.join(root, f"meta_expressions_{split}_.json"),
        os.path.join(root, "mask_dict.json"),
        os.path.join(root, "JPEGImages"),
        min_frames=min_frames,
        strict=strict,
        check_files=check_files,
    )


def load_lvvis(
    root: str, split: str = "train", *, min_frames: int = 4, strict: bool = True, check_files: bool = True
) -> VideoDataset:
    """LV-VIS as GLUS reads it (dataset/lvvis.py, train only in the reference):
    ``<root>/meta_expressions.json``, ``<root>/mask_dict.json``, ``<root>/<split>/JPEGImages/``."""
    return _rle_dataset(
        "lvvis",
        root,
        split,
        os.path.join(root, "meta_expressions.json"),
        os.path.join(root, "mask_dict.json"),
        os.path.join(root, split, "JPEGImages"),
        min_frames=min_frames,
        strict=strict,
        check_files=check_files,
    )


def load_refyoutube_vos(
    root: str, split: str = "train", *, min_frames: int = 4, check_files: bool = True
) -> VideoDataset:
    """Ref-YouTube-VOS (dataset/refyoutube_vos.py): ``<root>/meta_expressions/<split>/meta_expressions.json``,
    ``<root>/<split>/JPEGImages/``, palette PNGs ``<root>/<split>/Annotations/<vid>/<frame>.png``."""
    return _palette_dataset("refyoutube_vos", root, split, min_frames=min_frames, check_files=check_files)


def load_davis17(
    root: str, split: str = "train", *, min_frames: int = 4, check_files: bool = True
) -> VideoDataset:
    """Ref-DAVIS17 in GLUS's layout (dataset/davis17.py), the same as Ref-YouTube-VOS under ``DAVIS17/``.
    The reference keeps short videos in non-train splits: pass ``min_frames=0`` there."""
    return _palette_dataset("davis17", root, split, min_frames=min_frames, check_files=check_files)


LOADERS: dict[str, Callable[..., VideoDataset]] = {
    "mevis": load_mevis,
    "refyoutube_vos": load_refyoutube_vos,
    "davis17": load_davis17,
    "revos": load_revos,
    "lvvis": load_lvvis,
}


def load_dataset(name: str, dataset_dir: str, split: str = "train", **kwargs: Any) -> VideoDataset:
    """Loads dataset ``name`` (a key of :data:`DATASET_DIRS`) from GLUS's ``--dataset_dir`` layout."""
    if name not in LOADERS:
        raise ValueError(f"unknown dataset {name!r}; known: {sorted(LOADERS)}")
    return LOADERS[name](os.path.join(dataset_dir, DATASET_DIRS[name]), split, **kwargs)
