"""Typed configuration of `scaling-study`: the study spec, the launcher and the cluster.

Hydra composes `conf/study_app.yaml` with one file from each of `conf/study/`, `conf/launcher/`
and `conf/cluster/`, validated against these dataclasses (registered in the ConfigStore by
`register_configs`). `to_dataclass` converts the result with `OmegaConf.to_object` and runs
`validate`, which collects every problem and raises one ConfigError naming each key.

Torch-free, like all of `launch/`: it runs on login nodes and laptops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

from scaling.config import FLOPS_CONVENTIONS
from scaling.errors import ConfigError, raise_if
from scaling.families import DEFAULT as DEFAULT_FAMILY, FAMILIES
from scaling.ladder import parse_count
from scaling.launch.cost import CostConfig

COUNTS = ("nonembedding", "total")
LAUNCHERS = ("local", "slurm")
@dataclass
class PowerLaw:
    """value = coef * (N / ref_params) ** exponent, then clipped to [min, max]. N is the size as
    the study counts it (`sizes.count`)."""

    coef: float = 1.0
    exponent: float = 0.0
    ref_params: float = 108e6
    min: Optional[float] = None
    max: Optional[float] = None

    def __call__(self, n_params: float) -> float:
        value = self.coef * (n_params / self.ref_params) ** self.exponent
        if self.min is not None:
            value = max(value, self.min)
        if self.max is not None:
            value = min(value, self.max)
        return value

    def describe(self, unit: str = "") -> str:
        clip = ""
        if self.min is not None or self.max is not None:
            clip = f", clipped to [{self.min}, {self.max}]"
        return f"{self.coef:g}{unit} * (N / {self.ref_params:.3g}) ^ {self.exponent:.4g}{clip}"

    def problems(self, prefix: str) -> list[str]:
        out = []
        if not (math.isfinite(self.coef) and self.coef > 0):
            out.append(f"{prefix}.coef={self.coef} must be a positive number")
        if not (math.isfinite(self.ref_params) and self.ref_params > 0):
            out.append(f"{prefix}.ref_params={self.ref_params} must be a positive number")
        if self.min is not None and self.max is not None and self.min > self.max:
            out.append(f"{prefix}.min={self.min} > {prefix}.max={self.max}; swap them")
        return out


def _olmo_lr() -> PowerLaw:
    # OLMo model ladder: LR = 0.0047 (N / 108e6)^(-1/3)
    return PowerLaw(coef=0.0047, exponent=-1 / 3)


def _olmo_batch() -> PowerLaw:
    # OLMo model ladder: 160 (N / 108e6)^(2/3) sequences of 2048 tokens, expressed in tokens so
    # that it carries over to other sequence lengths.
    return PowerLaw(coef=160 * 2048, exponent=2 / 3)


@dataclass
class RulesConfig:
    """Hyperparameters as power laws of the size N. Defaults: the OLMo ladder rules."""

    lr: PowerLaw = field(default_factory=_olmo_lr)
    # Global batch in tokens (GPT) or images (CNN); turned into sequences with the data's
    # seq_len and rounded to a multiple of the processes per run.
    batch_tokens: PowerLaw = field(default_factory=_olmo_batch)


@dataclass
class LadderConfig:
    min: Any = None  # smallest target parameter count, e.g. 1e5 or "100K"
    max: Any = None  # largest
    n: int = 4  # sizes, spaced evenly in log N


@dataclass
class SizesConfig:
    """The model sizes. Exactly one of: `targets` (a list of parameter counts), `ladder` (log-spaced
    targets), `shapes` (explicit model fields such as {n_layers: 2, d_model: 64, n_heads: 2}).
    For an IsoFLOP grid all three may be left empty: then each budget gets `per_budget` sizes
    spaced in log N around the budget's `center_tokens_per_param` optimum."""

    targets: list[Any] = field(default_factory=list)
    ladder: Optional[LadderConfig] = None
    shapes: list[dict[str, Any]] = field(default_factory=list)
    count: str = "nonembedding"  # what N counts: nonembedding (Kaplan) or total (Chinchilla)
    per_budget: int = 5  # IsoFLOP without a size list: sizes per budget
    span: float = 10.0  # IsoFLOP without a size list: largest / smallest N at each budget
    center_tokens_per_param: float = 20.0  # IsoFLOP without a size list: centre of the sizes
    # The version of the family's ladder rule (scaling/families/): 2 is today's; 1 is the GPT
    # ladder before its depth rule (aspect 64 at every width, so one layer below d_model 128).
    # None: the rule the study folder's plan.json was planned with (rule 1 for a plan that does
    # not record one), or today's for a new study, so a relaunch trains the same models into the
    # same run directories.
    ladder_rule: Optional[int] = None
    # IsoFLOP: more sizes for some budgets, [{budget: 3.6e11, targets: [1.2e5, 1.7e5]}, ...], added
    # to the budget's own; the report's next_plan.yaml (study.extend=next) fills it to recentre a
    # budget whose minimum lies on the edge of its sizes, keeping every planned run.
    extra: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class BudgetsConfig:
    """Exactly one of: `tokens_per_param` (a size ladder: D = m N for each m) or `flops` (an
    IsoFLOP grid: for each budget C, D = C / (training FLOPs per token) at each size).
    `max_epochs` is how much data repetition the study accepts before its plan warns."""

    tokens_per_param: list[float] = field(default_factory=list)
    flops: list[Any] = field(default_factory=list)
    flop_tolerance: float = 0.05  # every IsoFLOP run's C lies within this relative error of its budget
    min_steps: int = 10  # a run with fewer optimizer steps than this does not fit its budget
    # The most passes over the training split's unique tokens (images) a run may make before the
    # plan warns: epochs = D / unique training tokens. Muennighoff et al. (2023, "Scaling
    # Data-Constrained Language Models") found up to about 4 epochs nearly as good as unique data,
    # with returns fading towards zero by about 16; past 4 a fitted law mixes repetition into its
    # D term. null means the repetition is intended (a study of repetition, or of a small set on
    # purpose): the plan and report still show every run's epochs, without a warning.
    max_epochs: Optional[float] = 4.0


