"""Predict before you train: the study's FLOP scale, the whole-budget holdout, the cluster
bootstrap, prediction intervals for one run, and the approaches side by side."""

from __future__ import annotations

import numpy as np
import pytest

from scaling.analysis.data import Data
from scaling.analysis.errors import AnalysisError, DataError
from scaling.analysis.extrapolate import holdout_check
from scaling.analysis.fit import bootstrap, compute_optimal, fit_law, unit_counts
from scaling.analysis.flops import FlopsPerToken, allocate
from scaling.analysis.isoflop import isoflop_profiles
from scaling.analysis.laws import chinchilla
from scaling.analysis.predict import compare_approaches, disagreements, predict_run

TRUE = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
T = 1024  # context length of the synthetic GPTs


def gpt_flops(N):
    """6 N + attention, 12 n_layers T d_model per token (PaLM's count), for GPTs with
    d_model = 64 n_layers and N = 12 n_layers d_model^2 non-embedding parameters."""
    N = np.asarray(N, dtype=float)
    d = (64.0 * N / 12.0) ** (1 / 3)
    return 6.0 * N + 12.0 * (d / 64.0) * T * d


def brute_force_N(C, f=gpt_flops, params=TRUE):
    """argmin over a dense grid of N of L(N, C / f(N)): no solver, no interpolation."""
    N = np.geomspace(1e5, 1e11, 400_001)
    return float(N[np.argmin(chinchilla(N, C / f(N), **params))])


KNOTS = np.geomspace(1e6, 1e9, 12)  # the study's model sizes


def study_flops():
    return FlopsPerToken.from_runs(KNOTS, gpt_flops(KNOTS) * 1e9, np.full(KNOTS.size, 1e9))


def test_flops_per_token_read_from_runs_is_exact_at_the_sizes_and_held_beyond():
    f = study_flops()
    assert f(KNOTS) == pytest.approx(gpt_flops(KNOTS), rel=1e-12)
    assert f.r(1e12) == pytest.approx(f.r(KNOTS[-1]))  # the ratio is held past the ends
    assert not f.is_6nd and FlopsPerToken.six_n().is_6nd


def test_numeric_allocation_matches_brute_force_within_half_a_percent():
    f = study_flops()
    budgets = np.geomspace(1e15, 3e19, 7)
    out = compute_optimal(TRUE, budgets, flops=f)
    brute = np.array([brute_force_N(C) for C in budgets])
    assert (brute > KNOTS[0]) & (brute < KNOTS[-1]) == pytest.approx(True)  # inside the sizes
    rel = np.abs(out["N_opt"] / brute - 1)
    assert rel.max() < 0.005, rel
    assert out["D_opt"] == pytest.approx(budgets / gpt_flops(out["N_opt"]), rel=1e-3)
    # 6 N D's closed form counts too few FLOPs per token, so it promises more tokens.
    six = compute_optimal(TRUE, budgets)
    assert (six["D_opt"] / (budgets / gpt_flops(brute)) - 1).min() > 0.1


def test_numeric_allocation_under_6nd_equals_the_closed_form():
    six = FlopsPerToken.from_runs(KNOTS, 6 * KNOTS * 1e9, np.full(KNOTS.size, 1e9))
    assert six.is_6nd
    # Force the numeric path with a ratio a hair off 1, and compare with the closed form.
    f = FlopsPerToken(KNOTS, np.full(KNOTS.size, 1.0 + 1e-7), "test")
    C = np.geomspace(1e17, 1e23, 5)
    closed = compute_optimal(TRUE, C)
    N, D, L = allocate(chinchilla, TRUE, C, f, N_guess=closed["N_opt"])
    assert N == pytest.approx(closed["N_opt"], rel=1e-4)
    assert L == pytest.approx(closed["loss"], rel=1e-6)


def synthetic_study(budgets, noise=0.002, seed=0, f=gpt_flops, sizes_per_budget=9, unit_noise=0.0,
                    seeds=1):
    """IsoFLOP runs of Chinchilla's law, C = f(N) D, sizes around each budget's optimum.
    unit_noise: a log-loss offset shared by the seeds of one configuration (one unit)."""
    rng = np.random.default_rng(seed)
    rows = []
    for C in budgets:
        n_opt = brute_force_N(C, f)
        for j, N in enumerate(n_opt * np.geomspace(1 / 6, 6, sizes_per_budget)):
            shared = rng.normal(0, unit_noise)
            for s in range(seeds):
                D = C / f(N)
                loss = chinchilla(N, D, **TRUE) * np.exp(shared + rng.normal(0, noise))
                rows.append((N, D, loss, f(N) * D, C, f"c{C:.3g}-n{j}"))
    N, D, L, Cs, B, unit = (np.array(v) for v in zip(*rows))
    ids = [f"{u}-s{i}" for i, u in enumerate(unit)]
    return Data.from_arrays(N, D, L, C=Cs, budget=B, run_id=ids, unit=unit)


