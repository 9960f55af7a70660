"""Where a process sits in the world, read from torchrun's or Slurm's environment."""

from __future__ import annotations

import os

import pytest

from scaling.distributed import detect_world


@pytest.fixture
def clean_env(monkeypatch):
    # detect_world exports RANK, MASTER_PORT, ... itself: restore the whole environment after,
    # or later tests' subprocesses would inherit a world of several ranks.
    saved = dict(os.environ)
    for key in list(os.environ):
        if key.startswith("SLURM_") or key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
                                               "MASTER_ADDR", "MASTER_PORT"):
            monkeypatch.delenv(key)
    yield monkeypatch
    os.environ.clear()
    os.environ.update(saved)


def test_a_plain_process_is_a_world_of_one(clean_env):
    w = detect_world()
    assert (w.rank, w.world_size, w.launcher) == (0, 1, "single")


def test_a_plain_process_inside_a_multi_task_allocation_is_still_alone(clean_env):
    # sbatch -n4 exports SLURM_NTASKS=4 and SLURM_PROCID=0 to the batch script; only srun sets
    # the step's task count.
    clean_env.setenv("SLURM_NTASKS", "4")
    clean_env.setenv("SLURM_PROCID", "0")
    assert detect_world().world_size == 1


def test_srun_tasks_join_one_world(clean_env):
    for k, v in {"SLURM_STEP_NUM_TASKS": "3", "SLURM_PROCID": "2", "SLURM_LOCALID": "0", "SLURM_NODEID": "1",
                 "SLURM_STEP_NUM_NODES": "2", "SLURM_STEP_TASKS_PER_NODE": "2,1", "SLURM_JOB_ID": "1234",
                 "MASTER_ADDR": "node1"}.items():
        clean_env.setenv(k, v)
    w = detect_world()
    assert (w.rank, w.world_size, w.local_rank, w.local_world_size, w.launcher) == (2, 3, 0, 1, "slurm")
    assert os.environ["RANK"] == "2" and os.environ["WORLD_SIZE"] == "3"
    assert os.environ["MASTER_PORT"] == str(20000 + 1234)


def test_torchrun_wins(clean_env):
    for k, v in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "SLURM_STEP_NUM_TASKS": "8",
                 "SLURM_PROCID": "5"}.items():
        clean_env.setenv(k, v)
    w = detect_world()
    assert (w.rank, w.world_size, w.launcher) == (1, 2, "torchrun")
