"""One trainer per run directory: a lease in `RUN_DIR/lock.json`, plus `flock` where it works.

A host and pid cannot be checked from another node of a shared file system, so the lock is a
lease: its holder rewrites the file every `REFRESH_S` seconds, and a lease not refreshed for
`LEASE_TIMEOUT_S` seconds is stale and may be taken over (this assumes the nodes' clocks agree to
well within that timeout). On top of the lease:
  - `flock` on `RUN_DIR/.lock` refuses a second trainer on the same host at once, where the file
    system supports it (a failure to lock for lack of support is ignored, never a refusal);
  - a holder on this host whose pid is gone is taken over at once;
  - a holder with the same Slurm job id and an older restart count is the predecessor of a
    requeued job (Slurm runs one instance of a job at a time), and is taken over at once.
A takeover replaces the file atomically and reads it back, so of two trainers racing for a stale
lease only one proceeds.

Only the main rank holds the lease; the trainer agrees the outcome across ranks. Torch-free.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Optional

from scaling.errors import ScalingError

LOCK_NAME = "lock.json"
FLOCK_NAME = ".lock"
LEASE_TIMEOUT_S = 120.0
REFRESH_S = 15.0


class RunLocked(ScalingError):
    """Another trainer holds the run directory."""


def _slurm_identity() -> tuple[Optional[str], int]:
    job = os.environ.get("SLURM_ARRAY_JOB_ID") and (
        f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"
    )
    job = job or os.environ.get("SLURM_JOB_ID")
    return job, int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def describe_holder(holder: dict[str, Any], now: Optional[float] = None) -> str:
    age = (now or time.time()) - float(holder.get("refreshed", 0))
    job = f", Slurm job {holder['slurm_job_id']}" if holder.get("slurm_job_id") else ""
    return f"pid {holder.get('pid')} on {holder.get('host')}{job}, lease refreshed {age:.0f} s ago"


class RunLock:
    """`acquire()` or raise RunLocked naming the holder; `release()` on exit. While held, a
    thread refreshes the lease; `lost` turns true if another trainer took it over."""

    def __init__(self, run_dir: Path | str, timeout_s: float = LEASE_TIMEOUT_S, refresh_s: float = REFRESH_S):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.timeout_s, self.refresh_s = timeout_s, refresh_s
        self.token = uuid.uuid4().hex
        self.lost = False
        self.takeover: Optional[str] = None  # why an existing lease was taken over, if it was
        self._acquired = time.time()
        self._flock_fd: Optional[int] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # ---- the lease file ----------------------------------------------------------------------
    def _record(self) -> dict[str, Any]:
        job, restarts = _slurm_identity()
        return {
            "token": self.token, "host": socket.gethostname(), "pid": os.getpid(), "slurm_job_id": job,
            "slurm_restarts": restarts, "acquired": self._acquired, "refreshed": time.time(),
        }  # fmt: skip

    def _read(self) -> Optional[dict[str, Any]]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # torn or garbage: judged by the file's age alone
        return raw if isinstance(raw, dict) else {}

    def _write(self) -> None:
        tmp = self.path.with_name(f".{LOCK_NAME}.{self.token}.tmp")
        tmp.write_text(json.dumps(self._record()) + "\n")
        os.replace(tmp, self.path)

    def _takeover_reason(self, holder: dict[str, Any]) -> Optional[str]:
        """Why a lease held by `holder` may be taken, or None."""
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return "released"
        if age > self.timeout_s:
            return f"stale (not refreshed for {age:.0f} s > {self.timeout_s:.0f} s)"
        if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
            if not _pid_alive(holder["pid"]):
                return f"its holder, pid {holder['pid']} on this host, is gone"
        job, restarts = _slurm_identity()
        if job and holder.get("slurm_job_id") == job and int(holder.get("slurm_restarts") or 0) < restarts:
            return f"held by an earlier start of the requeued Slurm job {job}"
        return None

    def acquire(self) -> "RunLock":
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._flock()
            holder = self._read()
            if holder is None:
                try:
                    fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                except FileExistsError:
                    holder = self._read() or {}
                else:
                    self._acquired = time.time()
                    with os.fdopen(fd, "w") as f:
                        f.write(json.dumps(self._record()) + "\n")
            if holder is not None:
                reason = self._takeover_reason(holder)
                if reason is None:
                    self._unflock()
                    raise RunLocked(
                        f"run directory {self.run_dir} is in use by another trainer ({describe_holder(holder)}); "
                        f"wait for it to finish, or stop it. A lease not refreshed for {self.timeout_s:.0f} s is "
                        f"taken over automatically"
                    )
                self._acquired = time.time()
                self._write()
                time.sleep(0.05)  # let a racing writer land, then check that the lease is ours
                if (self._read() or {}).get("token") != self.token:
                    self._unflock()
                    raise RunLocked(f"run directory {self.run_dir}: another trainer took the lease at the same time")
                self.takeover = reason
        except RunLocked:
            raise
        except OSError as e:  # read-only, permission denied, no space
            self._unflock()
            raise RunLocked(
                f"run directory {self.run_dir} is not writable ({e.strerror}: {e.filename}); fix its permissions or "
                f"pick another run.dir"
            ) from None
        self._thread = threading.Thread(target=self._refresh_loop, name="run-lease", daemon=True)
        self._thread.start()
        return self

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.refresh_s):
            holder = self._read()
            if holder and holder.get("token") != self.token:
                self.lost = True
                return
            try:
                self._write()
            except OSError:
                pass  # a transient file-system error; the next refresh tries again

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        holder = self._read()
        if holder and holder.get("token") == self.token:
            self.path.unlink(missing_ok=True)
        self._unflock()

    # ---- flock -------------------------------------------------------------------------------
    def _flock(self) -> None:
        import fcntl

        fd = os.open(self.run_dir / FLOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = self._read() or {}
            raise RunLocked(
                f"run directory {self.run_dir} is in use by another trainer on this host "
                f"({describe_holder(holder) if holder else 'holder unknown'}); wait for it to finish, or stop it"
            ) from None
        except OSError:
            os.close(fd)  # no flock on this file system: the lease alone decides
            return
        self._flock_fd = fd

    def _unflock(self) -> None:
        if self._flock_fd is not None:
            os.close(self._flock_fd)
            self._flock_fd = None
