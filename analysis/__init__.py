"""Fit scaling laws to training runs. Imports neither torch nor deepspeed, so it runs on a
laptop or a login node.

Modules, and the entry points other code calls:

- :mod:`analysis.laws`: the laws as pure functions, docstring = formula with units:
  ``power_law``, ``kaplan_n``, ``kaplan_d``, ``kaplan_nd``, ``chinchilla``,
  ``broken_power_law``, plus ``chinchilla_optimal`` and ``compute_flops``.
- :mod:`analysis.fit`: ``fit_law(data, law, delta, grid) -> FitResult`` (Huber on log loss,
  L-BFGS from a grid of starts, batched), ``bootstrap(data, fit, n_resamples, seed) ->
  BootstrapResult``, ``compute_optimal(fit_or_params, C, boot) -> dict``.
- :mod:`analysis.constraints`: ``Constraints(fix, tie, bounds)``, the fixed, tied and bounded
  parameters that ``fit_law(..., fix=, tie=, bounds=)`` applies to any law.
- :mod:`analysis.nested`: ``compare_nested(constrained, unconstrained) -> NestedComparison``,
  a likelihood-ratio-type test of the constraints for Huber fits.
- :mod:`analysis.isoflop`: ``isoflop_profiles(data, tolerance) -> IsoFLOPResult`` (approach 2)
  and ``training_envelope(curves) -> EnvelopeResult`` (approach 1).
- :mod:`analysis.extrapolate`: ``holdout_check(data, k, by, law) -> HoldoutResult``.
- :mod:`analysis.io`: ``load_csv``, ``load_runs``, ``load_curves``, ``write_json_atomic``.
- :mod:`analysis.plots`: ``plot_loss_vs_compute``, ``plot_isoflop``, ``plot_optimal``,
  ``plot_residuals``, ``plot_predicted_vs_actual``; each draws on an Axes and returns it.
- :mod:`analysis.report`: ``fit_to_json`` / ``isoflop_to_json`` (the ``fit.json`` schema) and
  the printed tables.
- :mod:`analysis.cli`: the ``scaling-fit`` command, the only place that writes files.
- :mod:`analysis.diagnostics`, :mod:`analysis.errors`: named warnings and input errors.
- :mod:`analysis.forms`, :mod:`analysis.optim`: the log-space laws with gradients, and the
  batched L-BFGS they are minimised with.
"""

from analysis.data import Data
from analysis.errors import AnalysisError, DataError, TooFewPointsError

__all__ = ["Data", "AnalysisError", "DataError", "TooFewPointsError"]
