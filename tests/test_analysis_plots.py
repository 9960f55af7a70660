"""Plot functions draw on the Axes they are given, return it, and label it with units."""

import numpy as np
import pytest

from scaling.analysis import laws, plots
from scaling.analysis.data import Data
from scaling.analysis.extrapolate import holdout_check
from scaling.analysis.fit import bootstrap, fit_law
from scaling.analysis.isoflop import isoflop_profiles

TRUE = dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    N, D, C = [], [], []
    for budget in (1e18, 1e19, 1e20, 1e21):
        n_opt, _, _ = laws.chinchilla_optimal(budget, **TRUE)
        sizes = n_opt * np.geomspace(1 / 5, 5, 7)
        N += list(sizes)
        D += list(budget / (6 * sizes))
        C += [budget] * 7
    N, D = np.array(N), np.array(D)
    loss = laws.chinchilla(N, D, **TRUE) * np.exp(rng.normal(0, 0.002, N.size))
    return Data.from_arrays(N, D, loss, C)


def _labelled(ax):
    assert ax.get_title() and "[" in ax.get_xlabel() and "[" in ax.get_ylabel()


def test_every_plot_returns_a_labelled_axes(data):
    fit = fit_law(data, "chinchilla")
    boot = bootstrap(data, fit, n_resamples=50)
    iso = isoflop_profiles(data, n_boot=50)
    hold = holdout_check(data, k=2)
    fig, axes = plots.new_figure(ncols=5)
    assert plots.plot_loss_vs_compute(axes[0], data, fit) is axes[0]
    assert plots.plot_isoflop(axes[1], iso) is axes[1]
    assert plots.plot_residuals(axes[2], data, fit) is axes[2]
    assert plots.plot_predicted_vs_actual(axes[3], data, fit, hold) is axes[3]
    assert plots.plot_optimal(axes[4], fit, boot=boot) is axes[4]
    for ax in axes:
        _labelled(ax)
    fig2, pair = plots.new_figure(ncols=2)
    assert plots.plot_optimal(pair, iso) == pair
    for ax in pair:
        _labelled(ax)
    # A law in C alone is drawn as a curve against C.
    fig3, (ax,) = plots.new_figure()
    plots.plot_loss_vs_compute(ax, data, fit_law(data, "power_law"))
    _labelled(ax)
