"""Reading runs (a CSV, or a study's run directories) and writing results atomically.

Run-directory contract (written by the trainer): each run directory holds ``result.json``
(``status``, ``params``, ``params_nonembedding``, ``tokens``, ``flops``, ``train_loss``,
``eval_loss``, optional ``run_id`` and ``budget_flops``) and ``metrics.jsonl`` (one JSON object
per logged step with ``step``, ``tokens``, ``flops``, ``loss``, ...). A directory without
``result.json`` is an unfinished run.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from analysis.data import Data
from analysis.errors import DataError

OPTIONAL_CSV = ("C", "run_id", "budget_flops")


@dataclass(frozen=True)
class SkippedRun:
    """A run left out of the fit: ``status`` is failed, unfinished or invalid."""

    run_id: str
    path: str
    status: str
    reason: str


@dataclass(frozen=True, eq=False)
class Curve:
    """One run's training curve from metrics.jsonl: loss [nats] against flops [FLOPs]."""

    run_id: str
    N: float
    flops: np.ndarray
    tokens: np.ndarray
    loss: np.ndarray


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(
        value) and value > 0


def load_csv(path: str | os.PathLike, skip_bad: bool = False) -> Data:
    """Read a CSV with columns ``N``, ``D``, ``loss`` and optionally ``C``, ``run_id``,
    ``budget_flops``.

    A row with a missing, non-numeric, NaN, infinite or non-positive N, D, loss or C is
    rejected: by default the whole file is, with every bad row named by its line number;
    with ``skip_bad=True`` those rows are dropped and listed in ``Data.rejected``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"CSV file {str(path)!r} does not exist; pass the path to a CSV file")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in ("N", "D", "loss") if c not in header]
        if missing:
            raise DataError(
                f"{path.name} lacks column(s) {missing}; found {header}. The CSV needs a "
                f"header with N, D, loss (and optionally C)"
            )
        rows = [{(k or "").strip(): v for k, v in r.items()} for r in reader]
    has_c = "C" in header
    good: dict[str, list] = {"N": [], "D": [], "loss": [], "C": [], "run_id": [], "budget": []}
    problems = []
    for i, r in enumerate(rows):
        line = i + 2  # the header is line 1
        name = f"line {line}" + (f" (run_id {r['run_id']})" if r.get("run_id") else "")
        vals, bad = {}, []
        for k in ("N", "D", "loss") + (("C",) if has_c else ()):
            raw = (r.get(k) or "").strip()
            try:
                v = float(raw)
            except ValueError:
                v = float("nan")
            if not _positive(v):
                bad.append(f"{k}={raw!r}" if raw else f"{k} missing")
            vals[k] = v
        if bad:
            problems.append(f"{name}: " + ", ".join(bad))
            continue
        for k in ("N", "D", "loss"):
            good[k].append(vals[k])
        good["C"].append(vals["C"] if has_c else 6.0 * vals["N"] * vals["D"])
        good["run_id"].append(r.get("run_id") or f"line{line}")
        try:
            good["budget"].append(float(r.get("budget_flops") or "nan"))
        except ValueError:
            good["budget"].append(float("nan"))
    if problems and not skip_bad:
        raise DataError(
            f"{path.name}: {len(problems)} bad row(s): " + "; ".join(problems)
            + ". N, D, loss and C must be positive numbers; fix or delete those rows "
            "(or pass skip_bad=True / --skip-bad-rows)"
        )
    if not good["N"]:
        raise DataError(f"{path.name} has no usable rows; it needs N, D, loss per row")
    data = Data.from_arrays(
        good["N"], good["D"], good["loss"], good["C"], run_id=good["run_id"],
        budget=good["budget"], source=str(path),
    )
    return dataclasses.replace(data, rejected=tuple(problems))


def find_run_dirs(folder: str | os.PathLike) -> list[Path]:
    """Run directories under a study folder: ``folder/runs/*``, or any directory one or two
    levels down holding result.json or metrics.jsonl (or ``folder`` itself if it is a run)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{str(folder)!r} is not a directory; pass a study or runs folder")

    def is_run(p: Path) -> bool:
        return (p / "result.json").is_file() or (p / "metrics.jsonl").is_file()

    if is_run(folder):
        return [folder]
    if (folder / "runs").is_dir():
        found = sorted(p for p in (folder / "runs").iterdir() if p.is_dir())
        if found:
            return found
    found = []
    for child in sorted(p for p in folder.iterdir() if p.is_dir()):
        if is_run(child):
            found.append(child)
        else:
            found.extend(sorted(g for g in child.iterdir() if g.is_dir() and is_run(g)))
    return found


def load_runs(
    folder: str | os.PathLike,
    n_key: str = "params",
    loss_key: str = "eval_loss",
) -> tuple[Data, list[SkippedRun]]:
    """Read every run's result.json under a study folder into :class:`Data`.

    N = ``result[n_key]`` (``params`` or ``params_nonembedding``), D = ``tokens``,
    C = ``flops``, loss = ``result[loss_key]`` (``eval_loss`` by default, falling back to
    ``train_loss`` when absent). Failed runs, unfinished runs (no result.json) and runs with
    missing or non-positive values are skipped and returned, each with its reason.
    """
    if n_key not in ("params", "params_nonembedding"):
        raise DataError(f"n_key={n_key!r}; use 'params' or 'params_nonembedding'")
    rows: dict[str, list] = {"N": [], "D": [], "loss": [], "C": [], "run_id": [], "budget": []}
    skipped: list[SkippedRun] = []
    for run in find_run_dirs(folder):
        run_id = run.name
        result_path = run / "result.json"
        if not result_path.is_file():
            skipped.append(SkippedRun(run_id, str(run), "unfinished", "no result.json"))
            continue
        try:
            res = json.loads(result_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            skipped.append(SkippedRun(run_id, str(run), "invalid", f"unreadable result.json: {exc}"))
            continue
        run_id = str(res.get("run_id") or run_id)
        status = res.get("status")
        if status != "completed":
            reason = res.get("error") or f"status={status!r}"
            skipped.append(SkippedRun(run_id, str(run), "failed" if status == "failed"
                                      else "unfinished", str(reason)))
            continue
        loss = res.get(loss_key)
        if loss is None and loss_key == "eval_loss":
            loss = res.get("train_loss")
        vals = {"N": res.get(n_key), "D": res.get("tokens"), "loss": loss, "C": res.get("flops")}
        bad = [f"{k}={v!r}" for k, v in vals.items() if not _positive(v)]
        if bad:
            skipped.append(SkippedRun(run_id, str(run), "invalid",
                                      "result.json has " + ", ".join(bad)))
            continue
        for k, v in vals.items():
            rows[k].append(float(v))
        rows["run_id"].append(run_id)
        b = res.get("budget_flops")
        rows["budget"].append(float(b) if _positive(b) else float("nan"))
    if not rows["N"]:
        counts = {}
        for s in skipped:
            counts[s.status] = counts.get(s.status, 0) + 1
        raise DataError(
            f"no completed runs under {str(folder)!r} (skipped: {counts or 'no run directories found'}); "
            f"expected run directories with result.json, e.g. STUDY/runs/<run_id>/result.json"
        )
    data = Data.from_arrays(rows["N"], rows["D"], rows["loss"], rows["C"],
                            run_id=rows["run_id"], budget=rows["budget"], source=str(folder))
    return data, skipped


def load_curves(folder: str | os.PathLike, n_key: str = "params") -> list[Curve]:
    """Training curves (loss against FLOPs) of every completed run under ``folder``.

    Rows of metrics.jsonl without a positive finite ``flops`` and ``loss`` are ignored (a
    partly written last line, say); runs without any usable row are left out.
    """
    curves = []
    for run in find_run_dirs(folder):
        try:
            res = json.loads((run / "result.json").read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if res.get("status") != "completed" or not _positive(res.get(n_key)):
            continue
        pts = []
        metrics = run / "metrics.jsonl"
        if not metrics.is_file():
            continue
        for line in metrics.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line from a run killed mid-write
            if _positive(row.get("flops")) and _positive(row.get("loss")):
                pts.append((float(row["flops"]), float(row.get("tokens") or 0.0),
                            float(row["loss"])))
        if not pts:
            continue
        arr = np.array(sorted(pts))
        curves.append(Curve(str(res.get("run_id") or run.name), float(res[n_key]),
                            arr[:, 0], arr[:, 1], arr[:, 2]))
    return curves


def _json_default(obj):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if hasattr(obj, "to_json"):
        return obj.to_json()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _clean(obj):
    """Replace NaN and infinities (not valid JSON) by null, recursively."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    """Write ``obj`` as JSON to ``path`` so readers see the old file or the new, never half.

    The text goes to a temporary file in the same directory, is flushed to disk, then
    renamed over ``path`` with ``os.replace`` (atomic on POSIX).
    """
    path = Path(path)
    text = json.dumps(_clean(json.loads(json.dumps(obj, default=_json_default))), indent=2)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
