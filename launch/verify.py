"""A study's verification run: planned from the fitted law, predicted, then trained.

    run = plan_verify(spec, study_dir, analysis).runs[0]   # N_opt at multiple x the largest budget
    prediction, written = predict_verify(spec, analysis, plan)   # STUDY/verify/prediction.json

The compute is C_verify = study.verify.compute_multiple x the study's largest budget (its largest
run's compute for a size ladder). The size is the parametric law's compute-optimal N at C_verify on
the study's own FLOP scale (`scaling.analysis.fit.compute_optimal` with the study's f(N)), snapped
to the family's ladder as any size of the study is; D = C_verify / f(N), rounded to whole steps.
It trains with the study's hyperparameter rules (the tuned LR under muP) and its first seed, in
STUDY/verify/runs/. The prediction is written before the run is launched, by
`scaling.analysis.verify`, which keeps it once written.

Torch-free, like all of launch/.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

from scaling.contracts import Plan
from scaling.errors import ConfigError
from scaling.launch.config import BudgetsConfig, SizesConfig, StudySpec, TuneConfig, VerifyConfig


def largest_budget(plan: Plan) -> float:
    budgets = [r.budget_flops for r in plan.runs if r.budget_flops]
    return float(max(budgets)) if budgets else float(max(r.C for r in plan.runs))


def plan_verify(spec: StudySpec, study_dir: str, analysis: Any, study_plan: Plan) -> Plan:
    """The verification run's plan in STUDY/verify/ (one run). `spec` is the study as its runs were
    planned (with the tuned LR), `analysis` its fitted StudyAnalysis."""
    from scaling.analysis.fit import compute_optimal
    from scaling.launch.plan import make_plan

    if analysis.fit is None:
        raise ConfigError(
            f"study.verify: the study's law could not be fitted from its {len(analysis.data.N)} completed run(s) "
            f"({'; '.join(analysis.problems)}); a prediction needs 6 or more completed runs (the law's 5 parameters "
            f"+ 1; 3 or more budgets for approach 2 beside it)"
        )
    c_verify = spec.verify.compute_multiple * largest_budget(study_plan)
    opt = compute_optimal(analysis.fit, [c_verify], flops=analysis.flops)
    n_opt = float(opt["N_opt"][0])
    where = os.path.join(study_dir, "verify")
    verify = replace(
        spec, name=f"{spec.name}-verify", dir=where, tune=TuneConfig(), verify=VerifyConfig(), seeds=spec.seeds[:1],
        sizes=replace(spec.sizes, targets=[n_opt], ladder=None, shapes=[],
                      ladder_rule=study_plan.ladder_rule),
        budgets=BudgetsConfig(flops=[c_verify], flop_tolerance=spec.budgets.flop_tolerance,
                              min_steps=spec.budgets.min_steps, max_epochs=spec.budgets.max_epochs),
    )  # fmt: skip
    try:
        plan = make_plan(verify, where)
    except ConfigError as e:
        raise ConfigError([f"study.verify: the verification run (N_opt = {n_opt:.3g} at C = {c_verify:.3g} FLOPs) "
                           f"does not plan: {p}" for p in e.problems]) from None  # fmt: skip
    plan.notes = [n for n in plan.notes if "an IsoFLOP parabola needs" not in n]  # one run is meant to be alone
    plan.rules = dict(plan.rules, verify=(
        f"N_opt = {n_opt:.4g} at C = {spec.verify.compute_multiple:g} x {largest_budget(study_plan):.3g} FLOPs, "
        f"snapped to the ladder"))  # fmt: skip
    return plan


def predict_verify(spec: StudySpec, analysis: Any, study_plan: Plan, verify_plan: Plan) -> tuple[dict, bool]:
    """Write STUDY/verify/prediction.json for the planned run unless a prediction from the same data
    exists. Returns (the prediction in force, whether it was written now)."""
    from scaling.analysis.errors import AnalysisError
    from scaling.analysis.verify import make_prediction, record_prediction

    try:
        doc = make_prediction(analysis, verify_plan.runs[0], spec.verify.compute_multiple, largest_budget(study_plan))
    except AnalysisError as e:
        raise ConfigError(str(e)) from None
    return record_prediction(study_plan.dir, doc)
