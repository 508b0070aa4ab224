"""Action Genome: spatio-temporal scene graphs of Charades videos, annotated on sampled keyframes.

``DATA_DIR`` is laid out as the Action Genome tools make it::

    annotations/object_bbox_and_relationship.pkl   # frame key -> list of object dicts
    annotations/person_bbox.pkl                    # frame key -> person detection
    annotations/object_classes.txt                 # 36 object classes, one a line
    annotations/relationship_classes.txt           # 26 relationship classes
    frames/VIDEO.mp4/000123.png                    # keyframes dumped by tools/dump_frames.py

A frame key is ``"VIDEO.mp4/000123.png"``. Each object dict has ``class``, ``bbox`` (``x, y, w, h``
in pixels, ``None`` when the object is not visible), ``attention_relationship``,
``spatial_relationship``, ``contacting_relationship`` (lists of names, or ``None``), ``visible``
and ``metadata`` (``tag``, ``set``: ``"train"`` or ``"test"``). ``person_bbox.pkl`` gives per frame
``bbox`` ((N, 4) ``x0, y0, x1, y1``, N = 0 when no person was detected), ``bbox_score`` and
``bbox_size`` (frame width, height).

The txt lists spell some names differently from the pickles (``closetcabinet`` for
``closet/cabinet``, ``infrontof`` for ``in_front_of``, ...): :data:`OBJECT_SPELLINGS` and
:data:`RELATIONSHIP_SPELLINGS` are those published differences (the same table every Action Genome
loader carries); names are used in the pickles' spelling.

A video is the sequence of its annotated keyframes: clip frames are keyframes, ``frame_stride``
counts keyframes. The person is the subject of every relation; a relation annotated on consecutive
keyframes becomes one triple spanning them. Only visible objects carry relations and boxes (as
Action Genome's own loaders); the person's box is the highest-scoring detection.

The pickles are read by :func:`load_pickle`, which admits plain containers and numpy arrays only:
a pickle that names any other class or function is refused, never run.
"""

from __future__ import annotations

import os
import pickle
import re
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ...scene_graph import normalize_name
from ...vocabulary import Vocabulary
from .common import (
    CorpusDataset,
    CorpusError,
    TemporalRelation,
    VideoAnnotation,
    get_box,
    get_field,
    load_image,
    merged_relations,
    xywh_to_fractions,
    xyxy_to_fractions,
)

__all__ = ["ActionGenome", "action_genome_vocabulary", "load_pickle", "OBJECT_SPELLINGS", "RELATIONSHIP_SPELLINGS"]

OBJECT_SPELLINGS = {
    "closetcabinet": "closet/cabinet",
    "cupglassbottle": "cup/glass/bottle",
    "papernotebook": "paper/notebook",
    "phonecamera": "phone/camera",
    "sofacouch": "sofa/couch",
}
RELATIONSHIP_SPELLINGS = {
    "lookingat": "looking_at",
    "notlookingat": "not_looking_at",
    "infrontof": "in_front_of",
    "onthesideof": "on_the_side_of",
    "coveredby": "covered_by",
    "drinkingfrom": "drinking_from",
    "haveitontheback": "have_it_on_the_back",
    "leaningon": "leaning_on",
    "lyingon": "lying_on",
    "notcontacting": "not_contacting",
    "otherrelationship": "other_relationship",
    "sittingon": "sitting_on",
    "standingon": "standing_on",
    "writingon": "writing_on",
}
RELATIONSHIP_FIELDS = ("attention_relationship", "spatial_relationship", "contacting_relationship")
PERSON = "person"
_FRAME_KEY = re.compile(r"^(?P<video>[^/]+)/(?P<frame>\d+)\.png$")

# What a pickle of plain containers and numpy arrays may name (numpy 1 and 2 module paths; protocol
# 2 pickles name sets by their Python 2 module and spell bytes as _codecs.encode(str, "latin1")).
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("__builtin__", "set"),
    ("__builtin__", "frozenset"),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),
}


class _Refused(pickle.UnpicklingError):
    pass


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise _Refused(f"refused to load {module}.{name}: only plain containers and numpy arrays are admitted")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module[len("numpy.core.") :]  # numpy 2 renamed the module
        return super().find_class(module, name)


