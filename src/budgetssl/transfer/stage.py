"""The transfer stage as a command sees it: pick the backbone, fine-tune and score, meter energy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from budgetssl.backbones.backbone import Backbone, build_backbone
from budgetssl.config.check import RunConfig
from budgetssl.engine.seed import seed_everything
from budgetssl.meter.energy import EnergyTracker
from budgetssl.record.weights import load_backbone, weights_file
from budgetssl.transfer.finetune import finetune


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
    with EnergyTracker(run.energy) as energy:
        record = finetune(t, backbone, run.train, run.seed, folder)
    return {
        **record,
        "transfer_init": init,
        "transfer_energy_kwh": energy.reading.energy_kwh,
        "transfer_co2_kg": energy.reading.co2_kg,
    }
