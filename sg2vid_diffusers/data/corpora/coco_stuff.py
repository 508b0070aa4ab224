"""COCO-Stuff from the COCO ``instances_SPLIT.json`` and COCO-Stuff ``stuff_SPLIT.json`` files, with
sg2im's synthetic geometric scene graphs (SGDiff's COCO setting).

``DATA_DIR`` holds ``annotations/instances_train2017.json``, ``annotations/stuff_train2017.json``
(and ``val2017``) and the images under ``images/train2017/`` (or ``train2017/``). Both JSON files
are COCO detection files: ``images`` (``id``, ``file_name``, ``width``, ``height``),
``annotations`` (``image_id``, ``category_id``, ``bbox`` = ``x, y, w, h`` in pixels) and
``categories`` (``id``, ``name``). The filters are sg2im's: objects whose box covers more than
``min_object_size`` of the image, without the noisy stuff class ``other``; images found in the
stuff file, with 3 to 8 such objects.

Relations follow sg2im: for each object, one other object is picked at random, either order, and
the pair gets ``surrounding`` (the subject's box strictly contains the object's), ``inside`` (the
reverse), else ``left of`` / ``above`` / ``right of`` / ``below`` from the angle of the vector
between the centres (y down): ``|theta| >= 3pi/4`` left of, ``[-3pi/4, -pi/4)`` above,
``[-pi/4, pi/4)`` right of, ``[pi/4, 3pi/4)`` below. The centres here are the box centres (sg2im
took the centroids of the segmentation masks, which need ``pycocotools``), and the random picks
come from a generator seeded by ``seed`` and the image id, so an image always gets the same graph.

The vocabulary is sg2im's: an object's index is its COCO category id (``__image__`` = 0, unused ids
named ``NONE``: 184 entries for COCO 2017, as SGDiff's ``num_objs``), and the predicates are
``__in_image__`` plus the six above (7, SGDiff's ``num_preds``).
"""

from __future__ import annotations

import math
import os
import random
import re
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np

from ...vocabulary import IMAGE_OBJECT, IN_IMAGE_PREDICATE, Vocabulary
from .common import (
    CorpusError,
    StillImageCorpus,
    TemporalRelation,
    VideoAnnotation,
    get_box,
    get_field,
    load_json,
    xywh_to_fractions,
)

__all__ = ["CocoStuff", "coco_annotation_files", "coco_stuff_vocabulary", "GEOMETRIC_PREDICATES", "geometric_predicate"]

GEOMETRIC_PREDICATES = ("left of", "right of", "above", "below", "inside", "surrounding")


def geometric_predicate(subject_box: Sequence[float], object_box: Sequence[float]) -> str:
    """sg2im's relation between two ``[x0, y0, x1, y1]`` boxes (y down), from containment and the
    angle between the box centres (see the module docstring)."""
    sx0, sy0, sx1, sy1 = subject_box
    ox0, oy0, ox1, oy1 = object_box
    if sx0 < ox0 and sx1 > ox1 and sy0 < oy0 and sy1 > oy1:
        return "surrounding"
    if sx0 > ox0 and sx1 < ox1 and sy0 > oy0 and sy1 < oy1:
        return "inside"
    dx = (sx0 + sx1) / 2 - (ox0 + ox1) / 2
    dy = (sy0 + sy1) / 2 - (oy0 + oy1) / 2
    theta = math.atan2(dy, dx)
    if theta >= 3 * math.pi / 4 or theta <= -3 * math.pi / 4:
        return "left of"
    if theta < -math.pi / 4:
        return "above"
    if theta < math.pi / 4:
        return "right of"
    return "below"


def _split_name(split: str) -> str:
    """``"train"`` -> ``"train2017"``; a name that ends in a year is kept."""
    return split if re.search(r"\d{4}$", split) else f"{split}2017"


def _record(position: int, annotation_id) -> str:
    return f"annotations[{position}]" + ("" if annotation_id is None else f" (id {annotation_id})")


def _categories(path: Path, data: dict) -> dict[int, str]:
    out = {}
    for k, item in enumerate(get_field(data, "categories", "list", path, None)):
        record = f"categories[{k}]"
        out[get_field(item, "id", "int", path, record)] = get_field(item, "name", "str", path, record)
    return out


def _load_coco_file(path: Path) -> dict:
    data = load_json(path)
    if not isinstance(data, dict):
        raise CorpusError(
            path, None, None, f"expected a COCO object with images, annotations, categories; got {type(data).__name__}"
        )
    for key in ("images", "annotations", "categories"):
        get_field(data, key, "list", path, None)
    return data


