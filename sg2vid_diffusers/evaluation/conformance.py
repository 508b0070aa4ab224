"""The SG-Shapes conformance metric (``SG_SHAPES.md``, "Checking a video against its graph").

Does a video obey its scene graph? Objects are found by color, relations are checked on the
detected centres over each triple's span. Figures:

- object recall: graph objects detected in at least half of the frames;
- relation accuracy: satisfied triples / triples, and the same over triples with a time span;
- graph accuracy: graphs with every triple satisfied;
- shape accuracy: detected objects (as for recall) whose fill ratio names the right shape
  (the object's fill ratio is the median over the frames where it is detected);
- spurious objects: palette colors detected in half the frames but absent from the graph,
  per video.

Rendered ground-truth clips score 1.0 on every figure and 0 spurious objects.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

import numpy as np

from ..batching import active_triples
from ..data.sg_shapes import (
    COLORS,
    DYNAMIC_PREDICATES,
    PREDICATES,
    SHAPE_STAMPS,
    SGShapesClip,
    check_sg_shapes_graph,
    split_category,
)
from ..scene_graph import SceneGraph, parse_scene_graph

__all__ = [
    "Detections",
    "VideoScore",
    "ConformanceReport",
    "detect_objects",
    "score_detections",
    "score_video",
    "score_tracks",
    "summarize",
    "triple_outcomes",
    "TRIPLE_OUTCOMES",
]

COLOR_RADIUS = 90.0
MIN_PIXELS = 20
CHECK_MARGIN = 2.0  # px, instead of the 6 px of the predicate definitions
STATIC_DETECTED_SHARE = 0.5
STATIC_HOLDS_SHARE = 0.75
DYNAMIC_MIN_CHANGE = 5.0
_PALETTE = list(COLORS)


@dataclass
class Detections:
    """Per palette color (in ``COLORS`` order) and frame: detected, centre (cx, cy) px and fill ratio.

    Shapes: ``detected`` (6, F) bool, ``centers`` (6, F, 2), ``fill`` (6, F) (NaN where undetected).
    """

    detected: np.ndarray
    centers: np.ndarray
    fill: np.ndarray

    @property
    def num_frames(self) -> int:
        return self.detected.shape[1]


def detect_objects(frames: np.ndarray) -> Detections:
    """Find every palette color in every frame.

    Args:
        frames: (F, H, W, 3) uint8 (or float in 0..255) RGB frames.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must have shape (F, H, W, 3), got {frames.shape}")
    pixels = frames.astype(np.float32)
    num_frames, height, width = frames.shape[:3]
    ys, xs = np.mgrid[0:height, 0:width]
    detected = np.zeros((len(_PALETTE), num_frames), dtype=bool)
    centers = np.full((len(_PALETTE), num_frames, 2), np.nan)
    fill = np.full((len(_PALETTE), num_frames), np.nan)
    for c, name in enumerate(_PALETTE):
        mask = _colour_mask(pixels, name)  # (F, H, W)
        count = mask.sum(axis=(1, 2))
        for f in np.flatnonzero(count >= MIN_PIXELS):
            px, py = xs[mask[f]], ys[mask[f]]
            detected[c, f] = True
            centers[c, f] = (px.mean() + 0.5, py.mean() + 0.5)  # pixel centres, as the renderer places them
            box_area = (px.max() - px.min() + 1) * (py.max() - py.min() + 1)
            fill[c, f] = count[f] / box_area
    return Detections(detected, centers, fill)


def _colour_mask(frames: np.ndarray, name: str) -> np.ndarray:
    """(F, H, W) bool: the pixels within ``COLOR_RADIUS`` of palette colour ``name``."""
    rgb = np.array(COLORS[name], dtype=np.float32)
    return ((np.asarray(frames, dtype=np.float32) - rgb) ** 2).sum(-1) <= COLOR_RADIUS**2


def _shape_from_fill(ratio: float) -> str:
    if ratio > 0.85:
        return "square"
    if ratio >= 0.65:
        return "circle"
    return "triangle"


