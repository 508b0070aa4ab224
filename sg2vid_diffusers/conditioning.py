"""From encoded scene graphs to the UNet's graph context: the one function the pipeline and the
training script share."""

from __future__ import annotations

import torch

from .batching import SceneGraphBatch
from .models.sg_encoder import SceneGraphEncoder
from .models.unet_3d_graph import GraphContext, SceneGraphUNet3DConditionModel

__all__ = ["encode_graph_context"]


def encode_graph_context(
    sg_encoder: SceneGraphEncoder,
    unet: SceneGraphUNet3DConditionModel,
    graphs: SceneGraphBatch,
    num_frames: int,
    drop: torch.Tensor | None = None,
    motion_scale: float = 1.0,
) -> GraphContext:
    """The UNet's graph context for a batch of graphs: per-frame tokens only when some graph of the
    batch changes over time (otherwise every frame's tokens are the same).

    Args:
        graphs: B graphs (``collate_scene_graphs``), on the encoder's device.
        num_frames: F.
        drop: (B,) bool, the graphs that become the null graph (graph dropout), or None.
        motion_scale: the moving layout's sampling-time scale (``unet.build_graph_context``).

    Returns:
        :class:`GraphContext`, (B*F, N + 1, C) tokens and mask.
    """
    dynamic = graphs.is_dynamic
    encoded = sg_encoder(graphs, num_frames=num_frames if dynamic else None)
    local = encoded.frame_local_tokens if dynamic else encoded.local_tokens
    mask = encoded.frame_mask if dynamic else encoded.local_mask
    dtype = unet.dtype
    return unet.build_graph_context(
        local.to(dtype), mask, encoded.global_embeds.to(dtype), num_frames, drop=drop, motion_scale=motion_scale
    )
