"""Collation of scene graphs into the SGDiff / sg2im batch layout, and the one place that maps
time spans to frames.

Layout for a batch of B graphs (O objects and T triples over the whole batch)::

    objs           (O,)    long   object indices; each graph's objects, then its ``__image__`` node
    boxes          (O, 4)  float  [x0, y0, x1, y1] in [0, 1]; [0, 0, 1, 1] where no box was given
    has_box        (O,)    bool   whether the user gave the box (the ``__image__`` box counts as given)
    triples        (T, 3)  long   [s, p, o], s and o index ``objs`` (batch-global)
    obj_to_img     (O,)    long   graph index of each object
    triples_to_img (T,)    long   graph index of each triple
    triple_spans   (T, 2)  float64 [t0, t1]; [0, 1] for triples without a time span

Each graph's real triples come first, then one ``[i, __in_image__, image_node]`` triple for each of
its objects (SGDiff's order, so truncation to the first N local tokens drops those first).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Sequence

import torch

from .scene_graph import SceneGraph, parse_scene_graphs
from .vocabulary import IMAGE_OBJECT, IN_IMAGE_PREDICATE, Vocabulary

__all__ = ["SceneGraphBatch", "collate_scene_graphs", "active_triples"]


@dataclass
class SceneGraphBatch:
    """A batch of scene graphs in the SGDiff layout (see the module docstring for shapes)."""

    objs: torch.Tensor
    boxes: torch.Tensor
    has_box: torch.Tensor
    triples: torch.Tensor
    obj_to_img: torch.Tensor
    triples_to_img: torch.Tensor
    triple_spans: torch.Tensor
    num_graphs: int

    def to(self, device: torch.device | str) -> "SceneGraphBatch":
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return SceneGraphBatch(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in values.items()})

    def as_sgdiff_tuple(self) -> tuple[torch.Tensor, ...]:
        """``(objs, boxes, triples, obj_to_img, triples_to_img)``, the tuple SGDiff's code takes."""
        return self.objs, self.boxes, self.triples, self.obj_to_img, self.triples_to_img

    @property
    def is_dynamic(self) -> bool:
        """True when some triple holds over only part of the clip."""
        full = (self.triple_spans[:, 0] <= 0) & (self.triple_spans[:, 1] >= 1)
        return not bool(full.all())


def collate_scene_graphs(graphs: Any, vocab: Vocabulary) -> SceneGraphBatch:
    """Collate one graph or a list of graphs (any form :func:`parse_scene_graphs` accepts).

    Raises:
        SceneGraphError: for a graph that breaks the contract or uses names ``vocab`` lacks.
    """
    parsed: Sequence[SceneGraph] = parse_scene_graphs(graphs, vocab=vocab)
    image_idx = vocab.object_index(IMAGE_OBJECT)
    in_image_idx = vocab.predicate_index(IN_IMAGE_PREDICATE)

    objs, boxes, has_box, obj_to_img = [], [], [], []
    triples, triples_to_img, spans = [], [], []
    for g, graph in enumerate(parsed):
        offset = len(objs)
        for obj in graph.objects:
            objs.append(vocab.object_index(obj.name))
            boxes.append(obj.box if obj.box is not None else (0.0, 0.0, 1.0, 1.0))
            has_box.append(obj.box is not None)
            obj_to_img.append(g)
        image_node = len(objs)
        objs.append(image_idx)
        boxes.append((0.0, 0.0, 1.0, 1.0))
        has_box.append(True)
        obj_to_img.append(g)
        for rel in graph.relationships:
            triples.append((offset + rel.subject, vocab.predicate_index(rel.predicate), offset + rel.object))
            spans.append(rel.span)
            triples_to_img.append(g)
        for i in range(len(graph.objects)):
            triples.append((offset + i, in_image_idx, image_node))
            spans.append((0.0, 1.0))
            triples_to_img.append(g)

    return SceneGraphBatch(
        objs=torch.tensor(objs, dtype=torch.long),
        boxes=torch.tensor(boxes, dtype=torch.float32),
        has_box=torch.tensor(has_box, dtype=torch.bool),
        triples=torch.tensor(triples, dtype=torch.long).reshape(-1, 3),
        obj_to_img=torch.tensor(obj_to_img, dtype=torch.long),
        triples_to_img=torch.tensor(triples_to_img, dtype=torch.long),
        triple_spans=torch.tensor(spans, dtype=torch.float64).reshape(-1, 2),
        num_graphs=len(parsed),
    )


def active_triples(spans: torch.Tensor | Sequence[Sequence[float]], num_frames: int) -> torch.Tensor:
    """Which triples are active in each frame: the single place that maps time spans to frames.

    Frame ``f`` of ``num_frames`` lies in the span ``[t0, t1)`` when ``t0 <= f / num_frames < t1``
    (SCENE_GRAPH_FORMAT.md; SG_SHAPES.md's checker uses the same rule).

    Args:
        spans: (T, 2) time spans ``[t0, t1]`` as fractions of the clip.
        num_frames: F.

    Returns:
        (F, T) bool tensor, ``True`` where triple t is active in frame f.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    spans = torch.as_tensor(spans, dtype=torch.float64).reshape(-1, 2)
    # float64 division is correctly rounded, so f / F here equals Python's f / F exactly.
    position = torch.arange(num_frames, dtype=torch.float64, device=spans.device) / num_frames
    return (spans[None, :, 0] <= position[:, None]) & (position[:, None] < spans[None, :, 1])
