"""Figures. Each function draws on an Axes it is given and returns it; none writes files.

No pyplot here: callers make a ``matplotlib.figure.Figure`` (which renders with Agg and needs
no display) or pass any Axes they own. :func:`new_figure` is a small helper for that.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from scaling.analysis.data import Data
from scaling.analysis.errors import AnalysisError
from scaling.analysis.extrapolate import HoldoutResult
from scaling.analysis.fit import BootstrapResult, FitResult, compute_optimal
from scaling.analysis.flops import FlopsPerToken
from scaling.analysis.isoflop import EnvelopeResult, IsoFLOPResult

LOSS_LABEL = "loss [nats/token]"
C_LABEL = "training compute C [FLOPs]"


def new_figure(ncols: int = 1, width: float = 6.0, height: float = 4.5):
    """A display-free Figure with ``ncols`` Axes side by side: (fig, axes list)."""
    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _frontier(C: np.ndarray, loss: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Runs with lower loss than every run of smaller compute (the Pareto frontier)."""
    order = np.argsort(C)
    best = np.minimum.accumulate(loss[order])
    on = np.r_[True, best[1:] < best[:-1]]
    return C[order][on], best[on]


def plot_loss_vs_compute(
    ax: Axes, data: Data, fit: FitResult | None = None, envelope: EnvelopeResult | None = None,
    flops: FlopsPerToken | None = None,
) -> Axes:
    """Loss against compute: every run, the frontier, and the fitted law.

    For laws in N and D the law is drawn at its compute-optimal allocation, L(N_opt(C),
    D_opt(C)), on the runs' own compute scale: ``C = f(N) D`` with ``flops`` (default read
    from the data, f = C / D per run), solved numerically. When f is not 6 N, the curve under
    ``C = 6 N D`` is drawn beside it, dashed and labelled, since it belongs to another compute
    axis and runs below the runs. For a law in C it is drawn directly; for laws in N or D
    alone the fitted value of each run is marked instead.
    """
    if "C" in data.absent:  # a one-variable law's data: loss against its input
        return _plot_loss_vs_x(ax, data, fit)
    sc = ax.scatter(data.C, data.loss, c=np.log10(data.N), s=14, cmap="viridis", alpha=0.8,
                    label="runs")
    ax.figure.colorbar(sc, ax=ax, label="log10 N [params]")
    fc, fl = _frontier(data.C, data.loss)
    ax.step(fc, fl, where="post", color="k", lw=1.2, label="frontier (best loss so far)")
    if envelope is not None:
        ax.plot(envelope.C, envelope.loss, color="tab:orange", lw=1.2, label="training-curve envelope")
    if fit is not None:
        grid = np.geomspace(data.C.min(), data.C.max() * 10, 200)
        if fit.has_optimal:
            flops = FlopsPerToken.from_data(data) if flops is None else flops
            ax.plot(grid, compute_optimal(fit, grid, flops=flops)["loss"], color="tab:red",
                    lw=1.5, label=f"{fit.law} fit at N_opt(C), {flops.label}")
            if not flops.is_6nd:
                ax.plot(grid, compute_optimal(fit, grid)["loss"], color="0.5", lw=1.0,
                        ls="--", label=f"{fit.law} fit at N_opt(C), C = 6 N D (another "
                                       f"FLOP scale than the runs')")
        elif fit.x == "C":
            ax.plot(grid, fit.predict(C=grid), color="tab:red", lw=1.5, label=f"{fit.law} fit")
        else:
            ax.scatter(data.C, fit.predict_data(data), s=14, facecolors="none",
                       edgecolors="tab:red", label=f"{fit.law} fit (per run)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(C_LABEL)
    ax.set_ylabel(LOSS_LABEL)
    ax.set_title("Loss against compute")
    ax.legend(fontsize="small")
    return ax


X_LABELS = {"N": "parameters N [count]", "D": "tokens D [count]", "C": "compute C [FLOPs]"}


def _plot_loss_vs_x(ax: Axes, data: Data, fit: FitResult | None) -> Axes:
    """Loss against the one input the data have, and the fitted law."""
    name = fit.x if fit is not None and fit.x else next(k for k in "NDC" if k not in data.absent)
    x = data.column(name)
    ax.scatter(x, data.loss, s=14, label="runs")
    if fit is not None:
        grid = np.geomspace(x.min(), x.max() * 10, 200)
        ax.plot(grid, fit.predict(**{name: grid}), color="tab:red", lw=1.5, label=f"{fit.law} fit")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(X_LABELS[name])
    ax.set_ylabel(LOSS_LABEL)
    ax.set_title(f"Loss against {name}")
    ax.legend(fontsize="small")
    return ax


def plot_isoflop(ax: Axes, iso: IsoFLOPResult) -> Axes:
    """IsoFLOP curves: runs per budget, the fitted parabola in ln N, and its minimum."""
    budgets = [p.budget for p in iso.profiles]
    lo, hi = np.log10(min(budgets)), np.log10(max(budgets))
    for p in iso.profiles:
        t = 0.5 if hi == lo else (np.log10(p.budget) - lo) / (hi - lo)
        color = _cmap(t * 0.85)
        inw = np.ones(len(p.N), dtype=bool) if p.in_window is None else p.in_window
        ax.scatter(p.N[inw], p.loss[inw], s=14, color=color, label=f"C = {p.budget:.3g} FLOPs")
        if not inw.all():  # outside the fitting window: shown, greyed
            ax.scatter(p.N[~inw], p.loss[~inw], s=14, color="0.75", zorder=0)
        if p.usable:
            lnN = np.log(p.N[inw])
            xs = np.linspace(lnN.min() - 0.3, lnN.max() + 0.3, 100)
            ax.plot(np.exp(xs), np.polyval(p.coeffs, xs), color=color, lw=1)
            ax.plot(p.N_opt, p.L_min, marker="*" if p.interior else "x", ms=10, color=color,
                    mec="k", mew=0.5)
    ax.set_xscale("log")
    ax.set_xlabel("parameters N [count]")
    ax.set_ylabel(LOSS_LABEL)
    ax.set_title("IsoFLOP profiles: parabola in ln N, * its minimum,\ngrey = outside the fitting window", fontsize="medium")
    if len(iso.profiles) <= 12:
        ax.legend(fontsize="x-small")
    return ax


def _cmap(t: float):
    from matplotlib import colormaps

    return colormaps["plasma"](t)


def plot_optimal(
    ax_or_axes: Axes | Sequence[Axes],
    iso_or_fit: IsoFLOPResult | FitResult,
    boot: BootstrapResult | None = None,
    C: np.ndarray | None = None,
    flops: FlopsPerToken | None = None,
) -> Axes | Sequence[Axes]:
    """N_opt(C) and D_opt(C) with interval bands.

    ``iso_or_fit``: an IsoFLOP result (bands from its bootstrap, points at each budget's
    minimum) or a parametric fit (bands from ``boot`` if given; on the compute scale of
    ``flops``, default C = 6 N D). Pass two Axes to draw
    N_opt and D_opt separately, or one to draw both. Returns what it was given.
    """
    axes = [ax_or_axes] if isinstance(ax_or_axes, Axes) else list(ax_or_axes)
    if isinstance(iso_or_fit, IsoFLOPResult):
        iso = iso_or_fit
        used = [p for p in iso.profiles if p.usable and p.interior]
        pts_C = np.array([p.budget for p in used])
        pts = {"N": np.array([p.N_opt for p in used]), "D": np.array([p.D_opt for p in used])}
        grid = np.geomspace(pts_C.min() / 3, pts_C.max() * 30, 100) if C is None else C
        lines = {"N": iso.N_opt(grid), "D": iso.D_opt(grid)}
        bands = {"N": iso.band(grid, "N"), "D": iso.band(grid, "D")}
        labels = {"N": f"N_opt ~ C^{iso.a:.3f}", "D": f"D_opt ~ C^{iso.b:.3f}"}
        title = "Compute-optimal allocation (IsoFLOP)"
    elif isinstance(iso_or_fit, FitResult):
        fit = iso_or_fit
        grid = np.geomspace(1e18, 1e26, 100) if C is None else C
        opt = compute_optimal(fit, grid, boot=boot, flops=flops)
        lines = {"N": opt["N_opt"], "D": opt["D_opt"]}
        bands = {k: opt.get(f"{k}_opt_interval") for k in ("N", "D")}
        labels = {"N": f"N_opt ~ C^{opt['a']:.3f}", "D": f"D_opt ~ C^{opt['b']:.3f}"}
        pts_C, pts = None, None
        title = (f"Compute-optimal allocation ({fit.law} fit, "
                 f"{(flops or FlopsPerToken.six_n()).label})")
    else:
        raise AnalysisError(f"plot_optimal takes an IsoFLOPResult or FitResult, not {type(iso_or_fit).__name__}")
    colors = {"N": "tab:blue", "D": "tab:green"}
    units = {"N": "N_opt [params]", "D": "D_opt [tokens]"}
    for i, k in enumerate(("N", "D")):
        ax = axes[min(i, len(axes) - 1)]
        ax.plot(grid, lines[k], color=colors[k], label=labels[k])
        if bands[k] is not None:
            ax.fill_between(grid, bands[k][0], bands[k][1], color=colors[k], alpha=0.2,
                            label="interval")
        if pts is not None:
            ax.scatter(pts_C, pts[k], color=colors[k], edgecolor="k", zorder=3, s=20)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(C_LABEL)
        ax.set_ylabel(units[k] if len(axes) > 1 else "N_opt [params], D_opt [tokens]")
        ax.set_title(title)
        ax.legend(fontsize="small")
    return ax_or_axes


def plot_residuals(ax: Axes, data: Data, fit: FitResult) -> Axes:
    """Log residuals (log L_obs - log L_fit) against compute, coloured by model size (against
    a one-variable law's input when the data have no C)."""
    if "C" in data.absent:
        ax.scatter(data.column(fit.x), fit.residuals, s=14)
    else:
        sc = ax.scatter(data.C, fit.residuals, c=np.log10(data.N), s=14, cmap="viridis")
        ax.figure.colorbar(sc, ax=ax, label="log10 N [params]")
    ax.axhline(0.0, color="k", lw=0.8)
    for s in (fit.delta, -fit.delta):
        ax.axhline(s, color="gray", lw=0.6, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel(X_LABELS[fit.x] if "C" in data.absent else C_LABEL)
    ax.set_ylabel("residual log L_obs - log L_fit [log nats]")
    ax.set_title(f"Residuals of the {fit.law} fit (RMSE {fit.rmse_log:.4f})")
    return ax


def plot_predicted_vs_actual(
    ax: Axes, data: Data, fit: FitResult, holdout: HoldoutResult | None = None
) -> Axes:
    """Predicted against actual loss for the fitted runs, and held-out runs if given."""
    pred = fit.predict_data(data)
    ax.scatter(data.loss, pred, s=14, alpha=0.7, label="fitted runs")
    allv = [data.loss, pred]
    if holdout is not None:
        ax.scatter(holdout.actual, holdout.predicted, s=40, marker="D", color="tab:red",
                   label=f"held out ({_held(holdout)}; max |rel err| "
                         f"{holdout.max_abs_rel_error:.2%})")
        allv += [holdout.actual, holdout.predicted]
    lo = min(float(np.min(v)) for v in allv)
    hi = max(float(np.max(v)) for v in allv)
    ax.plot([lo, hi], [lo, hi], color="k", lw=0.8, label="y = x")
    ax.set_xlabel(f"actual {LOSS_LABEL}")
    ax.set_ylabel(f"predicted {LOSS_LABEL}")
    ax.set_title(f"Predicted against actual loss ({fit.law})")
    ax.legend(fontsize="small")
    return ax


def _held(h: HoldoutResult) -> str:
    if h.by == "budget":
        return f"all {h.n_held} runs of the {h.k} largest budget(s)"
    return f"{h.k} largest by {h.by}"


def plot_tune(ax: Axes, tune: dict) -> Axes:
    """The tune phase's sweep: each seed's loss and the seed means against LR (log axis), the
    parabola fitted around the minimum, and the chosen LR."""
    lrs = np.asarray(tune["lrs"], dtype=float)
    for lr, losses in zip(lrs, tune["losses"]):
        finite = [v for v in losses if v is not None and np.isfinite(v)]
        ax.scatter([lr] * len(finite), finite, s=12, color="0.6", zorder=2)
    mean = np.array([np.nan if m is None else m for m in tune["mean"]], dtype=float)
    ax.plot(lrs, mean, "o-", color="C0", label="seed mean", zorder=3)
    if tune.get("coef"):
        a, b, c = tune["coef"]
        win = lrs[tune["window"]]
        x = np.linspace(np.log(win.min()), np.log(win.max()), 100)
        ax.plot(np.exp(x), a + b * x + c * x**2, "--", color="C1", label="parabola in log LR")
    ax.axvline(tune["best_lr"], color="C3", lw=1, label=f"chosen LR {tune['best_lr']:.3g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (base shape)")
    ax.set_ylabel("final loss [nats]")
    ax.set_title("tune phase: LR sweep at the muP base shape")
    ax.legend(fontsize=8)
    return ax
