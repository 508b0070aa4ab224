"""training/average_pipelines.py: the weighted mean of trained pipelines' UNet and graph encoder."""

import importlib.util
from pathlib import Path

import pytest
import torch

from sg2vid_diffusers.pipelines import SceneGraphToVideoPipeline
from tiny_models import tiny_encoder, tiny_pipeline, tiny_unet, tiny_vae

ROOT = Path(__file__).resolve().parent.parent
GRAPH = {"objects": ["red circle", "blue square"], "relationships": [[0, "left of", 1]]}

spec = importlib.util.spec_from_file_location("average_pipelines", ROOT / "training" / "average_pipelines.py")
average_pipelines = importlib.util.module_from_spec(spec)
spec.loader.exec_module(average_pipelines)


def _trained(seed: int) -> SceneGraphToVideoPipeline:
    """Two 'legs' of one model: the same VAE and scheduler, different UNet and encoder weights."""
    pipe = tiny_pipeline(0)
    pipe.unet, pipe.sg_encoder = tiny_unet(seed=seed).eval(), tiny_encoder(seed).eval()
    pipe.register_modules(unet=pipe.unet, sg_encoder=pipe.sg_encoder)
    pipe.register_to_config(default_guidance_scale=float(seed + 3))  # sampling defaults may differ
    return pipe


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("legs")
    for seed in (1, 2):
        _trained(seed).save_pretrained(root / f"leg{seed}")
    return root / "leg1", root / "leg2"


def _state(folder, part):
    return SceneGraphToVideoPipeline.from_pretrained(folder).components[part].state_dict()


@pytest.mark.parametrize("weights", [None, ["3", "1"]])
def test_the_output_is_the_weighted_mean_and_everything_else_is_the_first_source(sources, tmp_path, weights):
    out = tmp_path / "soup"
    average_pipelines.main([str(sources[0]), str(sources[1]), "--output_dir", str(out),
                            *(["--weights", *weights] if weights else [])])  # fmt: skip
    w0 = 0.5 if weights is None else 0.75
    for part in ("unet", "sg_encoder"):
        a, b, mean = _state(sources[0], part), _state(sources[1], part), _state(out, part)
        assert mean.keys() == a.keys()
        moved = 0
        for key, tensor in mean.items():
            if tensor.is_floating_point():
                torch.testing.assert_close(tensor, w0 * a[key] + (1 - w0) * b[key])
                moved += not torch.equal(a[key], b[key])
        assert moved > 0  # the two legs really differ, so the mean is neither of them
    for key, tensor in _state(out, "vae").items():
        assert torch.equal(tensor, _state(sources[0], "vae")[key])
    assert ("weight 0.75" if weights else "weight 0.5") in (out / "README.md").read_text()

    pipe = SceneGraphToVideoPipeline.from_pretrained(out)
    assert pipe.config.default_guidance_scale == 4.0  # the first source's
    pipe.set_progress_bar_config(disable=True)
    kw = dict(num_frames=2, height=16, width=16, num_inference_steps=2)
    first = pipe(scene_graph=GRAPH, generator=torch.Generator().manual_seed(0), **kw).frames
    again = pipe(scene_graph=GRAPH, generator=torch.Generator().manual_seed(0), **kw).frames
    assert first.shape[:2] == (1, 2) and (first == again).all()


def test_a_different_vae_is_refused_and_nothing_is_written(sources, tmp_path):
    other = _trained(3)
    other.vae = tiny_vae(seed=5)
    other.register_modules(vae=other.vae)
    other.save_pretrained(tmp_path / "other")
    out = tmp_path / "soup"
    with pytest.raises(average_pipelines.PipelineAverageError, match=r"vae\..*source 1 differs"):
        average_pipelines.main([str(sources[0]), str(tmp_path / "other"), "--output_dir", str(out)])
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["other"]


def test_a_different_architecture_is_refused_naming_the_field(sources, tmp_path):
    other = _trained(3)
    other.unet = tiny_unet(seed=3, cross_attention_dim=24)
    other.register_modules(unet=other.unet)
    with pytest.raises(average_pipelines.PipelineAverageError, match=r"unet\.config\.cross_attention_dim: source 1 has 24"):
        average_pipelines.average_pipelines([SceneGraphToVideoPipeline.from_pretrained(sources[0]), other])


@pytest.mark.parametrize("argv, message", [
    (["a"], "at least two"),
    (["a", "b", "--weights", "1"], "1 weights for 2 sources"),
    (["a", "b", "--weights", "1", "-1"], "index 1: -1"),
])  # fmt: skip
def test_bad_arguments_are_refused(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit:
        average_pipelines.parse_args([*argv, "--output_dir", str(tmp_path / "soup")])
    assert exit.value.code == 2 and message in capsys.readouterr().err


def test_an_existing_output_needs_overwrite(sources, tmp_path, capsys):
    (tmp_path / "soup").mkdir()
    with pytest.raises(SystemExit):
        average_pipelines.parse_args([str(sources[0]), str(sources[1]), "--output_dir", str(tmp_path / "soup")])
    assert "--overwrite" in capsys.readouterr().err
