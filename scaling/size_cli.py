"""`scaling-size`: the ladder's shape for a parameter count, or a named size, with its counts.

    scaling-size gpt --params 25M [--vocab-size 50304 --seq-len 2048] [--count total|nonembedding]
    scaling-size gpt --size debug
    scaling-size cnn --params 1M [--image-size 32 --channels 3 --classes 10]
    scaling-size vit --params 5M [--image-size 32 --channels 3 --classes 10]

Runs without torch (login nodes). Bad input prints one message and exits with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from scaling.counting import count_params, flops_per_sample, forward_flops
from scaling.errors import ConfigError, ScalingError
from scaling.families import FAMILIES, Family, family_of
from scaling.families.base import FLOPS_CONVENTIONS
from scaling.ladder import parse_count

TOKENS_PER_PARAM = 20  # Hoffmann et al.'s compute-optimal ratio ("1xC")


def _human(n: float) -> str:
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{suffix}"
    return f"{n:.3g}"


def _rows(title: str, rows: list[tuple[str, str]]) -> list[str]:
    width = max(len(k) for k, _ in rows)
    return [title] + [f"  {k.ljust(width)}  {v}" for k, v in rows]


def _named_size(family: Family, name: str) -> Any:
    if name not in family.sizes:
        raise ConfigError(f"--size={name!r} is not a {family.name} size; use one of {sorted(family.sizes)}")
    return family.sizes[name]


def report(cfg: Any) -> str:
    """The readable table `scaling-size` prints for `cfg`."""
    family = family_of(cfg)
    params = count_params(cfg)
    lines = _rows(f"{cfg.family} shape", family.shape_rows(cfg))
    lines += _rows(
        "parameters",
        [
            ("total", f"{params.total:,} ({_human(params.total)})"),
            ("embedding", f"{params.embedding:,} ({_human(params.embedding)})"),
            ("non-embedding", f"{params.nonembedding:,} ({_human(params.nonembedding)})"),
        ],
    )
    fwd = forward_flops(cfg)
    samples = TOKENS_PER_PARAM * params.total
    if family.sequence_field is not None:
        per_token = {c: flops_per_sample(cfg, c) for c in FLOPS_CONVENTIONS}
        lines += _rows(
            "training FLOPs per token (forward + backward)",
            [(c, f"{v:.4g}") for c, v in per_token.items()]
            + [("matmuls as run, x 3", f"{3 * fwd.matmul_total / family.tokens_per_sample(cfg):.4g} "
                                       f"(attention non-causal)")],
        )
        lines += _rows(
            f"compute-optimal budget ({TOKENS_PER_PARAM} tokens per total parameter)",
            [("tokens", f"{samples:.4g} ({_human(samples)})")]
            + [(f"FLOPs ({c})", f"{v * samples:.4g}") for c, v in per_token.items()],
        )
    else:
        per_image = flops_per_sample(cfg)
        lines += _rows(
            "FLOPs per image",
            [
                ("forward (2 x MACs)", f"{fwd.matmul_total:.4g}"),
                ("training (x 3)", f"{per_image:.4g}"),
                ("training, 1M images", f"{per_image * 1e6:.4g}"),
                (f"training, {TOKENS_PER_PARAM} images/param", f"{per_image * samples:.4g}"),
            ],
        )
    return "\n".join(lines)


# Command-line defaults for each data field, and its flag: what a user sizes a model for when the
# data are not at hand (a GPT-2 vocabulary and context, CIFAR's images).
DATA_FLAGS = {
    "vocab_size": ("--vocab-size", 50304),
    "seq_len": ("--seq-len", 2048),
    "image_size": ("--image-size", 32),
    "in_channels": ("--channels", 3),
    "n_classes": ("--classes", 10),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scaling-size", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="family", required=True)
    for name, family in FAMILIES.items():
        p = sub.add_parser(name, help=(family.config.__doc__ or name).strip().splitlines()[0])
        for key in family.data_fields:
            flag, default = DATA_FLAGS.get(key, (f"--{key.replace('_', '-')}", None))
            p.add_argument(flag, dest=key, type=int, default=default)
        p.add_argument("--count", choices=("nonembedding", "total"), default="nonembedding",
                       help="what --params counts (default: non-embedding, Kaplan's N)")
        for f in dataclasses.fields(family.config):  # booleans of the shape the ladder keeps, e.g. tied embeddings
            if f.type in (bool, "bool"):
                p.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, action="store_true")
        which = p.add_mutually_exclusive_group(required=True)
        which.add_argument("--params", help="target parameter count, e.g. 25M, 1.2e6, 3B")
        which.add_argument("--size", help=f"a named size: {', '.join(family.sizes)}")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    family = FAMILIES[args.family]
    try:
        data = {key: getattr(args, key) for key in family.data_fields}
        flags = {f.name: True for f in dataclasses.fields(family.config)
                 if f.type in (bool, "bool") and getattr(args, f.name, False)}  # fmt: skip
        if args.size is not None:
            cfg = dataclasses.replace(_named_size(family, args.size), **data, **flags)
        else:
            cfg = family.ladder(parse_count(args.params), family.config(**data, **flags), args.count)
        print(report(cfg))
    except ScalingError as err:
        print(f"scaling-size: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
