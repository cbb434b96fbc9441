"""When two scores differ by less than their seeds' noise: the tie rule every verdict of the report uses
(the Pareto front, the best method at each budget, where a larger backbone overtakes a smaller one).

The rule (chosen here, stated in the report): two points tie when their means differ by less than
K = 2 standard errors of the difference, sqrt(s1^2/n1 + s2^2/n2), s the std over a point's seeds and n
its number of seeds -- about a two-sided 95% test of "the two means differ" under normal seed noise.
A point of one seed has no std of its own: it borrows the pooled within-configuration std of the points
that have several seeds (random init included: its seeds vary the same fine-tuning), and every verdict
it enters is flagged "1 seed". Where no point has several seeds the noise is unknown: only equal means
tie, and the report says that every verdict rests on one seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from budgetssl.analysis.aggregate import Point

K = 2.0  # standard errors of the difference within which two means tie (chosen: ~95% two-sided)


@dataclass(frozen=True)
class Noise:
    """The seeds' noise of one aggregate: the pooled within-configuration std and what it came from."""

    pooled: float | None  # None: no configuration has two seeds
    configurations: int  # configurations with several seeds that the pooled std comes from
    runs: int  # their seeds, together

    def std(self, p: Point) -> float:
        """The std of one seed's score at `p`: its own over its seeds, else the pooled one (0 if none)."""
        if p.seeds > 1:
            return p.spread
        return self.pooled or 0.0

    def margin(self, p: Point, q: Point) -> float:
        """K standard errors of the difference of the two means."""
        return K * math.sqrt(self.std(p) ** 2 / p.seeds + self.std(q) ** 2 / q.seeds)

    def tied(self, p: Point, q: Point) -> bool:
        """The two means are closer than the noise can tell apart (equal means always tie)."""
        return p.y == q.y or abs(p.y - q.y) < self.margin(p, q)

    def describe(self) -> str:
        rule = (
            f"Two points tie when their means differ by less than {K:g} standard errors of the difference, "
            "sqrt(s1²/n1 + s2²/n2) (s: the std over a point's seeds, n: its seeds)"
        )
        if self.pooled is None:
            return (
                rule + ". No configuration has several seeds, so the noise is unknown: only equal means "
                "tie, and every verdict below rests on one seed per point (run `seed=0,1,2`)."
            )
        return (
            rule + f"; a point of one seed borrows the pooled within-configuration std, {self.pooled:.2f} "
            f"(from {self.configurations} configuration(s) with several seeds, {self.runs} runs), and is "
            "flagged `1 seed`."
        )


def noise_of(points: list[Point]) -> Noise:
    """Pool the variance of every configuration with several seeds, each weighted by its n - 1."""
    several = [p for p in points if p.seeds > 1]
    dof = sum(p.seeds - 1 for p in several)
    if not dof:
        return Noise(None, 0, 0)
    pooled = math.sqrt(sum((p.seeds - 1) * p.spread**2 for p in several) / dof)
    return Noise(pooled, len(several), sum(p.seeds for p in several))
