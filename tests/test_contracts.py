"""The typed records (scaling/contracts.py): today's files read, write back unchanged but for their
version, refuse newer versions, and are what the launchers and the analysis read.

tests/data/format_v1/ was written by the version before the records were typed (paths in plan.json
rewritten to a neutral folder): a study's plan.json, a completed run's result.json and a few of its
metrics rows, and a failed run's result.json.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from scaling import contracts
from scaling.contracts import (
    ContractError, MetricsRow, Result, RunStatus, read_metrics, read_plan, read_result, write_plan, write_result,
)  # fmt: skip

SAMPLE = Path(__file__).parent / "data" / "format_v1"
RUN_ID = "gpt-N5.1K-D289K-C2.0e10-s0-a9d3d1"
RUN = SAMPLE / "study" / "runs" / RUN_ID


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_a_run_directory_of_the_first_format_reads_as_version_1():
    raw = _json(RUN / "result.json")
    assert "version" not in raw
    result = read_result(RUN)
    assert result.status is RunStatus.COMPLETED and result.version == 1 and result.extra == {}
    for key, value in raw.items():
        assert getattr(result, key) == value, key
    assert result.loss == raw["eval_loss"]

    failed = read_result(SAMPLE / "failed")
    assert failed.status is RunStatus.FAILED and failed.version == 1
    assert (failed.error, failed.step, failed.rank) == (_json(SAMPLE / "failed" / "result.json")["error"], 2, 0)

    lines = (RUN / "metrics.jsonl").read_text().splitlines()
    rows = read_metrics(RUN / "metrics.jsonl")
    assert [r.step for r in rows] == [1, 2, 3, 645] and {r.version for r in rows} == {1}
    for row, line in zip(rows, lines):
        assert {k: v for k, v in row.to_json().items() if k != "version"} == json.loads(line)
    assert rows[-1].eval_loss is not None and rows[0].eval_loss is None and rows[0].mfu is None

    plan = read_plan(SAMPLE / "study")
    raw_plan = _json(SAMPLE / "study" / "plan.json")
    (run,) = plan.runs
    assert run.id == RUN_ID and plan.format == "scaling-plan/1" and plan.n_count == "nonembedding"
    for key, value in raw_plan["runs"][0].items():
        assert getattr(run, key) == value, key
    assert plan.total_flops == raw_plan["total_flops"]


def test_records_write_back_as_they_were_read_plus_their_version(tmp_path):
    for source in (RUN, SAMPLE / "failed"):
        write_result(tmp_path, read_result(source))
        assert _json(tmp_path / "result.json") == _json(source / "result.json") | {"version": 1}

    for row in read_metrics(RUN / "metrics.jsonl"):
        contracts.append_metrics(tmp_path / "metrics.jsonl", row)
    written = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    original = [json.loads(line) for line in (RUN / "metrics.jsonl").read_text().splitlines()]
    assert written == [row | {"version": 1} for row in original]

    plan = read_plan(SAMPLE / "study")
    plan.dir = str(tmp_path)
    write_plan(plan)
    assert _json(tmp_path / "plan.json") == _json(SAMPLE / "study" / "plan.json") | {"dir": str(tmp_path)}
    assert read_plan(tmp_path) == plan


def test_keys_a_version_does_not_know_are_kept(tmp_path):
    raw = _json(RUN / "result.json") | {"note": "added by a later version", "timing": {"new_phase_s": 1.0}}
    (tmp_path / "result.json").write_text(json.dumps(raw))
    result = read_result(tmp_path)
    assert result.extra == {"note": "added by a later version"} and result.timing == {"new_phase_s": 1.0}
    write_result(tmp_path, result)
    assert _json(tmp_path / "result.json") == raw | {"version": 1}


@pytest.mark.parametrize(
    "name, content, problem",
    [
        ("result.json", {"status": "completed", "version": 2}, "newer than this version of scaling reads (1)"),
        ("result.json", {"status": "finished"}, "has status 'finished'; expected one of ['completed', 'failed']"),
        ("result.json", {"status": "completed", "params": "many"}, "has params='many', not a number"),
        ("result.json", {"params": 3}, "lacks the key 'status'"),
        ("plan.json", {"format": "scaling-plan/2", "runs": []}, "has format 'scaling-plan/2'"),
        ("plan.json", {"runs": [{"id": "a", "N": "big"}]}, "(runs[0]) has N='big', not a number"),
        ("plan.json", {"runs": [{"dir": "a"}]}, "needs 'runs', a list of objects each with a string 'id'"),
    ],
)
def test_a_record_that_breaks_its_contract_is_refused_naming_the_file(tmp_path, name, content, problem):
    (tmp_path / name).write_text(json.dumps(content))
    with pytest.raises(ContractError) as e:
        (read_result if name == "result.json" else read_plan)(tmp_path)
    assert repr(str(tmp_path / name)) in str(e.value) and problem in str(e.value)
    assert (contracts.result_if_readable(tmp_path) is None) if name == "result.json" else True


def test_metrics_rows_skip_torn_lines_and_refuse_a_newer_version(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 3.0}\n[1]\n{"loss": 2.0}\n{"step": 2, "loss": 2.5}\n{"step": 3, "lo')
    assert [r.step for r in read_metrics(path)] == [1, 2]
    assert contracts.last_loss_row(path, tail_bytes=45).step == 2  # the line the seek cut is skipped
    assert contracts.last_loss_row(path, tail_bytes=12) is None
    contracts.truncate_metrics(path, 1)
    assert [r.step for r in read_metrics(path)] == [1]
    with path.open("a") as f:
        f.write('{"step": 4, "version": 2, "loss": 1.0}\n')
    with pytest.raises(ContractError, match="metrics row of version 2"):
        read_metrics(path)


def test_only_a_complete_result_is_trusted_as_completed(tmp_path):
    write_result(tmp_path, Result(status=RunStatus.COMPLETED, params=10, tokens=100))
    assert read_result(tmp_path).status is RunStatus.COMPLETED
    with pytest.raises(ContractError, match=r"is a completed result without \['flops', 'eval_loss', 'steps'\]"):
        read_result(tmp_path, complete=True)


def test_a_failure_is_recorded_once_when_several_ranks_write_it(tmp_path):
    assert write_result(tmp_path, Result(status=RunStatus.FAILED, error="first", rank=1), only_if_absent=True)
    assert not write_result(tmp_path, Result(status=RunStatus.FAILED, error="second", rank=0), only_if_absent=True)
    assert read_result(tmp_path).error == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]  # no temporary file left behind


def test_a_run_status_is_the_same_string_in_json():
    assert json.dumps({"status": RunStatus.COMPLETED}) == '{"status": "completed"}'
    assert RunStatus("failed") is RunStatus.FAILED and RunStatus.FAILED == "failed"
    assert f"{RunStatus.PARTIAL}" == "partial" and RunStatus.RUNNING + " (5%)" == "running (5%)"


def test_the_launchers_and_the_analysis_read_the_sample_through_the_contracts(tmp_path):
    from scaling.analysis.io import load_curves, load_runs, read_plan_run_ids
    from scaling.launch.status import format_status, study_states

    study = tmp_path / "study"
    shutil.copytree(SAMPLE / "study", study)
    plan = read_plan(study)
    plan.dir = str(study)  # the sample's folder, moved here
    for run in plan.runs:
        run.dir = str(study / "runs" / run.id)
    write_plan(plan)

    runs, states = study_states(study)
    assert states[RUN_ID].state is RunStatus.COMPLETED
    assert states[RUN_ID].loss == pytest.approx(read_result(RUN).eval_loss)
    assert "1 completed" in format_status(runs, states)

    assert read_plan_run_ids(study) == {RUN_ID}
    data, skipped = load_runs(study, n_key="params_nonembedding")
    assert list(data.run_id) == [RUN_ID] and data.N[0] == 5100 and not skipped
    (curve,) = load_curves(study)
    assert list(curve.flops) == [r.flops for r in read_metrics(RUN / "metrics.jsonl")]

    message = MetricsRow(step=1, loss=2.0).values()
    assert message == {"loss": 2.0}  # what the dashboard is sent: no step, no version
