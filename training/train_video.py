#!/usr/bin/env python
"""Train a scene-graph-to-video diffusion model (SGDiff's method carried to video).

    accelerate launch training/train_video.py \\
        --pretrained_model_name_or_path my-sg2vid-pipeline \\
        --train_data_dir data/sg_shapes/train --output_dir sg2vid-finetuned \\
        --validation_graphs examples/graphs.jsonl --max_train_steps 5000

Three starting points:

- our pipeline folder (``SceneGraphToVideoPipeline.save_pretrained``): continue training it;
- a diffusers text-to-video folder (``unet`` a ``UNet3DConditionModel``, ``vae``, ``text_encoder``,
  ``tokenizer``, ``scheduler``) + ``--sg_encoder``: its UNet gets decoupled graph attention
  (``graph_mode="decoupled"``: the text attention stays, the graph adds to it);
- ``--unet_config`` + ``--vae``/``--vae_config`` + ``--sg_encoder``: a graph-only UNet from scratch.

What trains: the graph projections, the null-graph token and the graph processors always; with
``--rank R`` also a LoRA on the spatial attention layers, with ``--train_unet`` (implied by
``--unet_config``) the whole UNet, with ``--train_sg_encoder`` the graph encoder (frozen by default,
as in SGDiff). Graphs are dropped (replaced by the null graph) with probability ``--graph_dropout``,
which is what classifier-free guidance at sampling time needs.

Frames are encoded one by one by the frozen image VAE (``SceneGraphToVideoPipeline.decode_latents``
is the inverse). ``--resolution`` may downsample the clips by area averaging when it divides their
size (64x64 SG-Shapes clips train at 32 or 16); ``--num_frames`` must be what the clips have after
``--frame_stride`` (cutting a clip would change what its time spans mean).

The output folder is a complete pipeline (``save_pretrained``, EMA weights if ``--use_ema``) with a
model card, plus ``pytorch_lora_weights.safetensors`` with ``--rank``; the pipeline folder then holds
the backbone as it was and the trained graph weights, and ``pipe.load_lora_weights(output_dir)``
adds the LoRA. ``checkpoint-N`` folders hold only the weights that train and resume a run
(``--resume_from_checkpoint latest``) at the same step, with the same data order, noise and learning
rate. Several processes: ``accelerate launch --multi_gpu --num_processes N`` on GPUs;
``python -m torch.distributed.run --nproc_per_node N training/train_video.py ...`` on CPUs (without
CUDA the script joins them through the CPU backend; ``accelerate launch --cpu`` would start one).
"""

import argparse
import contextlib
import functools
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, DiffusionPipeline
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from diffusers.utils import convert_state_dict_to_diffusers
from einops import rearrange
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from sg2vid_diffusers import SceneGraphEncoder, SceneGraphToVideoPipeline, SceneGraphUNet3DConditionModel
from sg2vid_diffusers.conversion_t2v import load_t2v_as_sg2vid
from sg2vid_diffusers.data.corpora import CORPUS_FORMATS, load_corpus
from sg2vid_diffusers.data.video_folder import MetadataError
from sg2vid_diffusers.models.unet_3d_graph import lora_target_modules
from sg2vid_diffusers.pretraining import SceneGraphVideoDataset, collate_pretraining_examples, object_box_rows
from sg2vid_diffusers.batching import collate_scene_graphs
from sg2vid_diffusers.scene_graph import parse_scene_graphs
from sg2vid_diffusers.training_utils import (
    CHECKPOINT_PATTERN,
    EpochBatches,
    add_training_arguments,
    check_training_arguments,
    GraphConditionedDenoiser,
    WholeClipBatches,
    diffusion_loss,
    diffusion_target,
    layout_loss,
    encode_videos,
    find_resume_checkpoint,
    push_output_to_hub,
    resize_videos,
    sample_frame_windows,
    sample_graph_dropout,
    save_checkpoint,
    set_trainable_parameters,
    step_generator,
    StopRequest,
    take_frame_windows,
)
from sg2vid_diffusers.utils import atomic_path, atomic_write_text, vae_scale_factor
from sg2vid_diffusers.video_io import write_video

logger = get_logger(__name__, log_level="INFO")

