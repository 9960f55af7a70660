"""IsoFLOP minima that do not move with the width of the size grid (a window per profile)."""

import json

import numpy as np
import pytest

from scaling.analysis import laws
from scaling.analysis.cli import main
from scaling.analysis.data import Data
from scaling.analysis.errors import AnalysisError
from scaling.analysis.isoflop import DEFAULT_WINDOW, isoflop_profiles, window_mask

# An asymmetric profile (alpha far from beta): a parabola over two decades of N misfits it.
TRUE = dict(E=1.69, A=4000.0, B=400.0, alpha=0.6, beta=0.25)
A_TRUE = TRUE["beta"] / (TRUE["alpha"] + TRUE["beta"])


def wide_grid(decades=2.0, n_sizes=9, sigma=0.002, seed=0):
    """Profiles whose grid spans `decades` of N, off-centre (the optimum drifts from a quarter
    to three quarters of the way along the grid), ends far above the minimum."""
    rng = np.random.default_rng(seed)
    N, D, loss = [], [], []
    budgets = (1e18, 1e19, 1e20, 1e21, 1e22)
    for f, budget in zip(np.linspace(0.25, 0.75, len(budgets)), budgets):
        n_opt, _, _ = laws.chinchilla_optimal(budget, **TRUE)
        sizes = n_opt * np.geomspace(10 ** (-decades * f), 10 ** (decades * (1 - f)), n_sizes)
        d = budget / (6 * sizes)
        N += list(sizes)
        D += list(d)
        loss += list(laws.chinchilla(sizes, d, **TRUE) * np.exp(rng.normal(0, sigma, n_sizes)))
    return Data.from_arrays(N, D, loss)


@pytest.mark.parametrize("seed", [0, 2])
def test_default_window_recovers_a_on_a_two_decade_grid(seed):
    data = wide_grid(seed=seed)
    iso = isoflop_profiles(data, n_boot=200, seed=seed)
    assert iso.window == DEFAULT_WINDOW
    assert iso.a == pytest.approx(A_TRUE, abs=0.01)
    assert not {"isoflop_min_below_data", "isoflop_large_residuals"} & {d.code for d in iso.diagnostics}
    # The smoothing spline's minimum (a non-parametric cross-check) agrees to about the grid's
    # spacing (a quarter decade here).
    for p in iso.profiles:
        assert p.N_opt_smooth == pytest.approx(p.N_opt, rel=0.3)
    # Some profiles drop their far ends; every window keeps at least 4 sizes.
    assert any(not p.in_window.all() for p in iso.profiles)
    assert all(np.unique(p.N[p.in_window]).size >= 4 for p in iso.profiles)


@pytest.mark.parametrize("seed", [0, 2])
def test_without_window_the_same_data_is_biased_and_flagged(seed):
    iso = isoflop_profiles(wide_grid(seed=seed), n_boot=0, window=None)
    assert abs(iso.a - A_TRUE) > 0.01
    assert "isoflop_min_below_data" in {d.code for d in iso.diagnostics}
    assert all(p.in_window.all() for p in iso.profiles)
    assert isoflop_profiles(wide_grid(seed=seed), n_boot=0, window=0).window is None


def test_window_mask_is_contiguous_and_keeps_four_sizes():
    N = np.geomspace(1e7, 1e9, 9)
    loss = 3 + (np.log(N) - np.log(1e8)) ** 2
    m = window_mask(N, loss, 0.01)
    assert m.sum() == 4 and m[4]
    assert np.all(np.diff(np.flatnonzero(m)) == 1)
    assert window_mask(N, loss, 10.0).all()
    assert window_mask(N[:3], loss[:3], 0.01).all()  # fewer sizes than a window: all of them


def test_small_profile_uses_all_sizes_and_says_so():
    data = wide_grid(n_sizes=3, decades=0.6)
    iso = isoflop_profiles(data, n_boot=0)
    assert "isoflop_small_window" in {d.code for d in iso.diagnostics}


def test_bootstrap_redraws_resamples_with_fewer_than_three_sizes():
    from scaling.analysis.isoflop import _draw_counts

    rng = np.random.default_rng(0)
    sizes = np.array([1.0, 2.0, 3.0, 4.0])
    counts = _draw_counts(rng, 4, sizes, 500)
    assert counts.shape[0] >= 490
    assert ((counts > 0).sum(axis=1) >= 3).all()


def test_cli_window_option_and_dropped_points_in_fit_json(tmp_path, capsys):
    data = wide_grid()
    csv = tmp_path / "runs.csv"
    rows = ["N,D,C,loss"] + [f"{n:.17g},{d:.17g},{c:.17g},{l:.17g}" for n, d, c, l in
                             zip(data.N, data.D, data.C, data.loss)]
    csv.write_text("\n".join(rows) + "\n")
    assert main(["--csv", str(csv), "--law", "isoflop", "--out", str(tmp_path / "w"),
                 "--bootstrap", "50", "--no-plots"]) == 0
    doc = json.loads((tmp_path / "w" / "fit.json").read_text())
    assert doc["isoflop_window"] == DEFAULT_WINDOW and doc["noise_log"] > 0
    assert any(b["dropped"] for b in doc["budgets"])
    assert all(b["n_in_window"] + len(b["dropped"]) == b["n_runs"] for b in doc["budgets"])
    assert main(["--csv", str(csv), "--law", "isoflop", "--out", str(tmp_path / "off"),
                 "--bootstrap", "50", "--no-plots", "--isoflop-window", "off"]) == 0
    doc = json.loads((tmp_path / "off" / "fit.json").read_text())
    assert doc["isoflop_window"] is None and not any(b["dropped"] for b in doc["budgets"])
    assert main(["--csv", str(csv), "--law", "isoflop", "--out", str(tmp_path / "x"),
                 "--isoflop-window", "wide"]) != 0
    assert "--isoflop-window=wide" in capsys.readouterr().err
    with pytest.raises(AnalysisError, match="window"):
        isoflop_profiles(data, window=-1)


def test_budget_is_reported_as_given_not_a_rounded_mean():
    from scaling.analysis.report import format_isoflop

    iso = isoflop_profiles(wide_grid(), n_boot=0)  # C = 6ND carries rounding noise
    assert [p.budget for p in iso.profiles] == [1e18, 1e19, 1e20, 1e21, 1e22]
    assert "1e+18" in format_isoflop(iso)


def test_study_fit_json_names_its_input_relative_to_itself(tmp_path):
    from scaling.analysis.study import analyse_study, study_json
    from test_analysis_io_cli import write_study

    root = tmp_path / "study"
    write_study(root)
    a = analyse_study(root, n_boot=0, holdout=0, isoflop_window=None)
    doc = study_json(a)
    assert doc["source"] == "." and str(tmp_path) not in json.dumps(doc["source"])
    assert doc["isoflop"]["isoflop_window"] is None
