"""What every corpus reader shares: errors, unknown-category reports, clip sampling, frame reading,
and the two views of a corpus (a torch ``Dataset`` of :class:`PretrainingExample` s and a Hugging
Face ``datasets`` view).

A reader turns one video (or one image) of its corpus into a :class:`VideoAnnotation`: object
names, each object's box in each annotated frame, and relation instances over frame intervals.
Everything after that is common:

- :func:`clip_starts` picks the clips of a video: ``num_frames`` frames, ``frame_stride`` apart,
  in non-overlapping windows from the first frame on (an image gives one still clip);
- :func:`make_clip` cuts a clip out: each relation becomes a triple whose time span is the part
  of the clip it covers (``[f0 / F, f1 / F]``, so :func:`~sg2vid_diffusers.active_triples` finds
  it in exactly those frames), relations outside the clip are dropped, and so are objects that
  neither appear in the clip nor take part in a kept relation;
- :class:`CorpusDataset` indexes the clips and reads their frames.

Names are checked against the model's vocabulary as they are read: an unknown object or predicate
is dropped (with every relation it takes part in), counted in :class:`CorpusReport` and reported,
never mapped to another name (``on_unknown="error"`` fails instead).
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ...pretraining.data import PretrainingExample
from ...scene_graph import Relationship, SceneGraph, SceneObject, closest_names, normalize_name
from ...video_io import ffmpeg_exe
from ...vocabulary import Vocabulary

__all__ = [
    "CorpusError",
    "CorpusReport",
    "NameResolver",
    "TemporalRelation",
    "VideoAnnotation",
    "Clip",
    "CorpusDataset",
    "clip_starts",
    "make_clip",
    "merge_intervals",
    "xywh_to_fractions",
    "xyxy_to_fractions",
    "load_image",
    "read_video_frames",
    "resolve_vocabulary",
    "hf_features",
]

logger = logging.getLogger(__name__)

ON_UNKNOWN = ("report", "error")


class CorpusError(ValueError):
    """A corpus file that does not follow its published format (or cannot be read).

    Attributes:
        path: the file.
        record: which record of it (an image, a video, a frame key, a list item), or ``None``.
        field: the field, as a path into the record (``"relation_instances[3].end_fid"``).
        reason: what is wrong, with the offending value.
    """

    def __init__(self, path: str | os.PathLike, record: Any, field: str | None, reason: str):
        self.path, self.record, self.field, self.reason = Path(path), record, field, reason
        where = [str(path)]
        if record is not None:
            where.append(str(record))
        if field:
            where.append(field)
        super().__init__(": ".join(where) + f": {reason}")


@dataclass
class CorpusReport:
    """What a corpus held that did not make it into the clips, counted over the videos read so far
    (all of them once the clip index is built).

    Attributes:
        unknown_objects: raw category name -> number of object instances dropped because the
            vocabulary lacks the name.
        unknown_predicates: raw predicate name -> number of relation instances dropped likewise.
        dropped: reason -> count, for everything else left out (videos shorter than a clip, clips
            without objects, self-relations, boxes outside the frame ...).
    """

    unknown_objects: Counter = field(default_factory=Counter)
    unknown_predicates: Counter = field(default_factory=Counter)
    dropped: Counter = field(default_factory=Counter)

    @property
    def has_unknown(self) -> bool:
        return bool(self.unknown_objects or self.unknown_predicates)

    def __str__(self) -> str:
        lines = []
        for title, counter in (("unknown object categories", self.unknown_objects),
                               ("unknown predicates", self.unknown_predicates),
                               ("dropped", self.dropped)):  # fmt: skip
            if counter:
                items = ", ".join(f"{name!r}: {count}" for name, count in counter.most_common())
                lines.append(f"{title} ({sum(counter.values())}): {items}")
        return "\n".join(lines) if lines else "nothing dropped, no unknown categories"


class NameResolver:
    """Checks a corpus's category and predicate names against the model's vocabulary.

    Known names come back normalised (the vocabulary's lookup form); unknown ones are counted in
    the given counter and come back as ``None`` (``on_unknown="report"``) or raise
    :class:`CorpusError` (``on_unknown="error"``).
    """

    def __init__(self, vocab: Vocabulary, on_unknown: str = "report"):
        if on_unknown not in ON_UNKNOWN:
            raise ValueError(f"on_unknown must be one of {ON_UNKNOWN}, got {on_unknown!r}")
        self.vocab, self.on_unknown = vocab, on_unknown

    def object(self, raw: Any, unknown: Counter, path: Path, record: Any, field: str) -> str | None:
        name = _checked_name(raw, path, record, field)
        if self.vocab.has_object(name):
            return name
        return self.report_unknown(raw, unknown, path, record, field, "object category", self.vocab.object_names)

    def predicate(self, raw: Any, unknown: Counter, path: Path, record: Any, field: str) -> str | None:
        name = _checked_name(raw, path, record, field)
        if self.vocab.has_predicate(name):
            return name
        return self.report_unknown(raw, unknown, path, record, field, "predicate", self.vocab.predicate_names)

    def report_unknown(
        self, raw: Any, unknown: Counter, path: Path, record: Any, field: str, kind: str, known: Sequence[str] = ()
    ) -> None:
        """Count ``raw`` as unknown (or raise, with ``on_unknown="error"``)."""
        if self.on_unknown == "error":
            hint = closest_names(normalize_name(raw), known)
            reason = f"unknown {kind} {raw!r}: not in the vocabulary"
            if hint:
                reason += " (closest known: " + ", ".join(repr(h) for h in hint) + ")"
            raise CorpusError(path, record, field, reason)
        unknown[raw] += 1
        return None


def _checked_name(raw: Any, path: Path, record: Any, field: str) -> str:
    if not isinstance(raw, str) or not normalize_name(raw):
        raise CorpusError(path, record, field, f"a name must be a non-empty string, got {raw!r}")
    return normalize_name(raw)


def load_json(path: str | os.PathLike) -> Any:
    """A JSON file; a damaged or truncated one raises :class:`CorpusError` with the position."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such annotation file")
    try:
        return json.loads(path.read_bytes())
    except json.JSONDecodeError as err:
        reason = f"not valid JSON at line {err.lineno}, column {err.colno} ({err.msg}): damaged or truncated"
        raise CorpusError(path, None, None, reason) from None
    except UnicodeDecodeError as err:
        raise CorpusError(path, None, None, f"not UTF-8 text ({err})") from None


