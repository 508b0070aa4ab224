"""SG-Shapes: the built-in procedural video domain with exact scene graphs (``SG_SHAPES.md``).

A clip is 1 to 4 coloured shapes (pairwise different colors) moving on straight lines at
constant velocity over a black 64 x 64 frame. Everything here is exact and deterministic:

- :func:`render_frames` draws shapes at given centres (the one renderer);
- :class:`ShapeTrack` / :class:`SGShapesClip` describe a clip (objects, start positions,
  velocities) and give its per-frame centres and boxes;
- :func:`extract_scene_graph` reads the true triples, with time spans, off a clip;
- :func:`generate_clip` makes clip ``index`` of a split from a seed (splits use disjoint seeds);
- :func:`sample_clip_for_graph` finds a clip that obeys a given graph (rejection sampling
  checked by the conformance metric): an oracle "generator" for any valid SG-Shapes graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..batching import active_triples
from ..scene_graph import Relationship, SceneGraph, SceneGraphError, SceneObject, parse_scene_graph
from ..vocabulary import Vocabulary

__all__ = [
    "FRAME_SIZE",
    "COLORS",
    "SHAPES",
    "CATEGORIES",
    "PREDICATES",
    "STATIC_PREDICATES",
    "DYNAMIC_PREDICATES",
    "OPPOSITE_PREDICATES",
    "SPLITS",
    "ShapeTrack",
    "SGShapesClip",
    "sg_shapes_vocabulary",
    "render_frames",
    "extract_scene_graph",
    "generate_clip",
    "sample_clip",
    "sample_clip_for_graph",
    "split_category",
]

FRAME_SIZE = 64
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 230, 30),
    "blue": (30, 30, 230),
    "yellow": (230, 230, 30),
    "magenta": (230, 30, 230),
    "cyan": (30, 230, 230),
}
SHAPES = ("square", "circle", "triangle")
CATEGORIES = tuple(f"{color} {shape}" for color in COLORS for shape in SHAPES)
STATIC_PREDICATES = ("left of", "right of", "above", "below")
DYNAMIC_PREDICATES = ("moving toward", "moving away from")
PREDICATES = STATIC_PREDICATES + DYNAMIC_PREDICATES
# Each predicate's converse: "a left of b" holds exactly when "a right of b" does not (and so on).
OPPOSITE_PREDICATES = {
    "left of": "right of",
    "right of": "left of",
    "above": "below",
    "below": "above",
    "moving toward": "moving away from",
    "moving away from": "moving toward",
}
SPLITS = {"train": 0, "validation": 1, "test": 2}

MAX_OBJECTS = 4
MAX_SPEED = 2.5  # px per frame
STATIC_MARGIN = 6.0  # px, the predicate definitions
DYNAMIC_CHANGE = 10.0  # px over the span
MIN_GAP = 3.0  # px between geometric boxes, so rendered pixel boxes keep >= 2 empty px between them

# Half extents (half width, half height) in pixels of each shape's geometric bounding box.
HALF_EXTENT = {"square": (6.0, 6.0), "circle": (6.5, 6.5), "triangle": (7.0, 6.5)}

# Graph extraction keeps spans of at least this share of the clip (the rest of the true
# triples are left out: a graph is a subset of the true triples).
MIN_SPAN_FRACTION = 0.25


def sg_shapes_vocabulary() -> Vocabulary:
    """The SG-Shapes vocabulary: 18 categories, 6 predicates (plus the special index 0 entries)."""
    return Vocabulary.from_names(CATEGORIES, PREDICATES)


def split_category(name: str) -> tuple[str, str]:
    """``"red circle"`` -> ``("red", "circle")``; ``ValueError`` for a non-SG-Shapes name."""
    parts = name.split(" ")
    if len(parts) != 2 or parts[0] not in COLORS or parts[1] not in SHAPES:
        raise ValueError(f"not an SG-Shapes category: {name!r}")
    return parts[0], parts[1]


# ----------------------------------------------------------------------------- rendering


def _make_stamps() -> dict[str, np.ndarray]:
    """Each shape as a fixed boolean pixel stamp (rows = y), so a shape looks the same wherever it
    is: square 12 x 12; circle of diameter 13 (pixel centres within 6.5 of the centre); triangle
    pointing up, 13 rows from a 2 px tip to the 14 px base."""
    offsets = np.arange(13) - 6.0
    circle = offsets[:, None] ** 2 + offsets[None, :] ** 2 <= 6.5**2
    widths = [2 * max(1, round(7 * (row + 1) / 13)) for row in range(13)]
    triangle = np.array([[abs(col - 6.5) < w / 2 for col in range(14)] for w in widths])
    return {"square": np.ones((12, 12), dtype=bool), "circle": circle, "triangle": triangle}


SHAPE_STAMPS = _make_stamps()


def render_frames(names: Sequence[str], centers: np.ndarray, size: int = FRAME_SIZE) -> np.ndarray:
    """Draw SG-Shapes objects.

    A shape's stamp is placed with its top-left pixel at ``floor(c - extent / 2 + 0.5)`` on each
    axis, so its pixel box is centred within half a pixel of the object's centre.

    Args:
        names: n category names (``"red circle"``), drawn in this order.
        centers: (F, n, 2) object centres (cx, cy) in pixels, y downwards.

    Returns:
        (F, size, size, 3) uint8 frames, black background, exact palette colors.
    """
    centers = np.asarray(centers, dtype=np.float64)
    num_frames = centers.shape[0]
    frames = np.zeros((num_frames, size, size, 3), dtype=np.uint8)
    for k, name in enumerate(names):
        color, shape = split_category(name)
        stamp = SHAPE_STAMPS[shape]
        h, w = stamp.shape
        for f in range(num_frames):
            x0 = int(np.floor(centers[f, k, 0] - w / 2 + 0.5))
            y0 = int(np.floor(centers[f, k, 1] - h / 2 + 0.5))
            # Clip to the frame (valid clips never need it; arbitrary centres may).
            sx0, sy0 = max(0, -x0), max(0, -y0)
            sx1, sy1 = min(w, size - x0), min(h, size - y0)
            if sx0 >= sx1 or sy0 >= sy1:
                continue
            region = frames[f, y0 + sy0 : y0 + sy1, x0 + sx0 : x0 + sx1]
            region[stamp[sy0:sy1, sx0:sx1]] = COLORS[color]
    return frames


# ----------------------------------------------------------------------------- clips


@dataclass(frozen=True)
class ShapeTrack:
    """One object of a clip: category ``name``, centre ``start`` at frame 0 and ``velocity`` in px per
    frame (the centre at frame f is ``start + f * velocity``)."""

    name: str
    start: tuple[float, float]
    velocity: tuple[float, float] = (0.0, 0.0)

    @property
    def shape(self) -> str:
        return split_category(self.name)[1]

    @property
    def half_extent(self) -> tuple[float, float]:
        return HALF_EXTENT[self.shape]


@dataclass(frozen=True)
class SGShapesClip:
    """A clip: its objects (in drawing order) and its length."""

    tracks: tuple[ShapeTrack, ...]
    num_frames: int = 16

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tracks]

    def centers(self) -> np.ndarray:
        """(F, n, 2) centres in pixels."""
        start = np.array([t.start for t in self.tracks], dtype=np.float64)
        velocity = np.array([t.velocity for t in self.tracks], dtype=np.float64)
        f = np.arange(self.num_frames, dtype=np.float64)[:, None, None]
        return start[None] + f * velocity[None]

    def boxes(self) -> np.ndarray:
        """(F, n, 4) bounding boxes [x0, y0, x1, y1] as fractions of the frame."""
        half = np.array([t.half_extent for t in self.tracks], dtype=np.float64)
        c = self.centers()
        return np.concatenate([c - half[None], c + half[None]], axis=-1) / FRAME_SIZE

    def render(self) -> np.ndarray:
        """(F, 64, 64, 3) uint8 frames."""
        return render_frames(self.names, self.centers())

    def is_valid(self) -> bool:
        """Inside the frame and at least MIN_GAP px between every two boxes, in every frame."""
        px = self.boxes() * FRAME_SIZE
        if (px[..., :2] < 0).any() or (px[..., 2:] > FRAME_SIZE).any():
            return False
        n = len(self.tracks)
        for i in range(n):
            for j in range(i + 1, n):
                gap_x = np.maximum(px[:, i, 0] - px[:, j, 2], px[:, j, 0] - px[:, i, 2])
                gap_y = np.maximum(px[:, i, 1] - px[:, j, 3], px[:, j, 1] - px[:, i, 3])
                if (np.maximum(gap_x, gap_y) < MIN_GAP).any():
                    return False
        return True


# ----------------------------------------------------------------------------- graphs of clips


def _runs(holds: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs of True as (first, last) frame pairs."""
    runs, start = [], None
    for f, value in enumerate(holds):
        if value and start is None:
            start = f
        elif not value and start is not None:
            runs.append((start, f - 1))
            start = None
    if start is not None:
        runs.append((start, len(holds) - 1))
    return runs


