"""One schema for fit results, shared by ``scaling-fit`` and the study report.

:func:`fit_to_json` and :func:`isoflop_to_json` build the dicts written as ``fit.json``;
:func:`format_fit` and :func:`format_isoflop` render the short tables the CLI prints.
"""

from __future__ import annotations

import math
from dataclasses import replace
from types import MappingProxyType
from typing import Mapping

import numpy as np

from scaling.analysis.data import Data
from scaling.analysis.extrapolate import HoldoutResult
from scaling.analysis.fit import BootstrapResult, FitResult, compute_optimal, get_law
from scaling.analysis.flops import FlopsPerToken
from scaling.analysis.diagnostics import Diagnostic
from scaling.analysis.isoflop import EnvelopeResult, IsoFLOPResult
from scaling.analysis.laws import data_optimal_params, epoch_value
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
        "interval_method": iso.interval_method,
        "interval_bootstrap": {"a": list(iso.a_interval_bootstrap),
                               "b": list(iso.b_interval_bootstrap)},
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
                     f"{int(iso.level * 100)}% interval [{_g(iv[0])}, {_g(iv[1])}] ({iso.interval_method})")
    lines.append("diagnostics: " + ("none" if not iso.diagnostics else ""))
    lines += [f"  - {d.code}: {d.message}" for d in iso.diagnostics]
    return "\n".join(lines)


# --- Repeated data: what the data-constrained laws say ----------------------------------------

EPOCHS_SHOWN = (1, 2, 4, 8, 16, 32, 64)
# A bootstrap interval whose end lies within 1% of the optimiser's bound reaches that bound: its
# resamples ran into the bound, so the data set no limit on that side.
AT_BOUND_REL = 0.01
PINNED, BELOW, ABOVE, BEYOND, UNIDENTIFIED, FIXED, NO_INTERVAL = (
    "pinned down", "bounded below", "bounded above", "beyond the runs", "not identified", "fixed",
    "no interval")
# Each saturating parameter of the data-constrained laws, for messages: its name, what a run must
# do to inform it, what pins it down, and what loses value past the cap.
SATURATION = {
    "R_D_star": ("R*_D", "repeats its data (epochs > 1)", "runs of well over 1 + R*_D epochs",
                 "repeated tokens"),
    "R_N_star": ("R*_N", "has more parameters than N_opt(U_D), the compute-optimal size for its "
                         "unique tokens under the fitted law",
                 "sizes well over (1 + R*_N) N_opt(U_D)", "excess parameters"),
}


def size_ratio(data: Data, params: Mapping[str, float]) -> np.ndarray:
    """N / N_opt(U_D) per run: how many times the compute-optimal size for its unique tokens
    ``U_D = min(U, D)`` each run's model is, under the law's A, B, alpha and beta
    (:func:`scaling.analysis.laws.data_optimal_params`). Above 1 it has excess parameters."""
    U_D = np.minimum(data.column("U"), data.D)
    return data.N / data_optimal_params(U_D, *(params[k] for k in ("A", "B", "alpha", "beta")))


def past_cap(data: Data, fit: FitResult) -> dict[str, np.ndarray]:
    """How far each run is past the point where a saturating term of the fitted law bends:
    ``R_D = epochs - 1`` for R*_D, and ``R_N = N / N_opt(U_D) - 1`` (0 within it) for R*_N,
    under the fitted A, B, alpha, beta (:func:`scaling.analysis.laws.data_optimal_params`).
    Only the terms the fit has; a term no run is past leaves the loss independent of its R*."""
    out: dict[str, np.ndarray] = {}
    if "R_D_star" in fit.params:
        out["R_D_star"] = data.D / np.minimum(data.column("U"), data.D) - 1.0
    if "R_N_star" in fit.params:
        out["R_N_star"] = np.maximum(size_ratio(data, fit.params) - 1.0, 0.0)
    return out


def uninformed_share(repeats: np.ndarray, units: np.ndarray | None = None) -> tuple[float, int, int]:
    """(share, m, k): of the bootstrap's resamples (k units drawn with replacement, k times),
    the share that holds no run past a term's cap, (1 - m/k)^k, where m of the k units
    (``units``, a code per run; default one per run) have a run past it (``repeats`` > 0). In
    such a resample any value of the term's R* fits alike, so its value there is no estimate."""
    codes = np.arange(len(repeats)) if units is None else np.asarray(units)
    k = len(np.unique(codes))
    m = len(np.unique(codes[np.asarray(repeats) > 0]))
    return (1 - m / k) ** k, m, k


