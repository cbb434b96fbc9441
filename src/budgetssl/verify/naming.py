"""The run folder's name against its saved config, and the record's identity against the same config.

A folder named by Hydra's `${run_name:}` (the default hydra.run.dir and hydra.sweep.subdir) carries the
hash of its resolved config (config/run_name.py); recomputing it from .hydra/config.yaml shows the config
beside the record is the one the run was launched with and that the folder was not renamed. A folder
named by hand (hydra.run.dir=/some/where) carries no hash: it must still have the name it was launched
under (hydra.yaml: hydra.runtime.output_dir).
"""

from __future__ import annotations

import re
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from budgetssl.config.run_name import RESOLVER, job_name, register, run_name
from budgetssl.meter.ladder import Ladder
from budgetssl.record.identity import identity_of
from budgetssl.verify.folder import NotARunFolder, RunFolder, open_run
from budgetssl.verify.result import Check, fail, first_failure, ok, skip

ENV = re.compile(r"\$\{oc\.env:([A-Za-z_][A-Za-z0-9_]*)")


def expected_name(folder: RunFolder) -> str:
    """The name `${run_name:}` gives the saved config under the record's command."""
    register()
    config = folder.config.copy()
    OmegaConf.set_struct(config, False)
    root = OmegaConf.merge(config, {"hydra": {"job": {"name": job_name(folder.command)}}})
    return run_name(root)  # type: ignore[arg-type]


def name_pattern(folder: RunFolder) -> tuple[str, str] | None:
    """The option that named the folder and its pattern as saved (hydra.run.dir, or hydra.sweep.subdir
    in a sweep); None without hydra.yaml."""
    hydra = folder.hydra
    if hydra is None:
        return None
    sweep = str(OmegaConf.select(hydra, "mode", default="")).upper().endswith("MULTIRUN")
    key = "sweep.subdir" if sweep else "run.dir"
    container = OmegaConf.to_container(hydra, resolve=False)
    value = container
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None  # type: ignore[assignment]
    return f"hydra.{key}", str(value)


def launched_name(folder: RunFolder) -> str | None:
    """The folder's name when the run started (hydra.runtime.output_dir)."""
    if folder.hydra is None:
        return None
    out = OmegaConf.select(
        folder.hydra, "runtime.output_dir", default=None, throw_on_resolution_failure=False
    )
    return Path(str(out)).name if out else None


def check_config_hash(folder: RunFolder) -> Check:
    ladder = folder.record.value("ladder")
    if isinstance(ladder, Ladder) and ladder.role == "rung" and isinstance(ladder.trunk, str):
        return rung_hash(folder, ladder.trunk)
    name = folder.path.name
    try:
        expected = expected_name(folder)
    except OmegaConfBaseException as e:
        return fail("config_hash", "a config that resolves", f"{folder.path / '.hydra/config.yaml'}: {e}")
    digest = expected.rsplit("_", 1)[-1]
    if name == expected:
        return ok("config_hash", f"{name} is the name of its saved config (hash {digest})")
    pattern = name_pattern(folder)
    launched = launched_name(folder)
    if pattern is not None and f"${{{RESOLVER}:" not in pattern[1] and name == launched:
        return ok(
            "config_hash",
            f"named by {pattern[0]}={pattern[1]}, not by its config: the name holds no hash to compare "
            f"(its config's would be {digest})",
        )
    env = sorted(set(ENV.findall(OmegaConf.to_yaml(folder.config))))
    hint = (
        f" (the saved config reads environment variables {', '.join(env)}: set them as at launch)"
        if env
        else ""
    )
    return fail("config_hash", f"folder named {expected}", f"{name}{hint}")


def check_identity(folder: RunFolder) -> Check:
    """What the record says was run (method, dataset, backbone, seed, budget, batch, image size) is what the
    saved config says."""
    if folder.command == "budgetssl-transfer":
        return skip("identity", "a transfer's record names its source run's identity, not its config's")
    try:
        configured = identity_of(folder.config)
    except OmegaConfBaseException as e:
        return fail("identity", "a config that resolves", str(e))
    recorded = folder.record.identity
    comparisons = []
    for key, want in vars(configured).items():
        have = getattr(recorded, key)
        same = have == want or (
            isinstance(have, int | float) and isinstance(want, int | float) and float(have) == float(want)
        )
        comparisons.append((same, f"{key}={want!r} (config)", f"{have!r} (record)"))
    return first_failure(
        "identity", comparisons, "the record's method, data, backbone and budget are the config's"
    )


def rung_hash(folder: RunFolder, trunk: str) -> Check:
    """A ladder rung's folder is named by its budget inside the ladder's (stages/ladder.py): the ladder's
    folder, its trunk, carries the hash, checked against the trunk's saved config."""
    try:
        found = check_config_hash(open_run((folder.path / trunk).resolve()))
    except NotARunFolder as e:
        return fail("config_hash", f"the ladder's folder at {trunk} (the rung's trunk)", str(e))
    return Check("config_hash", found.status, f"a rung of the ladder at {trunk}: {found.detail}")