DATASET_FORMATS = ("metadata_jsonl",)
# Readers for these corpora come with the public-data issue; the switch is ready for them.
LORA_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
TRAINED_WEIGHTS_NAME = "trained_weights.safetensors"  # in checkpoint-N folders


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    model = parser.add_argument_group("models")
    model.add_argument(
        "--pretrained_model_name_or_path",
        default=None,
        help="Our pipeline folder, or a diffusers text-to-video folder (then --sg_encoder is required).",
    )
    model.add_argument(
        "--unet_config",
        default=None,
        help="SceneGraphUNet3DConditionModel config (a JSON file or JSON text) for a graph-only UNet from scratch; "
        "needs --vae or --vae_config, and --sg_encoder.",
    )
    model.add_argument(
        "--vae",
        default=None,
        help="An AutoencoderKL folder: the VAE of a --unet_config model, or one replacing a pipeline folder's "
        "(fine-tuning its UNet onto a new latent space, e.g. train_vae.py --latent_anchor_weight).",
    )
    model.add_argument("--vae_config", default=None, help="A new AutoencoderKL of this config (JSON): for tests.")
    model.add_argument("--sg_encoder", default=None, help="A SceneGraphEncoder folder (with its vocab.json).")
    model.add_argument("--train_sg_encoder", action="store_true", help="Fine-tune the graph encoder (else frozen).")
    model.add_argument("--train_unet", action="store_true", help="Train the whole UNet (implied by --unet_config).")
    model.add_argument("--rank", type=int, default=None, help="Train a LoRA of this rank on spatial attention.")
    model.add_argument("--graph_dropout", type=float, default=0.1, help="P(a graph becomes the null graph).")
    model.add_argument(
        "--prediction_type",
        default=None,
        choices=["epsilon", "v_prediction"],
        help="What the UNet predicts (default: the scheduler's); saved into the pipeline's scheduler.",
    )
    model.add_argument("--snr_gamma", type=float, default=None, help="Min-SNR loss weighting (usually 5).")
    model.add_argument(
        "--layout_loss_weight",
        type=float,
        default=0.0,
        help="Add this weight times the layout loss (each object's encoder vector, through a fixed projection, "
        "regressed onto its clip-mean box; needs --train_sg_encoder and boxes in the data). Ours, not "
        "SGDiff's: it teaches the encoder where the relations put objects. Default 0: off.",
    )
    model.add_argument(
        "--graph_position_dim",
        type=int,
        default=None,
        help="Give the graph attention's queries position features of this width (a multiple of 4; ours, not "
        "SGDiff's): new projections start at zero, so a trained model keeps its output until they train. "
        "Default: the model's own (0 for a new one unless --unet_config sets it).",
    )
    model.add_argument(
        "--frame_time_dim",
        type=int,
        default=None,
        help="Give the UNet frame times with Fourier features of this width (an even number; ours: UNet3D has no "
        "frame positions, so it cannot follow motion a graph asks for): a new embedding that starts at zero, so a "
        "trained model keeps its output until it trains. With --frame_window, each window frame gets its time in "
        "the clip. Default: the model's own (0 for a new one unless --unet_config sets it).",
    )
    model.add_argument(
        "--graph_layout_motion",
        action="store_true",
        help="Move the layout bias's boxes over the clip (ours): the layout loss also regresses how far each "
        "object's box moves over the clip (needs --layout_loss_weight > 0 and the layout bias), and each frame's "
        "box follows, through a gate that starts at zero, so a trained model keeps its output until it trains.",
    )
    model.add_argument(
        "--graph_layout_bias",
        action="store_true",
        help="Give the graph attention the layout bias (ours): queries inside the box that the encoder infers "
        "for a token's subject attend to it more, by a learned per-head scale that starts at zero. Only an "
        "encoder trained with the layout loss infers boxes (--layout_loss_weight, here or before).",
    )
    model.add_argument("--use_ema", action="store_true", help="Keep an EMA of the trained weights and save it.")
    model.add_argument("--ema_decay", type=float, default=0.9999)
    model.add_argument("--gradient_checkpointing", action="store_true")
    model.add_argument(
        "--cache_latents",
        action="store_true",
        help="Encode every training clip once (the frozen VAE's latent mean and std, kept in memory and in "
        "OUTPUT_DIR/latent_cache.safetensors for resumed runs; a fine-tune run reuses the one in the pipeline folder "
        "it starts from when it was made from the same VAE and data) and draw each step's latents from them: "
        "the VAE then costs nothing per step.",
    )

    data = parser.add_argument_group("data")
    data.add_argument("--train_data_dir", required=True, help="A metadata.jsonl folder (e.g. `sg2vid make-dataset`).")
    data.add_argument(
        "--dataset_format",
        default="metadata_jsonl",
        choices=DATASET_FORMATS + tuple(CORPUS_FORMATS),
        help="metadata_jsonl (SG-Shapes folders are such folders), or a public corpus read from its "
        "published files (docs/corpora.md).",
    )
    data.add_argument("--split", default="train", help="The corpus split to train on (corpora only).")
    data.add_argument("--caption_column", default=None, help="A metadata field with each clip's caption (decoupled).")
    data.add_argument("--frame_stride", type=int, default=1, help="Keep every n-th frame of each clip.")
    data.add_argument("--num_frames", type=int, default=None, help="Frames per clip after the stride (checked).")
    data.add_argument(
        "--frame_window",
        type=int,
        default=None,
        help="Train on W consecutive frames of each clip, at a random position per clip and step, instead of "
        "all its frames: with a batch W/F times larger, the same compute sees F/W times more clips per step "
        "(clips of still scenes repeat one image F times). Each window keeps its frames' graph tokens "
        "(time spans are read on the whole clip). Default: the whole clip.",
    )
    data.add_argument(
        "--whole_clip_every",
        type=int,
        default=None,
        help="With --frame_window W: every N-th micro-batch trains on whole clips instead, the first B*W/F "
        "clips of its batch of B (about the same compute), so that temporal attention also sees whole clips "
        "(a model trained on windows alone lets moving objects change colour). Default: windows only.",
    )
    data.add_argument(
        "--resolution",
        type=int,
        default=None,
        help="Training size in pixels (default: the clips'); a size that divides the clips' size downsamples them.",
    )
    data.add_argument("--dataloader_num_workers", type=int, default=0)

    train = parser.add_argument_group("training")
    add_training_arguments(
        train, output_dir="sg2vid-model", train_batch_size=4, learning_rate=1e-4,
        lr_scheduler="constant_with_warmup", adam_beta2=0.999, adam_epsilon=1e-8,
    )  # fmt: skip
    train.add_argument("--adam_weight_decay", type=float, default=1e-2)
    train.add_argument("--validation_graphs", default=None, help="A .jsonl file of scene graphs to generate videos of.")
    train.add_argument("--num_validation_inference_steps", type=int, default=25)
    train.add_argument("--validation_guidance_scale", type=float, default=4.0)

    args = parser.parse_args(argv)
    if (args.pretrained_model_name_or_path is None) == (args.unet_config is None):
        parser.error("give exactly one of --pretrained_model_name_or_path and --unet_config")
    if args.unet_config is not None:
        if (args.vae is None) == (args.vae_config is None):
            parser.error("--unet_config needs exactly one of --vae and --vae_config")
        if args.sg_encoder is None:
            parser.error("--unet_config needs --sg_encoder")
        if args.rank is not None:
            parser.error("--rank adapts a pretrained UNet; with --unet_config the whole UNet trains")
        args.train_unet = True
    elif args.vae_config is not None:
        parser.error("--vae_config goes with --unet_config (a pipeline folder brings its VAE; --vae replaces it)")
    if args.rank is not None and args.train_unet:
        parser.error("--rank and --train_unet exclude each other (LoRA or the whole UNet)")
    check_training_arguments(
        parser, args,
        positive=("frame_stride", "num_validation_inference_steps", "rank", "num_frames", "resolution", "frame_window",
                  "whole_clip_every"),
    )  # fmt: skip
    if args.whole_clip_every is not None and args.frame_window is None:
        parser.error("--whole_clip_every mixes whole clips into --frame_window training: give --frame_window")
    if not 0 <= args.graph_dropout <= 1:
        parser.error(f"--graph_dropout must be in [0, 1], got {args.graph_dropout}")
    if args.layout_loss_weight < 0:
        parser.error(f"--layout_loss_weight must be >= 0, got {args.layout_loss_weight}")
    if args.graph_position_dim is not None and (args.graph_position_dim < 0 or args.graph_position_dim % 4):
        parser.error(f"--graph_position_dim must be 0 or a positive multiple of 4, got {args.graph_position_dim}")
    if args.frame_time_dim is not None and (args.frame_time_dim < 0 or args.frame_time_dim % 2):
        parser.error(f"--frame_time_dim must be 0 or a positive even number, got {args.frame_time_dim}")
    if args.graph_layout_motion and args.layout_loss_weight <= 0:
        parser.error("--graph_layout_motion trains with the layout loss: give --layout_loss_weight > 0")
    if args.layout_loss_weight > 0 and not args.train_sg_encoder:
        parser.error("--layout_loss_weight trains the graph encoder: add --train_sg_encoder")
    return args


