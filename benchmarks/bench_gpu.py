#!/usr/bin/env python
"""The ModelScope-sized check on one CUDA GPU (issue 6, item 5): one prepared run, under 8 minutes.

    python benchmarks/bench_gpu.py                   # on a CUDA machine (written for one H200-class GPU)
    python benchmarks/bench_gpu.py --dry-run-cpu     # the same code at tiny size on a CPU: checks, measures nothing

ModelScope text-to-video's UNet3D (1.41 B parameters; random weights) at 256 x 256 (32 x 32 latents),
16 frames, bfloat16, PyTorch SDPA attention (the default processors; no xformers):

1. per denoising step (UNet forward on a guidance batch of 2 videos): plain text cross-attention of
   16 tokens vs graph-only (16 graph tokens), and text of 77 + 16 tokens vs decoupled (77 text +
   16 graph); the three models share one set of weights. s/step, peak memory, ratios (target <= 1.05);
2. graph-only sampling step at 8, 16 and 32 frames (s/step, peak memory);
3. training steps of the graph-only UNet from scratch (every weight trains, float32 weights with
   bfloat16 autocast, AdamW, as ``accelerate --mixed_precision bf16``) with gradient checkpointing,
   and without it for comparison; and the decoupled adapter alone (UNet frozen) with checkpointing:
   s/step, clips/s, peak memory;
4. SGDiff's graph encoder (VG size) on 64 graphs.

A section that runs out of GPU memory is recorded as such and the run goes on; sections past
``--time-budget`` seconds are skipped (and said so), so the run ends in time.
"""

from __future__ import annotations

import gc
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import (  # noqa: E402
    RESULTS_DIR,
    Target,
    at_most,
    base_parser,
    check_positive,
    machine_info,
    mib,
    ms,
    parameter_bytes,
    peak_memory,
    print_table,
    print_targets,
    ratio,
    setup,
    time_side_by_side,
    write_json,
)
from setups import (  # noqa: E402
    build_encoder,
    build_plain_unet,
    build_unet,
    count_parameters,
    get_size,
    graph_batch,
    graph_unet_sharing_weights,
    random_graph,
    random_graph_context,
    training_step,
    vocabulary,
)

NAME = "gpu"
RATIO_LIMIT = 1.05
RUN_LIMIT_S = 480.0
GRAPH_TOKENS, REAL_LOCAL_TOKENS, TEXT_TOKENS = 16, 10, 77
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def parse_args(argv=None):
    parser = base_parser(__doc__, NAME)
    parser.add_argument("--dry-run-cpu", action="store_true",
                        help="run every section at tiny size on the CPU to check the script (figures meaningless)")
    parser.add_argument("--device", default="cuda", help="CUDA device (default: %(default)s)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="bf16", help="sampling precision (default: bf16)")
    parser.add_argument("--frames", type=int, default=16, help="frames per video (default: %(default)s)")
    parser.add_argument("--resolution", type=int, default=256, help="frame height = width in pixels, f8 latents (default: 256)")
    parser.add_argument("--batch-size", type=int, default=2, help="videos per sampling step (2 = one with guidance)")
    parser.add_argument("--frames-sweep", default="8,16,32", help="frame counts of section 2 (default: %(default)s; '' skips)")
    parser.add_argument("--train-batch-size", type=int, default=1, help="clips per training step (default: 1)")
    parser.add_argument("--train-steps", type=int, default=5, help="timed training steps per case (default: 5)")
    parser.add_argument("--time-budget", type=float, default=420.0, help="seconds after which sections are skipped (default: 420)")
    args = parser.parse_args(argv)
    check_positive(parser, args, "frames", "resolution", "batch_size", "train_batch_size", "train_steps", "repeats", "threads")
    if args.resolution % 8:
        parser.error(f"--resolution must be a multiple of 8 (the VAE's factor), got {args.resolution}")
    try:
        args.frames_sweep = [int(f) for f in args.frames_sweep.split(",") if f.strip()]
    except ValueError:
        parser.error(f"--frames-sweep must be comma-separated integers, got {args.frames_sweep!r}")
    if any(f < 1 for f in args.frames_sweep):
        parser.error(f"--frames-sweep must hold positive integers, got {args.frames_sweep}")
    if args.time_budget <= 0:
        parser.error(f"--time-budget must be positive, got {args.time_budget}")
    if args.dry_run_cpu:
        args.smoke, args.device = True, "cpu"
        if args.output == RESULTS_DIR / f"{NAME}.json":
            args.output = RESULTS_DIR / f"{NAME}_dry_run_cpu.json"
    if args.smoke:
        args.frames, args.resolution, args.frames_sweep = 2, 64, [2, 4]
        args.train_steps, args.repeats, args.warmup = 1, 1, 1
    args.repeats = args.repeats or 10
    return args


def require_cuda(args) -> torch.device:
    """The device to run on; a clear error when a GPU run is asked for and there is no CUDA."""
    if args.dry_run_cpu:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError(
            "bench_gpu.py needs a CUDA GPU, and torch.cuda.is_available() is False here "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'none'}). Run it on a CUDA machine, "
            "or pass --dry-run-cpu to check the script on a CPU (it measures nothing there)."
        )
    device = torch.device(args.device)
    if device.type != "cuda":
        raise RuntimeError(f"--device must be a CUDA device (e.g. cuda or cuda:0), got {args.device!r}")
    return device


