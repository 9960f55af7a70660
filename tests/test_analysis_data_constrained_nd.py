"""Muennighoff et al. (2023) data-constrained law with both terms: effective parameters N' (R*_N)
beside effective data D' (R*_D). A synthetic study with known R*_D and R*_N recovers both; one
whose sizes all stay below N_opt(U_D) reports R*_N as not identified, and an estimate beyond every
run's excess is not taken for a value."""

from dataclasses import replace
from types import MappingProxyType

import numpy as np
import pytest

from scaling.analysis import laws
from scaling.analysis.data import Data
from scaling.analysis.fit import bootstrap, fit_law
from scaling.analysis.report import (
    BEYOND,
    PINNED,
    UNIDENTIFIED,
    format_repetition,
    judge_saturation,
    repetition_to_json,
    saturation_status,
)

LAW = laws.DATA_CONSTRAINED_ND
TRUE = dict(E=1.8, A=400.0, B=1500.0, alpha=0.34, beta=0.30, R_D_star=15.39, R_N_star=5.31)
CHIN = ("A", "B", "alpha", "beta")


def study(ratios, epochs=(1, 4, 16, 64), sigma=0.003, seed=0, true=TRUE):
    """Runs at sizes ``ratios`` times N_opt(U) (the compute-optimal size for the unique tokens
    under the true law) for 1e8 and 1e9 unique tokens, each repeated ``epochs`` times; loss from
    the law with log-normal noise ``sigma``."""
    rng = np.random.default_rng(seed)
    rows = [(laws.data_optimal_params(U, *(true[k] for k in CHIN)) * r, U * e, U)
            for U in (1e8, 1e9) for r in ratios for e in epochs]
    N, D, U = map(np.array, zip(*rows))
    loss = laws.data_constrained_nd(N, D, U, **true) * np.exp(rng.normal(0, sigma, N.size))
    return Data.from_arrays(N, D, loss, unique_tokens=U)


def test_data_optimal_params_is_chinchillas_allocation():
    p = dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
    N, D, _ = laws.chinchilla_optimal(np.array([1e18, 1e21, 1e24]), **p)
    chin = {k: p[k] for k in CHIN}
    assert np.allclose(laws.data_optimal_params(D, **chin), N, rtol=1e-10)
    # The two terms fall equally fast there: alpha A N^-alpha = beta B D^-beta.
    assert np.allclose(p["alpha"] * p["A"] * N ** -p["alpha"], p["beta"] * p["B"] * D ** -p["beta"])


def test_effective_params_and_the_law_without_excess():
    chin = {k: TRUE[k] for k in CHIN}
    U = np.array([1e8, 1e8, 1e9])
    D = np.array([4e8, 5e7, 1e9])  # 4 epochs; half an epoch (U_D = D); one
    cap = laws.data_optimal_params(np.minimum(U, D), **chin)
    # Within N_opt(U_D) N' is N and the law is data_constrained's.
    N = 0.5 * cap
    assert np.allclose(laws.effective_params(N, D, U, **chin, R_N_star=5.31), N)
    dc = {k: v for k, v in TRUE.items() if k != "R_N_star"}
    assert np.allclose(laws.data_constrained_nd(N, D, U, **TRUE), laws.data_constrained(N, D, U, **dc))
    # Far beyond it, N' tends to (1 + R*_N) U_N; the first excess parameters count nearly in full.
    assert np.allclose(laws.effective_params(1e6 * cap, D, U, **chin, R_N_star=5.31), 6.31 * cap)
    assert np.allclose(laws.effective_params(1.001 * cap, D, U, **chin, R_N_star=5.31), 1.001 * cap,
                       rtol=1e-6)


def _cols():
    """Runs on both sides of N_opt(U_D), at 1 to 64 epochs and one of less than one."""
    N = np.geomspace(1e5, 1e9, 9)
    D = np.array([1e8, 2e8, 4e8, 1.6e9, 6.4e9, 5e7, 1e9, 3e9, 6.4e10])
    U = np.array([1e8, 1e8, 1e8, 1e8, 1e8, 1e8, 1e9, 1e9, 1e9])
    return {"lnN": np.log(N), "lnD": np.log(D), "lnU": np.log(U)}


def _thetas():
    truth = [np.log(TRUE["A"]), np.log(TRUE["B"]), np.log(TRUE["E"]), TRUE["alpha"], TRUE["beta"],
             np.log(TRUE["R_D_star"]), np.log(TRUE["R_N_star"])]
    return np.array([truth, [5.0, 8.0, 0.3, 0.3, 0.4, np.log(3.0), np.log(40.0)],
                     [7.0, 6.0, 0.7, 0.5, 0.25, np.log(60.0), np.log(0.8)]])


