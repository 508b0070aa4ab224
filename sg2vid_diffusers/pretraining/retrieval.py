"""Graph-to-video and video-to-graph retrieval recall: how well global vectors find their pair."""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["retrieval_recall"]


def retrieval_recall(
    graph_embeds: torch.Tensor, video_embeds: torch.Tensor, ks: Sequence[int] = (1, 5)
) -> dict[str, float]:
    """Recall@k both ways for B pairs (graph i belongs to video i), by cosine similarity.

    The rank of the true partner counts every other candidate scoring at least as high (ties go
    against the query), so identical embeddings score 0, never 1. Chance level is k / B.

    Args:
        graph_embeds: (B, D).
        video_embeds: (B, D).
        ks: the k of recall@k.

    Returns:
        ``{"graph_to_video_recall@1": ..., "video_to_graph_recall@1": ..., ...}``, fractions in [0, 1].
    """
    if graph_embeds.shape != video_embeds.shape or graph_embeds.ndim != 2:
        raise ValueError(
            f"expected two (B, D) tensors of one shape, got {tuple(graph_embeds.shape)} and {tuple(video_embeds.shape)}"
        )
    g = torch.nn.functional.normalize(graph_embeds.double(), dim=-1)
    v = torch.nn.functional.normalize(video_embeds.double(), dim=-1)
    similarity = g @ v.T  # (B, B): row = graph query, column = video candidate
    metrics = {}
    for direction, sim in (("graph_to_video", similarity), ("video_to_graph", similarity.T)):
        true = sim.diagonal()[:, None]  # (B, 1)
        others = ~torch.eye(sim.size(0), dtype=torch.bool, device=sim.device)
        rank = ((sim >= true) & others).sum(dim=1)  # (B,) candidates at least as good as the partner
        for k in ks:
            metrics[f"{direction}_recall@{k}"] = (rank < k).double().mean().item()
    return metrics
