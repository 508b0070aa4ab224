#!/usr/bin/env python
"""Where objects go missing: colour confusions in a folder of generated SG-Shapes videos, and the
distances between the palette colours in a frame autoencoder's latent space, and, with
``--single_objects``, the colour and shape a model draws for each SG-Shapes category alone
(``sg2vid_diffusers.evaluation.colours``).

    python training/colour_diagnostics.py                                   # the built-in model's VAE
    python training/colour_diagnostics.py --data runs/builtin/generated     # + the evaluation's videos
    python training/colour_diagnostics.py --vae runs/builtin/vae --data generated
    python training/colour_diagnostics.py --model runs/next/leg1 --single_objects   # 36 videos
"""

import argparse
import json
from pathlib import Path

import numpy as np


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="a pipeline folder (default: the built-in model)")
    p.add_argument("--vae", default=None,
                   help="an AutoencoderKL folder, or a pipeline folder with a vae/ (default: --model's)")  # fmt: skip
    p.add_argument("--data", type=Path, default=None,
                   help="a folder of generated videos and their graphs (sg2vid generate --output-dir)")  # fmt: skip
    p.add_argument("--shape", default="square", help="the shape drawn in each colour for the latent distances")
    p.add_argument("--single_objects", action="store_true",
                   help="generate each SG-Shapes category alone with --model and count the colour and shape drawn")  # fmt: skip
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="--single_objects: one video per category and seed")
    p.add_argument("--num_frames", type=int, default=16, help="--single_objects: frames per video")
    p.add_argument("--num_inference_steps", type=int, default=25, help="--single_objects: denoising steps")
    p.add_argument("--guidance_scale", type=float, default=None,
                   help="--single_objects: classifier-free guidance (default: the model's)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = p.parse_args(argv)
    if args.num_frames < 1 or args.num_inference_steps < 1:
        p.error(f"--num_frames and --num_inference_steps must be >= 1, got {args.num_frames} and {args.num_inference_steps}")
    return args


def load_vae(path: str | None):
    import torch
    from diffusers import AutoencoderKL

    if path is None:
        from sg2vid_diffusers.builtin import builtin_model_path

        path = builtin_model_path()
    folder = Path(path)
    subfolder = "vae" if (folder / "vae" / "config.json").is_file() else None
    return AutoencoderKL.from_pretrained(folder, subfolder=subfolder, torch_dtype=torch.float32).eval()


def main(argv=None):
    args = parse_args(argv)
    from sg2vid_diffusers.data.video_folder import SceneGraphVideoFolder
    from sg2vid_diffusers.evaluation.colours import colour_confusions, palette_latent_distances

    latents = palette_latent_distances(load_vae(args.vae or args.model), shape=args.shape)
    single = None
    if args.single_objects:
        from sg2vid_diffusers.evaluation.colours import single_object_colours

        single = single_object_colours(load_pipeline(args.model), seeds=args.seeds, num_frames=args.num_frames,
                                       guidance_scale=args.guidance_scale, num_inference_steps=args.num_inference_steps)  # fmt: skip
    report = None
    if args.data is not None:
        folder = SceneGraphVideoFolder(args.data)
        report = colour_confusions(((record.read_frames(), record.scene_graph) for record in folder),
                                   latent_distances=latents["distances"])  # fmt: skip
    if args.json:
        result = {"colours": latents["colours"], "latent_distances": np.round(latents["distances"], 4).tolist(),
                  "to_empty": np.round(latents["to_empty"], 4).tolist()}  # fmt: skip
        if report is not None:
            result.update(objects=dict(report.objects), missed=dict(report.missed), spurious=report.spurious,
                          missed_beside_spurious=report.missed_beside_spurious, swaps_same_shape=report.swaps_same_shape,
                          swaps=[[a, b, n] for (a, b), n in report.swaps.most_common()],
                          borrowed=[[a, b, n] for (a, b), n in report.borrowed.most_common()],
                          borrowed_nearest=report.borrowed_nearest)  # fmt: skip
        if single is not None:
            result["single_objects"] = single.to_dict()
        print(json.dumps(result, indent=1))
        return
    names = [c[:7] for c in latents["colours"]]
    print(f"distance between the latents of one {args.shape} in each colour (same place):")
    print(" " * 8 + "".join(f"{n:>8}" for n in names))
    for name, row in zip(names, latents["distances"]):
        print(f"{name:>8}" + "".join(f"{v:8.2f}" for v in row))
    print(f"{'empty':>8}" + "".join(f"{v:8.2f}" for v in latents["to_empty"]))
    if report is not None:
        print()
        print(report.format_table())
    if single is not None:
        print()
        print(single.format_table())


def load_pipeline(path: str | None):
    import torch

    from sg2vid_diffusers import SceneGraphToVideoPipeline

    if path is None:
        pipe = SceneGraphToVideoPipeline.from_builtin()
    else:
        pipe = SceneGraphToVideoPipeline.from_pretrained(path, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)  # one bar over the videos instead
    return pipe


if __name__ == "__main__":
    main()