def _span(first: int, last: int, num_frames: int) -> tuple[float, float] | None:
    """The ``time`` of frames first..last (inclusive); ``None`` when it covers the clip."""
    if first == 0 and last == num_frames - 1:
        return None
    return (first / num_frames, (last + 1) / num_frames)


def _static_holds(predicate: str, cs: np.ndarray, co: np.ndarray, margin: float) -> np.ndarray:
    """Per frame, whether ``subject predicate object`` holds. cs, co: (F, 2) centres."""
    if predicate == "left of":
        return cs[:, 0] < co[:, 0] - margin
    if predicate == "right of":
        return cs[:, 0] > co[:, 0] + margin
    if predicate == "above":
        return cs[:, 1] < co[:, 1] - margin
    if predicate == "below":
        return cs[:, 1] > co[:, 1] + margin
    raise ValueError(f"not a static predicate: {predicate!r}")


def extract_scene_graph(clip: SGShapesClip, rng: np.random.Generator | None = None) -> SceneGraph:
    """The clip's scene graph: all its objects and a subset of its true triples.

    For each pair of objects (direction chosen by ``rng``, or lower index as subject), every
    static predicate over each maximal run of frames where it holds, and the dynamic predicate
    over the part of the clip where the centre distance falls (``moving toward``) or grows
    (``moving away from``) by at least 10 px. Runs shorter than a quarter of the clip are left out.
    """
    F = clip.num_frames
    centers = clip.centers()
    min_len = max(2, int(np.ceil(MIN_SPAN_FRACTION * F)))
    relationships = []
    n = len(clip.tracks)
    for i in range(n):
        for j in range(i + 1, n):
            s, o = (j, i) if rng is not None and rng.random() < 0.5 else (i, j)
            cs, co = centers[:, s], centers[:, o]
            for predicate in STATIC_PREDICATES:
                for first, last in _runs(_static_holds(predicate, cs, co, STATIC_MARGIN)):
                    if last - first + 1 >= min_len:
                        relationships.append(Relationship(s, predicate, o, _span(first, last, F)))
            distance = np.linalg.norm(cs - co, axis=-1)
            turn = int(np.argmin(distance))  # distance of two linear motions is convex in time
            for predicate, first, last in (("moving toward", 0, turn), ("moving away from", turn, F - 1)):
                change = abs(distance[last] - distance[first])
                if last - first + 1 >= max(min_len, 4) and change >= DYNAMIC_CHANGE:
                    relationships.append(Relationship(s, predicate, o, _span(first, last, F)))
    objects = tuple(SceneObject(name) for name in clip.names)
    return SceneGraph(objects, tuple(relationships))


