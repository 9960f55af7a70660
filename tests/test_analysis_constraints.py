"""Constrained fits: fixed, tied and bounded parameters through the fit, the bootstrap, the
derived quantities, the nested test, the CLI, fit.json and a study's report."""

import json
from pathlib import Path

import numpy as np
import pytest

from scaling.analysis import laws
from scaling.analysis.cli import main
from scaling.analysis.constraints import Constraints, constraint_problems, parse_cli, resolve
from scaling.analysis.data import Data
from scaling.analysis.errors import AnalysisError, TooFewPointsError
from scaling.analysis.fit import bootstrap, compute_optimal, fit_law
from scaling.analysis.forms import huber_value_and_grad
from scaling.analysis.laws import CHINCHILLA, LAWS
from scaling.analysis.io import load_csv
from scaling.analysis.nested import compare_nested, compare_or_why, fit_unconstrained_for
from scaling.analysis.study import analyse_study, render_report, study_json
from test_analysis_fit import EPOCH_BEST
from test_analysis_io_cli import FIG4, write_study

TIED = dict(E=1.69, A=406.4, B=410.7, alpha=0.32, beta=0.32)
UNTIED = dict(E=1.8, A=400.0, B=1500.0, alpha=0.34, beta=0.30)
# Five runs, as a study that costs a GPU-week per run might have: sizes over four decades,
# 5 to 100 tokens per parameter, so that N and D vary independently.
FIVE_N = np.geomspace(1e6, 1e10, 5)
FIVE_D = FIVE_N * np.array([5, 100, 10, 100, 5])


def _five_runs(seed: int, sigma: float = 5e-4) -> Data:
    rng = np.random.default_rng(seed)
    loss = laws.chinchilla(FIVE_N, FIVE_D, **TIED) * np.exp(rng.normal(0, sigma, 5))
    return Data.from_arrays(FIVE_N, FIVE_D, loss)


def _grid_runs(true: dict, seed: int, n: int = 6, sigma: float = 0.003) -> Data:
    N, D = np.meshgrid(np.geomspace(1e7, 3e9, n), np.geomspace(3e8, 1e11, n))
    N, D = N.ravel(), D.ravel()
    rng = np.random.default_rng(seed)
    return Data.from_arrays(N, D, laws.chinchilla(N, D, **true) * np.exp(rng.normal(0, sigma, N.size)))


@pytest.fixture(scope="module")
def fig4():
    return load_csv(FIG4).drop_highest_loss(5)


# --- the checks ------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(5))
def test_tied_fit_recovers_the_law_from_five_runs_and_extrapolates(seed):
    # 0.05% noise per run; at 0.1% this design still passes 28 of 30 seeds (A and B, whose
    # errors are about ln N times alpha's, are the first to leave 3%).
    fit = fit_law(_five_runs(seed), tie={"beta": "alpha"})
    assert fit.n_free == 4 and fit.free == ("E", "A", "B", "alpha")
    assert fit.params["beta"] == fit.params["alpha"]
    for k in ("E", "A", "B", "alpha"):
        assert fit.params[k] == pytest.approx(TIED[k], rel=0.03), k
    N = 10 * FIVE_N.max()
    D = 20 * N  # compute-optimal-ish, far beyond every run's D too
    assert fit.predict(N, D) == pytest.approx(laws.chinchilla(N, D, **TIED), rel=0.01)


def test_untied_fit_on_five_runs_is_refused_naming_the_free_parameter_count():
    with pytest.raises(TooFewPointsError, match=r"has 5 free parameters .* needs at least 6 runs"):
        fit_law(_five_runs(0))
    four = _five_runs(0).subset(np.arange(4))
    with pytest.raises(TooFewPointsError) as err:
        fit_law(four, tie={"beta": "alpha"})
    msg = str(err.value)
    assert "with beta = alpha has 4 free parameters (E, A, B, alpha)" in msg
    assert "needs at least 5 runs to fit (free parameters + 1); got 4" in msg


