"""Readers of the public corpora, each on a tiny fixture in its published format
(``tests/corpora_fixtures.py``): graphs, boxes and frames as published, the format's quirks,
errors that name the file, record and field, unknown categories counted, the Hugging Face views and
the batches the training scripts collate."""

import json
import os
import pickle
import re
import shutil
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpora_fixtures as fx  # noqa: E402

from sg2vid_diffusers import (
    Relationship,
    SceneGraph,
    SceneObject,
    Vocabulary,
    active_triples,
    parse_scene_graph,
)  # noqa: E402
from sg2vid_diffusers.data.corpora import (  # noqa: E402
    CORPUS_FORMATS,
    CorpusError,
    VideoAnnotation,
    build_vocabulary,
    clip_starts,
    geometric_predicate,
    load_corpus,
    load_pickle,
    make_clip,
    merge_intervals,
)
from sg2vid_diffusers.data.corpora.__main__ import main as corpora_cli  # noqa: E402
from sg2vid_diffusers.data.corpora.common import TemporalRelation  # noqa: E402
from sg2vid_diffusers.pretraining import collate_pretraining_examples  # noqa: E402


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """All five corpora, written once."""
    base = tmp_path_factory.mktemp("corpora")
    fx.write_visual_genome(base / "vg")
    fx.write_coco_stuff(base / "coco")
    fx.write_action_genome(base / "ag")
    fx.write_vidvrd(base / "vidvrd-dataset")
    fx.write_vidor(base / "vidor-dataset")
    return base


def copy_corpus(root, name, tmp_path) -> Path:
    return Path(shutil.copytree(root / name, tmp_path / name))


def graph_triples(graph: SceneGraph) -> list[tuple]:
    names = graph.object_names
    return [(names[r.subject], r.predicate, names[r.object], r.time) for r in graph.relationships]


# ----------------------------------------------------------------------------- clips


def test_merge_intervals_joins_touching_and_overlapping_segments():
    assert merge_intervals([(30, 60), (0, 30), (45, 75), (90, 120)]) == [(0, 75), (90, 120)]
    assert merge_intervals([(0, 4), (5, 9)]) == [(0, 4), (5, 9)]  # a gap: two instances


def test_clip_starts_are_non_overlapping_windows():
    assert clip_starts(12, num_frames=4, frame_stride=1) == [0, 4, 8]
    assert clip_starts(12, num_frames=4, frame_stride=2) == [0]  # frames 0, 2, 4, 6; the next would need 14
    assert clip_starts(6, num_frames=4, frame_stride=2) == []  # too short for one clip
    assert clip_starts(1, num_frames=8, frame_stride=3, still=True) == [0]


def test_a_clip_keeps_what_it_covers_and_its_spans_select_the_right_frames():
    nan = [np.nan] * 4
    boxes = np.array([[[0.1, 0.1, 0.2, 0.2], nan, nan]] * 10, dtype=np.float32)  # (10 frames, 3 objects, 4)
    boxes[5, 1] = (0.5, 0.5, 0.6, 0.6)  # object 1 has a box in frame 5 only
    video = VideoAnnotation(
        key="v", source=Path("v.mp4"), frame_ids=list(range(10)), frame_numbers=list(range(10)),
        object_names=["dog", "ball", "cat"], boxes=boxes,
        relations=[TemporalRelation(0, "chase", 1, 3, 7),  # frames 3..6
                   TemporalRelation(0, "near", 2, 8, 10)],  # after the clip
    )  # fmt: skip
    clip = make_clip(video, start=1, num_frames=4, frame_stride=2)  # frames 1, 3, 5, 7
    assert clip.positions == [1, 3, 5, 7]
    # The cat is neither in the clip nor in a kept triple: dropped.
    assert clip.scene_graph == SceneGraph(
        (SceneObject("dog"), SceneObject("ball")), (Relationship(0, "chase", 1, (0.25, 0.75)),)
    )
    expected = torch.tensor([[3 <= p < 7] for p in clip.positions])
    assert torch.equal(active_triples([clip.scene_graph.relationships[0].span], 4), expected)
    assert clip.boxes.shape == (4, 2, 4)
    np.testing.assert_allclose(
        clip.boxes[:, 1], [[0] * 4, [0] * 4, [0.5, 0.5, 0.6, 0.6], [0] * 4], rtol=1e-6
    )  # 0: no box
    assert make_clip(video, start=8, num_frames=2, frame_stride=1).scene_graph.relationships[0].time is None


