"""Visual towers for masked contrastive pretraining: what the scene-graph encoder is contrasted with.

A tower maps videos ``(B, F, 3, H, W)`` with values in [0, 1] to

- ``local_tokens`` (B, L, C): the tokens the masked branch's head must reconstruct;
- ``global_embeds`` (B, D): one vector per video, contrasted with the graph's global vector.

Two towers:

- :class:`HFVisionTower`: any ``transformers`` vision model (a CLIP vision model, as SGDiff), frozen,
  applied frame by frame;
- :class:`SmallVideoEncoder`: a small trainable (2+1)D convolutional encoder, for SG-Shapes and tests.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from einops import rearrange
from torch import nn

__all__ = ["VideoTowerOutput", "HFVisionTower", "SmallVideoEncoder"]


@dataclass
class VideoTowerOutput(BaseOutput):
    """What a visual tower returns for B videos.

    Args:
        local_tokens: (B, L, C) local visual tokens.
        global_embeds: (B, D) one vector per video (not normalised).
    """

    local_tokens: torch.Tensor
    global_embeds: torch.Tensor


def _check_videos(videos: torch.Tensor) -> None:
    if videos.ndim != 5 or videos.size(2) != 3:
        raise ValueError(f"videos must have shape (B, F, 3, H, W), got {tuple(videos.shape)}")


class HFVisionTower(nn.Module):
    """A frozen ``transformers`` vision model applied to every frame of a video (SGDiff's frozen CLIP).

    Frames are resized to the model's ``image_size`` and normalised with its image processor's mean
    and standard deviation (CLIP's when the model folder has no ``preprocessor_config.json``).

    - local tokens: the model's ``last_hidden_state`` of every frame, frames one after another:
      (B, F * P, C). For CLIP these are SGDiff's local tokens (the class token and the patch
      tokens after the last block, 50 x 768 per frame for ViT-B/32).
    - global vector: ``image_embeds`` when the model has a projection (``*WithProjection``), else
      ``pooler_output``, averaged over the frames: (B, D).

    The wrapped model's weights are not part of this module's ``state_dict()`` (they come from
    ``pretrained_model_name_or_path`` and never change), so training checkpoints stay small; loading
    a state dict fills them in from the model itself.

    Args:
        model: a ``transformers`` vision model taking ``pixel_values``.
        image_mean, image_std: per-channel normalisation (3 values each).
    """

    trainable = False

    def __init__(self, model: nn.Module, image_mean: tuple[float, ...], image_std: tuple[float, ...]):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.image_size = int(model.config.image_size)
        self.register_buffer("image_mean", torch.tensor(image_mean).float().view(1, 3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(image_std).float().view(1, 3, 1, 1), persistent=False)
        self.local_dim = int(model.config.hidden_size)
        has_projection = any(name in model._modules for name in ("visual_projection", "image_projection"))
        self.global_dim = int(model.config.projection_dim if has_projection else model.config.hidden_size)
        self.register_state_dict_post_hook(_drop_wrapped_weights)
        self.register_load_state_dict_pre_hook(_fill_wrapped_weights)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> "HFVisionTower":
        """Load a vision model by Hub id or local path (keywords go to ``from_pretrained``).

        The class is the one the config names when it is a vision model
        (``CLIPVisionModelWithProjection``, ``SiglipVisionModel``, ...); for a full two-tower
        checkpoint (``CLIPModel``) its vision part with projection (``CLIPVisionModelWithProjection``).
        """
        import transformers
        from transformers import AutoConfig, AutoImageProcessor
        from transformers.utils.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

        config = AutoConfig.from_pretrained(pretrained_model_name_or_path, **kwargs)
        architecture = (getattr(config, "architectures", None) or ["AutoModel"])[0]
        if "Vision" in architecture:
            candidates = [architecture]
        else:
            candidates = [
                architecture.replace("Model", "VisionModelWithProjection"),
                architecture.replace("Model", "VisionModel"),
            ]
        model_class = next((getattr(transformers, n) for n in candidates if hasattr(transformers, n)), None)
        if model_class is None:
            raise ValueError(
                f"{pretrained_model_name_or_path}: no transformers vision model class for architecture "
                f"{architecture!r} (tried {', '.join(candidates)})"
            )
        model = model_class.from_pretrained(pretrained_model_name_or_path, **kwargs)
        try:
            processor = AutoImageProcessor.from_pretrained(pretrained_model_name_or_path, **kwargs)
            mean, std = tuple(processor.image_mean), tuple(processor.image_std)
        except (OSError, ValueError, AttributeError, TypeError):
            mean, std = tuple(OPENAI_CLIP_MEAN), tuple(OPENAI_CLIP_STD)
        return cls(model, mean, std)

    def train(self, mode: bool = True) -> "HFVisionTower":
        super().train(mode)
        self.model.eval()  # frozen: never dropout, never batch statistics
        return self

    @torch.no_grad()
    def forward(self, videos: torch.Tensor) -> VideoTowerOutput:
        """(B, F, 3, H, W) in [0, 1] -> local (B, F * P, C), global (B, D)."""
        _check_videos(videos)
        num_frames = videos.size(1)
        frames = rearrange(videos, "b f c h w -> (b f) c h w").float()
        if frames.shape[-2:] != (self.image_size, self.image_size):
            frames = F.interpolate(frames, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False)
            frames = frames.clamp(0, 1)
        pixel_values = (frames - self.image_mean) / self.image_std
        model_dtype = next(self.model.parameters()).dtype
        out = self.model(pixel_values=pixel_values.to(model_dtype))
        pooled = out.image_embeds if getattr(out, "image_embeds", None) is not None else out.pooler_output  # (BF, D)
        local = rearrange(out.last_hidden_state, "(b f) p c -> b (f p) c", f=num_frames)
        global_embeds = rearrange(pooled, "(b f) d -> b f d", f=num_frames).mean(dim=1)
        return VideoTowerOutput(local_tokens=local.float(), global_embeds=global_embeds.float())


def _drop_wrapped_weights(module: HFVisionTower, state_dict: dict, prefix: str, local_metadata) -> None:
    for key in [k for k in state_dict if k.startswith(prefix + "model.")]:
        del state_dict[key]


def _fill_wrapped_weights(module: HFVisionTower, state_dict: dict, prefix: str, *args) -> None:
    for key, value in module.model.state_dict().items():
        state_dict.setdefault(f"{prefix}model.{key}", value)


class _FactorisedBlock(nn.Module):
    """Residual (2+1)D block: a 3 x 3 spatial convolution, then a 3-frame temporal one."""

    def __init__(self, width: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, width)
        self.spatial = nn.Conv3d(width, width, kernel_size=(1, 3, 3), padding=(0, 1, 1))
        self.norm2 = nn.GroupNorm(groups, width)
        self.temporal = nn.Conv3d(width, width, kernel_size=(3, 1, 1), padding=(1, 0, 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, F, H, W) -> same."""
        h = self.spatial(F.gelu(self.norm1(x)))
        return x + self.temporal(F.gelu(self.norm2(h)))


class SmallVideoEncoder(ModelMixin, ConfigMixin):
    r"""A small trainable video encoder: factorised space-time convolutions, then tokens.

    ``patch_size`` x ``patch_size`` pixel patches of every frame are embedded (a strided
    convolution), refined by ``num_blocks`` residual (2+1)D blocks, then merged by a
    ``tubelet_size`` x 2 x 2 strided convolution into tokens with learned temporal and spatial
    position embeddings. The global vector is a projection of the tokens' mean.

    For 64 x 64 frames, ``patch_size`` 4 and ``tubelet_size`` 2: (F / 2) x 8 x 8 tokens per video.

    Args:
        image_size: frames are resized to this square size.
        max_frames: the longest clip (sizes the temporal position table).
        patch_size: pixels per patch side in the stem.
        tubelet_size: frames merged into one token.
        width: C, channels of the convolutions and width of the local tokens.
        num_blocks: residual (2+1)D blocks.
        embed_dim: D, width of the global vector (the graph encoder's ``output_dim``).
        norm_groups: GroupNorm groups.
    """

    trainable = True

    @register_to_config
    def __init__(
        self,
        image_size: int = 64,
        max_frames: int = 16,
        patch_size: int = 4,
        tubelet_size: int = 2,
        width: int = 64,
        num_blocks: int = 2,
        embed_dim: int = 512,
        norm_groups: int = 8,
    ):
        super().__init__()
        if image_size % (2 * patch_size):
            raise ValueError(f"image_size ({image_size}) must be a multiple of 2 * patch_size ({2 * patch_size})")
        if max_frames % tubelet_size:
            raise ValueError(f"max_frames ({max_frames}) must be a multiple of tubelet_size ({tubelet_size})")
        grid = image_size // (2 * patch_size)
        self.stem = nn.Conv3d(3, width, kernel_size=(1, patch_size, patch_size), stride=(1, patch_size, patch_size))
        self.blocks = nn.Sequential(*(_FactorisedBlock(width, norm_groups) for _ in range(num_blocks)))
        self.merge = nn.Conv3d(width, width, kernel_size=(tubelet_size, 2, 2), stride=(tubelet_size, 2, 2))
        self.temporal_position = nn.Parameter(torch.randn(max_frames // tubelet_size, 1, width) * 0.02)
        self.spatial_position = nn.Parameter(torch.randn(1, grid * grid, width) * 0.02)
        self.norm = nn.LayerNorm(width)
        self.projection = nn.Linear(width, embed_dim)

    @property
    def local_dim(self) -> int:
        return self.config.width

    @property
    def global_dim(self) -> int:
        return self.config.embed_dim

    def forward(self, videos: torch.Tensor) -> VideoTowerOutput:
        """(B, F, 3, H, W) in [0, 1] -> local (B, F / tubelet * grid^2, C), global (B, D)."""
        _check_videos(videos)
        num_frames, size = videos.size(1), self.config.image_size
        if num_frames % self.config.tubelet_size or num_frames > self.config.max_frames:
            raise ValueError(
                f"videos have {num_frames} frames; this encoder takes a multiple of tubelet_size "
                f"({self.config.tubelet_size}) up to max_frames ({self.config.max_frames})"
            )
        if videos.shape[-2:] != (size, size):
            frames = rearrange(videos, "b f c h w -> (b f) c h w")
            frames = F.interpolate(frames, size=(size, size), mode="bilinear", align_corners=False)
            videos = rearrange(frames, "(b f) c h w -> b f c h w", f=num_frames)
        x = rearrange(videos, "b f c h w -> b c f h w") * 2 - 1
        x = self.merge(self.blocks(self.stem(x)))  # (B, C, F', g, g)
        tokens = rearrange(x, "b c f h w -> b f (h w) c")
        tokens = tokens + self.temporal_position[: tokens.size(1)] + self.spatial_position
        local = self.norm(rearrange(tokens, "b f n c -> b (f n) c"))  # (B, L, C)
        return VideoTowerOutput(local_tokens=local, global_embeds=self.projection(local.mean(dim=1)))
