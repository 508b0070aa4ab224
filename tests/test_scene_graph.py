import json

import pytest

from sg2vid_diffusers import SceneGraph, SceneGraphError, Vocabulary, parse_scene_graph, parse_scene_graphs
from sg2vid_diffusers.scene_graph import normalize_name

VOCAB = Vocabulary.from_names(["red circle", "blue square", "green triangle"], ["left of", "above", "moving toward"])

CANONICAL = {
    "objects": ["red circle", {"name": "blue square", "box": [0.55, 0.40, 0.80, 0.65]}, "green triangle"],
    "relationships": [
        {"subject": 0, "predicate": "left of", "object": 1},
        {"subject": 2, "predicate": "moving toward", "object": 1},
        {"subject": 0, "predicate": "above", "object": 2, "time": [0.0, 0.5]},
    ],
}


def test_canonical_form_parses_and_round_trips():
    graph = parse_scene_graph(CANONICAL, vocab=VOCAB)
    assert graph.object_names == ["red circle", "blue square", "green triangle"]
    assert graph.objects[1].box == (0.55, 0.40, 0.80, 0.65)
    assert graph.relationships[2].time == (0.0, 0.5)
    assert graph.relationships[0].span == (0.0, 1.0)
    assert graph.is_dynamic
    assert parse_scene_graph(graph.to_json()) == graph


def test_json_text_file_and_short_form_are_the_same_graph(tmp_path):
    short = {
        "objects": CANONICAL["objects"],
        "relationships": [[0, "left of", 1], [2, "moving toward", 1], [0, "above", 2, [0.0, 0.5]]],
    }
    path = tmp_path / "g.json"
    path.write_text(json.dumps(CANONICAL))
    expected = parse_scene_graph(CANONICAL)
    assert parse_scene_graph(short) == expected
    assert parse_scene_graph(json.dumps(CANONICAL)) == expected
    assert parse_scene_graph(path) == expected
    assert parse_scene_graph(str(path)) == expected


def test_names_are_normalised():
    assert normalize_name("  Left_Of ") == "left of"
    graph = parse_scene_graph({"objects": ["RED_circle", " Blue  Square "], "relationships": [[0, "LEFT_OF", 1]]}, VOCAB)
    assert graph.object_names == ["red circle", "blue square"]
    assert graph.relationships[0].predicate == "left of"


def test_list_of_graphs_and_jsonl(tmp_path):
    graphs = parse_scene_graphs([CANONICAL, {"objects": ["red circle"]}])
    assert len(graphs) == 2 and graphs[1].relationships == ()
    jsonl = tmp_path / "g.jsonl"
    jsonl.write_text(json.dumps(CANONICAL) + "\n\n" + json.dumps({"objects": ["blue square"]}) + "\n")
    assert [g.object_names for g in parse_scene_graphs(jsonl)] == [graphs[0].object_names, ["blue square"]]
    assert parse_scene_graphs(CANONICAL) == [graphs[0]]


def _error(source, **kwargs) -> SceneGraphError:
    with pytest.raises(SceneGraphError) as info:
        parse_scene_graphs(source, **kwargs)
    assert isinstance(info.value, ValueError)
    return info.value


