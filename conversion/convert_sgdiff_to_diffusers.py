"""Convert SGDiff's published scene-graph encoder (``sip_vg.pt`` / ``sip_coco.pt``) into a
diffusers-format :class:`~sg2vid_diffusers.SceneGraphEncoder` folder.

    python conversion/convert_sgdiff_to_diffusers.py --sg-encoder sip_vg.pt --vocab vocab.json \\
        --output sgdiff-vg-encoder

The folder loads with ``SceneGraphEncoder.from_pretrained("sgdiff-vg-encoder")`` (vocabulary
included). The work is done by ``sg2vid_diffusers.conversion_sgdiff``.
"""

from __future__ import annotations

import argparse
import sys

from sg2vid_diffusers.conversion_sgdiff import (
    CheckpointMismatchError,
    UnsafeCheckpointError,
    convert_sgdiff_encoder,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Convert SGDiff's published scene-graph encoder into a diffusers SceneGraphEncoder folder."
    )
    parser.add_argument(
        "--sg-encoder",
        required=True,
        help="SGDiff encoder checkpoint (sip_vg.pt), a bare state dict, or a Lightning diffusion .ckpt",
    )
    parser.add_argument("--vocab", required=True, help="the vocab.json the checkpoint was trained with")
    parser.add_argument("--output", required=True, help="folder to write (config.json, safetensors, vocab.json)")
    parser.add_argument(
        "--unsafe-load",
        action="store_true",
        help="load with weights_only=False (can run code from the file; only for files you trust)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace --output if it exists and is not empty")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        model = convert_sgdiff_encoder(
            args.sg_encoder, args.vocab, args.output, unsafe_load=args.unsafe_load, overwrite=args.overwrite
        )
    except (CheckpointMismatchError, UnsafeCheckpointError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    config = model.config
    print(
        f"converted {args.sg_encoder} -> {args.output}: SceneGraphEncoder with "
        f"{model.num_parameters() / 1e6:.2f}M parameters, {config.num_graph_layers} graph layers, "
        f"{config.num_objects} objects, {config.num_predicates} predicates, dim {config.output_dim}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
