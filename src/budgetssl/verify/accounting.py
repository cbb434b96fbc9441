"""The record's arithmetic, checked against itself and against metrics.jsonl: the pretraining budget, the
rows logged while training, the transfer's and the probe's cost, a ladder rung's share of its trunk.

Each check reads the record's fields as written (meter/budget.py is the rule they were made by: floor(budget
/ step) steps of one measured cost each, so the spent FLOPs fall short of the budget by less than a step).
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path
from typing import Any

from budgetssl.meter.ladder import Ladder
from budgetssl.record.sections import Record
from budgetssl.record.summary import SUMMARY
from budgetssl.verify.folder import RunFolder
from budgetssl.verify.result import Check, fail, first_failure, skip


def _missing(record: Record, keys: list[str]) -> list[str]:
    return [k for k in keys if record.value(k) is None]


def pretrained_here(folder: RunFolder) -> str | None:
    """None when this run pretrained; else why the pretraining checks do not apply to this folder."""
    record = folder.record
    if folder.command != "budgetssl-transfer" and record.pretraining is not None:
        return None
    source = record.provenance.pretrain_run if record.provenance else None
    return f"pretrained in {source}: verify that folder" if source else "no pretraining in this run"


def check_budget(folder: RunFolder) -> Check:
    """steps x flops_per_step == train_flops <= budget_flops < train_flops + flops_per_step."""
    if (why := pretrained_here(folder)) is not None:
        return skip("budget", why)
    record = folder.record
    missing = _missing(record, ["steps", "flops_per_step", "train_flops", "budget_flops"])
    if missing:
        return fail(
            "budget", "steps, flops_per_step, train_flops and budget_flops", f"no {', '.join(missing)}"
        )
    steps, per_step = int(record.value("steps")), int(record.value("flops_per_step"))
    spent, budget = int(record.value("train_flops")), Fraction(record.value("budget_flops"))
    product = steps * per_step
    comparisons = [
        (
            product == spent,
            f"steps x flops_per_step = {steps} x {per_step} = {product}",
            f"train_flops {spent}",
        ),
        (spent <= budget, f"train_flops {spent} <= budget_flops {float(budget):.6g}", "above it"),
    ]
    if record.value("ladder.role") == "trunk":  # it stops at its largest rung's branch point, by design
        return first_failure(
            "budget", comparisons, f"{steps} x {per_step} = {spent} <= {float(budget):.6g} (a ladder's trunk)"
        )
    comparisons.append(
        (
            budget < spent + per_step,
            f"budget_flops {float(budget):.6g} < train_flops + flops_per_step = {spent + per_step}",
            "a whole step or more left unspent",
        )
    )
    return first_failure(
        "budget", comparisons, f"{steps} x {per_step} = {spent} <= {float(budget):.6g} < {spent + per_step}"
    )


def rows_agree(
    folder: RunFolder, stage: str, steps: int, flops: int, per_step: int | None
) -> list[tuple[bool, str, str]]:
    """metrics.jsonl's rows of `stage` against the record: the last step and FLOPs, both strictly
    increasing, and (with `per_step`) every row's FLOPs its step times the step's cost."""
    rows = folder.stage_rows(stage)
    if not rows:
        return [(False, f"rows of stage '{stage}' in metrics.jsonl", "none")]
    try:
        logged = [(int(r["step"]), int(r["flops"])) for r in rows]
    except (KeyError, TypeError, ValueError):
        return [(False, f"step and flops in every '{stage}' row", "a row without them")]
    last_step, last_flops = logged[-1]
    out = [
        (last_step == steps, f"last '{stage}' row at step {steps} (record)", f"step {last_step}"),
        (last_flops == flops, f"last '{stage}' row at {flops} FLOPs (record)", f"{last_flops}"),
    ]
    for (s0, f0), (s1, f1) in zip(logged, logged[1:], strict=False):
        if not (s1 > s0 and f1 > f0):
            out.append(
                (False, f"'{stage}' steps and FLOPs strictly increasing", f"step {s0} -> {s1}, {f0} -> {f1}")
            )
            break
    if per_step is not None:
        wrong = [(s, f) for s, f in logged if f != s * per_step]
        if wrong:
            s, f = wrong[0]
            out.append((False, f"'{stage}' row at step {s}: {s} x {per_step} = {s * per_step} FLOPs", f"{f}"))
    return out


def check_metrics(folder: RunFolder) -> Check:
    """The pretraining's rows in metrics.jsonl against the record."""
    if (why := pretrained_here(folder)) is not None:
        return skip("metrics", why)
    if folder.rows is None:
        return fail("metrics", "metrics.jsonl in the run folder", "no such file")
    record = folder.record
    missing = _missing(record, ["steps", "train_flops", "flops_per_step"])
    if missing:
        return fail(
            "metrics", "steps, train_flops and flops_per_step in the record", f"no {', '.join(missing)}"
        )
    steps, spent = int(record.value("steps")), int(record.value("train_flops"))
    comparisons = rows_agree(folder, "pretrain", steps, spent, int(record.value("flops_per_step")))
    if folder.unreadable_rows:
        comparisons.append(
            (False, "every line of metrics.jsonl a JSON object", f"lines {folder.unreadable_rows}")
        )
    count = len(folder.stage_rows("pretrain"))
    return first_failure(
        "metrics", comparisons, f"{count} pretraining rows, the last at step {steps}, {spent} FLOPs"
    )


