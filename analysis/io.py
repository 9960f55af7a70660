"""Reading runs (a CSV, or a study's run directories) and writing results atomically.

A study's run directories are read through the records the trainer writes
(:mod:`scaling.contracts`, torch-free): each run's ``result.json`` (a ``Result``: ``status``,
``params``, ``params_nonembedding``, ``tokens``, ``flops``, ``train_loss``, ``eval_loss``, optional
``run_id`` and ``budget_flops``) and ``metrics.jsonl`` (``MetricsRow``\ s with ``step``, ``tokens``,
``flops``, ``loss``, ...). A directory without ``result.json`` is an unfinished run.

A study folder made by the planner also holds ``plan.json`` (a ``Plan`` of format
``scaling-plan/1``, with ``runs[].id`` and ``runs[].dir``). :func:`read_plan_run_ids` reads the ids
it plans, through the same contracts module, so the analysis never imports the planner (which
pulls in Hydra and the trainer's config).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import tempfile
from dataclasses import dataclass
from io import StringIO
from pathlib import Path

import numpy as np

from scaling.analysis.data import Data
from scaling.analysis.errors import DataError
from scaling.contracts import (
    METRICS_NAME, PLAN_NAME, RESULT_NAME, ContractError, Result, RunStatus, read_metrics, read_plan, read_text,
)  # fmt: skip
from scaling.contracts import read_result as read_result_record

OPTIONAL_CSV = ("C", "run_id", "budget_flops", "unit")
RERUN = "rerun the run or delete its folder"  # the fix for a run whose result.json is unusable
SHOW_SKIPPED = 10  # skipped runs an error lists one by one
NOT_IN_PLAN = "not in plan"  # the SkippedRun status of a run folder the current plan does not list


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


def _read_text(path: Path) -> str:
    """The file's text. Raises DataError naming the file when it is binary or not UTF-8."""
    try:
        return read_text(path)
    except ContractError as exc:
        raise DataError(str(exc)) from None


