"""IsoFLOP profiles (approach 2), the training-curve envelope (approach 1), holdout check."""

import numpy as np
import pytest

from scaling.analysis import laws
from scaling.analysis.data import Data
from scaling.analysis.errors import AnalysisError, DataError
from scaling.analysis.extrapolate import holdout_check
from scaling.analysis.io import Curve
from scaling.analysis.isoflop import group_budgets, isoflop_profiles, training_envelope

TRUE = dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
A_TRUE = TRUE["beta"] / (TRUE["alpha"] + TRUE["beta"])  # 0.4516
B_TRUE = TRUE["alpha"] / (TRUE["alpha"] + TRUE["beta"])  # 0.5484


def isoflop_data(budgets=(1e18, 1e19, 1e20, 1e21, 1e22), n_sizes=9, sigma=0.002, seed=0,
                 jitter=0.0):
    """Runs on IsoFLOP curves of Chinchilla's law, sizes bracketing the true optimum."""
    rng = np.random.default_rng(seed)
    N, D, C, loss = [], [], [], []
    for budget in budgets:
        n_opt, _, _ = laws.chinchilla_optimal(budget, **TRUE)
        sizes = n_opt * np.geomspace(1 / 6, 6, n_sizes)
        c = budget * (1 + jitter * rng.uniform(-1, 1, n_sizes))
        d = c / (6 * sizes)
        N += list(sizes)
        D += list(d)
        C += list(c)
        loss += list(laws.chinchilla(sizes, d, **TRUE) * np.exp(rng.normal(0, sigma, n_sizes)))
    return Data.from_arrays(N, D, loss, C)


def test_isoflop_recovers_a_and_b():
    iso = isoflop_profiles(isoflop_data(jitter=0.05), tolerance=0.25, n_boot=300)
    assert len(iso.profiles) == 5 and iso.n_used == 5
    assert iso.a == pytest.approx(A_TRUE, abs=0.015)
    assert iso.b == pytest.approx(B_TRUE, abs=0.015)
    assert iso.a + iso.b == pytest.approx(1.0)
    assert iso.a_interval[0] <= A_TRUE <= iso.a_interval[1]
    assert iso.b_interval[0] <= B_TRUE <= iso.b_interval[1]
    for p in iso.profiles:
        assert p.interior and p.usable and p.coeffs[0] > 0
        n_opt, _, l_opt = laws.chinchilla_optimal(p.budget, **TRUE)
        assert p.N_opt == pytest.approx(n_opt, rel=0.15)
        assert p.L_min == pytest.approx(l_opt, rel=0.01)
    lo, hi = iso.band(np.array([1e20]))
    assert lo[0] <= iso.N_opt(1e20) <= hi[0]


def test_grouping_uses_planner_budget_when_present():
    data = isoflop_data(jitter=0.3)  # too much scatter to group by C at 5% tolerance
    assert len(group_budgets(data, tolerance=0.05)) > 5
    budgets = np.repeat([1e18, 1e19, 1e20, 1e21, 1e22], 9)
    tagged = Data.from_arrays(data.N, data.D, data.loss, data.C, budget=budgets)
    assert [len(g) for g in group_budgets(tagged, tolerance=0.05)] == [9] * 5


def test_edge_minimum_is_flagged_and_left_out():
    data = isoflop_data()
    # Keep only the 4 smallest sizes at the largest budget: its minimum is not bracketed.
    big = data.C > 5e21
    keep = ~big | (data.N < np.median(data.N[big]) * 0.9)
    iso = isoflop_profiles(data.subset(keep), n_boot=50)
    assert any(d.code == "isoflop_edge_minimum" for d in iso.diagnostics)
    assert iso.n_used == 4


def test_isoflop_needs_two_budgets():
    with pytest.raises(DataError, match="at least 2 budgets"):
        isoflop_profiles(isoflop_data(budgets=(1e20,)), n_boot=10)
    with pytest.raises(AnalysisError, match="tolerance"):
        isoflop_profiles(isoflop_data(), tolerance=0)


def test_training_envelope_tracks_the_optimum():
    curves = []
    for i, n in enumerate(np.geomspace(1e7, 1e10, 16)):
        tokens = np.geomspace(1e8, 2e11, 80)
        loss = laws.chinchilla(n, tokens, **TRUE)
        curves.append(Curve(f"r{i}", float(n), 6 * n * tokens, tokens, loss))
    env = training_envelope(curves, n_points=40)
    # The runs are a fixed ladder of sizes, so the envelope's N is a staircase; its slope is
    # close to, not equal to, the true a.
    assert env.a == pytest.approx(A_TRUE, abs=0.08)
    assert env.a + env.b == pytest.approx(1.0)
    assert np.all(np.diff(env.loss) <= 1e-12)
    with pytest.raises(DataError, match="at least 2 runs"):
        training_envelope(curves[:1])


