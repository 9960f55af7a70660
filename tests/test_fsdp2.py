"""train.engine=fsdp: PyTorch's FSDP2 (fully_shard) through the same loop, checkpoints, metrics and
result as DeepSpeed, on CPU with gloo: two processes match one, a killed run resumes exactly, its
final weights export, and the new key moves no run id."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

import scaling.config as schema
from scaling.config import TrainAppConfig, TrainConfig
from scaling.families.cnn import CNNConfig
from scaling.families.gpt import GPTConfig
from scaling.rundir import EXIT_CONFIG, checkpoint_dirs, read_metrics, read_result
from scaling.runid import config_hash
from trainer_utils import ROOT, data_cache, env, run_train, train_cmd, wait_for_step  # noqa: F401 - fixture

FSDP2 = ("train.engine=fsdp", "train.device=cpu")


def _ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stderr[-3000:]


def _losses(run: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(run / "metrics.jsonl")]


def _exported_eval_loss(run: Path, out: Path) -> float:
    """The run's final evaluation redone on its exported weights, with our own loader."""
    import math

    import torch

    from scaling.data import eval_batches, prepare_dataset
    from scaling.export import export, load_exported, run_config

    export(run, out, fmt="safetensors")  # no --step: the final checkpoint
    model = load_exported(out)
    cfg = run_config(run)
    manifest = prepare_dataset(cfg.data)
    n = math.ceil(cfg.train.eval_tokens / manifest.seq_len)
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in eval_batches(manifest, num_samples=n, batch_size=16, rank=0, world_size=1):
            total += torch.nn.functional.cross_entropy(model(x).flatten(0, -2), y.flatten(), reduction="sum").item()
            count += y.numel()
    return total / count


# ---- config and run id -------------------------------------------------------------------------
def test_engine_is_validated_naming_the_key():
    assert any("train.engine='megatron'" in p for p in TrainConfig(tokens=1e4, engine="megatron").problems())
    problems = TrainConfig(tokens=1e4, engine="fsdp", zero_stage=2).problems()
    assert any("train.zero_stage=2 is a DeepSpeed setting" in p and "train.engine=fsdp" in p for p in problems)
    assert TrainConfig(tokens=1e4, engine="fsdp").problems() == []


def test_every_engine_the_config_names_has_a_class():
    from scaling.trainer.engine import ENGINES, Engine

    assert set(ENGINES) == set(schema.ENGINES)
    for name, cls in ENGINES.items():
        assert issubclass(cls(), Engine) and cls().name == name


def test_the_engine_key_moves_no_run_id():
    # Hashes recorded before train.engine and train.final_checkpoint existed.
    gpt = TrainAppConfig(model=GPTConfig(n_layers=2, d_model=32, n_heads=2, vocab_size=65, seq_len=64),
                         train=TrainConfig(tokens=16384, zero_stage=2, checkpoint_every_tokens=4096))
    cnn = TrainAppConfig(model=CNNConfig(), train=TrainConfig(tokens=512, precision="bf16"))
    assert (config_hash(gpt), config_hash(cnn)) == ("4b0ace", "d871b3")

    explicit = replace(gpt, train=replace(gpt.train, engine="deepspeed", final_checkpoint=False))
    assert config_hash(explicit) == config_hash(gpt)
    # Another engine is another run: its checkpoints are in another layout, its sums round otherwise.
    fsdp2 = replace(gpt, train=replace(gpt.train, engine="fsdp", zero_stage=0))
    assert config_hash(fsdp2) != config_hash(replace(gpt, train=replace(gpt.train, zero_stage=0)))


