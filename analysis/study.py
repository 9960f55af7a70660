"""The end of a study: fit its runs and write `report.md`, `fit.json` and the figures.

    analysis = analyse_study(study_dir)          # pure: fits, no files written
    paths = write_study_outputs(study_dir, analysis)

Three views of the same runs, as in Hoffmann et al. (2022):
- IsoFLOP profiles (approach 2): per compute budget, a parabola of loss in ln N; its minima give
  N_opt ~ C^a and D_opt ~ C^b.
- The parametric law (approach 3): L(N, D) = E + A/N^alpha + B/D^beta, with bootstrap intervals,
  and the compute-optimal allocation it implies for budgets beyond the study's own.
- The envelope of the training curves (approach 1), when the runs logged them, and the exponents
  a, b of approaches 1-3 side by side (:func:`scaling.analysis.predict.compare_approaches`).
- An extrapolation check: every run of the largest budget is held out, the law is refitted on the
  rest, and its predictions are compared with the measured losses (with fewer than 3 budgets, the
  largest run by compute instead).

The allocation beyond the study is solved on the study's own FLOP scale, f(N) = C / D read from
the runs (:mod:`scaling.analysis.flops`), so its budgets count what the runs' C counts.

When the data's manifest records its lowest reachable loss (the built-in ``markov`` and ``shapes``
sets do), the fitted E is compared with it after the fit (``known_floor``); the fit never reads it.

When the runs repeat their data (a run of more than one epoch, by result.json's tokens and
unique_tokens) or the study caps it (`data.max_unique_tokens`), Muennighoff et al.'s (2023)
data-constrained law is fitted beside Chinchilla's (:func:`repeats_data`): Chinchilla's in the
effective data D' = U_D + U_D R*_D (1 - exp(-R_D / R*_D)). The report gives R*_D with its interval
and whether the runs pin it down or only bound it
(:func:`scaling.analysis.report.saturation_status`), and what one more epoch is worth against as
many tokens of new unique data. Beside, not instead: the allocation, the extrapolation check and
the approaches keep Chinchilla's closed-form allocation, which the data-constrained law lacks (its
optimum depends on U too).

The study's spec may constrain the parametric law (``report.fix``, ``report.tie``,
``report.bound``, e.g. E fixed at a known floor). Then the constrained law is the one reported
and extrapolated, and, when there are runs enough, the unconstrained law is fitted too and the
constraints are tested against the data (:mod:`scaling.analysis.nested`).

`fit.json` is the parametric fit in the `scaling-fit` schema (law, params, stderr, interval,
n_points, objective, diagnostics, derived), with the IsoFLOP analysis under `isoflop`, the
extrapolation check under `holdout`, the study's FLOP scale under `flops_per_token`, approaches
1-3 under `approaches`, the data's known floor under `known_floor`, and the data-constrained fit
under `data_constrained` (in the same schema, with `epoch_value` and `excess_params`).

Reads `plan.json` (written by the planner) through scaling.contracts for the budgets and the plan
table; imports nothing from the training or launch code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from scaling.analysis.data import Data
from scaling.analysis.errors import AnalysisError
from scaling.analysis.isoflop import DEFAULT_WINDOW
from scaling.contracts import ContractError, Plan, plan_from_json, read_plan

FIGURE_NAMES = ("loss_vs_compute", "isoflop", "optimal_allocation", "residuals", "predicted_vs_actual", "tune")
BEYOND = (10.0, 100.0, 1000.0)  # budgets beyond the study's largest, for the allocation table


@dataclass
class StudyAnalysis:
    study: str
    study_dir: str
    plan: Plan | None
    data: Data
    skipped: list
    iso: Any = None  # IsoFLOPResult
    fit: Any = None  # FitResult
    boot: Any = None  # BootstrapResult
    holdout: Any = None  # HoldoutResult
    optimal: dict | None = None  # compute_optimal for budgets beyond the study, on the study's FLOP scale
    flops: Any = None  # FlopsPerToken: the study's f(N)
    envelope: Any = None  # EnvelopeResult, when the runs logged training curves
    approaches: dict | None = None  # compare_approaches
    known_floor: dict | None = None  # the data's recorded floor against the fitted E
    comparison: Any = None  # NestedComparison, or a str saying why there is none
    tune: dict | None = None  # the tune phase's sweep and chosen LR (STUDY/tune/tune.json)
    verification: dict | None = None  # the pre-registered prediction against the run (analysis.verify)
    # The data-constrained law (Muennighoff et al. 2023), fitted beside Chinchilla's when the runs repeat
    # their data or the study caps it (repeats_data), its bootstrap, and repetition_to_json of it.
    dc_fit: Any = None  # FitResult
    dc_boot: Any = None  # BootstrapResult
    repetition: dict | None = None
    problems: list[str] = field(default_factory=list)  # analyses that could not run, and why


def _only_planned(data: Data, plan: Plan | None) -> tuple[Data, list]:
    """Runs of the current plan only: a spec edited since an earlier launch leaves run folders
    behind that belong to another study."""
    from scaling.analysis.io import SkippedRun

    if not plan:
        return data, []
    planned = {r.id for r in plan.runs}
    keep = [i for i, rid in enumerate(data.run_id) if rid in planned]
    stale = [SkippedRun(rid, rid, "not in plan", "left by an earlier version of the study spec")
             for rid in data.run_id if rid not in planned]
    if not stale:
        return data, []
    if not keep:
        raise AnalysisError("none of the completed runs belongs to the current plan.json; relaunch the study")
    return data.subset(keep), stale


def _with_plan_budgets(data: Data, plan: Plan | None) -> Data:
    """Group runs by the IsoFLOP budget the planner gave them, not by a tolerance on C."""
    if not plan:
        return data
    budgets = {r.id: r.budget_flops for r in plan.runs}
    b = np.array([budgets.get(rid) or np.nan for rid in data.run_id], dtype=float)
    return replace(data, budget=b)


def _without_trunks(data: Data, plan: Plan | None) -> tuple[Data, list]:
    """Drop the WSD trunks of a study with cooldown branches (plan.json role "trunk"): a trunk's
    end point is at constant LR, well above the cooled-down losses of its branches, so it is no
    point of any law. Its branches carry its unit (the bootstrap resamples a trunk with all of
    its branches)."""
    if not plan:
        return data, []
    trunks = {r.id for r in plan.runs if r.extra.get("role") == "trunk"}
    keep = [i for i, rid in enumerate(data.run_id) if rid not in trunks]
    if len(keep) == len(data.run_id) or not keep:
        return data, []
    return data.subset(keep), sorted(trunks)


def branch_curves(data: Data, plan: Plan | None) -> list | None:
    """The approach-1 curves of a study with cooldown branches: one per trunk, through the end
    points (C, D, final loss) of its branches, each a fully decayed run. None when the plan has no
    branches (then the runs' own training curves are used). A trunk's constant-LR curve, and a
    branch's partly decayed rows, never enter the envelope."""
    from scaling.analysis.io import Curve

    if not plan or not any(r.extra.get("role") == "branch" for r in plan.runs):
        return None
    parent = {r.id: r.extra["parent"] for r in plan.runs if r.extra.get("role") == "branch"}
    points: dict[str, list] = {}
    for i, rid in enumerate(data.run_id):
        if rid in parent:
            points.setdefault(parent[rid], []).append((float(data.C[i]), float(data.D[i]), float(data.loss[i]),
                                                       float(data.N[i])))
    curves = []
    for trunk, pts in sorted(points.items()):
        arr = np.array(sorted(pts))
        curves.append(Curve(trunk, float(arr[0, 3]), arr[:, 0], arr[:, 1], arr[:, 2]))
    return curves


def branch_compute(plan: Plan | None, data: Data) -> str | None:
    """How many points came from how much compute, in a study with cooldown branches."""
    if not plan or not any(r.extra.get("role") == "branch" for r in plan.runs):
        return None
    done = set(data.run_id)
    trunks = [r for r in plan.runs if r.extra.get("role") == "trunk"]
    branches = [r for r in plan.runs if r.extra.get("role") == "branch" and r.id in done]
    spent = sum(r.C or 0.0 for r in trunks) + sum(r.extra.get("branch_C", r.C or 0.0) for r in branches)
    scratch = sum(r.C or 0.0 for r in branches)
    return (f"{len(branches)} points from {len(trunks)} WSD trunks and their cooldown branches: "
            f"{spent:.3g} FLOPs spent, against {scratch:.3g} FLOPs to train each point from scratch "
            f"({scratch / spent if spent else float('nan'):.2f}x).")


def repeats_data(data: Data, plan: Plan | None) -> bool:
    """Whether the study is about repeated data: a run trained on more tokens than it had unique ones
    (epochs > 1; result.json's tokens against its unique_tokens), or the plan caps the unique data
    (`data.max_unique_tokens` among its runs' overrides)."""
    capped = bool(plan) and any(o.startswith("data.max_unique_tokens=") for r in plan.runs for o in r.overrides)
    U = data.unique_tokens
    return capped or (U is not None and bool(np.any(data.D > U)))  # NaN (unknown U) compares False


def _fit_repetition(a: StudyAnalysis, n_boot: int, seed: int, constraints: Any = None) -> None:
    """Fit the data-constrained law beside Chinchilla's (with the same constraints) and fill a.dc_fit,
    a.dc_boot and a.repetition; a fit that cannot run is recorded in a.problems."""
    from scaling.analysis.fit import bootstrap, fit_law
    from scaling.analysis.report import judge_saturation, repetition_to_json

    try:
        a.dc_fit = fit_law(a.data, law="data_constrained", constraints=constraints)
        if n_boot:
            a.dc_boot = judge_saturation(a.data, a.dc_fit, bootstrap(a.data, a.dc_fit, n_resamples=n_boot, seed=seed))
        a.repetition = repetition_to_json(a.data, a.dc_fit, a.dc_boot)
    except AnalysisError as e:
        a.problems.append(f"data-constrained fit: {e}")


def analyse_study(
    study_dir: str | Path, *, n_boot: int = 1000, holdout: int = 1, tolerance: float = 0.25, seed: int = 0,
    isoflop_window: float | None = DEFAULT_WINDOW,
    fix: dict | None = None, tie: dict | None = None, bounds: dict | None = None,
) -> StudyAnalysis:
    """Fit everything the study's completed runs support. An analysis that cannot run (too few
    runs, a single budget) is recorded in `problems` instead of stopping the others.

    holdout: budgets held out by the extrapolation check (every run of the largest ones); with
    too few budgets for that, the largest runs by C instead (0: no check).

    fix / tie / bounds constrain the parametric law as in `fit_law` (bounds may be [low, high]
    lists, as a YAML spec gives them); bad constraints raise before anything is fitted."""
    from scaling.analysis.constraints import Constraints, resolve
    from scaling.analysis.extrapolate import holdout_check
    from scaling.analysis.errors import DataError
    from scaling.analysis.fit import bootstrap, compute_optimal, fit_law, get_form
    from scaling.analysis.flops import FlopsPerToken
    from scaling.analysis.io import data_floor_source, find_run_dirs, load_curves, load_runs, plan_units
    from scaling.analysis.isoflop import isoflop_profiles, training_envelope
    from scaling.analysis.nested import compare_or_why
    from scaling.analysis.predict import compare_approaches

    constraints = Constraints.of(fix, tie, {k: tuple(v) for k, v in (bounds or {}).items()})
    resolve(get_form("chinchilla"), constraints, "report.")
    study_dir = Path(study_dir)
    try:
        plan = read_plan(study_dir)
    except ContractError as e:
        raise AnalysisError(f"{e}; relaunch the study to rewrite it") from None
    n_key = "params_nonembedding" if plan and plan.n_count == "nonembedding" else "params"
    data, skipped = load_runs(study_dir, n_key=n_key, units=plan_units(plan))
    data, stale = _only_planned(data, plan)
    data, _trunks = _without_trunks(data, plan)
    data = _with_plan_budgets(data, plan)
    out = StudyAnalysis(study=(plan.study if plan else None) or study_dir.name, study_dir=str(study_dir), plan=plan,
                        data=data, skipped=skipped + stale)
    run_dirs = [d for d in find_run_dirs(study_dir) if d.name in set(data.run_id)]
    out.flops = flops = FlopsPerToken.from_data(data)
    try:
        out.iso = isoflop_profiles(data, tolerance=tolerance, n_boot=n_boot, seed=seed,
                                   window=isoflop_window)
    except AnalysisError as e:
        out.problems.append(f"IsoFLOP profiles: {e}")
    try:
        out.fit = fit_law(data, law="chinchilla", constraints=constraints)
        if constraints.equalities:
            out.comparison = compare_or_why(data, out.fit)
        if n_boot:
            out.boot = bootstrap(data, out.fit, n_resamples=n_boot, seed=seed)
        C = float(data.C.max()) * np.array(BEYOND)
        out.optimal = compute_optimal(out.fit, C, boot=out.boot, flops=flops)
    except AnalysisError as e:
        out.problems.append(f"Chinchilla fit: {e}")
    if repeats_data(data, plan):
        _fit_repetition(out, n_boot, seed, constraints)
    if holdout:
        try:
            try:
                out.holdout = holdout_check(data, k=holdout, by="budget", law="chinchilla", tolerance=tolerance,
                                            constraints=constraints)
            except DataError:  # fewer budgets than a whole-budget holdout needs
                out.holdout = holdout_check(data, k=holdout, by="C", law="chinchilla", constraints=constraints)
        except AnalysisError as e:
            out.problems.append(f"extrapolation check: {e}")
    curves = branch_curves(data, plan)
    if curves is None:
        curves = load_curves(study_dir, n_key=n_key, run_dirs=run_dirs)
    if len(curves) >= 2:
        try:
            out.envelope = training_envelope(curves, n_boot=n_boot, seed=seed)
        except AnalysisError as e:
            out.problems.append(f"envelope (approach 1): {e}")
    if out.fit is not None or out.iso is not None:
        try:
            out.approaches = compare_approaches(out.fit, out.boot, out.iso, out.envelope, data=data, flops=flops)
        except AnalysisError as e:
            out.problems.append(f"approaches side by side: {e}")
    manifest = data_floor_source(run_dirs)
    if manifest is not None and out.fit is not None:
        from scaling.data.markov import recorded_context_floors

        out.known_floor = known_floor(float(manifest["source"]["loss_floor_nats"]), out.fit, out.boot,
                                      context_floors=recorded_context_floors(manifest))
    from scaling.analysis.tune import read_tune
    from scaling.analysis.verify import verification

    out.tune = read_tune(study_dir)
    out.verification = verification(study_dir)
    return out


def known_floor(floor: float, fit: Any, boot: Any = None, context_floors: list | None = None) -> dict:
    """The fitted E against the data's known floor [nats]: {value, fitted_E, interval, inside,
    relative_error}, relative_error = (fitted_E - floor) / floor; ``inside`` says whether the
    floor lies in E's bootstrap interval (None without one, or when E was fixed).

    With the floors of shorter contexts (``context_floors``: [F_1, ..., F_k], F_m the loss of
    the best predictor that reads m tokens back, F_k = floor; the ``markov`` set records them),
    also ``context_floors`` and ``nearest_context``: the m whose F_m lies nearest the fitted E,
    with E's relative error to it. An E nearest F_m for m < k says what the runs learned: the
    data's m-token statistics, and too little of the longer contexts to show where the floor is."""
    E = float(fit.params["E"])
    iv = boot.interval.get("E") if boot is not None else None
    interval = [float(iv[0]), float(iv[1])] if iv is not None else None
    inside = None if interval is None else bool(interval[0] <= floor <= interval[1])
    out = {"value": float(floor), "fitted_E": E, "interval": interval, "inside": inside,
           "relative_error": (E - floor) / floor}
    if context_floors:
        floors = [float(f) for f in context_floors]
        m = min(range(len(floors)), key=lambda j: abs(E - floors[j]))
        out["context_floors"] = floors
        out["nearest_context"] = {"tokens": m + 1, "of": len(floors), "value": floors[m],
                                  "relative_error": (E - floors[m]) / floors[m]}
    return out


def study_json(a: StudyAnalysis) -> dict:
    """The study's `fit.json`."""
    from scaling.analysis.report import fit_to_json, isoflop_to_json

    # fit.json is written in the study folder, so the input is "." relative to it: the file
    # stays right when the folder is moved or copied, and holds no machine's path.
    doc: dict = fit_to_json(a.fit, a.boot, a.holdout, source=".", skipped=a.skipped,
                            comparison=a.comparison, flops=a.flops, approaches=a.approaches) if a.fit else {
        "law": "chinchilla", "params": None, "diagnostics": [], "n_points": int(len(a.data.N)),
    }  # fmt: skip
    doc["study"] = a.study
    if a.iso is not None:
        doc["isoflop"] = isoflop_to_json(a.iso)
    if a.optimal is not None:
        doc["beyond_study"] = _jsonable(a.optimal)
    if a.approaches is not None and "approaches" not in doc:
        doc["approaches"] = a.approaches
    if a.known_floor is not None:
        doc["known_floor"] = a.known_floor
    if a.dc_fit is not None:
        doc["data_constrained"] = fit_to_json(a.dc_fit, a.dc_boot, source=".") | a.repetition
    if a.tune is not None:
        doc["tune"] = a.tune
    if a.verification is not None:
        doc["verification"] = {k: v for k, v in a.verification.items() if k != "prediction"}
    doc["problems"] = list(a.problems)
    return doc


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return obj


def study_figures(a: StudyAnalysis) -> dict[str, Any]:
    """Figures by name; each is a matplotlib Figure (no pyplot, no display needed)."""
    from scaling.analysis import plots

    figs = {}
    fig, (ax,) = plots.new_figure()
    plots.plot_loss_vs_compute(ax, a.data, a.fit)
    figs["loss_vs_compute"] = fig
    if a.iso is not None:
        fig, (ax,) = plots.new_figure()
        plots.plot_isoflop(ax, a.iso)
        figs["isoflop"] = fig
        fig, axes = plots.new_figure(ncols=2)
        plots.plot_optimal(axes, a.iso)
        figs["optimal_allocation"] = fig
    if a.fit is not None:
        fig, (ax,) = plots.new_figure()
        plots.plot_residuals(ax, a.data, a.fit)
        figs["residuals"] = fig
        fig, (ax,) = plots.new_figure()
        plots.plot_predicted_vs_actual(ax, a.data, a.fit, a.holdout)
        figs["predicted_vs_actual"] = fig
    if a.tune is not None:
        fig, (ax,) = plots.new_figure()
        plots.plot_tune(ax, a.tune)
        figs["tune"] = fig
    return figs


# ---- report.md ------------------------------------------------------------------------------------
def _g(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    x = float(x)
    if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-2):
        return f"{x:.{digits}g}"
    return f"{x:.{digits + 1}g}"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _interval(boot: Any, name: str) -> str:
    if boot is None or name not in getattr(boot, "interval", {}):
        return ""
    lo, hi = boot.interval[name]
    return f"[{_g(lo)}, {_g(hi)}]"


def render_report(a: StudyAnalysis, figures: list[str]) -> str:
    """report.md as text."""
    parts = [f"# Scaling study `{a.study}`", ""]
    results = _results(a)
    parts += [_summary(a), ""]
    if a.plan:
        parts += ["## Plan", "", _plan_table(a.plan), ""]
        if _epochs_sentence(a.plan):
            parts += [_epochs_sentence(a.plan), ""]
        rules = a.plan.rules or {}
        if rules:
            parts += ["Hyperparameter rules: " + "; ".join(f"{k} = {v}" for k, v in rules.items()), ""]
    if a.tune is not None:
        parts += ["## Tune phase: the LR sweep", "", _tune_section(a.tune), ""]
    parts += ["## Results", "", results, ""]
    if a.skipped:
        parts += ["Skipped runs:", ""] + [f"- `{s.run_id}` ({s.status}): {s.reason}" for s in a.skipped] + [""]
    if a.iso is not None:
        parts += ["## IsoFLOP profiles (approach 2)", "", _iso_section(a.iso), ""]
    if a.fit is not None:
        parts += ["## Parametric law (approach 3)", "", _fit_section(a), ""]
    if a.dc_fit is not None:
        parts += ["## Repeated data: the data-constrained law", "", _repetition_section(a), ""]
    if a.optimal is not None:
        parts += ["## Compute-optimal allocation beyond the study", "", _optimal_section(a), ""]
    if a.approaches is not None and any(k in a.approaches for k in ("envelope", "isoflop", "parametric")):
        parts += ["## Approaches side by side", "", _approaches_section(a.approaches), ""]
    if a.holdout is not None:
        parts += ["## Extrapolation check", "", _holdout_section(a.holdout), ""]
    if a.verification is not None:
        parts += ["## Prediction: the pre-registered verification run", "", _prediction_section(a.verification), ""]
    if a.known_floor is not None:
        parts += ["## The data's known floor", "", floor_sentence(a.known_floor)
                  + " The fit never reads the floor; it comes from the data's manifest.", ""]
    cost = _cost_section(a)
    if cost:
        parts += ["## Cost: planned against actual", "", cost, ""]
    parts += ["## Diagnostics", "", _diagnostics(a), ""]
    if figures:
        parts += ["## Figures", ""] + [f"![{name}](figures/{name}.png)" for name in figures] + [""]
    return "\n".join(parts)


def _tune_section(t: dict) -> str:
    rows = []
    for j, (lr, losses, mean) in enumerate(zip(t["lrs"], t["losses"], t["mean"])):
        mark = " (best of the grid)" if j == t["best_index"] else (" (fitted)" if j in t["window"] else "")
        rows.append([_g(lr), ", ".join(_g(v) for v in losses), (_g(mean) if mean is not None else "diverged") + mark])
    return "\n\n".join([
        f"Every run of the study trains at LR {_g(t['best_lr'])} under muP, relative to the base shape "
        f"`{t['base_shape']}`, which muP scales per layer for each run's width and depth. The sweep trained the "
        f"base shape at each LR below; the LR is {t['note']}, by the rule: {t['rule']}.",
        _table(["LR", "final loss per seed", "mean"], rows),
    ])


def verification_sentences(v: dict) -> list[str]:
    """The verification run in a sentence or two: predicted against actual, or why not yet."""
    if not v.get("trusted"):
        return [f"verification: {v.get('why')}"]
    doc = v["prediction"]
    run = doc["run"]
    head = (f"verification run {run['id']} (N={run['N']:.3g}, D={run['D']:.3g}, C={run['C']:.3g} = "
            f"{doc['compute_multiple']:g}x the largest budget), predicted {doc['written']} before it trained")
    if v.get("actual") is None:
        return [head + (f": it failed ({v['failed'].strip().splitlines()[-1]})" if v.get("failed") else
                        ": not trained yet")]  # fmt: skip
    lines = [head + f": actual loss {v['actual']:.4f}"]
    names = {"parametric": "approach 3 (parametric law)", "isoflop": "approach 2 (IsoFLOP L_min(C))"}
    for name, r in v["approaches"].items():
        lo, hi = r["interval"]
        lines.append(f"{names.get(name, name)} predicted {r['predicted']:.4f} [{lo:.4f}, {hi:.4f}]: "
                     f"error {100 * r['relative_error']:+.2f}%, actual {'inside' if r['inside'] else 'OUTSIDE'} "
                     f"the 95% prediction interval")  # fmt: skip
    return lines


def _prediction_section(v: dict) -> str:
    if not v.get("trusted"):
        return f"**Not trusted:** {v.get('why')}. The run is not judged against it."
    doc = v["prediction"]
    text = [" ".join(verification_sentences(v)[:1]) + "."]
    if v.get("actual") is not None:
        rows = [[name, _g(r["predicted"]), f"[{_g(r['interval'][0])}, {_g(r['interval'][1])}]", _g(v["actual"]),
                 f"{100 * r['relative_error']:+.2f}%", "yes" if r["inside"] else "**no**"]
                for name, r in v["approaches"].items()]  # fmt: skip
        text.append(_table(["approach", "predicted", "95% prediction interval", "actual", "error", "inside"], rows))
    n_opt = [f"{name} {_g(v['value'])} [{_g(v['interval'][0])}, {_g(v['interval'][1])}]"
             for name, v in (("approach 3", doc.get("N_opt")), ("approach 2", doc.get("N_opt_isoflop")))
             if v and v.get("interval")]  # fmt: skip
    if n_opt:
        text.append(f"N_opt at C = {_g(doc['C_verify'])} FLOPs, with 95% intervals: {'; '.join(n_opt)}. The run's "
                    f"size is approach 3's, snapped to the ladder.")
    text.append(f"The prediction (`verify/prediction.json`) was made from {doc['data']['runs']} runs and is kept "
                f"unchanged while they are; new runs make a new one and keep the old in `verify/history/`.")
    return "\n\n".join(text)


def _cost_section(a: StudyAnalysis) -> str:
    """The plan's estimate of the study's time against the runs' measured time, over the runs
    that completed (process-seconds: wall time x processes)."""
    if a.plan is None:
        return ""
    from scaling.contracts import RunStatus, result_if_readable

    done = [(r, result_if_readable(r.dir)) for r in a.plan.runs]
    done = [(r, res) for r, res in done if res is not None and res.status is RunStatus.COMPLETED and res.wall_time_s]
    if not done or not all(r.est_time_s for r, _ in done):
        return ""
    planned = sum(r.est_time_s * (r.nproc or 1) for r, _ in done)
    actual = sum(res.wall_time_s * (res.world_size or 1) for _, res in done)
    flops = sum(r.C for r, _ in done)
    return (f"{len(done)} completed runs, {flops:.3g} training FLOPs. The plan estimated {planned / 3600:.3g} "
            f"process-hours ({planned:.0f} s, at {a.plan.throughput_flops:.3g} FLOP/s per process: "
            f"{a.plan.throughput_source}); the runs took {actual / 3600:.3g} ({actual:.0f} s), "
            f"{actual / planned:.2f}x the estimate.")


def _pair(pair: tuple[float, float]) -> str:
    """" [lo, hi]" for an interval, or nothing when the bootstrap gave none."""
    return f" [{pair[0]:.3f}, {pair[1]:.3f}]" if all(math.isfinite(v) for v in pair) else ""


def headline(a: StudyAnalysis) -> list[str]:
    """The study's findings in a few sentences: the report's summary and the command's output."""
    lines = []
    if a.iso is not None:
        lines.append(f"IsoFLOP (approach 2): N_opt ~ C^{a.iso.a:.3f}{_pair(a.iso.a_interval)}, "
                     f"D_opt ~ C^{a.iso.b:.3f}{_pair(a.iso.b_interval)} ({a.iso.n_used} budgets used).")
    if a.fit is not None:
        p = a.fit.params
        constrained = f" ({a.fit.constraints.describe()})" if a.fit.constraints else ""
        lines.append(f"Fitted L(N, D) = {p['E']:.3f} + {_g(p['A'])}/N^{p['alpha']:.3f} + {_g(p['B'])}/D^{p['beta']:.3f}"
                     f"{constrained}; a = {a.fit.derived['a']:.3f}, b = {a.fit.derived['b']:.3f}.")
    if a.comparison is not None and not isinstance(a.comparison, str):
        lines.append(a.comparison.sentence())
    if a.approaches:
        names = {"isoflop": "approach 2", "parametric": "approach 3", "envelope": "approach 1"}
        parts = [f"{names[k]} {a.approaches[k]['a']:.3f}{_pair(tuple(a.approaches[k]['a_interval']))}"
                 for k in ("isoflop", "parametric", "envelope") if isinstance(a.approaches.get(k), dict)
                 and "a" in a.approaches[k]]  # fmt: skip
        if parts:
            lines.append("a of N_opt ~ C^a on the study's FLOP scale: " + "; ".join(parts) + ".")
    if a.holdout is not None:
        h = a.holdout
        if h.by == "budget":
            which = "largest budget" if h.k == 1 else f"{h.k} largest budgets"
            lines.append(f"Every run of the {which} ({h.n_held} runs, law refitted on the other "
                         f"{h.budgets_fitted} budgets) is predicted within {100 * h.max_abs_rel_error:.2f}%.")
        else:
            lines.append(f"The held-out largest run{'s are' if h.n_held > 1 else ' is'} (by {h.by}) predicted "
                         f"within {100 * h.max_abs_rel_error:.2f}%.")
    if a.repetition is not None:
        lines.append(repetition_headline(a.repetition))
    if a.known_floor is not None:
        lines.append(floor_sentence(a.known_floor))
    if a.verification is not None:
        lines += verification_sentences(a.verification)
    return lines


def repetition_headline(rep: dict) -> str:
    """R*_D, whether the runs pin it down, and what an epoch is worth, in a sentence."""
    ev = rep["epoch_value"]
    iv = ev["R_D_star_interval"]
    value = dict(zip(ev["epochs"], ev["next_epoch_value"]))
    head = (f"Data-constrained law (runs up to {_epochs(ev['data_max_epochs'])} epochs): R*_D = {_g(ev['R_D_star'])}"
            + (f" [{_g(iv[0])}, {_g(iv[1])}]" if iv else "") + f", {ev['R_D_star_status']}; ")
    from scaling.analysis.report import UNIDENTIFIED

    if ev["R_D_star_status"] == UNIDENTIFIED:  # its value is the optimiser's, and so is the epoch's
        return head + "these runs do not say what another epoch is worth."
    return head + f"epoch 1 -> 2 is worth {value[1]:.3f} of new unique data, epoch 16 -> 17 {value[16]:.3f}."


def floor_sentence(k: dict) -> str:
    iv = k["interval"]
    if iv is None:
        text = (f"fitted E = {k['fitted_E']:.4g} (no interval); the data's known floor is {k['value']:.4g} "
                f"(error {100 * k['relative_error']:+.2f}%).")
    else:
        where = "inside" if k["inside"] else "outside"
        text = (f"fitted E = {k['fitted_E']:.4g} [{iv[0]:.4g}, {iv[1]:.4g}]; the data's known floor is "
                f"{k['value']:.4g}: the truth lies {where} the interval (error {100 * k['relative_error']:+.2f}%).")
    near = k.get("nearest_context")
    if near is None or near["tokens"] == near["of"]:
        return text
    tokens = f"{near['tokens']} token{'s' if near['tokens'] > 1 else ''}"
    return text + (
        f" E lies nearest the floor of a predictor that reads only {tokens} back, {near['value']:.4g} (error "
        f"{100 * near['relative_error']:+.2f}%), of the {near['of']} the data's chain conditions on: the runs learned "
        f"its {near['tokens']}-token statistics and too little of the longer contexts to show where the floor is. A design that "
        f"recovers E needs runs that learn them: larger models or more tokens, or a simpler chain "
        f"(data.markov_order, data.markov_vocab).")


def _summary(a: StudyAnalysis) -> str:
    n = len(a.data.N)
    runs = (f"{n} completed runs; N from {_g(a.data.N.min())} to {_g(a.data.N.max())} parameters, "
            f"C from {_g(a.data.C.min())} to {_g(a.data.C.max())} FLOPs.")
    branches = branch_compute(a.plan, a.data)
    return " ".join([runs, *([branches] if branches else []), *headline(a)])


def _plan_table(plan: Plan | dict) -> str:
    """The plan's runs as a table (from a Plan, or plan.json's JSON)."""
    plan = plan if isinstance(plan, Plan) else plan_from_json(plan)
    rows = []
    for r in plan.runs:
        rows.append([f"`{r.id}`", _g(r.N), _g(r.D), _epochs(r.epochs), _g(r.C), _g(r.budget_flops), str(r.batch),
                     _g(r.lr), str(r.steps), str(r.nproc)])
    return _table(["run", "N", "D", "epochs", "C", "budget", "batch", "LR", "steps", "processes"], rows)


def _epochs(e: float | None) -> str:
    """0.41, 5.9, 225: two significant digits without an exponent."""
    if e is None:
        return "n/a"
    return f"{e:.2g}" if e < 100 else f"{e:.0f}"


def _epochs_sentence(plan: Plan | dict) -> str:
    """How often the runs pass over their training data; empty for a plan written before the
    planner counted epochs (a Plan, or plan.json's JSON)."""
    plan = plan if isinstance(plan, Plan) else plan_from_json(plan)
    epochs = [r.epochs for r in plan.runs if r.epochs is not None]
    if not epochs:
        return ""
    return (f"Epochs over the training split (D / unique training tokens or images): {_epochs(min(epochs))} to "
            f"{_epochs(max(epochs))}. Up to about 4, repeated data is nearly as good as unique data "
            f"(Muennighoff et al. 2023); beyond, the plan's notes (under Diagnostics) warn unless the study "
            f"says the repetition is intended.")


def _results(a: StudyAnalysis) -> str:
    d = a.data
    order = np.lexsort((d.N, d.C))
    rows = [[f"`{d.run_id[i]}`", _g(d.N[i]), _g(d.D[i]), _g(d.C[i]), f"{d.loss[i]:.4f}"] for i in order]
    return _table(["run", "N", "D", "C", "eval loss"], rows)


def _iso_section(iso: Any) -> str:
    rows = [[_g(p.budget), str(p.n_runs), _g(p.N_opt), _g(p.D_opt), f"{p.L_min:.4f}",
             "yes" if p.interior else "**no**", "yes" if p.usable else "no"] for p in iso.profiles]
    text = _table(["budget C", "sizes", "N_opt", "D_opt", "L_min", "interior", "used"], rows)
    level = f"{iso.level:.0%}"
    how = (f"{level} t-intervals of the line through the {iso.n_used} minima, from their scatter "
           f"about it; beside, the bootstrap over runs within each budget gives a "
           f"{_pair(iso.a_interval_bootstrap).strip()}" if iso.interval_method == "line" else
           f"{level} intervals from the bootstrap over runs within each budget")
    text += (f"\n\nN_opt ~ C^a with a = {iso.a:.3f}{_pair(iso.a_interval)}; D_opt ~ C^b with b = {iso.b:.3f}"
             f"{_pair(iso.b_interval)} ({how}). Chinchilla's approach 2 found a = 0.49, b = 0.51.")
    return text


def _param_table(fit: Any, boot: Any) -> str:
    """A fit's parameters and derived quantities with their bootstrap stderr and interval."""
    c = fit.constraints
    rows = []
    for name, value in list(fit.params.items()) + list(fit.derived.items()):
        if name in c.fix or name in c.tie:  # not estimated, so no interval of its own
            how = "fixed" if name in c.fix else f"tied: {name} = {c.tie[name]}"
            rows.append([name, _g(value), how, ""])
            continue
        se = boot.stderr.get(name) if boot is not None else None
        rows.append([name, _g(value), _g(se) if se is not None else "", _interval(boot, name)])
    text = _table(["parameter", "estimate", "bootstrap stderr", "95% interval"], rows)
    resamples = f", {boot.n_resamples} bootstrap resamples." if boot is not None else "."
    return text + (f"\n\n{fit.n_points} runs, objective {fit.objective:.3g}, RMSE of log loss {fit.rmse_log:.4f}, "
                   f"R^2 {fit.r2_log:.4f}" + resamples)


def _fit_section(a: StudyAnalysis) -> str:
    fit, boot = a.fit, a.boot
    c = fit.constraints
    text = "L(N, D) = E + A / N^alpha + B / D^beta, Huber (delta 1e-3) on log loss, L-BFGS from a grid of starts.\n\n"
    if c:
        text += (f"Constraints: {c.describe()}; {fit.n_free} free parameters ({', '.join(fit.free)}), so the fit "
                 f"needs at least {fit.n_free + 1} runs.\n\n")
    text += _param_table(fit, boot)
    if isinstance(a.comparison, str):
        text += f"\n\nNo test of the constraints: {a.comparison}."
    elif a.comparison is not None:
        text += "\n\n" + _comparison_section(a.comparison)
    return text


def _repetition_section(a: StudyAnalysis) -> str:
    """The data-constrained law beside Chinchilla's: its fit, R*_D and whether the runs pin it down, the value of
    one more epoch, and how far the sizes go past N_opt(U_D)."""
    from scaling.analysis.report import UNIDENTIFIED, excess_sentences, saturation_sentence

    ev, fit = a.repetition["epoch_value"], a.dc_fit
    U = a.data.column("U")
    capped = f"{_g(U.min())} unique tokens" if U.min() == U.max() else f"{_g(U.min())} to {_g(U.max())} unique tokens"
    text = [f"The runs draw on {capped} and pass over them up to {_epochs(ev['data_max_epochs'])} times. "
            f"Chinchilla's law above counts a repeated token as a new one. Muennighoff et al.'s (2023) law "
            f"counts it as effective data: L = E + A / N^alpha + B / D'^beta with D' = U_D + U_D R*_D "
            f"(1 - exp(-R_D / R*_D)), U_D = min(U, D) and R_D = epochs - 1; it is Chinchilla's law for runs of "
            f"one epoch or less. It is fitted beside Chinchilla's, not instead: the compute-optimal allocation, "
            f"the extrapolation check and the approaches side by side stay on Chinchilla's law, whose "
            f"allocation has a closed form; this law's allocation depends on U as well."]
    text.append(_param_table(fit, a.dc_boot) + (f" Chinchilla's law on the same runs: objective {a.fit.objective:.3g}, "
                                                 f"RMSE of log loss {a.fit.rmse_log:.4f}." if a.fit is not None else ""))
    text.append(saturation_sentence("R_D_star", ev["R_D_star"], ev["R_D_star_interval"], ev["R_D_star_status"],
                                    fit.law))
    band = ev.get("next_epoch_value_interval")
    rows = [[f"{k} -> {k + 1}", f"{v:.3f}", f"[{band[0][i]:.3f}, {band[1][i]:.3f}]" if band else ""]
            for i, (k, v) in enumerate(zip(ev["epochs"], ev["next_epoch_value"]))]
    text.append("What one more epoch is worth, as a fraction of the same tokens of new unique data "
                "(R*_D (1 - exp(-1/R*_D)) exp(-R_D/R*_D)):\n\n"
                + _table(["epoch", "value of the epoch", "95% interval"], rows))
    text += excess_sentences(a.repetition["excess_params"], fit.law)
    return "\n\n".join(text)


def _comparison_section(cmp: Any) -> str:
    rows = [["constrained", ", ".join(cmp.free_constrained), _g(cmp.objective_constrained), f"{cmp.rmse_log_constrained:.4f}"],
            ["unconstrained", ", ".join(cmp.free_unconstrained), _g(cmp.objective_unconstrained),
             f"{cmp.rmse_log_unconstrained:.4f}"]]
    text = "### Constrained against unconstrained law\n\n"
    text += _table(["fit", "free parameters", "objective", "RMSE of log loss"], rows)
    text += (f"\n\n{cmp.sentence()} The test is the likelihood-ratio test's analogue for Huber fits "
             f"(Schrader and Hettmansperger 1980): S = 2 E[psi'] / E[psi^2] x (difference of the objectives), "
             f"S/q against F(q, n - p) with q = {cmp.q} and n - p = {cmp.dof}. A plain likelihood-ratio test or "
             f"AIC would need a likelihood, and these fits minimise a Huber loss instead.")
    return text


def _optimal_section(a: StudyAnalysis) -> str:
    o = a.optimal
    rows = []
    for i, C in enumerate(np.atleast_1d(o["C"])):
        def cell(key: str) -> str:
            v = _g(np.atleast_1d(o[key])[i])
            iv = o.get(f"{key}_interval")
            if iv is None:
                return v
            lo, hi = np.atleast_1d(iv[0])[i], np.atleast_1d(iv[1])[i]
            return f"{v} [{_g(lo)}, {_g(hi)}]"

        rows.append([_g(C), cell("N_opt"), cell("D_opt"), cell("tokens_per_param"), cell("loss")])
    headers = ["budget C", "N_opt", "D_opt", "tokens per parameter", "predicted loss"]
    six = None
    if a.flops is not None and not a.flops.is_6nd:
        # The closed form under C = 6 N D, beside, for comparison with papers that use it.
        from scaling.analysis.fit import compute_optimal

        six = compute_optimal(a.fit, np.atleast_1d(o["C"]))
        headers.append("N_opt at 6ND")
        for row, v in zip(rows, np.atleast_1d(six["N_opt"])):
            row.append(_g(v))
    text = _table(headers, rows)
    text += ("\n\nFrom the parametric law, with 95% bootstrap intervals. The budgets are on the study's own FLOP "
             "scale: C = f(N) D with f(N) the runs' FLOPs per token (their C / D), so they count what the runs' "
             "C counts, and N_opt = argmin L(N, C / f(N)) is solved numerically.")
    if six is not None:
        text += " The last column is the closed form under C = 6 N D at the same budgets."
    if a.iso is not None:
        Cs = np.atleast_1d(o["C"])
        text += " The IsoFLOP fit gives N_opt = " + ", ".join(_g(v) for v in a.iso.N_opt(Cs)) + " at the same budgets."
    return text


def _approaches_section(approaches: dict) -> str:
    """a and b of approaches 1-3 with their intervals, and their disagreements."""
    names = {"envelope": "1: envelope of training curves", "isoflop": "2: IsoFLOP profiles",
             "parametric": "3: parametric law"}
    rows = []
    for key, label in names.items():
        e = approaches.get(key)
        if e is None:
            continue
        rows.append([label, f"{e['a']:.3f}{_pair(tuple(e['a_interval']))}",
                     f"{e['b']:.3f}{_pair(tuple(e['b_interval']))}"])
    text = _table(["approach", "a (N_opt ~ C^a)", "b (D_opt ~ C^b)"], rows)
    text += "\n\n95% intervals; approach 3's exponents are measured on the study's FLOP scale over its budgets."
    for d in approaches.get("diagnostics", ()):
        text += f"\n\n`{d['code']}`: {d['message']}"
    return text


def _holdout_section(h: Any) -> str:
    rows = [[f"`{r}`", _g(n), _g(d), _g(c), f"{act:.4f}", f"{pred:.4f}", f"{100 * e:+.2f}%"]
            for r, n, d, c, act, pred, e in zip(h.run_id, h.N, h.D, h.C, h.actual, h.predicted, h.rel_error)]
    if h.by == "budget":
        text = (f"Every run of the {h.k} largest budget(s) ({', '.join(_g(b) for b in h.budgets)} FLOPs) held out; "
                f"the law refitted on the other {h.budgets_fitted} budgets predicts:\n\n")
    else:
        text = f"The {h.k} largest run(s) by {h.by} held out; the law refitted on the rest predicts:\n\n"
    return text + _table(["run", "N", "D", "C", "actual", "predicted", "relative error"], rows)


def _diagnostics(a: StudyAnalysis) -> str:
    items = []
    for source, obj in (("IsoFLOP", a.iso), ("fit", a.fit), ("bootstrap", a.boot), ("constraints test", a.comparison),
                        ("data-constrained fit", a.dc_fit), ("data-constrained bootstrap", a.dc_boot)):
        for d in getattr(obj, "diagnostics", ()) or ():
            items.append(f"- {source}: `{d.code}`: {d.message}")
    items += [f"- {p}" for p in a.problems]
    if a.plan:
        items += [f"- plan: {n}" for n in a.plan.notes]
    return "\n".join(items) if items else "None."


NEXT_PLAN = "next_plan.yaml"
EXTRA_SIZES = 2  # sizes added beyond the edge of a budget whose minimum lies there


def next_plan_extra(a: StudyAnalysis) -> list[dict]:
    """For each IsoFLOP budget whose minimum lies on the edge of its sizes, EXTRA_SIZES more sizes
    beyond that edge, continuing the budget's own spacing in log N: [{budget, targets}]."""
    out = []
    for p in (a.iso.profiles if a.iso is not None else ()):
        if p.interior or len(p.N) < 2:
            continue
        order = np.argsort(p.N)
        N, loss = np.asarray(p.N, dtype=float)[order], np.asarray(p.loss, dtype=float)[order]
        step = (N[-1] / N[0]) ** (1 / (len(N) - 1))
        i = int(np.argmin(loss))
        # the lowest loss at the smallest size, or (with an interior lowest loss) a vertex below the sizes
        low = i == 0 if i in (0, len(N) - 1) else bool(p.N_opt < N[0])
        targets = [N[0] / step**k if low else N[-1] * step**k for k in range(1, EXTRA_SIZES + 1)]
        out.append({"budget": float(f"{p.budget:.6g}"), "targets": [float(f"{t:.4g}") for t in targets]})
    return out


def write_next_plan(study_dir: str | Path, a: StudyAnalysis) -> Path | None:
    """STUDY/next_plan.yaml: the sizes that recentre the budgets whose minimum lies on an edge, for
    `scaling-study study=NAME study.extend=next` (which keeps every planned run). The sizes of an
    earlier next_plan.yaml are kept, so a study extended twice keeps its first extension's runs.
    Removed when every minimum is interior and no earlier sizes are to be kept."""
    import yaml

    path = Path(study_dir) / NEXT_PLAN
    earlier = []
    if path.exists():
        try:
            earlier = (yaml.safe_load(path.read_text()) or {}).get("sizes", {}).get("extra", []) or []
        except (OSError, yaml.YAMLError):
            earlier = []
    new = next_plan_extra(a)
    if not new:
        return path if earlier else None
    merged: dict[float, list[float]] = {}
    for e in [*earlier, *new]:
        merged.setdefault(float(e["budget"]), [])
        merged[float(e["budget"])] += [t for t in e["targets"] if t not in merged[float(e["budget"])]]
    doc = {"sizes": {"extra": [{"budget": c, "targets": sorted(t)} for c, t in sorted(merged.items())]}}
    edges = ", ".join(f"{e['budget']:.3g}" for e in new)
    text = (f"# Written by the report of study {a.study}: the IsoFLOP minimum of budget(s) {edges} lies on the edge\n"
            f"# of its sizes, so {EXTRA_SIZES} sizes are added beyond that edge. Every run planned before is kept:\n"
            f"#   scaling-study study={a.study} study.extend=next\n" + yaml.safe_dump(doc, sort_keys=False))  # fmt: skip
    tmp = path.with_name(f".{NEXT_PLAN}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def write_study_outputs(study_dir: str | Path, a: StudyAnalysis) -> dict[str, Path]:
    """Write figures/, fit.json and report.md (each atomically). Returns their paths."""
    from scaling.analysis.io import write_json_atomic

    study_dir = Path(study_dir)
    fig_dir = study_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, fig in study_figures(a).items():
        for ext in ("png", "pdf"):
            tmp = fig_dir / f".{name}.tmp.{ext}"
            fig.savefig(tmp, dpi=120)
            tmp.replace(fig_dir / f"{name}.{ext}")
        written[name] = fig_dir / f"{name}.png"
    write_json_atomic(study_dir / "fit.json", study_json(a))
    written["fit.json"] = study_dir / "fit.json"
    if a.plan is not None and a.plan.kind == "isoflop":
        nxt = write_next_plan(study_dir, a)
        if nxt is not None:
            written[NEXT_PLAN] = nxt
    report = render_report(a, [n for n in FIGURE_NAMES if n in written])
    tmp = study_dir / ".report.md.tmp"
    tmp.write_text(report)
    tmp.replace(study_dir / "report.md")
    written["report.md"] = study_dir / "report.md"
    from scaling.analysis.html import write_report_html

    written["report.html"] = write_report_html(study_dir)
    return written
