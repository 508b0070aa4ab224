"""How much a trained denoiser listens to the scene graph, in seconds instead of a full evaluation.

For each graph, the UNet's output on the same noisy latents is compared with its output for three
changed graphs: the null graph (graph dropped), the graph with its first object's category changed,
and the graph with every spatial or motion predicate replaced by its opposite ("left of" <->
"right of", "above" <-> "below", "moving toward" <-> "moving away from"). The category change is also
split in two: only the first object's colour changed (``"red circle"`` -> ``"green circle"``) and
only its shape (``"red circle"`` -> ``"red square"``), so that a model that has learnt shapes but
not colours shows it (generally: another category with the same last word, and one with the same
leading words; a vocabulary without such categories gives None). The figure is the relative
change ``||f(changed) - f(graph)|| / ||f(graph)||``, averaged over graphs, per timestep. A model that
draws what the graph says must react to all three; one that reacts to the null graph and to
categories but not to predicates has learnt what to draw, not where (see the README's built-in
model section).

The same changes are measured on the graph encoder's local tokens (``"encoder"``): a UNet cannot
react to a predicate its tokens barely carry. For an encoder trained with the layout loss,
:func:`encoder_layout_accuracy` says whether the layout it infers obeys the graph's static spatial
relations, i.e. whether the "where" is there for the denoiser to draw, and, for one trained with
its motion term, :func:`encoder_motion_accuracy` whether the motion it infers makes the dynamic
triples hold (what the moving layout bias, ``graph_layout_motion``, hands the denoiser).

This measures sensitivity, not correctness (``sg2vid evaluate`` does that): a large figure is
necessary for conformance, not sufficient.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence

import numpy as np
import torch

from ..batching import active_triples, collate_scene_graphs
from ..conditioning import encode_graph_context
from ..data.sg_shapes import DYNAMIC_PREDICATES, OPPOSITE_PREDICATES, STATIC_PREDICATES, _static_holds
from ..scene_graph import SceneGraph

__all__ = ["encoder_layout_accuracy", "encoder_motion_accuracy", "encoder_sensitivity", "graph_sensitivity"]


def _other_category(name: str, categories: Sequence[str], accept=None) -> str | None:
    """The next category of the vocabulary after ``name`` (cyclically) that ``accept`` (default: any)
    takes; None when none does."""
    accept = accept or (lambda other: True)
    index = categories.index(name) if name in categories else -1
    ordered = (categories[(index + 1 + i) % len(categories)] for i in range(len(categories)))
    return next((other for other in ordered if accept(other)), None)


def _with_first_object(graph: SceneGraph, name: str) -> SceneGraph:
    return dataclasses.replace(graph, objects=(dataclasses.replace(graph.objects[0], name=name), *graph.objects[1:]))


def _changed_object(graph: SceneGraph, categories: Sequence[str]) -> SceneGraph:
    """The first object's category changed: a different colour or shape."""
    return _with_first_object(graph, _other_category(graph.objects[0].name, categories))


def _changed_part(graph: SceneGraph, categories: Sequence[str], part: str) -> SceneGraph | None:
    """The graph with its first object's colour (``part="colour"``: another category with the same
    last word, e.g. ``"red circle"`` -> ``"green circle"``) or shape (``part="shape"``: the same
    leading words, another last word) changed: the next such category of the vocabulary after it,
    cyclically. None when the vocabulary has none (or the name is one word)."""
    name = graph.objects[0].name
    words = name.rsplit(" ", 1)
    if len(words) != 2:
        return None
    key = 1 if part == "colour" else 0  # the word the changed category keeps

    def same_kept_word(other: str) -> bool:
        other_words = other.rsplit(" ", 1)
        return len(other_words) == 2 and other_words[key] == words[key] and other_words[1 - key] != words[1 - key]

    other = _other_category(name, categories, same_kept_word)
    return None if other is None else _with_first_object(graph, other)


def _optional_variants(graph: SceneGraph, categories: Sequence[str], known: set[str]) -> dict[str, SceneGraph]:
    """The changed graphs a graph may lack, by figure name: every predicate flipped, the first object's
    colour only, its shape only; only those the graph and vocabulary allow."""
    variants = {
        "predicates": _flipped_predicates(graph, known),
        "object_colour": _changed_part(graph, categories, "colour"),
        "object_shape": _changed_part(graph, categories, "shape"),
    }
    return {key: variant for key, variant in variants.items() if variant is not None}