_KINDS = {
    "int": ((int,), "an integer"),
    "number": ((int, float), "a number"),
    "str": ((str,), "a string"),
    "list": ((list,), "a list"),
    "dict": ((dict,), "an object"),
    "bool": ((bool,), "true or false"),
}


def get_field(
    item: Any, key: str, kind: str, path: Path, record: Any, field: str | None = None, optional: bool = False
) -> Any:
    """``item[key]``, checked to be of ``kind`` (``"int"``, ``"number"``, ``"str"``, ``"list"``,
    ``"dict"``, ``"bool"``; numpy scalars count as Python ones). ``optional`` lets it be absent or
    ``None`` (then ``None`` comes back). Anything else raises :class:`CorpusError` naming
    ``field`` (default ``key``)."""
    field = field or key
    if not isinstance(item, dict):
        raise CorpusError(path, record, None, f"expected an object with a {key!r} field, got {type(item).__name__}")
    if key not in item or item[key] is None:
        if optional:
            return None
        raise CorpusError(path, record, field, "missing" if key not in item else "is None")
    value = item[key]
    types, what = _KINDS[kind]
    if isinstance(value, np.generic):
        value = value.item()
    if not isinstance(value, types) or (kind in ("int", "number") and isinstance(value, bool)):
        raise CorpusError(path, record, field, f"expected {what}, got {value!r}")
    if kind == "number" and not np.isfinite(value):
        raise CorpusError(path, record, field, f"expected a finite number, got {value!r}")
    return value


def get_box(
    item: Any, key: str, path: Path, record: Any, field: str | None = None, optional: bool = False
) -> tuple[float, ...] | None:
    """``item[key]`` as 4 finite numbers (a list, tuple or array); ``None`` when absent or ``None``
    and ``optional``."""
    field = field or key
    if not isinstance(item, dict):
        raise CorpusError(path, record, None, f"expected an object with a {key!r} field, got {type(item).__name__}")
    value = item.get(key)
    if value is None:
        if optional:
            return None
        raise CorpusError(path, record, field, "missing" if key not in item else "is None")
    try:
        box = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        box = None
    if box is None or box.shape != (4,) or not np.isfinite(box).all():
        raise CorpusError(path, record, field, f"expected 4 finite numbers, got {value!r}")
    return tuple(float(v) for v in box)


