"""Does the law extrapolate? Fit on the smaller runs, predict the largest ones.

Following Alabdulmohsin et al. (2022), a law is judged by its error on runs larger than any
it was fitted on, not by its in-sample residuals.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scaling.analysis.data import Data
from scaling.analysis.errors import AnalysisError
from scaling.analysis.fit import FitResult, fit_law


@dataclass(frozen=True, eq=False)
class HoldoutResult:
    """Predicted against actual loss [nats] on the held-out runs.

    rel_error = (predicted - actual) / actual, per held-out run; ``fit`` is the fit on the
    remaining runs.
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

    @property
    def max_abs_rel_error(self) -> float:
        return float(np.max(np.abs(self.rel_error)))

    def to_json(self) -> dict:
        return {
            "law": self.law, "by": self.by, "k": self.k,
            "max_abs_rel_error": self.max_abs_rel_error,
            "runs": [
                {"run_id": r, "N": float(n), "D": float(d), "C": float(c),
                 "actual": float(a), "predicted": float(p), "rel_error": float(e)}
                for r, n, d, c, a, p, e in zip(self.run_id, self.N, self.D, self.C,
                                               self.actual, self.predicted, self.rel_error)
            ],
        }


def holdout_check(
    data: Data, k: int = 1, by: str = "C", law: str = "chinchilla", **fit_kwargs
) -> HoldoutResult:
    """Hold out the ``k`` largest runs by ``by`` ("C", "N" or "D"), fit ``law`` on the rest and
    report relative errors of the predicted loss on the held-out runs.

    Extra keyword arguments go to :func:`scaling.analysis.fit.fit_law`.
    """
    if by not in ("C", "N", "D"):
        raise AnalysisError(f"by={by!r}; hold out the largest runs by 'C', 'N' or 'D'")
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
    )