def fine_tuning(folder: RunFolder, prefix: str) -> Check:
    """The transfer's cost (`prefix` transfer: steps x FLOPs per step, its budget, transfer.flops or
    transfer.steps from the saved config, its rows in metrics.jsonl, the record's total_flops) or the
    probe's (`probe`)."""
    if prefix == "probe":
        return check_probe(folder)
    record = folder.record
    keys = [f"{prefix}_steps", f"{prefix}_flops_per_step", f"{prefix}_flops"]
    if record.transfer is None:
        return skip(prefix, f"no {prefix} in this run")
    missing = _missing(record, keys)
    if missing:
        return fail(prefix, ", ".join(keys), f"no {', '.join(missing)}")
    steps, per_step, spent = (int(record.value(k)) for k in keys)
    comparisons = [
        (
            steps * per_step == spent,
            f"{prefix}_steps x {prefix}_flops_per_step = {steps * per_step}",
            f"{prefix}_flops {spent}",
        )
    ]
    budget = record.value("transfer_budget_flops")
    configured = folder.config.get("transfer", {}).get("steps") if "transfer" in folder.config else None
    if configured:
        comparisons.append(
            (steps == int(configured), f"transfer.steps={configured} steps (config)", f"{steps}")
        )
    elif budget is not None:
        b = Fraction(budget)
        comparisons += [
            (spent <= b, f"{prefix}_flops {spent} <= transfer_budget_flops {float(b):.6g}", "above it"),
            (
                b < spent + per_step,
                f"transfer_budget_flops < {prefix}_flops + one step",
                "a step or more unspent",
            ),
        ]
    if folder.rows is None:
        comparisons.append((False, "metrics.jsonl in the run folder", "no such file"))
    else:
        comparisons += rows_agree(folder, prefix, steps, spent, None)
    if "total_flops" in folder.flat and record.total_flops is not None:
        written = folder.flat["total_flops"]
        comparisons.append(
            (
                written == record.total_flops,
                f"total_flops = train_flops + transfer_flops = {record.total_flops}",
                f"{written}",
            )
        )
    return first_failure(prefix, comparisons, f"{steps} x {per_step} = {spent}, as logged")


PROBE_KEYS = [
    "probe_steps",
    "probe_flops_per_step",
    "probe_flops",
    "probe_feature_flops",
    "probe_epochs",
    "probe_steps_per_epoch",
    "probe_eval_flops_per_epoch",
]