def load_pickle(path: str | os.PathLike) -> Any:
    """Read an annotation pickle admitting only plain containers (dict, list, tuple, set, str,
    numbers) and numpy arrays and scalars; anything else (a class, a function) is refused before it
    is loaded. Python 2 pickles are read with ``encoding="latin1"``.

    Raises:
        CorpusError: a refused, damaged or truncated pickle, naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such annotation file")
    try:
        with open(path, "rb") as f:
            return _RestrictedUnpickler(f, encoding="latin1").load()
    except _Refused as err:
        raise CorpusError(path, None, None, str(err)) from None
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        IndexError,
        KeyError,
        AttributeError,
        MemoryError,
    ) as err:
        raise CorpusError(path, None, None, f"damaged or truncated pickle ({type(err).__name__}: {err})") from None


def _read_list(path: Path, spellings: dict[str, str]) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the Action Genome class list is missing")
    names = []
    for line in path.read_text(encoding="utf-8").splitlines():
        name = line.strip()
        if name:
            names.append(spellings.get(name, name))
    if not names:
        raise CorpusError(path, None, None, "the class list is empty")
    return names


def action_genome_vocabulary(data_dir: str | os.PathLike) -> Vocabulary:
    """Objects and relationships in the order of ``object_classes.txt`` / ``relationship_classes.txt``
    (so object index i is Action Genome's class i, ``__image__`` taking the place of its
    ``__background__``), in the pickles' spelling, normalised (``closet/cabinet``, ``looking at``)."""
    annotations = Path(data_dir) / "annotations"
    objects = _read_list(annotations / "object_classes.txt", OBJECT_SPELLINGS)
    predicates = _read_list(annotations / "relationship_classes.txt", RELATIONSHIP_SPELLINGS)
    return Vocabulary.from_names([normalize_name(n) for n in objects], [normalize_name(n) for n in predicates])


