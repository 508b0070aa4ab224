"""The ``sg2vid`` command line.

    sg2vid make-dataset --output DIR --split train --num-clips 1000 [--num-frames 16] [--seed 0]
    sg2vid evaluate --data DIR [--json]
    sg2vid evaluate --scene-graph G.json --video V.mp4 [--json]
    sg2vid render --scene-graph G.json --output V.{mp4,gif,npy} [--seed 0] [--num-frames 16]

``render`` draws an SG-Shapes clip that obeys the graph by search (no model): the exact
reference for what a generated video should look like.

Bad input (a malformed graph, an unknown name, a bad metadata line) prints one ``error:`` line
naming the field, index and value, exits with status 2 and writes nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from .scene_graph import SceneGraphError, parse_scene_graph

EXIT_BAD_INPUT = 2


def _add_make_dataset(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("make-dataset", help="render an SG-Shapes split into a metadata.jsonl folder")
    p.add_argument("--output", required=True, type=Path, help="folder to create")
    p.add_argument("--split", choices=["train", "validation", "test"], default="train")
    p.add_argument("--num-clips", type=int, required=True)
    p.add_argument("--num-frames", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", choices=["mp4", "gif", "npy"], default="mp4", help="clip file format (default mp4)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing, non-empty folder")
    p.set_defaults(func=_make_dataset)


def _make_dataset(args: argparse.Namespace) -> int:
    from .data.video_folder import make_sg_shapes_dataset

    if args.num_clips < 1 or args.num_frames < 2:
        raise _UsageError("--num-clips must be >= 1 and --num-frames >= 2")
    out = make_sg_shapes_dataset(
        args.output, args.split, args.num_clips, args.num_frames, args.seed, args.format, args.overwrite
    )
    print(f"wrote {args.num_clips} {args.split} clips to {out}")
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="score videos against their scene graphs (SG-Shapes conformance)")
    p.add_argument("--data", type=Path, help="a metadata.jsonl folder (as make-dataset or generate --output-dir write)")
    p.add_argument("--scene-graph", help="one scene graph (JSON file or text), with --video")
    p.add_argument("--video", type=Path, help="one video (.mp4, .gif or .npy), with --scene-graph")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(func=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    from .evaluation.conformance import score_video, summarize
    from .video_io import read_video

    if (args.data is None) == (args.scene_graph is None and args.video is None):
        raise _UsageError("give either --data DIR, or --scene-graph G.json with --video V")
    if args.data is not None:
        from tqdm.auto import tqdm

        from .data.sg_shapes import check_sg_shapes_graph
        from .data.video_folder import MetadataError, SceneGraphVideoFolder

        folder = SceneGraphVideoFolder(args.data)
        for record in folder:  # every graph checked before any video is read
            try:
                check_sg_shapes_graph(record.scene_graph)
            except SceneGraphError as err:
                raise MetadataError(args.data / "metadata.jsonl", record.line_no, f"scene_graph.{err.field}", str(err))
        scores = [score_video(r.read_frames(), r.scene_graph) for r in tqdm(folder, desc="scoring", unit="clip")]
    else:
        if args.scene_graph is None or args.video is None:
            raise _UsageError("--scene-graph and --video go together")
        graph = parse_scene_graph(args.scene_graph)
        from .data.sg_shapes import check_sg_shapes_graph

        check_sg_shapes_graph(graph)
        scores = [score_video(read_video(args.video), graph)]
    report = summarize(scores)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format_table())
    return 0


def _add_render(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("render", help="draw an SG-Shapes clip that obeys a scene graph (search, no model)")
    p.add_argument("--scene-graph", required=True, help="scene graph JSON file (or JSON text)")
    p.add_argument("--output", required=True, type=Path, help="video file: .mp4, .gif or .npy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-frames", type=int, default=16)
    p.set_defaults(func=_render)


def _render(args: argparse.Namespace) -> int:
    from .data.sg_shapes import check_sg_shapes_graph, sample_clip_for_graph
    from .video_io import VIDEO_EXTENSIONS, write_video

    if args.output.suffix.lower() not in VIDEO_EXTENSIONS:
        raise _UsageError(f"--output must end in one of {', '.join(VIDEO_EXTENSIONS)}, got {args.output.name!r}")
    graph = parse_scene_graph(args.scene_graph)
    check_sg_shapes_graph(graph)
    clip = sample_clip_for_graph(graph, num_frames=args.num_frames, seed=args.seed)
    write_video(args.output, clip.render())
    print(f"wrote {args.output} ({args.num_frames} frames): {graph}")
    return 0


class _UsageError(ValueError):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sg2vid", description="Video generation from scene graphs.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_make_dataset(sub)
    _add_evaluate(sub)
    _add_render(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as err:
        # SceneGraphError, MetadataError and VideoIOError are ValueErrors with a full message.
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
