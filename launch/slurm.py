"""The Slurm launcher, through submitit: one job per run (or one job array per resource shape).

Each job starts one task per process with srun (one per GPU on a GPU cluster); every task calls
`scaling.train.run_overrides` on the run's overrides and joins the DeepSpeed world from Slurm's
environment. Submitting does not block; `scaling-status STUDY_DIR` follows the jobs.

Preemption and time limits
--------------------------
Slurm sends SIGUSR2 `cluster.signal_delay_s` before the time limit, and SIGTERM on preemption
or `scontrol requeue`. The trainer catches both: every rank saves a checkpoint and returns 75.
`TrainJob` then requeues the job (rank 0 runs `scontrol requeue`), at most `cluster.max_requeues`
times, counted by Slurm's SLURM_RESTART_COUNT. The requeued job runs the same pickled call with
the same overrides, so it resumes in the same run directory, from that checkpoint, in the same
wandb run. When the requeues are used up the job fails and the run is `partial`: a relaunch of
the study resumes it.

Importing this module does not import torch or DeepSpeed: the trainer is imported inside the job.
"""

from __future__ import annotations

import math
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from string import Template
from typing import Callable, Optional

from scaling.launch.config import ClusterConfig, LauncherConfig
from scaling.launch.plan import Plan, RunSpec
from scaling.launch.state import write_launch
from scaling.errors import ConfigError
from scaling.rundir import EXIT_REQUEUE

TEMPLATE = Path(__file__).resolve().parent.parent / "slurm" / "train.sbatch"


def job_shape(nproc: int, cluster: ClusterConfig) -> tuple[int, int, int]:
    """(nodes, tasks per node, GPUs per node) for a run of `nproc` processes."""
    if cluster.gpus_per_node > 0:
        per_node = cluster.gpus_per_node
    else:
        per_node = cluster.tasks_per_node or nproc
    nodes = cluster.nodes or math.ceil(nproc / per_node)
    tasks = math.ceil(nproc / nodes)
    if nodes * tasks != nproc:
        raise ConfigError(
            f"study.nproc={nproc} does not split evenly over {nodes} node(s) (cluster.nodes={cluster.nodes}, "
            f"{per_node} per node); pick nproc as a multiple of the processes per node"
        )
    if tasks > per_node:
        raise ConfigError(
            f"study.nproc={nproc} on cluster.nodes={nodes} needs {tasks} tasks per node, but a node takes {per_node} "
            f"(one per GPU); raise cluster.nodes or set it to null"
        )
    gpus = min(cluster.gpus_per_node, tasks) if cluster.gpus_per_node > 0 else 0
    return nodes, tasks, gpus


def check_cluster(plan: Plan, cluster: ClusterConfig) -> None:
    """Every problem that would stop a submission, raised before anything is submitted."""
    from scaling.errors import raise_if

    problems = cluster.problems()
    for nproc in sorted({r.nproc for r in plan.runs}):
        try:
            job_shape(nproc, cluster)
        except ConfigError as e:
            problems += e.problems
    if shutil.which("sbatch") is None:
        problems.append(
            "sbatch is not on PATH: this machine cannot submit to Slurm; run on a login node, start a local "
            "cluster with slurm/start-local-cluster.sh, or use launcher=local"
        )
    raise_if(problems)


def executor_parameters(run: RunSpec, cluster: ClusterConfig, name: Optional[str] = None) -> dict:
    nodes, tasks, gpus = job_shape(run.nproc, cluster)
    params = dict(
        job_name=name or run.id,
        partition=cluster.partition,
        time=cluster.time_limit_min,
        nodes=nodes,
        ntasks_per_node=tasks,
        cpus_per_task=cluster.cpus_per_task,
        signal_delay_s=cluster.signal_delay_s,
        setup=list(cluster.setup),
        additional_parameters={"requeue": True, **cluster.additional},
        stderr_to_stdout=True,
    )
    if gpus:
        params["gpus_per_node"] = gpus
    if cluster.mem_gb is not None:
        params["mem"] = f"{int(math.ceil(cluster.mem_gb))}GB"
    if cluster.account:
        params["account"] = cluster.account
    if cluster.qos:
        params["qos"] = cluster.qos
    return params


def _job_overrides(run: RunSpec, cluster: ClusterConfig) -> list[str]:
    # Without cgroups every task sees all of the node's cores; keep each to its allocation.
    return [*run.overrides, f"train.num_threads={cluster.cpus_per_task}"]


