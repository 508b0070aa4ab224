"""VidVRD (ImageNet-VidVRD) and VidOR: video relation annotations, one JSON file per video.

Layouts, as published::

    vidvrd-dataset/train/ILSVRC2015_train_00005003.json     vidor-dataset/annotation/training/0000/2401075277.json
    vidvrd-dataset/test/...json                             vidor-dataset/annotation/validation/...
    vidvrd-dataset/videos/ILSVRC2015_train_00005003.mp4     vidor-dataset/video/0000/2401075277.mp4

A file holds ``video_id``, ``frame_count``, ``fps``, ``width``, ``height``, ``subject/objects``
(``tid``, ``category``), ``trajectories`` (one list per frame of ``tid`` + ``bbox`` with ``xmin``,
``ymin``, ``xmax``, ``ymax`` in pixels; a list may be empty) and ``relation_instances``
(``subject_tid``, ``object_tid``, ``predicate``, ``begin_fid`` inclusive, ``end_fid`` exclusive).
VidOR adds ``version`` and ``video_path`` (relative to ``video/``). Frame ids count decoded frames
from 0.

VidVRD was annotated in 30-frame segments, so one relation often appears as several instances with
touching or overlapping frame ranges; those of the same ``(subject, predicate, object)`` are
merged back into one (:func:`~.common.merged_relations`). Names are normalised (``red_panda`` ->
``red panda``, ``in_front_of`` -> ``in front of``).
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ...vocabulary import Vocabulary
from .common import (
    CorpusDataset,
    CorpusError,
    TemporalRelation,
    VideoAnnotation,
    get_field,
    load_json,
    merged_relations,
    read_video_frames,
    sorted_vocabulary,
    xyxy_to_fractions,
)

__all__ = ["VidVRD", "VidOR", "video_relation_vocabulary"]

_BOX_KEYS = ("xmin", "ymin", "xmax", "ymax")


def _check_header(path: Path, data: Any) -> tuple[str, int, float, float]:
    if not isinstance(data, dict):
        raise CorpusError(path, None, None, f"expected a video annotation object, got {type(data).__name__}")
    video_id = get_field(data, "video_id", "str", path, None)
    frame_count = get_field(data, "frame_count", "int", path, None)
    width = get_field(data, "width", "number", path, None)
    height = get_field(data, "height", "number", path, None)
    if frame_count < 1:
        raise CorpusError(path, None, "frame_count", f"expected >= 1, got {frame_count}")
    if width <= 0 or height <= 0:
        raise CorpusError(
            path, None, "width" if width <= 0 else "height", f"expected a positive size, got {width} x {height}"
        )
    return video_id, frame_count, float(width), float(height)


def _categories_and_predicates(path: Path) -> tuple[set[str], set[str]]:
    data = load_json(path)
    _check_header(path, data)
    categories = {
        get_field(item, "category", "str", path, f"subject/objects[{k}]")
        for k, item in enumerate(get_field(data, "subject/objects", "list", path, None))
    }
    predicates = {
        get_field(item, "predicate", "str", path, f"relation_instances[{k}]")
        for k, item in enumerate(get_field(data, "relation_instances", "list", path, None))
    }
    return categories, predicates


def video_relation_vocabulary(annotation_files: Sequence[str | os.PathLike]) -> Vocabulary:
    """Every object category and predicate of the given annotation files, normalised, in
    alphabetical order (the order VidVRD-helper numbers them in), in the sg2im layout."""
    objects, predicates = set(), set()
    for path in annotation_files:
        categories, preds = _categories_and_predicates(Path(path))
        objects |= categories
        predicates |= preds
    if not objects:
        raise ValueError("no annotation files to build a vocabulary from")
    return sorted_vocabulary(objects, predicates)


class VidVRD(CorpusDataset):
    """ImageNet-VidVRD clips with dynamic scene graphs (see the module docstring).

    Args:
        data_dir: the ``vidvrd-dataset`` folder.
        split: ``"train"`` or ``"test"``.
        video_dir: the videos (default ``DATA_DIR/videos``).
        vocabulary_splits: the splits whose names make the default vocabulary.
        **kwargs: see :class:`CorpusDataset` (``vocab`` defaults to :func:`video_relation_vocabulary`
            of ``vocabulary_splits``; build it once with ``python -m sg2vid_diffusers.data.corpora
            vocab`` and pass the file, for speed).
    """

    format_name = "vidvrd"

    def __init__(
        self,
        data_dir: str | os.PathLike,
        split: str = "train",
        *,
        video_dir: str | os.PathLike | None = None,
        vocabulary_splits: Sequence[str] = ("train",),
        **kwargs,
    ):
        super().__init__(data_dir, split, **kwargs)
        self.video_dir = Path(video_dir) if video_dir is not None else self._default_video_dir()
        self.vocabulary_splits = tuple(vocabulary_splits)
        self.files: dict[str, Path] = {}  # video id (the file's name) -> annotation file
        for path in self.annotation_files(split):
            if path.stem in self.files:
                raise CorpusError(
                    path, None, None, f"a second annotation file for video {path.stem} ({self.files[path.stem]})"
                )
            self.files[path.stem] = path
        self._set_vocabulary()

    def _default_video_dir(self) -> Path:
        return self.data_dir / "videos"

    def annotation_files(self, split: str) -> list[Path]:
        folder = self.data_dir / split
        files = sorted(folder.glob("*.json"))
        if not files:
            raise FileNotFoundError(f"{folder}: no annotation files (*.json) for split {split!r}")
        return files

    def video_path(self, path: Path, data: dict) -> Path:
        return self.video_dir / f"{data['video_id']}.mp4"

    def default_vocabulary(self) -> Vocabulary:
        return video_relation_vocabulary([f for split in self.vocabulary_splits for f in self.annotation_files(split)])

    def video_keys(self) -> Sequence[str]:
        return list(self.files)

    def load_video(self, key: str) -> VideoAnnotation:
        path = self.files[key]
        data = load_json(path)
        video_id, frame_count, width, height = _check_header(path, data)
        video = self.video_path(path, data)
        if not video.is_file():
            raise CorpusError(path, None, "video_id", f"the video {video} does not exist")
        unknown_objects, unknown_predicates, dropped = Counter(), Counter(), Counter()

        tid_index: dict[int, int | None] = {}  # tid -> object index (None: unknown category)
        names = []
        for k, item in enumerate(get_field(data, "subject/objects", "list", path, None)):
            record = f"subject/objects[{k}]"
            tid = get_field(item, "tid", "int", path, record)
            if tid in tid_index:
                raise CorpusError(path, record, "tid", f"tid {tid} is listed twice")
            name = self.names.object(
                get_field(item, "category", "str", path, record), unknown_objects, path, record, "category"
            )
            tid_index[tid] = None if name is None else len(names)
            if name is not None:
                names.append(name)

        trajectories = get_field(data, "trajectories", "list", path, None)
        if len(trajectories) != frame_count:
            raise CorpusError(
                path, None, "trajectories", f"{len(trajectories)} frames, but frame_count is {frame_count}"
            )
        boxes = np.full((frame_count, len(names), 4), np.nan)
        for fid, frame in enumerate(trajectories):
            if not isinstance(frame, list):
                raise CorpusError(path, f"trajectories[{fid}]", None, f"expected a list of boxes, got {frame!r}")
            for k, item in enumerate(frame):
                record = f"trajectories[{fid}][{k}]"
                tid = get_field(item, "tid", "int", path, record)
                if tid not in tid_index:
                    raise CorpusError(path, record, "tid", f"tid {tid} is not in subject/objects")
                bbox = get_field(item, "bbox", "dict", path, record)
                corners = [get_field(bbox, corner, "number", path, record, f"bbox.{corner}") for corner in _BOX_KEYS]
                if tid_index[tid] is None:
                    continue
                fractions = xyxy_to_fractions(corners, width, height)
                if fractions is None:
                    dropped["empty boxes or boxes outside their frame"] += 1
                else:
                    boxes[fid, tid_index[tid]] = fractions

        instances = []
        for k, item in enumerate(get_field(data, "relation_instances", "list", path, None)):
            record = f"relation_instances[{k}]"
            ends = {}
            for end_name in ("subject_tid", "object_tid"):
                ends[end_name] = get_field(item, end_name, "int", path, record)
                if ends[end_name] not in tid_index:
                    raise CorpusError(path, record, end_name, f"tid {ends[end_name]} is not in subject/objects")
            begin = get_field(item, "begin_fid", "int", path, record)
            end = get_field(item, "end_fid", "int", path, record)
            if not 0 <= begin < end <= frame_count:
                field = "begin_fid" if not 0 <= begin < frame_count else "end_fid"
                reason = f"[begin_fid, end_fid) = [{begin}, {end}) is not a frame range inside 0..{frame_count} (end exclusive)"
                raise CorpusError(path, record, field, reason)
            predicate = self.names.predicate(
                get_field(item, "predicate", "str", path, record), unknown_predicates, path, record, "predicate"
            )
            s, o = tid_index[ends["subject_tid"]], tid_index[ends["object_tid"]]
            if predicate is None:
                continue
            if s is None or o is None:
                dropped["relations of unknown objects"] += 1
            elif ends["subject_tid"] == ends["object_tid"]:
                dropped["self-relations (subject == object)"] += 1
            else:
                instances.append(TemporalRelation(s, predicate, o, begin, end))

        return VideoAnnotation(
            key=key,
            source=video,
            frame_ids=list(range(frame_count)),
            frame_numbers=list(range(frame_count)),
            object_names=names,
            boxes=boxes,
            relations=merged_relations(instances),
            unknown_objects=unknown_objects,
            unknown_predicates=unknown_predicates,
            dropped=dropped,
        )

    def read_frames(self, annotation: VideoAnnotation, positions: Sequence[int]) -> np.ndarray:
        return read_video_frames(annotation.source, [annotation.frame_ids[p] for p in positions], self.resolution)


class VidOR(VidVRD):
    """VidOR clips with dynamic scene graphs (see the module docstring).

    Args:
        data_dir: the ``vidor-dataset`` folder (``annotation/``, ``video/``).
        split: ``"train"`` / ``"training"`` or ``"val"`` / ``"validation"``.
        video_dir: the videos (default ``DATA_DIR/video``).
        **kwargs: see :class:`VidVRD`.
    """

    format_name = "vidor"
    SPLITS = {"train": "training", "training": "training", "val": "validation", "validation": "validation"}

    def _default_video_dir(self) -> Path:
        return self.data_dir / "video"

    def annotation_files(self, split: str) -> list[Path]:
        if split not in self.SPLITS:
            raise ValueError(f"VidOR split must be one of {sorted(self.SPLITS)}, got {split!r}")
        folder = self.data_dir / "annotation" / self.SPLITS[split]
        files = sorted(folder.glob("*/*.json"))
        if not files:
            raise FileNotFoundError(f"{folder}: no annotation files (*/*.json) for split {split!r}")
        return files

    def video_path(self, path: Path, data: dict) -> Path:
        return self.video_dir / get_field(data, "video_path", "str", path, None)
