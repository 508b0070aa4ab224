"""Motion where a graph asks for it: the subject's speed and the distance change of dynamic triples."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sg2vid_diffusers.data.sg_shapes import COLORS, SGShapesClip, ShapeTrack
from sg2vid_diffusers.data.video_folder import write_video_folder
from sg2vid_diffusers.evaluation.motion import dynamic_triple_motion
from sg2vid_diffusers.scene_graph import Relationship, SceneGraph, SceneObject

ROOT = Path(__file__).resolve().parent.parent
OBJECTS = (SceneObject("red circle"), SceneObject("blue square"))


def _clip():
    """The red circle runs at 2 px per frame toward the blue square, which stands still."""
    return SGShapesClip((ShapeTrack("red circle", (10.0, 32.0), (2.0, 0.0)), ShapeTrack("blue square", (54.0, 32.0))))


def test_a_moving_clip_its_frozen_copy_and_a_missing_object():
    frames = _clip().render()
    toward = SceneGraph(OBJECTS, (Relationship(0, "moving toward", 1), Relationship(0, "left of", 1)))
    away = SceneGraph(OBJECTS, (Relationship(1, "moving away from", 0, (0.5, 1.0)),))  # the square: no motion
    report = dynamic_triple_motion([(frames, toward), (frames, away)])
    assert report.speeds[0] == pytest.approx(2.0, abs=0.1) and report.speeds[1] == pytest.approx(0.0, abs=0.1)
    # toward: 16 frames at 2 px, the first two against the last two frames -> about -28 px
    assert report.changes["moving toward"] == [pytest.approx(-28.0, abs=1.5)]
    assert report.changes["moving away from"] == [pytest.approx(-12.0, abs=1.5)]  # half the span, wrong sign

    frozen = dynamic_triple_motion([(np.repeat(frames[:1], len(frames), axis=0), toward)])
    assert frozen.speeds == [0.0] and frozen.to_dict()["moving toward"]["still_share"] == 1.0

    erased = frames.copy()
    erased[-1][(frames[-1] == COLORS["blue"]).all(-1)] = 0  # gone in the span's last frame
    missing = dynamic_triple_motion([(erased, toward)])
    assert missing.undrawn == 1 and not missing.speeds and "1 left out" in missing.format_table()
    # drawn (15 of 16 frames), undetected at an end: 7 of the 8 (object, end frame) pairs, all 24 between
    figures = missing.to_dict()
    assert (figures["undrawn_absent"], figures["undrawn_at_ends"]) == (0, 1)
    assert figures["end_frame_detection"] == 7 / 8 and figures["inner_frame_detection"] == 1.0
    assert "0.88 of the span-end frames, 1.00 of the frames between" in missing.format_table()

    absent = frames.copy()
    absent[(frames == COLORS["blue"]).all(-1)] = 0  # never drawn: only the circle's frames count
    figures = dynamic_triple_motion([(absent, toward)]).to_dict()
    assert (figures["undrawn"], figures["undrawn_absent"], figures["undrawn_at_ends"]) == (1, 1, 0)
    assert figures["end_frame_detection"] == 1.0 and figures["inner_frame_detection"] == 1.0


def test_the_script_compares_a_folder_with_its_reference(tmp_path):
    frames = _clip().render()
    graph = SceneGraph(OBJECTS, (Relationship(0, "moving toward", 1),))
    moving = write_video_folder(tmp_path / "truth", [(frames, graph, None, {})], video_format="npy")
    still = write_video_folder(tmp_path / "gen", [(np.repeat(frames[:1], 16, axis=0), graph, None, {})], video_format="npy")
    command = [sys.executable, str(ROOT / "training" / "motion_diagnostics.py"), "--data", str(still), "--reference", str(moving)]
    result = subprocess.run(command + ["--json"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout)
    assert figures["data"]["subject_speed_mean"] == 0.0 and figures["reference"]["subject_speed_mean"] > 1.9
    assert figures["reference"]["moving toward"]["still_share"] == 0.0
