"""LR transfer under sp and mup, measured: sweep the LR on a log grid, 2 seeds per point, for the
GPT on the built-in text, at widths spanning 8x (fixed depth) and depths spanning 4x (fixed width),
and find each shape's best LR.

Every run trains the same number of tokens with the same batch and schedule (muP transfers across
width and depth, not across training length or batch size). `train.lr` is the base LR: under mup
each role's LR is scaled from it (scaling.families.base.MupScales), with the base shape at
width 32, depth 2. The best LR of a shape is the minimum of a parabola in log LR fitted to the
seed-mean losses of the grid point with the lowest loss and its neighbours (up to 2 on each
side); a minimum on the grid's edge is reported as such, not extrapolated.

Prints a table of best LRs per shape and their spread (max / min) per parametrization, writes
lr_transfer.json and a figure (loss against LR, one curve per shape). Runs live in --dir and a
rerun reuses finished ones. It is a benchmark, not a test: about half an hour on 2 CPU cores.

    python bench/lr_transfer.py [--dir runs/lr_transfer] [--out docs/lr_transfer.png]
    # on a machine with many cores or a GPU: 8 shards at once, then the report alone
    for k in 0 1 2 3 4 5 6 7; do python bench/lr_transfer.py --shard $k/8 --train-only & done; wait
    python bench/lr_transfer.py
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

WIDTHS = (32, 64, 128, 256)  # at depth 2: 8x
DEPTHS = (2, 4, 8)  # at width 32: 4x
LRS = tuple(1e-3 * 2**k for k in range(8))  # 1e-3 to 0.128
SEEDS = (0, 1)
BASE = ("model.mup.base_width=32", "model.mup.base_depth=2", "model.mup.base_head_dim=32")
COMMON = (
    "model=gpt_debug", "model.n_heads=1", "data=stdlib_text", "data.seq_len=64", "train.tokens=262144",
    "train.global_batch_size=32", "train.warmup_tokens=26214", "train.eval_tokens=32768", "train.schedule=cosine",
    "logger.wandb.mode=disabled",
)  # fmt: skip


def shapes() -> list[tuple[int, int]]:
    return [(w, 2) for w in WIDTHS] + [(32, d) for d in DEPTHS if d != 2]


def best_lr(lrs: list[float], losses: list[float]) -> tuple[float, bool]:
    """(best LR, interior): the vertex of a parabola in log LR through the discrete minimum and up
    to two neighbours on each side; on the grid's edge, the edge LR and False."""
    i = int(np.argmin(losses))
    if i == 0 or i == len(lrs) - 1:
        return lrs[i], False
    lo, hi = max(0, i - 2), min(len(lrs), i + 3)
    x, y = np.log(lrs[lo:hi]), np.array(losses[lo:hi])
    if not np.all(np.isfinite(y)):  # a diverged or missing neighbour: the grid point itself
        return lrs[i], True
    a, b, _ = np.polyfit(x, y, 2)
    if a <= 0:
        return lrs[i], True
    return float(math.exp(min(max(-b / (2 * a), x[0]), x[-1]))), True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default="runs/lr_transfer")
    ap.add_argument("--out", default="lr_transfer.png")
    ap.add_argument("--json", default="lr_transfer.json")
    ap.add_argument("--shard", default="0/1", help="K/N: train only every N-th run of the grid, from the K-th")
    ap.add_argument("--train-only", action="store_true", help="train (this shard's runs) and write no report")
    args = ap.parse_args(argv)
    k, n = (int(v) for v in args.shard.split("/"))
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from scaling.rundir import read_result
    from scaling.train import run_overrides

    root = Path(args.dir)
    grid = [(p, w, d, lr, s) for p in ("sp", "mup") for w, d in shapes() for lr in LRS for s in SEEDS][k::n]
    started = time.time()
    for i, (p, w, d, lr, seed) in enumerate(grid):
        run = root / p / f"w{w}-d{d}" / f"lr{lr:.4g}-s{seed}"
        if (read_result(run) or {}).get("status") != "completed":
            overrides = [f"run.dir={run}", *COMMON, f"model.d_model={w}", f"model.n_layers={d}", f"train.lr={lr}",
                         f"train.seed={seed}", f"model.parametrization={p}", *BASE]  # fmt: skip
            code = run_overrides(overrides)
            if code not in (0, 1):
                print(f"run {run} exited {code}", file=sys.stderr)
                return code
        done = i + 1
        eta = (time.time() - started) / done * (len(grid) - done)
        print(f"[{done}/{len(grid)}] {p} width {w} depth {d} lr {lr:.3g} seed {seed}; ETA {eta / 60:.1f} min",
              flush=True)  # fmt: skip
    if args.train_only:
        return 0

    results: dict = {"grid": list(LRS), "seeds": list(SEEDS), "shapes": {}}
    for p in ("sp", "mup"):
        for w, d in shapes():
            losses = []
            for lr in LRS:
                vals = [(read_result(root / p / f"w{w}-d{d}" / f"lr{lr:.4g}-s{s}") or {}).get("eval_loss") for s in SEEDS]
                vals = [v for v in vals if v is not None and math.isfinite(v)]
                losses.append(float(np.mean(vals)) if vals else float("inf"))
            lr, interior = best_lr(list(LRS), losses)
            results["shapes"][f"{p} w{w} d{d}"] = {"parametrization": p, "width": w, "depth": d, "losses": losses,
                                                   "best_lr": lr, "interior": interior}  # fmt: skip
    print(f"\n{'shape':22s} {'best lr':>9s}  interior  min loss")
    for p in ("sp", "mup"):
        best = [v for v in results["shapes"].values() if v["parametrization"] == p]
        for v in best:
            print(f"{p:4s} width {v['width']:4d} depth {v['depth']:2d}  {v['best_lr']:9.3g}  {str(v['interior']):8s}  "
                  f"{min(v['losses']):.4f}")  # fmt: skip
        lrs = [v["best_lr"] for v in best]
        widths = [v["best_lr"] for v in best if v["depth"] == 2]
        depths = [v["best_lr"] for v in best if v["width"] == 32]
        results[f"{p}_spread"] = max(lrs) / min(lrs)
        print(f"{p}: best-LR spread (max / min) {max(lrs) / min(lrs):.2f}x over all shapes; "
              f"{max(widths) / min(widths):.2f}x across widths, {max(depths) / min(depths):.2f}x across depths\n")
    Path(args.json).write_text(json.dumps(results, indent=1))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, p in zip(axes, ("sp", "mup")):
        for v in results["shapes"].values():
            if v["parametrization"] == p:
                line = ax.plot(LRS, v["losses"], marker="o", label=f"width {v['width']}, depth {v['depth']}")[0]
                ax.axvline(v["best_lr"], color=line.get_color(), linestyle=":", linewidth=1)
        ax.set_xscale("log")
        ax.set_xlabel("train.lr (the base LR under mup)")
        ax.set_title(f"{p}: eval loss against LR (mean of {len(SEEDS)} seeds)")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("eval loss (nats/token)")
    lo = min(min(v["losses"]) for v in results["shapes"].values())
    axes[0].set_ylim(lo - 0.05, lo + 1.0)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"figure: {args.out}; results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
