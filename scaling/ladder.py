"""Size ladder: the model shape for a target parameter count, by fixed rules, without torch.

The ladder is a fixed, sorted list of *rungs* (shapes) for each family and data shape, and
`shape_for_params` returns the rung whose count is nearest the target (in log space, ties to the
smaller). Picking the nearest point of a fixed set is monotonic by construction: a larger target
never gets a smaller model.

Rungs are chosen from candidate shapes best aspect ratio first: a candidate becomes a rung unless
a rung with a better aspect ratio already lies within 8% of its count. So the ladder keeps the
preferred aspect ratio wherever the integer grid allows, and other ratios only fill the gaps.
The returned count is within about 8% of the target from 1e5 parameters up (GPT; 15% for the
CNN, whose depth steps are coarser) and within about 30% below, where widths step by 4 or 8 channels.

GPT rules
---------
- Aspect ratio d_model / n_layers = 64 (GPT-2 small has 768/12 = 64; Kaplan et al. found loss
  nearly flat for ratios between about 20 and 200). Candidates have ratios from about 32 to 128;
  from about 1e9 non-embedding parameters up every rung has exactly 64.
- Head dimension 64: from 256 up, d_model is a multiple of 64 and n_heads = d_model / 64. Below
  256, d_model is a multiple of 8 (of 4 below 32), so small models are not forced into 2x steps,
  and n_heads is d_model // 64 (at least 1), lowered until it divides d_model: 200 has 2 heads
  of 100.
- n_layers >= 1; at the smallest widths one layer has a ratio below 32.
- d_ff = 4 d_model. Embeddings untied unless `tie_embeddings=True`.
- `count="nonembedding"` targets Kaplan's N, `count="total"` every parameter (see
  `scaling.counting` for what counts as embedding).

CNN rules
---------
- n_stages = 3 (the CIFAR ResNet layout); any image size works, since each stride-2 stage maps
  a side s to ceil(s / 2).
- Width (channels of stage 0) grows with depth: width / depth = 16 (ResNet-20 has width 16 and
  depth 3; a 16:1 ratio keeps depth growing with width). Candidates have ratios from about 8 to
  32. Width is any integer up to 32, then a multiple of 8.

Coverage: GPT rungs span about 1e3 to 1e12 non-embedding parameters, CNN rungs about 1e3 to 1e11.
A target whose nearest rung is more than 2x away (e.g. 1e4 *total* parameters with a 50k
vocabulary, whose embeddings alone are larger) raises ConfigError instead of returning a model of
the wrong size.
"""

from __future__ import annotations

import bisect
import math
import re
from functools import lru_cache

from scaling.config import CNNConfig, GPTConfig
from scaling.errors import ConfigError

GPT_ASPECT = 64  # d_model / n_layers
GPT_HEAD_DIM = 64
CNN_ASPECT = 16  # width / depth
CNN_STAGES = 3
SPACING = 1.08  # rungs are at least 8% apart; within that, the better aspect ratio wins
MAX_MISS = 2.0  # the nearest rung must be within this factor of the target

_SUFFIXES = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9, "t": 10**12}
_COUNT_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmbgt]?)\s*$", re.IGNORECASE)


