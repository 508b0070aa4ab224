#!/usr/bin/env python
"""Train a frame autoencoder (diffusers ``AutoencoderKL``) for a video diffusion model.

    accelerate launch training/train_vae.py \\
        --train_data_dir data/sg-shapes/train --validation_data_dir data/sg-shapes/validation \\
        --vae_config '{"block_out_channels": [32, 64, 64], "latent_channels": 4}' \\
        --output_dir sg-shapes-vae --max_train_steps 4000

The pipeline decodes every frame of a video with this VAE (``SceneGraphToVideoPipeline.decode_latents``),
so the diffusion model can only be as good as its reconstructions. Validation reconstructs the
validation clips and, when their graphs are SG-Shapes graphs, scores the reconstructions with the
conformance metric (``sg2vid evaluate``'s figures): they should score near 1.0 before a UNet is
trained on top. The loss is MSE (or, with ``--reconstruction_loss l1``, L1, which keeps edges sharper
on flat-colored frames) on pixels in [-1, 1] plus ``--kl_weight`` x KL.

``--train_decoder_only`` (with ``--pretrained_vae``) fine-tunes the decoder of a VAE a diffusion model
already works in: the encoder, and so the latent space and ``scaling_factor``, stay exactly as they were,
so the UNet needs no retraining. With ``--decoder_noise S`` the decoder is trained on latents
perturbed by Gaussian noise of up to S (in the diffusion model's scaled latent units, where the
latents' standard deviation is 1): a diffusion model's samples never lie exactly on the encoder's
latents, and a decoder that has only seen clean ones decodes a slightly-off latent as an in-between
colour; trained on perturbed ones (best with the L1 loss, whose optimum per pixel is the median, so an
ambiguous latent decodes to the likelier of two colours rather than their mix) it decodes the
neighbourhood of each clean latent to that latent's frame.

``--colour_separation_weight W`` (SG-Shapes-style data: objects in the palette colours of
``sg2vid_diffusers.data.sg_shapes.COLORS``) adds W x a linear-probe cross-entropy on the latents:
each latent cell mostly covered by one palette colour must be classified as that colour by fixed-norm
class directions on latents divided by their batch standard deviation (:func:`colour_separation_loss`).
That can only be met by latents whose colours lie apart relative to the latents' spread, which is the
space the diffusion model works in: a VAE trained without it put red and magenta 2.19 apart where cyan
was at least 5.15 from every colour, and the denoiser swapped the close ones
(``training/colour_diagnostics.py --vae DIR`` prints the distances).

``--latent_anchor_weight W`` (with ``--pretrained_vae``) adds W x the mean squared distance between
the posterior means and those of a frozen copy of the starting VAE's encoder, in its scaled latent
units: the latent space moves only as far as the other terms (the colour probe) need, so a UNet
trained on the starting VAE can be fine-tuned onto the new one rather than trained from scratch.

The output folder is ``AutoencoderKL.save_pretrained`` with ``scaling_factor`` set to 1 / (the
latents' standard deviation on the training frames), as latent diffusion expects, plus a model card.
``checkpoint-N`` folders resume a run (``--resume_from_checkpoint latest``) at the same step with the
same data order.
"""

import argparse
import copy
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers import AutoencoderKL
from diffusers.optimization import get_scheduler
from tqdm.auto import tqdm

from sg2vid_diffusers.data.video_folder import SceneGraphVideoFolder
from sg2vid_diffusers.scene_graph import SceneGraphError
from sg2vid_diffusers.training_utils import (
    EpochBatches,
    StopRequest,
    find_resume_checkpoint,
    save_checkpoint,
    step_generator,
)
from sg2vid_diffusers.utils import atomic_write_text, vae_scale_factor

logger = get_logger(__name__)

