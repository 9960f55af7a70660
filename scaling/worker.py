"""Warm workers: a long-lived process that has imported torch, DeepSpeed, wandb and the trainer
once, and trains the runs the local launcher hands it, one after another, in-process.

A study is many short runs; a fresh `python -m scaling.train` spends about 3 s of CPU per run
importing torch, torch._dynamo (pulled in by the optimizer), DeepSpeed and wandb before its first
step. A worker pays that once. The launcher starts it as `python -m scaling.worker` in a session
of its own and talks to it over its standard streams, one JSON line each way per run:
    request  {"overrides": [...scaling-train overrides...], "log": "RUN_DIR/launch.log"}
    reply    {"code": <the trainer's exit code>}
While a run trains, the worker's stdout and stderr go to the run's log, so the log holds exactly
what `scaling-train` would print; the trainer installs and restores its own signal handlers, so a
SIGTERM to the worker checkpoints the run and the worker then serves the next request.

Between runs the trainer has torn its process group down, and the next run builds its model,
engine, optimizer and data from its config and seeds alone, so a run in a warm worker trains
exactly as in a fresh process. A run that crashes the worker (a segfault, SIGKILL) ends with the
worker, and the launcher starts a new one for the next run.

Why not fork each run from a preloaded server (a forkserver)? That was the first version. Forking
a process that has imported torch is fragile (OpenMP and CUDA state must not have started), and
a spawned worker sidesteps the question at no cost to speed. (A 10x slowdown of two-thread steps
seen while testing it turned out to come from another process busy on one of the two cores, in
forked and fresh processes alike: OpenMP's barriers stall when a core is taken.)
"""

from __future__ import annotations

import importlib
import json
import os
import sys

# What a worker imports before its first run.
PRELOAD = ("torch", "torch._dynamo", "deepspeed", "wandb", "hydra", "scaling.train", "scaling.data", "scaling.models")


def preload() -> None:
    """Import the trainer's dependencies, choosing the accelerator as `train.device=auto` would."""
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    for name in PRELOAD:
        importlib.import_module(name)


def run_logged(overrides: list[str], log_path: str) -> int:
    """Train one run with its output appended to `log_path`; returns the trainer's exit code."""
    import time

    from scaling.train import run_overrides

    started = time.time()
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    try:
        return run_overrides(list(overrides), started)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def serve() -> None:
    """Answer run requests on stdin until it closes."""
    replies = os.fdopen(os.dup(1), "w", buffering=1)  # fd 1 itself goes to each run's log
    preload()
    replies.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        code = run_logged(request["overrides"], request["log"])
        replies.write(json.dumps({"code": code}) + "\n")


if __name__ == "__main__":
    serve()