def test_log_form_is_the_formula_and_its_jacobian_finite_differences():
    cols, thetas = _cols(), _thetas()
    lp, jac = LAW.log_pred(thetas, cols)
    inputs = [np.exp(cols["ln" + k]) for k in LAW.inputs]
    for theta, row in zip(thetas, lp):
        params = dict(zip(LAW.param_names, LAW.to_public(theta[None])[0]))
        assert np.allclose(np.exp(row), laws.data_constrained_nd(*inputs, **params), rtol=1e-10)
    # Every test point has runs past N_opt(U_D), so the chain rule through the cap is checked.
    eps = 1e-6
    for k, name in enumerate(LAW.theta_names):
        e = np.zeros(LAW.n_params)
        e[k] = eps
        fd = (LAW.log_pred(thetas + e, cols)[0] - LAW.log_pred(thetas - e, cols)[0]) / (2 * eps)
        assert np.allclose(np.broadcast_to(jac[k], fd.shape), fd, rtol=1e-5, atol=1e-7), name


@pytest.fixture(scope="module")
def fitted():
    data = study(np.geomspace(1 / 10, 60, 7))  # R_N from 0 to 59 around R*_N = 5.31; none near 0
    fit = fit_law(data, LAW.name)
    return data, fit, judge_saturation(data, fit, bootstrap(data, fit, n_resamples=200))


def test_recovers_r_d_star_and_r_n_star_within_10_percent(fitted):
    data, fit, boot = fitted
    for k in ("R_D_star", "R_N_star"):
        assert fit.params[k] == pytest.approx(TRUE[k], rel=0.10), k
        lo, hi = boot.interval[k]
        assert lo < fit.params[k] < hi and hi < 2 * lo, k  # a narrow interval about the estimate
    assert not fit.diagnostics
    doc = repetition_to_json(data, fit, boot)
    assert doc["epoch_value"]["R_D_star_status"] == PINNED
    xp = doc["excess_params"]
    assert xp["R_N_star_status"] == PINNED and xp["R_N_star_interval"] == list(boot.interval["R_N_star"])
    assert xp["runs_past_N_opt"] == 2 * 4 * 4 and xp["data_max_size_ratio"] > 50
    assert fit.derived["half_value_size_ratio"] == pytest.approx(1 + fit.params["R_N_star"] * np.log(2))
    assert "R*_N = 5." in format_repetition(doc, fit.law) and "pinned down" in format_repetition(doc, fit.law)


def test_without_excess_parameters_r_n_star_is_not_identified():
    data = study(np.geomspace(1 / 64, 1 / 4, 4))  # every size well below N_opt(U)
    fit = fit_law(data, LAW.name)
    boot = judge_saturation(data, fit, bootstrap(data, fit, n_resamples=50))
    doc = repetition_to_json(data, fit, boot)
    xp = doc["excess_params"]
    assert xp["runs_past_N_opt"] == 0 and xp["R_N_star_status"] == UNIDENTIFIED
    # Not the value the fit was left at, but the whole range the optimiser allows.
    assert xp["R_N_star_interval"] == list(LAW.bounds["R_N_star"])
    assert boot.interval["R_N_star"] == LAW.bounds["R_N_star"] and np.isnan(boot.stderr["R_N_star"])
    lo, hi = boot.interval["max_effective_size_ratio"]
    assert lo == pytest.approx(1 + LAW.bounds["R_N_star"][0]) and hi == pytest.approx(1 + LAW.bounds["R_N_star"][1])
    assert [d.code for d in boot.diagnostics].count("not_identified") == 1
    assert "R*_N is not identified" in format_repetition(doc, fit.law)
    # R*_D is still fitted from the repeated runs.
    assert doc["epoch_value"]["R_D_star_status"] == PINNED
    assert fit.params["R_D_star"] == pytest.approx(TRUE["R_D_star"], rel=0.10)


def test_an_estimate_beyond_every_runs_excess_is_not_pinned_down(fitted):
    # Far past the runs' largest R_N, N' hardly bends and the objective is flat in R*_N: the
    # bootstrap's resamples start at the fit and stay near it, so a narrow interval means nothing.
    data, fit, boot = fitted
    far = replace(fit, params=MappingProxyType({**fit.params, "R_N_star": 1e3}))
    # Half of ten runs past the cap: almost every resample holds one of them.
    assert saturation_status("R_N_star", far, boot, np.repeat([0.0, 3.0], 5))[0] == BEYOND
    assert saturation_status("R_N_star", fit, boot, np.repeat([0.0, 30.0], 5))[0] == PINNED
    judged = judge_saturation(data, far, boot)
    assert [d.code for d in judged.diagnostics] == ["beyond_data"]
    assert judged.interval["R_N_star"] == boot.interval["R_N_star"]
    doc = repetition_to_json(data, far, boot)
    assert "R*_N = 1e+03 [" in format_repetition(doc, fit.law)
    assert "is not pinned down, only bounded below" in format_repetition(doc, fit.law)
