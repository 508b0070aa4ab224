"""The graph-sensitivity probe: zero for a denoiser that ignores the graph, positive once it listens."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sg2vid_diffusers.evaluation.sensitivity import encoder_layout_accuracy, encoder_motion_accuracy, graph_sensitivity
from sg2vid_diffusers.scene_graph import parse_scene_graphs
from tiny_models import tiny_pipeline

ROOT = Path(__file__).resolve().parent.parent
GRAPHS = [
    {"objects": ["red circle", "blue square"], "relationships": [[0, "left of", 1], [1, "moving toward", 0, [0.0, 0.5]]]},
    {"objects": ["green triangle"], "relationships": []},
]


def probe(pipe, **kwargs):
    graphs = parse_scene_graphs(GRAPHS, vocab=pipe.vocab)
    return graph_sensitivity(pipe, graphs, timesteps=(90, 10), num_frames=2, **kwargs)


def test_a_denoiser_that_hears_the_graph_moves_and_one_that_cannot_does_not():
    pipe = tiny_pipeline()
    heard = probe(pipe)  # graph_only: the graph tokens are the cross-attention context
    assert heard["num_graphs"] == 2 and heard["num_with_predicates"] == 1  # one-object graph: nothing to flip
    for row in [*heard["timesteps"].values(), heard["mean"]]:
        assert row["null_graph"] > 0 and row["object_category"] > 0 and row["predicates"] > 0
        assert row["object_colour"] > 0 and row["object_shape"] > 0
    assert probe(pipe) == heard  # the same seed probes the same latents
    assert probe(pipe, seed=1) != heard

    # With the cross-attention values zeroed, nothing of the graph reaches the output.
    with torch.no_grad():
        for name, param in pipe.unet.named_parameters():
            if "attn2.to_v" in name:
                param.zero_()
    silent = probe(pipe)
    assert all(value < 1e-5 for row in silent["timesteps"].values() for value in row.values())  # float rounding
    assert silent["encoder"] == heard["encoder"]  # the encoder still hears the graph


def test_encoder_tokens_that_cannot_tell_predicates_apart_show_zero():
    pipe = tiny_pipeline()
    heard = probe(pipe)
    assert heard["encoder"]["object_category"] > 0 and heard["encoder"]["predicates"] > 0
    with torch.no_grad():  # every predicate embeds alike: a flipped predicate changes nothing downstream
        pipe.sg_encoder.pred_embeddings.weight.copy_(pipe.sg_encoder.pred_embeddings.weight[:1].expand_as(
            pipe.sg_encoder.pred_embeddings.weight))
    blind = probe(pipe)
    assert blind["encoder"]["predicates"] == 0 and blind["mean"]["predicates"] == 0
    assert blind["encoder"]["object_category"] > 0


def test_a_model_blind_to_colour_shows_zero_for_a_colour_change_but_not_for_a_shape_change():
    """The split that found the colour-blind retrain of docs/builtin_model.md: every colour of a shape
    embeds alike, so a changed colour changes nothing downstream while a changed shape still does."""
    from sg2vid_diffusers.data.sg_shapes import COLORS, SHAPES

    pipe = tiny_pipeline()
    vocab, weight = pipe.vocab, pipe.sg_encoder.obj_embeddings.weight
    with torch.no_grad():
        for shape in SHAPES:
            rows = [vocab.object_index(f"{colour} {shape}") for colour in COLORS]
            weight[rows] = weight[rows[0]].clone()
    blind = probe(pipe)
    assert blind["encoder"]["object_colour"] == 0 and blind["encoder"]["object_shape"] > 0
    for row in [*blind["timesteps"].values(), blind["mean"]]:
        assert row["object_colour"] < 1e-6 and row["object_shape"] > 0 and row["object_category"] > 0


def test_the_colour_and_shape_changes_keep_the_other_word_and_need_such_a_category():
    from sg2vid_diffusers.evaluation.sensitivity import _changed_part

    vocab = tiny_pipeline().vocab
    graph, categories = parse_scene_graphs(GRAPHS, vocab=vocab)[0], vocab.object_names
    colour, shape = _changed_part(graph, categories, "colour"), _changed_part(graph, categories, "shape")
    assert colour.objects[0].name.endswith(" circle") and colour.objects[0].name != "red circle"
    assert shape.objects[0].name.startswith("red ") and shape.objects[0].name != "red circle"
    assert colour.objects[1:] == graph.objects[1:] and colour.relationships == graph.relationships
    assert _changed_part(graph, ["red circle", "red square"], "colour") is None  # no other colour of a circle
    assert _changed_part(graph, ["red circle", "red square"], "shape").objects[0].name == "red square"
    assert _changed_part(graph, ["red circle"], "shape") is None


def test_the_layout_an_encoder_infers_obeys_the_relations_once_the_layout_loss_taught_it():
    from sg2vid_diffusers.batching import collate_scene_graphs
    from sg2vid_diffusers.data.sg_shapes import generate_clip
    from sg2vid_diffusers.pretraining.data import object_box_rows
    from sg2vid_diffusers.training_utils import layout_loss
    from tiny_models import tiny_encoder

    clips = [generate_clip("train", i, num_frames=4) for i in range(24)]
    graphs = [graph for _, graph in clips]
    encoder = tiny_encoder()
    before = encoder_layout_accuracy(encoder, graphs)
    assert before["num_triples"] == sum(
        r.predicate in ("left of", "right of", "above", "below") and r.time is None for g in graphs for r in g.relationships
    ) > 20
    batch = collate_scene_graphs(graphs, encoder.vocab)
    boxes, maskable = object_box_rows(graphs, [clip.boxes() for clip, _ in clips], batch.objs.shape[0], 4)
    optimizer = torch.optim.Adam(encoder.parameters(), lr=1e-2)
    for _ in range(150):
        optimizer.zero_grad()
        layout_loss(encoder.object_vectors(batch), boxes, maskable).backward()
        optimizer.step()
    after = encoder_layout_accuracy(encoder, graphs)
    assert after["accuracy"] >= 0.9 and after["accuracy"] > before["accuracy"] + 0.2, (before, after)
    assert encoder_layout_accuracy(encoder, [parse_scene_graphs(GRAPHS, vocab=encoder.vocab)[1]]) == {
        "num_triples": 0, "accuracy": None}  # fmt: skip


def test_the_motion_an_encoder_infers_is_scored_by_the_metric_s_own_rule():
    """An encoder whose object vectors read out each clip's true clip-mean boxes and moves (what the
    layout loss's motion term regresses onto) satisfies every dynamic triple; without the moves, or
    with them reversed, none."""
    from sg2vid_diffusers.data.sg_shapes import generate_clip
    from sg2vid_diffusers.models.sg_encoder import layout_readout, motion_readout
    from sg2vid_diffusers.training_utils import clip_motion
    from tiny_models import tiny_encoder

    clips = [(clip, graph) for clip, graph in (generate_clip("train", i) for i in range(60))
             if any(r.predicate.startswith("moving") or r.time is not None for r in graph.relationships)]  # fmt: skip
    assert len(clips) >= 8

    class OracleEncoder(type(tiny_encoder())):
        """object_vectors of the i-th graph encoded: vectors whose readouts are clip i's boxes."""

        def object_vectors(self, batch):
            clip = next(self.queue)
            boxes = torch.as_tensor(clip.boxes(), dtype=torch.float32).transpose(0, 1) * 2 - 1  # (n, F, 4)
            targets = torch.cat([boxes.mean(dim=1), clip_motion(boxes)], dim=1)  # (n, 8)
            targets = torch.cat([targets, targets.new_zeros(1, 8)])  # the __image__ node
            width = self.config.output_dim
            readout = torch.cat([layout_readout(width), motion_readout(width)], dim=1)  # orthonormal columns
            assert batch.objs.shape[0] == targets.shape[0]
            return targets @ readout.T

    encoder = OracleEncoder.from_config(tiny_encoder().config)
    encoder.vocab = tiny_encoder().vocab
    graphs = [graph for _, graph in clips]
    results = {}
    for gain in (1.0, 0.0, -1.0):
        encoder.queue = iter([clip for clip, _ in clips])
        results[gain] = encoder_motion_accuracy(encoder, graphs, gain=gain)
    dynamic = sum(r.predicate.startswith("moving") for g in graphs for r in g.relationships)
    assert results[1.0]["num_triples"] == dynamic and results[1.0]["accuracy"] == 1.0, results
    assert results[1.0]["median_change"]["moving toward"] < -5 < 5 < results[1.0]["median_change"]["moving away from"]
    assert results[0.0]["accuracy"] == 0 and results[0.0]["median_change"]["moving toward"] == 0  # every object still
    assert results[-1.0]["accuracy"] == 0, results  # moves reversed: toward becomes away
    # Timed static triples: the true moving boxes keep (nearly) all of them, still or reversed ones fewer.
    timed = sum(r.predicate in ("left of", "right of", "above", "below") and r.time is not None
                for g in graphs for r in g.relationships)  # fmt: skip
    assert results[1.0]["timed"]["num_triples"] == timed >= 5, results
    assert results[1.0]["timed"]["accuracy"] >= 0.9, results
    assert results[-1.0]["timed"]["accuracy"] < results[1.0]["timed"]["accuracy"] - 0.3, results
    assert results[0.0]["timed"]["accuracy"] < results[1.0]["timed"]["accuracy"], results
    assert encoder_motion_accuracy(tiny_encoder(), [parse_scene_graphs(GRAPHS, vocab=encoder.vocab)[1]]) == {
        "num_triples": 0, "accuracy": None, "median_change": {"moving toward": None, "moving away from": None},
        "timed": {"num_triples": 0, "accuracy": None}}  # fmt: skip