def _random_track(rng: np.random.Generator, name: str, num_frames: int, p_static: float) -> ShapeTrack:
    hw, hh = HALF_EXTENT[split_category(name)[1]]
    start = (rng.uniform(hw, FRAME_SIZE - hw), rng.uniform(hh, FRAME_SIZE - hh))
    if rng.random() < p_static:
        return ShapeTrack(name, start)
    speed = rng.uniform(0.6, MAX_SPEED)
    angle = rng.uniform(0, 2 * np.pi)
    return ShapeTrack(name, start, (speed * np.cos(angle), speed * np.sin(angle)))


def sample_clip(
    rng: np.random.Generator,
    num_frames: int = 16,
    names: Sequence[str] | None = None,
    p_static: float = 0.3,
    max_tries: int = 10_000,
) -> SGShapesClip:
    """A random valid clip (objects inside the frame and apart in every frame).

    Args:
        names: the objects' categories; by default 1 to 4 objects with different colors.
        p_static: probability that an object does not move.
    """
    if names is None:
        count = int(rng.integers(1, MAX_OBJECTS + 1))
        colors = rng.choice(list(COLORS), size=count, replace=False)
        names = [f"{c} {SHAPES[int(rng.integers(len(SHAPES)))]}" for c in colors]
    for _ in range(max_tries):
        clip = SGShapesClip(tuple(_random_track(rng, name, num_frames, p_static) for name in names), num_frames)
        if clip.is_valid():
            return clip
    raise RuntimeError(f"no valid layout found for {list(names)} in {max_tries} tries")