@dataclass
class VideoScore:
    """The conformance of one video to one graph (counts, so that scores add up over videos)."""

    num_objects: int
    objects_detected: int
    triples: list[bool] = field(default_factory=list)
    timed: list[bool] = field(default_factory=list)  # per triple: has a time span
    predicates: list[str] = field(default_factory=list)  # per triple
    shapes_checked: int = 0
    shapes_correct: int = 0
    spurious: int = 0

    @property
    def all_satisfied(self) -> bool:
        return all(self.triples)

    @property
    def relation_accuracy(self) -> float:
        return float(np.mean(self.triples)) if self.triples else 1.0


def _color_index(name: str) -> int:
    return _PALETTE.index(split_category(name)[0])


def _drawn(detections: Detections) -> np.ndarray:
    """(6,) bool per palette colour: detected in at least half of the frames (what recall and
    spurious objects count)."""
    return detections.detected.sum(axis=1) >= 0.5 * detections.num_frames


def _drawn_shape(detections: Detections, color: int) -> str:
    """The shape a drawn colour's median fill ratio names."""
    return _shape_from_fill(float(np.nanmedian(detections.fill[color])))


def score_detections(detections: Detections, graph: SceneGraph) -> VideoScore:
    """Score detections against ``graph`` (an SG-Shapes graph, already parsed)."""
    colors, det, cen = _graph_tracks(detections, graph)
    drawn = _drawn(detections)
    recalled = drawn[colors]

    score = VideoScore(num_objects=len(colors), objects_detected=int(recalled.sum()))
    for k in np.flatnonzero(recalled):
        score.shapes_checked += 1
        score.shapes_correct += _drawn_shape(detections, colors[k]) == split_category(graph.object_names[k])[1]
    absent = [c for c in range(len(_PALETTE)) if c not in colors]
    score.spurious = int(drawn[absent].sum())

    for rel, frames in zip(graph.relationships, _span_frames(graph, detections.num_frames)):
        score.timed.append(rel.time is not None)
        score.predicates.append(rel.predicate)
        score.triples.append(bool(frames.size) and _triple_holds(rel.predicate, det, cen, rel.subject, rel.object, frames))
    return score


def _graph_tracks(detections: Detections, graph: SceneGraph) -> tuple[list[int], np.ndarray, np.ndarray]:
    """The graph's objects' palette indices, and their detections (n, F) and centres (n, F, 2)."""
    colors = [_color_index(name) for name in graph.object_names]
    return colors, detections.detected[colors], detections.centers[colors]


def _span_frames(graph: SceneGraph, num_frames: int) -> list[np.ndarray]:
    """Per triple, the frame indices of its span (``active_triples``, the one place spans map to frames)."""
    if not graph.relationships:
        return []
    in_span = active_triples([rel.span for rel in graph.relationships], num_frames).numpy().T  # (T, F)
    return [np.flatnonzero(row) for row in in_span]


def _span_ends(frames: np.ndarray) -> np.ndarray:
    """The frames of a span (sorted frame indices) a dynamic triple is checked on: its first two and
    its last two (repeated where the span is shorter than four frames)."""
    return np.r_[frames[:2], frames[-2:]]


def _distance_change(det: np.ndarray, cen: np.ndarray, s: int, o: int, frames: np.ndarray) -> float | None:
    """How the distance between objects s and o changes over ``frames`` (a triple's span): the mean of
    its last two frames minus that of its first two; None unless both are detected at those ends."""
    ends = _span_ends(frames)
    if frames.size < 2 or not (det[s, ends] & det[o, ends]).all():
        return None
    distance = np.linalg.norm(cen[s, ends] - cen[o, ends], axis=-1)
    return float(distance[2:].mean() - distance[:2].mean())


def _dynamic_holds(predicate: str, change: float) -> bool:
    """Whether a distance change (:func:`_distance_change`) satisfies a dynamic predicate."""
    return change <= -DYNAMIC_MIN_CHANGE if predicate == "moving toward" else change >= DYNAMIC_MIN_CHANGE


