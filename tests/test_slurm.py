"""The Slurm launcher against a real single-node Slurm cluster (with accounting), started once per
session by slurm/start-local-cluster.sh (the `slurm_cluster` fixture, in conftest.py): submission
through submitit, job arrays, a 2-task srun run with ZeRO-2, requeue and resume, a cancelled job that
stays cancelled, idempotent relaunch, and the plain sbatch template.

Skipped, with the reason, only where the cluster cannot be started (not root, no apt); with
CI=true they fail instead."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scaling.launch.config import BudgetsConfig, ClusterConfig, LauncherConfig, PowerLaw, RulesConfig, SizesConfig, StudySpec
from scaling.launch.state import read_states
from scaling.launch.status import follow
from scaling.launch.study import launch_study
from scaling.errors import ConfigError

pytestmark = pytest.mark.slurm
ROOT = Path(__file__).resolve().parent.parent
WAIT_S = 240


@pytest.fixture(scope="module")
def env(slurm_cluster, tmp_path_factory):
    # Jobs inherit the submitting environment, as with sbatch's default --export=ALL.
    mp = pytest.MonkeyPatch()
    mp.setenv("SCALING_CACHE", str(tmp_path_factory.mktemp("cache")))
    mp.setenv("WANDB_MODE", "disabled")
    mp.setenv("WANDB_SILENT", "true")
    yield slurm_cluster
    mp.undo()


CLUSTER = ClusterConfig(name="local", partition="debug", time_limit_min=10, signal_delay_s=20, max_requeues=3)
QUIET = dict(echo=lambda s: None)


def spec(study_dir: Path, targets=(5e3, 2e4), flops=(1e10,), extra=(), **kw) -> StudySpec:
    return StudySpec(
        name=study_dir.name,
        data="synthetic",
        sizes=SizesConfig(targets=list(targets)),
        budgets=BudgetsConfig(flops=list(flops)),
        overrides=["logger.wandb.mode=disabled", "train.eval_tokens=2048", *extra],
        dir=str(study_dir),
        throughput_flops=1e9,
        **kw,
    )


def slurm(**kw) -> LauncherConfig:
    return LauncherConfig(name="slurm", **kw)


def wait(study_dir: str) -> dict:
    states = follow(study_dir, poll_s=0.5, timeout_s=WAIT_S, echo=lambda s: None)
    return {k: v.state for k, v in states.items()}


def squeue_ids() -> set[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def results(outcome) -> list[dict]:
    return [json.loads((Path(r.dir) / "result.json").read_text()) for r in outcome.plan.runs]


@pytest.fixture(scope="module")
def two_run_study(env, tmp_path_factory):
    s = spec(tmp_path_factory.mktemp("slurm-study") / "two")
    t0 = time.time()
    outcome = launch_study(s, slurm(array=True), CLUSTER, **QUIET)  # one job array
    submit_s = time.time() - t0
    states = wait(s.dir)
    print(f"2-run study on Slurm: submitted in {submit_s:.1f}s, completed in {time.time() - t0:.1f}s")
    return s, outcome, submit_s, states


def test_a_two_run_study_completes_through_submitit(two_run_study):
    s, outcome, submit_s, states = two_run_study
    assert len(outcome.launched) == 2 and set(outcome.job_ids) == set(outcome.launched)
    assert len({j.split("_")[0] for j in outcome.job_ids.values()}) == 1  # array tasks of one job
    assert set(outcome.states.values()) <= {"queued", "running", "completed"}  # launching did not block
    assert states == {r.id: "completed" for r in outcome.plan.runs}
    for result in results(outcome):
        assert result["status"] == "completed"
    out = subprocess.run([sys.executable, "-m", "scaling.launch.status", s.dir], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    for rid, job in outcome.job_ids.items():
        line = next(l for l in out.stdout.splitlines() if l.startswith(rid))
        assert "completed" in line and line.rstrip().endswith(job)


def test_relaunch_submits_nothing_for_a_completed_study_and_exactly_a_deleted_run(two_run_study):
    s, first, _, _ = two_run_study
    before = squeue_ids()
    again = launch_study(s, slurm(), CLUSTER, **QUIET)
    assert again.launched == [] and again.job_ids == {}
    assert squeue_ids() <= before  # nothing new queued (finished jobs may leave the queue meanwhile)

    victim = first.plan.runs[0]
    shutil.rmtree(victim.dir)
    redo = launch_study(s, slurm(), CLUSTER, **QUIET)
    assert redo.launched == [victim.id] and list(redo.job_ids) == [victim.id]
    assert wait(s.dir) == {r.id: "completed" for r in first.plan.runs}


def test_two_srun_tasks_with_zero2_match_one_process(env, tmp_path):
    extra = ("train.zero_stage=2", "train.log_every_steps=1")
    # 8 sequences for both, and a moderate LR: at the default rule's LR for this tiny model (0.13),
    # float rounding differences between 1 and 2 processes grow chaotically within 20 steps.
    rules = RulesConfig(lr=PowerLaw(coef=3e-3, exponent=0.0), batch_tokens=PowerLaw(coef=8 * 64, exponent=0.0))
    one = spec(tmp_path / "p1", targets=(5e3,), extra=extra, nproc=1, rules=rules)
    two = spec(tmp_path / "p2", targets=(5e3,), extra=extra, nproc=2, rules=rules)
    o1 = launch_study(one, slurm(), CLUSTER, **QUIET)
    o2 = launch_study(two, slurm(), CLUSTER, **QUIET)
    assert wait(one.dir) == {o1.plan.runs[0].id: "completed"}
    assert wait(two.dir) == {o2.plan.runs[0].id: "completed"}
    r1, r2 = results(o1)[0], results(o2)[0]
    assert (r1["world_size"], r2["world_size"]) == (1, 2)
    assert r2["zero_stage"] == 2 and r1["steps"] == r2["steps"]
    assert o1.plan.runs[0].id == o2.plan.runs[0].id  # the same config (the process count is not in it)

    def curve(o):
        rows = [json.loads(l) for l in (Path(o.plan.runs[0].dir) / "metrics.jsonl").read_text().splitlines()]
        return {row["step"]: row["loss"] for row in rows if row.get("loss") is not None}

    c1, c2 = curve(o1), curve(o2)
    assert c1.keys() == c2.keys() and len(c1) >= 10
    worst = max(abs(c1[k] - c2[k]) for k in c1)
    print(f"2-task vs 1-process loss curves: max |diff| = {worst:.2e} over {len(c1)} steps")
    assert worst <= 1e-4


def test_a_requeued_job_resumes_from_its_checkpoint_and_matches_an_uninterrupted_run(env, tmp_path):
    # About 1,900 steps: long enough to interrupt mid-run.
    victim = spec(tmp_path / "requeued", targets=(2e4,), flops=(4e11,))
    reference = spec(tmp_path / "reference", targets=(2e4,), flops=(4e11,))
    ov = launch_study(victim, slurm(), CLUSTER, **QUIET)
    orf = launch_study(reference, slurm(), CLUSTER, **QUIET)
    run = ov.plan.runs[0]
    job = ov.job_ids[run.id]

    # Never a second job for a run that is queued or running.
    again = launch_study(victim, slurm(), CLUSTER, **QUIET)
    assert again.launched == [] and again.skipped_active == [run.id]

    metrics = Path(run.dir) / "metrics.jsonl"
    deadline = time.time() + WAIT_S
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) > 100):
        time.sleep(0.2)
    assert metrics.exists(), "the job never started training"
    subprocess.run(["scontrol", "requeue", job], check=True, capture_output=True)
    # Slurm holds a requeued job for about two minutes (BeginTime); release it now.
    deadline = time.time() + 60
    while time.time() < deadline:
        state = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True).stdout.strip()
        if state == "PENDING":
            break
        time.sleep(0.2)
    assert state == "PENDING", f"job {job} is {state!r} after scontrol requeue"
    assert not (Path(run.dir) / "result.json").exists()
    assert any((Path(run.dir) / "checkpoints").iterdir()), "no checkpoint saved on the requeue's SIGTERM"
    assert read_states({run.id: run.dir})[run.id].state == "queued"
    # In 2 s, not at once: see _release_held_jobs.
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now+2"], check=True, capture_output=True)

    assert wait(victim.dir) == {run.id: "completed"}
    assert wait(reference.dir) == {orf.plan.runs[0].id: "completed"}
    assert "resumed from" in (Path(run.dir) / "train.log").read_text()
    assert run.id == orf.plan.runs[0].id  # same config, same id, different study folders
    got, want = results(ov)[0], results(orf)[0]
    for key in ("tokens", "steps", "flops", "train_loss", "eval_loss"):
        assert got[key] == want[key], key
    restarts = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
    assert "Restarts=1" in restarts or restarts == ""  # gone from slurmctld once MinJobAge passes


def test_a_cancelled_job_stays_cancelled_and_a_relaunch_resumes_it(env, tmp_path):
    # scancel sends SIGTERM, as preemption does: the trainer saves a checkpoint and exits with 75,
    # and the job must not requeue itself, for Slurm accepts `scontrol requeue` even for a
    # cancelled job. About 500 steps, cancelled after a few.
    s = spec(tmp_path / "cancelled", targets=(2e4,), flops=(1e11,))
    outcome = launch_study(s, slurm(), CLUSTER, **QUIET)
    run = outcome.plan.runs[0]
    job = outcome.job_ids[run.id]
    _wait_for_progress(Path(run.dir) / "metrics.jsonl", 10)
    subprocess.run(["scancel", job], check=True, capture_output=True)

    # A requeue shows within a second or two, as PENDING (held for BeginTime): watch the job leave
    # the queue, then for 15 s more.
    seen, gone_at, deadline = [], None, time.time() + 60
    while time.time() < deadline and (gone_at is None or time.time() < gone_at + 15):
        state = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True).stdout.strip()
        if not seen or seen[-1] != state:
            seen.append(state)
        gone_at = gone_at or (None if state else time.time())
        time.sleep(0.2)
    assert seen[-1] == "" and "PENDING" not in seen and "RUNNING" not in seen[1:], seen
    st = read_states({run.id: run.dir})[run.id]
    assert st.state == "partial" and st.error is None and not (Path(run.dir) / "result.json").exists()
    assert any((Path(run.dir) / "checkpoints").iterdir()), "no checkpoint saved on scancel's SIGTERM"
    log = next((Path(run.dir) / "slurm").glob(f"{job}_*.out")).read_text()
    assert "was cancelled, so it is not requeued" in log  # the job came to decide, and decided

    again = launch_study(s, slurm(), CLUSTER, **QUIET)
    assert again.launched == [run.id] and again.job_ids[run.id] != job
    assert wait(s.dir) == {run.id: "completed"}
    assert (Path(run.dir) / "train.log").read_text().count("resumed from") == 1


def test_the_printed_sbatch_script_runs_with_plain_sbatch(env, tmp_path):
    s = spec(tmp_path / "plain", targets=(5e3,))
    outcome = launch_study(s, slurm(print_script=True), CLUSTER, **QUIET)
    script = outcome.script
    run = outcome.plan.runs[0]
    assert outcome.launched == [] and not (Path(run.dir) / "launch.json").exists()  # nothing submitted
    for line in ("#SBATCH --partition=debug", "#SBATCH --ntasks-per-node=1", "#SBATCH --signal=USR2@20",
                 "#SBATCH --requeue", "scontrol requeue", f"run.id={run.id}", "-m scaling.train"):  # fmt: skip
        assert line in script, line
    path = tmp_path / "run.sbatch"
    path.write_text(script)
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    job = subprocess.run(["sbatch", "--parsable", str(path)], capture_output=True, text=True, check=True).stdout.strip()
    deadline = time.time() + WAIT_S
    while time.time() < deadline and job in squeue_ids():
        time.sleep(0.5)
    result = json.loads((Path(run.dir) / "result.json").read_text())
    assert result["status"] == "completed"
    assert (Path(run.dir) / "slurm" / f"{job}.out").exists()


def test_an_invalid_spec_submits_nothing(env, tmp_path):
    before = squeue_ids()
    with pytest.raises(ConfigError, match="too small for the smallest model"):
        launch_study(spec(tmp_path / "bad", flops=(1e6,)), slurm(), CLUSTER, **QUIET)
    with pytest.raises(ConfigError, match="cluster.partition is unset"):
        launch_study(spec(tmp_path / "bad2"), slurm(), ClusterConfig(name="nopart"), **QUIET)
    assert squeue_ids() <= before  # nothing queued (finished jobs may leave the queue meanwhile)
    assert not (tmp_path / "bad").exists() and not (tmp_path / "bad2").exists()


def _release_held_jobs() -> None:
    """Slurm holds a requeued job for about two minutes (Reason=BeginTime); start it in 2 s instead.

    Never at once: a requeue revokes the job's launch credentials up to the second it happened
    (slurmd compares whole seconds), so a relaunch within that second is refused ("Job credential
    revoked") and the job fails instead of running again. A job already due within a few seconds
    is left alone, so that polling this does not keep pushing its start back."""
    env = {**os.environ, "SLURM_TIME_FORMAT": "%s"}  # start times in seconds since the epoch
    out = subprocess.run(["squeue", "-h", "-o", "%i|%T|%r|%S"], capture_output=True, text=True, env=env).stdout
    for line in out.splitlines():
        job, state, reason, start = line.split("|")
        if state == "PENDING" and reason == "BeginTime" and start.isdigit() and int(start) > time.time() + 5:
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now+2"], capture_output=True)


def _wait_for_progress(metrics: Path, more_than: int) -> int:
    deadline = time.time() + WAIT_S
    while time.time() < deadline:
        n = len(metrics.read_text().splitlines()) if metrics.exists() else 0
        if n > more_than:
            return n
        time.sleep(0.2)
    raise AssertionError(f"{metrics} did not grow past {more_than} rows")


@pytest.mark.slow
def test_time_limit_signals_requeue_up_to_max_requeues_then_a_relaunch_resumes(env, tmp_path):
    # The time-limit warning is SIGUSR2 to the job's tasks (`#SBATCH --signal=USR2@S`). Slurm sends
    # it on a coarse timer (up to a minute off), so the test sends the same signal to the same
    # tasks with `scancel --signal=USR2`. With max_requeues=1, the first signal requeues the job
    # and the second fails it, leaving a partial run that a relaunch resumes.
    cluster = ClusterConfig(name="local", partition="debug", time_limit_min=10, signal_delay_s=20, max_requeues=1)
    s = spec(tmp_path / "limits", targets=(2e4,), flops=(4e11,))
    outcome = launch_study(s, slurm(), cluster, **QUIET)
    run = outcome.plan.runs[0]
    job = outcome.job_ids[run.id]
    assert "#SBATCH --signal=USR2@20" in (Path(run.dir) / "slurm" / f"{job}_submission.sh").read_text()
    metrics = Path(run.dir) / "metrics.jsonl"

    rows = _wait_for_progress(metrics, 100)
    subprocess.run(["scancel", "--signal=USR2", job], check=True, capture_output=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        shown = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True)
        info = shown.stdout or shown.stderr  # stderr says why, if the job left slurmctld (MinJobAge)
        if "Restarts=1" in info and "JobState=RUNNING" in info:
            break
        _release_held_jobs()
        time.sleep(0.2)
    assert "Restarts=1" in info and "JobState=RUNNING" in info, info
    assert read_states({run.id: run.dir})[run.id].state in ("queued", "running")

    _wait_for_progress(metrics, rows + 100)  # the requeued job resumed and trains again
    subprocess.run(["scancel", "--signal=USR2", job], check=True, capture_output=True)
    deadline = time.time() + 60
    while time.time() < deadline and read_states({run.id: run.dir})[run.id].state != "partial":
        time.sleep(0.2)
    st = read_states({run.id: run.dir})[run.id]
    assert st.state == "partial" and not (Path(run.dir) / "result.json").exists()

    again = launch_study(s, slurm(), cluster, **QUIET)
    assert again.launched == [run.id] and again.job_ids[run.id] != job
    assert wait(s.dir) == {run.id: "completed"}
    log = (Path(run.dir) / "train.log").read_text()
    assert log.count("received SIGUSR2") == 2 and log.count("resumed from") == 2


@pytest.mark.slow
def test_a_requeued_run_continues_the_same_wandb_run(env, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    s = spec(tmp_path / "wandb", targets=(2e4,), flops=(4e11,))
    s.overrides = ["logger.wandb.mode=offline", "train.eval_tokens=2048"]
    outcome = launch_study(s, slurm(), CLUSTER, **QUIET)
    run = outcome.plan.runs[0]
    metrics = Path(run.dir) / "metrics.jsonl"
    deadline = time.time() + WAIT_S
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) > 100):
        time.sleep(0.2)
    wandb_id = (Path(run.dir) / "wandb_id").read_text()
    subprocess.run(["scontrol", "requeue", outcome.job_ids[run.id]], check=True, capture_output=True)
    deadline = time.time() + WAIT_S
    while time.time() < deadline and read_states({run.id: run.dir})[run.id].state not in ("completed", "failed", "partial"):
        _release_held_jobs()
        time.sleep(0.5)
    result = json.loads((Path(run.dir) / "result.json").read_text())
    assert result["status"] == "completed", result.get("error")
    assert (Path(run.dir) / "wandb_id").read_text() == wandb_id
