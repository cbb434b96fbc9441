"""One writer per run folder: a second launch on a folder in use exits (or is skipped in a sweep) naming
the process that holds it; stale locks are taken over; the lock goes when the run ends, however it ends."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from budgetssl.record.lock import EXIT_BUSY, LOCK, STALE_SECONDS, FolderBusy, FolderLock
from conftest import BIN, TINY, TINY_BUDGET, summary

SETTINGS = [*TINY, TINY_BUDGET, "train.log_every=1"]


def run_folder(root: Path) -> Path:
    (folder,) = (root / "results" / "runs").iterdir()
    return folder


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the run ended before taking its lock:\n{proc.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline, f"no {path} appeared"
        time.sleep(0.02)


@pytest.mark.slow
def test_a_second_launch_on_a_folder_in_use_exits_and_a_sweep_skips_it(tmp_path):
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(
        [str(BIN / "budgetssl-pretrain"), *SETTINGS],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(tmp_path / "results" / "runs", first)
        folder = run_folder(tmp_path)
        wait_for(folder / LOCK, first)
        first.send_signal(signal.SIGSTOP)  # held, mid-run, for as long as the other launches take
        holder = json.loads((folder / LOCK).read_text())
        assert (holder["host"], holder["pid"]) == (socket.gethostname(), first.pid)

        launches = [
            subprocess.Popen(
                [str(BIN / "budgetssl-pretrain"), *args, *SETTINGS],
                cwd=tmp_path,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for args in ([], ["--multirun"])
        ]
        (single_out, single_err), (sweep_out, sweep_err) = (p.communicate(timeout=300) for p in launches)
        assert launches[0].returncode == EXIT_BUSY, single_err[-3000:]
        holder_named = f"{folder} is being trained by host {socket.gethostname()} pid {first.pid} since "
        assert holder_named in single_err
        assert f"lock file {folder / LOCK}" in single_err and "Traceback" not in single_err
        assert launches[1].returncode == 0, sweep_err[-3000:]
        assert f"skipped, another process is training it: {folder}" in sweep_out
        assert first.poll() is None and not (folder / "summary.json").exists()  # nothing written by them
    finally:
        first.send_signal(signal.SIGCONT)
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    record = summary(folder)
    assert record["status"] == "completed"
    steps = [json.loads(line)["step"] for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, record["steps"] + 1))  # every step once
    assert not (folder / LOCK).exists()


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def write_lock(folder: Path, **fields) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    base = {"host": "elsewhere", "pid": 4242, "started_at": "then", "heartbeat": time.time(), "token": "x"}
    (folder / LOCK).write_text(json.dumps({**base, **fields}))


@pytest.mark.parametrize(
    "fields, reason",
    [
        ({"host": socket.gethostname(), "pid": None}, "on this host is gone"),
        ({"heartbeat": time.time() - STALE_SECONDS - 60}, "last heartbeat"),
        ({"slurm_job_id": 77, "slurm_restart_count": 0}, "an earlier run of this SLURM job 77"),
    ],
)
def test_a_stale_lock_is_taken_over(tmp_path, capfd, monkeypatch, fields, reason):
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    write_lock(tmp_path, **{k: dead_pid() if k == "pid" else v for k, v in fields.items()})
    lock = FolderLock(tmp_path, "budgetssl-test")
    lock.acquire()
    try:
        assert json.loads((tmp_path / LOCK).read_text())["pid"] == os.getpid()
        err = capfd.readouterr().err
        assert "budgetssl-test: taking over the stale lock" in err and reason in err
    finally:
        lock.release()
    assert not (tmp_path / LOCK).exists()


def test_a_live_lock_is_not_taken_over(tmp_path, monkeypatch):
    # Another host, heartbeat fresh: busy, and the message names it.
    write_lock(tmp_path, started_at="2026-01-01T00:00:00+00:00")
    with pytest.raises(FolderBusy, match="being trained by host elsewhere pid 4242 since 2026-01-01"):
        FolderLock(tmp_path, "budgetssl-test").acquire()
    # This host, a live process (this test's parent), heartbeat fresh: busy too.
    write_lock(tmp_path, host=socket.gethostname(), pid=os.getppid())
    with pytest.raises(FolderBusy):
        FolderLock(tmp_path, "budgetssl-test").acquire()
    # The same SLURM job without a restart: an interactive allocation running the same command twice.
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    write_lock(tmp_path, slurm_job_id=77, slurm_restart_count=None)
    with pytest.raises(FolderBusy):
        FolderLock(tmp_path, "budgetssl-test").acquire()
    assert json.loads((tmp_path / LOCK).read_text())["host"] == "elsewhere"  # left as it was
    # This host, but a process in another container's pid namespace: its pid says nothing here.
    write_lock(tmp_path, host=socket.gethostname(), pid=dead_pid(), pid_namespace="pid:[1]")
    with pytest.raises(FolderBusy):
        FolderLock(tmp_path, "budgetssl-test").acquire()
    # Unreadable (being written, or cut short): held until it is STALE_SECONDS old.
    (tmp_path / LOCK).write_text("{")
    with pytest.raises(FolderBusy, match="its lock file is being written or is unreadable"):
        FolderLock(tmp_path, "budgetssl-test").acquire()
    old = time.time() - STALE_SECONDS - 60
    os.utime(tmp_path / LOCK, (old, old))
    lock = FolderLock(tmp_path, "budgetssl-test")
    lock.acquire()
    lock.release()


def test_the_heartbeat_refreshes_the_lock_and_release_removes_it(tmp_path):
    lock = FolderLock(tmp_path, "budgetssl-test", heartbeat_seconds=0.05)
    lock.acquire()
    first = json.loads((tmp_path / LOCK).read_text())
    with pytest.raises(FolderBusy, match=f"pid {os.getpid()}"):  # one holder, even in one process
        FolderLock(tmp_path, "budgetssl-test").acquire()
    time.sleep(0.3)
    later = json.loads((tmp_path / LOCK).read_text())
    assert later["heartbeat"] > first["heartbeat"] and later["token"] == first["token"]
    lock.release()
    assert list(tmp_path.iterdir()) == []  # no lock, no temporary file


def execute(folder: Path, stage, *extra: str) -> int:
    from budgetssl.cli.common import execute
    from budgetssl.config.compose import compose_config

    return execute(compose_config([*SETTINGS, *extra]), folder, stage, "budgetssl-pretrain")


def test_the_lock_is_released_after_a_completed_a_failed_and_a_crashed_run(tmp_path):
    from budgetssl.stages.commands import pretrain_only

    # A lock left by a kill -9 on this host: taken over, and gone when the run completes.
    write_lock(tmp_path / "done", host=socket.gethostname(), pid=dead_pid())
    assert execute(tmp_path / "done", pretrain_only) == 0
    assert summary(tmp_path / "done")["status"] == "completed" and not (tmp_path / "done" / LOCK).exists()

    assert execute(tmp_path / "failed", pretrain_only, "budget.flops=1e5") == 2  # under one step
    assert summary(tmp_path / "failed")["status"] == "failed"
    assert not (tmp_path / "failed" / LOCK).exists()

    def crash(run, folder):
        assert json.loads((folder / LOCK).read_text())["pid"] == os.getpid()  # held while the stage runs
        raise RuntimeError("the stage broke")

    with pytest.raises(RuntimeError, match="the stage broke"):
        execute(tmp_path / "crashed", crash)
    assert summary(tmp_path / "crashed")["status"] == "failed"
    assert not (tmp_path / "crashed" / LOCK).exists()


def test_a_run_on_a_folder_in_use_writes_nothing_there(tmp_path):
    write_lock(tmp_path)
    before = {p.name for p in tmp_path.iterdir()}
    assert execute(tmp_path, lambda run, folder: pytest.fail("the stage ran")) == EXIT_BUSY
    assert {p.name for p in tmp_path.iterdir()} == before  # no summary.json, no metrics
