"""The state of a study's runs, read from their run directories and the Slurm queue.

A run is
    planned    never launched, no progress
    queued     its Slurm job is pending (or being requeued)
    running    its Slurm job runs, or its local process is alive
    partial    launched before, no longer active, no result: a relaunch resumes it from its
               latest checkpoint (preempted past its requeues, cancelled, killed, interrupted)
    completed  result.json says completed
    failed     result.json says failed (the error is shown); retried only when asked

The states are `RunStatus` members (scaling/contracts.py). The run directory is the source of
truth; `launch.json` in it records the last launch (the Slurm job id, or the local pid). Reading
1,000 runs takes one `squeue` call and a few small file reads per run, so this is fast and light:
it imports neither Hydra nor torch.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Optional

from scaling.contracts import (
    METRICS_NAME, RESULT_NAME, ContractError, MetricsRow, RunStatus, last_loss_row, result_if_readable,
)  # fmt: skip
from scaling.rundir import checkpoint_dirs, read_json, write_atomic

if TYPE_CHECKING:
    from scaling.contracts import RunSpec

LAUNCH_NAME = "launch.json"
# The states a launcher shows, in the order it counts them.
STATES = (RunStatus.PLANNED, RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.PARTIAL, RunStatus.COMPLETED,
          RunStatus.FAILED)  # fmt: skip
ACTIVE = (RunStatus.QUEUED, RunStatus.RUNNING)
TAIL_BYTES = 8192  # how much of metrics.jsonl a status view reads for the latest row
# squeue's job states that mean "still in the system": a run in one of them is never resubmitted.
_QUEUED = {"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "CONFIGURING", "RESV_DEL_HOLD", "SUSPENDED",
           "PREEMPTED", "STOPPED", "SPECIAL_EXIT", "RESIZING"}  # fmt: skip
_RUNNING = {"RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT"}


@dataclass
class RunState:
    id: str
    state: RunStatus
    loss: Optional[float] = None
    job_id: Optional[str] = None
    error: Optional[str] = None
    tokens: Optional[float] = None  # tokens trained so far (from metrics.jsonl) or in total


def fork_checkpoint(run: "RunSpec") -> Optional[Path]:
    """A cooldown branch's start: its trunk's checkpoint at the fork step (a sibling run directory,
    as the planner lays them out); None for a run that is not a branch."""
    parent, step = run.extra.get("parent"), run.extra.get("fork_step")
    if parent is None or step is None or not run.dir:
        return None
    return Path(run.dir).parent / parent / "checkpoints" / f"step{int(step):08d}"


def branch_ready(run: "RunSpec") -> bool:
    """Whether a run can start now: not a branch; or its trunk's fork checkpoint is complete (a
    save is renamed into place with its state.json, so the file marks a whole checkpoint); or it
    has checkpoints of its own (a resume needs no trunk)."""
    ckpt = fork_checkpoint(run)
    return ckpt is None or (ckpt / "state.json").exists() or bool(checkpoint_dirs(run.dir))


def wait_for_fork(run_dir: str, checkpoint: Optional[str], poll_s: float = 30.0,
                  timeout_s: Optional[float] = None, echo: Callable[[str], None] = lambda s: None) -> Optional[str]:
    """Block until a branch's fork checkpoint is complete (a Slurm job of a branch submitted while
    its trunk trains polls for it), saying once through `echo` that it waits. Returns None when the
    branch can start, else why it cannot: its trunk ended without reaching the fork (completed or
    failed), or `timeout_s` passed."""
    if checkpoint is None or checkpoint_dirs(run_dir):
        return None
    ckpt = Path(checkpoint)
    trunk = ckpt.parent.parent
    deadline = None if timeout_s is None else time.time() + timeout_s
    if (ckpt / "state.json").exists():
        return None
    echo(f"waiting for the trunk's checkpoint {ckpt} (looking every {poll_s:g} s)")
    while not (ckpt / "state.json").exists():
        result = result_if_readable(trunk)
        if result is not None and not (ckpt / "state.json").exists():
            return (f"the trunk {trunk.name} ended ({result.status.value}) without a checkpoint at {ckpt.name}; "
                    f"rerun the trunk with the branch's fork point in its run.fork_tokens")
        if deadline is not None and time.time() > deadline:
            return f"no checkpoint {ckpt} after {timeout_s:.0f} s; relaunch the study once the trunk has passed it"
        time.sleep(poll_s)
    return None


def release_fork(checkpoint: Optional[str | Path]) -> list[Path]:
    """After a branch has completed: rotate its trunk's checkpoints by the trunk's own
    `train.keep_checkpoints`, in which the branch's fork point `checkpoint` counts as an ordinary
    checkpoint once no branch needs it (scaling/trainer/branch.py `needed_forks`). Returns the
    checkpoints deleted; none for a run that is not a branch (`checkpoint` None)."""
    if checkpoint is None:
        return []
    from scaling.trainer.checkpointing import release_forks

    return release_forks(Path(checkpoint).parent.parent)


def last_metric(path: Path) -> Optional[MetricsRow]:
    """The last complete row of metrics.jsonl that has a loss, reading only the file's tail."""
    try:
        return last_loss_row(path, TAIL_BYTES)
    except ContractError:  # a row of a newer version: nothing this view can show
        return None