class Run:
    """Sections with a shared time budget; failures are recorded, not fatal (except the first section's)."""

    def __init__(self, budget_s: float, device: torch.device):
        self.start, self.budget_s, self.device = time.perf_counter(), budget_s, device
        self.sections: dict[str, str] = {}

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def section(self, name: str, fn, required: bool = False):
        if self.elapsed > self.budget_s:
            self.sections[name] = f"skipped: {self.elapsed:.0f} s elapsed, past the {self.budget_s:.0f} s budget"
            print(f"[{name}] {self.sections[name]}")
            return None
        print(f"[{name}] starting at {self.elapsed:.0f} s", flush=True)
        try:
            result = fn()
        except torch.OutOfMemoryError as error:
            if required:
                raise
            self.sections[name] = f"out of memory: {str(error).splitlines()[0]}"
            result = None
        except Exception as error:  # an optional section must not lose the others' figures
            if required:
                raise
            self.sections[name] = f"failed: {type(error).__name__}: {error}"
            result = None
        else:
            self.sections[name] = f"done in {self.elapsed:.0f} s"
        finally:
            gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        print(f"[{name}] {self.sections[name]}", flush=True)
        return result


def sampling_overhead(args, size, device, dtype) -> tuple[list[dict], list[Target]]:
    frames, latent = args.frames, args.resolution // 8
    base = build_plain_unet(size, seed=args.seed, device=device)
    torch.nn.Module.to(base, dtype=dtype)
    graph_only = graph_unet_sharing_weights(base, size, "graph_only")
    decoupled = graph_unet_sharing_weights(base, size, "decoupled")
    generator = torch.Generator().manual_seed(args.seed)
    batch, channels = args.batch_size, size.cross_attention_dim

    def randn(*shape):
        return torch.randn(*shape, generator=generator).to(device, dtype)

    latents = randn(batch, size.latent_channels, frames, latent, latent)
    timestep = torch.tensor(500, device=device)
    text_16, text_77, text_93 = randn(batch, GRAPH_TOKENS, channels), randn(batch, TEXT_TOKENS, channels), randn(
        batch, TEXT_TOKENS + GRAPH_TOKENS, channels
    )
    context = random_graph_context(batch, frames, GRAPH_TOKENS, REAL_LOCAL_TOKENS, channels, generator, dtype, device)
    cases = {
        f"text {GRAPH_TOKENS}": lambda: base(latents, timestep, encoder_hidden_states=text_16),
        f"graph-only {GRAPH_TOKENS}": lambda: graph_only(latents, timestep, graph_context=context),
        f"text {TEXT_TOKENS + GRAPH_TOKENS}": lambda: base(latents, timestep, encoder_hidden_states=text_93),
        f"decoupled {TEXT_TOKENS}+{GRAPH_TOKENS}": lambda: decoupled(
            latents, timestep, encoder_hidden_states=text_77, graph_context=context
        ),
    }
    with torch.no_grad():
        timings = time_side_by_side(cases, repeats=args.repeats, warmup=args.warmup, device=device)
        peaks = {name: peak_memory(fn, device) for name, fn in cases.items()}
    comparisons = {f"graph-only {GRAPH_TOKENS}": f"text {GRAPH_TOKENS}",
                   f"decoupled {TEXT_TOKENS}+{GRAPH_TOKENS}": f"text {TEXT_TOKENS + GRAPH_TOKENS}"}
    rows = []
    for name, timing in timings.items():
        row = {"case": name, "latents": f"{batch}x{size.latent_channels}x{frames}x{latent}x{latent}",
               "unet_parameters": count_parameters(base),
               **timing.to_dict(), "peak_bytes": peaks[name]}
        if name in comparisons:
            row.update(vs=comparisons[name], **ratio(timings, name, comparisons[name]))
        rows.append(row)
    print(f"weights: {mib(parameter_bytes(base, graph_only, decoupled)):.0f} MiB for the three models (shared)")
    targets = [at_most(f"GPU: {name} / {reference} per step", next(r["ratio"] for r in rows if r["case"] == name),
                       RATIO_LIMIT, f"{args.dtype}, {args.resolution} px, {frames} frames")
               for name, reference in comparisons.items()]
    return rows, targets


