"""Muennighoff et al. (2023) data-constrained law: Chinchilla's law in effective data D'."""

import json

import numpy as np
import pytest

from scaling.analysis import laws
from scaling.analysis.cli import main
from scaling.analysis.data import Data
from scaling.analysis.errors import AnalysisError
from scaling.analysis.fit import bootstrap, fit_law
from scaling.analysis.report import format_repetition, judge_saturation, repetition_to_json
from scaling.contracts import Result, RunStatus, write_result

TRUE = dict(E=1.8, A=400.0, B=1500.0, alpha=0.34, beta=0.30, R_D_star=15.39)


def study(sigma=0.003, seed=0, true=TRUE):
    """A synthetic data-constrained study: 5 sizes, 2 amounts of unique data, 1 to 64 epochs
    of each (70 runs), loss from the law with log-normal noise ``sigma``."""
    rng = np.random.default_rng(seed)
    N, U, epochs = np.meshgrid(np.geomspace(1e7, 1e9, 5), [1e8, 1e9], [1, 2, 4, 8, 16, 32, 64])
    N, U, epochs = N.ravel(), U.ravel(), epochs.ravel()
    D = U * epochs
    loss = laws.data_constrained(N, D, U, **true) * np.exp(rng.normal(0, sigma, N.size))
    return Data.from_arrays(N, D, loss, unique_tokens=U)


@pytest.fixture(scope="module")
def fitted():
    data = study()
    return data, fit_law(data, "data_constrained")


def test_recovers_r_d_star_within_10_percent(fitted):
    _, fit = fitted
    assert fit.params["R_D_star"] == pytest.approx(TRUE["R_D_star"], rel=0.10)
    for k in ("E", "alpha", "beta"):
        assert fit.params[k] == pytest.approx(TRUE[k], rel=0.05), k
    assert fit.derived["half_value_epochs"] == pytest.approx(1 + fit.params["R_D_star"] * np.log(2))
    assert not fit.diagnostics


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("r_star", [5.0, 40.0])
def test_recovers_other_r_d_star(seed, r_star):
    true = {**TRUE, "R_D_star": r_star}
    fit = fit_law(study(seed=seed, true=true), "data_constrained")
    assert fit.params["R_D_star"] == pytest.approx(r_star, rel=0.10)


def test_repeats_that_cost_nothing_leave_r_d_star_beyond_the_runs():
    # R*_D = 1e5: 64 epochs are as good as new data. The fit puts R*_D past every run's repeats
    # (or at the bound), where the objective is nearly flat; its bootstrap interval is no limit.
    data = study(true={**TRUE, "R_D_star": 1e5})
    fit = fit_law(data, "data_constrained")
    boot = judge_saturation(data, fit, bootstrap(data, fit, n_resamples=100))
    doc = repetition_to_json(data, fit, boot)
    assert fit.params["R_D_star"] > 63 and doc["epoch_value"]["R_D_star_status"] == "beyond the runs"
    assert "beyond_data" in [d.code for d in boot.diagnostics]
    assert "not pinned down, only bounded below" in format_repetition(doc, fit.law)


def test_one_run_past_one_epoch_does_not_identify_r_d_star():
    """A study of single-epoch runs but one at 1.2 epochs (as the default study's smallest model
    at its largest budget): over a third of the bootstrap's resamples hold no repeating run and fit
    any R*_D, so R*_D is not identified, whatever the fit's own value, and no epoch is valued."""
    from scaling.analysis.report import uninformed_share
    from scaling.analysis.study import repetition_headline

    rng = np.random.default_rng(0)
    N, D = (g.ravel() for g in np.meshgrid(np.geomspace(1e7, 1e9, 5), np.geomspace(1e9, 1e10, 5)))
    U = D.copy()
    U[0] = D[0] / 1.2  # the one run that passes over its data 1.2 times
    loss = laws.data_constrained(N, D, U, **TRUE) * np.exp(rng.normal(0, 0.003, N.size))
    data = Data.from_arrays(N, D, loss, unique_tokens=U)
    fit = fit_law(data, "data_constrained")
    boot = judge_saturation(data, fit, bootstrap(data, fit, n_resamples=200))
    doc = repetition_to_json(data, fit, boot)
    share, m, k = uninformed_share(D / U - 1)
    assert (m, k) == (1, 25) and share == pytest.approx((24 / 25) ** 25)
    assert doc["epoch_value"]["R_D_star_status"] == "not identified"
    assert doc["epoch_value"]["R_D_star_interval"] == list(laws.LAWS["data_constrained"].bounds["R_D_star"])
    message = [d.message for d in boot.diagnostics if d.code == "not_identified"][0]
    assert "only 1 of 25 resampling units hold a run that repeats its data (epochs > 1), so 36%" in message
    assert repetition_headline(doc).endswith("not identified; these runs do not say what another epoch is worth.")
    # Three of 25 units past one epoch: (22/25)^25 = 4% of the resamples hold none, below 5%.
    assert uninformed_share(np.r_[np.ones(3), np.zeros(22)])[0] < 0.05


