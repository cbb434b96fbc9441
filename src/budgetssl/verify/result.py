"""One check's verdict and the line budgetssl-verify prints for it."""

from __future__ import annotations

from dataclasses import dataclass

OK, FAIL, SKIP = "ok", "FAIL", "skip"


@dataclass(frozen=True)
class Check:
    """`status` ok | FAIL | skip (the check does not apply to this run: no transfer, not a ladder rung);
    `detail` says what was compared (ok, skip) or `<expected> vs <found>` (FAIL)."""

    name: str
    status: str
    detail: str

    @property
    def failed(self) -> bool:
        return self.status == FAIL

    def line(self) -> str:
        return f"{self.status:<4} {self.name}: {self.detail}"


def ok(name: str, detail: str) -> Check:
    return Check(name, OK, detail)


def fail(name: str, expected: str, found: str) -> Check:
    return Check(name, FAIL, f"{expected} vs {found}")


def skip(name: str, why: str) -> Check:
    return Check(name, SKIP, why)


def first_failure(name: str, comparisons: list[tuple[bool, str, str]], passed: str) -> Check:
    """The check `name` from (holds, expected, found) comparisons: FAIL on the first that does not hold
    (the others that fail are appended to its found side), else ok with `passed`."""
    failures = [(expected, found) for holds, expected, found in comparisons if not holds]
    if not failures:
        return ok(name, passed)
    expected, found = failures[0]
    more = "".join(f"; also {e} vs {f}" for e, f in failures[1:])
    return fail(name, expected, found + more)
