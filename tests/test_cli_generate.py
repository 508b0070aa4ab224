"""`sg2vid generate` with a small pipeline saved to disk, as a user would run it."""

import json

import numpy as np
import pytest

from sg2vid_diffusers.cli import main
from sg2vid_diffusers.data.video_folder import SceneGraphVideoFolder
from sg2vid_diffusers.video_io import read_video

from tiny_models import tiny_pipeline

GRAPH = {"objects": ["red circle", "blue square"], "relationships": [[0, "left of", 1, [0.0, 0.5]]]}
FAST = ["--num-frames", "4", "--num-inference-steps", "2"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "pipe"
    tiny_pipeline().save_pretrained(path)
    return path


def test_generate_one_video_with_a_preview(model_dir, tmp_path):
    graph = tmp_path / "g.json"
    graph.write_text(json.dumps(GRAPH))
    out, preview = tmp_path / "v.gif", tmp_path / "p.png"
    args = ["generate", "--scene-graph", str(graph), "--output", str(out), "--model", str(model_dir), "--preview", str(preview)]
    assert main(args + FAST) == 0
    video = read_video(out)
    assert video.shape == (4, 16, 16, 3)
    from PIL import Image

    assert Image.open(preview).size[0] > 4 * 16
    # Same seed, same video; another seed, another video.
    again = tmp_path / "again.gif"
    assert main(["generate", "--scene-graph", str(graph), "--output", str(again), "--model", str(model_dir)] + FAST) == 0
    assert np.array_equal(read_video(again), video)
    other = tmp_path / "other.gif"
    assert main(["generate", "--scene-graph", str(graph), "--output", str(other), "--model", str(model_dir), "--seed", "1"] + FAST) == 0
    assert not np.array_equal(read_video(other), video)


def test_generate_a_folder_from_jsonl_scores_with_evaluate(model_dir, tmp_path, capsys):
    graphs = tmp_path / "graphs.jsonl"
    rows = [GRAPH, {"objects": ["green triangle"]}, {"objects": ["cyan square", "red circle"], "relationships": [[1, "above", 0]]}]
    graphs.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "generated"
    args = ["generate", "--scene-graph", str(graphs), "--output-dir", str(out), "--model", str(model_dir), "--batch-size", "2"]
    assert main(args + FAST) == 0
    folder = SceneGraphVideoFolder(out)
    assert [r.scene_graph.object_names for r in folder] == [["red circle", "blue square"], ["green triangle"], ["cyan square", "red circle"]]
    assert folder[2].read_frames().shape == (4, 16, 16, 3)
    capsys.readouterr()
    assert main(["evaluate", "--data", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["num_videos"] == 3
    # An existing folder is not overwritten without --overwrite.
    assert main(args + FAST) == 2
    assert "--overwrite" in capsys.readouterr().err
    # Video i does not depend on the batch it was generated in.
    one = tmp_path / "one"
    assert main(["generate", "--scene-graph", str(graphs), "--output-dir", str(one), "--model", str(model_dir), "--batch-size", "1"] + FAST) == 0
    for a, b in zip(SceneGraphVideoFolder(out), SceneGraphVideoFolder(one)):
        assert np.abs(a.read_frames().astype(int) - b.read_frames().astype(int)).max() <= 1


@pytest.mark.parametrize(
    "graph, field",
    [
        ({"objects": ["red circle", "blue sqare"]}, "objects[1].name"),
        ({"objects": ["red circle", "blue square"], "relationships": [[0, "near", 1]]}, "relationships[0].predicate"),
        ({"objects": ["red circle", "blue square"], "relationships": [[0, "left of", 2]]}, "relationships[0][2]"),
        ({"objects": ["red circle", "blue square"], "relationships": [[0, "left of", 1, [0.7, 0.3]]]}, "relationships[0][3]"),
    ],
)
def test_bad_graphs_fail_before_compute_and_write_nothing(model_dir, tmp_path, capsys, graph, field):
    path = tmp_path / "g.json"
    path.write_text(json.dumps(graph))
    out, preview = tmp_path / "v.mp4", tmp_path / "p.png"
    args = ["generate", "--scene-graph", str(path), "--output", str(out), "--model", str(model_dir), "--preview", str(preview)]
    assert main(args + FAST) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: ") and field in last
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.json"]


def test_a_bad_line_in_a_jsonl_fails_before_anything_is_generated(model_dir, tmp_path, capsys):
    graphs = tmp_path / "graphs.jsonl"
    graphs.write_text(json.dumps(GRAPH) + "\n" + json.dumps({"objects": ["purple circle"]}) + "\n")
    out = tmp_path / "generated"
    assert main(["generate", "--scene-graph", str(graphs), "--output-dir", str(out), "--model", str(model_dir)] + FAST) == 2
    assert "scene_graph[1].objects[0].name" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "exactly one of --output"),
        (["--output", "v.avi"], "--output must end"),
        (["--output-dir", "d", "--preview", "p.png"], "--preview goes with --output"),
        (["--output", "v.mp4", "--num-frames", "0"], "--num-frames"),
        (["--output", "v.mp4", "--motion-scale", "-0.5"], "--motion-scale must be a finite number >= 0, got -0.5"),
        (["--output", "v.mp4", "--motion-scale", "nan"], "--motion-scale must be a finite number >= 0"),
        (["--output", "v.mp4", "--motion-scale", "2"], "--motion-scale 2: this model has no moving layout"),
        (["--output", "v.mp4", "--layout-scale", "-1"], "--layout-scale must be a finite number >= 0, got -1"),
        (["--output", "v.mp4", "--layout-scale", "inf"], "--layout-scale must be a finite number >= 0"),
        (["--output", "v.mp4", "--layout-scale", "2"], "--layout-scale 2: this model has no layout bias"),
        (["--output", "v.mp4", "--eta", "-0.5"], "--eta must be a finite number >= 0, got -0.5"),
        (["--output", "v.mp4", "--candidates", "0"], "--candidates must be >= 1, got 0"),
        (["--output", "v.mp4", "--candidates", "2", "--drop-graph"], "--drop-graph has none"),
    ],
)
def test_bad_arguments(model_dir, tmp_path, capsys, extra, message):
    path = tmp_path / "g.json"
    path.write_text(json.dumps(GRAPH))
    assert main(["generate", "--scene-graph", str(path), "--model", str(model_dir)] + extra) == 2
    assert message in capsys.readouterr().err