def coco_annotation_files(data_dir: str | os.PathLike, split: str = "train") -> tuple[Path, Path]:
    """``DATA_DIR/annotations/instances_SPLIT.json`` and ``stuff_SPLIT.json`` (``train`` -> ``train2017``)."""
    name = _split_name(split)
    folder = Path(data_dir) / "annotations"
    return folder / f"instances_{name}.json", folder / f"stuff_{name}.json"


def coco_stuff_vocabulary(instances_json: str | os.PathLike, stuff_json: str | os.PathLike | None = None) -> Vocabulary:
    """sg2im's COCO vocabulary: object index = COCO category id (``__image__`` at 0, gaps named
    ``NONE``), predicates ``__in_image__`` + :data:`GEOMETRIC_PREDICATES`."""
    files = [Path(p) for p in (instances_json, stuff_json) if p is not None]
    return _sg2im_vocabulary([(path, _categories(path, _load_coco_file(path))) for path in files])


def _sg2im_vocabulary(files: Sequence[tuple[Path, dict[int, str]]]) -> Vocabulary:
    name_to_idx: dict[str, int] = {}
    for path, categories in files:
        for cid, name in categories.items():
            if name_to_idx.get(name, cid) != cid:
                raise CorpusError(path, None, "categories", f"{name!r} has two ids, {name_to_idx[name]} and {cid}")
            name_to_idx[name] = cid
    name_to_idx[IMAGE_OBJECT] = 0
    idx_to_name = ["NONE"] * (max(name_to_idx.values()) + 1)
    for name, idx in name_to_idx.items():
        idx_to_name[idx] = name
    predicates = [IN_IMAGE_PREDICATE, *GEOMETRIC_PREDICATES]
    return Vocabulary(idx_to_name, predicates, name_to_idx, {p: i for i, p in enumerate(predicates)})


