import numpy as np
import pytest

from sg2vid_diffusers import SceneGraph, SceneGraphError
from sg2vid_diffusers.data.sg_shapes import (
    COLORS,
    DYNAMIC_PREDICATES,
    OPPOSITE_PREDICATES,
    PREDICATES,
    SGShapesClip,
    ShapeTrack,
    generate_clip,
)
from sg2vid_diffusers.evaluation.conformance import detect_objects, score_video, summarize
from sg2vid_diffusers.scene_graph import Relationship, SceneObject


@pytest.fixture(scope="module")
def clips():
    return [generate_clip("validation", i) for i in range(300)]


def test_ground_truth_clips_score_100_percent(clips):
    report = summarize(score_video(clip.render(), graph) for clip, graph in clips)
    assert report.num_videos == 300 and report.num_triples > 600 and report.num_timed_triples > 50
    assert report.object_recall == 1.0
    assert report.relation_accuracy == 1.0
    assert report.timed_relation_accuracy == 1.0
    assert report.graph_accuracy == 1.0
    assert report.shape_accuracy == 1.0
    assert report.spurious_per_video == 0.0
    assert list(report.by_predicate) == list(PREDICATES)  # every predicate occurs, in vocabulary order
    assert all(row["accuracy"] == 1.0 for row in report.by_predicate.values())


def test_frozen_videos_fail_the_dynamic_predicates_only_and_the_report_says_so(clips):
    """A video that never moves (each clip's first frame, repeated) keeps its layout: the per-predicate
    figures tell "no motion" from "wrong place", which the overall relation accuracy mixes."""
    report = summarize(score_video(np.repeat(clip.render()[:1], 16, axis=0), graph) for clip, graph in clips)
    rows = report.by_predicate
    assert sum(row["triples"] for row in rows.values()) == report.num_triples
    for predicate in PREDICATES:
        if predicate in DYNAMIC_PREDICATES:
            assert rows[predicate]["accuracy"] == 0.0, predicate
        else:  # wrong only where a timed triple's span excludes the first frame and the objects cross
            assert rows[predicate]["accuracy"] > 0.8, predicate
    table = report.format_table()
    assert "  moving toward" in table and f"({rows['moving toward']['triples']} triples)" in table


def test_swapped_predicates_fail(clips):
    scores = []
    for clip, graph in clips:
        swapped = tuple(
            Relationship(r.subject, OPPOSITE_PREDICATES[r.predicate], r.object, r.time) for r in graph.relationships
        )
        scores.append(score_video(clip.render(), SceneGraph(graph.objects, swapped)))
    report = summarize(scores)
    assert report.relation_accuracy == 0.0
    assert report.object_recall == 1.0


def _recolor(name: str, taken: set[str]) -> str:
    color, shape = name.split()
    new = next(c for c in COLORS if c not in taken)
    return f"{new} {shape}"


def test_a_wrong_color_loses_recall_and_adds_a_spurious_object(clips):
    scores = []
    for clip, graph in clips:
        taken = {n.split()[0] for n in graph.object_names}
        objects = (SceneObject(_recolor(graph.object_names[0], taken)),) + graph.objects[1:]
        scores.append(score_video(clip.render(), SceneGraph(objects, graph.relationships)))
    report = summarize(scores)
    expected_recall = 1 - 300 / sum(len(g.objects) for _, g in clips)
    assert report.object_recall == pytest.approx(expected_recall)
    assert report.spurious_per_video == 1.0
    assert report.relation_accuracy < 0.8


def test_a_wrong_shape_lowers_shape_accuracy():
    clip = SGShapesClip((ShapeTrack("red circle", (16.0, 16.0)), ShapeTrack("blue square", (45.0, 45.0))))
    frames = clip.render()
    right = SceneGraph((SceneObject("red circle"), SceneObject("blue square")))
    wrong = SceneGraph((SceneObject("red triangle"), SceneObject("blue circle")))
    assert score_video(frames, right).shapes_correct == 2
    assert score_video(frames, wrong).shapes_correct == 0


def test_blank_and_frozen_videos():
    clip = SGShapesClip((ShapeTrack("red circle", (10.0, 32.0), (2.5, 0.0)), ShapeTrack("blue square", (54.0, 32.0))))
    graph = SceneGraph(
        (SceneObject("red circle"), SceneObject("blue square")),
        (Relationship(0, "moving toward", 1), Relationship(0, "left of", 1)),
    )
    frames = clip.render()
    assert score_video(frames, graph).triples == [True, True]
    blank = score_video(np.zeros_like(frames), graph)
    assert blank.objects_detected == 0 and blank.triples == [False, False]
    frozen = score_video(np.repeat(frames[:1], len(frames), axis=0), graph)
    assert frozen.triples == [False, True]  # no motion, same layout
    # Half the frames missing is still "detected in at least half"; more is not.
    half = frames.copy()
    half[8:] = 0
    assert score_video(half, graph).objects_detected == 2
    half[7] = 0
    assert score_video(half, graph).objects_detected == 0


def test_span_restricts_the_frames_checked():
    # The circle crosses the square's column: left of in the first frames only.
    clip = SGShapesClip((ShapeTrack("red circle", (10.0, 50.0), (2.5, 0.0)), ShapeTrack("blue square", (30.0, 15.0))))
    objects = (SceneObject("red circle"), SceneObject("blue square"))
    frames = clip.render()
    assert score_video(frames, SceneGraph(objects, (Relationship(0, "left of", 1, (0.0, 0.375)),))).all_satisfied
    assert not score_video(frames, SceneGraph(objects, (Relationship(0, "left of", 1),))).all_satisfied
    assert score_video(frames, SceneGraph(objects, (Relationship(0, "right of", 1, (0.75, 1.0)),))).all_satisfied


def test_detection_finds_palette_colors_with_a_tolerance():
    clip = SGShapesClip((ShapeTrack("green triangle", (20.0, 20.0)),))
    frames = clip.render().astype(np.int16)
    noisy = np.clip(frames + np.random.default_rng(0).integers(-40, 41, frames.shape), 0, 255).astype(np.uint8)
    det = detect_objects(noisy)
    green = list(COLORS).index("green")
    assert det.detected[green].all() and det.detected.sum() == len(frames)
    assert np.allclose(det.centers[green, 0], detect_objects(clip.render()).centers[green, 0], atol=0.5)


def test_non_sg_shapes_graphs_are_refused():
    frames = np.zeros((4, 64, 64, 3), dtype=np.uint8)
    with pytest.raises(SceneGraphError) as info:
        score_video(frames, {"objects": ["red circle", "red square"]})
    assert info.value.field == "objects[1].name"
