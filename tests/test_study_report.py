"""The study report on a small study folder written by hand in the run-directory contract
(plan.json, runs/<id>/result.json and config.yaml): the whole-budget extrapolation check in the
headline, the data's known floor against the fitted E, bootstrap units from the plan, and the
data-constrained law beside Chinchilla's when the runs repeat their data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from scaling.analysis import laws
from scaling.analysis.io import load_csv
from scaling.analysis.study import analyse_study, floor_sentence, headline, known_floor, render_report, study_json
from scaling.contracts import Plan, Result, RunSpec, RunStatus, write_plan, write_result

TRUE = {"E": 1.8, "A": 400.0, "alpha": 0.34, "B": 410.0, "beta": 0.28}
BUDGETS = (1e15, 1e16, 1e17, 1e18)


def _law(N, D):
    return TRUE["E"] + TRUE["A"] / N ** TRUE["alpha"] + TRUE["B"] / D ** TRUE["beta"]


def _study(tmp_path: Path, floor: float | None, budgets=BUDGETS, units: dict | None = None) -> Path:
    """A study of len(budgets) IsoFLOP budgets x 5 sizes on the true law (0.2% noise). The runs'
    data is a folder whose manifest records `floor` (none when None)."""
    study = tmp_path / "study"
    data_dir = tmp_path / "data"
    data_dir.mkdir(parents=True)
    source = {"type": "markov"} | ({} if floor is None else {"loss_floor_nats": floor})
    (data_dir / "manifest.json").write_text(json.dumps({"format": "scaling-shards/1", "source": source}))
    rng = np.random.default_rng(0)
    runs = []
    for C in budgets:
        N_mid = 0.1 * (C / 6) ** 0.5
        for N in N_mid * np.geomspace(0.2, 5.0, 5):
            N = int(N)
            D = int(C / (6 * N))
            rid = f"run-N{N}-D{D}"
            run_dir = study / "runs" / rid
            run_dir.mkdir(parents=True)
            (run_dir / "config.yaml").write_text(f"data:\n  name: markov\n  path: {data_dir}\n")
            loss = _law(N, D) * (1 + 0.002 * rng.standard_normal())
            write_result(run_dir, Result(status=RunStatus.COMPLETED, run_id=rid, params=N, tokens=D,
                                         flops=6.0 * N * D, eval_loss=float(loss), budget_flops=C))
            extra = {"unit": units[rid]} if units and rid in units else {}
            runs.append(RunSpec(id=rid, N=N, D=D, C=6.0 * N * D, budget_flops=C, dir=str(run_dir), extra=extra))
    write_plan(Plan(runs=runs, study="hand_made", kind="isoflop", dir=str(study), n_count="total"))
    return study


def test_headline_holds_out_every_run_of_the_largest_budget(tmp_path):
    a = analyse_study(_study(tmp_path, floor=None), n_boot=0)
    h = a.holdout
    assert h.by == "budget" and h.n_held == 5 and h.budgets_fitted == 3
    assert set(np.round(a.data.budget[[a.data.run_id.index(r) for r in h.run_id]])) == {1e18}
    line = [s for s in headline(a) if "largest budget" in s][0]
    assert line.startswith("Every run of the largest budget (5 runs")
    assert f"within {100 * h.max_abs_rel_error:.2f}%" in line
    assert study_json(a)["holdout"]["by"] == "budget"
    assert "known_floor" not in study_json(a)  # the manifest records no floor
    assert "known floor" not in render_report(a, [])


def test_too_few_budgets_fall_back_to_the_largest_run(tmp_path):
    a = analyse_study(_study(tmp_path, floor=None, budgets=BUDGETS[:2]), n_boot=0)
    assert a.holdout.by == "C" and a.holdout.n_held == 1
    assert any(s.startswith("The held-out largest run is (by C)") for s in headline(a))


@pytest.mark.parametrize("floor", [TRUE["E"], 2.5])
def test_known_floor_against_the_fitted_E(tmp_path, floor):
    a = analyse_study(_study(tmp_path, floor=floor), n_boot=40)
    k = study_json(a)["known_floor"]
    lo, hi = a.boot.interval["E"]
    assert k["value"] == floor and k["fitted_E"] == a.fit.params["E"] and k["interval"] == [lo, hi]
    assert k["inside"] is bool(lo <= floor <= hi)
    assert k["relative_error"] == pytest.approx((a.fit.params["E"] - floor) / floor)
    if floor == 2.5:  # far above the true E of 1.8: outside any sensible interval
        assert k["inside"] is False
    where = "inside" if k["inside"] else "outside"
    assert f"the data's known floor is {floor:.4g}: the truth lies {where} the interval" in render_report(a, [])


def test_known_floor_inside_and_outside():
    class Fit:
        params = {"E": 2.0}

    class Boot:
        interval = {"E": (1.9, 2.1)}

    assert known_floor(2.05, Fit, Boot)["inside"] is True
    assert known_floor(2.2, Fit, Boot)["inside"] is False
    assert known_floor(1.0, Fit, Boot)["relative_error"] == pytest.approx(1.0)
    assert known_floor(2.05, Fit)["inside"] is None  # no bootstrap, no interval to judge


def test_known_floor_names_the_context_the_fitted_E_lies_nearest():
    """With the floors of shorter contexts (the markov set's F_1..F_k), the fitted E is placed
    against them: an E on F_1 of a 3-token chain says the runs learned 1 token of context."""
    class Fit:
        params = {"E": 2.90}

    floors = [2.904, 2.674, 2.581]
    k = known_floor(2.581, Fit, context_floors=floors)
    assert k["context_floors"] == floors
    assert k["nearest_context"] == {"tokens": 1, "of": 3, "value": 2.904, "relative_error": pytest.approx(2.90 / 2.904 - 1)}
    text = floor_sentence(k)
    assert "reads only 1 token back, 2.904 (error -0.14%), of the 3 the data's chain conditions on" in text
    assert "the runs learned its 1-token statistics" in text
    Fit.params = {"E": 2.60}  # nearest the floor itself: nothing more to say
    k = known_floor(2.581, Fit, context_floors=floors)
    assert k["nearest_context"]["tokens"] == 3 and "reads only" not in floor_sentence(k)
    assert "nearest_context" not in known_floor(2.581, Fit)  # a floor without shorter contexts (the shapes set)


def test_units_come_from_the_plan_only_when_it_marks_them(tmp_path):
    plain = analyse_study(_study(tmp_path / "a", floor=None), n_boot=0)
    assert plain.data.unit is None
    ids = sorted(plain.data.run_id)
    units = {rid: "pair0" for rid in ids[:2]}
    marked = analyse_study(_study(tmp_path / "b", floor=None, units=units), n_boot=0)
    codes = marked.data.unit_codes()
    pos = [marked.data.run_id.index(r) for r in ids[:2]]
    assert codes[pos[0]] == codes[pos[1]]
    assert len(set(codes)) == len(ids) - 1  # the two marked runs share one unit; the rest are their own


def test_csv_unit_column(tmp_path):
    path = tmp_path / "runs.csv"
    path.write_text("N,D,loss,unit\n1e6,1e8,3.0,a\n2e6,1e8,2.9,a\n4e6,1e8,2.8,\n")
    data = load_csv(path)
    assert data.unit_codes().tolist()[0] == data.unit_codes().tolist()[1]
    assert len(set(data.unit_codes())) == 2
    path.write_text("N,D,loss\n1e6,1e8,3.0\n2e6,1e8,2.9\n")
    assert load_csv(path).unit is None


DC_TRUE = dict(E=1.8, A=400.0, B=1500.0, alpha=0.34, beta=0.30, R_D_star=15.39)


def _repeating_study(tmp_path: Path, epochs, cap: int | None = None) -> Path:
    """A size ladder (5 sizes) on 1e8 and 1e9 unique tokens, each size trained for every number of
    `epochs`, loss from the data-constrained law (0.3% noise); result.json records epochs and
    unique_tokens. With `cap`, the plan caps unique data (data.max_unique_tokens) as a study spec does.
    One more run folder, left by an earlier spec, is not in the plan."""
    study = tmp_path / "study"
    rng = np.random.default_rng(0)
    runs = []
    for U in (1e8, 1e9):
        for N in np.geomspace(1e7, 1e9, 5).astype(int):
            for e in list(epochs) + ([3] if U == 1e8 and N == int(1e7) else []):
                D = U * e
                rid = f"run-N{N}-U{U:.0e}-e{e}"
                run_dir = study / "runs" / rid
                run_dir.mkdir(parents=True)
                loss = laws.data_constrained(N, D, U, **DC_TRUE) * np.exp(0.003 * rng.standard_normal())
                write_result(run_dir, Result(status=RunStatus.COMPLETED, run_id=rid, params=int(N), tokens=D,
                                             flops=6.0 * N * D, eval_loss=float(loss), epochs=float(e),
                                             unique_tokens=int(U)))
                if e != 3:
                    overrides = [f"data.max_unique_tokens={cap}"] if cap else []
                    runs.append(RunSpec(id=rid, N=int(N), D=int(D), C=6.0 * N * D, dir=str(run_dir),
                                        overrides=overrides, epochs=float(e)))
    write_plan(Plan(runs=runs, study="repeats", kind="ladder", dir=str(study), n_count="total"))
    return study


def test_repeated_data_fits_the_data_constrained_law_beside_chinchilla(tmp_path):
    # The runs repeat their data (epochs > 1 in result.json); the plan sets no cap.
    a = analyse_study(_repeating_study(tmp_path, epochs=(1, 2, 4, 8, 16, 32, 64)), n_boot=50)
    assert len(a.data.N) == 70 and a.data.unique_tokens is not None  # the stale run is dropped, U kept
    assert a.fit.law == "chinchilla" and a.dc_fit.law == "data_constrained"
    assert a.dc_fit.params["R_D_star"] == pytest.approx(DC_TRUE["R_D_star"], rel=0.10)
    ev = a.repetition["epoch_value"]
    lo, hi = a.dc_boot.interval["R_D_star"]
    assert ev["R_D_star_status"] == "pinned down" and ev["R_D_star_interval"] == [lo, hi]
    assert lo < a.dc_fit.params["R_D_star"] < hi and ev["data_max_epochs"] == pytest.approx(64)
    # One more epoch after the first is worth R*(1 - exp(-1/R*)) of new unique data.
    assert ev["next_epoch_value"][0] == pytest.approx(float(laws.epoch_value(1, a.dc_fit.params["R_D_star"])))
    doc = study_json(a)
    assert doc["law"] == "chinchilla" and doc["params"] == dict(a.fit.params)  # fit.json's readers see Chinchilla
    dc = doc["data_constrained"]
    assert dc["law"] == "data_constrained" and dc["params"]["R_D_star"] == a.dc_fit.params["R_D_star"]
    assert dc["epoch_value"] == ev and dc["interval"]["R_D_star"] == [lo, hi]
    assert dc["excess_params"]["runs_past_N_opt"] == sum(a.data.N > laws.data_optimal_params(
        np.minimum(a.data.unique_tokens, a.data.D), *(a.dc_fit.params[k] for k in ("A", "B", "alpha", "beta"))))
    text = render_report(a, [])
    assert "## Repeated data: the data-constrained law" in text and "R*_D = " in text
    assert "pinned down" in text and "| 1 -> 2 | " in text
    line = [s for s in headline(a) if s.startswith("Data-constrained law")][0]
    assert f"R*_D = {a.dc_fit.params['R_D_star']:.4g}" in line and "pinned down" in line


def test_capped_study_without_repeats_reports_r_d_star_not_identified(tmp_path):
    # The plan caps unique data, but no run reaches one epoch: the law cannot see R*_D.
    a = analyse_study(_repeating_study(tmp_path, epochs=(0.25, 0.5, 1), cap=10**9), n_boot=20)
    ev = a.repetition["epoch_value"]
    assert ev["R_D_star_status"] == "not identified"
    assert ev["R_D_star_interval"] == list(laws.DATA_CONSTRAINED.bounds["R_D_star"])
    assert a.dc_boot.interval["R_D_star"] == laws.DATA_CONSTRAINED.bounds["R_D_star"]
    lo, hi = ev["next_epoch_value_interval"]
    # The value of the second epoch is anywhere from R*_D = 0.01 of new data to all of it.
    assert lo[0] == pytest.approx(0.01) and hi[0] > 0.99
    assert "R*_D is not identified" in render_report(a, [])


def test_a_study_that_does_not_repeat_data_has_no_data_constrained_fit(tmp_path):
    a = analyse_study(_study(tmp_path, floor=None), n_boot=0)
    assert a.dc_fit is None and "data_constrained" not in study_json(a)
    assert "Repeated data" not in render_report(a, [])
