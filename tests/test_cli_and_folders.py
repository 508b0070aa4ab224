"""The ``sg2vid`` command line and metadata.jsonl folders, used as a person would."""

import json
import subprocess
import sys

import numpy as np
import pytest

from sg2vid_diffusers.cli import main
from sg2vid_diffusers.data.sg_shapes import generate_clip
from sg2vid_diffusers.data.video_folder import MetadataError, SceneGraphVideoFolder
from sg2vid_diffusers.video_io import read_video, write_video

EXAMPLE = {"objects": ["red circle", "blue square"], "relationships": [[0, "left of", 1], [0, "above", 1]]}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "test"
    assert main(["make-dataset", "--output", str(out), "--split", "test", "--num-clips", "12", "--seed", "5"]) == 0
    return out


def test_make_dataset_writes_the_folder_layout(dataset):
    rows = [json.loads(line) for line in (dataset / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 12
    for i, row in enumerate(rows):
        clip, graph = generate_clip("test", i, seed=5)
        assert row["file_name"] == f"clips/{i:06d}.mp4"
        assert row["scene_graph"] == graph.to_json()
        assert np.allclose(row["boxes"], clip.boxes(), atol=1e-6)
        assert np.array_equal(read_video(dataset / row["file_name"]), clip.render())  # lossless
    folder = SceneGraphVideoFolder(dataset)
    assert len(folder) == 12 and folder[3].scene_graph == generate_clip("test", 3, seed=5)[1]


def test_make_dataset_refuses_to_overwrite(dataset, capsys):
    before = (dataset / "metadata.jsonl").read_text()
    assert main(["make-dataset", "--output", str(dataset), "--split", "train", "--num-clips", "2"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (dataset / "metadata.jsonl").read_text() == before


def test_the_folder_loads_with_hugging_face_datasets(dataset):
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset("json", data_files=str(dataset / "metadata.jsonl"), split="train")
    assert len(ds) == 12
    from sg2vid_diffusers import parse_scene_graph

    assert parse_scene_graph(ds[0]["scene_graph"]) == SceneGraphVideoFolder(dataset)[0].scene_graph


def test_evaluate_a_folder_prints_perfect_scores_for_ground_truth(dataset, capsys):
    assert main(["evaluate", "--data", str(dataset), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["num_videos"] == 12
    for key in ("object_recall", "relation_accuracy", "graph_accuracy", "shape_accuracy"):
        assert report[key] == 1.0
    assert report["spurious_per_video"] == 0.0


def test_evaluate_scores_a_corrupted_folder_lower(dataset, tmp_path, capsys):
    corrupted = tmp_path / "corrupted"
    corrupted.mkdir()
    (corrupted / "clips").symlink_to(dataset / "clips")
    lines = []
    for line in (dataset / "metadata.jsonl").read_text().splitlines():
        row = json.loads(line)
        for rel in row["scene_graph"]["relationships"]:
            rel["predicate"] = {"left of": "right of", "right of": "left of"}.get(rel["predicate"], rel["predicate"])
        lines.append(json.dumps(row))
    (corrupted / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    assert main(["evaluate", "--data", str(corrupted), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["relation_accuracy"] < 1.0


def test_evaluate_one_video(tmp_path, capsys):
    graph = tmp_path / "g.json"
    graph.write_text(json.dumps(EXAMPLE))
    video = tmp_path / "v.gif"
    assert main(["render", "--scene-graph", str(graph), "--output", str(video), "--seed", "3"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--scene-graph", str(graph), "--video", str(video), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["graph_accuracy"] == 1.0
    # The same video against the mirrored graph fails.
    graph.write_text(json.dumps({**EXAMPLE, "relationships": [[1, "left of", 0]]}))
    assert main(["evaluate", "--scene-graph", str(graph), "--video", str(video), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["graph_accuracy"] == 0.0


@pytest.mark.parametrize(
    "graph, message",
    [
        ({"objects": ["red circle", "blue sqare"]}, "objects[1].name"),
        ({"objects": ["red circle", "blue square"], "relationships": [[0, "left of", 3]]}, "relationships[0][2]"),
        ({"objects": ["red circle"], "relationships": [[0, "left of", 0]]}, "relationships[0]"),
        ({"objects": ["red circle", "blue square"], "relationships": [[0, "left of", 1, [0.5, 0.2]]]}, "relationships[0][3]"),
    ],
)
def test_render_refuses_bad_graphs_and_writes_nothing(tmp_path, capsys, graph, message):
    path = tmp_path / "g.json"
    path.write_text(json.dumps(graph))
    out = tmp_path / "v.mp4"
    assert main(["render", "--scene-graph", str(path), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert not out.exists() and list(tmp_path.iterdir()) == [path]


def test_invalid_json_file_is_reported(tmp_path, capsys):
    path = tmp_path / "g.json"
    path.write_text("{")
    assert main(["evaluate", "--scene-graph", str(path), "--video", str(path)]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_bad_metadata_line_names_the_line(dataset, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "clips").symlink_to(dataset / "clips")
    lines = (dataset / "metadata.jsonl").read_text().splitlines()
    row = json.loads(lines[2])
    row["scene_graph"]["relationships"].append([0, "left of", 9])
    lines[2] = json.dumps(row)
    (bad / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(MetadataError) as info:
        SceneGraphVideoFolder(bad)
    assert info.value.line_no == 3 and "scene_graph.relationships" in info.value.field
    assert main(["evaluate", "--data", str(bad)]) == 2
    assert "metadata.jsonl:3" in capsys.readouterr().err
    lines[2] = "{not json"
    (bad / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(MetadataError, match=r"metadata.jsonl:3: line"):
        SceneGraphVideoFolder(bad)


def test_console_script_entry_point_runs(tmp_path):
    out = tmp_path / "v.npy"
    result = subprocess.run(
        [sys.executable, "-m", "sg2vid_diffusers.cli", "render", "--scene-graph", json.dumps(EXAMPLE),
         "--output", str(out), "--num-frames", "8"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    video = np.load(out)
    assert video.shape == (8, 64, 64, 3) and video.dtype == np.uint8


def test_interrupted_dataset_writes_leave_nothing(tmp_path, monkeypatch):
    from sg2vid_diffusers.data import video_folder

    calls = {"n": 0}

    def failing_write(path, frames, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        write_video(path, frames, **kwargs)

    monkeypatch.setattr(video_folder, "write_video", failing_write)
    with pytest.raises(KeyboardInterrupt):
        video_folder.make_sg_shapes_dataset(tmp_path / "out", num_clips=5)
    assert list(tmp_path.iterdir()) == []
