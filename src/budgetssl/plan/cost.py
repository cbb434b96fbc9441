"""What FLOPs cost on an accelerator at a model FLOP utilisation (MFU), and that utilisation from evidence.

The cost is meter/energy.py's estimate, the one the record's `co2_kg_estimated` uses: the seconds one
device takes at the MFU's share of its peak (GPU-hours; N GPUs share them, so the wall time is 1/N of
them), times its board power and the data centre's PUE (kWh), times the grid's carbon intensity (kg
CO2-eq). The peak and the board power are the datasheet's (meter/peak.py), for the dtype the job's
matmuls run in.

The MFU comes from evidence where there is some: `plan.mfu` as given, else the median measured `mfu` of
the completed records under `plan.from_runs` with the job's method, backbone, precision and device (the
accelerator their `environment.device` names), with the number of records it rests on; else the hardware
model's `energy.hardware.utilization` (configs/config.yaml: 0.4, an assumption, chosen), said so.
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from budgetssl.analysis.aggregate import COSINE
from budgetssl.analysis.collect import collect
from budgetssl.config.schema import HardwareModel
from budgetssl.errors import ConfigError
from budgetssl.meter.energy import device_seconds, estimate_co2
from budgetssl.meter.peak import ACCELERATORS, accelerator_of
from budgetssl.record.sections import Record


@dataclass(frozen=True)
class Cost:
    gpu_hours: float  # device-hours: one device's seconds at the MFU, / 3600
    wall_hours: float  # on the job's GPUs
    energy_kwh: float | None  # None: no board power known for the device
    co2_kg: float | None


def cost(
    flops: float,
    peak_flops_per_s: float,
    mfu: float,
    gpus: int,
    watts: float | None,
    pue: float,
    grid_kg_per_kwh: float,
) -> Cost:
    """`flops` on `gpus` devices of `peak_flops_per_s` and `watts` at `mfu` of their peak."""
    seconds = device_seconds(flops, peak_flops_per_s, mfu)
    if watts is None:
        return Cost(seconds / 3600, seconds / 3600 / gpus, None, None)
    model = HardwareModel(
        name="", peak_flops_per_s=peak_flops_per_s, utilization=mfu, power_watts=watts, pue=pue,
        grid_kg_per_kwh=grid_kg_per_kwh,
    )  # fmt: skip
    estimate = estimate_co2(flops, model)
    return Cost(
        seconds / 3600, seconds / 3600 / gpus, estimate["energy_kwh_estimated"], estimate["co2_kg_estimated"]
    )


@dataclass(frozen=True)
class Measured:
    """A completed record's measured utilisation and what it ran on."""

    method: str | None
    backbone: str | None
    dataset: str | None
    schedule: str
    precision: str | None
    device: str  # the table's name for the accelerator (h100_sxm), else the record's device name
    mfu: float
    peak_flops_per_s: float | None
    hardware: dict  # the record's hardware model (PUE and grid intensity of its estimate)


def measured(records: list[Record]) -> list[Measured]:
    """The records that measured an MFU."""
    out = []
    for r in records:
        p = r.pretraining
        if p is None or not isinstance(p.mfu, int | float) or p.mfu <= 0:
            continue
        name = str((r.outcome.environment or {}).get("device") or "unknown")
        found = accelerator_of(name)
        out.append(
            Measured(
                method=r.identity.method,
                backbone=r.identity.backbone,
                dataset=r.identity.dataset,
                schedule=r.identity.schedule or COSINE,
                precision=p.precision,
                device=found.name if found is not None else name,
                mfu=float(p.mfu),
                peak_flops_per_s=p.peak_flops_per_s,
                hardware=(r.energy.hardware_model if r.energy and r.energy.hardware_model else {}),
            )
        )
    return out


def measured_in(folder: Path) -> list[Measured]:
    """The completed records below `folder` (plan.from_runs) that measured an MFU."""
    if not folder.is_dir():
        raise ConfigError(f"plan.from_runs={folder} is not a folder (give one that holds run folders)")
    return measured(collect(folder).records)


@dataclass(frozen=True)
class Utilisation:
    mfu: float
    source: str
    records: int  # the records it rests on; 0: given or assumed


def utilisation(
    given: float | None,
    evidence: list[Measured] | None,
    where: str | None,
    job: tuple[str, str, str, str],
    assumed: float,
) -> Utilisation:
    """The MFU a job is priced at: `given` (plan.mfu), else the median of the `evidence` (the records
    under `where`, plan.from_runs) whose (method, backbone, precision, device) is `job`'s, else `assumed`
    (energy.hardware.utilization)."""
    if given is not None:
        return Utilisation(given, "plan.mfu", 0)
    if evidence is not None:
        like = [m.mfu for m in evidence if (m.method, m.backbone, m.precision, m.device) == job]
        if like:
            return Utilisation(
                statistics.median(like), f"median of {len(like)} completed record(s) in {where}", len(like)
            )
    why = (
        f"; no completed record in {where} with this method, backbone, precision and device" if where else ""
    )
    return Utilisation(assumed, f"assumed (energy.hardware.utilization){why}", 0)


def reaching(flops: float, evidence: list[Measured], method: str, dataset: str | None,
             backbone: str | None, schedule: str) -> str:  # fmt: skip
    """What `flops` would cost on the accelerator the configuration's runs measured on, at their median
    measured MFU: one line for the report (budgetssl-report --predict-at)."""
    runs = [
        m
        for m in evidence
        if (m.method, m.dataset, m.backbone, m.schedule) == (method, dataset, backbone, schedule)
        and m.peak_flops_per_s
    ]
    if not runs:
        return "no run of it recorded an MFU (mfu, peak_flops_per_s): no cost"
    device = Counter(m.device for m in runs).most_common(1)[0][0]
    runs = [m for m in runs if m.device == device]
    mfu = statistics.median(m.mfu for m in runs)
    peak = statistics.median(float(m.peak_flops_per_s or 0) for m in runs)
    found = ACCELERATORS.get(device)
    hardware = runs[0].hardware
    known = found is not None and "pue" in hardware and "grid_kg_per_kwh" in hardware
    priced = cost(
        flops, peak, mfu, 1, found.watts if found else None,
        float(hardware.get("pue", 0)), float(hardware.get("grid_kg_per_kwh", 0)),
    )  # fmt: skip
    line = (
        f"{priced.gpu_hours:.3g} device-hours on {device} (peak {peak:.3g} FLOP/s) at the median measured "
        f"MFU {mfu:.3g} of {len(runs)} run(s)"
    )
    if not known or priced.energy_kwh is None:
        why = "no datasheet board power" if found is None else "no hardware model in its records"
        return line + f"; {why} for {device}: no energy estimate"
    assert found is not None
    return line + (
        f", {priced.energy_kwh:.3g} kWh and {priced.co2_kg:.3g} kg CO2 at its datasheet board power "
        f"({found.watts:g} W), PUE {hardware.get('pue')} and {hardware.get('grid_kg_per_kwh')} kg/kWh "
        f"(the runs' hardware model)"
    )