def test_fixing_E_at_its_true_value_tightens_the_other_intervals():
    data = _grid_runs(UNTIED, seed=1)
    free = fit_law(data)
    fixed = fit_law(data, fix={"E": UNTIED["E"]})
    boot_free = bootstrap(data, free, n_resamples=200, seed=1)
    boot_fixed = bootstrap(data, fixed, n_resamples=200, seed=1)
    for k in ("A", "B", "alpha", "beta"):
        w_free = np.diff(boot_free.interval[k])[0]
        w_fixed = np.diff(boot_fixed.interval[k])[0]
        assert w_fixed < 0.95 * w_free, (k, w_fixed, w_free)
    # E itself is not estimated: no interval of its own, a constant column in the samples.
    assert "E" not in boot_fixed.interval and "E" not in boot_fixed.stderr
    assert np.all(boot_fixed.samples["E"] == UNTIED["E"])
    assert fixed.params["E"] == UNTIED["E"] and fixed.status["E"] == "fixed"


def test_fixing_E_to_a_wrong_value_shows_in_the_fit_quality():
    data = _grid_runs(UNTIED, seed=1)
    free = fit_law(data)
    right = fit_law(data, fix={"E": UNTIED["E"]})
    wrong = fit_law(data, fix={"E": 1.6})
    assert wrong.rmse_log > 2 * right.rmse_log and wrong.objective > 2 * right.objective
    assert right.rmse_log < 1.1 * free.rmse_log
    assert compare_nested(right, free).consistent
    bad = compare_nested(wrong, free)
    assert not bad.consistent and bad.p_value < 1e-6


def test_epoch_replication_holds_with_a_trivial_constraint(fig4):
    plain = fit_law(fig4)
    lo, hi = CHINCHILLA.bounds["alpha"]
    trivial = fit_law(fig4, bounds={"alpha": (lo, hi)})  # the law's own bound
    assert trivial.n_starts == plain.n_starts == 4500
    assert dict(trivial.params) == dict(plain.params)
    for k in ("E", "alpha", "beta"):
        assert trivial.params[k] == pytest.approx(EPOCH_BEST[k], rel=0.005), k


def test_a_real_bound_is_respected(fig4):
    fit = fit_law(fig4, bounds={"alpha": (0.05, 0.3)})
    assert fit.params["alpha"] == pytest.approx(0.3)
    assert fit.at_bound == ("alpha",)  # named by the parameter at its bound
    assert any(d.code == "param_at_bound" for d in fit.diagnostics)
    assert not any(d.code == "grid_edge" for d in fit.diagnostics)  # the bound, not the grid


@pytest.mark.parametrize(
    "law, kwargs, message",
    [
        ("chinchilla", {"tie": {"beta": "gamma"}},
         "tie beta=gamma: 'gamma' is not a parameter of law chinchilla"),
        ("chinchilla", {"tie": {"beta": "alpha", "alpha": "beta"}},
         "the ties form a cycle (alpha -> beta -> alpha); leave one of alpha, beta free"),
        ("chinchilla", {"tie": {"A": "2*B", "B": "E*A"}}, "the ties form a cycle (A -> B -> A)"),
        ("chinchilla", {"fix": {"alpha": 20.0}},
         "fix alpha=20 lies outside law chinchilla's bounds for it [0, 10]"),
        ("chinchilla", {"fix": {"E": 3.0}, "bounds": {"E": (1.0, 2.0)}},
         "fix E=3 lies outside its bound [1, 2]; fix it inside, or widen the bound"),
        ("kaplan_n", {"fix": {"E": 1.69}},
         "fix E=1.69: law kaplan_n has no parameter 'E'; its parameters are N_c, alpha_N"),
        ("chinchilla", {"bounds": {"gamma": (0, 1)}}, "law chinchilla has no parameter 'gamma'"),
        ("chinchilla", {"tie": {"B": "log(A)"}}, "uses something other than numbers"),
        ("chinchilla", {"tie": {"beta": "alpha"}, "bounds": {"beta": (0.1, 0.5)}},
         "bound on it cannot be enforced; bound the parameters it is tied to"),
        ("chinchilla", {"fix": {"E": 1.7}, "tie": {"E": "A"}}, "fix it or tie it, not both"),
        ("power_law", {"fix": {"E": 1.7, "A": 100.0, "alpha": 0.1}}, "nothing is left to fit"),
    ],
    ids=["unknown-tie-target", "cycle", "cycle-via-expression", "fixed-outside-bounds",
         "fixed-outside-user-bound", "param-law-lacks", "unknown-bound", "bad-expression",
         "bound-on-tied", "fixed-and-tied", "nothing-free"],
)
def test_bad_constraints_name_the_key_the_value_and_the_fix(law, kwargs, message):
    data = _grid_runs(UNTIED, seed=0)
    with pytest.raises(AnalysisError) as err:
        fit_law(data, law, x="N" if law in ("kaplan_n", "power_law") else None, **kwargs)
    assert message in str(err.value)


