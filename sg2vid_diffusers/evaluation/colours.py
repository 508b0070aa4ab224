"""Where objects go missing in generated SG-Shapes videos: colour confusions.

The conformance metric (:mod:`.conformance`) finds objects by colour, so an object drawn in the
wrong palette colour counts twice: its own colour is missed, and the colour drawn is spurious.
:func:`colour_confusions` tells those cases apart from objects not drawn at all, and
:func:`palette_latent_distances` measures how far apart a frame autoencoder keeps the palette
colours in its latent space (colours whose latents lie close are the ones a denoiser's small
errors swap). :func:`single_object_colours` asks a pipeline for each SG-Shapes category alone
and counts the colour and shape it draws: the plainest test of whether a model has learnt colours
at all, free of the placement and crowding that full graphs add.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from ..data.sg_shapes import CATEGORIES, COLORS, FRAME_SIZE, render_frames, split_category
from ..scene_graph import SceneGraph
from .conformance import (
    _PALETTE,
    MIN_PIXELS,
    Detections,
    _color_index,
    _colour_mask,
    _drawn,
    _drawn_shape,
    detect_objects,
)

__all__ = [
    "ColourReport",
    "SingleObjectReport",
    "colour_confusions",
    "count_shapes",
    "dominant_colour",
    "palette_latent_distances",
    "single_object_colours",
]


@dataclass
class ColourReport:
    """Counts over videos (see :func:`colour_confusions`)."""

    objects: Counter = field(default_factory=Counter)  # graph objects, by colour
    missed: Counter = field(default_factory=Counter)  # of those, not detected in half the frames
    missed_beside_spurious: int = 0  # missed objects in a video where some colour not in its graph was drawn
    spurious: int = 0  # palette colours drawn in half the frames but absent from the graph
    swaps: Counter = field(default_factory=Counter)  # (wanted, drawn) in videos with one miss and one spurious colour
    swaps_same_shape: int = 0  # of those swaps, drawn with the missed object's shape
    # missed objects whose video draws another colour of the same graph as two separate shapes (in
    # half the frames): the object drawn in its neighbour's colour; (wanted, borrowed) pairs
    borrowed: Counter = field(default_factory=Counter)
    # with latent distances given: of the borrowed colours, those nearest the missed one in the latent
    # space among the other colours of its graph
    borrowed_nearest: int | None = None

    @property
    def num_missed(self) -> int:
        return sum(self.missed.values())

    def format_table(self) -> str:
        lines = ["colour   missed / objects"]
        lines += [f"{c:<8} {self.missed[c]:>4} / {self.objects[c]:<4}" for c in _PALETTE if self.objects[c]]
        swaps = sum(self.swaps.values())
        lines += [
            f"missed objects: {self.num_missed}, of them {self.missed_beside_spurious} in a video that drew a colour "
            f"not in its graph; spurious colours: {self.spurious}",
            f"one miss and one spurious colour in a video: {swaps} videos, the drawn colour with the missed "
            f"object's shape in {self.swaps_same_shape}",
            f"missed objects drawn in the colour of another object of their graph (that colour drawn twice): "
            f"{sum(self.borrowed.values())}"
            + (" (" + ", ".join(f"{a} as {b}: {n}" for (a, b), n in self.borrowed.most_common(8)) + ")" if self.borrowed else "")
            + ("" if self.borrowed_nearest is None else
               f"; the borrowed colour is the latent nearest of the graph's other colours in {self.borrowed_nearest}"),
            "most frequent (wanted -> drawn): "
            + (", ".join(f"{a} -> {b} ({n})" for (a, b), n in self.swaps.most_common(8)) or "none"),
        ]
        return "\n".join(lines)


def colour_confusions(
    videos: Iterable[tuple[np.ndarray, SceneGraph]], latent_distances: np.ndarray | None = None
) -> ColourReport:
    """Count, over ``(frames, graph)`` pairs of SG-Shapes videos, the objects missed by colour, how
    many of them sit in a video that drew a colour its graph does not have, and which colour was
    drawn instead where a video has exactly one of each (same thresholds as the conformance metric:
    a colour counts when detected in at least half of the frames); and the missed objects drawn in
    the colour of another object of their graph (``borrowed``). With ``latent_distances`` (6, 6),
    in palette order (:func:`palette_latent_distances`), also how many borrowed colours are the
    nearest to the missed one among the graph's other colours."""
    if latent_distances is not None and np.shape(latent_distances) != (len(_PALETTE), len(_PALETTE)):
        raise ValueError(f"latent_distances must be ({len(_PALETTE)}, {len(_PALETTE)}), got {np.shape(latent_distances)}")
    report = ColourReport(borrowed_nearest=None if latent_distances is None else 0)
    for frames, graph in videos:
        detections = detect_objects(frames)
        drawn = _drawn(detections)
        colours = [_color_index(name) for name in graph.object_names]
        missed = [k for k, c in enumerate(colours) if not drawn[c]]
        spurious = [c for c in range(len(_PALETTE)) if c not in colours and drawn[c]]
        for c in colours:
            report.objects[_PALETTE[c]] += 1
        for k in missed:
            report.missed[_PALETTE[colours[k]]] += 1
        report.missed_beside_spurious += len(missed) if spurious else 0
        report.spurious += len(spurious)
        # the first of the graph's colours drawn twice is the one a missed object borrowed
        doubled = [c for c in colours if drawn[c] and _drawn_twice(frames, c)] if missed else []
        for k in missed:
            if doubled:
                report.borrowed[(_PALETTE[colours[k]], _PALETTE[doubled[0]])] += 1
                if latent_distances is not None:
                    others = [c for c in colours if c != colours[k]]
                    nearest = min(others, key=lambda c: latent_distances[colours[k]][c])
                    report.borrowed_nearest += nearest == doubled[0]
        if len(missed) == 1 and len(spurious) == 1:
            wanted, instead = colours[missed[0]], spurious[0]
            report.swaps[(_PALETTE[wanted], _PALETTE[instead])] += 1
            report.swaps_same_shape += _drawn_shape(detections, instead) == split_category(graph.object_names[missed[0]])[1]
    return report


