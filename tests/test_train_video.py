"""training/train_video.py end to end on tiny models (from our pipeline folder, from a text-to-video
backbone, from --unet_config; LoRA; resume; two processes; validation videos), and the library
pieces it rests on (sg2vid_diffusers.training_utils): graph dropout, the loss, latents, what trains."""

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from diffusers import DDIMScheduler, DDPMScheduler, UNet3DConditionModel
from peft import LoraConfig
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from processes import signal_when_ready
from tiny_models import tiny_encoder, tiny_pipeline, tiny_text_encoder, tiny_unet, tiny_vae

from sg2vid_diffusers import SceneGraphEncoder, SceneGraphToVideoPipeline, collate_scene_graphs
from sg2vid_diffusers.conditioning import encode_graph_context
from sg2vid_diffusers.data.sg_shapes import sg_shapes_vocabulary
from sg2vid_diffusers.data.video_folder import make_sg_shapes_dataset
from sg2vid_diffusers.models.unet_3d_graph import is_graph_weight, lora_target_modules
from sg2vid_diffusers.pretraining import object_box_rows
from sg2vid_diffusers.scene_graph import parse_scene_graphs
from sg2vid_diffusers.training_utils import (
    EpochBatches,
    GraphConditionedDenoiser,
    WholeClipBatches,
    diffusion_loss,
    encode_videos,
    clip_motion,
    layout_loss,
    layout_readout,
    motion_readout,
    resize_videos,
    sample_frame_windows,
    sample_graph_dropout,
    set_trainable_parameters,
    take_frame_windows,
)
from sg2vid_diffusers.utils import vae_scale_factor

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "training" / "train_video.py"
GRAPHS = [
    {"objects": ["red circle", "blue square"], "relationships": [[0, "left of", 1]]},
    {"objects": ["green square", "red triangle"], "relationships": [[1, "below", 0, [0.0, 0.5]]]},  # dynamic
]


pytestmark = pytest.mark.usefixtures("one_thread")


def load_script():
    spec = importlib.util.spec_from_file_location("train_video", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


script = load_script()


def train(*argv):
    """Run the script in this process (a fresh Accelerate state each time: the kernels stay warm)."""
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    script.main(script.parse_args([str(a) for a in argv]))


def generate(folder, lora=False):
    pipe = SceneGraphToVideoPipeline.from_pretrained(folder)
    if lora:
        pipe.load_lora_weights(folder)
    pipe.set_progress_bar_config(disable=True)
    frames = pipe(
        scene_graph=GRAPHS, num_frames=4, height=16, width=16, num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
    ).frames  # fmt: skip
    assert frames.shape == (2, 4, 16, 16, 3) and np.isfinite(frames).all()
    return frames


def weights(folder, component):
    return load_file(Path(folder) / component / "diffusion_pytorch_model.safetensors")


def first_clip_posterior(work, vae):
    """The latent posterior of the first training clip of ``work`` at the training resolution (16), as
    the latent cache should hold it: (F, C, h, w)."""
    first = json.loads((work / "data" / "metadata.jsonl").read_text().splitlines()[0])
    clip = np.load(work / "data" / first["file_name"])
    videos = resize_videos(torch.from_numpy(clip).permute(0, 3, 1, 2)[None].float() / 255, 16)
    with torch.no_grad():
        return vae.encode(videos[0] * 2 - 1).latent_dist


def assert_same(got, expected, keys):
    for key in keys:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, msg=key)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """SG-Shapes clips (64x64, 4 frames; trained at 16x16 = the tiny UNet's 8x8 latents), a tiny
    pipeline folder, a tiny encoder folder and a validation graph file."""
    root = tmp_path_factory.mktemp("train_video")
    make_sg_shapes_dataset(root / "data", num_clips=8, num_frames=4, video_format="npy")
    tiny_pipeline().save_pretrained(root / "pipe")
    tiny_encoder(seed=1).save_pretrained(root / "encoder")
    (root / "graphs.jsonl").write_text("".join(json.dumps(g) + "\n" for g in GRAPHS))
    return root


def common(work, output_dir, *extra):
    return [
        "--train_data_dir", work / "data",
        "--output_dir", output_dir,
        "--resolution", 16,
        "--train_batch_size", 2,
        "--learning_rate", "1e-3",
        "--lr_warmup_steps", 0,
        "--report_to", "none",
        *extra,
    ]  # fmt: skip


# ----------------------------------------------------------------------------- the script, end to end


@pytest.fixture(scope="module")
def graph_run(work):
    """From a pipeline folder, graph weights only: 4 steps, EMA, Min-SNR, checkpoints every 2 steps,
    validation videos at step 4, TensorBoard."""
    out = work / "graph_run"
    train(
        "--pretrained_model_name_or_path", work / "pipe",
        *common(work, out, "--max_train_steps", 4, "--checkpointing_steps", 2, "--use_ema", "--snr_gamma", 5,
                "--validation_graphs", work / "graphs.jsonl", "--validation_steps", 4,
                "--num_validation_inference_steps", 2, "--report_to", "tensorboard"),
    )  # fmt: skip
    return out