def saturation_status(name: str, fit: FitResult, boot: BootstrapResult | None,
                      repeats: np.ndarray, units: np.ndarray | None = None) -> tuple[str, list[float] | None]:
    """Whether the runs pin down R*_D or R*_N (``name``), and its interval.

    ``not identified`` when no run is past the term's cap (``repeats``, from :func:`past_cap`,
    all 0: the loss does not depend on it), when more than 1 - level of the bootstrap's
    resamples hold no run past it (:func:`uninformed_share`, with the resampling ``units``: with
    one or two of many units past the cap, about e^-1 or e^-2 of them), or when the bootstrap
    interval reaches both of the optimiser's bounds; the interval is then the bounds. ``beyond the runs`` when the estimate
    exceeds every run's repeats: the term hardly bends within the runs, which show only that
    the repeats cost little up to there; the objective is nearly flat in R* there, and the
    bootstrap's resamples, which start at the fit, stay near it: its interval is no reliable
    limit.
    Otherwise ``bounded below`` (above) when the interval reaches only the upper (lower) bound:
    a lower (upper) limit and no value; ``pinned down`` when it lies inside the bounds.
    ``fixed`` for a fixed parameter, and ``no interval`` without a bootstrap.
    """
    lo_b, hi_b = get_law(fit.law).bounds[name]
    if name in fit.constraints.fix:
        return FIXED, None
    if not (np.max(repeats) > 0):
        return UNIDENTIFIED, [lo_b, hi_b]
    if boot is not None and uninformed_share(repeats, units)[0] > 1 - boot.level:
        return UNIDENTIFIED, [lo_b, hi_b]
    has = boot is not None and name in boot.interval
    interval = [float(v) for v in boot.interval[name]] if has else None
    lo, hi = interval or (fit.params[name], fit.params[name])
    low, high = lo <= lo_b * (1 + AT_BOUND_REL), hi >= hi_b / (1 + AT_BOUND_REL)
    if low and high:
        return UNIDENTIFIED, [lo_b, hi_b]
    if fit.params[name] > np.max(repeats):
        return BEYOND, interval
    if high:
        return BELOW, interval
    if low:
        return ABOVE, interval
    return (PINNED if interval else NO_INTERVAL), interval


def judge_saturation(data: Data, fit: FitResult, boot: BootstrapResult) -> BootstrapResult:
    """``boot`` with what :func:`saturation_status` finds about each R* of the fit written into
    it. An R* that is ``not identified`` gets the optimiser's bounds as its interval, and the
    quantities derived from it their values there, with NaN stderr (null in fit.json) and a
    ``not_identified`` diagnostic: the bootstrap would leave it where the fit left it, the start
    it began from, and its interval would be that one number, a made-up estimate. One ``beyond
    the runs`` keeps its interval, with a ``beyond_data`` diagnostic saying it is no reliable
    limit."""
    law = get_law(fit.law)
    interval, stderr, diags = dict(boot.interval), dict(boot.stderr), list(boot.diagnostics)
    units = data.unit_codes()
    for name, repeats in past_cap(data, fit).items():
        status, _ = saturation_status(name, fit, boot, repeats, units)
        label, past, _, _ = SATURATION[name]
        value = fit.params[name]
        if status == BEYOND and name in interval:
            diags.append(Diagnostic(
                "beyond_data",
                f"{name}: the estimate {value:.4g} lies beyond the runs' largest repeats "
                f"({np.max(repeats):.3g}), where the loss hardly depends on {label}; its interval "
                f"[{interval[name][0]:.4g}, {interval[name][1]:.4g}] is not a reliable limit: the "
                f"resamples start at the fit on a nearly flat objective"))
        if status != UNIDENTIFIED or name not in interval:
            continue
        ends = [law.derived({**fit.params, name: np.float64(b)}) | {name: b}
                for b in law.bounds[name]]
        for k in ends[0]:
            if k in interval and ends[0][k] != ends[1][k]:
                interval[k] = tuple(sorted((float(ends[0][k]), float(ends[1][k]))))
                stderr[k] = float("nan")
        share, m, k = uninformed_share(repeats, units)
        if not np.max(repeats) > 0:
            why = f"no run {past}, so the loss does not depend on {label}"
        elif share > 1 - boot.level:
            why = (f"only {m} of {k} resampling units hold a run that {past}, so {100 * share:.0f}% of the bootstrap's "
                   f"resamples hold none and fit any value")
        else:
            why = "its bootstrap interval reaches both of the optimiser's bounds"
        diags.append(Diagnostic(
            "not_identified",
            f"{name}: {why}; its value {value:.4g} is not an estimate, and its interval is the "
            f"optimiser's bounds [{law.bounds[name][0]:.3g}, {law.bounds[name][1]:.3g}]"))
    return replace(boot, interval=MappingProxyType(interval), stderr=MappingProxyType(stderr),
                   diagnostics=tuple(diags))


