"""The trainer, run for real: DeepSpeed on CPU, one process and two (torchrun, gloo)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from scaling.rundir import EXIT_CONFIG, EXIT_FAILED, EXIT_REQUEUE, checkpoint_dirs, read_metrics, read_result
from scaling.schedule import lr_factor
from trainer_utils import ROOT, data_cache, env, run_train, train_cmd, wait_for_step  # noqa: F401 - fixture

BUDGET = "train.tokens=16384"  # 16 steps of 1024 tokens


def _losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(run_dir / "metrics.jsonl")]


def _ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_single_process_run_writes_the_run_directory(data_cache, tmp_path):
    run = tmp_path / "run"
    proc = run_train(data_cache, run, BUDGET, "train.eval_every_tokens=8192", "logger.wandb.mode=offline",
                     "logger.wandb.min_interval_s=0")  # fmt: skip
    _ok(proc)
    result = read_result(run)
    for key in ("status", "family", "params", "params_nonembedding", "tokens", "flops", "flops_convention",
                "train_loss", "eval_loss", "steps", "world_size", "zero_stage", "wall_time_s"):
        assert key in result, key
    assert result["status"] == "completed" and result["steps"] == 16 and result["tokens"] == 16384
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 17))
    for key in ("step", "tokens", "flops", "loss", "lr", "tokens_per_s"):
        assert all(key in r for r in rows), key
    assert [r["step"] for r in rows if "eval_loss" in r] == [8, 16]
    assert rows[-1]["eval_loss"] == pytest.approx(result["eval_loss"])
    assert rows[0]["loss"] > rows[-1]["loss"]  # it learns
    assert (run / "config.yaml").read_text().count("vocab_size: 65") == 1  # filled from the manifest

    # The wandb offline run mirrors the metrics and carries the config and the counts.
    from wandb_offline import read_run

    wb = read_run(run)
    assert wb["name"] == "run"
    assert wb["config"]["train"]["tokens"] == 16384
    assert wb["config"]["counts"]["N"] == result["params"]
    losses = [h["loss"] for h in wb["history"] if "loss" in h]
    assert losses == pytest.approx(_losses(run), abs=1e-9)

    # A completed run is not retrained.
    again = run_train(data_cache, run, BUDGET)
    _ok(again)
    assert "already completed" in again.stderr
    assert len(read_metrics(run / "metrics.jsonl")) == 16


def test_the_dashboard_gets_a_training_row_per_interval_and_every_eval_and_last_row(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from scaling.config import LoggerConfig
    from scaling.contracts import MetricsRow
    from scaling.wandb_mirror import WandbMirror
    from wandb_offline import read_run

    clock = [100.0]
    monkeypatch.setattr("scaling.wandb_mirror.monotonic", lambda: clock[0])
    cfg = SimpleNamespace(logger=LoggerConfig(), run=SimpleNamespace(dir=str(tmp_path), group=None))
    cfg.logger.wandb.min_interval_s = 1.0
    plan = SimpleNamespace(cfg=cfg, steps=10, run_id="r", params=1, params_nonembedding=1, tokens=1, flops=1)
    mirror = WandbMirror(plan, SimpleNamespace(wandb_id=None), {}, mode="offline")
    for step in range(1, 11):  # 0.4 s apart; evaluations at steps 5 and 10
        mirror.on_step(None, MetricsRow(step=step, loss=float(step), eval_loss=0.5 if step % 5 == 0 else None))
        clock[0] += 0.4
    mirror.on_end(None, None)
    sent = [h["_step"] for h in read_run(tmp_path)["history"]]
    # step 1 (the first), 4 (1.2 s later), 5 (eval), 8 (1.2 s after 5), 10 (eval, and the last)
    assert sent == [1, 4, 5, 8, 10]


def test_zero_stages_across_two_processes_match_one_process(data_cache, tmp_path):
    base = tmp_path / "zero0"
    _ok(run_train(data_cache, base, BUDGET, "train.zero_stage=0"))
    reference = _losses(base)
    assert len(reference) == 16
    for stage in (2, 3):
        run = tmp_path / f"zero{stage}"
        _ok(run_train(data_cache, run, BUDGET, f"train.zero_stage={stage}", nproc=2))
        assert read_result(run)["world_size"] == 2
        assert _losses(run) == pytest.approx(reference, abs=1e-4), f"ZeRO-{stage} on 2 processes"


def test_resume_after_sigkill_is_exact(data_cache, tmp_path):
    budget = ("train.tokens=24576", "train.checkpoint_every_tokens=4096", "train.schedule=wsd")
    straight = tmp_path / "straight"
    _ok(run_train(data_cache, straight, *budget))

    run = tmp_path / "killed"
    proc = subprocess.Popen(train_cmd(run, *budget), cwd=ROOT, env=env(data_cache),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_step(run, 14, proc)
    finally:
        proc.kill()
        proc.wait()
    assert read_result(run) is None
    saved = checkpoint_dirs(run)
    assert saved and len(saved) <= 2  # keep_checkpoints=2
    resumed_from = int(saved[-1].name.removeprefix("step"))
    assert 4 <= resumed_from < 24
    # A save killed half-way leaves only a hidden folder, which a resume must ignore.
    torn = run / "checkpoints" / ".tmp-step00000099"
    torn.mkdir(exist_ok=True)
    (torn / "zero_pp_rank_0_mp_rank_00_model_states.pt").write_bytes(b"truncated")

    _ok(run_train(data_cache, run, *budget))
    assert not torn.exists()
    want, got = read_metrics(straight / "metrics.jsonl"), read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in got] == list(range(1, 25))
    for a, b in zip(want, got):
        for key in ("loss", "lr", "tokens", "flops"):
            assert b[key] == pytest.approx(a[key], abs=1e-6), (a["step"], key)
    assert read_result(run)["eval_loss"] == pytest.approx(read_result(straight)["eval_loss"], abs=1e-6)


def test_sigterm_saves_a_checkpoint_and_exits_for_requeue(data_cache, tmp_path):
    run = tmp_path / "run"
    budget = ("train.tokens=65536",)
    proc = subprocess.Popen(train_cmd(run, *budget), cwd=ROOT, env=env(data_cache),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for_step(run, 3, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == EXIT_REQUEUE
    assert checkpoint_dirs(run) and read_result(run) is None
    _ok(run_train(data_cache, run, *budget))
    assert read_result(run)["steps"] == 64


@pytest.mark.parametrize(
    "overrides, code, needle",
    [
        (("train.lr=1e12", "train.grad_clip=0", "train.warmup_tokens=0"), EXIT_FAILED, "loss is"),
        (("data.path=/nonexistent/shards",), EXIT_CONFIG, "/nonexistent/shards"),
        (("train.micro_batch_size=5",), EXIT_CONFIG, "train.micro_batch_size=5 does not divide"),
        (("train.tokens=100",), EXIT_CONFIG, "smaller than one step"),
    ],
    ids=["nan-loss", "missing-data", "batch-arithmetic", "tiny-budget"],
)
def test_failures_end_in_a_clear_message_and_a_failed_result(data_cache, tmp_path, overrides, code, needle):
    run = tmp_path / "run"
    proc = run_train(data_cache, run, "train.tokens=16384", *overrides)
    assert proc.returncode == code, proc.stderr[-2000:]
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr
    result = json.loads((run / "result.json").read_text())
    assert result["status"] == "failed" and needle in result["error"]


def test_misspelled_key_is_named_before_anything_starts(data_cache, tmp_path):
    proc = run_train(data_cache, tmp_path / "run", "train.tokns=5")
    assert proc.returncode != 0
    assert "train.tokns" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_lr_schedules():
    assert lr_factor(0, 100, schedule="constant", warmup_steps=10) == pytest.approx(0.1)
    assert lr_factor(50, 100, schedule="constant", warmup_steps=10) == 1
    assert lr_factor(10, 100, schedule="cosine", warmup_steps=10) == pytest.approx(1)
    assert lr_factor(99, 100, schedule="cosine", min_lr_ratio=0.1) == pytest.approx(0.1)
    wsd = [lr_factor(s, 100, schedule="wsd", decay_fraction=0.2, min_lr_ratio=0.0) for s in range(100)]
    assert wsd[:80] == [1.0] * 80 and wsd[-1] == pytest.approx(0.0)
    assert all(a >= b for a, b in zip(wsd, wsd[1:]))


def test_the_cnn_trains_through_the_same_loop_counting_images(data_cache, tmp_path):
    run = tmp_path / "cnn"
    proc = run_train(data_cache, run, "train.tokens=2048", "train.global_batch_size=64", "train.eval_tokens=256",
                     "train.lr=3e-3", base=["model=cnn_debug", "data=digits", "logger.wandb.mode=disabled"])
    _ok(proc)
    result = read_result(run)
    assert result["family"] == "cnn" and result["tokens"] == 2048 and result["steps"] == 32
    rows = read_metrics(run / "metrics.jsonl")
    assert rows[-1]["tokens"] == 2048  # images, not pixels
    assert rows[0]["loss"] > rows[-1]["loss"]