def test_only_graph_weights_train_and_the_pipeline_folder_generates(graph_run, work):
    unet, original_unet = weights(graph_run, "unet"), weights(work / "pipe", "unet")
    assert unet.keys() == original_unet.keys()
    assert_same(unet, original_unet, [k for k in unet if not is_graph_weight(k)])  # frozen backbone
    assert not torch.equal(unet["graph_local_proj.weight"], original_unet["graph_local_proj.weight"])
    for component in ("sg_encoder", "vae"):  # frozen encoder, frozen VAE
        got, expected = weights(graph_run, component), weights(work / "pipe", component)
        assert_same(got, expected, expected)

    generate(graph_run)
    card = (graph_run / "README.md").read_text()
    assert "library_name: diffusers" in card and "steps: 4" in card and "wall time" in card
    assert "8 clips of 4 frames" in card and "Min-SNR gamma 5.0" in card and "EMA" in card
    assert sorted(p.name for p in graph_run.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    # checkpoints hold the weights that train, not the frozen backbone
    saved = load_file(graph_run / "checkpoint-2" / "trained_weights.safetensors")
    assert saved and all(is_graph_weight(k.removeprefix("unet.")) for k in saved)


def test_graph_positions_are_added_to_a_trained_pipeline_and_train_with_the_graph_weights(work, tmp_path):
    out = tmp_path / "positions"
    train("--pretrained_model_name_or_path", work / "pipe", "--graph_position_dim", 8,
          *common(work, out, "--max_train_steps", 2, "--checkpointing_steps", 2))  # fmt: skip
    unet, original_unet = weights(out, "unet"), weights(work / "pipe", "unet")
    new = sorted(set(unet) - set(original_unet))
    assert new and all(key.endswith(".processor.to_q_pos.weight") for key in new)
    assert all(unet[key].abs().sum() > 0 for key in new)  # trained from zero
    assert_same(unet, original_unet, [k for k in original_unet if not is_graph_weight(k)])  # frozen backbone
    assert json.loads((out / "unet" / "config.json").read_text())["graph_position_dim"] == 8
    saved = load_file(out / "checkpoint-2" / "trained_weights.safetensors")
    assert {f"unet.{key}" for key in new} <= set(saved)
    generate(out)
    with pytest.raises(SystemExit):
        train("--pretrained_model_name_or_path", work / "pipe", "--graph_position_dim", 6,
              *common(work, tmp_path / "bad", "--max_train_steps", 1))  # fmt: skip
    assert not (tmp_path / "bad").exists()


def test_frame_times_are_added_to_a_trained_pipeline_and_train_on_frame_windows(work, tmp_path):
    out = tmp_path / "frame_times"
    train("--pretrained_model_name_or_path", work / "pipe", "--frame_time_dim", 8, "--frame_window", 2,
          *common(work, out, "--max_train_steps", 2))  # fmt: skip
    unet, original_unet = weights(out, "unet"), weights(work / "pipe", "unet")
    new = sorted(set(unet) - set(original_unet))
    assert new == sorted(f"frame_time_embedding.linear_{i}.{p}" for i in (1, 2) for p in ("weight", "bias"))
    assert unet["frame_time_embedding.linear_2.weight"].abs().sum() > 0  # trained from zero
    assert_same(unet, original_unet, [k for k in original_unet if not is_graph_weight(k)])  # frozen backbone
    assert json.loads((out / "unet" / "config.json").read_text())["frame_time_dim"] == 8
    generate(out)
    with pytest.raises(SystemExit):
        train("--pretrained_model_name_or_path", work / "pipe", "--frame_time_dim", 3,
              *common(work, tmp_path / "bad", "--max_train_steps", 1))  # fmt: skip
    assert not (tmp_path / "bad").exists()


def test_the_moving_layout_is_added_to_a_trained_pipeline_and_its_gate_trains(work, tmp_path):
    out = tmp_path / "layout_motion"
    train("--pretrained_model_name_or_path", work / "pipe", "--graph_layout_bias", "--graph_layout_motion",
          "--train_sg_encoder", "--layout_loss_weight", 1, "--frame_window", 2,
          *common(work, out, "--max_train_steps", 2))  # fmt: skip
    unet = weights(out, "unet")
    assert unet["graph_layout_motion_gate"].abs() > 0  # trained from zero
    assert json.loads((out / "unet" / "config.json").read_text())["graph_layout_motion"] is True
    generate(out)
    with pytest.raises(SystemExit):
        train("--pretrained_model_name_or_path", work / "pipe", "--graph_layout_bias", "--graph_layout_motion",
              *common(work, tmp_path / "bad", "--max_train_steps", 1))  # fmt: skip
    assert not (tmp_path / "bad").exists()


def test_the_layout_bias_is_added_to_a_trained_pipeline_and_trains_with_the_layout_loss(work, tmp_path):
    out = tmp_path / "layout_bias"
    train("--pretrained_model_name_or_path", work / "pipe", "--graph_layout_bias", "--train_sg_encoder",
          "--layout_loss_weight", 1, *common(work, out, "--max_train_steps", 2, "--checkpointing_steps", 5))  # fmt: skip
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-2"]  # the last step is always saved
    unet, original_unet = weights(out, "unet"), weights(work / "pipe", "unet")
    new = sorted(set(unet) - set(original_unet))
    assert new and all(key.endswith(".processor.layout_scale") for key in new)
    assert all(unet[key].abs().sum() > 0 for key in new)  # trained from zero
    assert json.loads((out / "unet" / "config.json").read_text())["graph_layout_bias"] is True
    generate(out)


def test_validation_videos_are_written_and_logged(graph_run):
    from sg2vid_diffusers.video_io import read_video

    folder = graph_run / "validation" / "step-4"
    videos = [read_video(folder / f"{i:02d}.mp4") for i in range(len(GRAPHS))]
    assert all(v.shape == (4, 16, 16, 3) for v in videos)
    assert len((folder / "graphs.jsonl").read_text().splitlines()) == len(GRAPHS)
    assert list((graph_run / "logs").rglob("events.out.tfevents.*"))


def test_resume_after_a_kill_equals_the_uninterrupted_run(graph_run, work):
    # What a run killed while writing its step-4 checkpoint leaves: checkpoint-2 and a partial .tmp.
    resumed = work / "resumed"
    shutil.copytree(graph_run / "checkpoint-2", resumed / "checkpoint-2")
    (resumed / "checkpoint-4.tmp").mkdir()
    (resumed / "checkpoint-4.tmp" / "model.safetensors").write_bytes(b"half written")

    train(
        "--pretrained_model_name_or_path", work / "pipe",
        *common(work, resumed, "--max_train_steps", 4, "--checkpointing_steps", 2, "--use_ema", "--snr_gamma", 5,
                "--resume_from_checkpoint", "latest", "--checkpoints_total_limit", 1),
    )  # fmt: skip

    expected, got = weights(graph_run, "unet"), weights(resumed, "unet")
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-6, msg=key)
    assert sorted(p.name for p in resumed.glob("checkpoint-*")) == ["checkpoint-4"]  # total limit 1, .tmp replaced


