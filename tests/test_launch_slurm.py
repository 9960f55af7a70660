"""The Slurm launcher's pure parts, without a cluster: job shapes (one task per GPU, over nodes),
one SlurmJob from the cluster config, and what it gives submitit and the rendered sbatch script,
checked to agree field by field (against the files submitit writes, with fake srun and sbatch)."""

from __future__ import annotations

import dataclasses
import os
import pickle
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from scaling.launch.config import (BudgetsConfig, ClusterConfig, LauncherConfig, SizesConfig, StudySpec, register_configs,
                                   to_dataclass)  # fmt: skip
from scaling.launch.plan import CONF_DIR, make_plan
from scaling.launch.slurm import ACCOUNTING_TRIES, REQUEUE_TRIES, SlurmJob, TrainJob, job_shape, render_sbatch, submit_runs
from scaling.errors import ConfigError
from scaling.rundir import EXIT_REQUEUE


def gpu_cluster() -> ClusterConfig:
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = to_dataclass(compose(config_name="study_app", overrides=["launcher=slurm", "cluster=example_gpu"]))
    return cfg.cluster


def test_runs_get_one_task_per_gpu_over_as_many_nodes_as_needed():
    c = gpu_cluster()
    assert job_shape(1, c) == (1, 1, 1)
    assert job_shape(8, c) == (1, 8, 8)
    assert job_shape(16, c) == (2, 8, 8)
    cpu = ClusterConfig(partition="debug")
    assert job_shape(2, cpu) == (1, 2, 0)
    assert job_shape(4, ClusterConfig(partition="debug", tasks_per_node=2)) == (2, 2, 0)
    assert job_shape(12, ClusterConfig(partition="p", gpus_per_node=8, nodes=3)) == (3, 4, 4)
    with pytest.raises(ConfigError, match="study.nproc=10 does not split evenly over 3 node"):
        job_shape(10, ClusterConfig(partition="p", gpus_per_node=8, nodes=3))
    with pytest.raises(ConfigError, match="needs 16 tasks per node, but a node takes 8"):
        job_shape(32, ClusterConfig(partition="p", gpus_per_node=8, nodes=2))


def big_run(tmp_path, monkeypatch, targets=(2e4,)):
    """A plan of 16-process runs (2 nodes of 8 GPUs on the example cluster), one per target size."""
    monkeypatch.setenv("SCALING_CACHE", str(tmp_path / "cache"))
    spec = StudySpec(name="big", data="synthetic", sizes=SizesConfig(targets=list(targets)),
                     budgets=BudgetsConfig(flops=[1e11]), nproc=16, dir=str(tmp_path / "s"))  # fmt: skip
    return make_plan(spec)


def test_executor_parameters_and_sbatch_script_come_from_the_cluster_config(tmp_path, monkeypatch):
    run = big_run(tmp_path, monkeypatch).runs[0]
    c = gpu_cluster()
    c.account, c.qos = "proj42", "high"
    p = SlurmJob.of(run, c).submitit_parameters()
    assert (p["nodes"], p["ntasks_per_node"], p["gpus_per_node"]) == (2, 8, 8)
    assert p["partition"] == "gpu" and p["account"] == "proj42" and p["qos"] == "high" and p["mem"] == "200GB"
    assert p["time"] == c.time_limit_min and p["signal_delay_s"] == c.signal_delay_s
    assert p["setup"][: len(c.setup)] == c.setup and p["additional_parameters"]["requeue"] is True

    script = render_sbatch(run, c, study="big")
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --partition=gpu", "#SBATCH --account=proj42", "#SBATCH --qos=high", "#SBATCH --mem=200GB",
                 f"#SBATCH --signal=USR2@{c.signal_delay_s}", "#SBATCH --requeue", c.setup[0],
                 f"-lt {c.max_requeues}", "srun --kill-on-bad-exit=1"):  # fmt: skip
        assert line in script, line
    assert "${" not in script.replace("${SLURM_RESTART_COUNT:-0}", "")  # every placeholder filled
    for o in run.overrides:
        assert o in script
    path = tmp_path / "x.sbatch"
    path.write_text(script)
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0