# ----------------------------------------------------------------------------- annotations


@dataclass(frozen=True)
class TemporalRelation:
    """``subject --predicate--> object`` over the frame positions ``[begin, end)`` of its video."""

    subject: int
    predicate: str
    object: int
    begin: int
    end: int


@dataclass
class VideoAnnotation:
    """One video (or image) of a corpus, as its reader understood it.

    Attributes:
        key: the video's id in the corpus (image id, video id, ...).
        source: the image file, video file or frame folder the frames come from.
        frame_ids: per frame position (0 .. T-1), what the reader needs to fetch that frame (a
            frame number of the video, a frame file name).
        frame_numbers: per frame position, the frame's number in the original video.
        object_names: (n,) vocabulary names, normalised.
        boxes: (T, n, 4) float64 ``[x0, y0, x1, y1]`` fractions; NaN where the object has no box
            in that frame.
        relations: relation instances; positions index ``frame_ids``.
        still: an image: every frame of every clip is frame position 0.
        unknown_objects, unknown_predicates, dropped: what reading this video left out (folded into
            the dataset's :class:`CorpusReport` once per video).
    """

    key: str
    source: Path
    frame_ids: list
    frame_numbers: list[int]
    object_names: list[str]
    boxes: np.ndarray
    relations: list[TemporalRelation]
    still: bool = False
    unknown_objects: Counter = field(default_factory=Counter)
    unknown_predicates: Counter = field(default_factory=Counter)
    dropped: Counter = field(default_factory=Counter)

    @property
    def num_positions(self) -> int:
        return len(self.frame_ids)


@dataclass
class Clip:
    """A clip cut out of a :class:`VideoAnnotation`: its graph and per-frame boxes.

    Attributes:
        key: the video's key; ``start``: the first frame position.
        positions: (F,) frame positions of the video, one per clip frame.
        scene_graph: objects that appear in the clip or take part in one of its triples; spans
            are fractions of the clip (``None`` where a triple holds over the whole clip).
        boxes: (F, n, 4) float32 fractions, zeros where an object has no box in a frame (an empty
            box masks nothing).
    """

    key: str
    start: int
    positions: list[int]
    scene_graph: SceneGraph
    boxes: np.ndarray