def test_sigterm_stops_at_a_steps_end_with_a_checkpoint_of_that_step(work, tmp_path):
    # A run told to stop (SIGTERM: a scheduler, a preempted machine) saves the step it is on and exits 143,
    # without a pipeline; that checkpoint is the state an uninterrupted run has at the same step.
    stopped = tmp_path / "stopped"
    argv = [
        "--pretrained_model_name_or_path", work / "pipe",
        *common(work, stopped, "--max_train_steps", 100000, "--checkpointing_steps", 100000, "--use_ema"),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    code, text = signal_when_ready(
        [sys.executable, str(SCRIPT), *map(str, argv)], tmp_path / "log.txt",
        lambda log: "step 1:" in log,  # logged after the first step, inside the loop
        signal.SIGTERM, env=env, cwd=REPO,
    )  # fmt: skip
    assert code == 128 + signal.SIGTERM, text[-3000:]
    [checkpoint] = stopped.glob("checkpoint-*")
    step = int(checkpoint.name.split("-")[1])
    assert 1 <= step < 100000 and f"Stopped at step {step} of 100000 (SIGTERM)" in text
    assert not (stopped / "model_index.json").exists()  # not finished: no pipeline

    straight = tmp_path / "straight"
    train(
        "--pretrained_model_name_or_path", work / "pipe",
        *common(work, straight, "--max_train_steps", step, "--checkpointing_steps", 100000, "--use_ema"),
    )  # fmt: skip
    expected = load_file(straight / f"checkpoint-{step}" / "trained_weights.safetensors")
    got = load_file(checkpoint / "trained_weights.safetensors")
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-6, msg=key)


def test_resuming_a_checkpoint_at_its_own_step_saves_its_pipeline(graph_run, work):
    # How an unfinished run's checkpoint is evaluated (docs/training_video.md): a copy of it, resumed with
    # --max_train_steps at its step, trains nothing and saves the pipeline the run would have saved there.
    exported = work / "exported"
    shutil.copytree(graph_run / "checkpoint-4", exported / "checkpoint-4")
    train(
        "--pretrained_model_name_or_path", work / "pipe",
        *common(work, exported, "--max_train_steps", 4, "--use_ema", "--snr_gamma", 5,
                "--resume_from_checkpoint", "latest"),
    )  # fmt: skip
    expected, got = weights(graph_run, "unet"), weights(exported, "unet")
    assert_same(got, expected, expected)  # the EMA weights, bit for bit
    graph_key = next(key for key in got if is_graph_weight(key))
    assert not torch.equal(got[graph_key], weights(work / "pipe", "unet")[graph_key])  # trained ones, not the start
    assert sorted(p.name for p in exported.glob("checkpoint-*")) == ["checkpoint-4"]  # no step, no new checkpoint
    assert "- steps: 4," in (exported / "README.md").read_text()


def test_resuming_with_other_trained_weights_is_refused(graph_run, work):
    other = work / "other"
    shutil.copytree(graph_run / "checkpoint-2", other / "checkpoint-2")
    with pytest.raises(ValueError, match="holds other trained weights than this run trains"):
        train(
            "--pretrained_model_name_or_path", work / "pipe",
            *common(work, other, "--max_train_steps", 4, "--rank", 2, "--resume_from_checkpoint", "latest"),
        )  # fmt: skip


def test_lora_trains_beside_a_frozen_backbone_and_loads_with_load_lora_weights(work):
    out = work / "lora_run"
    train("--pretrained_model_name_or_path", work / "pipe", *common(work, out, "--max_train_steps", 2, "--rank", 2))

    unet, original_unet = weights(out, "unet"), weights(work / "pipe", "unet")
    assert unet.keys() == original_unet.keys()  # no LoRA layers left in the pipeline folder
    assert_same(unet, original_unet, [k for k in unet if not is_graph_weight(k)])
    lora = load_file(out / "pytorch_lora_weights.safetensors")
    assert lora and all(".attentions." in k for k in lora)  # spatial layers only
    up = [v for k, v in lora.items() if "lora.up" in k or "lora_B" in k]
    assert up and any(v.abs().sum() > 0 for v in up)  # trained (LoRA's B starts at zero)

    without, with_lora = generate(out), generate(out, lora=True)
    assert np.abs(with_lora - without).max() > 1e-4


def test_training_from_a_unet_config_with_everything_switched_on(work):
    out = work / "scratch_run"
    config = {k: v for k, v in tiny_unet().config.items() if not k.startswith("_")}
    (work / "unet_config.json").write_text(json.dumps(config))
    vae_config = json.dumps({k: v for k, v in tiny_vae().config.items() if not k.startswith("_")})
    train(
        "--unet_config", work / "unet_config.json", "--vae_config", vae_config, "--sg_encoder", work / "encoder",
        *common(work, out, "--max_train_steps", 2, "--gradient_checkpointing", "--prediction_type", "v_prediction",
                "--snr_gamma", 5, "--train_sg_encoder", "--graph_dropout", 0.5, "--gradient_accumulation_steps", 2,
                "--frame_window", 2),
    )  # fmt: skip

    generate(out)
    assert json.loads((out / "scheduler" / "scheduler_config.json").read_text())["prediction_type"] == "v_prediction"
    encoder, original = weights(out, "sg_encoder"), load_file(work / "encoder" / "diffusion_pytorch_model.safetensors")
    assert not torch.equal(encoder["graph_projection.weight"], original["graph_projection.weight"])  # fine-tuned
    assert torch.equal(encoder["logit_scale"], original["logit_scale"])  # unused by diffusion: left alone
    assert "the whole UNet" in (out / "README.md").read_text()


