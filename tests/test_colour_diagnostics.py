"""Colour confusions in generated SG-Shapes videos, and palette distances in a VAE's latent space."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sg2vid_diffusers.data.sg_shapes import COLORS, generate_clip
from sg2vid_diffusers.data.video_folder import write_video_folder
from sg2vid_diffusers.evaluation.colours import colour_confusions, count_shapes, palette_latent_distances
from tiny_models import tiny_vae

ROOT = Path(__file__).resolve().parent.parent


def _recoloured(frames: np.ndarray, old: str, new: str) -> np.ndarray:
    out = frames.copy()
    out[(frames == COLORS[old]).all(-1)] = COLORS[new]
    return out


def _clip_with(colour: str, index_from: int = 0):
    """A validation clip whose graph has an object of ``colour`` and at least one other colour free."""
    for i in range(index_from, index_from + 200):
        clip, graph = generate_clip("validation", i)
        colours = [name.split()[0] for name in graph.object_names]
        if colour in colours and len(colours) >= 2:
            return clip.render(), graph
    raise AssertionError("no such clip")


def test_ground_truth_has_no_misses_and_a_recoloured_object_is_a_swap():
    frames, graph = _clip_with("red")
    free = next(c for c in COLORS if c not in [n.split()[0] for n in graph.object_names])

    clean = colour_confusions([(frames, graph)])
    assert clean.num_missed == 0 and clean.spurious == 0 and not clean.swaps
    assert sum(clean.objects.values()) == len(graph.object_names)

    swapped = colour_confusions([(frames, graph), (_recoloured(frames, "red", free), graph)])
    assert swapped.missed == {"red": 1} and swapped.spurious == 1 and swapped.missed_beside_spurious == 1
    assert swapped.swaps == {("red", free): 1} and swapped.swaps_same_shape == 1
    assert sum(swapped.objects.values()) == 2 * len(graph.object_names)
    assert f"red -> {free} (1)" in swapped.format_table()


def test_an_object_not_drawn_is_a_miss_without_a_swap():
    frames, graph = _clip_with("red")
    erased = frames.copy()
    erased[(frames == COLORS["red"]).all(-1)] = 0
    report = colour_confusions([(erased, graph)])
    assert report.missed == {"red": 1} and report.spurious == 0 and report.missed_beside_spurious == 0
    assert not report.swaps


def test_an_object_drawn_in_another_objects_colour_is_borrowed():
    """The colour leak of docs/builtin_model.md: red drawn in the colour of the graph's other object, so
    that colour forms two shapes; nothing spurious, the miss counted as borrowed."""
    frames, graph = _clip_with("red")
    other = next(name.split()[0] for name in graph.object_names if not name.startswith("red"))
    leaked = colour_confusions([(_recoloured(frames, "red", other), graph)])
    assert leaked.missed == {"red": 1} and leaked.spurious == 0 and not leaked.swaps
    assert leaked.borrowed == {("red", other): 1}
    assert f"red as {other}: 1" in leaked.format_table()
    assert not colour_confusions([(frames, graph)]).borrowed
    erased = frames.copy()
    erased[(frames == COLORS["red"]).all(-1)] = 0
    assert not colour_confusions([(erased, graph)]).borrowed  # not drawn at all: nothing borrowed
    # Given latent distances: the borrowed colour counts as the nearest only when it is.
    distances = np.full((6, 6), 10.0)
    red, lender = list(COLORS).index("red"), list(COLORS).index(other)
    distances[red, lender] = distances[lender, red] = 20.0  # the lender is the farthest colour
    far = colour_confusions([(_recoloured(frames, "red", other), graph)], distances)
    assert far.borrowed_nearest == int(len(graph.object_names) == 2)  # nearest only when it is the only other
    distances[red, lender] = distances[lender, red] = 1.0
    near = colour_confusions([(_recoloured(frames, "red", other), graph)], distances)
    assert near.borrowed_nearest == 1 and "nearest of the graph's other colours in 1" in near.format_table()
    with pytest.raises(ValueError, match="latent_distances must be"):
        colour_confusions([(frames, graph)], np.zeros((5, 5)))


def test_count_shapes_counts_separate_regions_above_a_size():
    mask = np.zeros((16, 16), dtype=bool)
    assert count_shapes(mask) == 0
    mask[1:5, 1:5] = True
    assert count_shapes(mask) == 1
    mask[10:14, 10:14] = True
    assert count_shapes(mask) == 2
    mask[5, 1:15] = True
    mask[5:10, 13] = True  # a bridge joins them
    assert count_shapes(mask) == 1
    mask[0, 15] = True  # one pixel is noise, not a shape
    assert count_shapes(mask) == 1 and count_shapes(mask, min_pixels=1) == 2


def test_palette_latent_distances_are_a_distance_matrix_over_distinct_frames():
    result = palette_latent_distances(tiny_vae())
    d = result["distances"]
    assert np.array_equal(palette_latent_distances(tiny_vae())["distances"], d)  # the posterior mean: no draw
    assert result["colours"] == list(COLORS) and d.shape == (6, 6) and result["to_empty"].shape == (6,)
    assert np.allclose(d, d.T, atol=1e-5) and np.allclose(np.diag(d), 0, atol=1e-3)
    assert (d[~np.eye(6, dtype=bool)] > 0).all() and (result["to_empty"] > 0).all()
    # Another shape draws other frames, so other latents.
    assert not np.allclose(palette_latent_distances(tiny_vae(), shape="circle")["distances"], d)


@pytest.mark.parametrize("as_pipeline", [False, True])
def test_the_script_reads_a_vae_or_pipeline_folder_and_a_generated_folder(tmp_path, as_pipeline):
    vae_dir = tmp_path / ("pipe/vae" if as_pipeline else "vae")
    tiny_vae().save_pretrained(vae_dir)
    frames, graph = _clip_with("red")
    free = next(c for c in COLORS if c not in [n.split()[0] for n in graph.object_names])
    data = write_video_folder(tmp_path / "gen", [(_recoloured(frames, "red", free), graph, None, {})], video_format="npy")
    model = tmp_path / "pipe" if as_pipeline else vae_dir
    command = [sys.executable, str(ROOT / "training" / "colour_diagnostics.py"), "--vae", str(model), "--data", str(data)]
    result = subprocess.run(command + ["--json"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout)
    assert figures["missed"] == {"red": 1} and figures["swaps"] == [["red", free, 1]]
    assert len(figures["latent_distances"]) == 6
    text = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert text.returncode == 0 and f"red -> {free} (1)" in text.stdout and "empty" in text.stdout
    assert torch.tensor(figures["latent_distances"]).diagonal().abs().max() < 1e-3


def test_the_dominant_colour_is_the_drawn_colour_with_the_most_pixels():
    from sg2vid_diffusers.data.sg_shapes import render_frames
    from sg2vid_diffusers.evaluation.colours import dominant_colour

    centres = np.array([[[20.0, 20.0], [44.0, 44.0]]] * 4)  # (F, 2 objects, 2)
    frames = render_frames(["red circle", "blue triangle"], centres, 64)
    assert dominant_colour(frames) == "red"  # a circle covers more than a triangle of the same size
    assert dominant_colour(render_frames(["blue triangle"], centres[:, :1], 64)) == "blue"
    assert dominant_colour(np.zeros((4, 64, 64, 3), np.uint8)) is None
    # A colour in fewer than half the frames does not count, however large.
    flashed = render_frames(["blue triangle"], centres[:, 1:], 64)
    flashed[0, 10:60, 10:60] = COLORS["green"]  # a big green square in 1 of 4 frames
    assert dominant_colour(flashed) == "blue"


def test_single_object_colours_counts_every_video_and_the_built_in_model_draws_the_asked_colours():
    from sg2vid_diffusers import SceneGraphToVideoPipeline
    from sg2vid_diffusers.evaluation.colours import single_object_colours
    from tiny_models import tiny_pipeline

    pipe = tiny_pipeline()
    categories = ["red circle", "blue square", "green triangle"]
    report = single_object_colours(pipe, seeds=(0, 1), num_frames=2, num_inference_steps=2, categories=categories, progress=False)
    assert report.num_videos == 6 == sum(report.shapes.values())
    assert {asked for asked, _ in report.colours} == {"red", "blue", "green"}
    assert all(drawn in [*COLORS, "none"] for _, drawn in report.colours)
    again = single_object_colours(pipe, seeds=(0, 1), num_frames=2, num_inference_steps=2, categories=categories, progress=False)
    assert again == report  # the seeds fix the videos
    with pytest.raises(ValueError, match="categories"):
        single_object_colours(pipe, categories=[], progress=False)
    with pytest.raises(ValueError, match="purple"):
        single_object_colours(pipe, categories=["purple circle"], progress=False)

    builtin = SceneGraphToVideoPipeline.from_builtin()
    builtin.set_progress_bar_config(disable=True)
    drawn = single_object_colours(builtin, seeds=(0,), num_frames=8, num_inference_steps=10,
                                  categories=["red circle", "blue square"], progress=False)  # fmt: skip
    assert drawn.colours == {("red", "red"): 1, ("blue", "blue"): 1} and drawn.colour_accuracy == 1.0
    assert drawn.shapes == {("circle", "circle"): 1, ("square", "square"): 1}
    text = drawn.format_table()
    assert "drawn most in 2 (1.000" in text and "red       red 1" in text


def test_the_script_counts_single_objects_of_a_saved_pipeline(tmp_path):
    from tiny_models import tiny_pipeline

    tiny_pipeline().save_pretrained(tmp_path / "pipe")
    command = [sys.executable, str(ROOT / "training" / "colour_diagnostics.py"), "--model", str(tmp_path / "pipe"),
               "--single_objects", "--seeds", "3", "--num_frames", "2", "--num_inference_steps", "2", "--json"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout)
    assert figures["single_objects"]["num_videos"] == 18  # every SG-Shapes category, one seed
    assert sum(n for _, _, n in figures["single_objects"]["colours"]) == 18
    assert len(figures["latent_distances"]) == 6  # the VAE is the model's
    bad = subprocess.run(command[:-1] + ["--num_frames", "0"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "--num_frames" in bad.stderr