def parse_count(text: str | int | float, key: str = "params") -> int:
    """Parse a count such as `25M`, `1.2e6`, `350k`, `1.5B` (or `1.5G`), `2T` or `1000`.
    Suffixes are decimal (k = 1e3, M = 1e6, B/G = 1e9, T = 1e12) and case-insensitive."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        match = _COUNT_RE.match(str(text).replace("_", ""))
        if not match:
            raise ConfigError(f"{key}={text!r} is not a count; write e.g. 25M, 1.2e6, 350k or 1.5B")
        value = float(match.group(1)) * _SUFFIXES[match.group(2).lower()]
    if not (math.isfinite(value) and value >= 1):
        raise ConfigError(f"{key}={text!r} must be a positive count; write e.g. 25M")
    return int(round(value))


def gpt_heads(d_model: int) -> int:
    """d_model // 64 heads of 64, or at widths that are not a multiple of 64 (only below 256) the
    nearest smaller head count that divides d_model."""
    n_heads = max(1, d_model // GPT_HEAD_DIM)
    while d_model % n_heads:
        n_heads -= 1
    return n_heads


def _rungs(candidates: list[tuple[int, float, tuple]]) -> tuple[list[int], list[tuple]]:
    """Thin candidates (count, aspect penalty, shape) to rungs, best aspect first: a candidate
    becomes a rung unless a better-aspect rung already lies within a factor SPACING of its
    count. Poor-aspect shapes only fill gaps that good ones leave."""
    counts: list[int] = []
    shapes: list[tuple] = []
    for count, _, shape in sorted(candidates, key=lambda c: (c[1], c[0])):
        i = bisect.bisect_left(counts, count)
        if (i > 0 and count < counts[i - 1] * SPACING) or (i < len(counts) and counts[i] < count * SPACING):
            continue
        counts.insert(i, count)
        shapes.insert(i, shape)
    return counts, shapes


def _nearest(counts: list[int], target: float) -> int:
    """Index of the count nearest `target` in log space; ties go to the smaller."""
    i = bisect.bisect_left(counts, target)
    if i == 0:
        return 0
    if i == len(counts):
        return len(counts) - 1
    below, above = counts[i - 1], counts[i]
    return i - 1 if math.log(target / below) <= math.log(above / target) else i


@lru_cache(maxsize=64)
def _gpt_rungs(
    vocab_size: int, seq_len: int, count: str, tie_embeddings: bool
) -> tuple[list[int], list[tuple]]:
    big = 4 * GPT_HEAD_DIM  # from here on, whole heads of 64
    widths = [*range(8, 32, 4), *range(32, big, 8), *range(big, 16384 + 1, GPT_HEAD_DIM)]
    candidates = []
    for d in widths:
        # The same arithmetic as scaling.counting for d_ff = 4 d (a test checks the two agree).
        per_layer = 12 * d * d + 13 * d
        embedding = vocab_size * d + seq_len * d + (0 if tie_embeddings else vocab_size * d)
        for n_layers in range(max(1, d // (2 * GPT_ASPECT)), max(1, -(-2 * d // GPT_ASPECT)) + 1):
            n = n_layers * per_layer + 2 * d + (embedding if count == "total" else 0)
            candidates.append((n, abs(math.log(d / n_layers / GPT_ASPECT)), (n_layers, d)))
    return _rungs(candidates)


def _cnn_count(width: int, depth: int, in_channels: int, n_classes: int) -> int:
    """`count_params(...).total` of a CNN with CNN_STAGES stages, inlined because building tens
    of thousands of configs is slow (a test checks the two agree)."""
    total = 9 * in_channels * width + 2 * width  # stem
    c_in = width
    for stage in range(CNN_STAGES):
        c = width * 2**stage
        block = 18 * c * c + 4 * c  # two 3x3 convs and two norms
        first = block if c_in == c else 9 * c_in * c + 9 * c * c + 4 * c + c_in * c + 2 * c  # + projection
        total += first + (depth - 1) * block
        c_in = c
    return total + c_in * n_classes + n_classes  # head


@lru_cache(maxsize=64)
def _cnn_rungs(in_channels: int, n_classes: int) -> tuple[list[int], list[tuple]]:
    widths = list(range(1, 32)) + list(range(32, 2048 + 1, 8))
    candidates = []
    for w in widths:
        for depth in range(max(1, w // (2 * CNN_ASPECT)), max(1, -(-2 * w // CNN_ASPECT)) + 1):
            n = _cnn_count(w, depth, in_channels, n_classes)
            candidates.append((n, abs(math.log(w / depth / CNN_ASPECT)), (w, depth)))
    return _rungs(candidates)


def _pick(counts: list[int], target: float, what: str, fix: str) -> int:
    i = _nearest(counts, target)
    if not counts[i] / MAX_MISS <= target <= counts[i] * MAX_MISS:
        raise ConfigError(
            f"params={target:.3g} is outside the {what} ladder (nearest rung {counts[i]:.3g}, "
            f"range {counts[0]:.3g} to {counts[-1]:.3g}); {fix}"
        )
    return i


def _check_sizes(what: str, given: tuple[tuple[str, int | None], ...]) -> None:
    problems = []
    for key, value in given:
        if value is None:
            problems.append(f"{key} is needed to size a {what}; pass {key}=N (from the data manifest)")
        elif value < 1:
            problems.append(f"{key}={value} must be positive; pass {key}=N >= 1")
    if problems:
        raise ConfigError(problems)


def shape_for_params(
    family: str,
    target_params: int | float | str,
    *,
    vocab_size: int | None = None,
    seq_len: int | None = None,
    count: str = "nonembedding",
    tie_embeddings: bool = False,
    image_size: int | None = None,
    in_channels: int | None = None,
    n_classes: int | None = None,
) -> GPTConfig | CNNConfig:
    """The ladder's shape for `target_params` (see the module docstring for the rules).

    GPT needs `vocab_size` and `seq_len` (they set the embedding count, and the returned config
    carries them); CNN needs `image_size`, `in_channels` and `n_classes`. `count` picks what the
    target counts for GPT: "nonembedding" (Kaplan's N) or "total"; a CNN has no embeddings.
    """
    target = parse_count(target_params)
    if count not in ("nonembedding", "total"):
        raise ConfigError(f"count={count!r} is not known; use count=nonembedding or count=total")
    if family == "gpt":
        _check_sizes("GPT", (("vocab_size", vocab_size), ("seq_len", seq_len)))
        counts, shapes = _gpt_rungs(vocab_size, seq_len, count, tie_embeddings)
        fix = "pick a target inside the range"
        if count == "total":
            fix = "use count=nonembedding or a smaller vocabulary"
        n_layers, d_model = shapes[_pick(counts, target, f"GPT ({count})", fix)]
        return GPTConfig(
            n_layers=n_layers,
            d_model=d_model,
            n_heads=gpt_heads(d_model),
            seq_len=seq_len,
            vocab_size=vocab_size,
            tie_embeddings=tie_embeddings,
        )
    if family == "cnn":
        given = (("image_size", image_size), ("in_channels", in_channels), ("n_classes", n_classes))
        _check_sizes("CNN", given)
        counts, shapes = _cnn_rungs(in_channels, n_classes)
        width, depth = shapes[_pick(counts, target, "CNN", "pick a target inside the range")]
        return CNNConfig(
            width=width,
            depth=depth,
            n_stages=CNN_STAGES,
            image_size=image_size,
            in_channels=in_channels,
            n_classes=n_classes,
        )
    raise ConfigError(f"family={family!r} is not a known family; use gpt or cnn")
