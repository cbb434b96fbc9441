"""budgetssl-verify RUN_DIR...: check each run folder's claims from its own files (budgetssl/verify/):
its name against its saved config, flops_per_step re-derived from that config on meta tensors, the
budget's arithmetic, the weights file's sha256, metrics.jsonl, the transfer's and the probe's cost, a
ladder rung's share of its trunk. One line per check (`ok`, `FAIL <expected> vs <found>`, or `skip` where a
check does not apply). Exit status: 0 when every check of every folder passes, 1 when a check fails, 2
when a path is not a run folder (the message names the missing file)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

EXIT_FAILED = 1
EXIT_NOT_A_RUN = 2


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="budgetssl-verify", description=__doc__)
    parser.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR", help="run folders to check")
    args = parser.parse_args(argv)
    # Deferred: the checks import torch; `budgetssl-verify --help` and a bad argument answer without it.
    from budgetssl.verify.checks import verify
    from budgetssl.verify.folder import NotARunFolder

    code = 0
    for path in args.run_dirs:
        start = time.perf_counter()
        try:
            checks = verify(path)
        except NotARunFolder as e:
            print(f"budgetssl-verify: error: {e}", file=sys.stderr)
            code = EXIT_NOT_A_RUN
            continue
        failed = [c.name for c in checks if c.failed]
        if len(args.run_dirs) > 1:
            print(f"== {path}")
        for check in checks:
            print(check.line())
        verdict = f"FAILED ({', '.join(failed)})" if failed else "verified"
        print(f"{path}: {verdict} in {time.perf_counter() - start:.1f} s")
        if failed and code == 0:
            code = EXIT_FAILED
    if code:
        raise SystemExit(code)


if __name__ == "__main__":
    main()
