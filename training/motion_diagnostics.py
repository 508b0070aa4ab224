#!/usr/bin/env python
"""Do generated SG-Shapes videos move where their graphs ask for motion? The subject's speed and the
distance change of every dynamic triple (``sg2vid_diffusers.evaluation.motion``), for a folder of
generated videos and, with --reference, for the ground-truth clips of the same graphs.

    python training/motion_diagnostics.py --data runs/builtin/generated --reference runs/builtin/data/test
"""

import argparse
import json
from pathlib import Path


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True,
                   help="a folder of generated videos and their graphs (sg2vid generate --output-dir)")  # fmt: skip
    p.add_argument("--reference", type=Path, default=None, help="another metadata.jsonl folder, e.g. the ground truth")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from sg2vid_diffusers.data.video_folder import SceneGraphVideoFolder
    from sg2vid_diffusers.evaluation.motion import dynamic_triple_motion

    reports = {}
    for name, path in (("data", args.data), ("reference", args.reference)):
        if path is not None:
            folder = SceneGraphVideoFolder(path)
            reports[name] = dynamic_triple_motion((record.read_frames(), record.scene_graph) for record in folder)
    if args.json:
        print(json.dumps({name: report.to_dict() for name, report in reports.items()}, indent=1))
        return
    for name, report in reports.items():
        print(f"{name} ({getattr(args, name)}):")
        print(report.format_table())


if __name__ == "__main__":
    main()