def check_probe(folder: RunFolder) -> Check:
    """The probe's cost (readout/segmentation.py): its feature pass, its head's steps and each epoch's
    evaluation sum to probe_flops; the steps are the epochs' whole mini-batches; the epochs are within
    readout.max_epochs of the saved config; metrics.jsonl holds one probe row per epoch, the last at
    probe_steps and probe_flops, every row's FLOPs the feature pass plus its epochs' cost; and the
    protocol it reports (its grid readout.probe_lrs, the lr among it) is the one it ran."""
    record = folder.record
    if record.probe is None:
        return skip("probe", "no probe in this run")
    missing = _missing(record, PROBE_KEYS)
    if missing:
        return fail("probe", ", ".join(PROBE_KEYS), f"no {', '.join(missing)}")
    steps, per_step, spent, features, epochs, per_epoch, evals = (int(record.value(k)) for k in PROBE_KEYS)
    summed = features + steps * per_step + epochs * evals
    comparisons = [
        (
            summed == spent,
            f"probe_feature_flops + probe_steps x probe_flops_per_step + probe_epochs x "
            f"probe_eval_flops_per_epoch = {summed}",
            f"probe_flops {spent}",
        ),
        (
            steps == epochs * per_epoch,
            f"probe_steps = probe_epochs x probe_steps_per_epoch = {epochs * per_epoch}",
            f"{steps}",
        ),
    ]
    readout = folder.config.get("readout") if isinstance(folder.config.get("readout"), dict) else {}
    protocol = record.value("probe_protocol")
    if readout:
        comparisons.append(
            (
                1 <= epochs <= int(readout["max_epochs"]),
                f"probe_epochs in [1, readout.max_epochs={readout['max_epochs']}] (config)",
                f"{epochs}",
            )
        )
        if isinstance(protocol, dict):
            comparisons.append(
                (
                    protocol.get("lr") in list(readout["lrs"])
                    and list(protocol.get("lrs", [])) == list(readout["lrs"]),
                    f"probe_protocol's lr one of readout.lrs={list(readout['lrs'])} (config)",
                    f"lr {protocol.get('lr')} of {protocol.get('lrs')}",
                )
            )
    if folder.rows is None:
        comparisons.append((False, "metrics.jsonl in the run folder", "no such file"))
    else:
        comparisons += rows_agree(folder, "probe", steps, spent, None)
        rows = folder.stage_rows("probe")
        comparisons.append((len(rows) == epochs, f"{epochs} 'probe' rows, one per epoch", f"{len(rows)}"))
        wrong = [
            r
            for e, r in enumerate(rows, start=1)
            if r.get("flops") != features + e * (per_epoch * per_step + evals)
            or r.get("step") != e * per_epoch
        ]
        if wrong:
            comparisons.append(
                (False, "each 'probe' row at its epoch's steps and FLOPs", f"step {wrong[0].get('step')}")
            )
    return first_failure(
        "probe",
        comparisons,
        f"{features} + {steps} x {per_step} + {epochs} x {evals} = {spent}, as logged",
    )


def _trunk_record(folder: RunFolder, trunk: Any) -> tuple[dict[str, Any] | None, str]:
    if not isinstance(trunk, str):
        return None, "no trunk path in the ladder field"
    path = (folder.path / trunk / SUMMARY).resolve()
    try:
        flat = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        return None, f"no readable trunk record at {path} ({e.__class__.__name__})"
    return (flat if isinstance(flat, dict) else None), str(path)


