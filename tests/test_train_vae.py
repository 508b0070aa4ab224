"""training/train_vae.py end to end on a tiny SG-Shapes folder."""

import importlib.util
import os
import re
import shutil
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from processes import signal_when_ready
from safetensors.torch import load_file

from sg2vid_diffusers.data.video_folder import make_sg_shapes_dataset

ROOT = Path(__file__).resolve().parent.parent
TINY = '{"block_out_channels": [8, 8], "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"], "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"], "norm_num_groups": 4}'


def _script():
    spec = importlib.util.spec_from_file_location("train_vae", ROOT / "training" / "train_vae.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("vae-data")
    make_sg_shapes_dataset(root / "train", "train", num_clips=4, num_frames=4)
    make_sg_shapes_dataset(root / "validation", "validation", num_clips=2, num_frames=4)
    return root


pytestmark = pytest.mark.usefixtures("one_thread")


def _run(data, out, steps, extra=()):
    _script().main([
        "--train_data_dir", str(data / "train"), "--output_dir", str(out), "--vae_config", TINY,
        "--max_train_steps", str(steps), "--train_batch_size", "4", "--checkpointing_steps", "2",
        "--lr_warmup_steps", "0", "--seed", "3", *extra,
    ])  # fmt: skip


def _tune(data, base, out, extra=(), steps=2):
    """A run that continues the VAE in ``base`` (``--pretrained_vae``)."""
    _script().main([
        "--train_data_dir", str(data / "train"), "--output_dir", str(out), "--pretrained_vae", str(base),
        "--max_train_steps", str(steps), "--train_batch_size", "4", "--checkpointing_steps", "2",
        "--lr_warmup_steps", "0", "--learning_rate", "1e-2", "--seed", "3", *extra,
    ])  # fmt: skip


def test_trains_validates_and_saves_a_loadable_vae(data, tmp_path):
    out = tmp_path / "vae"
    _run(data, out, 2, ["--validation_data_dir", str(data / "validation"), "--validation_steps", "2"])
    vae = AutoencoderKL.from_pretrained(out)
    assert vae.config.scaling_factor != AutoencoderKL().config.scaling_factor  # measured, not the default
    card = (out / "README.md").read_text()
    assert "conformance/object_recall" in card and "mse" in card


def test_resume_continues_exactly(data, tmp_path):
    straight = tmp_path / "straight"
    _run(data, straight, 4)
    interrupted = tmp_path / "interrupted"
    shutil.copytree(straight / "checkpoint-2", interrupted / "checkpoint-2")  # as if killed after step 2
    (interrupted / "checkpoint-4.tmp").mkdir()  # and in the middle of writing checkpoint-4
    _run(data, interrupted, 4, ["--resume_from_checkpoint", "latest"])
    a = load_file(straight / "diffusion_pytorch_model.safetensors")
    b = load_file(interrupted / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_sigterm_stops_after_a_step_with_its_checkpoint_and_no_model(data, tmp_path):
    out = tmp_path / "vae"
    command = [
        sys.executable, str(ROOT / "training" / "train_vae.py"), "--train_data_dir", str(data / "train"),
        "--output_dir", str(out), "--vae_config", TINY, "--max_train_steps", "100000", "--train_batch_size", "4",
        "--checkpointing_steps", "2", "--lr_warmup_steps", "0", "--seed", "3",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    code, log = signal_when_ready(
        command, tmp_path / "log.txt",
        lambda _: (out / "checkpoint-2").is_dir(),  # saved inside the loop: the stop handlers are in place
        signal.SIGTERM, env=env, cwd=ROOT,
    )  # fmt: skip
    assert code == 128 + signal.SIGTERM, log[-3000:]
    step = int(re.search(r"Stopped at step (\d+) of 100000 \(SIGTERM\)", log).group(1))
    assert (out / f"checkpoint-{step}").is_dir() and step >= 2
    assert not (out / "diffusion_pytorch_model.safetensors").exists()  # not finished: no model


def test_decoder_only_keeps_the_latent_space_and_trains_the_decoder(data, tmp_path):
    base = tmp_path / "base"
    _run(data, base, 2)
    tuned = tmp_path / "tuned"
    _tune(data, base, tuned, ["--train_decoder_only", "--decoder_noise", "0.5", "--reconstruction_loss", "l1"])
    a = load_file(base / "diffusion_pytorch_model.safetensors")
    b = load_file(tuned / "diffusion_pytorch_model.safetensors")
    encoder_side = [k for k in a if k.startswith(("encoder.", "quant_conv."))]
    decoder_side = [k for k in a if k.startswith(("decoder.", "post_quant_conv."))]
    assert encoder_side and decoder_side
    assert all(torch.equal(a[k], b[k]) for k in encoder_side)  # the UNet's latent space is untouched
    assert any(not torch.equal(a[k], b[k]) for k in decoder_side)
    base_config, tuned_config = AutoencoderKL.load_config(base), AutoencoderKL.load_config(tuned)
    assert tuned_config["scaling_factor"] == base_config["scaling_factor"]
    assert "decoder fine-tuned from" in (tuned / "README.md").read_text()


def test_decoder_noise_changes_what_the_decoder_learns(data, tmp_path):
    base = tmp_path / "base"
    _run(data, base, 2)

    def tune(out, noise):
        _tune(data, base, out, ["--train_decoder_only", "--decoder_noise", noise])
        return load_file(out / "diffusion_pytorch_model.safetensors")

    clean, noisy = tune(tmp_path / "clean", "0"), tune(tmp_path / "noisy", "2")
    assert any(not torch.equal(clean[k], noisy[k]) for k in clean if k.startswith("decoder."))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--train_decoder_only"], "--pretrained_vae"),
        (["--decoder_noise", "0.5"], "--train_decoder_only"),
        (["--pretrained_vae", "x", "--train_decoder_only", "--decoder_noise", "-1"], "--decoder_noise"),
        (["--pretrained_vae", "x", "--train_decoder_only", "--decoder_noise", "nan"], "--decoder_noise"),
        (["--colour_separation_weight", "-1"], "--colour_separation_weight must be"),
        (["--pretrained_vae", "x", "--train_decoder_only", "--colour_separation_weight", "1"], "keeps fixed"),
        (["--latent_anchor_weight", "1"], "give --pretrained_vae"),
        (["--pretrained_vae", "x", "--latent_anchor_weight", "-1"], "--latent_anchor_weight must be"),
        (["--pretrained_vae", "x", "--train_decoder_only", "--latent_anchor_weight", "1"], "keeps fixed"),
    ],
)
def test_decoder_flags_are_checked(extra, message, tmp_path, capsys):
    with pytest.raises(SystemExit):
        _script().parse_args(["--train_data_dir", "d", "--output_dir", str(tmp_path), *extra])
    assert message in capsys.readouterr().err


def test_colour_cell_labels_name_the_colour_covering_each_latent_cell():
    from sg2vid_diffusers.data.sg_shapes import COLORS, render_frames

    frame = render_frames(["magenta square"], np.full((1, 1, 2), 32.0), 64)  # (1, 64, 64, 3), centred
    labels = _script().colour_cell_labels(torch.from_numpy(frame).permute(0, 3, 1, 2), 8)
    assert labels.shape == (1, 8, 8)
    magenta = list(COLORS).index("magenta")
    assert set(labels.unique().tolist()) == {-1, magenta}  # the square's cells, and nothing else
    assert labels[0, 3:5, 3:5].eq(magenta).all() and labels[0, 0].eq(-1).all()


def test_colour_separation_loss_is_low_only_for_colours_apart_whatever_the_scale():
    loss = _script().colour_separation_loss
    directions = torch.eye(6, 8)
    labels = torch.tensor([[[0, 4], [-1, -1]]])  # a red cell and a magenta cell; the rest not counted
    apart = torch.zeros(1, 8, 2, 2)
    apart[0, 0, 0, 0], apart[0, 4, 0, 1] = 3.0, 3.0  # each along its own colour's direction
    together = torch.zeros(1, 8, 2, 2)
    together[0, 0, 0, 0], together[0, 0, 0, 1] = 3.0, 3.0  # magenta where red is
    assert loss(apart, labels, directions) < 0.5 * loss(together, labels, directions)
    assert torch.allclose(loss(10 * apart, labels, directions), loss(apart, labels, directions))  # scale-free
    assert torch.allclose(loss(apart, labels, 5 * directions), loss(apart, labels, directions))
    assert loss(apart, torch.full_like(labels, -1), directions) == 0


def test_colour_separation_trains_and_is_recorded(data, tmp_path):
    out = tmp_path / "vae"
    _run(data, out, 2, ["--colour_separation_weight", "1"])
    vae = AutoencoderKL.from_pretrained(out)  # the probe is not part of the saved VAE
    assert "colour_directions" not in " ".join(load_file(out / "diffusion_pytorch_model.safetensors"))
    assert vae.config.latent_channels == 4
    assert "colour separation weight 1" in (out / "README.md").read_text()
    plain = tmp_path / "plain"
    _run(data, plain, 2)
    a, b = load_file(out / "diffusion_pytorch_model.safetensors"), load_file(plain / "diffusion_pytorch_model.safetensors")
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("encoder."))  # it moved the encoder


def test_latent_anchor_keeps_the_latents_near_the_starting_vae(data, tmp_path):
    base = tmp_path / "base"
    _run(data, base, 2)

    def tune(out, anchor):
        _tune(data, base, out, ["--colour_separation_weight", "1", "--latent_anchor_weight", anchor], steps=3)
        return AutoencoderKL.from_pretrained(out).eval()

    free, anchored = tune(tmp_path / "free", "0"), tune(tmp_path / "anchored", "1000")
    assert not any("anchor" in k for k in load_file(tmp_path / "anchored" / "diffusion_pytorch_model.safetensors"))
    assert "latent anchor weight 1000" in (tmp_path / "anchored" / "README.md").read_text()
    start = AutoencoderKL.from_pretrained(base).eval()
    from sg2vid_diffusers.data.video_folder import SceneGraphVideoFolder

    script = _script()
    x = script.to_unit_range(script.load_frames(SceneGraphVideoFolder(data / "train")))
    with torch.no_grad():
        z0 = start.encode(x).latent_dist.mean

        def drift(vae):
            return float(((vae.encode(x).latent_dist.mean - z0) ** 2).mean())

        assert drift(anchored) < 0.5 * drift(free)  # the anchor holds the latent space the UNet knows