@dataclass
class TuneConfig:
    """A study's LR sweep at its muP base shape, run before the study's own runs (under
    STUDY/tune/, as ordinary run directories). The best LR, read off by the rule in
    `scaling.analysis.tune`, becomes every run's LR, and muP scales it per layer for each run's
    width and depth (so the study needs `model.parametrization=mup`). muP transfers across width
    and depth, not across training length or batch, so the sweep trains at the study's typical
    tokens per parameter with the study's batch rule.

    lrs               the grid: 3 or more LRs, log-spaced (e.g. a factor of 2 apart); empty: the
                      study has no tune phase and its LRs follow study.rules.lr
    shape             the base shape's model fields, e.g. {n_layers: 1, d_model: 8, n_heads: 1};
                      empty: the study's smallest model. It is the muP base shape of every run,
                      so it may not be wider or deeper than the smallest model.
    tokens_per_param  the sweep's D / N; None: the study's typical (an IsoFLOP grid's
                      `center_tokens_per_param`, a ladder's geometric-mean multiplier)
    seeds             seeds per LR; the parabola fits their means"""

    lrs: list[float] = field(default_factory=list)
    shape: dict[str, Any] = field(default_factory=dict)
    tokens_per_param: Optional[float] = None
    seeds: list[int] = field(default_factory=lambda: [0])

    @property
    def enabled(self) -> bool:
        return bool(self.lrs)

    def problems(self, prefix: str = "study.tune") -> list[str]:
        out = []
        if not self.enabled:
            return out
        if len(self.lrs) < 3:
            out.append(f"{prefix}.lrs={self.lrs} has {len(self.lrs)} LRs; give 3 or more, log-spaced, "
                       f"e.g. {prefix}.lrs=[0.004,0.008,0.016,0.032]")
        if any(not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0) for lr in self.lrs):
            out.append(f"{prefix}.lrs={self.lrs} must all be positive numbers")
        elif len(set(self.lrs)) != len(self.lrs):
            out.append(f"{prefix}.lrs={self.lrs} repeats an LR; list each once")
        if self.tokens_per_param is not None and not self.tokens_per_param > 0:
            out.append(f"{prefix}.tokens_per_param={self.tokens_per_param} must be positive, or null for the "
                       f"study's typical")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            out.append(f"{prefix}.seeds={self.seeds}; give one or more distinct seeds")
        return out