DEFAULT_VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    "block_out_channels": [32, 64, 64],
    "latent_channels": 4,
    "layers_per_block": 1,
    "norm_num_groups": 16,
    "sample_size": 64,
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train_data_dir", required=True, help="metadata.jsonl folder (sg2vid make-dataset)")
    p.add_argument("--validation_data_dir", help="metadata.jsonl folder for validation")
    p.add_argument("--num_validation_clips", type=int, default=32)
    p.add_argument("--vae_config", help="JSON text or file: AutoencoderKL config (default: a small f4 model)")
    p.add_argument("--pretrained_vae", help="an AutoencoderKL folder to continue from")
    p.add_argument(
        "--train_decoder_only", action="store_true",
        help="train only the decoder (needs --pretrained_vae): the latent space and scaling_factor stay as they were",
    )  # fmt: skip
    p.add_argument(
        "--decoder_noise", type=float, default=0.0,
        help="train the decoder on latents plus Gaussian noise of a standard deviation drawn per frame from "
        "[0, S], in scaled latent units (needs --train_decoder_only)",
    )  # fmt: skip
    p.add_argument("--output_dir", required=True)
    p.add_argument("--train_batch_size", type=int, default=32, help="frames per batch and process")
    p.add_argument("--learning_rate", type=float, default=1e-3)
    p.add_argument("--lr_scheduler", default="cosine")
    p.add_argument("--lr_warmup_steps", type=int, default=100)
    p.add_argument("--max_train_steps", type=int, default=2000)
    p.add_argument("--kl_weight", type=float, default=1e-6)
    p.add_argument("--reconstruction_loss", choices=["mse", "l1"], default="mse", help="pixel loss (mse is logged either way)")
    p.add_argument(
        "--colour_separation_weight", type=float, default=0.0,
        help="weight of the palette-colour probe loss on the latents (SG-Shapes colours; 0: off)",
    )  # fmt: skip
    p.add_argument(
        "--latent_anchor_weight", type=float, default=0.0,
        help="with --pretrained_vae: weight of the mean squared distance between the posterior means and those of "
        "the VAE it starts from, in that VAE's scaled latent units (so that a UNet trained on that VAE can be "
        "fine-tuned onto this one; 0: off)",
    )  # fmt: skip
    p.add_argument("--max_grad_norm", type=float, default=1.0)
    p.add_argument("--checkpointing_steps", type=int, default=500)
    p.add_argument("--checkpoints_total_limit", type=int, default=2)
    p.add_argument("--resume_from_checkpoint", help='"latest" or a checkpoint folder')
    p.add_argument("--validation_steps", type=int, default=500)
    p.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default="no")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report_to", default=None, help="tensorboard, wandb, all or none (the default)")
    args = p.parse_args(argv)
    for name in ("train_batch_size", "max_train_steps", "checkpointing_steps", "validation_steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    if args.vae_config and args.pretrained_vae:
        p.error("give --vae_config or --pretrained_vae, not both")
    if args.train_decoder_only and not args.pretrained_vae:
        p.error("--train_decoder_only fine-tunes a trained VAE: give --pretrained_vae")
    if not (args.decoder_noise >= 0 and np.isfinite(args.decoder_noise)):
        p.error(f"--decoder_noise must be a finite number >= 0, got {args.decoder_noise}")
    if not (args.colour_separation_weight >= 0 and np.isfinite(args.colour_separation_weight)):
        p.error(f"--colour_separation_weight must be a finite number >= 0, got {args.colour_separation_weight}")
    if args.colour_separation_weight > 0 and args.train_decoder_only:
        p.error("--colour_separation_weight shapes the latent space, which --train_decoder_only keeps fixed")
    if not (args.latent_anchor_weight >= 0 and np.isfinite(args.latent_anchor_weight)):
        p.error(f"--latent_anchor_weight must be a finite number >= 0, got {args.latent_anchor_weight}")
    if args.latent_anchor_weight > 0 and not args.pretrained_vae:
        p.error("--latent_anchor_weight keeps the latents near those of the VAE it starts from: give --pretrained_vae")
    if args.latent_anchor_weight > 0 and args.train_decoder_only:
        p.error("--latent_anchor_weight anchors a moving latent space, which --train_decoder_only keeps fixed")
    if args.decoder_noise > 0 and not args.train_decoder_only:
        p.error("--decoder_noise trains the decoder on perturbed latents of a fixed encoder: add --train_decoder_only")
    return args


def load_frames(folder: SceneGraphVideoFolder, limit: int | None = None) -> torch.Tensor:
    """Every frame of the folder's clips: (N, 3, H, W) uint8."""
    clips = [record.read_frames() for record in list(folder)[:limit]]
    sizes = {clip.shape[1:] for clip in clips}
    if len(sizes) != 1:
        raise ValueError(f"{folder.root}: clips must share one frame size, found {sorted(sizes)}")
    return torch.from_numpy(np.concatenate(clips)).permute(0, 3, 1, 2).contiguous()


def to_unit_range(frames: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float in [-1, 1]."""
    return frames.float() / 127.5 - 1


@torch.no_grad()
def reconstruct(vae: AutoencoderKL, video: np.ndarray) -> np.ndarray:
    """(F, H, W, 3) uint8 -> the VAE's reconstruction, same shape and dtype (posterior mode)."""
    x = to_unit_range(torch.from_numpy(video).permute(0, 3, 1, 2)).to(vae.device, vae.dtype)
    out = vae.decode(vae.encode(x).latent_dist.mode()).sample.float().clamp(-1, 1)
    return ((out + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def validate(vae: AutoencoderKL, folder: SceneGraphVideoFolder, limit: int) -> dict:
    """Reconstruction MSE (in [-1, 1] units) and, for SG-Shapes graphs, the conformance figures."""
    from sg2vid_diffusers.evaluation.conformance import score_video, summarize

    errors, scores = [], []
    for record in list(folder)[:limit]:
        video = record.read_frames()
        recon = reconstruct(vae, video)
        errors.append(float(((recon.astype(np.float32) - video) / 127.5).__pow__(2).mean()))
        try:
            scores.append(score_video(recon, record.scene_graph))
        except SceneGraphError:
            pass  # not an SG-Shapes graph: MSE only
    figures = {"mse": float(np.mean(errors))}
    if scores:
        report = summarize(scores)
        figures.update({f"conformance/{k}": v for k, v in report.to_dict().items() if isinstance(v, float)})
    return figures


COLOUR_PROBE_TEMPERATURE = 4.0  # logits = this x cosine-free dot products with unit class directions
COLOUR_CELL_SHARE = 0.25  # a latent cell is labelled with a colour covering at least this share of its pixels


def colour_cell_labels(frames: torch.Tensor, factor: int) -> torch.Tensor:
    """(N, 3, H, W) uint8 frames -> (N, H/factor, W/factor) long: the palette colour (index into
    ``COLORS``) covering the most pixels of each latent cell, or -1 where none covers
    ``COLOUR_CELL_SHARE`` of it (background, or too little of an object)."""
    from sg2vid_diffusers.data.sg_shapes import COLORS

    palette = torch.tensor(list(COLORS.values()), dtype=torch.int16, device=frames.device)  # (6, 3)
    exact = (frames.to(torch.int16)[:, None] == palette[None, :, :, None, None]).all(dim=2)  # (N, 6, H, W)
    share = F.avg_pool2d(exact.float(), factor)  # (N, 6, h, w)
    best, label = share.max(dim=1)
    return torch.where(best >= COLOUR_CELL_SHARE, label, torch.full_like(label, -1))


def colour_separation_loss(latents: torch.Tensor, labels: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """The colour probe's cross-entropy (0 without a labelled cell).

    Args:
        latents: (N, C, h, w), divided here by their standard deviation over the batch (so the loss
            cannot be met by scaling the latents up: ``scaling_factor`` undoes any scale).
        labels: (N, h, w) colour per cell, -1 = not counted (:func:`colour_cell_labels`).
        directions: (K, C) one direction per colour, normalised here to unit length (so the probe
            cannot be met by growing its weights).
    """
    mask = labels >= 0
    if not mask.any():
        return latents.sum() * 0.0
    cells = (latents / latents.std()).permute(0, 2, 3, 1)[mask]  # (M, C)
    logits = COLOUR_PROBE_TEMPERATURE * cells @ F.normalize(directions, dim=1).T  # (M, K)
    return F.cross_entropy(logits, labels[mask])


class Autoencode(torch.nn.Module):
    """Encode, sample with the given noise, decode: one forward pass, so that distributed training
    (which synchronises gradients through the wrapped module's forward) sees every weight."""

    def __init__(
        self, vae: AutoencoderKL, decoder_only: bool = False, colour_probe: bool = False, anchor: bool = False
    ):
        super().__init__()
        self.vae = vae
        self.decoder_only = decoder_only
        # A frozen copy of the VAE the run starts from (--latent_anchor_weight; not saved with the VAE).
        self.anchor = copy.deepcopy(vae).requires_grad_(False) if anchor else None
        # The colour probe's class directions (training only: not part of the saved VAE).
        self.colour_directions = None
        if colour_probe:
            from sg2vid_diffusers.data.sg_shapes import COLORS

            generator = torch.Generator().manual_seed(0)
            self.colour_directions = torch.nn.Parameter(torch.randn(len(COLORS), vae.config.latent_channels, generator=generator))

    def forward(
        self,
        x: torch.Tensor,
        noise: torch.Tensor,
        latent_noise: torch.Tensor | None = None,
        colour_labels: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """``noise``: the posterior's sampling noise; ``latent_noise`` (unscaled latent units) is added
        to the sampled latent before decoding (``--decoder_noise``); with ``colour_labels`` (and the
        probe) the third output is :func:`colour_separation_loss` of the posterior means; with the
        anchor the fourth is the mean squared distance between the posterior means and the anchor
        encoder's, in the starting VAE's scaled latent units."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.decoder_only):
            posterior = self.vae.encode(x).latent_dist
            latents = posterior.mean + posterior.std * noise.to(posterior.mean)
            kl = posterior.kl().mean()
        colour = None
        if colour_labels is not None and self.colour_directions is not None:
            colour = colour_separation_loss(posterior.mean, colour_labels, self.colour_directions)
        drift = None
        if self.anchor is not None:
            with torch.no_grad():
                anchored = self.anchor.encode(x).latent_dist.mean
            scale = self.anchor.config.scaling_factor
            drift = F.mse_loss(posterior.mean * scale, anchored * scale)
        if latent_noise is not None:
            latents = latents + latent_noise.to(latents)
        return self.vae.decode(latents).sample, kl, colour, drift


def main(argv=None):
    args = parse_args(argv)
    output_dir = Path(args.output_dir)
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to in (None, "none") else args.report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    set_seed(args.seed)

    # Data: all training frames in memory (SG-Shapes: 16 x 12 KB per clip).
    train_frames = load_frames(SceneGraphVideoFolder(args.train_data_dir))
    validation = SceneGraphVideoFolder(args.validation_data_dir) if args.validation_data_dir else None

    # Model.
    if args.pretrained_vae:
        vae = AutoencoderKL.from_pretrained(args.pretrained_vae)
    else:
        config = dict(DEFAULT_VAE_CONFIG)
        if args.vae_config:
            # JSON text, or a file of it (a long JSON text is no valid path: test the text first)
            text = args.vae_config if args.vae_config.lstrip().startswith("{") else Path(args.vae_config).read_text()
            config.update(json.loads(text))
        config["sample_size"] = int(train_frames.shape[-1])
        vae = AutoencoderKL(**config)
    if args.train_decoder_only:
        # The encoder side (and so the latents a UNet was trained on) stays fixed.
        vae.encoder.requires_grad_(False)
        if vae.quant_conv is not None:
            vae.quant_conv.requires_grad_(False)
    autoencode = Autoencode(
        vae, decoder_only=args.train_decoder_only, colour_probe=args.colour_separation_weight > 0,
        anchor=args.latent_anchor_weight > 0,
    )  # fmt: skip
    trained = [p for p in autoencode.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=args.learning_rate, weight_decay=0.0)
    lr_scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=args.max_train_steps * accelerator.num_processes,
    )
    autoencode, optimizer, lr_scheduler = accelerator.prepare(autoencode, optimizer, lr_scheduler)

    # Resume.
    first_step = 0
    if args.resume_from_checkpoint:
        checkpoint = find_resume_checkpoint(args.resume_from_checkpoint, output_dir)
        if checkpoint is None:
            logger.info(f"no checkpoint found for {args.resume_from_checkpoint!r}: starting from scratch")
        else:
            accelerator.load_state(str(checkpoint))
            first_step = int(checkpoint.name.split("-")[-1])
            logger.info(f"resumed from {checkpoint} at step {first_step}")

    if accelerator.is_main_process:
        accelerator.init_trackers("train_vae", config={k: v for k, v in vars(args).items() if v is not None})
    batches = iter(
        EpochBatches(
            len(train_frames), args.train_batch_size, accelerator.num_processes, accelerator.process_index,
            args.seed, start=first_step,
        )
    )  # fmt: skip
    progress = tqdm(
        range(first_step, args.max_train_steps), initial=first_step, total=args.max_train_steps,
        disable=not accelerator.is_local_main_process, desc="steps",
    )  # fmt: skip
    start_time, figures = time.time(), {}
    model = accelerator.unwrap_model(autoencode).vae
    latent_factor = vae_scale_factor(model)
    stopping = False
    with StopRequest() as stop:  # SIGTERM, Ctrl-C: a checkpoint of the step in progress, then exit
        for step in range(first_step, args.max_train_steps):
            frames = train_frames[next(batches)]
            x = to_unit_range(frames).to(accelerator.device)
            # The posterior's noise comes from a per-step generator: a resumed run draws the same.
            latent_shape = (len(x), model.config.latent_channels, x.shape[2] // latent_factor, x.shape[3] // latent_factor)
            generator = step_generator(args.seed, step, accelerator.process_index)
            noise = torch.randn(latent_shape, generator=generator)
            latent_noise = None
            if args.decoder_noise > 0:  # per frame a standard deviation in [0, S], scaled -> unscaled units
                sigma = torch.rand(len(x), 1, 1, 1, generator=generator) * args.decoder_noise / model.config.scaling_factor
                latent_noise = (sigma * torch.randn(latent_shape, generator=generator)).to(accelerator.device)
            labels = None
            if args.colour_separation_weight > 0:
                labels = colour_cell_labels(frames, latent_factor).to(accelerator.device)
            with accelerator.autocast():
                recon, kl, colour, drift = autoencode(x, noise.to(accelerator.device), latent_noise, labels)
                mse = F.mse_loss(recon.float(), x)
                pixel = mse if args.reconstruction_loss == "mse" else F.l1_loss(recon.float(), x)
                loss = pixel + args.kl_weight * kl
                if colour is not None:
                    loss = loss + args.colour_separation_weight * colour.float()
                if drift is not None:
                    loss = loss + args.latent_anchor_weight * drift.float()
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(trained, args.max_grad_norm)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad()
            done = step + 1
            progress.update()
            logs = {"loss": loss.item(), "mse": mse.item(), "kl": kl.item(), "lr": lr_scheduler.get_last_lr()[0]}
            if colour is not None:
                logs["colour"] = colour.item()
            if drift is not None:
                logs["drift"] = drift.item()
            progress.set_postfix({k: f"{v:.4f}" for k, v in logs.items() if k in ("mse", "colour", "drift")})
            accelerator.log(logs, step=done)

            stopping = stop.should_stop(accelerator) and done < args.max_train_steps
            if done % args.checkpointing_steps == 0 or done == args.max_train_steps or stopping:
                save_checkpoint(accelerator, output_dir, done, args.checkpoints_total_limit)
            if stopping:
                break
            if validation is not None and accelerator.is_main_process and (
                done % args.validation_steps == 0 or done == args.max_train_steps
            ):
                model.eval()
                figures = validate(model, validation, args.num_validation_clips)
                model.train()
                accelerator.log({f"validation/{k}": v for k, v in figures.items()}, step=done)
                logger.info(f"step {done}: " + ", ".join(f"{k} {v:.4f}" for k, v in figures.items()))

    if stopping:
        stop.exit(accelerator, done, args.max_train_steps)
    # Final model: scaling factor from the latents' spread (a decoder-only run keeps the encoder's), then save.
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        model.eval()
        if not args.train_decoder_only:
            with torch.no_grad():
                sample = to_unit_range(
                    train_frames[torch.randperm(len(train_frames), generator=step_generator(args.seed))[:256]]
                )
                std = model.encode(sample.to(accelerator.device)).latent_dist.mode().float().std().item()
            model.register_to_config(scaling_factor=1.0 / std)
        model.save_pretrained(output_dir)
        minutes = (time.time() - start_time) / 60
        card = [
            "# Frame autoencoder for sg2vid-diffusers",
            "",
            f"- data: `{args.train_data_dir}` ({len(train_frames)} frames)",
            f"- steps: {args.max_train_steps} (batch {args.train_batch_size} frames x {accelerator.num_processes} processes),"
            f" lr {args.learning_rate}, {args.reconstruction_loss} loss, KL weight {args.kl_weight}"
            + (f", colour separation weight {args.colour_separation_weight:g}" if args.colour_separation_weight else "")
            + (f", latent anchor weight {args.latent_anchor_weight:g}" if args.latent_anchor_weight else ""),
            f"- wall time of this run: {minutes:.1f} min",
            f"- scaling_factor: {model.config.scaling_factor:.4f}",
        ]
        if args.train_decoder_only:
            card.insert(3, f"- decoder fine-tuned from `{args.pretrained_vae}` (encoder and scaling_factor unchanged),"
                        f" latent noise up to {args.decoder_noise:g} (scaled units)")
        if figures:
            card.append("- validation: " + ", ".join(f"{k} {v:.4f}" for k, v in figures.items()))
        card += ["", "Trained with:", "", "```", " ".join(["python", *sys.argv]), "```"]
        atomic_write_text(output_dir / "README.md", "\n".join(card) + "\n")
        logger.info(f"saved the VAE to {output_dir}")
    accelerator.end_training()


if __name__ == "__main__":
    main()
