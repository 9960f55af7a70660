"""`scaling-data`: write webdataset shards and a manifest, prepare built-in sets, check datasets.

    scaling-data text SRC [SRC ...] --out DIR [--seq-len 128] [--tokenizer byte|bpe --vocab-size N]
                                              [--text-key text] [--val-fraction 0.05] [--shard-samples 1024]
    scaling-data images CLASS_FOLDERS_ROOT --out DIR [--image-size N] [--val-fraction 0.05]
    scaling-data builtin stdlib_text|digits|synthetic [--cache-dir DIR] [--seq-len 128] [--max-source-mb 4]
    scaling-data show DIR_OR_URL          # print the manifest's summary
    scaling-data verify DIR               # check every shard's size and SHA-256

Text sources are UTF-8 files, folders of them (recursive, sorted) and JSONL files. An image source
is a folder with one subfolder of images per class. Train with the result via `data.path=DIR`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional

from scaling.data.config import BUILTIN_DATASETS, DataConfig
from scaling.data.manifest import Manifest
from scaling.errors import ConfigError, ScalingError


def _common(p: argparse.ArgumentParser) -> None:
    d = DataConfig()
    p.add_argument("--val-fraction", type=float, default=d.val_fraction, help="share held out for validation")
    p.add_argument("--shard-samples", type=int, default=d.shard_samples, help="samples per shard")
    p.add_argument("--seed", type=int, default=d.split_seed, help="seeds the split and the write order")


def _text_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seq-len", type=int, default=DataConfig().seq_len, help="model context; samples hold seq_len + 1 tokens")
    p.add_argument("--tokenizer", choices=["byte", "bpe"], default="byte")
    p.add_argument("--vocab-size", type=int, default=None, help="BPE vocabulary size (trained on the corpus)")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="scaling-data", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("text", help="text files, folders or JSONL to token shards")
    p.add_argument("sources", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--text-key", default="text", help="the JSONL field holding the text")
    p.add_argument("--name", default=None)
    _text_args(p)
    _common(p)
    p = sub.add_parser("images", help="a folder of class subfolders to image shards")
    p.add_argument("source")
    p.add_argument("--out", required=True)
    p.add_argument("--image-size", type=int, default=None, help="resize to N x N (needed when sizes differ)")
    p.add_argument("--name", default=None)
    _common(p)
    p = sub.add_parser("builtin", help="prepare a built-in dataset into the cache")
    p.add_argument("name", choices=BUILTIN_DATASETS)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--max-source-mb", type=float, default=DataConfig().max_source_mb)
    _text_args(p)
    _common(p)
    p = sub.add_parser("show", help="print a dataset's manifest summary")
    p.add_argument("path")
    p = sub.add_parser("verify", help="check every shard of a local dataset against its manifest")
    p.add_argument("path")
    return ap


def main(argv: Optional[list[str]] = None) -> int:
    args = parser().parse_args(argv)
    try:
        manifest = run(args)
    except ScalingError as exn:
        print(f"scaling-data: {exn}", file=sys.stderr)
        return 1
    print(manifest.summary())
    print(f"  location: {manifest.location}")
    return 0


def run(args: argparse.Namespace) -> "Manifest":
    from scaling.data import manifest as mf
    from scaling.data import prepare

    if args.cmd in ("show", "verify"):
        m = mf.load_manifest(args.path, check_files=args.cmd == "verify")
        if args.cmd == "verify":
            mf.check_shard_files(m, checksums=True)
            print(f"{args.path}: every shard matches the manifest")
        return m
    cfg = DataConfig(
        val_fraction=args.val_fraction,
        shard_samples=args.shard_samples,
        split_seed=args.seed,
        **({"seq_len": args.seq_len, "tokenizer": args.tokenizer, "vocab_size": args.vocab_size} if args.cmd != "images" else {}),
    )
    if args.cmd == "builtin":
        cfg.name, cfg.cache_dir, cfg.max_source_mb = args.name, args.cache_dir, args.max_source_mb
    problems = cfg.problems()
    if problems:
        raise ConfigError(problems)
    if args.cmd == "text":
        return prepare.prepare_text_files(args.sources, args.out, cfg, text_key=args.text_key, name=args.name)
    if args.cmd == "images":
        return prepare.prepare_image_folder(args.source, args.out, cfg, image_size=args.image_size, name=args.name)
    return prepare.prepare_dataset(cfg)


if __name__ == "__main__":
    sys.exit(main())
