import math
import random

import pytest
import torch
from sgdiff_reference import frame_tokens, sgdiff_encode, sgdiff_key_shapes

from sg2vid_diffusers import SceneGraphEncoder, SceneGraphEncoderOutput, Vocabulary, collate_scene_graphs

OBJECTS = ["circle", "square", "triangle", "star"]
PREDICATES = ["left of", "above", "near"]
TINY = dict(embedding_dim=16, hidden_dim=24, output_dim=20, num_graph_layers=3, max_local_triples=4)
D = TINY["output_dim"]


@pytest.fixture
def vocab():
    return Vocabulary.from_names(OBJECTS, PREDICATES)


@pytest.fixture
def encoder(vocab):
    torch.manual_seed(0)
    return SceneGraphEncoder.from_vocab(vocab, **TINY).eval()


def random_graphs(count, seed, max_objects=5, max_relationships=7):
    rng = random.Random(seed)
    graphs = []
    for _ in range(count):
        num_objects = rng.randint(1, max_objects)
        relationships = []
        for _ in range(rng.randint(0, max_relationships) if num_objects > 1 else 0):
            s, o = rng.sample(range(num_objects), 2)
            rel = {"subject": s, "predicate": rng.choice(PREDICATES), "object": o}
            if rng.random() < 0.5:
                t0 = rng.choice([0.0, 0.25, 0.5])
                rel["time"] = [t0, rng.choice([t0 + 0.25, 1.0])]
            relationships.append(rel)
        graphs.append({"objects": [rng.choice(OBJECTS) for _ in range(num_objects)], "relationships": relationships})
    return graphs


def test_shapes_and_masks_for_graphs_of_different_sizes(encoder, vocab):
    graphs = [
        {"objects": ["circle"]},  # 1 triple: circle in image
        {"objects": ["circle", "square"], "relationships": [[0, "left of", 1]]},  # 3 triples
        {  # 3 + 4 = 7 triples, more than N = 4
            "objects": ["circle", "square", "triangle", "star"],
            "relationships": [[0, "left of", 1], [1, "above", 2], [3, "near", 0]],
        },
    ]
    out = encoder(collate_scene_graphs(graphs, vocab))

    assert isinstance(out, SceneGraphEncoderOutput)
    assert out.local_tokens.shape == (3, 4, 3 * D)
    assert out.global_embeds.shape == (3, D)
    assert out.frame_local_tokens is None and out.frame_mask is None
    assert out.local_mask.tolist() == [[True, False, False, False], [True, True, True, False], [True] * 4]
    assert torch.all(out.local_tokens[~out.local_mask] == 0)
    # Every MLP ends in a ReLU, so real tokens are >= 0 and (with these weights) not all zero.
    assert torch.all(out.local_tokens >= 0)
    assert torch.all(out.local_tokens[out.local_mask].abs().sum(-1) > 0)


def test_truncation_keeps_the_first_triples_real_before_in_image(encoder, vocab):
    graph = {
        "objects": ["circle", "square", "triangle", "star"],
        "relationships": [[0, "left of", 1], [1, "above", 2], [3, "near", 0]],
    }
    batch = collate_scene_graphs(graph, vocab)
    untruncated = SceneGraphEncoder.from_vocab(vocab, **{**TINY, "max_local_triples": 16}).eval()
    untruncated.load_state_dict(encoder.state_dict())

    kept = encoder(batch).local_tokens[0]  # (4, 3D)
    every = untruncated(batch).local_tokens[0]  # (16, 3D)

    assert untruncated(batch).local_mask[0].sum() == 7
    torch.testing.assert_close(kept, every[:4])
    # Triples 3..6 are the __in_image__ ones: all share the image node as object; 0..2 do not.
    image_part = every[3:7, 2 * D :]
    assert torch.equal(image_part, image_part[:1].expand(4, -1))
    assert not any(torch.equal(every[t, 2 * D :], image_part[0]) for t in range(3))