def _has_checkpoint(run_dir: Path) -> bool:
    # Complete checkpoints only: a torn `.tmp-` save or one set aside as unreadable resumes nothing.
    return bool(checkpoint_dirs(run_dir))


def _proc_start(pid: int) -> Optional[str]:
    """The start time of a live process (field 22 of /proc/PID/stat), or None if it is gone or a
    zombie. With the pid it identifies a process even after the pid is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = stat[stat.rindex(")") + 2 :].split()
    return None if rest[0] == "Z" else rest[19]


def local_alive(launch: dict) -> bool:
    if launch.get("host") != socket.gethostname() or not launch.get("pid"):
        return False
    return _proc_start(int(launch["pid"])) == launch.get("pid_start")


def squeue_states(job_ids: Iterable[str] = ()) -> Optional[dict[str, str]]:
    """Job id -> state for the jobs in the Slurm queue (array tasks as ARRAY_TASK), or None when
    Slurm cannot be asked."""
    if shutil.which("squeue") is None:
        return None
    cmd = ["squeue", "-h", "-r", "-o", "%i|%T"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    states = {}
    for line in out.stdout.splitlines():
        jid, _, state = line.strip().partition("|")
        if jid:
            states[jid] = state.strip()
    return states


def read_run(run_id: str, run_dir: Path, queue: Optional[dict[str, str]]) -> RunState:
    result = result_if_readable(run_dir)
    launch = read_json(run_dir / LAUNCH_NAME) or {}
    job_id = launch.get("job_id")
    if result is not None and result.status is RunStatus.COMPLETED:
        return RunState(run_id, RunStatus.COMPLETED, result.loss, job_id, tokens=result.tokens)
    last = last_metric(run_dir / METRICS_NAME)
    loss = None if last is None else last.loss
    tokens = None if last is None else last.tokens
    # A job still in the queue wins over an older failed result: it is being requeued or retried.
    if launch.get("launcher") == "slurm" and job_id:
        if queue is None:
            # Slurm cannot be asked: never assume the job is gone, so a relaunch cannot double-submit.
            return RunState(run_id, RunStatus.QUEUED, loss, job_id, error="queue unknown (squeue failed)",
                            tokens=tokens)  # fmt: skip
        slurm_state = queue.get(str(job_id))
        if slurm_state in _RUNNING:
            return RunState(run_id, RunStatus.RUNNING, loss, job_id, tokens=tokens)
        if slurm_state is not None:
            return RunState(run_id, RunStatus.QUEUED, loss, job_id, tokens=tokens)
    elif launch.get("launcher") == "local" and local_alive(launch):
        return RunState(run_id, RunStatus.RUNNING, loss, job_id, tokens=tokens)
    if result is not None and result.status is RunStatus.FAILED:
        return RunState(run_id, RunStatus.FAILED, loss, job_id, error=result.error or "failed without an error message")
    if launch or last is not None or _has_checkpoint(run_dir):
        error = None
        if launch.get("exit_code") not in (None, 0, 75):
            error = f"exited with code {launch['exit_code']} without a result; see {run_dir}/launch.log"
        return RunState(run_id, RunStatus.PARTIAL, loss, job_id, error=error, tokens=tokens)
    return RunState(run_id, RunStatus.PLANNED)


def read_states(run_dirs: dict[str, str | Path], queue: Optional[dict[str, str]] = None, ask_queue: bool = True) -> dict[str, RunState]:
    """The state of each run (id -> run dir). Asks squeue once, only when some run went to Slurm."""
    if queue is None and ask_queue:
        uses_slurm = False
        for d in run_dirs.values():
            launch = read_json(Path(d) / LAUNCH_NAME)
            if launch and launch.get("launcher") == "slurm":
                uses_slurm = True
                break
        queue = squeue_states() if uses_slurm else {}
    return {rid: read_run(rid, Path(d), queue) for rid, d in run_dirs.items()}


def write_launch(run_dir: str | Path, **record) -> None:
    """Record a launch in run_dir/launch.json (atomically) and append it to the study's history."""

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {"time": time.time(), "host": socket.gethostname(), **record}
    write_atomic(run_dir / LAUNCH_NAME, json.dumps(record, indent=1) + "\n")
    history = run_dir.parent.parent / "launches.jsonl"
    with open(history, "a") as f:
        f.write(json.dumps({"run": run_dir.name, **record}) + "\n")


