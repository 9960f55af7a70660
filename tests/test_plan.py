"""The planner: IsoFLOP grids within tolerance, size ladders, hyperparameter rules, deterministic
run ids that change with anything that affects a run, and early, complete errors."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from scaling.launch.config import (
    BudgetsConfig, ClusterConfig, LadderConfig, LauncherConfig, PowerLaw, RulesConfig, SizesConfig, StudyAppConfig,
    StudySpec, register_configs, to_dataclass, validate,
)  # fmt: skip
from scaling.launch.tune import planned_spec
from scaling.launch.plan import CONF_DIR, format_plan, make_plan, read_plan, write_plan
from scaling.counting import count_params, flops_per_sample
from scaling.config import GPTConfig
from scaling.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def spec(tmp_path: Path, **kw) -> StudySpec:
    base = dict(
        name="t",
        data="synthetic",
        sizes=SizesConfig(targets=[5e3, 2e4, 5e4]),
        budgets=BudgetsConfig(flops=[3e10, 1e11]),
        dir=str(tmp_path / "study"),
    )
    base.update(kw)
    return StudySpec(**base)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    # Built-in data sets are prepared (for their manifest) into a per-session cache.
    monkeypatch.setenv("SCALING_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def test_isoflop_grid_puts_every_run_within_tolerance(tmp_path):
    for tol, budgets in ((0.05, [3e10, 1e11, 3e11]), (0.01, [1e11, 1e12])):
        s = spec(tmp_path, budgets=BudgetsConfig(flops=budgets, flop_tolerance=tol))
        plan = make_plan(s)
        assert {r.budget_flops for r in plan.runs} == set(budgets)
        for r in plan.runs:
            # C is recomputed here from the run's own model, independently of the planner.
            model = GPTConfig(**r.shape, seq_len=64, vocab_size=65)
            c = flops_per_sample(model, "6n") * r.D
            assert c == pytest.approx(r.C, rel=1e-9)
            assert abs(c / r.budget_flops - 1) <= tol, r.id
            assert r.steps >= s.budgets.min_steps
            assert r.D == r.steps * r.batch_tokens


def test_isoflop_without_a_size_list_spaces_sizes_in_log_n_around_each_budget(tmp_path):
    s = spec(tmp_path, sizes=SizesConfig(per_budget=4, span=8.0), budgets=BudgetsConfig(flops=[1e12, 1e13]))
    plan = make_plan(s)
    for c in (1e12, 1e13):
        ns = sorted(r.N for r in plan.runs if r.budget_flops == c)
        assert len(ns) >= 3
        assert ns[-1] / ns[0] == pytest.approx(8.0, rel=0.5)
        n_opt = math.sqrt(c / 120)
        assert ns[0] < n_opt < ns[-1]
    small = [r.N for r in plan.runs if r.budget_flops == 1e12]
    large = [r.N for r in plan.runs if r.budget_flops == 1e13]
    assert max(large) > max(small)


def test_size_ladder_trains_each_size_on_its_multiple_of_n(tmp_path):
    s = spec(tmp_path, sizes=SizesConfig(ladder=LadderConfig(min=5e3, max=5e4, n=3)),
             budgets=BudgetsConfig(tokens_per_param=[20, 40]))  # fmt: skip
    plan = make_plan(s)
    assert plan.kind == "ladder" and len(plan.runs) == 6
    for r in plan.runs:
        assert r.budget_flops is None
        assert r.D == pytest.approx(r.tokens_per_param * r.N)
        assert r.tokens_per_param == pytest.approx(20, rel=0.1) or r.tokens_per_param == pytest.approx(40, rel=0.1)


def test_rules_are_olmo_power_laws_by_default_and_overridable(tmp_path):
    plan = make_plan(spec(tmp_path))
    for r in plan.runs:
        assert r.lr == pytest.approx(0.0047 * (r.N / 108e6) ** (-1 / 3), rel=1e-3)
        target = 160 * 2048 * (r.N / 108e6) ** (2 / 3) / 64
        assert abs(r.batch - target) <= 1
        assert f"train.lr={r.lr}" in r.overrides and f"train.global_batch_size={r.batch}" in r.overrides
    text = format_plan(plan)
    assert "lr = 0.0047" in text and "batch = 327680 tokens" in text

    rules = RulesConfig(lr=PowerLaw(coef=1e-3, exponent=0.0), batch_tokens=PowerLaw(coef=640, exponent=0.0))
    plan2 = make_plan(spec(tmp_path, rules=rules))
    assert {r.lr for r in plan2.runs} == {1e-3} and {r.batch for r in plan2.runs} == {10}


def test_run_ids_are_deterministic_and_change_with_anything_that_affects_a_run(tmp_path):
    a = [r.id for r in make_plan(spec(tmp_path)).runs]
    b = [r.id for r in make_plan(spec(tmp_path)).runs]
    assert a == b and len(set(a)) == len(a)
    assert all(i.startswith("gpt-N") and "-s0-" in i for i in a)

    changed = {
        "schedule": spec(tmp_path, overrides=["train.schedule=wsd"]),
        "lr rule": spec(tmp_path, rules=RulesConfig(lr=PowerLaw(coef=0.005, exponent=-1 / 3))),
        "data": spec(tmp_path, overrides=["data.synthetic_tokens=131072"]),
        "seed": spec(tmp_path, seeds=[1]),
    }
    for what, s in changed.items():
        ids = {r.id for r in make_plan(s).runs}
        assert not ids & set(a), what
    # Keys that do not change what a run computes keep the ids (a relaunch finds its runs).
    same = [r.id for r in make_plan(spec(tmp_path, overrides=["train.log_every_steps=5"])).runs]
    assert same == a
    # The study's name and folder are not part of a run's identity.
    moved = [r.id for r in make_plan(spec(tmp_path, name="other", dir=str(tmp_path / "x"))).runs]
    assert moved == a


def test_plan_json_round_trips_and_holds_what_the_launchers_need(tmp_path):
    plan = make_plan(spec(tmp_path))
    path = write_plan(plan)
    raw = json.loads(path.read_text())
    for key in ("id", "overrides", "N", "D", "C", "budget_flops", "batch", "lr", "nproc", "dir"):
        assert key in raw["runs"][0]
    assert raw["total_flops"] == pytest.approx(sum(r.C for r in plan.runs))
    back = read_plan(path.parent)
    assert back.runs == plan.runs
    r = plan.runs[0]
    assert f"run.dir={r.dir}" in r.overrides and f"run.id={r.id}" in r.overrides
    assert Path(r.dir).parent == Path(plan.dir) / "runs"


def test_invalid_specs_fail_early_naming_every_key(tmp_path):
    with pytest.raises(ConfigError) as e:
        make_plan(spec(tmp_path, sizes=SizesConfig(targets=[]), budgets=BudgetsConfig(tokens_per_param=[20])))
    assert "study.sizes" in str(e.value) and "empty" in str(e.value)

    with pytest.raises(ConfigError) as e:
        make_plan(spec(tmp_path, budgets=BudgetsConfig(flops=[1e6, 3e10])))
    msg = str(e.value)
    assert "study.budgets.flops[0]=1e+06 is too small for the smallest model" in msg and "raise the budget" in msg

    # Several problems at once, one error.
    bad = spec(tmp_path, seeds=[], nproc=0, budgets=BudgetsConfig(flops=[1e11], flop_tolerance=2.0), family="rnn")
    with pytest.raises(ConfigError) as e:
        make_plan(bad)
    assert len(e.value.problems) >= 4
    for key in ("study.seeds", "study.nproc=0", "study.budgets.flop_tolerance=2.0", "study.family='rnn'"):
        assert key in str(e.value)

    with pytest.raises(ConfigError, match="planner sets for each run"):
        make_plan(spec(tmp_path, overrides=["train.lr=0.1"]))


def test_a_slurm_launch_without_a_partition_fails_before_submitting(tmp_path):
    cfg = StudyAppConfig(study=spec(tmp_path), launcher=LauncherConfig(name="slurm"), cluster=ClusterConfig())
    with pytest.raises(ConfigError, match=r"cluster.partition is unset .*cluster=NAME"):
        validate(cfg)
    from scaling.launch.study import launch_study

    with pytest.raises(ConfigError, match="cluster.partition"):
        launch_study(cfg.study, cfg.launcher, cfg.cluster)
    assert not Path(cfg.study.dir).exists()


# cnn_known's plan generates its 262,144 images first (about 40 s on 2 cores): slow tier.
@pytest.mark.parametrize("study", [
    pytest.param(p.stem, marks=pytest.mark.slow) if p.stem == "cnn_known" else p.stem
    for p in sorted((CONF_DIR / "study").glob("*.yaml"))
])  # fmt: skip
def test_every_study_yaml_composes_and_plans(study, tmp_path):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        dcfg = compose(config_name="study_app", overrides=[f"study={study}", f"study.dir={tmp_path}/s"])
    cfg = to_dataclass(dcfg)
    assert cfg.study.name == study
    plan = make_plan(planned_spec(cfg.study))
    assert plan.runs
    # Every run states its epochs, and the plan warns exactly when one exceeds the study's limit.
    assert all(r.epochs is not None and r.epochs > 0 for r in plan.runs)
    limit = cfg.study.budgets.max_epochs
    repeats = limit is not None and max(r.epochs for r in plan.runs) > limit
    assert repeats == any(n.startswith("data repetition") for n in plan.notes)
    if plan.kind == "isoflop":
        tol = cfg.study.budgets.flop_tolerance
        assert all(abs(r.C / r.budget_flops - 1) <= tol for r in plan.runs)


@pytest.mark.parametrize("group", ["launcher", "cluster"])
def test_every_launcher_and_cluster_yaml_composes(group):
    register_configs()
    names = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
    assert names
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for name in names:
            extra = ["launcher=slurm"] if group == "cluster" else ["cluster=local"]
            cfg = to_dataclass(compose(config_name="study_app", overrides=[f"{group}={name}", *extra]))
            assert getattr(cfg, group).name == name


def test_default_study_is_an_isoflop_grid(tmp_path):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = to_dataclass(compose(config_name="study_app"))
    assert cfg.study.name == "isoflop_tiny" and cfg.study.kind == "isoflop"
    assert cfg.study.data == "stdlib_text" and cfg.launcher.name == "local"
    plan = make_plan(planned_spec(cfg.study, str(tmp_path)), str(tmp_path))
    budgets = {r.budget_flops for r in plan.runs}
    assert len(budgets) >= 3
    assert all(sum(r.budget_flops == c for r in plan.runs) >= 4 for c in budgets)


def test_dry_run_prints_the_plan_table_and_total_compute(tmp_path):
    script = Path(sys.executable).with_name("scaling-study")  # the console script, as a user runs it
    launcher = [str(script)] if script.exists() else [sys.executable, "-m", "scaling.launch.study"]
    cmd = [*launcher, "study.name=dry", "study.data=synthetic",
           "study.sizes.targets=[5e3,2e4]", "study.budgets.flops=[3e10]", f"study.dir={tmp_path}/dry",
           "study.throughput_flops=1e9", "study.dry_run=true"]  # fmt: skip
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    header = out.stdout.split("\n")
    line = next(h for h in header if h.startswith("id "))
    for col in ("N", "D", "C", "batch", "lr", "procs", "est. time"):
        assert col in line
    assert "total compute: " in out.stdout and "estimated time" in out.stdout
    assert "1e+09 FLOP/s per process (study.throughput_flops)" in out.stdout
    assert not (tmp_path / "dry").exists()  # a dry run writes nothing


def test_cli_reports_config_errors_without_a_traceback(tmp_path):
    cmd = [sys.executable, "-m", "scaling.launch.study", "study.data=synthetic", "study.budgets.flops=[1e3]",
           f"study.dir={tmp_path}/bad", "launcher=slurm"]  # fmt: skip
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert "cluster.partition is unset" in out.stderr
    assert not (tmp_path / "bad").exists()


def _training_units(s: StudySpec) -> int:
    """Unique training tokens of the study's data, read from its manifest file on disk."""
    from scaling.config import to_dataclass as train_dataclass
    from scaling.data import prepare_dataset
    from scaling.launch.plan import compose_train

    data = train_dataclass(compose_train([f"data={s.data}", *s.overrides, "train.tokens=1"])).data
    folder = Path(prepare_dataset(data).location)
    raw = json.loads((folder / "manifest.json").read_text())
    return raw["splits"]["train"]["unique_samples"] * raw["seq_len"]