def test_every_problem_is_listed_at_once():
    c = Constraints.of(fix={"gamma": 1.0, "alpha": 20.0}, tie={"beta": "delta"})
    problems = constraint_problems(CHINCHILLA, c)
    assert len(problems) == 3


# --- how the constraints are applied ----------------------------------------------------------

@pytest.mark.parametrize("tie", [{"beta": "alpha"}, {"B": "2*A"},
                                 {"beta": "alpha**1.5 / (E + 1) - 0.01", "A": "B/3"}])
def test_constrained_gradient_matches_finite_differences(tie):
    rep = resolve(CHINCHILLA, Constraints.of(fix={"E": 1.7}, tie=tie))
    rng = np.random.default_rng(0)
    lnN, lnD = np.log(np.geomspace(1e7, 1e10, 12)), np.log(np.geomspace(1e9, 1e11, 12))[::-1].copy()
    cols = {"lnN": lnN, "lnD": lnD}
    y = np.log(2.0 + rng.uniform(0, 1, 12))
    theta = np.array([[6.0, 7.5, np.log(1.7), 0.35, 0.37]])
    z = rep.reduce(theta)

    def f_of(zz):
        t, jac = rep.expand(zz, jacobian=True)
        f, g = huber_value_and_grad(CHINCHILLA, t, cols, y, 1e-3)
        return f[0], rep.pullback(g, jac)[0]

    _, grad = f_of(z)
    for k in range(z.shape[1]):
        e = np.zeros_like(z)
        e[0, k] = 1e-6
        fd = (f_of(z + e)[0] - f_of(z - e)[0]) / 2e-6
        assert grad[k] == pytest.approx(fd, rel=1e-4, abs=1e-8), k
    # The tie holds in public units.
    params = dict(zip(CHINCHILLA.param_names, CHINCHILLA.to_public(rep.expand(z))[0]))
    if "B" in tie:
        assert params["B"] == pytest.approx(2 * params["A"])


def test_law_objects_expose_names_and_bounds_consistent_with_to_public():
    for law in LAWS.values():
        theta = (law.lower + np.minimum(law.upper, law.lower + 3.0)) / 2
        public = dict(zip(law.param_names, law.to_public(theta[None])[0]))
        for name, (lo, hi) in law.bounds.items():
            assert lo < public[name] < hi, (law.name, name)


def test_derived_quantities_and_compute_optimal_follow_the_tie():
    data = _grid_runs(TIED, seed=3)
    fit = fit_law(data, tie={"beta": "alpha"})
    assert fit.derived["a"] == pytest.approx(0.5) and fit.derived["b"] == pytest.approx(0.5)
    p = fit.params
    G = (p["A"] / p["B"]) ** (1 / (2 * p["alpha"]))
    assert fit.derived["G"] == pytest.approx(G)
    boot = bootstrap(data, fit, n_resamples=100, seed=0)
    assert np.array_equal(boot.samples["beta"], boot.samples["alpha"])
    assert "beta" not in boot.interval and "alpha" in boot.interval
    out = compute_optimal(fit, 1e23, boot=boot)
    N, D, _ = laws.chinchilla_optimal(1e23, **p)
    assert out["N_opt"] == pytest.approx(N) and out["a"] == pytest.approx(0.5)
    # Every resample keeps a = 0.5, so N_opt's interval comes from G alone.
    assert out["a_interval"] == pytest.approx((0.5, 0.5))
    lo, hi = out["N_opt_interval"]
    assert lo < N < hi


