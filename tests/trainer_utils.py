"""Run the real trainer in subprocesses, as a user or a launcher would."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# A tiny GPT on the synthetic Markov language: 64-token sequences, 16 per step (1024 tokens).
TINY = [
    "model=gpt_debug",
    "data=synthetic",
    "model.n_layers=2",
    "model.d_model=32",
    "model.n_heads=2",
    "train.global_batch_size=16",
    "train.lr=3e-3",
    "train.warmup_tokens=2048",
    "train.eval_tokens=2048",
    "logger.wandb.mode=disabled",
]


def env(cache: Path) -> dict:
    out = dict(os.environ)
    out["SCALING_CACHE"] = str(cache)
    out["WANDB_SILENT"] = "true"
    out.pop("RANK", None)
    out.pop("WORLD_SIZE", None)
    out.pop("LOCAL_RANK", None)
    return out


def train_cmd(run_dir: Path, *overrides: str, nproc: int = 1, base: list[str] = TINY) -> list[str]:
    args = [f"run.dir={run_dir}", *base, *overrides]
    if nproc == 1:
        return [sys.executable, "-m", "scaling.train", *args]
    return [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
        "--master_port", str(29600 + os.getpid() % 1000), "-m", "scaling.train", *args,
    ]  # fmt: skip


def run_train(cache: Path, run_dir: Path, *overrides: str, nproc: int = 1, timeout: int = 300,
              base: list[str] = TINY):
    return subprocess.run(
        train_cmd(run_dir, *overrides, nproc=nproc, base=base), cwd=ROOT, env=env(cache), capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data-cache")


def wait_for_step(run: Path, step: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Block until the trainer `proc` training into `run` has logged `step` (its metrics.jsonl);
    fail with the trainer's stderr if it exits first, or after `timeout` seconds."""
    from scaling.rundir import read_metrics

    deadline = time.time() + timeout
    while time.time() < deadline:
        rows = read_metrics(run / "metrics.jsonl")
        if rows and rows[-1]["step"] >= step:
            return
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else "trainer exited"
        time.sleep(0.02)
    raise AssertionError(f"step {step} not reached")
