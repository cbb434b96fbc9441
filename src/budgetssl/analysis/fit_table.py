"""The report's "Scaling fits" section: each configuration's law, its prediction at the asked budget
with the bootstrap's interval, its back-test, the predicted best configuration there and the predicted
crossover of a small and a large backbone -- and, said plainly, each fit that could not be made."""

from __future__ import annotations

from collections.abc import Sequence

from budgetssl.analysis.collapse import mark
from budgetssl.analysis.fits import (
    CROSS_RANGE,
    LEVEL,
    MIN_BUDGETS,
    RNG_SEED,
    Fit,
    Prediction,
    best_at,
    crossovers,
    predict_all,
)


def _g(value: float) -> str:
    return f"{value:.3g}"


def _name(f: Fit) -> str:
    return f"{mark(f.label, f.points)} / {f.dataset or '-'} / {f.backbone or '-'}"


def _with_interval(value: float, band: tuple[float, float] | None, why_none: str = "no interval") -> str:
    return f"{value:.2f} " + (f"[{band[0]:.2f}, {band[1]:.2f}]" if band else f"({why_none})")


def _no_band(f: Fit) -> str:
    if all(s == 1 for s in f.seeds):
        return "no interval: one seed per budget"
    return f"no interval: no resample of {f.resamples} converged"


def _row(f: Fit, prediction: Prediction | None) -> str:
    law, bt = f.law, f.backtest
    assert law is not None and prediction is not None
    at = _with_interval(prediction.value, prediction.interval, _no_band(f))
    if f.boot_failed:
        at += f" ({f.boot_failed} of {f.resamples} resamples did not converge)"
    if bt is None or bt.predicted is None:
        back = [_g(bt.flops) if bt else "-", bt.problem if bt and bt.problem else "-", "-", "-"]
        if bt is not None:
            back[2] = f"{bt.measured:.2f}"
    else:
        back = [_g(bt.flops), _with_interval(bt.predicted, bt.interval, "no interval: one seed per budget"),
                f"{bt.measured:.2f}", f"{bt.error:.2f}"]  # fmt: skip
    seeds = ",".join(str(s) for s in f.seeds)
    return (
        f"| {mark(f.label, f.points)} | {f.dataset or '-'} | {f.backbone or '-'} | {f.budgets} | {seeds} "
        f"| {law.a:.4g} "
        f"| {law.b:.4g} | {_g(law.c0)} | {law.alpha:.3g} | {at} | " + " | ".join(back) + " |"
    )


def _best(fits: list[Fit], at: float, label: str) -> list[str]:
    found = best_at(fits, at)
    if found is None:
        return []
    best, tied = found
    lines = [f"### Predicted best at {_g(at)} FLOPs", ""]
    lines.append(
        f"- best: {_name(best.fit)}: {label} {_with_interval(best.value, best.interval, _no_band(best.fit))}"
    )
    if best.interval is None:
        lines.append("- ties cannot be judged without an interval: run several seeds per budget")
    elif tied:
        lines += [
            f"- tied with the best (the intervals overlap): {_name(p.fit)}: "
            f"{_with_interval(p.value, p.interval)}"
            for p in tied
        ]
    else:
        lines.append("- no other fit's interval overlaps the best one's")
    no_band = [p for p in predict_all(fits, at)[1:] if p.interval is None]
    if no_band and best.interval is not None:
        lines.append(
            "- not judged (one seed per budget, no interval): " + ", ".join(_name(p.fit) for p in no_band)
        )
    return lines + [""]


