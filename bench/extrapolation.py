"""Learning-curve extrapolation: fit each one-variable law on the first 60% of a curve and
score the RMSE of log loss on the rest.

    python bench/extrapolation.py                       # synthetic families
    python bench/extrapolation.py --runs studies/const  # also curves of constant-LR runs

Curves are logged at evenly spaced steps, as a trainer logs them, so the last 40% of the steps
is what a user predicts from the first 60%. Families:

- power law with offset: L = E + A t^-a;
- broken power law: L = E + A t^-a0 (1 + t/t_b)^-(a1), the break inside the fitted part;
- saturating: L = E + A (1 + t/t_0)^-a (flat at the start, a power law later);
- runs (with ``--runs``): training curves from metrics.jsonl of runs trained at a constant
  learning rate. A cosine schedule's tail falls because the LR decays, which would measure
  the schedule, not the law, so only constant-LR runs belong here.

Each law is compared with two baselines: a straight line in log-log, and a power law with an
offset fitted by plain least squares on log(L - E) (E by a grid search below the lowest loss).
Goal: the project's laws do at least as well as both baselines on every family.

The laws are fitted with ``delta="auto"``: Huber's threshold at 1.345 times the curve's own
noise scale (Huber's constant, 95% of least squares' efficiency under Gaussian noise). The
fit's default, 1e-3, suits the final losses of runs (Hoffmann et al., Epoch); on a curve whose
per-step noise is several times larger it turns the fit into a median regression, which
extrapolates worse (``--delta 1e-3`` shows it). The rule is fixed in advance, not searched.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scaling.analysis.data import Data  # noqa: E402
from scaling.analysis.errors import AnalysisError  # noqa: E402
from scaling.analysis.fit import fit_law  # noqa: E402
from scaling.analysis.laws import LAWS as ALL_LAWS  # noqa: E402

# Every law in one variable that can take tokens D as its x.
LAWS = tuple(name for name, law in ALL_LAWS.items() if "D" in law.x_choices)
BASELINES = ("loglog_line", "offset_lstsq")
FIT_FRACTION = 0.6


def _families(rng: np.random.Generator, n_curves: int):
    t = np.linspace(1e8, 2e10, 120)  # tokens at evenly spaced logging steps
    for _ in range(n_curves):
        E, A, a = rng.uniform(1.5, 2.5), rng.uniform(50, 500), rng.uniform(0.15, 0.35)
        yield "power_offset", t, E + A * t**-a
        tb = rng.uniform(1e9, 5e9)
        a1 = rng.uniform(0.1, 0.3)
        yield "broken", t, E + A * t**-a * (1 + t / tb) ** -a1
        t0 = rng.uniform(5e8, 3e9)
        yield "saturating", t, E + rng.uniform(2, 6) * (1 + t / t0) ** -rng.uniform(0.3, 0.8)


def _run_curves(folder: str):
    from scaling.analysis.io import load_curves

    for c in load_curves(folder):
        if len(c.tokens) >= 10:
            yield "runs", c.tokens, c.loss


def _loglog_line(x, y, xt):
    slope, icpt = np.polyfit(np.log(x), np.log(y), 1)
    return np.exp(icpt + slope * np.log(xt))


def _offset_lstsq(x, y, xt):
    best = (np.inf, None)
    for E in y.min() * np.linspace(0.0, 0.999, 200):
        slope, icpt = np.polyfit(np.log(x), np.log(y - E), 1)
        pred = E + np.exp(icpt + slope * np.log(x))
        err = float(np.mean((np.log(y) - np.log(pred)) ** 2))
        if err < best[0]:
            best = (err, (E, slope, icpt))
    E, slope, icpt = best[1]
    return E + np.exp(icpt + slope * np.log(xt))


def _law(law: str, delta: float):
    def predict(x, y, xt):
        fit = fit_law(Data.from_arrays(None, x, y), law, x="D", delta=delta)
        return fit.predict(D=xt)
    return predict


def score(family_curves, methods) -> dict[str, dict[str, list[float]]]:
    """family -> method -> RMSE of log loss on the held-out 40% of each curve."""
    out: dict[str, dict[str, list[float]]] = {}
    for family, t, loss in family_curves:
        k = int(round(FIT_FRACTION * t.size))
        for name, fn in methods.items():
            try:
                pred = fn(t[:k], loss[:k], t[k:])
                err = float(np.sqrt(np.mean((np.log(loss[k:]) - np.log(pred)) ** 2)))
            except (AnalysisError, ValueError, np.linalg.LinAlgError, FloatingPointError):
                err = float("nan")
            out.setdefault(family, {}).setdefault(name, []).append(err)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--curves", type=int, default=12, help="synthetic curves per family")
    p.add_argument("--sigma", type=float, default=0.003, help="noise of log loss per point")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--delta", default="auto",
                   help="Huber delta of the laws' fits: 'auto' (default: 1.345 times the noise "
                        "scale of a first fit) or a number (1e-3 is the fit's default for final "
                        "losses of runs)")
    p.add_argument("--runs", help="a folder of runs trained at a constant learning rate")
    args = p.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    curves = [(f, t, y * np.exp(rng.normal(0, args.sigma, y.size)))
              for f, t, y in _families(rng, args.curves)]
    if args.runs:
        curves += list(_run_curves(args.runs))
    delta = args.delta if args.delta == "auto" else float(args.delta)
    methods = {law: _law(law, delta) for law in LAWS}
    methods.update(loglog_line=_loglog_line, offset_lstsq=_offset_lstsq)
    with np.errstate(all="ignore"):
        table = score(curves, methods)
    names = list(methods)
    print(f"RMSE of log loss on the last {1 - FIT_FRACTION:.0%} of each curve (median over "
          f"curves; fit on the first {FIT_FRACTION:.0%})")
    print(f"{'family':<14}{'n':>3}" + "".join(f"{m:>18}" for m in names) + "   goal")
    ok_all = True
    for family, row in table.items():
        med = {m: float(np.nanmedian(v)) for m, v in row.items()}
        best_law = min(med[m] for m in LAWS)
        best_base = min(med[b] for b in BASELINES)
        ok = best_law <= best_base * 1.0001
        ok_all &= ok
        print(f"{family:<14}{len(row[names[0]]):>3}" + "".join(f"{med[m]:>18.5f}" for m in names)
              + f"   {'met' if ok else 'NOT met'} (best law {best_law:.5f}, "
              f"{best_law / best_base - 1:+.1%} against the best baseline)")
    print("goal (a law at least as good as both baselines on every family): "
          + ("met" if ok_all else "NOT met"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
