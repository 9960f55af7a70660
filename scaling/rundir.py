"""The run directory is the contract between the trainer, the launchers and the analysis.

    DIR/config.yaml       the fully resolved config (no secrets)
    DIR/metrics.jsonl     one JSON object per logged step, append-only (a MetricsRow)
    DIR/result.json       written atomically when the run ends: completed or failed (a Result)
    DIR/checkpoints/      step00000123/ folders; a folder exists only once complete (scaling/checkpoint.py)
    DIR/lock.json         the lease of the trainer using the directory (scaling/runlock.py)
    DIR/stopped.json      the last attempt stopped cleanly on a signal (resume by running again)
    DIR/train.log         the run's log (rank 0)

The records are typed, versioned, written and read in scaling/contracts.py; `read_result`,
`load_result` and `read_metrics` here give them as JSON (dicts), for scripts and tests.

Torch-free: launchers and status commands read run directories on login nodes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from scaling import contracts
from scaling.contracts import ContractError, finite_or_none, json_default, write_atomic  # noqa: F401 - re-exported

EXIT_COMPLETED = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_REQUEUE = 75  # EX_TEMPFAIL: interrupted by a signal after saving a checkpoint; run again to resume
STOP_NAME = "stopped.json"  # written by the trainer's main rank when a stop signal ended the run cleanly


def exit_status(run_dir: Path | str, code: int, started: float) -> int:
    """A launcher's view of a trainer's exit code. torchrun turns any non-zero exit of a worker
    (75 included) into its own exit 1; a stop record written since `started` says the stop was
    clean, so the run is to be requeued, not counted as failed."""
    if code in (EXIT_COMPLETED, EXIT_REQUEUE):
        return code
    try:
        if (Path(run_dir) / STOP_NAME).stat().st_mtime >= started - 1:
            return EXIT_REQUEUE
    except OSError:
        pass
    return code


def write_json_atomic(path: Path | str, obj: Any) -> None:
    write_atomic(path, json.dumps(finite_or_none(obj) if isinstance(obj, dict) else obj, indent=2,
                                  default=json_default) + "\n")


def read_json(path: Path | str) -> Any | None:
    """The parsed file, or None when it is absent or unreadable (a reader never crashes on a run
    that is being written)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


RunFileError = ContractError  # the name callers of load_result catch


def read_result(run_dir: Path | str) -> dict | None:
    """result.json as JSON, or None when it is absent or unreadable (for views that must never fail)."""
    result = contracts.result_if_readable(run_dir)
    return None if result is None else result.to_json()


def load_result(run_dir: Path | str) -> dict | None:
    """result.json as JSON, validated (`scaling.contracts.read_result` with `complete`); None when
    there is none yet, ContractError naming the file and what is wrong."""
    result = contracts.read_result(run_dir, complete=True)
    return None if result is None else result.to_json()


def read_metrics(path: Path | str) -> list[dict]:
    """The rows of metrics.jsonl as JSON, in order. A torn last line (a kill mid-write) is ignored."""
    return [row.to_json() for row in contracts.read_metrics(path)]


def checkpoint_dirs(run_dir: Path | str) -> list[Path]:
    """Complete checkpoints, oldest first. In-progress saves live in hidden `.tmp-*` folders and
    are renamed into place only when every rank has finished writing."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step"))
