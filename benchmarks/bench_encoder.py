#!/usr/bin/env python
"""Scene-graph encoder throughput, static and dynamic, and its share of a sampling call (issue 6, item 2).

    python benchmarks/bench_encoder.py
    python benchmarks/bench_encoder.py --batch-sizes 1,8,64,256 --repeats 20

``SceneGraphEncoder`` at SGDiff's Visual Genome size (512 wide, 6 graph layers, 179 objects, 46
predicates) on batches of 1, 8 and 64 VG-like graphs (10 objects and 15 relationships each, so 25
triples with the ``__in_image__`` ones) against the published forward written plainly
(:func:`published_forward`: sg2im's batched graph convolution with ``scatter_add``, SGDiff's
``pool_samples`` and its per-image padding loop, no mask), run side by side on the same weights and
checked equal. "Dynamic" is the same graphs with every other relationship holding over half the clip,
encoded with per-frame tokens for 16 frames. Then the encoder's share of one full sampling call of a
built-in-sized pipeline (25 steps, guidance, 16 frames): with the built-in encoder (128 wide, 4 layers)
and with an SGDiff-sized one.

Targets: ours no slower than the published forward (within 2% timing noise) while adding masks;
dynamic <= 2x static; the encoder < 1% of a sampling call.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS))

import torch  # noqa: E402
from common import (  # noqa: E402
    REPO_ROOT,
    at_most,
    base_parser,
    check_positive,
    int_list,
    machine_info,
    ms,
    print_table,
    print_targets,
    ratio,
    setup,
    time_once,
    time_side_by_side,
    write_json,
)
from setups import (  # noqa: E402
    build_encoder,
    build_pipeline,
    get_size,
    graph_batch,
    random_graph,
    sampling_call,
    timed_parts,
    vocabulary,
    with_time_spans,
)

from sg2vid_diffusers.batching import SceneGraphBatch  # noqa: E402

NAME = "encoder"
SAME_SPEED_TOLERANCE = 1.02  # "no slower": a 2% margin for timing noise on a shared 2-core machine
DYNAMIC_LIMIT = 2.0
SHARE_LIMIT = 0.01


def parse_args(argv=None):
    parser = base_parser(__doc__, NAME)
    parser.add_argument("--batch-sizes", type=int_list, default=[1, 8, 64], help="graphs per batch (default: 1,8,64)")
    parser.add_argument("--objects", type=int, default=10, help="objects per graph (default: %(default)s)")
    parser.add_argument("--relationships", type=int, default=15, help="relationships per graph (default: %(default)s)")
    parser.add_argument("--frames", type=int, default=16, help="frames of the dynamic graphs (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=25, help="denoising steps of the sampling call (default: 25)")
    parser.add_argument("--skip-share", action="store_true", help="skip the share of a sampling call")
    args = parser.parse_args(argv)
    check_positive(parser, args, "objects", "frames", "steps", "repeats", "threads")
    if args.relationships < 0:
        parser.error(f"--relationships must be >= 0, got {args.relationships}")
    if args.smoke:
        args.batch_sizes, args.objects, args.relationships, args.frames = [2], 3, 2, 4
        args.steps, args.repeats, args.warmup = 2, 1, 0
    return args


# ---------------------------------------------------------------------------------------------------- the baseline


def _mlp(state_dict: dict, prefix: str, x: torch.Tensor) -> torch.Tensor:
    for index in (0, 2):
        x = torch.relu(torch.nn.functional.linear(x, state_dict[f"{prefix}.{index}.weight"], state_dict[f"{prefix}.{index}.bias"]))
    return x


def _published_triple_conv(state_dict, prefix, obj_vecs, pred_vecs, edges, modules=None):
    """sg2im's GraphTripleConv.forward, average pooling (O, D), (T, D), (T, 2) -> (O, D), (T, D).
    ``modules``: the encoder, whose ``nn.Sequential`` MLPs then run instead of functional calls."""
    dtype, device = obj_vecs.dtype, obj_vecs.device
    num_objs, num_triples = obj_vecs.size(0), pred_vecs.size(0)
    hidden = state_dict[f"{prefix}.net1.0.weight"].shape[0]
    out_dim = state_dict[f"{prefix}.net2.2.weight"].shape[0]
    s_idx, o_idx = edges[:, 0].contiguous(), edges[:, 1].contiguous()
    cur_t_vecs = torch.cat([obj_vecs[s_idx], pred_vecs, obj_vecs[o_idx]], dim=1)
    mlp = (lambda name, x: modules.get_submodule(f"{prefix}.{name}")(x)) if modules is not None else (
        lambda name, x: _mlp(state_dict, f"{prefix}.{name}", x)
    )
    new_t_vecs = mlp("net1", cur_t_vecs)
    new_s_vecs = new_t_vecs[:, :hidden]
    new_p_vecs = new_t_vecs[:, hidden : hidden + out_dim]
    new_o_vecs = new_t_vecs[:, hidden + out_dim : 2 * hidden + out_dim]
    pooled = torch.zeros(num_objs, hidden, dtype=dtype, device=device)
    pooled = pooled.scatter_add(0, s_idx.view(-1, 1).expand_as(new_s_vecs), new_s_vecs)
    pooled = pooled.scatter_add(0, o_idx.view(-1, 1).expand_as(new_o_vecs), new_o_vecs)
    ones = torch.ones(num_triples, dtype=dtype, device=device)
    counts = torch.zeros(num_objs, dtype=dtype, device=device).scatter_add(0, s_idx, ones).scatter_add(0, o_idx, ones)
    pooled = pooled / counts.clamp(min=1).view(-1, 1)
    return mlp("net2", pooled), new_p_vecs


def _pool_samples(samples: torch.Tensor, sample_to_img: torch.Tensor, num_images: int) -> torch.Tensor:
    """SGDiff's ``pool_samples`` (average)."""
    num_samples, dim = samples.shape
    out = torch.zeros(num_images, dim, dtype=samples.dtype, device=samples.device)
    out = out.scatter_add(0, sample_to_img.view(num_samples, 1).expand(num_samples, dim), samples)
    counts = torch.zeros(num_images, dtype=samples.dtype, device=samples.device)
    counts = counts.scatter_add(0, sample_to_img, torch.ones(num_samples, dtype=samples.dtype, device=samples.device))
    return out / counts.clamp(min=1).view(num_images, 1)


