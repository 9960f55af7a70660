"""The Slurm launcher's pure parts, without a cluster: job shapes (one task per GPU, over nodes),
submitit parameters from the cluster config, and the rendered sbatch script."""

from __future__ import annotations

import pickle
import subprocess

import pytest
from hydra import compose, initialize_config_dir

from scaling.launch.config import BudgetsConfig, ClusterConfig, SizesConfig, StudySpec, register_configs, to_dataclass
from scaling.launch.plan import CONF_DIR, make_plan
from scaling.launch.slurm import TrainJob, executor_parameters, job_shape, render_sbatch
from scaling.errors import ConfigError


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


def test_executor_parameters_and_sbatch_script_come_from_the_cluster_config(tmp_path, monkeypatch):
    monkeypatch.setenv("SCALING_CACHE", str(tmp_path / "cache"))
    spec = StudySpec(name="big", data="synthetic", sizes=SizesConfig(targets=[2e4]), budgets=BudgetsConfig(flops=[1e11]),
                     nproc=16, dir=str(tmp_path / "s"))  # fmt: skip
    run = make_plan(spec).runs[0]
    c = gpu_cluster()
    c.account, c.qos = "proj42", "high"
    p = executor_parameters(run, c)
    assert (p["nodes"], p["ntasks_per_node"], p["gpus_per_node"]) == (2, 8, 8)
    assert p["partition"] == "gpu" and p["account"] == "proj42" and p["qos"] == "high" and p["mem"] == "200GB"
    assert p["time"] == c.time_limit_min and p["signal_delay_s"] == c.signal_delay_s
    assert p["setup"] == c.setup and p["additional_parameters"]["requeue"] is True

    script = render_sbatch(run, c, study="big")
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --partition=gpu", "#SBATCH --account=proj42", "#SBATCH --qos=high", "#SBATCH --mem=200G",
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
