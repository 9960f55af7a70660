"""What a plan costs: FLOPs, GPU-hours, CPU-hours and money, per run and in total.

    cfg = CostConfig(accelerator="H100", mfu=0.4, price_per_gpu_hour=2.5, max_gpu_hours=100)
    cost = plan_cost(plan, cfg)      # numbers only; nothing is launched
    print(format_cost(cost))         # the lines a dry run prints under the plan
    check_budget(cost, cfg)          # ConfigError when the plan needs more than max_gpu_hours

The figures, for a run of C training FLOPs (the planner's C = f D, under the study's convention):

    GPU-hours  = C / (peak x mfu) / 3600        peak: the accelerator's dense bf16 FLOP/s
    wall hours = GPU-hours / nproc              on the run's nproc GPUs
    money      = GPU-hours x price_per_gpu_hour
    CPU-hours  = C / rate / 3600                rate: training FLOP/s per process, as the plan
                                                estimates its time (measured on the study's
                                                completed runs when there are any)

The peak comes from scaling.hardware's table, the one the trainer reports MFU against, so a plan
costed at MFU m and a run that logs MFU m mean the same speed. Only training compute is counted:
start-up, evaluation and checkpoints come on top, and small models rarely reach a large model's
MFU, so treat the figures as a lower bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from scaling.contracts import Plan
from scaling.errors import ConfigError, raise_if
from scaling.hardware import known_accelerators, peak_entry

SECONDS_PER_HOUR = 3600.0


@dataclass
class CostConfig:
    """How to turn a plan's FLOPs into GPU-hours and money."""

    accelerator: str = "H100"  # a name in scaling.hardware.PEAK_BF16_FLOPS (matched as the trainer matches it)
    # Model FLOPs utilization: the share of the peak a run achieves. Large dense transformers reach
    # about 0.4-0.55 (PaLM reports 0.46); the small models of a scaling study usually reach less.
    mfu: float = 0.4
    price_per_gpu_hour: Optional[float] = None  # in `currency`; None: no money estimate
    currency: str = "$"
    max_gpu_hours: Optional[float] = None  # refuse a plan that needs more; None: no limit
    peak_flops: Optional[float] = None  # dense FLOP/s of one device, for an accelerator the table lacks

    def problems(self, prefix: str = "study.cost") -> list[str]:
        out = []
        if self.peak_flops is not None:
            if not (_finite(self.peak_flops) and self.peak_flops > 0):
                out.append(f"{prefix}.peak_flops={self.peak_flops} must be a positive FLOP/s figure, or null to "
                           f"look {prefix}.accelerator up in the peak table")
        elif peak_entry(self.accelerator) is None:
            out.append(f"{prefix}.accelerator={self.accelerator!r} is not in the peak table (scaling/hardware.py); "
                       f"name one of {known_accelerators()}, or give its dense FLOP/s as {prefix}.peak_flops")
        if not (_finite(self.mfu) and 0 < self.mfu <= 1):
            out.append(f"{prefix}.mfu={self.mfu} must lie in (0, 1]; it is a share of the peak, e.g. 0.4")
        if self.price_per_gpu_hour is not None and not (_finite(self.price_per_gpu_hour) and self.price_per_gpu_hour >= 0):
            out.append(f"{prefix}.price_per_gpu_hour={self.price_per_gpu_hour} must be >= 0, or null for no money "
                       f"estimate")
        if self.max_gpu_hours is not None and not (_finite(self.max_gpu_hours) and self.max_gpu_hours > 0):
            out.append(f"{prefix}.max_gpu_hours={self.max_gpu_hours} must be positive, or null for no limit")
        return out

    def peak(self) -> tuple[str, float]:
        """(what the peak is, dense FLOP/s of one device)."""
        if self.peak_flops is not None:
            return f"{self.accelerator} (peak_flops as configured)", float(self.peak_flops)
        entry = peak_entry(self.accelerator)
        if entry is None:
            raise_if(self.problems())
        assert entry is not None
        return entry[0], entry[1]


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(frozen=True)
class RunCost:
    id: str
    flops: float
    nproc: int
    gpu_hours: float  # device-hours: C / (peak x mfu) / 3600
    gpu_wall_hours: float  # on the run's nproc GPUs
    cpu_hours: Optional[float]  # process-hours at the plan's rate; None without a rate
    money: Optional[float]  # None without a price