def count_shapes(mask: np.ndarray, min_pixels: int = MIN_PIXELS // 2) -> int:
    """The connected regions (4-neighbours) of a (H, W) bool mask with at least ``min_pixels`` pixels."""
    mask = np.asarray(mask, dtype=bool)
    seen = np.zeros_like(mask)
    height, width = mask.shape
    count = 0
    for y, x in zip(*np.nonzero(mask)):
        if seen[y, x]:
            continue
        seen[y, x] = True
        stack, size = [(y, x)], 0
        while stack:
            cy, cx = stack.pop()
            size += 1
            for ny, nx in ((cy - 1, cx), (cy + 1, cx), (cy, cx - 1), (cy, cx + 1)):
                if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        count += size >= min_pixels
    return count


def _drawn_twice(frames: np.ndarray, colour: int) -> bool:
    """Whether palette colour ``colour`` forms two or more separate shapes in at least half the frames."""
    masks = _colour_mask(np.asarray(frames), _PALETTE[colour])
    return sum(count_shapes(mask) >= 2 for mask in masks) >= 0.5 * len(masks)


def palette_latent_distances(vae, shape: str = "square", size: int = FRAME_SIZE) -> dict:
    """Encode one frame per palette colour (the same ``shape`` at the centre, black background, drawn
    by the SG-Shapes renderer) with ``vae`` (a diffusers ``AutoencoderKL``; the posterior mean times
    its ``scaling_factor``, as training sees latents) and return the Euclidean distances between
    the flattened latents: ``{"colours": [...], "distances": (6, 6) array, "to_empty": (6,) distances
    to the latent of an empty frame}``."""
    import torch

    from ..training_utils import encode_videos

    names = [f"{colour} {shape}" for colour in COLORS]
    centre = np.full((1, 1, 2), size / 2)
    frames = np.concatenate([render_frames([name], centre, size) for name in names] + [np.zeros((1, size, size, 3), np.uint8)])
    videos = torch.from_numpy(frames).permute(0, 3, 1, 2)[:, None].to(vae.device) / 255  # (7, 1, 3, H, W): one-frame videos
    flat = encode_videos(vae, videos, sample=False).flatten(1).float().cpu()
    distances = torch.cdist(flat, flat).numpy()
    return {"colours": list(COLORS), "distances": distances[:-1, :-1], "to_empty": distances[:-1, -1]}


def dominant_colour(frames: np.ndarray) -> str | None:
    """The palette colour a video draws most: of the colours detected in at least half of the frames
    (as recall counts them), the one with the most pixels over the video; None when none is.

    Args:
        frames: (F, H, W, 3) uint8 (or float in 0..255) RGB frames.
    """
    frames = np.asarray(frames)
    return _dominant_colour(frames, detect_objects(frames))


def _dominant_colour(frames: np.ndarray, detections: Detections) -> str | None:
    drawn = _drawn(detections)
    if not drawn.any():
        return None
    pixels = [_colour_mask(frames, name).sum() if drawn[c] else -1 for c, name in enumerate(_PALETTE)]
    return _PALETTE[int(np.argmax(pixels))]


@dataclass
class SingleObjectReport:
    """What a model draws for graphs of one object (see :func:`single_object_colours`)."""

    colours: Counter = field(default_factory=Counter)  # (asked colour, drawn colour or "none")
    shapes: Counter = field(default_factory=Counter)  # (asked shape, drawn shape or "none"), of the drawn colour

    @property
    def num_videos(self) -> int:
        return sum(self.colours.values())

    @property
    def colour_accuracy(self) -> float:
        return sum(n for (asked, drawn), n in self.colours.items() if asked == drawn) / max(self.num_videos, 1)

    @property
    def shape_accuracy(self) -> float:
        return sum(n for (asked, drawn), n in self.shapes.items() if asked == drawn) / max(self.num_videos, 1)

    def to_dict(self) -> dict:
        return {"num_videos": self.num_videos, "colour_accuracy": self.colour_accuracy,
                "shape_accuracy": self.shape_accuracy,
                "colours": [[a, b, n] for (a, b), n in sorted(self.colours.items())],
                "shapes": [[a, b, n] for (a, b), n in sorted(self.shapes.items())]}  # fmt: skip

    def format_table(self) -> str:
        right = round(self.colour_accuracy * self.num_videos)
        lines = [f"one object per graph, {self.num_videos} videos: the asked colour drawn most in {right} "
                 f"({self.colour_accuracy:.3f}; chance {1 / len(_PALETTE):.3f}), the asked shape in "
                 f"{round(self.shape_accuracy * self.num_videos)} ({self.shape_accuracy:.3f})",
                 "asked     drawn most (videos)"]  # fmt: skip
        for colour in _PALETTE:
            row = {drawn: n for (asked, drawn), n in sorted(self.colours.items()) if asked == colour}
            if row:
                lines.append(f"{colour:<9} " + ", ".join(f"{drawn} {n}" for drawn, n in row.items()))
        return "\n".join(lines)


def single_object_colours(
    pipe,
    seeds: Iterable[int] = (0, 1),
    num_frames: int = 16,
    guidance_scale: float | None = None,
    num_inference_steps: int = 25,
    categories: Iterable[str] | None = None,
    progress: bool = True,
) -> SingleObjectReport:
    """Generate one video per SG-Shapes category (alone in its graph, no relationships) and seed, and
    count the colour each draws most (:func:`dominant_colour`) and that colour's shape (its median
    fill ratio, as the conformance metric names shapes) against the asked ones.

    A model that has learnt colours scores near 1 (the built-in model: 36 of 36 with the defaults,
    guidance 6; ``docs/builtin_model.md``); one that draws shapes in colours that ignore the graph
    scores near chance (1/6) on colours while its shapes stay right.

    Args:
        pipe: a :class:`~sg2vid_diffusers.SceneGraphToVideoPipeline` whose vocabulary has the categories.
        seeds: one video per category and seed (``torch.Generator().manual_seed(seed)``).
        num_frames, guidance_scale, num_inference_steps: as for the pipeline (guidance ``None``: the
            model's default).
        categories: the categories to ask for (default: every SG-Shapes category).
        progress: a progress bar over the videos.
    """
    import torch
    from tqdm.auto import tqdm

    from ..video_io import to_uint8_frames

    categories = list(CATEGORIES if categories is None else categories)
    seeds = list(seeds)
    if not categories or not seeds:
        raise ValueError(f"categories and seeds must not be empty, got {len(categories)} and {len(seeds)}")
    for i, name in enumerate(categories):
        split_category(name)  # a ValueError naming a non-SG-Shapes name
        if pipe.vocab is not None and not pipe.vocab.has_object(name):
            raise ValueError(f"categories[{i}]: {name!r} is not in the pipeline's vocabulary")
    report = SingleObjectReport()
    jobs = [(name, seed) for name in categories for seed in seeds]
    for name, seed in tqdm(jobs, desc="single objects", disable=not progress):
        out = pipe(scene_graph={"objects": [name], "relationships": []}, num_frames=num_frames,
                   guidance_scale=guidance_scale, num_inference_steps=num_inference_steps,
                   generator=torch.Generator().manual_seed(seed), output_type="np")  # fmt: skip
        frames = to_uint8_frames(out.frames[0])
        colour, shape = split_category(name)
        detections = detect_objects(frames)
        drawn = _dominant_colour(frames, detections)
        report.colours[(colour, drawn or "none")] += 1
        drawn_shape = "none" if drawn is None else _drawn_shape(detections, _PALETTE.index(drawn))
        report.shapes[(shape, drawn_shape)] += 1
    return report
