"""One schema for fit results, shared by ``scaling-fit`` and the study report.

:func:`fit_to_json` and :func:`isoflop_to_json` build the dicts written as ``fit.json``;
:func:`format_fit` and :func:`format_isoflop` render the short tables the CLI prints.
"""

from __future__ import annotations

import math

import numpy as np

from scaling.analysis.extrapolate import HoldoutResult
from scaling.analysis.fit import BootstrapResult, FitResult, compute_optimal
from scaling.analysis.flops import FlopsPerToken
from scaling.analysis.diagnostics import Diagnostic
from scaling.analysis.isoflop import EnvelopeResult, IsoFLOPResult
from scaling.analysis.nested import NestedComparison

SCHEMA_VERSION = 1
EXAMPLE_BUDGETS = (1e21, 1e23, 1e25)  # FLOPs at which fit.json lists the allocation


def fit_to_json(
    fit: FitResult,
    boot: BootstrapResult | None = None,
    holdout: HoldoutResult | None = None,
    source: str | None = None,
    dropped_highest_loss: int = 0,
    skipped: list | None = None,
    comparison: NestedComparison | str | None = None,
    flops: FlopsPerToken | None = None,
    approaches: dict | None = None,
    predictions: list | None = None,
) -> dict:
    """The ``fit.json`` dict for a parametric fit.

    Keys: law, params, derived, n_points, objective, delta, converged, rmse_log, r2_log,
    diagnostics (list of {code, message}); with a bootstrap also stderr, interval
    ({name: [low, high]}), interval_level and n_resamples; for laws in N and D a
    compute_optimal table; and holdout, source, skipped runs when given.

    Constraints (added in the same schema version; older readers ignore them): constraints
    ({fix, tie, bound}), param_status ({name: free | fixed | tied}), free_params, and
    nested_comparison (the test of the constraints against the unconstrained law, or
    {"skipped": reason}). params lists every parameter, fixed and tied ones included; stderr
    and interval list only free ones, since a fixed or tied parameter has no interval.

    The study's FLOP scale (added in the same schema version): with ``flops`` (the study's
    f(N), :class:`scaling.analysis.flops.FlopsPerToken`) ``flops_per_token`` describes it and,
    when it is not 6 N, ``compute_optimal_study_flops`` is the allocation table on it
    (``compute_optimal`` stays on the 6 N D scale, labelled by ``compute_optimal_flops``).
    ``bootstrap_units`` counts the independent units the bootstrap resampled. ``approaches``:
    a, b from approaches 1-3 side by side (:func:`scaling.analysis.predict.compare_approaches`),
    its diagnostics joining the list; ``predictions``: RunPrediction.to_json dicts.
    """
    out: dict = {
        "schema_version": SCHEMA_VERSION,
        "law": fit.law,
        "x": fit.x,
        "params": dict(fit.params),
        "derived": dict(fit.derived),
        "n_points": fit.n_points,
        "objective": fit.objective,
        "delta": fit.delta,
        "converged": fit.converged,
        "n_starts": fit.n_starts,
        "best_start": list(fit.best_start),
        "rmse_log": fit.rmse_log,
        "r2_log": fit.r2_log,
        "free_params": list(fit.free),
        "param_status": fit.status,
        "constraints": fit.constraints.to_json(),
    }
    diags = list(fit.diagnostics)
    if boot is not None:
        out["stderr"] = dict(boot.stderr)
        out["interval"] = {k: list(v) for k, v in boot.interval.items()}
        out["interval_level"] = boot.level
        out["n_resamples"] = boot.n_resamples
        out["bootstrap_seed"] = boot.seed
        out["bootstrap_units"] = boot.n_units
        diags += list(boot.diagnostics)
    if fit.has_optimal:
        rows = []
        for C in EXAMPLE_BUDGETS:
            rows.append(_optimal_row(compute_optimal(fit, C, boot=boot), boot is not None))
        out["compute_optimal"] = rows
        out["compute_optimal_flops"] = "6ND"
        if flops is not None and not flops.is_6nd:
            out["compute_optimal_study_flops"] = [
                _optimal_row(compute_optimal(fit, C, boot=boot, flops=flops), boot is not None)
                for C in EXAMPLE_BUDGETS]
    if flops is not None:
        out["flops_per_token"] = flops.to_json()
    if approaches is not None:
        out["approaches"] = approaches
        diags += [Diagnostic(**d) for d in approaches.get("diagnostics", ())]
    if predictions:
        out["predictions"] = [p if isinstance(p, dict) else p.to_json() for p in predictions]
    if holdout is not None:
        out["holdout"] = holdout.to_json()
        # Out-of-sample fit quality, beside the in-sample rmse_log and r2_log.
        out["holdout_rmse_log"] = float(np.sqrt(np.mean(np.log(holdout.predicted / holdout.actual) ** 2)))
    if isinstance(comparison, NestedComparison):
        out["nested_comparison"] = comparison.to_json()
        diags += list(comparison.diagnostics)
    elif comparison:
        out["nested_comparison"] = {"skipped": comparison}
    if source is not None:
        out["source"] = source
    if dropped_highest_loss:
        out["dropped_highest_loss"] = dropped_highest_loss
    if skipped:
        out["skipped_runs"] = [
            {"run_id": s.run_id, "status": s.status, "reason": s.reason} for s in skipped
        ]
    out["diagnostics"] = [d.to_json() for d in diags]
    return out