def test_matches_the_loop_based_sgdiff_reference(encoder, vocab):
    encoder = encoder.double()
    batch = collate_scene_graphs(random_graphs(6, seed=1), vocab)
    state_dict = encoder.state_dict()

    out = encoder(batch)
    local, global_ = sgdiff_encode(state_dict, batch, max_local_triples=4)

    torch.testing.assert_close(out.local_tokens, local)
    torch.testing.assert_close(out.global_embeds, global_)
    assert torch.equal(out.local_mask, local.abs().sum(-1) > 0)


def test_triples_in_any_batch_order_match_the_reference(encoder, vocab):
    """Slots follow batch order within each graph even when the graphs' triples interleave."""
    encoder = encoder.double()
    batch = collate_scene_graphs(random_graphs(4, seed=2), vocab)
    perm = torch.randperm(len(batch.triples), generator=torch.Generator().manual_seed(0))
    batch.triples, batch.triples_to_img = batch.triples[perm], batch.triples_to_img[perm]
    batch.triple_spans = batch.triple_spans[perm]

    out = encoder(batch, num_frames=5)
    local, global_ = sgdiff_encode(encoder.state_dict(), batch, max_local_triples=4)
    frames, frame_mask = frame_tokens(encoder.state_dict(), batch, 5, max_local_triples=4)

    torch.testing.assert_close(out.local_tokens, local)
    torch.testing.assert_close(out.global_embeds, global_)
    torch.testing.assert_close(out.frame_local_tokens, frames)
    assert torch.equal(out.frame_mask, frame_mask)


def test_a_graph_encodes_the_same_alone_and_in_a_batch(encoder, vocab):
    graphs = random_graphs(5, seed=3)
    together = encoder(collate_scene_graphs(graphs, vocab), num_frames=3)
    for i, graph in enumerate(graphs):
        alone = encoder(collate_scene_graphs(graph, vocab), num_frames=3)
        for name in ("local_tokens", "local_mask", "global_embeds", "frame_local_tokens", "frame_mask"):
            torch.testing.assert_close(alone[name][0], together[name][i], msg=f"{name} of graph {i}")


def test_dynamic_graph_has_the_active_triples_in_each_frame(encoder, vocab):
    graph = {
        "objects": ["circle", "square", "triangle"],
        "relationships": [
            {"subject": 0, "predicate": "left of", "object": 1, "time": [0.0, 0.5]},
            {"subject": 1, "predicate": "above", "object": 2, "time": [0.5, 1.0]},
            {"subject": 2, "predicate": "near", "object": 0},
        ],
    }
    out = encoder(collate_scene_graphs(graph, vocab), num_frames=4)
    static = out.local_tokens[0]  # slots: rel0, rel1, rel2, circle-in-image
    frames = out.frame_local_tokens[0]  # (4, 4, 3D); frame f sits at time f / 4

    assert out.frame_local_tokens.shape == (1, 4, 4, 3 * D)
    assert out.frame_mask.shape == (1, 4, 4) and out.frame_mask.all()  # 5 active triples, N = 4
    # Frames 0, 1 (t = 0, 0.25): rel0, rel2, circle in image, square in image.
    torch.testing.assert_close(frames[0, :2], static[[0, 2]])
    torch.testing.assert_close(frames[1], frames[0])
    # Frames 2, 3 (t = 0.5, 0.75): rel1 replaces rel0, which is gone.
    torch.testing.assert_close(frames[3, :2], static[[1, 2]])
    torch.testing.assert_close(frames[2], frames[3])
    assert not any(torch.equal(token, static[0]) for token in frames[3])
    assert any(torch.equal(token, static[0]) for token in frames[0])
    assert not torch.equal(frames[0], frames[3])


def test_frames_of_a_static_graph_equal_the_static_tokens(encoder, vocab):
    graphs = [g for g in random_graphs(8, seed=4) if all("time" not in r for r in g["relationships"])]
    assert graphs, "the seed should give some static graphs"
    out = encoder(collate_scene_graphs(graphs, vocab), num_frames=3)
    for f in range(3):
        assert torch.equal(out.frame_local_tokens[:, f], out.local_tokens)
        assert torch.equal(out.frame_mask[:, f], out.local_mask)


