#!/usr/bin/env python
"""How much a trained model's denoiser reacts to the scene graph: the null graph, a changed object
category and flipped predicates (``sg2vid_diffusers.evaluation.sensitivity``), and how much the
graph encoder's tokens change under the same edits. Seconds on a CPU, so
recipes and checkpoints can be compared between full ``sg2vid evaluate`` runs.

    python training/graph_sensitivity.py                                   # the built-in model
    python training/graph_sensitivity.py --model runs/builtin/video --graphs runs/builtin/guidance_graphs.jsonl
    python training/graph_sensitivity.py --encoder runs/builtin/encoder --graphs runs/builtin/test_graphs.jsonl
"""

import argparse
import json
from pathlib import Path

import torch

from sg2vid_diffusers import SceneGraphEncoder, SceneGraphToVideoPipeline
from sg2vid_diffusers.evaluation.sensitivity import (
    encoder_layout_accuracy,
    encoder_motion_accuracy,
    encoder_sensitivity,
    graph_sensitivity,
)
from sg2vid_diffusers.scene_graph import parse_scene_graphs

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="a pipeline folder (default: the built-in model)")
    p.add_argument("--encoder", default=None, help="a SceneGraphEncoder folder: probe its tokens only (no UNet)")
    p.add_argument("--graphs", type=Path, default=ROOT / "examples" / "graphs.jsonl", help="a .jsonl of scene graphs")
    p.add_argument("--limit", type=int, default=24, help="at most this many graphs of the file")
    p.add_argument("--timesteps", type=int, nargs="+", default=[900, 500, 200])
    p.add_argument("--num_frames", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = p.parse_args(argv)
    if args.limit < 1 or args.num_frames < 1:
        p.error(f"--limit and --num_frames must be >= 1, got {args.limit} and {args.num_frames}")
    if args.model is not None and args.encoder is not None:
        p.error("--model and --encoder exclude each other")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.encoder is not None:
        encoder = SceneGraphEncoder.from_pretrained(args.encoder).float()
        graphs = parse_scene_graphs(args.graphs, vocab=encoder.vocab, max_triples=encoder.config.max_local_triples)
        result = encoder_sensitivity(encoder, graphs[: args.limit])
        result["layout"] = encoder_layout_accuracy(encoder, graphs[: args.limit])
        result["motion"] = motion_figure(encoder, graphs[: args.limit], args.num_frames)
        if args.json:
            print(json.dumps(result, indent=1))
            return
        print(f"relative change of the encoder's local tokens, {result['num_graphs']} graphs "
              f"({result['num_with_predicates']} with predicates to flip)")  # fmt: skip
        print(f"object {result['object_category']:.3f}  colour only {_figure(result['object_colour'])}  "
              f"shape only {_figure(result['object_shape'])}  predicates {_figure(result['predicates'])}")
        print(layout_text(result["layout"]))
        print(motion_text(result["motion"]))
        return
    if args.model is None:
        pipe = SceneGraphToVideoPipeline.from_builtin()
    else:
        pipe = SceneGraphToVideoPipeline.from_pretrained(args.model, dtype=torch.float32)
    graphs = parse_scene_graphs(args.graphs, vocab=pipe.vocab, max_triples=pipe.sg_encoder.config.max_local_triples)
    result = graph_sensitivity(pipe, graphs[: args.limit], args.timesteps, args.num_frames, args.seed)
    result["encoder"]["layout"] = encoder_layout_accuracy(pipe.sg_encoder.float(), graphs[: args.limit])
    result["encoder"]["motion"] = motion_figure(pipe.sg_encoder, graphs[: args.limit], args.num_frames)
    if args.json:
        print(json.dumps(result, indent=1))
        return
    print(f"relative change of the UNet's output, {result['num_graphs']} graphs "
          f"({result['num_with_predicates']} with predicates to flip)")  # fmt: skip
    print(f"{'timestep':>9} {'null graph':>11} {'object':>8} {'colour':>8} {'shape':>8} {'predicates':>11}"
          "   (object: its category; colour, shape: only that changed)")  # fmt: skip
    rows = [(str(t), row) for t, row in result["timesteps"].items()] + [("mean", result["mean"])]
    encoder = result["encoder"]
    rows.append(("encoder", {"null_graph": None, **encoder}))
    for name, row in rows:
        print(f"{name:>9} {_figure(row['null_graph'], ''):>11} {_figure(row['object_category']):>8} "
              f"{_figure(row['object_colour']):>8} {_figure(row['object_shape']):>8} {_figure(row['predicates']):>11}"
              + ("  (its local tokens)" if name == "encoder" else ""))
    print(layout_text(encoder["layout"]))
    print(motion_text(encoder["motion"]))


def _figure(value: float | None, missing: str = "n/a") -> str:
    return missing if value is None else f"{value:.3f}"


def motion_figure(encoder, graphs, num_frames: int) -> dict | None:
    """encoder_motion_accuracy at full gain, or None for an encoder too narrow for the motion readout."""
    return encoder_motion_accuracy(encoder, graphs, num_frames) if encoder.config.output_dim >= 8 else None


def motion_text(motion: dict | None) -> str:
    if motion is None:
        return "the encoder's inferred motion: n/a (object vectors narrower than 8)"
    accuracy = "n/a" if motion["accuracy"] is None else f"{motion['accuracy']:.3f}"
    medians = ", ".join(f"{p} {'n/a' if c is None else f'{c:+.1f} px'}" for p, c in motion["median_change"].items())
    timed = motion["timed"]
    timed_accuracy = "n/a" if timed["accuracy"] is None else f"{timed['accuracy']:.3f}"
    return (f"the encoder's inferred motion satisfies {accuracy} of {motion['num_triples']} dynamic triples "
            f"(median distance change: {medians}; meaningful after the layout loss's motion term), "
            f"and its moving layout {timed_accuracy} of {timed['num_triples']} timed static triples over their spans")


def layout_text(layout: dict) -> str:
    accuracy = "n/a" if layout["accuracy"] is None else f"{layout['accuracy']:.3f}"
    return (f"the encoder's inferred layout satisfies {accuracy} of {layout['num_triples']} static spatial triples "
            "(meaningful after the layout loss)")


if __name__ == "__main__":
    main()
