"""The graph-conditioned video denoiser: diffusers' ``UNet3DConditionModel`` reading scene-graph tokens.

The UNet owns the projections that turn the encoder's outputs into a cross-attention context
(:meth:`SceneGraphUNet3DConditionModel.build_graph_context`), hands that context to the graph
attention processors (``graph_attention.py``) through ``cross_attention_kwargs``, and keeps every
weight name of ``UNet3DConditionModel``, so a plain UNet3D checkpoint loads into it
(:meth:`SceneGraphUNet3DConditionModel.from_unet3d`). The contract is docs/graph_conditioning.md.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch
from diffusers.configuration_utils import register_to_config
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.attention_processor import Attention

# Not used here by name: diffusers' pipeline loader looks a component's base class up in the module
# that model_index.json names ("sg2vid_diffusers.models.unet_3d_graph") to find its load method.
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401
from diffusers.models.unets.unet_3d_condition import UNet3DConditionModel, UNet3DConditionOutput
from diffusers.utils.torch_utils import maybe_adjust_dtype_for_device
from einops import rearrange
from torch import nn

from .sg_encoder import layout_readout, motion_frame_offsets, motion_readout
from .graph_attention import (
    GRAPH_MODES,
    DecoupledGraphAttnProcessor,
    GraphAttnProcessor,
    _XFormersAttention,
    graph_position_table,
    install_graph_processors,
)

__all__ = [
    "GraphContext",
    "SceneGraphUNet3DConditionModel",
    "frame_time_features",
    "is_graph_weight",
    "lora_target_modules",
]


@dataclass
class GraphContext:
    """The cross-attention context of a batch of scene graphs, frames folded into the batch.

    Args:
        hidden_states: (B*F, L, C) tokens (``(b f)``: all frames of video 0, then video 1, ...);
            L = N local tokens + 1 global token, C = the UNet's ``cross_attention_dim``.
            A context of batch B (one per video) is accepted too and repeated per frame.
        mask: (B*F, L) bool, True = attend.
        boxes: None, or (B*F, L, 4) the box ``[x0, y0, x1, y1]`` in (-1, 1) that each token's subject
            has in the encoder's inferred layout (NaN for tokens without one, e.g. the global token):
            what the layout bias (``graph_layout_bias``) reads.
    """

    hidden_states: torch.Tensor
    mask: torch.Tensor
    boxes: torch.Tensor | None = None

    @classmethod
    def cat(cls, contexts: Sequence["GraphContext"]) -> "GraphContext":
        """Concatenate contexts along the batch, e.g. ``GraphContext.cat([null, cond])`` for
        classifier-free guidance. Shorter contexts are padded with masked zero tokens, which no
        query attends to, so they behave exactly as before."""
        if not contexts:
            raise ValueError("GraphContext.cat needs at least one context")
        length = max(context.hidden_states.shape[1] for context in contexts)
        with_boxes = any(context.boxes is not None for context in contexts)
        states, masks, boxes = [], [], []
        for context in contexts:
            pad = length - context.hidden_states.shape[1]
            states.append(nn.functional.pad(context.hidden_states, (0, 0, 0, pad)))
            masks.append(nn.functional.pad(context.mask, (0, pad), value=False))
            if with_boxes:  # a context without boxes has none for any token (NaN)
                own = context.boxes
                if own is None:
                    own = context.hidden_states.new_full((*context.mask.shape, 4), float("nan"), dtype=torch.float32)
                boxes.append(nn.functional.pad(own, (0, 0, 0, pad), value=float("nan")))
        return cls(hidden_states=torch.cat(states), mask=torch.cat(masks), boxes=torch.cat(boxes) if with_boxes else None)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "GraphContext":
        """Move to ``device``; ``dtype`` applies to ``hidden_states`` only (the mask stays bool, the boxes float32)."""
        boxes = None if self.boxes is None else self.boxes.to(device=device)
        return GraphContext(self.hidden_states.to(device=device, dtype=dtype), self.mask.to(device=device), boxes)


def is_graph_weight(key: str) -> bool:
    """Whether a state-dict key belongs to what this model adds to ``UNet3DConditionModel`` (the graph
    conditioning, and the frame-time embedding) rather than to ``UNet3DConditionModel`` itself."""
    prefixes = ("graph_local_proj.", "graph_global_proj.", "null_graph_token", "frame_time_embedding.", "graph_layout_motion_gate")
    return key.startswith(prefixes) or ".processor." in key


# ``graph_layout_motion_gate`` is stored divided by this, as ``layout_scale`` is (graph_attention.py):
# Adam moves a weight by about the learning rate per step, and the gate should open in hundreds.
LAYOUT_MOTION_GAIN = 10.0


def frame_time_features(times: torch.Tensor, dim: int) -> torch.Tensor:
    """Fixed Fourier features of frame times: (...) times, each frame's place in its clip as a fraction
    (frame f of F at f / F, as time spans count it) -> (..., dim) float32 ``sin`` and ``cos`` at
    frequencies pi * 2**k, k < dim / 2 (the lowest one tells the start of a clip from its end)."""
    if dim <= 0 or dim % 2:
        raise ValueError(f"dim must be a positive even number, got {dim!r}")
    frequencies = torch.pi * 2.0 ** torch.arange(dim // 2, device=times.device, dtype=torch.float32)
    angles = times.float()[..., None] * frequencies
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class FrameTimeEmbedding(nn.Module):
    """Frame times -> a per-frame addition to the UNet's time embedding: ``frame_time_features``, then
    Linear, SiLU, Linear. The last layer starts at zero, so a model given frame times keeps its output
    until they train."""

    def __init__(self, dim: int, embedding_dim: int):
        super().__init__()
        self.dim = dim
        self.linear_1 = nn.Linear(dim, embedding_dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(embedding_dim, embedding_dim)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        self.linear_1.reset_parameters()
        nn.init.zeros_(self.linear_2.weight)
        nn.init.zeros_(self.linear_2.bias)

    def forward(self, times: torch.Tensor) -> torch.Tensor:
        features = frame_time_features(times, self.dim).to(self.linear_1.weight.dtype)
        return self.linear_2(self.act(self.linear_1(features)))


class SceneGraphUNet3DConditionModel(UNet3DConditionModel, PeftAdapterMixin):
    r"""``UNet3DConditionModel`` conditioned on scene graphs (SGDiff's method carried to video).

    The scene-graph encoder's local tokens (B, N, 3D) and global vector (B, D) become a context of
    N + 1 tokens of width ``cross_attention_dim``; the spatial cross-attention layers attend to it,
    either instead of text (``graph_mode="graph_only"``, as SGDiff) or beside it
    (``graph_mode="decoupled"``, IP-Adapter's scheme, for a pretrained text-to-video UNet whose text
    attention stays intact). Temporal layers never see the graph.

    Where this differs from SGDiff:

    - SGDiff appends the raw global vector to the projected local tokens (its context width equals
      the encoder's D); here the global vector has its own projection ``graph_global_proj``, so the
      context can take any ``cross_attention_dim`` (a pretrained UNet's).
    - SGDiff has no classifier-free guidance. The learned ``null_graph_token`` and the token mask
      (padding and dropped graphs are masked) are ours: they give the unconditional branch of CFG
      (:meth:`null_graph_context`) and graph dropout in training.
    - Frames: the context is per video or per frame (time-stamped relations).
    - Positions (``graph_position_dim > 0``, off by default): the graph attention's queries also
      carry fixed Fourier features of where they are in the latent, through a learned projection
      that starts at zero (``graph_attention.py``). SGDiff's queries know their position only
      through the convolutions' padding; relations are about positions.
    - Layout bias (``graph_layout_bias``, off by default): for an encoder trained with the layout loss,
      whose object vectors hold the box it infers for each object (through the fixed
      :func:`~sg2vid_diffusers.models.sg_encoder.layout_readout`), each local token's subject box
      is read off the token and the graph attention adds ``layout_scale`` (per head, zero at the
      start) times "how much the query lies inside that box" to its scores: the denoiser is told
      where each object goes instead of having to learn to decode it.
    - Frame times (``frame_time_dim > 0``, off by default): ``UNet3DConditionModel`` has no frame
      positions (its temporal attention has no position embedding and every frame gets the same time
      embedding), so only the temporal convolutions' padding tells a frame where it is in the clip,
      and motion that a graph asks for ("moving toward") has no clock to follow. Each frame's time in
      its clip, through :class:`FrameTimeEmbedding` (zero at the start), is added to the time
      embedding of that frame.
    - Moving layout (``graph_layout_motion``, off by default, with the layout bias): for an encoder
      trained with the layout loss's motion term, each token's subject box moves over the clip by
      what :func:`~sg2vid_diffusers.models.sg_encoder.motion_readout` reads off the token, so the
      layout bias places a moving object where it is at each frame, through a learned gate
      ``graph_layout_motion_gate`` that starts at zero.

    Args:
        sample_size ... time_cond_proj_dim: as ``UNet3DConditionModel``.
        graph_mode: ``"graph_only"`` or ``"decoupled"``.
        graph_token_dim: width of the encoder's local tokens, 3D (1536 for SGDiff's encoder).
        graph_global_dim: width of the encoder's global vector, D (512 for SGDiff's encoder).
        graph_position_dim: width of the graph queries' position features, a multiple of 4 (0: none).
            A model saved without them loads with them (``from_pretrained(..., graph_position_dim=16)``)
            and gives the same output until trained.
        graph_layout_bias: give the graph attention the layout bias (the same: zero at the start).
        frame_time_dim: width of the frame-time features, an even number (0: none); the same again:
            a model saved without them loads with them and gives the same output until trained.
        graph_layout_motion: move the layout bias's boxes over the clip (needs ``graph_layout_bias``
            and ``graph_global_dim >= 8``; the same: the gate is zero at the start).

    Weight names are those of ``UNet3DConditionModel`` plus ``graph_local_proj``,
    ``graph_global_proj``, ``null_graph_token``, in decoupled mode
    ``*.attn2.processor.to_k_graph`` / ``to_v_graph``, with positions ``*.attn2.processor.to_q_pos``
    and with the layout bias ``*.attn2.processor.layout_scale``, with frame times ``frame_time_embedding.*``. The attention processors are the graph ones of
    ``graph_attention.py``; :meth:`set_default_attn_processor` and the xformers switches keep them.
    ``set_attention_slice`` and ``fuse_qkv_projections`` would replace them and raise instead.

    A text-to-video UNet3D becomes a graph-conditioned one with :meth:`from_unet3d` (or
    :meth:`from_pretrained` on its folder with ``graph_mode=...``); the new graph weights are
    initialised, never left uninitialised or on the meta device. ``enable_gradient_checkpointing()``
    checkpoints each down, mid and up block; ``add_adapter`` (PEFT LoRA) works, with
    :func:`lora_target_modules` choosing spatial or temporal layers.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        sample_size: int | None = None,
        in_channels: int = 4,
        out_channels: int = 4,
        down_block_types: tuple[str, ...] = (
            "CrossAttnDownBlock3D",
            "CrossAttnDownBlock3D",
            "CrossAttnDownBlock3D",
            "DownBlock3D",
        ),
        up_block_types: tuple[str, ...] = (
            "UpBlock3D",
            "CrossAttnUpBlock3D",
            "CrossAttnUpBlock3D",
            "CrossAttnUpBlock3D",
        ),
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        layers_per_block: int = 2,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1,
        act_fn: str = "silu",
        norm_num_groups: int | None = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int = 1024,
        attention_head_dim: int | tuple[int] = 64,
        num_attention_heads: int | tuple[int] | None = None,
        time_cond_proj_dim: int | None = None,
        graph_mode: str = "graph_only",
        graph_token_dim: int = 1536,
        graph_global_dim: int = 512,
        graph_position_dim: int = 0,
        graph_layout_bias: bool = False,
        frame_time_dim: int = 0,
        graph_layout_motion: bool = False,
    ):
        if graph_mode not in GRAPH_MODES:
            raise ValueError(f"graph_mode must be one of {GRAPH_MODES}, got {graph_mode!r}")
        _check_graph_attention_options(graph_position_dim, graph_layout_bias, graph_token_dim, graph_global_dim)
        _check_frame_time_dim(frame_time_dim)
        _check_layout_motion(graph_layout_motion, graph_layout_bias, graph_global_dim)
        super().__init__(
            sample_size=sample_size,
            in_channels=in_channels,
            out_channels=out_channels,
            down_block_types=down_block_types,
            up_block_types=up_block_types,
            block_out_channels=block_out_channels,
            layers_per_block=layers_per_block,
            downsample_padding=downsample_padding,
            mid_block_scale_factor=mid_block_scale_factor,
            act_fn=act_fn,
            norm_num_groups=norm_num_groups,
            norm_eps=norm_eps,
            cross_attention_dim=cross_attention_dim,
            attention_head_dim=attention_head_dim,
            num_attention_heads=num_attention_heads,
            time_cond_proj_dim=time_cond_proj_dim,
        )
        # ModelMixin.enable_gradient_checkpointing sets this flag (and _gradient_checkpointing_func) on
        # every module that has it; the 3D blocks ignore theirs, so this forward checkpoints them.
        self.gradient_checkpointing = False
        self.graph_local_proj = nn.Linear(graph_token_dim, cross_attention_dim)
        self.graph_global_proj = nn.Linear(graph_global_dim, cross_attention_dim)
        self.null_graph_token = nn.Parameter(torch.randn(cross_attention_dim) * cross_attention_dim**-0.5)
        install_graph_processors(self, graph_mode, position_dim=graph_position_dim, layout_bias=graph_layout_bias)
        self.frame_time_embedding = self._new_frame_time_embedding(frame_time_dim)
        self.graph_layout_motion_gate = nn.Parameter(torch.zeros(())) if graph_layout_motion else None

    def _new_frame_time_embedding(self, dim: int) -> FrameTimeEmbedding | None:
        if not dim:
            return None
        weight = self.time_embedding.linear_2.weight
        module = FrameTimeEmbedding(dim, self.time_embedding.linear_2.out_features)
        return module.to(device=weight.device if not weight.is_meta else None, dtype=weight.dtype)

    # ------------------------------------------------------------------ graph context

    def build_graph_context(
        self,
        local_tokens: torch.Tensor,
        local_mask: torch.Tensor,
        global_embeds: torch.Tensor,
        num_frames: int,
        drop: torch.Tensor | None = None,
        motion_scale: float = 1.0,
    ) -> GraphContext:
        r"""Project the encoder's outputs into the cross-attention context, one per frame.

        Args:
            local_tokens: (B, N, Dt) one set of local tokens for every frame, or (B, F, N, Dt) one per
                frame (``SceneGraphEncoderOutput.frame_local_tokens``); Dt = ``graph_token_dim``.
            local_mask: (B, N) or (B, F, N) bool, True on real tokens.
            global_embeds: (B, Dg), Dg = ``graph_global_dim``.
            num_frames: F.
            drop: (B,) bool or None; the graphs marked True become the null graph (every local token
                masked, the global token replaced by ``null_graph_token``): graph dropout in training.
            motion_scale: with ``graph_layout_motion``, multiplies the learnt gate at sampling time
                (0: every frame gets the clip's mean box, no motion; 1: the trained model; above 1:
                more of the move the encoder infers). A model without the moving layout takes only 1.

        Returns:
            :class:`GraphContext` with ``hidden_states`` (B*F, N + 1, C) =
            ``[graph_local_proj(local tokens), graph_global_proj(global)]`` (masked tokens zeroed),
            ``mask`` (B*F, N + 1), the global token always True, and with the layout bias ``boxes``
            (B*F, N + 1, 4): each local token's subject vector (its first third) through
            ``layout_readout``, NaN for the global token; with ``graph_layout_motion``, plus the
            gate times ((f + 0.5) / F - 0.5) times the vector through ``motion_readout`` in frame f.
        """
        if global_embeds.ndim != 2:
            raise ValueError(f"global_embeds must have shape (B, Dg), got {tuple(global_embeds.shape)}")
        check_motion_scale(motion_scale, self.config.graph_layout_motion)
        batch_size = global_embeds.shape[0]
        if local_tokens.ndim == 3:
            local_tokens, local_mask = local_tokens[:, None], local_mask[:, None]  # one frame, broadcast below
        elif local_tokens.ndim != 4 or local_tokens.shape[1] != num_frames:
            raise ValueError(
                f"local_tokens must have shape (B, N, Dt) or (B, F={num_frames}, N, Dt), "
                f"got {tuple(local_tokens.shape)}"
            )
        if local_tokens.shape[0] != batch_size or local_mask.shape != local_tokens.shape[:3]:
            raise ValueError(
                f"local_tokens {tuple(local_tokens.shape)}, local_mask {tuple(local_mask.shape)} and global_embeds "
                f"{tuple(global_embeds.shape)} disagree (expected batch {batch_size} and a mask of the tokens' shape)"
            )
        if local_mask.dtype != torch.bool:
            raise TypeError(f"local_mask must be a bool tensor (True = real token), got dtype {local_mask.dtype}")

        # The encoder may run in another precision than the UNet (e.g. float32 beside float16).
        dtype = self.graph_local_proj.weight.dtype
        local = self.graph_local_proj(local_tokens.to(dtype))  # (B, F or 1, N, C)
        global_token = self.graph_global_proj(global_embeds.to(dtype))  # (B, C)
        if drop is not None:
            if drop.shape != (batch_size,) or drop.dtype != torch.bool:
                raise ValueError(f"drop must be a ({batch_size},) bool tensor, got {drop.dtype} {tuple(drop.shape)}")
            local_mask = local_mask & ~drop[:, None, None]
            global_token = torch.where(drop[:, None], self.null_graph_token.to(global_token.dtype), global_token)
        local = local * local_mask[..., None]  # masked tokens are zero, so a null context does not depend on them

        num_local = local.shape[2]
        boxes = None
        if self.config.graph_layout_bias:
            width = self.config.graph_global_dim  # the config guarantees graph_token_dim = 3 x width
            readout = layout_readout(width).to(local_tokens.device)
            subjects = local_tokens[..., :width].float()
            boxes = subjects @ readout  # (B, F or 1, N, 4)
            if self.config.graph_layout_motion:  # each frame's box: its centre time's place in the clip
                centres = motion_frame_offsets(num_frames, boxes.device)
                moves = subjects @ motion_readout(width).to(boxes.device)  # over the whole clip
                gate = self.graph_layout_motion_gate.float() * LAYOUT_MOTION_GAIN * float(motion_scale)
                boxes = boxes + gate * centres[None, :, None, None] * moves
            boxes = boxes.expand(batch_size, num_frames, num_local, 4)
            boxes = torch.cat([boxes, boxes.new_full((batch_size, num_frames, 1, 4), float("nan"))], dim=2)
            boxes = rearrange(boxes, "b f l c -> (b f) l c")
        local = local.expand(batch_size, num_frames, num_local, -1)
        local_mask = local_mask.expand(batch_size, num_frames, num_local)
        global_token = global_token[:, None, None].expand(batch_size, num_frames, 1, -1)
        hidden_states = torch.cat([local, global_token], dim=2)  # (B, F, N + 1, C)
        mask = torch.cat([local_mask, local_mask.new_ones(batch_size, num_frames, 1)], dim=2)  # (B, F, N + 1)
        return GraphContext(
            hidden_states=rearrange(hidden_states, "b f l c -> (b f) l c"),
            mask=rearrange(mask, "b f l -> (b f) l"),
            boxes=boxes,
        )

    def null_graph_context(self, batch_size: int, num_frames: int, num_local_tokens: int = 0) -> GraphContext:
        """The context of the null graph (the unconditional branch of CFG): ``num_local_tokens``
        masked zero tokens and the ``null_graph_token``; (B*F, num_local_tokens + 1, C). The masked
        tokens change nothing (:meth:`GraphContext.cat` pads with the same), so the default, none,
        is as good as any."""
        channels = self.config.cross_attention_dim
        token = self.null_graph_token
        hidden_states = token.new_zeros(batch_size * num_frames, num_local_tokens + 1, channels)
        hidden_states[:, -1] = token
        mask = torch.zeros(batch_size * num_frames, num_local_tokens + 1, dtype=torch.bool, device=token.device)
        mask[:, -1] = True
        return GraphContext(hidden_states=hidden_states, mask=mask)

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor | None = None,
        graph_context: GraphContext | None = None,
        graph_scale: float = 1.0,
        class_labels: torch.Tensor | None = None,
        timestep_cond: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        down_block_additional_residuals: tuple[torch.Tensor, ...] | None = None,
        mid_block_additional_residual: torch.Tensor | None = None,
        return_dict: bool = True,
        frame_times: torch.Tensor | None = None,
        layout_scale: float = 1.0,
    ) -> UNet3DConditionOutput | tuple[torch.Tensor]:
        r"""Denoise a batch of video latents.

        Args:
            sample: (B, C_lat, F, h, w) noisy latents.
            timestep: a number, a 0-d tensor or a (B,) tensor.
            encoder_hidden_states: (B, T, C) text states; required in decoupled mode, optional (and
                ignored by the graph layers) in graph-only mode, where a (B, 1, C) zero tensor stands in.
            graph_context: :class:`GraphContext` of batch B*F (per frame) or B (per video); required
                in graph-only mode, optional in decoupled mode (None gives the text-only model).
            graph_scale: weight of the graph branch in decoupled mode (no effect in graph-only mode).
            class_labels, attention_mask: accepted for ``UNet3DConditionModel``'s signature; that
                model has no class embedding and its blocks ignore ``attention_mask``, so both must be
                None (mask graph tokens with ``graph_context.mask``).
            timestep_cond: (B, time_cond_proj_dim) extra time conditioning, as ``UNet3DConditionModel``.
            cross_attention_kwargs: extra keywords for the attention processors; the graph ones are
                added here.
            down_block_additional_residuals, mid_block_additional_residual: ControlNet-style
                residuals, as ``UNet3DConditionModel``.
            return_dict: return a ``UNet3DConditionOutput`` rather than a tuple.
            frame_times: (F,) or (B, F) each frame's place in its clip, a fraction (frame f of a clip of
                F at f / F, as time spans count it); default: the F frames are a whole clip. Read by a
                model with ``frame_time_dim > 0`` only; training on windows of longer clips passes the
                windows' times.
            layout_scale: multiplies the layout bias (``graph_layout_bias``) of every graph layer: 1 is
                the model as trained, more pulls each object's tokens harder into its box (see
                :func:`check_layout_scale`); no effect without the layout bias or boxes.

        Returns:
            ``UNet3DConditionOutput`` with ``sample`` (B, C_out, F, h, w), or ``(sample,)``.
        """
        batch_size, _, num_frames, height, width = sample.shape
        if class_labels is not None:
            raise ValueError("class_labels is not supported: UNet3DConditionModel has no class embedding")
        if attention_mask is not None:
            raise ValueError(
                "attention_mask is not supported: UNet3DConditionModel's blocks ignore it; mask graph tokens "
                "with graph_context.mask"
            )
        encoder_hidden_states = self._text_states(encoder_hidden_states, graph_context, batch_size, sample)
        cross_attention_kwargs = dict(cross_attention_kwargs or {})
        if graph_context is not None:
            graph_context = self._per_frame_context(graph_context, batch_size, num_frames)
            cross_attention_kwargs.update(
                graph_hidden_states=graph_context.hidden_states,
                graph_mask=graph_context.mask,
                graph_scale=graph_scale,
            )
            if self.config.graph_position_dim or self.config.graph_layout_bias:
                cross_attention_kwargs["graph_positions"] = graph_position_table(
                    height, width, len(self.config.block_out_channels), device=sample.device
                )
            if self.config.graph_layout_bias and graph_context.boxes is not None:
                cross_attention_kwargs["graph_boxes"] = graph_context.boxes
                cross_attention_kwargs["graph_layout_scale"] = layout_scale

        # 1. time: one embedding per video, repeated per frame (frames are folded into the batch)
        emb = self._time_embedding(timestep, timestep_cond, sample)  # (B, E)
        emb = emb.repeat_interleave(num_frames, dim=0)  # (B*F, E)
        if self.frame_time_embedding is not None:  # ... plus each frame's own time in its clip
            emb = emb + self.frame_time_embedding(self._frame_times(frame_times, batch_size, num_frames, sample))
        encoder_hidden_states = encoder_hidden_states.repeat_interleave(num_frames, dim=0)  # (B*F, T, C)

        # 2. pre-process
        sample = rearrange(sample, "b c f h w -> (b f) c h w")
        sample = self.conv_in(sample)
        sample = self.transformer_in(
            sample, num_frames=num_frames, cross_attention_kwargs=cross_attention_kwargs, return_dict=False
        )[0]
        block_kwargs = dict(temb=emb, num_frames=num_frames)
        cross_kwargs = dict(encoder_hidden_states=encoder_hidden_states, cross_attention_kwargs=cross_attention_kwargs)

        # 3. down
        down_block_res_samples = (sample,)
        for block in self.down_blocks:
            extra = cross_kwargs if getattr(block, "has_cross_attention", False) else {}
            sample, res_samples = self._run_block(block, hidden_states=sample, **block_kwargs, **extra)
            down_block_res_samples += res_samples
        if down_block_additional_residuals is not None:
            down_block_res_samples = tuple(
                res + extra_res for res, extra_res in zip(down_block_res_samples, down_block_additional_residuals)
            )

        # 4. mid
        if self.mid_block is not None:
            sample = self._run_block(self.mid_block, hidden_states=sample, **block_kwargs, **cross_kwargs)
        if mid_block_additional_residual is not None:
            sample = sample + mid_block_additional_residual

        # 5. up; sizes that are not a multiple of the total upsampling factor need explicit upsample sizes
        forward_upsample_size = any(size % 2**self.num_upsamplers != 0 for size in (height, width))
        for i, block in enumerate(self.up_blocks):
            res_samples = down_block_res_samples[-len(block.resnets) :]
            down_block_res_samples = down_block_res_samples[: -len(block.resnets)]
            is_final_block = i == len(self.up_blocks) - 1
            upsample_size = None
            if forward_upsample_size and not is_final_block:
                upsample_size = down_block_res_samples[-1].shape[2:]
            extra = cross_kwargs if getattr(block, "has_cross_attention", False) else {}
            sample = self._run_block(
                block,
                hidden_states=sample,
                res_hidden_states_tuple=res_samples,
                upsample_size=upsample_size,
                **block_kwargs,
                **extra,
            )

        # 6. post-process
        if self.conv_norm_out is not None:
            sample = self.conv_act(self.conv_norm_out(sample))
        sample = self.conv_out(sample)
        sample = rearrange(sample, "(b f) c h w -> b c f h w", f=num_frames)

        if not return_dict:
            return (sample,)
        return UNet3DConditionOutput(sample=sample)

    def _text_states(
        self,
        encoder_hidden_states: torch.Tensor | None,
        graph_context: GraphContext | None,
        batch_size: int,
        sample: torch.Tensor,
    ) -> torch.Tensor:
        """Check the mode's required inputs; (B, T, C) text states, or the graph-only zero stand-in."""
        if self.config.graph_mode == "graph_only":
            if graph_context is None:
                raise ValueError(
                    "graph_context is required in graph_only mode: build one with unet.build_graph_context(...) "
                    "(or unet.null_graph_context(...) for the unconditional branch)"
                )
            if encoder_hidden_states is None:
                # UNet3D's blocks need a context tensor; GraphAttnProcessor ignores it.
                return sample.new_zeros(batch_size, 1, self.config.cross_attention_dim)
        elif encoder_hidden_states is None:
            raise ValueError("encoder_hidden_states (text states) are required in decoupled mode")
        return encoder_hidden_states

    def _per_frame_context(self, graph_context: GraphContext, batch_size: int, num_frames: int) -> GraphContext:
        """Check a context against the sample and give it batch B*F (a per-video one is repeated)."""
        states, mask = graph_context.hidden_states, graph_context.mask
        if states.ndim != 3 or states.shape[-1] != self.config.cross_attention_dim:
            raise ValueError(
                f"graph_context.hidden_states must have shape (B*F, L, {self.config.cross_attention_dim}), "
                f"got {tuple(states.shape)}"
            )
        if mask.shape != states.shape[:2] or mask.dtype != torch.bool:
            raise ValueError(
                f"graph_context.mask must be a bool tensor of shape {tuple(states.shape[:2])}, "
                f"got {mask.dtype} {tuple(mask.shape)}"
            )
        boxes = graph_context.boxes
        if boxes is not None and boxes.shape != (*states.shape[:2], 4):
            raise ValueError(f"graph_context.boxes must have shape {(*states.shape[:2], 4)}, got {tuple(boxes.shape)}")
        if states.shape[0] == batch_size * num_frames:
            return graph_context
        if states.shape[0] == batch_size:
            repeat = lambda t: None if t is None else t.repeat_interleave(num_frames, dim=0)  # noqa: E731
            return GraphContext(repeat(states), repeat(mask), repeat(boxes))
        raise ValueError(
            f"graph_context has batch {states.shape[0]}, but sample has B={batch_size} videos of F={num_frames} "
            f"frames: expected B*F={batch_size * num_frames} (per frame) or B={batch_size} (per video)"
        )

    @staticmethod
    def _frame_times(
        frame_times: torch.Tensor | None, batch_size: int, num_frames: int, sample: torch.Tensor
    ) -> torch.Tensor:
        """(B*F,) frame times, checked; the default: frame f of the sample's F frames at f / F."""
        if frame_times is None:
            frame_times = torch.arange(num_frames, device=sample.device, dtype=torch.float32) / num_frames
        if frame_times.shape not in ((num_frames,), (batch_size, num_frames)):
            raise ValueError(
                f"frame_times must have shape ({num_frames},) or ({batch_size}, {num_frames}) for a sample of "
                f"B={batch_size} videos of F={num_frames} frames, got {tuple(frame_times.shape)}"
            )
        return frame_times.to(sample.device).expand(batch_size, num_frames).reshape(-1)

    def _time_embedding(
        self, timestep: torch.Tensor | float | int, timestep_cond: torch.Tensor | None, sample: torch.Tensor
    ) -> torch.Tensor:
        """timestep (number, 0-d or (B,) tensor) -> (B, E) embedding, as ``UNet3DConditionModel``."""
        timesteps = timestep
        if not torch.is_tensor(timesteps):
            dtype = torch.float64 if isinstance(timestep, float) else torch.int64
            dtype = maybe_adjust_dtype_for_device(dtype, sample.device)  # e.g. no float64 on MPS
            timesteps = torch.tensor([timesteps], dtype=dtype, device=sample.device)
        elif timesteps.ndim == 0:
            timesteps = timesteps[None].to(sample.device)
        timesteps = timesteps.expand(sample.shape[0])
        # time_proj has no weights and returns float32; the embedding may run in half precision
        t_emb = self.time_proj(timesteps).to(dtype=self.dtype)
        return self.time_embedding(t_emb, timestep_cond)

    def enable_gradient_checkpointing(self, gradient_checkpointing_func=None) -> None:
        """Checkpoint every down, mid and up block (activations recomputed in the backward pass).

        Args:
            gradient_checkpointing_func: as ModelMixin's; it must be non-reentrant (the default,
                ``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)``, is).
        """
        super().enable_gradient_checkpointing(gradient_checkpointing_func)
        # ModelMixin turned the flag on in every submodule that has one; the spatial transformers
        # inside the blocks would then checkpoint again within each checkpointed block.
        for module in self.modules():
            if module is not self and hasattr(module, "gradient_checkpointing"):
                module.gradient_checkpointing = False

    def _run_block(self, block: nn.Module, **kwargs):
        """Call a down/mid/up block, through gradient checkpointing when it is on and grads are needed.
        The block's inputs are bound by keyword, so the checkpoint function must be non-reentrant
        (``enable_gradient_checkpointing()``'s default is)."""
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return self._gradient_checkpointing_func(functools.partial(block, **kwargs))
        return block(**kwargs)

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs):
        r"""Load as diffusers does; graph weights missing from the checkpoint (a plain
        ``UNet3DConditionModel`` folder, or one saved in another ``graph_mode``) are initialised as in
        a new model, with ``to_k_graph`` copied from the loaded ``to_k``, on any ``low_cpu_mem_usage``.
        Config values, ``graph_mode`` included, can be overridden as keywords."""
        output_loading_info = kwargs.pop("output_loading_info", False)
        model, loading_info = super().from_pretrained(pretrained_model_name_or_path, output_loading_info=True, **kwargs)
        new_graph_keys = [key for key in loading_info.get("missing_keys", []) if is_graph_weight(key)]
        if new_graph_keys:
            model.initialize_graph_weights(new_graph_keys)
        return (model, loading_info) if output_loading_info else model

    @classmethod
    def from_unet3d(
        cls,
        unet: UNet3DConditionModel | str | os.PathLike,
        graph_mode: str = "decoupled",
        graph_token_dim: int = 1536,
        graph_global_dim: int = 512,
        graph_position_dim: int = 0,
        graph_layout_bias: bool = False,
        **kwargs,
    ) -> "SceneGraphUNet3DConditionModel":
        r"""A graph-conditioned UNet from a text-to-video ``UNet3DConditionModel``: every base weight
        copied, the graph weights new (in decoupled mode the output is then exactly the base model's).

        Args:
            unet: a ``UNet3DConditionModel`` (its device and dtype are kept) or a path / Hub id of
                one's folder (then loaded with :meth:`from_pretrained`, ``kwargs`` passed on, e.g.
                ``subfolder="unet"``).
            graph_mode, graph_token_dim, graph_global_dim, graph_position_dim, graph_layout_bias: as in
                the constructor (the last two are new weights at zero too: the output stays the base model's).
        """
        graph_config = dict(
            graph_mode=graph_mode, graph_token_dim=graph_token_dim, graph_global_dim=graph_global_dim,
            graph_position_dim=graph_position_dim, graph_layout_bias=graph_layout_bias,
        )  # fmt: skip
        if not isinstance(unet, UNet3DConditionModel):
            return cls.from_pretrained(unet, **graph_config, **kwargs)
        if kwargs:
            raise TypeError(f"from_unet3d got loading keywords {sorted(kwargs)} with a model instance")
        base_config = {key: value for key, value in unet.config.items() if not key.startswith("_")}
        model = cls.from_config({**base_config, **graph_config})
        missing, unexpected = model.load_state_dict(unet.state_dict(), strict=False)
        unexpected = [key for key in unexpected if not is_graph_weight(key)]  # another graph_mode's weights
        missing_base = [key for key in missing if not is_graph_weight(key)]
        if unexpected or missing_base:
            raise ValueError(
                f"{type(unet).__name__} does not match a UNet3DConditionModel of its config: "
                f"unexpected weights {unexpected[:5]}, missing weights {missing_base[:5]}"
            )
        # nn.Module.to: ModelMixin.to warns about float32-only modules even when there are none (0.42).
        nn.Module.to(model, device=unet.device, dtype=unet.dtype)
        model.initialize_graph_weights(missing)
        return model.train(unet.training)

    @torch.no_grad()
    def initialize_graph_weights(self, keys: Iterable[str] | None = None) -> None:
        """(Re)initialise graph weights as a new model has them: the projections as ``nn.Linear``
        does, ``null_graph_token`` ~ N(0, 1/C), decoupled processors from their layer's ``to_k``
        (``DecoupledGraphAttnProcessor.reset_parameters``), position projections and the frame-time
        embedding's last layer at zero. Meta tensors are materialised.

        Args:
            keys: state-dict keys; only the modules that own them are reset (None: all graph weights).
        """
        keys = None if keys is None else list(keys)

        def wanted(prefix: str) -> bool:
            return keys is None or any(key.startswith(prefix) for key in keys)

        device = self.conv_in.weight.device
        for name in ("graph_local_proj", "graph_global_proj"):
            projection = getattr(self, name)
            if wanted(f"{name}."):
                if projection.weight.is_meta:
                    projection.to_empty(device=device)
                projection.reset_parameters()
        if wanted("null_graph_token"):
            channels = self.config.cross_attention_dim
            token = torch.randn(channels, device=device) * channels**-0.5
            if self.null_graph_token.is_meta:
                self.null_graph_token = nn.Parameter(token.to(self.null_graph_token.dtype))
            else:
                self.null_graph_token.copy_(token)
        if self.graph_layout_motion_gate is not None and wanted("graph_layout_motion_gate"):
            if self.graph_layout_motion_gate.is_meta:
                self.graph_layout_motion_gate = nn.Parameter(torch.zeros((), device=device))
            else:
                self.graph_layout_motion_gate.zero_()
        if self.frame_time_embedding is not None and wanted("frame_time_embedding."):
            if self.frame_time_embedding.linear_1.weight.is_meta:
                self.frame_time_embedding.to_empty(device=device)
            self.frame_time_embedding.reset_parameters()
        for name, module in self.named_modules():
            if not isinstance(module, Attention) or not wanted(f"{name}.processor."):
                continue
            if isinstance(module.processor, DecoupledGraphAttnProcessor):
                module.processor.reset_parameters(module)
            elif isinstance(module.processor, GraphAttnProcessor):
                module.processor.reset_extras(device)

    def enable_graph_positions(self, position_dim: int) -> None:
        """Give the graph attention's queries position features of width ``position_dim`` (0 removes
        them), keeping every other weight: new ``to_q_pos`` projections start at zero, so the output is
        unchanged until they train. The config's ``graph_position_dim`` follows (saved with the model).
        For a trained model, e.g. the built-in one, before fine-tuning it with positions."""
        config = self.config
        _check_graph_attention_options(position_dim, config.graph_layout_bias, config.graph_token_dim, config.graph_global_dim)
        self.register_to_config(graph_position_dim=position_dim)
        self._reinstall_graph_processors()

    def enable_graph_layout_bias(self, enabled: bool = True) -> None:
        """Switch the layout bias on (new ``layout_scale`` at zero: the output is unchanged until it
        trains) or off, keeping every other weight; the config's ``graph_layout_bias`` follows. Only an
        encoder trained with the layout loss gives boxes worth reading."""
        config = self.config
        _check_graph_attention_options(config.graph_position_dim, enabled, config.graph_token_dim, config.graph_global_dim)
        if not enabled and config.graph_layout_motion:
            raise ValueError("graph_layout_motion moves the layout bias's boxes: switch it off first")
        self.register_to_config(graph_layout_bias=bool(enabled))
        self._reinstall_graph_processors()

    def enable_frame_times(self, dim: int) -> None:
        """Give the model frame times of feature width ``dim`` (0 removes them), keeping every other
        weight: a new :class:`FrameTimeEmbedding` ends at zero, so the output is unchanged until it
        trains. The config's ``frame_time_dim`` follows (saved with the model). For a trained model,
        before fine-tuning it to move objects when its graphs ask for motion."""
        _check_frame_time_dim(dim)
        self.register_to_config(frame_time_dim=dim)
        self.frame_time_embedding = self._new_frame_time_embedding(dim)

    def enable_graph_layout_motion(self, enabled: bool = True) -> None:
        """Switch the moving layout on (a new gate at zero: the output is unchanged until it trains) or
        off, keeping every other weight; the config's ``graph_layout_motion`` follows. Only an encoder
        trained with the layout loss's motion term gives moves worth reading."""
        _check_layout_motion(enabled, self.config.graph_layout_bias, self.config.graph_global_dim)
        self.register_to_config(graph_layout_motion=bool(enabled))
        device = self.conv_in.weight.device
        self.graph_layout_motion_gate = nn.Parameter(torch.zeros((), device=device)) if enabled else None

    def _reinstall_graph_processors(self) -> None:
        """The config's graph processors again, SDPA or xformers as they are now, weights kept."""
        self._install_graph_processors(xformers=any(isinstance(p, _XFormersAttention) for p in self.attn_processors.values()))

    def _install_graph_processors(self, xformers: bool = False, attention_op=None) -> None:
        install_graph_processors(
            self, self.config.graph_mode, position_dim=self.config.graph_position_dim,
            layout_bias=self.config.graph_layout_bias, xformers=xformers, attention_op=attention_op,
        )  # fmt: skip

    # ------------------------------------------------------------------ attention implementations

    def set_default_attn_processor(self) -> None:
        """Back to the default (PyTorch SDPA) processors: the graph ones, weights kept."""
        self._install_graph_processors()

    def enable_xformers_memory_efficient_attention(self, attention_op=None) -> None:
        """Use the xformers variants of the graph processors (weights kept). Raises
        ModuleNotFoundError when xformers is not installed, leaving the processors as they were."""
        self.set_use_memory_efficient_attention_xformers(True, attention_op)

    def disable_xformers_memory_efficient_attention(self) -> None:
        """Back to the PyTorch SDPA graph processors (weights kept)."""
        self.set_use_memory_efficient_attention_xformers(False)

    def set_use_memory_efficient_attention_xformers(self, valid: bool, attention_op=None) -> None:
        """The switch behind ``enable/disable_xformers_memory_efficient_attention``. ModelMixin's
        version would give every layer diffusers' plain xformers processor, dropping the graph ones."""
        self._install_graph_processors(xformers=valid, attention_op=attention_op)

    def set_attention_slice(self, slice_size) -> None:
        raise NotImplementedError(
            "attention slicing would replace the graph attention processors; PyTorch SDPA (the default) "
            "is already memory-efficient"
        )

    def fuse_qkv_projections(self) -> None:
        raise NotImplementedError("fused QKV projections would replace the graph attention processors")


