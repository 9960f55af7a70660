"""fit_law(delta="auto"): Huber's threshold from the data's own noise scale."""

import numpy as np
import pytest

from scaling.analysis.data import Data
from scaling.analysis.fit import HUBER_K, fit_law


def test_auto_delta_follows_the_noise():
    rng = np.random.default_rng(0)
    D = np.linspace(1e8, 1e10, 80)  # a learning curve, logged at even steps
    clean = 1.8 + 300 * D ** -0.25
    for sigma in (0.003, 0.02):
        data = Data.from_arrays(None, D, clean * np.exp(rng.normal(0, sigma, D.size)))
        fit = fit_law(data, "power_law", x="D", delta="auto")
        assert fit.delta == pytest.approx(HUBER_K * sigma, rel=0.3)
        assert fit.params["alpha"] == pytest.approx(0.25, rel=0.3)


def test_auto_delta_is_floored_and_checked():
    D = np.geomspace(1e8, 1e10, 20)
    data = Data.from_arrays(None, D, 1.8 + 300 * D ** -0.25)  # no noise at all
    assert fit_law(data, "power_law", x="D", delta="auto").delta == pytest.approx(HUBER_K * 1e-3)
    with pytest.raises(ValueError, match="auto"):
        fit_law(data, "power_law", x="D", delta="huge")


def test_scaling_fit_delta_auto(tmp_path):
    import json

    from scaling.analysis.cli import main

    rng = np.random.default_rng(1)
    D = np.linspace(1e8, 1e10, 60)
    loss = (1.8 + 300 * D ** -0.25) * np.exp(rng.normal(0, 0.01, D.size))
    (tmp_path / "curve.csv").write_text("D,loss\n" + "".join(f"{d},{v}\n" for d, v in zip(D, loss)))
    assert main(["--csv", str(tmp_path / "curve.csv"), "--law", "power_law", "--x", "D",
                 "--delta", "auto", "--out", str(tmp_path / "out"), "--no-plots"]) == 0
    doc = json.loads((tmp_path / "out" / "fit.json").read_text())
    assert doc["delta"] == pytest.approx(HUBER_K * 0.01, rel=0.3)
