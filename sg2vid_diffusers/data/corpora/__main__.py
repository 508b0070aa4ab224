"""Build a corpus's ``vocab.json``, or check a corpus and report what it leaves out.

    python -m sg2vid_diffusers.data.corpora vocab --dataset_format vidvrd --data_dir data/vidvrd-dataset --output vocab.json
    python -m sg2vid_diffusers.data.corpora check --dataset_format vidvrd --data_dir data/vidvrd-dataset --num_frames 8

``check`` reads every annotation of the split (a bad record fails, naming the file, record and
field) and prints the number of clips and the unknown categories and everything else dropped.
"""

from __future__ import annotations

import argparse
import sys

from . import CORPUS_FORMATS, CorpusError, build_vocabulary, load_corpus


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sg2vid_diffusers.data.corpora", description=__doc__.split("\n\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("vocab", "write the corpus's own vocab.json"),
        ("check", "read a split, report what is left out"),
    ):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("--dataset_format", required=True, choices=list(CORPUS_FORMATS))
        command.add_argument("--data_dir", required=True, help="The corpus folder, as published.")
        command.add_argument("--split", default="train")
    commands.choices["vocab"].add_argument("--output", required=True, help="Where to write vocab.json.")
    check = commands.choices["check"]
    check.add_argument("--vocab_file", default=None, help="The model's vocab.json (default: the corpus's own).")
    check.add_argument("--num_frames", type=int, default=None)
    check.add_argument("--frame_stride", type=int, default=1)
    args = parser.parse_args(argv)

    try:
        if args.command == "vocab":
            vocab = build_vocabulary(args.dataset_format, args.data_dir, output=args.output, split=args.split)
            print(
                f"{args.output}: {vocab.num_objects} objects, {vocab.num_predicates} predicates (special entries included)"
            )
        else:
            corpus = load_corpus(
                args.dataset_format, args.data_dir, args.split, vocab=args.vocab_file,
                num_frames=args.num_frames, frame_stride=args.frame_stride, resolution=None,
            )  # fmt: skip
            print(f"{corpus!r}: {len(corpus)} clips of {corpus.num_frames} frames")
            print(corpus.report)
    except (CorpusError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
