"""How much generated SG-Shapes videos move where their graphs ask for motion.

The conformance metric (:mod:`.conformance`) scores a dynamic triple (``moving toward``,
``moving away from``) by the change of its two objects' distance over the triple's span. When such
triples fail, :func:`dynamic_triple_motion` says whether the objects moved the wrong way or did not
move at all: the subject's speed and the distance change of every dynamic triple whose two objects
are drawn at both ends of its span.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from ..batching import active_triples
from ..data.sg_shapes import DYNAMIC_PREDICATES
from ..scene_graph import SceneGraph, parse_scene_graph
from .conformance import _color_index, _distance_change, detect_objects

__all__ = ["MotionReport", "dynamic_triple_motion"]

STILL_PX = 2.0  # a distance change under this many pixels over a span counts as no motion


@dataclass
class MotionReport:
    """Per dynamic triple whose objects are drawn at both ends of its span (see
    :func:`dynamic_triple_motion`)."""

    speeds: list[float] = field(default_factory=list)  # the subject's, px per frame
    changes: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in DYNAMIC_PREDICATES})
    undrawn: int = 0  # dynamic triples left out: an object missing at an end of the span

    def to_dict(self) -> dict:
        speeds = np.asarray(self.speeds, dtype=float)
        out = {
            "triples": len(speeds),
            "undrawn": self.undrawn,
            "subject_speed_mean": float(speeds.mean()) if len(speeds) else None,
            "subject_speed_median": float(np.median(speeds)) if len(speeds) else None,
        }
        for predicate, values in self.changes.items():
            values = np.asarray(values, dtype=float)
            out[predicate] = {
                "triples": len(values),
                "distance_change_median": float(np.median(values)) if len(values) else None,
                "still_share": float((np.abs(values) < STILL_PX).mean()) if len(values) else None,
            }
        return out

    def format_table(self) -> str:
        d = self.to_dict()
        if not d["triples"]:
            return f"no dynamic triple with both objects drawn ({self.undrawn} left out)"
        lines = [
            f"dynamic triples with both objects drawn: {d['triples']} ({self.undrawn} left out)",
            f"subject speed, px per frame: mean {d['subject_speed_mean']:.2f}, median {d['subject_speed_median']:.2f}",
        ]
        for predicate in DYNAMIC_PREDICATES:
            row = d[predicate]
            if row["triples"]:
                lines.append(
                    f"{predicate}: {row['triples']} triples, distance change median {row['distance_change_median']:+.2f} px, "
                    f"still (|change| < {STILL_PX:g} px) {row['still_share']:.2f}"
                )
        return "\n".join(lines)


def dynamic_triple_motion(videos_and_graphs: Iterable[tuple[np.ndarray, SceneGraph | dict | str]]) -> MotionReport:
    """Motion of the dynamic triples of (video (F, H, W, 3) uint8, SG-Shapes graph) pairs: for each,
    over the frames of its span (as the conformance metric takes them), the subject's speed (centre
    displacement between the first and last frames it is detected in, per frame between them) and
    the change of the two objects' distance (mean of the span's last two frames minus its first two;
    the metric asks for at least 5 px, negative for ``moving toward``)."""
    report = MotionReport()
    for frames, graph in videos_and_graphs:
        graph = parse_scene_graph(graph)
        dynamic = [t for t, rel in enumerate(graph.relationships) if rel.predicate in DYNAMIC_PREDICATES]
        if not dynamic:
            continue
        det = detect_objects(frames)
        in_span = active_triples([rel.span for rel in graph.relationships], det.num_frames).numpy().T  # (T, F)
        colors = [_color_index(name) for name in graph.object_names]
        for t in dynamic:
            rel = graph.relationships[t]
            span = np.flatnonzero(in_span[t])
            s, o = colors[rel.subject], colors[rel.object]
            change = _distance_change(det.detected, det.centers, s, o, span)  # the metric's own figure
            if change is None:
                report.undrawn += 1
                continue
            report.changes[rel.predicate].append(change)
            seen = span[det.detected[s, span]]
            report.speeds.append(float(np.linalg.norm(det.centers[s, seen[-1]] - det.centers[s, seen[0]]) / (seen[-1] - seen[0])))
    return report