class ActionGenome(CorpusDataset):
    """Action Genome keyframe clips with dynamic scene graphs (see the module docstring).

    Args:
        data_dir: the Action Genome folder (``annotations/``, ``frames/``).
        split: ``"train"`` or ``"test"`` (the ``metadata.set`` of the annotations).
        frames_dir: the dumped frames (default ``DATA_DIR/frames``).
        **kwargs: see :class:`CorpusDataset` (``vocab`` defaults to :func:`action_genome_vocabulary`).
    """

    format_name = "action_genome"

    def __init__(
        self,
        data_dir: str | os.PathLike,
        split: str = "train",
        *,
        frames_dir: str | os.PathLike | None = None,
        **kwargs,
    ):
        super().__init__(data_dir, split, **kwargs)
        self.frames_dir = Path(frames_dir) if frames_dir is not None else self.data_dir / "frames"
        annotations = self.data_dir / "annotations"
        self.objects_path = annotations / "object_bbox_and_relationship.pkl"
        self.persons_path = annotations / "person_bbox.pkl"
        self.object_annotations = load_pickle(self.objects_path)
        self.person_annotations = load_pickle(self.persons_path)
        for path, data in ((self.objects_path, self.object_annotations), (self.persons_path, self.person_annotations)):
            if not isinstance(data, dict):
                raise CorpusError(
                    path, None, None, f"expected a dict of frame key -> annotation, got {type(data).__name__}"
                )
        self._set_vocabulary()

        # video -> [(frame number, key)], for the videos of this split
        videos: dict[str, list[tuple[int, str]]] = {}
        video_set: dict[str, tuple[str, str]] = {}  # video -> (set, the key that said so)
        for key, entries in self.object_annotations.items():
            match = _FRAME_KEY.match(key) if isinstance(key, str) else None
            if match is None:
                raise CorpusError(self.objects_path, repr(key), "key", "expected a frame key 'VIDEO.mp4/000123.png'")
            if not isinstance(entries, list):
                raise CorpusError(
                    self.objects_path, key, None, f"expected a list of objects, got {type(entries).__name__}"
                )
            video = match["video"]
            videos.setdefault(video, []).append((int(match["frame"]), key))
            for k, entry in enumerate(entries):
                metadata = get_field(entry, "metadata", "dict", self.objects_path, key, f"[{k}].metadata")
                split_name = get_field(metadata, "set", "str", self.objects_path, key, f"[{k}].metadata.set")
                known = video_set.setdefault(video, (split_name, key))
                if known[0] != split_name:
                    reason = f"{split_name!r}, but {known[1]} puts the video in {known[0]!r}"
                    raise CorpusError(self.objects_path, key, f"[{k}].metadata.set", reason)
        self.videos = {}
        for video in sorted(videos):
            if video not in video_set:
                self.report.dropped["videos without any object annotation"] += 1
            elif video_set[video][0] == split:
                self.videos[video] = [key for _, key in sorted(videos[video])]
        if not self.videos:
            found = sorted({s for s, _ in video_set.values()})
            raise ValueError(f"{self.objects_path}: no video of split {split!r} (the file has: {', '.join(found)})")

    def default_vocabulary(self) -> Vocabulary:
        return action_genome_vocabulary(self.data_dir)

    def video_keys(self) -> Sequence[str]:
        return list(self.videos)

    def _person_box(self, key: str) -> tuple[np.ndarray | None, float, float]:
        """The frame's person box (fractions, or ``None``) and its size (width, height)."""
        path = self.persons_path
        if key not in self.person_annotations:
            raise CorpusError(path, key, None, f"missing: the frame is in {self.objects_path.name} but not here")
        item = self.person_annotations[key]
        size = item.get("bbox_size") if isinstance(item, dict) else None
        if not (isinstance(size, (tuple, list, np.ndarray)) and len(size) == 2 and all(float(v) > 0 for v in size)):
            raise CorpusError(path, key, "bbox_size", f"expected (width, height) in pixels, got {size!r}")
        width, height = (float(v) for v in size)
        boxes = item.get("bbox")
        if not isinstance(boxes, np.ndarray) or boxes.ndim != 2 or boxes.shape[1] != 4:
            raise CorpusError(path, key, "bbox", f"expected an (N, 4) array of x0, y0, x1, y1, got {boxes!r}")
        if len(boxes) == 0:
            return None, width, height
        scores = item.get("bbox_score")
        best = 0
        if isinstance(scores, np.ndarray) and scores.shape == (len(boxes),):
            best = int(np.argmax(scores))
        return xyxy_to_fractions(boxes[best], width, height), width, height

    def load_video(self, video: str) -> VideoAnnotation:
        path = self.objects_path
        keys = self.videos[video]
        if not (self.frames_dir / video).is_dir():
            reason = (
                f"{self.frames_dir / video} does not exist (dump the frames with Action Genome's tools/dump_frames.py)"
            )
            raise CorpusError(path, video, "frames", reason)
        unknown_objects, unknown_predicates, dropped = Counter(), Counter(), Counter()
        names: list[str] = []
        object_index: dict[str, int] = {}  # raw class -> object index; one object per class per video
        person = self.names.object(PERSON, unknown_objects, self.persons_path, video, "person")
        if person is not None:
            names.append(person)
            object_index[PERSON] = 0
        placed: list[tuple[int, int, np.ndarray]] = []  # (position, object, box)
        instances = []
        for position, key in enumerate(keys):
            person_box, width, height = self._person_box(key)
            if person is not None and person_box is not None:
                placed.append((position, 0, person_box))
            for k, entry in enumerate(self.object_annotations[key]):
                raw = get_field(entry, "class", "str", path, key, f"[{k}].class")
                visible = get_field(entry, "visible", "bool", path, key, f"[{k}].visible")
                box = get_box(entry, "bbox", path, key, f"[{k}].bbox", optional=True)
                relation_lists = [
                    get_field(entry, name, "list", path, key, f"[{k}].{name}", optional=True) or []
                    for name in RELATIONSHIP_FIELDS
                ]
                if raw not in object_index:
                    name = self.names.object(raw, unknown_objects, path, key, f"[{k}].class")
                    if name is None:
                        continue
                    object_index[raw] = len(names)
                    names.append(name)
                obj = object_index[raw]
                if not visible:
                    continue
                if box is None:
                    dropped["visible objects without a box"] += 1
                else:
                    fractions = xywh_to_fractions(box, width, height)
                    if fractions is None:
                        dropped["boxes outside their frame"] += 1
                    else:
                        placed.append((position, obj, fractions))
                if person is None:
                    continue
                if obj == 0:  # a person listed among the objects: the subject of its own relations
                    dropped["self-relations (person to person)"] += 1
                    continue
                for field_name, relations in zip(RELATIONSHIP_FIELDS, relation_lists):
                    for r, raw_predicate in enumerate(relations):
                        predicate = self.names.predicate(
                            raw_predicate, unknown_predicates, path, key, f"[{k}].{field_name}[{r}]"
                        )
                        if predicate is not None:
                            instances.append(TemporalRelation(0, predicate, obj, position, position + 1))

        boxes = np.full((len(keys), len(names), 4), np.nan)
        for position, obj, box in placed:
            boxes[position, obj] = box
        frame_files = [key.split("/", 1)[1] for key in keys]
        return VideoAnnotation(
            key=video,
            source=self.frames_dir / video,
            frame_ids=frame_files,
            frame_numbers=[int(Path(name).stem) for name in frame_files],
            object_names=names,
            boxes=boxes,
            relations=merged_relations(instances),
            unknown_objects=unknown_objects,
            unknown_predicates=unknown_predicates,
            dropped=dropped,
        )

    def read_frames(self, annotation: VideoAnnotation, positions: Sequence[int]) -> np.ndarray:
        return np.stack([load_image(annotation.source / annotation.frame_ids[p], self.resolution) for p in positions])