def _to_float(raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        return float("nan")


def load_csv(path: str | os.PathLike, skip_bad: bool = False, x: str | None = None) -> Data:
    """Read a CSV with columns ``N``, ``D``, ``loss`` and optionally ``C``, ``run_id``,
    ``budget_flops``, ``unit`` (the bootstrap's unit of each row, :attr:`Data.unit`: rows that
    share a label are resampled together; an empty cell makes the row its own unit). For a one-variable law, ``x`` ("N", "D" or "C") names the only input
    column the file needs besides ``loss``; the others may be absent (``Data.absent``), and
    C is derived as 6 N D only when both N and D are there (``Data.c_derived`` says so).

    A row with a missing, non-numeric, NaN, infinite or non-positive N, D, loss or C is
    rejected: by default the whole file is, with every bad row named by its line number;
    with ``skip_bad=True`` those rows are dropped and listed in ``Data.rejected``. So is a row
    without C whose ``6 N D`` overflows a float (N or D in the wrong units, say).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"CSV file {str(path)!r} does not exist; pass the path to a CSV file")
    try:
        text = _read_text(path)
    except DataError as exc:
        raise DataError(f"{exc}; scaling-fit reads a CSV file saved as UTF-8 text, with a "
                        f"header N,D,loss") from None
    reader = csv.DictReader(StringIO(text, newline=""))
    try:
        header = [h.strip() for h in (reader.fieldnames or [])]
        needed = ("N", "D", "loss") if x is None else (x, "loss")
        if x == "C" and "C" not in header and "N" in header and "D" in header:
            needed = ("N", "D", "loss")  # C = 6 N D, derived and flagged (Data.c_derived)
        missing = [c for c in needed if c not in header]
        if missing:
            raise DataError(
                f"{path.name} lacks column(s) {missing}; found {header}. The CSV needs a "
                + ("header with N, D, loss (and optionally C)" if x is None else
                   f"header with {x} and loss (a one-variable law in {x})")
            )
        rows = [{(k or "").strip(): v for k, v in r.items()} for r in reader]
    except csv.Error as exc:
        raise DataError(f"{str(path)!r} is not a readable CSV at line {reader.line_num}: {exc}; "
                        f"fix that line") from None
    has_c = "C" in header
    present = tuple(k for k in ("N", "D") if k in header)
    derive_c = not has_c and present == ("N", "D")
    good: dict[str, list] = {"N": [], "D": [], "loss": [], "C": [], "run_id": [], "budget": [], "unit": [],
                             "unique_tokens": []}
    problems = []
    for i, r in enumerate(rows):
        line = i + 2  # the header is line 1
        name = f"line {line}" + (f" (run_id {r['run_id']})" if r.get("run_id") else "")
        vals, bad = {}, []
        for k in present + ("loss",) + (("C",) if has_c else ()):
            raw = (r.get(k) or "").strip()
            v = _to_float(raw)
            if math.isinf(v) and "inf" not in raw.lower():
                bad.append(f"{k}={raw!r} overflows a float (the largest is about 1.8e308)")
            elif not _positive(v):
                bad.append(f"{k}={raw!r}" if raw else f"{k} missing")
            vals[k] = v
        if not bad and derive_c:
            # C is derived, so an overflow is the fault of the N and D the user gave.
            vals["C"] = 6.0 * vals["N"] * vals["D"]
            if not math.isfinite(vals["C"]):
                bad.append(f"C = 6*N*D overflows to inf with N={r['N'].strip()!r}, "
                           f"D={r['D'].strip()!r} (the file has no C column, so C is derived "
                           f"from N and D; check their units, or give a C column)")
        if bad:
            problems.append(f"{name}: " + ", ".join(bad))
            continue
        for k in ("N", "D", "loss", "C"):
            good[k].append(vals.get(k, math.nan))
        good["run_id"].append(r.get("run_id") or f"line{line}")
        good["unit"].append((r.get("unit") or "").strip() or f"line{line}")
        try:
            good["budget"].append(float(r.get("budget_flops") or "nan"))
        except ValueError:
            good["budget"].append(float("nan"))
        # Unique tokens (the data-constrained law's U): an empty cell is unknown (NaN).
        good["unique_tokens"].append(_to_float((r.get("unique_tokens") or "nan").strip()))
    if problems and not skip_bad:
        raise DataError(
            f"{path.name}: {len(problems)} bad row(s): " + "; ".join(problems)
            + ". N, D, loss and C must be positive finite numbers; fix or delete those rows "
            "(or pass skip_bad=True / --skip-bad-rows)"
        )
    if not good["N"]:
        raise DataError(f"{path.name} has no usable rows; it needs N, D, loss per row")
    data = Data.from_arrays(
        good["N"] if "N" in present else None, good["D"] if "D" in present else None,
        good["loss"], good["C"] if has_c or derive_c else None, run_id=good["run_id"],
        budget=good["budget"], source=str(path), unit=good["unit"] if "unit" in header else None,
        unique_tokens=good["unique_tokens"] if "unique_tokens" in header else None,
    )
    if derive_c:
        data = dataclasses.replace(data, c_derived=True)
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


def read_result(run_dir: str | os.PathLike) -> Result | None:
    """A run's result (:class:`scaling.contracts.Result`), or None when the run has none yet (it
    is unfinished).

    Raises DataError naming the file when it is binary, not UTF-8, not JSON, JSON that is not an
    object (``[1, 2]``, ``"x"``), or not a result (no or an unknown status, a value of the wrong
    type): the trainer always writes one.
    """
    try:
        return read_result_record(run_dir)
    except ContractError as exc:
        raise DataError(str(exc)) from None


def read_plan_run_ids(study_dir: str | os.PathLike) -> set[str] | None:
    """The run ids that ``study_dir/plan.json`` plans, or None when the folder has no plan.json.

    A run id is both ``runs[].id`` and the name of ``runs[].dir`` (the planner puts each run in
    ``STUDY/runs/<id>``; the name survives the study folder being moved). Raises DataError
    naming the file when it is not a plan of format ``scaling-plan/1``.
    """
    try:
        plan = read_plan(study_dir)
    except ContractError as exc:
        raise DataError(f"{exc}; rewrite it by running scaling-study on the study spec, or move it away to fit "
                        f"every run") from None
    if plan is None:
        return None
    return {r.id for r in plan.runs} | {Path(r.dir).name for r in plan.runs if r.dir}


def select_runs(
    folder: str | os.PathLike, include_unplanned: bool = False
) -> tuple[list[Path], list[SkippedRun]]:
    """The run directories to analyse under ``folder``, and those left out as not in its plan.

    With a ``plan.json`` in ``folder``, only the runs it plans are analysed: a spec edited since
    an earlier launch leaves run folders behind that belong to another study. The others come
    back as :class:`SkippedRun` with status ``"not in plan"``; ``include_unplanned=True``
    analyses them too (and still lists them). Without a plan.json every run is analysed.
    """
    dirs = find_run_dirs(folder)
    planned = read_plan_run_ids(folder)
    if planned is None:
        return dirs, []
    unplanned = [d for d in dirs if d.name not in planned]
    left_out = [SkippedRun(d.name, str(d), NOT_IN_PLAN, f"{PLAN_NAME} does not list it")
                for d in unplanned]
    if include_unplanned:
        return dirs, left_out
    return [d for d in dirs if d.name in planned], left_out


def load_runs(
    folder: str | os.PathLike,
    n_key: str = "params",
    loss_key: str = "eval_loss",
    run_dirs: list[Path] | None = None,
    units: dict[str, str] | None = None,
) -> tuple[Data, list[SkippedRun]]:
    """Read every run's result.json under a study folder into :class:`Data`.

    N = ``result[n_key]`` (``params`` or ``params_nonembedding``), D = ``tokens``,
    C = ``flops``, loss = ``result[loss_key]`` (``eval_loss`` by default, falling back to
    ``train_loss`` when absent). Failed runs, unfinished runs (no result.json) and runs whose
    result.json is unreadable, not an object, lacks a key or holds a missing or non-positive
    value are skipped and returned, each with its reason (naming the file). ``run_dirs``
    (from :func:`select_runs`) limits the runs read; by default all of :func:`find_run_dirs`.

    ``units`` (run id or run folder name -> label, e.g. from :func:`plan_units`) names the
    bootstrap's unit of each run (:attr:`Data.unit`); a run it does not name, and every run
    without it, is its own unit.
    """
    if n_key not in ("params", "params_nonembedding"):
        raise DataError(f"n_key={n_key!r}; use 'params' or 'params_nonembedding'")
    rows: dict[str, list] = {"N": [], "D": [], "loss": [], "C": [], "run_id": [], "budget": [], "unit": [],
                             "unique_tokens": []}
    skipped: list[SkippedRun] = []
    for run in find_run_dirs(folder) if run_dirs is None else run_dirs:
        run_id = run.name
        result_path = run / RESULT_NAME
        try:
            res = read_result(run)
        except DataError as exc:
            skipped.append(SkippedRun(run_id, str(run), "invalid", f"{exc}; {RERUN}"))
            continue
        if res is None:
            skipped.append(SkippedRun(run_id, str(run), "unfinished", "no result.json"))
            continue
        run_id = str(res.run_id or run_id)
        if res.status is not RunStatus.COMPLETED:
            skipped.append(SkippedRun(run_id, str(run), "failed", str(res.error or f"status={res.status.value!r}")))
            continue
        # eval_loss falls back to train_loss when the run had no eval (null or absent).
        loss_from = "train_loss" if loss_key == "eval_loss" and res.eval_loss is None else loss_key
        keys = {"N": n_key, "D": "tokens", "C": "flops", "loss": loss_from}
        missing = res.lacks((n_key, "tokens", "flops"))
        if res.lacks((loss_from,)):
            missing.append(loss_key if loss_from == loss_key else f"{loss_key} or {loss_from}")
        if missing:
            skipped.append(SkippedRun(
                run_id, str(run), "invalid",
                f"{str(result_path)!r} is completed but lacks " + ", ".join(missing)
                + f"; a completed run records them, so {RERUN}"))
            continue
        vals = {k: getattr(res, key) for k, key in keys.items()}
        bad = [f"{keys[k]}={v!r}" for k, v in vals.items() if not _positive(v)]
        if bad:
            skipped.append(SkippedRun(run_id, str(run), "invalid",
                                      f"{str(result_path)!r} has " + ", ".join(bad)
                                      + f"; each must be a positive finite number; {RERUN}"))
            continue
        for k, v in vals.items():
            rows[k].append(float(v))
        rows["run_id"].append(run_id)
        # A run the mapping does not name is its own unit: its id never collides with a label.
        rows["unit"].append((units or {}).get(run_id) or (units or {}).get(run.name) or f"run:{run_id}")
        rows["budget"].append(float(res.budget_flops) if _positive(res.budget_flops) else float("nan"))
        # The unique tokens the run drew from (the data-constrained law's U); NaN when unknown.
        rows["unique_tokens"].append(float(res.unique_tokens) if _positive(res.unique_tokens)
                                     else float("nan"))
    if not rows["N"]:
        counts = {}
        for s in skipped:
            counts[s.status] = counts.get(s.status, 0) + 1
        # The caller never gets the skipped list back here, so the reasons go in the message.
        shown = [f"{s.run_id} ({s.status}): {s.reason}" for s in skipped[:SHOW_SKIPPED]]
        if len(skipped) > SHOW_SKIPPED:
            shown.append(f"and {len(skipped) - SHOW_SKIPPED} more")
        raise DataError(
            f"no completed runs under {str(folder)!r} (skipped: {counts or 'no run directories found'}); "
            f"expected run directories with result.json, e.g. STUDY/runs/<run_id>/result.json"
            + "".join(f"; {line}" for line in shown)
        )
    data = Data.from_arrays(rows["N"], rows["D"], rows["loss"], rows["C"],
                            run_id=rows["run_id"], budget=rows["budget"], source=str(folder),
                            unit=rows["unit"] if units else None,
                            unique_tokens=(rows["unique_tokens"]
                                           if any(map(math.isfinite, rows["unique_tokens"])) else None))
    return data, skipped


def plan_units(plan) -> dict[str, str] | None:
    """The bootstrap unit of each planned run, where the plan marks one: a run's ``unit`` key in
    plan.json (say, one label for the seeds of one configuration, so that they are resampled
    together). None when no run is marked, so every run stays its own unit."""
    if plan is None:
        return None
    marked = {r.id: str(r.extra["unit"]) for r in plan.runs if r.extra.get("unit") not in (None, "")}
    return marked or None


def _data_manifest(run_dir: Path) -> Path | None:
    """The manifest.json of the data a run trained on, found from its config.yaml without
    preparing anything: ``data.path``, or the built-in set's folder in the data cache (the
    folder scaling.data.prepare names). None when the run has no config or the folder is not
    on this machine."""
    import yaml

    from scaling.data.build import params_key
    from scaling.data.config import DataConfig
    from scaling.data.manifest import MANIFEST_NAME
    from scaling.data.prepare import builtin_params, default_cache_dir

    try:
        raw = (yaml.safe_load((run_dir / "config.yaml").read_text()) or {}).get("data") or {}
        names = {f.name for f in dataclasses.fields(DataConfig)}
        cfg = DataConfig(**{k: v for k, v in raw.items() if k in names})
        folder = Path(cfg.path) if cfg.path else (
            Path(cfg.cache_dir or default_cache_dir()) / f"{cfg.name}-{params_key(builtin_params(cfg))}")
    except (OSError, yaml.YAMLError, TypeError, ValueError, AttributeError):
        return None
    path = folder / MANIFEST_NAME
    return path if path.is_file() else None


def data_loss_floor(run_dirs: list[Path]) -> float | None:
    """The lowest reachable loss [nats] that the runs' data records (its manifest's
    ``source.loss_floor_nats``: the known E of the built-in ``markov`` and ``shapes`` sets), or
    None when no run's manifest records one, or the runs' data disagree. Read as JSON, so the
    analysis needs neither torch nor the data prepared again."""
    manifest = data_floor_source(run_dirs)
    return None if manifest is None else float(manifest["source"]["loss_floor_nats"])


def data_floor_source(run_dirs: list[Path]) -> dict | None:
    """The manifest (its JSON) of the runs' data, where its ``source`` records a positive
    ``loss_floor_nats`` and every run that has one agrees on it; None otherwise."""
    found: dict[float, dict] = {}
    for run in run_dirs:
        path = _data_manifest(Path(run))
        if path is None:
            continue
        try:
            manifest = json.loads(path.read_text())
            value = (manifest.get("source") or {}).get("loss_floor_nats")
        except (OSError, ValueError, AttributeError):
            continue
        if _positive(value):
            found[float(value)] = manifest
    return found.popitem()[1] if len(found) == 1 else None


def load_curves(
    folder: str | os.PathLike, n_key: str = "params", run_dirs: list[Path] | None = None
) -> list[Curve]:
    """Training curves (loss against FLOPs) of every completed run under ``folder`` (or in
    ``run_dirs``, as for :func:`load_runs`).

    Runs :func:`load_runs` skips are left out here without a word (it has named them). Rows of
    metrics.jsonl that are not objects with a positive finite ``flops`` and ``loss`` are ignored
    (a partly written last line, say); runs without any usable row are left out.
    """
    curves = []
    for run in find_run_dirs(folder) if run_dirs is None else run_dirs:
        try:
            res = read_result(run)
            rows = read_metrics(run / METRICS_NAME)
        except (DataError, ContractError):
            continue
        if res is None or res.status is not RunStatus.COMPLETED or not _positive(getattr(res, n_key)):
            continue
        pts = [(float(r.flops), float(r.tokens) if _positive(r.tokens) else 0.0, float(r.loss))
               for r in rows if _positive(r.flops) and _positive(r.loss)]
        if not pts:
            continue
        arr = np.array(sorted(pts))
        curves.append(Curve(str(res.run_id or run.name), float(getattr(res, n_key)), arr[:, 0], arr[:, 1], arr[:, 2]))
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
