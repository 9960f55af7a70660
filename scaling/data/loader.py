"""Loading shards into batches: deterministic, split across ranks and workers, resumable.

The guarantee
-------------
The content of global batch b is a function of (dataset, seed, global batch size G, streams L, b)
only. It does not depend on the world size W or on the number of loader workers, so one process
and W data-parallel processes see the same global batches and give the same loss curve, and a run
resumed at step k sees exactly the batches an uninterrupted run sees from step k on.

How
---
The training shards are dealt to L streams. With N >= L shards, stream s reads shards s, s+L,
s+2L, ... . With N < L shards, the streams that share shard i = s mod N take every c-th sample of
it (c = the number of such streams, offset s // N), so no sample belongs to two streams either way.
Each stream runs through epochs of its own samples: in epoch e it visits its shards in an order
drawn from (seed, e, s) and each shard's samples in an order drawn from (seed, e, s, shard); every
sample of the stream appears exactly once per stream epoch. Streams with more samples take longer
per epoch; with equal shard counts and sizes all streams share one epoch.

A training split capped by `data.max_unique_tokens` is its first K samples in shard order (the
shards past them are never read). Its K samples are cut into L contiguous ranges, one per stream,
of K // L samples (the first K mod L streams take one more), so every stream repeats its samples
at the same rate and one epoch of the streams is one pass over the K unique samples: a run of D
tokens sees D / (K * seq_len) epochs, the count the manifest's `epochs` gives. A cap that keeps
fewer samples than one global batch is a ConfigError.

Global batch b is the concatenation over s = 0..L-1 of samples [b*G/L, (b+1)*G/L) of stream s.
Rank r owns streams [r*L/W, (r+1)*L/W) and so rows [r*G/W, (r+1)*G/W) of every global batch; it
reads only those streams' shards. Its loader workers split its streams among themselves. The
position to resume from is the global step alone: stream s restarts at sample step*G/L, found by
skipping whole shards by their manifest counts, so a resume reads at most one shard per stream
that it then partly skips.

Hence L must be a multiple of W, and G a multiple of L. `streams=None` picks gcd(G, 8).

Shards are read whole (one shard per stream in memory), checked against the manifest's size,
sample count and SHA-256, and any mismatch or tar error raises DataError naming the shard, in the
main process also when it happens in a worker: a corrupt shard met mid-run fails the run; it is
never skipped. Shards are opened with webdataset's `gopen` (local paths, http(s), `pipe:` commands
such as `pipe:aws s3 cp s3://... -`) and parsed with its tar iterators.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import re
from collections import OrderedDict
from typing import Any, Iterator, Optional

import numpy as np
import torch

from scaling.data.build import decode_png
from scaling.data.manifest import Manifest
from scaling.errors import ConfigError, DataError

DEFAULT_STREAMS = 8
# A worker that delivers nothing for this long (a stalled network read) fails the run instead of
# hanging it; generous, because one item is one step of every stream the worker serves.
WORKER_TIMEOUT_S = 600
Batch = tuple[torch.Tensor, torch.Tensor]


# ---- reading one shard ----


# Verified shards a process keeps in memory (the least recently used leave first), up to this many
# bytes of shard files. Every stream of a run reads its own part of every shard, and a warm worker
# trains one run after another on the same data: without it each shard was read, checksummed and
# parsed again by every stream of every run. Per process: each data loader worker of each rank
# keeps its own, so the cap stays small (the built-in sets are 4 to 32 MB).
SHARD_CACHE_BYTES = 64 * 2**20


class _ShardCache:
    """Shards already read and checked against the manifest, by URL, checksum and (for a local
    file) its size, modification time and inode: a file replaced or rewritten since is read, and
    checked, again."""

    def __init__(self) -> None:
        self.entries: OrderedDict[tuple, tuple[list[dict[str, Any]], int]] = OrderedDict()
        self.bytes = 0

    @staticmethod
    def key(url: str, info: Any) -> tuple:
        try:
            st = os.stat(url)
            where = (st.st_size, st.st_mtime_ns, st.st_ino)
        except (OSError, ValueError):  # not a local file (pipe:, http): the checksum alone
            where = None
        return url, info.sha256, info.bytes, where

    def get(self, key: tuple) -> Optional[list[dict[str, Any]]]:
        entry = self.entries.get(key)
        if entry is None:
            return None
        self.entries.move_to_end(key)
        return entry[0]

    def put(self, key: tuple, samples: list[dict[str, Any]], size: int) -> None:
        if size > SHARD_CACHE_BYTES:
            return
        self.entries[key] = (samples, size)
        self.bytes += size
        while self.bytes > SHARD_CACHE_BYTES:
            _, (_, dropped) = self.entries.popitem(last=False)
            self.bytes -= dropped


_SHARDS = _ShardCache()


def read_shard(manifest: Manifest, split: str, index: int) -> list[dict[str, Any]]:
    """All samples of one shard as {ext: bytes} dicts, after checking it against the manifest
    (once per process while the file is unchanged: `SHARD_CACHE_BYTES`). The list is the
    caller's own; the samples in it are shared and must not be changed."""
    info = manifest.shards(split)[index]
    url = manifest.url(info.name)
    key = _SHARDS.key(url, info)
    cached = _SHARDS.get(key)
    if cached is None:
        cached = _read_checked(url, info)
        _SHARDS.put(key, cached, info.bytes)
    return list(cached)


