#!/usr/bin/env python
"""Seconds per built-in video, per step, and split into graph encoding / UNet / VAE (issue 6, item 4).

    python benchmarks/bench_end_to_end.py                       # built-in-sized, untrained (f8 and f4)
    python benchmarks/bench_end_to_end.py --model builtin       # the model shipped in the package
    python benchmarks/bench_end_to_end.py --model path/to/pipeline-folder

One full ``SceneGraphToVideoPipeline`` call at its defaults (25 DDIM steps, the model's default
guidance against the null graph (4 for untrained pipelines; guidance > 1 runs the UNet on two
batches), 16 frames; 64 x 64 for the built-in sizes) on ``examples/crossing.json`` (a dynamic graph),
after one untimed 1-step call. Parts are timed inside the call by forward hooks: graph encoding
(collate + encoder + graph context, once per call), the UNet (all steps), the graph cross-attention
layers inside it, the VAE decode; "other" is the scheduler, noise and post-processing.

Until the built-in model ships (issue 5) the default measures pipelines of its intended size with
random weights, labelled "built-in-sized, untrained": speed does not depend on the weights, so the
figures carry over. Issue 5's target: at most 20 s per video on the 2-core machine.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import (  # noqa: E402
    REPO_ROOT,
    at_most,
    base_parser,
    check_positive,
    machine_info,
    print_table,
    print_targets,
    setup,
    str_list,
    time_once,
    write_json,
)
from setups import SIZES, build_pipeline, count_parameters, get_size, load_pipeline, sampling_call, timed_parts  # noqa: E402

NAME = "end_to_end"
SECONDS_PER_VIDEO_LIMIT = 20.0  # issue 5


def parse_args(argv=None):
    parser = base_parser(__doc__, NAME)
    parser.add_argument(
        "--model", default=None,
        help='"builtin" (the model in the package) or a pipeline folder; default: built-in-sized, untrained',
    )
    parser.add_argument(
        "--sizes", type=str_list(tuple(s for s in SIZES if s != "modelscope")), default=["builtin", "builtin-f4"],
        help="untrained sizes to measure without --model (default: builtin,builtin-f4)",
    )
    parser.add_argument("--graph", type=Path, default=REPO_ROOT / "examples" / "crossing.json")
    parser.add_argument("--frames", type=int, default=16, help="frames per video (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=25, help="denoising steps (default: %(default)s)")
    parser.add_argument("--guidance-scale", type=float, default=None, help="default: the model's own")
    args = parser.parse_args(argv)
    check_positive(parser, args, "frames", "steps", "repeats", "threads")
    if args.model not in (None, "builtin") and not Path(args.model, "model_index.json").is_file():
        parser.error(f"--model {args.model}: not a pipeline folder (no model_index.json)")
    if not args.graph.is_file():
        parser.error(f"--graph {args.graph}: no such file")
    if args.smoke:
        args.sizes, args.frames, args.steps, args.repeats, args.warmup = ["tiny"], 2, 2, 1, 0
    args.repeats = args.repeats or 3
    return args


def pipelines(args):
    """(label, pipeline) pairs to measure."""
    if args.model is not None:
        yield (f"pipeline folder {args.model}" if args.model != "builtin" else "built-in model"), load_pipeline(args.model)
        return
    for size in args.sizes:
        yield f"{size}-sized, untrained", build_pipeline(get_size(size), seed=args.seed)


def measure(label: str, pipe, args) -> dict:
    call = dict(num_frames=args.frames, num_inference_steps=args.steps, guidance_scale=args.guidance_scale)
    for _ in range(max(args.warmup, 1)):
        sampling_call(pipe, str(args.graph), **{**call, "num_inference_steps": 1})
    runs = []
    for _ in range(args.repeats):
        with timed_parts(pipe) as timer:
            frames, total = time_once(lambda: sampling_call(pipe, str(args.graph), **call))
        runs.append({"total_s": total, **{f"{part}_s": seconds for part, seconds in timer.seconds.items()}})
    median = sorted(runs, key=lambda run: run["total_s"])[len(runs) // 2]
    height, width = frames.shape[2:4]
    parts = ("graph encoding", "unet", "graph cross-attention", "vae decode")
    seconds = {part: median.get(f"{part}_s", 0.0) for part in parts}
    other = median["total_s"] - seconds["graph encoding"] - seconds["unet"] - seconds["vae decode"]
    unet = pipe.unet
    return {
        "pipeline": label,
        "unet_parameters": count_parameters(unet),
        "encoder_parameters": count_parameters(pipe.sg_encoder),
        "vae_parameters": count_parameters(pipe.vae),
        "latents": f"{unet.config.in_channels}x{args.frames}x{height // pipe.vae_scale_factor}x{width // pipe.vae_scale_factor}",
        "video": f"{args.frames}x{height}x{width}",
        "steps": args.steps,
        "seconds_per_video": median["total_s"],
        "seconds_per_video_all": [run["total_s"] for run in runs],
        "seconds_per_step": seconds["unet"] / args.steps,
        **{f"{part}_s": value for part, value in seconds.items()},
        "other_s": other,
        "spread": (max(r["total_s"] for r in runs) - min(r["total_s"] for r in runs)) / statistics.median(r["total_s"] for r in runs),
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    setup(args)
    machine = machine_info()
    rows = []
    for label, pipe in pipelines(args):
        with torch.no_grad():
            rows.append(measure(label, pipe, args))
        del pipe
    share = lambda row, part: f"{row[f'{part}_s']:.3g} s ({100 * row[f'{part}_s'] / row['seconds_per_video']:.2f}%)"  # noqa: E731
    print_table(
        f"one sampling call: {args.steps} steps, guidance {args.guidance_scale or 'the model default'}, {args.frames} frames, {args.graph.name} "
        f"(median of {args.repeats}; {machine['torch_threads']} threads)",
        ["pipeline", "UNet params", "latents", "s / video", "s / step (UNet)", "graph encoding", "UNet", "graph cross-attn (in UNet)",
         "VAE decode", "other"],
        [
            [r["pipeline"], f"{r['unet_parameters'] / 1e6:.1f} M", r["latents"], r["seconds_per_video"], r["seconds_per_step"],
             share(r, "graph encoding"), share(r, "unet"), share(r, "graph cross-attention"), share(r, "vae decode"), share(r, "other")]
            for r in rows
        ],
    )
    targets = [
        at_most(f"seconds per video, {r['pipeline']}", r["seconds_per_video"], SECONDS_PER_VIDEO_LIMIT, "issue 5's target")
        for r in rows
    ]
    print_targets(targets)
    result = {"rows": rows, "targets": targets}
    write_json(args.output, NAME, args, machine, result)
    return result


if __name__ == "__main__":
    main()