def frames_sweep(args, size, device, dtype) -> list[dict]:
    unet = build_unet(size, "graph_only", seed=args.seed, device=device)
    torch.nn.Module.to(unet, dtype=dtype)
    generator = torch.Generator().manual_seed(args.seed)
    latent, rows = args.resolution // 8, []
    for frames in args.frames_sweep:
        latents = torch.randn(args.batch_size, size.latent_channels, frames, latent, latent, generator=generator).to(device, dtype)
        context = random_graph_context(args.batch_size, frames, GRAPH_TOKENS, REAL_LOCAL_TOKENS, size.cross_attention_dim,
                                       generator, dtype, device)
        step = lambda: unet(latents, 500, graph_context=context)  # noqa: E731
        with torch.no_grad():
            timing = time_side_by_side({"step": step}, repeats=max(args.repeats // 2, 1), warmup=args.warmup, device=device)["step"]
            peak = peak_memory(step, device)
        rows.append({"frames": frames, **timing.to_dict(), "peak_bytes": peak})
    return rows


def training(args, size, device, mode: str, checkpointing: bool, adapter_only: bool) -> dict:
    """Training steps: float32 weights, bf16 autocast (fp32 when --dtype fp32), AdamW."""
    unet = build_unet(size, mode, seed=args.seed, device=device).train()
    if adapter_only:
        unet.requires_grad_(False)
        trainable = [p for n, p in unet.named_parameters() if n.startswith(("graph_", "null_graph_token")) or ".processor." in n]
        for parameter in trainable:
            parameter.requires_grad_(True)
    else:
        trainable = list(unet.parameters())
    if checkpointing:
        unet.enable_gradient_checkpointing()
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)
    encoder = build_encoder(size, seed=args.seed).to(device)
    vocab = vocabulary(size)
    rng = random.Random(args.seed)
    batch = graph_batch(vocab, [random_graph(vocab, 10, 15, rng, dynamic=True) for _ in range(args.train_batch_size)]).to(device)
    with torch.no_grad():
        encoded = encoder(batch, num_frames=args.frames)
    generator = torch.Generator().manual_seed(args.seed)
    latent = args.resolution // 8
    latents = torch.randn(args.train_batch_size, size.latent_channels, args.frames, latent, latent, generator=generator).to(device)
    autocast = None if args.dtype == "fp32" else DTYPES[args.dtype]
    text = None
    if mode == "decoupled":
        text = torch.randn(args.train_batch_size, TEXT_TOKENS, size.cross_attention_dim, generator=generator).to(device)

    def step():
        return training_step(unet, optimizer, encoded.frame_local_tokens, encoded.frame_mask, encoded.global_embeds,
                             latents, generator, autocast_dtype=autocast, text_states=text)

    timing = time_side_by_side({"step": step}, repeats=args.train_steps, warmup=args.warmup, device=device)["step"]
    peak = peak_memory(step, device)
    return {
        "case": f"{mode}{', adapter only' if adapter_only else ', every weight'}"
                f"{', gradient checkpointing' if checkpointing else ''}",
        "clips": args.train_batch_size, "trainable_parameters": sum(p.numel() for p in trainable),
        **timing.to_dict(), "clips_per_s": args.train_batch_size / timing.median, "peak_bytes": peak,
    }


def encoder_throughput(args, device) -> dict:
    size = get_size("tiny" if args.smoke else "modelscope")
    vocab = vocabulary(size)
    encoder = build_encoder(size, seed=args.seed).to(device)
    rng = random.Random(args.seed)
    batch = graph_batch(vocab, [random_graph(vocab, 10, 15, rng) for _ in range(64)]).to(device)
    with torch.no_grad():
        timing = time_side_by_side({"encoder": lambda: encoder(batch)}, repeats=args.repeats, warmup=args.warmup,
                                   device=device)["encoder"]
    return {"graphs": 64, **timing.to_dict(), "graphs_per_s": 64 / timing.median}


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = require_cuda(args)
    setup(args)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    machine = machine_info()
    machine["sdpa_backends"] = {
        name: getattr(torch.backends.cuda, f"{name}_sdp_enabled")()
        for name in ("flash", "mem_efficient", "math", "cudnn") if hasattr(torch.backends.cuda, f"{name}_sdp_enabled")
    }
    size = get_size("tiny" if args.smoke else "modelscope")
    dtype = DTYPES[args.dtype]
    run = Run(args.time_budget, device)
    print(f"{size.name}-sized UNet3D, {args.resolution} px, {args.frames} frames, {args.dtype}, on {device}"
          f"{' (dry run: figures meaningless)' if args.dry_run_cpu else ''}")

    overhead_rows, targets = run.section("sampling overhead", lambda: sampling_overhead(args, size, device, dtype), required=True)
    sweep_rows = []
    if args.frames_sweep:
        sweep_rows = run.section("frames sweep", lambda: frames_sweep(args, size, device, dtype)) or []
    train_rows = []
    for mode, checkpointing, adapter_only in (("graph_only", True, False), ("graph_only", False, False), ("decoupled", True, True)):
        row = run.section(
            f"training {mode}{' adapter' if adapter_only else ''}{' checkpointing' if checkpointing else ''}",
            lambda: training(args, size, device, mode, checkpointing, adapter_only),
        )
        if row is not None:
            train_rows.append(row)
    encoder_row = run.section("encoder", lambda: encoder_throughput(args, device))
    total = run.elapsed
    targets.append(at_most("GPU: the whole run, seconds", total, RUN_LIMIT_S))

    print_table(
        f"per denoising step, {size.name}-sized UNet3D ({args.dtype}, SDPA; median of {args.repeats})",
        ["case", "latents", "ms / step", "peak MiB", "vs", "ratio (min..max)"],
        [[r["case"], r["latents"], ms(r["median_s"]), mib(r["peak_bytes"]), r.get("vs", ""),
          f"{r['ratio']:.3f} ({r['ratio_min']:.3f}..{r['ratio_max']:.3f})" if "ratio" in r else ""] for r in overhead_rows],
    )
    if sweep_rows:
        print_table("graph-only sampling step against frames", ["frames", "ms / step", "peak MiB"],
                    [[r["frames"], ms(r["median_s"]), mib(r["peak_bytes"])] for r in sweep_rows])
    if train_rows:
        print_table(
            f"training step ({args.train_batch_size} clip(s) of {args.frames} frames; float32 weights, "
            f"{'no autocast' if args.dtype == 'fp32' else args.dtype + ' autocast'}, AdamW)",
            ["case", "trainable params", "s / step", "clips / s", "peak MiB"],
            [[r["case"], f"{r['trainable_parameters'] / 1e6:.1f} M", r["median_s"], r["clips_per_s"], mib(r["peak_bytes"])]
             for r in train_rows],
        )
    if encoder_row:
        print(f"\nencoder: 64 graphs in {ms(encoder_row['median_s']):.2f} ms ({encoder_row['graphs_per_s']:.0f} graphs/s)")
    print("\nsections: " + "; ".join(f"{name}: {status}" for name, status in run.sections.items()))
    print_targets(targets)
    result = {
        "size": size.name, "unet_parameters": overhead_rows[0]["unet_parameters"],
        "dry_run_cpu": args.dry_run_cpu, "sampling": overhead_rows, "frames_sweep": sweep_rows, "training": train_rows,
        "encoder": encoder_row, "sections": run.sections, "total_s": total, "targets": targets,
    }
    write_json(args.output, NAME, args, machine, result)
    return result


if __name__ == "__main__":
    try:
        main()
    except RuntimeError as error:
        if "needs a CUDA GPU" not in str(error) and "must be a CUDA device" not in str(error):
            raise
        sys.exit(f"error: {error}")
