"""Warm workers: a run forked from the preloaded server equals the same run in a fresh process, and a
run that raises, is killed or stalls ends as it would in a process of its own, while the study
goes on with the next run."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from scaling.launch.config import BudgetsConfig, SizesConfig, StudySpec
from scaling.launch.local import run_local
from scaling.launch.plan import make_plan
from scaling.launch.state import read_states
from scaling.rundir import EXIT_FAILED, checkpoint_dirs, read_metrics, read_result


@pytest.fixture(autouse=True)
def _env(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SCALING_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("WANDB_MODE", "disabled")


def _plan(study_dir: Path, targets=(2e4,), flops=(2e10,), overrides=()):
    spec = StudySpec(
        name="warm", data="synthetic", sizes=SizesConfig(targets=list(targets)), budgets=BudgetsConfig(flops=list(flops)),
        overrides=["logger.wandb.mode=disabled", "train.eval_tokens=2048", *overrides], dir=str(study_dir),
        throughput_flops=1e9,
    )  # fmt: skip
    return make_plan(spec)


def _quiet(_: str) -> None:
    pass


def test_a_run_in_a_warm_worker_equals_the_same_run_in_a_fresh_process(tmp_path):
    (warm,) = _plan(tmp_path / "warm").runs
    (fresh,) = _plan(tmp_path / "fresh").runs
    (before,) = _plan(tmp_path / "before", targets=(5e3,)).runs  # trained first, in the same worker
    assert warm.id == fresh.id
    codes = run_local([before, warm], parallel=1, warm=True, progress=False, echo=_quiet)
    assert codes == {before.id: 0, warm.id: 0}
    assert json.loads((Path(before.dir) / "launch.json").read_text())["pid"] == json.loads(
        (Path(warm.dir) / "launch.json").read_text())["pid"]  # one worker trained both
    assert run_local([fresh], parallel=1, warm=False, progress=False, echo=_quiet) == {fresh.id: 0}
    assert "(warm worker)" in (Path(warm.dir) / "launch.log").read_text()
    assert "(warm worker)" not in (Path(fresh.dir) / "launch.log").read_text()
    a, b = read_metrics(Path(warm.dir) / "metrics.jsonl"), read_metrics(Path(fresh.dir) / "metrics.jsonl")
    assert len(a) == len(b) == warm.steps
    assert [r["loss"] for r in a] == pytest.approx([r["loss"] for r in b], abs=1e-6)
    assert read_result(warm.dir)["eval_loss"] == pytest.approx(read_result(fresh.dir)["eval_loss"], abs=1e-6)
    assert "completed" in (Path(warm.dir) / "launch.log").read_text()  # the trainer's log, as today


def _kill_when(run_dir: Path, step: int, signum: int, timeout: float = 120) -> threading.Thread:
    def watch() -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            rows = read_metrics(run_dir / "metrics.jsonl")
            if rows and rows[-1]["step"] >= step:
                os.kill(json.loads((run_dir / "launch.json").read_text())["pid"], signum)
                return
            time.sleep(0.02)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_a_run_that_raises_or_is_killed_ends_alone_and_the_study_goes_on(tmp_path):
    runs = _plan(tmp_path / "s", targets=(5e3, 2e4), flops=(4e10,),
                 overrides=["train.checkpoint_every_tokens=4096"]).runs  # fmt: skip
    small, large = runs
    raises = dataclasses.replace(small, overrides=[*small.overrides, "train.lr=1e12", "train.grad_clip=0",
                                                   "train.warmup_tokens=0"])  # fmt: skip
    killer = _kill_when(Path(large.dir), 12, signal.SIGKILL)
    codes = run_local([raises, large, small_copy := _copy(small, tmp_path)], parallel=1, progress=False, echo=_quiet)
    killer.join()
    assert codes[raises.id] == EXIT_FAILED
    assert "loss is" in read_result(raises.dir)["error"]
    assert codes[large.id] == -signal.SIGKILL
    assert read_states({large.id: large.dir})[large.id].state == "partial" and checkpoint_dirs(large.dir)
    assert codes[small_copy.id] == 0  # the study went on
    # The killed run resumes where it left off.
    assert run_local([large], parallel=1, progress=False, echo=_quiet) == {large.id: 0}
    assert "resumed from" in (Path(large.dir) / "train.log").read_text()
    steps = [r["step"] for r in read_metrics(Path(large.dir) / "metrics.jsonl")]
    assert steps == list(range(1, large.steps + 1))


def _copy(run, tmp_path: Path):
    d = str(tmp_path / "copy" / run.id)
    overrides = [o for o in run.overrides if not o.startswith("run.dir=")] + [f"run.dir={d}"]
    return dataclasses.replace(run, id=run.id + "-copy", dir=d, overrides=overrides)


@pytest.mark.slow
def test_a_run_that_makes_no_progress_is_killed_and_recorded_as_failed(tmp_path):
    (run,) = _plan(tmp_path / "s", targets=(2e4,), flops=(4e10,), overrides=["train.checkpoint_every_tokens=4096"]).runs
    stopper = _kill_when(Path(run.dir), 6, signal.SIGSTOP)  # alive, but writes nothing any more
    messages: list[str] = []
    t0 = time.time()
    # The timeout is longer than a new worker takes to import torch and DeepSpeed.
    codes = run_local([run], parallel=1, progress=False, echo=messages.append, stall_timeout_s=10)
    stopper.join()
    assert codes[run.id] == -signal.SIGKILL and time.time() - t0 < 120
    error = read_result(run.dir)["error"]
    assert "no progress for 10 s" in error and "retry_failed" in error
    assert any("no progress" in m for m in messages)
    assert checkpoint_dirs(run.dir)  # kept for the retry


@pytest.mark.slow
def test_the_core_split_is_measured_once_per_host_and_cached(tmp_path, monkeypatch):
    import scaling.launch.calibrate as calibrate

    calls: list[tuple[int, int]] = []
    real = calibrate.measure

    def counted(runs: int, threads: int, **kw) -> float:
        calls.append((runs, threads))
        return real(runs, threads, seconds=0.3)

    monkeypatch.setattr(calibrate, "measure", counted)
    runs, threads = calibrate.core_split(2, cache_dir=str(tmp_path), echo=_quiet)
    assert (runs, threads) in ((1, 2), (2, 1)) and sorted(calls) == [(1, 2), (2, 1)]
    (cached,) = tmp_path.glob("calibration-*-2cores.json")
    figures = json.loads(cached.read_text())["tokens_per_s"]
    assert figures[f"{runs}x{threads}"] == max(figures.values()) > 0  # the fastest split measured wins
    assert calibrate.core_split(2, cache_dir=str(tmp_path), echo=_quiet) == (runs, threads)
    assert len(calls) == 2  # read from the cache, not measured again


def test_a_reply_that_arrives_with_the_ready_line_is_seen(tmp_path):
    """A run handed to a worker that is still importing, and that ends at once (a config error),
    puts the worker's two lines ("ready", then the run's code) in the pipe together. The launcher
    must still see the run end: a buffered readline used to take both out of the pipe and leave
    the code where select() never looked, so the run hung until the stall timeout."""
    import sys

    from scaling.launch.local import _Worker
    from scaling.rundir import EXIT_CONFIG

    worker = _Worker(sys.executable)
    log = tmp_path / "launch.log"
    worker.submit(["train.no_such_key=1"], log, on_done=lambda w: None)
    deadline = time.time() + 120
    while "no_such_key" not in (log.read_text() if log.exists() else "") and time.time() < deadline:
        time.sleep(0.2)  # no poll meanwhile: both lines reach the pipe before the first read
    time.sleep(1.0)
    try:
        assert worker.wait(timeout=10) == EXIT_CONFIG
    finally:
        worker.proc.kill()
        worker.proc.wait()
