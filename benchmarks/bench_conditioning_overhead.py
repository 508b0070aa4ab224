#!/usr/bin/env python
"""Conditioning overhead per denoising step: our UNet with graph cross-attention versus the same
UNet3D with plain text cross-attention of the same token count (issue 6, item 1).

    python benchmarks/bench_conditioning_overhead.py            # tiny, builtin, builtin-f4, modelscope
    python benchmarks/bench_conditioning_overhead.py --sizes modelscope --frames 16 --latent-size 16

One step = one UNet forward on a classifier-free-guidance batch (2 videos), under no_grad, as the
pipeline runs it. The three models share their UNet3D weights (the graph ones are built on top of the
plain ``UNet3DConditionModel``'s tensors), so "the same UNet3D" is the same weights:

- ``text L``: diffusers' ``UNet3DConditionModel`` with L text tokens (its default SDPA processors);
- ``graph-only``: ``SceneGraphUNet3DConditionModel(graph_mode="graph_only")`` with a per-frame graph
  context of 16 tokens (15 local slots, 10 of them real, + the global token), masked;
- ``decoupled``: ``graph_mode="decoupled"``: 77 text tokens (a CLIP prompt) + the 16 graph tokens in
  a second attention, compared with plain text attention over 77 + 16 = 93 tokens, and (for
  information) with the 77-token text model it extends.

Before timing, the script checks that the comparison is like for like: graph-only attention over
the text tokens (all unmasked) gives the text model's output, and the decoupled model with its
zero-initialised graph values gives the 77-token text model's output. Target: <= 1.05x.
"""

from __future__ import annotations

import gc
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import (  # noqa: E402
    at_most,
    base_parser,
    check_positive,
    machine_info,
    mib,
    ms,
    parameter_bytes,
    print_table,
    print_targets,
    ratio,
    setup,
    str_list,
    time_side_by_side,
    write_json,
)
from setups import (  # noqa: E402
    SIZES,
    build_plain_unet,
    count_parameters,
    get_size,
    graph_unet_sharing_weights,
    random_graph_context,
)

from sg2vid_diffusers.models.unet_3d_graph import GraphContext  # noqa: E402

NAME = "conditioning_overhead"
TARGET = 1.05
GRAPH_TOKENS = 16  # SGDiff's N = 15 local triple slots + the global token
REAL_LOCAL_TOKENS = 10
TEXT_TOKENS = 77  # CLIP's prompt length, the decoupled mode's text
# Per size: frames, latent h = w, timed repeats. ModelScope runs at a small resolution on a CPU.
DEFAULTS = {
    "tiny": (16, 8, 30),
    "builtin": (16, 8, 15),
    "builtin-f4": (16, 16, 8),
    "modelscope": (8, 8, 6),
}


def parse_args(argv=None):
    parser = base_parser(__doc__, NAME)
    parser.add_argument(
        "--sizes", type=str_list(tuple(SIZES)), default=["tiny", "builtin", "builtin-f4", "modelscope"],
        help="comma-separated sizes (default: all)",
    )
    parser.add_argument("--frames", type=int, default=None, help="frames per video (default: per size)")
    parser.add_argument("--latent-size", type=int, default=None, help="latent height = width (default: per size)")
    parser.add_argument("--batch-size", type=int, default=2, help="videos per step (2 = one video with CFG)")
    parser.add_argument("--no-check", action="store_true", help="skip the like-for-like output checks")
    args = parser.parse_args(argv)
    check_positive(parser, args, "frames", "latent_size", "batch_size", "repeats", "threads")
    if args.smoke:
        args.sizes, args.frames, args.repeats, args.warmup = ["tiny"], 2, 1, 0
    return args


