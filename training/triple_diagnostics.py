#!/usr/bin/env python
"""Why triples fail: each triple of a folder of generated SG-Shapes videos sorted by what decided it
(``sg2vid_diffusers.evaluation.conformance.triple_outcomes``), per kind of triple (static, timed,
dynamic). It splits relation accuracy into what drawing objects costs (an object missing from the
video takes all its triples with it) and what placing and moving them costs.

    python training/triple_diagnostics.py --data runs/builtin/generated
"""

import argparse
import json
from collections import Counter
from pathlib import Path


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True,
                   help="a folder of generated videos and their graphs (sg2vid generate --output-dir)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the counts as JSON")
    return p.parse_args(argv)


def count_outcomes(folder) -> Counter:
    """``{(kind, outcome): triples}`` over a :class:`SceneGraphVideoFolder` of SG-Shapes videos."""
    from sg2vid_diffusers.data.sg_shapes import check_sg_shapes_graph
    from sg2vid_diffusers.evaluation.conformance import detect_objects, triple_outcomes

    counts = Counter()
    for record in folder:
        check_sg_shapes_graph(record.scene_graph)
        counts.update(triple_outcomes(detect_objects(record.read_frames()), record.scene_graph))
    return counts


def format_table(counts: Counter) -> str:
    from sg2vid_diffusers.evaluation.conformance import TRIPLE_OUTCOMES

    kinds = ("static", "timed", "dynamic")
    totals = {kind: sum(n for (k, _), n in counts.items() if k == kind) for kind in kinds}
    lines = [f"{'outcome':28}" + "".join(f"{kind:>10}" for kind in kinds) + f"{'all':>10}"]
    for outcome in TRIPLE_OUTCOMES:
        row = [counts.get((kind, outcome), 0) for kind in kinds]
        if outcome == "holds" or any(row):
            lines.append(f"{outcome:28}" + "".join(f"{n:>10}" for n in row) + f"{sum(row):>10}")
    lines.append(f"{'triples':28}" + "".join(f"{totals[k]:>10}" for k in kinds) + f"{sum(totals.values()):>10}")
    failed = sum(n for (_, outcome), n in counts.items() if outcome != "holds")
    missing = sum(n for (_, outcome), n in counts.items() if outcome == "object not drawn")
    if failed:
        lines.append(f"failed triples: {failed}, of them {missing} ({missing / failed:.0%}) with an object not drawn")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    from sg2vid_diffusers.data.video_folder import SceneGraphVideoFolder

    counts = count_outcomes(SceneGraphVideoFolder(args.data))
    if args.json:
        print(json.dumps([[kind, outcome, n] for (kind, outcome), n in sorted(counts.items())], indent=1))
    else:
        print(format_table(counts))


if __name__ == "__main__":
    main()