def test_every_run_states_its_epochs_over_the_training_split(tmp_path):
    s = spec(tmp_path, budgets=BudgetsConfig(flops=[3e10, 3e11]))
    plan = make_plan(s)
    unique = _training_units(s)
    assert unique > 100_000
    for r in plan.runs:
        assert r.epochs == pytest.approx(r.D / unique, rel=1e-12)
    assert max(r.epochs for r in plan.runs) > 4 > min(r.epochs for r in plan.runs)

    table = format_plan(plan).splitlines()
    header = next(line for line in table if line.startswith("id "))
    assert "epochs" in header.split()
    column = header.index("epochs")
    worst = max(plan.runs, key=lambda r: r.epochs)
    row = next(line for line in table if line.startswith(worst.id))
    assert row[column:].split()[0] == f"{worst.epochs:.2g}"

    # plan.json carries them, and a plan written before epochs were counted still reads.
    path = write_plan(plan)
    assert read_plan(path.parent).runs == plan.runs
    raw = json.loads(path.read_text())
    for r in raw["runs"]:
        del r["epochs"]
    path.write_text(json.dumps(raw))
    assert all(r.epochs is None for r in read_plan(path.parent).runs)


def test_repetition_beyond_max_epochs_warns_unless_the_study_says_it_is_intended(tmp_path):
    budgets = [3e10, 3e11]
    plan = make_plan(spec(tmp_path, budgets=BudgetsConfig(flops=budgets)))
    over = [r for r in plan.runs if r.epochs > 4]
    assert over and len(over) < len(plan.runs)
    (note,) = [n for n in plan.notes if n.startswith("data repetition")]
    assert f"{len(over)} of {len(plan.runs)} runs" in note and "study.budgets.max_epochs=4 " in note
    assert max(over, key=lambda r: r.epochs).id in note and "max_epochs=null" in note
    assert f"note: {note}" in format_plan(plan)

    # Intended (null) or a higher threshold: no warning, and not one run changes.
    for limit in (None, 1e3):
        quiet = make_plan(spec(tmp_path, budgets=BudgetsConfig(flops=budgets, max_epochs=limit)))
        assert not [n for n in quiet.notes if n.startswith("data repetition")]
        assert [r.id for r in quiet.runs] == [r.id for r in plan.runs]
        assert [r.overrides for r in quiet.runs] == [r.overrides for r in plan.runs]

    with pytest.raises(ConfigError, match=r"study.budgets.max_epochs=0 must be positive .* or null"):
        make_plan(spec(tmp_path, budgets=BudgetsConfig(flops=budgets, max_epochs=0)))