class TrainJob:
    """The callable submitit pickles: trains one run in each task, requeues on code 75.

    It has a `checkpoint` method, so submitit's own SIGUSR2 handler (active whenever the trainer's
    is not) also requeues the same call instead of giving up."""

    def __init__(self, run_id: str, run_dir: str, overrides: list[str], max_requeues: int):
        self.run_id = run_id
        self.run_dir = run_dir
        self.overrides = list(overrides)
        self.max_requeues = max_requeues

    def __call__(self) -> int:
        from scaling.train import run_overrides  # only inside the job: it imports torch

        code = run_overrides(self.overrides)
        if code == EXIT_REQUEUE:
            return self._requeue()
        if code != 0:
            raise RuntimeError(f"run {self.run_id} exited with code {code}; see {self.run_dir}/result.json and train.log")
        return code

    def _requeue(self) -> int:
        rank = int(os.environ.get("SLURM_PROCID", "0"))
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        if rank != 0:
            return EXIT_REQUEUE
        if restarts >= self.max_requeues:
            raise RuntimeError(
                f"run {self.run_id} was interrupted {restarts + 1} times (cluster.max_requeues={self.max_requeues}); "
                f"it has a checkpoint: relaunch the study to resume it"
            )
        job = os.environ.get("SLURM_ARRAY_JOB_ID")
        job_id = f"{job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if job else os.environ["SLURM_JOB_ID"]
        out = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
        # A failure here usually means the job is already being requeued (an admin's
        # `scontrol requeue`, or preemption): Slurm puts it back in the queue by itself.
        print(f"run {self.run_id}: checkpoint saved; scontrol requeue {job_id}: rc={out.returncode} {out.stderr.strip()}",
              flush=True)
        # Once `scontrol requeue` returns, Slurm has flagged the job for requeue: returning now ends
        # this attempt and the job goes back to the queue (as submitit's own handler does).
        return EXIT_REQUEUE

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def submit_runs(plan: Plan, runs: list[RunSpec], cluster: ClusterConfig, launcher: LauncherConfig,
                echo: Callable[[str], None] = print) -> dict[str, str]:
    """Submit `runs`; record each job id in its run directory's launch.json. Returns id -> job id."""
    import submitit

    python = cluster.python or shlex.quote(sys.executable)
    job_ids: dict[str, str] = {}
    if not runs:
        return job_ids
    if launcher.array:
        groups: dict[int, list[RunSpec]] = {}
        for r in runs:
            groups.setdefault(r.nproc, []).append(r)
        for nproc, group in groups.items():
            folder = Path(plan.dir) / "slurm" / "%j"
            # submitit 1.5 builds array jobs with its default interpreter (the one launching).
            ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=cluster.max_requeues, python=python)
            ex.update_parameters(**executor_parameters(group[0], cluster, name=f"{plan.study}-p{nproc}"),
                                 array_parallelism=launcher.array_parallelism)
            with ex.batch():
                jobs = [ex.submit(TrainJob(r.id, r.dir, _job_overrides(r, cluster), cluster.max_requeues)) for r in group]
            for r, job in zip(group, jobs):
                job_ids[r.id] = str(job.job_id)
                write_launch(r.dir, launcher="slurm", job_id=str(job.job_id), nproc=r.nproc,
                             log=str(Path(plan.dir) / "slurm" / str(job.job_id).split("_")[0]))
    else:
        for r in runs:
            folder = Path(r.dir) / "slurm"
            ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=cluster.max_requeues, python=python)
            ex.update_parameters(**executor_parameters(r, cluster))
            job = ex.submit(TrainJob(r.id, r.dir, _job_overrides(r, cluster), cluster.max_requeues))
            job_ids[r.id] = str(job.job_id)
            write_launch(r.dir, launcher="slurm", job_id=str(job.job_id), nproc=r.nproc, log=str(folder))
    echo(f"submitted {len(job_ids)} job(s): " + ", ".join(sorted(set(j.split('_')[0] for j in job_ids.values()))))
    return job_ids


def render_sbatch(run: RunSpec, cluster: ClusterConfig, study: Optional[str] = None) -> str:
    """The plain sbatch script of one run, from slurm/train.sbatch."""
    nodes, tasks, gpus = job_shape(run.nproc, cluster)
    optional = [f"#SBATCH --partition={cluster.partition}"]
    if gpus:
        optional.append(f"#SBATCH --gpus-per-node={gpus}")
    if cluster.mem_gb is not None:
        optional.append(f"#SBATCH --mem={int(math.ceil(cluster.mem_gb))}G")
    if cluster.account:
        optional.append(f"#SBATCH --account={cluster.account}")
    if cluster.qos:
        optional.append(f"#SBATCH --qos={cluster.qos}")
    for k, v in cluster.additional.items():
        flag = k.replace("_", "-")
        optional.append(f"#SBATCH --{flag}" if v is True else f"#SBATCH --{flag}={v}")
    overrides = _job_overrides(run, cluster)
    values = dict(
        study=study or run.overrides[-1].split("=", 1)[-1],
        job_name=run.id,
        run_dir=run.dir,
        nodes=nodes,
        tasks_per_node=tasks,
        cpus_per_task=cluster.cpus_per_task,
        time_limit_min=cluster.time_limit_min,
        signal_delay_s=cluster.signal_delay_s,
        max_requeues=cluster.max_requeues,
        optional="\n".join(optional),
        setup="\n".join(cluster.setup),
        python=cluster.python or shlex.quote(sys.executable),
        overrides=" \\\n".join("    " + shlex.quote(o) for o in overrides),
    )
    Path(run.dir, "slurm").mkdir(parents=True, exist_ok=True)  # sbatch does not create the log folder
    return Template(TEMPLATE.read_text()).substitute(values)