def test_bad_timesteps_and_empty_graph_lists_fail_clearly():
    pipe = tiny_pipeline()
    with pytest.raises(ValueError, match="timesteps: 100 is outside"):
        graph_sensitivity(pipe, parse_scene_graphs(GRAPHS, vocab=pipe.vocab), timesteps=(100,), num_frames=2)
    with pytest.raises(ValueError, match="no scene graphs"):
        graph_sensitivity(pipe, [], timesteps=(10,), num_frames=2)


def test_the_script_prints_a_table_for_a_saved_pipeline(tmp_path):
    pipe = tiny_pipeline()
    pipe.save_pretrained(tmp_path / "pipe")
    graphs = tmp_path / "graphs.jsonl"
    graphs.write_text("".join(__import__("json").dumps(g) + "\n" for g in GRAPHS))
    command = [sys.executable, str(ROOT / "training" / "graph_sensitivity.py"), "--model", str(tmp_path / "pipe"),
               "--graphs", str(graphs), "--timesteps", "50", "--num_frames", "2"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "2 graphs (1 with predicates to flip)" in result.stdout and "mean" in result.stdout
    assert "colour" in result.stdout.splitlines()[1] and "shape" in result.stdout.splitlines()[1]
    assert "encoder" in result.stdout and "the encoder's inferred layout satisfies" in result.stdout
    # 2 frames: the moving triple's span [0, 0.5] is one frame, which the metric cannot score either
    assert "the encoder's inferred motion satisfies n/a of 0 dynamic triples" in result.stdout

    pipe.sg_encoder.save_pretrained(tmp_path / "encoder")  # the encoder alone: its row, the same figures
    command = [sys.executable, str(ROOT / "training" / "graph_sensitivity.py"), "--encoder", str(tmp_path / "encoder"),
               "--graphs", str(graphs), "--json"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    alone = __import__("json").loads(result.stdout)
    assert alone["num_with_predicates"] == 1
    assert alone["motion"]["num_triples"] == 1 and alone["motion"]["accuracy"] in (0.0, 1.0)  # 16 frames by default
    heard = probe(pipe)["encoder"]
    assert alone["object_category"] == pytest.approx(heard["object_category"], rel=1e-5)
    assert alone["predicates"] == pytest.approx(heard["predicates"], rel=1e-5)
    assert alone["object_colour"] == pytest.approx(heard["object_colour"], rel=1e-5) and alone["object_colour"] > 0