# ----------------------------------------------------------------------------- Visual Genome


def test_visual_genome_reads_the_sg2im_h5_layout_with_sgdiff_indices(root):
    corpus = load_corpus("visual_genome_h5", root / "vg", "train", resolution=32)
    assert len(corpus) == 2 and corpus.num_frames == 1
    assert corpus.vocab == Vocabulary.from_dict(fx.vg_vocab_json())  # vocab.json, attribute tables kept

    example = corpus[0]
    graph = example.scene_graph
    assert graph.object_names == ["man", "horse", "shirt", "tree"]
    assert graph.objects[0].box == pytest.approx((8 / 64, 4 / 48, 24 / 64, 36 / 48))  # x, y, w, h over 64 x 48
    assert graph_triples(graph) == [("man", "riding", "horse", None), ("man", "wearing", "shirt", None)]
    assert example.frames.shape == (1, 32, 32, 3) and example.frames.dtype == np.uint8
    assert np.abs(example.frames[0, 16, 16].astype(int) - (40, 215, 128)).max() <= 4  # the JPEG's colour
    np.testing.assert_allclose(example.boxes[0], [o.box for o in graph.objects], rtol=1e-6)
    # Duplicate triples are kept, as SGDiff keeps them.
    assert graph_triples(corpus[1].scene_graph).count(("man", "near", "tree", None)) == 2

    # The batch carries the h5's own indices: a converted SGDiff encoder reads it unchanged.
    batch = collate_pretraining_examples([corpus[0], corpus[1]], corpus.vocab)
    arrays = fx.vg_arrays()
    assert batch.graphs.objs.tolist() == [*arrays["object_names"][0, :4], 0, *arrays["object_names"][1, :3], 0]
    assert batch.graphs.triples[:2, 1].tolist() == arrays["relationship_predicates"][0, :2].tolist()
    assert batch.videos.shape == (2, 1, 3, 32, 32)


def test_visual_genome_still_clips_and_object_cap(root):
    corpus = load_corpus("visual_genome_h5", root / "vg", "train", num_frames=3, resolution=8, max_objects=2)
    example = corpus[0]
    assert example.frames.shape == (3, 8, 8, 3) and (example.frames == example.frames[0]).all()
    assert example.boxes.shape == (3, 2, 4)
    assert example.scene_graph.object_names == ["man", "horse"]  # objects in relationships come first
    assert graph_triples(example.scene_graph) == [("man", "riding", "horse", None)]
    assert len(load_corpus("visual_genome_h5", root / "vg", "val")) == 1


def vg_with_changes(tmp_path, root, change) -> Path:
    """A copy of the Visual Genome fixture whose train.h5 has ``{(dataset, index): value}`` changed."""
    folder = copy_corpus(root, "vg", tmp_path)
    arrays = fx.vg_arrays()
    for (name, index), value in change.items():
        arrays[name][index] = value
    fx.write_vg_h5(folder / "train.h5", arrays, [image[1] for image in fx.VG_IMAGES])
    return folder