def _optimal_row(opt: dict, with_intervals: bool) -> dict:
    row = {k: opt[k] for k in ("C", "N_opt", "D_opt", "tokens_per_param", "loss")}
    if with_intervals:
        for k in ("N_opt", "D_opt", "tokens_per_param", "loss"):
            row[k + "_interval"] = list(opt[k + "_interval"])
    return row


def _in_window(p) -> np.ndarray:
    return np.ones(len(p.N), dtype=bool) if p.in_window is None else p.in_window


def isoflop_to_json(
    iso: IsoFLOPResult, envelope: EnvelopeResult | None = None, source: str | None = None,
    skipped: list | None = None,
) -> dict:
    """The ``fit.json`` dict for an IsoFLOP analysis (law "isoflop")."""
    out: dict = {
        "schema_version": SCHEMA_VERSION,
        "law": "isoflop",
        "params": {"a": iso.a, "b": iso.b, "log_k_N": iso.log_k_N, "log_k_D": iso.log_k_D},
        "derived": {"a": iso.a, "b": iso.b},
        "stderr": {"a": iso.a_stderr, "b": iso.b_stderr},
        "interval": {"a": list(iso.a_interval), "b": list(iso.b_interval)},
        "interval_level": iso.level,
        "n_resamples": iso.n_boot,
        "n_points": int(sum(p.n_runs for p in iso.profiles)),
        "objective": None,
        "n_budgets_used": iso.n_used,
        "tolerance": iso.tolerance,
        "budgets": [
            {"budget_flops": p.budget, "n_runs": p.n_runs, "coeffs": list(p.coeffs),
             "N_opt": p.N_opt, "D_opt": p.D_opt, "L_min": p.L_min, "interior": p.interior,
             "usable": p.usable, "rmse_log": p.rmse_log, "N_opt_all_sizes": p.N_opt_all,
             "N_opt_smooth": p.N_opt_smooth,
             "n_in_window": int(np.sum(_in_window(p))),
             "dropped": [{"run_id": r, "N": float(n), "loss": float(l)}
                         for r, n, l, k in zip(p.run_ids, p.N, p.loss, _in_window(p)) if not k]}
            for p in iso.profiles
        ],
        # Relative loss margin of each profile's fitting window (None: all sizes fitted).
        "isoflop_window": iso.window,
        "noise_log": iso.noise_log,
        "diagnostics": [d.to_json() for d in iso.diagnostics],
    }
    out["flops_per_token"] = iso.flops.to_json()
    if envelope is not None:
        out["envelope"] = {"a": envelope.a, "b": envelope.b, "n_points": int(envelope.C.size),
                           "a_interval": list(envelope.a_interval),
                           "b_interval": list(envelope.b_interval), "n_boot": envelope.n_boot}
    if source is not None:
        out["source"] = source
    if skipped:
        out["skipped_runs"] = [
            {"run_id": s.run_id, "status": s.status, "reason": s.reason} for s in skipped
        ]
    return out