def test_grid_mapping_needs_only_the_free_names():
    data = _grid_runs(UNTIED, seed=0)
    fit = fit_law(data, fix={"E": 1.8}, grid={"a": [5.0], "b": [5.0, 10.0], "alpha": [0.3],
                                              "beta": [0.3]})
    assert fit.n_starts == 2 and len(fit.best_start) == 4
    assert fit.params["A"] == pytest.approx(UNTIED["A"], rel=0.3)


# --- the nested test --------------------------------------------------------------------------

def test_nested_test_accepts_a_true_tie_and_rejects_a_false_one():
    for true, consistent in ((TIED, True), (UNTIED, False)):
        data = _grid_runs(true, seed=2)
        tied = fit_law(data, tie={"beta": "alpha"})
        cmp = compare_or_why(data, tied)
        assert cmp.q == 1 and cmp.dof == 36 - 5
        assert cmp.consistent is consistent, cmp.sentence()
    assert cmp.p_value < 1e-4


def test_nested_test_is_the_classical_F_test_for_least_squares():
    # With delta far above every residual the Huber objective is half the residual sum of
    # squares and E[psi'] = 1, so S / q must be the textbook F statistic.
    data = _grid_runs(UNTIED, seed=4)
    tied = fit_law(data, delta=10.0, tie={"beta": "alpha"})
    full = fit_unconstrained_for(data, tied)
    cmp = compare_nested(tied, full)
    rss_c, rss_u = np.sum(tied.residuals**2), np.sum(full.residuals**2)
    F = (rss_c - rss_u) / 1 / (rss_u / (36 - 5))
    assert cmp.statistic == pytest.approx(F, rel=1e-3)


def test_nested_test_refuses_fits_that_are_not_nested():
    data = _grid_runs(UNTIED, seed=0)
    a = fit_law(data, fix={"E": 1.8})
    with pytest.raises(AnalysisError, match="not nested"):
        compare_nested(a, fit_law(data, fix={"alpha": 0.34}))
    with pytest.raises(AnalysisError, match="the fits differ"):
        compare_nested(a, fit_law(data.subset(np.arange(30))))


@pytest.mark.slow
def test_nested_test_rejects_a_true_constraint_about_as_often_as_its_level():
    rejected = 0
    for seed in range(60):
        data = _grid_runs(UNTIED, seed=100 + seed)
        fixed = fit_law(data, fix={"E": UNTIED["E"]})
        rejected += not compare_or_why(data, fixed).consistent
    assert rejected <= 8  # 3 expected at the 0.05 level; 8 of 60 has probability < 2%


# --- CLI, fit.json, study ------------------------------------------------------------------------

def test_cli_constraints_reach_fit_json_and_the_console(tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["--csv", str(FIG4), "--drop-highest-loss", "5", "--out", str(out), "--no-plots",
               "--bootstrap", "100", "--tie", "beta=alpha", "--bound", "alpha=0.05:1.5",
               "--holdout-largest", "2"])
    assert rc == 0
    doc = json.loads((out / "fit.json").read_text())
    assert doc["schema_version"] == 1 and set(doc["params"]) == {"E", "A", "B", "alpha", "beta"}
    assert doc["param_status"] == {"E": "free", "A": "free", "B": "free", "alpha": "free",
                                   "beta": "tied"}
    assert doc["free_params"] == ["E", "A", "B", "alpha"]
    assert doc["constraints"] == {"fix": {}, "tie": {"beta": "alpha"}, "bound": {"alpha": [0.05, 1.5]}}
    assert "beta" not in doc["stderr"] and "beta" not in doc["interval"]
    nested = doc["nested_comparison"]
    assert nested["q"] == 1 and 0 <= nested["p_value"] <= 1 and "Schrader" in nested["method"]
    assert doc["params"]["beta"] == doc["params"]["alpha"]
    printed = capsys.readouterr().out
    assert "(tied: beta = alpha)" in printed and "4 free parameters (E, A, B, alpha)" in printed
    assert "against the unconstrained law" in printed and "p = " in printed