def repetition_to_json(data: Data, fit: FitResult, boot: BootstrapResult | None = None) -> dict:
    """What a data-constrained fit says about repetition, as fit.json's keys.

    ``epoch_value``: for a run at k epochs, what epoch k + 1 is worth as a fraction of the same
    tokens of new unique data (:func:`scaling.analysis.laws.epoch_value`), with a bootstrap
    interval where there is one; R*_D with its interval and :func:`saturation_status`
    (``R_D_star_status``); and whether R*_D lies within the repetitions the runs made (beyond
    them it is extrapolated). ``excess_params``: the largest N / N_opt(U_D) (:func:`size_ratio`)
    and the runs past 1, whose excess parameters the law with R*_N discounts; for that law also
    R*_N as R*_D.
    """
    p, law = fit.params, get_law(fit.law)
    reps = past_cap(data, fit)
    ks = np.array(EPOCHS_SHOWN, dtype=float)
    status, interval = saturation_status("R_D_star", fit, boot, reps["R_D_star"], data.unit_codes())
    ev = {"epochs": list(EPOCHS_SHOWN),
          "next_epoch_value": epoch_value(ks, p["R_D_star"]).tolist(),
          "R_D_star": p["R_D_star"], "R_D_star_interval": interval, "R_D_star_status": status,
          "half_value_epochs": fit.derived["half_value_epochs"],
          "max_effective_epochs": fit.derived["max_effective_epochs"]}
    if status == UNIDENTIFIED:  # any R*_D fits: the value of an epoch ranges over all of them
        ends = epoch_value(ks[None, :], np.array(law.bounds["R_D_star"])[:, None])
        ev["next_epoch_value_interval"] = [ends.min(axis=0).tolist(), ends.max(axis=0).tolist()]
    elif boot is not None and "R_D_star" in boot.samples:
        draws = epoch_value(ks[None, :], np.asarray(boot.samples["R_D_star"])[:, None])
        lo, hi = 100 * (1 - boot.level) / 2, 100 * (1 + boot.level) / 2
        ev["next_epoch_value_interval"] = [np.nanpercentile(draws, lo, axis=0).tolist(),
                                           np.nanpercentile(draws, hi, axis=0).tolist()]
    ev["data_max_epochs"] = float(reps["R_D_star"].max() + 1.0)
    # The law bends away from 'repeats are as good as new data' only after about R*_D
    # repetitions; runs that all stop well short of that constrain R*_D weakly.
    ev["R_D_star_within_data"] = bool(reps["R_D_star"].max() >= p["R_D_star"])
    ratio = size_ratio(data, p)
    xp = {"data_max_size_ratio": float(ratio.max()), "runs_past_N_opt": int(np.sum(ratio > 1))}
    if "R_N_star" in p:
        status, interval = saturation_status("R_N_star", fit, boot, reps["R_N_star"], data.unit_codes())
        xp |= {"R_N_star": p["R_N_star"], "R_N_star_interval": interval, "R_N_star_status": status,
               "half_value_size_ratio": fit.derived["half_value_size_ratio"],
               "max_effective_size_ratio": fit.derived["max_effective_size_ratio"],
               "R_N_star_within_data": bool(ratio.max() - 1 >= p["R_N_star"])}
    return {"epoch_value": ev, "excess_params": xp}


