"""The plan as the user reads it: one table on the terminal, plan.csv (one row per job) and plan.json (the
jobs, the sweep's totals and what the prices assume), both written atomically."""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import fields
from pathlib import Path
from typing import Any

from budgetssl.files import atomic_write, write_json
from budgetssl.meter.peak import ACCELERATORS
from budgetssl.plan.price import COMPLETED, ERROR, PLANNED, Row

CSV, JSON = "plan.csv", "plan.json"
SUMMED = ("pretrain_flops", "transfer_flops", "probe_flops", "total_flops", "gpu_hours", "wall_hours",
          "energy_kwh", "co2_kg")  # fmt: skip
NOT_PRICED = (
    "what the runs do not count in their cost either: the read-outs' k-NN and linear classifiers, the "
    "label-free monitors, the scoring of the validation splits; and the probe's linear heads, which "
    "train until they converge (at most readout.max_epochs epochs): only its feature pass is priced"
)


def totals(rows: list[Row]) -> dict[str, Any]:
    """The sweep's totals over the jobs planned (completed and failing ones are counted, not summed)."""
    planned = [r for r in rows if r.status == PLANNED]
    out: dict[str, Any] = {
        "jobs": len(rows),
        PLANNED: len(planned),
        COMPLETED: sum(r.status == COMPLETED for r in rows),
        ERROR: sum(r.status == ERROR for r in rows),
        "with_warnings": sum(bool(r.warnings) and r.status == PLANNED for r in rows),
    }
    for key in SUMMED:
        out[key] = sum(getattr(r, key) or 0 for r in planned)
    return out


def assumptions(rows: list[Row], pue: float, grid: float) -> dict[str, Any]:
    """What the prices rest on: each device's datasheet figures, the MFUs and where they come from."""
    planned = [r for r in rows if r.status == PLANNED]
    devices = {}
    for name, dtype in sorted({(r.device, r.dtype) for r in planned if r.device and r.dtype}):
        a = ACCELERATORS[name]
        devices[f"{name} {dtype}"] = {
            "part": a.part,
            "peak_flops_per_s": a.peaks[dtype],
            "board_power_watts": a.watts,
            "source": f"{a.sheet} (dense {dtype}; Max TDP)",
        }
    sources = Counter(f"{r.mfu:.3g}: {r.mfu_source}" for r in planned if r.mfu is not None)
    return {
        "devices": devices,
        "mfu": dict(sources),
        "pue": pue,
        "grid_kg_per_kwh": grid,
        "energy": "GPU-hours x board power x PUE (meter/energy.py estimate_co2); CO2: x grid intensity",
        "not_priced": NOT_PRICED,
    }


def write(rows: list[Row], summary: dict[str, Any], folder: Path) -> tuple[Path, Path]:
    """plan.csv and plan.json in `folder`."""
    columns = [f.name for f in fields(Row)]

    def table(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            for r in rows:
                writer.writerow(
                    {**r.to_dict(), "warnings": " | ".join(r.warnings), "overrides": " ".join(r.overrides)}
                )

    atomic_write(folder / CSV, table)
    write_json(folder / JSON, {**summary, "jobs": [r.to_dict() for r in rows]})
    return folder / CSV, folder / JSON


def _g(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


HEADER = ("job", "status", "method", "backbone", "dataset", "budget", "FLOPs/step", "steps", "pretrain",
          "transfer", "probe", "total FLOPs", "MFU", "GPU-h", "kWh", "kg CO2", "notes")  # fmt: skip


def _notes(r: Row) -> str:
    n = len(r.warnings) + bool(r.error)
    return str(n) if n else ""


def lines(rows: list[Row], summary: dict[str, Any]) -> list[str]:
    """The terminal's table, then each job's warnings and errors, the totals and the assumptions."""
    body = [
        (str(r.job), r.status, r.method or "-", r.backbone or "-", r.dataset or "-", r.budget,
         _g(r.flops_per_step), str(r.steps) if r.steps is not None else "-", _g(r.pretrain_flops),
         _g(r.transfer_flops), _g(r.probe_flops), _g(r.total_flops), _g(r.mfu, 2), _g(r.gpu_hours),
         _g(r.energy_kwh), _g(r.co2_kg), _notes(r))
        for r in rows
    ]  # fmt: skip
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(HEADER)]
    out = ["  ".join(h.ljust(w) for h, w in zip(HEADER, widths, strict=True))]
    out += ["  ".join(c.ljust(w) for c, w in zip(b, widths, strict=True)) for b in body]
    notes = [f"job {r.job} ({Path(r.folder).name}): error: {r.error}" for r in rows if r.error]
    notes += [f"job {r.job} ({Path(r.folder).name}): {w}" for r in rows for w in r.warnings]
    if notes:
        out += ["", "notes:"] + [f"  {n}" for n in notes]
    t, a = summary["totals"], summary["assumptions"]
    out += [
        "",
        f"totals: {t['jobs']} jobs: {t[PLANNED]} planned, {t[COMPLETED]} already completed (skipped), "
        f"{t[ERROR]} that would fail (not counted); {t['with_warnings']} planned with warnings",
        f"  FLOPs {_g(t['total_flops'], 4)} (pretraining {_g(t['pretrain_flops'], 4)}, transfer "
        f"{_g(t['transfer_flops'], 4)}, probe {_g(t['probe_flops'], 4)}); GPU-hours {_g(t['gpu_hours'], 4)} "
        f"(one job after another: {_g(t['wall_hours'], 4)} h); energy {_g(t['energy_kwh'], 4)} kWh; CO2 "
        f"{_g(t['co2_kg'], 4)} kg",
        "assumptions:",
    ]
    for name, d in a["devices"].items():
        out.append(
            f"  {name}: {d['part']}, peak {d['peak_flops_per_s']:.4g} FLOP/s, board power "
            f"{d['board_power_watts']:g} W ({d['source']})"
        )
    out += [f"  MFU {m} ({n} jobs)" for m, n in a["mfu"].items()]
    out += [
        f"  PUE {a['pue']:g}, grid {a['grid_kg_per_kwh']:g} kg CO2/kWh (energy.hardware); {a['energy']}",
        f"  not priced: {a['not_priced']}",
    ]
    return out
