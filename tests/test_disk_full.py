"""A full disk: the run fails with a record and a message naming the filesystem and the sizes, no traceback.

For real on a 3 MB tmpfs, mounted in a private mount namespace (`unshare -rm`: no root needed where
unprivileged user namespaces are allowed); skipped where that is not permitted.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from budgetssl.files import DiskFull, atomic_write
from conftest import BIN, TINY, TINY_BUDGET

SIZE = "3m"


def run_on_small_tmpfs(mount: Path, script: str) -> subprocess.CompletedProcess:
    """`script` run by sh with a 3 MB tmpfs mounted at `mount`, seen only by it."""
    mount.mkdir()
    where = shlex.quote(str(mount))
    inner = f"mount -t tmpfs -o size={SIZE} none {where} && cd {where} && "
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    return subprocess.run(
        ["unshare", "-rm", "sh", "-c", inner + script], capture_output=True, text=True, env=env, timeout=600
    )


@pytest.fixture
def small_tmpfs(tmp_path) -> Path:
    try:
        probe = run_on_small_tmpfs(tmp_path / "probe", "true")
    except FileNotFoundError:
        pytest.skip("no unshare(1) here: cannot mount a small tmpfs without root")
    if probe.returncode != 0:
        pytest.skip(f"mounting a tmpfs in a private namespace is not permitted here: {probe.stderr.strip()}")
    return tmp_path / "small"


def test_a_checkpoint_on_a_full_disk_fails_the_run_naming_the_filesystem_and_sizes(tmp_path, small_tmpfs):
    out = tmp_path / "out"
    command = [str(BIN / "budgetssl-pretrain"), *TINY, TINY_BUDGET, f"hydra.run.dir={small_tmpfs}/run"]
    atomic = f"from pathlib import Path; from budgetssl.files import atomic_write; atomic_write(Path('{small_tmpfs}/big.bin'), lambda tmp: tmp.write_bytes(bytes(4_000_000)))"  # noqa: E501
    script = (
        f"{shlex.join(command)} > {out}.stdout 2> {out}.stderr; echo $? > {out}.rc; "
        f"cp -r {small_tmpfs}/run {tmp_path}/run; "
        f"{shlex.quote(sys.executable)} -c {shlex.quote(atomic)} 2> {out}.atomic"
    )
    proc = run_on_small_tmpfs(small_tmpfs, script)
    assert proc.returncode != 0, "writing 4 MB on a 3 MB filesystem did not fail"
    err = Path(f"{out}.stderr").read_text()
    assert Path(f"{out}.rc").read_text().strip() == "2", err[-3000:]
    assert "Traceback" not in err
    fs = f"no space left on the tmpfs filesystem at {small_tmpfs} writing {small_tmpfs}/run/checkpoints/step_"
    assert fs in err, err[-3000:]
    needed = float(re.search(r"it needs about ([\d.]+) MB \(optimizer [\d.]+ MB, model", err).group(1))
    free = float(re.search(r"([\d.]+) MB free; free space there", err).group(1))
    assert needed > 3.2 > free  # the checkpoint is larger than the whole filesystem
    record = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert record["status"] == "failed" and record["error_type"] == "DiskFull" and fs in record["error"]
    assert list((tmp_path / "run" / "checkpoints").iterdir()) == []  # no partial file left behind
    atomic_err = Path(f"{out}.atomic").read_text()
    assert f"DiskFull: {fs.split(' writing')[0]} writing {small_tmpfs}/big.bin" in atomic_err
    assert not list(small_tmpfs.glob("*"))  # the tmpfs was private to the command


def test_atomic_write_names_a_full_disk_or_quota_and_leaves_no_temporary_file(tmp_path):
    def full(tmp: Path) -> None:
        tmp.write_bytes(b"partial")
        raise OSError(errno.EDQUOT, "Disk quota exceeded")

    message = rf"disk quota exceeded on the (\S+ )?filesystem at .* writing {tmp_path}"
    with pytest.raises(DiskFull, match=message):
        atomic_write(tmp_path / "summary.json", full)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError):  # any other error is what it was
        atomic_write(tmp_path / "x", lambda tmp: int("x"))