def test_max_epochs_is_a_typed_study_key():
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        assert to_dataclass(compose(config_name="study_app")).study.budgets.max_epochs == 4.0
        cfg = to_dataclass(compose(config_name="study_app", overrides=["study.budgets.max_epochs=null"]))
        assert cfg.study.budgets.max_epochs is None
        with pytest.raises(Exception, match="max_epochs"):
            compose(config_name="study_app", overrides=["study.budgets.max_epochs=many"])


def test_a_budget_too_small_for_any_automatic_size_names_the_smallest_budget_that_plans(tmp_path):
    auto = SizesConfig(per_budget=3, span=4.0)
    with pytest.raises(ConfigError) as e:
        make_plan(spec(tmp_path, sizes=auto, budgets=BudgetsConfig(flops=[1e3, 1e12])))
    (problem,) = e.value.problems
    assert problem.startswith("study.budgets.flops[0]=1e+03 is too small for any model: ")
    assert "must be a positive count" not in problem
    smallest = float(problem.split("the smallest budget that plans is ")[1].split(" FLOPs")[0])
    assert f"raise study.budgets.flops[0] to >= {smallest:.2g}" in problem

    # The stated budget plans; the round budget just below it does not.
    plan = make_plan(spec(tmp_path, sizes=auto, budgets=BudgetsConfig(flops=[smallest])))
    assert plan.runs and {r.budget_flops for r in plan.runs} == {smallest}
    from scaling.launch.plan import _ROUND_MANTISSAS

    grid = sorted(float(f"{m}e{k}") for k in range(3, 20) for m in _ROUND_MANTISSAS)
    below = grid[grid.index(smallest) - 1]
    with pytest.raises(ConfigError, match=re.escape(f"flops[0]={below:.3g} is too small for any model")):
        make_plan(spec(tmp_path, sizes=auto, budgets=BudgetsConfig(flops=[below])))