def _check_sampling_scale(name: str, value, enabled: bool, what: str, flag: str) -> None:
    """A sampling-time scale ``name`` is a finite number >= 0, and anything but 1 needs the UNet's
    ``flag`` (``what`` it scales): elsewhere there is nothing to scale."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if value != 1 and not enabled:
        raise ValueError(f"{name}={value!r} scales {what}, and this UNet has none ({flag} is off): leave it at 1")


def check_motion_scale(motion_scale, graph_layout_motion: bool) -> None:
    """A sampling-time motion scale is a finite number >= 0, and anything but 1 needs a UNet with the
    moving layout (``graph_layout_motion``): elsewhere there is no motion to scale."""
    _check_sampling_scale("motion_scale", motion_scale, graph_layout_motion, "the moving layout", "graph_layout_motion")


def check_layout_scale(layout_scale, graph_layout_bias: bool) -> None:
    """A sampling-time layout scale is a finite number >= 0, and anything but 1 needs a UNet with the
    layout bias (``graph_layout_bias``): elsewhere there is no bias to scale."""
    _check_sampling_scale("layout_scale", layout_scale, graph_layout_bias, "the layout bias", "graph_layout_bias")


def _check_layout_motion(motion: bool, layout_bias: bool, global_dim: int) -> None:
    if motion and not layout_bias:
        raise ValueError("graph_layout_motion moves the layout bias's boxes: it needs graph_layout_bias")
    if motion and global_dim < 8:
        raise ValueError(f"graph_layout_motion needs graph_global_dim >= 8 (the motion readout), got {global_dim}")


def _check_frame_time_dim(dim) -> None:
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < 0 or dim % 2:
        raise ValueError(f"frame_time_dim must be 0 or a positive even number, got {dim!r}")


def _check_graph_attention_options(position_dim, layout_bias: bool, token_dim: int, global_dim: int) -> None:
    """The UNet's ``graph_position_dim`` and ``graph_layout_bias``, checked (constructor and ``enable_...``)."""
    if not isinstance(position_dim, int) or position_dim < 0 or position_dim % 4:
        raise ValueError(f"graph_position_dim must be 0 or a positive multiple of 4, got {position_dim!r}")
    if layout_bias and token_dim != 3 * global_dim:
        raise ValueError(
            "the layout bias reads each token's subject third: graph_token_dim must be 3 x graph_global_dim "
            f"({3 * global_dim}), got {token_dim}"
        )


def lora_target_modules(unet: nn.Module, scope: str = "spatial") -> list[str]:
    r"""Names of the attention projections (``to_q``, ``to_k``, ``to_v``, ``to_out.0``) that a LoRA
    should adapt, for ``LoraConfig(target_modules=...)``; the usual bare names would also hit the
    temporal layers.

    Args:
        unet: a UNet3D (or this subclass).
        scope: ``"spatial"`` (self- and cross-attention of ``*.attentions.*``), ``"temporal"``
            (``*.temp_attentions.*`` and ``transformer_in``) or ``"all"``.

    Returns:
        Full module names, e.g. ``"down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"``.
    """
    scopes = ("spatial", "temporal", "all")
    if scope not in scopes:
        raise ValueError(f"scope must be one of {scopes}, got {scope!r}")
    names = []
    for name, module in unet.named_modules():
        if not isinstance(module, Attention):
            continue
        parts = name.split(".")
        spatial = "attentions" in parts
        if scope == "all" or (scope == "spatial") == spatial:
            names += [f"{name}.{projection}" for projection in ("to_q", "to_k", "to_v", "to_out.0")]
    return names
