#!/usr/bin/env python
"""How time and peak memory scale with frames and graph size (issue 6, item 3).

    python benchmarks/bench_scaling.py
    python benchmarks/bench_scaling.py --size builtin-f4 --frames 8,16,32 --triples 1,15,30

At the built-in model's size (random weights; ``--size``):

- frames (8, 16, 32), graph fixed (4 objects, 6 relationships, half of them time-spanned: 10 triples):
  one sampling step (UNet forward with guidance, batch 2, no grad), with and without forward
  chunking (``unet.enable_forward_chunking()``, diffusers' default: chunk 1 along dim 0); one training
  step (1 clip, UNet forward + backward + AdamW on every UNet weight, the encoder frozen), with and
  without gradient checkpointing; decoding one video's latents, with and without VAE slicing. A
  least-squares line through peak memory against frames shows whether memory grows linearly.
- graph size (1 to 30 triples) at 16 frames, with an encoder of 32 local slots so that every triple
  reaches the UNet as a token: graph encoding (encoder + context), one sampling step, one training step.

Peak memory is the tensor memory a call allocates on top of what exists before it (weights, optimizer
state and inputs excluded; gradients and activations included): the PyTorch profiler's CPU memory
events on a CPU, ``torch.cuda.max_memory_allocated`` on a GPU. Every figure is a median of repeats.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from diffusers import DDIMScheduler  # noqa: E402
from common import (  # noqa: E402
    Target,
    base_parser,
    check_positive,
    int_list,
    machine_info,
    mib,
    ms,
    peak_memory,
    print_table,
    print_targets,
    setup,
    time_side_by_side,
    write_json,
)
from setups import (  # noqa: E402
    SIZES,
    build_encoder,
    build_unet,
    build_vae,
    cfg_context,
    count_parameters,
    get_size,
    graph_batch,
    graph_with_triples,
    random_graph,
    sampling_step,
    training_step,
    vocabulary,
)

from sg2vid_diffusers.conditioning import encode_graph_context  # noqa: E402
from sg2vid_diffusers.pipelines import SceneGraphToVideoPipeline  # noqa: E402

NAME = "scaling"
LINEARITY_LIMIT = 0.10  # largest deviation of a peak from the fitted line, as a share of the peak


def parse_args(argv=None):
    parser = base_parser(__doc__, NAME)
    parser.add_argument("--size", choices=[s for s in SIZES if s != "modelscope"], default="builtin")
    parser.add_argument("--frames", type=int_list, default=[8, 16, 32], help="frame counts (default: 8,16,32)")
    parser.add_argument(
        "--triples", type=int_list, default=[1, 2, 5, 10, 15, 20, 30], help="graph sizes in triples (default: 1..30)"
    )
    parser.add_argument("--graph-frames", type=int, default=16, help="frames for the graph-size sweep (default: 16)")
    args = parser.parse_args(argv)
    check_positive(parser, args, "graph_frames", "repeats", "threads")
    if args.smoke:
        args.size, args.frames, args.triples, args.graph_frames, args.repeats, args.warmup = "tiny", [2, 3, 4], [1, 5], 2, 1, 0
    args.repeats = args.repeats or 5
    return args


class Bench:
    """A built model set: UNet (graph-only), frozen encoder, VAE, optimizer."""

    def __init__(self, args, max_local_triples: int | None = None):
        self.args = args
        self.size = get_size(args.size)
        overrides = {} if max_local_triples is None else {"max_local_triples": max_local_triples}
        self.vocab = vocabulary(self.size)
        self.encoder = build_encoder(self.size, seed=args.seed, **overrides)
        self.unet = build_unet(self.size, "graph_only", seed=args.seed)
        self.optimizer = torch.optim.AdamW(self.unet.parameters(), lr=1e-4)
        self.generator = torch.Generator().manual_seed(args.seed)

    def latents(self, batch_size: int, num_frames: int) -> torch.Tensor:
        h = self.size.latent_size
        return torch.randn(batch_size, self.size.latent_channels, num_frames, h, h, generator=self.generator)

    @torch.no_grad()
    def encode(self, graph: dict, num_frames: int):
        batch = graph_batch(self.vocab, [graph])
        out = self.encoder(batch, num_frames=num_frames if batch.is_dynamic else None)
        if batch.is_dynamic:
            return batch, out.frame_local_tokens, out.frame_mask, out.global_embeds
        return batch, out.local_tokens, out.local_mask, out.global_embeds

    def sampling(self, graph: dict, num_frames: int):
        """A callable for one guided sampling step."""
        _, local, mask, global_ = self.encode(graph, num_frames)
        with torch.no_grad():
            context = cfg_context(self.unet, self.unet.build_graph_context(local, mask, global_, num_frames), 1, num_frames)
        latents = self.latents(1, num_frames)

        def step():
            self.unet.eval()  # the training steps interleaved with it leave the UNet in train mode
            return sampling_step(self.unet, latents, context)

        return step

    def training(self, graph: dict, num_frames: int):
        """A callable for one training step on one clip."""
        _, local, mask, global_ = self.encode(graph, num_frames)
        latents = self.latents(1, num_frames)

        def step():
            self.unet.train()
            return training_step(self.unet, self.optimizer, local, mask, global_, latents, self.generator)

        return step


def measure(cases: dict, args) -> dict[str, dict]:
    """Median time and peak memory of each case (memory measured in a separate, untimed call)."""
    timings = time_side_by_side(cases, repeats=args.repeats, warmup=max(args.warmup, 1))
    return {name: {**timings[name].to_dict(), "peak_bytes": peak_memory(fn)} for name, fn in cases.items()}


def frames_sweep(args) -> tuple[list[dict], list[Target]]:
    bench = Bench(args)
    graph = random_graph(bench.vocab, 4 if not args.smoke else 2, 6 if not args.smoke else 1, random.Random(args.seed), dynamic=True)
    vae = build_vae(bench.size, seed=args.seed)
    pipe = SceneGraphToVideoPipeline(vae=vae, unet=bench.unet, scheduler=DDIMScheduler(), sg_encoder=bench.encoder)
    rows = []
    for num_frames in args.frames:
        sampling = bench.sampling(graph, num_frames)
        training = bench.training(graph, num_frames)
        decode_latents = bench.latents(1, num_frames)

        def chunked():
            bench.unet.enable_forward_chunking()
            try:
                return sampling()
            finally:
                bench.unet.disable_forward_chunking()

        def checkpointed():
            bench.unet.enable_gradient_checkpointing()
            try:
                return training()
            finally:
                bench.unet.disable_gradient_checkpointing()

        def decode(slicing: bool):
            def run():
                pipe._vae_slicing = slicing
                with torch.no_grad():
                    return pipe.decode_latents(decode_latents)

            return run

        results = measure(
            {
                "sampling step": sampling,
                "sampling step, forward chunking": chunked,
                "training step": training,
                "training step, gradient checkpointing": checkpointed,
                "VAE decode": decode(False),
                "VAE decode, slicing": decode(True),
            },
            args,
        )
        for case, result in results.items():
            rows.append({"sweep": "frames", "frames": num_frames, "triples": 10, "case": case, **result})
        print(f"[frames {num_frames}] done")

    targets = []
    for case in dict.fromkeys(row["case"] for row in rows):
        points = [(row["frames"], row["peak_bytes"]) for row in rows if row["case"] == case]
        fit = linear_fit(points)
        for row in rows:
            if row["case"] == case:
                row["memory_fit"] = fit
        if len(points) >= 3:
            targets.append(
                Target(
                    f"peak memory linear in frames: {case}",
                    fit["max_relative_deviation"],
                    LINEARITY_LIMIT,
                    fit["max_relative_deviation"] <= LINEARITY_LIMIT,
                    f"{mib(fit['slope']):.2f} MiB/frame + {mib(fit['intercept']):.1f} MiB",
                )
            )
    return rows, targets


def linear_fit(points: list[tuple[int, int]]) -> dict[str, float]:
    """Least-squares line peak = intercept + slope * frames, and the largest deviation from it."""
    xs = torch.tensor([float(x) for x, _ in points], dtype=torch.float64)
    ys = torch.tensor([float(y) for _, y in points], dtype=torch.float64)
    if len(points) < 2:
        return {"slope": 0.0, "intercept": float(ys[0]), "max_relative_deviation": 0.0}
    design = torch.stack([torch.ones_like(xs), xs], dim=1)
    intercept, slope = torch.linalg.lstsq(design, ys[:, None]).solution[:, 0].tolist()
    deviation = ((intercept + slope * xs - ys).abs() / ys.clamp(min=1)).max().item()
    return {"slope": slope, "intercept": intercept, "max_relative_deviation": deviation}


def graph_sweep(args) -> list[dict]:
    slots = max(args.triples)
    bench = Bench(args, max_local_triples=slots)
    num_frames = args.graph_frames
    rows = []
    for num_triples in args.triples:
        graph = graph_with_triples(bench.vocab, num_triples, random.Random(args.seed + num_triples), dynamic=True)
        batch = graph_batch(bench.vocab, [graph])
        if batch.triples.shape[0] != num_triples:
            raise RuntimeError(f"graph has {batch.triples.shape[0]} triples, wanted {num_triples}")

        def encoding():
            with torch.no_grad():
                return encode_graph_context(bench.encoder, bench.unet, batch, num_frames)

        results = measure(
            {
                "graph encoding": encoding,
                "sampling step": bench.sampling(graph, num_frames),
                "training step": bench.training(graph, num_frames),
            },
            args,
        )
        for case, result in results.items():
            rows.append({"sweep": "graph", "frames": num_frames, "triples": num_triples, "tokens": min(num_triples, slots) + 1,
                         "case": case, **result})
        print(f"[triples {num_triples}] done")
    return rows


def main(argv=None) -> dict:
    args = parse_args(argv)
    setup(args)
    machine = machine_info()
    size = get_size(args.size)
    unet_params = count_parameters(build_unet(size))
    frame_rows, targets = frames_sweep(args)
    graph_rows = graph_sweep(args)
    latent = f"{size.latent_channels}x{size.latent_size}x{size.latent_size}"
    print_table(
        f"scaling with frames, {args.size}-sized ({unet_params / 1e6:.1f} M UNet, {latent} latents per frame; "
        f"{machine['torch_threads']} threads; peak = tensor memory allocated by the call)",
        ["case", *[f"F={f} ms" for f in args.frames], *[f"F={f} peak MiB" for f in args.frames], "MiB / frame", "max dev. from line"],
        [
            [
                case,
                *[ms(next(r["median_s"] for r in frame_rows if r["case"] == case and r["frames"] == f)) for f in args.frames],
                *[mib(next(r["peak_bytes"] for r in frame_rows if r["case"] == case and r["frames"] == f)) for f in args.frames],
                mib(next(r for r in frame_rows if r["case"] == case)["memory_fit"]["slope"]),
                f"{100 * next(r for r in frame_rows if r['case'] == case)['memory_fit']['max_relative_deviation']:.1f}%",
            ]
            for case in dict.fromkeys(r["case"] for r in frame_rows)
        ],
    )
    print_table(
        f"scaling with graph size at {args.graph_frames} frames (tokens = local triples + global; dynamic graphs)",
        ["triples", "tokens", *[f"{case} ms" for case in ("graph encoding", "sampling step", "training step")],
         *[f"{case} peak MiB" for case in ("graph encoding", "sampling step", "training step")]],
        [
            [
                t, next(r["tokens"] for r in graph_rows if r["triples"] == t),
                *[ms(next(r["median_s"] for r in graph_rows if r["triples"] == t and r["case"] == c))
                  for c in ("graph encoding", "sampling step", "training step")],
                *[mib(next(r["peak_bytes"] for r in graph_rows if r["triples"] == t and r["case"] == c))
                  for c in ("graph encoding", "sampling step", "training step")],
            ]
            for t in args.triples
        ],
    )
    print_targets(targets)
    result = {"size": args.size, "unet_parameters": unet_params, "rows": frame_rows + graph_rows, "targets": targets}
    write_json(args.output, NAME, args, machine, result)
    return result


if __name__ == "__main__":
    main()
