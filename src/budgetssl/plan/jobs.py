"""A sweep's jobs as Hydra would launch them, without launching any: the same overrides, the same
expansion, the same configs, the same run folders.

`--multirun` expands through Hydra's own pieces: the sweeper the config names, instantiated by Hydra
(its basic sweeper: its `hydra.sweeper.params` and the command line's sweep overrides, parsed by Hydra's
override parser, crossed by the sweeper's `split_arguments`), and each job's config composed by Hydra's
config loader from the sweep's config and the job's overrides (`load_sweep_config`, what Hydra's
launchers call). Its run folder is `hydra.sweep.dir/hydra.sweep.subdir` (`hydra.run.dir` for a single
run) resolved on that config, as Hydra's `run_job` resolves it, with `hydra.job.name` that of the command
priced (config/run_name.py).

Composing every job from its files takes a tenth of a second, thirty seconds for the study's 300 jobs on
a 2-core machine; jobs that differ only in values (budget.flops=1e18,3e18,...) share their composition.
Hydra composes a config in two steps: the defaults tree the config-group overrides choose (method=dino),
then the value overrides applied to it in order (`defaults_list.config_overrides`). Here the first step
runs once per distinct list of group overrides (Hydra's own `Overrides` tells them apart), and the second
on a copy for each job, by Hydra's own `_apply_overrides_to_config`: the job's config is the one Hydra
composes (tests/test_plan.py finds each planned folder where Hydra's own multirun puts the job, and the
job's run there spends what was planned).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hydra._internal.callbacks import Callbacks
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.defaults_list import Overrides
from hydra._internal.hydra import Hydra
from hydra._internal.utils import create_config_search_path
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.errors import HydraException
from hydra.types import HydraContext, RunMode
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from budgetssl.config.paths import config_dir
from budgetssl.config.run_name import COMMAND_ENV, job_name
from budgetssl.errors import ConfigError


@dataclass
class Job:
    number: int  # hydra.job.num: its place in the sweep
    overrides: list[str]  # the job's own overrides (the sweep's choice for it)
    config: DictConfig  # what the command would receive (no hydra node)
    folder: Path  # its run folder
    launcher_gpus: int  # the GPUs its launcher gives it (gpus_of)


@dataclass
class Sweep:
    size: int  # its jobs
    jobs: Iterator[Job]  # composed one by one as they are taken
    folder: Path | None  # hydra.sweep.dir: where a sweep's runs go (None: a single run's, its parent)


@contextmanager
def named(command: str) -> Iterator[None]:
    """hydra.job.name as `command` sets it (config.yaml reads $BUDGETSSL_COMMAND), for the while."""
    before = os.environ.get(COMMAND_ENV)
    os.environ[COMMAND_ENV] = job_name(command)
    try:
        yield
    finally:
        if before is None:
            del os.environ[COMMAND_ENV]
        else:
            os.environ[COMMAND_ENV] = before


def job_overrides(hydra: Hydra, master: DictConfig) -> list[list[str]]:
    """The jobs of the sweep `master` (composed in multirun mode): the sweeper it names, as Hydra
    instantiates it, expanding its params and the command line's task overrides (BasicSweeper.sweep's
    own steps, less launching and saving multirun.yaml)."""
    sweeper = Plugins.instance().instantiate_sweeper(
        config=master,
        hydra_context=HydraContext(config_loader=hydra.config_loader, callbacks=Callbacks()),
        task_function=lambda cfg: None,
    )
    if type(sweeper).__name__ != "BasicSweeper":
        raise ConfigError(
            "budgetssl-plan expands the grids of Hydra's basic sweeper; this sweep uses "
            f"{type(sweeper).__name__}"
        )
    arguments = [*sweeper._parse_config(), *master.hydra.overrides.task]  # type: ignore[attr-defined]
    parsed = OverridesParser.create(config_loader=hydra.config_loader).parse_overrides(arguments)
    return [job for batch in sweeper.split_arguments(parsed, None) for job in batch]  # type: ignore[attr-defined]


class Composer:
    """Job configs from a sweep's config, composed once per list of config-group overrides (module
    docstring)."""

    def __init__(self, hydra: Hydra, master: DictConfig) -> None:
        self.loader = hydra.config_loader
        self.master = master
        self.parser = OverridesParser.create(config_loader=self.loader)
        self.composed: dict[tuple[str, ...], DictConfig] = {}

    def __call__(self, overrides: list[str]) -> DictConfig:
        parsed = self.parser.parse_overrides(overrides)
        values = Overrides(self.loader.repository, parsed).config_overrides  # type: ignore[attr-defined]
        groups = tuple(o.input_line for o in parsed if all(o is not v for v in values))
        if groups not in self.composed:
            self.composed[groups] = lean(self.loader.load_sweep_config(self.master, list(groups)))
        cfg = copy.deepcopy(self.composed[groups])
        ConfigLoaderImpl._apply_overrides_to_config(values, cfg)
        return cfg


# What Hydra's config holds for its own output (help texts, logging setups): no run folder or launcher
# reads them, and copying them for every job would double the time the plan takes.
UNREAD = ("help", "hydra_help", "hydra_logging", "job_logging")


def lean(cfg: DictConfig) -> DictConfig:
    """`cfg` without the parts of its hydra node in UNREAD."""
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        for key in UNREAD:
            cfg.hydra.pop(key, None)
    return cfg


def without_hydra(cfg: DictConfig) -> DictConfig:
    """The config the command receives: the composed one without its hydra node (as Hydra's run_job
    makes it), in place."""
    with read_write(cfg), open_dict(cfg):
        del cfg["hydra"]
    return cfg


@contextmanager
def expand(overrides: list[str], multirun: bool, command: str) -> Iterator[Sweep]:
    """The jobs `command overrides` (with `--multirun`: the sweep) would run, with their folders: each
    composed as `Sweep.jobs` is iterated, so a caller can start on a job while the next is composed."""
    GlobalHydra.instance().clear()
    try:
        with named(command):
            hydra = Hydra.create_main_hydra2(job_name(command), create_config_search_path(str(config_dir())))
            mode = RunMode.MULTIRUN if multirun else RunMode.RUN
            master = hydra.compose_config("config", overrides, run_mode=mode, with_log_configuration=False)
            lists = job_overrides(hydra, master) if multirun else [list(master.hydra.overrides.task)]
            compose = Composer(hydra, master)

            def jobs() -> Iterator[Job]:
                for number, listed in enumerate(lists):
                    cfg = compose(listed)
                    where = "hydra.sweep" if multirun else "hydra.run"
                    folder = Path(str(OmegaConf.select(cfg, f"{where}.dir")))
                    if multirun:
                        folder = folder / str(cfg.hydra.sweep.subdir)
                    gpus = gpus_of(cfg.hydra.get("launcher"))
                    yield Job(number, listed, without_hydra(cfg), folder, gpus)

            sweep_dir = Path(str(master.hydra.sweep.dir)) if multirun else None
            yield Sweep(len(lists), jobs(), sweep_dir)
    except HydraException as e:
        raise ConfigError(str(e)) from None
    finally:
        GlobalHydra.instance().clear()


def gpus_of(launcher: DictConfig | None) -> int:
    """The GPUs one job gets from its launcher: nodes x gpus_per_node where it says (submitit's), else 1."""
    if launcher is None:
        return 1
    nodes = OmegaConf.select(launcher, "nodes", default=1)
    per_node = OmegaConf.select(launcher, "gpus_per_node", default=None)
    if not isinstance(per_node, int) or not isinstance(nodes, int):
        return 1
    return max(1, nodes * per_node)