_OPTIONAL = ("predicates", "object_colour", "object_shape")  # the keys _optional_variants may give


def _mean_or_none(total: float, count: int) -> float | None:
    return total / count if count else None


def _flipped_predicates(graph: SceneGraph, known: set[str]) -> SceneGraph | None:
    """Every predicate with an opposite in the vocabulary replaced by it; None when there is none."""
    flipped, changed = [], False
    for rel in graph.relationships:
        opposite = OPPOSITE_PREDICATES.get(rel.predicate)
        if opposite is not None and opposite in known:
            rel, changed = dataclasses.replace(rel, predicate=opposite), True
        flipped.append(rel)
    return dataclasses.replace(graph, relationships=tuple(flipped)) if changed else None


@torch.no_grad()
def encoder_sensitivity(encoder, graphs: Iterable[SceneGraph]) -> dict:
    """The relative change of a graph encoder's real local tokens when the first object's category
    changes and when every predicate with an opposite is flipped, averaged over graphs (the
    predicate figure over those with something to flip; None when none has).

    Also the first object's colour alone and its shape alone changed (``"object_colour"``,
    ``"object_shape"``: over the graphs whose vocabulary has such a category; None when none has).

    Returns:
        ``{"num_graphs": G, "num_with_predicates": Gp, "object_category": y, "predicates": z or None,
        "object_colour": c or None, "object_shape": s or None}``.
    """
    if encoder.vocab is None:
        raise ValueError("the encoder has no vocabulary: graphs cannot be encoded")
    graphs = list(graphs)
    if not graphs:
        raise ValueError("graphs: no scene graphs to probe")
    categories, known = encoder.vocab.object_names, set(encoder.vocab.predicate_names)
    sums = {"object_category": 0.0, **{key: 0.0 for key in _OPTIONAL}}
    counts = {key: 0 for key in _OPTIONAL}
    for graph in graphs:
        optional = _optional_variants(graph, categories, known)
        variants = [graph, _changed_object(graph, categories), *optional.values()]
        tokens = encoder(collate_scene_graphs(variants, encoder.vocab).to(encoder.device))
        real = tokens.local_mask[0]  # the variants share the graph's structure, hence its mask
        local = tokens.local_tokens[:, real].float()  # (variants, N', 3D)
        scale = local[0].norm().clamp_min(1e-12)
        sums["object_category"] += ((local[1] - local[0]).norm() / scale).item()
        for i, key in enumerate(optional, start=2):
            counts[key] += 1
            sums[key] += ((local[i] - local[0]).norm() / scale).item()
    return {
        "num_graphs": len(graphs),
        "num_with_predicates": counts["predicates"],
        "object_category": sums["object_category"] / len(graphs),
        **{key: _mean_or_none(sums[key], counts[key]) for key in _OPTIONAL},
    }


def _centres_px(boxes: torch.Tensor, frame_size: int) -> torch.Tensor:
    """(..., 4) inferred boxes ``[x0, y0, x1, y1]`` in [-1, 1] -> (..., 2) their centres in px."""
    return ((boxes[..., :2] + boxes[..., 2:]) / 2 + 1) / 2 * frame_size


@torch.no_grad()
def encoder_layout_accuracy(encoder, graphs: Iterable[SceneGraph], margin_px: float = 2.0, frame_size: int = 64) -> dict:
    """The share of whole-clip static spatial triples (SG-Shapes' ``left of``, ``right of``, ``above``,
    ``below``) that the encoder's inferred layout satisfies: object centres read through the layout
    loss's fixed readout (:func:`~sg2vid_diffusers.models.sg_encoder.layout_readout`), apart by more
    than ``margin_px`` (the conformance metric's margin) in a ``frame_size`` frame. Meaningful only
    for an encoder trained with the layout loss (others score about chance, 0.5 or less).

    Returns:
        ``{"num_triples": T, "accuracy": a or None}``.
    """
    from ..models.sg_encoder import layout_readout

    if encoder.vocab is None:
        raise ValueError("the encoder has no vocabulary: graphs cannot be encoded")
    readout = layout_readout(encoder.config.output_dim).to(encoder.device)
    total = satisfied = 0
    for graph in graphs:
        boxes = encoder.object_vectors(collate_scene_graphs([graph], encoder.vocab).to(encoder.device)).float() @ readout
        centres = _centres_px(boxes, frame_size).cpu().numpy()  # (O, 2): objects, then __image__
        for rel in graph.relationships:
            if rel.predicate not in STATIC_PREDICATES or rel.time is not None:
                continue
            total += 1
            holds = _static_holds(rel.predicate, centres[None, rel.subject], centres[None, rel.object], margin_px)
            satisfied += bool(holds[0])
    return {"num_triples": total, "accuracy": satisfied / total if total else None}


