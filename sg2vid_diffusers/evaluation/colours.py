"""Where objects go missing in generated SG-Shapes videos: colour confusions.

The conformance metric (:mod:`.conformance`) finds objects by colour, so an object drawn in the
wrong palette colour counts twice: its own colour is missed, and the colour drawn is spurious.
:func:`colour_confusions` tells those cases apart from objects not drawn at all, and
:func:`palette_latent_distances` measures how far apart a frame autoencoder keeps the palette
colours in its latent space (colours whose latents lie close are the ones a denoiser's small
errors swap).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from ..data.sg_shapes import COLORS, FRAME_SIZE, render_frames, split_category
from ..scene_graph import SceneGraph
from .conformance import _PALETTE, _color_index, _drawn, _drawn_shape, detect_objects

__all__ = ["ColourReport", "colour_confusions", "palette_latent_distances"]


@dataclass
class ColourReport:
    """Counts over videos (see :func:`colour_confusions`)."""

    objects: Counter = field(default_factory=Counter)  # graph objects, by colour
    missed: Counter = field(default_factory=Counter)  # of those, not detected in half the frames
    missed_beside_spurious: int = 0  # missed objects in a video where some colour not in its graph was drawn
    spurious: int = 0  # palette colours drawn in half the frames but absent from the graph
    swaps: Counter = field(default_factory=Counter)  # (wanted, drawn) in videos with one miss and one spurious colour
    swaps_same_shape: int = 0  # of those swaps, drawn with the missed object's shape

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
            "most frequent (wanted -> drawn): "
            + (", ".join(f"{a} -> {b} ({n})" for (a, b), n in self.swaps.most_common(8)) or "none"),
        ]
        return "\n".join(lines)


def colour_confusions(videos: Iterable[tuple[np.ndarray, SceneGraph]]) -> ColourReport:
    """Count, over ``(frames, graph)`` pairs of SG-Shapes videos, the objects missed by colour, how
    many of them sit in a video that drew a colour its graph does not have, and which colour was
    drawn instead where a video has exactly one of each (same thresholds as the conformance metric:
    a colour counts when detected in at least half of the frames)."""
    report = ColourReport()
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
        if len(missed) == 1 and len(spurious) == 1:
            wanted, instead = colours[missed[0]], spurious[0]
            report.swaps[(_PALETTE[wanted], _PALETTE[instead])] += 1
            report.swaps_same_shape += _drawn_shape(detections, instead) == split_category(graph.object_names[missed[0]])[1]
    return report


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
