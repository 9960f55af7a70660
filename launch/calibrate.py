"""How to split this machine's cores between one-process runs: how many at once, how many threads
each. Measured once per host (a few seconds) and cached, because the answer depends on the CPU,
its caches and its memory bandwidth, not on a constant: small models gain little from a second
thread, so several runs side by side usually train more tokens per second than one run with all
the cores, but not on every machine.

For each split (runs x threads, runs dividing the cores), that many processes run the same small
training step (forward and backward of a transformer-sized MLP block over 2,048 tokens) for
`MEASURE_S` seconds, all starting at the same instant, and the tokens per second of all of them
are added up. The split with the most wins.

Torch-free here: the measurement runs in subprocesses.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

MEASURE_S = 1.5
FORMAT = "scaling-calibration/1"

_STEP = r"""
import sys, time, torch
threads, start, seconds = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
torch.set_num_threads(threads)
torch.manual_seed(0)
x = torch.randn(2048, 64)
w1 = torch.randn(64, 256, requires_grad=True)
w2 = torch.randn(256, 64, requires_grad=True)
def step():
    ((x @ w1).relu() @ w2).square().mean().backward()
for _ in range(5):
    step()
while time.time() < start:
    time.sleep(0.001)
n, t0 = 0, time.perf_counter()
while time.perf_counter() - t0 < seconds:
    step(); n += 1
print(n * 2048 / (time.perf_counter() - t0))
"""


def measure(runs: int, threads: int, python: str = sys.executable, seconds: float = MEASURE_S) -> float:
    """Tokens per second of `runs` processes with `threads` threads each, side by side."""
    start = time.time() + 4.0  # after every process has imported torch
    procs = [subprocess.Popen([python, "-c", _STEP, str(threads), str(start), str(seconds)], stdout=subprocess.PIPE,
                              text=True) for _ in range(runs)]  # fmt: skip
    total = 0.0
    for p in procs:
        out, _ = p.communicate(timeout=120)
        if p.returncode != 0:
            raise RuntimeError(f"calibration step exited {p.returncode}")
        total += float(out.strip().splitlines()[-1])
    return total


def splits(cores: int) -> list[tuple[int, int]]:
    return [(runs, cores // runs) for runs in range(1, cores + 1) if cores % runs == 0]


def _cache_path(cores: int, cache_dir: Optional[str] = None) -> Path:
    cache = Path(cache_dir or os.environ.get("SCALING_CACHE") or Path.home() / ".cache" / "scaling")
    return cache / f"calibration-{socket.gethostname()}-{cores}cores.json"


def cached_core_split(cores: int, cache_dir: Optional[str] = None) -> Optional[tuple[int, int]]:
    """The split `core_split` measured on this host before, or None when it has not yet."""
    if cores == 1:
        return 1, 1
    try:
        raw = json.loads(_cache_path(cores, cache_dir).read_text())
        if raw.get("format") == FORMAT:
            return int(raw["runs"]), int(raw["threads"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def core_split(cores: int, cache_dir: Optional[str] = None, echo=print) -> tuple[int, int]:
    """(runs at once, threads per run) for one-process runs on this host, measured once and cached."""
    cached = cached_core_split(cores, cache_dir)
    if cached is not None:
        return cached
    path = _cache_path(cores, cache_dir)
    cache = path.parent
    echo(f"calibrating how to split {cores} cores between runs (once for this machine, a few seconds)")
    figures = {f"{r}x{t}": measure(r, t) for r, t in splits(cores)}
    best = max(figures, key=figures.get)
    runs, threads = (int(v) for v in best.split("x"))
    echo("  tokens/s by runs x threads: " + ", ".join(f"{k}: {v:,.0f}" for k, v in figures.items()) + f"; using {best}")
    try:
        cache.mkdir(parents=True, exist_ok=True)
        record = {"format": FORMAT, "runs": runs, "threads": threads, "tokens_per_s": figures, "measured": time.time()}
        path.write_text(json.dumps(record, indent=1) + "\n")
    except OSError:
        pass  # measured again next time
    return runs, threads