def read_json(text_or_path):
    """JSON text (``{...}``) or a JSON file's content."""
    text = str(text_or_path).strip()
    return json.loads(text if text.startswith("{") else Path(text).read_text())


# ----------------------------------------------------------------------------- models


def load_models(args):
    """-> a SceneGraphToVideoPipeline of the models to train (its scheduler samples), and the training
    noise scheduler (DDPM, the same noise schedule)."""
    if args.unet_config is not None:
        sg_encoder = SceneGraphEncoder.from_pretrained(args.sg_encoder)
        config = {k: v for k, v in read_json(args.unet_config).items() if not k.startswith("_")}
        if config.get("graph_mode", "graph_only") != "graph_only":
            raise ValueError("--unet_config makes a graph-only UNet (no text encoder): drop graph_mode")
        dims = dict(graph_token_dim=3 * sg_encoder.config.output_dim, graph_global_dim=sg_encoder.config.output_dim)
        unet = SceneGraphUNet3DConditionModel.from_config({**config, **dims, "graph_mode": "graph_only"})
        if args.vae:
            vae = AutoencoderKL.from_pretrained(args.vae)
        else:
            vae = AutoencoderKL.from_config(read_json(args.vae_config))
        # Stable Diffusion's schedule, the one latent video models (ModelScope, Zeroscope) use.
        noise_scheduler = DDPMScheduler(
            beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False
        )
        scheduler = DDIMScheduler.from_config(noise_scheduler.config, set_alpha_to_one=False, steps_offset=1)
        pipeline = SceneGraphToVideoPipeline(vae, unet, scheduler, sg_encoder)
    else:
        path = args.pretrained_model_name_or_path
        pipeline_class = DiffusionPipeline.load_config(path).get("_class_name")
        if pipeline_class == SceneGraphToVideoPipeline.__name__:
            pipeline = SceneGraphToVideoPipeline.from_pretrained(path)
            if args.sg_encoder:
                pipeline.register_modules(sg_encoder=SceneGraphEncoder.from_pretrained(args.sg_encoder))
            if args.vae:  # a new latent space for the pipeline's UNet (the latent cache follows the VAE's weights)
                vae = AutoencoderKL.from_pretrained(args.vae)
                factor = vae_scale_factor(vae)
                if factor != pipeline.vae_scale_factor:
                    raise ValueError(
                        f"--vae {args.vae} downsamples frames {factor}x, the pipeline's VAE "
                        f"{pipeline.vae_scale_factor}x: the UNet was trained on latents of the latter's size"
                    )
                pipeline.register_modules(vae=vae)
        elif args.vae is not None:
            raise ValueError(f"--vae replaces the VAE of one of our pipeline folders; {path} is a {pipeline_class} folder")
        elif args.sg_encoder is None:
            raise ValueError(f"{path} is a {pipeline_class} folder: a text-to-video backbone needs --sg_encoder")
        else:  # decoupled graph attention on the text-to-video UNet, as conversion/convert_t2v_to_sg2vid.py does
            pipeline = load_t2v_as_sg2vid(path, args.sg_encoder, seed=args.seed)
        noise_scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
    if args.prediction_type is not None:
        noise_scheduler.register_to_config(prediction_type=args.prediction_type)
        pipeline.scheduler.register_to_config(prediction_type=args.prediction_type)

    unet, sg_encoder, vae = pipeline.unet, pipeline.sg_encoder, pipeline.vae
    if args.graph_position_dim is not None and args.graph_position_dim != unet.config.graph_position_dim:
        unet.enable_graph_positions(args.graph_position_dim)
    if args.graph_layout_bias and not unet.config.graph_layout_bias:
        unet.enable_graph_layout_bias()
    if args.frame_time_dim is not None and args.frame_time_dim != unet.config.frame_time_dim:
        unet.enable_frame_times(args.frame_time_dim)
    if args.graph_layout_motion and not unet.config.graph_layout_motion:
        unet.enable_graph_layout_motion()
    if unet.config.graph_layout_motion and args.layout_loss_weight <= 0:
        raise ValueError("a UNet with graph_layout_motion trains with the layout loss: give --layout_loss_weight > 0")
    if sg_encoder.vocab is None:
        raise ValueError("the scene-graph encoder has no vocabulary (vocab.json beside its weights)")
    width = sg_encoder.config.output_dim
    if (unet.config.graph_token_dim, unet.config.graph_global_dim) != (3 * width, width):
        raise ValueError(
            f"the UNet takes graph tokens of width {unet.config.graph_token_dim} and a global vector of "
            f"{unet.config.graph_global_dim}; the encoder gives {3 * width} and {width}"
        )
    if unet.config.in_channels != vae.config.latent_channels:
        raise ValueError(
            f"the UNet takes {unet.config.in_channels} latent channels, the VAE gives {vae.config.latent_channels}"
        )
    if unet.config.graph_mode == "decoupled" and pipeline.text_encoder is None:
        raise ValueError("a decoupled UNet needs a text_encoder and a tokenizer in the pipeline folder")
    pipeline.set_progress_bar_config(disable=True)
    return pipeline, noise_scheduler


