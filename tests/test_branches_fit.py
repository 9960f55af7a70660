"""Fitting a study with cooldown branches: branch end points enter the fits, trunks do not; the
envelope runs through the branches' end points; the bootstrap's unit is the trunk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from scaling.analysis.study import _summary, analyse_study
from scaling.contracts import METRICS_NAME, MetricsRow, Plan, Result, RunSpec, RunStatus, append_metrics
from scaling.contracts import write_plan, write_result

TRUE = {"E": 1.8, "A": 400.0, "alpha": 0.34, "B": 410.0, "beta": 0.28}
MULTIPLIERS = (5, 10, 20, 40, 80)


def _law(N, D):
    return TRUE["E"] + TRUE["A"] / N ** TRUE["alpha"] + TRUE["B"] / D ** TRUE["beta"]


def _study(tmp_path: Path) -> tuple[Path, list[RunSpec]]:
    """4 sizes x 2 seeds, each a trunk (constant LR: 5% above the law) with 5 branches on the law."""
    study = tmp_path / "study"
    rng = np.random.default_rng(0)
    runs = []
    for N in (1e6, 3e6, 1e7, 3e7):
        N = int(N)
        for seed in (0, 1):
            tid = f"trunk-N{N}-s{seed}"
            d_trunk = int(0.8 * MULTIPLIERS[-1] * N)
            tdir = study / "runs" / tid
            tdir.mkdir(parents=True)
            write_result(tdir, Result(status=RunStatus.COMPLETED, run_id=tid, params=N, tokens=d_trunk,
                                      flops=6.0 * N * d_trunk, eval_loss=1.05 * _law(N, d_trunk)))
            for d in np.geomspace(N, d_trunk, 8):  # a constant-LR curve, far above the branches
                append_metrics(tdir / METRICS_NAME, MetricsRow(step=int(d), tokens=d, flops=6 * N * d,
                                                               loss=1.05 * _law(N, d)))
            runs.append(RunSpec(id=tid, N=N, D=d_trunk, C=6.0 * N * d_trunk, seed=seed, dir=str(tdir),
                                extra={"role": "trunk", "unit": tid}))
            for m in MULTIPLIERS:
                D = m * N
                bid = f"branch-N{N}-m{m}-s{seed}"
                bdir = study / "runs" / bid
                bdir.mkdir(parents=True)
                loss = _law(N, D) * (1 + 0.002 * rng.standard_normal())
                write_result(bdir, Result(status=RunStatus.COMPLETED, run_id=bid, params=N, tokens=D, flops=6.0 * N * D,
                                          eval_loss=float(loss), parent=tid, fork_step=int(0.8 * D),
                                          fork_tokens=0.8 * D, branch_tokens=0.2 * D, branch_flops=1.2 * N * D))
                runs.append(RunSpec(id=bid, N=N, D=D, C=6.0 * N * D, seed=seed, dir=str(bdir),
                                    extra={"role": "branch", "unit": tid, "parent": tid, "branch_C": 1.2 * N * D}))
    write_plan(Plan(runs=runs, study="branches", kind="ladder", dir=str(study), n_count="total"))
    return study, runs


def test_branch_points_are_fitted_and_trunks_are_not(tmp_path):
    study, runs = _study(tmp_path)
    a = analyse_study(study, n_boot=50, holdout=0)
    branch_ids = {r.id for r in runs if r.extra["role"] == "branch"}
    assert set(a.data.run_id) == branch_ids  # 40 points; the 8 trunks left out
    # The bootstrap's unit is the trunk: 8 units of 5 points each.
    assert a.data.unit is not None and len(set(a.data.unit)) == 8
    assert a.fit.params["alpha"] == pytest.approx(TRUE["alpha"], abs=0.05)
    assert a.fit.params["beta"] == pytest.approx(TRUE["beta"], abs=0.05)
    # Approach 1 runs through the branches' end points: one curve per trunk, no trunk curve.
    assert a.envelope is not None
    assert all(rid.startswith("trunk-") for rid in a.envelope.run_id)  # curves are named after their trunk
    by_c = {float(r.C): _law(r.N, r.D) for r in runs if r.extra["role"] == "branch"}
    assert float(np.max(a.envelope.loss)) <= max(by_c.values()) * 1.01  # never the constant-LR curve's 5% above
    assert "40 points from 8 WSD trunks" in _summary(a)
