"""Trunks and cooldown branches through the real local Slurm cluster (conftest.py's `slurm_cluster`):
the branch jobs go in with their trunk's and poll for its fork checkpoints; the trunk is killed
mid-run and the study relaunched. The branches then end with the losses the local launcher gives
the same study, each trained once; a further relaunch submits nothing; and the trunk keeps no fork
point that no branch needs."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

import scaling.launch.slurm as slurm_launcher
from scaling.launch.config import LauncherConfig
from scaling.launch.local import cpu_count
from scaling.launch.state import read_states
from scaling.launch.study import launch_study
from scaling.rundir import checkpoint_dirs, read_metrics
from test_branches_launch import spec
from test_slurm import CLUSTER, QUIET, WAIT_S, env, slurm, squeue_ids, wait  # noqa: F401 - env is a fixture

pytestmark = pytest.mark.slurm
# Branches at 5 and 80 tokens per parameter: the trunk trains 729 steps (a few seconds), and its
# first fork point, at step 46, leaves it most of them to be killed in.
AT = (5, 80)
EXTRA = ("train.keep_checkpoints=1",)


def _until(done, what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.time() + timeout_s
    while not done():
        assert time.time() < deadline, f"{what} after {timeout_s} s"
        time.sleep(0.05)


def _eval(run_dir: str) -> float:
    return json.loads((Path(run_dir) / "result.json").read_text())["eval_loss"]


@pytest.fixture(scope="module")
def killed_study(env, tmp_path_factory):
    """The study on Slurm, its trunk killed (SIGKILL: no checkpoint on the way out) after its first
    fork point and the study relaunched; and the same study through the local launcher."""
    root = tmp_path_factory.mktemp("wsd-slurm")
    s = spec(root / "slurm", AT, EXTRA)
    mp = pytest.MonkeyPatch()
    mp.setattr(slurm_launcher, "FORK_POLL_S", 0.2)  # pickled into each branch's job
    t0 = time.time()
    first = launch_study(s, slurm(), CLUSTER, **QUIET)
    trunk = next(r for r in first.plan.runs if r.extra.get("role") == "trunk")
    early, late = sorted((r for r in first.plan.runs if r.extra.get("role") == "branch"),
                         key=lambda r: r.extra["fork_step"])  # fmt: skip
    fork = Path(trunk.dir) / "checkpoints" / f"step{early.extra['fork_step']:08d}"
    _until(lambda: (fork / "state.json").exists(), f"no trunk checkpoint {fork.name}")
    # The trainer's process, as the out-of-memory killer would (scancel would have it checkpoint).
    os.kill(json.loads((Path(trunk.dir) / "lock.json").read_text())["pid"], signal.SIGKILL)
    job = first.job_ids[trunk.id]
    _until(lambda: job not in squeue_ids(), f"trunk job {job} still in the queue")
    killed = read_states({trunk.id: trunk.dir})[trunk.id].state
    last_fork = Path(trunk.dir) / "checkpoints" / f"step{late.extra['fork_step']:08d}"
    assert not last_fork.exists(), "the trunk finished before it was killed"

    again = launch_study(s, slurm(), CLUSTER, **QUIET)
    mp.undo()

    # Meanwhile, the same study uninterrupted through the local launcher, one thread per run as
    # each Slurm job has (cluster.cpus_per_task=1): the thread count changes the order of float
    # sums, so losses match only on the same count.
    local = launch_study(spec(root / "local", AT, EXTRA), LauncherConfig(name="local", parallel=cpu_count()), **QUIET)
    assert local.complete, local.states
    assert wait(s.dir) == {r.id: "completed" for r in first.plan.runs}
    # A branch's job rotates its trunk's checkpoints after its result is written: let it end.
    jobs = {*first.job_ids.values(), *again.job_ids.values()}
    _until(lambda: not jobs & squeue_ids(), "jobs still in the queue")
    print(f"trunk and 2 branches on Slurm, killed and relaunched, and locally: {time.time() - t0:.1f}s")
    return s, first, again, killed, local


def test_the_killed_trunk_is_relaunched_alone_and_resumes(killed_study):
    s, first, again, killed, _ = killed_study
    trunk = next(r for r in first.plan.runs if r.extra.get("role") == "trunk")
    assert sorted(first.launched) == sorted(r.id for r in first.plan.runs)  # branches went in with the trunk
    assert killed == "partial" and again.launched == [trunk.id]
    assert sorted(again.skipped_active + again.skipped_completed) == sorted(r.id for r in first.plan.runs
                                                                            if r.id != trunk.id)  # fmt: skip
    assert "resumed from" in (Path(trunk.dir) / "train.log").read_text()


def test_branches_match_the_local_launcher_and_train_once(killed_study):
    s, first, _, _, local = killed_study
    history = [json.loads(line) for line in (Path(s.dir) / "launches.jsonl").read_text().splitlines()]
    for run, ref in zip(first.plan.runs, local.plan.runs):
        assert run.id == ref.id
        assert _eval(run.dir) == pytest.approx(_eval(ref.dir), abs=1e-6), run.id
        if run.extra.get("role") != "branch":
            continue
        assert [h["run"] for h in history].count(run.id) == 1  # one job, submitted with the trunk's
        log = (Path(run.dir) / "train.log").read_text()
        assert log.count("branched from") == 1 and "resumed from" not in log
        steps = [row["step"] for row in read_metrics(Path(run.dir) / "metrics.jsonl")]
        assert steps == sorted(set(steps)) and steps[0] > run.extra["fork_step"]  # no step trained twice
    # The last branch's job was running, polling, while its trunk was dead and requeued.
    late = max((r for r in first.plan.runs if r.extra.get("role") == "branch"), key=lambda r: r.extra["fork_step"])
    logs = "".join(p.read_text() for p in (Path(late.dir) / "slurm").glob("*.out"))
    assert "waiting for the trunk's checkpoint" in logs


def test_the_trunk_keeps_no_fork_point_once_its_branches_completed(killed_study):
    _, first, _, _, local = killed_study
    for plan in (first.plan, local.plan):
        trunk = next(r for r in plan.runs if r.extra.get("role") == "trunk")
        # train.keep_checkpoints=1: only the final one, where the trunk would resume or export from.
        assert [p.name for p in checkpoint_dirs(trunk.dir)] == [f"step{trunk.steps:08d}"]


def test_a_relaunch_of_the_finished_study_submits_nothing(killed_study):
    s = killed_study[0]
    before = squeue_ids()
    third = launch_study(s, slurm(), CLUSTER, **QUIET)
    assert third.launched == [] and third.job_ids == {}
    assert squeue_ids() <= before
