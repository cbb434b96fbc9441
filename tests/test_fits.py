"""The scaling fits alone (analysis/fits.py), on points built here from known laws: recovery, the
bootstrap's width, the back-test, crossovers, and the fits it must refuse."""

from __future__ import annotations

import math

import numpy as np
import pytest

from budgetssl.analysis.aggregate import Point
from budgetssl.analysis.figure import fit_curves
from budgetssl.analysis.fits import (
    N_BOOT,
    back_test,
    best_at,
    crossovers,
    fit_all,
    fit_law,
    fit_points,
)

BUDGETS = (1e11, 1e12, 1e13, 1e14)


def law(c, a=45.0, b=39905.0, alpha=0.3):
    """score = a - b * C^-alpha in raw FLOPs: 25 at 1e11, rising towards 45."""
    return a - b * np.asarray(c, dtype=float) ** -alpha


def points(values_per_budget, budgets=BUDGETS, method="mae", backbone="vit_small"):
    """One configuration's points: the given seeds' scores at each budget (x = the budget)."""
    out = []
    for c, values in zip(budgets, values_per_budget, strict=True):
        v = [float(s) for s in values]
        spread = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
        out.append(
            Point(method, "synthetic", backbone, c, c, float(np.mean(v)), spread, len(v), values=tuple(v))
        )
    return out


def test_a_fit_recovers_a_known_law_from_noiseless_points():
    xs = np.array([1e11, 1e12, 1e13, 1e14, 1e15])
    fitted = fit_law(xs, law(xs))
    assert fitted.a == pytest.approx(45.0, rel=1e-4)
    assert fitted.alpha == pytest.approx(0.3, rel=1e-4)
    # b is reported at C0 (the geometric mean of the FLOPs): in raw FLOPs it is b * C0^alpha.
    assert fitted.c0 == pytest.approx(1e13, rel=1e-9)
    assert fitted.b * fitted.c0**fitted.alpha == pytest.approx(39905.0, rel=1e-3)
    assert float(fitted(1e17)) == pytest.approx(float(law(1e17)), abs=1e-3)


def test_the_bootstrap_interval_widens_with_seed_noise():
    """Same means at every budget; the seeds around them spread 0.1 or 1.0."""
    base = law(BUDGETS)
    width = {}
    for noise in (0.1, 1.0):
        fit = fit_points(points([(m - noise, m, m + noise) for m in base]))
        assert fit.law is not None and len(fit.boot) + fit.boot_failed == N_BOOT
        lo, hi = fit.interval(1e15)
        assert lo[0] < fit.predict(1e15) < hi[0]
        width[noise] = float(hi[0] - lo[0])
    assert width[1.0] > 5 * width[0.1] > 0
    # Reproducible: the same runs give the same interval.
    again = fit_points(points([(m - 1.0, m, m + 1.0) for m in base]))
    assert float(np.ptp(again.interval(1e15))) == pytest.approx(width[1.0], rel=1e-12)


def test_one_seed_per_budget_gives_a_law_but_no_interval():
    fit = fit_points(points([(m,) for m in law(BUDGETS)]))
    assert fit.law is not None and fit.interval(1e15) is None and len(fit.boot) == 0


def test_too_few_budgets_is_no_fit_and_no_curve():
    fit = fit_points(points([(30.0, 31.0), (35.0, 36.0)], budgets=BUDGETS[:2]))
    assert fit.law is None and fit.problem == "too few budgets (2; a fit needs 3)"
    three = fit_points(points([(m,) for m in law(BUDGETS[:3])], budgets=BUDGETS[:3]))
    assert three.law is not None
    assert "too few budgets to back-test (3; needs 4" in three.backtest.problem
    curves = fit_curves([fit, three], upto=1e15)
    assert [c.fit for c in curves] == [three]


@pytest.mark.parametrize(
    ("scores", "why"),
    [
        ((40.0, 35.0, 30.0, 25.0), "the score does not rise with FLOPs"),
        ((20.0, 25.0, 30.0, 35.0), "the scores do not saturate over these budgets"),  # straight in log C
    ],
)
def test_a_curve_the_law_cannot_take_is_no_fit(scores, why):
    fit = fit_points(points([(s,) for s in scores]))
    assert fit.law is None and why in fit.problem and "did not converge" in fit.problem
    assert fit_curves([fit]) == []


def test_the_back_test_predicts_the_largest_budget_from_the_others():
    offsets = (0.0, 0.2, -0.1, 0.4)  # the measured means stray from the law
    pts = points([(m + d - 0.3, m + d + 0.3) for m, d in zip(law(BUDGETS), offsets, strict=True)])
    bt = back_test(pts)
    three = fit_law(
        list(BUDGETS[:3]), [float(law(c)) + d for c, d in zip(BUDGETS[:3], offsets[:3], strict=True)]
    )
    assert bt.flops == 1e14 and bt.measured == pytest.approx(float(law(1e14)) + 0.4)
    assert bt.predicted == pytest.approx(float(three(1e14)), abs=1e-9)
    assert bt.error == pytest.approx(abs(bt.predicted - bt.measured))
    assert bt.interval[0] < bt.predicted < bt.interval[1]
    # Noiseless points: the three-point fit is the law, so it predicts the fourth exactly.
    exact = back_test(points([(m,) for m in law(BUDGETS)]))
    assert exact.error < 1e-3 and exact.interval is None


def test_crossover_of_two_crafted_backbones_at_a_known_budget():
    """small: 40 - 10 t, large: 60 - 40 t, t = (C/1e12)^-0.5: equal where t = 2/3, C = 2.25e12."""
    t = lambda c: (np.asarray(c) / 1e12) ** -0.5  # noqa: E731
    small = points([(40 - 10 * t(c),) for c in BUDGETS], backbone="vit_small")
    large = points([(60 - 40 * t(c),) for c in BUDGETS], backbone="vit_large")
    params = {"vit_small": 22e6, "vit_large": 300e6}
    (found,) = crossovers(fit_all(small + large), params)
    assert found.small.backbone == "vit_small" and found.large.backbone == "vit_large"
    assert len(found.at) == 1
    flops, large_overtakes = found.at[0]
    assert large_overtakes and flops == pytest.approx(2.25e12, rel=1e-4)
    # Curves that stay apart: no crossing in 1e-3..1e6 x the data's range.
    above = points([(60 - 5 * t(c),) for c in BUDGETS], backbone="vit_large")
    (apart,) = crossovers(fit_all(small + above), params)
    assert apart.at == [] and apart.search == (pytest.approx(1e8), pytest.approx(1e20))


def test_the_predicted_best_lists_the_fits_whose_intervals_overlap():
    base = law(BUDGETS)
    close = fit_all(
        points([(m - 1, m, m + 1) for m in base], method="mae")
        + points([(m - 1 + 0.2, m + 0.2, m + 1 + 0.2) for m in base], method="clip")
        + points([(m - 1 - 8, m - 8, m + 1 - 8) for m in base], method="byol")
    )
    best, tied = best_at(close, 1e15)
    assert best.fit.method == "clip" and [p.fit.method for p in tied] == ["mae"]
    assert math.isclose(best.value - tied[0].value, 0.2, abs_tol=0.05)