def source_license(args):
    """The license in the starting model's card, if any (a backbone's license binds its fine-tunes)."""
    from huggingface_hub import ModelCard

    if args.pretrained_model_name_or_path is None:
        return None
    readme = Path(args.pretrained_model_name_or_path) / "README.md"
    return ModelCard.load(readme).data.license if readme.is_file() else None


# ----------------------------------------------------------------------------- data


class CaptionedClips(Dataset):
    """(clip, caption) pairs: the clips of a SceneGraphVideoDataset and the metadata field
    ``caption_column`` ("" without one), or the clips of a corpus (captions "")."""

    def __init__(self, clips, caption_column=None):
        self.clips, self.captions = clips, []
        if not hasattr(clips, "folder"):  # a corpus reader: graphs only
            if caption_column:
                raise ValueError(f"--caption_column needs a metadata_jsonl folder, not --dataset_format {type(clips).__name__}")
            self.captions = [""] * len(clips)
            return
        for record in clips.folder:
            caption = record.extra.get(caption_column, None) if caption_column else ""
            if not isinstance(caption, str):
                metadata = clips.folder.root / "metadata.jsonl"
                raise MetadataError(metadata, record.line_no, caption_column, f"expected a string, got {caption!r}")
            self.captions.append(caption)

    def __len__(self):
        return len(self.clips)

    def __getitem__(self, index):
        return self.clips[index], self.captions[index]


def collate(items, vocab):
    examples, captions = zip(*items)
    return collate_pretraining_examples(examples, vocab), list(captions)


LATENT_CACHE_NAME = "latent_cache.safetensors"


class CachedLatentBatch:
    """What the training loop reads of a batch when the latents are cached: their distribution
    (mean, std; (B, C, F, h, w), unscaled), the collated graphs, and the objects' boxes and
    ``maskable`` rows as :class:`PretrainingBatch` has them (for the layout loss)."""

    def __init__(self, mean, std, graphs, object_boxes, maskable):
        self.mean, self.std, self.graphs = mean, std, graphs
        self.object_boxes, self.maskable = object_boxes, maskable

    def to(self, device):
        return CachedLatentBatch(
            self.mean.to(device), self.std.to(device), self.graphs.to(device), self.object_boxes.to(device),
            self.maskable.to(device),
        )  # fmt: skip


class CachedLatentClips(Dataset):
    """(latent mean, latent std, scene graph, boxes or None, caption) of each training clip."""

    def __init__(self, mean, std, graphs, boxes, captions):
        self.mean, self.std, self.graphs, self.boxes, self.captions = mean, std, graphs, boxes, captions

    def __len__(self):
        return len(self.graphs)

    def __getitem__(self, index):
        return self.mean[index], self.std[index], self.graphs[index], self.boxes[index], self.captions[index]


def collate_cached(items, vocab):
    means, stds, graphs, boxes, captions = zip(*items)
    graph_batch = collate_scene_graphs(list(graphs), vocab)
    num_frames = means[0].shape[1]
    object_boxes, maskable = object_box_rows(graphs, boxes, graph_batch.objs.size(0), num_frames)
    batch = CachedLatentBatch(torch.stack(means), torch.stack(stds), graph_batch, object_boxes, maskable)
    return batch, list(captions)