@pytest.mark.parametrize(
    "dataset, index, value, reason",
    [
        ("relationship_subjects", (0, 1), 7, "7 is not a valid object position"),
        ("relationship_subjects", (1, 2), -1, "-1 is padding, but this entry is within the count"),
        ("object_names", (0, 4), 3, "3 past objects_per_image.0. = 4, where the row must be -1 padding"),
        ("object_names", (1, 0), 99, "99 is not a valid object index"),
        ("objects_per_image", (1,), 31, "31 is outside 0..30"),
    ],
)
def test_visual_genome_bad_records_name_file_record_and_field(tmp_path, root, dataset, index, value, reason):
    corpus = load_corpus("visual_genome_h5", vg_with_changes(tmp_path, root, {(dataset, index): value}))
    with pytest.raises(CorpusError, match=reason) as info:
        len(corpus)
    image = index[0]
    assert info.value.path.name == "train.h5"
    assert info.value.record == f"image {image} (image_id {fx.VG_IMAGES[image][0]})"
    assert info.value.field == f"{dataset}[{', '.join(map(str, index))}]"


def test_visual_genome_damaged_files_fail_with_the_file(tmp_path, root):
    folder = copy_corpus(root, "vg", tmp_path)
    data = (folder / "train.h5").read_bytes()
    (folder / "train.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorpusError, match="cannot be read as HDF5") as info:
        load_corpus("visual_genome_h5", folder)
    assert info.value.path == folder / "train.h5"

    import h5py

    with h5py.File(folder / "train.h5", "w") as f:
        f.create_dataset("objects_per_image", data=np.zeros(2, dtype=np.int32))
    with pytest.raises(CorpusError, match="image_paths: missing dataset"):
        load_corpus("visual_genome_h5", folder)


def test_visual_genome_unknown_names_are_counted_never_mapped(root):
    vocab = Vocabulary.from_names(["man", "horse", "tree", "grass"], ["riding", "near", "in front of"])
    corpus = load_corpus("visual_genome_h5", root / "vg", vocab=vocab)
    assert len(corpus) == 2
    assert corpus.report.unknown_objects == Counter({"shirt": 1})
    assert corpus.report.unknown_predicates == Counter({"wearing": 1})
    assert graph_triples(corpus[0].scene_graph) == [("man", "riding", "horse", None)]
    assert "shirt" in str(corpus.report)
    with pytest.raises(CorpusError, match="unknown object category 'shirt'") as info:
        len(load_corpus("visual_genome_h5", root / "vg", vocab=vocab, on_unknown="error"))
    assert info.value.field == "object_names[0, 2]"


# ----------------------------------------------------------------------------- COCO-Stuff


def test_geometric_predicates_follow_sg2im():
    centre = (0.4, 0.4, 0.6, 0.6)
    assert geometric_predicate((0.1, 0.1, 0.9, 0.9), centre) == "surrounding"
    assert geometric_predicate(centre, (0.1, 0.1, 0.9, 0.9)) == "inside"
    assert geometric_predicate((0.0, 0.4, 0.2, 0.6), centre) == "left of"
    assert geometric_predicate((0.8, 0.4, 1.0, 0.6), centre) == "right of"
    assert geometric_predicate((0.4, 0.0, 0.6, 0.2), centre) == "above"  # y grows downwards
    assert geometric_predicate((0.4, 0.8, 0.6, 1.0), centre) == "below"


def test_coco_stuff_objects_filters_and_relations(root):
    corpus = load_corpus("coco_stuff", root / "coco", "train", resolution=16)
    assert len(corpus) == 2  # image 42 has 2 objects, image 30 no stuff annotation
    assert corpus.report.dropped == Counter(
        {"images with fewer than 3 objects": 1, "images without stuff annotations": 1}
    )
    example = corpus[0]
    graph = example.scene_graph
    # Instances then stuff, as sg2im; the tiny bicycle and the "other" stuff are filtered out.
    assert graph.object_names == ["person", "dog", "sky-other", "grass"]
    assert graph.objects[0].box == pytest.approx((10.5 / 80, 8 / 60, 30.5 / 80, 48 / 60))
    assert len(graph.relationships) == 4  # one per object
    for rel in graph.relationships:
        assert rel.predicate == geometric_predicate(graph.objects[rel.subject].box, graph.objects[rel.object].box)
        assert rel.time is None
    assert load_corpus("coco_stuff", root / "coco")[0].scene_graph == graph  # seeded: always the same graph

    vocab = corpus.vocab  # sg2im's: index = COCO category id
    assert (vocab.num_objects, vocab.num_predicates) == (184, 7)
    assert vocab.object_index("dog") == 18 and vocab.object_idx_to_name[3] == "NONE"
    assert vocab.pred_idx_to_name == ["__in_image__", "left of", "right of", "above", "below", "inside", "surrounding"]
    assert "other" in load_corpus("coco_stuff", root / "coco", include_other=True)[0].scene_graph.object_names


def test_coco_stuff_bad_files_and_unknown_ids(tmp_path, root):
    folder = copy_corpus(root, "coco", tmp_path)
    instances = folder / "annotations" / "instances_train2017.json"
    text = instances.read_text()
    instances.write_text(text[: len(text) - 40])
    with pytest.raises(CorpusError, match="not valid JSON at line 1, column .*truncated") as info:
        load_corpus("coco_stuff", folder)
    assert info.value.path == instances

    fx.write_coco_stuff(folder)
    data = json.loads(instances.read_text())
    data["annotations"][1]["bbox"] = [40.0, 30.0, 30.0]
    instances.write_text(json.dumps(data))
    with pytest.raises(CorpusError, match="expected 4 finite numbers") as info:
        load_corpus("coco_stuff", folder)
    assert (info.value.record, info.value.field) == ("annotations[1] (id 901)", "bbox")

    fx.write_coco_stuff(folder, instances=[*fx.COCO_INSTANCES, (9, 999, (1.0, 1.0, 30.0, 30.0))])
    corpus = load_corpus("coco_stuff", folder)
    assert corpus.report.unknown_objects == Counter({"category_id 999": 1})
    assert corpus[0].scene_graph.object_names == ["person", "dog", "sky-other", "grass"]


# ----------------------------------------------------------------------------- Action Genome


class Smuggled:
    pass


def test_annotation_pickles_admit_only_containers_and_numpy(tmp_path):
    marker = tmp_path / "ran"

    class RunsACommand:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    for payload, name in ((RunsACommand(), "system"), (Smuggled(), "Smuggled"), (Counter(a=1), "Counter")):
        path = tmp_path / "refused.pkl"
        path.write_bytes(pickle.dumps({"VIDEO.mp4/000001.png": [payload]}))
        with pytest.raises(CorpusError, match=f"refused to load .*{name}: only plain containers and numpy arrays"):
            load_pickle(path)
    assert not marker.exists()

    data = {"a": [np.zeros((2, 4), np.float32), (1.5, None, True)], "b": {np.float32(0.5), "x"}, "c": np.int64(3)}
    for protocol in (2, 4, 5):
        path = tmp_path / f"p{protocol}.pkl"
        path.write_bytes(pickle.dumps(data, protocol=protocol))
        loaded = load_pickle(path)
        np.testing.assert_array_equal(loaded["a"][0], data["a"][0])
        assert loaded["a"][1] == (1.5, None, True) and loaded["c"] == 3

    path.write_bytes(pickle.dumps(data)[:-20])
    with pytest.raises(CorpusError, match="damaged or truncated pickle"):
        load_pickle(path)


def test_action_genome_keyframe_clips_with_dynamic_relations(root):
    corpus = load_corpus("action_genome", root / "ag", "train", num_frames=4, resolution=None)
    # The txt lists' spellings become the pickles'; index i is Action Genome's class i.
    assert corpus.vocab.object_idx_to_name[9] == "closet/cabinet" and corpus.vocab.object_index("person") == 1
    assert corpus.vocab.predicate_index("in_front_of") == 6 and corpus.vocab.num_predicates == 27
    assert len(corpus) == 1  # 0A8CF.mp4 has 2 keyframes
    assert corpus.report.dropped == Counter({"videos shorter than a clip of 4 frames": 1})
    assert corpus.report.unknown_objects == Counter({"unicorn": 1})

    example = corpus[0]
    graph = example.scene_graph
    assert graph.object_names == ["person", "table", "cup/glass/bottle"]
    assert graph_triples(graph) == [
        ("person", "looking at", "table", (0.0, 0.5)),
        ("person", "in front of", "table", None),
        ("person", "not contacting", "table", None),
        ("person", "unsure", "cup/glass/bottle", (0.0, 0.5)),
        ("person", "in front of", "cup/glass/bottle", (0.0, 0.5)),
        ("person", "holding", "cup/glass/bottle", (0.0, 0.5)),
        ("person", "touching", "cup/glass/bottle", (0.0, 0.5)),
        ("person", "not looking at", "table", (0.5, 1.0)),
    ]
    w, h = fx.AG_FRAME_SIZE
    np.testing.assert_allclose(example.boxes[0, 0], (4 / w, 2 / h, 20 / w, 34 / h), rtol=1e-6)  # x0, y0, x1, y1
    np.testing.assert_allclose(example.boxes[0, 1], (24 / w, 18 / h, 44 / w, 30 / h), rtol=1e-6)  # x, y, w, h
    assert (example.boxes[2, 0] == 0).all()  # no person detected in keyframe 3
    assert (example.boxes[2:, 2] == 0).all()  # the cup is out of view: bbox None
    assert example.frames.shape == (4, h, w, 3)
    assert example.frames[:, 0, 0, 0].tolist() == [12, 45, 78, 110]  # keyframes 000012.png ...

    short = load_corpus("action_genome", root / "ag", "train", num_frames=2, frame_stride=1, resolution=None)
    sofa = next(short[i] for i in range(len(short)) if "sofa/couch" in short[i].scene_graph.object_names)
    np.testing.assert_allclose(sofa.boxes[0, 0], (2 / w, 2 / h, 40 / w, 34 / h), rtol=1e-6)  # best-scoring person
    assert load_corpus("action_genome", root / "ag", "test", num_frames=3).video_keys() == ["7QX2M.mp4"]


def test_action_genome_bad_records(tmp_path, root):
    folder = copy_corpus(root, "ag", tmp_path)
    path = folder / "annotations" / "object_bbox_and_relationship.pkl"
    objects, _ = fx.action_genome_annotations()
    del objects["50N4E.mp4/000045.png"][1]["visible"]
    path.write_bytes(pickle.dumps(objects))
    with pytest.raises(CorpusError, match="missing") as info:
        len(load_corpus("action_genome", folder))
    assert (info.value.path, info.value.record, info.value.field) == (path, "50N4E.mp4/000045.png", "[1].visible")

    objects, _ = fx.action_genome_annotations()
    objects["50N4E.mp4/000045.png"][0]["bbox"] = (1.0, 2.0)
    path.write_bytes(pickle.dumps(objects))
    with pytest.raises(CorpusError, match=r"\[0\]\.bbox: expected 4 finite numbers"):
        len(load_corpus("action_genome", folder))

    objects["50N4E.mp4/45"] = objects.pop("50N4E.mp4/000045.png")
    path.write_bytes(pickle.dumps(objects))
    with pytest.raises(CorpusError, match="expected a frame key 'VIDEO.mp4/000123.png'"):
        load_corpus("action_genome", folder)


# ----------------------------------------------------------------------------- VidVRD / VidOR


def test_vidvrd_merges_split_segments_and_maps_spans_into_clips(root):
    corpus = load_corpus("vidvrd", root / "vidvrd-dataset", "train", num_frames=4, frame_stride=1, resolution=None)
    video = corpus.load_video("ILSVRC2015_train_00005003")
    assert [(r.predicate, r.begin, r.end) for r in video.relations] == [
        ("chase", 0, 9),  # [0, 4) + [4, 8) + [6, 9)
        ("in front of", 2, 5),
        ("in front of", 7, 9),
        ("bite", 10, 12),
    ]
    assert corpus.vocab.object_idx_to_name == ["__image__", "ball", "dog", "frisbee"]
    assert [corpus.clip(i).start for i in range(len(corpus))] == [0, 4, 8]

    second = corpus[1]  # frames 4, 5, 6, 7: end_fid is exclusive, so [2, 5) covers only frame 4
    assert graph_triples(second.scene_graph) == [
        ("dog", "chase", "ball", None),
        ("ball", "in front of", "dog", (0.0, 0.25)),
        ("ball", "in front of", "dog", (0.75, 1.0)),
    ]
    assert second.frames[:, 0, 0, 0].tolist() == [fx.frame_value(f) for f in (4, 5, 6, 7)]
    w, h = fx.VIDEO_SIZE
    np.testing.assert_allclose(
        second.boxes[:, 0], [(f / w, 2 / h, (f + 10) / w, 12 / h) for f in (4, 5, 6, 7)], rtol=1e-6
    )
    assert (second.boxes[1, 1] == 0).all()  # the ball has no box in frame 5

    last = corpus[2]  # frames 8..11: the dog is missing in frame 9 (an empty box list)
    assert graph_triples(last.scene_graph) == [
        ("dog", "chase", "ball", (0.0, 0.25)),
        ("ball", "in front of", "dog", (0.0, 0.25)),
        ("dog", "bite", "frisbee", (0.5, 1.0)),
    ]
    assert (last.boxes[1, 0] == 0).all()


def test_vidor_layout_and_splits(root):
    corpus = load_corpus("vidor", root / "vidor-dataset", "val", num_frames=6, frame_stride=2, resolution=(12, 16))
    assert corpus.video_keys() == ["4164158586"]
    assert len(corpus) == 1  # frames 0, 2, ..., 10
    example = corpus[0]
    assert example.frames.shape == (6, 12, 16, 3)
    assert example.frames[:, 0, 0, 0].tolist() == [fx.frame_value(f) for f in range(0, 12, 2)]
    assert corpus.vocab.object_idx_to_name == ["__image__", "ball", "dog", "frisbee"]  # from the training split


def test_video_relation_bad_files_and_unknown_names(tmp_path, root):
    folder = copy_corpus(root, "vidvrd-dataset", tmp_path)
    path = folder / "train" / "ILSVRC2015_train_00005003.json"
    data = fx.video_relation_annotation("ILSVRC2015_train_00005003")
    data["relation_instances"][4]["end_fid"] = 13
    path.write_text(json.dumps(data))
    with pytest.raises(CorpusError, match=r"\[7, 13\) is not a frame range inside 0..12") as info:
        len(load_corpus("vidvrd", folder, vocab=build_vocabulary("vidvrd", root / "vidvrd-dataset")))
    assert (info.value.path, info.value.record, info.value.field) == (path, "relation_instances[4]", "end_fid")

    data = fx.video_relation_annotation("ILSVRC2015_train_00005003")
    del data["trajectories"][-1]
    path.write_text(json.dumps(data))
    with pytest.raises(CorpusError, match="11 frames, but frame_count is 12"):
        len(load_corpus("vidvrd", folder))

    path.write_text(json.dumps(fx.video_relation_annotation("ILSVRC2015_train_00005003"))[:-100])
    with pytest.raises(CorpusError, match="not valid JSON"):
        load_corpus("vidvrd", folder)  # the default vocabulary reads the training files

    path.write_text(json.dumps(fx.video_relation_annotation("ILSVRC2015_train_00005003")))
    vocab = Vocabulary.from_names(["dog", "ball"], ["chase", "in front of", "bite"])
    corpus = load_corpus("vidvrd", folder, vocab=vocab, num_frames=4)
    assert len(corpus) == 3
    assert corpus.report.unknown_objects == Counter({"frisbee": 1})
    assert corpus.report.dropped["relations of unknown objects"] == 1
    assert graph_triples(corpus[2].scene_graph) == [
        ("dog", "chase", "ball", (0.0, 0.25)),
        ("ball", "in front of", "dog", (0.0, 0.25)),
    ]


# ----------------------------------------------------------------------------- the two views


@pytest.mark.parametrize("dataset_format, folder, options", [
    ("visual_genome_h5", "vg", {}),
    ("coco_stuff", "coco", {}),
    ("action_genome", "ag", {"num_frames": 2}),
    ("vidvrd", "vidvrd-dataset", {"num_frames": 4, "frame_stride": 2}),
    ("vidor", "vidor-dataset", {"num_frames": 4}),
])  # fmt: skip
def test_hf_views_and_training_batches_agree(root, dataset_format, folder, options):
    corpus = load_corpus(dataset_format, root / folder, resolution=16, **options)
    rows = corpus.to_hf_dataset()
    assert len(rows) == len(corpus) >= 1
    for i, row in enumerate(rows):
        example = corpus[i]
        assert parse_scene_graph(row["scene_graph"], vocab=corpus.vocab) == example.scene_graph
        np.testing.assert_allclose(np.asarray(row["boxes"]), example.boxes, rtol=1e-6)
        assert (root / folder / row["file_name"]).exists()
    streamed = next(iter(corpus.to_hf_dataset(streaming=True, with_frames=True)))
    np.testing.assert_array_equal(np.asarray(streamed["frames"]), corpus[0].frames)

    # What the training scripts do: a DataLoader (the dataset pickles for worker processes) + collate.
    clone = pickle.loads(pickle.dumps(corpus))
    examples = [clone[i] for i in range(min(2, len(clone)))]
    batch = collate_pretraining_examples(examples, corpus.vocab)
    assert batch.videos.shape == (len(examples), corpus.num_frames, 3, 16, 16)
    assert batch.maskable.sum() == sum(len(ex.scene_graph.objects) for ex in examples)


def test_load_corpus_and_vocabulary_files(root, tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown dataset format 'kinetics'; expected one of: visual_genome_h5"):
        load_corpus("kinetics", root)
    assert set(CORPUS_FORMATS) == {"visual_genome_h5", "coco_stuff", "action_genome", "vidvrd", "vidor"}
    for dataset_format, folder in (("coco_stuff", "coco"), ("action_genome", "ag"), ("vidvrd", "vidvrd-dataset")):
        path = tmp_path / f"{dataset_format}.json"
        build_vocabulary(dataset_format, root / folder, output=path)
        saved = json.loads(path.read_text())
        assert saved["object_idx_to_name"][0] == "__image__" and saved["pred_idx_to_name"][0] == "__in_image__"
        assert set(saved) >= {"object_name_to_idx", "pred_name_to_idx"}
        assert Vocabulary.load(path) == load_corpus(dataset_format, root / folder).vocab

    assert (
        corpora_cli(
            [
                "vocab",
                "--dataset_format",
                "vidor",
                "--data_dir",
                str(root / "vidor-dataset"),
                "--output",
                str(tmp_path / "v.json"),
            ]
        )
        == 0
    )
    assert (
        corpora_cli(["check", "--dataset_format", "action_genome", "--data_dir", str(root / "ag"), "--num_frames", "2"])
        == 0
    )
    out = capsys.readouterr().out
    assert "4 objects, 4 predicates" in out and "3 clips of 2 frames" in out and "'unicorn': 1" in out
    assert corpora_cli(["check", "--dataset_format", "vidvrd", "--data_dir", str(tmp_path)]) == 1


def test_the_python_example_of_docs_corpora_md_runs(root, tmp_path, monkeypatch):
    text = (Path(__file__).resolve().parents[1] / "docs" / "corpora.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    shutil.copytree(root / "vidvrd-dataset", tmp_path / "data" / "vidvrd-dataset")
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(code, scope)
    assert scope["example"].frames.shape == (8, 256, 256, 3)
    assert len(scope["rows"]) == len(scope["corpus"]) == 1
    assert next(iter(scope["stream"]))["frames"].shape == (8, 256, 256, 3)
