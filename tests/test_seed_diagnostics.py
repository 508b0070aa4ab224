"""The graph or the seed: seed_diagnostics counts, per graph, triple and object, in how many folders
of videos of the same graphs each holds, and the best-of-N ceiling of any selection among them."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sg2vid_diffusers.data.sg_shapes import COLORS, generate_clip
from sg2vid_diffusers.data.video_folder import SceneGraphVideoFolder, write_video_folder

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "training"))
from seed_diagnostics import seed_agreement  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _clips(n=3):
    """The first ``n`` test clips with two or more objects and a triple."""
    clips = []
    for i in range(300):
        clip, graph = generate_clip("test", i)
        if len(graph.objects) >= 2 and graph.relationships:
            clips.append((clip.render(), graph))
        if len(clips) == n:
            return clips
    raise AssertionError("not enough clips")


def _erased(frames, graph, k=0):
    out = frames.copy()
    out[(frames == COLORS[graph.object_names[k].split()[0]]).all(-1)] = 0
    return out


def _folder(path, videos):
    return SceneGraphVideoFolder(write_video_folder(path, [(f, g, None, {}) for f, g in videos], video_format="npy"))


def test_a_failure_every_folder_repeats_is_the_graphs_and_best_of_picks_each_graphs_best(tmp_path):
    clips = _clips()
    (f0, g0), (f1, g1), (f2, g2) = clips
    # graph 0 loses its first object in both folders, graph 1 in the second folder only; graph 2 is whole.
    a = _folder(tmp_path / "a", [(_erased(f0, g0), g0), (f1, g1), (f2, g2)])
    b = _folder(tmp_path / "b", [(_erased(f0, g0), g0), (_erased(f1, g1), g1), (f2, g2)])
    result = seed_agreement([a, b])
    assert result["graphs_satisfied"] == [1, 1, 1]
    assert result["objects_drawn"] == [1, 1, sum(len(g.objects) for _, g in clips) - 2]
    lost0 = sum(0 in (r.subject, r.object) for r in g0.relationships)
    lost1 = sum(0 in (r.subject, r.object) for r in g1.relationships)
    assert result["triples_held"][0] == lost0 and result["triples_held"][1] == lost1
    assert sum(result["triples_held"]) == sum(len(g.relationships) for _, g in clips)
    assert result["folders"][0]["relation_accuracy"] > result["folders"][1]["relation_accuracy"]
    assert result["best_of"] == result["folders"][0]  # the first folder is each graph's best
    assert result["best_of"]["graph_accuracy"] == pytest.approx(2 / 3)


def test_folders_of_other_graphs_are_refused(tmp_path):
    clips = _clips()
    a = _folder(tmp_path / "a", clips[:2])
    with pytest.raises(ValueError, match="different numbers of videos"):
        seed_agreement([a, _folder(tmp_path / "b", clips)])
    with pytest.raises(ValueError, match="video 0 has a different graph"):
        seed_agreement([a, _folder(tmp_path / "c", [clips[1], clips[0]])])
    with pytest.raises(ValueError, match="two or more folders"):
        seed_agreement([a])


def test_the_script_prints_the_table_and_json(tmp_path):
    clips = _clips(2)
    for name in ("a", "b"):
        _folder(tmp_path / name, clips)
    command = [sys.executable, str(ROOT / "training" / "seed_diagnostics.py"), "--data", str(tmp_path / "a"), str(tmp_path / "b")]
    result = subprocess.run(command + ["--json"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout)
    assert figures["graphs_satisfied"] == [0, 0, 2] and figures["best_of"]["relation_accuracy"] == 1.0
    table = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert table.returncode == 0 and "best of 2" in table.stdout and "triples held" in table.stdout
