"""The transfer stage as a command sees it: pick the backbone, fine-tune and score, meter energy; with
transfer.probe=true also probe the same starting weights frozen."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from budgetssl.backbones.backbone import Backbone, build_backbone
from budgetssl.config.check import RunConfig
from budgetssl.engine.seed import seed_everything
from budgetssl.meter.energy import EnergyTracker
from budgetssl.record.weights import load_backbone, weights_file
from budgetssl.transfer.finetune import finetune, probe


def transfer(run: RunConfig, folder: Path, backbone: Backbone | None = None) -> dict[str, Any]:
    """Fine-tune on `backbone`, else on the run named by transfer.from_run, else on a random init."""
    t = run.transfer
    if backbone is not None:
        init = "pretrained"
    elif t.from_run:
        source = Path(t.from_run).expanduser()
        backbone = load_backbone(source, t.image_size, fallback=run.backbone)
        init = f"weights:{weights_file(source).resolve()}"
    else:
        seed_everything(run.seed)
        backbone = build_backbone(run.backbone, t.image_size)
        init = "random"
    # Fine-tuning changes the backbone in place: the probe starts from a copy taken before it.
    start = copy.deepcopy(backbone) if t.probe else None
    with EnergyTracker(run.energy) as energy:
        record = finetune(t, backbone, run.train, run.seed, folder)
    record |= {
        "transfer_init": init,
        "transfer_energy_kwh": energy.reading.energy_kwh,
        "transfer_co2_kg": energy.reading.co2_kg,
    }
    if start is not None:
        with EnergyTracker(run.energy) as energy:  # metered apart: not part of the transfer's cost
            record |= probe(t, start, run.train, run.seed, folder)
        record |= {"probe_energy_kwh": energy.reading.energy_kwh, "probe_co2_kg": energy.reading.co2_kg}
    return record
