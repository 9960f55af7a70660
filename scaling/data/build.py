"""Writing datasets: webdataset tar shards plus a manifest, for text and for images.

Shards are plain tar files in the webdataset layout: the members of one sample share a key
(`000000042.tokens`, or `000000042.png` with `000000042.cls`). Tar headers carry no time or owner,
so the same input gives byte-identical shards and checksums on every machine.

Text: documents are tokenized, split into train and validation by whole documents (a document is
never in both), then each split is packed into one token stream with an end-of-document token after
every document and cut into non-overlapping windows of seq_len + 1 tokens. Windows are written in a
seeded random order, so every shard is a mix of the whole corpus and the first validation samples
are a fair sample of it.

Images: a list of (loader, label) items is split per class into train and validation, written in
a seeded random order as PNG (lossless) with the class index, and the per-channel mean and standard
deviation of the training images are recorded for normalisation.

Torch-free.
"""

from __future__ import annotations

import hashlib
import io
import os
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np

from scaling.data.manifest import Manifest, ShardInfo
from scaling.errors import DataError

ImageLoader = Callable[[], np.ndarray]  # returns uint8 (H, W) or (H, W, C)


class ShardWriter:
    """Writes samples into `{prefix}-000000.tar`, `{prefix}-000001.tar`, ... of at most
    `shard_samples` samples each, and records each shard's size and SHA-256.

    The tar bytes are those of Python's `tarfile` in USTAR format (a test checks it) for members
    with mode 0444, no owner and mtime 0, written here directly: `tarfile` spent about 100 us
    per member building headers, most of the time of preparing a set of short samples."""

    def __init__(self, folder: str, prefix: str, shard_samples: int):
        self.folder, self.prefix, self.shard_samples = folder, prefix, shard_samples
        self.shards: list[ShardInfo] = []
        self._file: Optional[Any] = None
        self._count = 0
        self._offset = 0

    def write(self, key: str, members: dict[str, bytes]) -> None:
        if self._file is None or self._count == self.shard_samples:
            self._close_shard()
            self._name = f"{self.prefix}-{len(self.shards):06d}.tar"
            self._file = open(os.path.join(self.folder, self._name), "wb")
            self._count = self._offset = 0
        for ext, data in members.items():
            padding = -len(data) % TAR_BLOCK
            self._file.write(ustar_header(f"{key}.{ext}", len(data)) + data + bytes(padding))
            self._offset += TAR_BLOCK + len(data) + padding
        self._count += 1

    def _close_shard(self) -> None:
        if self._file is None:
            return
        end = self._offset + 2 * TAR_BLOCK  # two zero blocks end the archive; then pad to a whole record
        self._file.write(bytes(2 * TAR_BLOCK + -end % TAR_RECORD))
        self._file.close()
        path = os.path.join(self.folder, self._name)
        from scaling.data.manifest import sha256_file

        self.shards.append(ShardInfo(self._name, self._count, os.path.getsize(path), sha256_file(path)))
        self._file = None

    def close(self) -> list[ShardInfo]:
        self._close_shard()
        return self.shards


TAR_BLOCK, TAR_RECORD = 512, 512 * 20


def ustar_header(name: str, size: int) -> bytes:
    """The 512-byte USTAR header `tarfile` writes for a regular file of `size` bytes named `name`
    (at most 100 bytes), mode 0444, uid and gid 0, mtime 0, no owner names."""
    raw = name.encode("utf-8")
    if len(raw) > 100:
        raise DataError(f"{name}: a member name longer than 100 bytes; use shorter sample keys")
    fields = [
        raw.ljust(100, b"\0"), b"0000444\0", b"0000000\0", b"0000000\0", b"%011o\0" % size, b"00000000000\0",
        b"        ", b"0", bytes(100), b"ustar\x0000", bytes(32), bytes(32), bytes(8), bytes(8), bytes(155),
    ]  # fmt: skip
    header = b"".join(fields).ljust(TAR_BLOCK, b"\0")
    checksum = b"%06o\0" % sum(header)  # the checksum field counts as eight spaces
    return header[:148] + checksum + header[155:]


# ---- text ----


