"""Paired comparison of two sets of videos of the same scene graphs (ours; not in SGDiff).

Two models, or one model at two settings, are compared on the same graphs with the same seeds, so
most of what makes one video hard is shared. :func:`compare_scores` gives both sets' conformance
figures (the ones ``summarize`` reports), their difference and a paired bootstrap interval for it:
the videos are resampled with replacement, the same draw for both sets, and each figure recomputed
as ``summarize`` computes it (a ratio of sums over the drawn videos). An interval that holds 0 is a
difference those graphs cannot tell from chance; on 200 SG-Shapes test graphs a figure's interval is
a few hundredths wide (the built-in model's timed triples are about 100, so theirs is the widest).

``sg2vid evaluate --data NEW --baseline OLD`` prints it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from ..data.sg_shapes import PREDICATES
from .conformance import VideoScore

# (figure, what a ``ConformanceReport`` calls it, True when higher is better)
FIGURES: tuple[tuple[str, str, bool], ...] = (
    ("object recall", "object_recall", True),
    ("relation accuracy", "relation_accuracy", True),
    ("relation accuracy, timed triples", "timed_relation_accuracy", True),
    ("graph accuracy", "graph_accuracy", True),
    ("shape accuracy", "shape_accuracy", True),
    ("spurious objects per video", "spurious_per_video", False),
)


@dataclass
class FigureComparison:
    """One figure of two paired sets of videos: ``value - baseline`` = ``difference``, and its
    bootstrap interval ``[low, high]``. All ``None`` when either set has nothing to count (e.g. no
    timed triples)."""

    figure: str
    baseline: float | None
    value: float | None
    difference: float | None
    low: float | None
    high: float | None
    higher_is_better: bool

    @property
    def resolved(self) -> bool:
        """True when the interval excludes 0: the graphs tell the two sets apart on this figure."""
        return self.low is not None and (self.low > 0 or self.high < 0)


@dataclass
class PairedComparison:
    num_videos: int
    num_resamples: int
    confidence: float
    figures: list[FigureComparison]
    # relation accuracy per predicate that occurs, in vocabulary order (figure = the predicate)
    by_predicate: list[FigureComparison]

    def to_dict(self) -> dict:
        def rows(figures):
            return {f.figure: asdict(f) | {"resolved": f.resolved} for f in figures}

        return asdict(self) | {"figures": rows(self.figures), "by_predicate": rows(self.by_predicate)}

    def format_table(self) -> str:
        header = ("figure", "baseline", "this", "difference", f"{self.confidence:.0%} interval")

        def row(f: FigureComparison, name: str) -> tuple[str, ...]:
            if f.difference is None:
                return (name, "n/a", "n/a", "n/a", "")
            better = (f.difference > 0) == f.higher_is_better
            verdict = ("better" if better else "worse") if f.resolved else "not resolved"
            return (name, f"{f.baseline:.3f}", f"{f.value:.3f}", f"{f.difference:+.3f}",
                    f"[{f.low:+.3f}, {f.high:+.3f}]  {verdict}")  # fmt: skip

        rows = [header, *(row(f, f.figure) for f in self.figures)]
        if self.by_predicate:
            rows.append(("relation accuracy per predicate", "", "", "", ""))
            rows += [row(f, f"  {f.figure}") for f in self.by_predicate]
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
        return "\n".join([f"{self.num_videos} paired videos, {self.num_resamples} bootstrap resamples", *lines])


def _predicate_tallies(scores: Sequence[VideoScore], predicate: str) -> np.ndarray:
    """(2, N): each video's satisfied triples of ``predicate`` and its triples of it."""
    pairs = [(sum(ok for ok, p in zip(s.triples, s.predicates) if p == predicate), s.predicates.count(predicate))
             for s in scores]  # fmt: skip
    return np.array(pairs, dtype=np.float64).reshape(len(scores), 2).T


def _tallies(scores: Sequence[VideoScore]) -> dict[str, np.ndarray]:
    """Per figure, a (2, N) array: each video's numerator and denominator, so that a figure over any
    multiset of videos is a ratio of sums, as ``summarize`` computes it."""

    def rows(pairs) -> np.ndarray:
        return np.array(list(pairs), dtype=np.float64).reshape(len(scores), 2).T

    return {
        "object_recall": rows((s.objects_detected, s.num_objects) for s in scores),
        "relation_accuracy": rows((sum(s.triples), len(s.triples)) for s in scores),
        "timed_relation_accuracy": rows(
            (sum(ok for ok, t in zip(s.triples, s.timed) if t), sum(s.timed)) for s in scores
        ),
        "graph_accuracy": rows((s.all_satisfied, 1) for s in scores),
        "shape_accuracy": rows((s.shapes_correct, s.shapes_checked) for s in scores),
        "spurious_per_video": rows((s.spurious, 1) for s in scores),
    }


def compare_scores(
    scores: Sequence[VideoScore],
    baseline: Sequence[VideoScore],
    num_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedComparison:
    """Compare two sets of video scores paired by position (video i of both sets drew graph i).

    Args:
        scores: the set under test.
        baseline: the set it is compared with, same length and graphs.
        num_resamples: bootstrap draws of the videos (>= 1).
        confidence: the interval's coverage, in (0, 1): its ends are the draws' percentiles.
        seed: the draws' seed: the same seed gives the same interval.

    Returns:
        A :class:`PairedComparison`; its point figures equal ``summarize``'s for each set, and so do
        its ``by_predicate`` ones (relation accuracy per predicate).
    """
    scores, baseline = list(scores), list(baseline)
    if len(scores) != len(baseline):
        raise ValueError(f"paired sets must have the same number of videos, got {len(scores)} and {len(baseline)}")
    if not scores:
        raise ValueError("no videos to compare")
    if not isinstance(num_resamples, int) or num_resamples < 1:
        raise ValueError(f"num_resamples must be an integer >= 1, got {num_resamples!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    n = len(scores)
    # How many times each video is drawn, per resample: (R, N).
    weights = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=num_resamples).astype(np.float64)
    tail = (1 - confidence) / 2 * 100

    def compare(name: str, new: np.ndarray, old: np.ndarray, higher_is_better: bool = True) -> FigureComparison:
        (a_num, a_den), (b_num, b_den) = new, old
        if a_den.sum() == 0 or b_den.sum() == 0:
            return FigureComparison(name, None, None, None, None, None, higher_is_better)
        value, base = a_num.sum() / a_den.sum(), b_num.sum() / b_den.sum()
        with np.errstate(invalid="ignore", divide="ignore"):  # a draw may hold none of a rare kind
            draws = (weights @ a_num) / (weights @ a_den) - (weights @ b_num) / (weights @ b_den)
        low, high = np.nanpercentile(draws, [tail, 100 - tail])
        return FigureComparison(name, float(base), float(value), float(value - base), float(low), float(high),
                                higher_is_better)  # fmt: skip

    new, old = _tallies(scores), _tallies(baseline)
    figures = [compare(name, new[key], old[key], higher) for name, key, higher in FIGURES]
    occurring = {p for s in scores + baseline for p in s.predicates}
    order = {p: i for i, p in enumerate(PREDICATES)}
    by_predicate = [compare(p, _predicate_tallies(scores, p), _predicate_tallies(baseline, p))
                    for p in sorted(occurring, key=lambda p: (order.get(p, len(order)), p))]  # fmt: skip
    return PairedComparison(num_videos=n, num_resamples=num_resamples, confidence=confidence, figures=figures,
                            by_predicate=by_predicate)  # fmt: skip