def merge_intervals(intervals: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Union of half-open intervals ``[begin, end)``: overlapping or touching ones become one.

    ``[(0, 30), (30, 60), (45, 75), (90, 120)]`` -> ``[(0, 75), (90, 120)]`` (how the 30-frame
    segments VidVRD annotates are joined back into one relation instance).
    """
    merged: list[list[int]] = []
    for begin, end in sorted(intervals):
        if merged and begin <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([begin, end])
    return [(b, e) for b, e in merged]


def merged_relations(instances: Iterable[TemporalRelation]) -> list[TemporalRelation]:
    """The instances of each ``(subject, predicate, object)`` with their intervals merged
    (:func:`merge_intervals`), triples in order of first appearance."""
    spans: dict[tuple[int, str, int], list[tuple[int, int]]] = {}
    for rel in instances:
        spans.setdefault((rel.subject, rel.predicate, rel.object), []).append((rel.begin, rel.end))
    return [
        TemporalRelation(s, p, o, begin, end)
        for (s, p, o), intervals in spans.items()
        for begin, end in merge_intervals(intervals)
    ]


def _clamped(box: Sequence[float]) -> np.ndarray | None:
    out = np.clip(np.asarray(box, dtype=np.float64), 0.0, 1.0)
    if not (out[0] < out[2] and out[1] < out[3]):
        return None
    return out


def xywh_to_fractions(box: Sequence[float], width: float, height: float) -> np.ndarray | None:
    """``(x, y, w, h)`` pixels -> ``[x0, y0, x1, y1]`` fractions clamped to the frame, or ``None``
    when nothing of the box is left inside the frame."""
    x, y, w, h = (float(v) for v in box)
    return _clamped((x / width, y / height, (x + w) / width, (y + h) / height))


def xyxy_to_fractions(box: Sequence[float], width: float, height: float) -> np.ndarray | None:
    """``(x0, y0, x1, y1)`` pixels -> fractions clamped to the frame, or ``None`` when empty."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return _clamped((x0 / width, y0 / height, x1 / width, y1 / height))


# ----------------------------------------------------------------------------- clips


def clip_starts(num_positions: int, num_frames: int, frame_stride: int, still: bool = False) -> list[int]:
    """First frame positions of a video's clips: non-overlapping windows of ``num_frames`` frames
    ``frame_stride`` apart, from position 0 on; none when the video is too short. A still image
    gives one clip."""
    if still:
        return [0]
    span = (num_frames - 1) * frame_stride + 1
    return list(range(0, num_positions - span + 1, num_frames * frame_stride))


def make_clip(annotation: VideoAnnotation, start: int, num_frames: int, frame_stride: int) -> Clip | None:
    """Cut the clip of ``num_frames`` frames from ``start`` out of a video (see the module
    docstring); ``None`` when no object is left in it."""
    if annotation.still:
        positions = [0] * num_frames
    else:
        positions = [start + f * frame_stride for f in range(num_frames)]
    frames = np.asarray(positions)

    triples = []
    for rel in annotation.relations:
        active = np.flatnonzero((rel.begin <= frames) & (frames < rel.end))
        if len(active):
            # Positions grow with f, so the active frames of one interval are contiguous.
            triples.append((rel, int(active[0]), int(active[-1]) + 1))

    boxes = annotation.boxes[frames]  # (F, n, 4), NaN where absent
    keep = ~np.isnan(boxes[..., 0]).all(axis=0)
    for rel, _, _ in triples:
        keep[rel.subject] = keep[rel.object] = True
    if not keep.any():
        return None
    new_index = np.cumsum(keep) - 1

    objects = []
    for i in np.flatnonzero(keep):
        box = None
        if annotation.still and not np.isnan(boxes[0, i, 0]):
            box = tuple(float(v) for v in boxes[0, i])
        objects.append(SceneObject(annotation.object_names[i], box))
    relationships = []
    for rel, f0, f1 in triples:
        time = None if (f0, f1) == (0, num_frames) else (f0 / num_frames, f1 / num_frames)
        relationships.append(Relationship(int(new_index[rel.subject]), rel.predicate, int(new_index[rel.object]), time))
    clip_boxes = np.nan_to_num(boxes[:, keep], nan=0.0).astype(np.float32)
    return Clip(annotation.key, start, positions, SceneGraph(tuple(objects), tuple(relationships)), clip_boxes)


# ----------------------------------------------------------------------------- frames


def _size(resolution: int | Sequence[int] | None) -> tuple[int, int] | None:
    if resolution is None:
        return None
    if isinstance(resolution, int):
        resolution = (resolution, resolution)
    height, width = (int(v) for v in resolution)
    if height < 1 or width < 1:
        raise ValueError(f"resolution must be positive, got {resolution!r}")
    return height, width


def load_image(path: str | os.PathLike, size: tuple[int, int] | None = None) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB, resized (bilinear, no crop, as SGDiff) to ``size``
    ``(H, W)`` when given."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such image file")
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            if size is not None:
                image = image.resize((size[1], size[0]), Image.BILINEAR)
            return np.asarray(image, dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError) as err:
        raise CorpusError(path, None, None, f"cannot decode the image ({err})") from None