@dataclass
class VerifyConfig:
    """A pre-registered verification run: once the study's runs are fitted, the compute-optimal
    N and D at `compute_multiple` x the study's largest budget are planned (N snapped to the
    ladder), the predicted loss is written to STUDY/verify/prediction.json, and only then is the
    run trained (under STUDY/verify/). None: no verification run."""

    compute_multiple: Optional[float] = None

    @property
    def enabled(self) -> bool:
        return self.compute_multiple is not None

    def problems(self, prefix: str = "study.verify") -> list[str]:
        if self.enabled and not (math.isfinite(self.compute_multiple) and self.compute_multiple >= 1):
            return [f"{prefix}.compute_multiple={self.compute_multiple} must be >= 1 (a multiple of the study's "
                    f"largest budget), e.g. 3 or 10"]  # fmt: skip
        return []


def _positive_counts(values: list[Any], key: str) -> list[str]:
    """Problems with a list of counts such as [1e5, "3M"]: unparsable or not positive."""
    out = []
    for i, v in enumerate(values):
        try:
            if parse_count(v, f"{key}[{i}]") <= 0:
                out.append(f"{key}[{i}]={v} must be positive")
        except ConfigError as e:
            out += e.problems
    return out


@dataclass
class BranchesConfig:
    """Cooldown branches (Hägele et al. 2024): per size (and seed) one trunk trains at constant LR
    to the fork point of its last branch, checkpointing at every fork point, and each branch point
    is a run of its own that forks from the trunk at (1 - decay_fraction) D and decays (WSD) to D.
    Empty `at`: no branches, every point trains from scratch."""

    at: list[float] = field(default_factory=list)  # branch points as token multipliers D / N
    decay_fraction: float = 0.2  # the share of each branch's D spent decaying (10-20% matches cosine)
    decay_shape: str = "linear"  # linear | cosine | 1-sqrt (scaling/schedule.py)
    # The trunk's length as D / N; None: it ends at its last fork point. Longer keeps it going at
    # constant LR (for branches added later); every fork point must lie within it.
    trunk_tokens_per_param: Optional[float] = None
    # Branch points at an IsoFLOP grid's cells instead (study.budgets.flops): one trunk per size,
    # a branch per budget that size is planned at. Saves most with a size list (study.sizes).
    isoflop: bool = False

    def problems(self, prefix: str = "study.branches") -> list[str]:
        from scaling.schedule import DECAY_SHAPES

        out = []
        if not 0 < self.decay_fraction < 1:
            out.append(f"{prefix}.decay_fraction={self.decay_fraction} must lie in (0, 1), e.g. 0.2: a branch forks at "
                       f"(1 - decay_fraction) D")  # fmt: skip
        if self.decay_shape not in DECAY_SHAPES:
            out.append(f"{prefix}.decay_shape={self.decay_shape!r}; use one of {DECAY_SHAPES}")
        for i, m in enumerate(self.at):
            if not m > 0:
                out.append(f"{prefix}.at[{i}]={m} must be a positive token multiplier")
        trunk = self.trunk_tokens_per_param
        if trunk is not None and self.at and 0 < self.decay_fraction < 1:
            beyond = [m for m in self.at if (1 - self.decay_fraction) * m > trunk]
            if beyond:
                out.append(
                    f"{prefix}.at has branch points {beyond} whose fork points ((1 - {self.decay_fraction}) x D/N) lie "
                    f"beyond the trunk ({prefix}.trunk_tokens_per_param={trunk}); raise the trunk to >= "
                    f"{max(beyond) * (1 - self.decay_fraction):g} or drop those points"
                )
        return out


