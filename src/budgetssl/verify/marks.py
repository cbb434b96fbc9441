"""budgetssl-report --verify: every run's verdict, as a column of the report's table (`verified`) and a
list of the runs that fail with their failed checks. Failing runs stay in the report, marked."""

from __future__ import annotations

from typing import Any

from budgetssl.verify.checks import verify
from budgetssl.verify.folder import NotARunFolder

COLUMN = ("verified", "verified")
PASSED = "yes"


def mark_runs(runs: list[Any]) -> list[str]:
    """Verify each run's folder (analysis/collect.py Run: record and folder), write its verdict into the
    record's `verified` (yes | FAIL: <checks>), and return the report's "Verification" section."""
    failed: list[str] = []
    for run in runs:
        try:
            checks = verify(run.folder)
        except NotARunFolder as e:
            run.record.extra[COLUMN[0]] = "FAIL: folder"
            failed.append(f"- `{run.folder}`: not verifiable: {e}")
            continue
        bad = [c for c in checks if c.failed]
        run.record.extra[COLUMN[0]] = f"FAIL: {', '.join(c.name for c in bad)}" if bad else PASSED
        if bad:
            failed.append(f"- `{run.folder}`: " + "; ".join(f"{c.name} ({c.detail})" for c in bad))
    lines = [
        "## Verification (budgetssl-verify)",
        "",
        f"{len(runs) - len(failed)} of {len(runs)} run(s) verified.",
    ]
    if failed:
        lines += [
            "",
            "Runs that fail verification (still listed above, marked in the `verified` column):",
            "",
        ]
        lines += failed
    return lines + [""]