def check_ladder(folder: RunFolder) -> Check:
    """A ladder rung's share of its trunk (stages/ladder.py writes the `ladder` field): steps = branch_step +
    cooldown_steps, shared_flops = branch_step x flops_per_step, cooldown_flops = cooldown_steps x
    flops_per_step, train_flops = shared_flops + cooldown_flops <= budget_flops, and the trunk's record
    (role trunk, at `trunk` relative to this folder) trained at least to the branch step with the same step
    cost. A trunk's own record: `trunk_ladder`."""
    record = folder.record
    ladder = record.value("ladder")
    if not isinstance(ladder, Ladder):
        return skip("ladder", "not a ladder rung")
    if ladder.role == "trunk":
        return trunk_ladder(record, ladder)
    if ladder.role != "rung":
        return fail("ladder", "role rung or trunk", f"role {ladder.role}")
    want = ["branch_step", "cooldown_steps", "shared_flops", "cooldown_flops"]
    absent = [k for k in want if not isinstance(getattr(ladder, k), int)] + _missing(
        record, ["steps", "flops_per_step", "train_flops", "budget_flops"]
    )
    if absent:
        return fail("ladder", "a rung's ladder fields and cost", f"no {', '.join(absent)}")
    branch, cool = int(ladder.branch_step), int(ladder.cooldown_steps)  # type: ignore[arg-type]
    shared, cooled = ladder.shared_flops, ladder.cooldown_flops
    steps, per_step = int(record.value("steps")), int(record.value("flops_per_step"))
    spent, budget = int(record.value("train_flops")), Fraction(record.value("budget_flops"))
    comparisons = [
        (steps == branch + cool, f"steps = branch_step + cooldown_steps = {branch + cool}", f"steps {steps}"),
        (
            shared == branch * per_step,
            f"shared_flops = branch_step x flops_per_step = {branch * per_step}",
            f"{shared}",
        ),
        (
            cooled == cool * per_step,
            f"cooldown_flops = cooldown_steps x flops_per_step = {cool * per_step}",
            f"{cooled}",
        ),
        (
            spent == shared + cooled,
            f"train_flops = shared_flops + cooldown_flops = {shared + cooled}",
            f"{spent}",
        ),
        (spent <= budget, f"train_flops {spent} <= budget_flops {float(budget):.6g}", "above it"),
    ]
    trunk, where = _trunk_record(folder, ladder.trunk)
    if trunk is None:
        comparisons.append((False, "the trunk's record", where))
    else:
        role = (trunk.get("ladder") or {}).get("role")
        trunk_steps = trunk.get("trunk_steps", (trunk.get("ladder") or {}).get("trunk_steps"))
        comparisons += [
            (role == "trunk", f"a trunk record at {where}", f"role {role}"),
            (
                isinstance(trunk_steps, int) and trunk_steps >= branch,
                f"trunk_steps >= branch_step {branch}",
                f"trunk_steps {trunk_steps}",
            ),
            (
                trunk.get("flops_per_step") == per_step,
                f"the trunk's flops_per_step {per_step}",
                f"{trunk.get('flops_per_step')}",
            ),
        ]
    return first_failure(
        "ladder",
        comparisons,
        f"rung branched at step {branch} of its trunk, {cool} cool-down steps, {spent} FLOPs",
    )


def trunk_ladder(record: Record, ladder: Ladder) -> Check:
    """A ladder's trunk: trunk_steps and trunk_flops are its record's steps and train_flops, and what the
    ladder spent (ladder_flops) is the trunk plus every rung's cool-down."""
    cooldowns = ladder.cooldown_flops
    steps, spent = record.value("steps"), record.value("train_flops")
    total = ladder.ladder_flops
    summed = spent + sum(cooldowns) if isinstance(spent, int) and isinstance(cooldowns, list) else None
    return first_failure(
        "ladder",
        [
            (
                ladder.trunk_steps == steps,
                f"trunk_steps = steps = {steps}",
                f"{ladder.trunk_steps}",
            ),
            (
                ladder.trunk_flops == spent,
                f"trunk_flops = train_flops = {spent}",
                f"{ladder.trunk_flops}",
            ),
            (
                summed is not None and total == summed,
                f"ladder_flops = trunk + cool-downs = {summed}",
                f"{total}",
            ),
        ],
        f"a ladder's trunk: {steps} steps, {spent} FLOPs, {total} in all with its rungs' cool-downs",
    )