@dataclass
class StudySpec:
    """A study: a family on a dataset, a set of sizes, budgets and seeds. `dir` holds the plan and
    one run directory per run."""

    name: str = "study"
    family: str = DEFAULT_FAMILY
    # The trainer's model config (conf/model/NAME.yaml) the sizes start from; None: the family's
    # default (its `default_model`).
    model: Optional[str] = None
    data: str = "stdlib_text"  # the trainer's data config (conf/data/NAME.yaml)
    overrides: list[str] = field(default_factory=list)  # trainer overrides for every run, e.g. train.schedule=wsd
    # Data-dependent model sizes; None reads them from the dataset's manifest.
    seq_len: Optional[int] = None
    vocab_size: Optional[int] = None
    image_size: Optional[int] = None
    in_channels: Optional[int] = None
    n_classes: Optional[int] = None
    sizes: SizesConfig = field(default_factory=SizesConfig)
    budgets: BudgetsConfig = field(default_factory=BudgetsConfig)
    rules: RulesConfig = field(default_factory=RulesConfig)
    seeds: list[int] = field(default_factory=lambda: [0])
    # The bootstrap's unit of resampling: "run" (each run), or "configuration" (the seeds of one
    # configuration together, so that their shared deviations are not counted as independent data)
    resample: str = "run"
    nproc: int = 1  # processes (GPUs) per run; more than one runs under torchrun or srun
    flops_convention: str = "6n"
    dir: str = "studies/${.name}"
    dry_run: bool = False  # print the plan and launch nothing
    retry_failed: bool = False  # relaunch runs whose result.json says failed
    throughput_flops: Optional[float] = None  # achieved training FLOP/s per process, for estimates
    assumed_mfu: float = 0.3  # share of the measured matmul FLOP/s a small model reaches
    # GPU-hours and money of the plan (scaling.launch.cost); max_gpu_hours refuses a larger one
    cost: CostConfig = field(default_factory=CostConfig)
    # "next": add the sizes of STUDY/next_plan.yaml (written by the report when an IsoFLOP minimum
    # lies on the edge of its sizes) to sizes.extra; every run planned before is kept
    extend: Optional[str] = None
    tune: TuneConfig = field(default_factory=TuneConfig)  # an LR sweep at the base shape that sets every run's LR (muP)
    verify: VerifyConfig = field(default_factory=VerifyConfig)  # a pre-registered prediction of a larger run
    branches: BranchesConfig = field(default_factory=BranchesConfig)  # WSD trunks with cooldown branches

    def __post_init__(self) -> None:
        if self.model is None and self.family in FAMILIES:
            self.model = FAMILIES[self.family].default_model

    def problems(self, prefix: str = "study") -> list[str]:
        out = []
        if self.family not in FAMILIES:
            out.append(f"{prefix}.family={self.family!r}; use one of {sorted(FAMILIES)}")
        if self.flops_convention not in FLOPS_CONVENTIONS:
            out.append(f"{prefix}.flops_convention={self.flops_convention!r}; use one of {FLOPS_CONVENTIONS}")
        if not self.name or "/" in self.name:
            out.append(f"{prefix}.name={self.name!r}; use a non-empty name without '/'")
        if not self.dir:
            out.append(f"{prefix}.dir is empty; set study.dir=PATH")
        if self.nproc < 1:
            out.append(f"{prefix}.nproc={self.nproc} must be >= 1")
        if not self.seeds:
            out.append(f"{prefix}.seeds is empty; give at least one seed, e.g. study.seeds=[0]")
        if self.resample not in ("run", "configuration"):
            out.append(f"{prefix}.resample={self.resample!r}; use run (each run a unit) or configuration (the "
                       f"seeds of one configuration together)")
        if len(set(self.seeds)) != len(self.seeds):
            out.append(f"{prefix}.seeds={self.seeds} repeats a seed; list each seed once")
        for o in self.overrides:
            if "=" not in o or o.split("=", 1)[0].lstrip("+~").startswith("run."):
                out.append(f"{prefix}.overrides has {o!r}; write KEY=VALUE, and leave run.* to the planner")
        s, b = self.sizes, self.budgets
        if s.count not in COUNTS:
            out.append(f"{prefix}.sizes.count={s.count!r}; use one of {COUNTS}")
        given = [k for k, v in (("targets", s.targets), ("ladder", s.ladder), ("shapes", s.shapes)) if v]
        if len(given) > 1:
            out.append(f"{prefix}.sizes sets {' and '.join(given)}; set exactly one of targets, ladder, shapes")
        if not given and not b.flops:
            out.append(
                f"{prefix}.sizes is empty: the size list has no entries; list sizes as "
                f"{prefix}.sizes.targets=[1e5,3e5,1e6] or a ladder {prefix}.sizes.ladder={{min:1e5,max:1e6,n:4}}"
            )
        out += _positive_counts(s.targets, f"{prefix}.sizes.targets")
        if s.ladder is not None:
            lad = s.ladder
            try:
                lo = parse_count(lad.min, f"{prefix}.sizes.ladder.min")
                hi = parse_count(lad.max, f"{prefix}.sizes.ladder.max")
                if not 0 < lo <= hi:
                    out.append(f"{prefix}.sizes.ladder min={lad.min} max={lad.max}; need 0 < min <= max")
            except ConfigError as e:
                out += e.problems
            if lad.n < 1:
                out.append(f"{prefix}.sizes.ladder.n={lad.n} must be >= 1")
        if not given and b.flops:
            if s.per_budget < 1:
                out.append(f"{prefix}.sizes.per_budget={s.per_budget} must be >= 1")
            if s.span < 1:
                out.append(f"{prefix}.sizes.span={s.span} must be >= 1 (largest / smallest N)")
        out += self._branch_problems(prefix)
        if bool(b.tokens_per_param or self.branches.at) == bool(b.flops):
            out.append(
                f"{prefix}.budgets sets {'both' if b.flops else 'neither of'} tokens_per_param and flops; "
                f"set exactly one: tokens_per_param=[20] (a size ladder) or flops=[1e15,3e15] (an IsoFLOP grid)"
            )
        for i, m in enumerate(b.tokens_per_param):
            if not m > 0:
                out.append(f"{prefix}.budgets.tokens_per_param[{i}]={m} must be positive")
        out += _positive_counts(b.flops, f"{prefix}.budgets.flops")
        if not 0 < b.flop_tolerance < 1:
            out.append(f"{prefix}.budgets.flop_tolerance={b.flop_tolerance} must lie in (0, 1), e.g. 0.05")
        if b.min_steps < 1:
            out.append(f"{prefix}.budgets.min_steps={b.min_steps} must be >= 1")
        if b.max_epochs is not None and not b.max_epochs > 0:
            out.append(
                f"{prefix}.budgets.max_epochs={b.max_epochs} must be positive (4 is the default), "
                f"or null when the repetition is intended"
            )
        out += self.rules.lr.problems(f"{prefix}.rules.lr")
        out += self.rules.batch_tokens.problems(f"{prefix}.rules.batch_tokens")
        out += self.cost.problems(f"{prefix}.cost")
        if self.extend not in (None, "next"):
            out.append(f"{prefix}.extend={self.extend!r}; use study.extend=next (the report's next_plan.yaml) or null")
        for i, e in enumerate(s.extra):
            if set(e) != {"budget", "targets"} or not b.flops:
                out.append(f"{prefix}.sizes.extra[{i}]={e}; give {{budget: C, targets: [N, ...]}} for a budget of "
                           f"{prefix}.budgets.flops")
                continue
            try:
                c = parse_count(e["budget"], f"{prefix}.sizes.extra[{i}].budget")
                if not any(abs(c / parse_count(x, "") - 1) < 1e-6 for x in b.flops):
                    out.append(f"{prefix}.sizes.extra[{i}].budget={e['budget']} is not one of {prefix}.budgets.flops")
            except ConfigError as err:
                out += err.problems
            out += _positive_counts(list(e["targets"]), f"{prefix}.sizes.extra[{i}].targets")
        out += self.tune.problems(f"{prefix}.tune")
        out += self.verify.problems(f"{prefix}.verify")
        if self.throughput_flops is not None and not self.throughput_flops > 0:
            out.append(f"{prefix}.throughput_flops={self.throughput_flops} must be positive, or null to measure")
        return out

    def _branch_problems(self, prefix: str) -> list[str]:
        br = self.branches
        if not br.at and not br.isoflop:
            return []
        out = br.problems(f"{prefix}.branches")
        if br.isoflop:
            if br.at:
                out.append(f"{prefix}.branches.isoflop=true and {prefix}.branches.at={br.at}: branch at the IsoFLOP "
                           f"budgets or at token multipliers, not both")  # fmt: skip
            elif not self.budgets.flops:
                out.append(f"{prefix}.branches.isoflop=true needs an IsoFLOP grid: set {prefix}.budgets.flops")
        elif self.budgets.flops:
            out.append(f"{prefix}.branches.at with {prefix}.budgets.flops: branch points are token multipliers of a "
                       f"size ladder; drop {prefix}.budgets.flops (IsoFLOP branch points are not supported yet)")  # fmt: skip
        if self.budgets.tokens_per_param:
            out.append(f"{prefix}.budgets.tokens_per_param={self.budgets.tokens_per_param} and {prefix}.branches.at: "
                       f"with branches the ladder's multipliers are {prefix}.branches.at; drop the budgets'")  # fmt: skip
        for o in self.overrides:
            key, _, value = o.partition("=")
            key = key.lstrip("+~")
            if key == "train.schedule" and value != "constant":
                out.append(f"{prefix}.overrides has {o!r}, but with {prefix}.branches each trunk trains at constant "
                           f"LR and each branch decays with wsd (a cosine trunk has no stable phase to branch from); "
                           f"drop it")  # fmt: skip
            elif key in ("train.decay_fraction", "train.decay_shape", "train.parent"):
                out.append(f"{prefix}.overrides has {o!r}, which {prefix}.branches sets; use "
                           f"{prefix}.branches.decay_fraction or {prefix}.branches.decay_shape")  # fmt: skip
        return out

    @property
    def kind(self) -> str:
        return "isoflop" if self.budgets.flops else "ladder"


