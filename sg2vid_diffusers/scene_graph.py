"""The scene-graph JSON contract (``SCENE_GRAPH_FORMAT.md``): parsing, normalisation and
validation.

A scene graph is plain JSON::

    {"objects": ["red circle", {"name": "blue square", "box": [0.55, 0.4, 0.8, 0.65]}],
     "relationships": [{"subject": 0, "predicate": "left of", "object": 1, "time": [0.0, 0.5]},
                       [1, "above", 0]]}

:func:`parse_scene_graph` turns a dict, JSON text, a file path or a :class:`SceneGraph` into a
validated, normalised :class:`SceneGraph`; :func:`parse_scene_graphs` does the same for one graph
or a list of them (or a ``.jsonl`` file). Every problem raises one :class:`SceneGraphError`
that names the field, the index and the offending value.

This module is pure Python: no torch, no diffusers.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from .vocabulary import Vocabulary

__all__ = [
    "SceneGraphError",
    "SceneObject",
    "Relationship",
    "SceneGraph",
    "normalize_name",
    "parse_scene_graph",
    "parse_scene_graphs",
    "validate_scene_graph",
]

_GRAPH_KEYS = ("objects", "relationships")
_OBJECT_KEYS = ("name", "box")
_RELATIONSHIP_KEYS = ("subject", "predicate", "object", "time")


class SceneGraphError(ValueError):
    """A scene graph (or a file holding one) that breaks the contract.

    Attributes:
        field: where the problem is, as a path into the JSON, e.g. ``"relationships[2].predicate"``
            (prefixed with ``"scene_graph[i]."`` when it came from a list of graphs).
        index: the index of the offending item (object, relationship, graph or line), or ``None``.
        value: the offending value.
    """

    def __init__(self, field: str, value: Any, reason: str, index: int | None = None):
        self.field = field
        self.value = value
        self.reason = reason
        self.index = index
        super().__init__(f"{field}: {reason} (got {_short_repr(value)})")

    def with_prefix(self, prefix: str, index: int | None = None) -> "SceneGraphError":
        """The same error located inside a larger structure (``prefix`` + ``"."`` + field)."""
        field = f"{prefix}.{self.field}" if self.field else prefix
        return SceneGraphError(field, self.value, self.reason, self.index if index is None else index)


def _short_repr(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def normalize_name(name: str) -> str:
    """Canonical spelling of an object or predicate name.

    Names match case-insensitively after trimming spaces, and ``_`` equals a space:
    ``" Left_Of "`` -> ``"left of"``. Runs of spaces collapse to one.
    """
    return re.sub(r"\s+", " ", name.replace("_", " ")).strip().lower()


def closest_names(name: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """The known names closest to ``name`` (for "did you mean" hints)."""
    return difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.4)


@dataclass(frozen=True)
class SceneObject:
    """One object: its normalised category ``name`` and an optional ``box`` ``(x0, y0, x1, y1)``
    in fractions of the frame (x to the right, y downwards)."""

    name: str
    box: tuple[float, float, float, float] | None = None

    def to_json(self) -> str | dict:
        if self.box is None:
            return self.name
        return {"name": self.name, "box": list(self.box)}


@dataclass(frozen=True)
class Relationship:
    """A triple ``subject --predicate--> object`` (indices into the graph's objects), active over
    ``time = (t0, t1)`` (fractions of the clip) or the whole clip when ``time`` is ``None``."""

    subject: int
    predicate: str
    object: int
    time: tuple[float, float] | None = None

    @property
    def span(self) -> tuple[float, float]:
        """The time span with the default filled in: ``(0.0, 1.0)`` when ``time`` is absent."""
        return self.time if self.time is not None else (0.0, 1.0)

    def to_json(self) -> dict:
        out: dict[str, Any] = {"subject": self.subject, "predicate": self.predicate, "object": self.object}
        if self.time is not None:
            out["time"] = list(self.time)
        return out


@dataclass(frozen=True)
class SceneGraph:
    """A validated scene graph in canonical form (names normalised)."""

    objects: tuple[SceneObject, ...]
    relationships: tuple[Relationship, ...] = ()

    @property
    def is_dynamic(self) -> bool:
        """True when some triple holds over only part of the clip."""
        return any(rel.time is not None and rel.time != (0.0, 1.0) for rel in self.relationships)

    @property
    def object_names(self) -> list[str]:
        return [obj.name for obj in self.objects]

    def to_json(self) -> dict:
        """The canonical JSON form (a dict ready for ``json.dumps``)."""
        return {
            "objects": [obj.to_json() for obj in self.objects],
            "relationships": [rel.to_json() for rel in self.relationships],
        }

    def __str__(self) -> str:
        names = self.object_names
        parts = []
        for rel in self.relationships:
            text = f"{names[rel.subject]} {rel.predicate} {names[rel.object]}"
            if rel.time is not None:
                text += f" [{rel.time[0]:g}, {rel.time[1]:g}]"
            parts.append(text)
        return "; ".join(parts) if parts else ", ".join(names)


# ----------------------------------------------------------------------------- parsing


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _parse_name(value: Any, field: str, index: int) -> str:
    if not isinstance(value, str):
        raise SceneGraphError(field, value, "a name must be a string", index)
    name = normalize_name(value)
    if not name:
        raise SceneGraphError(field, value, "a name must not be empty", index)
    return name


def _parse_fraction_list(value: Any, field: str, index: int, length: int, what: str) -> tuple[float, ...]:
    if not isinstance(value, (list, tuple)) or len(value) != length:
        raise SceneGraphError(field, value, f"a {what} must be a list of {length} numbers", index)
    for item in value:
        if not _is_number(item) or not math.isfinite(item):
            raise SceneGraphError(field, value, f"a {what} must be a list of {length} finite numbers", index)
        if not 0.0 <= item <= 1.0:
            raise SceneGraphError(field, value, f"a {what} must lie in [0, 1] (fractions of the frame or clip)", index)
    return tuple(float(item) for item in value)


def _parse_box(value: Any, field: str, index: int) -> tuple[float, float, float, float]:
    box = _parse_fraction_list(value, field, index, 4, "box [x0, y0, x1, y1]")
    if not (box[0] < box[2] and box[1] < box[3]):
        raise SceneGraphError(field, value, "a box must have x0 < x1 and y0 < y1 (it is empty)", index)
    return box  # type: ignore[return-value]


def _parse_time(value: Any, field: str, index: int) -> tuple[float, float] | None:
    if value is None:
        return None
    span = _parse_fraction_list(value, field, index, 2, "time span [t0, t1]")
    if not span[0] < span[1]:
        raise SceneGraphError(field, value, "a time span must have t0 < t1 (it is empty)", index)
    return span  # type: ignore[return-value]


def _check_keys(item: dict, allowed: Sequence[str], field: str, index: int | None) -> None:
    for key in item:
        if key not in allowed:
            hint = closest_names(str(key), allowed, n=1)
            reason = f"unknown key {key!r}; expected keys: {', '.join(allowed)}"
            if hint:
                reason += f" (did you mean {hint[0]!r}?)"
            raise SceneGraphError(f"{field}.{key}" if field else str(key), item[key], reason, index)


def _parse_object(item: Any, i: int) -> SceneObject:
    field = f"objects[{i}]"
    if isinstance(item, str):
        return SceneObject(_parse_name(item, field, i))
    if not isinstance(item, dict):
        raise SceneGraphError(field, item, 'an object must be a name or {"name": ..., "box": [...]}', i)
    _check_keys(item, _OBJECT_KEYS, field, i)
    if "name" not in item:
        raise SceneGraphError(f"{field}.name", None, "an object needs a name", i)
    name = _parse_name(item["name"], f"{field}.name", i)
    box = item.get("box")
    return SceneObject(name, None if box is None else _parse_box(box, f"{field}.box", i))


def _parse_relationship(item: Any, i: int, num_objects: int) -> Relationship:
    field = f"relationships[{i}]"
    if isinstance(item, (list, tuple)):
        if len(item) not in (3, 4):
            raise SceneGraphError(
                field, item, "the short form is [subject, predicate, object] or [subject, predicate, object, [t0, t1]]", i
            )
        values = dict(zip(_RELATIONSHIP_KEYS, item))
        names = {key: f"{field}[{k}]" for k, key in enumerate(_RELATIONSHIP_KEYS)}
    elif isinstance(item, dict):
        _check_keys(item, _RELATIONSHIP_KEYS, field, i)
        values = item
        names = {key: f"{field}.{key}" for key in _RELATIONSHIP_KEYS}
    else:
        raise SceneGraphError(field, item, "a relationship must be an object or a [subject, predicate, object] list", i)

    ends = {}
    for key in ("subject", "object"):
        if key not in values:
            raise SceneGraphError(names[key], None, f"a relationship needs a {key}", i)
        value = values[key]
        if not isinstance(value, int) or isinstance(value, bool):
            raise SceneGraphError(names[key], value, f"the {key} must be an integer index into objects", i)
        if not 0 <= value < num_objects:
            raise SceneGraphError(
                names[key], value, f"the {key} index is out of range: the graph has {num_objects} objects", i
            )
        ends[key] = value
    if ends["subject"] == ends["object"]:
        raise SceneGraphError(field, item, "a relationship must relate two different objects (subject == object)", i)
    if "predicate" not in values:
        raise SceneGraphError(names["predicate"], None, "a relationship needs a predicate", i)
    predicate = _parse_name(values["predicate"], names["predicate"], i)
    time = _parse_time(values.get("time"), names["time"], i)
    return Relationship(ends["subject"], predicate, ends["object"], time)


def _graph_from_json(data: Any) -> SceneGraph:
    if not isinstance(data, dict):
        raise SceneGraphError("scene_graph", data, 'a scene graph must be a JSON object {"objects": [...], ...}')
    _check_keys(data, _GRAPH_KEYS, "", None)
    objects = data.get("objects")
    if not isinstance(objects, list) or not objects:
        raise SceneGraphError("objects", objects, "objects must be a non-empty list")
    parsed_objects = tuple(_parse_object(item, i) for i, item in enumerate(objects))
    relationships = data.get("relationships", [])
    if relationships is None:
        relationships = []
    if not isinstance(relationships, list):
        raise SceneGraphError("relationships", relationships, "relationships must be a list")
    parsed_rels = tuple(_parse_relationship(item, i, len(parsed_objects)) for i, item in enumerate(relationships))
    return SceneGraph(parsed_objects, parsed_rels)


def _load_text_or_path(source: str | os.PathLike) -> Any:
    """JSON text, or the contents of a ``.json`` / ``.jsonl`` file."""
    if isinstance(source, str) and source.lstrip()[:1] in ("{", "["):
        try:
            return json.loads(source)
        except json.JSONDecodeError as err:
            raise SceneGraphError("scene_graph", source, f"not valid JSON: {err}") from None
    path = Path(source)
    if not path.is_file():
        raise SceneGraphError("scene_graph", str(source), "neither JSON text nor an existing file")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        graphs = []
        for line_no, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                graphs.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise SceneGraphError(f"{path}:{line_no}", line, f"not valid JSON: {err}", line_no) from None
        return graphs
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise SceneGraphError(str(path), text, f"not valid JSON: {err}") from None


def validate_scene_graph(
    graph: SceneGraph,
    vocab: "Vocabulary | None" = None,
    max_objects: int | None = None,
    max_triples: int | None = None,
) -> SceneGraph:
    """Check a parsed graph against a model: names in ``vocab`` and size limits.

    Raises:
        SceneGraphError: for an unknown name (with the closest known names) or too many
            objects / triples.
    """
    if max_objects is not None and len(graph.objects) > max_objects:
        raise SceneGraphError(
            "objects", len(graph.objects), f"too many objects: this model supports at most {max_objects}"
        )
    if max_triples is not None and len(graph.relationships) > max_triples:
        raise SceneGraphError(
            "relationships", len(graph.relationships), f"too many relationships: this model supports at most {max_triples}"
        )
    if vocab is not None:
        for i, obj in enumerate(graph.objects):
            if not vocab.has_object(obj.name):
                raise SceneGraphError(
                    f"objects[{i}].name", obj.name, _unknown(obj.name, vocab.object_names, "object"), i
                )
        for i, rel in enumerate(graph.relationships):
            if not vocab.has_predicate(rel.predicate):
                raise SceneGraphError(
                    f"relationships[{i}].predicate",
                    rel.predicate,
                    _unknown(rel.predicate, vocab.predicate_names, "predicate"),
                    i,
                )
    return graph


def _unknown(name: str, known: Sequence[str], kind: str) -> str:
    hint = closest_names(name, known)
    reason = f"unknown {kind} name for this model's vocabulary"
    if hint:
        reason += " (closest known: " + ", ".join(repr(h) for h in hint) + ")"
    return reason


def parse_scene_graph(
    source: "SceneGraph | dict | str | os.PathLike",
    vocab: "Vocabulary | None" = None,
    max_objects: int | None = None,
    max_triples: int | None = None,
) -> SceneGraph:
    """Parse and validate one scene graph.

    Args:
        source: a :class:`SceneGraph`, a dict in the canonical form, JSON text, or the path of a
            ``.json`` file holding one graph.
        vocab: when given, every object and predicate name must be in it.
        max_objects, max_triples: when given, the largest graph the model supports.

    Returns:
        The graph, with names normalised (``"Left_Of"`` -> ``"left of"``).

    Raises:
        SceneGraphError: naming the field, index and value of the first problem found.
    """
    if isinstance(source, SceneGraph):
        graph = source
    else:
        data = _load_text_or_path(source) if isinstance(source, (str, os.PathLike)) else source
        graph = _graph_from_json(data)
    return validate_scene_graph(graph, vocab, max_objects, max_triples)


def parse_scene_graphs(
    source: Any,
    vocab: "Vocabulary | None" = None,
    max_objects: int | None = None,
    max_triples: int | None = None,
) -> list[SceneGraph]:
    """Parse one graph or a list of graphs (dicts, JSON texts, paths, :class:`SceneGraph` s, a JSON
    file holding a list, or a ``.jsonl`` file with one graph per line). Always returns a list.

    Errors in the i-th graph of a list carry the prefix ``scene_graph[i].``.
    """
    if isinstance(source, (str, os.PathLike)):
        source = _load_text_or_path(source)
    if isinstance(source, (SceneGraph, dict)):
        return [parse_scene_graph(source, vocab, max_objects, max_triples)]
    if not isinstance(source, (list, tuple)):
        raise SceneGraphError("scene_graph", source, "expected a scene graph or a list of scene graphs")
    if not source:
        raise SceneGraphError("scene_graph", source, "the list of scene graphs is empty")
    graphs = []
    for i, item in enumerate(source):
        try:
            graphs.append(parse_scene_graph(item, vocab, max_objects, max_triples))
        except SceneGraphError as err:
            raise err.with_prefix(f"scene_graph[{i}]") from None
    return graphs