BUDGETS = np.geomspace(1e16, 1e18, 5)


@pytest.fixture(scope="module")
def study():
    data = synthetic_study(BUDGETS)
    fit = fit_law(data, "chinchilla")
    return data, fit


def test_optimal_loss_on_the_study_scale_lies_on_the_frontier(study):
    data, fit = study
    best = np.array([data.loss[data.budget == C].min() for C in BUDGETS])
    on_scale = compute_optimal(fit, BUDGETS, flops=FlopsPerToken.from_data(data))["loss"]
    six = compute_optimal(fit, BUDGETS)["loss"]
    assert np.abs(on_scale / best - 1).max() < 0.005
    assert (six < best * (1 - 0.005)).all()  # the 6 N D curve runs below every budget's best


def test_isoflop_d_opt_uses_the_study_flops(study):
    data, _ = study
    iso = isoflop_profiles(data, n_boot=50)
    for p in iso.profiles:
        # f is interpolated between the runs' sizes, so to 1e-4 rather than exactly.
        assert p.D_opt == pytest.approx(p.budget / gpt_flops(p.N_opt), rel=1e-4)
        assert p.D_opt < p.budget / (6 * p.N_opt) * 0.9  # not C / 6N
    assert iso.boot_L_min.shape == (50, iso.n_used)


def test_whole_budget_holdout_predicts_every_run_of_the_largest_budget(study):
    data, _ = study
    h = holdout_check(data, by="budget", law="chinchilla")
    largest = data.budget == BUDGETS[-1]
    assert set(h.run_id) == {data.run_id[i] for i in np.flatnonzero(largest)}
    assert h.n_held == largest.sum() and np.isfinite(h.predicted).all()
    assert h.budgets == pytest.approx((BUDGETS[-1],)) and h.budgets_fitted == 4
    assert h.fit.n_points == len(data) - largest.sum()
    assert h.max_abs_rel_error < 0.02
    doc = h.to_json()
    assert doc["by"] == "budget" and len(doc["runs"]) == h.n_held


def test_whole_budget_holdout_refuses_with_fewer_than_two_budgets_left():
    data = synthetic_study(BUDGETS[:2])
    with pytest.raises(DataError, match="needs at least 2 budgets left"):
        holdout_check(data, by="budget")
    data3 = synthetic_study(BUDGETS[:3])
    with pytest.raises(DataError, match="leaves 1 to fit"):
        holdout_check(data3, by="budget", k=2)


def test_unit_counts_resample_whole_units_and_default_to_the_plain_bootstrap():
    codes = np.array([0, 0, 0, 1, 1, 2])
    w = unit_counts(codes, 200, seed=3)
    assert (w[:, 0] == w[:, 1]).all() and (w[:, 3] == w[:, 4]).all()
    assert (w[:, [0, 3, 5]].sum(axis=1) == 3).all()  # three units drawn, three times
    plain = np.random.default_rng(3).multinomial(6, np.full(6, 1 / 6), size=200)
    assert (unit_counts(np.arange(6), 200, seed=3) == plain).all()


def test_bootstrap_uses_the_data_units(study):
    data, fit = study
    runs = bootstrap(data.with_units(None), fit, n_resamples=60, seed=1)
    grouped = bootstrap(data, fit, n_resamples=60, seed=1)  # one unit per configuration
    assert runs.n_units == len(data) and grouped.n_units == len(set(data.unit))


def test_prediction_interval_covers_new_runs_and_the_law_interval_does_not(study):
    data, fit = study
    boot = bootstrap(data, fit, n_resamples=200, seed=0)
    iso = isoflop_profiles(data, n_boot=200)
    rng = np.random.default_rng(7)
    C_new = BUDGETS[2]
    inside = {"parametric": [0, 0], "isoflop": [0, 0]}
    N_new = brute_force_N(C_new)
    preds = predict_run(N_new, C_new / gpt_flops(N_new), fit=fit, boot=boot, iso=iso)
    truth = chinchilla(N_new, C_new / gpt_flops(N_new), **TRUE)
    runs = truth * np.exp(rng.normal(0, 0.002, 400))  # new runs, the study's scatter
    for name, p in preds.items():
        assert p.interval[0] < p.loss < p.interval[1]
        assert p.interval[1] - p.interval[0] > p.law_interval[1] - p.law_interval[0]
        inside[name][0] = np.mean((runs > p.interval[0]) & (runs < p.interval[1]))
        inside[name][1] = np.mean((runs > p.law_interval[0]) & (runs < p.law_interval[1]))
    assert preds["isoflop"].C == pytest.approx(C_new, rel=1e-9)
    assert 0.5 < preds["isoflop"].N_over_N_opt < 2
    for name, (pred_cov, law_cov) in inside.items():
        assert pred_cov > 0.85, (name, pred_cov)
        assert law_cov < pred_cov - 0.2, (name, law_cov)


