"""Laws as pure functions, and their log-space forms used by the fitter."""

import numpy as np
import pytest

from scaling.analysis import laws
from scaling.analysis.forms import FORMS, huber_value_and_grad


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


def _cols_for(form, rng):
    n = 12
    if form.inputs == ("N", "D"):
        return {"lnN": np.log(np.geomspace(1e7, 1e10, n)), "lnD": np.log(np.geomspace(1e9, 1e11, n))[::-1].copy()}
    return {"lnx": np.log(np.geomspace(1e3, 1e9, n))}


THETA = {
    "chinchilla": [6.0, 7.5, 0.6, 0.35, 0.37],
    "power_law": [3.0, 0.5, 0.2],
    "kaplan_n": [np.log(8.8e13), 0.076],
    "kaplan_d": [np.log(5.4e13), 0.095],
    "kaplan_nd": [np.log(8.8e13), np.log(5.4e13), 0.076, 0.095],
    "broken_power_law": [0.2, 2.0, 0.1, 0.3, np.log(1e6), 0.5],
}
PUBLIC_CALL = {
    "chinchilla": lambda p, c: laws.chinchilla(np.exp(c["lnN"]), np.exp(c["lnD"]), **p),
    "kaplan_nd": lambda p, c: laws.kaplan_nd(np.exp(c["lnN"]), np.exp(c["lnD"]), **p),
}


@pytest.mark.parametrize("name", sorted(FORMS))
def test_log_form_matches_public_law(name):
    form = FORMS[name]
    cols = _cols_for(form, None)
    theta = np.array([THETA[name]])
    lp, _ = form.log_pred(theta, cols)
    params = dict(zip(form.param_names, form.to_public(theta)[0]))
    call = PUBLIC_CALL.get(name, lambda p, c: laws.LAWS[name](np.exp(c["lnx"]), **p))
    assert np.allclose(np.exp(lp[0]), call(params, cols), rtol=1e-10)


@pytest.mark.parametrize("name", sorted(FORMS))
def test_analytic_gradient_matches_finite_differences(name):
    form = FORMS[name]
    cols = _cols_for(form, None)
    theta = np.array(THETA[name], dtype=float)
    lp, _ = form.log_pred(theta[None], cols)
    rng = np.random.default_rng(0)
    y = lp[0] + rng.normal(0, 0.01, lp.shape[1])  # residuals both in and outside delta
    f, g = huber_value_and_grad(form, theta[None], cols, y, 1e-3)
    eps = 1e-6
    for k in range(theta.size):
        e = np.zeros_like(theta)
        e[k] = eps
        fp, _ = huber_value_and_grad(form, (theta + e)[None], cols, y, 1e-3)
        fm, _ = huber_value_and_grad(form, (theta - e)[None], cols, y, 1e-3)
        assert g[0, k] == pytest.approx((fp[0] - fm[0]) / (2 * eps), rel=1e-4, abs=1e-8)


def test_fused_chinchilla_objective_matches_generic_path():
    from scaling.analysis.forms import CHINCHILLA, huber_value_and_grad_generic

    rng = np.random.default_rng(0)
    cols = {"lnN": np.log(np.geomspace(1e7, 1e10, 50)), "lnD": np.log(np.geomspace(1e9, 1e11, 50))}
    y = np.log(2.0 + rng.uniform(0, 1, 50))
    theta = CHINCHILLA.default_grid(cols)[::7]
    w = rng.integers(0, 3, (theta.shape[0], 50)).astype(float)
    for weights in (None, w):
        f1, g1 = huber_value_and_grad(CHINCHILLA, theta, cols, y, 1e-3, weights)
        f2, g2 = huber_value_and_grad_generic(CHINCHILLA, theta, cols, y, 1e-3, weights)
        assert np.allclose(f1, f2, rtol=1e-12)
        assert np.allclose(g1, g2, rtol=1e-9, atol=1e-12)
