"""The built-in SG-Shapes model that ships inside the package: small fp16 safetensors, offline
loading in fp32, the CLI's default model, deterministic. (Its quality is measured by the recipe's
evaluate stage and reported in the README; it does not meet the targets yet.)"""

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from sg2vid_diffusers import SceneGraphToVideoPipeline
from sg2vid_diffusers.builtin import builtin_model_path
from sg2vid_diffusers.cli import main
from sg2vid_diffusers.video_io import read_video

GRAPH = {"objects": ["red circle", "blue square"], "relationships": [[0, "left of", 1]]}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pipe():
    pipe = SceneGraphToVideoPipeline.from_builtin()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_the_shipped_folder_is_small_fp16_safetensors():
    folder = builtin_model_path()
    files = [f for f in folder.rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in files) <= 20 * 2**20
    assert not [f for f in files if f.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl")]
    weights = [f for f in files if f.suffix == ".safetensors"]
    assert {f.parent.name for f in weights} >= {"unet", "vae", "sg_encoder"}
    for path in weights:
        with safe_open(str(path), "pt") as f:
            dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
        assert dtypes <= {"F16", "I64", "BOOL"}, (path, dtypes)
    card = (folder / "README.md").read_text()
    assert "wall time" in card and "steps" in card  # the recipe's record: data, steps, wall time, figures


def test_from_builtin_computes_in_fp32_and_the_same_seed_gives_the_same_video(pipe):
    assert {p.dtype for p in pipe.unet.parameters()} == {torch.float32}
    run = lambda seed: pipe(  # noqa: E731
        scene_graph=GRAPH, num_frames=8, num_inference_steps=4, generator=torch.Generator().manual_seed(seed)
    ).frames[0]
    first, again, other = run(0), run(0), run(1)
    assert first.shape == (8, 64, 64, 3)
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).max() > 0.1


def test_generate_uses_the_builtin_model_by_default(tmp_path):
    graph = tmp_path / "g.json"
    graph.write_text(json.dumps(GRAPH))
    out = tmp_path / "v.npy"
    args = ["generate", "--scene-graph", str(graph), "--output", str(out), "--num-frames", "8", "--num-inference-steps", "4"]
    assert main(args) == 0
    assert read_video(out).shape == (8, 64, 64, 3)
