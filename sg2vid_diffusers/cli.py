"""The ``sg2vid`` command line.

    sg2vid make-dataset --output DIR --split train --num-clips 1000 [--num-frames 16] [--seed 0]
    sg2vid evaluate --data DIR [--json]
    sg2vid evaluate --data DIR --baseline DIR2 [--json]   (paired: the same graphs, two models or settings)
    sg2vid evaluate --scene-graph G.json --video V.mp4 [--json]
    sg2vid render --scene-graph G.json --output V.{mp4,gif,npy} [--seed 0] [--num-frames 16]
    sg2vid generate --scene-graph G.json --output V.{mp4,gif,npy} [--model DIR] [--seed N]
        [--num-frames F] [--num-inference-steps S] [--guidance-scale X] [--motion-scale M]
        [--layout-scale L] [--preview P.png]
    sg2vid generate --scene-graph GRAPHS.jsonl --output-dir DIR [...]   (a make-dataset-style folder)

``render`` draws an SG-Shapes clip that obeys the graph by search (no model): the exact
reference for what a generated video should look like.

Bad input (a malformed graph, an unknown name, a bad metadata line) prints one ``error:`` line
naming the field, index and value, exits with status 2 and writes nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Sequence

from .scene_graph import SceneGraph, SceneGraphError, parse_scene_graph

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
    p.add_argument(
        "--baseline",
        type=Path,
        help="with --data: a second folder of videos of the same graphs in the same order (another model, or "
        "other settings, with the same seeds); prints both figures, the difference and its paired bootstrap interval",
    )
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(func=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    from .evaluation.conformance import score_video, summarize
    from .video_io import read_video

    if (args.data is None) == (args.scene_graph is None and args.video is None):
        raise _UsageError("give either --data DIR, or --scene-graph G.json with --video V")
    if args.baseline is not None and args.data is None:
        raise _UsageError("--baseline compares two folders: give it with --data DIR")
    if args.data is not None:
        folder = _checked_folder(args.data)
        if args.baseline is not None:
            return _compare(args, folder, _checked_folder(args.baseline))
        scores = _score_folder(folder, "scoring")
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


def _checked_folder(path: Path):
    """A metadata.jsonl folder whose every graph is an SG-Shapes graph (checked before any video is read)."""
    from .data.sg_shapes import check_sg_shapes_graph
    from .data.video_folder import MetadataError, SceneGraphVideoFolder

    folder = SceneGraphVideoFolder(path)
    for record in folder:
        try:
            check_sg_shapes_graph(record.scene_graph)
        except SceneGraphError as err:
            raise MetadataError(path / "metadata.jsonl", record.line_no, f"scene_graph.{err.field}", str(err))
    return folder


def _score_folder(folder, desc: str) -> list:
    from tqdm.auto import tqdm

    from .evaluation.conformance import score_video

    return [score_video(r.read_frames(), r.scene_graph) for r in tqdm(folder, desc=desc, unit="clip")]


def _compare(args: argparse.Namespace, folder, baseline) -> int:
    """``evaluate --data NEW --baseline OLD``: the two folders must hold the same graphs, line by line
    (boxes aside: a generated folder may drop them)."""
    from .data.video_folder import MetadataError
    from .evaluation.compare import compare_scores

    if len(folder) != len(baseline):
        raise _UsageError(
            f"--data has {len(folder)} videos and --baseline {len(baseline)}: a paired comparison needs "
            "videos of the same graphs in the same order"
        )
    for index, (ours, theirs) in enumerate(zip(folder, baseline)):
        if _graph_key(ours.scene_graph) != _graph_key(theirs.scene_graph):
            raise MetadataError(
                args.baseline / "metadata.jsonl", theirs.line_no, "scene_graph",
                f"differs from the graph of video {index} in {args.data / 'metadata.jsonl'} (line {ours.line_no}): "
                f"{theirs.scene_graph} against {ours.scene_graph}; a paired comparison needs the same graphs in "
                "the same order",
            )  # fmt: skip
    comparison = compare_scores(_score_folder(folder, "scoring --data"), _score_folder(baseline, "scoring --baseline"))
    print(json.dumps(comparison.to_dict(), indent=2) if args.json else comparison.format_table())
    return 0


def _graph_key(graph: SceneGraph) -> tuple:
    return tuple(obj.name for obj in graph.objects), graph.relationships


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


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate videos from scene graphs with a SceneGraphToVideoPipeline")
    p.add_argument("--scene-graph", required=True, help="a .json graph (or JSON text), or a .jsonl of graphs")
    p.add_argument("--output", type=Path, help="video file for one graph: .mp4, .gif or .npy")
    p.add_argument("--output-dir", type=Path, help="folder for a .jsonl of graphs (metadata.jsonl + clips)")
    p.add_argument("--model", help="pipeline folder (default: the built-in SG-Shapes model)")
    p.add_argument("--seed", type=int, default=0, help="video i of a .jsonl uses seed + i")
    p.add_argument("--num-frames", type=int, default=16)
    p.add_argument("--num-inference-steps", type=int, default=25)
    p.add_argument("--guidance-scale", type=float, default=None,
                   help="classifier-free guidance (default: the model's default_guidance_scale)")
    p.add_argument("--motion-scale", type=float, default=None,
                   help="a moving-layout model's motion, 0 (still) to 1 (as trained) and beyond "
                        "(default: the model's default_motion_scale)")
    p.add_argument("--layout-scale", type=float, default=None,
                   help="a layout-bias model's pull of each object to its inferred box, 1 = as trained "
                        "(default: the model's default_layout_scale)")
    p.add_argument("--eta", type=float, default=0.0,
                   help="DDIM's eta: 0 (the default) samples deterministically from the starting noise, 1 adds "
                        "noise at every step (drawn from each video's seed)")
    p.add_argument("--candidates", type=int, default=None,
                   help="videos sampled per graph, keeping the one the model finds its graph explains best "
                        "(default: the model's default_num_candidates)")
    p.add_argument("--batch-size", type=int, default=4, help="videos generated together (.jsonl)")
    p.add_argument("--preview", type=Path, help="also draw the graph beside a strip of frames (PNG), with --output")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output-dir")
    p.add_argument("--drop-graph", action="store_true", help="condition on the null graph (what the model does without the graph)")
    p.set_defaults(func=_generate)


def _generate(args: argparse.Namespace) -> int:
    from .scene_graph import parse_scene_graphs
    from .video_io import VIDEO_EXTENSIONS

    # 1. Arguments and graphs, before loading anything.
    if (args.output is None) == (args.output_dir is None):
        raise _UsageError("give exactly one of --output V.mp4 (one graph) or --output-dir DIR (a .jsonl of graphs)")
    if args.output is not None and args.output.suffix.lower() not in VIDEO_EXTENSIONS:
        raise _UsageError(f"--output must end in one of {', '.join(VIDEO_EXTENSIONS)}, got {args.output.name!r}")
    if args.preview is not None and args.output is None:
        raise _UsageError("--preview goes with --output (one graph)")
    if args.output_dir is not None and args.output_dir.exists() and any(args.output_dir.iterdir()) and not args.overwrite:
        raise _UsageError(f"{args.output_dir} exists and is not empty (pass --overwrite)")
    for name in ("num_frames", "num_inference_steps", "batch_size"):
        if getattr(args, name) < 1:
            raise _UsageError(f"--{name.replace('_', '-')} must be >= 1")
    if not (math.isfinite(args.eta) and args.eta >= 0):
        raise _UsageError(f"--eta must be a finite number >= 0, got {args.eta}")
    if args.candidates is not None and args.candidates < 1:
        raise _UsageError(f"--candidates must be >= 1, got {args.candidates}")
    if args.candidates not in (None, 1) and args.drop_graph:
        raise _UsageError("--candidates selects videos by their graph, and --drop-graph has none: leave one out")
    for flag, value, check, config_flag, what in _sampling_scales(args):
        try:  # the pipeline's rule, checked before loading anything
            check(value, True)
        except ValueError:
            raise _UsageError(f"{flag} must be a finite number >= 0, got {value}") from None
    graphs = parse_scene_graphs(args.scene_graph)
    if args.output is not None and len(graphs) != 1:
        raise _UsageError(f"--output takes one graph; {args.scene_graph} holds {len(graphs)} (use --output-dir)")

    # 2. The model, and every graph checked against it before any compute.
    import torch

    from .pipelines import SceneGraphToVideoPipeline

    if args.model is None:
        pipe = SceneGraphToVideoPipeline.from_builtin()
    else:
        # The CLI computes on the CPU, in float32 whatever the stored precision (fp16 is slow there).
        pipe = SceneGraphToVideoPipeline.from_pretrained(args.model, dtype=torch.float32)
    for flag, value, check, config_flag, what in _sampling_scales(args):
        try:
            check(value, pipe.unet.config[config_flag])
        except ValueError:
            raise _UsageError(f"{flag} {value:g}: this model has no {what} to scale (leave it out)") from None
    limits = dict(vocab=pipe.vocab, max_triples=pipe.sg_encoder.config.max_local_triples)
    if args.output is not None:
        graphs = [parse_scene_graph(graphs[0], **limits)]  # errors name fields without a list prefix
    else:
        graphs = parse_scene_graphs(graphs, **limits)

    def generate(batch, first_index):
        generators = [torch.Generator().manual_seed(args.seed + first_index + k) for k in range(len(batch))]
        frames = pipe(
            scene_graph=batch,
            num_frames=args.num_frames,
            num_inference_steps=args.num_inference_steps,
            guidance_scale=args.guidance_scale,
            motion_scale=args.motion_scale,
            layout_scale=args.layout_scale,
            eta=args.eta,
            num_candidates=args.candidates,
            generator=generators,
            drop_graph=args.drop_graph,
        ).frames
        return [(video * 255).round().astype("uint8") for video in frames]

    # 3. Generate and write (each file to a temporary name first).
    if args.output is not None:
        from .video_io import write_video

        video = generate(graphs, 0)[0]
        write_video(args.output, video)
        if args.preview is not None:
            from .preview import save_preview

            save_preview(args.preview, graphs[0], video)
        print(f"wrote {args.output}: {graphs[0]}")
        return 0

    from .data.video_folder import write_video_folder

    pipe.set_progress_bar_config(leave=False)

    def items():
        for start in range(0, len(graphs), args.batch_size):
            batch = graphs[start : start + args.batch_size]
            for k, video in enumerate(generate(batch, start)):
                yield video, batch[k], None, {"index": start + k, "seed": args.seed + start + k}

    write_video_folder(args.output_dir, items(), total=len(graphs), overwrite=args.overwrite, desc="generating")
    print(f"wrote {len(graphs)} videos to {args.output_dir} (score them: sg2vid evaluate --data {args.output_dir})")
    return 0


def _sampling_scales(args: argparse.Namespace) -> list[tuple]:
    """The sampling-time scales given on the command line: ``(flag, value, check, UNet config flag,
    what it scales)`` each, checked by the pipeline's own rule (``check(value, model_has_it)``)."""
    from .models.unet_3d_graph import check_layout_scale, check_motion_scale

    scales = [
        ("--motion-scale", args.motion_scale, check_motion_scale, "graph_layout_motion", "moving layout"),
        ("--layout-scale", args.layout_scale, check_layout_scale, "graph_layout_bias", "layout bias"),
    ]
    return [scale for scale in scales if scale[1] is not None]


class _UsageError(ValueError):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sg2vid", description="Video generation from scene graphs.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_make_dataset(sub)
    _add_evaluate(sub)
    _add_render(sub)
    _add_generate(sub)
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
