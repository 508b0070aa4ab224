#!/usr/bin/env python
"""The graph or the seed: folders of videos generated from the same graphs with different seeds
(``sg2vid generate --seed S``), compared graph by graph. A failure every seed repeats is the model's
answer to that graph; one that comes and goes is luck. The best video of each graph by the
conformance metric itself is the ceiling of any way of choosing among the seeds (a reranker, more
candidates): no selection can score above it.

    python training/seed_diagnostics.py --data runs/win/generated runs/seed1000 runs/seed2000
"""

import argparse
import json
from pathlib import Path

FIGURES = ("object_recall", "relation_accuracy", "timed_relation_accuracy", "graph_accuracy", "shape_accuracy",
           "spurious_per_video")  # fmt: skip


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, nargs="+", required=True,
                   help="two or more folders of videos of the same graphs, in the same order (sg2vid generate "
                        "--output-dir, one --seed each)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    return p.parse_args(argv)


def seed_agreement(folders) -> dict:
    """Compare :class:`SceneGraphVideoFolder` s of the same graphs (N >= 2 of them).

    Returns:
        ``folders``: each folder's conformance figures; ``graphs_satisfied``, ``triples_held`` and
        ``objects_drawn``: lists of N + 1 counts, how many graphs (every triple holding), triples and
        objects do so in exactly k of the N folders, k = 0 .. N; ``best_of``: the figures of each
        graph's best video (most triples holding, then most objects drawn, then fewest spurious ones;
        the first folder wins ties).
    """
    from sg2vid_diffusers.data.sg_shapes import check_sg_shapes_graph
    from sg2vid_diffusers.evaluation.conformance import _color_index, _drawn, detect_objects, score_detections, summarize

    folders = [list(folder) for folder in folders]
    if len(folders) < 2:
        raise ValueError(f"seed_agreement compares two or more folders, got {len(folders)}")
    lengths = {len(records) for records in folders}
    if len(lengths) != 1:
        raise ValueError(f"the folders hold different numbers of videos: {[len(r) for r in folders]}")
    for index, records in enumerate(zip(*folders)):
        graphs = {json.dumps(record.scene_graph.to_json(), sort_keys=True) for record in records}
        if len(graphs) != 1:
            raise ValueError(f"video {index} has a different graph in each folder: the folders must be generated "
                             "from the same graphs in the same order")  # fmt: skip
    scores, drawn = [], []  # per folder, per video: its score, and whether each of its objects is drawn
    for records in folders:
        scores.append([]), drawn.append([])
        for record in records:
            check_sg_shapes_graph(record.scene_graph)
            detections = detect_objects(record.read_frames())
            scores[-1].append(score_detections(detections, record.scene_graph))
            drawn[-1].append(_drawn(detections)[[_color_index(name) for name in record.scene_graph.object_names]])
    num = len(folders)
    graphs_satisfied, triples_held, objects_drawn = [0] * (num + 1), [0] * (num + 1), [0] * (num + 1)
    best = []
    for per_seed, drawn_per_seed in zip(zip(*scores), zip(*drawn)):
        graphs_satisfied[sum(score.all_satisfied for score in per_seed)] += 1
        for held in zip(*(score.triples for score in per_seed)):
            triples_held[sum(held)] += 1
        for times in sum(drawn_per_seed):  # each object: in how many folders it is drawn
            objects_drawn[int(times)] += 1
        best.append(max(per_seed, key=lambda s: (sum(s.triples), s.objects_detected, -s.spurious)))
    as_dict = lambda report: {name: getattr(report, name) for name in FIGURES}  # noqa: E731
    return {
        "folders": [as_dict(summarize(per_folder)) for per_folder in scores],
        "graphs_satisfied": graphs_satisfied,
        "triples_held": triples_held,
        "objects_drawn": objects_drawn,
        "best_of": as_dict(summarize(best)),
    }


def format_report(result: dict, names: list[str]) -> str:
    num = len(result["folders"])
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    lines = [f"{'videos':24}" + "".join(f"{name[:11]:>12}" for name in FIGURES)]
    for name, row in [*zip(names, result["folders"]), (f"best of {num}", result["best_of"])]:
        lines.append(f"{name[-24:]:24}" + "".join(f"{fmt(row[k]):>12}" for k in FIGURES))
    lines.append("")
    lines.append(f"{'in k of ' + str(num) + ' folders, k =':30}" + "".join(f"{k:>8}" for k in range(num + 1)))
    for key, what in (("graphs_satisfied", "graphs with every triple held"), ("triples_held", "triples held"),
                      ("objects_drawn", "objects drawn")):  # fmt: skip
        lines.append(f"{what:30}" + "".join(f"{n:>8}" for n in result[key]))
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    from sg2vid_diffusers.data.video_folder import SceneGraphVideoFolder

    result = seed_agreement([SceneGraphVideoFolder(folder) for folder in args.data])
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(format_report(result, [str(folder) for folder in args.data]))


if __name__ == "__main__":
    main()
