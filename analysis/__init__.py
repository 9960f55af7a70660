"""Fit scaling laws to training runs. Imports neither torch nor deepspeed, so it runs on a
laptop or a login node.

Modules, and the entry points other code calls:

- :mod:`scaling.analysis.laws`: the laws as pure functions, docstring = formula with units:
  ``power_law``, ``kaplan_n``, ``kaplan_d``, ``kaplan_nd``, ``chinchilla``,
  ``broken_power_law``, plus ``chinchilla_optimal`` and ``compute_flops``.
- :mod:`scaling.analysis.fit`: ``fit_law(data, law, delta, grid) -> FitResult`` (Huber on log loss,
  L-BFGS from a grid of starts, batched), ``bootstrap(data, fit, n_resamples, seed) ->
  BootstrapResult`` (over independent units: ``Data.unit``, or every run its own),
  ``compute_optimal(fit_or_params, C, boot, flops=) -> dict``.
- :mod:`scaling.analysis.flops`: ``FlopsPerToken`` (the study's FLOPs per token f(N), read from
  the runs' C / D) and ``allocate`` (N_opt = argmin_N L(N, C / f(N)), solved numerically).
- :mod:`scaling.analysis.predict`: ``predict_run(N, D, fit=, boot=, iso=) -> {approach:
  RunPrediction}`` (a 95% prediction interval for one new run by approaches 3 and 2) and
  ``compare_approaches(fit, boot, iso, envelope) -> dict`` (a, b of approaches 1-3 side by side).
- :mod:`scaling.analysis.constraints`: ``Constraints(fix, tie, bounds)``, the fixed, tied and bounded
  parameters that ``fit_law(..., fix=, tie=, bounds=)`` applies to any law.
- :mod:`scaling.analysis.nested`: ``compare_nested(constrained, unconstrained) -> NestedComparison``,
  a likelihood-ratio-type test of the constraints for Huber fits.
- :mod:`scaling.analysis.isoflop`: ``isoflop_profiles(data, tolerance) -> IsoFLOPResult`` (approach 2)
  and ``training_envelope(curves) -> EnvelopeResult`` (approach 1).
- :mod:`scaling.analysis.extrapolate`: ``holdout_check(data, k, by, law) -> HoldoutResult``
  (``by="budget"``: every run of the k largest budgets).
- :mod:`scaling.analysis.io`: ``load_csv``, ``load_runs``, ``load_curves``, ``write_json_atomic``.
- :mod:`scaling.analysis.plots`: ``plot_loss_vs_compute``, ``plot_isoflop``, ``plot_optimal``,
  ``plot_residuals``, ``plot_predicted_vs_actual``; each draws on an Axes and returns it.
- :mod:`scaling.analysis.report`: ``fit_to_json`` / ``isoflop_to_json`` (the ``fit.json`` schema) and
  the printed tables.
- :mod:`scaling.analysis.cli`: the ``scaling-fit`` command, the only place that writes files.
- :mod:`scaling.analysis.diagnostics`, :mod:`scaling.analysis.errors`: named warnings and input errors.
- :mod:`scaling.analysis.forms`, :mod:`scaling.analysis.optim`: the Huber objective on log loss
  and its gradient, and the batched L-BFGS it is minimised with (each law's log form and
  gradient live with the law, in :mod:`scaling.analysis.laws`).
"""

if __name__ != "scaling.analysis":
    # Run from the repository root, `import analysis` would find this folder as a second, top-level
    # copy of the package, with its own module state. Only the installed name is allowed.
    raise ImportError(f"{__name__!r} is the analysis/ folder imported by its path; it is installed as "
                      "scaling.analysis: import scaling.analysis (pip install -e . if it is missing)")


from scaling.analysis.data import Data
from scaling.analysis.errors import AnalysisError, DataError, TooFewPointsError

__all__ = ["Data", "AnalysisError", "DataError", "TooFewPointsError"]
