"""Start grids scale with the data; a grid that misses is extended once before it warns."""

import numpy as np
import pytest

from scaling.analysis.data import Data
from scaling.analysis.fit import fit_law


def below_one(column, x_c=1e7, alpha=0.095, sigma=0.002, seed=0):
    """Loss (x_c / x)^alpha below 1 everywhere (x_c two decades below the data)."""
    rng = np.random.default_rng(seed)
    x = np.geomspace(1e9, 1e12, 20)
    loss = (x_c / x) ** alpha * np.exp(rng.normal(0, sigma, x.size))
    other = np.geomspace(1e8, 2e8, x.size)
    N, D = (x, other) if column == "N" else (other, x)
    return Data.from_arrays(N, D, loss)


@pytest.mark.parametrize("law,column,names", [("kaplan_d", "D", ("D_c", "alpha_D")),
                                              ("kaplan_n", "N", ("N_c", "alpha_N"))])
def test_kaplan_1d_recovers_a_scale_below_the_data(law, column, names):
    data = below_one(column)
    assert data.loss.max() < 1
    fit = fit_law(data, law)
    assert fit.params[names[0]] == pytest.approx(1e7, rel=0.02)
    assert fit.params[names[1]] == pytest.approx(0.095, rel=0.02)
    assert fit.r2_log > 0.99
    assert not fit.diagnostics


def test_power_law_grid_follows_a_rescaled_loss():
    # E + A x^-alpha with every loss around 0.01 (a rescaled loss): E is a fraction of it.
    rng = np.random.default_rng(1)
    x = np.geomspace(1e17, 1e21, 15)
    loss = 1e-2 * (0.5 + 30 * x ** -0.1 / 1e17 ** -0.1 / 30) * np.exp(rng.normal(0, 0.002, 15))
    fit = fit_law(Data.from_arrays(x / 6e9, np.full(15, 1e9), loss, x), "power_law", x="C")
    assert fit.params["E"] == pytest.approx(5e-3, rel=0.1)
    assert fit.params["alpha"] == pytest.approx(0.1, rel=0.1)
    assert "grid_edge" not in {d.code for d in fit.diagnostics}


def test_grid_is_extended_once_before_it_warns():
    from scaling.analysis.fit import _extended

    starts = np.array([[0.0, 0.1], [1.0, 0.1], [0.0, 0.5], [1.0, 0.5]])
    lower, upper = np.array([-50.0, 0.0]), np.array([50.0, 10.0])
    ext = _extended(starts, starts[1], np.array([3.0, 0.3]), lower, upper)
    assert np.allclose(ext[:, 0], starts[:, 0] + 1.0) and np.allclose(ext[:, 1], starts[:, 1])
    assert _extended(starts, starts[1], np.array([0.5, 0.3]), lower, upper) is None


def test_kaplan_nd_finds_scales_below_the_data():
    from scaling.analysis import laws

    rng = np.random.default_rng(0)
    N, D = np.meshgrid(np.geomspace(1e7, 1e9, 6), np.geomspace(1e9, 1e11, 6))
    N, D = N.ravel(), D.ravel()
    loss = laws.kaplan_nd(N, D, N_c=1e5, D_c=1e6, alpha_N=0.076, alpha_D=0.095)
    fit = fit_law(Data.from_arrays(N, D, loss * np.exp(rng.normal(0, 0.002, N.size))), "kaplan_nd")
    assert loss.max() < 1 and "grid_edge" not in {d.code for d in fit.diagnostics}
    assert fit.params["alpha_N"] == pytest.approx(0.076, rel=0.05)


@pytest.mark.parametrize("law", ["power_law", "broken_power_law"])
def test_one_variable_fits_do_not_depend_on_the_units_of_the_loss(law):
    # Loss in nats or rescaled by 1e-3: the grid scales with it, so the fit is the same.
    rng = np.random.default_rng(3)
    x = np.geomspace(1e17, 1e21, 20)
    loss = (1.7 + 40 * (x / 1e17) ** -0.3) * np.exp(rng.normal(0, 0.003, x.size))
    fits = [fit_law(Data.from_arrays(None, x, scale * loss), law, x="D") for scale in (1.0, 1e-3)]
    assert fits[1].rmse_log == pytest.approx(fits[0].rmse_log, rel=0.05)
    if law == "power_law":  # the broken law's E trades off against its break: not pinned
        assert fits[1].params["E"] == pytest.approx(1e-3 * fits[0].params["E"], rel=0.05)


