"""A study's tune phase: an LR sweep at the muP base shape, whose best LR every run then gets.

    spec.tune = TuneConfig(lrs=[...])           # conf/study/NAME.yaml: tune: {lrs: [...]}
    tune = plan_tune(spec, study_dir)           # the sweep's runs, under STUDY/tune/runs/
    result = tune_result(tune)                  # None until every sweep run has ended
    main = tuned_spec(spec, tune, result)       # the study with its LR set and muP based on the shape

The sweep's runs are ordinary run directories with their own plan.json, so they are launched,
resumed, skipped when complete and followed exactly like the study's runs. Their base shape is
`study.tune.shape`, or the study's smallest model; every run of the study then trains under muP
relative to that shape (`model.mup.base_width`, `base_depth` and, for attention, `base_head_dim`)
at the sweep's best LR, which muP scales per layer for its width and depth. The best LR is read
off by the rule in `scaling.analysis.tune` and recorded in STUDY/tune/tune.json.

Torch-free, like all of launch/.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

from scaling.analysis.tune import TUNE_DIR
from scaling.contracts import Plan, RunStatus, result_if_readable
from scaling.errors import ConfigError
from scaling.families import get as get_family
from scaling.launch.config import BudgetsConfig, PowerLaw, RulesConfig, SizesConfig, StudySpec, TuneConfig, VerifyConfig

_MUP_KEYS = ("model.mup.base_width", "model.mup.base_depth", "model.mup.base_head_dim")
# Stand-ins for the base shape while the shapes are planned (a shape does not depend on it).
_PLACEHOLDER = ["model.mup.base_width=1", "model.mup.base_depth=1"]
_DIVERGED = re.compile(r"loss is -?(nan|inf)", re.IGNORECASE)


def diverged(status: Any, error: Optional[str]) -> bool:
    """Whether a failed run stopped on a non-finite loss (the trainer's NonFiniteLoss), as opposed
    to failing for another reason: a sweep counts the first as worse than any finished run."""
    return status == RunStatus.FAILED and bool(_DIVERGED.search(error or ""))  # a str enum: "failed" too


def tune_dir(study_dir: str) -> str:
    return str(Path(study_dir) / TUNE_DIR)


def _typical_tokens_per_param(spec: StudySpec) -> float:
    if spec.tune.tokens_per_param is not None:
        return spec.tune.tokens_per_param
    if spec.kind == "isoflop":
        return spec.sizes.center_tokens_per_param
    m = spec.budgets.tokens_per_param
    return math.exp(sum(math.log(x) for x in m) / len(m))


def _check_parametrization(spec: StudySpec) -> None:
    from scaling.config import to_dataclass
    from scaling.launch.plan import compose_train

    problems = [
        f"study.overrides has {o!r}, but study.tune sets the muP base shape from study.tune.shape; drop it "
        f"(or drop study.tune and set the LR rule yourself)"
        for o in spec.overrides if o.split("=", 1)[0].lstrip("+~") in _MUP_KEYS
    ]  # fmt: skip
    base = to_dataclass(compose_train([f"model={spec.model}", f"data={spec.data}", *spec.overrides, *_PLACEHOLDER,
                                       "train.tokens=1", "train.flops=null"]))  # fmt: skip
    if getattr(base.model, "parametrization", "sp") != "mup":
        problems.append(
            f"study.tune sweeps the LR at one base shape, which carries over to the study's other widths and "
            f"depths only under muP, but the study's models use parametrization "
            f"{getattr(base.model, 'parametrization', 'sp')!r}; add 'model.parametrization=mup' to study.overrides"
        )
    if problems:
        raise ConfigError(problems)


def base_shape(spec: StudySpec, study_dir: str) -> dict[str, Any]:
    """The sweep's shape: study.tune.shape, or the study's smallest model with the study's smallest
    width and depth. Raises ConfigError when the shape is wider or deeper than any of its models."""
    from scaling.launch.plan import make_plan

    family = get_family(spec.family)
    untuned = replace(spec, tune=TuneConfig(), verify=VerifyConfig(), overrides=[*spec.overrides, *_PLACEHOLDER])
    runs = make_plan(untuned, study_dir).runs
    if family.width_field is None:
        raise ConfigError(f"study.tune: family {spec.family!r} declares no width for muP, so an LR tuned at one "
                          f"shape does not carry over; drop study.tune")  # fmt: skip
    smallest = min(runs, key=lambda r: (r.N, r.D))
    shape = dict(spec.tune.shape)
    if not shape:
        # The smallest model, narrowed and made shallower where another run is narrower or
        # shallower still (a ladder's smallest model need not be its shallowest).
        shape = dict(smallest.shape)
        for fld in (family.width_field, family.depth_field):
            shape[fld] = min(int(r.shape[fld]) for r in runs if r.shape.get(fld) is not None)
    problems = []
    for fld in (family.width_field, family.depth_field):
        if fld not in shape:
            problems.append(f"study.tune.shape={shape} lacks {fld}; give the base shape's {family.width_field} and "
                            f"{family.depth_field}, or leave study.tune.shape empty for the study's smallest model")
            continue
        low = min(int(r.shape[fld]) for r in runs if r.shape.get(fld) is not None)
        if int(shape[fld]) > low:
            problems.append(
                f"study.tune.shape has {fld}={shape[fld]}, larger than the study's smallest model ({fld}={low}); muP "
                f"transfers an LR tuned at a small base shape up to larger ones, so pick a base shape no larger than "
                f"the smallest model, or leave study.tune.shape empty to use it"
            )
    if problems:
        raise ConfigError(problems)
    return shape


def mup_overrides(spec: StudySpec, shape: dict[str, Any]) -> list[str]:
    """The trainer overrides that make `shape` every run's muP base shape."""
    family = get_family(spec.family)
    out = [f"model.mup.base_width={int(shape[family.width_field])}",
           f"model.mup.base_depth={int(shape[family.depth_field])}"]  # fmt: skip
    if family.head_dim is not None:
        out.append(f"model.mup.base_head_dim={family.head_dim(shape)}")
    return out


def plan_tune(spec: StudySpec, study_dir: str) -> Plan:
    """The sweep's plan: the base shape at each LR of study.tune.lrs and each of its seeds, on the
    study's typical tokens per parameter, in STUDY/tune/."""
    from scaling.launch.plan import make_plan

    _check_parametrization(spec)
    shape = base_shape(spec, study_dir)
    where = tune_dir(study_dir)
    tokens_per_param = _typical_tokens_per_param(spec)
    runs, notes = [], []
    plan = None
    for lr in sorted(spec.tune.lrs):
        sweep = replace(
            spec, name=f"{spec.name}-tune", dir=where, tune=TuneConfig(), verify=VerifyConfig(), seeds=list(spec.tune.seeds),
            overrides=[*spec.overrides, *mup_overrides(spec, shape)],
            sizes=SizesConfig(shapes=[shape], count=spec.sizes.count, ladder_rule=spec.sizes.ladder_rule),
            budgets=BudgetsConfig(tokens_per_param=[tokens_per_param], min_steps=spec.budgets.min_steps,
                                  max_epochs=spec.budgets.max_epochs),
            rules=RulesConfig(lr=PowerLaw(coef=float(lr), exponent=0.0), batch_tokens=spec.rules.batch_tokens),
        )  # fmt: skip
        plan = make_plan(sweep, where)
        runs += plan.runs
        notes = notes or [f"{n} (the same at each of the sweep's {len(spec.tune.lrs)} LRs)" for n in plan.notes]
    assert plan is not None
    lrs = ", ".join(f"{lr:.3g}" for lr in sorted(spec.tune.lrs))
    rules = dict(plan.rules, lr=f"sweep over [{lrs}] at the base shape {shape}, {tokens_per_param:g} tokens per parameter")
    return replace(plan, kind="tune", runs=runs, rules=rules, notes=notes)


def sweep_losses(tune: Plan) -> Optional[dict[float, list[float]]]:
    """Each LR's seed losses (inf for a run that diverged), or None while a run has not ended or
    failed for another reason."""
    out: dict[float, list[float]] = {}
    for r in tune.runs:
        res = result_if_readable(r.dir)
        if res is None:
            return None
        if res.status is RunStatus.COMPLETED:
            loss = res.loss if res.loss is not None else math.inf
        elif diverged(res.status, res.error):
            loss = math.inf
        else:
            return None
        out.setdefault(r.lr, []).append(loss)
    return out


def tune_result(tune: Plan) -> Any:
    """The sweep's TuneResult (scaling.analysis.tune), or None while it is unfinished. Raises
    ConfigError, naming study.tune.lrs and the fix, when its minimum is on the grid's edge."""
    from scaling.analysis.tune import TuneError, best_lr

    losses = sweep_losses(tune)
    if losses is None:
        return None
    lrs = sorted(losses)
    try:
        return best_lr(lrs, [losses[lr] for lr in lrs], key="study.tune.lrs")
    except TuneError as e:
        raise ConfigError(str(e)) from None


def write_tune(study_dir: str, tune: Plan, result: Any, shape: dict[str, Any]) -> Path:
    """STUDY/tune/tune.json: the sweep, the rule's curve and the chosen LR (scaling.analysis.tune)."""
    from scaling.analysis.tune import write_tune as write_record

    return write_record(study_dir, result, shape, {r.id: r.lr for r in tune.runs})


def tuned_spec(spec: StudySpec, shape: dict[str, Any], lr: float) -> StudySpec:
    """The study with every run at `lr` under muP relative to `shape`."""
    return replace(spec, overrides=[*spec.overrides, *mup_overrides(spec, shape)],
                   rules=replace(spec.rules, lr=PowerLaw(coef=lr, exponent=0.0)))  # fmt: skip


def planned_spec(spec: StudySpec, study_dir: Optional[str] = None) -> StudySpec:
    """The study as its runs are planned: without a tune phase, `spec`; with one, every run at the
    sweep's best LR under muP relative to the sweep's shape, or at the grid's middle LR while the
    sweep has not finished (as a dry run shows it). `make_plan` of the result plans the study's runs."""
    if not spec.tune.enabled:
        return spec
    tune = plan_tune(spec, study_dir or spec.dir)
    return tuned_spec(spec, tune.runs[0].shape, study_lr(spec, tune_result(tune)))


def study_lr(spec: StudySpec, result: Any) -> float:
    """The LR the study's runs get: the sweep's best (`result`), or the grid's middle LR while the
    sweep has not finished (a dry run's provisional plan)."""
    return result.best_lr if result is not None else sorted(spec.tune.lrs)[len(spec.tune.lrs) // 2]


def lr_rule_text(shape: dict[str, Any], lr: float) -> str:
    return (f"{lr:.4g} at the base shape {shape}, tuned by the study's sweep (tune/tune.json); muP scales it "
            f"per layer for each run's width and depth")
