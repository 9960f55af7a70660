"""Typed config of the data section. Torch-free: the planner sizes studies from it on login nodes.

Built-in datasets (used when `path` is None) are prepared into `cache_dir` on first use. Every
knob that changes the prepared shards is part of the cache folder's name, so changing one prepares
a new folder instead of silently reusing a stale one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

BUILTIN_DATASETS = ("stdlib_text", "digits", "synthetic", "markov", "shapes")
TOKENIZERS = ("byte", "bpe")


@dataclass
class DataConfig:
    name: str = "stdlib_text"  # a built-in dataset, used when `path` is None
    path: Optional[str] = None  # a folder or URL prefix holding manifest.json and shards
    cache_dir: Optional[str] = None  # where built-in datasets are prepared; default $SCALING_CACHE or ~/.cache/scaling
    seq_len: int = 128  # sequence length when a built-in text set is prepared
    tokenizer: str = "byte"  # byte | bpe
    vocab_size: Optional[int] = None  # BPE only
    num_workers: int = 0
    # Loader: the number of data streams. The content of every global batch depends on it (and on
    # the seed and the global batch size) but never on the world size or the worker count. None
    # means gcd(global batch size, 8). It must be a multiple of the world size.
    streams: Optional[int] = None
    # Data-constrained runs (Muennighoff et al. 2023, "Scaling Data-Constrained Language Models"):
    # train on the training split's first samples holding at most this many tokens (images for an
    # image set), so a run longer than that repeats them in epochs. The split's samples were
    # written in a shuffled order, so the prefix is a random subset of it. The evaluation split is
    # untouched. None: no cap. It leaves the prepared shards as they are. A float, as budgets are
    # (2e6 reads as 2,000,000); whole samples are kept.
    max_unique_tokens: Optional[float] = None
    # Preparation (built-in sets and `scaling-data`).
    max_source_mb: float = 4.0  # stdlib_text: cap on the source text read, in MB; raise it for more data
    val_fraction: float = 0.05  # share of documents (images) held out for validation
    shard_samples: int = 1024  # samples per shard file
    split_seed: int = 0  # seeds the train/val split and the order samples are written in
    synthetic_vocab: int = 64  # synthetic: tokens of the Markov language (an end-of-document token is added)
    synthetic_tokens: int = 262144  # synthetic: tokens generated in total
    # markov: a k-th order Markov language with a known floor (scaling/data/markov.py). Defaults:
    # its tables hold (V + V^2 + V^3) * log2(V!/(V-b)!) = 266,304 * 47.7 bits = 12.7M bits, about
    # 60 times what a 1e5-parameter model can store at 2 bits per parameter (Allen-Zhu and Li
    # 2024), so models from 1e4 to 1e6 parameters all keep gaining; a = 1 is Zipf's law; eps
    # leaves 95% of every next-token distribution to its context.
    markov_vocab: int = 64  # V: tokens (an end-of-document token is added)
    markov_order: int = 3  # k: tokens of context the next token depends on
    markov_branching: int = 8  # b: the tokens each context favours (the sparsity of the transitions)
    markov_zipf: float = 1.0  # a: Zipf exponent of the token weights and of the b successors' probabilities
    markov_smoothing: float = 0.05  # eps: share of every next-token distribution spread over all tokens by Zipf weight
    # rho: each longer context's share of the rest relative to the one before. 0.5: every order a
    # model learns (V times more entries) halves what is left to learn.
    markov_order_decay: float = 0.5
    # 2^23 tokens: more than the longest run of a CPU IsoFLOP grid like isoflop_tiny trains on
    # (about 5.6M tokens at 6e11 FLOPs), so no run sees a token twice.
    markov_tokens: int = 8388608  # tokens generated in total
    markov_doc_tokens: float = 256.0  # mean document length; lengths are geometric
    # shapes: procedural images with a known floor (scaling/data/shapes.py).
    shapes_classes: int = 10  # K: glyph patterns, one per class
    shapes_image_size: int = 16  # side in pixels; even, 10 to 64
    shapes_distractors: int = 3  # at most this many distractor glyphs per image (0 to 3)
    shapes_label_noise: float = 0.1  # eps: share of labels flipped to one of the other K - 1 classes
    # 2^16 images: more than a CPU run of 2e11 FLOPs at the smallest CNN (cnn_debug, 5K parameters,
    # 3.5 MFLOPs per 16x16 image) trains on, so no run sees an image twice.
    shapes_images: int = 65536  # images generated in total

    def problems(self, prefix: str = "data") -> list[str]:
        out = []
        if self.path is None and self.name not in BUILTIN_DATASETS:
            out.append(f"{prefix}.name={self.name!r} is not built in; use one of {BUILTIN_DATASETS} or set {prefix}.path")
        if self.path is not None and not str(self.path).strip():
            out.append(f"{prefix}.path is empty; set it to a folder holding manifest.json, or null for a built-in set")
        if self.seq_len <= 0:
            out.append(f"{prefix}.seq_len={self.seq_len} must be positive")
        if self.tokenizer not in TOKENIZERS:
            out.append(f"{prefix}.tokenizer={self.tokenizer!r}; use byte or bpe")
        if self.tokenizer == "bpe" and self.vocab_size is None:
            out.append(f"{prefix}.tokenizer=bpe needs {prefix}.vocab_size; set e.g. {prefix}.vocab_size=4096")
        if self.vocab_size is not None and self.tokenizer == "byte":
            out.append(
                f"{prefix}.vocab_size={self.vocab_size} applies to the BPE tokenizer only (byte-level is 257); "
                f"set {prefix}.tokenizer=bpe or remove {prefix}.vocab_size"
            )
        if self.vocab_size is not None and not 258 <= self.vocab_size <= 65535:
            out.append(f"{prefix}.vocab_size={self.vocab_size}; a BPE vocabulary must lie in [258, 65535]")
        if self.num_workers < 0:
            out.append(f"{prefix}.num_workers={self.num_workers} must be >= 0")
        if self.streams is not None and self.streams <= 0:
            out.append(f"{prefix}.streams={self.streams} must be positive, or null for gcd(global batch, 8)")
        if self.max_unique_tokens is not None and not (math.isfinite(self.max_unique_tokens) and self.max_unique_tokens > 0):
            out.append(
                f"{prefix}.max_unique_tokens={self.max_unique_tokens} must be a positive number of tokens (images), "
                f"or null for no cap"
            )
        if not (math.isfinite(self.max_source_mb) and self.max_source_mb > 0):
            out.append(f"{prefix}.max_source_mb={self.max_source_mb} must be a positive number of MB")
        if not 0 < self.val_fraction < 1:
            out.append(f"{prefix}.val_fraction={self.val_fraction} must lie strictly between 0 and 1, e.g. 0.05")
        if self.shard_samples <= 0:
            out.append(f"{prefix}.shard_samples={self.shard_samples} must be positive, e.g. 1024")
        if not 2 <= self.synthetic_vocab <= 65534:
            out.append(f"{prefix}.synthetic_vocab={self.synthetic_vocab} must lie in [2, 65534]")
        if self.synthetic_tokens <= 0:
            out.append(f"{prefix}.synthetic_tokens={self.synthetic_tokens} must be positive")
        return out + self._markov_problems(prefix) + self._shapes_problems(prefix)

    def _markov_problems(self, prefix: str) -> list[str]:
        from scaling.data.markov import MAX_TRANSITIONS, MAX_ZIPF, MarkovSpec, too_large_message

        out = []
        V, k, b = self.markov_vocab, self.markov_order, self.markov_branching
        if not 2 <= V <= 65534:
            out.append(f"{prefix}.markov_vocab={V} must lie in [2, 65534]")
        if k < 1:
            out.append(f"{prefix}.markov_order={k} must be >= 1")
        if not 1 <= b <= V:
            out.append(f"{prefix}.markov_branching={b} must lie in [1, markov_vocab={V}]: the successors of a context are distinct tokens")
        if not 0 < self.markov_zipf <= MAX_ZIPF:
            out.append(
                f"{prefix}.markov_zipf={self.markov_zipf} must lie in (0, {MAX_ZIPF}]: 0 makes every token equally "
                f"likely (no Zipf law), and above {MAX_ZIPF} the top successor takes nearly all the mass; 1 is Zipf's law"
            )
        if not 0 < self.markov_smoothing <= 1:
            out.append(
                f"{prefix}.markov_smoothing={self.markov_smoothing} must lie in (0, 1]: above 0 every transition is "
                f"possible, which makes the chain irreducible and aperiodic; e.g. 0.05"
            )
        if self.markov_tokens <= 0:
            out.append(f"{prefix}.markov_tokens={self.markov_tokens} must be positive")
        if not (math.isfinite(self.markov_doc_tokens) and self.markov_doc_tokens >= 1):
            out.append(f"{prefix}.markov_doc_tokens={self.markov_doc_tokens} must be a mean document length >= 1")
        if not 0 < self.markov_order_decay <= 1:
            out.append(
                f"{prefix}.markov_order_decay={self.markov_order_decay} must lie in (0, 1]: each longer context's "
                f"share relative to the one before (1: equal shares); e.g. 0.5"
            )
        spec = MarkovSpec(V, k, b, self.markov_zipf, self.markov_smoothing, self.markov_order_decay)
        if 2 <= V and k >= 1 and 1 <= b and spec.transitions > MAX_TRANSITIONS:
            out.append(too_large_message(spec, prefix))
        return out

    def _shapes_problems(self, prefix: str) -> list[str]:
        from scaling.data.shapes import MAX_CLASSES, MAX_DISTRACTORS

        out = []
        K, eps = self.shapes_classes, self.shapes_label_noise
        if not 2 <= K <= MAX_CLASSES:
            out.append(f"{prefix}.shapes_classes={K} must lie in [2, {MAX_CLASSES}]")
        if not (10 <= self.shapes_image_size <= 64 and self.shapes_image_size % 2 == 0):
            out.append(f"{prefix}.shapes_image_size={self.shapes_image_size} must be even and in [10, 64]: a 5-pixel glyph in each quadrant")
        if not 0 <= self.shapes_distractors <= MAX_DISTRACTORS:
            out.append(f"{prefix}.shapes_distractors={self.shapes_distractors} must lie in [0, {MAX_DISTRACTORS}]: one glyph per quadrant")
        if K >= 2 and not 0 <= eps < (K - 1) / K:
            out.append(
                f"{prefix}.shapes_label_noise={eps} must lie in [0, (K-1)/K = {(K - 1) / K:.4g}) for shapes_classes={K}: "
                f"at (K-1)/K labels are uniform and say nothing about the image; e.g. 0.1"
            )
        if self.shapes_images < 2 * max(K, 2):
            out.append(f"{prefix}.shapes_images={self.shapes_images} must be at least 2 x shapes_classes = {2 * max(K, 2)}")
        return out
