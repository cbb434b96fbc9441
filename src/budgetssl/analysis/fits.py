"""Scaling fits that predict: per configuration (method, dataset, backbone, schedule) with at least three
budgets, a saturating power law of the score against total FLOPs C,

    score(C) = a - b * (C / C0) ** -alpha,        b > 0, alpha > 0,

the form of the saturating power laws of Hestness et al. 2017 ("Deep learning scaling is predictable,
empirically", arXiv:1712.00409, eq. 1 with an irreducible term) and Kaplan et al. 2020 (arXiv:2001.08361),
written for a score that rises towards a ceiling `a` instead of a loss that falls to one. Per model and
data scale, with the fit's error reported, as Cherti et al. 2023 ("Reproducible scaling laws for
contrastive language-image learning", CVPR 2023, sec. 3 and their fits' tables) do for CLIP.

How (choices made here): the fit is to the mean over seeds at each budget, by scipy's curve_fit (trust
region, bounded) on u = ln(C / C0), C0 the geometric mean of the fit's FLOPs, so that the three parameters
are of the same order; `b` is reported at that C0. The uncertainty is a percentile bootstrap: the seeds
of each budget resampled with replacement, the means refitted, N_BOOT times, from a fixed RNG seed so
that a report is reproducible. Every fit is back-tested: refitted without its largest budget, its
prediction there against the measured mean. Pure functions over the aggregate's points, no plotting.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import OptimizeWarning, brentq, curve_fit

from budgetssl.analysis.aggregate import Point

MIN_BUDGETS = 3  # three parameters: fewer budgets leave the law undetermined
# Bootstrap resamples (chosen): a thousand, the order Efron & Tibshirani ("An Introduction to the
# Bootstrap", 1993) advise for percentile intervals; vectorised, they cost little beside the report
# (benchmarks/README.md).
N_BOOT = 1000
RNG_SEED = 0  # the bootstrap's generator: the same runs give the same report
LEVEL = 0.95  # the interval's coverage
# alpha's bounds (chosen): published compute exponents are well below 1 (Kaplan et al. 2020 sec. 1.2:
# about 0.05 for the loss; Cherti et al. 2023 fig. 1 for CLIP's error), so 5 leaves wide room, and at
# 1e-3 the law is a straight line in log C over any data; a fit that ends on either bound found no
# saturating law in the points.
ALPHA_MIN, ALPHA_MAX = 1e-3, 5.0
CROSS_RANGE = (1e-3, 1e6)  # where two fitted curves are searched for a crossing, around the data's range


class FitError(ValueError):
    """The points admit no saturating power law: the reason, in words for the report."""


@dataclass(frozen=True)
class Law:
    """score(C) = a - b * (C / c0) ** -alpha, C in FLOPs."""

    a: float
    b: float
    alpha: float
    c0: float

    def __call__(self, c: float | np.ndarray) -> np.ndarray:
        return self.a - self.b * np.exp(-self.alpha * np.log(np.asarray(c, dtype=float) / self.c0))

    @property
    def params(self) -> np.ndarray:
        return np.array([self.a, self.b, self.alpha])


def _model(u: np.ndarray, a: float, b: float, alpha: float) -> np.ndarray:
    return a - b * np.exp(-alpha * u)


def _jacobian(u: np.ndarray, a: float, b: float, alpha: float) -> np.ndarray:
    e = np.exp(-alpha * u)
    return np.stack([np.ones_like(u), -e, b * u * e], 1)


def _linear(y: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For a fixed alpha the law is linear in a and b: the least squares a, b >= 0 and the residual sum of
    squares, row by row (y and e = exp(-alpha u) broadcast over leading axes; the last is the budgets)."""
    ec, yc = e - e.mean(-1, keepdims=True), y - y.mean(-1, keepdims=True)
    see, sey, syy = (ec**2).sum(-1), (ec * yc).sum(-1), (yc**2).sum(-1)
    b = np.maximum(-sey / see, 0.0)
    return y.mean(-1) + b * e.mean(-1), b, syy - b**2 * see