class CocoStuff(StillImageCorpus):
    """COCO-Stuff images with sg2im's geometric scene graphs (see the module docstring).

    Args:
        data_dir: the COCO folder (``annotations/``, ``images/``).
        split: ``"train"`` or ``"val"`` (``"train2017"`` etc. also work).
        instances_json, stuff_json, image_dir: override the default paths.
        stuff_only: keep only images that the stuff file annotates (sg2im's default).
        include_other: keep the stuff class ``other``.
        min_object_size: drop objects whose box covers at most this fraction of the image.
        min_objects_per_image, max_objects_per_image: keep images with this many objects.
        seed: seeds the random picks of the relations (with the image id).
        **kwargs: see :class:`CorpusDataset` (``vocab`` defaults to :func:`coco_stuff_vocabulary`).
    """

    format_name = "coco_stuff"
    default_num_frames = 1

    def __init__(
        self,
        data_dir: str | os.PathLike,
        split: str = "train",
        *,
        instances_json: str | os.PathLike | None = None,
        stuff_json: str | os.PathLike | None = None,
        image_dir: str | os.PathLike | None = None,
        stuff_only: bool = True,
        include_other: bool = False,
        min_object_size: float = 0.02,
        min_objects_per_image: int = 3,
        max_objects_per_image: int = 8,
        seed: int = 0,
        **kwargs,
    ):
        super().__init__(data_dir, split, **kwargs)
        name = _split_name(split)
        default_instances, default_stuff = coco_annotation_files(self.data_dir, split)
        self.instances_json = Path(instances_json or default_instances)
        self.stuff_json = Path(stuff_json or default_stuff)
        if image_dir is None:
            candidates = [self.data_dir / "images" / name, self.data_dir / name]
            image_dir = next((d for d in candidates if d.is_dir()), candidates[0])
        self.image_dir = Path(image_dir)
        self.seed = seed
        self.include_other = include_other
        self.min_object_size = min_object_size

        instances = _load_coco_file(self.instances_json)
        stuff = _load_coco_file(self.stuff_json)
        self._category_files = [
            (self.instances_json, _categories(self.instances_json, instances)),
            (self.stuff_json, _categories(self.stuff_json, stuff)),
        ]
        self.categories = {cid: name for _, categories in self._category_files for cid, name in categories.items()}
        self._set_vocabulary()

        self.images: dict[int, tuple[str, int, int]] = {}
        for k, item in enumerate(instances["images"]):
            record = f"images[{k}]"
            image_id = get_field(item, "id", "int", self.instances_json, record)
            width = get_field(item, "width", "int", self.instances_json, record)
            height = get_field(item, "height", "int", self.instances_json, record)
            if width < 1 or height < 1:
                raise CorpusError(self.instances_json, record, "width", f"an image of {width} x {height} pixels")
            self.images[image_id] = (get_field(item, "file_name", "str", self.instances_json, record), width, height)

        # image id -> [(category id, (x, y, w, h), file, annotation position, annotation id)],
        # instances first, as sg2im.
        self.objects: dict[int, list] = {image_id: [] for image_id in self.images}
        self._add_objects(self.instances_json, instances)
        with_stuff = self._add_objects(self.stuff_json, stuff)
        image_ids = list(self.images)
        if stuff_only:
            image_ids = [i for i in image_ids if i in with_stuff]
            if len(image_ids) < len(self.images):
                self.report.dropped["images without stuff annotations"] += len(self.images) - len(image_ids)
        self.image_ids = []
        for image_id in image_ids:
            count = len(self.objects[image_id])
            if count < min_objects_per_image:
                self.report.dropped[f"images with fewer than {min_objects_per_image} objects"] += 1
            elif count > max_objects_per_image:
                self.report.dropped[f"images with more than {max_objects_per_image} objects"] += 1
            else:
                self.image_ids.append(image_id)

    def _add_objects(self, path: Path, data: dict) -> set[int]:
        """File the annotations of ``data`` that pass sg2im's filters; returns every image id seen."""
        seen = set()
        for k, item in enumerate(data["annotations"]):
            annotation_id = item.get("id") if isinstance(item, dict) else None
            record = _record(k, annotation_id)
            image_id = get_field(item, "image_id", "int", path, record)
            category_id = get_field(item, "category_id", "int", path, record)
            box = get_box(item, "bbox", path, record)
            if image_id not in self.images:
                raise CorpusError(path, record, "image_id", f"{image_id} is not in {self.instances_json.name}'s images")
            if box[2] < 0 or box[3] < 0:
                raise CorpusError(path, record, "bbox", f"x, y, w, h = {list(box)} has a negative size")
            seen.add(image_id)
            if category_id not in self.categories:
                # An id no categories list names: counted like an unknown name, never guessed.
                self.names.report_unknown(
                    f"category_id {category_id}",
                    self.report.unknown_objects,
                    path,
                    record,
                    "category_id",
                    "object category",
                )
                continue
            name = self.categories[category_id]
            _, width, height = self.images[image_id]
            if box[2] * box[3] / (width * height) <= self.min_object_size:
                continue
            if name == "other" and not self.include_other:
                continue
            self.objects[image_id].append((category_id, box, path, k, annotation_id))
        return seen

    def default_vocabulary(self) -> Vocabulary:
        return _sg2im_vocabulary(self._category_files)

    def video_keys(self) -> Sequence[str]:
        return [str(i) for i in self.image_ids]

    def load_video(self, key: str) -> VideoAnnotation:
        image_id = int(key)
        file_name, width, height = self.images[image_id]
        image_path = self.image_dir / file_name
        if not image_path.is_file():
            raise CorpusError(self.instances_json, f"image id {image_id}", "file_name", f"{image_path} does not exist")
        unknown, unknown_predicates, dropped = Counter(), Counter(), Counter()
        names, boxes = [], []
        for category_id, box, path, k, annotation_id in self.objects[image_id]:
            name = self.names.object(
                self.categories[category_id], unknown, path, _record(k, annotation_id), "category_id"
            )
            if name is None:
                continue
            fractions = xywh_to_fractions(box, width, height)
            if fractions is None:  # no geometry, so no relation can be computed for it
                dropped["boxes outside their image"] += 1
                continue
            names.append(name)
            boxes.append(fractions)

        # sg2im: each object in turn, a random other object, a random order.
        rng = random.Random(f"{self.seed}:{image_id}")
        relations = []
        for cur in range(len(names)):
            choices = [i for i in range(len(names)) if i != cur]
            if not choices:
                break
            other = rng.choice(choices)
            s, o = (cur, other) if rng.random() > 0.5 else (other, cur)
            predicate = self.names.predicate(
                geometric_predicate(boxes[s], boxes[o]),
                unknown_predicates,
                self.instances_json,
                f"image id {image_id}",
                "relation",
            )
            if predicate is not None:
                relations.append(TemporalRelation(s, predicate, o, 0, 1))

        return self.still_annotation(
            key, image_path, names, boxes, relations,
            unknown_objects=unknown, unknown_predicates=unknown_predicates, dropped=dropped,
        )  # fmt: skip
