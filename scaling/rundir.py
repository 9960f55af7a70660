"""The run directory is the contract between the trainer, the launchers and the analysis.

    DIR/config.yaml       the fully resolved config (no secrets)
    DIR/metrics.jsonl     one JSON object per logged step, append-only
    DIR/result.json       written atomically when the run ends: completed or failed
    DIR/checkpoints/      step00000123/ folders; a folder exists only once complete (scaling/checkpoint.py)
    DIR/lock.json         the lease of the trainer using the directory (scaling/runlock.py)
    DIR/stopped.json      the last attempt stopped cleanly on a signal (resume by running again)
    DIR/train.log         the run's log (rank 0)

Torch-free: launchers and status commands read run directories on login nodes.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

from scaling.errors import ScalingError

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


def write_atomic(path: Path | str, text: str) -> None:
    """Write a file so that readers see the old content or the new, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _finite_or_none(row: dict) -> dict:
    # JSON has no NaN; a non-finite loss is recorded as null and explained elsewhere.
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}


def write_json_atomic(path: Path | str, obj: Any) -> None:
    write_atomic(path, json.dumps(_finite_or_none(obj) if isinstance(obj, dict) else obj, indent=2,
                                  default=_json_default) + "\n")


def read_json(path: Path | str) -> Any | None:
    """The parsed file, or None when it is absent or unreadable (a reader never crashes on a run
    that is being written)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def read_result(run_dir: Path | str) -> dict | None:
    """The result, or None when it is absent or unreadable (for status views that must never fail)."""
    raw = read_json(Path(run_dir) / "result.json")
    return raw if isinstance(raw, dict) else None


class RunFileError(ScalingError):
    """A file of a run directory exists but is not what the contract says; names the file."""


RESULT_STATUSES = ("completed", "failed")
COMPLETED_KEYS = ("params", "tokens", "flops", "eval_loss", "steps")


def load_result(run_dir: Path | str) -> dict | None:
    """The validated result, None when there is none yet, or RunFileError naming the file and what
    is wrong: not UTF-8 JSON, not an object, an unknown status, or a completed result missing keys."""
    path = Path(run_dir) / "result.json"
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise RunFileError(f"{path} is not UTF-8 text (a binary or corrupt file)") from None
    try:
        raw = json.loads(text)
    except ValueError as e:
        raise RunFileError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise RunFileError(f"{path} holds a JSON {type(raw).__name__}, not an object")
    if raw.get("status") not in RESULT_STATUSES:
        raise RunFileError(f"{path} has status {raw.get('status')!r}; expected one of {RESULT_STATUSES}")
    missing = [k for k in COMPLETED_KEYS if k not in raw] if raw["status"] == "completed" else []
    if missing:
        raise RunFileError(f"{path} is a completed result without {missing}")
    return raw


def append_metrics(path: Path | str, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(_finite_or_none(row), default=_json_default) + "\n")
        f.flush()


def read_metrics(path: Path | str) -> list[dict]:
    """All complete rows. A torn last line (a kill mid-write) is ignored."""
    rows = []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return rows
    for line in lines:
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def truncate_metrics(path: Path | str, last_step: int) -> None:
    """Keep rows up to `last_step`: rows a killed run wrote after its last checkpoint are
    written again, identically, by the resumed run."""
    path = Path(path)
    if not path.exists():
        return
    keep: Iterable[dict] = [r for r in read_metrics(path) if r.get("step", 0) <= last_step]
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in keep))


def checkpoint_dirs(run_dir: Path | str) -> list[Path]:
    """Complete checkpoints, oldest first. In-progress saves live in hidden `.tmp-*` folders and
    are renamed into place only when every rank has finished writing."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step"))