def test_the_job_callable_pickles_without_torch(tmp_path):
    job = TrainJob("r", str(tmp_path), ["a=1"], 3)
    back = pickle.loads(pickle.dumps(job))
    assert back.overrides == ["a=1"] and back.max_requeues == 3
    assert callable(back.checkpoint)


# What the submitted and the printed script say about each SlurmJob field, read back from the text
# (and, for submitit, from the pickled call): the test below checks that every field reads the same
# in both, and that changing one field changes it in both.
_NAMED_FLAGS = {"job-name", "output", "open-mode", "nodes", "ntasks-per-node", "cpus-per-task", "time", "signal",
                "requeue", "partition", "gpus-per-node", "mem", "account", "qos"}  # fmt: skip


def sbatch_flags(text: str) -> dict[str, object]:
    flags = {}
    for line in text.splitlines():
        if line.startswith("#SBATCH --"):
            key, eq, value = line[len("#SBATCH --"):].partition("=")
            flags[key] = shlex.split(value)[0] if eq else True
    return flags


def lines_after(text: str, marker: str) -> list[str]:
    """The lines after `marker`, up to the next blank line."""
    lines = text.splitlines()
    block = lines[lines.index(marker) + 1:]
    return block[: block.index("")]


def read_job(flags: dict, setup: list[str], python: str, overrides: list[str], max_requeues: int,
             fork: tuple | None) -> dict:
    """Every SlurmJob field, as a script shows it."""
    exports = [shlex.split(l[len("export "):])[0].split("=", 1) for l in setup if l.startswith("export ")]
    return dict(
        name=flags["job-name"],
        log_dir=os.path.dirname(flags["output"]),
        nodes=int(flags["nodes"]),
        tasks_per_node=int(flags["ntasks-per-node"]),
        gpus_per_node=int(flags.get("gpus-per-node", 0)),
        cpus_per_task=int(flags["cpus-per-task"]),
        mem_gb=int(flags["mem"].removesuffix("GB")) if "mem" in flags else None,
        time_limit_min=int(flags["time"]),
        partition=flags["partition"],
        account=flags.get("account"),
        qos=flags.get("qos"),
        signal_delay_s=int(flags["signal"].removeprefix("USR2@")),
        max_requeues=max_requeues,
        additional=tuple(sorted((k, v) for k, v in flags.items() if k not in _NAMED_FLAGS)),
        setup=tuple(l for l in setup if not l.startswith("export ")),
        env=tuple((k, v) for k, v in exports),
        python=python,
        overrides=tuple(overrides),
        fork=fork,
    )


def printed(job: SlurmJob) -> tuple[dict, dict]:
    """(flags, fields) of the script launcher.print_script=true prints."""
    text = job.sbatch_script("big")
    command = text[text.index("srun "):text.index("code=$?")].replace("\\\n", " ")
    python, args = re.fullmatch(r"srun --kill-on-bad-exit=1 (.*) -m scaling\.train (.*)", command.strip()).groups()
    max_requeues = int(re.search(r'SLURM_RESTART_COUNT:-0}" -lt (\d+) \]', text).group(1))
    flags = sbatch_flags(text)
    fork = None
    wait = re.search(r"^(.*) -m scaling\.launch\.state wait-fork (.*) \|\| exit 1$", text, re.M)
    if wait is not None:  # a branch: it waits for its fork checkpoint, and releases the same one
        assert wait.group(1) == python
        run_dir, checkpoint, _, poll_s = shlex.split(wait.group(2))
        assert f"run.dir={run_dir}" in shlex.split(args)
        release = re.search(r"^if \[ \$code -eq 0 \]; then (.*) -m scaling\.launch\.state release-fork (.*); fi$",
                            text, re.M)
        assert release.group(1) == python and shlex.split(release.group(2)) == [checkpoint]
        assert text.index("wait-fork") < text.index("srun ") < text.index("release-fork") < text.index("cancelled()")
        fork = (checkpoint, float(poll_s))
    else:
        assert "release-fork" not in text
    return flags, read_job(flags, lines_after(text, "set -u"), python, shlex.split(args), max_requeues, fork)