@torch.no_grad()
def encoder_motion_accuracy(
    encoder, graphs: Iterable[SceneGraph], num_frames: int = 16, frame_size: int = 64, gain: float = 1.0
) -> dict:
    """The share of dynamic triples (``moving toward``, ``moving away from``) that the encoder's
    inferred motion satisfies by the conformance metric's own rule (the two objects' distance, mean
    of the span's last two frames minus its first two, changes by at least
    ``DYNAMIC_MIN_CHANGE`` = 5 px the right way), with each object at frame f of ``num_frames`` in
    its clip-mean box (:func:`~sg2vid_diffusers.models.sg_encoder.layout_readout`) plus
    ``gain * ((f + 0.5) / F - 0.5)`` times its move (:func:`~sg2vid_diffusers.models.sg_encoder.motion_readout`),
    the boxes the moving layout bias gives the UNet when its gate is ``gain``. Also the median
    distance change of each predicate, in px. Meaningful only for an encoder trained with the layout
    loss's motion term (others move their objects at random); needs ``output_dim >= 8``.

    Also ``"timed"``: the share of static spatial triples with a time span that the same moving boxes
    satisfy over their span's frames (the metric's static rule, its 2 px margin, every object drawn):
    whether motion the encoder infers for a graph carries an object out of a relation that holds for
    only part of the clip (``gain=0`` scores the clip-mean boxes).

    Returns:
        ``{"num_triples": T, "accuracy": a or None, "median_change": {predicate: px or None},
        "timed": {"num_triples": T', "accuracy": a' or None}}``.
    """
    from ..models.sg_encoder import layout_readout, motion_frame_offsets, motion_readout
    from .conformance import _distance_change, _dynamic_holds, _triple_holds

    if encoder.vocab is None:
        raise ValueError("the encoder has no vocabulary: graphs cannot be encoded")
    width = encoder.config.output_dim
    readout = torch.cat([layout_readout(width), motion_readout(width)], dim=1).to(encoder.device)
    times = motion_frame_offsets(num_frames)  # (F,)
    changes: dict[str, list[float]] = {predicate: [] for predicate in DYNAMIC_PREDICATES}
    satisfied = timed_total = timed_satisfied = 0
    for graph in graphs:
        dynamic = [t for t, rel in enumerate(graph.relationships) if rel.predicate in DYNAMIC_PREDICATES]
        timed = [t for t, rel in enumerate(graph.relationships)
                 if rel.predicate in STATIC_PREDICATES and rel.time is not None]  # fmt: skip
        if not dynamic and not timed:
            continue
        vectors = encoder.object_vectors(collate_scene_graphs([graph], encoder.vocab).to(encoder.device))
        mean, move = (vectors.float() @ readout).cpu().split(4, dim=1)  # (O, 4) each: objects, then __image__
        boxes = mean[:, None] + gain * times[None, :, None] * move[:, None]  # (O, F, 4) in [-1, 1]
        centres = _centres_px(boxes, frame_size).numpy()  # (O, F, 2)
        drawn = np.ones(centres.shape[:2], dtype=bool)
        in_span = active_triples([rel.span for rel in graph.relationships], num_frames).numpy().T  # (T, F)
        for t in dynamic:
            rel = graph.relationships[t]
            change = _distance_change(drawn, centres, rel.subject, rel.object, np.flatnonzero(in_span[t]))
            if change is None:  # a span of under two frames: the metric cannot score it either
                continue
            changes[rel.predicate].append(change)
            satisfied += _dynamic_holds(rel.predicate, change)
        for t in timed:
            rel = graph.relationships[t]
            timed_total += 1
            frames = np.flatnonzero(in_span[t])
            timed_satisfied += _triple_holds(rel.predicate, drawn, centres, rel.subject, rel.object, frames)
    total = sum(len(c) for c in changes.values())
    return {
        "num_triples": total,
        "accuracy": satisfied / total if total else None,
        "median_change": {p: float(np.median(c)) if c else None for p, c in changes.items()},
        "timed": {"num_triples": timed_total, "accuracy": timed_satisfied / timed_total if timed_total else None},
    }


