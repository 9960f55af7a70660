"""Trunks and branches through the local launcher, with the real trainer: branches start once
their fork checkpoint exists, a relaunch trains nothing twice, and a trunk killed mid-run resumes
to the same branch losses as an uninterrupted study."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from scaling.launch.config import BranchesConfig, BudgetsConfig, LauncherConfig, SizesConfig, StudySpec
from scaling.launch.local import EXIT_BRANCH_WAITING, cpu_count, run_local, train_command
from scaling.launch.plan import make_plan
from scaling.launch.study import launch_study

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _env(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SCALING_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_SILENT", "true")


def spec(study_dir: Path, at: tuple[float, ...] = (20, 40), extra: tuple[str, ...] = ()) -> StudySpec:
    """One tiny trunk (5e3 parameters, 448 tokens a step) with a branch at each of `at` tokens per parameter."""
    return StudySpec(
        name="wsd", data="synthetic", sizes=SizesConfig(targets=[5e3]), budgets=BudgetsConfig(),
        branches=BranchesConfig(at=list(at), decay_fraction=0.2),
        overrides=["logger.wandb.mode=disabled", "train.eval_tokens=2048", *extra], dir=str(study_dir),
        throughput_flops=1e9,
    )  # fmt: skip


def _launches(run_dir: str) -> int:
    return (Path(run_dir) / "launch.log").read_text().count("\n=== ")


def _eval(run_dir: str) -> float:
    return json.loads((Path(run_dir) / "result.json").read_text())["eval_loss"]


def test_a_branch_without_its_trunk_is_not_started(tmp_path):
    plan = make_plan(spec(tmp_path / "s"))
    branch = next(r for r in plan.runs if r.extra.get("role") == "branch")
    lines: list[str] = []
    codes = run_local([branch], parallel=1, echo=lines.append, progress=False, warm=False)
    assert codes == {branch.id: EXIT_BRANCH_WAITING}
    assert any("no checkpoint at the fork step" in line for line in lines)
    assert not (Path(branch.dir) / "result.json").exists()  # a relaunch starts it once the trunk is there


@pytest.mark.slow
def test_killed_trunk_resumes_and_branches_match_an_uninterrupted_study(tmp_path):
    whole = launch_study(spec(tmp_path / "whole"), LauncherConfig(name="local", parallel=2), echo=lambda s: None)
    assert whole.complete, whole.states
    ids = [r.id for r in whole.plan.runs]
    branches = [r for r in whole.plan.runs if r.extra.get("role") == "branch"]
    trunk = next(r for r in whole.plan.runs if r.extra.get("role") == "trunk")
    for b in branches:
        assert json.loads((Path(b.dir) / "result.json").read_text())["fork_step"] == b.extra["fork_step"]

    # The same study, its trunk killed (SIGKILL, no checkpoint on the way out) after its first fork point.
    s2 = spec(tmp_path / "killed")
    plan2 = make_plan(s2)
    assert [r.id for r in plan2.runs] == ids
    t2 = next(r for r in plan2.runs if r.extra.get("role") == "trunk")
    Path(t2.dir).mkdir(parents=True)
    first_fork = Path(t2.dir) / "checkpoints" / f"step{min(b.extra['fork_step'] for b in branches):08d}"
    # One thread, as the launcher gives each of its 2 parallel runs on 2 cores: the thread count
    # changes the order of float sums, so the losses only match on the same count.
    threads = max(1, cpu_count() // 2)
    proc = subprocess.Popen(train_command(t2, extra=[f"train.num_threads={threads}"]), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    deadline = time.time() + 240
    while not (first_fork / "state.json").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (first_fork / "state.json").exists() and not (Path(t2.dir) / "result.json").exists()

    again = launch_study(s2, LauncherConfig(name="local", parallel=2), echo=lambda s: None)
    assert again.complete, again.states
    for b in branches:
        b2 = Path(tmp_path / "killed" / "runs" / b.id)
        assert _eval(str(b2)) == pytest.approx(_eval(b.dir), abs=1e-6)
        assert _launches(str(b2)) == 1
    assert _eval(t2.dir) == pytest.approx(_eval(trunk.dir), abs=1e-6)

    # A relaunch of a finished study trains nothing.
    third = launch_study(s2, LauncherConfig(name="local"), echo=lambda s: None)
    assert third.launched == [] and sorted(third.skipped_completed) == sorted(ids)


def test_a_slurm_branch_job_polls_for_its_fork_checkpoint(tmp_path):
    import threading

    from scaling.contracts import Result, RunStatus, write_result
    from scaling.launch.state import wait_for_fork

    trunk, branch = tmp_path / "runs" / "trunk", tmp_path / "runs" / "branch"
    ckpt = trunk / "checkpoints" / "step00000008"
    branch.mkdir(parents=True)
    assert wait_for_fork(str(branch), None) is None  # not a branch
    later = threading.Timer(0.3, lambda: (ckpt.mkdir(parents=True), (ckpt / "state.json").write_text("{}")))
    later.start()
    assert wait_for_fork(str(branch), str(ckpt), poll_s=0.05, timeout_s=30) is None
    later.join()
    # The trunk ended without the checkpoint: the job fails at once, saying why.
    missing = trunk / "checkpoints" / "step00000009"
    write_result(trunk, Result(status=RunStatus.FAILED, error="boom"))
    why = wait_for_fork(str(branch), str(missing), poll_s=0.05, timeout_s=30)
    assert why is not None and "ended (failed) without a checkpoint at step00000009" in why
    assert "after 0 s" in wait_for_fork(str(tmp_path / "b2"), str(tmp_path / "t2" / "checkpoints" / "step1"),
                                        poll_s=0.01, timeout_s=0.0)


def test_a_plain_sbatch_branch_waits_for_its_fork_checkpoint_as_the_submitit_job_does(tmp_path):
    """The printed script's wait-fork and release-fork lines, run as the script runs them."""
    import subprocess
    import sys
    import threading

    from scaling.contracts import Result, RunStatus, write_result

    trunk, branch = tmp_path / "runs" / "trunk", tmp_path / "runs" / "branch"
    ckpt = trunk / "checkpoints" / "step00000008"
    branch.mkdir(parents=True)

    def state(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "scaling.launch.state", *args], capture_output=True, text=True,
                              timeout=120)  # fmt: skip

    later = threading.Timer(1.0, lambda: (ckpt.mkdir(parents=True), (ckpt / "state.json").write_text("{}")))
    later.start()
    waited = state("wait-fork", str(branch), str(ckpt), "--poll-s", "0.05")
    later.join()
    assert waited.returncode == 0, waited.stdout + waited.stderr
    assert f"waiting for the trunk's checkpoint {ckpt}" in waited.stdout
    write_result(trunk, Result(status=RunStatus.FAILED, error="boom"))
    refused = state("wait-fork", str(branch), str(trunk / "checkpoints" / "step00000009"), "--poll-s", "0.05")
    assert refused.returncode == 1 and "cannot start: the trunk trunk ended (failed)" in refused.stdout
    assert state("release-fork", str(ckpt)).returncode == 0


