"""budgetssl-flops: the FLOPs of one training step of the configured run, as JSON, without training: the
step counted on meta tensors (verify/flops.py count), equal to a real step's count, in seconds at any size."""

from __future__ import annotations

import json
import sys

from budgetssl.config.compose import compose_config
from budgetssl.errors import BudgetSSLError
from budgetssl.plugins import check_config


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in args):
        print("usage: budgetssl-flops [OVERRIDE ...]  (e.g. backbone=vit_base dataset.image_size=224)")
        return
    try:
        from budgetssl.verify.flops import count  # imports torch: `--help` answers without it

        result = count(check_config(compose_config(args)))
    except BudgetSSLError as e:
        print(f"budgetssl-flops: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