def published_forward(state_dict: dict, batch: SceneGraphBatch, max_local_triples: int = 15, modules=None):
    """SGDiff's ``CGIPModel.encode_graph_local_global``, as published: (B, N, 3D) local, (B, D) global.
    With ``modules`` (the encoder) the graph layers' MLPs are its ``nn.Module``s, as in SGDiff's code;
    without, plain functional calls (no module dispatch: the fastest form of the same arithmetic)."""
    s, p, o = batch.triples.chunk(3, dim=1)
    s, p, o = s.squeeze(1), p.squeeze(1), o.squeeze(1)
    edges = torch.stack([s, o], dim=1)
    obj_vecs = torch.nn.functional.embedding(batch.objs, state_dict["obj_embeddings.weight"])
    pred_vecs = torch.nn.functional.embedding(p, state_dict["pred_embeddings.weight"])
    prefixes = ["graph_conv"] + sorted(
        {".".join(key.split(".")[:3]) for key in state_dict if key.startswith("graph_net.gconvs.")},
        key=lambda prefix: int(prefix.split(".")[-1]),
    )
    for prefix in prefixes:
        obj_vecs, pred_vecs = _published_triple_conv(state_dict, prefix, obj_vecs, pred_vecs, edges, modules)

    num_images = batch.num_graphs
    obj_fea = _pool_samples(obj_vecs, batch.obj_to_img, num_images)
    pred_fea = _pool_samples(pred_vecs, batch.triples_to_img, num_images)
    global_fea = torch.nn.functional.linear(
        torch.cat([obj_fea, pred_fea], dim=1), state_dict["graph_projection.weight"], state_dict["graph_projection.bias"]
    )
    triple_vecs = torch.cat([obj_vecs[s], pred_vecs, obj_vecs[o]], dim=1)
    # create_tensor_by_assign_samples_to_img: the per-image padding loop
    local = torch.zeros(num_images, max_local_triples, triple_vecs.size(1), dtype=triple_vecs.dtype, device=triple_vecs.device)
    for i in range(num_images):
        idx = (batch.triples_to_img == i).nonzero().view(-1)
        samples = triple_vecs[idx][:max_local_triples]
        local[i, : samples.size(0)] = samples
    return local, global_fea