def test_a_fork_point_is_rotated_once_every_branch_from_it_has_completed(tmp_path):
    from scaling.contracts import Result, RunStatus, write_plan, write_result
    from scaling.launch.state import fork_checkpoint, release_fork
    from scaling.rundir import checkpoint_dirs, write_json_atomic
    from scaling.trainer.checkpointing import FORKS_KEY

    plan = make_plan(spec(tmp_path / "s"))
    write_plan(plan)
    trunk = next(r for r in plan.runs if r.extra.get("role") == "trunk")
    early, late = sorted((r for r in plan.runs if r.extra.get("role") == "branch"), key=lambda r: r.extra["fork_step"])
    forks = [early.extra["fork_step"], late.extra["fork_step"]]
    # The trunk's checkpoints as its Checkpointer leaves them with train.keep_checkpoints=1: its
    # fork points, and the newest of the others (a relaunch resumes from the newest of all).
    steps = [forks[0], forks[0] + 10, forks[1]]
    for step in steps:
        write_json_atomic(Path(trunk.dir) / "checkpoints" / f"step{step:08d}" / "state.json",
                          {"step": step, FORKS_KEY: {"steps": forks, "keep_checkpoints": 1}})  # fmt: skip

    def kept() -> list[int]:
        return [int(p.name[4:]) for p in checkpoint_dirs(trunk.dir)]

    assert release_fork(fork_checkpoint(early)) == [] and kept() == steps  # no branch has completed
    write_result(late.dir, Result(status=RunStatus.COMPLETED))
    assert release_fork(fork_checkpoint(late)) == [Path(trunk.dir) / "checkpoints" / f"step{forks[0] + 10:08d}"]
    assert kept() == forks  # the early branch has not completed: its fork point stays
    write_result(early.dir, Result(status=RunStatus.COMPLETED))
    release_fork(fork_checkpoint(early))
    assert kept() == [forks[1]]  # the newest stays, whatever it is
    assert not list((Path(trunk.dir) / "checkpoints").glob(".old-*"))
    assert release_fork(None) == []  # not a branch
