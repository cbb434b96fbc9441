"""A run's folder name from its resolved config, so that re-launching a sweep finds its own runs.

`${run_name:}` in hydra.run.dir / hydra.sweep.subdir becomes
`<command>_<method>_<backbone>_<dataset>_<budget>_<hash>`, the hash taken over the resolved config
without the keys that cannot change a result (config/volatile.py: progress bars, logging, workers, the
rerun flag; the same list a checkpoint's resume check reads) and without keys added later while they
are at the value that trains as before them (volatile.py AT_DEFAULT: train.schedule=cosine, ...). The
command travels as hydra.job.name (from $BUDGETSSL_COMMAND), so a launcher's worker process (joblib,
submitit) names runs alike.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from budgetssl.config.volatile import VOLATILE, without, without_defaults

RESOLVER = "run_name"
COMMAND_ENV = "BUDGETSSL_COMMAND"  # set by each console script; config.yaml's hydra.job.name reads it


def job_name(command: str) -> str:
    """`budgetssl-pretrain` -> `pretrain`: Hydra's job name, and the first part of a run's name."""
    return command.removeprefix("budgetssl-")


def config_hash(job: dict[str, Any], command: str) -> str:
    job = without_defaults(without(job, VOLATILE))
    text = json.dumps({"command": command, **job}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def _plain(value: Any) -> Any:
    return (
        OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value
    )


def spell_budget(flops: float, digits: int = 3) -> str:
    """A budget as folder names spell it: 1e12, 2.5e11 (`digits` significant digits, no `e+0`)."""
    return f"{flops:.{digits}g}".replace("e+0", "e").replace("e+", "e")


def run_name(_root_: DictConfig) -> str:
    job = {k: _plain(_root_[k]) for k in _root_ if k != "hydra"}
    budget = job.get("budget", {}).get("flops")
    command = str(OmegaConf.select(_root_, "hydra.job.name", default="run"))
    parts = [
        command,
        str(job.get("method", {}).get("name")),
        str(job.get("backbone", {}).get("name")),
        str(job.get("dataset", {}).get("name")),
        spell_budget(budget) if isinstance(budget, (int, float)) else str(budget),
        config_hash(job, command),
    ]
    return "_".join(parts)


def register() -> None:
    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, run_name)