def check_against_loop_reference(encoder, vocab, seed: int) -> float:
    """The baseline equals tests/sgdiff_reference.py (a loop-by-loop re-implementation), in float64."""
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from sgdiff_reference import sgdiff_encode

    state_dict = {key: value.double() for key, value in encoder.state_dict().items()}
    rng = random.Random(seed)
    batch = graph_batch(vocab, [random_graph(vocab, rng.randint(1, 6), rng.randint(0, 8), rng) for _ in range(3)])
    n = encoder.config.max_local_triples
    local, global_ = published_forward(state_dict, batch, n)
    ref_local, ref_global = sgdiff_encode(state_dict, batch, max_local_triples=n)
    torch.testing.assert_close(local, ref_local)
    torch.testing.assert_close(global_, ref_global)
    return max((local - ref_local).abs().max().item(), (global_ - ref_global).abs().max().item())


# ---------------------------------------------------------------------------------------------------- measurements


@torch.no_grad()
def measure_throughput(args, machine) -> tuple[list[dict], list, dict]:
    size = get_size("tiny" if args.smoke else "modelscope")  # SGDiff's Visual Genome encoder
    vocab = vocabulary(size)
    encoder = build_encoder(size, seed=args.seed)
    state_dict = encoder.state_dict()
    n = encoder.config.max_local_triples
    checks = {"published forward == tests/sgdiff_reference.py (float64)": check_against_loop_reference(encoder, vocab, args.seed)}

    rows, targets = [], []
    for batch_size in args.batch_sizes:
        rng = random.Random(args.seed + batch_size)
        graphs = [random_graph(vocab, args.objects, args.relationships, rng) for _ in range(batch_size)]
        static = graph_batch(vocab, graphs)
        dynamic = graph_batch(vocab, [with_time_spans(graph) for graph in graphs])

        ours = encoder(static)
        local, global_ = published_forward(state_dict, static, n)
        torch.testing.assert_close(ours.local_tokens, local, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours.global_embeds, global_, rtol=1e-5, atol=1e-5)
        if not torch.equal(ours.local_mask, local.abs().sum(-1) > 0):
            raise AssertionError("local_mask does not mark the published forward's non-zero tokens")
        checks[f"batch {batch_size}: ours == published (max |diff|)"] = max(
            (ours.local_tokens - local).abs().max().item(), (ours.global_embeds - global_).abs().max().item()
        )

        repeats = args.repeats or (30 if batch_size <= 8 else 10)
        timings = time_side_by_side(
            {
                "published forward": lambda: published_forward(state_dict, static, n),
                "published forward, nn.Module MLPs": lambda: published_forward(state_dict, static, n, modules=encoder),
                "ours, static": lambda: encoder(static),
                f"ours, dynamic ({args.frames} frames)": lambda: encoder(dynamic, num_frames=args.frames),
            },
            repeats=repeats,
            warmup=args.warmup,
        )
        rows += breakdown(encoder, state_dict, static, dynamic, args, batch_size, repeats)
        vs_published = ratio(timings, "ours, static", "published forward")
        modules_vs_published = ratio(timings, "published forward, nn.Module MLPs", "published forward")
        dynamic_vs_static = ratio(timings, f"ours, dynamic ({args.frames} frames)", "ours, static")
        for case, timing in timings.items():
            row = {"batch": batch_size, "triples": static.triples.shape[0], "case": case, **timing.to_dict()}
            if case == "ours, static":
                row.update(vs="published forward", **vs_published)
            elif case == "published forward, nn.Module MLPs":
                row.update(vs="published forward", **modules_vs_published)
            elif case.startswith("ours, dynamic"):
                row.update(vs="ours, static", **dynamic_vs_static)
            rows.append(row)
        targets.append(
            at_most(f"encoder batch {batch_size}: ours static / published", vs_published["ratio"],
                    SAME_SPEED_TOLERANCE, "no slower, with masks; 2% noise margin")
        )
        targets.append(
            at_most(f"encoder batch {batch_size}: dynamic ({args.frames} frames) / static",
                    dynamic_vs_static["ratio"], DYNAMIC_LIMIT)
        )
    return rows, targets, checks


