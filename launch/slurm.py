"""The Slurm launcher, through submitit: one job per run (or one job array per resource shape).

Each job starts one task per process with srun (one per GPU on a GPU cluster); every task calls
`scaling.train.run_overrides` on the run's overrides and joins the DeepSpeed world from Slurm's
environment. Submitting does not block; `scaling-status STUDY_DIR` follows the jobs.

A run's job is described once, by a `SlurmJob` (resources, signal and requeue settings, setup,
interpreter and overrides): submit_runs hands it to submitit, and launcher.print_script=true
renders the same job as a plain sbatch script (slurm/train.sbatch).

Preemption and time limits
--------------------------
Slurm sends SIGUSR2 `cluster.signal_delay_s` before the time limit, and SIGTERM on preemption
or `scontrol requeue`. The trainer catches both: every rank saves a checkpoint and returns 75.
`TrainJob` then requeues the job (rank 0 runs `scontrol requeue`, retried a few times if it
fails), at most `cluster.max_requeues` times, counted by Slurm's SLURM_RESTART_COUNT. The
requeued job runs the same pickled call with the same overrides, so it resumes in the same run
directory, from that checkpoint, in the same wandb run. When the requeues are used up the job fails and the run is `partial`: a relaunch of
the study resumes it.

A job the user cancelled (`scancel`, with any signal) is never requeued: its tasks get SIGTERM and
checkpoint as on preemption, but Slurm would accept `scontrol requeue` even for a cancelled job
and start it again. Its run is `partial`, and a relaunch of the study resumes it (see `cancelled`).

Cooldown branches
-----------------
A branch's job is submitted with its trunk's and polls for the trunk's checkpoint at its fork step
(every `FORK_POLL_S`) before it trains, so it starts as soon as the trunk has passed the fork
(`afterok` would wait for the whole trunk). A trunk killed meanwhile leaves it polling until a
relaunch has resumed the trunk; a trunk that ends without that checkpoint fails the job, saying
why. Once the branch has completed, the job rotates its trunk's checkpoints (`release_fork`): a
fork point that no branch needs any more goes as any other checkpoint does.

Importing this module does not import torch or DeepSpeed: the trainer is imported inside the job.
"""

from __future__ import annotations

import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from string import Template
from typing import Any, Callable, Optional

from scaling.launch.config import ClusterConfig, LauncherConfig
from scaling.launch.plan import Plan, RunSpec
from scaling.launch.state import fork_checkpoint, release_fork, wait_for_fork, write_launch
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


# Exported before srun in both the submitted and the printed script (submitit also runs `python -u`).
ENV = (("PYTHONUNBUFFERED", "1"),)
# How often a cooldown branch's job looks for its trunk's fork checkpoint (a stat of one file).
FORK_POLL_S = 30.0
# `scontrol requeue` can fail for a moment (slurmctld busy or restarting): this many tries, waiting
# 1 s, 2 s, 4 s... between them (in TrainJob and in the printed script alike).
REQUEUE_TRIES = 3
# Accounting can record how Slurm ended a job a moment after squeue shows it ending: this many looks,
# 1 s apart, before a job is taken as not cancelled (in TrainJob and in the printed script alike).
ACCOUNTING_TRIES = 5


