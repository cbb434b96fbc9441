"""Print each method's metered FLOPs per training step, relative to supervised, with its breakdown.

usage: python benchmarks/method_flops.py [--cpu] [OVERRIDE ...]
e.g.   python benchmarks/method_flops.py backbone=vit_base dataset.image_size=224 train.batch_size=2
       python benchmarks/method_flops.py --cpu   (the demo's method configs, configs/method/cpu/)

Without --cpu every method runs with its config's reference sizes. Each method's step is counted on meta
tensors, as budgetssl-flops counts it (verify/flops.py count; tests/test_verify.py checks that it equals a
real step's count), so no size needs the memory or the time of a real step.
"""

from __future__ import annotations

import argparse
import json

from budgetssl.config.compose import compose_config
from budgetssl.plugins import check_config
from budgetssl.verify.flops import count

METHODS = ["supervised", "simclr", "byol", "dino", "mae", "mae_tiny", "clip", "mocov3"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cpu", action="store_true", help="the demo's CPU-sized method configs")
    args, overrides = parser.parse_known_args()
    methods = [m for m in METHODS if m != "mae_tiny"] if args.cpu else METHODS
    rows = []
    for name in methods:
        method = f"method={'cpu/' if args.cpu else ''}{name}"
        result = count(check_config(compose_config([*overrides, "energy.track=false", method])))
        parts = {k: v for k, v in result["breakdown"]["forward"].items() if k != "total"}
        rows.append({"method": name, "flops_per_step": result["flops_per_step"], "forward_parts": parts})
        print(f"counted {name}", flush=True)
    base = next((r["flops_per_step"] for r in rows if r["method"] == "supervised"), None)
    print(f"\n{'method':<11} {'GFLOPs/step':>12} {'x supervised':>13}  forward by part (GFLOPs)")
    for r in rows:
        ratio = f"{r['flops_per_step'] / base:.3f}" if base else "-"
        parts = ", ".join(f"{k} {v / 1e9:.3f}" for k, v in r["forward_parts"].items())
        print(f"{r['method']:<11} {r['flops_per_step'] / 1e9:>12.3f} {ratio:>13}  {parts}")
    print("\n" + json.dumps({"overrides": overrides, "rows": rows}))


if __name__ == "__main__":
    main()
