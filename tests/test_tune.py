"""The tune phase: the best LR of a sweep (a parabola in log LR around the grid's minimum), its
errors, and the study it sets: every run at the sweep's LR under muP relative to the sweep's shape.
The sweep's runs are stood in for by result.json files in the run-directory contract."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from scaling.analysis.tune import TuneError, best_lr
from scaling.contracts import Result, RunStatus, write_result
from scaling.errors import ConfigError
from scaling.launch.config import (BudgetsConfig, PowerLaw, RulesConfig, SizesConfig, StudyAppConfig, StudySpec,
                                   TuneConfig, validate)

GRID = [0.004, 0.008, 0.016, 0.032, 0.064, 0.128]


def _bowl(lr: float, best: float = 0.02, depth: float = 3.0, width: float = 0.3) -> float:
    """A loss with its minimum at `best`, a parabola in log LR."""
    return depth + width * math.log(lr / best) ** 2


def test_parabola_finds_the_minimum_between_grid_points():
    r = best_lr(GRID, [[_bowl(lr)] for lr in GRID])
    assert r.best_lr == pytest.approx(0.02, rel=1e-3)
    assert r.best_index == 2 and r.window == [1, 2, 3]
    assert r.predicted_loss == pytest.approx(3.0, abs=1e-9)


def test_seed_means_are_fitted_and_the_order_of_the_grid_does_not_matter():
    rng = np.random.default_rng(0)
    losses = [[_bowl(lr) + 0.01 * rng.standard_normal() for _ in range(3)] for lr in GRID]
    a = best_lr(GRID, losses)
    b = best_lr(GRID[::-1], losses[::-1])
    assert a.best_lr == b.best_lr
    assert a.mean == pytest.approx([float(np.mean(v)) for v in losses])
    assert 0.012 < a.best_lr < 0.032


@pytest.mark.parametrize("best,side,fix", [(0.001, "lowest", "add smaller LRs"), (1.0, "highest", "add larger LRs")])
def test_a_minimum_on_the_edge_says_which_way_to_widen(best, side, fix):
    with pytest.raises(TuneError, match=side) as e:
        best_lr(GRID, [[_bowl(lr, best=best)] for lr in GRID], key="study.tune.lrs")
    assert "study.tune.lrs" in str(e.value) and fix in str(e.value)


def test_diverged_runs_are_worse_than_any_finite_and_stay_out_of_the_parabola():
    losses = [[_bowl(lr)] for lr in GRID]
    losses[4] = [math.nan]
    losses[5] = [math.inf]
    r = best_lr(GRID, losses)
    assert r.mean[4] == math.inf and r.window == [1, 2, 3]
    assert r.best_lr == pytest.approx(0.02, rel=1e-2)
    # one diverged seed of two makes that LR unusable
    two = [[_bowl(lr), _bowl(lr)] for lr in GRID]
    two[2] = [_bowl(GRID[2]), math.nan]
    assert best_lr(GRID, two).mean[2] == math.inf
    # a diverged neighbour of the minimum: no parabola, the grid's best LR
    edge = [[_bowl(lr, best=0.05)] for lr in GRID]
    edge[4] = [math.nan]
    r = best_lr(GRID, edge)
    assert r.best_lr == GRID[3] and r.coef is None and "diverged" in r.note


def test_an_asymmetric_curve_is_read_off_near_its_minimum():
    # steep above the optimum, gentle below (as loss against LR is): the three points around the
    # minimum see only the local curvature, and the vertex stays between the neighbours
    losses = [[3.0 + 0.05 * abs(math.log(lr / 0.05)) + (2.0 * math.log(lr / 0.05) ** 2 if lr > 0.05 else 0.0)] for lr in GRID]
    r = best_lr(GRID, losses)
    assert r.best_index == 3 and r.window == [2, 3, 4]
    lo, hi = GRID[r.best_index - 1], GRID[r.best_index + 1]
    assert lo < r.best_lr < hi


def test_the_vertex_is_kept_within_the_neighbours_of_the_grid_minimum():
    # a lopsided curve: the parabola through the window puts its vertex past the neighbour
    losses = [[5.0], [3.2], [3.0], [3.001], [9.0], [20.0]]
    r = best_lr(GRID, losses)
    assert GRID[1] <= r.best_lr <= GRID[3]


def test_too_few_lrs_are_refused():
    with pytest.raises(TuneError, match="3 or more"):
        best_lr([0.01, 0.02], [[1.0], [2.0]])


def test_config_problems_name_the_key():
    spec = StudySpec(tune=TuneConfig(lrs=[0.01, 0.02]))
    with pytest.raises(ConfigError, match=r"study.tune.lrs=\[0.01, 0.02\] has 2 LRs"):
        validate(StudyAppConfig(study=spec))
    with pytest.raises(ConfigError, match="study.tune.tokens_per_param"):
        validate(StudyAppConfig(study=StudySpec(tune=TuneConfig(lrs=GRID, tokens_per_param=-1))))


# ---- the launcher's side: plan, sweep results, the tuned study ----------------------------------
from scaling.launch.tune import plan_tune, tune_result  # noqa: E402

MUP = ["model.parametrization=mup", "data.seq_len=64"]


def _spec(tmp_path: Path, **tune) -> StudySpec:
    return StudySpec(
        name="t", dir=str(tmp_path / "study"), overrides=list(tune.pop("overrides", MUP)),
        sizes=SizesConfig(targets=[5.5e3, 1.6e4, 5e4], count="total"),
        budgets=BudgetsConfig(tokens_per_param=[20.0, 80.0]),
        rules=RulesConfig(batch_tokens=PowerLaw(coef=2048, exponent=0.0)), tune=TuneConfig(lrs=GRID, **tune),
    )  # fmt: skip


def test_the_sweep_trains_the_smallest_model_at_every_lr_on_the_typical_tokens(tmp_path):
    spec = (_spec(tmp_path))
    tune = plan_tune(spec, spec.dir)
    assert tune.kind == "tune" and len(tune.runs) == len(GRID)
    assert sorted(r.lr for r in tune.runs) == GRID
    assert len({r.id for r in tune.runs}) == len(GRID)
    shape = tune.runs[0].shape
    assert shape["n_layers"] == 1 and shape["d_model"] == 8  # the smallest model of the three
    for r in tune.runs:
        assert Path(r.dir).parent == Path(spec.dir) / "tune" / "runs"
        assert r.tokens_per_param == pytest.approx(math.sqrt(20 * 80), rel=0.05)  # the ladder's geometric mean
        assert "model.mup.base_width=8" in r.overrides and "model.mup.base_depth=1" in r.overrides
        assert "model.mup.base_head_dim=8" in r.overrides


def _finish(tune, loss) -> None:
    for r in tune.runs:
        write_result(r.dir, Result(status=RunStatus.COMPLETED, run_id=r.id, eval_loss=loss(r.lr)))


def test_the_study_trains_every_run_at_the_sweeps_lr_under_mup(tmp_path):
    from scaling.launch.config import LauncherConfig
    from scaling.launch.study import launch_study

    spec = (_spec(tmp_path))
    tune = plan_tune(spec, spec.dir)
    assert tune_result(tune) is None  # nothing has run
    _finish(tune, lambda lr: _bowl(lr, best=0.023))
    result = tune_result(tune)
    assert result.best_lr == pytest.approx(0.023, rel=1e-3)
    lines = []
    out = launch_study(replace(spec, dry_run=True), LauncherConfig(), echo=lines.append)
    assert {r.lr for r in out.plan.runs} == {result.best_lr}
    for r in out.plan.runs:
        assert "model.mup.base_width=8" in r.overrides and f"train.lr={result.best_lr}" in r.overrides
    assert "tuned by the study's sweep" in out.plan.rules["lr"]
    assert any("tune phase: best LR 0.023" in line for line in lines)


def test_a_sweep_with_its_minimum_on_the_edge_is_a_config_error(tmp_path):
    spec = (_spec(tmp_path))
    tune = plan_tune(spec, spec.dir)
    _finish(tune, lambda lr: _bowl(lr, best=1.0))
    with pytest.raises(ConfigError, match="add larger LRs to study.tune.lrs"):
        tune_result(tune)


def test_a_failed_sweep_run_leaves_the_sweep_unfinished_and_a_diverged_one_counts_as_worst(tmp_path):
    spec = (_spec(tmp_path))
    tune = plan_tune(spec, spec.dir)
    _finish(tune, lambda lr: _bowl(lr, best=0.02))
    top = max(tune.runs, key=lambda r: r.lr)
    write_result(top.dir, Result(status=RunStatus.FAILED, run_id=top.id, error="loss is nan at step 7; lower train.lr"))
    assert tune_result(tune).mean[-1] == math.inf
    write_result(top.dir, Result(status=RunStatus.FAILED, run_id=top.id, error="out of memory"))
    assert tune_result(tune) is None


def test_tune_needs_mup(tmp_path):
    spec = (_spec(tmp_path, overrides=["data.seq_len=64"]))
    with pytest.raises(ConfigError, match="add 'model.parametrization=mup' to study.overrides"):
        plan_tune(spec, spec.dir)


def test_a_base_shape_larger_than_the_smallest_model_is_refused(tmp_path):
    spec = (_spec(tmp_path, shape={"n_layers": 2, "d_model": 16, "n_heads": 1}))
    with pytest.raises(ConfigError) as e:
        plan_tune(spec, spec.dir)
    text = str(e.value)
    assert "study.tune.shape has d_model=16, larger than the study's smallest model (d_model=8)" in text
    assert "n_layers=2" in text


def test_the_base_shape_is_the_sweeps_not_the_overrides(tmp_path):
    spec = (_spec(tmp_path, overrides=[*MUP, "model.mup.base_width=4"]))
    with pytest.raises(ConfigError, match="study.tune sets the muP base shape"):
        plan_tune(spec, spec.dir)