# ---- one process, in the default tier ----------------------------------------------------------
def test_a_one_process_fsdp2_run_completes_exports_and_keeps_its_engine(data_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("SCALING_CACHE", str(data_cache))
    run = tmp_path / "run"
    budget = ("train.tokens=4096", "train.checkpoint_every_tokens=2048")  # checkpoints at steps 2 and 4
    _ok(run_train(data_cache, run, *budget, *FSDP2))
    result = read_result(run)
    assert result["status"] == "completed" and result["steps"] == 4 and len(_losses(run)) == 4
    assert [p.name for p in checkpoint_dirs(run)] == ["step00000002", "step00000004"]
    final = checkpoint_dirs(run)[-1]
    meta = json.loads((final / "state.json").read_text())
    assert meta["engine"] == "fsdp" and meta["train_state"]["step"] == 4
    assert sorted(p.name for p in (final / "state").iterdir()) == ["fsdp2_model_states.pt", "fsdp2_optim_states.pt"]
    assert _exported_eval_loss(run, tmp_path / "st") == pytest.approx(result["eval_loss"], abs=1e-5)

    # The run directory belongs to its engine: DeepSpeed is refused, naming the key.
    other = run_train(data_cache, run, *budget, "train.device=cpu")
    assert other.returncode == EXIT_CONFIG
    assert "train.engine: 'fsdp' -> 'deepspeed'" in other.stderr

    # A torn final checkpoint (and no result): the run falls back to step 2 and trains the same steps again.
    losses = _losses(run)
    (run / "result.json").unlink()
    model_file = final / "state" / "fsdp2_model_states.pt"
    model_file.write_bytes(model_file.read_bytes()[:1000])
    again = run_train(data_cache, run, *budget, *FSDP2)
    _ok(again)
    assert "fsdp2_model_states.pt is torn or corrupt" in again.stderr and "at step 2" in again.stderr
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2, 3, 4]
    assert _losses(run) == pytest.approx(losses, abs=1e-6)
    assert read_result(run)["eval_loss"] == pytest.approx(result["eval_loss"], abs=1e-6)


# ---- two processes, and resume (slow tier) -----------------------------------------------------
BUDGET = ("train.tokens=16384", "model.tie_embeddings=true")  # 16 steps of 1024 tokens


@pytest.mark.slow
def test_two_process_fsdp2_matches_one_process_and_deepspeed(data_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("SCALING_CACHE", str(data_cache))
    one, two, ds = tmp_path / "one", tmp_path / "two", tmp_path / "deepspeed"
    _ok(run_train(data_cache, one, *BUDGET, *FSDP2))
    _ok(run_train(data_cache, two, *BUDGET, *FSDP2, nproc=2))
    _ok(run_train(data_cache, ds, *BUDGET, "train.device=cpu"))
    reference = _losses(one)
    assert len(reference) == 16 and reference[0] > reference[-1]
    assert read_result(two)["world_size"] == 2
    assert _losses(two) == pytest.approx(reference, abs=1e-4)
    assert read_result(two)["eval_loss"] == pytest.approx(read_result(one)["eval_loss"], abs=1e-4)
    # The same loop under DeepSpeed ZeRO-0 gives the same curve.
    assert _losses(ds) == pytest.approx(reference, abs=1e-4)
    # The two-process run's final weights, gathered from its shards, export (tied embeddings).
    assert _exported_eval_loss(two, tmp_path / "st") == pytest.approx(read_result(two)["eval_loss"], abs=1e-5)


def _children(pid: int) -> list[int]:
    """The live processes whose parent is `pid` (Linux /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("resume_nproc", [2, 1])
def test_fsdp2_resume_after_sigkill_is_exact(data_cache, tmp_path, resume_nproc):
    budget = ("train.tokens=24576", "train.checkpoint_every_tokens=4096", "train.schedule=wsd", *FSDP2)
    straight = tmp_path / "straight"
    _ok(run_train(data_cache, straight, *budget, nproc=2))

    run = tmp_path / "killed"
    proc = subprocess.Popen(train_cmd(run, *budget, nproc=2), cwd=ROOT, env=env(data_cache),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        wait_for_step(run, 14, proc, timeout=300)
    finally:
        # torchrun starts each worker in a session of its own: kill the workers, then torchrun, as
        # a lost node would (SIGKILL: nothing is saved).
        workers = _children(proc.pid)
        for pid in workers + [proc.pid]:
            os.kill(pid, signal.SIGKILL)
        proc.wait()
    assert len(workers) == 2
    assert read_result(run) is None
    saved = checkpoint_dirs(run)
    assert saved and len(saved) <= 2  # keep_checkpoints=2
    assert 4 <= int(saved[-1].name.removeprefix("step")) < 24

    # Resumed on two processes, or on one (FSDP2's checkpoints hold whole states).
    _ok(run_train(data_cache, run, *budget, nproc=resume_nproc))
    want, got = read_metrics(straight / "metrics.jsonl"), read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in got] == list(range(1, 25))
    for a, b in zip(want, got):
        for key in ("loss", "lr", "tokens", "flops"):
            assert b[key] == pytest.approx(a[key], abs=1e-6), (a["step"], key)
    assert read_result(run)["eval_loss"] == pytest.approx(read_result(straight)["eval_loss"], abs=1e-6)
    assert read_result(run)["world_size"] == resume_nproc