def _g(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.4g}"


def _status_note(fit: FitResult, name: str) -> str:
    """``fixed`` or ``tied: beta = alpha`` for a constrained parameter; empty for a free one."""
    c = fit.constraints
    if name in c.fix:
        return "fixed"
    if name in c.tie:
        return f"tied: {name} = {c.tie[name]}"
    return ""


def format_fit(fit: FitResult, boot: BootstrapResult | None = None) -> str:
    """A short table: one line per parameter and derived quantity, then diagnostics. A fixed
    or tied parameter says so where a free one has its interval."""
    lines = [
        f"law {fit.law}" + (f" in {fit.x}" if fit.x else "")
        + f": {fit.n_points} runs, objective {fit.objective:.6g}, "
        f"RMSE(log L) {fit.rmse_log:.4g}, R^2(log L) {fit.r2_log:.4f}, "
        f"{'converged' if fit.converged else 'NOT converged'}",
    ]
    if fit.constraints:
        lines.append(f"constraints: {fit.constraints.describe()}; {fit.n_free} free parameters "
                     f"({', '.join(fit.free)})")
    head = f"  {'name':<10}{'estimate':>12}"
    if boot is not None:
        head += f"{'stderr':>12}   {int(boot.level * 100)}% interval"
    lines.append(head)
    for kind, values in (("param", fit.params), ("derived", fit.derived)):
        for k, v in values.items():
            row = f"  {k:<10}{_g(v):>12}"
            note = _status_note(fit, k) if kind == "param" else ""
            if note:
                row += f"   ({note})"
            elif boot is not None and k in boot.stderr:
                lo, hi = boot.interval[k]
                row += f"{_g(boot.stderr[k]):>12}   [{_g(lo)}, {_g(hi)}]"
            lines.append(row + ("" if kind == "param" else "   (derived)"))
    diags = list(fit.diagnostics) + (list(boot.diagnostics) if boot is not None else [])
    lines.append("diagnostics: " + ("none" if not diags else ""))
    lines += [f"  - {d.code}: {d.message}" for d in diags]
    return "\n".join(lines)


def format_comparison(cmp: NestedComparison) -> str:
    """The test of the constraints, for the console."""
    lines = [cmp.sentence(), f"  method: {cmp.method}"]
    lines += [f"  - {d.code}: {d.message}" for d in cmp.diagnostics]
    return "\n".join(lines)


def format_isoflop(iso: IsoFLOPResult) -> str:
    """A short table of budgets and the fitted exponents."""
    lines = [f"isoflop: {len(iso.profiles)} budget(s), {iso.n_used} used",
             f"  window: {'all sizes' if iso.window is None else f'loss within {iso.window:g} (relative) of each minimum'}",
             f"  {'budget':>10}{'runs':>6}{'fitted':>7}{'N_opt':>12}{'D_opt':>12}{'L_min':>9}  interior"]
    for p in iso.profiles:
        lines.append(f"  {p.budget:>10.4g}{p.n_runs:>6}{int(np.sum(_in_window(p))):>7}"
                     f"{_g(p.N_opt):>12}{_g(p.D_opt):>12}{_g(p.L_min):>9}  "
                     f"{'yes' if p.interior else 'no'}")
    for k, v, iv, se in (("a", iso.a, iso.a_interval, iso.a_stderr),
                         ("b", iso.b, iso.b_interval, iso.b_stderr)):
        lines.append(f"  {k} = {v:.4f}  stderr {_g(se)}  "
                     f"{int(iso.level * 100)}% interval [{_g(iv[0])}, {_g(iv[1])}]")
    lines.append("diagnostics: " + ("none" if not iso.diagnostics else ""))
    lines += [f"  - {d.code}: {d.message}" for d in iso.diagnostics]
    return "\n".join(lines)