def _clip_rng(split: str, index: int, seed: int) -> np.random.Generator:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    if index < 0 or seed < 0:
        raise ValueError(f"index and seed must be >= 0, got index={index}, seed={seed}")
    # Distinct (seed, split, index) entropy tuples give independent streams: splits never share one.
    return np.random.default_rng(np.random.SeedSequence([seed, SPLITS[split], index]))


def generate_clip(split: str, index: int, num_frames: int = 16, seed: int = 0) -> tuple[SGShapesClip, SceneGraph]:
    """Clip ``index`` of ``split`` for ``seed``: deterministic, and disjoint across splits."""
    rng = _clip_rng(split, index, seed)
    clip = sample_clip(rng, num_frames)
    return clip, extract_scene_graph(clip, rng)


# ----------------------------------------------------------------------------- graph -> clip


def check_sg_shapes_graph(graph: SceneGraph) -> None:
    """Raise :class:`SceneGraphError` unless ``graph`` can be an SG-Shapes scene: known
    categories and predicates, 1 to 4 objects of pairwise different colors."""
    graph = parse_scene_graph(graph, vocab=sg_shapes_vocabulary(), max_objects=MAX_OBJECTS)
    seen: dict[str, int] = {}
    for i, obj in enumerate(graph.objects):
        color = split_category(obj.name)[0]
        if color in seen:
            raise SceneGraphError(
                f"objects[{i}].name", obj.name, f"SG-Shapes objects need different colors; objects[{seen[color]}] is {color} too", i
            )
        seen[color] = i


def sample_clip_for_graph(
    graph: SceneGraph | dict | str,
    num_frames: int = 16,
    seed: int = 0,
    max_tries: int = 20_000,
) -> SGShapesClip:
    """A clip that obeys ``graph`` by the conformance metric, found by rejection sampling.

    Boxes, when the graph gives them, are ignored. Raises :class:`SceneGraphError` for a graph
    SG-Shapes can't show and ``RuntimeError`` when no clip is found in ``max_tries`` (for example a
    contradictory graph).
    """
    from ..evaluation.conformance import score_tracks, score_video  # evaluation builds on this module

    graph = parse_scene_graph(graph)
    check_sg_shapes_graph(graph)
    rng = np.random.default_rng(seed)
    wants_motion = any(rel.predicate in DYNAMIC_PREDICATES or rel.time is not None for rel in graph.relationships)
    for _ in range(max_tries):
        clip = sample_clip(rng, num_frames, graph.object_names, p_static=0.2 if wants_motion else 0.7)
        # The exact tracks screen layouts cheaply; the rendered pixels have the final word.
        if score_tracks(clip, graph).all_satisfied and score_video(clip.render(), graph).all_satisfied:
            return clip
    raise RuntimeError(f"no SG-Shapes clip satisfying the graph was found in {max_tries} tries: {graph}")


def active_frame_mask(relationship: Relationship, num_frames: int) -> np.ndarray:
    """(F,) bool: the frames in which ``relationship`` is active (via :func:`active_triples`)."""
    return active_triples([relationship.span], num_frames)[:, 0].numpy()