@dataclass(frozen=True)
class SlurmJob:
    """One Slurm job, as sbatch is told it: built once by `SlurmJob.of` from a run and the cluster.

    What submit_runs submits (`submitit_parameters`, `executor`) and what launcher.print_script=true
    prints (`sbatch_script`) are both read from it, so the two cannot drift; a test checks that
    every field shows the same in both. They differ only in how each task starts: submitit's srun
    runs its pickled `TrainJob`; the printed script's srun (with --kill-on-bad-exit) runs
    `scaling.train`, and the script requeues in bash."""

    name: str  # --job-name
    log_dir: str  # where the job's output goes (submitit's folder)
    nodes: int
    tasks_per_node: int  # one per GPU (per process on a CPU cluster)
    gpus_per_node: int  # 0: none requested
    cpus_per_task: int
    mem_gb: Optional[int]  # per node; None: the partition's default
    time_limit_min: int
    partition: str
    account: Optional[str]
    qos: Optional[str]
    signal_delay_s: int  # SIGUSR2 this long before the time limit (the job always has --requeue)
    max_requeues: int  # requeues after a checkpoint, counted by SLURM_RESTART_COUNT
    additional: tuple[tuple[str, Any], ...]  # more sbatch flags (cluster.additional), e.g. constraint
    setup: tuple[str, ...]  # shell lines run before srun
    env: tuple[tuple[str, str], ...]  # exported after the setup lines
    python: str  # the interpreter command every task runs
    overrides: tuple[str, ...]  # the trainer's overrides
    # A cooldown branch's (trunk checkpoint at its fork step, seconds between looks): the job waits
    # for it before training, and rotates the trunk's checkpoints once it has completed; None
    # for any other run.
    fork: Optional[tuple[str, float]] = None

    @classmethod
    def of(cls, run: RunSpec, cluster: ClusterConfig) -> "SlurmJob":
        nodes, tasks, gpus = job_shape(run.nproc, cluster)
        return cls(
            name=run.id,
            log_dir=str(Path(run.dir) / "slurm"),
            nodes=nodes,
            tasks_per_node=tasks,
            gpus_per_node=gpus,
            cpus_per_task=cluster.cpus_per_task,
            mem_gb=None if cluster.mem_gb is None else int(math.ceil(cluster.mem_gb)),
            time_limit_min=cluster.time_limit_min,
            partition=cluster.partition,
            account=cluster.account or None,
            qos=cluster.qos or None,
            signal_delay_s=cluster.signal_delay_s,
            max_requeues=cluster.max_requeues,
            additional=tuple(cluster.additional.items()),
            setup=tuple(cluster.setup),
            env=ENV,
            python=cluster.python or shlex.quote(sys.executable),
            # Without cgroups every task sees all of the node's cores; keep each to its allocation.
            overrides=(*run.overrides, f"train.num_threads={cluster.cpus_per_task}"),
            fork=None if (ckpt := fork_checkpoint(run)) is None else (str(ckpt), FORK_POLL_S),
        )

    @property
    def mem(self) -> Optional[str]:
        """--mem, as submitit writes it."""
        return None if self.mem_gb is None else f"{self.mem_gb}GB"

    def shell_setup(self) -> list[str]:
        """The lines run before srun: the cluster's setup, then the exports."""
        return [*self.setup, *(f"export {k}={shlex.quote(v)}" for k, v in self.env)]

    def submitit_parameters(self) -> dict[str, Any]:
        """`SlurmExecutor.update_parameters(**this)`: submitit writes the #SBATCH lines from these."""
        params: dict[str, Any] = dict(
            job_name=self.name,
            partition=self.partition,
            time=self.time_limit_min,
            nodes=self.nodes,
            ntasks_per_node=self.tasks_per_node,
            cpus_per_task=self.cpus_per_task,
            gpus_per_node=self.gpus_per_node or None,
            mem=self.mem,
            account=self.account,
            qos=self.qos,
            signal_delay_s=self.signal_delay_s,
            setup=self.shell_setup(),
            additional_parameters={"requeue": True, **dict(self.additional)},
            stderr_to_stdout=True,
        )
        return {k: v for k, v in params.items() if v is not None}

    def executor(self, **extra: Any) -> Any:
        """A `submitit.SlurmExecutor` for this job; `extra` adds parameters (array_parallelism)."""
        import submitit

        ex = submitit.SlurmExecutor(folder=self.log_dir, max_num_timeout=self.max_requeues, python=self.python)
        ex.update_parameters(**self.submitit_parameters(), **extra)
        return ex

    def train_job(self, run: RunSpec) -> "TrainJob":
        """The callable submitit pickles and runs in every task of this job."""
        checkpoint, poll_s = self.fork or (None, FORK_POLL_S)
        return TrainJob(run.id, run.dir, list(self.overrides), self.max_requeues, fork_checkpoint=checkpoint,
                        fork_poll_s=poll_s)

    def sbatch_flags(self) -> dict[str, Any]:
        """The printed script's #SBATCH flags, in sbatch's names (True: a flag without a value)."""
        flags: dict[str, Any] = {
            "job-name": self.name,
            "output": f"{self.log_dir}/%j.out",
            "open-mode": "append",
            "nodes": self.nodes,
            "ntasks-per-node": self.tasks_per_node,
            "cpus-per-task": self.cpus_per_task,
            "time": self.time_limit_min,
            "signal": f"USR2@{self.signal_delay_s}",
            "requeue": True,
            "partition": self.partition,
            "gpus-per-node": self.gpus_per_node or None,
            "mem": self.mem,
            "account": self.account,
            "qos": self.qos,
        }
        flags.update({k.replace("_", "-"): v for k, v in self.additional})
        return {k: v for k, v in flags.items() if v is not None}

    def sbatch_script(self, study: str) -> str:
        """The plain sbatch script of this job, from slurm/train.sbatch."""
        # Written as submitit writes its own: `--flag` for True, else `--flag=VALUE`, shell-quoted.
        sbatch = [f"#SBATCH --{k}" if v is True else f"#SBATCH --{k}={shlex.quote(str(v))}"
                  for k, v in self.sbatch_flags().items()]  # fmt: skip
        values = dict(
            study=study,
            signal_delay_s=self.signal_delay_s,
            max_requeues=self.max_requeues,
            requeue_tries=REQUEUE_TRIES,
            accounting_tries=ACCOUNTING_TRIES,
            sbatch="\n".join(sbatch),
            setup="\n".join(self.shell_setup()),
            python=self.python,
            overrides=" \\\n".join("    " + shlex.quote(o) for o in self.overrides),
            fork_wait="", fork_release="",
        )
        if self.fork is not None:
            checkpoint, poll_s = self.fork
            run_dir = next(o.split("=", 1)[1] for o in self.overrides if o.startswith("run.dir="))
            state = f"{self.python} -m scaling.launch.state"
            values["fork_wait"] = (
                "# A cooldown branch: it starts from its trunk's checkpoint at the fork step, and waits for\n"
                f"# it (looking every {poll_s:g} s) if the trunk has not got there yet.\n"
                f"{state} wait-fork {shlex.quote(run_dir)} {shlex.quote(checkpoint)} --poll-s {poll_s:g} || exit 1\n\n")
            values["fork_release"] = (
                "# Completed: the trunk's checkpoints are rotated, in which this fork point may now go.\n"
                f"if [ $code -eq 0 ]; then {state} release-fork {shlex.quote(checkpoint)}; fi\n")
        return Template(TEMPLATE.read_text()).substitute(values)


