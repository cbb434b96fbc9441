"""The transfer stage: pick the backbone (this run's, another run's, a weights file's, or a random
init), read it out frozen on the pretraining data's labels (readout/classify.py: knn_accuracy,
linear_accuracy), fine-tune and score it with energy metered; with transfer.probe=true also probe the same
starting weights frozen (readout/segmentation.py). Returns the record's transfer, probe and readout
sections.

Under torchrun every rank takes part (data-parallel fine-tuning, transfer/finetune.py; the read-outs
computed alike on every rank); the fine-tuning keeps its checkpoints under <run>/checkpoints/transfer/,
so the same command run again after an interruption resumes where it stopped (the read-outs, seconds
long, are computed again).
"""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from budgetssl.backbones.backbone import Backbone, build_backbone
from budgetssl.config.check import RunConfig
from budgetssl.engine import distributed
from budgetssl.engine.checkpoint_files import FOLDER as CHECKPOINTS
from budgetssl.engine.checkpoint_files import TRANSFER_MAY_CHANGE, Checkpoints
from budgetssl.engine.precision import resolve_device
from budgetssl.engine.rng import seed_everything
from budgetssl.meter.energy import EnergyTracker
from budgetssl.readout.classify import classify
from budgetssl.readout.segmentation import probe
from budgetssl.record.identity import identity_of
from budgetssl.record.sections import Pretraining, Provenance, Record
from budgetssl.record.summary import SUMMARY
from budgetssl.record.weights import load_backbone, provenance, weights_file
from budgetssl.stages.pretrain import over_nodes
from budgetssl.transfer.finetune import finetune

RANDOM_INIT = "random_init"
EXTERNAL = "external"


def transfer(run: RunConfig, folder: Path, backbone: Backbone | None = None) -> dict[str, Any]:
    """Read out and fine-tune `backbone`, else the run named by transfer.from_run, else a random init:
    the record's sections by name (transfer, probe: None without transfer.probe, readout)."""
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
    world = distributed.current()
    device = world.device if world.distributed else resolve_device(run.train.device)
    readout = classify(backbone, run.dataset, run.readout, device)  # before fine-tuning changes it
    # Fine-tuning changes the backbone in place: the probe starts from a copy taken before it.
    start = copy.deepcopy(backbone) if t.probe else None
    # codecarbon measures the whole machine: one tracker per node (local rank 0), summed over nodes.
    track = replace(run.energy, track=run.energy.track and world.local_rank == 0)
    with EnergyTracker(track) as energy:
        section = finetune(t, backbone, run.train, run.seed, folder, checkpoints(run, folder, "transfer"))
    reading, _ = over_nodes(energy.reading, world)
    section.transfer_init = init
    section.transfer_energy_kwh = reading.energy_kwh
    section.transfer_co2_kg = reading.co2_kg
    if start is None:
        return {"transfer": section, "probe": None, "readout": readout}
    with EnergyTracker(track) as energy:  # metered apart: not part of the transfer's cost
        probed = probe(t, run.readout, start, run.train, run.seed, folder)
    reading, _ = over_nodes(energy.reading, world)
    probed.probe_energy_kwh = reading.energy_kwh
    probed.probe_co2_kg = reading.co2_kg
    return {"transfer": section, "probe": probed, "readout": readout}


def checkpoints(run: RunConfig, folder: Path, label: str) -> Checkpoints:
    """The checkpoints of the fine-tuning (`transfer`), in their own folder beside pretraining's; rank 0
    writes them. They resume only under the same config, transfer section
    included."""
    return Checkpoints(
        folder / CHECKPOINTS / label,
        run.train.checkpoint_every_steps,
        config=run.to_dict(),
        write=distributed.current().is_main,
        may_change=TRANSFER_MAY_CHANGE,
    )


def source_record(run: RunConfig) -> Record:
    """What is being transferred, so a budgetssl-transfer record stands alone in a report: the source
    run's identity, pretraining, energy and provenance sections (not its outcome, nor any transfer it
    had); for a random init or weights from elsewhere, what is known (a cost of 0 or unknown)."""
    identity = identity_of(run)
    if not run.transfer.from_run:
        identity.method, identity.dataset, identity.budget_flops = RANDOM_INIT, None, 0.0
        return Record(identity=identity, pretraining=Pretraining(steps=0, train_flops=0))
    source = Path(run.transfer.from_run).expanduser()
    summary = source / SUMMARY
    if source.is_dir() and summary.is_file():
        found = Record.from_json(json.loads(summary.read_text()))
    elif carried := provenance(weights_file(source)):  # a bare file that budgetssl wrote carries its cost
        found = Record.from_json(carried)
    else:
        identity.method, identity.dataset, identity.budget_flops = EXTERNAL, None, None
        found = Record(identity=identity, pretraining=Pretraining())
    carried_provenance = found.provenance or Provenance()
    carried_provenance.pretrain_run = str(source.resolve())
    return Record(
        identity=found.identity,
        pretraining=found.pretraining or Pretraining(),
        monitors=found.monitors,  # the source's monitors and collapse verdict
        energy=found.energy,
        provenance=carried_provenance,
        extra=found.extra,
    )
