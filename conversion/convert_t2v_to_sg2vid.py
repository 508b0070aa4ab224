"""Turn a diffusers text-to-video pipeline (ModelScope layout: ``UNet3DConditionModel``, ``AutoencoderKL``,
CLIP text encoder and tokenizer, scheduler) plus a scene-graph encoder into a
:class:`~sg2vid_diffusers.SceneGraphToVideoPipeline` folder.

    python conversion/convert_t2v_to_sg2vid.py --t2v text-to-video-ms-1.7b \\
        --sg-encoder sgdiff-vg-encoder --output sg2vid-ms-1.7b --dtype fp16

The UNet gets fresh decoupled graph adapters (graph projections, graph key/value projections whose
value projections start at zero): until they are trained (``training/train_video.py``) the new
pipeline generates exactly what the text-to-video pipeline generates for the same prompt and seed.
The folder loads with ``SceneGraphToVideoPipeline.from_pretrained`` (or ``DiffusionPipeline``, after
``import sg2vid_diffusers``). The work is done by ``sg2vid_diffusers.conversion_t2v``.
"""

from __future__ import annotations

import argparse
import sys

from sg2vid_diffusers.conversion_t2v import DTYPES, T2VConversionError, convert_t2v_to_sg2vid


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Convert a diffusers text-to-video pipeline + a scene-graph encoder into a "
        "SceneGraphToVideoPipeline folder with zero-initialised graph adapters."
    )
    parser.add_argument(
        "--t2v",
        required=True,
        help="local diffusers text-to-video folder (model_index.json, unet/ (UNet3DConditionModel), vae/, "
        "text_encoder/, tokenizer/, scheduler/), e.g. a download of damo-vilab/text-to-video-ms-1.7b",
    )
    parser.add_argument(
        "--sg-encoder", required=True, help="SceneGraphEncoder folder with its vocab.json (see convert_sgdiff_to_diffusers.py)"
    )
    parser.add_argument("--output", required=True, help="pipeline folder to write")
    parser.add_argument("--overwrite", action="store_true", help="replace --output if it exists and is not empty")
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), default="fp32", help="precision of every saved weight (default: fp32)"
    )
    parser.add_argument(
        "--variant", default=None, help="weight-file variant to read, e.g. fp16 for *.fp16.safetensors (default: none)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        pipe = convert_t2v_to_sg2vid(
            args.t2v, args.sg_encoder, args.output, overwrite=args.overwrite, dtype=args.dtype, variant=args.variant
        )
    except (T2VConversionError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    unet = pipe.unet
    graph_params = sum(p.numel() for name, p in unet.named_parameters() if "graph" in name)
    print(
        f"converted {args.t2v} + {args.sg_encoder} -> {args.output}: SceneGraphToVideoPipeline, "
        f"UNet {unet.num_parameters() / 1e6:.2f}M parameters of which {graph_params / 1e6:.3f}M new "
        f"(decoupled graph adapters, value projections at zero), graph tokens {unet.config.graph_token_dim} / "
        f"{unet.config.graph_global_dim} -> cross_attention_dim {unet.config.cross_attention_dim}, {args.dtype}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