def submitted(folder: Path, job_id: str) -> tuple[dict, dict]:
    """(flags, fields) of what submitit submitted as `job_id`: its sbatch file and pickled call."""
    text = (folder / f"{job_id}_submission.sh").read_text()
    with open(folder / f"{job_id}_submitted.pkl", "rb") as f:
        delayed = pickle.load(f)
    call = delayed.function
    assert isinstance(call, TrainJob) and call.max_requeues == delayed._timeout_countdown  # submitit's own count
    python = re.search(r"^srun --unbuffered --output \S+ (.*) -u -m submitit\.core\._submit ", text, re.M).group(1)
    flags = sbatch_flags(text)
    assert flags.pop("wckey") == "submitit"  # submitit's accounting tag, the one flag the printed script lacks
    fork = (call.fork_checkpoint, call.fork_poll_s) if call.fork_checkpoint is not None else None
    return flags, read_job(flags, lines_after(text, "# setup"), python, call.overrides, call.max_requeues, fork)


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """srun (submitit looks for it), an sbatch that accepts anything, numbering jobs from 101, and a
    running job as squeue and sacct see it (a job only signalled, as by the time-limit warning)."""
    bin_dir = tmp_path / "fake-slurm"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sbatch").write_text(
        f'#!/bin/sh\nn=$(cat {bin_dir}/last 2>/dev/null || echo 100); n=$((n + 1)); echo $n > {bin_dir}/last\n'
        'echo "Submitted batch job $n"\n'
    )
    fake_job_state(bin_dir, "RUNNING", ["RUNNING"])
    for exe in bin_dir.iterdir():
        exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return bin_dir


def fake_job_state(bin_dir: Path, queue: str, accounting: list[str]) -> None:
    """squeue shows the job as `queue` ("": gone); sacct answers `accounting`, one line per call,
    the last repeated ("": sacct fails, as without accounting)."""
    (bin_dir / "squeue").write_text(f'#!/bin/sh\necho "{queue}"\n')
    answers, calls = bin_dir / "sacct.answers", bin_dir / "sacct.calls"
    answers.write_text("\n".join(accounting) + "\n")
    calls.write_text("")
    (bin_dir / "sacct").write_text(
        f'#!/bin/sh\necho >> {calls}; n=$(wc -l < {calls}); last=$(wc -l < {answers})\n'
        f'state=$(sed -n "$(( n < last ? n : last ))p" {answers})\n'
        '[ -n "$state" ] || exit 1\necho "$state"\n'
    )
    for name in ("squeue", "sacct"):
        (bin_dir / name).chmod(0o755)


def fake_sleep(bin_dir: Path) -> Path:
    """A sleep that returns at once; each call is one line in the log."""
    log = bin_dir / "sleep.log"
    log.write_text("")
    (bin_dir / "sleep").write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    (bin_dir / "sleep").chmod(0o755)
    return log


def agree(job: SlurmJob, run) -> dict:
    """Submit `job` (to the fake sbatch) and print it; both must read back as `job`, flag for flag."""
    sub = job.executor().submit(job.train_job(run))
    sub_flags, sub_fields = submitted(Path(job.log_dir), str(sub.job_id))
    prn_flags, prn_fields = printed(job)
    want = dataclasses.asdict(job)
    want["additional"] = tuple(sorted((k.replace("_", "-"), v) for k, v in job.additional))
    assert sub_fields == want
    assert prn_fields == want
    # The same #SBATCH lines, but for the log's file name inside log_dir (submitit names its own).
    del sub_flags["output"], prn_flags["output"]
    assert sub_flags == prn_flags and sub_flags["requeue"] is True and sub_flags["open-mode"] == "append"
    return want