def update_launch(run_dir: str | Path, **fields) -> None:

    path = Path(run_dir) / LAUNCH_NAME
    record = read_json(path) or {}
    record.update(fields)
    write_atomic(path, json.dumps(record, indent=1) + "\n")


def archive_failed(run_dir: str | Path) -> Path:
    """Move a failed result.json aside (result.failed-N.json) so that a retry can run."""
    run_dir = Path(run_dir)
    n = 1
    while (run_dir / f"result.failed-{n}.json").exists():
        n += 1
    target = run_dir / f"result.failed-{n}.json"
    os.replace(run_dir / RESULT_NAME, target)
    return target


def proc_start(pid: int) -> Optional[str]:
    return _proc_start(pid)


def main(argv: Optional[list[str]] = None) -> int:
    """What a plain sbatch script of a cooldown branch runs around its training step
    (slurm/train.sbatch), as a branch's submitit job does in-process (launch/slurm.py TrainJob):

        python -m scaling.launch.state wait-fork RUN_DIR CHECKPOINT --poll-s S   # before: exit 1 if it cannot start
        python -m scaling.launch.state release-fork CHECKPOINT                   # after it completed
    """
    import argparse

    ap = argparse.ArgumentParser(prog="python -m scaling.launch.state", description=main.__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    wait = sub.add_parser("wait-fork", help="wait until a branch's fork checkpoint is complete")
    wait.add_argument("run_dir")
    wait.add_argument("checkpoint")
    wait.add_argument("--poll-s", type=float, default=30.0)
    release = sub.add_parser("release-fork", help="rotate the trunk's checkpoints once a branch has completed")
    release.add_argument("checkpoint")
    args = ap.parse_args(argv)
    if args.command == "wait-fork":
        why = wait_for_fork(args.run_dir, args.checkpoint, poll_s=args.poll_s, echo=lambda s: print(s, flush=True))
        if why is not None:
            print(f"this cooldown branch cannot start: {why}", flush=True)
            return 1
        return 0
    for path in release_fork(args.checkpoint):
        print(f"its trunk's checkpoints rotated: removed {path}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