@torch.no_grad()
def cache_latents(train_set, vae, args, accelerator, vocab):
    """The latent distribution of every training clip under the frozen VAE, computed once (on the main
    process, in batches, with a progress bar) and stored in OUTPUT_DIR/latent_cache.safetensors; a run
    that finds a cache made from the same VAE (weights and config, not where it was loaded from) and
    data reuses it: its own (a resumed run) or, for a fine-tune run, the one in the pipeline folder it
    starts from (a folder this script saved), linked or copied into OUTPUT_DIR."""
    path = Path(args.output_dir) / LATENT_CACHE_NAME
    start = Path(args.pretrained_model_name_or_path) / LATENT_CACHE_NAME if args.pretrained_model_name_or_path else None
    digest = hashlib.sha256()
    for name, tensor in sorted(vae.state_dict().items()):
        digest.update(name.encode() + tensor.detach().float().cpu().numpy().tobytes())
    key = json.dumps(
        {"vae": {k: v for k, v in vae.config.items() if not k.startswith("_")}, "weights": digest.hexdigest(), "data": str(args.train_data_dir), "clips": len(train_set), "frames": args.num_frames,
         "resolution": args.resolution, "stride": args.frame_stride, "format": args.dataset_format},
        sort_keys=True, default=str,
    )  # fmt: skip

    def read(file, tensors=True):
        """The cache's (mean, std) (or True, with tensors=False) when ``file`` holds one with this key."""
        if file is None or not file.is_file():
            return None
        with safe_open(str(file), "pt") as f:
            if (f.metadata() or {}).get("key") != key:
                return None
            return (f.get_tensor("mean"), f.get_tensor("std")) if tensors else True

    cached = read(path) if accelerator.is_main_process else None
    if accelerator.is_main_process and cached is None and start != path and read(start, tensors=False):
        with atomic_path(path) as tmp:
            tmp.unlink()
            try:
                os.link(start, tmp)  # no second copy of a cache that can be hundreds of MB
            except OSError:
                shutil.copyfile(start, tmp)
        logger.info(f"latents: reusing the cache of {start.parent}")
        cached = read(path)
    if accelerator.is_main_process and cached is None:
        loader = DataLoader(
            train_set, batch_size=8, collate_fn=functools.partial(collate, vocab=vocab),
            num_workers=args.dataloader_num_workers,
        )  # fmt: skip
        means, stds = [], []
        for batch, _ in tqdm(loader, desc="caching latents", disable=not accelerator.is_local_main_process):
            videos = resize_videos(batch.videos, args.resolution).to(accelerator.device)
            dist = vae.encode((videos.flatten(0, 1) * 2 - 1).to(vae.dtype)).latent_dist
            for value, out in ((dist.mean, means), (dist.std, stds)):  # (B*F, C, h, w) -> (B, C, F, h, w)
                out.append(rearrange(value.float(), "(b f) c h w -> b c f h w", b=len(videos)).contiguous().cpu())
        cached = torch.cat(means), torch.cat(stds)
        with atomic_path(path) as tmp:
            save_file({"mean": cached[0], "std": cached[1]}, str(tmp), metadata={"key": key})
    accelerator.wait_for_everyone()
    mean, std = cached if cached is not None else read(path)
    # Boxes only feed the layout loss: without it a corpus is not read a second time for them.
    boxes = clip_boxes(train_set, args) if args.layout_loss_weight > 0 else [None] * len(train_set)
    return CachedLatentClips(mean, std, clip_scene_graphs(train_set), boxes, train_set.captions)


def clip_scene_graphs(train_set):
    """The scene graph of every training clip; a metadata folder's without reading any frames."""
    clips = train_set.clips
    if hasattr(clips, "folder"):
        return [record.scene_graph for record in clips.folder]
    return [clips[i].scene_graph for i in range(len(clips))]


def clip_boxes(train_set, args):
    """Every training clip's (F, n, 4) boxes after --frame_stride (None for a clip without), read from
    the metadata; a corpus's from its clips."""
    clips = train_set.clips
    if hasattr(clips, "folder"):
        return [None if r.boxes is None else r.boxes[:: args.frame_stride] for r in clips.folder]
    return [getattr(clips[i], "boxes", None) for i in range(len(clips))]


def check_clip_shape(args, clip_frames, vae_scale_factor):
    """Fill in --num_frames and --resolution from the data, or check them against it."""
    num_frames, height, width = clip_frames.shape[:3]
    if args.num_frames is None:
        args.num_frames = num_frames
    elif args.num_frames != num_frames:
        raise ValueError(
            f"--num_frames {args.num_frames}, but the clips have {num_frames} frames after --frame_stride "
            f"{args.frame_stride}: choose the stride that gives {args.num_frames} frames"
        )
    if args.frame_window is not None and args.frame_window > args.num_frames:
        raise ValueError(f"--frame_window {args.frame_window} is longer than the clips ({args.num_frames} frames)")
    if args.resolution is None:
        args.resolution = height
    if height != width or height % args.resolution:
        raise ValueError(
            f"--resolution {args.resolution} does not fit the clips' {height}x{width} frames: "
            f"frames must be square and the resolution must divide their size (it downsamples)"
        )
    if args.resolution % vae_scale_factor:
        raise ValueError(f"--resolution {args.resolution} must be a multiple of the VAE's factor {vae_scale_factor}")


# ----------------------------------------------------------------------------- validation and model card


