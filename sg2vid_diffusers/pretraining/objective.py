"""SGDiff's masked contrastive pretraining objective, carried to video (``SGDIFF_REFERENCE.md``).

Two losses train the scene-graph encoder against a visual tower:

- **contrastive**: symmetric InfoNCE between the L2-normalised global graph vectors and global video
  vectors, ``logit_scale.exp() * graph @ video.T``, with the encoder's learnable ``logit_scale``
  (kept in [0, ln 100] by :meth:`MaskedContrastiveObjective.clamp_logit_scale` after each step);
- **masked**: each object (never an ``__image__`` node) is chosen with probability ``mask_prob``;
  its box is blacked out in every frame; the masked video is encoded again, and a transformer block
  (self-attention, cross-attention over the graph's local tokens, feed-forward) must reconstruct
  the unmasked video's local tokens (MSE; the targets carry no gradient). The graph's local tokens
  must therefore say what was hidden, and where.

Unlike SGDiff's published code, mask values stay in [0, 1] where boxes overlap, the whole-image
node is never masked, and the head is a submodule created with the objective, so it is in the
optimizer from the first step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from diffusers.utils import BaseOutput
from torch import nn

from ..models.sg_encoder import SceneGraphEncoder
from ..training_utils import layout_loss
from .data import PretrainingBatch
from .towers import HFVisionTower, SmallVideoEncoder

__all__ = [
    "MaskedContrastiveObjective",
    "MaskedContrastiveOutput",
    "MaskedReconstructionHead",
    "contrastive_loss",
    "object_region_masks",
    "gather_with_grad",
    "MAX_LOGIT_SCALE",
]

MAX_LOGIT_SCALE = math.log(100)
# A Vocabulary always has "__image__" at object index 0 (its constructor checks it).
IMAGE_OBJECT_INDEX = 0


@dataclass
class MaskedContrastiveOutput(BaseOutput):
    """One evaluation of the objective on B clips (B_all over all processes).

    Args:
        loss: weighted sum, what to back-propagate.
        contrastive_loss: symmetric InfoNCE over the gathered batch.
        mask_loss: reconstruction MSE (zero when the masked branch is off).
        num_logit_columns: B_all, the candidates each graph was contrasted with.
        graph_embeds, video_embeds: (B, D) L2-normalised global vectors of this process's clips.
        masks: (B, F, 1, H, W) the masks applied (None when the masked branch is off).
        layout_loss: :func:`~sg2vid_diffusers.training_utils.layout_loss` of the encoder's object
            vectors (zero when its weight is 0).
    """

    # Defaults to None, as diffusers outputs have them: Accelerate's mixed-precision wrapper rebuilds
    # outputs from a dict, which BaseOutput accepts only when every field but the first is optional.
    loss: torch.Tensor
    contrastive_loss: torch.Tensor | None = None
    mask_loss: torch.Tensor | None = None
    num_logit_columns: int | None = None
    graph_embeds: torch.Tensor | None = None
    video_embeds: torch.Tensor | None = None
    masks: torch.Tensor | None = None
    layout_loss: torch.Tensor | None = None


class MaskedReconstructionHead(nn.Module):
    """One pre-norm transformer block: self-attention over the masked video's tokens,
    cross-attention over the graph's local tokens (padding masked), feed-forward.

    Args:
        dim: C, width of the video tokens.
        context_dim: width of the graph's local tokens (3 x the encoder's ``output_dim``).
        num_heads: attention heads (must divide ``dim``).
        mlp_ratio: hidden width of the feed-forward, in units of ``dim``.
    """

    def __init__(self, dim: int, context_dim: int, num_heads: int = 8, mlp_ratio: float = 4.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"num_heads ({num_heads}) must divide the video token width ({dim})")
        self.norm1 = nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.context_norm = nn.LayerNorm(context_dim)
        self.cross_attn = nn.MultiheadAttention(dim, num_heads, kdim=context_dim, vdim=context_dim, batch_first=True)
        self.norm3 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, tokens: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor) -> torch.Tensor:
        """
        Args:
            tokens: (B, L, C) the masked video's tokens.
            context: (B, N, Dt) the graph's local tokens.
            context_mask: (B, N) bool, True on real tokens (at least one per graph).

        Returns:
            (B, L, C) the reconstructed tokens.
        """
        h = self.norm1(tokens)
        x = tokens + self.self_attn(h, h, h, need_weights=False)[0]
        ctx = self.context_norm(context)
        x = x + self.cross_attn(self.norm2(x), ctx, ctx, key_padding_mask=~context_mask, need_weights=False)[0]
        return x + self.mlp(self.norm3(x))


def object_region_masks(
    object_boxes: torch.Tensor, chosen: torch.Tensor, obj_to_img: torch.Tensor, num_videos: int, height: int, width: int
) -> torch.Tensor:
    """Per video and frame, 1 on every pixel that a chosen object's box touches, else 0.

    A box ``[x0, y0, x1, y1]`` (fractions) covers the pixels ``floor(x0 * W) .. ceil(x1 * W) - 1``
    (and likewise in y): every pixel it overlaps, so nothing of the object stays visible. Where
    boxes overlap the sum is clamped to 1 (SGDiff let it exceed the range).

    Args:
        object_boxes: (O, F, 4) fractions.
        chosen: (O,) bool, the objects to mask.
        obj_to_img: (O,) long, each object's video.
        num_videos: B.
        height, width: H, W of the frames.

    Returns:
        (B, F, 1, H, W) float in [0, 1].
    """
    num_frames = object_boxes.size(1)
    boxes = object_boxes[chosen]  # (K, F, 4)
    scale = boxes.new_tensor([width, height, width, height])
    pixels = boxes * scale
    lo = pixels[..., :2].floor()  # (K, F, 2) first covered pixel, x then y
    hi = pixels[..., 2:].ceil()  # (K, F, 2) one past the last
    xs = torch.arange(width, device=boxes.device, dtype=boxes.dtype)
    ys = torch.arange(height, device=boxes.device, dtype=boxes.dtype)
    in_x = (xs >= lo[..., 0:1]) & (xs < hi[..., 0:1])  # (K, F, W)
    in_y = (ys >= lo[..., 1:2]) & (ys < hi[..., 1:2])  # (K, F, H)
    regions = (in_y[..., :, None] & in_x[..., None, :]).to(boxes.dtype)  # (K, F, H, W)
    masks = boxes.new_zeros(num_videos, num_frames, height, width)
    masks = masks.index_add(0, obj_to_img[chosen], regions).clamp(0, 1)
    return masks[:, :, None]


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0; the backward pass sums the gradients of every process's copy and
    returns this process's slice (so the loss over the gathered batch back-propagates exactly)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.batch = dist.get_rank(), x.size(0)
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.batch : (ctx.rank + 1) * ctx.batch]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """(B, D) on each of W processes -> (W * B, D) in rank order, differentiable; ``x`` itself
    without torch.distributed or with one process. Every process must pass the same B."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


