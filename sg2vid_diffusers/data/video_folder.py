"""Folders of scene-graph videos: ``metadata.jsonl`` + clips, the layout ``sg2vid make-dataset``
writes, ``sg2vid generate --output-dir`` writes and ``sg2vid evaluate --data`` and the training
scripts read.

``DIR/metadata.jsonl`` holds one JSON object per line::

    {"file_name": "clips/000000.mp4",          # the clip, relative to DIR
     "scene_graph": {"objects": [...], "relationships": [...]},   # canonical form
     "boxes": [[[x0, y0, x1, y1], ...], ...],  # optional: per frame, per object, fractions
     ...}                                      # other keys (split, index, seed) are kept

The folder also loads with Hugging Face ``datasets``:
``load_dataset("json", data_files="DIR/metadata.jsonl", split="train")`` (graphs and file names),
or ``load_dataset("videofolder", data_dir="DIR")`` where torchcodec is installed to decode.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from tqdm.auto import tqdm

from ..scene_graph import SceneGraph, SceneGraphError, parse_scene_graph
from ..video_io import read_video, write_video
from .sg_shapes import generate_clip

__all__ = ["MetadataError", "VideoRecord", "SceneGraphVideoFolder", "write_video_folder", "make_sg_shapes_dataset"]

METADATA_NAME = "metadata.jsonl"
VIDEO_FORMATS = ("mp4", "gif", "npy")


class MetadataError(ValueError):
    """A bad line of a ``metadata.jsonl`` file: names the file, the line number and the field."""

    def __init__(self, path: Path, line_no: int, field: str, reason: str):
        self.path, self.line_no, self.field = path, line_no, field
        super().__init__(f"{path}:{line_no}: {field}: {reason}")


@dataclass
class VideoRecord:
    """One line of ``metadata.jsonl``, parsed. ``boxes`` is (F, n, 4) or ``None``."""

    file_name: str
    path: Path
    scene_graph: SceneGraph
    boxes: np.ndarray | None
    extra: dict[str, Any]
    line_no: int

    def read_frames(self) -> np.ndarray:
        """(F, H, W, 3) uint8."""
        return read_video(self.path)

    def to_json(self) -> dict[str, Any]:
        row = {"file_name": self.file_name, "scene_graph": self.scene_graph.to_json()}
        if self.boxes is not None:
            row["boxes"] = np.round(self.boxes, 6).tolist()
        return {**row, **self.extra}


def _parse_record(root: Path, path: Path, line_no: int, line: str) -> VideoRecord:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise MetadataError(path, line_no, "line", f"not valid JSON ({err})") from None
    if not isinstance(row, dict):
        raise MetadataError(path, line_no, "line", f"expected a JSON object, got {type(row).__name__}")
    file_name = row.get("file_name")
    if not isinstance(file_name, str) or not file_name:
        raise MetadataError(path, line_no, "file_name", f"a relative path is required, got {file_name!r}")
    if "scene_graph" not in row:
        raise MetadataError(path, line_no, "scene_graph", "missing")
    try:
        graph = parse_scene_graph(row["scene_graph"])
    except SceneGraphError as err:
        raise MetadataError(path, line_no, f"scene_graph.{err.field}", f"{err.reason} (got {err.value!r})") from None
    boxes = row.get("boxes")
    if boxes is not None:
        try:
            boxes = np.asarray(boxes, dtype=np.float64)
        except (TypeError, ValueError):
            raise MetadataError(path, line_no, "boxes", "must be a nested list (frames, objects, 4)") from None
        if boxes.ndim != 3 or boxes.shape[1:] != (len(graph.objects), 4):
            raise MetadataError(
                path, line_no, "boxes", f"expected shape (frames, {len(graph.objects)}, 4), got {boxes.shape}"
            )
    extra = {k: v for k, v in row.items() if k not in ("file_name", "scene_graph", "boxes")}
    return VideoRecord(file_name, root / file_name, graph, boxes, extra, line_no)


class SceneGraphVideoFolder(Sequence[VideoRecord]):
    """A ``metadata.jsonl`` folder, read and checked eagerly (a bad line fails at once, with its
    line number); clips are read lazily with :meth:`VideoRecord.read_frames`.

    Args:
        root: the folder.
        check_files: also check that every clip exists.
    """

    def __init__(self, root: str | os.PathLike, check_files: bool = True):
        self.root = Path(root)
        path = self.root / METADATA_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: a video folder needs a {METADATA_NAME}")
        self.records: list[VideoRecord] = []
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                if line.strip():
                    record = _parse_record(self.root, path, line_no, line)
                    if check_files and not record.path.is_file():
                        raise MetadataError(path, line_no, "file_name", f"{record.path} does not exist")
                    self.records.append(record)
        if not self.records:
            raise ValueError(f"{path} lists no clips")

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index):  # type: ignore[override]
        return self.records[index]

    def __iter__(self) -> Iterator[VideoRecord]:
        return iter(self.records)


def write_video_folder(
    output_dir: str | os.PathLike,
    items: Iterator[tuple[np.ndarray, SceneGraph, np.ndarray | None, dict[str, Any]]],
    video_format: str = "mp4",
    total: int | None = None,
    overwrite: bool = False,
    fps: int = 8,
    desc: str = "writing clips",
) -> Path:
    """Write ``(frames, graph, boxes, extra)`` items as a ``metadata.jsonl`` folder.

    Everything is written into a temporary folder beside ``output_dir`` which is renamed into
    place at the end, so an interrupted run never leaves a half-written dataset.
    """
    if video_format not in VIDEO_FORMATS:
        raise ValueError(f"video_format must be one of {VIDEO_FORMATS}, got {video_format!r}")
    output_dir = Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{output_dir} exists and is not empty (pass overwrite=True / --overwrite)")
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    try:
        (tmp / "clips").mkdir()
        with open(tmp / METADATA_NAME, "w", encoding="utf-8") as meta:
            for i, (frames, graph, boxes, extra) in enumerate(tqdm(items, total=total, desc=desc, unit="clip")):
                file_name = f"clips/{i:06d}.{video_format}"
                # Lossless: the conformance metric must see the frames as they were made.
                write_video(tmp / file_name, frames, fps=fps, lossless=True)
                record = VideoRecord(file_name, tmp / file_name, graph, boxes, dict(extra), i + 1)
                meta.write(json.dumps(record.to_json()) + "\n")
        if output_dir.exists():
            shutil.rmtree(output_dir)
        os.replace(tmp, output_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return output_dir


def make_sg_shapes_dataset(
    output_dir: str | os.PathLike,
    split: str = "train",
    num_clips: int = 100,
    num_frames: int = 16,
    seed: int = 0,
    video_format: str = "mp4",
    overwrite: bool = False,
) -> Path:
    """Render SG-Shapes clips ``0 .. num_clips - 1`` of ``split`` into a video folder."""
    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")

    def items():
        for index in range(num_clips):
            clip, graph = generate_clip(split, index, num_frames=num_frames, seed=seed)
            extra = {"split": split, "index": index, "seed": seed}
            yield clip.render(), graph, clip.boxes(), extra

    return write_video_folder(
        output_dir, items(), video_format, total=num_clips, overwrite=overwrite, desc=f"SG-Shapes {split}"
    )
