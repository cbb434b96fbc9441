"""The one list of config keys that cannot change a result: how a run is watched, not what it computes.

Two places read it. A run folder's name hashes the resolved config without these keys
(config/run_name.py), so re-launching a sweep with another progress setting finds its own runs; and a
checkpoint resumes under a config that differs from the saved one only in these keys
(engine/checkpoint_files.py), which extends the list, next to its use, with what a pretraining checkpoint does
not depend on. A key names a whole section (`logger`) or one dotted option (`train.log_every`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

VOLATILE: tuple[str, ...] = (
    "rerun",  # run a completed configuration again instead of skipping it
    "logger",  # where metrics are mirrored (wandb)
    "train.progress",
    "train.log_every",
    "train.monitor_images",  # the label-free monitors' batch: read beside training, never trained on
    "train.num_workers",
    "train.checkpoint_every_steps",
    "train.peak_flops_per_s",  # only what the record's mfu divides by
    "energy.track",  # metering energy with codecarbon, beside the run
    "energy.measure_power_secs",
    "plan",  # budgetssl-plan's settings: what a sweep will cost, read by no run
)


# Keys added after run folders were named, at the value that trains exactly as before they existed: left
# out of the run folder's hash at that value (existing folders are found again) and read as that value
# in a checkpoint written before them (it resumes).
AT_DEFAULT: dict[str, Any] = {
    "train.schedule": "cosine",
    "train.cooldown_fraction": 0.2,
    "budget.ladder": None,
}


def without_defaults(tree: dict[str, Any], defaults: dict[str, Any] = AT_DEFAULT) -> dict[str, Any]:
    """A copy of the nested config `tree` without the keys of `defaults` that are at their value there."""
    out = tree
    for key, value in defaults.items():
        node: Any = tree
        for part in key.split("."):
            node = node.get(part, _ABSENT) if isinstance(node, dict) else _ABSENT
        if node is not _ABSENT and node == value:
            out = without(out, [key])
    return out


_ABSENT = object()


def covered(key: str, keys: Iterable[str] = VOLATILE) -> bool:
    """Whether the dotted `key` is one of `keys` or lies under one of them."""
    return any(key == k or key.startswith(f"{k}.") for k in keys)


def without(tree: dict[str, Any], keys: Iterable[str] = VOLATILE) -> dict[str, Any]:
    """A copy of the nested config `tree` with `keys` left out (the input is not changed)."""
    out = dict(tree)
    for key in keys:
        head, _, rest = key.partition(".")
        if head not in out:
            continue
        if not rest:
            del out[head]
        elif isinstance(out[head], dict):
            out[head] = without(out[head], [rest])
    return out