def test_the_submitted_and_the_printed_job_agree_on_every_field(tmp_path, monkeypatch, fake_slurm):
    run = big_run(tmp_path, monkeypatch).runs[0]
    c = gpu_cluster()
    c.account, c.qos, c.setup = "proj42", "high", ["module load cuda", "source .venv/bin/activate"]
    c.additional = {"constraint": "a100|h100", "mail_type": "END"}
    job = SlurmJob.of(run, c)
    assert (job.nodes, job.tasks_per_node, job.gpus_per_node, job.mem_gb) == (2, 8, 8, 200)
    before = agree(job, run)

    # One new value per field: each shows in both scripts, and nothing else moves.
    changed = dict(
        name="other-name", log_dir=str(tmp_path / "elsewhere"), nodes=3, tasks_per_node=2, gpus_per_node=2,
        cpus_per_task=4, mem_gb=64, time_limit_min=17, partition="other", account="acct2", qos="low",
        signal_delay_s=33, max_requeues=7, additional=(("constraint", "h100"), ("exclusive", True)),
        setup=("module load nccl",), env=(("PYTHONUNBUFFERED", "1"), ("NCCL_DEBUG", "INFO")),
        python="/opt/py/bin/python3 -X faulthandler", overrides=(*job.overrides, "train.seed=7"),
        fork=(str(tmp_path / "trunk" / "checkpoints" / "step00000012"), 5.0),
    )  # fmt: skip
    assert set(changed) == {f.name for f in dataclasses.fields(SlurmJob)}, "a new SlurmJob field needs a value here"
    for name, value in changed.items():
        assert getattr(job, name) != value, name
        after = agree(dataclasses.replace(job, **{name: value}), run)
        assert {k for k in after if after[k] != before[k]} == {name}, name
    for name in ("account", "qos", "mem_gb"):  # optional flags: left out of both when unset
        none = dataclasses.replace(job, **{name: None})
        assert agree(none, run)[name] is None
    assert agree(dataclasses.replace(job, gpus_per_node=0), run)["gpus_per_node"] == 0


def test_submit_runs_submits_the_job_the_cluster_config_describes(tmp_path, monkeypatch, fake_slurm):
    plan = big_run(tmp_path, monkeypatch, targets=(5e3, 2e4))
    assert len(plan.runs) == 2
    c = gpu_cluster()
    c.python = "/opt/py/bin/python3"
    ids = submit_runs(plan, plan.runs, c, LauncherConfig(name="slurm"), echo=lambda s: None)
    for run in plan.runs:
        job = SlurmJob.of(run, c)
        _, fields = submitted(Path(run.dir) / "slurm", ids[run.id])
        assert fields == {**dataclasses.asdict(job), "additional": ()}
        assert printed(job)[1] == fields

    # One array per shape: the same job but for its name and log folder, and each run's own call.
    array_launcher = LauncherConfig(name="slurm", array=True, array_parallelism=1)
    ids = submit_runs(plan, plan.runs, c, array_launcher, echo=lambda s: None)
    (array_id,) = {j.split("_")[0] for j in ids.values()}
    folder = Path(plan.dir) / "slurm"
    flags = sbatch_flags((folder / array_id / f"{array_id}_submission.sh").read_text())
    assert flags.pop("array") == "0-1%1" and flags.pop("wckey") == "submitit"
    array = dataclasses.replace(SlurmJob.of(plan.runs[0], c), name=f"{plan.study}-p16", log_dir=str(folder / "%j"))
    want = printed(array)[0]
    del flags["output"], want["output"]
    assert flags == want
    for run in plan.runs:
        with open(folder / ids[run.id] / f"{ids[run.id]}_submitted.pkl", "rb") as f:
            call = pickle.load(f).function
        assert (call.run_id, call.overrides, call.max_requeues) == (run.id, list(SlurmJob.of(run, c).overrides), c.max_requeues)


def fake_scontrol(bin_dir: Path, failures: int) -> Path:
    """An scontrol that fails `failures` times, then succeeds; each call is one line in the log."""
    log = bin_dir / "scontrol.log"
    log.write_text("")
    (bin_dir / "scontrol").write_text(
        f'#!/bin/sh\necho "$@" >> {log}\n'
        f'[ $(wc -l < {log}) -gt {failures} ] || {{ echo "Socket timed out on send/recv operation" >&2; exit 1; }}\n'
    )
    (bin_dir / "scontrol").chmod(0o755)
    return log