def contrastive_loss(
    graph_embeds: torch.Tensor, video_embeds: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE: graph i matches video i.

    Args:
        graph_embeds, video_embeds: (B, D) L2-normalised.
        logit_scale: scalar, the log of the temperature's inverse.

    Returns:
        scalar, ``(CE(logits, i) + CE(logits.T, i)) / 2`` with ``logits = exp(logit_scale) * g @ v.T``.
    """
    logits = logit_scale.exp() * graph_embeds @ video_embeds.T  # (B, B)
    labels = torch.arange(logits.size(0), device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


class MaskedContrastiveObjective(nn.Module):
    """The graph encoder, a visual tower and the reconstruction head, with SGDiff's two losses.

    Args:
        graph_encoder: the :class:`SceneGraphEncoder` being trained (its ``logit_scale`` is the
            contrastive temperature).
        video_tower: :class:`HFVisionTower` (frozen) or :class:`SmallVideoEncoder` (trained); its
            ``global_dim`` must equal the encoder's ``output_dim``.
        mask_prob: probability that an object is masked (SGDiff: 0.8).
        contrastive_weight, mask_loss_weight: loss weights (SGDiff: 1 and 1).
        masked_branch: False drops the masked branch and its head (SGDiff's ablation).
        head_num_heads: attention heads of the head.
        normalize_targets: layer-normalise (without gains) the target tokens and the masked
            tokens fed to the head, so a trainable tower cannot lower the loss by shrinking its
            tokens.
        layout_loss_weight: weight of :func:`~sg2vid_diffusers.training_utils.layout_loss` (ours,
            not SGDiff's: the encoder's object vectors regressed onto their boxes through a fixed
            projection; objects without boxes are left out). Default 0: off, as SGDiff.
    """

    def __init__(
        self,
        graph_encoder: SceneGraphEncoder,
        video_tower: HFVisionTower | SmallVideoEncoder,
        mask_prob: float = 0.8,
        contrastive_weight: float = 1.0,
        mask_loss_weight: float = 1.0,
        masked_branch: bool = True,
        head_num_heads: int = 8,
        normalize_targets: bool = True,
        layout_loss_weight: float = 0.0,
    ):
        super().__init__()
        if layout_loss_weight < 0:
            raise ValueError(f"layout_loss_weight must be >= 0, got {layout_loss_weight}")
        if not 0.0 <= mask_prob <= 1.0:
            raise ValueError(f"mask_prob must lie in [0, 1], got {mask_prob}")
        if video_tower.global_dim != graph_encoder.config.output_dim:
            raise ValueError(
                f"the video tower's global vectors are {video_tower.global_dim} wide but the graph "
                f"encoder's output_dim is {graph_encoder.config.output_dim}: make them equal"
            )
        self.graph_encoder = graph_encoder
        self.video_tower = video_tower
        self.mask_prob = mask_prob
        self.contrastive_weight = contrastive_weight
        self.mask_loss_weight = mask_loss_weight
        self.normalize_targets = normalize_targets
        self.layout_loss_weight = layout_loss_weight
        self.head = (
            MaskedReconstructionHead(video_tower.local_dim, 3 * graph_encoder.config.output_dim, head_num_heads)
            if masked_branch
            else None
        )

    @property
    def masked_branch(self) -> bool:
        return self.head is not None

    def clamp_logit_scale(self) -> None:
        """Keep ``logit_scale`` in [0, ln 100]; call after every optimizer step."""
        with torch.no_grad():
            self.graph_encoder.logit_scale.clamp_(0, MAX_LOGIT_SCALE)

    def param_groups(self, weight_decay: float) -> list[dict]:
        """The trainable parameters as AdamW groups: weight decay on matrices and convolution
        kernels; none on biases, norm gains and ``logit_scale`` (SGDiff)."""
        decay, no_decay = [], []
        for param in self.parameters():
            if param.requires_grad:
                (decay if param.ndim >= 2 else no_decay).append(param)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

    def _encode_graphs(self, batch: PretrainingBatch):
        # The graph encoder is small; it runs in float32 even under autocast, where its scatter
        # pooling would otherwise mix float32 and reduced-precision tensors.
        with torch.autocast(batch.videos.device.type, enabled=False):
            return self.graph_encoder(batch.graphs)

    def embed(self, batch: PretrainingBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, D) L2-normalised global graph and video vectors, for retrieval."""
        graph = self._encode_graphs(batch).global_embeds
        video = self.video_tower(batch.videos).global_embeds
        return F.normalize(graph.float(), dim=-1), F.normalize(video.float(), dim=-1)

    def choose_masked_objects(self, batch: PretrainingBatch, generator: torch.Generator | None = None) -> torch.Tensor:
        """(O,) bool: each maskable object (never an ``__image__`` node) with probability
        ``mask_prob``. ``generator`` (on the CPU) makes the choice reproducible."""
        draws = torch.rand(batch.maskable.size(0), generator=generator).to(batch.maskable.device)
        eligible = batch.maskable & (batch.graphs.objs != IMAGE_OBJECT_INDEX)
        return eligible & (draws < self.mask_prob)

    def forward(self, batch: PretrainingBatch, generator: torch.Generator | None = None) -> MaskedContrastiveOutput:
        """Both losses on a batch.

        Under torch.distributed with several processes, each process passes its own B clips (the
        same B everywhere); the contrastive loss is computed over all W * B clips, with exact
        gradients for this process's clips.

        Args:
            batch: B clips.
            generator: a CPU generator for the choice of masked objects.
        """
        videos = batch.videos
        num_videos = videos.size(0)
        encoded_graphs = self._encode_graphs(batch)
        masks = masked_videos = None
        if self.masked_branch:
            chosen = self.choose_masked_objects(batch, generator)
            masks = object_region_masks(
                batch.object_boxes, chosen, batch.graphs.obj_to_img, num_videos, videos.size(-2), videos.size(-1)
            )
            masked_videos = videos * (1 - masks)
            # One pass through the tower for both (no batch statistics are involved).
            towered = self.video_tower(torch.cat([videos, masked_videos]))
            video_local, masked_local = towered.local_tokens.split(num_videos)
            video_global = towered.global_embeds[:num_videos]
        else:
            towered = self.video_tower(videos)
            video_local, video_global = towered.local_tokens, towered.global_embeds

        graph_embeds = F.normalize(encoded_graphs.global_embeds.float(), dim=-1)
        video_embeds = F.normalize(video_global.float(), dim=-1)
        # Every process computes the same loss over all W * B clips; with the gradients summed in
        # the gather's backward and averaged by DDP, each parameter gets that loss's exact gradient.
        all_graphs, all_videos = gather_with_grad(graph_embeds), gather_with_grad(video_embeds)
        contrastive = contrastive_loss(all_graphs, all_videos, self.graph_encoder.logit_scale.float())

        mask_loss = contrastive.new_zeros(())
        if self.masked_branch:
            target = video_local.detach().float()
            inputs = masked_local
            if self.normalize_targets:
                target = F.layer_norm(target, target.shape[-1:])
                inputs = F.layer_norm(inputs, inputs.shape[-1:])
            prediction = self.head(inputs, encoded_graphs.local_tokens, encoded_graphs.local_mask)
            mask_loss = F.mse_loss(prediction.float(), target)

        layout = contrastive.new_zeros(())
        if self.layout_loss_weight > 0:
            layout = layout_loss(self.graph_encoder.object_vectors(batch.graphs), batch.object_boxes, batch.maskable)
        loss = (
            self.contrastive_weight * contrastive + self.mask_loss_weight * mask_loss + self.layout_loss_weight * layout
        )
        return MaskedContrastiveOutput(
            loss=loss,
            contrastive_loss=contrastive,
            mask_loss=mask_loss,
            num_logit_columns=all_videos.size(0),
            graph_embeds=graph_embeds,
            video_embeds=video_embeds,
            masks=masks,
            layout_loss=layout,
        )
