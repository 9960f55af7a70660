"""A completed run checkpoints its final step (`train.final_checkpoint`), so `scaling-export RUN_DIR`
needs no --step; the final checkpoint trains nothing twice, and run directories without one
(older runs, or final_checkpoint=false) still export with --step N."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest
import torch

from scaling.config import TrainAppConfig, TrainConfig
from scaling.families.gpt import GPTConfig
from scaling.rundir import checkpoint_dirs, read_metrics, read_result
from scaling.runid import config_hash
from trainer_utils import data_cache, run_train  # noqa: F401 - fixture

# Four steps of 1024 tokens, a checkpoint after each, the last two kept.
BUDGET = ("train.tokens=4096", "train.checkpoint_every_tokens=1024", "train.device=cpu")


def _ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stderr[-3000:]


def _steps(run: Path) -> list[int]:
    return [int(p.name.removeprefix("step")) for p in checkpoint_dirs(run)]


def _eval_loss(model: torch.nn.Module, run: Path) -> float:
    """The trainer's final evaluation (mean cross-entropy over its fixed validation samples), redone."""
    from scaling.data import eval_batches, prepare_dataset
    from scaling.export import run_config

    cfg = run_config(run)
    manifest = prepare_dataset(cfg.data)
    n = math.ceil(cfg.train.eval_tokens / manifest.seq_len)
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in eval_batches(manifest, num_samples=n, batch_size=16, rank=0, world_size=1):
            logits = model(x)
            total += torch.nn.functional.cross_entropy(logits.flatten(0, -2), y.flatten(), reduction="sum").item()
            count += y.numel()
    return total / count


def test_a_completed_run_exports_its_final_step_and_never_trains_it_twice(data_cache, tmp_path, monkeypatch):
    from scaling.export import export, load_exported

    monkeypatch.setenv("SCALING_CACHE", str(data_cache))
    run = tmp_path / "run"
    _ok(run_train(data_cache, run, *BUDGET))
    result = read_result(run)
    assert result["status"] == "completed" and result["steps"] == 4
    assert _steps(run) == [3, 4]  # keep_checkpoints=2: the final one and the one before
    meta = json.loads((checkpoint_dirs(run)[-1] / "state.json").read_text())
    assert meta["train_state"]["step"] == 4 and meta["engine"] == "deepspeed"
    assert meta["config_hash"] == result["config_hash"]
    assert result["timing"]["checkpoint_s"] > 0

    out = export(run, tmp_path / "st", fmt="safetensors")  # no --step: the final weights
    provenance = json.loads((out / "scaling_export.json").read_text())
    assert provenance["step"] == provenance["final_step"] == 4
    assert provenance["eval_loss"] == result["eval_loss"]
    assert _eval_loss(load_exported(out), run) == pytest.approx(result["eval_loss"], abs=1e-5)

    # Run again: completed, nothing trained, nothing saved.
    rows = read_metrics(run / "metrics.jsonl")
    again = run_train(data_cache, run, *BUDGET)
    _ok(again)
    assert "already completed" in again.stderr
    assert read_metrics(run / "metrics.jsonl") == rows and _steps(run) == [3, 4]

    # Killed after the final save but before result.json: the rerun resumes at the final step,
    # trains no step again, evaluates, and completes with the same numbers.
    (run / "result.json").unlink()
    _ok(run_train(data_cache, run, *BUDGET))
    assert read_metrics(run / "metrics.jsonl") == rows
    assert _steps(run) == [3, 4]
    resumed = read_result(run)
    assert resumed["status"] == "completed" and resumed["steps"] == 4
    assert resumed["timing"]["checkpoint_s"] == 0  # the final checkpoint was already on disk
    for key in ("eval_loss", "train_loss", "config_hash"):
        assert resumed[key] == result[key], key


def test_without_a_final_checkpoint_export_asks_for_a_step(data_cache, tmp_path, monkeypatch):
    from scaling.export import ExportError, export

    monkeypatch.setenv("SCALING_CACHE", str(data_cache))
    run = tmp_path / "run"
    _ok(run_train(data_cache, run, *BUDGET, "train.final_checkpoint=false", "train.keep_checkpoints=1"))
    assert read_result(run)["status"] == "completed"
    assert _steps(run) == [3]  # the cadence stops short of the last step, and one is kept
    with pytest.raises(ExportError, match=r"completed at step 4, but no checkpoint holds its final weights "
                                          r"\(checkpoints at steps: 3\); export an earlier one with --step N"):
        export(run, tmp_path / "out")
    out = export(run, tmp_path / "out", fmt="safetensors", step=3)
    assert json.loads((out / "scaling_export.json").read_text())["step"] == 3


def test_final_checkpoint_is_not_in_the_run_id():
    base = TrainAppConfig(model=GPTConfig(), train=TrainConfig(tokens=4096))
    off = TrainAppConfig(model=GPTConfig(), train=TrainConfig(tokens=4096, final_checkpoint=False))
    assert config_hash(off) == config_hash(base)