def profile_fit(u: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """The least-squares law of every row of `ys` (resamples x budgets) at once, by variable projection:
    a and b solved exactly for each alpha, alpha found on a log grid over its bounds and refined by golden
    section. The bootstrap's thousand refits take milliseconds this way, where curve_fit takes seconds;
    it minimises the same squares under the same bounds, and gives curve_fit its start."""
    ys = np.atleast_2d(ys)
    grid = np.geomspace(ALPHA_MIN, ALPHA_MAX, 400)
    e = np.exp(-grid[:, None] * u[None, :])  # alphas x budgets
    ec, yc = e - e.mean(1, keepdims=True), ys - ys.mean(1, keepdims=True)
    b = np.maximum(-(yc @ ec.T) / (ec**2).sum(1), 0.0)  # rows x alphas
    sse = (yc**2).sum(1, keepdims=True) - b**2 * (ec**2).sum(1)
    k = sse.argmin(1)
    lo, hi = np.log(grid[np.maximum(k - 1, 0)]), np.log(grid[np.minimum(k + 1, len(grid) - 1)])
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(60):  # golden section on ln(alpha): the bracket shrinks to 1e-12 of a grid step
        m1, m2 = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        f1 = _linear(ys, np.exp(-np.exp(m1)[:, None] * u))[2]
        f2 = _linear(ys, np.exp(-np.exp(m2)[:, None] * u))[2]
        lo, hi = np.where(f1 < f2, lo, m1), np.where(f1 < f2, m2, hi)
    alpha = np.exp((lo + hi) / 2)
    a, b, _ = _linear(ys, np.exp(-alpha[:, None] * u))
    return np.stack([a, b, alpha], 1)


def _problem(u: np.ndarray, y: np.ndarray, a: float, b: float, alpha: float) -> str | None:
    """Why a fitted (a, b, alpha) is no saturating law of these points, or None when it is one."""
    if not all(math.isfinite(v) for v in (a, b, alpha)):
        return "the fit did not converge"
    if b * math.exp(-alpha * float(u.min())) < 1e-6 * max(float(np.ptp(y)), 1e-12):
        return "the fit did not converge to a rising curve: the score does not rise with FLOPs"
    if alpha <= ALPHA_MIN * 1.01:
        return (
            f"the fit did not converge: alpha ran to its lower bound {ALPHA_MIN:g} "
            "(the scores do not saturate over these budgets)"
        )
    if alpha >= ALPHA_MAX * 0.99:
        return f"the fit did not converge: alpha ran to its upper bound {ALPHA_MAX:g}"
    return None


def fit_law(x: np.ndarray | list[float], y: np.ndarray | list[float]) -> Law:
    """Least-squares saturating power law through (x, y), by scipy's curve_fit started from the profile
    solution; raises FitError when the points admit none (too few budgets, a score that does not rise
    with FLOPs or does not saturate, or no convergence)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(set(x.tolist())) < MIN_BUDGETS:
        raise FitError(f"too few budgets ({len(set(x.tolist()))}; a fit needs {MIN_BUDGETS})")
    c0 = float(np.exp(np.mean(np.log(x))))
    u = np.log(x / c0)
    start = profile_fit(u, y)[0]
    lower, upper = [-np.inf, 0.0, ALPHA_MIN], [np.inf, np.inf, ALPHA_MAX]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OptimizeWarning)  # three points: no covariance, no matter
        try:
            params, _ = curve_fit(_model, u, y, p0=np.clip(start, lower, upper), jac=_jacobian,
                                  bounds=(lower, upper), method="trf", xtol=1e-12, ftol=1e-12, gtol=1e-12,
                                  max_nfev=5000)  # fmt: skip
        except (RuntimeError, ValueError) as e:
            raise FitError(f"the fit did not converge ({e})") from None
    a, b, alpha = (float(v) for v in params)
    problem = _problem(u, y, a, b, alpha)
    if problem:
        raise FitError(problem)
    return Law(a, b, alpha, c0)


def _budgets(points: list[Point]) -> list[Point]:
    """One configuration's points, cheapest first (a pretrained point always has its x)."""
    return sorted(points, key=lambda p: float(p.x or 0))


def bootstrap(points: list[Point], law: Law, n: int = N_BOOT, seed: int = RNG_SEED) -> tuple[np.ndarray, int]:
    """The law refitted to `n` resamples (each budget's seeds drawn with replacement, their mean taken);
    returns the parameters of the resamples that gave a saturating law, and how many did not. Budgets of
    one seed stay fixed; with one seed everywhere there is nothing to resample (no rows)."""
    rng = np.random.default_rng(seed)
    pts = _budgets(points)
    u = np.log(np.array([p.x for p in pts], dtype=float) / law.c0)
    values = [np.array(p.values or (p.y,), dtype=float) for p in pts]
    if all(len(v) == 1 for v in values):
        return np.empty((0, 3)), 0
    means = np.stack([rng.choice(v, size=(n, len(v)), replace=True).mean(1) for v in values], 1)
    params = profile_fit(u, means)
    ok = np.array([_problem(u, y, *row) is None for y, row in zip(means, params, strict=True)])
    return params[ok], int((~ok).sum())


def _interval(params: np.ndarray, c0: float, c: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c = np.atleast_1d(np.asarray(c, dtype=float))
    ys = params[:, :1] - params[:, 1:2] * np.exp(-params[:, 2:3] * np.log(c / c0)[None, :])
    tail = 100 * (1 - LEVEL) / 2
    return np.percentile(ys, tail, axis=0), np.percentile(ys, 100 - tail, axis=0)


@dataclass(frozen=True)
class BackTest:
    """The fit without its largest budget, asked for that budget."""

    flops: float  # the largest budget's total FLOPs
    measured: float  # its mean score
    predicted: float | None  # None: no fit (`problem` says why)
    interval: tuple[float, float] | None = None
    problem: str | None = None

    @property
    def error(self) -> float | None:
        return None if self.predicted is None else abs(self.predicted - self.measured)


@dataclass(frozen=True, eq=False)  # compared by identity: it holds arrays
class Fit:
    """One configuration's law, its bootstrap and its back-test; `law` None when there is none (why in
    `problem`: such a fit is reported, never drawn)."""

    method: str
    dataset: str | None
    backbone: str | None
    schedule: str
    label: str
    points: tuple[Point, ...]
    law: Law | None
    problem: str | None = None
    boot: np.ndarray = field(default_factory=lambda: np.empty((0, 3)))
    boot_failed: int = 0
    resamples: int = N_BOOT
    backtest: BackTest | None = None

    @property
    def budgets(self) -> int:
        return len(self.points)

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(p.seeds for p in self.points)

    @property
    def x_range(self) -> tuple[float, float]:
        return float(self.points[0].x or 0), float(self.points[-1].x or 0)

    def predict(self, c: float) -> float | None:
        return None if self.law is None else float(self.law(c))

    def interval(self, c: float | np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """The bootstrap's percentile interval at `c`; None without a law or without seeds to resample."""
        if self.law is None or len(self.boot) == 0:
            return None
        return _interval(self.boot, self.law.c0, c)


def fit_points(points: list[Point], n_boot: int = N_BOOT, seed: int = RNG_SEED) -> Fit:
    """The law of one configuration's points (one per budget), bootstrapped and back-tested."""
    pts = tuple(_budgets(points))
    first = pts[0]

    def made(law: Law | None, **rest: Any) -> Fit:
        return Fit(first.method, first.dataset, first.backbone, first.schedule, first.label, pts, law,
                   resamples=n_boot, **rest)  # fmt: skip

    try:
        law = fit_law([float(p.x or 0) for p in pts], [p.y for p in pts])
    except FitError as e:
        return made(None, problem=str(e))
    boot, failed = bootstrap(list(pts), law, n_boot, seed)
    return made(law, boot=boot, boot_failed=failed, backtest=back_test(list(pts), n_boot, seed))


def back_test(points: list[Point], n_boot: int = N_BOOT, seed: int = RNG_SEED) -> BackTest:
    """Fit without the largest budget; predict that budget's score (with its bootstrap interval)."""
    pts = _budgets(points)
    last, rest = pts[-1], pts[:-1]
    at = float(last.x or 0)
    if len(rest) < MIN_BUDGETS:
        why = (
            f"too few budgets to back-test ({len(pts)}; needs {MIN_BUDGETS + 1}: "
            f"a fit of {MIN_BUDGETS} and one to predict)"
        )
        return BackTest(at, last.y, None, problem=why)
    try:
        law = fit_law([float(p.x or 0) for p in rest], [p.y for p in rest])
    except FitError as e:
        return BackTest(at, last.y, None, problem=f"without the largest budget, {e}")
    boot, _ = bootstrap(rest, law, n_boot, seed)
    band = None
    if len(boot):
        lo, hi = _interval(boot, law.c0, at)
        band = (float(lo[0]), float(hi[0]))
    return BackTest(at, last.y, float(law(at)), band)


def fit_all(points: list[Point], n_boot: int = N_BOOT, seed: int = RNG_SEED) -> list[Fit]:
    """One fit per configuration (method, dataset, backbone, schedule), in the aggregate's order."""
    groups: dict[tuple, list[Point]] = defaultdict(list)
    for p in points:
        groups[p.config].append(p)
    return [fit_points(g, n_boot, seed) for g in groups.values()]


@dataclass(frozen=True)
class Prediction:
    fit: Fit
    value: float
    interval: tuple[float, float] | None


def predict_all(fits: list[Fit], c: float) -> list[Prediction]:
    """Each fitted law's score at `c`, highest first."""
    out = []
    for f in fits:
        if f.law is None:
            continue
        band = f.interval(c)
        out.append(
            Prediction(f, float(f.law(c)), None if band is None else (float(band[0][0]), float(band[1][0])))
        )
    return sorted(out, key=lambda p: -p.value)


def best_at(fits: list[Fit], c: float) -> tuple[Prediction, list[Prediction]] | None:
    """The highest predicted score at `c` and every prediction whose interval overlaps its interval
    (a tie); without intervals (one seed per budget) nothing can be called tied."""
    ranked = predict_all(fits, c)
    if not ranked:
        return None
    best = ranked[0]
    if best.interval is None:
        return best, []
    lo, hi = best.interval
    tied = [p for p in ranked[1:] if p.interval is not None and p.interval[1] >= lo and p.interval[0] <= hi]
    return best, tied


def _crossings_of(small: Law, large: Law, lo: float, hi: float) -> list[tuple[float, bool]]:
    """Where large - small changes sign in [lo, hi] (log grid, then brentq): (FLOPs, large overtakes)."""
    grid = np.geomspace(lo, hi, 600)
    gap = large(grid) - small(grid)
    out = []
    for i in np.nonzero(np.sign(gap[:-1]) * np.sign(gap[1:]) < 0)[0]:
        root = brentq(lambda v: float(large(math.exp(v)) - small(math.exp(v))),
                      math.log(grid[i]), math.log(grid[i + 1]))  # fmt: skip
        out.append((math.exp(root), bool(gap[i + 1] > 0)))
    return out


@dataclass(frozen=True)
class Crossover:
    """Where a large backbone's fitted curve crosses a small one's (same method, dataset, schedule)."""

    small: Fit
    large: Fit
    search: tuple[float, float]  # the FLOPs searched
    at: list[tuple[float, bool]]  # (FLOPs, True when the large one overtakes there)
    interval: tuple[float, float] | None = None  # of the first overtaking, over paired resamples
    found_in: int = 0  # resamples whose curves cross in the search range
    resamples: int = 0


def crossover(small: Fit, large: Fit) -> Crossover:
    """The fitted curves' crossings within CROSS_RANGE times the data's range, and over paired bootstrap
    resamples the percentile interval of the first FLOPs where the large one overtakes."""
    assert small.law is not None and large.law is not None
    lo = min(small.x_range[0], large.x_range[0]) * CROSS_RANGE[0]
    hi = max(small.x_range[1], large.x_range[1]) * CROSS_RANGE[1]
    at = _crossings_of(small.law, large.law, lo, hi)
    n = min(len(small.boot), len(large.boot))
    found = []
    for ps, pl in zip(small.boot[:n], large.boot[:n], strict=True):
        up = [c for c, over in _crossings_of(Law(*ps, small.law.c0), Law(*pl, large.law.c0), lo, hi) if over]
        if up:
            found.append(up[0])
    interval = None
    if found:
        tail = 100 * (1 - LEVEL) / 2
        interval = (float(np.percentile(found, tail)), float(np.percentile(found, 100 - tail)))
    return Crossover(small, large, (lo, hi), at, interval, len(found), n)


def crossovers(fits: list[Fit], params: dict[str, float]) -> list[Crossover]:
    """For each method, dataset and schedule fitted on two or more backbones: the smallest (by
    parameters) against the largest."""
    groups: dict[tuple, list[Fit]] = defaultdict(list)
    for f in fits:
        if f.law is not None and f.backbone is not None:
            groups[(f.label, str(f.dataset))].append(f)
    out = []
    for _, group in sorted(groups.items()):
        if len(group) < 2:
            continue
        ranked = sorted(group, key=lambda f: params.get(str(f.backbone), 0.0))
        out.append(crossover(ranked[0], ranked[-1]))
    return out
