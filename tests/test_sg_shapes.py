import numpy as np
import pytest

from sg2vid_diffusers import SceneGraphError
from sg2vid_diffusers.data.sg_shapes import (
    CATEGORIES,
    COLORS,
    PREDICATES,
    SGShapesClip,
    ShapeTrack,
    extract_scene_graph,
    generate_clip,
    render_frames,
    sample_clip_for_graph,
    sg_shapes_vocabulary,
)
from sg2vid_diffusers.batching import active_triples

NUM_CLIPS = 300


@pytest.fixture(scope="module")
def train_clips():
    return [generate_clip("train", i) for i in range(NUM_CLIPS)]


def test_vocabulary_has_the_18_categories_and_6_predicates():
    vocab = sg_shapes_vocabulary()
    assert len(CATEGORIES) == 18 and sorted(vocab.object_names) == sorted(CATEGORIES)
    assert sorted(vocab.predicate_names) == sorted(PREDICATES)
    assert vocab.object_idx_to_name[0] == "__image__" and vocab.pred_idx_to_name[0] == "__in_image__"


def _pixel_box(mask):
    ys, xs = np.nonzero(mask)
    return xs.min(), ys.min(), xs.max(), ys.max()


@pytest.mark.parametrize("subpixel", [0.0, 0.3, 0.5, 0.8])
def test_shapes_are_drawn_to_size_in_exact_colors_on_black(subpixel):
    names = ["red square", "green circle", "blue triangle"]
    centers = np.array([[[12.0, 12.0], [40.0, 12.0], [20.0, 44.0]]]) + subpixel
    frame = render_frames(names, centers)[0]
    assert frame.dtype == np.uint8 and frame.shape == (64, 64, 3)
    colors = {tuple(c) for c in frame.reshape(-1, 3)}
    assert colors == {(0, 0, 0), COLORS["red"], COLORS["green"], COLORS["blue"]}
    sizes = {}
    for name in names:
        mask = (frame == COLORS[name.split()[0]]).all(-1)
        x0, y0, x1, y1 = _pixel_box(mask)
        sizes[name.split()[1]] = (x1 - x0 + 1, y1 - y0 + 1, mask.sum())
    assert sizes["square"] == (12, 12, 144)
    assert sizes["circle"][:2] == (13, 13) and 0.65 < sizes["circle"][2] / 169 < 0.85
    w, h, count = sizes["triangle"]
    assert (w, h) == (14, 13) and count / (w * h) < 0.65
    # Pointing up: the top row is narrower than the bottom row.
    mask = (frame == COLORS["blue"]).all(-1)
    rows = mask.sum(1)[mask.any(1)]
    assert rows[0] < rows[-1]


def test_generation_is_deterministic_and_splits_are_disjoint():
    clip_a, graph_a = generate_clip("train", 7, seed=3)
    clip_b, graph_b = generate_clip("train", 7, seed=3)
    assert clip_a == clip_b and graph_a == graph_b
    assert np.array_equal(clip_a.render(), clip_b.render())
    firsts = {split: [generate_clip(split, i)[0] for i in range(20)] for split in ("train", "validation", "test")}
    assert all(a != b for a, b in zip(firsts["train"], firsts["validation"]))
    assert all(a != b for a, b in zip(firsts["validation"], firsts["test"]))
    assert generate_clip("train", 7, seed=4)[0] != clip_a
    with pytest.raises(ValueError):
        generate_clip("dev", 0)