def saturation_sentence(name: str, value: float, interval: list[float] | None, status: str,
                        law: str) -> str:
    """R*_D or R*_N (``name``) and what the runs say about it, in a sentence."""
    label, past, need, what = SATURATION[name]
    lo_b, hi_b = get_law(law).bounds[name]
    head = f"{label} = {value:.3g}"
    if interval:
        head += f" [{interval[0]:.3g}, {interval[1]:.3g}]"
    reaches = "the interval reaches" if interval else "the estimate sits at"
    if status == PINNED:
        return (f"{head}: pinned down (the interval lies inside the optimiser's bounds, "
                f"{lo_b:.3g} to {hi_b:.3g}).")
    if status == BELOW:
        limit = f" ({label} >= {interval[0]:.3g})" if interval else ""
        return (f"{head} is only bounded below{limit}: {reaches} the optimiser's upper bound "
                f"({hi_b:.3g}), so the runs set no upper limit; pinning it down needs {need}.")
    if status == ABOVE:
        limit = f" ({label} <= {interval[1]:.3g})" if interval else ""
        return (f"{head} is only bounded above{limit}: {reaches} the optimiser's lower bound "
                f"({lo_b:.3g}).")
    if status == BEYOND:
        no_limit = (" Its bootstrap interval is not a reliable limit there: the objective is "
                    f"nearly flat in {label} and the resamples start at the fit."
                    if interval else "")
        return (f"{head} is not pinned down, only bounded below: it lies beyond every run's "
                f"R{label[2:]}, where the term hardly bends, so the runs show only that {what} "
                f"keep most of their value as far as they go.{no_limit} Pinning it down needs "
                f"{need}.")
    if status == UNIDENTIFIED:
        return (f"{label} is not identified: any value from {lo_b:.3g} to {hi_b:.3g} fits the "
                f"runs (no run {past}, or the bootstrap interval reaches both bounds); the "
                f"fitted {value:.3g} is not an estimate. Pinning it down needs {need}.")
    if status == FIXED:
        return f"{label} is fixed at {value:.3g}."
    return f"{head} (no interval: bootstrap to see whether the runs pin it down)."


def format_repetition(doc: dict, law: str) -> str:
    """fit.json's ``epoch_value`` (and ``excess_params``) for the console."""
    ev = doc["epoch_value"]
    lines = [saturation_sentence("R_D_star", ev["R_D_star"], ev["R_D_star_interval"],
                                 ev["R_D_star_status"], law),
             f"A repeated token is worth half a new one after {ev['half_value_epochs']:.3g} "
             f"epochs; no number of epochs over U unique tokens is worth more than "
             f"{ev['max_effective_epochs']:.3g} U of new data.",
             "value of one more epoch, as a fraction of the same tokens of new unique data:"]
    band = ev.get("next_epoch_value_interval")
    for i, (k, v) in enumerate(zip(ev["epochs"], ev["next_epoch_value"])):
        extra = f"  [{band[0][i]:.3f}, {band[1][i]:.3f}]" if band else ""
        lines.append(f"  epoch {k} -> {k + 1}: {v:.3f}{extra}")
    lines += excess_sentences(doc.get("excess_params"), law)
    return "\n".join(lines)


def excess_sentences(xp: dict | None, law: str) -> list[str]:
    """fit.json's ``excess_params`` in sentences: the runs past N_opt(U_D) and, for the law with
    R*_N, what it says about them."""
    if not xp:  # written before the excess parameters were reported
        return []
    past = (f"{xp['runs_past_N_opt']} run(s) have more parameters than N_opt(U_D), the "
            f"compute-optimal size for their unique tokens under this fit, up to "
            f"{xp['data_max_size_ratio']:.3g} times it" if xp["runs_past_N_opt"] else
            f"No run has more parameters than N_opt(U_D), the compute-optimal size for its unique "
            f"tokens under this fit (the largest is {xp['data_max_size_ratio']:.3g} times it)")
    if "R_N_star" not in xp:
        return [past + ("; Muennighoff et al.'s R*_N term (law data_constrained_nd) discounts "
                        "such parameters, this law counts them in full." if xp["runs_past_N_opt"]
                        else ".")]
    lines = [past + ".", saturation_sentence("R_N_star", xp["R_N_star"], xp["R_N_star_interval"],
                                             xp["R_N_star_status"], law)]
    if xp["R_N_star_status"] == PINNED:
        lines.append(f"An excess parameter is worth half of one within N_opt(U_D) at "
                     f"{xp['half_value_size_ratio']:.3g} times N_opt(U_D), and no size is worth "
                     f"more than {xp['max_effective_size_ratio']:.3g} N_opt(U_D).")
    return lines
