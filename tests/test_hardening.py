"""A run directory that cannot be hijacked, shared, silently reconfigured or fed stale data: the real
trainer, real files and real signals."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from scaling.rundir import (
    EXIT_CONFIG, EXIT_FAILED, EXIT_REQUEUE, STOP_NAME, checkpoint_dirs, exit_status, read_metrics, read_result,
)  # fmt: skip
from trainer_utils import ROOT, data_cache, env, run_train, train_cmd, wait_for_step  # noqa: F401 - fixture

CKPT = ("train.checkpoint_every_tokens=4096", "train.keep_checkpoints=3")  # every 4 steps


def _ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stderr[-3000:]


def _start(cache: Path, run: Path, *overrides: str, nproc: int = 1, **kw) -> subprocess.Popen:
    return subprocess.Popen(train_cmd(run, *overrides, nproc=nproc), cwd=ROOT, env=kw.get("env") or env(cache),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=kw.get("session", False))  # fmt: skip


def _same_curve(a: Path, b: Path, steps: int) -> None:
    want, got = read_metrics(a / "metrics.jsonl"), read_metrics(b / "metrics.jsonl")
    assert [r["step"] for r in got] == list(range(1, steps + 1))
    for x, y in zip(want, got):
        for key in ("loss", "lr"):
            assert y[key] == pytest.approx(x[key], abs=1e-6), (x["step"], key)
    assert read_result(b)["eval_loss"] == pytest.approx(read_result(a)["eval_loss"], abs=1e-6)


@pytest.fixture(scope="module")
def straight(data_cache, tmp_path_factory) -> Path:
    """An uninterrupted 24-step run to compare interrupted ones with."""
    run = tmp_path_factory.mktemp("straight") / "run"
    _ok(run_train(data_cache, run, "train.tokens=24576"))
    return run


class _Payload:
    """Unpickling this runs a shell command: what a crafted checkpoint file would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_pickle_in_any_checkpoint_file_is_never_executed(data_cache, tmp_path):
    import torch

    run = tmp_path / "run"
    # ZeRO-1 writes model and optimizer states to separate files; checkpoints at steps 4, 8 and 12.
    _ok(run_train(data_cache, run, "train.tokens=16384", "train.zero_stage=1", *CKPT))
    (run / "result.json").unlink()  # so that a rerun resumes from the checkpoints
    marker = tmp_path / "pwned"
    c4, c8, c12 = checkpoint_dirs(run)
    torch.save({"module": _Payload(marker)}, c12 / "state" / "mp_rank_00_model_states.pt")
    torch.save({"optimizer_state_dict": _Payload(marker)}, c8 / "state" / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    (c4 / "rng_rank0.json").unlink()  # an older checkpoint's pickled RNG file
    torch.save({"torch": _Payload(marker)}, c4 / "rng_rank0.pt")

    proc = run_train(data_cache, run, "train.tokens=16384", "train.zero_stage=1", *CKPT)
    assert not marker.exists(), "a pickle in a checkpoint was executed"
    assert proc.returncode == EXIT_FAILED, proc.stderr[-3000:]
    error = read_result(run)["error"]
    assert "no checkpoint could be loaded" in error
    for path in (c12 / "state" / "mp_rank_00_model_states.pt", c8 / "state", c4 / "rng_rank0.json"):
        assert str(path) in error, path
    assert "train.trust_checkpoint=true" in error
    assert "Traceback" not in proc.stderr


def test_two_trainers_never_share_a_run_directory(data_cache, tmp_path):
    run = tmp_path / "run"
    budget = "train.tokens=2e6"  # far more than the test waits for: the first is stopped below
    first = _start(data_cache, run, budget)
    try:
        wait_for_step(run, 2, first)
        second = run_train(data_cache, run, budget)
        assert second.returncode == EXIT_CONFIG, second.stderr[-2000:]
        assert "in use by another trainer" in second.stderr and f"pid {first.pid}" in second.stderr
        assert first.poll() is None  # the holder trains on, undisturbed
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=60) == EXIT_REQUEUE, first.stderr.read()
    finally:
        first.kill()
    steps = [r["step"] for r in read_metrics(run / "metrics.jsonl")]
    assert steps == list(range(1, len(steps) + 1))  # one writer: no duplicate or interleaved steps
    assert not (run / "lock.json").exists()  # released on exit


