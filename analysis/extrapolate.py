"""Does the law extrapolate? Fit on the smaller runs, predict the largest ones.

Following Alabdulmohsin et al. (2022), a law is judged by its error on runs larger than any
it was fitted on, not by its in-sample residuals.

Two ways to choose the held-out runs:

- ``by="budget"``: every run of the largest compute budget(s). This is the real test: the
  refitted law has seen no run at that compute, so it must extrapolate in C. Holding out one
  run instead leaves its budget's other runs in the fit, on both sides of it in N, and the
  check is nearly an interpolation.
- ``by="C"``, ``"N"`` or ``"D"``: the ``k`` largest runs by that column (the older check,
  kept for data without budgets, such as a one-variable law's).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scaling.analysis.data import Data
from scaling.analysis.errors import AnalysisError, DataError
from scaling.analysis.fit import FitResult, fit_law
from scaling.analysis.isoflop import group_budgets

BY = ("budget", "C", "N", "D")
MIN_BUDGETS_LEFT = 2  # a law fitted on one budget has seen no variation in C at all


@dataclass(frozen=True, eq=False)
class HoldoutResult:
    """Predicted against actual loss [nats] on the held-out runs.

    rel_error = (predicted - actual) / actual, per held-out run; ``fit`` is the fit on the
    remaining runs. With ``by="budget"``, ``k`` counts budgets and ``budgets`` lists the
    held-out ones [FLOPs]; ``budgets_fitted`` counts those left to fit.
    """

    law: str
    by: str
    k: int
    fit: FitResult
    run_id: tuple[str, ...]
    N: np.ndarray
    D: np.ndarray
    C: np.ndarray
    actual: np.ndarray
    predicted: np.ndarray
    rel_error: np.ndarray
    budgets: tuple[float, ...] = ()
    budgets_fitted: int = 0

    @property
    def n_held(self) -> int:
        return len(self.run_id)

    @property
    def max_abs_rel_error(self) -> float:
        return float(np.max(np.abs(self.rel_error)))

    def to_json(self) -> dict:
        out = {
            "law": self.law, "by": self.by, "k": self.k, "n_held": self.n_held,
            "max_abs_rel_error": self.max_abs_rel_error,
            "runs": [
                {"run_id": r, "N": float(n), "D": float(d), "C": float(c),
                 "actual": float(a), "predicted": float(p), "rel_error": float(e)}
                for r, n, d, c, a, p, e in zip(self.run_id, self.N, self.D, self.C,
                                               self.actual, self.predicted, self.rel_error)
            ],
        }
        if self.by == "budget":
            out["budgets"] = [float(b) for b in self.budgets]
            out["budgets_fitted"] = self.budgets_fitted
        return out


def holdout_check(
    data: Data, k: int = 1, by: str = "C", law: str = "chinchilla", *,
    tolerance: float = 0.25, **fit_kwargs
) -> HoldoutResult:
    """Hold out runs, fit ``law`` on the rest and report relative errors of the predicted
    loss on every held-out run.

    by="budget": hold out every run of the ``k`` largest compute budgets (grouped as the
    IsoFLOP analysis groups them: the planner's ``budget`` column, else C within a factor
    ``1 + tolerance``); at least :data:`MIN_BUDGETS_LEFT` budgets must remain to fit.
    by="C", "N" or "D": hold out the ``k`` largest runs by that column.
    Extra keyword arguments go to :func:`scaling.analysis.fit.fit_law`.
    """
    if by not in BY:
        raise AnalysisError(f"by={by!r}; hold out the largest budget ('budget') or the "
                            f"largest runs by 'C', 'N' or 'D'")
    budgets: tuple[float, ...] = ()
    n_fitted = 0
    if by == "budget":
        if "C" in data.absent:
            raise DataError(f"{data.source or 'the data'} has no C column, so runs cannot be "
                            f"grouped by budget; hold out by 'N' or 'D'")
        groups = group_budgets(data, tolerance)
        if not (isinstance(k, (int, np.integer)) and k >= 1):
            raise AnalysisError(f"k={k} must be an integer >= 1 (budgets to hold out)")
        n_fitted = len(groups) - k
        if n_fitted < MIN_BUDGETS_LEFT:
            raise DataError(
                f"holding out the {k} largest budget(s) of {len(groups)} leaves {max(n_fitted, 0)} "
                f"to fit; the whole-budget holdout needs at least {MIN_BUDGETS_LEFT} budgets "
                f"left, so at least {k + MIN_BUDGETS_LEFT} budgets in all. Run more budgets, "
                f"or hold out the largest runs by C instead")
        held = np.sort(np.concatenate(groups[-k:]))
        train = np.sort(np.concatenate(groups[:-k]))
        key = np.where(np.isfinite(data.budget), data.budget, data.C)
        budgets = tuple(float(np.exp(np.log(key[g]).mean())) for g in groups[-k:])
    else:
        if not (isinstance(k, (int, np.integer)) and 1 <= k < len(data)):
            raise AnalysisError(f"k={k} must be an integer in [1, {len(data) - 1}]")
        order = np.argsort(data.column(by), kind="stable")
        held = np.sort(order[-k:])
        train = np.sort(order[:-k])
    fit = fit_law(data.subset(train), law=law, **fit_kwargs)
    test = data.subset(held)
    pred = fit.predict_data(test)
    return HoldoutResult(
        law=law, by=by, k=k, fit=fit, run_id=test.run_id, N=test.N, D=test.D, C=test.C,
        actual=test.loss, predicted=pred, rel_error=(pred - test.loss) / test.loss,
        budgets=budgets, budgets_fitted=n_fitted,
    )
