"""What train.compile=true costs and saves: the same run trained eager and compiled (torch.compile,
inductor), through scaling-train. Prints the compile time (the extra wall time of the first step)
and the steady-state step-time ratio (median tokens/s after the first 20% of steps).

    python bench/compile_check.py [--steps 64] [-- extra scaling-train overrides]

On a CPU the compile takes tens of seconds and a small model's steps speed up little, so a short
run loses; on a GPU, run it with the model you will train (e.g. model=gpt model.n_layers=12).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from scaling.rundir import read_metrics

BASE = ["model=gpt_debug", "data=synthetic", "logger.wandb.mode=disabled", "train.global_batch_size=16",
        "train.eval_tokens=1024"]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("extra", nargs="*", help="more scaling-train overrides")
    args = ap.parse_args(argv)
    out = Path(tempfile.mkdtemp(prefix="compile-check-"))
    env = {**os.environ, "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu")}
    rows = {}
    for name, flag in (("eager", "false"), ("compiled", "true")):
        cmd = [sys.executable, "-m", "scaling.train", f"run.dir={out / name}", *BASE,
               f"train.tokens={args.steps * 16 * 64}", f"train.compile={flag}", *args.extra]  # fmt: skip
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        rows[name] = read_metrics(out / name / "metrics.jsonl")
    steady = {k: statistics.median(r["tokens_per_s"] for r in v[len(v) // 5:]) for k, v in rows.items()}
    first = {k: 16 * 64 / v[0]["tokens_per_s"] for k, v in rows.items()}  # seconds of step 1 (it compiles)
    print(f"{args.steps} steps, {' '.join(args.extra) or 'gpt_debug on synthetic'}")
    print(f"  first step: eager {first['eager']:.2f} s, compiled {first['compiled']:.2f} s "
          f"(compile time about {first['compiled'] - first['eager']:.1f} s)")
    print(f"  steady state: eager {steady['eager']:,.0f} tok/s, compiled {steady['compiled']:,.0f} tok/s, "
          f"step-time ratio compiled/eager {steady['eager'] / steady['compiled']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