def _triple_holds(predicate: str, det: np.ndarray, cen: np.ndarray, s: int, o: int, frames: np.ndarray) -> bool:
    if predicate in DYNAMIC_PREDICATES:
        change = _distance_change(det, cen, s, o, frames)
        return change is not None and _dynamic_holds(predicate, change)
    both = det[s, frames] & det[o, frames]
    cs, co = cen[s, frames], cen[o, frames]
    if both.sum() < STATIC_DETECTED_SHARE * frames.size or not both.any():
        return False
    cs, co = cs[both], co[both]
    if predicate == "left of":
        holds = cs[:, 0] < co[:, 0] - CHECK_MARGIN
    elif predicate == "right of":
        holds = cs[:, 0] > co[:, 0] + CHECK_MARGIN
    elif predicate == "above":
        holds = cs[:, 1] < co[:, 1] - CHECK_MARGIN
    elif predicate == "below":
        holds = cs[:, 1] > co[:, 1] + CHECK_MARGIN
    else:
        raise ValueError(f"unknown SG-Shapes predicate {predicate!r}")
    return bool(holds.mean() >= STATIC_HOLDS_SHARE)


TRIPLE_OUTCOMES = (
    "holds",
    "object not drawn",  # an object of the triple is not detected in half of the frames (not recalled)
    "not detected in span",  # static: both drawn, but both detected in under half of the span's frames
    "wrong place",  # static: detected, and the relation holds in under STATIC_HOLDS_SHARE of them
    "not detected at span ends",  # dynamic: both drawn, but one is missing in a frame the change is measured on
    "too little motion",  # dynamic: detected, and the distance changes too little or the wrong way
)


def triple_kind(rel) -> str:
    """``"dynamic"`` (a motion predicate), ``"timed"`` (a static predicate with a time span) or ``"static"``."""
    if rel.predicate in DYNAMIC_PREDICATES:
        return "dynamic"
    return "timed" if rel.time is not None else "static"


def triple_outcomes(detections: Detections, graph: SceneGraph) -> list[tuple[str, str]]:
    """Why each triple of ``graph`` holds or fails in a video: ``(kind, outcome)`` per triple, kind
    from :func:`triple_kind`, outcome one of :data:`TRIPLE_OUTCOMES`, by the same rules as
    :func:`score_detections` (a triple ``"holds"`` exactly when it counts as satisfied there). The
    first reason that applies is given: a missing object before detections, detections before
    geometry."""
    colors, det, cen = _graph_tracks(detections, graph)
    recalled = _drawn(detections)[colors]
    outcomes = []
    for rel, frames in zip(graph.relationships, _span_frames(graph, detections.num_frames)):
        s, o, kind = rel.subject, rel.object, triple_kind(rel)
        if frames.size and _triple_holds(rel.predicate, det, cen, s, o, frames):
            outcome = "holds"
        elif not (recalled[s] and recalled[o]):
            outcome = "object not drawn"
        elif kind == "dynamic":
            change = _distance_change(det, cen, s, o, frames) if frames.size else None
            outcome = "not detected at span ends" if change is None else "too little motion"
        else:
            both = det[s, frames] & det[o, frames]
            enough = frames.size and both.any() and both.sum() >= STATIC_DETECTED_SHARE * frames.size
            outcome = "wrong place" if enough else "not detected in span"
        outcomes.append((kind, outcome))
    return outcomes


def score_video(frames: np.ndarray, graph: SceneGraph | dict | str) -> VideoScore:
    """Score one video (F, H, W, 3) against its scene graph.

    Raises:
        SceneGraphError: when the graph is not a valid SG-Shapes graph.
    """
    graph = parse_scene_graph(graph)
    check_sg_shapes_graph(graph)
    return score_detections(detect_objects(frames), graph)


def score_tracks(clip: SGShapesClip, graph: SceneGraph) -> VideoScore:
    """A fast score from a clip's exact tracks instead of rendered pixels (every object detected,
    centres at the pixel centroid of its shape). Used to pre-screen layouts before rendering."""
    F = clip.num_frames
    detected = np.zeros((len(_PALETTE), F), dtype=bool)
    centers = np.full((len(_PALETTE), F, 2), np.nan)
    fill = np.full((len(_PALETTE), F), np.nan)
    true_centers = clip.centers()
    for k, track in enumerate(clip.tracks):
        c = _color_index(track.name)
        stamp = SHAPE_STAMPS[track.shape]
        ys, xs = np.nonzero(stamp)
        # The stamp's pixel centroid relative to its box centre (a triangle's lies low).
        offset = np.array([xs.mean() + 0.5 - stamp.shape[1] / 2, ys.mean() + 0.5 - stamp.shape[0] / 2])
        detected[c] = True
        centers[c] = true_centers[:, k] + offset
        fill[c] = stamp.mean()
    return score_detections(Detections(detected, centers, fill), graph)


