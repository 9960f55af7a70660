"""Data loading throughput against training consumption, on this machine.

    python bench/data_throughput.py [--seq-len 128] [--batch 64] [--workers 0] [--model debug]

Prepares the built-in stdlib corpus (cached), reads training batches from its shards with the real
loader (checksums, tar parsing, per-stream shuffling, batch assembly) and reports tokens/s. Then it
times forward/backward/AdamW steps of a small GPT (`scaling.models`, size `--model`) at the same
sequence length and reports the tokens/s training consumes, and the ratio. The goal is a ratio of
at least 20: loading should never be what a run waits on.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from scaling.data import DataConfig, apply_manifest, prepare_dataset, train_batches  # noqa: E402


def read_rate(manifest, batch: int, workers: int, seconds: float) -> tuple[float, int]:
    """Tokens/s delivered by train_batches (after the first batch, which pays for start-up)."""
    it = train_batches(manifest, global_batch_size=batch, rank=0, world_size=1, seed=0, num_workers=workers)
    next(it)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        x, _ = next(it)
        n += x.numel()
    rate = n / (time.perf_counter() - t0)
    it.close()
    return rate, n


def small_model(manifest, size: str) -> tuple[torch.nn.Module, str]:
    try:
        from scaling.models import SIZES, build_model

        return build_model(apply_manifest(SIZES["gpt"][size], manifest)), f"scaling.models GPT ({size})"
    except ImportError:  # the project's GPT is not available: a stand-in of similar size
        d, vocab, T = 64, manifest.vocab_size, manifest.seq_len

        class Tiny(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.emb = torch.nn.Embedding(vocab, d)
                self.pos = torch.nn.Parameter(torch.zeros(T, d))
                layer = torch.nn.TransformerEncoderLayer(d, 2, 4 * d, dropout=0.0, batch_first=True, norm_first=True)
                self.body = torch.nn.TransformerEncoder(layer, 2)
                self.head = torch.nn.Linear(d, vocab)
                self.register_buffer("mask", torch.nn.Transformer.generate_square_subsequent_mask(T))

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.head(self.body(self.emb(x) + self.pos, mask=self.mask, is_causal=True))

        return Tiny(), "nn.TransformerEncoder stand-in (2 layers, d=64)"


def train_rate(manifest, size: str, batch: int, steps: int) -> tuple[float, str, int]:
    """Tokens/s consumed by forward/backward/AdamW steps of a small GPT."""
    torch.manual_seed(0)
    model, name = small_model(manifest, size)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    it = train_batches(manifest, global_batch_size=batch, rank=0, world_size=1, seed=0)
    data = [next(it) for _ in range(steps + 2)]

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for x, y in data[:2]:  # warm-up
        step(x, y)
    t0 = time.perf_counter()
    for x, y in data[2:]:
        step(x, y)
    elapsed = time.perf_counter() - t0
    params = sum(p.numel() for p in model.parameters())
    return steps * batch * manifest.seq_len / elapsed, name, params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=64, help="global batch (sequences) for reading")
    ap.add_argument("--train-batch", type=int, default=16, help="batch for the training steps")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--model", default="debug", help="a GPT size of scaling.models.SIZES")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--cache-dir", default=None, help="default: a fresh temporary folder")
    args = ap.parse_args()

    cache = args.cache_dir or tempfile.mkdtemp(prefix="scaling-bench-")
    t0 = time.perf_counter()
    manifest = prepare_dataset(DataConfig(name="stdlib_text", seq_len=args.seq_len, cache_dir=cache))
    prep = time.perf_counter() - t0
    print(f"corpus: {manifest.name}, {manifest.tokens('train'):,} train tokens in {len(manifest.shards('train'))} shards, "
          f"seq_len={manifest.seq_len}, prepared in {prep:.2f} s")
    print(f"torch threads: {torch.get_num_threads()}, cpus: {os.cpu_count()}")

    read, n = read_rate(manifest, args.batch, args.workers, args.seconds)
    print(f"read:  {read:,.0f} tokens/s from shards (batch {args.batch}, {args.workers} workers, {n:,} tokens)")
    train, name, params = train_rate(manifest, args.model, args.train_batch, args.steps)
    print(f"train: {train:,.0f} tokens/s consumed by {name}, {params:,} parameters, batch {args.train_batch}")
    ratio = read / train
    print(f"ratio: {ratio:.1f}x (goal >= 20x: {'met' if ratio >= 20 else 'NOT met'})")


if __name__ == "__main__":
    main()
