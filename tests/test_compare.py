"""Paired comparison of two folders of videos of the same graphs (``sg2vid evaluate --baseline``)."""

import json

import numpy as np
import pytest

from sg2vid_diffusers.cli import main
from sg2vid_diffusers.evaluation.compare import compare_scores
from sg2vid_diffusers.evaluation.conformance import VideoScore, summarize
from sg2vid_diffusers.video_io import read_video, write_video


def _score(rng: np.random.Generator, p: float) -> VideoScore:
    """A video of 3 objects and 2 triples (one timed), each satisfied with probability p."""
    triples = [bool(rng.random() < p) for _ in range(2)]
    return VideoScore(
        num_objects=3, objects_detected=int((rng.random(3) < p).sum()), triples=triples, timed=[False, True],
        predicates=["left of", "above"], shapes_checked=3, shapes_correct=int((rng.random(3) < p).sum()),
        spurious=int(rng.random() > p),
    )  # fmt: skip


def test_point_figures_are_summarize_figures():
    rng = np.random.default_rng(0)
    new, old = [_score(rng, 0.9) for _ in range(50)], [_score(rng, 0.6) for _ in range(50)]
    comparison = compare_scores(new, old, num_resamples=200)
    a, b = summarize(new), summarize(old)
    keys = ["object_recall", "relation_accuracy", "timed_relation_accuracy", "graph_accuracy", "shape_accuracy",
            "spurious_per_video"]  # fmt: skip
    for figure, key in zip(comparison.figures, keys, strict=True):
        assert figure.value == pytest.approx(getattr(a, key)) and figure.baseline == pytest.approx(getattr(b, key))
        assert figure.difference == pytest.approx(getattr(a, key) - getattr(b, key))
        assert figure.low <= figure.difference <= figure.high
    assert [f.figure for f in comparison.by_predicate] == list(a.by_predicate) == ["left of", "above"]
    for figure in comparison.by_predicate:
        assert figure.value == pytest.approx(a.by_predicate[figure.figure]["accuracy"])
        assert figure.baseline == pytest.approx(b.by_predicate[figure.figure]["accuracy"])


def test_identical_sets_differ_by_nothing():
    rng = np.random.default_rng(1)
    scores = [_score(rng, 0.7) for _ in range(30)]
    for figure in compare_scores(scores, list(scores), num_resamples=100).figures:
        assert figure.difference == 0 and figure.low == 0 and figure.high == 0 and not figure.resolved


def test_a_large_difference_is_resolved_and_a_small_sample_is_not():
    rng = np.random.default_rng(2)
    good, bad = [_score(rng, 0.95) for _ in range(200)], [_score(rng, 0.5) for _ in range(200)]
    recall = compare_scores(good, bad).figures[0]
    assert recall.resolved and recall.low > 0.3
    spurious = compare_scores(good, bad).figures[-1]
    assert spurious.resolved and spurious.high < 0 and not spurious.higher_is_better
    # Two sets from the same distribution: the interval holds 0 and is wider for fewer videos.
    a, b = [_score(rng, 0.8) for _ in range(400)], [_score(rng, 0.8) for _ in range(400)]
    wide, narrow = compare_scores(a[:40], b[:40]).figures[1], compare_scores(a, b).figures[1]
    assert narrow.low < 0 < narrow.high
    assert wide.high - wide.low > 2 * (narrow.high - narrow.low)


def test_the_interval_is_deterministic_per_seed_and_figures_without_counts_are_none():
    rng = np.random.default_rng(3)
    new, old = [_score(rng, 0.8) for _ in range(60)], [_score(rng, 0.7) for _ in range(60)]
    first, again = compare_scores(new, old, seed=4), compare_scores(new, old, seed=4)
    assert [(f.low, f.high) for f in first.figures] == [(f.low, f.high) for f in again.figures]
    assert [(f.low, f.high) for f in compare_scores(new, old, seed=5).figures] != [(f.low, f.high) for f in first.figures]
    untimed = [VideoScore(num_objects=1, objects_detected=1)] * 5
    timed = compare_scores(untimed, untimed).figures[2]
    assert timed.difference is None and not timed.resolved


@pytest.mark.parametrize(
    "kwargs, message",
    [({"num_resamples": 0}, "num_resamples"), ({"confidence": 1.0}, "confidence"), ({"confidence": 0}, "confidence")],
)
def test_bad_settings_are_refused(kwargs, message):
    scores = [VideoScore(num_objects=1, objects_detected=1)]
    with pytest.raises(ValueError, match=message):
        compare_scores(scores, scores, **kwargs)
    with pytest.raises(ValueError, match="same number of videos"):
        compare_scores(scores, scores * 2)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """The ground truth of 12 test graphs, and the same graphs with every other clip blanked."""
    root = tmp_path_factory.mktemp("pairs")
    truth = root / "truth"
    assert main(["make-dataset", "--output", str(truth), "--split", "test", "--num-clips", "12", "--seed", "5"]) == 0
    blanked = root / "blanked"
    (blanked / "clips").mkdir(parents=True)
    rows = [json.loads(line) for line in (truth / "metadata.jsonl").read_text().splitlines()]
    for i, row in enumerate(rows):
        video = read_video(truth / row["file_name"])
        write_video(blanked / row["file_name"], np.zeros_like(video) if i % 2 else video)
        del row["boxes"]  # a generated folder has none; pairing ignores them
    (blanked / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return truth, blanked


def rows_of(folder):
    return [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]


def predicates(row):
    return [rel["predicate"] for rel in row["scene_graph"]["relationships"]]


def test_cli_compares_two_folders(folders, capsys):
    truth, blanked = folders
    assert main(["evaluate", "--data", str(blanked), "--baseline", str(truth), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["num_videos"] == 12
    recall = report["figures"]["object recall"]
    assert recall["baseline"] == 1.0 and recall["value"] < 0.7 and recall["difference"] == recall["value"] - 1.0
    assert recall["resolved"] and recall["high"] < 0
    assert main(["evaluate", "--data", str(blanked), "--baseline", str(truth)]) == 0
    table = capsys.readouterr().out
    assert "12 paired videos" in table and "worse" in table and "relation accuracy per predicate" in table
    assert set(report["by_predicate"]) == {p for row in rows_of(truth) for p in predicates(row)}


def test_cli_refuses_folders_of_other_graphs(folders, tmp_path, capsys):
    truth, blanked = folders
    other = tmp_path / "other"
    assert main(["make-dataset", "--output", str(other), "--split", "test", "--num-clips", "12", "--seed", "6"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--data", str(blanked), "--baseline", str(other)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and f"{other / 'metadata.jsonl'}:1: scene_graph" in err
    fewer = tmp_path / "fewer"
    assert main(["make-dataset", "--output", str(fewer), "--split", "test", "--num-clips", "3", "--seed", "5"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--data", str(truth), "--baseline", str(fewer)]) == 2
    assert "12 videos and --baseline 3" in capsys.readouterr().err
    assert main(["evaluate", "--scene-graph", "{}", "--video", "v.mp4", "--baseline", str(truth)]) == 2
    assert "--baseline compares two folders" in capsys.readouterr().err
