"""Masked contrastive pretraining of the scene-graph encoder (SGDiff's ``sgCLIP``, for video).

``training/train_sg_encoder.py`` runs it; everything it needs lives here:

- :mod:`.towers`: the visual towers (:class:`HFVisionTower`, :class:`SmallVideoEncoder`);
- :mod:`.data`: clips + graphs + per-frame boxes (:class:`SceneGraphVideoDataset`,
  :func:`collate_pretraining_examples`);
- :mod:`.objective`: the losses (:class:`MaskedContrastiveObjective`);
- :mod:`.retrieval`: recall@k both ways (:func:`retrieval_recall`).
"""

from .data import (
    PretrainingBatch,
    PretrainingExample,
    SceneGraphVideoDataset,
    collate_pretraining_examples,
    object_box_rows,
)
from .objective import (
    MAX_LOGIT_SCALE,
    MaskedContrastiveObjective,
    MaskedContrastiveOutput,
    MaskedReconstructionHead,
    contrastive_loss,
    gather_with_grad,
    object_region_masks,
)
from .retrieval import retrieval_recall
from .towers import HFVisionTower, SmallVideoEncoder, VideoTowerOutput

__all__ = [
    "HFVisionTower",
    "MAX_LOGIT_SCALE",
    "MaskedContrastiveObjective",
    "MaskedContrastiveOutput",
    "MaskedReconstructionHead",
    "PretrainingBatch",
    "PretrainingExample",
    "SceneGraphVideoDataset",
    "SmallVideoEncoder",
    "VideoTowerOutput",
    "collate_pretraining_examples",
    "contrastive_loss",
    "gather_with_grad",
    "object_region_masks",
    "object_box_rows",
    "retrieval_recall",
]