def test_holdout_check_reports_relative_errors():
    rng = np.random.default_rng(3)
    N, D = np.meshgrid(np.geomspace(1e7, 3e9, 7), np.geomspace(3e8, 1e11, 7))
    N, D = N.ravel(), D.ravel()
    data = Data.from_arrays(N, D, laws.chinchilla(N, D, **TRUE) * np.exp(rng.normal(0, 0.002, N.size)))
    res = holdout_check(data, k=3, by="C")
    assert res.rel_error.shape == (3,)
    assert set(res.C) == set(np.sort(data.C)[-3:])
    assert res.fit.n_points == data.N.size - 3
    assert res.max_abs_rel_error < 0.02
    assert np.allclose(res.rel_error, (res.predicted - res.actual) / res.actual)
    by_n = holdout_check(data, k=7, by="N", law="kaplan_nd")
    assert np.all(by_n.N == data.N.max())
    with pytest.raises(AnalysisError, match="by='T'"):
        holdout_check(data, by="T")


def small_profiles(seed, budgets=(2.2e10, 4.5e10, 9e10, 1.8e11, 3.6e11), n_sizes=5):
    """A study shaped like the default one: a few sizes per budget spanning 8x in N, one run
    each, off-centre around the optimum, and noise of log loss that grows with the size (0.5%
    to 3%, as the default study's seeds scatter). The law is the default study's own fit."""
    law = dict(E=1.985, A=8420.0, alpha=1.191, B=9.187e4, beta=0.990)
    rng = np.random.default_rng(seed)
    N, D, C, loss = [], [], [], []
    for budget in budgets:
        n_opt, _, _ = laws.chinchilla_optimal(budget, **law)
        sizes = n_opt * np.geomspace(1 / 3, 8 / 3, n_sizes) * np.exp(rng.uniform(-0.3, 0.3))
        d = budget / (6 * sizes)
        sd = np.linspace(0.005, 0.03, n_sizes)
        N += list(sizes)
        D += list(d)
        C += [budget] * n_sizes
        loss += list(laws.chinchilla(sizes, d, **law) * np.exp(rng.normal(0, 1, n_sizes) * sd))
    return Data.from_arrays(N, D, loss, C, budget=C), law["beta"] / (law["alpha"] + law["beta"])


def test_line_interval_covers_a_with_few_runs_per_budget_where_the_bootstrap_is_far_wider():
    """With 5 runs per budget, resamples that keep 3 distinct sizes give parabolas whose
    vertices scatter far wider than the estimate does. The t-interval of the line through the
    minima is used instead (5 budgets): it must still cover the true a in 95% of studies (at
    least 88 of 100), and be under half the bootstrap's width."""
    covered = covered_boot = 0
    widths, widths_boot = [], []
    for draw in range(100):
        data, a_true = small_profiles(seed=draw)
        iso = isoflop_profiles(data, n_boot=200, seed=draw)
        # A profile whose noisy minimum falls outside its sizes is left out; 3 budgets left
        # fall back to the bootstrap. Either way the interval must cover.
        assert iso.interval_method == ("line" if iso.n_used >= 4 else "bootstrap")
        lo, hi = iso.a_interval
        covered += lo <= a_true <= hi
        widths.append(hi - lo)
        lo, hi = iso.a_interval_bootstrap
        covered_boot += lo <= a_true <= hi
        widths_boot.append(hi - lo)
    print(f"line: coverage {covered}/100, median width {np.median(widths):.3f}; bootstrap: "
          f"{covered_boot}/100, {np.median(widths_boot):.3f}")
    assert covered >= 88
    assert np.median(widths) < 0.5 * np.median(widths_boot)


def test_line_draws_agree_with_the_line_interval_and_three_budgets_use_the_bootstrap():
    data, _ = small_profiles(seed=0)
    iso = isoflop_profiles(data, n_boot=20000, seed=0)  # t with 3 degrees of freedom has long tails
    lo, hi = iso.a_interval
    assert (lo + hi) / 2 == pytest.approx(iso.a)
    # The bands come from draws of the same line: their slopes' percentiles match the t-interval.
    assert np.percentile(iso.boot_N[:, 1], [2.5, 97.5]) == pytest.approx([lo, hi], abs=0.03 * (hi - lo))
    # D_opt = C / (6 N_opt) in every draw, so b = 1 - a draw by draw, as in the estimate.
    assert iso.boot_D[:, 1] == pytest.approx(1 - iso.boot_N[:, 1])
    C = 1e11
    blo, bhi = iso.band(np.array([C]))
    assert blo[0] < iso.N_opt(C) < bhi[0]
    three, _ = small_profiles(seed=0, budgets=(2.2e10, 9e10, 3.6e11))
    iso3 = isoflop_profiles(three, n_boot=200, seed=0)
    assert iso3.interval_method == "bootstrap" and iso3.a_interval == iso3.a_interval_bootstrap
