"""The planner's trunks and cooldown branches (study.branches): the tree, the fork points in whole
steps, the bootstrap units, the compute saved, and the errors before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from scaling.errors import ConfigError
from scaling.launch.config import BranchesConfig, BudgetsConfig, SizesConfig, StudySpec
from scaling.launch.plan import format_plan, make_plan, spent_flops
from scaling.schedule import wsd_decay_start


def spec(tmp_path: Path, **kw) -> StudySpec:
    base = dict(name="t", data="synthetic", sizes=SizesConfig(targets=[5e3, 2e4]), budgets=BudgetsConfig(),
                branches=BranchesConfig(at=[10, 20, 40], decay_fraction=0.2), seeds=[0, 1],
                dir=str(tmp_path / "study"))  # fmt: skip
    base.update(kw)
    return StudySpec(**base)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SCALING_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _cfg(run) -> dict:
    return dict(o.split("=", 1) for o in run.overrides)


def test_one_trunk_per_size_and_seed_with_a_branch_per_point(tmp_path):
    plan = make_plan(spec(tmp_path))
    trunks = [r for r in plan.runs if r.extra.get("role") == "trunk"]
    branches = [r for r in plan.runs if r.extra.get("role") == "branch"]
    assert len(trunks) == 2 * 2 and len(branches) == 2 * 2 * 3 and len(plan.runs) == 16
    assert len({r.id for r in plan.runs}) == 16 and len({r.dir for r in plan.runs}) == 16
    by_id = {r.id: r for r in plan.runs}
    for t in trunks:
        kids = [b for b in branches if b.extra["parent"] == t.id]
        assert len(kids) == 3 and {b.seed for b in kids} == {t.seed} and {b.N for b in kids} == {t.N}
        cfg = _cfg(t)
        assert cfg["train.schedule"] == "constant"
        forks = sorted(b.extra["fork_tokens"] for b in kids)
        assert cfg["run.fork_tokens"] == "[" + ",".join(str(f) for f in forks) + "]"
        assert t.D == forks[-1]  # the trunk ends at its last fork point
        assert {b.extra["unit"] for b in kids} == {t.extra["unit"]} == {t.id}
    for b in branches:
        cfg = _cfg(b)
        assert cfg["train.schedule"] == "wsd" and cfg["train.parent"] == b.extra["parent"] in by_id
        assert float(cfg["train.decay_fraction"]) == 0.2
        # The fork is the branch's own decay start, in whole steps, on the trunk's batch.
        assert b.extra["fork_step"] == wsd_decay_start(b.steps, 0.2)
        assert b.extra["fork_tokens"] == b.extra["fork_step"] * b.batch_tokens
        assert by_id[b.extra["parent"]].batch_tokens == b.batch_tokens
        assert spent_flops(b) == pytest.approx(b.C * (b.steps - b.extra["fork_step"]) / b.steps)
        # A branch's directory is a sibling of its trunk's: train.parent finds it.
        assert Path(b.dir).parent == Path(by_id[b.extra["parent"]].dir).parent
    # Planning is deterministic: the same spec gives the same ids.
    assert [r.id for r in make_plan(spec(tmp_path)).runs] == [r.id for r in plan.runs]


def test_dry_run_shows_the_tree_and_the_compute_saved(tmp_path):
    plan = make_plan(spec(tmp_path))
    text = format_plan(plan)
    assert "4 trunks and 12 branches" in text
    assert text.count("(trunk, constant LR") == 4 and text.count("└─") == 4 and text.count("├─") == 8
    spent = sum(spent_flops(r) for r in plan.runs)
    scratch = sum(r.C for r in plan.runs if r.extra["role"] == "branch")
    assert spent < scratch
    assert f"{spent:.3g} FLOPs spent for 12 branch points, against {scratch:.3g}" in text


def test_without_branches_nothing_changes(tmp_path):
    plain = spec(tmp_path, branches=BranchesConfig(), budgets=BudgetsConfig(tokens_per_param=[20]))
    plan = make_plan(plain)
    assert all("role" not in r.extra for r in plan.runs)
    assert not any("train.parent" in o or "run.fork_tokens" in o for r in plan.runs for o in r.overrides)
    assert "trunk" not in format_plan(plan)


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(branches=BranchesConfig(at=[20], decay_fraction=1.0)), r"study.branches.decay_fraction=1.0 must lie in \(0, 1\)"),
        (dict(branches=BranchesConfig(at=[20], decay_fraction=0.0)), r"study.branches.decay_fraction=0.0 must lie in \(0, 1\)"),
        (dict(branches=BranchesConfig(at=[20, 80], trunk_tokens_per_param=30)), r"branch points \[80\].*beyond the trunk"),
        (dict(overrides=["train.schedule=cosine"]), r"'train.schedule=cosine'.*constant LR.*cosine trunk"),
        (dict(budgets=BudgetsConfig(flops=[1e11])), r"branches.at with study.budgets.flops"),
        (dict(budgets=BudgetsConfig(tokens_per_param=[20])), r"with branches the ladder's multipliers are"),
        (dict(branches=BranchesConfig(at=[20], decay_shape="exp")), r"decay_shape='exp'"),
    ],
)
def test_bad_branch_specs_fail_before_anything_runs(tmp_path, kw, message):
    with pytest.raises(ConfigError, match=message):
        make_plan(spec(tmp_path, **kw))
    assert not (tmp_path / "study").exists()


def test_the_example_study_composes_and_plans(tmp_path):
    from hydra import compose, initialize_config_dir

    from scaling.launch.config import register_configs, to_dataclass
    from scaling.launch.plan import CONF_DIR

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = to_dataclass(compose(config_name="study_app", overrides=["study=wsd_ladder", f"study.dir={tmp_path}/s"]))
    assert cfg.study.branches.at and cfg.study.branches.decay_shape == "1-sqrt"
    plan = make_plan(cfg.study)
    assert sum(r.extra.get("role") == "trunk" for r in plan.runs) == 4


def test_status_shows_roles_and_branches_waiting_for_their_fork(tmp_path):
    from scaling.launch.status import format_status, study_states
    from scaling.launch.plan import write_plan

    plan = make_plan(spec(tmp_path, seeds=[0]))
    write_plan(plan)
    text = format_status(*study_states(plan.dir))
    trunk = next(r for r in plan.runs if r.extra["role"] == "trunk")
    assert f"branch of {trunk.id} at step" in text
    assert text.count("waits for its fork checkpoint") == 6  # 2 sizes x 3 branch points, nothing trained


def test_isoflop_branch_points_are_the_grids_cells(tmp_path):
    grid = dict(sizes=SizesConfig(targets=[5e3, 2e4, 5e4]), budgets=BudgetsConfig(flops=[3e10, 1e11]), seeds=[0])
    plain = make_plan(spec(tmp_path / "a", branches=BranchesConfig(), **grid))
    plan = make_plan(spec(tmp_path / "b", branches=BranchesConfig(isoflop=True), **grid))
    branches = [r for r in plan.runs if r.extra.get("role") == "branch"]
    trunks = [r for r in plan.runs if r.extra.get("role") == "trunk"]
    # The same points (N, D, budget) as the plain grid, each now a branch of its size's trunk.
    assert sorted((r.N, r.D, r.budget_flops) for r in branches) == sorted((r.N, r.D, r.budget_flops) for r in plain.runs)
    assert len(trunks) == len({r.N for r in branches})
    assert all(r.budget_flops is None for r in trunks)
    assert "trunks and" in format_plan(plan)


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(branches=BranchesConfig(isoflop=True)), r"branches.isoflop=true needs an IsoFLOP grid"),
        (dict(branches=BranchesConfig(isoflop=True, at=[20]), budgets=BudgetsConfig(flops=[1e11])), r"not both"),
    ],
)
def test_bad_isoflop_branch_specs(tmp_path, kw, message):
    with pytest.raises(ConfigError, match=message):
        make_plan(spec(tmp_path, **kw))