def test_a_resume_or_rerun_with_another_config_or_data_is_refused(data_cache, tmp_path):
    from scaling.data import prepare_dataset
    from scaling.data.config import DataConfig

    data = tmp_path / "data"
    shutil.copytree(prepare_dataset(DataConfig(name="synthetic", cache_dir=str(data_cache))).location, data)
    run = tmp_path / "run"
    base = ("train.tokens=16384", f"data.path={data}", *CKPT)
    proc = _start(data_cache, run, *base)
    wait_for_step(run, 6, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == EXIT_REQUEUE
    recorded = (run / "config.yaml").read_text()

    for override, key in (("train.lr=1e-3", "train.lr: 0.003 -> 0.001"), ("model.d_model=64", "model.d_model")):
        refused = run_train(data_cache, run, *base, override)
        assert refused.returncode == EXIT_CONFIG, refused.stderr[-2000:]
        assert key in refused.stderr
    assert (run / "config.yaml").read_text() == recorded  # the record never lies

    # The same data, rebuilt with another split: other shards, another checksum.
    other = prepare_dataset(DataConfig(name="synthetic", split_seed=1, cache_dir=str(data_cache))).location
    shutil.rmtree(data)
    shutil.copytree(other, data)
    refused = run_train(data_cache, run, *base)
    assert refused.returncode == EXIT_CONFIG and "trained on other data" in refused.stderr, refused.stderr[-2000:]
    shutil.rmtree(data)
    shutil.copytree(prepare_dataset(DataConfig(name="synthetic", cache_dir=str(data_cache))).location, data)

    _ok(run_train(data_cache, run, *base))  # the same config and data resume
    again = run_train(data_cache, run, *base, "model.d_model=64")
    assert again.returncode == EXIT_CONFIG and "model.d_model: 32 -> 64" in again.stderr, again.stderr[-2000:]
    assert read_result(run)["status"] == "completed"  # a refused rerun writes nothing
    _ok(run_train(data_cache, run, *base, "train.num_threads=1", "train.keep_checkpoints=1"))  # non-result keys


def test_ctrl_c_checkpoints_and_a_rerun_matches_an_uninterrupted_run(data_cache, tmp_path, straight):
    run = tmp_path / "run"
    proc = _start(data_cache, run, "train.tokens=24576")
    wait_for_step(run, 9, proc)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == EXIT_REQUEUE, proc.stderr.read()
    assert "KeyboardInterrupt" not in proc.stderr.read()
    assert checkpoint_dirs(run) and (run / STOP_NAME).exists()
    _ok(run_train(data_cache, run, "train.tokens=24576"))
    assert not (run / STOP_NAME).exists()
    _same_curve(straight, run, 24)


def test_a_truncated_latest_checkpoint_falls_back_to_the_one_before(data_cache, tmp_path, straight):
    run = tmp_path / "run"
    proc = _start(data_cache, run, "train.tokens=24576", *CKPT)
    wait_for_step(run, 14, proc)
    proc.kill()
    proc.wait()
    latest = checkpoint_dirs(run)[-1]
    model = latest / "state" / "mp_rank_00_model_states.pt"
    model.write_bytes(model.read_bytes()[:1000])
    resumed = run_train(data_cache, run, "train.tokens=24576", *CKPT)
    _ok(resumed)
    assert str(model) in resumed.stderr and "trying the one before" in resumed.stderr
    assert (latest.parent / f"unreadable-{latest.name}").is_dir()  # kept for inspection
    _same_curve(straight, run, 24)


@pytest.mark.parametrize(
    "content, problem",
    [
        (b"{\x00garbage", "not valid JSON"),
        pytest.param(b"[1, 2]", "not an object", marks=pytest.mark.slow),
        pytest.param(b'{"status": "completed"}', "without", marks=pytest.mark.slow),
    ],
    ids=["garbage", "not-an-object", "missing-keys"],
)
def test_a_malformed_result_is_reported_and_kept_aside(data_cache, tmp_path, content, problem):
    run = tmp_path / "run"
    run.mkdir()
    (run / "result.json").write_bytes(content)
    proc = run_train(data_cache, run, "train.tokens=4096")
    _ok(proc)
    assert f"{run / 'result.json'}" in proc.stderr and problem in proc.stderr
    (aside,) = run.glob("result.unreadable-*.json")
    assert aside.read_bytes() == content
    assert read_result(run)["status"] == "completed"


def test_a_read_only_run_directory_is_named(data_cache, tmp_path):
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs root and unshare to mount a read-only folder")
    run = tmp_path / "ro"
    run.mkdir()
    cmd = " ".join(train_cmd(run, "train.tokens=4096"))
    script = f"mount --bind {run} {run} && mount -o remount,bind,ro {run} && exec {cmd}"
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=ROOT, env=env(data_cache), capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    if "mount:" in proc.stderr:
        pytest.skip(f"cannot mount here: {proc.stderr.strip()[:200]}")
    assert proc.returncode == EXIT_CONFIG, proc.stderr[-2000:]
    assert f"run directory {run} is not writable" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "override",
    ["train.tokns=5", "train.lr=fast", "model=nope", "data.path=/nonexistent/shards", "train.zero_stage=7"],
    ids=["misspelled", "wrong-type", "unknown-choice", "missing-data", "bad-value"],
)
def test_every_config_error_exits_2(data_cache, tmp_path, override):
    proc = run_train(data_cache, tmp_path / "run", "train.tokens=4096", override)
    assert proc.returncode == EXIT_CONFIG, proc.stderr[-2000:]