def test_one_epoch_is_chinchilla():
    N, D = np.geomspace(1e7, 1e9, 4), np.geomspace(1e9, 1e11, 4)
    chin = {k: v for k, v in TRUE.items() if k != "R_D_star"}
    # U >= D: every token is new (a split larger than the run counts as D unique tokens).
    for U in (D, 10 * D):
        assert np.allclose(laws.data_constrained(N, D, U, **TRUE), laws.chinchilla(N, D, **chin))
    # Many epochs: D' tends to (1 + R*_D) U.
    assert laws.effective_data(1e15, 1e9, 15.39) == pytest.approx(16.39e9, rel=1e-6)


def test_epoch_value():
    # Epoch 1 -> 2 is worth R*(1 - exp(-1/R*)) of new data, and each later one exp(-1/R*) less.
    v = laws.epoch_value(np.array([1, 2, 5]), 15.39)
    assert v[0] == pytest.approx(15.39 * (1 - np.exp(-1 / 15.39)))
    assert v[1] / v[0] == pytest.approx(np.exp(-1 / 15.39))
    assert 0.96 < v[0] < 0.97 and v[2] < v[1] < v[0]
    # As the derivative of D' in D: one epoch's effective tokens over U.
    U, R = 1e9, 15.39
    gain = laws.effective_data(3 * U, U, R) - laws.effective_data(2 * U, U, R)
    assert gain / U == pytest.approx(laws.epoch_value(2, R))


def test_needs_unique_tokens():
    data = study()
    bare = Data.from_arrays(data.N, data.D, data.loss)
    with pytest.raises(AnalysisError, match="unique_tokens"):
        fit_law(bare, "data_constrained")
    partial = Data.from_arrays(data.N, data.D, data.loss,
                               unique_tokens=np.r_[np.nan, data.unique_tokens[1:]])
    with pytest.raises(AnalysisError, match="run.s. 0 in"):
        fit_law(partial, "data_constrained")


def test_predict_and_subset_carry_unique_tokens(fitted):
    data, fit = fitted
    sub = data.subset(np.arange(10))
    assert np.allclose(fit.predict_data(sub),
                       laws.data_constrained(sub.N, sub.D, sub.unique_tokens, **fit.params))
    with pytest.raises(AnalysisError, match="U"):
        fit.predict(N=1e8, D=1e10)


def test_scaling_fit_reads_unique_tokens_from_runs(tmp_path, capsys):
    # result.json's unique_tokens (the training split's size, which may exceed the tokens
    # trained) reaches the law through scaling-fit; fit.json reports the value of an epoch.
    data = study(seed=3)
    for i in range(len(data)):
        run = tmp_path / "study" / "runs" / f"r{i:02d}"
        run.mkdir(parents=True)
        write_result(run, Result(status=RunStatus.COMPLETED, run_id=f"r{i:02d}",
                                 params=int(data.N[i]), tokens=float(data.D[i]),
                                 flops=6.0 * data.N[i] * data.D[i], eval_loss=float(data.loss[i]),
                                 epochs=float(data.D[i] / data.unique_tokens[i]),
                                 unique_tokens=int(data.unique_tokens[i])))
    out = tmp_path / "out"
    assert main([str(tmp_path / "study"), "--law", "data_constrained", "--out", str(out),
                 "--bootstrap", "50"]) == 0
    doc = json.loads((out / "fit.json").read_text())
    assert doc["params"]["R_D_star"] == pytest.approx(TRUE["R_D_star"], rel=0.10)
    ev = doc["epoch_value"]
    assert ev["epochs"][0] == 1 and ev["R_D_star_within_data"]
    assert ev["next_epoch_value"][0] == pytest.approx(
        float(laws.epoch_value(1, doc["params"]["R_D_star"])))
    lo, hi = ev["next_epoch_value_interval"]
    assert all(a <= v <= b for a, v, b in zip(lo, ev["next_epoch_value"], hi))
    text = capsys.readouterr().out
    assert "value of one more epoch" in text and "epoch 1 -> 2" in text


def test_scaling_fit_csv_unique_tokens_column(tmp_path, capsys):
    data = study(seed=4)
    rows = ["N,D,loss,unique_tokens"] + [f"{n},{d},{l},{u}" for n, d, l, u in
                                         zip(data.N, data.D, data.loss, data.unique_tokens)]
    (tmp_path / "runs.csv").write_text("\n".join(rows) + "\n")
    assert main(["--csv", str(tmp_path / "runs.csv"), "--law", "data_constrained",
                 "--out", str(tmp_path / "out"), "--no-plots"]) == 0
    doc = json.loads((tmp_path / "out" / "fit.json").read_text())
    assert doc["params"]["R_D_star"] == pytest.approx(TRUE["R_D_star"], rel=0.10)
    # Without the column, the law is refused with the fix named.
    (tmp_path / "bare.csv").write_text("\n".join(r.rsplit(",", 1)[0] for r in rows) + "\n")
    assert main(["--csv", str(tmp_path / "bare.csv"), "--law", "data_constrained",
                 "--out", str(tmp_path / "out2")]) == 2
    assert "unique_tokens" in capsys.readouterr().err