@torch.no_grad()
def graph_sensitivity(
    pipe,
    graphs: Iterable[SceneGraph],
    timesteps: Sequence[int] = (900, 500, 200),
    num_frames: int = 16,
    seed: int = 0,
) -> dict:
    """The denoiser's relative output change under the null graph, a changed object and flipped
    predicates, per timestep.

    Args:
        pipe: a :class:`SceneGraphToVideoPipeline` with a vocabulary (its UNet, encoder and scheduler
            are used; the VAE is not).
        graphs: parsed scene graphs (``parse_scene_graphs(..., vocab=pipe.vocab)``).
        timesteps: the training timesteps to probe (0 = clean, ``num_train_timesteps - 1`` = noise).
        num_frames: F of the probed latents.
        seed: the latents: ``randn`` of the UNet's input shape, one draw per graph and timestep, the same
            for the graph and its changed versions.

    Returns:
        ``{"num_graphs": G, "num_with_predicates": Gp, "timesteps": {t: {"null_graph": x,
        "object_category": y, "predicates": z or None, "object_colour": c or None, "object_shape":
        s or None}}}``, the means over timesteps under ``"mean"``, and under ``"encoder"`` the
        relative change of the encoder's real local tokens (the same keys but ``"null_graph"``).
        ``"object_colour"`` and ``"object_shape"``: the first object's colour alone or its shape
        alone changed (:func:`encoder_sensitivity`), averaged over the graphs that have such a
        change; None when none has.
    """
    if pipe.vocab is None:
        raise ValueError("pipe has no vocabulary (sg_encoder.vocab): graphs cannot be encoded")
    unet, encoder = pipe.unet, pipe.sg_encoder
    categories = pipe.vocab.object_names
    known = set(pipe.vocab.predicate_names)
    num_train = pipe.scheduler.config.num_train_timesteps
    for t in timesteps:
        if not 0 <= int(t) < num_train:
            raise ValueError(f"timesteps: {t} is outside [0, {num_train})")
    size = unet.config.sample_size
    shape = (unet.config.in_channels, num_frames, size, size)
    device, dtype = unet.device, unet.dtype
    graphs = list(graphs)
    if not graphs:
        raise ValueError("graphs: no scene graphs to probe")

    sums = {int(t): {"null_graph": 0.0, "object_category": 0.0, **{key: 0.0 for key in _OPTIONAL}} for t in timesteps}
    counts = {key: 0 for key in _OPTIONAL}
    generator = torch.Generator().manual_seed(seed)
    for graph in graphs:
        optional = _optional_variants(graph, categories, known)
        for key in optional:
            counts[key] += 1
        variants = [graph, graph, _changed_object(graph, categories), *optional.values()]
        batch = collate_scene_graphs(variants, pipe.vocab).to(device)
        drop = torch.zeros(len(variants), dtype=torch.bool, device=device)
        drop[1] = True  # the second copy becomes the null graph
        context = encode_graph_context(encoder, unet, batch, num_frames, drop=drop)
        for t in timesteps:
            latents = torch.randn(shape, generator=generator).to(device, dtype)
            latents = latents.expand(len(variants), *shape)
            step = torch.full((len(variants),), int(t), device=device)
            out = unet(latents, step, graph_context=context).sample.float()
            scale = out[0].norm().clamp_min(1e-12)
            change = lambda i: ((out[i] - out[0]).norm() / scale).item()  # noqa: E731
            sums[int(t)]["null_graph"] += change(1)
            sums[int(t)]["object_category"] += change(2)
            for i, key in enumerate(optional, start=3):
                sums[int(t)][key] += change(i)

    per_step = {}
    for t, row in sums.items():
        per_step[t] = {"null_graph": row["null_graph"] / len(graphs), "object_category": row["object_category"] / len(graphs)}
        per_step[t].update({key: _mean_or_none(row[key], counts[key]) for key in _OPTIONAL})
    mean = {key: sum(row[key] for row in per_step.values()) / len(per_step) for key in ("null_graph", "object_category")}
    mean.update({key: sum(row[key] for row in per_step.values()) / len(per_step) if counts[key] else None
                 for key in _OPTIONAL})  # fmt: skip
    tokens = encoder_sensitivity(encoder, graphs)
    encoder_mean = {key: tokens[key] for key in ("object_category", *_OPTIONAL)}
    return {
        "num_graphs": len(graphs),
        "num_with_predicates": counts["predicates"],
        "timesteps": per_step,
        "mean": mean,
        "encoder": encoder_mean,
    }