def test_compare_approaches_puts_a_side_by_side_on_one_scale(study):
    data, fit = study
    boot = bootstrap(data, fit, n_resamples=100, seed=0)
    iso = isoflop_profiles(data, n_boot=200)
    out = compare_approaches(fit, boot, iso, data=data)
    assert {"isoflop", "parametric", "diagnostics"} <= out.keys()
    par = out["parametric"]
    lo, hi = par["a_interval"]
    assert lo <= par["a"] <= hi and "f(N)" in par["flops"]
    # On the study's scale the parametric slope is the one approach 2 measures.
    assert par["a"] == pytest.approx(out["isoflop"]["a"], abs=0.03)
    assert par["at_6ND"]["a"] == pytest.approx(fit.derived["a"])


def test_disagreement_is_named_only_beyond_the_intervals():
    agree = {"isoflop": {"a": 0.5, "b": 0.5, "a_interval": [0.45, 0.55], "b_interval": [0.45, 0.55]},
             "parametric": {"a": 0.52, "b": 0.48, "a_interval": [0.5, 0.54], "b_interval": [0.46, 0.5]}}
    assert disagreements(agree) == []
    apart = {**agree, "parametric": {**agree["parametric"], "a": 0.7, "a_interval": [0.65, 0.75]}}
    d = disagreements(apart)
    assert [x.code for x in d] == ["approaches_disagree"] and "a: isoflop" in d[0].message


def test_predict_run_needs_a_bootstrap_for_the_parametric_interval(study):
    data, fit = study
    with pytest.raises(AnalysisError, match="boot="):
        predict_run(1e7, 1e9, fit=fit)


@pytest.mark.slow
def test_cluster_bootstrap_covers_the_true_exponent_with_noise_shared_within_units():
    """100 synthetic studies, 3 seeds per configuration sharing a log-loss offset (sd 1%)
    beside 0.2% per-run noise; the 95% interval of a from the bootstrap over units must cover
    the true a = beta / (alpha + beta) in at least 90 of them."""
    a_true = TRUE["beta"] / (TRUE["alpha"] + TRUE["beta"])
    six = lambda N: 6.0 * np.asarray(N, dtype=float)  # noqa: E731
    covered = covered_runs = 0
    for draw in range(100):
        data = synthetic_study(BUDGETS, noise=0.002, seed=100 + draw, f=six, sizes_per_budget=7,
                               unit_noise=0.01, seeds=3)
        fit = fit_law(data, "chinchilla")
        lo, hi = bootstrap(data, fit, n_resamples=200, seed=draw).interval["a"]
        covered += lo <= a_true <= hi
        lo, hi = bootstrap(data.with_units(None), fit, n_resamples=200, seed=draw).interval["a"]
        covered_runs += lo <= a_true <= hi
    print(f"coverage of a: units {covered}/100, runs {covered_runs}/100")
    assert covered >= 90


def test_loss_vs_compute_draws_the_fit_on_the_runs_scale_and_6nd_beside(study):
    from scaling.analysis import plots

    data, fit = study
    fig, (ax,) = plots.new_figure()
    plots.plot_loss_vs_compute(ax, data, fit)
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    study_line = next(v for k, v in lines.items() if "f(N)" in k)
    six_line = next(v for k, v in lines.items() if "6 N D" in k)
    best = np.array([data.loss[data.budget == C].min() for C in BUDGETS])
    for line, below in ((study_line, False), (six_line, True)):
        x, y = (np.asarray(v, dtype=float) for v in line.get_data())
        at = np.exp(np.interp(np.log(BUDGETS), np.log(x), np.log(y)))
        if below:
            assert (at < best * (1 - 0.005)).all()
        else:
            assert np.abs(at / best - 1).max() < 0.005


def test_cli_holdout_budgets_and_approaches_in_fit_json(tmp_path, study):
    import csv
    import json

    from scaling.analysis.cli import main

    data, _ = study
    path = tmp_path / "runs.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["run_id", "N", "D", "C", "loss", "budget_flops"])
        for row in zip(data.run_id, data.N, data.D, data.C, data.loss, data.budget):
            w.writerow(row)
    out = tmp_path / "out"
    assert main(["--csv", str(path), "--out", str(out), "--bootstrap", "100",
                 "--holdout-budgets", "1", "--approaches", "--no-plots"]) == 0
    doc = json.loads((out / "fit.json").read_text())
    assert doc["holdout"]["by"] == "budget" and doc["holdout"]["n_held"] == 9
    assert {"isoflop", "parametric"} <= doc["approaches"].keys()
    assert doc["flops_per_token"]["convention"] == "study"
    assert doc["compute_optimal_flops"] == "6ND" and len(doc["compute_optimal_study_flops"]) == 3
    assert doc["bootstrap_units"] == len(data)  # a CSV has no unit column: runs are units
    assert main(["--csv", str(path), "--out", str(out), "--law", "power_law",
                 "--approaches"]) == 2
