"""The cost of a plan (scaling.launch.cost) against a hand computation, the budget check, and the
config's validation."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from scaling.contracts import Plan, Result, RunSpec, RunStatus, write_result
from scaling.errors import ConfigError
from scaling.hardware import PEAK_BF16_FLOPS, peak_entry, peak_flops
from scaling.launch.cost import CostConfig, check_budget, format_cost, plan_cost


def _plan(*runs: tuple[str, float, int], throughput: float | None = None) -> Plan:
    plan = Plan(runs=[RunSpec(id=i, C=c, nproc=n) for i, c, n in runs], study="t", kind="isoflop")
    if throughput is not None:
        plan.throughput_flops, plan.throughput_source = throughput, "measured on this study's completed runs"
    return plan


# Hand computation, A100 (dense bf16 peak 312 TFLOP/s) at MFU 0.5: one GPU computes
# 312e12 x 0.5 = 1.56e14 FLOP/s, i.e. 1.56e14 x 3600 = 5.616e17 FLOPs per GPU-hour. So
#   run a: C = 5.616e18 FLOPs -> 10 GPU-hours, on 8 GPUs 1.25 h of wall time
#   run b: C = 1.1232e19 FLOPs -> 20 GPU-hours, on 4 GPUs 5 h of wall time
#   total 1.6848e19 FLOPs, 30 GPU-hours, at 2.50 per GPU-hour 75.00.
# On CPU at a measured 2e9 FLOP/s per process: run a 5.616e18 / 2e9 / 3600 = 780,000 process-hours,
# run b 1,560,000, total 2,340,000.
A100 = CostConfig(accelerator="NVIDIA A100-SXM4-80GB", mfu=0.5, price_per_gpu_hour=2.5)
HAND = _plan(("a", 5.616e18, 8), ("b", 1.1232e19, 4), throughput=2e9)


def test_cost_equals_the_hand_computation():
    cost = plan_cost(HAND, A100)
    assert cost.accelerator == "A100" and cost.peak_flops == 312e12
    a, b = cost.runs
    assert a.gpu_hours == pytest.approx(10.0, rel=1e-12) and b.gpu_hours == pytest.approx(20.0, rel=1e-12)
    assert a.gpu_wall_hours == pytest.approx(1.25, rel=1e-12) and b.gpu_wall_hours == pytest.approx(5.0, rel=1e-12)
    assert a.money == pytest.approx(25.0) and b.money == pytest.approx(50.0)
    assert cost.flops == pytest.approx(1.6848e19, rel=1e-12)
    assert cost.gpu_hours == pytest.approx(30.0, rel=1e-12)
    assert cost.money == pytest.approx(75.0, rel=1e-12)
    assert a.cpu_hours == pytest.approx(780_000, rel=1e-12) and b.cpu_hours == pytest.approx(1_560_000, rel=1e-12)
    assert cost.cpu_hours == pytest.approx(2_340_000, rel=1e-12)
    assert cost.cpu_source == "measured on this study's completed runs"

    text = format_cost(cost)
    assert "total: 1.68e+19 FLOPs = 30 GPU-hours on A100 at MFU 0.5 (312 TFLOP/s" in text
    assert "cost: $75.00 at $2.50 per GPU-hour" in text
    assert "2.34e+06 process-hours at 2e+09 FLOP/s per process (measured on this study's completed runs)" in text
    assert "1.25h (8)" in text and "5h (4)" in text


def test_the_peak_is_the_trainers():
    # The cost reads the table the trainer's MFU uses, matched the same way.
    for name in ("H100", "NVIDIA H100 80GB HBM3", "h100"):
        assert plan_cost(HAND, CostConfig(accelerator=name)).peak_flops == peak_flops(name) == 989e12
    assert peak_entry("NVIDIA H100 PCIe") == ("H100 PCIe", 756e12)
    assert peak_flops(None) is None and peak_flops("cpu") is None
    assert all(isinstance(k, str) and v > 0 for k, v in PEAK_BF16_FLOPS)


def test_a_configured_peak_costs_an_unlisted_accelerator():
    cost = plan_cost(_plan(("a", 3.6e18, 1)), CostConfig(accelerator="TPU v5e", peak_flops=1e15, mfu=1.0))
    assert cost.gpu_hours == pytest.approx(1.0)
    assert cost.money is None and cost.cpu_hours is None
    text = format_cost(cost)
    assert "cost:" not in text and "CPU:" not in text


def test_an_explicit_cpu_rate_wins_over_the_plans():
    cost = plan_cost(HAND, A100, cpu_flops_per_s=4e9, cpu_source="given")
    assert cost.cpu_hours == pytest.approx(1_170_000) and cost.cpu_source == "given"


def test_cpu_rate_from_completed_runs(tmp_path: Path):
    # The plan's rate comes from throughput_for, which prefers the study's completed runs:
    # 1e12 FLOPs in 100 s on 2 processes = 5e9 FLOP/s per process.
    from scaling.launch.plan import measured_throughput

    write_result(tmp_path / "runs" / "r0", Result(status=RunStatus.COMPLETED, flops=1e12, wall_time_s=100.0, world_size=2))
    rate = measured_throughput(str(tmp_path))
    assert rate == pytest.approx(5e9)
    cost = plan_cost(_plan(("a", 1.8e13, 1)), A100, cpu_flops_per_s=rate)
    assert cost.cpu_hours == pytest.approx(1.8e13 / 5e9 / 3600)  # 1 process-hour


def test_over_budget_is_refused_with_the_total():
    cost = plan_cost(HAND, A100)
    check_budget(cost, A100)  # no limit
    check_budget(cost, CostConfig(accelerator="A100", mfu=0.5, max_gpu_hours=30.0))  # exactly at the limit
    with pytest.raises(ConfigError) as e:
        check_budget(cost, CostConfig(accelerator="A100", mfu=0.5, price_per_gpu_hour=2.5, max_gpu_hours=29.0))
    msg = str(e.value)
    assert "study.cost.max_gpu_hours=29" in msg and "30 GPU-hours" in msg and "$75.00" in msg
    assert "2 runs of 1.68e+19 FLOPs" in msg and "raise study.cost.max_gpu_hours" in msg
    # A dry run shows the plan against the limit, without refusing.
    assert "budget: 30 of study.cost.max_gpu_hours=29 GPU-hours: OVER, a launch is refused" in format_cost(
        cost, CostConfig(accelerator="A100", mfu=0.5, max_gpu_hours=29.0))
    within = format_cost(cost, CostConfig(max_gpu_hours=100.0))
    assert within.endswith("budget: 30 of study.cost.max_gpu_hours=100 GPU-hours")


@pytest.mark.parametrize(
    "kw, needle",
    [
        (dict(accelerator="Z9000"), "study.cost.accelerator='Z9000' is not in the peak table"),
        (dict(mfu=0.0), "study.cost.mfu=0.0 must lie in (0, 1]"),
        (dict(mfu=1.5), "study.cost.mfu=1.5 must lie in (0, 1]"),
        (dict(mfu=math.nan), "study.cost.mfu=nan"),
        (dict(price_per_gpu_hour=-1.0), "study.cost.price_per_gpu_hour=-1.0 must be >= 0"),
        (dict(max_gpu_hours=0.0), "study.cost.max_gpu_hours=0.0 must be positive"),
        (dict(accelerator="Z9000", peak_flops=-5.0), "study.cost.peak_flops=-5.0 must be a positive"),
    ],
)
def test_config_problems_name_the_key_and_the_fix(kw, needle):
    cfg = CostConfig(**kw)
    problems = cfg.problems()
    assert len(problems) == 1 and needle in problems[0], problems
    with pytest.raises(ConfigError, match="invalid config"):
        plan_cost(HAND, cfg)


def test_every_problem_is_listed_at_once():
    assert len(CostConfig(accelerator="Z9000", mfu=2.0, price_per_gpu_hour=-1.0, max_gpu_hours=-1.0).problems("c")) == 4
    assert CostConfig().problems() == []


def test_a_run_without_flops_is_named_not_counted():
    cost = plan_cost(Plan(runs=[RunSpec(id="a", C=5.616e17, nproc=1), RunSpec(id="hand")]), A100)
    assert cost.gpu_hours == pytest.approx(1.0) and cost.uncounted == ["hand"]
    assert "1 run(s) have no planned FLOPs (C) and are not counted: ['hand']" in format_cost(cost)


def test_cost_of_a_real_plan(tmp_path, monkeypatch, tmp_path_factory):
    # The planner's runs: the total is the plan's total, and GPU-hours follow from it.
    from scaling.launch.config import BudgetsConfig, SizesConfig, StudySpec
    from scaling.launch.plan import make_plan

    monkeypatch.setenv("SCALING_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    spec = StudySpec(name="t", data="synthetic", sizes=SizesConfig(targets=[5e3, 2e4, 5e4]),
                     budgets=BudgetsConfig(flops=[3e10]), dir=str(tmp_path / "study"), nproc=2)  # fmt: skip
    plan = make_plan(spec, throughput=(1e9, "study.throughput_flops"))
    cfg = CostConfig(accelerator="H100", mfu=0.4)
    cost = plan_cost(plan, cfg)
    assert [r.id for r in cost.runs] == [r.id for r in plan.runs]
    assert cost.flops == pytest.approx(plan.total_flops)
    assert cost.gpu_hours == pytest.approx(plan.total_flops / (989e12 * 0.4) / 3600)
    assert all(r.gpu_wall_hours == pytest.approx(r.gpu_hours / 2) for r in cost.runs)
    assert cost.cpu_hours == pytest.approx(plan.total_flops / 1e9 / 3600)
    assert "(study.throughput_flops)" in format_cost(cost)


def test_a_cooldown_branch_costs_its_own_steps_not_its_trunks():
    trunk = RunSpec(id="trunk", N=1, D=1, C=8e18, nproc=1)
    branch = RunSpec(id="branch", N=1, D=1, C=5e18, nproc=1, extra={"branch_C": 1e18})
    cost = plan_cost(Plan(runs=[trunk, branch]), CostConfig(accelerator="A100", mfu=0.5))
    assert [r.flops for r in cost.runs] == [8e18, 1e18]
