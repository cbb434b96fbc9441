"""Energy and CO2: measured with codecarbon's offline tracker, and estimated from FLOPs.

The estimate is how the reproduced study reported CO2 for hardware it did not meter: time at an
assumed utilisation of the assumed hardware's peak, times its power, the data centre's PUE and the
grid's carbon intensity. Both appear in every record, with how each was obtained.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import asdict, dataclass
from typing import Any

from budgetssl.config.schema import EnergyConfig, HardwareModel


@dataclass
class EnergyReading:
    energy_kwh: float | None
    co2_kg: float | None
    method: str  # RAPL, NVML, estimate or disabled
    detail: str


def describe_hardware(tracker: Any) -> tuple[str, str]:
    """How codecarbon measured: RAPL/NVML counters where it found them, otherwise its own estimate."""
    parts, method = [], "estimate"
    for hw in getattr(tracker, "_hardware", []):
        kind = type(hw).__name__
        mode = getattr(hw, "_mode", None)
        if kind == "GPU":
            parts.append("GPU: NVML")
            method = "NVML"
        elif kind == "CPU":
            if mode == "intel_rapl":
                parts.append("CPU: RAPL")
                method = "RAPL" if method == "estimate" else method
            else:
                generic = " with a generic TDP" if getattr(hw, "_is_generic_tdp", False) else ""
                parts.append(f"CPU: estimate from {mode or 'TDP'}{generic}")
        elif kind == "RAM":
            parts.append("RAM: estimate from installed memory")
    return method, "; ".join(parts) or "no hardware found"


class EnergyTracker:
    """Context manager around codecarbon's OfflineEmissionsTracker (no network needed)."""

    def __init__(self, cfg: EnergyConfig) -> None:
        self.cfg = cfg
        self.tracker: Any = None
        self.reading = EnergyReading(None, None, "disabled", "energy.track=false")

    def __enter__(self) -> EnergyTracker:
        if not self.cfg.track:
            return self
        # Deferred: codecarbon (and its hardware probes) load only when energy is tracked.
        from codecarbon import OfflineEmissionsTracker

        logging.getLogger("codecarbon").setLevel(logging.ERROR)  # after import: codecarbon sets its own

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.tracker = OfflineEmissionsTracker(
                country_iso_code=self.cfg.country_iso_code,
                measure_power_secs=self.cfg.measure_power_secs,
                save_to_file=False,
                log_level="error",
                tracking_mode="machine",
            )
            self.tracker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.tracker is None:
            return
        # Deferred: codecarbon (and its hardware probes) load only when energy is tracked.
        import codecarbon

        co2 = self.tracker.stop()
        data = self.tracker.final_emissions_data
        method, detail = describe_hardware(self.tracker)
        detail = f"codecarbon {codecarbon.__version__} offline, country {self.cfg.country_iso_code}: {detail}"
        self.reading = EnergyReading(float(data.energy_consumed), float(co2 or 0.0), method, detail)


def device_seconds(flops: float, peak_flops_per_s: float, utilization: float) -> float:
    """The seconds one device of `peak_flops_per_s` takes for `flops` at that share of its peak (N
    devices take 1/N of it, wall clock)."""
    return flops / (peak_flops_per_s * utilization)


def estimate_co2(flops: float, hw: HardwareModel) -> dict[str, Any]:
    """Energy and CO2 of `flops` on the hardware model, plus the model itself so the number is traceable."""
    seconds = device_seconds(flops, hw.peak_flops_per_s, hw.utilization)
    kwh = seconds * hw.power_watts * hw.pue / 3.6e6
    return {
        "energy_kwh_estimated": kwh,
        "co2_kg_estimated": kwh * hw.grid_kg_per_kwh,
        "hardware_model": {**asdict(hw), "seconds_estimated": seconds},
    }
