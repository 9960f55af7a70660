"""The local launcher with the real trainer: a study completes, a relaunch is idempotent (skips
completed runs, reruns exactly a deleted one, lists failed runs and retries them only when
asked), and torchrun starts runs of several processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scaling.launch.config import BudgetsConfig, LauncherConfig, SizesConfig, StudySpec
from scaling.launch.local import train_command
from scaling.launch.plan import make_plan
from scaling.launch.state import read_states
from scaling.launch.study import StudyLocked, launch_study, study_lock

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def env_module(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("SCALING_CACHE", str(tmp_path_factory.mktemp("cache")))
    mp.setenv("WANDB_MODE", "disabled")
    mp.setenv("WANDB_SILENT", "true")
    yield
    mp.undo()


def tiny_spec(study_dir: Path, **kw) -> StudySpec:
    base = dict(
        name=study_dir.name,
        data="synthetic",
        sizes=SizesConfig(targets=[5e3, 2e4]),
        budgets=BudgetsConfig(flops=[1e10]),
        overrides=["logger.wandb.mode=disabled", "train.eval_tokens=2048"],
        dir=str(study_dir),
        throughput_flops=1e9,  # skip measuring this machine
    )
    base.update(kw)
    return StudySpec(**base)


@pytest.fixture(scope="module")
def completed_study(tmp_path_factory, env_module):
    spec = tiny_spec(tmp_path_factory.mktemp("local") / "two")
    t0 = time.time()
    outcome = launch_study(spec, LauncherConfig(name="local", parallel=2), echo=lambda s: None)
    print(f"2-run local study: {time.time() - t0:.1f}s")
    return spec, outcome


def test_local_study_completes_with_a_log_per_run(completed_study):
    spec, outcome = completed_study
    assert len(outcome.plan.runs) == 2
    assert outcome.complete, outcome.states
    assert outcome.exit_codes == {r.id: 0 for r in outcome.plan.runs}
    for r in outcome.plan.runs:
        result = json.loads((Path(r.dir) / "result.json").read_text())
        assert result["status"] == "completed"
        assert result["tokens"] == r.D
        assert result["flops"] == pytest.approx(r.C, rel=1e-6)
        assert (Path(r.dir) / "launch.log").stat().st_size > 0
    assert (Path(spec.dir) / "plan.json").exists()


def test_relaunch_skips_completed_and_reruns_exactly_a_deleted_run(completed_study):
    spec, first = completed_study
    again = launch_study(spec, LauncherConfig(name="local"), echo=lambda s: None)
    assert again.launched == [] and sorted(again.skipped_completed) == sorted(r.id for r in first.plan.runs)
    assert [r.id for r in again.plan.runs] == [r.id for r in first.plan.runs]

    victim = first.plan.runs[1]
    shutil.rmtree(victim.dir)
    redo = launch_study(spec, LauncherConfig(name="local"), echo=lambda s: None)
    assert redo.launched == [victim.id]
    assert redo.complete


def test_failed_runs_are_listed_and_retried_only_when_asked(completed_study):
    spec, first = completed_study
    run = first.plan.runs[0]
    result_path = Path(run.dir) / "result.json"
    # A failure as the trainer records it (status failed, the error), in place of the result.
    result_path.write_text(json.dumps({"status": "failed", "error": "FloatingPointError: loss is nan at step 3"}))
    lines: list[str] = []
    outcome = launch_study(spec, LauncherConfig(name="local"), echo=lines.append)
    assert outcome.launched == []
    assert outcome.failed == {run.id: "FloatingPointError: loss is nan at step 3"}
    assert any("loss is nan" in line for line in lines) and any("retry_failed=true" in line for line in lines)

    spec.retry_failed = True
    outcome = launch_study(spec, LauncherConfig(name="local"), echo=lambda s: None)
    assert outcome.launched == [run.id]
    assert outcome.complete
    assert json.loads(result_path.read_text())["status"] == "completed"
    assert (Path(run.dir) / "result.failed-1.json").exists()


def test_status_cli_prints_states_and_losses(completed_study):
    spec, outcome = completed_study
    out = subprocess.run([sys.executable, "-m", "scaling.launch.status", spec.dir], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    for r in outcome.plan.runs:
        line = next(l for l in out.stdout.splitlines() if l.startswith(r.id))
        assert "completed" in line
        loss = json.loads((Path(r.dir) / "result.json").read_text())["eval_loss"]
        assert f"{loss:.4f}" in line
    assert "2 completed" in out.stdout


def test_status_of_1000_runs_takes_about_a_second(tmp_path):
    study = tmp_path / "big"
    runs = []
    states = ["completed", "failed", "partial", "planned"]
    for i in range(1000):
        rid = f"gpt-N{i}-D1M-C1e12-s0-{i:06x}"
        d = study / "runs" / rid
        runs.append({"id": rid, "dir": str(d), "N": 1000 + i, "D": 10**6, "C": 1e12})
        kind = states[i % 4]
        if kind == "planned":
            continue
        d.mkdir(parents=True)
        (d / "launch.json").write_text(json.dumps({"launcher": "local", "pid": 1, "host": "elsewhere"}))
        with open(d / "metrics.jsonl", "w") as f:
            for step in range(1, 50):
                f.write(json.dumps({"step": step, "tokens": step * 1000, "loss": 5.0 - step / 100}) + "\n")
        if kind != "partial":
            (d / "result.json").write_text(json.dumps({"status": kind, "eval_loss": 3.0, "error": "boom"}))
    (study / "plan.json").write_text(json.dumps({"runs": runs}))
    t0 = time.time()
    out = subprocess.run([sys.executable, "-m", "scaling.launch.status", str(study)], cwd=ROOT, capture_output=True, text=True)
    took = time.time() - t0
    print(f"scaling-status on 1000 runs: {took:.2f}s (interpreter start included)")
    assert out.returncode == 0, out.stderr
    assert "250 planned, 250 partial, 250 completed, 250 failed" in out.stdout
    assert took < 3.0


def test_a_second_launcher_is_refused_while_the_study_is_being_launched(tmp_path):
    with study_lock(str(tmp_path)):
        with pytest.raises(StudyLocked, match="is being launched by pid"):
            with study_lock(str(tmp_path)):
                pass
    with study_lock(str(tmp_path)):  # released
        pass


def test_runs_of_several_processes_use_torchrun(tmp_path, env_module):
    plan = make_plan(tiny_spec(tmp_path / "s", nproc=2))
    cmd = train_command(plan.runs[0])
    assert Path(cmd[0]).name == "torchrun" or cmd[1:3] == ["-m", "torch.distributed.run"]
    assert "--nproc_per_node=2" in cmd and cmd[cmd.index("-m", 1) + 1] == "scaling.train"
    single = train_command(make_plan(tiny_spec(tmp_path / "t")).runs[0])
    assert single[1:3] == ["-m", "scaling.train"]
    assert all(r.batch % 2 == 0 for r in plan.runs)


@pytest.mark.slow
def test_a_two_process_local_run_completes_under_torchrun(tmp_path, env_module):
    spec = tiny_spec(tmp_path / "tr", nproc=2, sizes=SizesConfig(targets=[5e3]), overrides=[
        "logger.wandb.mode=disabled", "train.eval_tokens=2048", "train.zero_stage=2"])  # fmt: skip
    outcome = launch_study(spec, LauncherConfig(name="local"), echo=lambda s: None)
    assert outcome.complete, outcome.states
    result = json.loads((Path(outcome.plan.runs[0].dir) / "result.json").read_text())
    assert result["world_size"] == 2


@pytest.mark.slow
def test_interrupting_the_local_launcher_checkpoints_and_a_relaunch_resumes(tmp_path, env_module):
    spec = tiny_spec(tmp_path / "int", sizes=SizesConfig(targets=[2e4]), budgets=BudgetsConfig(flops=[3e11]))
    cmd = [sys.executable, "-m", "scaling.launch.study", f"study.name=int", "study.data=synthetic", "study.sizes.targets=[2e4]",
           "study.budgets.flops=[3e11]", f"study.dir={spec.dir}", "study.throughput_flops=1e9",
           'study.overrides=["logger.wandb.mode=disabled","train.eval_tokens=2048"]']  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = None
    deadline = time.time() + 120
    while time.time() < deadline:
        found = list(Path(spec.dir).glob("runs/*/metrics.jsonl"))
        if found and found[0].stat().st_size > 2000:
            metrics = found[0]
            break
        time.sleep(0.2)
    assert metrics is not None, proc.communicate()[0]
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=120)[0]
    run_dir = metrics.parent
    assert not (run_dir / "result.json").exists(), out
    assert any((run_dir / "checkpoints").iterdir()), out
    states = read_states({run_dir.name: run_dir})
    assert states[run_dir.name].state == "partial"
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "1 resume or retry" in again.stdout
    assert json.loads((run_dir / "result.json").read_text())["status"] == "completed"