@torch.no_grad()
def measure_size(size_name: str, args) -> tuple[list[dict], list]:
    size = get_size(size_name)
    frames, latent_size, repeats = DEFAULTS[size_name]
    frames = args.frames or frames
    latent_size = args.latent_size or latent_size
    repeats = args.repeats or repeats
    batch, channels = args.batch_size, size.cross_attention_dim

    base = build_plain_unet(size, seed=args.seed)
    graph_only = graph_unet_sharing_weights(base, size, "graph_only")
    decoupled = graph_unet_sharing_weights(base, size, "decoupled")

    generator = torch.Generator().manual_seed(args.seed)
    latents = torch.randn(batch, size.latent_channels, frames, latent_size, latent_size, generator=generator)
    timestep = torch.tensor(500)
    text_graph_len = torch.randn(batch, GRAPH_TOKENS, channels, generator=generator)
    text_clip = torch.randn(batch, TEXT_TOKENS, channels, generator=generator)
    text_both = torch.randn(batch, TEXT_TOKENS + GRAPH_TOKENS, channels, generator=generator)
    context = random_graph_context(batch, frames, GRAPH_TOKENS, REAL_LOCAL_TOKENS, channels, generator)

    checks = {}
    if not args.no_check:
        unmasked = GraphContext(
            text_graph_len.repeat_interleave(frames, 0), torch.ones(batch * frames, GRAPH_TOKENS, dtype=torch.bool)
        )
        expected = base(latents, timestep, encoder_hidden_states=text_graph_len).sample
        got = graph_only(latents, timestep, graph_context=unmasked).sample
        checks["graph-only over the text tokens == text model"] = (got - expected).abs().max().item()
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
        expected = base(latents, timestep, encoder_hidden_states=text_clip).sample
        got = decoupled(latents, timestep, encoder_hidden_states=text_clip, graph_context=context).sample
        checks["fresh decoupled (zero graph values) == 77-token text model"] = (got - expected).abs().max().item()
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)

    cases = {
        f"text {GRAPH_TOKENS}": lambda: base(latents, timestep, encoder_hidden_states=text_graph_len),
        f"graph-only {GRAPH_TOKENS}": lambda: graph_only(latents, timestep, graph_context=context),
        f"text {TEXT_TOKENS}": lambda: base(latents, timestep, encoder_hidden_states=text_clip),
        f"text {TEXT_TOKENS + GRAPH_TOKENS}": lambda: base(latents, timestep, encoder_hidden_states=text_both),
        f"decoupled {TEXT_TOKENS}+{GRAPH_TOKENS}": lambda: decoupled(
            latents, timestep, encoder_hidden_states=text_clip, graph_context=context
        ),
    }
    timings = time_side_by_side(cases, repeats=repeats, warmup=args.warmup)
    comparisons = {
        f"graph-only {GRAPH_TOKENS}": f"text {GRAPH_TOKENS}",
        f"decoupled {TEXT_TOKENS}+{GRAPH_TOKENS}": f"text {TEXT_TOKENS + GRAPH_TOKENS}",
    }
    informational = {f"decoupled {TEXT_TOKENS}+{GRAPH_TOKENS}": f"text {TEXT_TOKENS}"}

    shape = f"{batch}x{size.latent_channels}x{frames}x{latent_size}x{latent_size}"
    rows = []
    for case, timing in timings.items():
        row = {
            "size": size_name, "case": case, "latents": shape, "unet_parameters": count_parameters(base),
            **timing.to_dict(),
        }
        if case in comparisons:
            row["vs"] = comparisons[case]
            row.update(ratio(timings, case, comparisons[case]))
        if case in informational:
            row["vs_text_only"] = informational[case]
            row["ratio_vs_text_only"] = ratio(timings, case, informational[case])["ratio"]
        rows.append(row)
    targets = [
        at_most(
            f"{size_name}: {case} / {reference} per step",
            next(r["ratio"] for r in rows if r["case"] == case),
            TARGET,
            f"{shape} latents",
        )
        for case, reference in comparisons.items()
    ]
    print(
        f"[{size_name}] UNet3D {count_parameters(base) / 1e6:.2f} M parameters, "
        f"{mib(parameter_bytes(base, graph_only, decoupled)):.0f} MiB of weights for all three models (shared)"
    )
    for name, error in checks.items():
        print(f"[{size_name}] check passed: {name} (max |diff| {error:.2e})")
    del base, graph_only, decoupled
    gc.collect()
    return [dict(row, checks=checks) for row in rows], targets


def _ratio_cell(row: dict) -> str:
    cell = f"{row['ratio']:.3f} ({row['ratio_min']:.3f}..{row['ratio_max']:.3f})" if "ratio" in row else ""
    if "ratio_vs_text_only" in row:
        cell += f"; {row['ratio_vs_text_only']:.3f} vs {row['vs_text_only']} (info)"
    return cell


def main(argv=None) -> dict:
    args = parse_args(argv)
    setup(args)
    machine = machine_info()
    rows, targets = [], []
    for size_name in args.sizes:
        size_rows, size_targets = measure_size(size_name, args)
        rows += size_rows
        targets += size_targets
    print_table(
        f"UNet forward per denoising step (median of interleaved repeats; {machine['torch_threads']} threads)",
        ["size", "latents (B x C x F x h x w)", "case", "ms / step", "vs", "ratio (min..max)"],
        [
            [
                r["size"], r["latents"], r["case"], ms(r["median_s"]), r.get("vs", ""),
                _ratio_cell(r),
            ]
            for r in rows
        ],
    )
    print_targets(targets)
    result = {"rows": rows, "targets": targets}
    write_json(args.output, NAME, args, machine, result)
    return result


if __name__ == "__main__":
    main()