@dataclass
class LauncherConfig:
    name: str = "local"  # local | slurm
    # local: runs at once; "auto" fits as many as the cores allow (cores // processes per run)
    parallel: Any = "auto"
    # local: fork one-process runs from a warm worker that has torch, DeepSpeed and the trainer
    # imported (scaling/worker.py), instead of starting a fresh interpreter per run
    warm_workers: bool = True
    # local: a run whose directory sees no write for this long is killed and recorded as failed
    # (resumable with study.retry_failed=true); a live trainer refreshes its lease every 15 s
    stall_timeout_s: Optional[float] = 900.0
    # slurm: one job array per resource shape instead of one job per run
    array: bool = False
    array_parallelism: int = 64
    wait: bool = False  # slurm: block until every run has ended, printing the status
    poll_s: float = 10.0
    print_script: bool = False  # slurm: print the sbatch script of one run and submit nothing
    print_run: Optional[str] = None  # the run whose script is printed; None: the first to launch

    def problems(self, prefix: str = "launcher") -> list[str]:
        out = []
        if self.name not in LAUNCHERS:
            out.append(f"{prefix}.name={self.name!r}; use launcher=local or launcher=slurm")
        if not (self.parallel == "auto" or (isinstance(self.parallel, int) and self.parallel >= 1)):
            out.append(f"{prefix}.parallel={self.parallel!r}; use auto or an integer >= 1")
        if self.stall_timeout_s is not None and not self.stall_timeout_s > 0:
            out.append(f"{prefix}.stall_timeout_s={self.stall_timeout_s} must be positive, or null for no limit")
        if self.array_parallelism < 1:
            out.append(f"{prefix}.array_parallelism={self.array_parallelism} must be >= 1")
        if not self.poll_s > 0:
            out.append(f"{prefix}.poll_s={self.poll_s} must be positive")
        return out


