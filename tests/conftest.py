"""Fixtures shared by test modules: the local Slurm cluster, started once per session for every
slurm-marked module (test_slurm.py, test_branches_slurm.py)."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CI = os.environ.get("CI", "").lower() == "true"


def _unavailable(reason: str):
    if CI:
        pytest.fail(f"CI=true, but the local Slurm cluster cannot start: {reason}")
    pytest.skip(reason)


def _free_port_base() -> int:
    for _ in range(50):
        base = random.randrange(20000, 40000, 4)
        ok = True
        for port in range(base, base + 4):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no 4 free consecutive ports")


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    if os.geteuid() != 0:
        _unavailable("not root: the local Slurm cluster runs munge, slurmctld and slurmd as root")
    installed = all(shutil.which(b) for b in ("munged", "slurmctld", "slurmd", "sbatch", "slurmdbd", "mariadbd"))
    if not installed and shutil.which("apt-get") is None:
        _unavailable("Slurm is not installed and there is no apt-get to install it")
    state = tmp_path_factory.mktemp("slurm-cluster")
    t0 = time.time()
    out = subprocess.run([str(ROOT / "slurm" / "start-local-cluster.sh"), str(state), str(_free_port_base())],
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    if out.returncode != 0:
        apt_log = state / "apt.log"
        if "apt-get install failed" in out.stderr and not CI:
            pytest.skip(f"could not install Slurm with apt: {apt_log.read_text()[-500:] if apt_log.exists() else ''}")
        pytest.fail(f"local Slurm cluster did not start:\n{out.stderr}")
    print(f"local Slurm cluster up in {time.time() - t0:.1f}s")
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(state / "etc" / "slurm.conf")
    try:
        yield state
    finally:
        subprocess.run([str(ROOT / "slurm" / "stop-local-cluster.sh"), str(state)], capture_output=True, timeout=120)
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old