def image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` of an image file, from its header."""
    try:
        with Image.open(path) as image:
            return image.size
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such image file") from None
    except (UnidentifiedImageError, OSError) as err:
        raise CorpusError(path, None, None, f"cannot read the image ({err})") from None


_PPM_HEADER = re.compile(rb"P6\s+(\d+)\s+(\d+)\s+255\s")


def read_video_frames(
    path: str | os.PathLike, frame_indices: Sequence[int], size: tuple[int, int] | None = None
) -> np.ndarray:
    """Frames ``frame_indices`` (0-based, in decoding order, as VidVRD's ``fid``) of a video file,
    each resized to ``size`` ``(H, W)`` when given: (F, H, W, 3) uint8.

    Only the wanted frames leave ffmpeg, and decoding stops after the last of them, so a clip of a
    long video costs the frames up to it, not the whole video in memory.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such video file")
    wanted = sorted(set(int(i) for i in frame_indices))
    if not wanted or wanted[0] < 0:
        raise ValueError(f"frame indices must be non-negative and non-empty, got {list(frame_indices)!r}")
    filters = ["select=" + "+".join(f"eq(n\\,{i})" for i in wanted)]
    if size is not None:
        filters.append(f"scale={size[1]}:{size[0]}:flags=bilinear")
    command = [
        ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error",
        "-i", str(path), "-an", "-vf", ",".join(filters), "-fps_mode", "passthrough",
        "-frames:v", str(len(wanted)), "-f", "image2pipe", "-c:v", "ppm", "-",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True)
    if result.returncode != 0:
        message = result.stderr.decode(errors="replace").strip()
        raise CorpusError(path, None, None, f"ffmpeg cannot decode the video: {message}")
    data = result.stdout
    header = _PPM_HEADER.match(data)
    decoded = 0
    if header is not None:
        width, height = int(header[1]), int(header[2])
        frame_bytes = header.end() + width * height * 3
        decoded = len(data) // frame_bytes
    if decoded < len(wanted):
        missing = wanted[decoded:]
        raise CorpusError(path, None, None, f"the video has no frames {missing} (it decodes to fewer frames)")
    frames = np.frombuffer(data, dtype=np.uint8)[: decoded * frame_bytes].reshape(decoded, frame_bytes)
    frames = frames[:, header.end() :].reshape(decoded, height, width, 3)
    order = {index: k for k, index in enumerate(wanted)}
    return frames[[order[int(i)] for i in frame_indices]].copy()


# ----------------------------------------------------------------------------- vocabularies


def resolve_vocabulary(vocab: Vocabulary | str | os.PathLike | None, default) -> Vocabulary:
    """The model's vocabulary: a :class:`Vocabulary`, a ``vocab.json`` path, or ``None`` for the
    corpus's own (``default()``)."""
    if vocab is None:
        return default()
    if isinstance(vocab, Vocabulary):
        return vocab
    return Vocabulary.load(vocab)


def sorted_vocabulary(objects: Iterable[str], predicates: Iterable[str]) -> Vocabulary:
    """sg2im layout with the names (normalised, deduplicated) in alphabetical order."""
    return Vocabulary.from_names(
        sorted({normalize_name(n) for n in objects}), sorted({normalize_name(n) for n in predicates})
    )


# ----------------------------------------------------------------------------- datasets


def hf_features(frame_size: tuple[int, int] | None, with_frames: bool):
    """The ``datasets.Features`` of a corpus's rows (see :meth:`CorpusDataset.to_hf_dataset`)."""
    from datasets import Array4D, Features, List, Value

    columns = {
        "video_id": Value("string"),
        "clip_start": Value("int64"),
        "file_name": Value("string"),
        "frame_numbers": List(Value("int64")),
        "scene_graph": {
            "objects": List({"name": Value("string"), "box": List(Value("float64"), length=4)}),
            "relationships": List(
                {
                    "subject": Value("int64"),
                    "predicate": Value("string"),
                    "object": Value("int64"),
                    "time": List(Value("float64"), length=2),
                }
            ),
        },
        "boxes": List(List(List(Value("float32"), length=4))),
    }
    if with_frames:
        if frame_size is None:
            raise ValueError("with_frames=True needs a fixed resolution (clips of one corpus differ in size)")
        columns["frames"] = Array4D(shape=(None, frame_size[0], frame_size[1], 3), dtype="uint8")
    return Features(columns)


class CorpusDataset(torch.utils.data.Dataset):
    """The clips of one split of a corpus, as :class:`PretrainingExample` s (what the training
    scripts consume), and as a Hugging Face dataset (:meth:`to_hf_dataset`).

    Opening a corpus reads its annotation index (and checks its vocabulary); the clip index is built
    on first use (``len``, indexing), reading every video's annotations once, so a bad record fails
    then, naming the file, the record and the field. :attr:`report` then counts everything left out.

    Args:
        data_dir: the corpus folder, laid out as published (see ``docs/corpora.md``).
        split: the split to read.
        vocab: the model's vocabulary (a :class:`Vocabulary` or a ``vocab.json`` path); ``None``
            for the corpus's own (:meth:`default_vocabulary`).
        num_frames: frames per clip (``None``: 1 for image corpora, 8 for video corpora). An image
            gives a still clip of ``num_frames`` identical frames.
        frame_stride: clip frames are this many frames (or keyframes) of the video apart.
        resolution: frames are resized to ``(H, W)`` (an int for square), without cropping (as
            SGDiff), so box fractions keep their meaning; ``None`` keeps the corpus's sizes (clips
            of different sizes cannot share a batch).
        on_unknown: ``"report"`` drops and counts names the vocabulary lacks; ``"error"`` fails.
    """

    format_name: ClassVar[str] = ""
    default_num_frames: ClassVar[int] = 8

    def __init__(
        self,
        data_dir: str | os.PathLike,
        split: str,
        vocab: Vocabulary | str | os.PathLike | None = None,
        num_frames: int | None = None,
        frame_stride: int = 1,
        resolution: int | Sequence[int] | None = 256,
        on_unknown: str = "report",
    ):
        self.data_dir = Path(data_dir)
        if not self.data_dir.is_dir():
            raise FileNotFoundError(f"{self.data_dir}: no such folder (the {self.format_name} corpus folder)")
        self.split = split
        self.num_frames = self.default_num_frames if num_frames is None else int(num_frames)
        if self.num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        if frame_stride < 1:
            raise ValueError(f"frame_stride must be >= 1, got {frame_stride}")
        self.frame_stride = int(frame_stride)
        self.resolution = _size(resolution)
        self.report = CorpusReport()
        self._requested_vocab = vocab
        self._on_unknown = on_unknown
        if on_unknown not in ON_UNKNOWN:
            raise ValueError(f"on_unknown must be one of {ON_UNKNOWN}, got {on_unknown!r}")
        self._clip_index: list[tuple[str, int]] | None = None
        self._cached: VideoAnnotation | None = None
        self._noted: set[str] = set()
        self._clips_counted: set[str] = set()

    def _set_vocabulary(self) -> None:
        """Called by a reader once its files are open, so the default vocabulary can be built."""
        self.vocab = resolve_vocabulary(self._requested_vocab, self.default_vocabulary)
        self.names = NameResolver(self.vocab, self._on_unknown)

    # -- what a reader provides
    def default_vocabulary(self) -> Vocabulary:
        """The corpus's own vocabulary (sg2im layout)."""
        raise NotImplementedError

    def video_keys(self) -> Sequence[str]:
        """The split's videos (or images), in a fixed order."""
        raise NotImplementedError

    def load_video(self, key: str) -> VideoAnnotation:
        """One video's annotation, checked (raises :class:`CorpusError`)."""
        raise NotImplementedError

    def read_frames(self, annotation: VideoAnnotation, positions: Sequence[int]) -> np.ndarray:
        """(F, H, W, 3) uint8, the frames at ``positions`` at :attr:`resolution`."""
        raise NotImplementedError

    # -- clips
    def _video(self, key: str) -> VideoAnnotation:
        if self._cached is None or self._cached.key != key:
            self._cached = self.load_video(key)
            self._note(self._cached)
        return self._cached

    def _note(self, annotation: VideoAnnotation) -> None:
        if annotation.key not in self._noted:
            self._noted.add(annotation.key)
            self.report.unknown_objects.update(annotation.unknown_objects)
            self.report.unknown_predicates.update(annotation.unknown_predicates)
            self.report.dropped.update(annotation.dropped)

    def _clips_of(self, annotation: VideoAnnotation) -> Iterator[Clip]:
        count = annotation.key not in self._clips_counted  # count what is dropped once per video
        self._clips_counted.add(annotation.key)
        starts = clip_starts(annotation.num_positions, self.num_frames, self.frame_stride, annotation.still)
        if not starts and count:
            self.report.dropped[f"videos shorter than a clip of {self.num_frames} frames"] += 1
        for start in starts:
            clip = make_clip(annotation, start, self.num_frames, self.frame_stride)
            if clip is None:
                if count:
                    self.report.dropped["clips without any object"] += 1
                continue
            yield clip

    def iter_clips(self) -> Iterator[Clip]:
        """Every clip, video by video, reading each video's annotations once (no index needed)."""
        for key in self.video_keys():
            yield from self._clips_of(self._video(key))

    @property
    def clips(self) -> list[tuple[str, int]]:
        """``(video key, first frame position)`` of every clip; built on first use."""
        if self._clip_index is None:
            self._clip_index = [(clip.key, clip.start) for clip in self.iter_clips()]
            if self.report.has_unknown:
                logger.warning("%s %s (%s): left out\n%s", self.format_name, self.split, self.data_dir, self.report)
        return self._clip_index

    def clip(self, index: int) -> Clip:
        """The ``index``-th clip's graph and boxes, without reading pixels."""
        key, start = self.clips[index]
        clip = make_clip(self._video(key), start, self.num_frames, self.frame_stride)
        assert clip is not None  # the index only holds clips with objects
        return clip

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> PretrainingExample:
        clip = self.clip(index)
        frames = self.read_frames(self._video(clip.key), clip.positions)
        return PretrainingExample(frames, clip.scene_graph, clip.boxes)

    # -- Hugging Face view
    def _row(self, clip: Clip, with_frames: bool) -> dict[str, Any]:
        annotation = self._video(clip.key)
        graph = clip.scene_graph
        row = {
            "video_id": clip.key,
            "clip_start": clip.start,
            "file_name": os.path.relpath(annotation.source, self.data_dir),
            "frame_numbers": [annotation.frame_numbers[p] for p in clip.positions],
            "scene_graph": {
                "objects": [{"name": o.name, "box": None if o.box is None else list(o.box)} for o in graph.objects],
                "relationships": [
                    {"subject": r.subject, "predicate": r.predicate, "object": r.object,
                     "time": None if r.time is None else list(r.time)}
                    for r in graph.relationships
                ],  # fmt: skip
            },
            "boxes": clip.boxes.tolist(),
        }
        if with_frames:
            row["frames"] = self.read_frames(annotation, clip.positions)
        return row

    def to_hf_dataset(self, streaming: bool = False, with_frames: bool = False):
        """The clips as a Hugging Face dataset, one row per clip.

        Columns: ``video_id``, ``clip_start`` (frame position of its first frame), ``file_name``
        (image, video or frame folder, relative to ``data_dir``), ``frame_numbers`` (each clip
        frame's number in the original video), ``scene_graph`` (the canonical form, with ``box``
        and ``time`` ``None`` where absent: :func:`~sg2vid_diffusers.parse_scene_graph` reads it),
        ``boxes`` (F, n, 4), and with ``with_frames`` ``frames`` (F, H, W, 3) uint8.

        Args:
            streaming: a ``datasets.IterableDataset`` that reads each video's annotations (and
                frames) as it is iterated, without building the clip index first (VidVRD / VidOR
                given a vocabulary file read no annotation up front). Otherwise a
                ``datasets.Dataset`` held in memory.
            with_frames: decode the frames into the rows (needs a fixed ``resolution``).
        """
        import datasets

        features = hf_features(self.resolution, with_frames)

        def rows():
            for clip in self.iter_clips():
                yield self._row(clip, with_frames)

        if streaming:
            return datasets.IterableDataset.from_generator(rows, features=features)
        return datasets.Dataset.from_list(list(rows()), features=features)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({str(self.data_dir)!r}, split={self.split!r}, num_frames={self.num_frames}, "
            f"frame_stride={self.frame_stride}, resolution={self.resolution})"
        )


class StillImageCorpus(CorpusDataset):
    """A corpus of images: each is a still clip (its one frame repeated)."""

    @staticmethod
    def still_annotation(key: str, image_path: Path, names, boxes, relations, **counts) -> VideoAnnotation:
        """The annotation of one image: one frame, boxes (n, 4) as fractions, relations over it."""
        return VideoAnnotation(
            key=key,
            source=image_path,
            frame_ids=[0],
            frame_numbers=[0],
            object_names=names,
            boxes=np.asarray(boxes, dtype=np.float64).reshape(1, len(names), 4),
            relations=relations,
            still=True,
            **counts,
        )

    def read_frames(self, annotation: VideoAnnotation, positions: Sequence[int]) -> np.ndarray:
        image = load_image(annotation.source, self.resolution)
        return np.repeat(image[None], len(positions), axis=0)