def test_cli_bad_constraints_exit_2_naming_the_flag(tmp_path, capsys):
    rc = main(["--csv", str(FIG4), "--out", str(tmp_path / "o"), "--no-plots",
               "--tie", "beta=gamma", "--fix", "E", "--bound", "alpha=1"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert "--fix 'E': expected NAME=VALUE" in err and "--bound 'alpha=1': expected NAME=LOW:HIGH" in err
    rc = main(["--csv", str(FIG4), "--out", str(tmp_path / "o"), "--no-plots",
               "--tie", "beta=gamma", "--fix", "E=0.5", "--bound", "E=1:2"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "--tie beta=gamma: 'gamma' is not a parameter" in err
    assert "--fix E=0.5 lies outside its bound [1, 2]" in err
    assert main(["--csv", str(FIG4), "--law", "isoflop", "--out", str(tmp_path / "o"),
                 "--fix", "E=1.7"]) == 2
    assert "isoflop analysis has none" in capsys.readouterr().err


def test_cli_five_runs_fit_tied_and_say_why_there_is_no_test(tmp_path, capsys):
    data = _five_runs(0)
    csv = tmp_path / "five.csv"
    csv.write_text("N,D,loss\n" + "".join(f"{float(n)!r},{float(d)!r},{float(l)!r}\n" for n, d, l in zip(data.N, data.D, data.loss)))
    assert main(["--csv", str(csv), "--out", str(tmp_path / "o"), "--no-plots"]) == 2
    assert "5 free parameters" in capsys.readouterr().err
    assert main(["--csv", str(csv), "--out", str(tmp_path / "o"), "--no-plots",
                 "--tie", "beta=alpha"]) == 0
    doc = json.loads((tmp_path / "o" / "fit.json").read_text())
    assert "needs at least 6 runs" in doc["nested_comparison"]["skipped"]
    assert "no test of the constraints" in capsys.readouterr().out


def test_parse_cli_forms():
    c = parse_cli(["E=1.69"], ["beta = alpha", "B=2*A"], ["alpha=0.05:1.5", "E=:3"])
    assert dict(c.fix) == {"E": 1.69} and dict(c.tie) == {"beta": "alpha", "B": "2*A"}
    assert dict(c.bounds) == {"alpha": (0.05, 1.5), "E": (None, 3.0)}
    assert c.equalities == 3 and c.relaxed() == Constraints(bounds={"alpha": (0.05, 1.5), "E": (None, 3.0)})


def test_study_report_fixes_E_and_tests_it(tmp_path):
    root = write_study(tmp_path / "study")
    a = analyse_study(root, n_boot=50, holdout=1, fix={"E": 1.69}, bounds={"alpha": [0.05, 1.5]})
    assert a.fit.params["E"] == 1.69 and a.fit.free == ("A", "B", "alpha", "beta")
    assert a.holdout.fit.params["E"] == 1.69  # the extrapolation check uses the same law
    assert a.comparison.consistent  # the synthetic study's true E is 1.69
    report = render_report(a, [])
    assert "Constraints: E fixed at 1.69; alpha in [0.05, 1.5]; 4 free parameters" in report
    assert "| E | 1.69 | fixed |  |" in report
    assert "### Constrained against unconstrained law" in report and "Schrader" in report
    doc = study_json(a)
    assert doc["param_status"]["E"] == "fixed" and "E" not in doc["interval"]
    assert doc["nested_comparison"]["consistent"] is True
    with pytest.raises(AnalysisError, match=r"report\.tie: the ties form a cycle"):
        analyse_study(root, n_boot=0, tie={"alpha": "beta", "beta": "alpha"})


def test_report_config_checks_constraints_before_launch():
    from scaling.launch.config import ReportConfig

    problems = ReportConfig(fix={"gamma": 1.0}, tie={"beta": "alpha"}, bound={"beta": [0.1, 0.5]}).problems()
    assert any(p.startswith("report.fix.gamma=1.0: law chinchilla has no parameter") for p in problems)
    assert any(p.startswith("report.bound.beta=[0.1, 0.5]: beta is tied") for p in problems)
    assert ReportConfig(fix={"E": 1.69}, tie={"beta": "alpha"}).problems() == []