@pytest.mark.parametrize(
    "graph, field, value",
    [
        ({"objects": []}, "objects", []),
        ({"relationships": []}, "objects", None),
        ({"objects": ["red circle", 3]}, "objects[1]", 3),
        ({"objects": ["red circle", "  "]}, "objects[1]", "  "),
        ({"objects": [{"box": [0, 0, 1, 1]}]}, "objects[0].name", None),
        ({"objects": [{"name": "red circle", "box": [0.5, 0, 0.4, 1]}]}, "objects[0].box", [0.5, 0, 0.4, 1]),
        ({"objects": [{"name": "red circle", "box": [0, 0, 1.2, 1]}]}, "objects[0].box", [0, 0, 1.2, 1]),
        ({"objects": [{"name": "red circle", "box": [0, 0, 1]}]}, "objects[0].box", [0, 0, 1]),
        ({"objects": [{"name": "red circle", "box": [0, 0, "1", 1]}]}, "objects[0].box", [0, 0, "1", 1]),
        ({"objects": ["a", "b"], "relationships": [[0, "left of", 2]]}, "relationships[0][2]", 2),
        ({"objects": ["a", "b"], "relationships": [[-1, "left of", 1]]}, "relationships[0][0]", -1),
        ({"objects": ["a", "b"], "relationships": [[0, "left of", 0]]}, "relationships[0]", [0, "left of", 0]),
        ({"objects": ["a", "b"], "relationships": [[0.0, "left of", 1]]}, "relationships[0][0]", 0.0),
        ({"objects": ["a", "b"], "relationships": [[True, "left of", 1]]}, "relationships[0][0]", True),
        ({"objects": ["a", "b"], "relationships": [{"subject": 0, "object": 1}]}, "relationships[0].predicate", None),
        ({"objects": ["a", "b"], "relationships": [[0, "x", 1, [0.5, 0.5]]]}, "relationships[0][3]", [0.5, 0.5]),
        ({"objects": ["a", "b"], "relationships": [[0, "x", 1, [-0.1, 0.5]]]}, "relationships[0][3]", [-0.1, 0.5]),
        ({"objects": ["a", "b"], "relationships": [{"subject": 0, "predicate": "x", "object": 1, "time": [0.2]}]},
         "relationships[0].time", [0.2]),
        ({"objects": ["a", "b"], "relationships": [[0, "x"]]}, "relationships[0]", [0, "x"]),
        ({"objects": ["a", "b"], "relationships": {"0": 1}}, "relationships", {"0": 1}),
        ({"objects": ["a"], "relations": []}, "relations", []),
        ({"objects": ["a", "b"], "relationships": [{"subject": 0, "predicate": "x", "object": 1, "tme": [0, 1]}]},
         "relationships[0].tme", [0, 1]),
    ],
)
def test_bad_graphs_name_field_and_value(graph, field, value):
    err = _error(graph)
    assert err.field == field
    assert err.value == value
    assert field in str(err)


def test_unknown_names_suggest_closest_known_ones():
    err = _error({"objects": ["red circle", "blue sqare"], "relationships": [[0, "left of", 1]]}, vocab=VOCAB)
    assert (err.field, err.index, err.value) == ("objects[1].name", 1, "blue sqare")
    assert "'blue square'" in str(err)
    err = _error({"objects": ["red circle", "blue square"], "relationships": [[0, "abov", 1]]}, vocab=VOCAB)
    assert (err.field, err.value) == ("relationships[0].predicate", "abov")
    assert "'above'" in str(err)
    # The special entries of the vocabulary are not user names.
    assert _error({"objects": ["__image__"]}, vocab=VOCAB).field == "objects[0].name"


def test_size_limits():
    graph = {"objects": ["red circle", "blue square", "green triangle"], "relationships": [[0, "left of", 1]] * 3}
    assert _error(graph, max_objects=2).field == "objects"
    assert _error(graph, max_triples=2).field == "relationships"
    assert len(parse_scene_graph(graph, max_objects=3, max_triples=3).relationships) == 3


def test_errors_in_lists_and_files_are_located(tmp_path):
    err = _error([CANONICAL, {"objects": ["red circle", "blue square"], "relationships": [[0, "left of", 5]]}])
    assert err.field == "scene_graph[1].relationships[0][2]"
    bad = tmp_path / "bad.json"
    bad.write_text('{"objects": ["red circle",]}')
    assert _error(bad).field == str(bad)
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_text(json.dumps(CANONICAL) + "\n{oops\n")
    err = _error(jsonl)
    assert err.field == f"{jsonl}:2" and err.index == 2
    assert _error(str(tmp_path / "missing.json")).field == "scene_graph"
    assert _error("{not json").field == "scene_graph"
    assert _error(42).field == "scene_graph"
    assert _error([]).field == "scene_graph"


def test_scene_graph_objects_pass_through():
    graph = parse_scene_graph(CANONICAL)
    assert isinstance(graph, SceneGraph)
    assert parse_scene_graph(graph) is graph
    with pytest.raises(SceneGraphError):
        parse_scene_graph(graph, vocab=Vocabulary.from_names(["red circle"], ["left of"]))