def _read_checked(url: str, info: Any) -> list[dict[str, Any]]:
    fix = "re-create the dataset with scaling-data (for a built-in set, delete its cache folder), or restore the file"
    try:
        from webdataset.gopen import gopen
        from webdataset.tariterators import group_by_keys, tar_file_iterator

        stream = gopen(url, "rb")
        try:
            data = stream.read()
        finally:
            stream.close()  # a failed pipe: command raises here
    except Exception as exn:
        raise DataError(f"{url}: cannot be read ({exn}); check that the shard exists, or {fix}") from exn
    if len(data) != info.bytes:
        raise DataError(f"{url}: {len(data)} bytes but the manifest says {info.bytes} (truncated or replaced); {fix}")
    if hashlib.sha256(data).hexdigest() != info.sha256:
        raise DataError(f"{url}: SHA-256 differs from the manifest (corrupt or replaced); {fix}")
    try:
        samples = _plain_tar_samples(data, url)
        if samples is None:  # pax headers, long names, links: webdataset's general reader
            files = ({**f, "__url__": url} for f in tar_file_iterator(io.BytesIO(data)))
            samples = list(group_by_keys(files))
    except Exception as exn:
        raise DataError(f"{url}: not a readable tar shard ({exn}); {fix}") from exn
    if len(samples) != info.samples:
        raise DataError(f"{url}: holds {len(samples)} samples but the manifest says {info.samples}; {fix}")
    return samples


_PLAIN_KEY = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's split of a name into key and extension


