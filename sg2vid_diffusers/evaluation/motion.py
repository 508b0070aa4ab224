"""How much generated SG-Shapes videos move where their graphs ask for motion.

The conformance metric (:mod:`.conformance`) scores a dynamic triple (``moving toward``,
``moving away from``) by the change of its two objects' distance over the triple's span. When such
triples fail, :func:`dynamic_triple_motion` says whether the objects moved the wrong way or did not
move at all: the subject's speed and the distance change of every dynamic triple whose two objects
are drawn at both ends of its span. The triples left out are split by why: an object missing from
the video (what object recall counts), or both drawn but one undetected in a frame at an end of the
span (the metric checks the span's first two and last two frames); and how often the dynamic
triples' drawn objects are detected in those end frames against the frames between them says
whether the ends of a video are where objects fade.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from ..batching import active_triples
from ..data.sg_shapes import DYNAMIC_PREDICATES
from ..scene_graph import SceneGraph, parse_scene_graph
from .conformance import _color_index, _distance_change, _drawn, _span_ends, detect_objects

__all__ = ["MotionReport", "dynamic_triple_motion"]

STILL_PX = 2.0  # a distance change under this many pixels over a span counts as no motion


@dataclass
class MotionReport:
    """Per dynamic triple whose objects are drawn at both ends of its span (see
    :func:`dynamic_triple_motion`)."""

    speeds: list[float] = field(default_factory=list)  # the subject's, px per frame
    changes: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in DYNAMIC_PREDICATES})
    undrawn: int = 0  # dynamic triples left out: an object missing at an end of the span
    undrawn_absent: int = 0  # of them, those with an object detected in under half of the frames
    # (object, frame) pairs of the dynamic triples' objects drawn in the video: [detected, all]
    end_frames: list[int] = field(default_factory=lambda: [0, 0])  # the span's first two and last two
    inner_frames: list[int] = field(default_factory=lambda: [0, 0])  # the frames between them

    def to_dict(self) -> dict:
        speeds = np.asarray(self.speeds, dtype=float)
        out = {
            "triples": len(speeds),
            "undrawn": self.undrawn,
            "undrawn_absent": self.undrawn_absent,
            "undrawn_at_ends": self.undrawn - self.undrawn_absent,
            "end_frame_detection": self.end_frames[0] / self.end_frames[1] if self.end_frames[1] else None,
            "inner_frame_detection": self.inner_frames[0] / self.inner_frames[1] if self.inner_frames[1] else None,
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
        left_out = (f"{self.undrawn} left out: {d['undrawn_absent']} with an object missing from the video, "
                    f"{d['undrawn_at_ends']} with both drawn but one undetected at an end of the span")
        if not d["triples"]:
            lines = [f"no dynamic triple with both objects drawn ({left_out})"]
        else:
            lines = [
                f"dynamic triples with both objects drawn: {d['triples']} ({left_out})",
                f"subject speed, px per frame: mean {d['subject_speed_mean']:.2f}, median {d['subject_speed_median']:.2f}",
            ]
        if d["end_frame_detection"] is not None:
            inner = d["inner_frame_detection"]
            lines.append(f"their drawn objects detected in {d['end_frame_detection']:.2f} of the span-end frames"
                         + (f", {inner:.2f} of the frames between" if inner is not None else ""))
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
        drawn = _drawn(det)
        for t in dynamic:
            rel = graph.relationships[t]
            span = np.flatnonzero(in_span[t])
            s, o = colors[rel.subject], colors[rel.object]
            ends = np.unique(_span_ends(span))
            inner = np.setdiff1d(span, ends)
            for c in {s, o}:
                if drawn[c]:
                    for tally, frames in ((report.end_frames, ends), (report.inner_frames, inner)):
                        tally[0] += int(det.detected[c, frames].sum())
                        tally[1] += len(frames)
            change = _distance_change(det.detected, det.centers, s, o, span)  # the metric's own figure
            if change is None:
                report.undrawn += 1
                report.undrawn_absent += int(not (drawn[s] and drawn[o]))
                continue
            report.changes[rel.predicate].append(change)
            seen = span[det.detected[s, span]]
            report.speeds.append(float(np.linalg.norm(det.centers[s, seen[-1]] - det.centers[s, seen[0]]) / (seen[-1] - seen[0])))
    return report
