"""Object and predicate vocabularies, read and written as sg2im / SGDiff ``vocab.json``.

The sg2im layout (used unchanged by SGDiff, so its encoders read our indices)::

    {"object_idx_to_name": ["__image__", "man", ...],  "object_name_to_idx": {"__image__": 0, ...},
     "pred_idx_to_name": ["__in_image__", "on", ...],  "pred_name_to_idx": {"__in_image__": 0, ...}}

Index 0 of the objects is the special ``__image__`` node and index 0 of the predicates the
``__in_image__`` relation that links every object to it. Other keys found in a file (sg2im's
attribute tables, for instance) are kept and written back unchanged. COCO-Stuff vocabularies have
gaps (placeholder names such as ``"NONE"`` at unused indices): indices are kept as the file has
them, and lookups go through ``*_name_to_idx``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from .scene_graph import normalize_name
from .utils import atomic_write_text

__all__ = ["Vocabulary", "IMAGE_OBJECT", "IN_IMAGE_PREDICATE", "VOCAB_NAME"]

IMAGE_OBJECT = "__image__"
IN_IMAGE_PREDICATE = "__in_image__"
VOCAB_NAME = "vocab.json"


class Vocabulary:
    """Maps object and predicate names to the integer indices a model embeds.

    Args:
        object_idx_to_name: index -> object name; entry 0 must be ``"__image__"``.
        pred_idx_to_name: index -> predicate name; entry 0 must be ``"__in_image__"``.
        object_name_to_idx, pred_name_to_idx: the name -> index maps as a file stores them
            (derived from the lists when omitted).
        extra: other keys of the ``vocab.json`` file, kept for round-trips.

    Lookups normalise names the way the scene-graph contract does (case, ``_`` vs space).
    """

    def __init__(
        self,
        object_idx_to_name: list[str],
        pred_idx_to_name: list[str],
        object_name_to_idx: dict[str, int] | None = None,
        pred_name_to_idx: dict[str, int] | None = None,
        extra: dict[str, Any] | None = None,
    ):
        if not object_idx_to_name or object_idx_to_name[0] != IMAGE_OBJECT:
            raise ValueError(f"object_idx_to_name[0] must be {IMAGE_OBJECT!r}, got {object_idx_to_name[:1]!r}")
        if not pred_idx_to_name or pred_idx_to_name[0] != IN_IMAGE_PREDICATE:
            raise ValueError(f"pred_idx_to_name[0] must be {IN_IMAGE_PREDICATE!r}, got {pred_idx_to_name[:1]!r}")
        self.object_idx_to_name = list(object_idx_to_name)
        self.pred_idx_to_name = list(pred_idx_to_name)
        self.object_name_to_idx = dict(object_name_to_idx) if object_name_to_idx else _index(object_idx_to_name)
        self.pred_name_to_idx = dict(pred_name_to_idx) if pred_name_to_idx else _index(pred_idx_to_name)
        self.extra = dict(extra or {})
        self._objects = _normalized_index(self.object_name_to_idx, len(self.object_idx_to_name), "object")
        self._preds = _normalized_index(self.pred_name_to_idx, len(self.pred_idx_to_name), "predicate")

    @classmethod
    def from_names(cls, objects: Iterable[str], predicates: Iterable[str]) -> "Vocabulary":
        """A vocabulary with ``__image__`` / ``__in_image__`` at 0 followed by the given names."""
        return cls([IMAGE_OBJECT, *objects], [IN_IMAGE_PREDICATE, *predicates])

    # -- sizes and names
    @property
    def num_objects(self) -> int:
        """Number of object indices, ``__image__`` included (SGDiff's ``num_objs``)."""
        return len(self.object_idx_to_name)

    @property
    def num_predicates(self) -> int:
        """Number of predicate indices, ``__in_image__`` included (SGDiff's ``num_preds``)."""
        return len(self.pred_idx_to_name)

    @property
    def object_names(self) -> list[str]:
        """The object names a user may write (normalised; special entries excluded)."""
        return [name for name in self._objects if name != normalize_name(IMAGE_OBJECT)]

    @property
    def predicate_names(self) -> list[str]:
        """The predicate names a user may write (normalised; special entries excluded)."""
        return [name for name in self._preds if name != normalize_name(IN_IMAGE_PREDICATE)]

    # -- lookups
    def has_object(self, name: str) -> bool:
        key = normalize_name(name)
        return key in self._objects and self._objects[key] != 0

    def has_predicate(self, name: str) -> bool:
        key = normalize_name(name)
        return key in self._preds and self._preds[key] != 0

    def object_index(self, name: str) -> int:
        """Index of an object name (normalised); ``KeyError`` when unknown."""
        return self._objects[normalize_name(name)]

    def predicate_index(self, name: str) -> int:
        """Index of a predicate name (normalised); ``KeyError`` when unknown."""
        return self._preds[normalize_name(name)]

    # -- files
    def to_dict(self) -> dict[str, Any]:
        return {
            **self.extra,
            "object_idx_to_name": self.object_idx_to_name,
            "object_name_to_idx": self.object_name_to_idx,
            "pred_idx_to_name": self.pred_idx_to_name,
            "pred_name_to_idx": self.pred_name_to_idx,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Vocabulary":
        known = ("object_idx_to_name", "object_name_to_idx", "pred_idx_to_name", "pred_name_to_idx")
        for key in ("object_idx_to_name", "pred_idx_to_name"):
            if key not in data:
                raise ValueError(f"vocab.json: missing key {key!r}")
        return cls(
            data["object_idx_to_name"],
            data["pred_idx_to_name"],
            data.get("object_name_to_idx"),
            data.get("pred_name_to_idx"),
            extra={k: v for k, v in data.items() if k not in known},
        )

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``vocab.json`` (``path`` is the file, or a folder to put it in)."""
        path = Path(path)
        if path.is_dir():
            path = path / VOCAB_NAME
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Vocabulary":
        """Read ``vocab.json`` (``path`` is the file, or a folder holding one)."""
        path = Path(path)
        if path.is_dir():
            path = path / VOCAB_NAME
        with open(path, encoding="utf-8") as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}: not valid JSON: {err}") from None
        return cls.from_dict(data)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"Vocabulary(num_objects={self.num_objects}, num_predicates={self.num_predicates})"


def _index(names: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for i, name in enumerate(names):
        if name is not None:
            out.setdefault(name, i)
    return out


def _normalized_index(name_to_idx: dict[str, int], size: int, kind: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, idx in name_to_idx.items():
        if not isinstance(idx, int) or not 0 <= idx < size:
            raise ValueError(f"vocab.json: {kind} {name!r} has index {idx!r} outside 0..{size - 1}")
        out.setdefault(normalize_name(name), idx)
    return out