def test_return_dict_false_gives_a_tuple(encoder, vocab):
    batch = collate_scene_graphs(random_graphs(2, seed=5), vocab)
    assert len(encoder(batch, return_dict=False)) == 3
    local_tokens, local_mask, global_embeds, frame_tokens_, frame_mask = encoder(batch, 2, return_dict=False)
    assert frame_tokens_.shape[:3] == (2, 2, 4) and frame_mask.shape == (2, 2, 4)


def test_encode_collates_with_the_models_vocabulary(encoder, vocab):
    graphs = random_graphs(3, seed=6)
    out = encoder.encode(graphs, num_frames=2)
    expected = encoder(collate_scene_graphs(graphs, vocab), num_frames=2)
    assert torch.equal(out.frame_local_tokens, expected.frame_local_tokens)

    encoder.vocab = None
    with pytest.raises(ValueError, match="no vocabulary"):
        encoder.encode(graphs)


def test_out_of_range_indices_are_named(encoder, vocab):
    batch = collate_scene_graphs({"objects": ["circle", "star"], "relationships": [[0, "near", 1]]}, vocab)
    batch.triples[0, 1] = 7
    with pytest.raises(ValueError, match=r"batch\.triples\[:, 1\] \(predicate\)\[0\] = 7"):
        encoder(batch)


def test_save_and_load_round_trip_with_vocabulary(encoder, vocab, tmp_path):
    batch = collate_scene_graphs(random_graphs(3, seed=7), vocab)
    encoder.save_pretrained(tmp_path / "encoder")
    assert sorted(p.name for p in (tmp_path / "encoder").iterdir()) == [
        "config.json",
        "diffusion_pytorch_model.safetensors",
        "vocab.json",
    ]

    loaded = SceneGraphEncoder.from_pretrained(tmp_path / "encoder")

    assert loaded.vocab == vocab
    assert SceneGraphEncoder.from_pretrained(tmp_path, subfolder="encoder").vocab == vocab  # a pipeline's layout
    assert {k: v for k, v in loaded.config.items() if not k.startswith("_")} == {
        k: v for k, v in encoder.config.items() if not k.startswith("_")
    }
    expected, got = encoder(batch, num_frames=2), loaded(batch, num_frames=2)
    for name in expected.keys():
        assert torch.equal(got[name], expected[name]), name


def test_vocabulary_must_fit_the_embedding_tables(encoder, vocab, tmp_path):
    bigger = Vocabulary.from_names(OBJECTS + ["hexagon"], PREDICATES)
    with pytest.raises(ValueError, match="num_objects is 6 in the vocabulary but 5"):
        encoder.vocab = bigger

    encoder.save_pretrained(tmp_path)
    bigger.save(tmp_path / "vocab.json")
    with pytest.raises(ValueError, match="vocab.json: .*num_objects"):
        SceneGraphEncoder.from_pretrained(tmp_path)


def test_saving_without_vocabulary_removes_a_stale_one(encoder, tmp_path):
    encoder.save_pretrained(tmp_path)
    encoder.vocab = None
    encoder.save_pretrained(tmp_path)
    assert not (tmp_path / "vocab.json").exists()
    assert SceneGraphEncoder.from_pretrained(tmp_path).vocab is None


def test_default_config_is_sgdiffs_visual_genome_encoder():
    state_dict = SceneGraphEncoder().state_dict()
    expected = sgdiff_key_shapes(179, 46, 512, 512, 512, num_layers=6)

    assert len(state_dict) == 53
    assert {key: tuple(value.shape) for key, value in state_dict.items()} == expected
    assert sum(value.numel() for value in state_dict.values()) == 13_241_857  # "about 13.2 M"
    assert state_dict["logit_scale"].item() == pytest.approx(math.log(1 / 0.07))


def test_runs_under_bf16_autocast_close_to_float32(encoder, vocab):
    batch = collate_scene_graphs(random_graphs(3, seed=9), vocab)
    expected = encoder(batch, num_frames=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = encoder(batch, num_frames=4)
    assert out.local_tokens.dtype == torch.bfloat16
    assert torch.allclose(out.global_embeds.float(), expected.global_embeds, atol=0.1, rtol=0.05)
    assert torch.equal(out.frame_mask, expected.frame_mask)
