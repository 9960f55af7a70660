"""Coordinate check of muP against the standard parametrization, for the GPT and the CNN.

Trains each shape a few Adam steps (at one LR for every shape) and records the RMS of every
block's output and of the logits after each step (scaling/coord_check.py). Prints the log-log
slope of RMS against width (and, for the GPT, against depth) per layer, and draws RMS against
width, one panel per parametrization and step, to a PNG.

Reading it: under mup every curve is flat after the first steps (slope near 0); under sp the
logits and hidden activations grow with width, which is why one LR cannot serve every size.

    python bench/coord_check.py [--out coord_check.png] [--steps 4] [--lr 1e-2]
"""

from __future__ import annotations

import argparse
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from scaling.coord_check import coord_check, layers, slope  # noqa: E402
from scaling.families.base import MupConfig  # noqa: E402
from scaling.families.cnn import CNNConfig  # noqa: E402
from scaling.families.gpt import GPTConfig  # noqa: E402

GPT_WIDTHS = (32, 64, 128, 256, 512)
GPT_DEPTHS = (2, 4, 8, 16)
CNN_WIDTHS = (8, 16, 32, 64, 128)


def gpt(width: int, depth: int, p: str) -> GPTConfig:
    return GPTConfig(n_layers=depth, d_model=width, n_heads=1, seq_len=32, vocab_size=64, parametrization=p,
                     mup=MupConfig(base_width=32, base_depth=2, base_head_dim=32))  # fmt: skip


def cnn(width: int, p: str) -> CNNConfig:
    return CNNConfig(width=width, depth=1, n_stages=3, image_size=16, in_channels=3, n_classes=10, parametrization=p,
                     mup=MupConfig(base_width=8, base_depth=1))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="coord_check.png")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-2)
    args = ap.parse_args(argv)

    studies = {
        ("GPT", "width"): {p: coord_check([gpt(w, 2, p) for w in GPT_WIDTHS], args.steps, args.lr) for p in ("sp", "mup")},
        ("GPT", "depth"): {p: coord_check([gpt(64, d, p) for d in GPT_DEPTHS], args.steps, args.lr) for p in ("sp", "mup")},
        ("CNN", "width"): {p: coord_check([cnn(w, p) for w in CNN_WIDTHS], args.steps, args.lr) for p in ("sp", "mup")},
    }  # fmt: skip
    fig, axes = plt.subplots(len(studies), 2, figsize=(11, 4 * len(studies)), squeeze=False)
    print(f"log-log slope of RMS after step {args.steps} (lr {args.lr:g}): 0 is flat")
    for row, ((family, by), runs) in enumerate(studies.items()):
        for col, (p, records) in enumerate(runs.items()):
            names = [n for n in layers(records) if n in ("block.0", "block.last", "logits")]
            print(f"  {family} {by:5s} {p:3s}  " + "  ".join(f"{n} {slope(records, n, args.steps, by):+.2f}" for n in names))
            ax = axes[row][col]
            for name in names:
                for step in (0, args.steps):
                    pts = sorted((getattr(r, by), r.rms) for r in records if r.layer == name and r.step == step)
                    ax.plot(*zip(*pts), marker="o", linestyle="-" if step else ":",
                            label=f"{name}, step {step}")  # fmt: skip
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel(by)
            ax.set_ylabel("RMS of the output")
            ax.set_title(f"{family}, {p}: RMS against {by}")
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"figure: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