def tiny_text_to_video_folder(path):
    """A diffusers text-to-video layout: UNet3DConditionModel, VAE, CLIP text encoder and tokenizer."""
    config = {k: v for k, v in tiny_unet().config.items() if not k.startswith(("_", "graph_"))}
    text_encoder, tokenizer = tiny_text_encoder(hidden_size=config["cross_attention_dim"])
    components = {
        "unet": UNet3DConditionModel.from_config(config),
        "vae": tiny_vae(),
        "scheduler": DDIMScheduler(num_train_timesteps=100),
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
    }
    index = {"_class_name": "TextToVideoSDPipeline", "_diffusers_version": "0.42.1"}
    for name, component in components.items():
        component.save_pretrained(path / name)
        index[name] = ["transformers" if "text" in name or "token" in name else "diffusers", type(component).__name__]
    (path / "model_index.json").write_text(json.dumps(index))
    (path / "README.md").write_text("---\nlicense: cc-by-nc-4.0\n---\n# tiny\n")
    return path


def test_a_text_to_video_backbone_gets_decoupled_graph_attention_and_keeps_its_weights(work):
    backbone = tiny_text_to_video_folder(work / "t2v")
    captioned = work / "captioned"
    shutil.copytree(work / "data", captioned)
    rows = [json.loads(line) for line in (captioned / "metadata.jsonl").read_text().splitlines()]
    (captioned / "metadata.jsonl").write_text("".join(json.dumps({**r, "caption": "shapes"}) + "\n" for r in rows))

    out = work / "t2v_run"
    train(
        "--pretrained_model_name_or_path", backbone, "--sg_encoder", work / "encoder",
        *common(work, out, "--max_train_steps", 2, "--train_data_dir", captioned, "--caption_column", "caption"),
    )  # fmt: skip

    pipe = SceneGraphToVideoPipeline.from_pretrained(out)
    assert pipe.unet.config.graph_mode == "decoupled" and pipe.text_encoder is not None
    pipe.set_progress_bar_config(disable=True)
    frames = pipe(scene_graph=GRAPHS[0], prompt="shapes", num_frames=4, num_inference_steps=2).frames
    assert frames.shape == (1, 4, 16, 16, 3)
    unet, base = weights(out, "unet"), weights(backbone, "unet")
    assert_same(unet, base, base)  # every backbone weight frozen
    assert "license: cc-by-nc-4.0" in (out / "README.md").read_text()  # the backbone's license carries over
    to_v_graph = [k for k in unet if k.endswith("processor.to_v_graph.weight")]
    assert to_v_graph and any(unet[k].abs().sum() > 0 for k in to_v_graph)  # zero-initialised, then trained


def test_two_processes_under_torchrun(work):
    out = work / "two_processes"
    argv = [
        "--pretrained_model_name_or_path", work / "pipe",
        *common(work, out, "--max_train_steps", 2, "--checkpointing_steps", 2),
    ]  # fmt: skip
    if torch.cuda.is_available():
        argv.append("--cpu")  # without CUDA the script must choose the CPU backend by itself: tested here
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(SCRIPT), *map(str, argv)],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=300,
    )  # fmt: skip
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-5000:]
    assert "num_processes=2 x 2 clips" in log  # a silent fall-back to one process fails here
    assert (out / "checkpoint-2" / "trained_weights.safetensors").exists()
    generate(out)


def test_clip_shape_mismatches_fail_before_training_with_a_clear_message(work, tmp_path):
    base = ["--pretrained_model_name_or_path", work / "pipe", *common(work, tmp_path / "out", "--max_train_steps", 1)]
    with pytest.raises(ValueError, match=r"--resolution 24 does not fit the clips' 64x64 frames"):
        train(*base, "--resolution", 24)
    with pytest.raises(ValueError, match=r"--num_frames 8, but the clips have 4 frames after --frame_stride 1"):
        train(*base, "--num_frames", 8)
    with pytest.raises(ValueError, match=r"--frame_window 5 is longer than the clips \(4 frames\)"):
        train(*base, "--frame_window", 5)
    with pytest.raises(ValueError, match="needs --sg_encoder"):
        train(*base[2:], "--pretrained_model_name_or_path", tiny_text_to_video_folder(tmp_path / "t2v"))
    assert not (tmp_path / "out").exists()


CORPORA = [  # format, fixture writer, folder, options the fixture needs
    ("visual_genome_h5", "write_visual_genome", "vg", ["--num_frames", 2]),
    ("coco_stuff", "write_coco_stuff", "coco", ["--num_frames", 2]),
    ("action_genome", "write_action_genome", "ag", ["--num_frames", 2]),
    ("vidvrd", "write_vidvrd", "vidvrd-dataset", ["--num_frames", 4]),
    ("vidor", "write_vidor", "vidor-dataset", ["--num_frames", 4]),
]


@pytest.mark.parametrize("dataset_format, writer, folder, options", CORPORA)
def test_a_few_steps_on_each_public_corpus_format(work, tmp_path, dataset_format, writer, folder, options):
    import corpora_fixtures

    from sg2vid_diffusers.data.corpora import build_vocabulary

    data = getattr(corpora_fixtures, writer)(tmp_path / folder) or tmp_path / folder
    vocab = build_vocabulary(dataset_format, data)
    encoder = SceneGraphEncoder.from_vocab(vocab, embedding_dim=8, hidden_dim=8, output_dim=8, num_graph_layers=2)
    encoder.save_pretrained(tmp_path / "encoder")
    config = {k: v for k, v in tiny_unet().config.items() if not k.startswith("_")}
    vae_config = json.dumps({k: v for k, v in tiny_vae().config.items() if not k.startswith("_")})
    out = tmp_path / "out"
    train(
        "--unet_config", json.dumps(config), "--vae_config", vae_config, "--sg_encoder", tmp_path / "encoder",
        "--dataset_format", dataset_format, "--train_data_dir", data, "--output_dir", out, "--resolution", 16,
        "--train_batch_size", 1, "--max_train_steps", 2, "--lr_warmup_steps", 0, "--report_to", "none", *options,
    )  # fmt: skip
    pipe = SceneGraphToVideoPipeline.from_pretrained(out)
    assert pipe.vocab == vocab
    assert "2" in (out / "README.md").read_text()