def split_documents(lengths: Sequence[int], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices of the train and validation documents. Whole documents go to validation in a seeded
    random order until it holds val_fraction of the tokens; both splits keep the source order."""
    n = len(lengths)
    total = float(sum(lengths))
    order = np.random.default_rng([seed, 1]).permutation(n)
    val, held = [], 0.0
    for i in order[: n - 1]:  # always leave one document for training
        if held >= val_fraction * total:
            break
        val.append(int(i))
        held += lengths[i]
    vset = set(val)
    return [i for i in range(n) if i not in vset], sorted(val)


def pack(docs: Iterable[np.ndarray], eod_id: int, window: int) -> np.ndarray:
    """Concatenate documents, each followed by the end-of-document token, and cut the stream into
    non-overlapping rows of `window` tokens (the incomplete tail is dropped)."""
    parts = []
    for d in docs:
        parts.append(np.asarray(d, dtype=np.int64))
        parts.append(np.array([eod_id], dtype=np.int64))
    stream = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    n = len(stream) // window
    return stream[: n * window].reshape(n, window)


def write_text(
    folder: str,
    docs: Sequence[np.ndarray],
    *,
    name: str,
    tokenizer: dict[str, Any],
    seq_len: int,
    val_fraction: float,
    shard_samples: int,
    seed: int,
    source: dict[str, Any],
) -> Manifest:
    """Write tokenized documents as train/val shards of seq_len + 1 tokens and the manifest."""
    vocab, eod = int(tokenizer["vocab_size"]), int(tokenizer["eod_id"])
    lengths = [len(d) for d in docs]
    if len(docs) >= 2:
        train_idx, val_idx = split_documents(lengths, val_fraction, seed)
        parts = {"train": [docs[i] for i in train_idx], "val": [docs[i] for i in val_idx]}
    else:
        # One document cannot be split by document; cut it so the two splits share no token.
        only = np.asarray(docs[0]) if docs else np.zeros(0, dtype=np.int64)
        cut = int(round(len(only) * (1 - val_fraction)))
        parts = {"train": [only[:cut]], "val": [only[cut:]]}
        train_idx, val_idx = [0], [0]
    dtype = np.uint16 if vocab <= 65536 else np.int32
    splits: dict[str, list[ShardInfo]] = {}
    for split, split_docs in parts.items():
        rows = pack(split_docs, eod, seq_len + 1)
        if len(rows) == 0:
            tokens = sum(len(d) + 1 for d in split_docs)
            raise DataError(
                f"{name}: the {split} split has {tokens} tokens, fewer than one sample of seq_len + 1 = {seq_len + 1}; "
                f"add text, lower data.seq_len or raise data.val_fraction"
            )
        if rows.max() >= vocab:
            raise DataError(f"{name}: token id {int(rows.max())} >= vocab_size {vocab}; the tokenizer spec is wrong")
        order = np.random.default_rng([seed, 2, SPLIT_IDS[split]]).permutation(len(rows))
        writer = ShardWriter(folder, split, shard_samples)
        for i in order:
            writer.write(f"{int(i):09d}", {"tokens": rows[i].astype(dtype).tobytes()})
        splits[split] = writer.close()
    source = dict(source, documents={"train": len(parts["train"]), "val": len(parts["val"])}, doc_tokens=int(sum(lengths)))
    m = Manifest(
        kind="text",
        name=name,
        splits=splits,
        source=source,
        tokenizer=tokenizer,
        seq_len=seq_len,
        dtype=np.dtype(dtype).name,
        location=folder,
    )
    m.save(folder)
    return m


SPLIT_IDS = {"train": 0, "val": 1}


# ---- images ----


def encode_png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes to uint8 (H, W, C)."""
    from PIL import Image

    arr = np.asarray(Image.open(io.BytesIO(data)))
    return arr[:, :, None] if arr.ndim == 2 else arr


def write_images(
    folder: str,
    items: Sequence[tuple[ImageLoader, int]],
    *,
    name: str,
    classes: Sequence[str],
    image_size: int,
    channels: int,
    val_fraction: float,
    shard_samples: int,
    seed: int,
    source: dict[str, Any],
) -> Manifest:
    """Write (loader, label) items as train/val shards of PNG images and labels, split per class."""
    labels = np.array([lab for _, lab in items], dtype=np.int64)
    train_idx, val_idx = [], []
    rng = np.random.default_rng([seed, 3])
    for c in range(len(classes)):
        members = np.flatnonzero(labels == c)
        if len(members) == 0:
            continue
        members = members[rng.permutation(len(members))]
        # Each class with 2+ images gives at least one to validation, so every class is evaluated.
        n_val = min(len(members) - 1, max(1, int(round(len(members) * val_fraction)))) if len(members) > 1 else 0
        val_idx += members[:n_val].tolist()
        train_idx += members[n_val:].tolist()
    splits: dict[str, list[ShardInfo]] = {}
    sums = np.zeros(channels)
    sq = np.zeros(channels)
    count = 0
    for split, idx in (("train", train_idx), ("val", val_idx)):
        if not idx:
            raise DataError(f"{name}: the {split} split would be empty; add images or change data.val_fraction")
        order = np.random.default_rng([seed, 2, SPLIT_IDS[split]]).permutation(sorted(idx))
        writer = ShardWriter(folder, split, shard_samples)
        for i in order:
            loader, label = items[int(i)]
            pixels = loader()
            if pixels.ndim == 2:
                pixels = pixels[:, :, None]
            if pixels.shape != (image_size, image_size, channels) or pixels.dtype != np.uint8:
                raise DataError(
                    f"{name}: item {int(i)} has shape {pixels.shape} {pixels.dtype}, expected "
                    f"({image_size}, {image_size}, {channels}) uint8; set --image-size to resize"
                )
            if split == "train":
                f = pixels.reshape(-1, channels).astype(np.float64) / 255.0
                sums += f.sum(0)
                sq += (f * f).sum(0)
                count += f.shape[0]
            png = encode_png(pixels[:, :, 0] if channels == 1 else pixels)
            writer.write(f"{int(i):09d}", {"png": png, "cls": str(label).encode()})
        splits[split] = writer.close()
    mean = sums / count
    std = np.sqrt(np.maximum(sq / count - mean * mean, 1e-12))
    m = Manifest(
        kind="image",
        name=name,
        splits=splits,
        source=source,
        image={
            "size": image_size,
            "channels": channels,
            "classes": list(classes),
            "mean": [float(v) for v in mean],
            "std": [float(v) for v in std],
            "format": "png",
        },
        location=folder,
    )
    m.save(folder)
    return m


def params_key(params: dict[str, Any]) -> str:
    """A short stable hash of the knobs that decide a prepared dataset's content."""
    text = repr(sorted(params.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:12]
