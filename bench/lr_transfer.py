"""LR transfer under sp and mup, measured: sweep the LR on a log grid, 2 seeds per point, for the
GPT on the built-in text, at widths spanning 8x (fixed depth) and depths spanning 4x (fixed width),
and find each shape's best LR.

Every run trains the same number of tokens with the same batch and schedule (muP transfers across
width and depth, not across training length or batch size). `train.lr` is the base LR: under mup
each role's LR is scaled from it (scaling.families.base.MupScales), with the base shape at
width 32, depth 2. The best LR of a shape is the minimum of a parabola in log LR fitted to the
seed-mean losses of the grid point with the lowest loss and its neighbours (up to 2 on each
side); a minimum on the grid's edge is reported as such, not extrapolated. A seed that diverged
counts as worse than any finished one; a run that is missing or failed for another reason measured
nothing, so a shape with one is not judged (an unmeasured point could hold the minimum) and the
report names the run.

Prints a table of best LRs per shape and their spread (max / min) per parametrization, writes
lr_transfer.json and a figure (loss against LR, one curve per shape). Runs live in --dir and a
rerun reuses finished ones. It is a benchmark, not a test: about half an hour on 2 CPU cores.

    python bench/lr_transfer.py [--dir runs/lr_transfer] [--out docs/lr_transfer.png]
    # on a machine with many cores or a GPU: 8 shards at once, then the report alone
    for k in 0 1 2 3 4 5 6 7; do python bench/lr_transfer.py --shard $k/8 --train-only & done; wait
    python bench/lr_transfer.py
    python bench/lr_transfer.py --shapes depth   # the depth sweep alone (width 32, depths 2-8)
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


def shapes(which: str = "all") -> list[tuple[int, int]]:
    """(width, depth) pairs: 'width' (WIDTHS at depth 2), 'depth' (DEPTHS at width 32) or 'all'."""
    width = [(w, 2) for w in WIDTHS]
    depth = [(32, d) for d in DEPTHS]
    return {"width": width, "depth": depth, "all": width + [s for s in depth if s not in width]}[which]


def point(results: list[dict | None]) -> tuple[float | None, list[str]]:
    """The seed-mean eval loss of one grid point, and what is wrong with it. A seed that diverged
    (the trainer stops on a non-finite loss) is left out of the mean, and a point whose every seed
    diverged is inf: worse than any other. A seed that is missing, or failed for another reason,
    measured nothing, so the point is None (unknown), never inf."""
    from scaling.launch.tune import diverged

    vals, problems, unknown = [], [], False
    for seed, r in zip(SEEDS, results):
        status, error = (r or {}).get("status"), (r or {}).get("error")
        if status == "completed" and r.get("eval_loss") is not None and math.isfinite(r["eval_loss"]):
            vals.append(float(r["eval_loss"]))
        elif diverged(status, error):
            problems.append(f"seed {seed} diverged")
        else:
            unknown = True
            problems.append(f"seed {seed} {status or 'missing'}{': ' + str(error)[:80] if error else ''}")
    if unknown:
        return None, problems
    return (float(np.mean(vals)) if vals else float("inf")), problems


def best_lr(lrs: list[float], losses: list[float | None]) -> tuple[float | None, bool]:
    """(best LR, interior): the vertex of a parabola in log LR through the discrete minimum and up
    to two neighbours on each side; on the grid's edge, the edge LR and False. None when a point
    is unknown (a missing or failed run): an unmeasured point could hold the minimum."""
    if any(v is None for v in losses):
        return None, False
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
    ap.add_argument("--shapes", choices=("all", "width", "depth"), default="all",
                    help="the width sweep (depth 2), the depth sweep (width 32), or both (default)")
    args = ap.parse_args(argv)
    k, n = (int(v) for v in args.shard.split("/"))
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from scaling.launch.tune import diverged
    from scaling.rundir import read_result
    from scaling.train import run_overrides

    root = Path(args.dir)
    grid = [(p, w, d, lr, s) for p in ("sp", "mup") for w, d in shapes(args.shapes) for lr in LRS for s in SEEDS][k::n]
    started = time.time()
    for i, (p, w, d, lr, seed) in enumerate(grid):
        run = root / p / f"w{w}-d{d}" / f"lr{lr:.4g}-s{seed}"
        before = read_result(run) or {}
        if before.get("status") != "completed" and not diverged(before.get("status"), before.get("error")):
            # (a run that diverged would diverge again)
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
        for w, d in shapes(args.shapes):
            losses, problems = [], {}
            for lr in LRS:
                loss, wrong = point([read_result(root / p / f"w{w}-d{d}" / f"lr{lr:.4g}-s{s}") for s in SEEDS])
                losses.append(loss)
                if wrong:
                    problems[f"{lr:.4g}"] = wrong
            lr, interior = best_lr(list(LRS), losses)
            results["shapes"][f"{p} w{w} d{d}"] = {"parametrization": p, "width": w, "depth": d, "losses": losses,
                                                   "best_lr": lr, "interior": interior, "problems": problems}  # fmt: skip
    print(f"\n{'shape':22s} {'best lr':>9s}  interior  min loss")
    for p in ("sp", "mup"):
        best = [v for v in results["shapes"].values() if v["parametrization"] == p]
        for v in best:
            known = [x for x in v["losses"] if x is not None]
            shown = f"{v['best_lr']:9.3g}" if v["best_lr"] is not None else f"{'unknown':>9s}"
            print(f"{p:4s} width {v['width']:4d} depth {v['depth']:2d}  {shown}  {str(v['interior']):8s}  "
                  f"{min(known):.4f}" + "".join(f"\n      lr {k}: {'; '.join(m)}" for k, m in v["problems"].items()))  # fmt: skip
        judged = [v for v in best if v["best_lr"] is not None]
        if len(judged) < len(best):
            print(f"{p}: {len(best) - len(judged)} shape(s) have a missing or failed run and are not judged; "
                  f"rerun the bench to finish them")
        parts = []
        for name, group in (("over all shapes", judged), ("across widths", [v for v in judged if v["depth"] == 2]),
                            ("across depths", [v for v in judged if v["width"] == 32])):  # fmt: skip
            lrs = [v["best_lr"] for v in group]
            if len(lrs) >= 2:
                parts.append(f"{max(lrs) / min(lrs):.2f}x {name}")
                results.setdefault(f"{p}_spreads", {})[name] = max(lrs) / min(lrs)
        print(f"{p}: best-LR spread (max / min) " + "; ".join(parts) + "\n")
    Path(args.json).write_text(json.dumps(results, indent=1))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, p in zip(axes, ("sp", "mup")):
        for v in results["shapes"].values():
            if v["parametrization"] == p:
                ys = [np.nan if x is None else x for x in v["losses"]]
                line = ax.plot(LRS, ys, marker="o", label=f"width {v['width']}, depth {v['depth']}")[0]
                if v["best_lr"] is not None:
                    ax.axvline(v["best_lr"], color=line.get_color(), linestyle=":", linewidth=1)
        ax.set_xscale("log")
        ax.set_xlabel("train.lr (the base LR under mup)")
        ax.set_title(f"{p}: eval loss against LR (mean of {len(SEEDS)} seeds)")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("eval loss (nats/token)")
    lo = min(x for v in results["shapes"].values() for x in v["losses"] if x is not None)
    axes[0].set_ylim(lo - 0.05, lo + 1.0)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"figure: {args.out}; results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
