"""The run record, defined once: typed sections, each field with its unit.

summary.json stays one flat JSON object (the README's contract names its keys), so a section's field
names are the record's keys. The stages fill sections; the analysis, runs.csv and wandb read them. A
record written before this module loads too: keys it lacks read as None, keys no section knows are kept
in `Record.extra` and written back unchanged.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import Any, get_args, get_type_hints

from budgetssl.meter.ladder import Ladder

FLOPS = "FLOPs (fma=2)"
SECONDS = "seconds (wall clock)"
KWH = "kWh"
KG = "kg CO2-eq"
PERCENT = "percent"


def _f(unit: str = "", default: Any = None) -> Any:
    """A record field with its unit ("" where it has none: names, flags, text)."""
    return field(default=default, metadata={"unit": unit})


@dataclass
class Identity:
    """What was run: the axes a study varies."""

    method: str | None = _f()  # random_init / external for a transfer without a budgetssl pretraining
    dataset: str | None = _f()
    backbone: str | None = _f()
    seed: int | None = _f()
    budget_flops: float | None = _f(FLOPS)
    batch_size: int | None = _f("images per global batch")
    image_size: int | None = _f("pixels")
    schedule: str | None = _f()  # train.schedule: cosine | wsd (a ladder's rungs); None: older, cosine


@dataclass
class Outcome:
    """How the command ended: completed, failed (with why) or interrupted (with where it can resume)."""

    command: str | None = _f()
    status: str | None = _f()  # running | completed | failed | interrupted
    error: str | None = _f()
    error_type: str | None = _f()
    failed_step: int | None = _f("steps")  # a non-finite loss: the step it happened at
    signal: str | None = _f()
    interrupted_at_step: int | None = _f("steps")
    checkpoint: str | None = _f()  # inside the run folder
    started_at: str | None = _f("ISO 8601, UTC")
    finished_at: str | None = _f("ISO 8601, UTC")
    wall_seconds: float | None = _f(SECONDS)  # the whole command
    environment: dict[str, Any] | None = _f()  # versions and device


@dataclass
class Pretraining:
    """The metered pretraining: its cost, its recipe as resolved, and what the method reports of itself."""

    convention: str | None = _f()
    convention_detail: str | None = _f()
    flops_per_step: int | None = _f(FLOPS)
    flops_per_image: int | None = _f(FLOPS + ", one forward pass of the backbone")
    flops_breakdown: dict[str, Any] | None = _f(FLOPS + ", by pass")
    planned_steps: int | None = _f("steps")
    steps: int | None = _f("steps")
    train_flops: int | None = _f(FLOPS)
    budget_unspent_flops: float | None = _f(FLOPS)
    recipe: dict[str, Any] | None = _f()  # optimizer, lr after scaling, base_lr, betas, weight decay, ...
    teacher_init_weight: float | None = _f("fraction")  # EMA methods: the initial teacher's share at the end
    teacher_base_momentum: float | None = _f()
    val_accuracy: float | None = _f(PERCENT)  # methods trained on labels, on the held-out split
    val_images: int | None = _f("images")
    validation_note: str | None = _f()
    first_loss: float | None = _f()
    final_loss: float | None = _f()
    final_lr: float | None = _f()
    data_skipped: int | None = _f("samples")  # unreadable images skipped (dataset.skip_corrupt=true)
    pretrain_wall_seconds: float | None = _f(SECONDS)  # the training loop, every attempt of a resumed run
    data_wait_share: float | None = _f("fraction of pretrain_wall_seconds")  # waiting for the next batch
    meter_seconds: float | None = _f(SECONDS + ", measuring FLOPs beyond the training work")
    checkpoint_seconds: float | None = _f(SECONDS + ", training stopped for checkpoints")
    checkpoint_count: int | None = _f("checkpoints")  # saved by the training loop
    achieved_flops_per_s: float | None = _f(FLOPS + " per second: train_flops / pretrain_wall_seconds")
    peak_flops_per_s: float | None = _f(FLOPS + " per second, one device's peak")
    peak_source: str | None = _f()  # the datasheet (and dtype) or the measurement the peak came from
    mfu: float | None = _f("fraction: achieved_flops_per_s / (world_size x peak_flops_per_s)")
    world_size: int | None = _f("processes")
    nodes: int | None = _f()
    resumed_from_step: int | None = _f("steps")
    # The pretraining data's classes (0: unlabelled): a classifier's width, which budgetssl-verify needs to
    # rebuild the step where the dataset itself is not at hand.
    data_classes: int | None = _f("classes")
    ladder: Ladder | None = _f()  # a ladder's trunk or rung (meter/ladder.py: role, rungs, FLOPs shared)
    precision: str | None = _f()  # fp32 | bf16 | fp16: the autocast dtype the steps ran in
    tf32: bool | None = _f()  # fp32 matmuls and convolutions on TF32 tensor cores (CUDA, Ampere and later)
    compiled: bool | None = _f()  # train.compile: steps after the metered first ran under torch.compile
    optimizer_impl: str | None = _f()  # fused | foreach | for-loop: the optimizer's kernels
    channels_last: bool | None = _f()  # images and convolution weights channels-last (CUDA, conv tasks)

    def __post_init__(self) -> None:
        if isinstance(self.ladder, dict):  # as summary.json holds it
            self.ladder = Ladder.from_dict(self.ladder)


@dataclass
class Monitors:
    """The label-free monitors of pretraining (budgetssl.monitor) and the collapse verdict read from them.

    `monitor_init` and `monitor_final` map each monitor to its value before step 1 and to its mean over
    the last 10% of the monitored steps (`monitor_final_steps`): `rank_features`, `rank_embedding`
    (RankMe effective rank), `std_features`, `std_embedding` (lightly's std of the L2-normalised rows),
    `dim_*` (their widths), and for prototype methods `teacher_entropy`, `log_prototypes` (ln K),
    `entropy_gap`, `kl_teacher_student` (nats), `prototypes_used` and `prototypes` (K).
    """

    monitor_init: dict[str, float] | None = _f()
    monitor_final: dict[str, float] | None = _f()
    monitor_final_steps: list[int] | None = _f("steps")
    monitor_images: int | None = _f("images")  # the held-out batch the monitors read
    monitor_source: str | None = _f()  # the split it came from (val: never trained on)
    monitor_calls: int | None = _f("calls")
    monitor_seconds: float | None = _f(SECONDS + ", inside pretrain_wall_seconds, outside the budget")
    monitor_flops: int | None = _f(FLOPS + ", not in train_flops")
    collapse: dict[str, Any] | None = _f()  # null, or the rule that fired, its values and thresholds


@dataclass
class Energy:
    """Pretraining's energy and CO2: measured (codecarbon) and estimated from FLOPs on a stated model."""

    energy_kwh: float | None = _f(KWH)
    co2_kg: float | None = _f(KG)
    energy_method: str | None = _f()
    energy_detail: str | None = _f()
    energy_nodes_tracked: int | None = _f()
    energy_kwh_estimated: float | None = _f(KWH)
    co2_kg_estimated: float | None = _f(KG)
    hardware_model: dict[str, Any] | None = _f()  # what the estimate assumes


@dataclass
class Provenance:
    """Where the weights are and what they are."""

    params: int | None = _f("parameters")
    backbone_family: str | None = _f()
    backbone_timm: dict[str, Any] | None = _f()  # timm name and kwargs: timm.create_model rebuilds it
    backbone_weights: str | None = _f()  # inside the run folder
    # The weights file's sha256 as pretraining wrote it (rank 0): budgetssl-verify checks the file against it.
    backbone_weights_sha256: str | None = _f("sha256, hex")
    pretrain_run: str | None = _f()  # budgetssl-transfer: the run transferred from


@dataclass
class Transfer:
    """The fine-tuning on segmentation, metered like pretraining, and its scores."""

    transfer: str | None = _f()
    transfer_init: str | None = _f()  # pretrained | weights:<file> | random
    transfer_head: str | None = _f()
    transfer_freeze_backbone: bool | None = _f()
    transfer_backbone_lr_scale: float | None = _f()
    transfer_layer_decay: float | None = _f()
    transfer_budget_flops: float | None = _f(FLOPS)
    transfer_eval_mode: str | None = _f()
    transfer_eval_stride: int | None = _f("pixels")
    transfer_steps: int | None = _f("steps")
    transfer_flops_per_step: int | None = _f(FLOPS)
    transfer_flops: int | None = _f(FLOPS)
    transfer_flops_breakdown: dict[str, Any] | None = _f(FLOPS + ", by pass")
    transfer_final_loss: float | None = _f()
    transfer_wall_seconds: float | None = _f(SECONDS)
    transfer_world_size: int | None = _f("processes")  # data-parallel ranks sharing each batch
    transfer_resumed_from_step: int | None = _f("steps")  # 0: never interrupted
    transfer_data_skipped: int | None = _f("samples")
    miou: float | None = _f(PERCENT)
    miou_objects: float | None = _f(PERCENT)  # without the background class
    pixel_accuracy: float | None = _f(PERCENT)
    transfer_scores: str | None = _f()  # the per-class scores' file, inside the run folder
    transfer_energy_kwh: float | None = _f(KWH)
    transfer_co2_kg: float | None = _f(KG)


@dataclass
class Probe:
    """transfer.probe=true: the same start frozen, its features of the transfer's training images computed
    once, a linear head trained to convergence on them (readout/segmentation.py); metered apart, not in
    total_flops. probe_flops = probe_feature_flops + probe_steps x probe_flops_per_step + probe_epochs x
    probe_eval_flops_per_epoch."""

    probe_steps: int | None = _f("steps")  # the head's steps (every lr of the grid at once)
    probe_flops_per_step: int | None = _f(FLOPS)
    probe_flops: int | None = _f(FLOPS)
    probe_feature_flops: int | None = _f(FLOPS + ", the backbone's forward on the training images")
    probe_epochs: int | None = _f("epochs")
    probe_steps_per_epoch: int | None = _f("steps")
    probe_eval_flops_per_epoch: int | None = _f(FLOPS + ", each epoch's fit loss and held-out score")
    probe_images: int | None = _f("images")  # the transfer's training images the head trained on
    probe_protocol: dict[str, Any] | None = _f()  # lr grid, lr chosen, epochs, converged, final loss
    probe_final_loss: float | None = _f()
    probe_wall_seconds: float | None = _f(SECONDS)  # the whole probe, its scoring included
    probe_feature_seconds: float | None = _f(SECONDS + ", reading the images and their features")
    probe_head_seconds: float | None = _f(SECONDS + ", training the heads")
    probe_world_size: int | None = _f("processes")
    probe_resumed_from_step: int | None = _f("steps")
    probe_miou: float | None = _f(PERCENT)
    probe_miou_objects: float | None = _f(PERCENT)
    probe_pixel_accuracy: float | None = _f(PERCENT)
    probe_scores: str | None = _f()
    probe_energy_kwh: float | None = _f(KWH)
    probe_co2_kg: float | None = _f(KG)


@dataclass
class Readout:
    """Classification quality from the frozen backbone's pooled features, on the pretraining dataset's
    labels (readout/classify.py); null scores and a note where the data has none."""

    knn_accuracy: float | None = _f(PERCENT)  # DINO's weighted k-NN, top-1, on the held-out split
    linear_accuracy: float | None = _f(PERCENT)  # a linear classifier, top-1, on the held-out split
    readout_dataset: str | None = _f()
    readout_train_images: int | None = _f("images")  # the k-NN bank and the classifier's training set
    readout_test_images: int | None = _f("images")
    readout_classes: int | None = _f("classes")
    knn_k: int | None = _f("neighbours")
    knn_temperature: float | None = _f()
    linear_protocol: dict[str, Any] | None = _f()  # lr grid, lr chosen, epochs, converged, final loss
    readout_feature_seconds: float | None = _f(SECONDS + ", reading the images and their features")
    knn_seconds: float | None = _f(SECONDS)
    linear_seconds: float | None = _f(SECONDS)
    readout_note: str | None = _f()  # why the scores are null


# Derived once, here, from the sections (Record's properties of these names), for `Record.value`, runs.csv
# and the report. summary.json writes `total_flops` alone (README "The run record": readers without this
# package get the cost axis); `total_co2_kg` is runs.csv's column, derived again wherever it is read.
DERIVED = {
    "total_flops": FLOPS + ", pretraining + fine-tuning (not the probe)",
    "total_co2_kg": KG + ", measured, pretraining + fine-tuning",
}


def names(cls: type) -> list[str]:
    return [f.name for f in fields(cls)]


def split(cls: type, flat: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The section `cls` from the keys of `flat` it knows, and the keys it does not."""
    own = set(names(cls))
    return cls(**{k: v for k, v in flat.items() if k in own}), {k: v for k, v in flat.items() if k not in own}


@dataclass
class Record:
    """One run's record. Optional sections are absent (None) where the command did not run that stage.

    Its fields are the section list: each section's name, class and whether every record has it (a
    default factory: identity, outcome) come from here alone (`SECTIONS`, `ALWAYS`), in the order
    summary.json writes them."""

    identity: Identity = field(default_factory=Identity)
    outcome: Outcome = field(default_factory=Outcome)
    pretraining: Pretraining | None = None
    monitors: Monitors | None = None
    energy: Energy | None = None
    provenance: Provenance | None = None
    transfer: Transfer | None = None
    probe: Probe | None = None
    readout: Readout | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # keys no section knows (older or newer writers)

    def sections(self) -> list[Any]:
        return [s for s in (getattr(self, name) for name, _ in SECTIONS) if s is not None]

    @property
    def total_flops(self) -> int | None:
        """What the fine-tuned score cost: pretraining plus fine-tuning (random init: the fine-tuning
        alone); None when the pretraining's cost is unknown (weights from elsewhere) or nothing was
        transferred."""
        if self.transfer is None or self.transfer.transfer_flops is None:
            return None
        spent = self.pretraining.train_flops if self.pretraining is not None else None
        if spent is None:
            return self.extra.get("total_flops")  # an older writer's own total, where it gave one
        return spent + self.transfer.transfer_flops

    @property
    def total_co2_kg(self) -> float | None:
        """Measured CO2 of pretraining plus fine-tuning; None when neither was measured."""
        parts = [
            self.energy.co2_kg if self.energy else None,
            self.transfer.transfer_co2_kg if self.transfer else None,
        ]
        known = [float(v) for v in parts if isinstance(v, int | float)]
        return sum(known) if known else None

    def value(self, key: str) -> Any:
        """A field by its record name (`a.b`: key b of dict field a, e.g. recipe.lr); None where absent."""
        head, *rest = key.split(".")
        if head in DERIVED:
            found: Any = getattr(self, head)
        else:
            found = self.extra.get(head)
            for section in self.sections():
                if head in section.__dataclass_fields__:
                    found = getattr(section, head)
                    break
        for part in rest:
            if isinstance(found, Ladder):
                found = found.to_dict()
            found = found.get(part) if isinstance(found, dict) else None
        return found

    def number(self, key: str) -> float | None:
        value = self.value(key)
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

    def to_json(self) -> dict[str, Any]:
        """The flat summary.json object: every field of every present section, derived totals, extras."""
        out: dict[str, Any] = {}
        for section in self.sections():
            out.update({f.name: _plain(getattr(section, f.name)) for f in fields(section)})
        if self.transfer is not None:
            out["total_flops"] = self.total_flops
        return {**out, **{k: v for k, v in self.extra.items() if k not in out and k not in DERIVED}}

    @classmethod
    def from_json(cls, flat: dict[str, Any]) -> Record:
        """A record from summary.json, this version's or an older one's (sections inferred from keys)."""
        rest = dict(flat)
        parts: dict[str, Any] = {}
        for name, section in SECTIONS:
            present = any(k in rest for k in names(section))
            parts[name], rest = split(section, rest)
            if not present and name not in ALWAYS:
                parts[name] = None
        stored = {k: rest.pop(k) for k in DERIVED if k in rest}
        record = cls(**parts, extra=rest)
        if record.total_flops is None and stored.get("total_flops") is not None:
            record.extra["total_flops"] = stored["total_flops"]  # an older writer's own, where not derivable
        return record

    def merge(self, **sections: Any) -> Record:
        """This record with the given sections set (a stage's result), extras of both kept."""
        for name, section in sections.items():
            setattr(self, name, section)
        return self


def _plain(value: Any) -> Any:
    """A field's JSON value (a nested section as its object)."""
    return value.to_dict() if isinstance(value, Ladder) else value


def _section_class(kind: Any) -> type:
    """`Pretraining | None` -> Pretraining; `Identity` -> Identity."""
    return next((a for a in get_args(kind) if a is not type(None)), kind)


_HINTS = get_type_hints(Record)
# Every section, in the order summary.json writes them, by the Record attribute that holds it.
SECTIONS: tuple[tuple[str, type], ...] = tuple(
    (f.name, _section_class(_HINTS[f.name])) for f in fields(Record) if f.name != "extra"
)
# The sections every record has, even one read from a file that lacks all their keys.
ALWAYS: tuple[str, ...] = tuple(
    name for name, _ in SECTIONS if Record.__dataclass_fields__[name].default_factory is not MISSING
)


def units() -> dict[str, str]:
    """Every record field and its unit, for documentation and runs.csv readers."""
    out = {f.name: f.metadata.get("unit", "") for _, cls in SECTIONS for f in fields(cls)}
    return {**out, **DERIVED}
