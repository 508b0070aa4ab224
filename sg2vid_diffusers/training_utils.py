"""The parts of ``training/train_video.py`` worth testing on their own: graph dropout, frame
windows, the frozen VAE's latents, the diffusion loss (Min-SNR weighting), which weights train, the
data order, kill-safe checkpoints and stopping at a step's end on SIGTERM or Ctrl-C.

The script stays a plain loop; everything here is a small function of tensors and modules.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import signal
import threading
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.training_utils import compute_snr
from einops import rearrange
from torch import nn

from .batching import SceneGraphBatch
from .conditioning import encode_graph_context
from .models.sg_encoder import SceneGraphEncoder, layout_readout, motion_readout
from .models.unet_3d_graph import GraphContext, SceneGraphUNet3DConditionModel, is_graph_weight

__all__ = [
    "CHECKPOINT_PATTERN",
    "add_training_arguments",
    "check_training_arguments",
    "EpochBatches",
    "GraphConditionedDenoiser",
    "WholeClipBatches",
    "layout_loss",
    "layout_readout",
    "motion_readout",
    "clip_motion",
    "diffusion_loss",
    "diffusion_target",
    "encode_videos",
    "find_resume_checkpoint",
    "list_checkpoints",
    "resize_videos",
    "sample_frame_windows",
    "sample_graph_dropout",
    "save_checkpoint",
    "set_trainable_parameters",
    "step_generator",
    "StopRequest",
    "take_frame_windows",
]

logger = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")


# ----------------------------------------------------------------------------- conditioning


def sample_graph_dropout(
    batch_size: int, probability: float, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """(B,) bool: each graph independently replaced by the null graph with ``probability`` (graph
    dropout, which teaches the unconditional branch of classifier-free guidance).

    Always a tensor, all False at probability 0: the null token then still takes part in the
    forward pass (with zero gradient), as distributed training wants of every trained weight.
    """
    if not 0 <= probability <= 1:
        raise ValueError(f"graph dropout probability must be in [0, 1], got {probability}")
    return (torch.rand(batch_size, generator=generator) < probability).to(device)


class GraphConditionedDenoiser(nn.Module):
    """The graph encoder and the UNet as one module, so that one forward pass (the one DDP wraps)
    reaches every weight that trains: graph projections, processors, LoRA, the encoder if it trains.

    Args:
        unet: a :class:`SceneGraphUNet3DConditionModel`.
        sg_encoder: a :class:`SceneGraphEncoder`.
    """

    def __init__(self, unet: SceneGraphUNet3DConditionModel, sg_encoder: SceneGraphEncoder):
        super().__init__()
        self.unet = unet
        self.sg_encoder = sg_encoder

    def forward(
        self,
        noisy_latents: torch.Tensor,
        timesteps: torch.Tensor,
        graphs: SceneGraphBatch,
        drop: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        frame_starts: torch.Tensor | None = None,
        num_clip_frames: int | None = None,
        return_object_vectors: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """(B, C, F, h, w) noisy latents, (B,) timesteps, B graphs, (B,) dropped graphs, optional
        (B, T, D) text states -> (B, C, F, h, w) model output; with ``return_object_vectors``, also the
        encoder's (O, D) object vectors (:meth:`SceneGraphEncoder.object_vectors`, for :func:`layout_loss`),
        computed inside this forward so that DDP sees every weight they use. This runs the graph
        convolution a second time (the context's run keeps only tokens): 10 ms forward and backward
        for 32 SG-Shapes graphs on 2 CPU cores, under 1% of the built-in model's 1.3 s step.

        With ``frame_starts`` ((B,) long) the latents are windows of F consecutive frames of clips of
        ``num_clip_frames`` frames (:func:`take_frame_windows`): the graph context is computed for the
        whole clip, so that time spans keep their meaning, and each window gets its own frames' tokens
        and, for a UNet with frame times, its own frames' times in the clip.
        """
        num_frames = noisy_latents.shape[2]
        if frame_starts is not None and num_clip_frames is None:
            raise ValueError("frame_starts needs num_clip_frames, the length of the clips the windows come from")
        # Outside autocast: the encoder's scatter-adds need one dtype throughout (it is small anyway).
        with torch.autocast(noisy_latents.device.type, enabled=False):
            if frame_starts is None:
                context = encode_graph_context(self.sg_encoder, self.unet, graphs, num_frames, drop=drop)
            else:
                context = encode_graph_context(self.sg_encoder, self.unet, graphs, num_clip_frames, drop=drop)
                context = _window_context(context, frame_starts, num_clip_frames, num_frames)
            object_vectors = self.sg_encoder.object_vectors(graphs) if return_object_vectors else None
        frame_times = None  # the default: the F frames are a whole clip
        if frame_starts is not None:
            frames = _window_frames(frame_starts, num_frames, noisy_latents.device)
            frame_times = frames.float() / num_clip_frames  # (B, F), as the clip's frames count them
        sample = self.unet(
            noisy_latents, timesteps, encoder_hidden_states=encoder_hidden_states, graph_context=context,
            frame_times=frame_times,
        ).sample  # fmt: skip
        return (sample, object_vectors) if return_object_vectors else sample


def layout_loss(
    object_vectors: torch.Tensor, object_boxes: torch.Tensor, maskable: torch.Tensor, motion: bool = False
) -> torch.Tensor:
    """Layout supervision of the graph encoder (ours; SGDiff has none): a fixed projection of each
    object's vector to 4 numbers (:func:`layout_readout`) is regressed onto its box ``[x0, y0, x1, y1]``,
    averaged over the clip's frames and mapped to [-1, 1].

    Why: relations say where objects are, but a graph encoder trained only through the denoiser learns
    them slowly; the shipped model's tokens change 7% when every predicate of a graph is flipped and
    63% when one object's category changes (``training/graph_sensitivity.py``, its "encoder" row). The subject and object
    thirds of every local token are these vectors, so the UNet can read a layout the relations imply
    from the tokens it attends to. Boxes are never an input: at sampling time the encoder infers the
    layout from the relations alone. A projection, not channels: the vectors come out of a ReLU, so
    single channels can neither go negative nor recover once dead; a projection of all of them can.

    Args:
        object_vectors: (O, D) from :meth:`SceneGraphEncoder.object_vectors`, D >= 4.
        object_boxes: (O, F, 4) boxes ``[x0, y0, x1, y1]`` as fractions, rows as ``object_vectors``.
        maskable: (O,) bool, the rows with boxes (no ``__image__`` node).
        motion: also regress, through :func:`motion_readout`, how far each box moves over the clip:
            the least-squares slope of its coordinates over the frames times the number of frames
            (what the UNet's ``graph_layout_motion`` reads). The two mean squared errors are added.

    Returns:
        The mean squared error over the rows with boxes (0, still differentiable, when there is none).
    """
    if object_vectors.ndim != 2 or object_vectors.shape[1] < 4:
        raise ValueError(f"object_vectors must be (O, D) with D >= 4, got {tuple(object_vectors.shape)}")
    rows = object_vectors.shape[0]
    if object_boxes.ndim != 3 or object_boxes.shape[0] != rows or object_boxes.shape[2] != 4:
        raise ValueError(f"object_boxes must be ({rows}, F, 4), got {tuple(object_boxes.shape)}")
    if maskable.shape != (rows,):
        raise ValueError(f"maskable must be ({rows},), got {tuple(maskable.shape)}")
    vectors = object_vectors[maskable].float()
    if vectors.shape[0] == 0:
        return object_vectors.sum() * 0.0
    boxes = object_boxes[maskable].float() * 2 - 1  # (O', F, 4) in [-1, 1]
    predicted = vectors @ layout_readout(vectors.shape[1]).to(vectors.device)  # (O', 4)
    loss = torch.nn.functional.mse_loss(predicted, boxes.mean(dim=1))
    if motion:
        loss = loss + torch.nn.functional.mse_loss(vectors @ motion_readout(vectors.shape[1]).to(vectors.device), clip_motion(boxes))
    return loss


def clip_motion(boxes: torch.Tensor) -> torch.Tensor:
    """(..., F, 4) boxes over a clip's frames -> (..., 4) how far they move over the clip: the
    least-squares slope per frame times F (0 for a single frame). For constant-velocity motion, the
    box at frame f is the clip-mean box plus ((f + 0.5) / F - 0.5) times this."""
    num_frames = boxes.shape[-2]
    frames = torch.arange(num_frames, dtype=boxes.dtype, device=boxes.device)
    centred = frames - frames.mean()
    spread = (centred**2).sum()
    if spread == 0:
        return torch.zeros_like(boxes[..., 0, :])
    slope = (centred[:, None] * (boxes - boxes.mean(dim=-2, keepdim=True))).sum(dim=-2) / spread
    return slope * num_frames


def sample_frame_windows(
    num_frames: int, window: int, batch_size: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(B,) long: the first frame of a window of ``window`` consecutive frames in each of B clips of
    ``num_frames`` frames, uniform over the ``num_frames - window + 1`` positions."""
    if not 1 <= window <= num_frames:
        raise ValueError(f"frame window must be in [1, {num_frames}] (the clips' frames), got {window}")
    return torch.randint(0, num_frames - window + 1, (batch_size,), generator=generator)


def _window_frames(frame_starts: torch.Tensor, window: int, device: torch.device) -> torch.Tensor:
    """(B, W) the clip frames of each window: ``start .. start + window - 1``."""
    return frame_starts.to(device)[:, None] + torch.arange(window, device=device)


def _take_frames(x: torch.Tensor, frame_starts: torch.Tensor, window: int, dim: int) -> torch.Tensor:
    """Frames ``start .. start + window - 1`` of each sample along ``dim`` (dim 0 is the batch)."""
    index = _window_frames(frame_starts, window, x.device)  # (B, W)
    shape = [index.shape[0] if d == 0 else window if d == dim else 1 for d in range(x.ndim)]
    return x.gather(dim, index.view(shape).expand(*[window if d == dim else x.shape[d] for d in range(x.ndim)]))


def take_frame_windows(latents: torch.Tensor, frame_starts: torch.Tensor, window: int) -> torch.Tensor:
    """(B, C, F, h, w) latents -> (B, C, W, h, w): frames ``start .. start + W - 1`` of each clip."""
    batch, num_frames = latents.shape[0], latents.shape[2]
    if frame_starts.shape != (batch,):
        raise ValueError(f"frame_starts must have shape ({batch},), got {tuple(frame_starts.shape)}")
    if int(frame_starts.min()) < 0 or int(frame_starts.max()) + window > num_frames:
        raise ValueError(
            f"frame windows of {window} frames starting at {frame_starts.tolist()} leave the {num_frames} frames"
        )
    return _take_frames(latents, frame_starts, window, dim=2)


def _window_context(
    context: GraphContext, frame_starts: torch.Tensor, num_clip_frames: int, window: int
) -> GraphContext:
    """A (B*F, L, C) context of whole clips -> the (B*W, L, C) context of their frame windows (mask and
    boxes alike)."""

    def windows(tensor: torch.Tensor | None) -> torch.Tensor | None:
        if tensor is None:
            return None
        per_clip = rearrange(tensor, "(b f) ... -> b f ...", f=num_clip_frames)
        return rearrange(_take_frames(per_clip, frame_starts, window, dim=1), "b w ... -> (b w) ...")

    return GraphContext(windows(context.hidden_states), windows(context.mask), windows(context.boxes))


def set_trainable_parameters(
    unet: SceneGraphUNet3DConditionModel,
    sg_encoder: SceneGraphEncoder,
    train_unet: bool = False,
    train_sg_encoder: bool = False,
) -> list[tuple[str, nn.Parameter]]:
    """Choose what trains (``requires_grad``) and return it as ``(name, parameter)`` pairs, names
    prefixed ``unet.`` or ``sg_encoder.`` (as in :class:`GraphConditionedDenoiser`).

    Always: the graph weights (``graph_local_proj``, ``graph_global_proj``, ``null_graph_token``, the
    processors' ``to_k_graph``/``to_v_graph``). Plus LoRA weights (``lora_`` in the name) when the UNet
    has an adapter: call this after ``unet.add_adapter``, which freezes everything else. Plus the
    whole UNet with ``train_unet``, the encoder with ``train_sg_encoder`` (all but ``logit_scale``,
    which only contrastive pretraining uses).
    """
    unet.requires_grad_(train_unet)
    for name, param in unet.named_parameters():
        if is_graph_weight(name) or "lora_" in name:
            param.requires_grad_(True)
    sg_encoder.requires_grad_(train_sg_encoder)
    sg_encoder.logit_scale.requires_grad_(False)
    return [
        (f"{prefix}.{name}", param)
        for prefix, module in (("unet", unet), ("sg_encoder", sg_encoder))
        for name, param in module.named_parameters()
        if param.requires_grad
    ]


# ----------------------------------------------------------------------------- latents and loss


def resize_videos(videos: torch.Tensor, resolution: int) -> torch.Tensor:
    """(B, F, 3, H, W) -> (B, F, 3, R, R) by area averaging; R must divide H = W (e.g. 64 -> 32 or 16),
    so each output pixel is the mean of a whole block of input pixels. Unchanged when R = H = W."""
    height, width = videos.shape[-2:]
    if height == width == resolution:
        return videos
    if height != width or height % resolution:
        raise ValueError(
            f"frames of {height}x{width} pixels cannot be downsampled to {resolution}x{resolution}: "
            f"the resolution must divide the frames' size, and frames must be square"
        )
    frames = rearrange(videos, "b f c h w -> (b f) c h w")
    frames = F.interpolate(frames, size=(resolution, resolution), mode="area")
    return rearrange(frames, "(b f) c h w -> b f c h w", b=videos.shape[0])


@torch.no_grad()
def encode_videos(
    vae: nn.Module, videos: torch.Tensor, generator: torch.Generator | None = None, sample: bool = True
) -> torch.Tensor:
    """Latents of videos through the frozen image VAE, one frame at a time (frames folded into the batch).

    Args:
        vae: an ``AutoencoderKL`` (or compatible: ``encode(x).latent_dist``, ``config.scaling_factor``).
        videos: (B, F, 3, H, W) in [0, 1].
        generator: for the sample from the latent distribution.
        sample: a sample of the latent distribution (as training draws), or its mean (``False``).

    Returns:
        (B, C, F, H / s, W / s) latents, times ``vae.config.scaling_factor`` (what the UNet denoises;
        ``SceneGraphToVideoPipeline.decode_latents`` divides it out again).
    """
    frames = rearrange(videos, "b f c h w -> (b f) c h w") * 2 - 1  # [0, 1] -> [-1, 1]
    dist = vae.encode(frames.to(vae.dtype)).latent_dist
    latents = (dist.sample(generator=generator) if sample else dist.mean) * vae.config.scaling_factor
    return rearrange(latents, "(b f) c h w -> b c f h w", b=videos.shape[0])


def diffusion_target(
    noise_scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """What the UNet learns to predict: the noise (``epsilon``) or the velocity (``v_prediction``),
    following ``noise_scheduler.config.prediction_type``."""
    prediction_type = noise_scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return noise_scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', got {prediction_type!r}")


def diffusion_loss(
    model_pred: torch.Tensor,
    target: torch.Tensor,
    timesteps: torch.Tensor,
    noise_scheduler,
    snr_gamma: float | None = None,
) -> torch.Tensor:
    """Mean squared error, optionally with Min-SNR-gamma weighting (Hang et al., 2023), as diffusers'
    text-to-image example computes it.

    Args:
        model_pred, target: (B, ...) tensors.
        timesteps: (B,) long.
        noise_scheduler: gives ``alphas_cumprod`` and ``config.prediction_type``.
        snr_gamma: None for the plain MSE; else each sample's loss is weighted by
            ``min(SNR, gamma) / SNR`` (epsilon) or ``min(SNR, gamma) / (SNR + 1)`` (v-prediction).

    Returns:
        The scalar loss (float32).
    """
    if snr_gamma is None:
        return F.mse_loss(model_pred.float(), target.float())
    snr = compute_snr(noise_scheduler, timesteps)  # (B,)
    weights = torch.clamp(snr, max=snr_gamma)
    prediction_type = noise_scheduler.config.prediction_type
    if prediction_type == "epsilon":
        weights = weights / snr
    elif prediction_type == "v_prediction":
        weights = weights / (snr + 1)
    else:
        raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', got {prediction_type!r}")
    loss = F.mse_loss(model_pred.float(), target.float(), reduction="none")
    loss = loss.mean(dim=tuple(range(1, loss.ndim)))  # (B,)
    return (loss * weights).mean()


# ----------------------------------------------------------------------------- data order


class EpochBatches:
    """This process's share of each global batch, forever, from micro-batch ``start`` on.

    Epoch e visits the clips in the order ``randperm(seed, e)``; global batch b of it is the clips
    ``order[b * G : (b + 1) * G]`` (G = batch size x processes; the incomplete last batch is
    dropped), and process r takes its r-th slice. The order depends only on the seed, so a resumed
    run skips exactly the batches already done.
    """

    def __init__(
        self, num_clips: int, batch_size: int, num_processes: int, process_index: int, seed: int, start: int = 0
    ):
        self.num_clips, self.batch_size, self.seed, self.start = num_clips, batch_size, seed, start
        self.num_processes, self.process_index = num_processes, process_index
        self.batches_per_epoch = num_clips // (batch_size * num_processes)
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"the training set has {num_clips} clips, fewer than one global batch "
                f"({batch_size} x {num_processes} processes)"
            )

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start
        while True:
            epoch, batch = divmod(step, self.batches_per_epoch)
            order = torch.randperm(self.num_clips, generator=step_generator(self.seed, epoch))
            first = (batch * self.num_processes + self.process_index) * self.batch_size
            yield order[first : first + self.batch_size].tolist()
            step += 1


class WholeClipBatches:
    """Mixes whole clips into frame-window training: every ``every``-th micro-batch of ``batches``
    (micro-batches ``every - 1``, ``2 * every - 1``, ...) keeps only its first ``num_clips`` clips, and
    the training loop (:meth:`is_whole`) trains on all their frames instead of windows.

    Why: a model trained only on short windows never sees a clip's frames together, and its temporal
    attention does not learn to keep a moving object's colour over a whole clip; one trained only on
    whole clips sees a quarter of the scenes per step at the same compute (docs/builtin_model.md,
    "Moving objects change colour on the way"). With ``num_clips = batch x window / frames`` a whole-clip
    micro-batch costs about what a window one does. Which micro-batches are whole depends only on their
    index, so a resumed run mixes exactly as an uninterrupted one.
    """

    def __init__(self, batches: EpochBatches, every: int, num_clips: int):
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        if not 1 <= num_clips <= batches.batch_size:
            raise ValueError(f"num_clips must be in [1, {batches.batch_size}] (the batch size), got {num_clips}")
        self.batches, self.every, self.num_clips = batches, every, num_clips
        self.batches_per_epoch = batches.batches_per_epoch

    def is_whole(self, micro_batch: int) -> bool:
        """Whether micro-batch ``micro_batch`` (counted from the run's first) trains on whole clips."""
        return micro_batch % self.every == self.every - 1

    def __iter__(self) -> Iterator[list[int]]:
        for micro_batch, clips in enumerate(self.batches, start=self.batches.start):
            yield clips[: self.num_clips] if self.is_whole(micro_batch) else clips


def step_generator(seed: int, *keys: int) -> torch.Generator:
    """A CPU generator that depends only on ``seed`` and ``keys`` (e.g. micro-batch and process index):
    noise, timesteps and dropout drawn from it are the same in a resumed run as in an uninterrupted one."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0]))


# ----------------------------------------------------------------------------- checkpoints


def list_checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Finished checkpoints (``checkpoint-N``; never ``checkpoint-N.tmp``), oldest first."""
    found = []
    for path in Path(output_dir).glob("checkpoint-*"):
        match = CHECKPOINT_PATTERN.match(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return sorted(found)


def save_checkpoint(
    accelerator,
    output_dir: str | os.PathLike,
    step: int,
    total_limit: int | None = None,
    write_extra: Callable[[Path], None] | None = None,
) -> Path:
    """``accelerator.save_state`` into ``checkpoint-{step}.tmp``, then rename it to ``checkpoint-{step}``:
    a run killed at any moment never leaves a half-written ``checkpoint-N``. Then keep only the
    newest ``total_limit`` checkpoints.

    Args:
        write_extra: called on the main process with the temporary folder, to add files of one's own
            before the rename.
    """
    final = Path(output_dir) / f"checkpoint-{step}"
    tmp = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)  # left by a killed run
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if write_extra is not None:
            write_extra(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        if total_limit is not None:
            for _, old in list_checkpoints(output_dir)[:-total_limit]:
                shutil.rmtree(old)
        logger.info(f"Saved {final}")
    accelerator.wait_for_everyone()
    return final


class StopRequest:
    """SIGTERM and SIGINT (Ctrl-C) as a request to stop at the end of the current step, so that a
    training script can save a checkpoint of that step and exit, instead of dying mid-step and
    losing everything since its last checkpoint (what a batch scheduler, a preempted machine or a
    ``kill`` would otherwise cost).

    Use it as a context manager around the loop and ask :meth:`should_stop` once per step, at the
    same point on every process. The first signal only records the request and puts the previous
    handlers back: a second one acts as it would without this class (Ctrl-C raises
    ``KeyboardInterrupt``, SIGTERM kills). Outside the main thread (where Python cannot install
    signal handlers) it does nothing and never asks to stop.

    ``exit_code`` is the shell's code for death by that signal (128 + its number: 143 for
    SIGTERM, 130 for Ctrl-C), for the script to exit with once its checkpoint is saved.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        self.signum = signum
        self._restore()
        logger.warning(
            f"{signal.Signals(signum).name}: stopping after this step with a checkpoint (send it again to stop at once)"
        )

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or 0)

    def exit(self, accelerator, step: int, max_train_steps: int) -> None:
        """Once the stopped step's checkpoint is saved: say so, end the trackers and exit with
        :attr:`exit_code`."""
        logger.info(
            f"Stopped at step {step} of {max_train_steps} ({signal.Signals(self.signum).name}); "
            "the same command with --resume_from_checkpoint latest goes on from there"
        )
        accelerator.end_training()
        raise SystemExit(self.exit_code)

    def should_stop(self, accelerator=None) -> bool:
        """Whether any process has been asked to stop. With several processes this is a collective
        (every process must call it at the same step) so that all of them stop at the same step;
        the signal number of the first one asked is kept on every process."""
        if accelerator is None or accelerator.num_processes == 1:
            return self.signum is not None
        asked = accelerator.gather(torch.tensor([self.signum or 0], device=accelerator.device)).tolist()
        signum = next((s for s in asked if s), 0)
        if signum and self.signum is None:
            self.signum = signum
        return signum != 0


def find_resume_checkpoint(resume_from_checkpoint: str, output_dir: str | os.PathLike) -> Path | None:
    """``"latest"`` -> the newest finished checkpoint of ``output_dir``; a path or a folder name
    inside ``output_dir`` -> that folder. None when there is none."""
    if resume_from_checkpoint == "latest":
        checkpoints = list_checkpoints(output_dir)
        return checkpoints[-1][1] if checkpoints else None
    path = Path(resume_from_checkpoint)
    if not path.exists():
        path = Path(output_dir) / path.name
    return path if path.exists() else None


# ----------------------------------------------------------------------------- command line

LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")


def add_training_arguments(
    group: argparse._ArgumentGroup,
    *,
    output_dir: str,
    train_batch_size: int,
    learning_rate: float,
    lr_scheduler: str,
    adam_beta2: float,
    adam_epsilon: float,
) -> None:
    """The options every Accelerate training script here shares (its defaults are the script's): output,
    seed, batch and steps, AdamW, the learning-rate schedule, precision, checkpoints, tracking and the
    Hub. Each script adds its own weight decay and validation options; see
    :func:`check_training_arguments` for the checks that go with them."""
    group.add_argument("--output_dir", default=output_dir)
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--train_batch_size", type=int, default=train_batch_size, help="Per process.")
    group.add_argument("--max_train_steps", type=int, default=10_000)
    group.add_argument("--gradient_accumulation_steps", type=int, default=1)
    group.add_argument("--learning_rate", type=float, default=learning_rate)
    group.add_argument("--adam_beta1", type=float, default=0.9)
    group.add_argument("--adam_beta2", type=float, default=adam_beta2)
    group.add_argument("--adam_epsilon", type=float, default=adam_epsilon)
    group.add_argument("--max_grad_norm", type=float, default=1.0)
    group.add_argument("--lr_scheduler", default=lr_scheduler, choices=LR_SCHEDULERS)
    group.add_argument("--lr_warmup_steps", type=int, default=500)
    group.add_argument("--mixed_precision", default=None, choices=["no", "fp16", "bf16"])
    group.add_argument("--cpu", action="store_true", help="Train on the CPU (also chosen for torchrun without CUDA).")
    group.add_argument("--checkpointing_steps", type=int, default=500)
    group.add_argument("--checkpoints_total_limit", type=int, default=None)
    group.add_argument("--resume_from_checkpoint", default=None, help="A checkpoint-N folder, or `latest`.")
    group.add_argument("--validation_steps", type=int, default=500)
    group.add_argument("--report_to", default="tensorboard", help="tensorboard, wandb, all or none.")
    group.add_argument("--logging_dir", default="logs", help="Under --output_dir.")
    group.add_argument("--push_to_hub", action="store_true")
    group.add_argument("--hub_model_id", default=None)
    group.add_argument("--hub_token", default=None)


def check_training_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace, positive=()) -> None:
    """``parser.error`` for what :func:`add_training_arguments` reads wrongly: counts below 1 (those
    options and ``positive``, which may be None when unset) and a ``--resume_from_checkpoint`` that is
    neither ``latest`` nor a ``checkpoint-N`` folder."""
    counts = ("train_batch_size", "max_train_steps", "gradient_accumulation_steps", "checkpointing_steps",
              "validation_steps", *positive)  # fmt: skip
    for name in counts:
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be >= 1, got {value}")
    resume = args.resume_from_checkpoint
    if resume not in (None, "latest") and not CHECKPOINT_PATTERN.match(Path(resume).name):
        parser.error(f"--resume_from_checkpoint: expected `latest` or a checkpoint-N folder, got {resume}")


# ----------------------------------------------------------------------------- sharing


def push_output_to_hub(output_dir: str | os.PathLike, hub_model_id: str | None, token: str | None, logging_dir: str) -> str:
    """Upload a training run's output folder (checkpoints and logs left out) to the Hub, creating the
    repository (``hub_model_id``, default: the folder's name) when needed. Returns the repo id."""
    from huggingface_hub import create_repo, upload_folder

    repo_id = create_repo(hub_model_id or Path(output_dir).name, exist_ok=True, token=token).repo_id
    upload_folder(
        repo_id=repo_id,
        folder_path=output_dir,
        commit_message="End of training",
        ignore_patterns=["checkpoint-*", f"{logging_dir}/*"],
        token=token,
    )
    return repo_id
