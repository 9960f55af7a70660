"""`prepare_dataset`: turn a DataConfig into a Manifest, preparing a built-in set on first use.

Built-in sets are prepared into `{cache_dir}/{name}-{hash}`, where the hash covers every knob that
changes the content (and, for the standard library, the Python version). Preparation writes into a
private temporary folder and renames it into place when it is complete, under a file lock, so
several processes (all ranks of a job) may call this at once: one prepares, the others wait and
reuse. A folder with a manifest is never rewritten.

Torch-free.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from typing import Any, Optional, Sequence

from scaling.data.build import params_key, write_images, write_text
from scaling.data.config import DataConfig
from scaling.data.manifest import MANIFEST_NAME, Manifest, load_manifest
from scaling.data.tokenizer import BPETokenizer, ByteTokenizer
from scaling.errors import ConfigError, DataError


def default_cache_dir() -> str:
    return os.environ.get("SCALING_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "scaling")


def prepare_dataset(cfg: DataConfig) -> Manifest:
    """The manifest of the configured data: read from `cfg.path`, or a built-in set prepared into
    the cache on first use and reused afterwards. Raises DataError naming the file and the fix.

    `data.max_unique_tokens` caps the training split here (`Manifest.capped`), so the loader, the
    planner's epochs and the trainer's recorded unique tokens all read the one capped manifest."""
    problems = cfg.problems()
    if problems:
        raise ConfigError(problems)
    return _read_or_prepare(cfg).capped(cfg.max_unique_tokens)


def _read_or_prepare(cfg: DataConfig) -> Manifest:
    if cfg.path is not None:
        return load_manifest(cfg.path)
    cache = cfg.cache_dir or default_cache_dir()
    params = builtin_params(cfg)
    folder = os.path.join(cache, f"{cfg.name}-{params_key(params)}")
    if os.path.exists(os.path.join(folder, MANIFEST_NAME)):
        return load_manifest(folder)
    os.makedirs(cache, exist_ok=True)
    from filelock import FileLock

    with FileLock(folder + ".lock"):
        if os.path.exists(os.path.join(folder, MANIFEST_NAME)):  # another process prepared it meanwhile
            return load_manifest(folder)
        if os.path.exists(folder):  # a crashed preparation without a manifest: start over
            shutil.rmtree(folder)
        tmp = tempfile.mkdtemp(prefix=f".{cfg.name}-", dir=cache)
        try:
            build_builtin(cfg, tmp)
            try:
                os.rename(tmp, folder)
            except OSError:
                # Another host on a shared filesystem without working locks won the race.
                if not os.path.exists(os.path.join(folder, MANIFEST_NAME)):
                    raise
        finally:
            if os.path.exists(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
    return load_manifest(folder)


def builtin_params(cfg: DataConfig) -> dict[str, Any]:
    """The knobs that decide a built-in set's content, hashed into its cache folder's name."""
    common = {"name": cfg.name, "val_fraction": cfg.val_fraction, "shard_samples": cfg.shard_samples, "split_seed": cfg.split_seed, "v": 1}
    if cfg.name == "stdlib_text":
        return dict(common, seq_len=cfg.seq_len, tokenizer=cfg.tokenizer, vocab_size=cfg.vocab_size,
                    max_source_mb=cfg.max_source_mb, python=sys.version.split()[0])
    if cfg.name == "synthetic":
        return dict(common, seq_len=cfg.seq_len, vocab=cfg.synthetic_vocab, tokens=cfg.synthetic_tokens)
    if cfg.name == "markov":
        return dict(common, seq_len=cfg.seq_len, vocab=cfg.markov_vocab, order=cfg.markov_order, branching=cfg.markov_branching,
                    zipf=cfg.markov_zipf, smoothing=cfg.markov_smoothing, order_decay=cfg.markov_order_decay, tokens=cfg.markov_tokens, doc_tokens=cfg.markov_doc_tokens)
    if cfg.name == "shapes":
        return dict(common, classes=cfg.shapes_classes, image_size=cfg.shapes_image_size, distractors=cfg.shapes_distractors,
                    label_noise=cfg.shapes_label_noise, images=cfg.shapes_images)
    return common


def build_builtin(cfg: DataConfig, folder: str) -> Manifest:
    from scaling.data import sources

    if cfg.name == "stdlib_text":
        docs, source = sources.stdlib_documents(cfg.max_source_mb)
        return build_text(folder, docs, name=cfg.name, cfg=cfg, source=source)
    if cfg.name == "synthetic":
        docs, source = sources.synthetic_documents(cfg.synthetic_vocab, cfg.synthetic_tokens, cfg.split_seed)
        tokenizer = {"type": "synthetic", "vocab_size": cfg.synthetic_vocab + 1, "eod_id": cfg.synthetic_vocab, "file": None}
        return write_text(folder, docs, name=cfg.name, tokenizer=tokenizer, seq_len=cfg.seq_len,
                          val_fraction=cfg.val_fraction, shard_samples=cfg.shard_samples, seed=cfg.split_seed, source=source)
    if cfg.name == "markov":
        docs, source = sources.markov_documents(cfg)
        tokenizer = {"type": "markov", "vocab_size": cfg.markov_vocab + 1, "eod_id": cfg.markov_vocab, "file": None}
        return write_text(folder, docs, name=cfg.name, tokenizer=tokenizer, seq_len=cfg.seq_len,
                          val_fraction=cfg.val_fraction, shard_samples=cfg.shard_samples, seed=cfg.split_seed, source=source)
    if cfg.name == "digits":
        items, classes, source = sources.digits_items()
        return write_images(folder, items, name=cfg.name, classes=classes, image_size=8, channels=1,
                            val_fraction=cfg.val_fraction, shard_samples=cfg.shard_samples, seed=cfg.split_seed, source=source)
    if cfg.name == "shapes":
        items, classes, source = sources.shapes_items(cfg)
        return write_images(folder, items, name=cfg.name, classes=classes, image_size=cfg.shapes_image_size, channels=3,
                            val_fraction=cfg.val_fraction, shard_samples=cfg.shard_samples, seed=cfg.split_seed, source=source)
    raise DataError(f"data.name={cfg.name!r} is not built in")


def build_text(folder: str, docs: Sequence[str], *, name: str, cfg: DataConfig, source: dict[str, Any]) -> Manifest:
    """Tokenize text documents (training a BPE tokenizer on them if configured) and write shards."""
    if cfg.tokenizer == "bpe":
        tok: Any = BPETokenizer.train(docs, int(cfg.vocab_size))
        tok.save(folder)  # beside the shards, recorded in the manifest
    else:
        tok = ByteTokenizer()
    ids = tok.encode_batch(docs)
    return write_text(folder, ids, name=name, tokenizer=tok.spec(), seq_len=cfg.seq_len, val_fraction=cfg.val_fraction,
                      shard_samples=cfg.shard_samples, seed=cfg.split_seed, source=source)


def create_dataset(out: str, make: Any) -> Manifest:
    """Run `make(folder)` into a temporary folder beside `out`, then move it into place. Refuses to
    overwrite a folder that already holds a manifest."""
    out = os.path.abspath(out)
    if os.path.exists(os.path.join(out, MANIFEST_NAME)):
        raise DataError(f"{out}/{MANIFEST_NAME} exists; pick another --out folder or delete this one")
    if os.path.exists(out) and os.listdir(out):
        raise DataError(f"{out}: the folder is not empty; pick an empty or new --out folder")
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".scaling-data-", dir=parent)
    try:
        make(tmp)
        if os.path.exists(out):
            os.rmdir(out)
        os.rename(tmp, out)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return load_manifest(out)


def prepare_text_files(paths: list[str], out: str, cfg: DataConfig, text_key: str = "text", name: Optional[str] = None) -> Manifest:
    from scaling.data.sources import text_documents

    docs, source = text_documents(paths, text_key)
    name = name or os.path.basename(os.path.normpath(out))
    return create_dataset(out, lambda folder: build_text(folder, docs, name=name, cfg=cfg, source=source))


def prepare_image_folder(root: str, out: str, cfg: DataConfig, image_size: Optional[int] = None, name: Optional[str] = None) -> Manifest:
    from scaling.data.sources import image_folder_items

    items, classes, size, channels, source = image_folder_items(root, image_size)
    name = name or os.path.basename(os.path.normpath(out))
    return create_dataset(
        out,
        lambda folder: write_images(folder, items, name=name, classes=classes, image_size=size, channels=channels,
                                    val_fraction=cfg.val_fraction, shard_samples=cfg.shard_samples, seed=cfg.split_seed,
                                    source=source),
    )


def synthetic_tokens_entropy(manifest: Manifest) -> Optional[float]:
    """The entropy rate of the synthetic language, the loss a perfect model approaches (nats/token)."""
    return manifest.source.get("entropy_nats_per_token") if manifest.source.get("type") == "synthetic-markov" else None


def loss_floor(manifest: Manifest) -> Optional[float]:
    """The lowest expected loss any model can reach on this data as the loader delivers it (nats
    per token or image): the known E of the `markov` and `shapes` sets; None for other data."""
    value = manifest.source.get("loss_floor_nats")
    return None if value is None else float(value)

