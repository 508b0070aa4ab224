"""Clips, graphs and per-frame object boxes for pretraining, batched.

A :class:`PretrainingBatch` of B clips holds the videos, the graphs in the SGDiff layout
(:func:`~sg2vid_diffusers.collate_scene_graphs`) and, aligned with the graph batch's object rows,
each object's box in every frame: what the masked branch masks out.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..batching import SceneGraphBatch, collate_scene_graphs
from ..data.video_folder import MetadataError, SceneGraphVideoFolder
from ..scene_graph import SceneGraph, SceneGraphError, validate_scene_graph
from ..vocabulary import Vocabulary

__all__ = [
    "PretrainingExample",
    "PretrainingBatch",
    "SceneGraphVideoDataset",
    "collate_pretraining_examples",
    "object_box_rows",
]


@dataclass
class PretrainingExample:
    """One clip: ``frames`` (F, H, W, 3) uint8, its graph, and ``boxes`` (F, n, 4) fractions
    ``[x0, y0, x1, y1]`` per frame and object (``None`` when the data has none)."""

    frames: np.ndarray
    scene_graph: SceneGraph
    boxes: np.ndarray | None = None


@dataclass
class PretrainingBatch:
    """B clips of F frames, O objects in all (``__image__`` nodes included).

    Args:
        videos: (B, F, 3, H, W) float in [0, 1].
        graphs: the graphs in the SGDiff layout.
        object_boxes: (O, F, 4) each object's box in each frame, rows as ``graphs.objs``;
            zero where ``maskable`` is False.
        maskable: (O,) bool, objects with a box in every frame (never an ``__image__`` node).
    """

    videos: torch.Tensor
    graphs: SceneGraphBatch
    object_boxes: torch.Tensor
    maskable: torch.Tensor

    def to(self, device: torch.device | str) -> "PretrainingBatch":
        return PretrainingBatch(
            self.videos.to(device), self.graphs.to(device), self.object_boxes.to(device), self.maskable.to(device)
        )

    @property
    def num_frames(self) -> int:
        return self.videos.size(1)


class SceneGraphVideoDataset(Dataset):
    """The clips of a ``metadata.jsonl`` folder (:class:`SceneGraphVideoFolder`) as
    :class:`PretrainingExample` s.

    Every graph is checked against ``vocab`` here, so a name the model cannot embed fails before
    training starts, with the line number.

    Args:
        root: the folder, or a :class:`SceneGraphVideoFolder`.
        vocab: the encoder's vocabulary.
        frame_stride: keep every ``frame_stride``-th frame (frame f of the result is frame
            ``f * frame_stride`` of the clip, so time spans keep their meaning).
    """

    def __init__(self, root: str | os.PathLike | SceneGraphVideoFolder, vocab: Vocabulary, frame_stride: int = 1):
        self.folder = root if isinstance(root, SceneGraphVideoFolder) else SceneGraphVideoFolder(root)
        if frame_stride < 1:
            raise ValueError(f"frame_stride must be >= 1, got {frame_stride}")
        self.frame_stride = frame_stride
        metadata = self.folder.root / "metadata.jsonl"
        for record in self.folder:
            try:
                validate_scene_graph(record.scene_graph, vocab)
            except SceneGraphError as err:
                raise MetadataError(metadata, record.line_no, f"scene_graph.{err.field}", err.reason) from None

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, index: int) -> PretrainingExample:
        record = self.folder[index]
        frames = record.read_frames()
        if record.boxes is not None and len(record.boxes) != len(frames):
            raise MetadataError(
                self.folder.root / "metadata.jsonl",
                record.line_no,
                "boxes",
                f"{len(record.boxes)} frames of boxes for a clip of {len(frames)} frames ({record.path})",
            )
        boxes = None if record.boxes is None else record.boxes[:: self.frame_stride]
        return PretrainingExample(frames[:: self.frame_stride], record.scene_graph, boxes)


def collate_pretraining_examples(examples: Sequence[PretrainingExample], vocab: Vocabulary) -> PretrainingBatch:
    """Batch examples: videos to (B, F, 3, H, W) floats in [0, 1], graphs with
    :func:`collate_scene_graphs`, per-frame boxes aligned with the graph batch's object rows.

    An object's boxes come from the example's ``boxes``; without them, from the box its graph gives
    (held over every frame); an object with neither is not maskable, and neither is the
    ``__image__`` node.
    """
    shapes = {ex.frames.shape for ex in examples}
    if len(shapes) != 1:
        raise ValueError(f"clips in a batch must share (frames, height, width, 3); got {sorted(shapes)}")
    videos = torch.stack([torch.from_numpy(np.ascontiguousarray(ex.frames)) for ex in examples])
    videos = videos.permute(0, 1, 4, 2, 3).float() / 255  # (B, F, 3, H, W)
    graphs = collate_scene_graphs([ex.scene_graph for ex in examples], vocab)
    object_boxes, maskable = object_box_rows(
        [ex.scene_graph for ex in examples], [ex.boxes for ex in examples], graphs.objs.size(0), videos.size(1)
    )
    return PretrainingBatch(videos, graphs, object_boxes, maskable)


def object_box_rows(
    graphs: Sequence[SceneGraph], boxes: Sequence[np.ndarray | None], num_rows: int, num_frames: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame boxes aligned with the object rows of ``collate_scene_graphs(graphs)`` (each graph's
    objects, then its ``__image__`` node): ``(object_boxes (num_rows, F, 4), maskable (num_rows,))`` as
    :class:`PretrainingBatch` holds them. A graph's boxes come from its clip's ``boxes`` ((F, n, 4) or
    None), else from the graph's own boxes held over every frame; rows with neither are not maskable."""
    object_boxes = torch.zeros(num_rows, num_frames, 4)
    maskable = torch.zeros(num_rows, dtype=torch.bool)
    row = 0
    for graph, clip_boxes in zip(graphs, boxes, strict=True):
        for i, obj in enumerate(graph.objects):
            if clip_boxes is not None:
                object_boxes[row + i] = torch.as_tensor(clip_boxes[:, i], dtype=torch.float32)
                maskable[row + i] = True
            elif obj.box is not None:
                object_boxes[row + i] = torch.tensor(obj.box, dtype=torch.float32)
                maskable[row + i] = True
        row += len(graph.objects) + 1  # the graph's objects, then its __image__ node
    if row != num_rows:
        raise ValueError(f"the graphs have {row} object rows, __image__ nodes included; expected {num_rows}")
    return object_boxes, maskable