class TrainJob:
    """The callable submitit pickles: trains one run in each task, requeues on code 75.

    It has a `checkpoint` method, so submitit's own SIGUSR2 handler (active whenever the trainer's
    is not) also requeues the same call instead of giving up."""

    def __init__(self, run_id: str, run_dir: str, overrides: list[str], max_requeues: int,
                 fork_checkpoint: Optional[str] = None, fork_poll_s: float = FORK_POLL_S):
        self.run_id = run_id
        self.run_dir = run_dir
        self.overrides = list(overrides)
        self.max_requeues = max_requeues
        # A cooldown branch's start, its trunk's checkpoint: a branch job submitted with its trunk
        # polls for it (afterok would wait for the whole trunk), then trains. Once it has
        # completed, it rotates the trunk's checkpoints, in which that fork point may now go.
        self.fork_checkpoint = fork_checkpoint
        self.fork_poll_s = fork_poll_s

    def __call__(self) -> int:
        from scaling.train import run_overrides  # only inside the job: it imports torch

        # getattr: a job pickled by an earlier version, requeued, lacks the newer attributes.
        fork = getattr(self, "fork_checkpoint", None)
        why = wait_for_fork(self.run_dir, fork, poll_s=getattr(self, "fork_poll_s", FORK_POLL_S),
                            echo=lambda s: print(f"run {self.run_id}: {s}", flush=True))  # fmt: skip
        if why is not None:
            raise RuntimeError(f"run {self.run_id} (a cooldown branch) cannot start: {why}")
        code = run_overrides(self.overrides)
        if code == EXIT_REQUEUE:
            return self._requeue()
        if code != 0:
            raise RuntimeError(f"run {self.run_id} exited with code {code}; see {self.run_dir}/result.json and train.log")
        if int(os.environ.get("SLURM_PROCID", "0")) == 0:
            for path in release_fork(fork):
                print(f"run {self.run_id}: its trunk's checkpoints rotated: removed {path}", flush=True)
        return code

    def _requeue(self) -> int:
        rank = int(os.environ.get("SLURM_PROCID", "0"))
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        if rank != 0:
            return EXIT_REQUEUE
        job = os.environ.get("SLURM_ARRAY_JOB_ID")
        job_id = f"{job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if job else os.environ["SLURM_JOB_ID"]
        if cancelled(job_id):
            print(f"run {self.run_id}: checkpoint saved; job {job_id} was cancelled, so it is not requeued: "
                  f"relaunch the study to resume it", flush=True)  # fmt: skip
            return EXIT_REQUEUE
        if restarts >= self.max_requeues:
            raise RuntimeError(
                f"run {self.run_id} was interrupted {restarts + 1} times (cluster.max_requeues={self.max_requeues}); "
                f"it has a checkpoint: relaunch the study to resume it"
            )
        out = _scontrol_requeue(job_id, self.run_id)
        # A failure after the retries usually means the job is already being requeued (an admin's
        # `scontrol requeue`, or preemption): Slurm puts it back in the queue by itself.
        print(f"run {self.run_id}: checkpoint saved; scontrol requeue {job_id}: rc={out.returncode} {out.stderr.strip()}",
              flush=True)
        # Once `scontrol requeue` returns, Slurm has flagged the job for requeue: returning now ends
        # this attempt and the job goes back to the queue (as submitit's own handler does).
        return EXIT_REQUEUE

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def _slurm_says(*cmd: str) -> str:
    """The last line a Slurm client command prints, or "" when it fails (no such job, no accounting)."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True)
    except OSError:
        return ""
    lines = out.stdout.strip().splitlines() if out.returncode == 0 else []
    return lines[-1].strip() if lines else ""


def cancelled(job_id: str) -> bool:
    """Whether the user cancelled job `job_id` (scancel): such a job is never requeued.

    Neither the signal nor the queue tells: scancel sends SIGTERM as preemption and `scontrol
    requeue` do, and squeue and scontrol show any job Slurm is ending as COMPLETING. Accounting
    does: sacct's State reads `CANCELLED by UID` from the moment of the cancel. A job squeue still
    shows RUNNING was only signalled (the time-limit warning, `scancel --signal=USR2`). When sacct
    still says RUNNING of a job that is ending, its record is late: look again, ACCOUNTING_TRIES
    times, 1 s apart. A job whose state cannot be read (no accounting) is taken as not cancelled,
    so it is requeued."""
    for attempt in range(ACCOUNTING_TRIES):
        if _slurm_says("squeue", "-h", "-j", job_id, "-o", "%T") == "RUNNING":
            return False
        state = _slurm_says("sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State")
        if state != "RUNNING":
            return state.startswith("CANCELLED")
        if attempt + 1 < ACCOUNTING_TRIES:
            time.sleep(1)
    return False


def _scontrol_requeue(job_id: str, run_id: str) -> subprocess.CompletedProcess:
    """`scontrol requeue JOB_ID`, tried up to REQUEUE_TRIES times while it fails (slurmctld can be
    busy or restarting for a moment), waiting 1 s, 2 s, 4 s... between tries. Each failed try is
    printed to the job's log; the last try's result is returned."""

    def requeue() -> subprocess.CompletedProcess:
        return subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)

    out = requeue()
    for attempt in range(1, REQUEUE_TRIES):
        if out.returncode == 0:
            break
        delay_s = 2 ** (attempt - 1)
        print(f"run {run_id}: scontrol requeue {job_id} failed (try {attempt} of {REQUEUE_TRIES}, "
              f"rc={out.returncode}: {out.stderr.strip()}); retrying in {delay_s} s", flush=True)
        time.sleep(delay_s)
        out = requeue()
    return out


def submit_runs(plan: Plan, runs: list[RunSpec], cluster: ClusterConfig, launcher: LauncherConfig,
                echo: Callable[[str], None] = print) -> dict[str, str]:
    """Submit `runs`; record each job id in its run directory's launch.json. Returns id -> job id."""
    job_ids: dict[str, str] = {}
    if not runs:
        return job_ids
    slurm_jobs = {r.id: SlurmJob.of(r, cluster) for r in runs}
    if launcher.array:
        groups: dict[int, list[RunSpec]] = {}
        for r in runs:
            groups.setdefault(r.nproc, []).append(r)
        for nproc, group in groups.items():
            # One array per resource shape: the runs of a group differ only in their overrides.
            array = replace(slurm_jobs[group[0].id], name=f"{plan.study}-p{nproc}",
                            log_dir=str(Path(plan.dir) / "slurm" / "%j"))
            # submitit 1.5 builds array jobs with its default interpreter (the one launching).
            ex = array.executor(array_parallelism=launcher.array_parallelism)
            with ex.batch():
                submitted = [ex.submit(slurm_jobs[r.id].train_job(r)) for r in group]
            for r, job in zip(group, submitted):
                job_ids[r.id] = str(job.job_id)
                write_launch(r.dir, launcher="slurm", job_id=str(job.job_id), nproc=r.nproc,
                             log=str(Path(plan.dir) / "slurm" / str(job.job_id).split("_")[0]))
    else:
        for r in runs:
            slurm_job = slurm_jobs[r.id]
            job = slurm_job.executor().submit(slurm_job.train_job(r))
            job_ids[r.id] = str(job.job_id)
            write_launch(r.dir, launcher="slurm", job_id=str(job.job_id), nproc=r.nproc, log=slurm_job.log_dir)
    echo(f"submitted {len(job_ids)} job(s): " + ", ".join(sorted(set(j.split('_')[0] for j in job_ids.values()))))
    return job_ids


def render_sbatch(run: RunSpec, cluster: ClusterConfig, study: Optional[str] = None) -> str:
    """The plain sbatch script of one run (launcher.print_script=true): `SlurmJob.sbatch_script`."""
    job = SlurmJob.of(run, cluster)
    Path(job.log_dir).mkdir(parents=True, exist_ok=True)  # sbatch does not create the log folder
    return job.sbatch_script(study or run.overrides[-1].split("=", 1)[-1])  # the last override is run.group