def test_clips_follow_the_scene_rules(train_clips):
    seen_categories, seen_predicates = set(), set()
    for clip, graph in train_clips:
        n = len(clip.tracks)
        assert 1 <= n <= 4
        assert len({name.split()[0] for name in clip.names}) == n  # different colors
        assert graph.object_names == clip.names
        for track in clip.tracks:
            assert np.hypot(*track.velocity) <= 2.5 + 1e-9
        boxes = clip.boxes()
        assert boxes.shape == (16, n, 4) and (boxes >= 0).all() and (boxes <= 1).all()
        frames = clip.render()
        for f in range(clip.num_frames):
            pixel_boxes = [_pixel_box((frames[f] == COLORS[name.split()[0]]).all(-1)) for name in clip.names]
            for i in range(n):
                for j in range(i + 1, n):
                    a, b = pixel_boxes[i], pixel_boxes[j]
                    empty_cols = max(b[0] - a[2], a[0] - b[2]) - 1
                    empty_rows = max(b[1] - a[3], a[1] - b[3]) - 1
                    assert max(empty_cols, empty_rows) >= 2
        seen_categories.update(clip.names)
        seen_predicates.update(rel.predicate for rel in graph.relationships)
    assert seen_categories == set(CATEGORIES)
    assert seen_predicates == set(PREDICATES)


def test_about_a_third_of_training_clips_have_a_timed_triple(train_clips):
    share = np.mean([graph.is_dynamic for _, graph in train_clips])
    assert 0.25 <= share <= 0.45


def test_extracted_triples_are_true_over_their_spans(train_clips):
    """Re-derive every triple from the exact centres with the SG_SHAPES.md definitions."""
    for clip, graph in train_clips:
        F = clip.num_frames
        centers = clip.centers()
        for rel in graph.relationships:
            frames = np.flatnonzero(active_triples([rel.span], F)[:, 0].numpy())
            assert frames.size >= 2
            if rel.time is not None:  # written as [first / F, (last + 1) / F], never the whole clip
                assert rel.time == (frames[0] / F, (frames[-1] + 1) / F) and rel.time != (0.0, 1.0)
            cs, co = centers[frames, rel.subject], centers[frames, rel.object]
            dx, dy = cs[:, 0] - co[:, 0], cs[:, 1] - co[:, 1]
            distance = np.hypot(dx, dy)
            holds = {
                "left of": (dx < -6).all(),
                "right of": (dx > 6).all(),
                "above": (dy < -6).all(),
                "below": (dy > 6).all(),
                "moving toward": distance[0] - distance[-1] >= 10,
                "moving away from": distance[-1] - distance[0] >= 10,
            }[rel.predicate]
            assert holds, (rel, graph)


def test_static_triples_use_maximal_spans():
    # A red circle passes under a static blue square, left to right: "left of" then "right of".
    clip = SGShapesClip((ShapeTrack("red circle", (10.0, 40.0), (2.5, 0.0)), ShapeTrack("blue square", (30.0, 15.0))))
    graph = extract_scene_graph(clip)
    spans = {rel.predicate: rel.time for rel in graph.relationships}
    # cx = 10 + 2.5 f; left of while cx < 24, i.e. f <= 5; right of while cx > 36, i.e. f >= 11.
    assert spans["left of"] == (0.0, 6 / 16)
    assert spans["right of"] == (11 / 16, 1.0)
    assert spans["below"] is None
    assert "moving toward" not in spans  # the distance falls by 7 px only


def test_a_clip_can_be_found_for_a_graph():
    graph = {
        "objects": ["red circle", "blue square"],
        "relationships": [[0, "left of", 1, [0.0, 0.5]], [0, "right of", 1, [0.75, 1.0]]],
    }
    clip = sample_clip_for_graph(graph, seed=1)
    assert clip == sample_clip_for_graph(graph, seed=1)
    cx = clip.centers()[:, :, 0]
    assert (cx[:8, 0] < cx[:8, 1]).all() and (cx[12:, 0] > cx[12:, 1]).all()


@pytest.mark.parametrize(
    "graph, field",
    [
        ({"objects": ["red circle", "red square"]}, "objects[1].name"),
        ({"objects": ["purple circle"]}, "objects[0].name"),
        ({"objects": ["red circle", "blue square"], "relationships": [[0, "near", 1]]}, "relationships[0].predicate"),
        ({"objects": ["red circle", "blue square", "green circle", "cyan circle", "yellow circle"]}, "objects"),
    ],
)
def test_graphs_sg_shapes_cannot_show_are_refused(graph, field):
    with pytest.raises(SceneGraphError) as info:
        sample_clip_for_graph(graph)
    assert info.value.field == field
