"""The planner: a study spec in, a list of printable run specs out.

    plan = make_plan(spec)            # validates everything; nothing is launched
    print(format_plan(plan))          # the table a dry run prints
    write_plan(plan, study_dir)       # study_dir/plan.json, read back by read_plan

Sizes. A size is a target parameter count (`sizes.targets` or `sizes.ladder`, turned into a shape
by `scaling.ladder.shape_for_params`) or an explicit shape (`sizes.shapes`). N is the count the
study names in `sizes.count` (non-embedding by default), computed from the shape.

Budgets. A size ladder trains every size on D = m N tokens for each multiplier m. An IsoFLOP grid
trains, for each compute budget C, several sizes on D = C / f tokens, where f is the training
FLOPs per token of that size under the study's FLOP convention (f = 6 N for `kaplan`). D is then
rounded to whole optimizer steps, so each run's compute C_run = f D differs from its budget by
at most half a step; a run is kept only when |C_run / C - 1| <= `budgets.flop_tolerance` and it
has at least `budgets.min_steps` steps.

Hyperparameters. LR = rules.lr(N) and the global batch = rules.batch_tokens(N) / seq_len
sequences (rounded to a multiple of the processes per run), both power laws of N (OLMo ladder
rules by default).

Run ids. Each run's trainer config is composed with Hydra exactly as `scaling-train` composes it,
resolved, validated and filled with the data's sizes; the id is a readable prefix plus a short
hash of the keys that change what the run computes and differ from the schema's defaults (the rule
is stated and versioned in scaling/runid.py; the trainer records the same hash):
    gpt-N94K-D2.6M-C2.4e12-s0-3f9a1c
So changing anything that affects a run changes its id, relaunching the same spec gives the same
ids (a relaunch or a requeue lands in the same run directory), and a new config key whose default
keeps today's behaviour changes no id. A run planned under rule 1 (before the rule was versioned)
keeps its old id when its directory exists.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Callable, Optional

from scaling.launch.config import StudySpec, parse_count
from scaling.config import TrainAppConfig
from scaling.compose import CONF_DIR, compose_full  # noqa: F401 - CONF_DIR re-exported
from scaling.families import get as get_family
from scaling.errors import ConfigError, raise_if
from scaling.runid import NON_RESULT_KEYS, RUN_ID_RULE, config_hash, legacy_config_hash  # noqa: F401 - re-exported
# plan.json is typed, written and read in scaling/contracts.py (torch- and Hydra-free, for the analysis).
from scaling.contracts import PLAN_FORMAT, PLAN_NAME, Plan, RunSpec, read_plan, write_plan  # noqa: F401 - re-exported
from scaling.contracts import RunStatus, result_if_readable


# Keys the planner sets for every run; a study's `overrides` may not set them.
_PLANNED_KEYS = ("train.tokens", "train.flops", "train.global_batch_size", "train.lr", "train.seed",
                 "train.flops_convention")  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Composing the trainer's config


def compose_train(overrides: list[str]) -> Any:
    """The trainer's config (conf/train.yaml) composed with `overrides`, as `scaling-train` would
    (`scaling.compose.compose_full`), with Hydra's errors as a ConfigError."""
    try:
        return compose_full(overrides)
    except ConfigError:
        raise
    except Exception as e:  # Hydra's errors name the key; keep the message, drop the traceback
        raise ConfigError(f"trainer overrides {overrides}: {e}") from None


def _si(x: float) -> str:
    """1234567 -> 1.2M, 94248 -> 94K: two significant digits, an SI suffix."""
    for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if x >= div:
            v = x / div
            return f"{v:.2g}{suffix}" if v < 100 else f"{v:.0f}{suffix}"
    return f"{x:.2g}"


def _sci(x: float) -> str:
    return f"{x:.1e}".replace("e+", "e").replace("e0", "e")


def run_id(family: str, n: int, d: int, c: float, seed: int, digest: str) -> str:
    return f"{family}-N{_si(n)}-D{_si(d)}-C{_sci(c)}-s{seed}-{digest}"


