"""Where this process sits in the world: one process, a torchrun worker, or a Slurm task.

DeepSpeed reads RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT. torchrun sets them;
`srun` sets SLURM_* instead, so we translate. A plain single process gets a world of one.
"""

from __future__ import annotations

import os
import socket
import subprocess
from dataclasses import dataclass


@dataclass(frozen=True)
class World:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    launcher: str  # "single" | "torchrun" | "slurm"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _slurm_master_addr() -> str:
    nodelist = os.environ.get("SLURM_STEP_NODELIST") or os.environ.get("SLURM_JOB_NODELIST", "")
    if not nodelist:
        return "127.0.0.1"
    try:
        out = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True, timeout=30
        ).stdout.split()
        return out[0] if out else "127.0.0.1"
    except (OSError, subprocess.SubprocessError):
        # A single bracket-free host name needs no expansion.
        return nodelist if "[" not in nodelist and "," not in nodelist else "127.0.0.1"


def _tasks_on_this_node(env: dict) -> int:
    """This node's task count from SLURM_STEP_TASKS_PER_NODE ("2(x3),1" style), or 0."""
    spec = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE") or ""
    counts: list[int] = []
    try:
        for part in spec.split(","):
            n, _, rep = part.partition("(x")
            counts += [int(n)] * (int(rep.rstrip(")")) if rep else 1)
        return counts[int(env.get("SLURM_NODEID", "0"))]
    except (ValueError, IndexError):
        return 0


def detect_world() -> World:
    """Read the process's place in the world from the environment and export the variables
    DeepSpeed expects. torchrun wins over Slurm when both are set (torchrun inside an allocation)."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env and "LOCAL_RANK" in env:
        world = World(
            rank=int(env["RANK"]),
            world_size=int(env["WORLD_SIZE"]),
            local_rank=int(env["LOCAL_RANK"]),
            local_world_size=int(env.get("LOCAL_WORLD_SIZE", env["WORLD_SIZE"])),
            launcher="torchrun",
        )
        env.setdefault("MASTER_ADDR", "127.0.0.1")
        env.setdefault("MASTER_PORT", "29500")
        return world
    # Only srun sets the step's task count: a plain process inside an sbatch allocation of many
    # tasks (a local launcher on a compute node, say) is a world of one.
    ntasks = int(env.get("SLURM_STEP_NUM_TASKS", "1"))
    if "SLURM_PROCID" in env and ntasks > 1:
        nnodes = int(env.get("SLURM_STEP_NUM_NODES", env.get("SLURM_NNODES", "1")))
        world = World(
            rank=int(env["SLURM_PROCID"]),
            world_size=ntasks,
            local_rank=int(env.get("SLURM_LOCALID", "0")),
            local_world_size=_tasks_on_this_node(env) or max(1, ntasks // nnodes),
            launcher="slurm",
        )
        if "MASTER_ADDR" not in env:
            addr = _slurm_master_addr()
            if nnodes > 1 and addr == "127.0.0.1":
                raise RuntimeError(
                    "a multi-node Slurm step, but the first node's address could not be found (scontrol "
                    "show hostnames failed); export MASTER_ADDR in the job script"
                )
            env["MASTER_ADDR"] = addr
        # Every task derives the same port from the job id, so no task has to tell the others.
        env.setdefault("MASTER_PORT", str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000))
    else:
        world = World(rank=0, world_size=1, local_rank=0, local_world_size=1, launcher="single")
        env.setdefault("MASTER_ADDR", "127.0.0.1")
        env.setdefault("MASTER_PORT", str(_free_port()))
    env["RANK"] = str(world.rank)
    env["WORLD_SIZE"] = str(world.world_size)
    env["LOCAL_RANK"] = str(world.local_rank)
    env["LOCAL_WORLD_SIZE"] = str(world.local_world_size)
    return world