def test_missing_model_is_a_clear_error(tmp_path, capsys):
    path = tmp_path / "g.json"
    path.write_text(json.dumps(GRAPH))
    assert main(["generate", "--scene-graph", str(path), "--output", str(tmp_path / "v.mp4"), "--model", str(tmp_path / "nope")]) == 2
    assert "error:" in capsys.readouterr().err


def test_motion_scale_reaches_a_moving_layout_model(tmp_path):
    """--motion-scale is the pipeline's motion_scale: 1 is the model's default, 0 stills the boxes."""
    from test_pipeline import moving_pipeline

    pipe = moving_pipeline()
    pipe.save_pretrained(tmp_path / "moving")
    path = tmp_path / "g.json"
    path.write_text(json.dumps(GRAPH))
    videos = {}
    for scale in (None, "1", "0"):
        out = tmp_path / f"{scale}.npy"
        extra = [] if scale is None else ["--motion-scale", scale]
        assert main(["generate", "--scene-graph", str(path), "--output", str(out), "--model", str(tmp_path / "moving")] + FAST + extra) == 0
        videos[scale] = read_video(out)
    assert np.array_equal(videos[None], videos["1"])
    assert not np.array_equal(videos["0"], videos["1"])


def test_layout_scale_reaches_a_layout_bias_model(tmp_path):
    """--layout-scale is the pipeline's layout_scale: 1 is the model's default, others change the video."""
    from test_pipeline import moving_pipeline

    pipe = moving_pipeline()
    pipe.save_pretrained(tmp_path / "layout")
    path = tmp_path / "g.json"
    path.write_text(json.dumps(GRAPH))
    videos = {}
    for scale in (None, "1", "3"):
        out = tmp_path / f"{scale}.npy"
        extra = [] if scale is None else ["--layout-scale", scale]
        assert main(["generate", "--scene-graph", str(path), "--output", str(out), "--model", str(tmp_path / "layout")] + FAST + extra) == 0
        videos[scale] = read_video(out)
    assert np.array_equal(videos[None], videos["1"])
    assert not np.array_equal(videos["3"], videos["1"])


def test_eta_reaches_the_scheduler_and_the_seed_still_decides(model_dir, tmp_path):
    """--eta 1 draws noise at every step from each video's own seed: a folder of two graphs gives
    each video what it gets alone, and it differs from the deterministic default."""
    graphs = tmp_path / "graphs.jsonl"
    graphs.write_text(json.dumps(GRAPH) + "\n" + json.dumps(GRAPH) + "\n")
    out = tmp_path / "eta1"
    assert main(["generate", "--scene-graph", str(graphs), "--output-dir", str(out), "--model", str(model_dir), "--eta", "1"] + FAST) == 0
    path = tmp_path / "g.json"
    path.write_text(json.dumps(GRAPH))
    for seed in (0, 1):
        alone = tmp_path / f"alone{seed}.npy"
        assert main(["generate", "--scene-graph", str(path), "--output", str(alone), "--model", str(model_dir),
                     "--eta", "1", "--seed", str(seed)] + FAST) == 0  # fmt: skip
        in_folder = read_video(out / "clips" / f"{seed:06d}.mp4")
        assert np.abs(in_folder.astype(int) - read_video(alone)).max() <= 2  # mp4 against npy
    default = tmp_path / "eta0.npy"
    assert main(["generate", "--scene-graph", str(path), "--output", str(default), "--model", str(model_dir)] + FAST) == 0
    assert not np.array_equal(read_video(default), read_video(tmp_path / "alone0.npy"))


def test_candidates_reach_the_pipeline_and_the_first_is_the_seeds_own_video(model_dir, tmp_path):
    """--candidates N is the pipeline's num_candidates: 1 is the plain video, and with N the video is
    one of the N the seed's generator draws (candidate 0 is the seed's own); each is deterministic."""
    import torch

    from sg2vid_diffusers import SceneGraphToVideoPipeline

    path = tmp_path / "g.json"
    path.write_text(json.dumps(GRAPH))
    videos = {}
    for n in (None, "1", "3", "3b"):
        out = tmp_path / f"{n}.npy"
        extra = [] if n is None else ["--candidates", n[0]]
        assert main(["generate", "--scene-graph", str(path), "--output", str(out), "--model", str(model_dir)] + FAST + extra) == 0
        videos[n] = read_video(out)
    assert np.array_equal(videos[None], videos["1"]) and np.array_equal(videos["3"], videos["3b"])
    pipe = SceneGraphToVideoPipeline.from_pretrained(model_dir, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(scene_graph=GRAPH, num_frames=4, num_inference_steps=2, num_candidates=3, generator=torch.Generator().manual_seed(0))
    assert np.array_equal((out.frames[0] * 255).round().astype("uint8"), videos["3"])