@pytest.mark.parametrize("failures", [0, 2, REQUEUE_TRIES])
def test_requeue_retries_a_failing_scontrol_with_a_backoff(tmp_path, monkeypatch, capsys, fake_slurm, failures):
    log = fake_scontrol(fake_slurm, failures)
    sleeps = []
    monkeypatch.setattr("scaling.launch.slurm.time.sleep", sleeps.append)
    for k, v in dict(SLURM_PROCID="0", SLURM_RESTART_COUNT="0", SLURM_JOB_ID="77").items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    # Requeued once a try succeeds, and still code 75 when every try fails (Slurm may be requeueing it).
    assert TrainJob("r", str(tmp_path), [], 3)._requeue() == EXIT_REQUEUE
    tries = min(failures + 1, REQUEUE_TRIES)
    assert log.read_text().splitlines() == ["requeue 77"] * tries
    assert sleeps == [1, 2, 4][: tries - 1]
    out = capsys.readouterr().out
    assert out.count("Socket timed out") == min(failures, REQUEUE_TRIES)
    if tries > 1:
        assert f"try {tries - 1} of {REQUEUE_TRIES}" in out and f"retrying in {2 ** (tries - 2)} s" in out
    else:
        assert "failed" not in out
    assert f"rc={0 if failures < REQUEUE_TRIES else 1}" in out.splitlines()[-1]


def test_the_printed_script_requeues_on_code_75_with_the_same_retries(tmp_path, monkeypatch, fake_slurm):
    run = big_run(tmp_path, monkeypatch).runs[0]
    log = fake_scontrol(fake_slurm, 2)
    (fake_slurm / "srun").write_text("#!/bin/sh\nexit 75\n")  # every task checkpointed and asks for a requeue
    sleeps = fake_sleep(fake_slurm)
    path = tmp_path / "run.sbatch"
    path.write_text(render_sbatch(run, gpu_cluster(), study="big").replace("source .venv/bin/activate", ""))
    env = {**os.environ, "SLURM_JOB_ID": "88", "SLURM_RESTART_COUNT": "0"}
    out = subprocess.run(["bash", str(path)], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert log.read_text().splitlines() == ["requeue 88"] * 3
    assert sleeps.read_text().split() == ["1", "2"]


# (squeue's state, sacct's answers, requeued): how a job that checkpointed on a signal was ended.
ENDINGS = {
    "the time-limit warning": ("RUNNING", ["RUNNING"], True),
    "scancel": ("COMPLETING", ["CANCELLED by 0"], False),
    "scancel, recorded late": ("COMPLETING", ["RUNNING", "RUNNING", "CANCELLED by 0"], False),
    "scontrol requeue or preemption": ("COMPLETING", ["REQUEUED"], True),
    "the time limit itself": ("COMPLETING", ["TIMEOUT"], True),
    "no accounting": ("COMPLETING", [""], True),
}


@pytest.mark.parametrize("ending", ENDINGS)
def test_a_cancelled_job_is_not_requeued_by_the_job_nor_by_the_printed_script(tmp_path, monkeypatch, capsys,
                                                                            fake_slurm, ending):
    queue, accounting, requeued = ENDINGS[ending]
    log = fake_scontrol(fake_slurm, 0)
    looks = min(len(accounting), ACCOUNTING_TRIES) if queue != "RUNNING" else 0
    sleeps = []
    monkeypatch.setattr("scaling.launch.slurm.time.sleep", sleeps.append)
    for k, v in dict(SLURM_PROCID="0", SLURM_RESTART_COUNT="0", SLURM_JOB_ID="77").items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    fake_job_state(fake_slurm, queue, accounting)
    assert TrainJob("r", str(tmp_path), [], 3)._requeue() == EXIT_REQUEUE
    assert log.read_text().splitlines() == (["requeue 77"] if requeued else [])
    assert sleeps == [1] * max(looks - 1, 0)
    assert ("not requeued" in capsys.readouterr().out) != requeued

    # The printed script decides the same.
    log.write_text("")
    fake_job_state(fake_slurm, queue, accounting)
    script_sleeps = fake_sleep(fake_slurm)
    (fake_slurm / "srun").write_text("#!/bin/sh\nexit 75\n")
    path = tmp_path / "run.sbatch"
    path.write_text(render_sbatch(big_run(tmp_path, monkeypatch).runs[0], gpu_cluster(), study="big")
                    .replace("source .venv/bin/activate", ""))  # fmt: skip
    out = subprocess.run(["bash", str(path)], capture_output=True, text=True, env={**os.environ, "SLURM_JOB_ID": "88"})
    assert out.returncode == (0 if requeued else EXIT_REQUEUE), out.stderr
    assert log.read_text().splitlines() == (["requeue 88"] if requeued else [])
    assert script_sleeps.read_text().split() == ["1"] * max(looks - 1, 0)
    assert ("not requeued" in out.stdout) != requeued
