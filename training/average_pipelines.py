#!/usr/bin/env python
"""Average the weights of several trained pipelines of one architecture (a "model soup").

    python training/average_pipelines.py --output_dir runs/builtin/soup \\
        runs/builtin/video_motion3 runs/builtin/video_mix runs/builtin/video_mix2

The UNet and the scene-graph encoder (the components training changes) are averaged tensor by
tensor, in float64, with equal weights unless ``--weights`` says otherwise. Every other component
(VAE, text encoder, tokenizer, scheduler) is the first source's and must be the same in every
source: an averaged VAE would move the latent space the UNets were trained in. The pipeline's
sampling defaults (guidance, motion scale) are the first source's; choose them again for the
average (the built-in recipe's guidance stage does). Sources that differ in architecture (configs) or tensors are
refused with a ``PipelineAverageError`` naming the component and the field before anything is
written; the output folder appears whole or not at all. Score the result like any pipeline
(``sg2vid generate --model DIR``, then ``sg2vid evaluate``): docs/builtin_model.md has what it did
for the built-in model.
"""

import argparse
import json
from pathlib import Path

AVERAGED = ("unet", "sg_encoder")
# Config keys that say where a component was loaded from or by what, not what it is (the class is
# compared on its own; keys starting with "_" are bookkeeping: _name_or_path, _class_name, ...).
_PROVENANCE = {"transformers_version"}


class PipelineAverageError(ValueError):
    """The sources cannot be averaged (different architectures, components or weights)."""


def normalised_weights(weights, count: int) -> list[float]:
    """``weights`` (None: equal) for ``count`` sources, scaled to sum to 1; a
    :class:`PipelineAverageError` for fewer than two sources or bad weights."""
    if count < 2:
        raise PipelineAverageError(f"sources: at least two pipelines are needed, got {count}")
    weights = [1.0] * count if weights is None else [float(w) for w in weights]
    if len(weights) != count:
        raise PipelineAverageError(f"weights: {len(weights)} weights for {count} sources")
    bad = next((i for i, w in enumerate(weights) if not w >= 0), None)
    if bad is not None:
        raise PipelineAverageError(f"weights: each must be >= 0 (index {bad}: {weights[bad]:g})")
    total = sum(weights)
    if total <= 0:
        raise PipelineAverageError(f"weights: their sum must be positive, got {weights}")
    return [w / total for w in weights]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("sources", nargs="+", help="pipeline folders (save_pretrained) to average; at least two")
    p.add_argument("--output_dir", required=True, type=Path, help="where the averaged pipeline is saved")
    p.add_argument("--weights", type=float, nargs="+", default=None,
                   help="one weight per source (normalised to sum to 1; default: equal)")  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output_dir")
    args = p.parse_args(argv)
    try:
        args.weights = normalised_weights(args.weights, len(args.sources))
    except PipelineAverageError as error:
        p.error(str(error))
    if args.output_dir.exists() and not args.overwrite:
        p.error(f"--output_dir: {args.output_dir} exists (pass --overwrite to replace it)")
    return args


def _config(module) -> dict:
    config = getattr(module, "config", None)
    if config is None:
        return {}
    config = config.to_dict() if hasattr(config, "to_dict") else dict(config)  # transformers' or diffusers'
    config = {k: v for k, v in config.items() if k not in _PROVENANCE and not k.startswith("_")}
    return json.loads(json.dumps(config, default=str))  # as saved: tuples and lists alike


def average_pipelines(pipes, weights=None):
    """Return the first of ``pipes`` with its ``unet`` and ``sg_encoder`` replaced by the weighted
    mean of all of theirs (in place). Raises :class:`PipelineAverageError` before changing anything
    if the pipelines differ in components, configs, tensor names or shapes, or in any weight of a
    component that is not averaged."""
    import torch

    weights = normalised_weights(weights, len(pipes))
    first = pipes[0]
    names = sorted(first.components)
    states = {}
    for index, pipe in enumerate(pipes[1:], start=1):
        if sorted(pipe.components) != names:
            raise PipelineAverageError(f"components: source {index} has {sorted(pipe.components)}, source 0 {names}")
    for name in names:
        modules = [pipe.components[name] for pipe in pipes]
        if any((m is None) != (modules[0] is None) for m in modules):
            raise PipelineAverageError(f"{name}: present in some sources and not in others")
        if modules[0] is None:
            continue
        for index, module in enumerate(modules[1:], start=1):
            if type(module) is not type(modules[0]):
                raise PipelineAverageError(f"{name}: source {index} is a {type(module).__name__}, "
                                           f"source 0 a {type(modules[0]).__name__}")  # fmt: skip
            a, b = _config(modules[0]), _config(module)
            if a != b:
                field = next(k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))
                raise PipelineAverageError(f"{name}.config.{field}: source {index} has {b.get(field)!r}, "
                                           f"source 0 {a.get(field)!r}")  # fmt: skip
        if not isinstance(modules[0], torch.nn.Module):
            if hasattr(modules[0], "get_vocab") and any(m.get_vocab() != modules[0].get_vocab() for m in modules):
                raise PipelineAverageError(f"{name}: the sources' vocabularies differ")
            continue  # scheduler, tokenizer: equal configs (and vocabularies) are all there is to check
        dicts = [m.state_dict() for m in modules]
        for index, state in enumerate(dicts[1:], start=1):
            if state.keys() != dicts[0].keys():
                extra = sorted(set(state) ^ set(dicts[0]))[0]
                raise PipelineAverageError(f"{name}: tensor {extra!r} is in one of sources 0 and {index} only")
            for key, tensor in state.items():
                if tensor.shape != dicts[0][key].shape:
                    raise PipelineAverageError(f"{name}.{key}: source {index} has shape {tuple(tensor.shape)}, "
                                               f"source 0 {tuple(dicts[0][key].shape)}")  # fmt: skip
                if name not in AVERAGED and not torch.equal(tensor, dicts[0][key]):
                    raise PipelineAverageError(f"{name}.{key}: source {index} differs from source 0, and only "
                                               f"{' and '.join(AVERAGED)} are averaged")  # fmt: skip
        if name in AVERAGED:
            states[name] = dicts
    for name, dicts in states.items():
        mean = {}
        for key, tensor in dicts[0].items():
            if tensor.is_floating_point():
                total = sum(w * d[key].to(torch.float64) for w, d in zip(weights, dicts))
                mean[key] = total.to(tensor.dtype)
            else:
                mean[key] = tensor
        first.components[name].load_state_dict(mean)
    return first


def main(argv=None):
    args = parse_args(argv)
    import torch

    from sg2vid_diffusers import SceneGraphToVideoPipeline
    from sg2vid_diffusers.utils import PipelineFolder, save_folder_atomically

    pipes = [SceneGraphToVideoPipeline.from_pretrained(s, dtype=torch.float32) for s in args.sources]
    pipe = average_pipelines(pipes, args.weights)
    lines = [f"- `{s}`: weight {w:.4g}" for s, w in zip(args.sources, args.weights)]
    card = ("# An average of trained pipelines\n\nThe UNet and scene-graph encoder are the weighted mean of those of "
            "(`training/average_pipelines.py`):\n\n" + "\n".join(lines) + "\n\nEverything else is the first source's.\n")  # fmt: skip
    save_folder_atomically(PipelineFolder(pipe, card), args.output_dir, overwrite=True)  # parse_args asked first
    print(f"averaged {len(args.sources)} pipelines into {args.output_dir}")


if __name__ == "__main__":
    main()