@torch.no_grad()
def log_validation(pipeline, graphs, args, accelerator, step):
    """Generate one video per validation graph with the current weights; write and log them."""
    pipeline.unet.eval()
    generator = torch.Generator().manual_seed(args.seed)
    videos = pipeline(
        scene_graph=graphs,
        num_frames=args.num_frames,
        height=args.resolution,
        width=args.resolution,
        num_inference_steps=args.num_validation_inference_steps,
        guidance_scale=args.validation_guidance_scale,
        generator=generator,
    ).frames  # (V, F, H, W, 3) in [0, 1]
    pipeline.unet.train()
    folder = Path(args.output_dir) / "validation" / f"step-{step}"
    paths = [write_video(folder / f"{i:02d}.mp4", video) for i, video in enumerate(videos)]
    atomic_write_text(folder / "graphs.jsonl", "".join(json.dumps(graph.to_json()) + "\n" for graph in graphs))
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            for i, video in enumerate(videos):
                tracker.writer.add_images(f"validation/{i:02d}", video, step, dataformats="NHWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log({"validation": [wandb.Video(str(p), caption=str(i)) for i, p in enumerate(paths)]}, step=step)
    logger.info(f"validation, step {step}: {len(paths)} videos in {folder}")


def write_model_card(args, info):
    from huggingface_hub import ModelCard, ModelCardData

    card_data = ModelCardData(
        license=info["license"],
        library_name="diffusers",
        tags=["sg2vid-diffusers", "scene-graph", "scene-graph-to-video", "video", "diffusion"],
    )
    repo = args.hub_model_id or args.output_dir
    what = ["graph projections, null-graph token and graph attention processors"]
    if args.train_unet:
        what.append("the whole UNet")
    if args.rank:
        what.append(f"a rank-{args.rank} LoRA on the spatial attention layers")
    if args.train_sg_encoder:
        what.append("the scene-graph encoder")
    lora = [f'pipe.load_lora_weights("{repo}")  # the LoRA, beside the pipeline'] if args.rank else []
    start = f"`{args.pretrained_model_name_or_path}`" if args.pretrained_model_name_or_path else "a new UNet"
    encoder = f"`{args.sg_encoder}`" if args.sg_encoder else "the pipeline's"
    if args.vae and args.pretrained_model_name_or_path:
        start += f" with its VAE replaced by `{args.vae}`"
    lines = [
        "---",
        card_data.to_yaml(),
        "---",
        "",
        "# Scene graph to video",
        "",
        f"A `SceneGraphToVideoPipeline` (sg2vid-diffusers, {info['graph_mode']} graph attention) trained with "
        "`training/train_video.py`: SGDiff's scene-graph conditioning carried to video diffusion.",
        "",
        "```python",
        "import torch",
        "from sg2vid_diffusers import SceneGraphToVideoPipeline",
        "from sg2vid_diffusers.video_io import write_video",
        "",
        f'pipe = SceneGraphToVideoPipeline.from_pretrained("{repo}")',
        *lora,
        'graph = {"objects": [...], "relationships": [[0, "left of", 1]]}',
        f"video = pipe(scene_graph=graph, num_frames={args.num_frames}, height={args.resolution}, "
        f"width={args.resolution}, generator=torch.Generator().manual_seed(0)).frames[0]",
        'write_video("video.mp4", video)',
        "```",
        "",
        "## Training",
        "",
        f"- start: {start}; graph encoder: {encoder} ({'fine-tuned' if args.train_sg_encoder else 'frozen'})",
        f"- data: `{args.train_data_dir}` ({args.dataset_format}, {info['num_clips']} clips of {args.num_frames} "
        f"frames after stride {args.frame_stride}, trained at {args.resolution}x{args.resolution})",
        f"- trained: {'; '.join(what)}",
        f"- steps: {info['steps']}, global batch {info['global_batch']} ({info['num_processes']} processes x "
        f"{args.train_batch_size} x {args.gradient_accumulation_steps} accumulation), wall time {info['wall_time']}",
        f"- AdamW lr {args.learning_rate} ({args.lr_scheduler}, {args.lr_warmup_steps} warm-up steps), weight decay "
        f"{args.adam_weight_decay}, mixed precision {args.mixed_precision or 'no'}, seed {args.seed}",
        f"- objective: {info['prediction_type']}, Min-SNR gamma {args.snr_gamma}, graph dropout {args.graph_dropout}"
        + (f", EMA (decay {args.ema_decay}) weights saved" if args.use_ema else ""),
        "",
        "Command:",
        "",
        "```bash",
        info["command"],
        "```",
    ]
    if info["validation_folder"]:
        lines += ["", f"Validation videos of the graphs in `{args.validation_graphs}`: `{info['validation_folder']}`."]
    ModelCard("\n".join(lines) + "\n").save(os.path.join(args.output_dir, "README.md"))


# ----------------------------------------------------------------------------- main


def main(args):
    output_dir = Path(args.output_dir)
    set_seed(args.seed)  # a UNet from --unet_config starts from the same weights in every process
    pipeline, noise_scheduler = load_models(args)
    vae, unet, sg_encoder, text_encoder = pipeline.vae, pipeline.unet, pipeline.sg_encoder, pipeline.text_encoder
    vocab = sg_encoder.vocab

    # Data before anything starts: a bad metadata line or validation graph fails here, with its place.
    if args.dataset_format == "metadata_jsonl":
        clips = SceneGraphVideoDataset(args.train_data_dir, vocab, frame_stride=args.frame_stride)
    else:  # read at the training resolution; names the vocabulary lacks are dropped and reported
        clips = load_corpus(
            args.dataset_format, args.train_data_dir, split=args.split, vocab=vocab, num_frames=args.num_frames,
            frame_stride=args.frame_stride, resolution=args.resolution,
        )  # fmt: skip
        logging.getLogger(__name__).info(f"{args.dataset_format}: {len(clips)} clips; {clips.report}")
    train_set = CaptionedClips(clips, args.caption_column)
    if args.layout_loss_weight > 0:
        has_boxes = any(boxes is not None for boxes in clip_boxes(train_set, args)) or any(
            obj.box is not None for graph in clip_scene_graphs(train_set) for obj in graph.objects
        )
        if not has_boxes:
            raise ValueError(
                f"--layout_loss_weight needs boxes (metadata \"boxes\" or boxes in the graphs), and no clip of "
                f"{args.train_data_dir} has any"
            )
    check_clip_shape(args, clips[0].frames, pipeline.vae_scale_factor)
    if args.unet_config is not None:  # a new UNet's default size (the pipeline's default) is the training size
        unet.register_to_config(sample_size=args.resolution // pipeline.vae_scale_factor)
    validation_graphs = None
    if args.validation_graphs:
        validation_graphs = parse_scene_graphs(
            Path(args.validation_graphs), vocab=vocab, max_triples=sg_encoder.config.max_local_triples
        )

    # Several processes (torchrun) without CUDA join only through the CPU backend; otherwise each
    # would silently train alone.
    several_cpu_processes = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(project_dir=output_dir, logging_dir=output_dir / args.logging_dir),
        step_scheduler_with_optimizer=False,  # the loop steps the schedule once per optimizer step
        cpu=args.cpu or several_cpu_processes,
    )
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    logger.info(accelerator.state, main_process_only=False)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        if args.push_to_hub:
            from huggingface_hub import create_repo

            repo = create_repo(args.hub_model_id or output_dir.name, exist_ok=True, token=args.hub_token)
            args.hub_model_id = repo.repo_id

    # What trains. Frozen weights stay in float32 (the saved pipeline keeps them exactly); mixed
    # precision runs the compute in half precision through autocast.
    if args.rank:
        targets = lora_target_modules(unet, scope="spatial")
        unet.add_adapter(
            LoraConfig(r=args.rank, lora_alpha=args.rank, init_lora_weights="gaussian", target_modules=targets)
        )
    trainable = set_trainable_parameters(unet, sg_encoder, args.train_unet, args.train_sg_encoder)
    params = [param for _, param in trainable]
    for module in (vae, text_encoder):
        if module is not None:
            module.requires_grad_(False).eval().to(accelerator.device)
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    denoiser = GraphConditionedDenoiser(unet, sg_encoder).train()

    optimizer = torch.optim.AdamW(
        params,
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
    )
    lr_scheduler = get_scheduler(
        args.lr_scheduler, optimizer, num_warmup_steps=args.lr_warmup_steps, num_training_steps=args.max_train_steps
    )
    model, optimizer, lr_scheduler = accelerator.prepare(denoiser, optimizer, lr_scheduler)  # model: DDP-wrapped
    ema = None
    if args.use_ema:
        ema = EMAModel(params, decay=args.ema_decay)
        ema.to(accelerator.device)
        accelerator.register_for_checkpointing(ema)

    # Checkpoints hold the weights that train (named as in `denoiser`, whatever the number of
    # processes), not the frozen backbone, which is reloaded from its source.
    def save_trained_weights(models, weights, checkpoint_dir):
        if accelerator.is_main_process:
            state = {name: param.detach().contiguous() for name, param in trainable}
            save_file(state, Path(checkpoint_dir) / TRAINED_WEIGHTS_NAME)
        weights.clear()  # Accelerate writes no model file of its own

    def load_trained_weights(models, checkpoint_dir):
        state = load_file(Path(checkpoint_dir) / TRAINED_WEIGHTS_NAME)
        names, saved = {name for name, _ in trainable}, set(state)
        if saved != names:
            raise ValueError(
                f"{checkpoint_dir} holds other trained weights than this run trains (another --rank, --train_unet "
                f"or --train_sg_encoder?): missing {sorted(names - saved)[:3]}, extra {sorted(saved - names)[:3]}"
            )
        with torch.no_grad():
            for name, param in trainable:
                param.copy_(state[name])
        models.clear()  # Accelerate loads no model file of its own

    accelerator.register_save_state_pre_hook(save_trained_weights)
    accelerator.register_load_state_pre_hook(load_trained_weights)

    global_step = 0
    elapsed_before = 0.0  # wall time of the runs this one resumes
    if args.resume_from_checkpoint:
        checkpoint = find_resume_checkpoint(args.resume_from_checkpoint, output_dir)
        if checkpoint is None:
            logger.info(f"Checkpoint {args.resume_from_checkpoint!r} not found: starting a new run.")
        else:
            logger.info(f"Resuming from {checkpoint}")
            accelerator.load_state(str(checkpoint))
            if ema is not None:
                ema.to(accelerator.device)  # its state comes back on the CPU
            global_step = int(CHECKPOINT_PATTERN.match(checkpoint.name).group(1))
            wall_time_file = checkpoint / "wall_time.json"
            if wall_time_file.exists():
                elapsed_before = json.loads(wall_time_file.read_text())["seconds"]
    first_step = global_step

    sampler = EpochBatches(
        len(train_set),
        args.train_batch_size,
        accelerator.num_processes,
        accelerator.process_index,
        args.seed,
        start=global_step * args.gradient_accumulation_steps,
    )
    if args.whole_clip_every is not None:
        whole_clips = max(1, args.train_batch_size * args.frame_window // args.num_frames)
        sampler = WholeClipBatches(sampler, args.whole_clip_every, whole_clips)
        logger.info(f"1 micro-batch in {args.whole_clip_every}: {whole_clips} whole clips instead of windows")
    if args.cache_latents:
        train_set = cache_latents(train_set, vae, args, accelerator, vocab)
    micro_batches = iter(
        DataLoader(
            train_set,
            batch_sampler=sampler,
            collate_fn=functools.partial(collate_cached if args.cache_latents else collate, vocab=vocab),
            num_workers=args.dataloader_num_workers,
        )
    )
    if accelerator.is_main_process:
        tracker_config = {k: v for k, v in vars(args).items() if v is not None}
        accelerator.init_trackers("train_video", config=tracker_config)
    global_batch = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    logger.info(
        f"{len(train_set)} clips of {args.num_frames} frames at {args.resolution}x{args.resolution}, "
        f"{sampler.batches_per_epoch} global batches per epoch; num_processes={accelerator.num_processes} x "
        f"{args.train_batch_size} clips x {args.gradient_accumulation_steps} accumulation = {global_batch} clips "
        "per step; "
        f"{sum(p.numel() for p in params):,} trained weights in {len(params)} tensors; "
        f"steps {global_step} -> {args.max_train_steps}"
    )

    def run_validation(step):
        if accelerator.is_main_process:
            if ema is not None:  # validate the weights that will be saved
                ema.store(params)
                ema.copy_to(params)
            log_validation(pipeline, validation_graphs, args, accelerator, step)
            if ema is not None:
                ema.restore(params)
        accelerator.wait_for_everyone()

    start_time = time.time()

    def record_wall_time(folder):
        atomic_write_text(folder / "wall_time.json", json.dumps({"seconds": elapsed_before + time.time() - start_time}))

    progress = tqdm(
        range(args.max_train_steps), initial=global_step, desc="steps", disable=not accelerator.is_local_main_process
    )
    stopping = False
    with StopRequest() as stop:  # SIGTERM, Ctrl-C: a checkpoint of the step in progress, then exit
        for step in range(global_step, args.max_train_steps):
            step_loss = step_layout_loss = 0.0
            for micro in range(args.gradient_accumulation_steps):
                micro_batch = step * args.gradient_accumulation_steps + micro
                batch, captions = next(micro_batches)
                batch = batch.to(accelerator.device)
                # Every random draw of this micro-batch comes from its own generator: a resumed run draws the same.
                generator = step_generator(args.seed, micro_batch, accelerator.process_index)
                if args.cache_latents:  # a fresh draw from each latent posterior, as encode_videos makes
                    sample = torch.randn(batch.mean.shape, generator=generator).to(batch.mean.device)
                    latents = (batch.mean + batch.std * sample) * vae.config.scaling_factor
                else:
                    videos = resize_videos(batch.videos, args.resolution)  # (B, F, 3, R, R) in [0, 1]
                    # In float32, outside autocast: half-precision VAEs can overflow (SDXL's does).
                    latents = encode_videos(vae, videos, generator=generator)  # (B, C, F, h, w)
                batch_size = latents.shape[0]
                frame_starts = None
                whole = args.whole_clip_every is not None and sampler.is_whole(micro_batch)
                if args.frame_window is not None and not whole:  # drawn from this micro-batch's generator
                    # (B,) on the CPU: checked there without a device sync; the helpers move their indices.
                    frame_starts = sample_frame_windows(args.num_frames, args.frame_window, batch_size, generator)
                    latents = take_frame_windows(latents, frame_starts, args.frame_window)
                noise = torch.randn(latents.shape, generator=generator).to(latents.device)
                num_train_timesteps = noise_scheduler.config.num_train_timesteps
                timesteps = torch.randint(0, num_train_timesteps, (batch_size,), generator=generator).to(latents.device)
                drop = sample_graph_dropout(batch_size, args.graph_dropout, generator, device=latents.device)
                noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
                target = diffusion_target(noise_scheduler, latents, noise, timesteps)
                text_states = None
                if text_encoder is not None:
                    # A dropped graph drops its caption too: sampling's unconditional branch is (null graph, "").
                    prompts = ["" if dropped else caption for caption, dropped in zip(captions, drop.tolist())]
                    with torch.no_grad():
                        text_states = pipeline.encode_prompt(prompts, batch_size, accelerator.device)

                last = micro == args.gradient_accumulation_steps - 1
                with contextlib.nullcontext() if last else accelerator.no_sync(model):
                    layout = 0.0  # the layout loss, when it is on
                    model_pred = model(
                        noisy_latents, timesteps, batch.graphs, drop, encoder_hidden_states=text_states,
                        frame_starts=frame_starts, num_clip_frames=args.num_frames,
                        return_object_vectors=args.layout_loss_weight > 0,
                    )  # fmt: skip
                    if args.layout_loss_weight > 0:
                        model_pred, object_vectors = model_pred
                        layout = layout_loss(
                            object_vectors, batch.object_boxes, batch.maskable, motion=unet.config.graph_layout_motion
                        )
                        step_layout_loss += layout.item() / args.gradient_accumulation_steps
                    loss = diffusion_loss(model_pred, target, timesteps, noise_scheduler, snr_gamma=args.snr_gamma)
                    accelerator.backward((loss + args.layout_loss_weight * layout) / args.gradient_accumulation_steps)
                step_loss += loss.item() / args.gradient_accumulation_steps
            if args.max_grad_norm > 0:
                accelerator.clip_grad_norm_(params, args.max_grad_norm)
            lr = lr_scheduler.get_last_lr()[0]  # the rate this step uses
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.step(params)
            global_step = step + 1

            losses = torch.tensor([step_loss, step_layout_loss], device=accelerator.device)
            loss_mean, layout_mean = accelerator.reduce(losses, reduction="mean").tolist()
            shown = {"loss": f"{loss_mean:.4f}"}
            if args.layout_loss_weight > 0:
                shown["layout"] = f"{layout_mean:.4f}"
            shown["lr"] = f"{lr:.2e}"
            if step == first_step or global_step == args.max_train_steps:
                logger.info(f"step {global_step}: " + ", ".join(f"{k} {v}" for k, v in shown.items()))
            progress.update(1)
            progress.set_postfix(shown)
            epoch = micro_batch // sampler.batches_per_epoch
            logged = {"loss": loss_mean, "lr": lr, "epoch": epoch}
            if args.layout_loss_weight > 0:
                logged["layout_loss"] = layout_mean
            accelerator.log(logged, step=global_step)

            # The last step too: a finished run's last checkpoint says it finished (the recipe reads that) and
            # resumes exactly when more steps are asked for.
            last_step = global_step == args.max_train_steps
            stopping = stop.should_stop(accelerator) and not last_step
            if global_step % args.checkpointing_steps == 0 or last_step or stopping:
                save_checkpoint(
                    accelerator, output_dir, global_step, args.checkpoints_total_limit, write_extra=record_wall_time
                )
            if stopping:
                break
            if validation_graphs and (global_step % args.validation_steps == 0 or last_step):
                run_validation(global_step)
    progress.close()
    if stopping:
        stop.exit(accelerator, global_step, args.max_train_steps)
    wall_time = elapsed_before + time.time() - start_time

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if ema is not None:
            ema.copy_to(params)
        if args.rank:
            lora_layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
            SceneGraphToVideoPipeline.save_lora_weights(
                output_dir,
                unet_lora_layers=lora_layers,
                weight_name=LORA_WEIGHTS_NAME,
                unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(),
            )
            unet.unload_lora()  # the pipeline folder keeps the backbone as it was
        pipeline.save_pretrained(output_dir)
        info = {
            "graph_mode": unet.config.graph_mode,
            "num_clips": len(train_set),
            "steps": global_step,
            "global_batch": global_batch,
            "num_processes": accelerator.num_processes,
            "wall_time": f"{wall_time / 3600:.2f} h" if wall_time > 3600 else f"{wall_time:.0f} s",
            "prediction_type": noise_scheduler.config.prediction_type,
            "command": " ".join(["accelerate launch", os.path.relpath(sys.argv[0]), *sys.argv[1:]]),
            "validation_folder": "validation/" if validation_graphs else None,
            "license": source_license(args),
        }
        write_model_card(args, info)
        logger.info(f"Saved the pipeline to {output_dir} (wall time {info['wall_time']})")
        if args.push_to_hub:
            push_output_to_hub(output_dir, args.hub_model_id, args.hub_token, args.logging_dir)
    accelerator.end_training()


if __name__ == "__main__":
    main(parse_args())