# ----------------------------------------------------------------------------- the library pieces


def test_graph_dropout_gives_null_contexts_at_the_requested_rate():
    drop = sample_graph_dropout(20_000, 0.3, torch.Generator().manual_seed(0))
    assert drop.dtype == torch.bool and abs(drop.float().mean().item() - 0.3) < 0.015
    assert not sample_graph_dropout(100, 0.0).any() and sample_graph_dropout(100, 1.0).all()

    unet, encoder = tiny_unet(), tiny_encoder()
    graphs = collate_scene_graphs(GRAPHS * 2, sg_shapes_vocabulary())
    num_frames = 4
    drop = torch.tensor([True, False, False, True])
    with torch.no_grad():
        dropped = encode_graph_context(encoder, unet, graphs, num_frames, drop=drop)
        kept = encode_graph_context(encoder, unet, graphs, num_frames)
        null = unet.null_graph_context(1, 1)
    states = dropped.hidden_states.view(4, num_frames, *dropped.hidden_states.shape[1:])
    mask = dropped.mask.view(4, num_frames, -1)
    for b in range(4):
        if drop[b]:  # the null graph: only the null token is attended to
            assert mask[b, :, :-1].sum() == 0 and mask[b, :, -1].all()
            assert torch.equal(states[b, :, -1], null.hidden_states[0, -1].expand(num_frames, -1))
        else:
            rows = slice(b * num_frames, (b + 1) * num_frames)
            assert torch.equal(dropped.hidden_states[rows], kept.hidden_states[rows])
            assert torch.equal(dropped.mask[rows], kept.mask[rows]) and mask[b, :, :-1].any()
    # GRAPHS[1]'s relation holds in frames 0 and 1 of 4 only: its tokens are per frame
    assert mask[1, 0].sum() == mask[1, 3].sum() + 1 and not torch.equal(states[1, 0], states[1, 3])


def test_frame_windows_take_their_frames_and_their_frames_graph_tokens():
    starts = sample_frame_windows(16, 4, 5000, torch.Generator().manual_seed(0))
    assert starts.min() == 0 and starts.max() == 12 and len(starts.unique()) == 13  # every position, none past
    with pytest.raises(ValueError, match=r"frame window must be in \[1, 4\]"):
        sample_frame_windows(4, 5, 2)

    latents = torch.randn(2, 3, 4, 2, 2)
    windows = take_frame_windows(latents, torch.tensor([0, 2]), 2)
    assert torch.equal(windows[0], latents[0, :, 0:2]) and torch.equal(windows[1], latents[1, :, 2:4])
    with pytest.raises(ValueError, match="leave the 4 frames"):
        take_frame_windows(latents, torch.tensor([0, 3]), 2)

    # GRAPHS[1]'s timed triple holds in frames 0 and 1 of 4: the window at frame 0 hears it, the one at 2 not.
    unet, encoder = tiny_unet(), tiny_encoder()
    denoiser = GraphConditionedDenoiser(unet, encoder).eval()
    graphs = collate_scene_graphs(GRAPHS, sg_shapes_vocabulary())
    noisy, timesteps, keep = torch.randn(2, 4, 2, 8, 8), torch.tensor([10, 500]), torch.zeros(2, dtype=torch.bool)
    with torch.no_grad():
        full = encode_graph_context(encoder, unet, graphs, 4)
        for starts in (torch.tensor([0, 0]), torch.tensor([2, 2]), torch.tensor([1, 2])):
            got = denoiser(noisy, timesteps, graphs, keep, frame_starts=starts, num_clip_frames=4)
            rows = torch.cat([b * 4 + starts[b] + torch.arange(2) for b in range(2)])  # the windows' frames
            sliced = type(full)(full.hidden_states[rows], full.mask[rows])
            expected = unet(noisy, timesteps, graph_context=sliced).sample
            torch.testing.assert_close(got, expected)
        early = denoiser(noisy, timesteps, graphs, keep, frame_starts=torch.tensor([0, 0]), num_clip_frames=4)
        late = denoiser(noisy, timesteps, graphs, keep, frame_starts=torch.tensor([2, 2]), num_clip_frames=4)
    assert torch.equal(early[0], late[0]) and not torch.allclose(early[1], late[1])  # static graph 0, timed graph 1
    with pytest.raises(ValueError, match="needs num_clip_frames"):
        denoiser(noisy, timesteps, graphs, keep, frame_starts=torch.tensor([0, 0]))

    # A UNet with frame times hears each window frame's time in its clip, not the window's own 0, 1/2.
    unet.enable_frame_times(8)
    with torch.no_grad():
        unet.frame_time_embedding.linear_2.weight.normal_(generator=torch.Generator().manual_seed(4))
        starts = torch.tensor([1, 2])
        got = denoiser(noisy, timesteps, graphs, keep, frame_starts=starts, num_clip_frames=4)
        rows = torch.cat([b * 4 + starts[b] + torch.arange(2) for b in range(2)])
        sliced = type(full)(full.hidden_states[rows], full.mask[rows])
        times = (starts[:, None] + torch.arange(2)) / 4
        torch.testing.assert_close(got, unet(noisy, timesteps, graph_context=sliced, frame_times=times).sample)
        assert not torch.allclose(got, unet(noisy, timesteps, graph_context=sliced).sample)


def test_min_snr_weighting():
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    timesteps = torch.tensor([5, 500, 990])
    pred, target = torch.randn(3, 4, 2, 4, 4), torch.randn(3, 4, 2, 4, 4)
    per_sample = ((pred - target) ** 2).mean(dim=(1, 2, 3, 4))
    alphas = scheduler.alphas_cumprod[timesteps]
    snr = alphas / (1 - alphas)

    assert torch.allclose(diffusion_loss(pred, target, timesteps, scheduler), per_sample.mean())
    expected = (per_sample * torch.clamp(snr, max=5) / snr).mean()
    assert torch.allclose(diffusion_loss(pred, target, timesteps, scheduler, snr_gamma=5), expected)
    scheduler.register_to_config(prediction_type="v_prediction")
    expected = (per_sample * torch.clamp(snr, max=5) / (snr + 1)).mean()
    assert torch.allclose(diffusion_loss(pred, target, timesteps, scheduler, snr_gamma=5), expected)