@dataclass
class ClusterConfig:
    """A Slurm cluster: where and how jobs run. Selected with cluster=NAME (conf/cluster/NAME.yaml)."""

    name: str = "none"
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    time_limit_min: int = 60
    mem_gb: Optional[float] = None  # per node
    nodes: Optional[int] = None  # None: as many as a run's processes need
    gpus_per_node: int = 0  # 0: a CPU cluster; each run starts nproc tasks
    tasks_per_node: Optional[int] = None  # CPU clusters: most tasks on one node; None: all on one
    cpus_per_task: int = 1
    setup: list[str] = field(default_factory=list)  # shell lines run before srun (modules, venv)
    max_requeues: int = 3  # after preemption or a time limit
    signal_delay_s: int = 90  # the job gets SIGUSR2 this long before its time limit
    additional: dict[str, Any] = field(default_factory=dict)  # more sbatch flags, e.g. {constraint: a100}
    python: Optional[str] = None  # the interpreter jobs run; None: the one launching
    throughput_flops: Optional[float] = None  # achieved training FLOP/s per process, for estimates

    def problems(self, prefix: str = "cluster") -> list[str]:
        out = []
        if not self.partition:
            out.append(
                f"{prefix}.partition is unset (cluster={self.name}); pick a cluster with cluster=NAME "
                f"(conf/cluster/NAME.yaml) or set {prefix}.partition=PARTITION"
            )
        if self.time_limit_min < 1:
            out.append(f"{prefix}.time_limit_min={self.time_limit_min} must be >= 1")
        if self.nodes is not None and self.nodes < 1:
            out.append(f"{prefix}.nodes={self.nodes} must be >= 1, or null")
        if self.gpus_per_node < 0:
            out.append(f"{prefix}.gpus_per_node={self.gpus_per_node} must be >= 0")
        if self.tasks_per_node is not None and self.tasks_per_node < 1:
            out.append(f"{prefix}.tasks_per_node={self.tasks_per_node} must be >= 1, or null")
        if self.cpus_per_task < 1:
            out.append(f"{prefix}.cpus_per_task={self.cpus_per_task} must be >= 1")
        if self.mem_gb is not None and not self.mem_gb > 0:
            out.append(f"{prefix}.mem_gb={self.mem_gb} must be positive, or null")
        if self.max_requeues < 0:
            out.append(f"{prefix}.max_requeues={self.max_requeues} must be >= 0")
        if self.signal_delay_s < 0:
            out.append(f"{prefix}.signal_delay_s={self.signal_delay_s} must be >= 0")
        return out