def test_wandb_mode_auto_honours_the_environment_and_never_waits_on_the_network(data_cache, tmp_path, monkeypatch):
    from scaling.wandb_mirror import wandb_mode as _wandb_mode

    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_DISABLED", "true")
    assert _wandb_mode("auto") == "disabled"
    monkeypatch.delenv("WANDB_DISABLED")
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    t0 = time.time()
    assert _wandb_mode("auto") == "offline" and time.time() - t0 < 5

    # The real trainer, a key set and WANDB_MODE=offline: the local run is written, offline.
    e = env(data_cache) | {"WANDB_API_KEY": "x" * 40, "WANDB_MODE": "offline"}
    e.pop("WANDB_DISABLED", None)
    run = tmp_path / "run"
    proc = subprocess.run(train_cmd(run, "train.tokens=4096", "logger.wandb.mode=auto"), cwd=ROOT, env=e,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    _ok(proc)
    assert list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert not list((run / "wandb").glob("run-*"))  # no online run directory


def test_under_torchrun_a_clean_stop_is_a_requeue_for_the_launcher(data_cache, tmp_path):
    run = tmp_path / "run"
    started = time.time()
    proc = _start(data_cache, run, "train.tokens=65536", nproc=2, session=True)
    wait_for_step(run, 3, proc, timeout=180)
    os.killpg(proc.pid, signal.SIGTERM)
    code = proc.wait(timeout=120)
    assert checkpoint_dirs(run) and read_result(run) is None
    assert json.loads((run / STOP_NAME).read_text())["status"] == "stopped"
    assert exit_status(run, code, started) == EXIT_REQUEUE
    assert exit_status(tmp_path / "elsewhere", 1, started) == 1  # a real failure stays one



def _plant_lease(run: Path, age_s: float, **holder) -> None:
    run.mkdir(parents=True, exist_ok=True)
    lock = run / "lock.json"
    lock.write_text(json.dumps({"token": "other", "host": "node-b", "pid": 1, "refreshed": time.time() - age_s,
                                **holder}))  # fmt: skip
    os.utime(lock, (time.time() - age_s, time.time() - age_s))


def test_a_lease_is_refused_while_fresh_and_taken_over_when_its_holder_is_gone(tmp_path, monkeypatch):
    from scaling.errors import ScalingError
    from scaling.runlock import LEASE_TIMEOUT_S, RunLock, RunLocked

    for var in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_RESTART_COUNT"):
        monkeypatch.delenv(var, raising=False)
    fresh = tmp_path / "fresh"
    _plant_lease(fresh, 5, slurm_job_id="41")
    with pytest.raises(RunLocked, match="pid 1 on node-b, Slurm job 41"):
        RunLock(fresh).acquire()
    assert json.loads((fresh / "lock.json").read_text())["token"] == "other"  # untouched
    assert issubclass(RunLocked, ScalingError)

    cases = {
        "stale": ({}, LEASE_TIMEOUT_S + 5, {}),
        "dead pid on this host": ({"host": __import__("socket").gethostname(), "pid": 2**22 + 7}, 5, {}),
        "requeued Slurm job": ({"slurm_job_id": "42", "slurm_restarts": 0}, 5,
                               {"SLURM_JOB_ID": "42", "SLURM_RESTART_COUNT": "1"}),
    }  # fmt: skip
    for name, (holder, age, environ) in cases.items():
        run = tmp_path / name.replace(" ", "-")
        _plant_lease(run, age, **holder)
        for k, v in environ.items():
            monkeypatch.setenv(k, v)
        lock = RunLock(run).acquire()
        try:
            assert lock.takeover, name
            assert json.loads((run / "lock.json").read_text())["token"] == lock.token
        finally:
            lock.release()
            for k in environ:
                monkeypatch.delenv(k)
        assert not (run / "lock.json").exists()

    # The same job id at the same restart count is another step of the same job: refused.
    run = tmp_path / "same-start"
    _plant_lease(run, 5, slurm_job_id="43", slurm_restarts=1)
    monkeypatch.setenv("SLURM_JOB_ID", "43")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    with pytest.raises(RunLocked):
        RunLock(run).acquire()


def test_a_holder_refreshes_its_lease_and_notices_a_takeover(tmp_path):
    from scaling.runlock import RunLock

    lock = RunLock(tmp_path / "run", refresh_s=0.05).acquire()
    try:
        first = json.loads((tmp_path / "run" / "lock.json").read_text())["refreshed"]
        time.sleep(0.3)
        assert json.loads((tmp_path / "run" / "lock.json").read_text())["refreshed"] > first
        _plant_lease(tmp_path / "run", 0)  # another trainer took it over
        deadline = time.time() + 5
        while not lock.lost and time.time() < deadline:
            time.sleep(0.02)
        assert lock.lost
    finally:
        lock.release()
    assert json.loads((tmp_path / "run" / "lock.json").read_text())["token"] == "other"  # not ours to remove


@pytest.mark.slow
def test_a_second_ctrl_c_stops_at_once(data_cache, tmp_path):
    run = tmp_path / "run"
    # A model large enough that a step (and a checkpoint) outlasts the gap between the two signals.
    proc = _start(data_cache, run, "train.tokens=2e6", "model.d_model=256", "model.n_layers=4", "model.n_heads=4")
    wait_for_step(run, 1, proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.2)  # the first is handled (a step of this model takes seconds): the run will checkpoint
    proc.send_signal(signal.SIGINT)
    code = proc.wait(timeout=60)
    rest = proc.stderr.read()
    assert code == 130, rest
    assert "interrupted twice" in rest
    assert not checkpoint_dirs(run)


def _to_legacy_format(ckpt: Path) -> None:
    """Rewrite a checkpoint as the first version wrote it: the trainer state inside DeepSpeed's
    pickled model file, the RNG state pickled beside it, no state.json."""
    import random

    import numpy as np
    import torch

    meta = json.loads((ckpt / "state.json").read_text())
    model_file = ckpt / "state" / "mp_rank_00_model_states.pt"
    states = torch.load(model_file, weights_only=False)
    states["train_state"] = meta["train_state"]
    torch.save(states, model_file)
    rng = json.loads((ckpt / "rng_rank0.json").read_text())
    version, internal, gauss = rng["python"]
    kind, keys, pos, has_gauss, cached = rng["numpy"]
    torch.save({"python": (version, tuple(internal), gauss),
                "numpy": (kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached),
                "torch": torch.tensor(rng["torch"], dtype=torch.uint8)}, ckpt / "rng_rank0.pt")  # fmt: skip
    (ckpt / "rng_rank0.json").unlink()
    (ckpt / "state.json").unlink()
    assert random  # the legacy file holds Python's own RNG tuple, as random.getstate() gives it


@pytest.mark.slow
def test_a_checkpoint_of_the_first_version_is_refused_unless_trusted_and_then_resumes_exactly(
    data_cache, tmp_path, straight
):
    run = tmp_path / "run"
    proc = _start(data_cache, run, "train.tokens=24576", *CKPT)
    wait_for_step(run, 14, proc)
    proc.kill()
    proc.wait()
    for ckpt in checkpoint_dirs(run):
        _to_legacy_format(ckpt)
    refused = run_train(data_cache, run, "train.tokens=24576", *CKPT)
    assert refused.returncode == EXIT_FAILED and "train.trust_checkpoint=true" in refused.stderr
    for ckpt in run.glob("checkpoints/unreadable-*"):  # set aside by the refusal: put them back
        ckpt.rename(ckpt.with_name(ckpt.name.removeprefix("unreadable-")))
    (run / "result.json").unlink()
    _ok(run_train(data_cache, run, "train.tokens=24576", *CKPT, "train.trust_checkpoint=true"))
    _same_curve(straight, run, 24)
