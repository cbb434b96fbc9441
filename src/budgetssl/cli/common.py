"""What every Hydra command shares: our config tree, validation, and a record on success or failure."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from budgetssl.config.check import RunConfig
from budgetssl.config.paths import config_dir
from budgetssl.config.run_name import COMMAND_ENV, job_name
from budgetssl.engine import distributed, signals
from budgetssl.engine.distributed import is_main_process
from budgetssl.errors import BudgetSSLError
from budgetssl.plugins import check_config
from budgetssl.record.identity import identity_of
from budgetssl.record.lock import EXIT_BUSY, FolderBusy
from budgetssl.record.lock import hold as hold_folder
from budgetssl.record.sections import Record
from budgetssl.record.summary import SUMMARY, completed_record, write_summary
from budgetssl.record.wandb_log import summarize, wandb_run
from budgetssl.stages.outcome import ended, finished, started

Stage = Callable[[RunConfig, Path], Record]


class RunFailed(Exception):
    """One run of a sweep failed (its record says why); Hydra lists it when the sweep ends."""


def execute(cfg: DictConfig, folder: Path, stage: Stage, command: str) -> int:
    """Run `stage`, write summary.json either way, and return the exit code.

    Under torchrun every rank runs this: the process group starts once the config is valid, every rank
    works in rank 0's run folder, and rank 0 alone writes the record. Status: `completed`; `failed` (with
    `error`, `error_type` and, for a non-finite loss, `failed_step`; exit code 2 for a bad input, the
    exception re-raised for a crash); or `interrupted` by SIGTERM/SIGUSR1 after a checkpoint (exit code
    75: run the same command again to resume). A completed record is never replaced by either. The run
    folder is locked before anything is written to it (record/lock.py); one that another live process
    holds returns EXIT_BUSY (73), nothing written.
    """
    start = time.perf_counter()
    outcome = started(command)
    record = Record(identity=identity_of(cfg), outcome=outcome)
    code = 0
    distributed.adopt_submitit_environment()
    main = is_main_process()
    held = ExitStack()  # the run folder's lock, kept until the record is written
    with signals.catch(), held:
        try:
            run = check_config(cfg)
            world = distributed.start(run.train.device)
            folder = _shared_folder(folder, world)
            held.enter_context(hold_folder(folder, command, world))
            logger = run.logger.wandb if main else replace(run.logger.wandb, mode="disabled")
            with wandb_run(logger, folder, folder.name, run.to_dict()) as wandb:
                record = stage(run, folder)
                record.outcome = ended(outcome, None)
                summarize(wandb, record)
        except FolderBusy as e:
            print(f"{command}: {e}", file=sys.stderr)
            return EXIT_BUSY
        except signals.Interrupted as e:
            ended(outcome, e, folder)
            print(f"{command}: {e}", file=sys.stderr)
            code = signals.EXIT_INTERRUPTED
        except BudgetSSLError as e:
            ended(outcome, e)
            print(f"{command}: error: {e}", file=sys.stderr)
            code = 2
        except BaseException as e:
            ended(outcome, e)
            if main:
                write_summary(folder, finished(record, start))
            raise
        finally:
            distributed.stop()
        if main:
            try:
                path = write_summary(folder, finished(record, start))
            except BudgetSSLError as e:  # e.g. the disk filled up: say which, without a traceback
                print(f"{command}: error: the record was not written: {e}", file=sys.stderr)
                code = code or 2
            else:
                print(f"{command}: {outcome.status}; record: {path}", file=sys.stderr if code else sys.stdout)
        held.close()  # free before a requeue hands the folder on
        if code == signals.EXIT_INTERRUPTED:
            signals.hand_over()  # e.g. submitit's checkpoint-and-requeue, where it was installed
    return code


def _shared_folder(folder: Path, world: distributed.World) -> Path:
    """Rank 0's run folder on every rank (a time-stamped hydra.run.dir may differ by a second between
    ranks); a rank whose Hydra made another folder removes it if it holds only Hydra's own files."""
    shared = Path(world.broadcast(str(folder)))
    if shared != folder and folder.is_dir():
        hydra_files = [folder / ".hydra" / f for f in ("config.yaml", "hydra.yaml", "overrides.yaml")]
        for path in [*hydra_files, *folder.glob("*.log")]:
            path.unlink(missing_ok=True)
        for empty in (folder / ".hydra", folder):
            try:
                empty.rmdir()
            except OSError:
                break
    return shared


def hydra_command(stage: Stage, command: str) -> Callable[[], None]:
    """A console-script entry point running `stage` under Hydra with budgetssl's config tree."""

    @hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
    def main(cfg: DictConfig) -> None:
        folder = Path(HydraConfig.get().runtime.output_dir)
        if completed_record(folder) is not None and OmegaConf.select(cfg, "rerun") is not True:
            print(f"{command}: skipped, already completed: {folder / SUMMARY} (rerun=true runs it again)")
            return
        code = execute(cfg, folder, stage, command)
        if code == EXIT_BUSY and HydraConfig.get().mode == RunMode.MULTIRUN:
            print(f"{command}: skipped, another process is training it: {folder}")
            return
        if code == 2 and HydraConfig.get().mode == RunMode.MULTIRUN:
            # An exception, not an exit: the launcher records this job as failed and the sweep goes on.
            raise RunFailed(f"{command} failed in {folder}; see {folder / SUMMARY}")
        if code:
            raise SystemExit(code)

    def entry() -> None:
        # The command names its runs (config.yaml: hydra.job.name reads it; see config/run_name.py). An
        # environment variable reaches launcher workers (joblib, submitit) without touching argv.
        os.environ[COMMAND_ENV] = job_name(command)
        main()

    return entry


__all__ = ["SUMMARY", "hydra_command", "execute"]
