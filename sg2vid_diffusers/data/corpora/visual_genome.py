"""Visual Genome in the sg2im / SGDiff HDF5 layout (``scripts/preprocess_vg.py`` of sg2im).

``DATA_DIR`` holds ``{train,val,test}.h5``, ``vocab.json`` and ``images/`` (``VG_100K/...``).
Each ``SPLIT.h5`` has one row per image, padded with -1 past each row's count:

=========================== =================== ===============================================
dataset                     shape               meaning
=========================== =================== ===============================================
``image_ids``               (N,)                Visual Genome image id
``image_paths``             (N,) str            relative to the image folder
``objects_per_image``       (N,)                O_i, valid entries of the object rows
``object_names``            (N, O)              object index into ``vocab.json``
``object_boxes``            (N, O, 4)           ``x, y, w, h`` in pixels of the image file
``relationships_per_image`` (N,)                R_i
``relationship_subjects``   (N, R)              position in the image's object row
``relationship_predicates`` (N, R)              predicate index into ``vocab.json``
``relationship_objects``    (N, R)              position in the image's object row
=========================== =================== ===============================================

(``object_ids``, ``relationship_ids``, attribute tables and ``image_heights`` / ``image_widths``
may be present and are not needed.) Boxes are divided by the size of the image file, as SGDiff
does. Each image is a one-frame video (a still clip of ``num_frames`` frames). The object and
predicate indices are ``vocab.json``'s, so a converted SGDiff encoder reads the batches unchanged.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np

from ...vocabulary import VOCAB_NAME, Vocabulary
from .common import (
    CorpusError,
    StillImageCorpus,
    TemporalRelation,
    VideoAnnotation,
    image_size,
    xywh_to_fractions,
)

__all__ = ["VisualGenomeH5", "visual_genome_vocabulary"]

REQUIRED = (
    "image_paths",
    "objects_per_image",
    "object_names",
    "object_boxes",
    "relationships_per_image",
    "relationship_subjects",
    "relationship_predicates",
    "relationship_objects",
)


def visual_genome_vocabulary(data_dir: str | os.PathLike) -> Vocabulary:
    """``DATA_DIR/vocab.json``, the vocabulary the h5 indices refer to (SGDiff's: 179 objects, 46
    predicates, ``__image__`` / ``__in_image__`` included)."""
    path = Path(data_dir) / VOCAB_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the Visual Genome vocab.json written by sg2im's preprocess_vg.py is missing")
    try:
        vocab = Vocabulary.load(path)
    except ValueError as err:
        raise CorpusError(path, None, None, str(err)) from None
    # The h5 stores indices and the batches look names up again: each must lead back to its index.
    for kind, names, lookup in (("object_idx_to_name", vocab.object_idx_to_name, vocab.object_index),
                                ("pred_idx_to_name", vocab.pred_idx_to_name, vocab.predicate_index)):  # fmt: skip
        for index, name in enumerate(names):
            try:
                found = lookup(name)
            except KeyError:
                raise CorpusError(
                    path, None, f"{kind}[{index}]", f"{name!r} is missing from the name_to_idx map"
                ) from None
            if found != index:
                reason = f"{name!r} reads back as index {found} (names equal up to case, spaces and '_')"
                raise CorpusError(path, None, f"{kind}[{index}]", reason)
    return vocab


def _load_h5(path: Path) -> dict[str, np.ndarray]:
    import h5py

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (a sg2im-layout split .h5)")
    data = {}
    try:
        with h5py.File(path, "r") as f:
            for name in REQUIRED:
                if name not in f:
                    raise CorpusError(path, None, name, f"missing dataset (the file has: {', '.join(sorted(f))})")
            for name in ("image_ids", *REQUIRED):
                if name not in f:
                    continue
                if name == "image_paths":
                    data[name] = np.asarray(f[name].asstr()[()], dtype=object)
                else:
                    data[name] = np.asarray(f[name][()])
    except OSError as err:
        raise CorpusError(
            path, None, None, f"cannot be read as HDF5, the file is damaged or truncated ({err})"
        ) from None
    return data


def _check_shapes(path: Path, data: dict[str, np.ndarray]) -> None:
    num_images = len(data["objects_per_image"])
    max_objects = data["object_names"].shape[1] if data["object_names"].ndim == 2 else -1
    max_rels = data["relationship_subjects"].shape[1] if data["relationship_subjects"].ndim == 2 else -1
    expected = {
        "image_ids": (num_images,),
        "image_paths": (num_images,),
        "objects_per_image": (num_images,),
        "object_names": (num_images, max_objects),
        "object_boxes": (num_images, max_objects, 4),
        "relationships_per_image": (num_images,),
        "relationship_subjects": (num_images, max_rels),
        "relationship_predicates": (num_images, max_rels),
        "relationship_objects": (num_images, max_rels),
    }
    for name, shape in expected.items():
        if name in data and data[name].shape != shape:
            raise CorpusError(
                path, None, name, f"shape {data[name].shape}, expected {shape} (N images, O objects, R relationships)"
            )


class VisualGenomeH5(StillImageCorpus):
    """Visual Genome scene graphs from sg2im's ``SPLIT.h5`` + ``vocab.json`` (see the module docstring).

    Args:
        data_dir: the folder with ``SPLIT.h5``, ``vocab.json`` and ``images/``.
        split: ``"train"``, ``"val"`` or ``"test"``.
        image_dir: the image folder (default ``DATA_DIR/images``).
        max_objects: keep at most this many objects per image: those in relationships first, then
            the others (``use_orphaned_objects``), in file order. ``None`` keeps all. (sg2im samples
            them at random, capped at 9 real objects; here the choice is deterministic.)
        use_orphaned_objects: keep objects that take part in no relationship.
        **kwargs: see :class:`CorpusDataset` (``vocab`` defaults to ``vocab.json``).
    """

    format_name = "visual_genome_h5"
    default_num_frames = 1

    def __init__(
        self,
        data_dir: str | os.PathLike,
        split: str = "train",
        *,
        image_dir: str | os.PathLike | None = None,
        max_objects: int | None = None,
        use_orphaned_objects: bool = True,
        **kwargs,
    ):
        super().__init__(data_dir, split, **kwargs)
        self.h5_path = self.data_dir / f"{split}.h5"
        self.image_dir = Path(image_dir) if image_dir is not None else self.data_dir / "images"
        if max_objects is not None and max_objects < 1:
            raise ValueError(f"max_objects must be >= 1, got {max_objects}")
        self.max_objects = max_objects
        self.use_orphaned_objects = use_orphaned_objects
        self.file_vocab = visual_genome_vocabulary(self.data_dir)
        self.data = _load_h5(self.h5_path)
        _check_shapes(self.h5_path, self.data)
        self._set_vocabulary()

    def default_vocabulary(self) -> Vocabulary:
        return self.file_vocab

    def video_keys(self) -> Sequence[str]:
        return [str(i) for i in range(len(self.data["objects_per_image"]))]

    def _record(self, i: int) -> str:
        if "image_ids" in self.data:
            return f"image {i} (image_id {int(self.data['image_ids'][i])})"
        return f"image {i}"

    def _count(self, name: str, i: int, limit: int) -> int:
        count = int(self.data[name][i])
        if not 0 <= count <= limit:
            raise CorpusError(self.h5_path, self._record(i), f"{name}[{i}]", f"{count} is outside 0..{limit}")
        return count

    def _check_padding(self, name: str, i: int, count: int) -> None:
        row = self.data[name][i, count:]
        if (row != -1).any():
            j = count + int(np.flatnonzero(row != -1)[0])
            count_name = "objects_per_image" if name.startswith("object") else "relationships_per_image"
            reason = f"{int(row[j - count])} past {count_name}[{i}] = {count}, where the row must be -1 padding"
            raise CorpusError(self.h5_path, self._record(i), f"{name}[{i}, {j}]", reason)

    def _entry(self, name: str, i: int, j: int, size: int, what: str) -> int:
        value = int(self.data[name][i, j])
        if not 0 <= value < size:
            reason = f"{value} is not a valid {what}" + (
                " (-1 is padding, but this entry is within the count)" if value == -1 else ""
            )
            raise CorpusError(self.h5_path, self._record(i), f"{name}[{i}, {j}]", reason + f"; expected 0..{size - 1}")
        return value

    def load_video(self, key: str) -> VideoAnnotation:
        i = int(key)
        path, record, data = self.h5_path, self._record(i), self.data
        num_objects = self._count("objects_per_image", i, data["object_names"].shape[1])
        num_rels = self._count("relationships_per_image", i, data["relationship_subjects"].shape[1])
        self._check_padding("object_names", i, num_objects)
        for name in ("relationship_subjects", "relationship_predicates", "relationship_objects"):
            self._check_padding(name, i, num_rels)
        image_path = self.image_dir / str(data["image_paths"][i])
        if not image_path.is_file():
            raise CorpusError(path, record, f"image_paths[{i}]", f"{image_path} does not exist")
        width, height = image_size(image_path)

        rels = []
        for r in range(num_rels):
            s = self._entry("relationship_subjects", i, r, num_objects, "object position")
            p = self._entry("relationship_predicates", i, r, self.file_vocab.num_predicates, "predicate index")
            o = self._entry("relationship_objects", i, r, num_objects, "object position")
            rels.append((r, s, p, o))

        positions = list(range(num_objects))
        if self.max_objects is not None:
            related = sorted({s for _, s, _, o in rels} | {o for _, s, _, o in rels})
            orphans = [j for j in positions if j not in set(related)] if self.use_orphaned_objects else []
            positions = sorted((related + orphans)[: self.max_objects])
        elif not self.use_orphaned_objects:
            positions = sorted({s for _, s, _, o in rels} | {o for _, s, _, o in rels})

        unknown_objects, unknown_predicates, dropped = Counter(), Counter(), Counter()
        names, boxes, new_position = [], [], {}
        for j in positions:
            index = self._entry("object_names", i, j, self.file_vocab.num_objects, "object index")
            raw = self.file_vocab.object_idx_to_name[index]
            name = self.names.object(raw, unknown_objects, path, record, f"object_names[{i}, {j}]")
            if name is None:
                continue
            box = data["object_boxes"][i, j]
            if (box[2:] <= 0).any():
                raise CorpusError(path, record, f"object_boxes[{i}, {j}]", f"x, y, w, h = {box.tolist()} has no area")
            fractions = xywh_to_fractions(box, width, height)
            if fractions is None:
                dropped["boxes outside their image"] += 1
            new_position[j] = len(names)
            names.append(name)
            boxes.append(fractions if fractions is not None else np.full(4, np.nan))

        relations = []
        for r, s, p, o in rels:
            raw = self.file_vocab.pred_idx_to_name[p]
            predicate = self.names.predicate(
                raw, unknown_predicates, path, record, f"relationship_predicates[{i}, {r}]"
            )
            if predicate is None or s not in new_position or o not in new_position:
                continue
            if s == o:
                dropped["self-relations (subject == object)"] += 1
                continue
            relations.append(TemporalRelation(new_position[s], predicate, new_position[o], 0, 1))

        return self.still_annotation(
            key, image_path, names, boxes, relations,
            unknown_objects=unknown_objects, unknown_predicates=unknown_predicates, dropped=dropped,
        )  # fmt: skip