def chinchilla_rescaled(loss_scale, n_unit, d_unit, sigma=0.001, seed=0):
    """Chinchilla's law on an 8 x 8 grid, with the loss multiplied by ``loss_scale`` and N, D
    counted in units of ``n_unit``, ``d_unit``; returns the data and the true parameters in
    those units."""
    from scaling.analysis import laws

    rng = np.random.default_rng(seed)
    N, D = np.meshgrid(np.geomspace(1e7, 3e9, 8), np.geomspace(3e8, 1e11, 8))
    N, D = N.ravel(), D.ravel()
    p = dict(E=1.8, A=400.0, B=1500.0, alpha=0.34, beta=0.30)
    loss = laws.chinchilla(N, D, **p) * np.exp(rng.normal(0, sigma, N.size))
    true = dict(E=p["E"] * loss_scale, A=p["A"] * loss_scale * n_unit ** -p["alpha"],
                B=p["B"] * loss_scale * d_unit ** -p["beta"], alpha=p["alpha"], beta=p["beta"])
    return Data.from_arrays(N / n_unit, D / d_unit, loss * loss_scale), true


@pytest.mark.parametrize("loss_scale,n_unit,d_unit", [
    (1e-2, 1e9, 1e-3),   # loss below 0.05, N in billions, D in thousandths of a token
    (1e-3, 1e-6, 1e6),   # N in micro-parameters, D in millions of tokens
    (30.0, 1.0, 1e12),   # loss above 30, D in trillions (every D below 1)
])
def test_chinchilla_grid_follows_rescaled_data(loss_scale, n_unit, d_unit):
    # The grid scales with the data's N, D and losses: the same law in other units is
    # recovered, and no start lies off the data's scale (no grid_edge warning).
    data, true = chinchilla_rescaled(loss_scale, n_unit, d_unit)
    fit = fit_law(data, "chinchilla")
    for k in ("E", "alpha", "beta"):
        assert fit.params[k] == pytest.approx(true[k], rel=0.02), k
    for k in ("A", "B"):
        assert fit.params[k] == pytest.approx(true[k], rel=0.1), k
    assert not fit.diagnostics
    # Equivariance: the fit in the original units, carried over, is the same optimum.
    base = fit_law(chinchilla_rescaled(1.0, 1.0, 1.0)[0], "chinchilla")
    assert fit.objective == pytest.approx(base.objective, rel=1e-4)
    assert fit.params["E"] == pytest.approx(base.params["E"] * loss_scale, rel=1e-3)
    assert fit.params["alpha"] == pytest.approx(base.params["alpha"], rel=1e-3)


def test_chinchilla_grid_scales_with_the_data():
    from scaling.analysis.laws import CHINCHILLA

    data, _ = chinchilla_rescaled(1.0, 1.0, 1.0)
    cols = {"lnN": np.log(data.N), "lnD": np.log(data.D), "lny": np.log(data.loss)}
    grid = CHINCHILLA.default_grid(cols)
    assert grid.shape == (4500, 5)  # as many starts as Epoch AI's grid
    shifted = CHINCHILLA.default_grid({"lnN": cols["lnN"] - np.log(1e9), "lnD": cols["lnD"],
                                       "lny": cols["lny"] + np.log(1e-2)})
    # N in billions moves a by -alpha ln(1e9); a loss 100 times smaller moves a, b, e by ln(0.01).
    assert np.allclose(shifted[:, 0], grid[:, 0] - grid[:, 3] * np.log(1e9) + np.log(1e-2))
    assert np.allclose(shifted[:, 1:3], grid[:, 1:3] + np.log(1e-2))
    assert (np.exp(grid[:, 2]) < data.loss.min()).all()  # E starts below the lowest loss
