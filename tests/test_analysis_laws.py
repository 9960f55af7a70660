"""Laws as pure functions, and the rest of each law's object checked against its formula: the
log form and its Jacobian, a fused objective, the derived quantities and the compute-optimal
allocation. Every check runs for every law in LAWS, so a law added there is checked too."""

import numpy as np
import pytest

from scaling.analysis import laws
from scaling.analysis.forms import huber_value_and_grad, huber_value_and_grad_generic
from scaling.analysis.laws import LAWS


def test_chinchilla_published_point():
    # Hoffmann et al.'s fit at Chinchilla itself (70B params, 1.4T tokens).
    L = laws.chinchilla(70e9, 1.4e12)
    expected = 1.69 + 406.4 / 70e9**0.34 + 410.7 / 1.4e12**0.28
    assert L == pytest.approx(expected)
    assert 1.9 < L < 2.0


def test_kaplan_forms_reduce_to_single_variable_laws():
    N, D = np.geomspace(1e6, 1e10, 5), np.geomspace(1e8, 1e12, 5)
    # With infinite data L(N, D) -> L(N); with infinite N it -> L(D).
    assert np.allclose(laws.kaplan_nd(N, 1e300), laws.kaplan_n(N))
    assert np.allclose(laws.kaplan_nd(1e300, D), laws.kaplan_d(D))
    assert laws.kaplan_n(8.8e13) == pytest.approx(1.0)


def test_power_law_and_broken_power_law():
    x = np.geomspace(1e2, 1e8, 7)
    assert np.allclose(laws.power_law(x, 1.0, 10.0, 0.5), 1.0 + 10.0 / np.sqrt(x))
    # Far below the break the slope is c0, far above it c0 + c1.
    y = laws.broken_power_law(x, 0.0, 1.0, 0.1, 0.4, 1e5, 0.1)
    slope = np.diff(np.log(y)) / np.diff(np.log(x))
    assert slope[0] == pytest.approx(-0.1, abs=1e-3)
    assert slope[-1] == pytest.approx(-0.5, abs=1e-3)


def test_chinchilla_optimal_uses_c_equals_6nd():
    N, D, L = laws.chinchilla_optimal(1e24, 1.69, 406.4, 410.7, 0.34, 0.28)
    assert 6 * N * D == pytest.approx(1e24)
    # Any other split of the same compute gives a higher loss.
    for f in (0.5, 2.0):
        assert laws.chinchilla(N * f, D / f, 1.69, 406.4, 410.7, 0.34, 0.28) > L


def _cols_for(law):
    n = 12
    if law.x_choices:
        return {"lnx": np.log(np.geomspace(1e3, 1e9, n))}
    cols = {"lnN": np.log(np.geomspace(1e7, 1e10, n)), "lnD": np.log(np.geomspace(1e9, 1e11, n))[::-1].copy()}
    if "U" in law.extra_inputs:  # from 1 to 100 epochs, and one run with more unique data than D
        cols["lnU"] = cols["lnD"] - np.log(np.r_[np.geomspace(1, 100, n - 1), 0.5])
    return cols


THETA = {
    "chinchilla": [6.0, 7.5, 0.6, 0.35, 0.37],
    "power_law": [3.0, 0.5, 0.2],
    "kaplan_n": [np.log(8.8e13), 0.076],
    "kaplan_d": [np.log(5.4e13), 0.095],
    "kaplan_nd": [np.log(8.8e13), np.log(5.4e13), 0.076, 0.095],
    "broken_power_law": [0.2, 2.0, 0.1, 0.3, np.log(1e6), 0.5],
    "data_constrained": [6.0, 7.5, 0.6, 0.35, 0.37, np.log(15.39)],
    "data_constrained_nd": [6.0, 7.5, 0.6, 0.35, 0.37, np.log(15.39), np.log(5.31)],
}


def _formula(law, theta, cols):
    """The law's formula (the pure function) at internal parameters ``theta`` (p,)."""
    params = dict(zip(law.param_names, law.to_public(theta[None])[0]))
    inputs = [np.exp(cols["ln" + k]) for k in law.inputs]
    with np.errstate(over="ignore"):
        return law(*inputs, **params)