def test_videos_become_scaled_latents_frame_by_frame():
    videos = torch.rand(2, 3, 3, 8, 8)
    small = resize_videos(videos, 4)
    assert torch.allclose(small[0, 1, 2, 0, 0], videos[0, 1, 2, :2, :2].mean())  # area average
    with pytest.raises(ValueError, match="cannot be downsampled to 3x3"):
        resize_videos(videos, 3)

    vae = tiny_vae()
    latents = encode_videos(vae, videos, torch.Generator().manual_seed(0))
    assert latents.shape == (2, 4, 3, 4, 4)  # (B, C, F, h, w)
    frames = videos.flatten(0, 1) * 2 - 1  # (B*F, 3, H, W) in [-1, 1]
    with torch.no_grad():
        expected = vae.encode(frames).latent_dist.sample(generator=torch.Generator().manual_seed(0))
    expected = expected.view(2, 3, 4, 4, 4).permute(0, 2, 1, 3, 4) * vae.config.scaling_factor
    torch.testing.assert_close(latents, expected)


def test_trainable_parameters_graph_lora_unet_encoder():
    unet, encoder = tiny_unet(), tiny_encoder()
    names = [n for n, _ in set_trainable_parameters(unet, encoder)]
    assert names and all(is_graph_weight(n.removeprefix("unet.")) for n in names)

    targets = lora_target_modules(unet)
    unet.add_adapter(LoraConfig(r=2, lora_alpha=2, init_lora_weights="gaussian", target_modules=targets))
    names = [n for n, _ in set_trainable_parameters(unet, encoder, train_sg_encoder=True)]
    assert any("lora_A" in n for n in names) and any(n == "unet.graph_local_proj.weight" for n in names)
    assert not [n for n in names if "temp_attentions" in n or "base_layer" in n]
    assert "sg_encoder.graph_projection.weight" in names and "sg_encoder.logit_scale" not in names

    names = [n for n, _ in set_trainable_parameters(tiny_unet(), tiny_encoder(), train_unet=True)]
    assert "unet.conv_in.weight" in names and len(names) == len(list(tiny_unet().parameters()))


def test_epoch_batches_split_each_global_batch_between_processes_and_resume_in_place():
    first = [next(iter(EpochBatches(8, 2, 2, rank, seed=0))) for rank in range(2)]
    assert len(set(first[0]) | set(first[1])) == 4  # two halves of one global batch
    uninterrupted = iter(EpochBatches(8, 2, 1, 0, seed=0))
    batches = [next(uninterrupted) for _ in range(6)]  # 4 batches per epoch: crosses into epoch 1
    resumed = iter(EpochBatches(8, 2, 1, 0, seed=0, start=3))
    assert [next(resumed) for _ in range(3)] == batches[3:]
    assert sorted(sum(batches[:4], [])) == list(range(8))  # an epoch visits every clip once


def test_whole_clip_batches_shrink_every_nth_micro_batch_and_resume_in_place():
    plain = iter(EpochBatches(8, 4, 1, 0, seed=0))
    expected = [next(plain) for _ in range(6)]
    mixed = WholeClipBatches(EpochBatches(8, 4, 1, 0, seed=0), every=3, num_clips=1)
    batches = iter(mixed)
    got = [next(batches) for _ in range(6)]
    assert [mixed.is_whole(i) for i in range(6)] == [False, False, True, False, False, True]
    assert got == [b[:1] if i in (2, 5) else b for i, b in enumerate(expected)]
    resumed = iter(WholeClipBatches(EpochBatches(8, 4, 1, 0, seed=0, start=2), every=3, num_clips=1))
    assert [next(resumed) for _ in range(4)] == got[2:]  # micro-batch 2 is whole in a resumed run too
    with pytest.raises(ValueError, match="num_clips"):
        WholeClipBatches(EpochBatches(8, 4, 1, 0, seed=0), every=3, num_clips=5)


def test_whole_clips_are_mixed_into_frame_window_training(work, tmp_path):
    seen = []  # (clips, frames) of each training forward of the UNet

    def record(module, args):  # the denoiser passes the noisy latents first, positionally
        if isinstance(module, UNet3DConditionModel) and module.training:
            seen.append((args[0].shape[0], args[0].shape[2]))

    hook = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        train("--pretrained_model_name_or_path", work / "pipe", "--frame_window", 2, "--whole_clip_every", 2,
              *common(work, tmp_path / "mixed", "--max_train_steps", 4, "--train_batch_size", 4))  # fmt: skip
    finally:
        hook.remove()
    # 4 clips x 2-frame windows, then 4 * 2 / 4 = 2 whole clips of 4 frames, in turn
    assert seen == [(4, 2), (2, 4), (4, 2), (2, 4)]
    with pytest.raises(SystemExit):  # whole clips mix into window training only
        train("--pretrained_model_name_or_path", work / "pipe", "--whole_clip_every", 2,
              *common(work, tmp_path / "bad", "--max_train_steps", 1))  # fmt: skip
    assert not (tmp_path / "bad").exists()