def _fmt_value(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return repr(float(f"{v:.6g}"))
    return str(v)


# ---------------------------------------------------------------------------------------------
# Data sizes and model shapes


def read_manifest(spec: StudySpec, base: TrainAppConfig) -> Any:
    """The manifest of the study's data (a built-in set is prepared on first use, as the trainer
    would). The planner reads it for the data-dependent sizes and for each run's epochs; a data
    path that cannot be read fails here, before anything is launched, not in every run."""
    from scaling.data import prepare_dataset

    try:
        return prepare_dataset(base.data)
    except Exception as e:
        where = f"study.data={spec.data!r}" + (f" (data.path={base.data.path!r})" if base.data.path else "")
        raise ConfigError(
            f"{where}: cannot read its manifest ({e}); give the study a folder made by scaling-data with "
            f"'study.overrides=[\"data.path=DIR\"]', or pick a built-in set with study.data=NAME"
        ) from None


def data_sizes(spec: StudySpec, base: TrainAppConfig, manifest: Any = None) -> dict[str, int]:
    """The data-dependent model sizes (seq_len and vocab_size, or the image shape): from the spec,
    else from the base model config, else from the dataset's manifest (`read_manifest` unless
    given)."""
    keys = tuple(get_family(spec.family, "study.family").data_fields)
    sizes = {k: getattr(spec, k, None) for k in keys}
    sizes = {k: v if v is not None else getattr(base.model, k, None) for k, v in sizes.items()}
    if any(v is None for v in sizes.values()):
        from scaling.data import apply_manifest

        filled = apply_manifest(base.model, manifest if manifest is not None else read_manifest(spec, base))
        sizes = {k: v if v is not None else getattr(filled, k) for k, v in sizes.items()}
    return {k: int(v) for k, v in sizes.items()}


def _shape_fields(cfg: Any, family: str) -> dict[str, Any]:
    """The model fields a size sets: not the data's, and not how the model is parametrized (the
    parametrization and its base shape come from the study's base model, the same for every run)."""
    skip = {"family", "parametrization", *get_family(family).data_fields}
    return {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name not in skip and not is_dataclass(getattr(cfg, f.name))}


def _model_for_target(spec: StudySpec, target: float, sizes: dict[str, int], base_model: Any, rule: int) -> Any:
    """The family's ladder rung for `target` under ladder rule `rule`, keeping what the rule keeps
    of the base model (tied embeddings, a patch size)."""
    family = get_family(spec.family)
    return family.ladder(parse_count(target), replace(base_model, **sizes), spec.sizes.count, rule)


def ladder_rule(spec: StudySpec, study_dir: str) -> int:
    """The ladder rule to plan with: the spec's when it names one; else the one the folder's
    plan.json records (rule 1 for a plan written before rules were recorded), so a relaunch plans
    the same models; else today's."""
    from scaling.contracts import ContractError, read_plan
    from scaling.ladder import LADDER_RULE

    if spec.sizes.ladder_rule is not None:
        return spec.sizes.ladder_rule
    try:
        existing = read_plan(study_dir)
    except ContractError:  # an unreadable plan is reported where the study reads it
        existing = None
    if existing is None:
        return LADDER_RULE
    return existing.ladder_rule if existing.ladder_rule is not None else 1


def _model_from_shape(spec: StudySpec, base_model: Any, shape: dict[str, Any], sizes: dict[str, int], where: str):
    cls = get_family(spec.family).config
    names = {f.name for f in fields(cls)} - {"family"}
    unknown = sorted(set(shape) - names)
    if unknown:
        raise ConfigError(f"{where} has unknown model keys {unknown}; valid keys are {sorted(names)}")
    values = {f.name: getattr(base_model, f.name) for f in fields(cls) if f.name != "family"}
    values.update(shape)
    values.update(sizes)
    model = cls(**values)
    raise_if(model.problems(prefix=where))
    return model


def _size_list(spec: StudySpec) -> list[Any]:
    s = spec.sizes
    if s.targets:
        return [parse_count(t, f"study.sizes.targets[{i}]") for i, t in enumerate(s.targets)]
    if s.ladder is not None:
        lo = parse_count(s.ladder.min, "study.sizes.ladder.min")
        hi = parse_count(s.ladder.max, "study.sizes.ladder.max")
        n = s.ladder.n
        return [lo] if n == 1 else [lo * (hi / lo) ** (i / (n - 1)) for i in range(n)]
    return [dict(x) for x in s.shapes]


# ---------------------------------------------------------------------------------------------
# The planner


@dataclass
class _Size:
    model: Any
    n: int
    counts: Any
    flops_per_token: float  # training FLOPs per token (image)
    batch: int
    batch_tokens: int
    lr: float


def _measure(spec: StudySpec, model: Any, tokens_per_sample: int) -> _Size:
    from scaling.counting import count_params, flops_per_sample

    counts = count_params(model)
    n = counts.nonembedding if spec.sizes.count == "nonembedding" else counts.total
    # Training FLOPs per token (GPT) or per image (CNN): a token and an image are each one unit of D.
    per_unit = flops_per_sample(model, spec.flops_convention)
    rules = spec.rules
    batch_tokens_target = rules.batch_tokens(n)
    batch = max(1, round(batch_tokens_target / tokens_per_sample))
    batch = max(spec.nproc, int(math.ceil(batch / spec.nproc)) * spec.nproc)
    return _Size(
        model=model,
        n=n,
        counts=counts,
        flops_per_token=per_unit,
        batch=batch,
        batch_tokens=batch * tokens_per_sample,
        lr=float(f"{rules.lr(n):.4g}"),
    )


# Budgets the error for a too-small IsoFLOP budget suggests: two significant digits, so a user
# can type them, each checked to plan before it is suggested.
_ROUND_MANTISSAS = ("1", "1.2", "1.5", "2", "2.5", "3", "4", "5", "6", "8")


def _smallest_budget(start: float, plans: Callable[[float], bool], decades: int = 12) -> Optional[float]:
    """The smallest round budget above `start` (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6 or 8 x 10^k) for
    which `plans` holds, searched up to `decades` decades higher; None if none does."""
    first = math.floor(math.log10(start))
    for exponent in range(first, first + decades + 1):
        for m in _ROUND_MANTISSAS:
            c = float(f"{m}e{exponent}")
            if c > start and plans(c):
                return c
    return None


def make_plan(spec: StudySpec, study_dir: Optional[str] = None, throughput: Optional[tuple[float, str]] = None) -> Plan:
    """Expand a validated spec into run specs. Raises one ConfigError listing every problem
    (an empty size list, a budget too small for the smallest model, a bad override, ...)."""
    raise_if(spec.problems())
    if spec.tune.enabled and not any(o.startswith("model.mup.base_width=") for o in spec.overrides):
        raise ConfigError(
            "study.tune: this study's LR comes from its tune phase, which runs first; launch it with scaling-study, "
            "or plan it with make_plan(scaling.launch.tune.planned_spec(spec))"
        )
    study_dir = os.path.abspath(study_dir or spec.dir)
    rule = ladder_rule(spec, study_dir)
    problems = []
    for o in spec.overrides:
        key = o.split("=", 1)[0].lstrip("+~")
        # Model keys the planner leaves to the study: how embeddings are tied and how the model is
        # parametrized (muP's base shape); every other model key is a size's.
        kept = key[6:] in ("tie_embeddings", "parametrization") or key.startswith("model.mup.")
        if key in _PLANNED_KEYS or (key.startswith("model.") and not kept):
            problems.append(
                f"study.overrides has {o!r}, which the planner sets for each run; use study.sizes, "
                f"study.budgets, study.rules or study.seeds instead"
            )
    raise_if(problems)

    from scaling.config import to_dataclass

    base_overrides = [f"model={spec.model}", f"data={spec.data}", *spec.overrides, "train.tokens=1", "train.flops=null"]
    base_dcfg = compose_train(base_overrides)
    base = to_dataclass(base_dcfg)
    if base.model.family != spec.family:
        raise ConfigError(
            f"study.model={spec.model!r} is a {base.model.family} config but study.family={spec.family!r}; "
            f"pick a model config of the {spec.family} family"
        )
    manifest = read_manifest(spec, base)
    sizes = data_sizes(spec, base, manifest)
    tokens_per_sample = get_family(spec.family).tokens_per_sample(sizes)

    # Models per budget: the same list for every budget, or (an IsoFLOP grid without a size list)
    # sizes spaced in log N around each budget's optimum.
    problems = []
    budgets: list[Optional[float]] = [parse_count(c, f"study.budgets.flops[{i}]") for i, c in enumerate(spec.budgets.flops)]
    cache: dict[Any, _Size] = {}

    def size_for(item: Any, where: str) -> _Size:
        key = json.dumps(item, sort_keys=True) if isinstance(item, dict) else float(item)
        if key not in cache:
            if isinstance(item, dict):
                model = _model_from_shape(spec, base.model, item, sizes, where)
            else:
                model = _model_for_target(spec, item, sizes, base.model, rule)
            cache[key] = _measure(spec, model, tokens_per_sample)
        return cache[key]

    def dedupe(items: list[_Size]) -> list[_Size]:
        seen, out = set(), []
        for s in sorted(items, key=lambda s: s.n):
            k = json.dumps(_shape_fields(s.model, spec.family), sort_keys=True)
            if k not in seen:
                seen.add(k)
                out.append(s)
        return out

    size_items = _size_list(spec)
    shared: list[_Size] = []
    try:
        shared = dedupe([size_for(x, f"study.sizes.shapes[{i}]") for i, x in enumerate(size_items)])
    except ConfigError as e:
        problems += e.problems
    raise_if(problems)

    # (size, D, budget) triples
    cells: list[tuple[_Size, int, Optional[float]]] = []
    notes: list[str] = []
    tol, min_steps = spec.budgets.flop_tolerance, spec.budgets.min_steps
    if spec.kind == "ladder":
        for m in spec.budgets.tokens_per_param:
            for s in shared:
                steps = max(1, round(m * s.n / s.batch_tokens))
                if steps < min_steps:
                    problems.append(
                        f"study.budgets.tokens_per_param={m} gives N={_si(s.n)} only {steps} steps of "
                        f"{s.batch} sequences (< study.budgets.min_steps={min_steps}); raise the multiplier, "
                        f"lower study.rules.batch_tokens or study.budgets.min_steps"
                    )
                cells.append((s, steps * s.batch_tokens, None))
    else:
        center = spec.sizes.center_tokens_per_param

        def auto_targets(c: float) -> list[float]:
            n_opt = math.sqrt(c / (6 * center))
            k, span = spec.sizes.per_budget, spec.sizes.span
            return [n_opt * span ** ((j / (k - 1) - 0.5) if k > 1 else 0.0) for j in range(k)]

        def plan_budget(i: int, c: float) -> tuple[list, list[str], Optional[str]]:
            """One budget's cells and notes, or why it plans no run: with a size list, the whole
            message; with automatic sizes, the reason (the caller adds the smallest budget)."""
            b_cells: list[tuple[_Size, int, Optional[float]]] = []
            b_notes: list[str] = []
            if shared:
                candidates = shared
            else:
                targets = auto_targets(c)
                try:
                    candidates = dedupe([size_for(t, "study.sizes") for t in targets])
                except ConfigError as e:
                    # Keep the ladder's finding, not its fix: the fix here is a larger budget.
                    found = "below one parameter" if min(targets) < 1 else e.problems[0].split("; ")[0]
                    return [], [], f"start at N={min(targets):.3g}: {found}"
            extra = [parse_count(t, "study.sizes.extra") for e in spec.sizes.extra
                     if abs(c / parse_count(e["budget"], "study.sizes.extra") - 1) < 1e-6 for t in e["targets"]]
            if extra:
                candidates = dedupe([*candidates, *(size_for(t, "study.sizes.extra") for t in extra)])
            kept = 0
            for s in candidates:
                d_target = c / s.flops_per_token
                steps = round(d_target / s.batch_tokens)
                c_run = steps * s.batch_tokens * s.flops_per_token
                ok = steps >= min_steps and abs(c_run / c - 1) <= tol
                if ok:
                    b_cells.append((s, steps * s.batch_tokens, c))
                    kept += 1
                elif s is candidates[0]:
                    if not shared:
                        return [], [], (
                            f"the smallest model, N={_si(s.n)}, gets {d_target / s.batch_tokens:.1f} steps of "
                            f"{s.batch_tokens} tokens, and a run needs >= {min_steps} steps within {tol:.0%} of the budget"
                        )
                    need = max(min_steps, math.ceil(0.5 / tol)) * s.batch_tokens * s.flops_per_token
                    return [], [], (
                        f"study.budgets.flops[{i}]={c:.3g} is too small for the smallest model (N={_si(s.n)}): "
                        f"it buys {d_target / s.batch_tokens:.1f} steps of {s.batch_tokens} tokens, and a run needs "
                        f">= {min_steps} steps within {tol:.0%} of the budget, i.e. C >= {need:.3g}; raise the "
                        f"budget or add smaller sizes"
                    )
                else:
                    b_notes.append(
                        f"budget C={c:.3g}: dropped N={_si(s.n)} ({d_target / s.batch_tokens:.1f} steps, "
                        f"needs >= {min_steps} within {tol:.0%})"
                    )
            if 0 < kept < 3:
                b_notes.append(f"budget C={c:.3g} has only {kept} size(s); an IsoFLOP parabola needs 3 or more")
            return b_cells, b_notes, None

        for i, c in enumerate(budgets):
            b_cells, b_notes, problem = plan_budget(i, c)
            if problem is not None and not shared:
                best = _smallest_budget(c, lambda x: plan_budget(i, x)[2] is None)
                fix = (f"the smallest budget that plans is {best:.2g} FLOPs; raise study.budgets.flops[{i}] to "
                       f">= {best:.2g}" if best else "no budget up to 1e12 times larger plans either; check "
                       "study.sizes and study.rules")  # fmt: skip
                problem = (
                    f"study.budgets.flops[{i}]={c:.3g} is too small for any model: its sizes centre on "
                    f"N_opt = sqrt(C / (6 x study.sizes.center_tokens_per_param={center:g})) = "
                    f"{math.sqrt(c / (6 * center)):.3g} parameters and {problem}; {fix}"
                )
            cells += b_cells
            notes += b_notes
            problems += [problem] if problem else []
    raise_if(problems)

    # Run specs: compose each run's config from the base, validate it, hash it.
    from omegaconf import OmegaConf

    def build(s: _Size, d: int, budget: Optional[float], seed: int, schedule: dict[str, Any],
              run_overrides: list[str], extra: dict) -> RunSpec:
        """One run's spec: its config composed from the base, validated and hashed."""
        shape = _shape_fields(s.model, spec.family)
        planned: dict[str, Any] = {f"model.{k}": v for k, v in shape.items()}
        for k in get_family(spec.family).data_fields:
            if getattr(spec, k, None) is not None:  # stated in the spec: let the trainer check it
                planned[f"model.{k}"] = getattr(spec, k)
        planned.update({
            "train.tokens": d,
            "train.flops": None,
            "train.global_batch_size": s.batch,
            "train.lr": s.lr,
            "train.seed": seed,
            "train.flops_convention": spec.flops_convention,
            **schedule,
        })  # fmt: skip
        dcfg = base_dcfg.copy()
        for k, v in planned.items():
            OmegaConf.update(dcfg, k, v, merge=False)
        cfg = to_dataclass(dcfg)
        # The trainer hashes its config after the data manifest filled the model's sizes.
        digest = config_hash(replace(cfg, model=replace(cfg.model, **sizes)))
        c_run = d * s.flops_per_token
        rid = run_id(spec.family, s.n, d, c_run, seed, digest)
        legacy = run_id(spec.family, s.n, d, c_run, seed, legacy_config_hash(cfg))
        if not schedule and not os.path.isdir(os.path.join(study_dir, "runs", rid)) and os.path.isdir(
            os.path.join(study_dir, "runs", legacy)
        ):
            rid = legacy  # planned under rule 1: keep the directory (and its finished work)
        run_dir = os.path.join(study_dir, "runs", rid)
        overrides = [f"model={spec.model}", f"data={spec.data}", *spec.overrides]
        overrides += [f"{k}={_fmt_value(v)}" for k, v in planned.items()]
        overrides += [f"run.dir={run_dir}", f"run.id={rid}", f"run.group={spec.name}", *run_overrides]
        if spec.resample == "configuration" and "unit" not in extra:
            # the bootstrap resamples the seeds of one configuration together (analysis.io.plan_units)
            extra = {**extra, "unit": run_id(spec.family, s.n, d, c_run, 0, "").rsplit("-s0-", 1)[0]}
        return RunSpec(
            id=rid, family=spec.family, N=s.n, params_total=s.counts.total,
            params_nonembedding=s.counts.nonembedding, D=d, C=c_run, budget_flops=budget,
            tokens_per_param=d / s.n, seed=seed, batch=s.batch, batch_tokens=s.batch_tokens,
            steps=d // s.batch_tokens, lr=s.lr, nproc=spec.nproc, shape=shape, overrides=overrides,
            config_hash=digest, dir=run_dir, extra=extra,
        )  # fmt: skip

    # With study.branches, the points become cooldown branches of one trunk per size (and seed).
    points: list[tuple[_Size, list[tuple[str, int, Optional[float]]]]] = []
    if spec.branches.isoflop:  # the grid's cells: one branch per (size, budget)
        by_size: dict[int, tuple[_Size, list]] = {}
        for s, d, budget in cells:
            by_size.setdefault(id(s), (s, []))[1].append((f"budget C={budget:.3g}", d // s.batch_tokens, budget))
        points, cells = list(by_size.values()), []
    elif spec.branches.at:
        points = [(s, [(f"study.branches.at has {m}, which", max(1, round(m * s.n / s.batch_tokens)), None)
                       for m in sorted(set(spec.branches.at))]) for s in shared]  # fmt: skip
    runs: list[RunSpec] = []
    for s, d, budget in cells:
        for seed in spec.seeds:
            runs.append(build(s, d, budget, seed, {}, [], {}))
    if points:
        runs += _plan_branches(spec, points, build)
    ids = [r.id for r in runs]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        notes.append(f"{len(dupes)} run(s) planned twice (two targets gave the same shape); each runs once")
        seen: set[str] = set()
        runs = [r for r in runs if not (r.id in seen or seen.add(r.id))]

    for r in runs:
        r.epochs = manifest.epochs(r.D)
    notes += _repetition_notes(spec, runs, round(1 / manifest.epochs(1.0)))  # 1 / epochs(1) = the unique units

    plan = Plan(
        study=spec.name, kind=spec.kind, dir=study_dir, family=spec.family,
        flops_convention=spec.flops_convention, n_count=spec.sizes.count,
        rules={"lr": spec.rules.lr.describe(), "batch_tokens": spec.rules.batch_tokens.describe(" " + get_family(spec.family).unit)},
        throughput_flops=None, throughput_source="none", runs=runs, notes=notes, ladder_rule=rule,
    )  # fmt: skip
    if throughput is not None:
        set_estimates(plan, *throughput)
    return plan


def _plan_branches(spec: StudySpec, sizes: list[tuple[_Size, list[tuple[str, int, Optional[float]]]]],
                   build: Callable[..., RunSpec]) -> list[RunSpec]:
    """Trunks and cooldown branches (study.branches): for each size and seed, one constant-LR trunk
    to the fork point of its last branch (or to branches.trunk_tokens_per_param), checkpointed at
    every fork point (run.fork_tokens), and one WSD run per branch point (`sizes`: each size's
    points as (what set it, steps, IsoFLOP budget or None)) that forks from it at its decay start
    (scaling.schedule.wsd_decay_start) and decays to its D. All are whole steps: a branch of S
    steps forks at step S - round(f S), the trunk's checkpoint of that step.
    Each trunk with its branches is one bootstrap unit (the unit is the trunk's id)."""
    from scaling.schedule import wsd_decay_start

    br = spec.branches
    problems: list[str] = []
    out: list[RunSpec] = []
    for s, wanted in sizes:
        points = []  # (budget, steps, fork step)
        for what, steps, budget in wanted:
            fork_step = wsd_decay_start(steps, br.decay_fraction)
            if steps < spec.budgets.min_steps or fork_step < 1:
                problems.append(
                    f"{what} gives N={_si(s.n)} only {steps} steps of {s.batch} sequences "
                    f"(fork at step {fork_step}; a branch needs >= study.budgets.min_steps={spec.budgets.min_steps} "
                    f"steps and a fork after step 0); raise the multiplier or lower study.rules.batch_tokens"
                )
                continue
            points.append((budget, steps, fork_step))
        if not points:
            continue
        forks = sorted({f for _, _, f in points})
        trunk_steps = forks[-1]
        if br.trunk_tokens_per_param is not None:
            trunk_steps = max(1, round(br.trunk_tokens_per_param * s.n / s.batch_tokens))
            if trunk_steps < forks[-1]:
                problems.append(
                    f"study.branches.trunk_tokens_per_param={br.trunk_tokens_per_param} gives N={_si(s.n)} a trunk of "
                    f"{trunk_steps} steps, before its last fork point (step {forks[-1]}); raise it"
                )
                continue
        fork_tokens = [f * s.batch_tokens for f in forks]
        for seed in spec.seeds:
            trunk = build(
                s, trunk_steps * s.batch_tokens, None, seed, {"train.schedule": "constant"},
                [f"run.fork_tokens=[{','.join(str(t) for t in fork_tokens)}]"], {},
            )  # fmt: skip
            unit = trunk.id if spec.resample == "run" else trunk.id.rsplit("-s", 1)[0]
            trunk.extra = {"role": "trunk", "unit": unit, "fork_tokens": fork_tokens}
            out.append(trunk)
            for budget, steps, fork_step in points:
                schedule = {"train.schedule": "wsd", "train.decay_fraction": br.decay_fraction,
                            "train.decay_shape": br.decay_shape, "train.parent": trunk.id}  # fmt: skip
                branch = build(s, steps * s.batch_tokens, budget, seed, schedule, [], {})
                branch.extra = {
                    "role": "branch", "unit": unit, "parent": trunk.id, "fork_step": fork_step,
                    "fork_tokens": fork_step * s.batch_tokens,
                    "branch_C": (steps - fork_step) * s.batch_tokens * s.flops_per_token,
                }  # fmt: skip
                out.append(branch)
    raise_if(problems)
    return out


def spent_flops(run: RunSpec) -> float:
    """The compute a run itself trains: a branch's own cooldown (its trunk's share is the trunk's)."""
    return float(run.extra.get("branch_C", run.C or 0.0))


def _repetition_notes(spec: StudySpec, runs: list[RunSpec], unique: int) -> list[str]:
    """A warning when runs pass over the training data more than study.budgets.max_epochs times
    (see BudgetsConfig for the threshold and why); none when the study says repetition is intended."""
    limit = spec.budgets.max_epochs
    over = [r for r in runs if limit is not None and r.epochs is not None and r.epochs > limit]
    if not over:
        return []
    worst = max(over, key=lambda r: r.epochs or 0.0)
    unit = get_family(spec.family).unit
    return [
        f"data repetition: {len(over)} of {len(runs)} runs pass over the training split ({_si(unique)} unique "
        f"{unit}) more than study.budgets.max_epochs={limit:g} times, up to {worst.epochs:.3g} epochs "
        f"({worst.id}); beyond about 4 epochs repeated data is worth less than fresh data (Muennighoff et al. "
        f"2023), so a law fitted to these runs mixes repetition into its D term; use more data or smaller "
        f"budgets, or set study.budgets.max_epochs=null if the repetition is intended"
    ]


# ---------------------------------------------------------------------------------------------
# Time estimates

STARTUP_S = 8.0  # a run's fixed cost: interpreter, imports, DeepSpeed init, data, final eval


def set_estimates(plan: Plan, flops_per_s: float, source: str) -> None:
    plan.throughput_flops, plan.throughput_source = flops_per_s, source
    for r in plan.runs:
        r.est_time_s = STARTUP_S + spent_flops(r) / (flops_per_s * r.nproc)


def measured_throughput(study_dir: str) -> Optional[float]:
    """Achieved training FLOP/s per process over the study's completed runs, or None."""
    flops = seconds = 0.0
    runs = Path(study_dir) / "runs"
    if not runs.is_dir():
        return None
    for d in runs.iterdir():
        r = result_if_readable(d)
        if r is not None and r.status is RunStatus.COMPLETED and r.wall_time_s and r.flops:
            flops += float(r.flops)
            seconds += float(r.wall_time_s) * int(r.world_size or 1)
    return flops / seconds if seconds > 0 else None


def machine_matmul_flops(cache_dir: Optional[str] = None) -> float:
    """This machine's fp32 matmul FLOP/s on one process, measured once in a subprocess (launch/
    never imports torch) and cached per host."""
    import socket
    import subprocess
    import sys

    cache = Path(cache_dir or os.environ.get("SCALING_CACHE") or Path.home() / ".cache" / "scaling")
    path = cache / f"matmul-flops-{socket.gethostname()}.json"
    try:
        return float(json.loads(path.read_text())["flops_per_s"])
    except (OSError, ValueError, KeyError):
        pass
    code = (
        "import time, torch\n"
        "torch.set_num_threads(1)\n"
        "a = torch.randn(512, 512); b = torch.randn(512, 512)\n"
        "for _ in range(3): a @ b\n"
        "n, t0 = 0, time.perf_counter()\n"
        "while time.perf_counter() - t0 < 0.5:\n"
        "    a @ b; n += 1\n"
        "print(2 * 512 ** 3 * n / (time.perf_counter() - t0))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    value = float(out.stdout.strip().splitlines()[-1])
    try:
        cache.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"flops_per_s": value, "measured": time.time()}))
    except OSError:
        pass
    return value


def throughput_for(spec: StudySpec, study_dir: str, configured: Optional[float] = None) -> tuple[float, str]:
    """Per-process training FLOP/s for the estimates, and where it comes from: the study's
    completed runs, else a configured figure, else this machine's measured matmul rate times
    study.assumed_mfu."""
    measured = measured_throughput(study_dir)
    if measured:
        return measured, "measured on this study's completed runs"
    if spec.throughput_flops:
        return spec.throughput_flops, "study.throughput_flops"
    if configured:
        return configured, "cluster.throughput_flops"
    peak = machine_matmul_flops()
    return peak * spec.assumed_mfu, f"this machine's matmul rate {peak:.3g} FLOP/s x study.assumed_mfu={spec.assumed_mfu}"


# ---------------------------------------------------------------------------------------------
# Printing and storing


def _duration(s: Optional[float]) -> str:
    if s is None:
        return "-"
    if s < 120:
        return f"{s:.0f}s"
    if s < 7200:
        return f"{s / 60:.0f}m"
    return f"{s / 3600:.1f}h"


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def _epochs(e: Optional[float]) -> str:
    """0.41, 5.9, 225: two significant digits without an exponent."""
    if e is None:
        return "-"
    return f"{e:.2g}" if e < 100 else f"{e:.0f}"


def format_plan(plan: Plan) -> str:
    headers = ["id", "N", "D", "C", "budget", "D/N", "epochs", "batch", "lr", "steps", "procs", "est. time"]
    total_time = sum(r.est_time_s or 0 for r in plan.runs)
    if any(r.extra.get("role") for r in plan.runs):
        return format_branch_plan(plan, headers, total_time)
    out = [
        *_plan_head(plan, f"study {plan.study}: {plan.kind}, {len(plan.runs)} runs of family {plan.family}, in {plan.dir}"),
        "",
        format_table(headers, [_row(r) for r in plan.runs]),
        "",
        f"total compute: {plan.total_flops:.3g} FLOPs",
    ]
    return "\n".join(out + _plan_tail(plan, total_time))


def _plan_head(plan: Plan, title: str) -> list[str]:
    """The lines above a plan's table: what it is, what N and C count, its rules."""
    return [
        title,
        f"N counts {plan.n_count} parameters; FLOPs use the {plan.flops_convention!r} convention",
        f"lr = {plan.rules['lr']}",
        f"batch = {plan.rules['batch_tokens']}",
    ]


def _plan_tail(plan: Plan, total_time: float) -> list[str]:
    """The lines below a plan's total: the time estimate and the planner's notes."""
    out = []
    if plan.throughput_flops:
        out.append(
            f"estimated time: {_duration(total_time)} run after run (sum of runs), at "
            f"{plan.throughput_flops:.3g} FLOP/s per process ({plan.throughput_source})"
        )
    return out + [f"note: {n}" for n in plan.notes]


def _row(r: RunSpec) -> list[str]:
    return [r.id, _si(r.N), _si(r.D), f"{r.C:.3g}", "-" if r.budget_flops is None else f"{r.budget_flops:.3g}",
            f"{r.tokens_per_param:.3g}", _epochs(r.epochs), str(r.batch), f"{r.lr:.3g}", str(r.steps), str(r.nproc),
            _duration(r.est_time_s)]  # fmt: skip


def format_branch_plan(plan: Plan, headers: list[str], total_time: float) -> str:
    """A study with cooldown branches: each trunk with its branches below it (a tree), and the
    compute spent against training every branch point from scratch."""
    by_parent: dict[str, list[RunSpec]] = {}
    for r in plan.runs:
        if r.extra.get("role") == "branch":
            by_parent.setdefault(r.extra["parent"], []).append(r)
    rows, spent, scratch = [], 0.0, 0.0
    for r in plan.runs:
        role = r.extra.get("role")
        if role == "branch":
            continue
        spent += spent_flops(r)
        if role != "trunk":
            scratch += r.C or 0.0
            rows.append(_row(r))
            continue
        forks = ", ".join(_si(t) for t in r.extra.get("fork_tokens", []))
        rows.append([f"{r.id} (trunk, constant LR, forks at {forks})", *_row(r)[1:]])
        children = sorted(by_parent.get(r.id, []), key=lambda b: b.D or 0)
        for i, b in enumerate(children):
            spent += spent_flops(b)
            scratch += b.C or 0.0
            branch = "└─" if i == len(children) - 1 else "├─"
            cells = _row(b)
            cells[3] = f"{b.C:.3g} ({spent_flops(b):.2g} own)"
            rows.append([f"  {branch} {b.id} (fork at {_si(b.extra['fork_tokens'])})", *cells[1:]])
    n_branch = sum(len(v) for v in by_parent.values())
    n_trunk = sum(1 for r in plan.runs if r.extra.get("role") == "trunk")
    out = [
        *_plan_head(plan, f"study {plan.study}: {plan.kind} with cooldown branches, {n_trunk} trunks and "
                          f"{n_branch} branches ({len(plan.runs)} runs) of family {plan.family}, in {plan.dir}"),
        "each branch decays (WSD) from its trunk's constant LR to lr x train.min_lr_ratio, as a cosine run would; "
        "C is the compute of the whole point (the trunk up to the fork included), 'own' the branch's cooldown",
        "",
        format_table(headers, rows),
        "",
        f"total compute: {spent:.3g} FLOPs spent for {n_branch} branch points, against {scratch:.3g} FLOPs "
        f"to train every point from scratch ({scratch / spent if spent else float('nan'):.2f}x; "
        f"{1 - spent / scratch if scratch else 0:.0%} saved)",
    ]
    return "\n".join(out + _plan_tail(plan, total_time))