@dataclass
class ReportConfig:
    """The fit and report at the end of a blocking launch (local, or Slurm with launcher.wait)."""

    enabled: bool = True  # fit and write report.md, fit.json and figures/ in study.dir
    bootstrap: int = 1000  # bootstrap resamples for the intervals
    holdout_largest: int = 1  # runs held out (largest by compute) for the extrapolation check
    tolerance: float = 0.25  # relative width of a compute-budget group when runs carry no budget
    # IsoFLOP: fit each profile on the sizes whose loss is within this relative margin of its
    # minimum (at least 4); null keeps the analysis's measured default, 0 fits every size.
    isoflop_window: Optional[float] = None
    # Constraints on the parametric law's parameters (E, A, B, alpha, beta), as scaling-fit's
    # --fix/--tie/--bound: e.g. fix: {E: 1.69} for a known loss floor, tie: {beta: alpha},
    # bound: {alpha: [0.05, 1.5]} (.inf at an end keeps the law's own bound there).
    fix: dict[str, float] = field(default_factory=dict)
    tie: dict[str, str] = field(default_factory=dict)
    bound: dict[str, list[float]] = field(default_factory=dict)

    def problems(self, prefix: str = "report") -> list[str]:
        from scaling.analysis.constraints import Constraints, constraint_problems
        from scaling.analysis.forms import CHINCHILLA

        out = constraint_problems(CHINCHILLA, Constraints.of(self.fix, self.tie, self.bound), prefix + ".")
        if self.bootstrap < 0:
            out.append(f"{prefix}.bootstrap={self.bootstrap} must be >= 0 (0 skips the intervals)")
        if self.holdout_largest < 0:
            out.append(f"{prefix}.holdout_largest={self.holdout_largest} must be >= 0")
        if not 0 < self.tolerance < 1:
            out.append(f"{prefix}.tolerance={self.tolerance} must lie in (0, 1)")
        if self.isoflop_window is not None and not self.isoflop_window >= 0:
            out.append(f"{prefix}.isoflop_window={self.isoflop_window} must be >= 0 (a relative "
                       f"loss margin; 0 fits every size, null keeps the default)")
        return out


@dataclass
class StudyAppConfig:
    """The whole config of `scaling-study`."""

    study: StudySpec = field(default_factory=StudySpec)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    report: ReportConfig = field(default_factory=ReportConfig)


def validate(cfg: StudyAppConfig) -> StudyAppConfig:
    """Collect every problem of the spec, the launcher and (for Slurm) the cluster; raise one error."""
    problems = cfg.study.problems() + cfg.launcher.problems() + cfg.report.problems()
    if cfg.launcher.name == "slurm":
        problems += cfg.cluster.problems()
    raise_if(problems)
    return cfg


def register_configs() -> None:
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="study_app_schema", node=StudyAppConfig)


def to_dataclass(dcfg: Any) -> StudyAppConfig:
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_object(dcfg)
    assert isinstance(cfg, StudyAppConfig), type(cfg)
    return validate(cfg)
