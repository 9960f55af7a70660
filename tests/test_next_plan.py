"""Recentring an IsoFLOP grid: a budget whose minimum lies on the edge of its sizes gets sizes
beyond that edge in next_plan.yaml, and `study.extend=next` plans them beside every run planned
before (the same ids, so finished runs are reused)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml

from scaling.analysis.study import NEXT_PLAN, analyse_study, next_plan_extra, write_study_outputs
from scaling.contracts import Plan, Result, RunSpec, RunStatus, write_plan, write_result
from scaling.errors import ConfigError
from scaling.launch.config import BudgetsConfig, PowerLaw, RulesConfig, SizesConfig, StudySpec
from scaling.launch.plan import make_plan
from scaling.launch.study import extended

TRUE = {"E": 1.9, "A": 60.0, "alpha": 0.35, "B": 300.0, "beta": 0.35}


def _law(N, D):
    return TRUE["E"] + TRUE["A"] / N ** TRUE["alpha"] + TRUE["B"] / D ** TRUE["beta"]


def _study(folder: Path, shift_last: float) -> Plan:
    """4 budgets x 5 sizes around each optimum; the last budget's sizes shifted by `shift_last`."""
    runs = []
    budgets = (1e15, 1e16, 1e17, 1e18)
    for C in budgets:
        n_opt = 0.35 * (C / 6) ** 0.5
        for N in n_opt * np.geomspace(0.3, 3.0, 5) * (shift_last if C == budgets[-1] else 1.0):
            N, D = int(N), int(C / (6 * int(N)))
            rid = f"run-N{N}-D{D}"
            write_result(folder / "runs" / rid, Result(status=RunStatus.COMPLETED, run_id=rid, params=N, tokens=D,
                                                       flops=6.0 * N * D, eval_loss=_law(N, D), budget_flops=C))
            runs.append(RunSpec(id=rid, N=N, D=D, C=6.0 * N * D, budget_flops=C, dir=str(folder / "runs" / rid)))
    plan = Plan(runs=runs, study="edge", kind="isoflop", dir=str(folder), n_count="total")
    write_plan(plan)
    return plan


def test_a_budget_with_its_minimum_at_the_smallest_size_gets_smaller_sizes(tmp_path):
    _study(tmp_path, shift_last=8.0)  # the last budget's sizes all lie above its optimum
    a = analyse_study(tmp_path, n_boot=0)
    extra = next_plan_extra(a)
    assert [e["budget"] for e in extra] == [1e18]
    last = [p for p in a.iso.profiles if p.budget == pytest.approx(1e18)][0]
    assert not last.interior and max(extra[0]["targets"]) < min(last.N)
    step = (max(last.N) / min(last.N)) ** 0.25
    assert extra[0]["targets"][0] == pytest.approx(min(last.N) / step, rel=1e-3)
    write_study_outputs(tmp_path, a)
    text = (tmp_path / NEXT_PLAN).read_text()
    assert "study.extend=next" in text
    assert yaml.safe_load(text)["sizes"]["extra"] == [{"budget": 1e18, "targets": sorted(extra[0]["targets"])}]


def test_no_next_plan_when_every_minimum_is_interior(tmp_path):
    _study(tmp_path, shift_last=1.0)
    a = analyse_study(tmp_path, n_boot=0)
    assert next_plan_extra(a) == []
    write_study_outputs(tmp_path, a)
    assert not (tmp_path / NEXT_PLAN).exists()


def _spec(folder: Path) -> StudySpec:
    return StudySpec(
        name="edge", dir=str(folder), overrides=["data.seq_len=64"],
        sizes=SizesConfig(count="total", per_budget=4, span=4, center_tokens_per_param=60),
        budgets=BudgetsConfig(flops=[6e10, 2e11]), rules=RulesConfig(batch_tokens=PowerLaw(coef=2048, exponent=0.0)),
    )  # fmt: skip


def test_extend_next_keeps_every_planned_run_and_adds_the_new_sizes(tmp_path):
    spec = _spec(tmp_path)
    before = make_plan(spec)
    top = max(r.N for r in before.runs if r.budget_flops == 2e11)
    (tmp_path / NEXT_PLAN).write_text(yaml.safe_dump({"sizes": {"extra": [{"budget": 2e11, "targets": [top * 1.6, top * 2.5]}]}}))
    after = make_plan(extended(replace(spec, extend="next"), str(tmp_path)))
    old, new = {r.id for r in before.runs}, {r.id for r in after.runs}
    assert old < new
    added = [r for r in after.runs if r.id not in old]
    assert added and all(r.budget_flops == 2e11 and r.N > top for r in added)


def test_extend_next_without_a_next_plan_says_why(tmp_path):
    with pytest.raises(ConfigError, match="the report writes it only when an IsoFLOP minimum lies on the edge"):
        extended(replace(_spec(tmp_path), extend="next"), str(tmp_path))


def test_extra_sizes_must_name_a_budget_of_the_study(tmp_path):
    spec = replace(_spec(tmp_path), sizes=SizesConfig(extra=[{"budget": 5e11, "targets": [1e5]}]))
    assert any("study.sizes.extra[0].budget=500000000000.0 is not one of study.budgets.flops" in p
               for p in spec.problems())  # fmt: skip


def test_seeds_of_one_configuration_are_one_bootstrap_unit_when_the_spec_says_so(tmp_path):
    from scaling.analysis.io import plan_units

    spec = replace(_spec(tmp_path), seeds=[0, 1])
    assert plan_units(make_plan(spec)) is None  # by default each run is its own unit
    plan = make_plan(replace(spec, resample="configuration"))
    units = plan_units(plan)
    by_unit: dict[str, set] = {}
    for r in plan.runs:
        by_unit.setdefault(units[r.id], set()).add(r.seed)
    assert len(by_unit) == len(plan.runs) // 2 and all(seeds == {0, 1} for seeds in by_unit.values())
    assert "study.resample='x'" in " ".join(replace(spec, resample="x").problems())