def _thetas(name):
    """THETA and a spread of the law's own start grid (built from data at THETA): the points
    the fit starts from, edges included."""
    law = LAWS[name]
    cols = _cols_for(law)
    theta = np.array(THETA[name], dtype=float)
    grid = law.default_grid({**cols, "lny": np.log(_formula(law, theta, cols))})
    return cols, np.vstack([theta, grid[:: max(1, len(grid) // 7)]])


def test_every_law_has_a_test_point():
    assert set(THETA) == set(LAWS)


@pytest.mark.parametrize("name", sorted(LAWS))
def test_log_form_matches_public_law(name):
    law = LAWS[name]
    cols, thetas = _thetas(name)
    lp, _ = law.log_pred(thetas, cols)
    for theta, row in zip(thetas, lp):
        direct = _formula(law, theta, cols)
        ok = np.isfinite(direct)  # the formula overflows where the log form does not
        assert np.allclose(np.exp(row[ok]), direct[ok], rtol=1e-10), theta
    assert np.isfinite(_formula(law, thetas[0], cols)).all()


@pytest.mark.parametrize("name", sorted(LAWS))
def test_jacobian_matches_finite_differences_of_the_log_form(name):
    law = LAWS[name]
    cols, thetas = _thetas(name)
    _, jac = law.log_pred(thetas, cols)
    eps = 1e-6
    for k in range(law.n_params):
        e = np.zeros(law.n_params)
        e[k] = eps
        fd = (law.log_pred(thetas + e, cols)[0] - law.log_pred(thetas - e, cols)[0]) / (2 * eps)
        jk = np.broadcast_to(jac[k], fd.shape)
        assert np.allclose(jk, fd, rtol=1e-5, atol=1e-6), (law.theta_names[k], np.abs(jk - fd).max())


@pytest.mark.parametrize("name", sorted(LAWS))
@pytest.mark.parametrize("path", ["fit", "generic"])
def test_analytic_gradient_matches_finite_differences(name, path):
    # "fit" is the objective the fit uses (a fused one where the law has it).
    law = LAWS[name]
    objective = huber_value_and_grad if path == "fit" else huber_value_and_grad_generic
    cols = _cols_for(law)
    theta = np.array(THETA[name], dtype=float)
    lp, _ = law.log_pred(theta[None], cols)
    rng = np.random.default_rng(0)
    y = lp[0] + rng.normal(0, 0.01, lp.shape[1])  # residuals both in and outside delta
    f, g = objective(law, theta[None], cols, y, 1e-3)
    eps = 1e-6
    for k in range(theta.size):
        e = np.zeros_like(theta)
        e[k] = eps
        fp, _ = objective(law, (theta + e)[None], cols, y, 1e-3)
        fm, _ = objective(law, (theta - e)[None], cols, y, 1e-3)
        assert g[0, k] == pytest.approx((fp[0] - fm[0]) / (2 * eps), rel=1e-4, abs=1e-8)


@pytest.mark.parametrize("name", sorted(n for n, law in LAWS.items() if law.fused))
def test_fused_objective_matches_generic_path(name):
    law = LAWS[name]
    rng = np.random.default_rng(0)
    cols = {"lnN": np.log(np.geomspace(1e7, 1e10, 50)), "lnD": np.log(np.geomspace(1e9, 1e11, 50))}
    if law.inputs != ("N", "D"):
        cols = {"lnx": np.log(np.geomspace(1e3, 1e9, 50))}
    y = np.log(2.0 + rng.uniform(0, 1, 50))
    theta = law.default_grid({**cols, "lny": y})[::7]
    w = rng.integers(0, 3, (theta.shape[0], 50)).astype(float)
    for weights in (None, w):
        f1, g1 = law.fused(theta, cols, y, 1e-3, weights)
        f2, g2 = huber_value_and_grad_generic(law, theta, cols, y, 1e-3, weights)
        assert np.allclose(f1, f2, rtol=1e-12)
        assert np.allclose(g1, g2, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", sorted(n for n, law in LAWS.items() if law.optimal))
def test_compute_optimal_allocation_minimises_the_formula(name):
    # At fixed C = 6 N D, N_opt is the minimum of the formula over N, and the derived
    # exponents are the slopes of N_opt(C) and D_opt(C).
    law = LAWS[name]
    params = dict(zip(law.param_names, law.to_public(np.array([THETA[name]]))[0]))
    C = 1e22
    N_opt, D_opt, L = law.allocate(params, C)
    assert 6 * N_opt * D_opt == pytest.approx(C)
    assert L == pytest.approx(law(N_opt, D_opt, **params))
    Ns = N_opt * np.geomspace(0.5, 2.0, 201)
    assert Ns[np.argmin(law(Ns, C / (6 * Ns), **params))] == pytest.approx(N_opt, rel=0.01)
    N10, D10, _ = law.allocate(params, 10 * C)
    derived = law.derived(params)
    assert np.log10(N10 / N_opt) == pytest.approx(derived["a"])
    assert np.log10(D10 / D_opt) == pytest.approx(derived["b"])
