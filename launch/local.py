"""The local launcher: each run in its own process (under torchrun when it asks for more than one),
one after another or several at once where the cores allow, with a progress bar over runs and a
log file per run (`RUN_DIR/launch.log`).

Ctrl-C (or SIGTERM to the launcher) is forwarded to the runs as SIGTERM: each saves a checkpoint
and exits with code 75 (under torchrun, which exits 1, the run's stop record says so), and a
relaunch resumes it.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from scaling.contracts import METRICS_NAME, Result, RunSpec, RunStatus, result_if_readable, write_result
from scaling.launch.state import (
    branch_ready, fork_checkpoint, last_metric, proc_start, release_fork, update_launch, write_launch,
)  # fmt: skip
from scaling.rundir import EXIT_REQUEUE, exit_status

# The code of a branch not started because its trunk's fork checkpoint is missing and nothing in
# this launch will write it (no result is written: a relaunch starts it once the checkpoint exists).
EXIT_BRANCH_WAITING = 3


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def parallel_runs(setting: Any, runs: list[RunSpec], cores: Optional[int] = None,
                  echo: Callable[[str], None] = print) -> int:
    """How many runs go at once: the setting, or ("auto") as many as fit the cores; for
    one-process runs, the split this machine's calibration found fastest (launch/calibrate.py)."""
    if setting != "auto":
        return max(1, int(setting))
    cores = cores or cpu_count()
    widest = max((r.nproc for r in runs), default=1)
    if widest == 1 and runs:
        from scaling.launch.calibrate import core_split

        return core_split(cores, echo=echo)[0]
    return max(1, cores // widest)


def train_command(run: RunSpec, python: str = sys.executable, extra: Optional[list[str]] = None) -> list[str]:
    """The command that trains one run: `python -m scaling.train ...`, or torchrun for several
    processes."""
    overrides = [*run.overrides, *(extra or [])]
    if run.nproc <= 1:
        return [python, "-m", "scaling.train", *overrides]
    torchrun = Path(python).with_name("torchrun")
    launcher = [str(torchrun)] if torchrun.exists() else [python, "-m", "torch.distributed.run"]
    return [*launcher, "--standalone", f"--nproc_per_node={run.nproc}", "-m", "scaling.train", *overrides]


class WarmPool:
    """Warm workers for one-process runs (scaling/worker.py): long-lived processes that have torch,
    DeepSpeed and the trainer imported and train one run after another. A worker that dies (a
    crashed run) is replaced by a new one for the next run. This launcher process stays torch-free."""

    def __init__(self, python: str = sys.executable):
        self.python = python
        self.env = dict(os.environ)  # the environment its workers inherited
        self.idle: list[_Worker] = []

    def prestart(self, n: int) -> None:
        """Start workers until `n` are idle: they import torch and DeepSpeed (about 3 s) while the
        launcher plans, instead of after it has handed them their first run."""
        while len(self.idle) < n:
            self.idle.append(_Worker(self.python))

    def start(self, overrides: list[str], log_path: Path) -> "_Worker":
        worker = self.idle.pop(0) if self.idle else _Worker(self.python)
        worker.submit(overrides, log_path, on_done=self.idle.append)
        return worker

    def close(self) -> None:
        for worker in self.idle:
            worker.close()
        self.idle.clear()


_POOL: Optional[WarmPool] = None


def warm_pool(python: str = sys.executable) -> WarmPool:
    """This process's warm workers, shared by every local launch in it: a study's tune phase, its
    runs and its verification run start workers once, not once per phase. Workers inherit the
    environment they were started in, so a pool started under another environment (or another
    Python) is closed and replaced. Idle workers are closed when the process exits."""
    global _POOL
    if _POOL is not None and (_POOL.python != python or _POOL.env != dict(os.environ)):
        _POOL.close()
        _POOL = None
    if _POOL is None:
        _POOL = WarmPool(python)
        atexit.register(_POOL.close)
    return _POOL


def prestart_workers(parallel: Any, python: str = sys.executable) -> None:
    """Start as many warm workers as one-process runs will go at once (`parallel_runs`), so that
    they are ready when planning is done. Before the plan has been checked nothing slow may start:
    where this machine's core split is not yet measured, no worker is started here (the launch
    measures it once the plan is known to be sound), and a config error found while they import
    costs no wait (`WarmPool.close`)."""
    if parallel == "auto":
        from scaling.launch.calibrate import cached_core_split

        split = cached_core_split(cpu_count())
        if split is None:
            return
        parallel = split[0]
    warm_pool(python).prestart(parallel_runs(parallel, [RunSpec(id="", nproc=1)]))


class _Worker:
    """One warm worker, seen by the launcher as the process of the run it trains (pid, poll, wait)."""

    def __init__(self, python: str):
        # A session of its own: a signal to its group reaches it and the wandb service it starts.
        self.proc = subprocess.Popen([python, "-m", "scaling.worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, bufsize=1, start_new_session=True)  # fmt: skip
        self.pid = self.proc.pid
        self._code: Optional[int] = None
        self._busy = False
        self._trained = False  # has it been handed a run
        self._on_done: Callable[[Any], None] = lambda worker: None
        self._replies = b""  # read from its stdout, not yet parsed

    def submit(self, overrides: list[str], log_path: Path, on_done: Callable[[Any], None]) -> None:
        self._code, self._busy, self._on_done, self._trained = None, True, on_done, True
        self.proc.stdin.write(json.dumps({"overrides": list(overrides), "log": str(log_path)}) + "\n")
        self.proc.stdin.flush()

    def poll(self) -> Optional[int]:
        """The run's exit code once it has ended, else None. A worker that died ends its run with
        its own exit status (-N for signal N)."""
        if not self._busy:
            return self._code
        # The pipe is read raw, into a buffer of our own: a buffered readline could pull two
        # replies (the "ready" line and a quick run's code) out of the pipe at once and leave the
        # second where select() never sees it, so that run would never be seen to end.
        fd, gone = self.proc.stdout.fileno(), False
        while not gone and select.select([fd], [], [], 0)[0]:
            chunk = os.read(fd, 65536)
            gone = not chunk  # end of file: the worker is gone
            self._replies += chunk
        while b"\n" in self._replies:
            line, self._replies = self._replies.split(b"\n", 1)
            if "code" in (reply := json.loads(line)):
                self._code, self._busy = int(reply["code"]), False
                self._on_done(self)
                return self._code
        if gone:
            self._code, self._busy = self.proc.wait(), False
        elif self.proc.poll() is not None:
            self._code, self._busy = self.proc.returncode, False
        return self._code

    def wait(self, timeout: Optional[float] = None) -> Optional[int]:
        deadline = None if timeout is None else time.time() + timeout
        while self.poll() is None and (deadline is None or time.time() < deadline):
            time.sleep(0.05)
        return self._code

    def close(self) -> None:
        """End an idle worker: it exits when its stdin closes, after the imports it preloads. One
        that has never trained a run holds nothing (no run, no wandb service) and is terminated
        instead of awaited, so a launch that stops at a config error exits at once."""
        try:
            self.proc.stdin.close()
            if not self._trained:
                self.proc.terminate()
            self.proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()


# The launcher's longest wait between looks at its runs. A warm worker's reply wakes it at once,
# so a run's end is seen within a millisecond; a run in a process of its own (torchrun) and the
# stall check are seen on this cadence.
POLL_S = 0.1


def _wait_for_an_end(active: list["_Active"], timeout: float) -> None:
    """Sleep until a warm worker training one of `active` writes its reply (or dies), or for
    `timeout` seconds."""
    pipes = [a.proc.proc.stdout for a in active if isinstance(a.proc, _Worker)]
    if pipes:
        select.select(pipes, [], [], timeout)
    else:
        time.sleep(timeout)


@dataclass
class _Active:
    run: RunSpec
    proc: Any  # subprocess.Popen, or the _Worker training the run
    log: Any
    started: float
    progress_at: float = 0.0  # when the run last wrote to its run directory


def _last_write(run_dir: str) -> float:
    """The newest modification time among the files a live run keeps writing."""
    times = [0.0]
    for name in (METRICS_NAME, "train.log", "launch.log", "lock.json"):
        try:
            times.append(os.stat(os.path.join(run_dir, name)).st_mtime)
        except OSError:
            pass
    return max(times)


def run_local(
    runs: list[RunSpec],
    parallel: Any = "auto",
    python: str = sys.executable,
    echo: Callable[[str], None] = print,
    progress: bool = True,
    warm: bool = True,
    stall_timeout_s: Optional[float] = None,
) -> dict[str, int]:
    """Train `runs` as local processes and block until all have ended. Returns run id -> exit
    code (0 completed, 1 failed, 2 invalid config, 3 a branch whose trunk's fork checkpoint is
    missing, not started, 75 interrupted after a checkpoint).

    Cooldown branches start as soon as their trunk's fork checkpoint exists (`branch_ready`);
    runs start in plan order otherwise, so trunks, listed before their branches, go first. Once a
    branch has completed, its trunk's checkpoints are rotated (`release_fork`), so that a fork
    point no branch needs any more is not kept forever.

    One-process runs go to warm workers (`warm`, scaling/worker.py), which have torch and
    DeepSpeed imported and train run after run. A run whose directory sees no write for `stall_timeout_s` seconds
    (its lease alone is refreshed every 15 s, so a live trainer always writes) is killed and
    recorded as failed; its checkpoints stay, so a retry resumes it."""
    pool = warm_pool(python) if warm and any(r.nproc <= 1 for r in runs) else None
    slots = parallel_runs(parallel, runs, echo=echo)
    cores = cpu_count()
    meter, shown_at = _Meter(), 0.0
    codes: dict[str, int] = {}
    pending = list(runs)
    active: list[_Active] = []
    stopping = False

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal stopping
        if not stopping:
            echo(f"\n{signal.Signals(signum).name}: stopping {len(active)} running run(s); they checkpoint and resume on relaunch")
        stopping = True
        for a in active:
            if a.proc.poll() is None:
                _signal_group(a.proc.pid, signal.SIGTERM)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    bar = None
    if progress and runs:
        from tqdm import tqdm

        bar = tqdm(total=len(runs), unit="run", desc="runs", file=sys.stderr, dynamic_ncols=True)
    try:
        while pending or active:
            while pending and len(active) < slots and not stopping:
                # A cooldown branch waits for its trunk's fork checkpoint; it starts as soon as the
                # checkpoint appears, while the trunk trains on.
                run = next((r for r in pending if branch_ready(r)), None)
                if run is None:
                    break
                pending.remove(run)
                # A fixed share of the cores per process: more threads for the last runs would not
                # pay (on small CPUs, tiny models can run several times slower on 2 threads than on 1).
                threads = max(1, cores // (slots * run.nproc))
                extra = [f"train.num_threads={threads}"]
                cmd = train_command(run, python, extra)
                Path(run.dir).mkdir(parents=True, exist_ok=True)
                log_path = Path(run.dir) / "launch.log"
                log = open(log_path, "a")
                warm_run = pool is not None and run.nproc <= 1
                log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {'(warm worker) ' if warm_run else ''}{' '.join(cmd)}\n")
                log.flush()
                if warm_run:
                    proc = pool.start([*run.overrides, *extra], log_path)
                else:
                    # Its own process group, so a signal reaches torchrun's workers too.
                    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
                write_launch(run.dir, launcher="local", pid=proc.pid, pid_start=proc_start(proc.pid), nproc=run.nproc)
                active.append(_Active(run, proc, log, time.time(), time.time()))
                meter.started(active[-1])
                _show_running(bar, active, codes, meter)
            if stopping and pending:
                pending.clear()
            if pending and not active and not any(branch_ready(r) for r in pending):
                # Nothing running will write the checkpoints these branches wait for.
                for r in pending:
                    echo(f"run {r.id}: not started: its trunk {r.extra.get('parent')} has no checkpoint at the fork "
                         f"step {r.extra.get('fork_step')} ({fork_checkpoint(r)}); relaunch once the trunk has "
                         f"trained past it")  # fmt: skip
                    codes[r.id] = EXIT_BRANCH_WAITING
                    if bar is not None:
                        bar.update(1)
                pending.clear()
            _wait_for_an_end(active, POLL_S)
            for a in list(active):
                code = a.proc.poll()
                if code is None and stall_timeout_s:
                    a.progress_at = max(a.progress_at, _last_write(a.run.dir))
                    if time.time() - a.progress_at > stall_timeout_s:
                        _kill_stalled(a, stall_timeout_s, echo)
                        code = a.proc.wait(timeout=30)
                if code is None:
                    continue
                active.remove(a)
                a.log.close()
                code = exit_status(a.run.dir, code, a.started)
                codes[a.run.id] = code
                update_launch(a.run.dir, exit_code=code, ended=time.time())
                if code == 0:  # a completed branch may leave its trunk's fork point to rotation
                    release_fork(fork_checkpoint(a.run))
                meter.finished(a)
                if code not in (0, EXIT_REQUEUE):
                    _report_failure(a.run, code, echo)
                if bar is not None:
                    bar.update(1)
            if bar is not None and time.time() - shown_at > 1.0:
                _show_running(bar, active, codes, meter)
                shown_at = time.time()
    finally:
        if bar is not None:
            bar.close()
        for s, h in old.items():
            signal.signal(s, h)
    return codes


def _signal_group(pid: int, signum: int) -> None:
    """Signal a run's process group: every run process and worker leads a session of its own."""
    try:
        os.killpg(pid, signum)
    except OSError:
        pass  # already gone


def _kill_stalled(a: _Active, timeout_s: float, echo: Callable[[str], None]) -> None:
    """Kill a run that stopped making progress, and record it as failed. Its checkpoints stay:
    `study.retry_failed=true` resumes it from the last one."""
    _signal_group(a.proc.pid, signal.SIGKILL)
    error = (
        f"no progress for {timeout_s:.0f} s (nothing written to {a.run.dir}); killed by the launcher. Its "
        f"checkpoints are kept: relaunch with study.retry_failed=true to resume from the last one"
    )
    write_result(a.run.dir, Result(status=RunStatus.FAILED, error=error))
    echo(f"run {a.run.id}: {error}")


class _Meter:
    """The study's figures for the progress bar: tokens trained per second of the launch's wall
    time (the figure that matters: a slower step never looks like less overhead), and the share of
    finished runs' time spent outside optimizer steps."""

    def __init__(self) -> None:
        self.t0 = time.time()
        self.start_tokens: dict[str, float] = {}  # where each run stood when launched (a resume)
        self.done_tokens = 0.0
        self.steps_s = self.life_s = 0.0

    def started(self, a: _Active) -> None:
        self.start_tokens[a.run.id] = _tokens_so_far(a.run.dir)

    def finished(self, a: _Active) -> None:
        self.done_tokens += _tokens_so_far(a.run.dir) - self.start_tokens.get(a.run.id, 0.0)
        result = result_if_readable(a.run.dir)
        timing = (result.timing if result is not None else None) or {}
        if "steps_s" in timing:
            self.steps_s += float(timing["steps_s"])
            self.life_s += time.time() - a.started

    def describe(self, active: list[_Active]) -> str:
        tokens = self.done_tokens + sum(_tokens_so_far(a.run.dir) - self.start_tokens.get(a.run.id, 0.0) for a in active)
        out = f"{tokens / max(time.time() - self.t0, 1e-9):,.0f} tok/s"
        if self.life_s > 0:
            out += f" overhead={1 - self.steps_s / self.life_s:.0%}"
        return out


def _tokens_so_far(run_dir: str) -> float:
    row = last_metric(Path(run_dir) / METRICS_NAME)
    return float(row.tokens or 0.0) if row is not None else 0.0


def _show_running(bar: Any, active: list, codes: dict[str, int], meter: Optional[_Meter] = None) -> None:
    """The bar's tail: the study's tokens/s and overhead share, failures so far, the runs in flight."""
    if bar is None:
        return
    failed = sum(1 for c in codes.values() if c not in (0, EXIT_REQUEUE))
    running = ", ".join(a.run.id for a in active)
    figures = f"{meter.describe(active)} " if meter is not None else ""
    bar.set_postfix_str(f"{figures}failed={failed}" + (f" running: {running}" if running else ""), refresh=True)


def _report_failure(run: RunSpec, code: int, echo: Callable[[str], None]) -> None:
    result = result_if_readable(run.dir)
    error = result.error if result is not None else None
    if not error:
        tail = _tail(Path(run.dir) / "launch.log", 5)
        error = f"exit code {code}; last lines of {run.dir}/launch.log:\n{tail}"
    echo(f"run {run.id} failed: {error}")


def _tail(path: Path, n: int) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    " + line for line in lines[-n:])