def _plain_tar_samples(data: bytes, url: str) -> Optional[list[dict[str, Any]]]:
    """The samples of a tar that holds only regular files with plain ustar names (as scaling-data
    writes them), grouped by key as webdataset groups them; None for anything else. About 30x
    faster than the general reader, which parses every header field: on a small model, reading
    shards was the largest cost of a run outside its optimizer steps."""
    samples: list[dict[str, Any]] = []
    current: Optional[dict[str, Any]] = None
    pos, end = 0, len(data)
    while pos + 512 <= end:
        header = data[pos : pos + 512]
        if header == _ZERO_BLOCK:
            break
        kind = header[156:157]
        if kind not in (b"0", b"\0") or header[257:262] != b"ustar" or header[345:500].strip(b"\0"):
            return None  # not a plain regular file (or a name with a prefix): the general reader
        name = header[:100].split(b"\0", 1)[0].decode("utf-8")
        size = int(header[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
        body = data[pos + 512 : pos + 512 + size]
        pos += 512 + (size + 511) // 512 * 512
        match = _PLAIN_KEY.match(name)
        if match is None:
            continue
        key, ext = match.group(1), match.group(2).lower()
        if current is None or key != current["__key__"]:
            if current is not None:
                samples.append(current)
            current = {"__key__": key, "__url__": url}
        if ext in current:
            raise ValueError(f"{name}: duplicate file name in the shard")
        current[ext] = body
    if current is not None:
        samples.append(current)
    return samples


_ZERO_BLOCK = bytes(512)


class Decoder:
    """Raw samples to numpy arrays: text (k, seq_len + 1) int64; images (k, C, H, W) float32
    normalised with the training mean and std, and labels (k,) int64."""

    def __init__(self, manifest: Manifest):
        self.kind = manifest.kind
        if self.kind == "text":
            self.dtype = np.dtype(manifest.dtype)
            self.width = int(manifest.seq_len) + 1
        else:
            self.mean = np.asarray(manifest.image["mean"], dtype=np.float32)[:, None, None]
            self.std = np.asarray(manifest.image["std"], dtype=np.float32)[:, None, None]
            self.shape = (manifest.image_size, manifest.image_size, manifest.in_channels)
            self.n_classes = manifest.n_classes

    def __call__(self, samples: list[dict[str, Any]]) -> tuple[np.ndarray, Optional[np.ndarray]]:
        try:
            if self.kind == "text":
                return self.token_rows(samples).astype(np.int64), None
            pixels = [decode_png(s["png"]) for s in samples]
            if any(p.shape != self.shape for p in pixels):
                raise ValueError(f"an image is not {self.shape}")
            x = np.stack(pixels).transpose(0, 3, 1, 2).astype(np.float32) / 255.0
            y = np.array([int(s["cls"]) for s in samples], dtype=np.int64)
            if y.min() < 0 or y.max() >= self.n_classes:
                raise ValueError(f"a label lies outside [0, {self.n_classes})")
            return (x - self.mean) / self.std, y
        except Exception as exn:
            urls = sorted({s.get("__url__", "?") for s in samples})
            raise DataError(
                f"{', '.join(urls)}: a sample cannot be decoded ({exn!r}); re-create the dataset with scaling-data"
            ) from exn


    def token_rows(self, samples: list[dict[str, Any]]) -> np.ndarray:
        """Text samples as one (k, seq_len + 1) array of the stored dtype, from one buffer: a
        shard's worth costs about as much as a single sample decoded on its own."""
        if any(len(s["tokens"]) != self.width * self.dtype.itemsize for s in samples):
            raise ValueError(f"a sample does not hold seq_len + 1 = {self.width} tokens")
        return np.frombuffer(b"".join(s["tokens"] for s in samples), dtype=self.dtype).reshape(len(samples), self.width)

    def chunk(self, piece: Any, index: np.ndarray) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """Samples `index` of a piece (see `piece`), decoded."""
        if self.kind == "text":
            return piece[index].astype(np.int64), None
        return self([piece[j] for j in index])

    def piece(self, samples: list[dict[str, Any]]) -> Any:
        """What a stream keeps of a shard it reads: text decoded at once into one array, so a step
        only indexes it; images as they are, decoded a step's samples at a time (a shard of
        decoded images can be large)."""
        if self.kind != "text":
            return samples
        try:
            return self.token_rows(samples)
        except Exception as exn:
            urls = sorted({s.get("__url__", "?") for s in samples})
            raise DataError(
                f"{', '.join(urls)}: a sample cannot be decoded ({exn!r}); re-create the dataset with scaling-data"
            ) from exn


def to_batch(kind: str, x: np.ndarray, y: Optional[np.ndarray]) -> Batch:
    if kind == "text":
        t = torch.from_numpy(x)
        return t[:, :-1].contiguous(), t[:, 1:].contiguous()
    return torch.from_numpy(x), torch.from_numpy(y)


# ---- streams ----


def stream_parts(shard_samples: list[int], streams: int) -> list[list[tuple[int, int, int]]]:
    """For each stream, its (shard, stride, offset) parts: it owns samples offset, offset+stride, ...
    of each listed shard."""
    n = len(shard_samples)
    if n >= streams:
        return [[(i, 1, 0) for i in range(s, n, streams)] for s in range(streams)]
    return [[(s % n, len(range(s % n, streams, n)), s // n)] for s in range(streams)]


def prefix_parts(shard_samples: list[int], streams: int) -> list[list[tuple[int, int, int, int]]]:
    """For a capped split: its samples (the counts per shard, in order) cut into `streams`
    contiguous ranges of equal size (the first K mod L one larger). Each stream's parts are
    (shard, 1, start, stop): it owns samples start..stop-1 of the shard."""
    total = sum(shard_samples)
    starts = np.cumsum([0, *shard_samples])
    out = []
    for s in range(streams):
        lo, hi = s * total // streams, (s + 1) * total // streams  # this stream's range of the prefix
        out.append([(i, 1, int(max(lo - a, 0)), int(min(hi - a, n)))
                    for i, (a, n) in enumerate(zip(starts[:-1], shard_samples)) if a < hi and a + n > lo])
    return out


class Stream:
    """The endless, epoch-by-epoch shuffled sample sequence of one stream. A part is (shard,
    stride, offset) or (shard, stride, offset, stop): the stream owns samples offset,
    offset+stride, ... below stop (default: the samples the manifest lets a run draw from it)."""

    def __init__(self, manifest: Manifest, split: str, s: int, parts: list[tuple[int, ...]], seed: int):
        self.manifest, self.split, self.s, self.seed = manifest, split, s, seed
        counts = manifest.sample_counts(split)
        self.parts = [(p[0], p[1], p[2], p[3] if len(p) > 3 else counts[p[0]]) for p in parts]
        self.lengths = [len(range(p, stop, c)) for i, c, p, stop in self.parts]
        self.epoch_len = sum(self.lengths)

    def pieces(self, offset: int) -> Iterator[tuple[list[dict[str, Any]], np.ndarray]]:
        """From position `offset` (counted from epoch 0) on, each shard this stream reads, as its
        samples and the order to visit them in (the stream's own samples, shuffled, less those
        before `offset`)."""
        epoch, skip = divmod(offset, self.epoch_len)
        while True:
            order = np.random.default_rng([self.seed, 7, epoch, self.s]).permutation(len(self.parts))
            for k in order:
                if skip >= self.lengths[k]:  # skipped whole, without reading it
                    skip -= self.lengths[k]
                    continue
                i, c, p, stop = self.parts[k]
                mine = read_shard(self.manifest, self.split, i)[p:stop:c]
                perm = np.random.default_rng([self.seed, 7, epoch, self.s, i]).permutation(len(mine))
                yield mine, perm[skip:]
                skip = 0
            epoch += 1

    def samples(self, offset: int) -> Iterator[dict[str, Any]]:
        """Raw samples from position `offset` (counted from epoch 0) on."""
        for mine, visit in self.pieces(offset):
            for j in visit:
                yield mine[j]

    def chunks(self, offset: int, k: int, decode: Decoder) -> Iterator[tuple[np.ndarray, Optional[np.ndarray]]]:
        """The samples from position `offset` on, decoded k at a time: the same samples in the same
        order as `samples`, with each shard decoded once (Decoder.piece) instead of per sample."""
        parts: list[tuple[np.ndarray, Optional[np.ndarray]]] = []
        have = 0
        for mine, visit in self.pieces(offset):
            piece, pos = decode.piece(mine), 0
            while pos < len(visit):
                take = visit[pos : pos + k - have]
                parts.append(decode.chunk(piece, take))
                pos, have = pos + len(take), have + len(take)
                if have == k:
                    yield _join(parts)
                    parts, have = [], 0


def _join(parts: list[tuple[np.ndarray, Optional[np.ndarray]]]) -> tuple[np.ndarray, Optional[np.ndarray]]:
    if len(parts) == 1:
        return parts[0]
    x = np.concatenate([p[0] for p in parts])
    return x, None if parts[0][1] is None else np.concatenate([p[1] for p in parts])


def resolve_streams(global_batch_size: int, world_size: int, streams: Optional[int]) -> int:
    L = math.gcd(global_batch_size, DEFAULT_STREAMS) if streams is None else streams
    problems = []
    if world_size < 1:
        problems.append(f"world_size={world_size} must be >= 1")
    if global_batch_size < 1:
        problems.append(f"train.global_batch_size={global_batch_size} must be >= 1")
    if L < 1:
        problems.append(f"data.streams={L} must be >= 1")
    if not problems:
        if global_batch_size % L:
            problems.append(
                f"train.global_batch_size={global_batch_size} is not a multiple of data.streams={L}; "
                f"pick a global batch that is a multiple of {L}, or data.streams dividing {global_batch_size}"
            )
        if L % world_size:
            problems.append(
                f"data.streams={L} is not a multiple of the world size {world_size}; set data.streams to a multiple "
                f"of {world_size} that divides train.global_batch_size={global_batch_size}"
            )
    if problems:
        raise ConfigError(problems)
    return L


def _identity(x: Any) -> Any:
    return x


class _WorkerStreams(torch.utils.data.IterableDataset):
    """Loader workers: worker w serves streams[w::n] and yields, per global step, one
    {stream: decoded chunk} dict, so the main process takes exactly one item from each worker per step."""

    def __init__(self, manifest: Manifest, streams: list[Stream], per_stream: int, start_step: int, n_workers: int):
        self.manifest, self.streams, self.per_stream = manifest, streams, per_stream
        self.start_step, self.n_workers = start_step, n_workers

    def __iter__(self) -> Iterator[dict[int, tuple]]:
        info = torch.utils.data.get_worker_info()
        w = 0 if info is None else info.id
        mine = self.streams[w :: self.n_workers]
        yield from _chunks(self.manifest, mine, self.per_stream, self.start_step)


def _chunks(manifest: Manifest, streams: list[Stream], k: int, start_step: int) -> Iterator[dict[int, tuple]]:
    decode = Decoder(manifest)
    its = {st.s: st.chunks(start_step * k, k, decode) for st in streams}
    while True:
        yield {s: next(it) for s, it in its.items()}


def _stop_workers(it: Any) -> None:
    """End a failed loader's other workers now. The DataLoader's own shutdown asks each worker to
    stop and joins it for up to 5 s, and a worker blocked on a full queue takes all of that: a
    run that fails on its data would wait 5 s per worker before it could exit."""
    for worker in getattr(it, "_workers", []):
        if worker.is_alive():
            worker.terminate()
    shutdown = getattr(it, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()


class TrainBatches:
    """Endless iterator over this rank's rows of each global batch, from global step `start_step`.
    `step` is the global step of the next batch; store it in the checkpoint and pass it back as
    `start_step` to resume exactly."""

    def __init__(self, manifest: Manifest, *, global_batch_size: int, rank: int, world_size: int, seed: int,
                 start_step: int = 0, num_workers: int = 0, streams: Optional[int] = None, split: str = "train"):
        L = resolve_streams(global_batch_size, world_size, streams)
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank={rank} must lie in [0, world_size={world_size})")
        if start_step < 0 or seed < 0:
            raise ConfigError(f"start_step={start_step} and seed={seed} must be >= 0")
        self.manifest, self.kind = manifest, manifest.kind
        self.global_batch_size, self.streams, self.seed, self.step = global_batch_size, L, seed, start_step
        self.per_stream = global_batch_size // L
        shards = manifest.shards(split)
        parts: list[list[tuple[int, ...]]]
        if manifest.is_capped(split):  # data.max_unique_tokens: the first samples, in equal ranges
            problems = manifest.batch_problems(global_batch_size)
            if problems:
                raise ConfigError(problems)
            parts = list(prefix_parts(manifest.sample_counts(split), L))
        else:
            parts = list(stream_parts([s.samples for s in shards], L))
        all_streams = [Stream(manifest, split, s, parts[s], seed) for s in range(L)]
        empty = [st.s for st in all_streams if st.epoch_len == 0]
        if empty:
            raise DataError(
                f"{manifest.url('manifest.json')}: data.streams={L} leaves stream(s) {empty} without samples "
                f"({len(shards)} {split} shards of {[s.samples for s in shards][:8]} samples); lower data.streams "
                f"or write more, smaller shards (data.shard_samples)"
            )
        self.epoch_steps = min(st.epoch_len for st in all_streams) / self.per_stream  # steps per (shortest) stream epoch
        lo, hi = rank * L // world_size, (rank + 1) * L // world_size
        self.local = all_streams[lo:hi]
        self.num_workers = min(num_workers, len(self.local))
        self._it = self._generate()

    def _generate(self) -> Iterator[Batch]:
        order = [st.s for st in self.local]
        if self.num_workers == 0:
            for chunks in _chunks(self.manifest, self.local, self.per_stream, self.step):
                yield self._assemble(chunks, order)
            return
        loader = torch.utils.data.DataLoader(
            _WorkerStreams(self.manifest, self.local, self.per_stream, self.step, self.num_workers),
            batch_size=None, num_workers=self.num_workers, collate_fn=_identity, prefetch_factor=4,
            timeout=WORKER_TIMEOUT_S,
        )
        it = iter(loader)  # workers answer in turn: one item from each worker is one global step
        while True:
            chunks: dict[int, tuple] = {}
            for _ in range(self.num_workers):
                try:
                    chunks.update(next(it))
                except DataError:
                    _stop_workers(it)
                    raise
                except Exception as exn:
                    _stop_workers(it)
                    raise DataError(
                        f"a data loader worker failed ({exn}); rerun with data.num_workers=0 to see the error in the main process"
                    ) from exn
            yield self._assemble(chunks, order)

    def _assemble(self, chunks: dict[int, tuple], order: list[int]) -> Batch:
        x = np.concatenate([chunks[s][0] for s in order])
        y = None if self.kind == "text" else np.concatenate([chunks[s][1] for s in order])
        return to_batch(self.kind, x, y)

    def __iter__(self) -> "TrainBatches":
        return self

    def __next__(self) -> Batch:
        batch = next(self._it)
        self.step += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        """What a checkpoint needs to resume (`step`) and to check that the data order is unchanged."""
        return {"step": self.step, "seed": self.seed, "streams": self.streams, "global_batch_size": self.global_batch_size}

    def close(self) -> None:
        self._it.close()  # shuts loader workers down


def train_batches(manifest: Manifest, *, global_batch_size: int, rank: int, world_size: int, seed: int,
                  start_step: int = 0, num_workers: int = 0, streams: Optional[int] = None) -> TrainBatches:
    """This rank's part of every global training batch, from global step `start_step` on.

    text: (x, y) LongTensors of shape (G/W, seq_len), y = x shifted by one token;
    image: (x FloatTensor (G/W, C, H, W) normalised, y LongTensor (G/W,)).
    See the module docstring for the guarantee."""
    return TrainBatches(manifest, global_batch_size=global_batch_size, rank=rank, world_size=world_size, seed=seed,
                        start_step=start_step, num_workers=num_workers, streams=streams)


def eval_batches(manifest: Manifest, *, num_samples: int, batch_size: int, rank: int, world_size: int,
                 split: str = "val") -> list[Batch]:
    """The first `num_samples` validation samples in their fixed order, split over ranks: rank r
    gets samples [r*n/W, (r+1)*n/W), so the ranks' shares are disjoint and add up to num_samples.
    Every run evaluates on the same samples, whatever its size."""
    total = manifest.num_samples(split)
    if not 0 < num_samples <= total:
        raise DataError(
            f"{manifest.url('manifest.json')}: evaluation asks for {num_samples} samples but the {split} split has {total}; "
            f"lower train.eval_tokens to at most {manifest.tokens(split)} or prepare more validation data (data.val_fraction)"
        )
    if batch_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"batch_size={batch_size} must be >= 1 and rank={rank} in [0, world_size={world_size})")
    lo, hi = rank * num_samples // world_size, (rank + 1) * num_samples // world_size
    decode = Decoder(manifest)
    picked: list[dict[str, Any]] = []
    start = 0
    for i, info in enumerate(manifest.shards(split)):
        end = start + info.samples
        if end > lo and start < hi:
            picked += read_shard(manifest, split, i)[max(lo - start, 0) : hi - start]
        if end >= hi:
            break
        start = end
    out = []
    for b in range(0, len(picked), batch_size):
        x, y = decode(picked[b : b + batch_size])
        out.append(to_batch(manifest.kind, x, y))
    return out
