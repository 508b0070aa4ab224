import json

import pytest
import torch

from sg2vid_diffusers import SceneGraphError, Vocabulary, active_triples, collate_scene_graphs

# A vocab.json in the sg2im / SGDiff layout, with COCO-style gaps and extra keys.
SG2IM_VOCAB = {
    "object_idx_to_name": ["__image__", "person", "NONE", "tennis racket", "sky-other"],
    "object_name_to_idx": {"__image__": 0, "person": 1, "tennis racket": 3, "sky-other": 4},
    "pred_idx_to_name": ["__in_image__", "left of", "right of", "has"],
    "pred_name_to_idx": {"__in_image__": 0, "left of": 1, "right of": 2, "has": 3},
    "attribute_idx_to_name": ["white"],
}


def test_vocab_json_round_trip_keeps_indices_and_extra_keys(tmp_path):
    path = tmp_path / "vocab.json"
    path.write_text(json.dumps(SG2IM_VOCAB))
    vocab = Vocabulary.load(path)
    assert (vocab.num_objects, vocab.num_predicates) == (5, 4)
    assert vocab.object_index("Tennis_Racket") == 3
    assert vocab.predicate_index("LEFT OF") == 1
    assert not vocab.has_object("NONE") and not vocab.has_object("__image__")
    assert "tennis racket" in vocab.object_names and "__image__" not in vocab.object_names
    (tmp_path / "copy").mkdir()
    out = vocab.save(tmp_path / "copy")  # a folder gets a vocab.json inside
    assert out == tmp_path / "copy" / "vocab.json"
    assert json.loads(out.read_text()) == SG2IM_VOCAB
    assert Vocabulary.load(tmp_path / "copy") == vocab


def test_vocab_requires_special_entries_at_index_0():
    with pytest.raises(ValueError, match="__image__"):
        Vocabulary(["person"], ["__in_image__"])
    with pytest.raises(ValueError, match="__in_image__"):
        Vocabulary(["__image__", "person"], ["left of"])
    with pytest.raises(ValueError, match="outside"):
        Vocabulary(["__image__"], ["__in_image__"], object_name_to_idx={"__image__": 0, "cat": 7})


VOCAB = Vocabulary.from_names(["red circle", "blue square", "green triangle"], ["left of", "above"])


def test_collate_follows_the_sgdiff_layout():
    graphs = [
        {
            "objects": ["red circle", {"name": "blue square", "box": [0.1, 0.2, 0.3, 0.4]}],
            "relationships": [[0, "left of", 1, [0.25, 0.75]]],
        },
        {"objects": ["green triangle", "red circle", "blue square"], "relationships": [[2, "above", 0]]},
    ]
    batch = collate_scene_graphs(graphs, VOCAB)
    image, in_image = VOCAB.object_index("__image__"), VOCAB.predicate_index("__in_image__")
    assert batch.num_graphs == 2
    # Graph 0: objects 0, 1, image node 2. Graph 1: objects 3, 4, 5, image node 6.
    assert batch.objs.tolist() == [1, 2, image, 3, 1, 2, image]
    assert batch.obj_to_img.tolist() == [0, 0, 0, 1, 1, 1, 1]
    left, above = VOCAB.predicate_index("left of"), VOCAB.predicate_index("above")
    assert batch.triples.tolist() == [
        [0, left, 1], [0, in_image, 2], [1, in_image, 2],
        [5, above, 3], [3, in_image, 6], [4, in_image, 6], [5, in_image, 6],
    ]
    assert batch.triples_to_img.tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert batch.triple_spans.tolist()[:2] == [[0.25, 0.75], [0.0, 1.0]]
    assert batch.boxes[1].tolist() == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert batch.boxes[2].tolist() == [0.0, 0.0, 1.0, 1.0]
    assert batch.has_box.tolist() == [False, True, True, False, False, False, True]
    assert batch.is_dynamic
    assert len(batch.as_sgdiff_tuple()) == 5


def test_collate_validates_against_the_vocabulary():
    with pytest.raises(SceneGraphError) as info:
        collate_scene_graphs([{"objects": ["red circle"]}, {"objects": ["purple circle"]}], VOCAB)
    assert info.value.field == "scene_graph[1].objects[0].name"


def test_active_triples_maps_spans_to_frames_by_frame_over_num_frames():
    spans = torch.tensor([[0.0, 1.0], [0.0, 0.5], [0.5, 1.0], [0.25, 0.5], [0.95, 1.0]], dtype=torch.float64)
    active = active_triples(spans, 4)  # frame positions 0, 0.25, 0.5, 0.75
    assert active.shape == (4, 5)
    assert active.T.tolist() == [
        [True, True, True, True],
        [True, True, False, False],
        [False, False, True, True],
        [False, True, False, False],
        [False, False, False, False],
    ]
    # Fractions written as first / F and (last + 1) / F select exactly those frames for any F.
    for num_frames in (7, 12, 16):
        for first in range(num_frames):
            for last in range(first, num_frames):
                mask = active_triples([[first / num_frames, (last + 1) / num_frames]], num_frames)[:, 0]
                assert mask.nonzero().flatten().tolist() == list(range(first, last + 1))
    with pytest.raises(ValueError):
        active_triples(spans, 0)
