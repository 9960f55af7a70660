"""Cooldown branches, run for real (DeepSpeed on CPU): a constant-LR trunk checkpointed at its
fork points, and WSD branches that fork from it (scaling/trainer/branch.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from scaling.config import TrainAppConfig, validate
from scaling.errors import ConfigError
from scaling.families import FAMILIES
from scaling.rundir import checkpoint_dirs, read_json, read_metrics, read_result
from trainer_utils import data_cache, run_train  # noqa: F401 - fixture

# 1024 tokens a step. Branch A: 16 steps, decay 0.25 -> forks at step 12. Branch B: 10 steps,
# decay 0.2 -> forks at step 8. The trunk trains at constant LR to the last fork, 12 steps.
TRUNK = ["train.schedule=constant", "train.tokens=12288", "run.fork_tokens=[8192,12288]",
         "train.checkpoint_every_tokens=2048", "train.keep_checkpoints=1", "train.eval_every_tokens=4096"]
BRANCH_A = ["train.schedule=wsd", "train.decay_fraction=0.25", "train.tokens=16384", "train.parent=trunk",
            "train.eval_every_tokens=4096"]
BRANCH_B = ["train.schedule=wsd", "train.decay_fraction=0.2", "train.tokens=10240", "train.parent=trunk",
            "train.eval_every_tokens=4096"]


def _ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stderr[-3000:]


def _rows(run: Path) -> dict[int, dict]:
    return {r["step"]: r for r in read_metrics(run / "metrics.jsonl")}


@pytest.mark.slow
@pytest.mark.parametrize("engine", [[], ["train.zero_stage=2"], ["train.engine=fsdp"]], ids=["zero0", "zero2", "fsdp2"])
def test_branch_continues_the_trunk_and_equals_an_independent_wsd_run(data_cache, tmp_path, engine):
    trunk_args, a_args, b_args = [*TRUNK, *engine], [*BRANCH_A, *engine], [*BRANCH_B, *engine]
    trunk, a, b, solo = tmp_path / "trunk", tmp_path / "a", tmp_path / "b", tmp_path / "solo"
    early = run_train(data_cache, a, *a_args)  # before the trunk: fails clearly, trains nothing
    assert early.returncode == 1 and "fork step 12" in early.stderr and "not in" in early.stderr
    assert not (a / "metrics.jsonl").exists()
    _ok(run_train(data_cache, trunk, *trunk_args))
    # The fork points are pinned: keep_checkpoints=1 counts the others (2, 4, 6, 10), and kept the newest.
    assert [p.name for p in checkpoint_dirs(trunk)] == ["step00000008", "step00000010", "step00000012"]
    _ok(run_train(data_cache, a, *a_args))
    _ok(run_train(data_cache, b, *b_args))
    _ok(run_train(data_cache, solo, "train.schedule=wsd", "train.decay_fraction=0.25", "train.tokens=16384",
                  "train.eval_every_tokens=4096", *engine))  # fmt: skip

    t_rows, a_rows, s_rows = _rows(trunk), _rows(a), _rows(solo)
    # The branch's own rows start after the fork: the trunk's rows are never recorded twice.
    assert sorted(a_rows) == list(range(13, 17)) and sorted(_rows(b)) == [9, 10]
    # The independent WSD run is the trunk up to the fork (constant LR = WSD's stable phase) ...
    for step in range(1, 13):
        assert t_rows[step]["loss"] == pytest.approx(s_rows[step]["loss"], abs=1e-6), step
        assert t_rows[step]["lr"] == pytest.approx(s_rows[step]["lr"], abs=1e-12), step
    # ... and the branch after it: same data position, weights, optimizer state and decay.
    for step in range(13, 17):
        assert a_rows[step]["loss"] == pytest.approx(s_rows[step]["loss"], abs=1e-6), step
        assert a_rows[step]["lr"] == pytest.approx(s_rows[step]["lr"], abs=1e-12), step
        assert a_rows[step]["tokens"] == s_rows[step]["tokens"]
    ra, rs = read_result(a), read_result(solo)
    assert ra["eval_loss"] == pytest.approx(rs["eval_loss"], abs=1e-6)
    # Provenance and compute: the branch's own tokens exclude the trunk; tokens/flops are the whole D.
    assert ra["parent"] == "trunk" and ra["fork_step"] == 12 and ra["fork_tokens"] == 12288
    assert ra["tokens"] == 16384 and ra["branch_tokens"] == 4096
    assert ra["flops"] == pytest.approx(rs["flops"]) and ra["branch_flops"] == pytest.approx(ra["flops"] / 4)
    assert read_result(b)["fork_step"] == 8 and read_result(b)["branch_tokens"] == 2048
    state = read_json(checkpoint_dirs(a)[-1] / "state.json")
    assert state["parent"]["run_id"] == "trunk" and state["parent"]["step"] == 12
    assert read_json(checkpoint_dirs(trunk)[-1] / "state.json")["parent"] is None
    # Rerunning a completed branch trains nothing.
    again = run_train(data_cache, a, *a_args)
    _ok(again)
    assert "already completed" in again.stderr

    from scaling.trainer.branch import branch_curve

    curve = branch_curve(a)
    assert [r.step for r in curve] == list(range(1, 17))
    assert [r.loss for r in curve] == pytest.approx([s_rows[s]["loss"] for s in range(1, 17)], abs=1e-6)


@pytest.mark.slow
def test_branch_refuses_a_trunk_of_another_config(data_cache, tmp_path):
    trunk, a = tmp_path / "trunk", tmp_path / "a"
    _ok(run_train(data_cache, trunk, *TRUNK[:3], "train.lr=1e-3"))
    proc = run_train(data_cache, a, *BRANCH_A)
    assert proc.returncode != 0 and "train.lr: 0.001 -> 0.003" in proc.stderr
    assert not (a / "metrics.jsonl").exists()


def _cfg(**train) -> TrainAppConfig:
    cfg = TrainAppConfig(model=FAMILIES["gpt"].config())
    cfg.train.tokens = 1e6
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


def test_bad_branch_configs_are_named_before_anything_runs():
    with pytest.raises(ConfigError, match=r"train.parent='t'.*train.schedule=wsd"):
        validate(_cfg(parent="t", schedule="cosine"))
    with pytest.raises(ConfigError, match=r"decay_fraction=1.0.*\(0, 1\)"):
        validate(_cfg(parent="t", schedule="wsd", decay_fraction=1.0))
    cfg = _cfg(schedule="cosine")
    cfg.run.fork_tokens = [1e5]
    with pytest.raises(ConfigError, match="run.fork_tokens.*train.schedule=constant"):
        validate(cfg)
    validate(_cfg(parent="t", schedule="wsd", decay_fraction=0.2))
