"""Warm workers: train a run in a process forked from a server that has already imported torch,
DeepSpeed, wandb and the trainer, instead of in a fresh interpreter.

A study is many short runs; a fresh `python -m scaling.train` spends about 3 s per run importing
torch, torch._dynamo (pulled in by the optimizer), DeepSpeed and wandb before its first step. The
local launcher instead starts a `multiprocessing` forkserver whose server imports `PRELOAD` once
(`scaling.warm_preload`), and forks one child per run from it:
  - each run still gets a process of its own, so DeepSpeed and process-group state never leak
    from one run into the next, and a crash (even SIGKILL) ends that run alone; the server is
    untouched and forks the next one;
  - the server imports modules only and runs no tensor op, so no OpenMP thread pool exists when
    it forks (forking after one has started can hang the child);
  - the child's stdout and stderr go to the run's `launch.log`, its exit code is the trainer's,
    and it leads a process group of its own, so a signal to the group reaches the wandb service
    it starts, exactly as for a process the launcher starts directly.
Runs with more than one process still go through torchrun.

Torch-free at import: the launcher imports this module only to hand `run` to the forkserver.
"""

from __future__ import annotations

import os
import sys

# Imported once by the forkserver (see scaling/warm_preload.py).
PRELOAD = ("torch", "torch._dynamo", "deepspeed", "wandb", "hydra", "scaling.train", "scaling.data", "scaling.models")


def run(overrides: list[str], log_path: str) -> None:
    """The forked child's body: train one run with `scaling-train` overrides, output to
    `log_path`, and exit with the trainer's exit code."""
    os.setsid()
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    from scaling.train import run_overrides

    code = run_overrides(overrides)
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)
