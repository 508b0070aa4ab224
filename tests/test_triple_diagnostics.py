"""Why triples fail: triple_outcomes agrees with the conformance score and names the cause."""

import subprocess
import sys
from pathlib import Path

import numpy as np

from sg2vid_diffusers.data.sg_shapes import COLORS, DYNAMIC_PREDICATES, generate_clip
from sg2vid_diffusers.data.video_folder import write_video_folder
from sg2vid_diffusers.evaluation.conformance import detect_objects, score_detections, triple_outcomes

ROOT = Path(__file__).resolve().parent.parent


def _clip(predicate_kind: str, start: int = 0):
    """A test clip whose graph has a dynamic triple (``"dynamic"``) or at least two objects (``"any"``)."""
    for i in range(start, start + 300):
        clip, graph = generate_clip("test", i)
        dynamic = any(rel.predicate in DYNAMIC_PREDICATES for rel in graph.relationships)
        if len(graph.objects) >= 2 and graph.relationships and (predicate_kind == "any" or dynamic):
            return clip.render(), graph
    raise AssertionError("no such clip")


def _held(frames, graph):
    detections = detect_objects(frames)
    outcomes = triple_outcomes(detections, graph)
    score = score_detections(detections, graph)
    assert [outcome == "holds" for _, outcome in outcomes] == score.triples  # the same rule as the metric
    return outcomes


def test_ground_truth_triples_all_hold_with_their_kinds():
    frames, graph = _clip("dynamic")
    outcomes = _held(frames, graph)
    assert outcomes and all(outcome == "holds" for _, outcome in outcomes)
    kinds = [kind for kind, _ in outcomes]
    for rel, kind in zip(graph.relationships, kinds):
        assert kind == ("dynamic" if rel.predicate in DYNAMIC_PREDICATES else "timed" if rel.time else "static")


def test_an_erased_object_takes_its_triples_and_only_those():
    frames, graph = _clip("any")
    colour = graph.object_names[0].split()[0]
    erased = frames.copy()
    erased[(frames == COLORS[colour]).all(-1)] = 0
    outcomes = _held(erased, graph)
    for rel, (_, outcome) in zip(graph.relationships, outcomes):
        assert outcome == ("object not drawn" if 0 in (rel.subject, rel.object) else "holds")


def test_a_still_video_fails_its_motion_triples_for_too_little_motion():
    frames, graph = _clip("dynamic")
    still = np.repeat(frames[:1], len(frames), axis=0)
    outcomes = _held(still, graph)
    dynamic = [outcome for kind, outcome in outcomes if kind == "dynamic"]
    assert dynamic and set(dynamic) == {"too little motion"}


def test_the_script_prints_the_table_for_a_folder(tmp_path):
    frames, graph = _clip("any")
    colour = graph.object_names[0].split()[0]
    erased = frames.copy()
    erased[(frames == COLORS[colour]).all(-1)] = 0
    write_video_folder(tmp_path / "gen", iter([(frames, graph, None, {}), (erased, graph, None, {})]), video_format="npy")
    result = subprocess.run([sys.executable, str(ROOT / "training" / "triple_diagnostics.py"), "--data", str(tmp_path / "gen")],
                            capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    lost = sum(0 in (rel.subject, rel.object) for rel in graph.relationships)
    total = 2 * len(graph.relationships)
    assert f"failed triples: {lost}, of them {lost} (100%) with an object not drawn" in result.stdout
    last_column = [line.split()[-1] for line in result.stdout.splitlines() if line.startswith(("holds", "triples"))]
    assert last_column == [str(total - lost), str(total)]
