"""``scaling-fit``: fit a scaling law to runs and write ``fit.json`` and figures.

Examples::

    scaling-fit --csv runs.csv --law chinchilla --out fits/ --bootstrap 1000
    scaling-fit --csv chinchilla_fig4.csv --law chinchilla --drop-highest-loss 5 --out out/
    scaling-fit studies/my_study --law isoflop --out out/
    scaling-fit --csv runs.csv --fix E=1.69 --tie beta=alpha --bound alpha=0.05:1.5 --out out/
    scaling-fit studies/my_study --holdout-budgets 1 --approaches --bootstrap 1000 --out out/

The compute-optimal allocation and the fitted curve in ``loss_vs_compute`` use the runs' own
FLOPs per token f(N) (their C / D; :mod:`scaling.analysis.flops`), so the curve lies on the
runs' frontier; ``compute_optimal`` in fit.json stays on the 6 N D scale, labelled, and
``compute_optimal_study_flops`` is the table on the study's scale.

Constraints (``--fix``, ``--tie``, ``--bound``; names are the law's parameters) leave fewer
parameters free, so fewer runs are needed (free parameters + 1). With a fix or a tie, and
enough runs for the unconstrained law as well, both are fitted and the constraints are tested
against the data (:mod:`scaling.analysis.nested`); ``--no-compare`` skips that.

A study folder with a plan.json is fitted on the runs that plan lists, as the study's report
is; run folders left by an earlier version of the spec are listed as "not in plan", and
``--include-unplanned`` fits them too.

Exit codes: 0 on success; 2 for bad input or arguments (with a one-line message).
This is the only module in the package that writes files.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from scaling.analysis.errors import AnalysisError, cli_exit_code
from scaling.analysis.isoflop import DEFAULT_WINDOW
from scaling.analysis.laws import LAWS as PARAMETRIC

LAWS = tuple(PARAMETRIC) + ("isoflop",)
FIGURE_FORMATS = ("png", "pdf")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scaling-fit",
        description="Fit a scaling law to training runs; write DIR/fit.json and figures.",
    )
    p.add_argument("folder", nargs="?", help="study or runs folder (reads each run's result.json)")
    p.add_argument("--csv", help="CSV with columns N, D, loss and optionally C")
    p.add_argument("--law", default="chinchilla", choices=LAWS, help="law to fit (default chinchilla)")
    p.add_argument("--out", required=True, help="output directory for fit.json and figures")
    p.add_argument("--bootstrap", type=int, default=0, metavar="K",
                   help="bootstrap resamples for standard errors and intervals (default 0: "
                        "none; isoflop always bootstraps, 1000 resamples unless K is given)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--drop-highest-loss", type=int, default=0, metavar="K",
                   help="drop the K runs with the highest loss before fitting")
    p.add_argument("--holdout-largest", type=int, default=0, metavar="K",
                   help="also fit without the K largest runs and report their prediction error")
    p.add_argument("--holdout-budgets", type=int, default=0, metavar="K",
                   help="also fit without every run of the K largest compute budgets and "
                        "report the prediction error of each (needs K + 2 budgets)")
    p.add_argument("--approaches", action="store_true",
                   help="chinchilla on runs with budgets: also run the IsoFLOP analysis (and "
                        "the envelope for a study folder) and put a, b of approaches 1-3 side "
                        "by side in fit.json")
    p.add_argument("--holdout-by", choices=("C", "N", "D"), default=None,
                   help="size measure for --holdout-largest (default C; a one-variable law's "
                        "input when the data have no C)")
    p.add_argument("--delta", type=_delta_arg, default=1e-3,
                   help="Huber delta on log loss (default 1e-3), or 'auto': 1.345 times the "
                        "data's noise scale (dense noisy data such as learning curves)")
    p.add_argument("--x", choices=("N", "D", "C"), default=None,
                   help="input of a one-variable law (power_law, broken_power_law)")
    p.add_argument("--n-key", choices=("params", "params_nonembedding"), default="params",
                   help="which parameter count is N when reading a study folder")
    p.add_argument("--tolerance", type=float, default=0.25,
                   help="isoflop: relative width of a compute-budget group (default 0.25)")
    p.add_argument("--isoflop-window", default=str(DEFAULT_WINDOW), metavar="MARGIN",
                   help="isoflop: fit each profile on the sizes whose loss is within MARGIN "
                        f"(relative) of its minimum, at least 4 (default {DEFAULT_WINDOW}); "
                        "'off' fits every size")
    p.add_argument("--include-unplanned", action="store_true",
                   help="study folder: also fit run folders its plan.json does not list")
    p.add_argument("--skip-bad-rows", action="store_true",
                   help="drop CSV rows with missing or non-positive values instead of failing")
    p.add_argument("--fix", action="append", default=[], metavar="NAME=VALUE",
                   help="fix a parameter, e.g. --fix E=1.69 (repeatable)")
    p.add_argument("--tie", action="append", default=[], metavar="NAME=EXPR",
                   help="tie a parameter to others, e.g. --tie beta=alpha or --tie B=2*A "
                        "(numbers, names, + - * / **; repeatable)")
    p.add_argument("--bound", action="append", default=[], metavar="NAME=LOW:HIGH",
                   help="bound a parameter, e.g. --bound alpha=0.05:1.5; an empty end keeps the "
                        "law's own bound (repeatable)")
    p.add_argument("--no-compare", action="store_true",
                   help="with --fix or --tie, skip the unconstrained fit and the test of the "
                        "constraints")
    p.add_argument("--no-plots", action="store_true", help="write fit.json only")
    return p


def _delta_arg(text: str) -> float | str:
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or 'auto'") from None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return cli_exit_code("scaling-fit", lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    # Imported here so `scaling-fit --help` answers at once.
    from scaling.analysis import io, report

    if (args.csv is None) == (args.folder is None):
        raise AnalysisError("give exactly one input: --csv FILE or a study FOLDER")
    if min(args.bootstrap, args.drop_highest_loss, args.holdout_largest, args.holdout_budgets) < 0:
        raise AnalysisError("--bootstrap, --drop-highest-loss, --holdout-largest and "
                            "--holdout-budgets must be >= 0")
    if args.holdout_largest and args.holdout_budgets:
        raise AnalysisError("give one of --holdout-largest and --holdout-budgets")
    if args.approaches and args.law != "chinchilla":
        raise AnalysisError(f"--approaches compares approach 3 (the chinchilla law) with the "
                            f"IsoFLOP analysis; drop --law {args.law} or --approaches")
    _window_arg(args.isoflop_window)  # checked before any file is read
    if args.csv and args.include_unplanned:
        raise AnalysisError("--include-unplanned applies to a study FOLDER's plan.json; drop it "
                            "with --csv")
    from scaling.analysis.constraints import constraint_problems, parse_cli

    constraints = parse_cli(args.fix, args.tie, args.bound)
    if constraints and args.law == "isoflop":
        raise AnalysisError("--fix, --tie and --bound constrain a parametric law; the isoflop "
                            "analysis has none, so drop them or pick a --law")
    if constraints:
        # Checked before any file is read, with every problem named as it was typed.
        problems = constraint_problems(PARAMETRIC[args.law], constraints, "--")
        if problems:
            raise AnalysisError("; ".join(problems))
    skipped, run_dirs = [], None
    default_x = PARAMETRIC[args.law].default_x if args.law in PARAMETRIC else None
    if args.csv:
        # A one-variable law reads only its input and loss; its file may lack the others.
        x_1d = args.x or default_x
        data = io.load_csv(args.csv, skip_bad=args.skip_bad_rows, x=x_1d)
        source = args.csv
        if data.c_derived and "C" in (args.x, args.holdout_by, default_x):
            print(f"note: {Path(args.csv).name} has no C column; C = 6 N D is derived from "
                  f"its N and D")
    else:
        run_dirs, not_in_plan = io.select_runs(args.folder, args.include_unplanned)
        # Printed before loading, so they are seen even when no planned run has finished.
        for s in not_in_plan:
            print(f"not in plan: {s.path} ("
                  + ("fitted, --include-unplanned" if args.include_unplanned
                     else "left out; --include-unplanned fits it") + ")")
        data, skipped = io.load_runs(args.folder, n_key=args.n_key, run_dirs=run_dirs)
        if not args.include_unplanned:
            skipped += not_in_plan
        source = args.folder
    for s in skipped:
        if s.status != io.NOT_IN_PLAN:
            print(f"skipped {s.status} run {s.run_id}: {s.reason}")
    for r in data.rejected:
        print(f"skipped bad row {r}")
    if args.drop_highest_loss:
        data = data.drop_highest_loss(args.drop_highest_loss)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.law == "isoflop":
        return _run_isoflop(args, data, out, source, skipped, run_dirs)

    from scaling.analysis.extrapolate import holdout_check
    from scaling.analysis.fit import bootstrap, fit_law
    from scaling.analysis.flops import FlopsPerToken
    from scaling.analysis.nested import compare_or_why

    fit = fit_law(data, law=args.law, delta=args.delta, x=args.x, constraints=constraints)
    boot = bootstrap(data, fit, n_resamples=args.bootstrap, seed=args.seed) if args.bootstrap else None
    if boot is not None:
        boot = report.judge_saturation(data, fit, boot)
    comparison = (compare_or_why(data, fit)
                  if constraints.equalities and not args.no_compare else None)
    by = args.holdout_by or ("C" if "C" not in data.absent else fit.x)
    if args.holdout_budgets:
        by, k_held = "budget", args.holdout_budgets
    else:
        k_held = args.holdout_largest
    holdout = (holdout_check(data, k=k_held, by=by, law=args.law, tolerance=args.tolerance,
                             delta=args.delta, x=args.x, constraints=constraints)
               if k_held else None)
    flops = FlopsPerToken.from_data(data) if fit.has_optimal else None
    approaches = _approaches(args, data, fit, boot, flops, run_dirs) if args.approaches else None
    doc = report.fit_to_json(fit, boot, holdout, source=source,
                             dropped_highest_loss=args.drop_highest_loss, skipped=skipped,
                             comparison=comparison, flops=flops, approaches=approaches)
    if data.c_derived:
        doc["C_derived_from_6ND"] = True  # the source had no C column
    if "R_D_star" in fit.params:
        doc.update(report.repetition_to_json(data, fit, boot))
    written = [] if args.no_plots else _fit_figures(out, data, fit, boot, holdout, flops)
    io.write_json_atomic(out / "fit.json", doc)
    print(report.format_fit(fit, boot))
    if isinstance(comparison, str):
        print(f"no test of the constraints: {comparison}")
    elif comparison is not None:
        print(report.format_comparison(comparison))
    if approaches is not None:
        for name in ("envelope", "isoflop", "parametric"):
            if name in approaches:
                e = approaches[name]
                print(f"approach {name}: a = {e['a']:.3f} [{e['a_interval'][0]:.3f}, "
                      f"{e['a_interval'][1]:.3f}], b = {e['b']:.3f}")
        for d in approaches["diagnostics"]:
            print(f"  - {d['code']}: {d['message']}")
    if "epoch_value" in doc:
        print(report.format_repetition(doc, fit.law))
    if holdout is not None:
        what = (f"every run of the {holdout.k} largest budget(s)" if holdout.by == "budget"
                else f"{holdout.k} largest by {holdout.by}")
        print(f"holdout ({what}):")
        for rid, a, pr, e in zip(holdout.run_id, holdout.actual, holdout.predicted,
                                 holdout.rel_error):
            print(f"  {rid}: actual {a:.4f}  predicted {pr:.4f}  rel error {e:+.2%}")
        print(f"  holdout RMSE(log L) {doc['holdout_rmse_log']:.4g}")
    print("wrote " + ", ".join(str(p) for p in [out / "fit.json"] + written))
    poor = [d for d in fit.diagnostics if d.code in ("poor_fit", "lack_of_fit")]
    if poor:  # the exit code stays 0; the last line says so
        print(f"the fit is poor: {poor[0].message}")
    return 0


def _approaches(args, data, fit, boot, flops, run_dirs) -> dict:
    """a, b of approaches 1-3 side by side; an approach that cannot run is named in
    ``skipped`` instead of stopping the fit."""
    from scaling.analysis import io
    from scaling.analysis.isoflop import isoflop_profiles, training_envelope
    from scaling.analysis.predict import compare_approaches

    iso = envelope = None
    skipped = {}
    try:
        iso = isoflop_profiles(data, tolerance=args.tolerance, n_boot=args.bootstrap or 1000,
                               seed=args.seed, window=_window_arg(args.isoflop_window))
    except AnalysisError as exc:
        skipped["isoflop"] = str(exc)
    if args.folder:
        curves = io.load_curves(args.folder, n_key=args.n_key, run_dirs=run_dirs)
        if len(curves) >= 2:
            envelope = training_envelope(curves, n_boot=args.bootstrap or 1000, seed=args.seed)
    out = compare_approaches(fit, boot, iso, envelope, data=data, flops=flops)
    if skipped:
        out["skipped"] = skipped
    return out


def _window_arg(text: str) -> float | None:
    if text.strip().lower() in ("off", "none", "0"):
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= 0:
        raise AnalysisError(f"--isoflop-window={text} must be a relative loss margin >= 0 "
                            f"(e.g. {DEFAULT_WINDOW}) or 'off'")
    return value


def _run_isoflop(args, data, out: Path, source: str, skipped, run_dirs) -> int:
    from scaling.analysis import io, report
    from scaling.analysis.isoflop import isoflop_profiles, training_envelope
    from scaling.analysis.predict import compare_approaches

    iso = isoflop_profiles(data, tolerance=args.tolerance, n_boot=args.bootstrap or 1000,
                           seed=args.seed, window=_window_arg(args.isoflop_window))
    envelope = None
    if args.folder:
        curves = io.load_curves(args.folder, n_key=args.n_key, run_dirs=run_dirs)
        if len(curves) >= 2:
            envelope = training_envelope(curves, n_boot=args.bootstrap or 1000, seed=args.seed)
    doc = report.isoflop_to_json(iso, envelope, source=source, skipped=skipped)
    doc["approaches"] = compare_approaches(None, None, iso, envelope)
    written = [] if args.no_plots else _isoflop_figures(out, data, iso, envelope)
    io.write_json_atomic(out / "fit.json", doc)
    print(report.format_isoflop(iso))
    if envelope is not None:
        print(f"envelope (approach 1): N_opt ~ C^{envelope.a:.3f}, D_opt ~ C^{envelope.b:.3f}")
    print("wrote " + ", ".join(str(p) for p in [out / "fit.json"] + written))
    return 0


def _save(fig, out: Path, name: str) -> list[Path]:
    paths = []
    for ext in FIGURE_FORMATS:
        path = out / f"{name}.{ext}"
        fig.savefig(path, dpi=150)
        paths.append(path)
    return paths


def _fit_figures(out, data, fit, boot, holdout, flops=None) -> list[Path]:
    from scaling.analysis import plots

    written = []
    fig, (ax,) = plots.new_figure()
    plots.plot_loss_vs_compute(ax, data, fit, flops=flops)
    written += _save(fig, out, "loss_vs_compute")
    fig, (ax,) = plots.new_figure()
    plots.plot_residuals(ax, data, fit)
    written += _save(fig, out, "residuals")
    fig, (ax,) = plots.new_figure()
    plots.plot_predicted_vs_actual(ax, data, fit, holdout)
    written += _save(fig, out, "predicted_vs_actual")
    # A degenerate fit (alpha = beta = 0) has no compute-optimal allocation to draw.
    if fit.has_optimal and all(map(math.isfinite, fit.derived.values())):
        fig, axes = plots.new_figure(ncols=2)
        plots.plot_optimal(axes, fit, boot=boot,
                           C=_geomspace(data.C.min(), data.C.max() * 1e4), flops=flops)
        written += _save(fig, out, "optimal_allocation")
    return written


def _isoflop_figures(out, data, iso, envelope) -> list[Path]:
    from scaling.analysis import plots

    written = []
    fig, (ax,) = plots.new_figure()
    plots.plot_isoflop(ax, iso)
    written += _save(fig, out, "isoflop")
    fig, axes = plots.new_figure(ncols=2)
    plots.plot_optimal(axes, iso)
    written += _save(fig, out, "optimal_allocation")
    fig, (ax,) = plots.new_figure()
    plots.plot_loss_vs_compute(ax, data, None, envelope)
    written += _save(fig, out, "loss_vs_compute")
    return written


def _geomspace(lo: float, hi: float):
    import numpy as np

    return np.geomspace(lo, hi, 100)


if __name__ == "__main__":
    sys.exit(main())