def test_cached_latents_are_the_vae_posteriors_and_are_reused(work):
    out = work / "cached_run"
    config = {k: v for k, v in tiny_unet().config.items() if not k.startswith("_")}
    vae = tiny_vae()
    vae.save_pretrained(work / "cache_vae")
    run = ["--unet_config", json.dumps(config), "--vae", work / "cache_vae", "--sg_encoder", work / "encoder",
           "--cache_latents"]  # fmt: skip
    train(*run, *common(work, out, "--max_train_steps", 2))
    generate(out)

    cache = load_file(out / "latent_cache.safetensors")
    dist = first_clip_posterior(work, vae)
    side = 16 // vae_scale_factor(vae)
    assert cache["mean"].shape == (8, vae.config.latent_channels, 4, side, side)  # clips, C, F, h, w
    torch.testing.assert_close(cache["mean"][0].transpose(0, 1), dist.mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(cache["std"][0].transpose(0, 1), dist.std, rtol=1e-4, atol=1e-5)

    stamp = (out / "latent_cache.safetensors").stat().st_mtime_ns
    train(*run, *common(work, out, "--max_train_steps", 3, "--resume_from_checkpoint", "latest"))
    assert (out / "latent_cache.safetensors").stat().st_mtime_ns == stamp  # same VAE and data: reused
    # The same VAE loaded from another folder (as a fine-tune run loads it from the pipeline before): reused.
    shutil.copytree(work / "cache_vae", work / "cache_vae_moved")
    moved = [work / "cache_vae_moved" if arg == work / "cache_vae" else arg for arg in run]
    train(*moved, *common(work, out, "--max_train_steps", 4, "--resume_from_checkpoint", "latest"))
    assert (out / "latent_cache.safetensors").stat().st_mtime_ns == stamp
    # A fine-tune run from the saved pipeline finds the cache there instead of encoding every clip again:
    # the start's cache is marked (same key, shifted means) to tell a reuse from a new encoding.
    with safe_open(str(out / "latent_cache.safetensors"), "pt") as f:
        metadata = f.metadata()
    save_file({"mean": cache["mean"] + 1, "std": cache["std"]}, str(out / "latent_cache.safetensors"), metadata=metadata)
    train("--pretrained_model_name_or_path", out, "--cache_latents", *common(work, work / "fine_tuned", "--max_train_steps", 1))
    torch.testing.assert_close(load_file(work / "fine_tuned" / "latent_cache.safetensors")["mean"], cache["mean"] + 1)
    save_file(cache, str(out / "latent_cache.safetensors"), metadata=metadata)
    stamp = (out / "latent_cache.safetensors").stat().st_mtime_ns
    tiny_vae(seed=5).save_pretrained(work / "cache_vae")  # another VAE: the cache is made again
    train(*run, *common(work, out, "--max_train_steps", 5, "--resume_from_checkpoint", "latest"))
    assert (out / "latent_cache.safetensors").stat().st_mtime_ns != stamp


def test_vae_replaces_a_pipeline_folders_vae_and_its_latents_are_encoded_anew(work, tmp_path):
    tiny_vae(seed=7).save_pretrained(tmp_path / "new_vae")
    out = tmp_path / "swapped"
    train("--pretrained_model_name_or_path", work / "pipe", "--vae", tmp_path / "new_vae", "--cache_latents",
          *common(work, out, "--max_train_steps", 1))  # fmt: skip
    vae, new, old = weights(out, "vae"), load_file(tmp_path / "new_vae" / "diffusion_pytorch_model.safetensors"), weights(work / "pipe", "vae")
    assert vae.keys() == new.keys() and all(torch.equal(vae[k], new[k]) for k in vae)  # saved with the new VAE
    assert any(not torch.equal(vae[k], old[k]) for k in vae)
    unet, start = weights(out, "unet"), weights(work / "pipe", "unet")
    assert any(not torch.equal(unet[k], start[k]) for k in unet)  # its UNet trained on the new latents
    mean = first_clip_posterior(work, SceneGraphToVideoPipeline.from_pretrained(out).vae).mean
    torch.testing.assert_close(load_file(out / "latent_cache.safetensors")["mean"][0].transpose(0, 1), mean,
                               rtol=1e-4, atol=1e-5)  # fmt: skip
    assert f"with its VAE replaced by `{tmp_path / 'new_vae'}`" in (out / "README.md").read_text()

    with pytest.raises(SystemExit):  # a new VAE's config is no pipeline's VAE
        script.parse_args([str(a) for a in ["--pretrained_model_name_or_path", work / "pipe", "--vae_config", "{}",
                                            *common(work, tmp_path / "bad")]])  # fmt: skip
    vae = tiny_vae()
    coarser = type(vae)(**{**{k: v for k, v in vae.config.items() if not k.startswith("_")},
                           "down_block_types": ["DownEncoderBlock2D"] * 3, "up_block_types": ["UpDecoderBlock2D"] * 3,
                           "block_out_channels": [8, 16, 16]})  # fmt: skip
    coarser.save_pretrained(tmp_path / "coarser_vae")
    with pytest.raises(ValueError, match="downsamples frames 4x, the pipeline's VAE 2x"):
        train("--pretrained_model_name_or_path", work / "pipe", "--vae", tmp_path / "coarser_vae",
              *common(work, tmp_path / "bad", "--max_train_steps", 1))  # fmt: skip


# ----------------------------------------------------------------------------- layout loss


def test_layout_loss_regresses_a_fixed_projection_onto_the_clip_mean_box():
    readout = layout_readout(10)
    torch.testing.assert_close(readout.T @ readout, torch.eye(4))  # orthonormal, and the same every call
    assert torch.equal(readout, layout_readout(10)) and not torch.equal(layout_readout(12)[:10], readout)
    boxes = torch.tensor([[[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]], [[0.2, 0.2, 0.4, 0.4]] * 2, [[0.0] * 4] * 2])
    maskable = torch.tensor([True, True, False])  # the third row: an __image__ node
    target = boxes.mean(dim=1) * 2 - 1  # [-0.5, -0.5, 0.5, 0.5] and [-0.6, -0.6, -0.2, -0.2]
    vectors = target @ readout.T  # (3, 10) whose readout is the target
    vectors[2] = 7.0  # not maskable: ignored
    assert layout_loss(vectors, boxes, maskable).item() == pytest.approx(0.0, abs=1e-12)
    moved = vectors + 0.4 * readout[:, 1]  # every row's second number off by 0.4
    assert layout_loss(moved, boxes, maskable).item() == pytest.approx(0.4**2 / 4)
    moved.requires_grad_(True)
    layout_loss(moved, boxes, maskable).backward()
    assert moved.grad[2].abs().sum() == 0 and moved.grad[0].abs().sum() > 0
    none = layout_loss(vectors.requires_grad_(True), boxes, torch.zeros(3, dtype=torch.bool))
    assert none.item() == 0.0 and none.requires_grad
    with pytest.raises(ValueError, match=r"object_vectors must be \(O, D\) with D >= 4"):
        layout_loss(vectors[:, :3], boxes, maskable)
    with pytest.raises(ValueError, match=r"object_boxes must be \(3, F, 4\)"):
        layout_loss(vectors, boxes[:2], maskable)


def test_the_layout_loss_motion_term_regresses_how_far_each_box_moves_over_the_clip():
    readout, moves = layout_readout(10), motion_readout(10)
    torch.testing.assert_close(moves.T @ moves, torch.eye(4))
    torch.testing.assert_close(readout.T @ moves, torch.zeros(4, 4), rtol=0, atol=1e-6)  # reads another thing
    assert torch.equal(moves, motion_readout(10))
    with pytest.raises(ValueError, match="width >= 8"):
        motion_readout(6)
    # a box moving right at 0.05 per frame (fractions) over 4 frames, one standing still
    frames = torch.arange(4.0)[:, None]
    moving = torch.tensor([0.1, 0.4, 0.3, 0.6]) + frames * torch.tensor([0.05, 0.0, 0.05, 0.0])
    boxes = torch.stack([moving, torch.tensor([[0.2, 0.2, 0.4, 0.4]] * 4)])  # (2, 4, 4)
    motion = clip_motion(boxes * 2 - 1)
    torch.testing.assert_close(motion, torch.tensor([[0.4, 0.0, 0.4, 0.0], [0.0] * 4]))  # 0.1 per frame x 4 frames
    centres = ((torch.arange(4.0) + 0.5) / 4 - 0.5)[:, None]  # the mean box plus centre x motion is each frame's
    torch.testing.assert_close((boxes * 2 - 1).mean(dim=1)[0] + centres * motion[0], boxes[0] * 2 - 1)
    assert torch.equal(clip_motion(torch.ones(3, 1, 4)), torch.zeros(3, 4))

    maskable = torch.tensor([True, True])
    vectors = (boxes * 2 - 1).mean(dim=1) @ readout.T + motion @ moves.T  # reads both right
    assert layout_loss(vectors, boxes, maskable, motion=True).item() == pytest.approx(0.0, abs=1e-10)
    still = (boxes * 2 - 1).mean(dim=1) @ readout.T  # right place, no motion
    assert layout_loss(still, boxes, maskable).item() == pytest.approx(0.0, abs=1e-10)  # the old loss: no motion term
    assert layout_loss(still, boxes, maskable, motion=True).item() == pytest.approx((2 * 0.4**2) / 8, rel=1e-5)


def test_object_vectors_are_the_subject_and_object_thirds_of_the_local_tokens():
    encoder, vocab = tiny_encoder(), sg_shapes_vocabulary()
    batch = collate_scene_graphs(GRAPHS, vocab)
    with torch.no_grad():
        vectors, out = encoder.object_vectors(batch), encoder(batch)
    width = encoder.config.output_dim
    assert vectors.shape == (batch.objs.shape[0], width)
    # graph 0's first triple is (red circle, left of, blue square): objects 0 and 1 of the batch
    torch.testing.assert_close(out.local_tokens[0, 0, :width], vectors[0])
    torch.testing.assert_close(out.local_tokens[0, 0, 2 * width :], vectors[1])


def layout_error(folder, work):
    """The layout loss of a trained encoder over the training clips (boxes from their metadata)."""
    encoder = SceneGraphEncoder.from_pretrained(Path(folder) / "sg_encoder")
    rows = [json.loads(line) for line in (work / "data" / "metadata.jsonl").read_text().splitlines()]
    graphs = parse_scene_graphs([row["scene_graph"] for row in rows])
    batch = collate_scene_graphs(graphs, encoder.vocab)
    clip_boxes = [np.array(row["boxes"]) for row in rows]
    boxes, maskable = object_box_rows(graphs, clip_boxes, batch.objs.shape[0], len(clip_boxes[0]))
    assert maskable.sum() == sum(len(g.objects) for g in graphs)
    with torch.no_grad():
        return layout_loss(encoder.object_vectors(batch), boxes, maskable).item()


def test_the_layout_loss_moves_the_encoder_towards_the_boxes_cached_or_not(work):
    base = ["--pretrained_model_name_or_path", work / "pipe", "--train_sg_encoder"]
    runs = {}
    for name, extra in (("plain", []), ("layout", ["--layout_loss_weight", 10]),
                        ("layout_cached", ["--layout_loss_weight", 10, "--cache_latents"])):  # fmt: skip
        train(*base, *common(work, work / f"layout_{name}", "--max_train_steps", 3, *extra))
        runs[name] = layout_error(work / f"layout_{name}", work)
    assert runs["layout"] < runs["plain"] and runs["layout_cached"] < runs["plain"]


def test_the_layout_loss_needs_the_encoder_to_train_and_boxes_in_the_data(work, tmp_path):
    base = ["--pretrained_model_name_or_path", work / "pipe", *common(work, tmp_path / "out", "--max_train_steps", 1)]
    with pytest.raises(SystemExit):
        train(*base, "--layout_loss_weight", 1)  # without --train_sg_encoder
    with pytest.raises(SystemExit):
        train(*base, "--train_sg_encoder", "--layout_loss_weight", -1)
    shutil.copytree(work / "data", tmp_path / "no_boxes")
    lines = (tmp_path / "no_boxes" / "metadata.jsonl").read_text().splitlines()
    rows = [{k: v for k, v in json.loads(line).items() if k != "boxes"} for line in lines]
    (tmp_path / "no_boxes" / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match="--layout_loss_weight needs boxes"):
        train(*base, "--train_sg_encoder", "--layout_loss_weight", 1, "--train_data_dir", tmp_path / "no_boxes")
    assert not (tmp_path / "out").exists()
