"""The weights file against the digest the record stores (backbone_weights_sha256, written as pretraining
saved the file) and against the cost its own metadata carries (record/weights.py)."""

from __future__ import annotations

from budgetssl.record.weights import file_sha256, provenance
from budgetssl.verify.accounting import pretrained_here
from budgetssl.verify.folder import RunFolder
from budgetssl.verify.result import Check, fail, first_failure, skip


def check_weights(folder: RunFolder) -> Check:
    if (why := pretrained_here(folder)) is not None:
        return skip("weights", why)
    record = folder.record
    if record.value("ladder.role") == "trunk":
        return skip("weights", "a ladder's trunk keeps no weights: each rung's folder holds its own")
    name = record.provenance.backbone_weights if record.provenance else None
    if not name:
        return fail("weights", "a weights file named in the record (backbone_weights)", "none")
    path = folder.path / name
    if not path.is_file():
        return fail("weights", f"{name} in the run folder", "no such file")
    recorded = record.provenance.backbone_weights_sha256 if record.provenance else None
    if not recorded:
        version = (record.outcome.environment or {}).get("budgetssl", "an unknown version")
        return fail(
            "weights",
            "backbone_weights_sha256 in the record",
            f"no digest in the record (written by budgetssl {version}, before records stored the weights' "
            f"sha256)",
        )
    found = file_sha256(path)
    carried = provenance(path)
    return first_failure(
        "weights",
        [
            (found == recorded, f"sha256 {recorded} (record)", f"{name} hashes to {found}"),
            *[
                (
                    carried.get(k) == record.value(k),
                    f"{k}={record.value(k)} (record)",
                    f"{carried.get(k)} in {name}'s metadata",
                )
                for k in ("steps", "train_flops")
            ],
        ],
        f"{name} sha256 {found[:16]}... as recorded; its metadata names the record's steps and cost",
    )
