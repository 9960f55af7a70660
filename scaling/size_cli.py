"""`scaling-size`: the ladder's shape for a parameter count, or a named size, with its counts.

    scaling-size gpt --params 25M [--vocab-size 50304 --seq-len 2048] [--count total|nonembedding]
    scaling-size gpt --size debug
    scaling-size cnn --params 1M [--image-size 32 --channels 3 --classes 10]

Runs without torch (login nodes). Bad input prints one message and exits with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from scaling.config import FLOPS_CONVENTIONS, CNNConfig, GPTConfig
from scaling.counting import count_params, flops_per_sample, forward_flops
from scaling.errors import ConfigError, ScalingError
from scaling.ladder import shape_for_params

TOKENS_PER_PARAM = 20  # Hoffmann et al.'s compute-optimal ratio ("1xC")


def _human(n: float) -> str:
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{suffix}"
    return f"{n:.3g}"


def _rows(title: str, rows: list[tuple[str, str]]) -> list[str]:
    width = max(len(k) for k, _ in rows)
    return [title] + [f"  {k.ljust(width)}  {v}" for k, v in rows]


def _named_size(family: str, name: str) -> GPTConfig | CNNConfig:
    # The size table lives next to the modules and importing it imports torch, so only --size
    # pays for that; --params stays torch-free for login nodes.
    from scaling.models import SIZES

    if name not in SIZES[family]:
        raise ConfigError(f"--size={name!r} is not a {family} size; use one of {sorted(SIZES[family])}")
    return SIZES[family][name]


def report(cfg: GPTConfig | CNNConfig) -> str:
    """The readable table `scaling-size` prints for `cfg`."""
    params = count_params(cfg)
    shape = [(f.name, str(getattr(cfg, f.name))) for f in dataclasses.fields(cfg) if f.name != "family"]
    if isinstance(cfg, GPTConfig):
        shape[[k for k, _ in shape].index("d_ff")] = ("d_ff", str(cfg.ffn_dim))
    lines = _rows(f"{cfg.family} shape", shape)
    lines += _rows(
        "parameters",
        [
            ("total", f"{params.total:,} ({_human(params.total)})"),
            ("embedding", f"{params.embedding:,} ({_human(params.embedding)})"),
            ("non-embedding", f"{params.nonembedding:,} ({_human(params.nonembedding)})"),
        ],
    )
    fwd = forward_flops(cfg)
    if isinstance(cfg, GPTConfig):
        per_token = {c: flops_per_sample(cfg, c) for c in FLOPS_CONVENTIONS}
        tokens = TOKENS_PER_PARAM * params.total
        lines += _rows(
            "training FLOPs per token (forward + backward)",
            [(c, f"{v:.4g}") for c, v in per_token.items()]
            + [("matmuls as run, x 3", f"{3 * fwd.matmul_total / cfg.seq_len:.4g} (attention non-causal)")],
        )
        lines += _rows(
            f"compute-optimal budget ({TOKENS_PER_PARAM} tokens per total parameter)",
            [("tokens", f"{tokens:.4g} ({_human(tokens)})")]
            + [(f"FLOPs ({c})", f"{v * tokens:.4g}") for c, v in per_token.items()],
        )
    else:
        per_image = flops_per_sample(cfg)
        images = TOKENS_PER_PARAM * params.total
        lines += _rows(
            "FLOPs per image",
            [
                ("forward (2 x MACs)", f"{fwd.matmul_total:.4g}"),
                ("training (x 3)", f"{per_image:.4g}"),
                ("training, 1M images", f"{per_image * 1e6:.4g}"),
                (f"training, {TOKENS_PER_PARAM} images/param", f"{per_image * images:.4g}"),
            ],
        )
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scaling-size", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="family", required=True)
    gpt = sub.add_parser("gpt", help="a decoder-only transformer")
    gpt.add_argument("--vocab-size", type=int, default=50304)
    gpt.add_argument("--seq-len", type=int, default=2048)
    gpt.add_argument("--count", choices=("nonembedding", "total"), default="nonembedding",
                     help="what --params counts (default: non-embedding, Kaplan's N)")
    gpt.add_argument("--tie-embeddings", action="store_true")
    cnn = sub.add_parser("cnn", help="a ResNet-style image classifier")
    cnn.add_argument("--image-size", type=int, default=32)
    cnn.add_argument("--channels", type=int, default=3)
    cnn.add_argument("--classes", type=int, default=10)
    for p in (gpt, cnn):
        which = p.add_mutually_exclusive_group(required=True)
        which.add_argument("--params", help="target parameter count, e.g. 25M, 1.2e6, 3B")
        which.add_argument("--size", help="a named size from scaling.models.SIZES, e.g. debug")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.family == "gpt":
            data = {"vocab_size": args.vocab_size, "seq_len": args.seq_len}
            if args.size is not None:
                named = _named_size("gpt", args.size)
                tie = args.tie_embeddings or named.tie_embeddings
                cfg = dataclasses.replace(named, tie_embeddings=tie, **data)
            else:
                cfg = shape_for_params("gpt", args.params, count=args.count,
                                       tie_embeddings=args.tie_embeddings, **data)
        else:
            data = {"image_size": args.image_size, "in_channels": args.channels, "n_classes": args.classes}
            if args.size is not None:
                cfg = dataclasses.replace(_named_size("cnn", args.size), **data)
            else:
                cfg = shape_for_params("cnn", args.params, **data)
        print(report(cfg))
    except ScalingError as err:
        print(f"scaling-size: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
