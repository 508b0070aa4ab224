"""Public scene-graph corpora, read from their published files: Visual Genome (sg2im h5 layout),
COCO-Stuff, Action Genome, VidVRD and VidOR.

Each reader is a torch ``Dataset`` of :class:`~sg2vid_diffusers.pretraining.PretrainingExample` s
(frames (F, H, W, 3) uint8, a :class:`~sg2vid_diffusers.SceneGraph`, per-frame boxes (F, n, 4)),
what the training scripts consume, and converts to a Hugging Face dataset with
:meth:`~.common.CorpusDataset.to_hf_dataset` (``streaming=True`` for an ``IterableDataset``)::

    corpus = load_corpus("vidvrd", "data/vidvrd-dataset", split="train", num_frames=8, frame_stride=4)
    example = corpus[0]            # PretrainingExample
    corpus.vocab.save("vocab.json")
    print(corpus.report)           # unknown categories and everything else left out
    rows = corpus.to_hf_dataset(streaming=True, with_frames=True)

``docs/corpora.md`` says where to get each corpus and how to train on it.
"""

from __future__ import annotations

import os
from typing import Sequence

from ...vocabulary import Vocabulary
from .action_genome import ActionGenome, action_genome_vocabulary, load_pickle
from .coco_stuff import CocoStuff, coco_annotation_files, coco_stuff_vocabulary, geometric_predicate
from .common import (
    Clip,
    CorpusDataset,
    CorpusError,
    CorpusReport,
    VideoAnnotation,
    clip_starts,
    make_clip,
    merge_intervals,
)
from .vidvrd import VidOR, VidVRD, video_relation_vocabulary
from .visual_genome import VisualGenomeH5, visual_genome_vocabulary

__all__ = [
    "CORPUS_FORMATS",
    "ActionGenome",
    "Clip",
    "CocoStuff",
    "CorpusDataset",
    "CorpusError",
    "CorpusReport",
    "VideoAnnotation",
    "VidOR",
    "VidVRD",
    "VisualGenomeH5",
    "action_genome_vocabulary",
    "build_vocabulary",
    "clip_starts",
    "coco_annotation_files",
    "coco_stuff_vocabulary",
    "geometric_predicate",
    "load_corpus",
    "load_pickle",
    "make_clip",
    "merge_intervals",
    "video_relation_vocabulary",
    "visual_genome_vocabulary",
]

CORPUS_FORMATS: dict[str, type[CorpusDataset]] = {
    "visual_genome_h5": VisualGenomeH5,
    "coco_stuff": CocoStuff,
    "action_genome": ActionGenome,
    "vidvrd": VidVRD,
    "vidor": VidOR,
}


def _corpus_class(dataset_format: str) -> type[CorpusDataset]:
    if dataset_format not in CORPUS_FORMATS:
        raise ValueError(f"unknown dataset format {dataset_format!r}; expected one of: {', '.join(CORPUS_FORMATS)}")
    return CORPUS_FORMATS[dataset_format]


def load_corpus(
    dataset_format: str,
    data_dir: str | os.PathLike,
    split: str = "train",
    vocab: Vocabulary | str | os.PathLike | None = None,
    num_frames: int | None = None,
    frame_stride: int = 1,
    resolution: int | Sequence[int] | None = 256,
    on_unknown: str = "report",
    **options,
) -> CorpusDataset:
    """Open one split of a corpus as a torch ``Dataset`` of ``PretrainingExample`` s.

    Args:
        dataset_format: one of :data:`CORPUS_FORMATS`: ``visual_genome_h5``, ``coco_stuff``,
            ``action_genome``, ``vidvrd``, ``vidor``.
        data_dir: the corpus folder, as published (``docs/corpora.md``).
        split: the split (``train``; ``val`` / ``test`` / ``validation`` as the corpus has them).
        vocab: the model's vocabulary (:class:`Vocabulary` or a ``vocab.json`` path); ``None`` for the
            corpus's own. Names it lacks are dropped and counted in ``.report``.
        num_frames: frames per clip; ``None``: 1 for image corpora, 8 for video corpora.
        frame_stride: clip frames are this many frames (Action Genome: keyframes) apart.
        resolution: frames resized to (H, W) (int: square), no crop; ``None`` keeps the sizes.
        on_unknown: ``"report"`` (drop and count unknown names) or ``"error"``.
        **options: the reader's own options (e.g. ``max_objects`` for Visual Genome, ``seed`` for
            COCO-Stuff, ``video_dir``, ``image_dir``); see each class.

    Returns:
        The reader (a :class:`~.common.CorpusDataset`): ``len``, indexing, ``.vocab``, ``.report``,
        ``.to_hf_dataset()``. The clip index is built on first ``len`` / indexing, which checks every
        annotation; a bad record raises :class:`CorpusError` naming the file, record and field.
    """
    return _corpus_class(dataset_format)(
        data_dir,
        split,
        vocab=vocab,
        num_frames=num_frames,
        frame_stride=frame_stride,
        resolution=resolution,
        on_unknown=on_unknown,
        **options,
    )


def build_vocabulary(
    dataset_format: str,
    data_dir: str | os.PathLike,
    output: str | os.PathLike | None = None,
    split: str = "train",
    **options,
) -> Vocabulary:
    """A corpus's own vocabulary (sg2im ``vocab.json`` layout), written to ``output`` when given.

    Visual Genome: its ``vocab.json`` (SGDiff's indices); COCO-Stuff: sg2im's, from the categories
    of ``split``'s files (object index = COCO category id); Action Genome: its class lists, in
    order; VidVRD / VidOR: every name in ``split``'s annotation files, alphabetically
    (``vocabulary_splits=("train", "test")`` to take more splits).
    """
    cls = _corpus_class(dataset_format)
    if dataset_format == "visual_genome_h5":
        vocab = visual_genome_vocabulary(data_dir)
    elif dataset_format == "action_genome":
        vocab = action_genome_vocabulary(data_dir)
    elif dataset_format == "coco_stuff":
        instances, stuff = coco_annotation_files(data_dir, split)
        vocab = coco_stuff_vocabulary(options.get("instances_json", instances), options.get("stuff_json", stuff))
    else:
        splits = tuple(options.pop("vocabulary_splits", (split,)))
        vocab = cls(data_dir, splits[0], vocabulary_splits=splits, **options).vocab
    if output is not None:
        vocab.save(output)
    return vocab
