"""A picture of a generated video and the graph it was asked to obey: the scene graph drawn as
nodes and labelled arrows (with time spans) beside a strip of frames.

    from sg2vid_diffusers.preview import render_preview
    render_preview(graph, frames).save("preview.png")
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .batching import active_triples
from .scene_graph import SceneGraph, parse_scene_graph
from .utils import atomic_path
from .video_io import to_uint8_frames

__all__ = ["render_preview", "save_preview"]

_BACKGROUND = (250, 250, 250)
_INK = (40, 40, 40)
_MUTED = (130, 130, 130)


def _node_color(name: str) -> tuple[int, int, int]:
    from .data.sg_shapes import COLORS

    return COLORS.get(name.split(" ")[0], (120, 120, 120))


def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default()


def _span_text(time: tuple[float, float] | None) -> str:
    return "" if time is None else f" [{time[0]:g}-{time[1]:g}]"


def _draw_graph(graph: SceneGraph, size: int) -> Image.Image:
    """Nodes on a circle (names outside it), arrows subject -> object labelled with the predicate
    and span."""
    width_px = int(size * 1.5)
    image = Image.new("RGB", (width_px, size), _BACKGROUND)
    draw = ImageDraw.Draw(image)
    font = _font()
    n = len(graph.objects)
    cx, cy = width_px / 2, size / 2
    longest = max(draw.textlength(obj.name, font=font) for obj in graph.objects)
    rx, ry = (max(width_px / 2 - longest - 20, width_px * 0.2), size * 0.33) if n > 1 else (0.0, 0.0)
    angles = [2 * math.pi * i / n - math.pi / 2 for i in range(n)]
    points = [(cx + rx * math.cos(a), cy + ry * math.sin(a)) for a in angles]
    node_r = 9
    # Several triples between the same pair are stacked as separate labels.
    seen: dict[tuple[int, int], int] = {}
    for rel in graph.relationships:
        (x0, y0), (x1, y1) = points[rel.subject], points[rel.object]
        length = math.hypot(x1 - x0, y1 - y0) or 1.0
        ux, uy = (x1 - x0) / length, (y1 - y0) / length
        start, end = (x0 + ux * node_r, y0 + uy * node_r), (x1 - ux * node_r, y1 - uy * node_r)
        draw.line([start, end], fill=_MUTED, width=2)
        for side in (-1, 1):  # arrow head
            hx = end[0] - ux * 8 + side * uy * 4
            hy = end[1] - uy * 8 - side * ux * 4
            draw.line([end, (hx, hy)], fill=_MUTED, width=2)
        pair = (min(rel.subject, rel.object), max(rel.subject, rel.object))
        k = seen.get(pair, 0)
        seen[pair] = k + 1
        mx, my = (start[0] + end[0]) / 2, (start[1] + end[1]) / 2 + 12 * k - 4
        label = rel.predicate + _span_text(rel.time)
        width = draw.textlength(label, font=font)
        draw.rectangle([mx - width / 2 - 2, my - 1, mx + width / 2 + 2, my + 11], fill=_BACKGROUND)
        draw.text((mx - width / 2, my), label, fill=_INK, font=font)
    for (x, y), angle, obj in zip(points, angles, graph.objects):
        draw.ellipse([x - node_r, y - node_r, x + node_r, y + node_r], fill=_node_color(obj.name), outline=_INK)
        width = draw.textlength(obj.name, font=font)
        # The name sits outside the circle, away from the arrows.
        tx = x + math.cos(angle) * (node_r + 4 + width / 2) - width / 2
        ty = y + math.sin(angle) * (node_r + 8) - 5
        draw.text((min(max(tx, 2), width_px - width - 2), min(max(ty, 2), size - 12)), obj.name, fill=_INK, font=font)
    return image


def render_preview(graph: Any, frames: Any, num_frames_shown: int = 8, scale: int = 2) -> Image.Image:
    """The graph beside a strip of frames; under each frame, the triples active in it.

    Args:
        graph: the scene graph (any form ``parse_scene_graph`` accepts).
        frames: (F, H, W, 3) video (uint8, or floats in [0, 1]).
        num_frames_shown: frames in the strip, evenly spread over the clip.
        scale: pixel upscaling of each frame (nearest neighbour).
    """
    graph = parse_scene_graph(graph)
    video = to_uint8_frames(frames)
    num_frames, height, width = video.shape[:3]
    shown = np.unique(np.linspace(0, num_frames - 1, min(num_frames_shown, num_frames)).round().astype(int))
    active = active_triples([rel.span for rel in graph.relationships], num_frames).numpy() if graph.relationships else None

    font = _font()
    tile_w, tile_h = width * scale, height * scale
    caption_lines = 1 + (len(graph.relationships) if graph.is_dynamic else 0)
    strip_h = tile_h + 14 * caption_lines + 8
    graph_image = _draw_graph(graph, max(240, strip_h))
    graph_size = graph_image.width
    canvas = Image.new("RGB", (graph_size + len(shown) * (tile_w + 6) + 6, max(graph_image.height, strip_h)), _BACKGROUND)
    canvas.paste(graph_image, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for k, f in enumerate(shown):
        x = graph_size + 6 + k * (tile_w + 6)
        tile = Image.fromarray(video[f]).resize((tile_w, tile_h), Image.NEAREST)
        canvas.paste(tile, (x, 4))
        draw.text((x, tile_h + 6), f"frame {f}", fill=_INK, font=font)
        if graph.is_dynamic and active is not None:
            for t, rel in enumerate(graph.relationships):
                mark = "+" if active[f, t] else "-"
                draw.text((x, tile_h + 20 + 14 * t), f"{mark} {rel.predicate[:18]}", fill=_INK if active[f, t] else _MUTED, font=font)
    return canvas


def save_preview(path: str | os.PathLike, graph: Any, frames: Any, **kwargs) -> None:
    """:func:`render_preview` written to ``path`` (PNG or any format PIL infers), atomically."""
    image = render_preview(graph, frames, **kwargs)
    with atomic_path(path) as tmp:
        image.save(tmp)