@dataclass
class ConformanceReport:
    """Conformance figures over a set of videos (micro-averaged over objects and triples)."""

    num_videos: int
    object_recall: float
    relation_accuracy: float
    timed_relation_accuracy: float | None
    graph_accuracy: float
    shape_accuracy: float | None
    spurious_per_video: float
    num_triples: int
    num_timed_triples: int
    # per predicate of the vocabulary that occurs: {"accuracy": satisfied / triples, "triples": n}
    by_predicate: dict[str, dict[str, float | int]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def format_table(self) -> str:
        rows = [
            ("videos", f"{self.num_videos}"),
            ("object recall", f"{self.object_recall:.3f}"),
            ("relation accuracy", f"{self.relation_accuracy:.3f}  ({self.num_triples} triples)"),
            (
                "relation accuracy, timed triples",
                "n/a" if self.timed_relation_accuracy is None
                else f"{self.timed_relation_accuracy:.3f}  ({self.num_timed_triples} triples)",
            ),
            ("graph accuracy", f"{self.graph_accuracy:.3f}"),
            ("shape accuracy", "n/a" if self.shape_accuracy is None else f"{self.shape_accuracy:.3f}"),
            ("spurious objects per video", f"{self.spurious_per_video:.3f}"),
        ] + [("relation accuracy per predicate", "")] * bool(self.by_predicate) + [
            (f"  {predicate}", f"{row['accuracy']:.3f}  ({row['triples']} triples)")
            for predicate, row in self.by_predicate.items()
        ]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def summarize(scores: Iterable[VideoScore]) -> ConformanceReport:
    scores = list(scores)
    if not scores:
        raise ValueError("no videos to summarize")
    triples = [ok for s in scores for ok in s.triples]
    timed = [ok for s in scores for ok, is_timed in zip(s.triples, s.timed) if is_timed]
    objects = sum(s.num_objects for s in scores)
    checked = sum(s.shapes_checked for s in scores)

    def ratio(num: float, den: float) -> float:
        return num / den if den else 1.0

    return ConformanceReport(
        num_videos=len(scores),
        object_recall=ratio(sum(s.objects_detected for s in scores), objects),
        relation_accuracy=ratio(sum(triples), len(triples)),
        timed_relation_accuracy=ratio(sum(timed), len(timed)) if timed else None,
        graph_accuracy=ratio(sum(s.all_satisfied for s in scores), len(scores)),
        shape_accuracy=ratio(sum(s.shapes_correct for s in scores), checked) if checked else None,
        spurious_per_video=sum(s.spurious for s in scores) / len(scores),
        num_triples=len(triples),
        num_timed_triples=len(timed),
        by_predicate=_by_predicate(scores),
    )


def _by_predicate(scores: list[VideoScore]) -> dict[str, dict[str, float | int]]:
    """Relation accuracy per predicate, in vocabulary order (only predicates that occur). Static and
    dynamic predicates fail for different reasons: a wrong place, or no motion."""
    tally: dict[str, list[int]] = {}
    for s in scores:
        for predicate, ok in zip(s.predicates, s.triples, strict=True):
            counts = tally.setdefault(predicate, [0, 0])
            counts[0] += ok
            counts[1] += 1
    order = {p: i for i, p in enumerate(PREDICATES)}
    return {
        p: {"accuracy": ok / n, "triples": n}
        for p, (ok, n) in sorted(tally.items(), key=lambda item: order.get(item[0], len(order)))
    }


def score_many(videos: Sequence[np.ndarray], graphs: Sequence[SceneGraph]) -> ConformanceReport:
    """Score a list of videos against their graphs."""
    return summarize(score_video(v, g) for v, g in zip(videos, graphs, strict=True))
