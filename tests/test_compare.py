"""scaling-compare: the compute multiplier of study B over study A.

Synthetic pairs with a known multiplier k: B's law is A's with N and D each scaled by sqrt(k),
so that B at compute C reaches the loss A reaches at k C. The comparison must recover k within
5% with an interval that covers it, report about 1 for equal laws, and its test of sharing the
exponents must reject studies whose true exponents differ.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from scaling.analysis import AnalysisError, Data
from scaling.analysis.compare import (
    check_same_data,
    compare_studies,
    compute_to_reach,
    main,
    multiplier_at_compute,
    multiplier_at_loss,
    optimal_loss,
    pair_law,
    read_data_identity,
    resample_weights,
)
from scaling.analysis.laws import LAWS, chinchilla

TRUE = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
NOISE = 0.005  # lognormal noise on each run's loss, about seed-to-seed variation
RESAMPLES = 200


def grid_runs():
    """An IsoFLOP-like grid: 5 budgets 1e15-1e19 FLOPs, 7 sizes each around the optimum."""
    rows = []
    for C in np.geomspace(1e15, 1e19, 5):
        n_mid = 0.6 * math.sqrt(C / 6)
        for f in np.geomspace(0.1, 10, 7):
            rows.append((n_mid * f, C / (6 * n_mid * f)))
    return np.array(rows).T


def study(k: float = 1.0, seed: int = 0, **law) -> Data:
    """Runs of the law ``TRUE`` (updated by ``law``) at N and D scaled by sqrt(k), with noise."""
    N, D = grid_runs()
    s = math.sqrt(k)
    loss = chinchilla(s * N, s * D, **{**TRUE, **law})
    loss = loss * np.exp(np.random.default_rng(seed).normal(0.0, NOISE, N.size))
    return Data.from_arrays(N, D, loss)


def scaled(k: float) -> dict:
    """TRUE with N and D scaled by sqrt(k): A N^-alpha becomes A k^(-alpha/2) N^-alpha."""
    return {**TRUE, "A": TRUE["A"] * k ** (-TRUE["alpha"] / 2), "B": TRUE["B"] * k ** (-TRUE["beta"] / 2)}


# ---- the multiplier's arithmetic, on known laws ----------------------------------------------

def test_multiplier_of_a_scaled_law_is_its_scale_at_every_compute_and_loss():
    law = LAWS["chinchilla"]
    C = np.geomspace(1e15, 1e25, 7)
    for k in (0.5, 1.0, 2.0, 10.0):
        np.testing.assert_allclose(multiplier_at_compute(law, TRUE, scaled(k), C), k, rtol=1e-6)
        np.testing.assert_allclose(multiplier_at_loss(law, TRUE, scaled(k), [2.0, 2.5, 3.0]), k,
                                   rtol=1e-6)


def test_compute_to_reach_inverts_the_frontier_and_says_inf_below_the_floor():
    law = LAWS["chinchilla"]
    C = np.geomspace(1e12, 1e26, 9)
    np.testing.assert_allclose(compute_to_reach(law, TRUE, optimal_loss(law, TRUE, C), C), C, rtol=1e-8)
    assert compute_to_reach(law, TRUE, 1.5, 1e20) == np.inf  # below E = 1.69: never reached


def test_different_exponents_give_a_multiplier_that_changes_with_compute():
    law = LAWS["chinchilla"]
    better = {**TRUE, "alpha": 0.40}
    k = multiplier_at_compute(law, TRUE, better, np.geomspace(1e18, 1e24, 4))
    assert np.all(np.diff(k) > 0), k  # B's steeper law gains more with scale


# ---- the pair law: a second copy of the formula, checked against the first -------------------

def test_pair_law_log_form_and_jacobian_match_the_formula():
    pair = pair_law(LAWS["chinchilla"])
    rng = np.random.default_rng(0)
    N, D = grid_runs()
    is_b = rng.random(N.size) < 0.5
    cols = {"lnN": np.log(N), "lnD": np.log(D), "is_b": is_b}
    theta = np.array([[6.0, 6.0, 0.5, 0.34, 0.28, 5.5, 6.2, 0.4, 0.30, 0.25]])
    lp, jac = pair.log_pred(theta, cols)
    params = dict(zip(pair.param_names, pair.to_public(theta)[0]))
    both = pair(N, D, **params)  # (2, n): A's law, B's law
    np.testing.assert_allclose(np.exp(lp[0]), np.where(is_b, both[1], both[0]), rtol=1e-12)
    eps = 1e-6
    for j in range(theta.shape[1]):
        up, down = theta.copy(), theta.copy()
        up[0, j] += eps
        down[0, j] -= eps
        fd = (pair.log_pred(up, cols)[0] - pair.log_pred(down, cols)[0]) / (2 * eps)
        np.testing.assert_allclose(jac[j], fd, atol=1e-7)


# ---- recovery on synthetic pairs --------------------------------------------------------------

@pytest.mark.parametrize("k", [2.0, pytest.param(10.0, marks=pytest.mark.slow)])
def test_recovers_a_known_multiplier_within_5_percent_with_an_interval_covering_it(k):
    cmp = compare_studies(study(seed=1), study(k, seed=2), n_resamples=RESAMPLES)
    m = cmp.at
    assert abs(m.k / k - 1) < 0.05, (k, m.k, m.interval)
    assert m.interval[0] <= k <= m.interval[1], (k, m.interval)
    assert cmp.test.verdict == "consistent", cmp.test.sentence()
    # Shared exponents and E: the same k at every compute, inside its band.
    np.testing.assert_allclose(cmp.curve.k, m.k, rtol=1e-6)
    assert np.all(cmp.curve.low <= cmp.curve.k) and np.all(cmp.curve.k <= cmp.curve.high)


def test_equal_laws_give_a_multiplier_of_one_inside_its_interval():
    cmp = compare_studies(study(seed=3), study(1.0, seed=4), n_resamples=RESAMPLES)
    assert cmp.at.interval[0] <= 1.0 <= cmp.at.interval[1], cmp.at
    assert abs(cmp.at.k - 1) < 0.05, cmp.at


def test_sharing_test_flags_different_true_exponents():
    cmp = compare_studies(study(seed=1), study(2.0, seed=2, alpha=0.45), n_resamples=RESAMPLES)
    assert cmp.test.verdict == "rejected", cmp.test.sentence()
    assert cmp.test.nested.q == 2 and cmp.test.nested.p_value < 1e-3
    # With the exponents separate, B's steeper alpha makes its advantage grow with compute, and
    # the curve follows the true one where there are runs.
    curve = cmp.curve_separate
    assert curve.k[-1] > 2 * curve.k[0]
    inside = curve.C <= curve.max_data_C
    b_true = {**TRUE, "alpha": 0.45, "A": TRUE["A"] * 2.0 ** (-0.45 / 2),
              "B": TRUE["B"] * 2.0 ** (-TRUE["beta"] / 2)}
    truth = multiplier_at_compute(LAWS["chinchilla"], TRUE, b_true, curve.C[inside])
    np.testing.assert_allclose(curve.k[inside], truth, rtol=0.15)


@pytest.mark.slow
def test_a_loss_below_the_fitted_floor_is_refused():
    a, b = study(seed=1), study(2.0, seed=2)
    with pytest.raises(AnalysisError, match="floor"):
        compare_studies(a, b, at_loss=1.0, n_resamples=20)


def test_shared_names_are_checked():
    a, b = study(seed=1), study(2.0, seed=2)
    with pytest.raises(AnalysisError, match="gamma is not a parameter"):
        compare_studies(a, b, shared=["gamma"], n_resamples=20)
    with pytest.raises(AnalysisError, match="shares every parameter"):
        compare_studies(a, b, shared=list(TRUE), n_resamples=20)


def test_cluster_resampling_draws_whole_clusters_within_each_study():
    clusters = np.repeat(np.arange(4), 3)  # 4 parent runs with 3 rows each
    w = resample_weights(12, 5, 50, seed=0, clusters_a=clusters)
    assert w.shape == (50, 17)
    block = w[:, :12].reshape(50, 4, 3)
    assert np.all(block == block[:, :, :1])  # a cluster's rows count together
    assert np.all(block[:, :, 0].sum(axis=1) == 4)  # as many clusters as the study has
    assert np.all(w[:, 12:].sum(axis=1) == 5)  # study B's runs resampled among themselves


# ---- study folders, the data check and the command --------------------------------------------

def write_study(root, data: Data, checksum="abc123", data_cfg=None, eval_tokens=32768):
    runs = root / "runs"
    for i in range(len(data)):
        run = runs / f"run{i:03d}"
        run.mkdir(parents=True)
        result = {"status": "completed", "run_id": f"run{i:03d}", "params": int(data.N[i]),
                  "tokens": float(data.D[i]), "flops": float(data.C[i]),
                  "eval_loss": float(data.loss[i]), "steps": 10}
        if checksum is not None:
            result["data_checksum"] = checksum
        (run / "result.json").write_text(json.dumps(result))
        if data_cfg is not None:
            (run / "config.yaml").write_text(
                "data:\n" + "".join(f"  {k}: {json.dumps(v)}\n" for k, v in data_cfg.items())
                + f"train:\n  eval_tokens: {eval_tokens}\n")
    return root


def write_manifest(folder, val_sha, train_sha):
    folder.mkdir(parents=True)
    shard = lambda name, sha: {"name": name, "samples": 10, "bytes": 100, "sha256": sha}  # noqa: E731
    (folder / "manifest.json").write_text(json.dumps({
        "format": "scaling-shards/1", "kind": "text", "name": folder.name, "seq_len": 128,
        "tokenizer": {"type": "byte", "vocab_size": 257},
        "splits": {"train": {"shards": [shard("train-000000.tar", train_sha)]},
                   "val": {"shards": [shard("val-000000.tar", val_sha)]}}}))
    return str(folder)


def test_data_check_from_checksums_manifests_and_configs(tmp_path):
    small = study(seed=1).subset(np.arange(3))
    same_a = write_study(tmp_path / "a", small)
    same_b = write_study(tmp_path / "b", small)
    ida, idb = read_data_identity(same_a, "A"), read_data_identity(same_b, "B")
    assert check_same_data(ida, idb).same is True

    other = write_study(tmp_path / "c", small, checksum="def456")
    check = check_same_data(ida, read_data_identity(other, "B"))
    assert check.same is False and "--allow-different-data" in check.message

    # A different training mix with the same validation split and tokenizer: comparable.
    mix1 = write_manifest(tmp_path / "mix1", val_sha="v1", train_sha="t1")
    mix2 = write_manifest(tmp_path / "mix2", val_sha="v1", train_sha="t2")
    mix3 = write_manifest(tmp_path / "mix3", val_sha="v2", train_sha="t1")
    s1 = write_study(tmp_path / "s1", small, "c1", {"name": "x", "path": mix1})
    s2 = write_study(tmp_path / "s2", small, "c2", {"name": "x", "path": mix2})
    s3 = write_study(tmp_path / "s3", small, "c3", {"name": "x", "path": mix3})
    i1 = read_data_identity(s1, "A")
    check = check_same_data(i1, read_data_identity(s2, "B"))
    assert check.same is True and "manifest" in check.basis, check
    assert check_same_data(i1, read_data_identity(s3, "B")).same is False

    # No checksum recorded: the data config is compared, and the basis says so.
    c1 = write_study(tmp_path / "cfg1", small, None, {"name": "markov", "markov_order": 3})
    c2 = write_study(tmp_path / "cfg2", small, None, {"name": "markov", "markov_order": 3,
                                                         "num_workers": 4}, eval_tokens=4096)
    c3 = write_study(tmp_path / "cfg3", small, None, {"name": "markov", "markov_order": 2})
    j1 = read_data_identity(c1, "A")
    check = check_same_data(j1, read_data_identity(c2, "B"))
    assert check.same is True and "config" in check.basis
    assert any("eval_tokens" in n for n in check.notes)
    check = check_same_data(j1, read_data_identity(c3, "B"))
    assert check.same is False and "data.markov_order=3 in A, 2 in B" in check.message

    bare = write_study(tmp_path / "bare", small, None)
    assert check_same_data(read_data_identity(bare, "A"), j1).same is None


def test_command_writes_json_markdown_and_figure(tmp_path, capsys):
    a = write_study(tmp_path / "a", study(seed=1))
    b = write_study(tmp_path / "b", study(2.0, seed=2))
    out = tmp_path / "out"
    assert main([str(a), str(b), "--out", str(out), "--bootstrap", "50"]) == 0
    doc = json.loads((out / "compare.json").read_text())
    assert abs(doc["multiplier"]["k"] / 2 - 1) < 0.05, doc["multiplier"]
    assert doc["data_check"]["same"] is True
    assert doc["sharing_test"]["verdict"] == "consistent"
    assert doc["shared"] == ["E", "alpha", "beta"]
    assert len(doc["curve"]["C"]) == len(doc["curve"]["low"]) > 10
    md = (out / "compare.md").read_text()
    assert "k = " in md and "Sharing alpha, beta" in md
    assert (out / "compare.png").stat().st_size > 0
    assert "k = " in capsys.readouterr().out


def test_command_refuses_different_data_unless_allowed(tmp_path, capsys):
    a = write_study(tmp_path / "a", study(seed=1), checksum="aaa")
    b = write_study(tmp_path / "b", study(2.0, seed=2), checksum="bbb")
    assert main([str(a), str(b), "--out", str(tmp_path / "o"), "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert "refusing to compare" in err and "--allow-different-data" in err
    assert not (tmp_path / "o").exists()
    assert main([str(a), str(b), "--out", str(tmp_path / "o"), "--no-plots", "--bootstrap", "20",
                 "--allow-different-data", "--shared", "alpha,beta", "--at-loss", "2.4"]) == 0
    doc = json.loads((tmp_path / "o" / "compare.json").read_text())
    assert doc["data_check"]["same"] is False and doc["shared"] == ["alpha", "beta"]
    # At a loss: A needs k times the compute B needs; E is separate here, so k is near 2
    # rather than equal to it at every loss.
    m = doc["multiplier"]
    assert m["at"] == "loss" and m["value"] == 2.4 and abs(m["k"] / 2 - 1) < 0.1, m


def test_command_rejects_bad_arguments_before_reading(tmp_path, capsys):
    assert main([str(tmp_path), str(tmp_path), "--shared", "alpha,gamma"]) == 2
    assert "gamma is not a parameter of chinchilla" in capsys.readouterr().err
    assert main([str(tmp_path), str(tmp_path), "--law", "power_law"]) == 2
    assert "no compute-optimal allocation" in capsys.readouterr().err