def _crossovers(fits: list[Fit], params: dict[str, float]) -> list[str]:
    found = crossovers(fits, params)
    if not found:
        return []
    lo, hi = CROSS_RANGE
    lines = [
        "### Predicted crossover of a small and a large backbone (fitted curves)",
        "",
        f"Searched from {lo:g}x the smallest to {hi:g}x the largest total FLOPs of the two fits; the "
        f"interval is over paired resamples whose curves cross there.",
        "",
        "| method | dataset | small | large | the fitted curves cross at (FLOPs) | "
        f"{LEVEL:.0%} interval of where the large overtakes |",
        "|---" * 6 + "|",
    ]
    for c in found:
        if c.at:
            where = "; ".join(
                f"{'large overtakes small' if up else 'small overtakes large'} at {_g(x)}" for x, up in c.at
            )
        else:
            where = f"they do not cross between {_g(c.search[0])} and {_g(c.search[1])}"
        if c.interval:
            band = (
                f"[{_g(c.interval[0])}, {_g(c.interval[1])}] ({c.found_in} of {c.resamples} resamples cross)"
            )
        elif c.resamples:
            band = f"no resample of {c.resamples} crosses"
        else:
            band = "no interval: one seed per budget"
        lines.append(
            f"| {mark(c.small.label, c.small.points + c.large.points)} | {c.small.dataset or '-'} "
            f"| {c.small.backbone} | {c.large.backbone} "
            f"| {where} | {band} |"
        )
    return lines + [""]


def scaling_section(fits: list[Fit], at: float, params: dict[str, float], label: str,
                    default: bool = True, left_out: Sequence[str] = (),
                    unlearned: Sequence[str] = ()) -> list[str]:  # fmt: skip
    """The section's markdown lines: the method, the table of fits, what was not fitted and why (the
    collapsed points `left_out` of the fits, and the points of methods that did not learn, `unlearned`),
    the predicted best at `at` and the predicted crossovers."""
    resamples = max((f.resamples for f in fits), default=0)
    lines = [
        "## Scaling fits",
        "",
        f"Per configuration with at least {MIN_BUDGETS} budgets: {label} = a - b (C/C0)^-alpha, C the total "
        "FLOPs (pretraining + fine-tuning), fitted by least squares (scipy `curve_fit` on ln C, b > 0, "
        "alpha > 0) to the mean over seeds at each budget; b is given at C0, the geometric mean of the "
        "fit's FLOPs. The form is the saturating power law of Hestness et al. 2017 and Kaplan et al. "
        "2020; fits per configuration with their error reported follow Cherti et al. 2023 (CVPR). "
        f"Intervals: {LEVEL:.0%} percentile bootstrap, {resamples} resamples of the seeds within each "
        f"budget (RNG seed {RNG_SEED}). Back-test: the same fit without the largest budget, its "
        "prediction there beside the measured mean.",
        "",
        f"Predicted at F = {_g(at)} total FLOPs"
        + (
            " (the default: 10x the largest budget; `--predict-at` to change)."
            if default
            else " (`--predict-at`)."
        ),
        "",
    ]
    fitted = [f for f in fits if f.law is not None]
    predictions = {id(p.fit): p for p in predict_all(fitted, at)}
    if fitted:
        lines += [
            f"| method | dataset | backbone | budgets | seeds per budget | a | b (at C0) | C0 | alpha "
            f"| {label} at F [{LEVEL:.0%}] | back-test at (FLOPs) | predicted there | measured | abs error |",
            "|---" * 14 + "|",
        ]
        lines += [_row(f, predictions.get(id(f))) for f in fitted]
        lines.append("")
    failed = [f for f in fits if f.law is None]
    lines += [f"- {_name(f)}: {f.problem}: not fitted, not drawn." for f in failed]
    if left_out:
        lines.append(
            "- left out of the fits as collapsed (`--include-collapsed` fits them): " + ", ".join(left_out)
        )
    if unlearned:
        lines.append(
            "- left out of the fits as methods that did not learn (`--include-unlearned` fits them): "
            + ", ".join(unlearned)
        )
    if not fitted:
        lines.append(
            f"- No configuration has a fit: too few budgets or no convergence (a fit needs {MIN_BUDGETS})."
        )
    lines += [""] if failed or not fitted or left_out or unlearned else []
    return lines + _best(fitted, at, label) + _crossovers(fitted, params)
