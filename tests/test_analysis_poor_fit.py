"""poor_fit judges the residuals against the data's own noise scale and their structure."""

import numpy as np

from scaling.analysis import laws
from scaling.analysis.cli import main
from scaling.analysis.data import Data
from scaling.analysis.diagnostics import noise_scale, runs_z
from scaling.analysis.fit import fit_law


def kink(seed=0):
    """A curve whose exponent changes at x = 1e8: no single power law describes it."""
    rng = np.random.default_rng(seed)
    x = np.geomspace(1e6, 1e10, 30)
    loss = np.where(x < 1e8, 5 * (x / 1e6) ** -0.3, 5 * 100.0 ** -0.3 * (x / 1e8) ** -0.05)
    return Data.from_arrays(x, np.full(30, 1e9), loss * np.exp(rng.normal(0, 0.005, 30)), x)


def test_a_kink_is_a_poor_fit_and_the_console_says_so_last(tmp_path, capsys):
    fit = fit_law(kink(), "kaplan_n")
    poor = [d for d in fit.diagnostics if d.code == "poor_fit"]
    assert poor and "structure along N" in poor[0].message
    data = kink()
    csv = tmp_path / "k.csv"
    csv.write_text("N,D,loss\n" + "".join(f"{n:.17g},{d:.17g},{l:.17g}\n"
                                          for n, d, l in zip(data.N, data.D, data.loss)))
    assert main(["--csv", str(csv), "--law", "kaplan_n", "--out", str(tmp_path / "o"),
                 "--no-plots"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("the fit is poor: ")


def test_a_good_fit_is_not_poor():
    rng = np.random.default_rng(1)
    x = np.geomspace(1e6, 1e10, 30)
    loss = (2 + 5 * (x / 1e6) ** -0.3) * np.exp(rng.normal(0, 0.005, 30))
    fit = fit_law(Data.from_arrays(x, np.full(30, 1e9), loss, x), "power_law", x="N")
    assert "poor_fit" not in {d.code for d in fit.diagnostics}
    N, D = np.meshgrid(np.geomspace(1e7, 3e9, 8), np.geomspace(3e8, 1e11, 8))
    loss = laws.chinchilla(N.ravel(), D.ravel()) * np.exp(rng.normal(0, 0.01, 64))
    fit = fit_law(Data.from_arrays(N.ravel(), D.ravel(), loss))
    assert "poor_fit" not in {d.code for d in fit.diagnostics}


def test_noise_scale_ignores_a_smooth_misfit_and_runs_see_it():
    rng = np.random.default_rng(2)
    key = np.arange(200.0)
    noise = rng.normal(0, 0.01, 200)
    smooth = 0.2 * np.sin(key / 30)
    assert abs(noise_scale(noise + smooth, key) / 0.01 - 1) < 0.2
    assert runs_z(noise + smooth, key) < -5 < runs_z(noise, key)


def repeated_grid(seed, seeds=4, sigma=0.01, wiggle=0.0):
    """A 5 x 5 Chinchilla grid run `seeds` times (the same N and D; noise of log loss `sigma`
    per run), with an optional structure no Chinchilla law follows: a wiggle of relative size
    `wiggle` along ln N, the same for every seed."""
    rng = np.random.default_rng(seed)
    N, D = (np.repeat(v.ravel(), seeds) for v in np.meshgrid(np.geomspace(1e7, 3e9, 5),
                                                             np.geomspace(3e8, 1e11, 5)))
    shape = 1 + wiggle * np.sin(3 * np.log(N))
    loss = laws.chinchilla(N, D) * shape * np.exp(rng.normal(0, sigma, N.size))
    return Data.from_arrays(N, D, loss)


def test_lack_of_fit_needs_repeats_and_fires_only_on_a_misfit_they_reveal():
    """The pure-error F test: repeats of each configuration measure the noise, so a law that
    misses their means by more than that is named. A right law is not (10 studies), a 2% wiggle
    is, and without repeats nothing is judged."""
    for seed in range(10):
        fit = fit_law(repeated_grid(seed), "chinchilla")
        assert "lack_of_fit" not in {d.code for d in fit.diagnostics}, fit.diagnostics
    fit = fit_law(repeated_grid(0, wiggle=0.02), "chinchilla")
    found = [d for d in fit.diagnostics if d.code == "lack_of_fit"]
    assert found and "25 configurations with 100 runs" in found[0].message
    fit = fit_law(repeated_grid(0, seeds=1, wiggle=0.02), "chinchilla")
    assert "lack_of_fit" not in {d.code for d in fit.diagnostics}