def breakdown(encoder, state_dict, static, dynamic, args, batch_size: int, repeats: int) -> list[dict]:
    """Where the two forwards differ, timed alone: the published per-image padding loop against our
    input check and vectorised slot assignment (private functions of sg_encoder.py: skipped if they
    are renamed)."""
    try:
        from sg2vid_diffusers.models.sg_encoder import _assign_to_slots
    except ImportError:
        return []
    from sg2vid_diffusers.batching import active_triples

    n, num_graphs = encoder.config.max_local_triples, static.num_graphs
    local, _ = published_forward(state_dict, static, n)
    triple_vecs = torch.randn(static.triples.shape[0], local.shape[-1])
    every = torch.ones(1, triple_vecs.shape[0], dtype=torch.bool)

    def padding_loop():
        out = torch.zeros(num_graphs, n, triple_vecs.size(1))
        for i in range(num_graphs):
            samples = triple_vecs[(static.triples_to_img == i).nonzero().view(-1)][:n]
            out[i, : samples.size(0)] = samples
        return out

    def per_frame_slots():
        active = active_triples(dynamic.triple_spans, args.frames)
        return _assign_to_slots(triple_vecs, dynamic.triples_to_img, active, num_graphs, n)

    timings = time_side_by_side(
        {
            "part: published padding loop": padding_loop,
            "part: ours, input check": lambda: encoder._check_batch(static),
            "part: ours, slot assignment": lambda: _assign_to_slots(triple_vecs, static.triples_to_img, every, num_graphs, n),
            f"part: ours, per-frame slots ({args.frames} frames)": per_frame_slots,
        },
        repeats=repeats,
        warmup=args.warmup,
    )
    return [{"batch": batch_size, "triples": static.triples.shape[0], "case": case, **timing.to_dict()}
            for case, timing in timings.items()]


def measure_share(args) -> tuple[list[dict], list]:
    """The encoder's share of one full sampling call (built-in-sized pipeline, random weights)."""
    size = get_size("tiny" if args.smoke else "builtin")
    graph = REPO_ROOT / "examples" / "crossing.json"
    call = dict(num_frames=args.frames, num_inference_steps=args.steps, guidance_scale=4.0)
    encoders = {"built-in encoder (128 wide, 4 layers)": None}
    if not args.smoke:
        encoders["SGDiff-sized encoder (512 wide, 6 layers)"] = get_size("modelscope").encoder
    rows, targets = [], []
    for label, encoder in encoders.items():
        pipe = build_pipeline(size, seed=args.seed, encoder=encoder)
        sampling_call(pipe, str(graph), **{**call, "num_inference_steps": 1})  # warm-up
        with timed_parts(pipe) as timer:
            _, total = time_once(lambda: sampling_call(pipe, str(graph), **call))
        share = timer.seconds["graph encoding"] / total
        rows.append(
            {
                "pipeline": f"{size.name}-sized, {label}", "total_s": total,
                "graph_encoding_s": timer.seconds["graph encoding"], "sg_encoder_forward_s": timer.seconds["sg_encoder"],
                "share": share, "steps": args.steps, "frames": args.frames,
            }
        )
        targets.append(at_most(f"graph encoding share of a sampling call, {label}", share, SHARE_LIMIT,
                               f"{args.steps} steps, CFG, {args.frames} frames, examples/crossing.json"))
    return rows, targets


def main(argv=None) -> dict:
    args = parse_args(argv)
    setup(args)
    machine = machine_info()
    rows, targets, checks = measure_throughput(args, machine)
    for name, error in checks.items():
        print(f"check passed: {name} ({error:.2e})")
    print_table(
        f"SceneGraphEncoder, SGDiff's VG size, {args.objects} objects + {args.relationships} relationships per graph "
        f"(median of interleaved repeats; {machine['torch_threads']} threads)",
        ["batch", "triples", "case", "ms", "graphs / s", "vs", "ratio (min..max)"],
        [
            [r["batch"], r["triples"], r["case"], ms(r["median_s"]), r["batch"] / r["median_s"], r.get("vs", ""),
             f"{r['ratio']:.3f} ({r['ratio_min']:.3f}..{r['ratio_max']:.3f})" if "ratio" in r else ""]
            for r in rows
        ],
    )
    share_rows = []
    if not args.skip_share:
        share_rows, share_targets = measure_share(args)
        targets += share_targets
        print_table(
            "graph encoding (collate + encoder + graph context) in one sampling call",
            ["pipeline", "call s", "graph encoding ms", "encoder forward ms", "share"],
            [[r["pipeline"], r["total_s"], ms(r["graph_encoding_s"]), ms(r["sg_encoder_forward_s"]), f"{100 * r['share']:.3f}%"]
             for r in share_rows],
        )
    print_targets(targets)
    result = {"rows": rows, "share": share_rows, "checks": checks, "targets": targets}
    write_json(args.output, NAME, args, machine, result)
    return result


if __name__ == "__main__":
    main()