@dataclass(frozen=True)
class PlanCost:
    """A plan's cost under one CostConfig (see the module's docstring for the formulas)."""

    runs: list[RunCost]
    accelerator: str  # the peak table's name for it
    peak_flops: float  # per device
    mfu: float
    price_per_gpu_hour: Optional[float]
    currency: str
    cpu_flops_per_s: Optional[float]  # per process
    cpu_source: str
    uncounted: list[str] = field(default_factory=list)  # runs without C (a plan.json written by hand)

    @property
    def flops(self) -> float:
        return sum(r.flops for r in self.runs)

    @property
    def gpu_hours(self) -> float:
        return sum(r.gpu_hours for r in self.runs)

    @property
    def cpu_hours(self) -> Optional[float]:
        return None if self.cpu_flops_per_s is None else sum(r.cpu_hours or 0.0 for r in self.runs)

    @property
    def money(self) -> Optional[float]:
        return None if self.price_per_gpu_hour is None else self.gpu_hours * self.price_per_gpu_hour


def gpu_hours(flops: float, peak_flops: float, mfu: float) -> float:
    """Device-hours to compute `flops` FLOPs on devices of `peak_flops` FLOP/s at utilization `mfu`:
    flops / (peak_flops x mfu) / 3600."""
    return flops / (peak_flops * mfu) / SECONDS_PER_HOUR


def plan_cost(plan: Plan, cfg: CostConfig, cpu_flops_per_s: Optional[float] = None,
              cpu_source: Optional[str] = None) -> PlanCost:  # fmt: skip
    """The cost of every run of `plan` and of the whole. CPU-hours use `cpu_flops_per_s` (training
    FLOP/s per process) when given, else the rate the plan's time estimates use
    (`plan.throughput_flops`, which `throughput_for` takes from the study's completed runs first);
    with neither, CPU-hours are None."""
    raise_if(cfg.problems())
    name, peak = cfg.peak()
    if cpu_flops_per_s is None and plan.throughput_flops:
        cpu_flops_per_s, cpu_source = plan.throughput_flops, cpu_source or plan.throughput_source
    if cpu_flops_per_s is not None and not cpu_flops_per_s > 0:
        raise ConfigError(f"CPU rate {cpu_flops_per_s} FLOP/s must be positive")
    from scaling.launch.plan import spent_flops  # here: launch.plan imports this module's config

    runs, uncounted = [], []
    for r in plan.runs:
        if r.C is None:
            uncounted.append(r.id)
            continue
        flops = spent_flops(r)  # a cooldown branch pays for its own steps; its trunk's are the trunk's
        hours = gpu_hours(flops, peak, cfg.mfu)
        nproc = r.nproc or 1
        runs.append(RunCost(
            id=r.id, flops=flops, nproc=nproc, gpu_hours=hours, gpu_wall_hours=hours / nproc,
            cpu_hours=None if cpu_flops_per_s is None else flops / cpu_flops_per_s / SECONDS_PER_HOUR,
            money=None if cfg.price_per_gpu_hour is None else hours * cfg.price_per_gpu_hour,
        ))  # fmt: skip
    return PlanCost(
        runs=runs, accelerator=name, peak_flops=peak, mfu=cfg.mfu, price_per_gpu_hour=cfg.price_per_gpu_hour,
        currency=cfg.currency, cpu_flops_per_s=cpu_flops_per_s, cpu_source=cpu_source or "",
        uncounted=uncounted,
    )  # fmt: skip


