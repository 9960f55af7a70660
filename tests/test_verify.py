"""The pre-registered verification run on a study folder written by hand in the run-directory
contract (plan.json, runs/<id>/result.json) from a known law: the prediction is written before the
run exists, kept byte for byte by a relaunch, equal to the fitted law at the run's N and D, moved
to history when the data change, and not trusted once edited by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from scaling.analysis.study import analyse_study, render_report, study_json
from scaling.analysis.verify import read_prediction, verification, verify_dir
from scaling.contracts import Plan, Result, RunSpec, RunStatus, write_plan, write_result
from scaling.errors import ConfigError
from scaling.launch.config import (BudgetsConfig, PowerLaw, RulesConfig, SizesConfig, StudyAppConfig, StudySpec,
                                   VerifyConfig, validate)
from scaling.launch.verify import plan_verify, predict_verify

TRUE = {"E": 1.9, "A": 60.0, "alpha": 0.35, "B": 300.0, "beta": 0.35}
BUDGETS = (6e10, 2e11, 6e11, 2e12)


def _law(N, D):
    return TRUE["E"] + TRUE["A"] / N ** TRUE["alpha"] + TRUE["B"] / D ** TRUE["beta"]


def _write_study(study: Path, budgets=BUDGETS, per_budget: int = 5) -> Plan:
    rng = np.random.default_rng(0)
    runs = []
    for C in budgets:
        n_mid = (C / (6 * 80)) ** 0.5
        for N in n_mid * np.geomspace(0.4, 2.5, per_budget):
            N, D = int(N), int(C / (6 * int(N)))
            rid = f"run-N{N}-D{D}"
            run_dir = study / "runs" / rid
            loss = _law(N, D) * (1 + 0.002 * rng.standard_normal())
            write_result(run_dir, Result(status=RunStatus.COMPLETED, run_id=rid, params=N, tokens=D, flops=6.0 * N * D,
                                         eval_loss=float(loss), budget_flops=C))  # fmt: skip
            runs.append(RunSpec(id=rid, N=N, D=D, C=6.0 * N * D, budget_flops=C, dir=str(run_dir)))
    plan = Plan(runs=runs, study="hand_made", kind="isoflop", dir=str(study), n_count="total", ladder_rule=2)
    write_plan(plan)
    return plan


def _spec(study: Path, multiple: float = 3.0) -> StudySpec:
    return StudySpec(
        name="hand_made", dir=str(study), overrides=["data.seq_len=64"], seeds=[0],
        sizes=SizesConfig(count="total", per_budget=5, span=4, center_tokens_per_param=80),
        budgets=BudgetsConfig(flops=list(BUDGETS)), rules=RulesConfig(batch_tokens=PowerLaw(coef=2048, exponent=0.0)),
        verify=VerifyConfig(compute_multiple=multiple),
    )  # fmt: skip


@pytest.fixture()
def study(tmp_path):
    plan = _write_study(tmp_path / "study")
    return tmp_path / "study", plan, analyse_study(tmp_path / "study", n_boot=200)


def test_the_prediction_is_written_before_the_run_and_equals_the_law_there(study):
    folder, plan, a = study
    spec = _spec(folder)
    vplan = plan_verify(spec, str(folder), a, plan)
    (run,) = vplan.runs
    assert run.budget_flops == pytest.approx(3 * 2e12)
    assert abs(run.C / run.budget_flops - 1) <= spec.budgets.flop_tolerance
    assert Path(run.dir).parent == verify_dir(folder) / "runs"
    doc, written = predict_verify(spec, a, plan, vplan)
    assert written and not Path(run.dir).exists()  # predicted before anything of the run exists
    assert doc["run"]["id"] == run.id and doc["run"]["N"] == run.N and doc["run"]["D"] == run.D
    p = doc["predictions"]["parametric"]
    assert p["loss"] == pytest.approx(float(a.fit.predict(N=run.N, D=run.D)), rel=1e-12)
    lo, hi = p["prediction_interval"]
    assert lo < p["loss"] < hi
    assert "isoflop" in doc["predictions"]  # four budgets: approach 2 predicts too
    lo, hi = doc["N_opt"]["interval"]
    assert lo <= doc["N_opt"]["value"] <= hi
    lo, hi = doc["N_opt_isoflop"]["interval"]
    assert lo <= doc["N_opt_isoflop"]["value"] <= hi
    assert doc["N_opt_isoflop"]["value"] == pytest.approx(float(a.iso.N_opt(3 * 2e12)))
    # N snapped to the ladder stays near the law's optimum (the ladder's rungs are a few % apart)
    assert run.N == pytest.approx(doc["N_opt"]["value"], rel=0.35)


def test_a_relaunch_keeps_the_prediction_byte_for_byte(study):
    folder, plan, a = study
    spec = _spec(folder)
    vplan = plan_verify(spec, str(folder), a, plan)
    predict_verify(spec, a, plan, vplan)
    path = verify_dir(folder) / "prediction.json"
    before = path.read_bytes()
    again = analyse_study(folder, n_boot=200)
    doc, written = predict_verify(spec, again, plan, plan_verify(spec, str(folder), again, plan))
    assert not written and path.read_bytes() == before


def test_new_data_make_a_new_prediction_and_keep_the_old_as_history(study, tmp_path):
    folder, plan, a = study
    spec = _spec(folder)
    first, _ = predict_verify(spec, a, plan, plan_verify(spec, str(folder), a, plan))
    plan = _write_study(folder, budgets=BUDGETS, per_budget=6)  # retrained sizes: other runs
    b = analyse_study(folder, n_boot=200)
    second, written = predict_verify(spec, b, plan, plan_verify(spec, str(folder), b, plan))
    assert written and second["data"]["fingerprint"] != first["data"]["fingerprint"]
    (old,) = (verify_dir(folder) / "history").iterdir()
    assert json.loads(old.read_text()) == first


def test_the_report_judges_the_run_against_its_prediction(study):
    folder, plan, a = study
    spec = _spec(folder)
    vplan = plan_verify(spec, str(folder), a, plan)
    doc, _ = predict_verify(spec, a, plan, vplan)
    assert verification(folder)["actual"] is None
    run = vplan.runs[0]
    actual = _law(run.N, run.D)
    write_result(run.dir, Result(status=RunStatus.COMPLETED, run_id=run.id, eval_loss=actual))
    v = verification(folder)
    r = v["approaches"]["parametric"]
    assert v["trusted"] and v["actual"] == actual
    assert r["relative_error"] == pytest.approx((doc["predictions"]["parametric"]["loss"] - actual) / actual)
    lo, hi = r["interval"]
    assert r["inside"] is bool(lo <= actual <= hi)
    a = analyse_study(folder, n_boot=50)
    report = render_report(a, [])
    assert "## Prediction: the pre-registered verification run" in report and "| parametric |" in report
    assert study_json(a)["verification"]["actual"] == actual


def test_a_prediction_edited_by_hand_is_not_trusted_and_not_replaced(study):
    folder, plan, a = study
    spec = _spec(folder)
    vplan = plan_verify(spec, str(folder), a, plan)
    doc, _ = predict_verify(spec, a, plan, vplan)
    path = verify_dir(folder) / "prediction.json"
    doc["predictions"]["parametric"]["loss"] = 2.0  # "adjusted" after the fact
    path.write_text(json.dumps(doc))
    edited = path.read_bytes()
    assert "changed after it was written" in read_prediction(folder)[1]
    predict_verify(spec, a, plan, vplan)
    assert path.read_bytes() == edited  # kept, for the report to flag
    v = verification(folder)
    assert v["trusted"] is False
    assert "**Not trusted:**" in render_report(analyse_study(folder, n_boot=0), [])


def test_a_multiple_below_one_is_refused():
    with pytest.raises(ConfigError, match=r"study.verify.compute_multiple=0.5 must be >= 1"):
        validate(StudyAppConfig(study=StudySpec(verify=VerifyConfig(compute_multiple=0.5))))


def test_a_study_too_small_to_fit_says_how_many_runs_it_needs(tmp_path):
    plan = _write_study(tmp_path / "small", budgets=BUDGETS[:1])
    a = analyse_study(tmp_path / "small", n_boot=0)
    spec = _spec(tmp_path / "small")
    with pytest.raises(ConfigError, match=r"needs 6 or more completed runs \(the law's 5 parameters \+ 1"):
        vplan = plan_verify(spec, str(tmp_path / "small"), a, plan)
        predict_verify(spec, a, plan, vplan)


def test_the_report_sets_the_planned_time_beside_the_measured(tmp_path):
    from scaling.contracts import read_plan, read_result

    plan = _write_study(tmp_path / "s")
    plan.throughput_flops, plan.throughput_source = 1e9, "a stated rate"
    for r in plan.runs:
        r.est_time_s = 10.0
        res = read_result(r.dir)
        res.wall_time_s, res.world_size = 15.0, 1
        write_result(r.dir, res)
    write_plan(plan)
    assert read_plan(tmp_path / "s").runs[0].est_time_s == 10.0
    report = render_report(analyse_study(tmp_path / "s", n_boot=0), [])
    section = report.split("## Cost: planned against actual")[1].split("##")[0]
    assert f"{len(plan.runs)} completed runs" in section and "1.50x the estimate" in section


def test_status_shows_each_phase_of_a_study(study, capsys):
    from scaling.launch.status import main as status

    folder, plan, a = study
    vplan = plan_verify(_spec(folder), str(folder), a, plan)
    write_plan(vplan)
    with pytest.raises(SystemExit) as e:
        status([str(folder)])
    out = capsys.readouterr().out
    assert e.value.code == 0
    assert out.index("study:") < out.index("verification run:") and "tune phase:" not in out
    assert f"{len(plan.runs)} completed" in out and vplan.runs[0].id in out and "1 planned" in out