def check_budget(cost: PlanCost, cfg: CostConfig, prefix: str = "study.cost") -> None:
    """Raise ConfigError, showing the plan's total, when it needs more than cfg.max_gpu_hours."""
    if cfg.max_gpu_hours is None or cost.gpu_hours <= cfg.max_gpu_hours:
        return
    money = f", {_money(cost.money, cost.currency)}" if cost.money is not None else ""
    raise ConfigError(
        f"{prefix}.max_gpu_hours={cfg.max_gpu_hours:g} is less than the plan needs: {_hours(cost.gpu_hours)} "
        f"GPU-hours{money} for {len(cost.runs)} runs of {cost.flops:.3g} FLOPs in total, on {cost.accelerator} "
        f"at {prefix}.mfu={cost.mfu:g}; raise {prefix}.max_gpu_hours (or set it to null), or plan fewer or "
        f"smaller budgets"
    )


# ---------------------------------------------------------------------------------------------
# Printing


def _hours(h: Optional[float]) -> str:
    """Three significant digits, no exponent down to a millionth of an hour."""
    if h is None:
        return "-"
    if h == 0:
        return "0"
    return f"{h:.3g}" if h >= 1e-6 else f"{h:.1e}"


def _money(x: Optional[float], currency: str) -> str:
    if x is None:
        return "-"
    return f"{currency}{x:,.2f}" if x >= 0.01 or x == 0 else f"{currency}{x:.2g}"


def format_cost(cost: PlanCost, cfg: Optional[CostConfig] = None, prefix: str = "study.cost") -> str:
    """The cost as a dry run prints it: a table of the runs, then the totals and where each
    figure comes from; with `cfg`, the plan against its max_gpu_hours."""
    from scaling.launch.plan import format_table

    headers = ["id", "C", "GPU-hours", "wall (GPUs)", "CPU-hours", "cost"]
    rows = [[r.id, f"{r.flops:.3g}", _hours(r.gpu_hours), f"{_hours(r.gpu_wall_hours)}h ({r.nproc})",
             _hours(r.cpu_hours), _money(r.money, cost.currency)] for r in cost.runs]  # fmt: skip
    peak = f"{cost.peak_flops / 1e12:.4g} TFLOP/s dense bf16 peak per device"
    out = [
        format_table(headers, rows),
        "",
        f"total: {cost.flops:.3g} FLOPs = {_hours(cost.gpu_hours)} GPU-hours on {cost.accelerator} at MFU "
        f"{cost.mfu:g} ({peak})",
    ]
    if cost.price_per_gpu_hour is not None:
        out.append(f"cost: {_money(cost.money, cost.currency)} at {_money(cost.price_per_gpu_hour, cost.currency)} "
                   f"per GPU-hour")  # fmt: skip
    if cost.cpu_flops_per_s is not None:
        out.append(f"CPU: {_hours(cost.cpu_hours)} process-hours at {cost.cpu_flops_per_s:.3g} FLOP/s per process"
                   + (f" ({cost.cpu_source})" if cost.cpu_source else ""))  # fmt: skip
    out.append("(training compute only: start-up, evaluation and checkpoints come on top)")
    if cfg is not None and cfg.max_gpu_hours is not None:
        over = cost.gpu_hours > cfg.max_gpu_hours
        out.append(f"budget: {_hours(cost.gpu_hours)} of {prefix}.max_gpu_hours={cfg.max_gpu_hours:g} GPU-hours"
                   + (": OVER, a launch is refused" if over else ""))  # fmt: skip
    if cost.uncounted:
        out.append(f"note: {len(cost.uncounted)} run(s) have no planned FLOPs (C) and are not counted: "
                   f"{cost.uncounted[:3]}{' ...' if len(cost.uncounted) > 3 else ''}")
    return "\n".join(out)
