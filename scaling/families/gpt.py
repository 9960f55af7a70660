"""The GPT family: a pre-norm decoder-only transformer, GPT-2 style (module: `scaling.models.gpt`).

Parameters, with d = d_model, f = ffn_dim, V = vocab_size, T = seq_len, L = n_layers:
    per layer      = 4 d^2 + 2 d f + 9 d + f     (qkv and out projections with biases, MLP with
                                                  biases, two LayerNorms with weight and bias)
    non-embedding  = L * per layer + 2 d         (+ the final LayerNorm)
    embedding      = V d + T d  (+ V d for an untied head)
The untied output head counts as *embedding*: Kaplan et al. leave the vocabulary matrices out of
N, and with this choice the non-embedding count (Kaplan's N) does not depend on whether the head
is tied. `total` counts a tied matrix once, as `model.parameters()` does.

Forward FLOPs of one sequence are split into `matmul` terms (2 FLOPs per multiply-accumulate)
and estimated elementwise `other` terms. Attention scores and values are counted over the full
T x T square, as the kernels compute them and as FlopCounterMode counts them.

`flops_per_token` gives *training* FLOPs (forward + backward) per token under a named
convention, because published counts differ and fitted exponents depend on which is used:
    kaplan      6 * non-embedding params. No attention term, no head, no embeddings
                (Kaplan et al. 2020, C = 6 N D).
    6n          6 * total params + 12 * L * T * d. The second term is the attention score and
                value matmuls, forward 4 T d per token per layer, counted non-causally, times 3
                for forward + backward (PaLM appendix B; nanoGPT's estimate_mfu).
    chinchilla  Hoffmann et al. 2022 appendix F, forward per sequence
                    embeddings           2 T V d
                    per layer: qkv       2 * 3 * T * d * (key_size * n_heads)
                               logits    2 T T (key_size * n_heads)
                               softmax   3 n_heads T T
                               values    2 T T (key_size * n_heads)
                               out proj  2 T (key_size * n_heads) d
                               MLP       2 T (d f + f d)
                    logits               2 T d V
                times 3 for forward + backward, divided by T. (key_size * n_heads = d here.)

Ladder rule (see `scaling.ladder` for how rungs are thinned and picked)
- Aspect ratio d_model / n_layers = 64 from d_model 256 up (GPT-2 small has 768/12 = 64; Kaplan
  et al. found loss nearly flat for ratios between about 20 and 200). Below 256 the preferred
  depth is 4 layers (aspect d/4), and below d_model 32 the aspect is 8 (`aspect`), so that the
  small models of a laptop study have several layers, as small models in Kaplan et al. and OLMo's
  ladder do, instead of one: every rung from about 1e4 non-embedding parameters up has 2 or more
  layers. Candidates have ratios from half to twice the preferred one; from about 1e9
  non-embedding parameters up every rung has exactly 64.
- Head dimension 64: from 256 up, d_model is a multiple of 64 and n_heads = d_model / 64. Below
  256, d_model is a multiple of 8 (of 4 below 128), so small models are not forced into 2x steps,
  and n_heads is d_model // 64 (at least 1), lowered until it divides d_model: 200 has 2 heads
  of 100.
- n_layers >= 1: below about 5e3 non-embedding parameters a rung may have one layer.
- d_ff = 4 d_model. Embeddings tied as the study's base model has them.
- `count="nonembedding"` targets Kaplan's N, `count="total"` every parameter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any, Optional

from scaling.families.base import (
    GELU_FLOPS_PER_ELEMENT,
    NORM_FLOPS_PER_ELEMENT,
    SOFTMAX_FLOPS_PER_ELEMENT,
    Family,
    FlopTerms,
    MupConfig,
    ParamCount,
    check_convention,
    mup_problems,
    require_sizes,
)
from scaling.errors import ConfigError

NAME = "gpt"
LABEL = "GPT"  # in messages
ASPECT = 64  # d_model / n_layers, from d_model 256 up
SMALL_DEPTH = 4  # the preferred depth below d_model 256
MIN_ASPECT = 8  # ... but never narrower than this per layer (below d_model 32)


LADDER_RULES = (1, 2)  # 1: aspect 64 at every width (before the depth rule); 2: today's


def aspect(d_model: int, rule: int = 2) -> float:
    """The preferred d_model / n_layers at a width: GPT-2's 64 from d_model 256 up; below that, 4
    layers (aspect d/4), as small transformers in Kaplan et al. (2020) and OLMo's ladder keep
    several layers rather than one wide one; below d_model 32, an aspect of 8. Rule 1 (studies
    planned before the depth rule) had 64 everywhere."""
    if rule == 1:
        return float(ASPECT)
    return min(float(ASPECT), max(float(MIN_ASPECT), d_model / SMALL_DEPTH))
HEAD_DIM = 64


@dataclass
class GPTConfig:
    """A pre-norm decoder-only transformer. `seq_len` and `vocab_size` left as None come from the
    data manifest, so a user never sets them twice."""

    family: str = NAME
    n_layers: int = 2
    d_model: int = 64
    n_heads: int = 2
    d_ff: Optional[int] = None  # None means 4 * d_model
    seq_len: Optional[int] = None
    vocab_size: Optional[int] = None
    tie_embeddings: bool = False
    parametrization: str = "sp"  # sp | mup (see scaling.families.base.MupScales)
    mup: MupConfig = field(default_factory=MupConfig)

    @property
    def ffn_dim(self) -> int:
        return self.d_ff if self.d_ff is not None else 4 * self.d_model

    def problems(self, prefix: str = "model") -> list[str]:
        out = []
        if self.family != NAME:
            out.append(f"{prefix}.family={self.family!r} in a {NAME} config; use family={NAME} or another model config")
        for key in ("n_layers", "d_model", "n_heads", "d_ff", "seq_len", "vocab_size"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                out.append(f"{prefix}.{key}={value} must be positive; pick a size >= 1")
        if self.d_model > 0 and self.n_heads > 0 and self.d_model % self.n_heads:
            out.append(
                f"{prefix}.d_model={self.d_model} is not divisible by {prefix}.n_heads={self.n_heads}; "
                f"pick d_model as a multiple of n_heads"
            )
        out += mup_problems(self, self.d_model, self.n_layers, prefix)
        if self.parametrization == "mup" and self.tie_embeddings:
            out.append(f"{prefix}.tie_embeddings=true with {prefix}.parametrization=mup is not supported: muP scales the "
                       f"output logits by 1/width but keeps the input embedding's scale, which one tied matrix cannot "
                       f"do; set {prefix}.tie_embeddings=false")
        return out


def layer_params(d: int, f: int) -> int:
    """Parameters of one block: attention (qkv and out projection, with biases), MLP (with
    biases) and two LayerNorms. Shared with the ViT, whose blocks are the same."""
    attn = (3 * d * d + 3 * d) + (d * d + d)
    mlp = (d * f + f) + (f * d + d)
    norms = 2 * (2 * d)
    return attn + mlp + norms


def block_flops(L: int, T: int, d: int, f: int, H: int) -> tuple[dict[str, int], dict[str, int]]:
    """(matmul, other) forward FLOPs of `L` blocks over `T` positions. Shared with the ViT."""
    matmul = {
        "attn_qkv": L * 2 * T * d * 3 * d,
        "attn_scores": L * 2 * T * T * d,  # q @ k^T over all heads, full T x T square
        "attn_values": L * 2 * T * T * d,  # softmax @ v, full T x T square
        "attn_proj": L * 2 * T * d * d,
        "mlp_fc": L * 2 * T * d * f,
        "mlp_proj": L * 2 * T * f * d,
    }
    other = {
        "layernorm": 2 * L * NORM_FLOPS_PER_ELEMENT * T * d,
        "linear_bias": L * T * (3 * d + d + f + d),
        "attn_softmax": L * SOFTMAX_FLOPS_PER_ELEMENT * H * T * T,
        "gelu": L * GELU_FLOPS_PER_ELEMENT * T * f,
        "residual": L * 2 * T * d,
    }
    return matmul, other


def count_params(cfg: GPTConfig) -> ParamCount:
    require_sizes(cfg, ("vocab_size", "seq_len"), "counting GPT parameters")
    d, V, T = cfg.d_model, cfg.vocab_size, cfg.seq_len
    nonembedding = cfg.n_layers * layer_params(d, cfg.ffn_dim) + 2 * d  # + ln_f
    embedding = V * d + T * d + (0 if cfg.tie_embeddings else V * d)  # wte, wpe, untied head
    return ParamCount(total=embedding + nonembedding, embedding=embedding, nonembedding=nonembedding)


def forward_flops(cfg: GPTConfig) -> FlopTerms:
    require_sizes(cfg, ("vocab_size", "seq_len"), "counting GPT FLOPs")
    L, d, f, V, T, H = cfg.n_layers, cfg.d_model, cfg.ffn_dim, cfg.vocab_size, cfg.seq_len, cfg.n_heads
    matmul, other = block_flops(L, T, d, f, H)
    matmul["head"] = 2 * T * d * V
    other["layernorm"] += NORM_FLOPS_PER_ELEMENT * T * d  # ln_f
    other = {"embedding_add": T * d, **other}
    return FlopTerms(matmul=matmul, other=other)


def chinchilla_forward(cfg: GPTConfig) -> int:
    """Hoffmann et al. 2022, appendix F: forward FLOPs of one sequence."""
    L, d, f, V, T, H = cfg.n_layers, cfg.d_model, cfg.ffn_dim, cfg.vocab_size, cfg.seq_len, cfg.n_heads
    kv = d  # key_size * num_heads
    embeddings = 2 * T * V * d
    attention = 2 * 3 * T * d * kv + 2 * T * T * kv + 3 * H * T * T + 2 * T * T * kv + 2 * T * kv * d
    dense = 2 * T * (d * f + d * f)
    logits = 2 * T * d * V
    return embeddings + L * (attention + dense) + logits


def flops_per_token(cfg: GPTConfig, convention: str = "6n") -> float:
    """Training FLOPs (forward + backward) per token under `convention`; see the module docstring
    for the terms each convention counts."""
    check_convention(convention)
    if not isinstance(cfg, GPTConfig):
        raise ConfigError(f"model.family={getattr(cfg, 'family', cfg)!r}: FLOPs per token need a {NAME} config; "
                          f"use scaling.counting.flops_per_sample for other families")
    params = count_params(cfg)
    if convention == "kaplan":
        return 6.0 * params.nonembedding
    if convention == "6n":
        return 6.0 * params.total + 12.0 * cfg.n_layers * cfg.seq_len * cfg.d_model
    return 3.0 * chinchilla_forward(cfg) / cfg.seq_len


def heads(d_model: int) -> int:
    """d_model // 64 heads of 64, or at widths that are not a multiple of 64 (only below 256) the
    nearest smaller head count that divides d_model."""
    n_heads = max(1, d_model // HEAD_DIM)
    while d_model % n_heads:
        n_heads -= 1
    return n_heads


@lru_cache(maxsize=64)
def _rungs(vocab_size: int, seq_len: int, count: str, tie_embeddings: bool, rule: int = 2) -> tuple[list[int], list[tuple]]:
    from scaling.ladder import thin_to_rungs

    big = 4 * HEAD_DIM  # from here on, whole heads of 64
    fine = 128 if rule >= 2 else 32  # widths step by 4 below this, by 8 up to 256
    widths = [*range(8, fine, 4), *range(fine, big, 8), *range(big, 16384 + 1, HEAD_DIM)]
    candidates = []
    for d in widths:
        per_layer = layer_params(d, 4 * d)
        embedding = vocab_size * d + seq_len * d + (0 if tie_embeddings else vocab_size * d)
        a = aspect(d, rule)
        for n_layers in range(max(1, int(d // (2 * a))), max(1, math.ceil(2 * d / a)) + 1):
            n = n_layers * per_layer + 2 * d + (embedding if count == "total" else 0)
            candidates.append((n, abs(math.log(d / n_layers / a)), (n_layers, d)))
    return thin_to_rungs(candidates)


def ladder(target: float, base: GPTConfig, count: str = "nonembedding", rule: int = 2) -> GPTConfig:
    """The ladder's GPT for `target` parameters (rules in the module docstring; `rule` 1 is the
    ladder before the depth rule, for studies planned with it). `base` carries the data's
    vocab_size and seq_len and whether embeddings are tied."""
    from scaling.ladder import check_sizes, pick_rung

    check_sizes(LABEL, (("vocab_size", base.vocab_size), ("seq_len", base.seq_len)))
    if rule not in LADDER_RULES:
        raise ConfigError(f"study.sizes.ladder_rule={rule}; use one of {LADDER_RULES}")
    counts, shapes = _rungs(base.vocab_size, base.seq_len, count, base.tie_embeddings, rule)
    fix = "use count=nonembedding or a smaller vocabulary" if count == "total" else "pick a target inside the range"
    n_layers, d_model = shapes[pick_rung(counts, target, f"{LABEL} ({count})", fix)]
    return replace(base, n_layers=n_layers, d_model=d_model, n_heads=heads(d_model), d_ff=None)


SIZES = {
    "debug": GPTConfig(n_layers=2, d_model=64, n_heads=2),
    "tiny": GPTConfig(n_layers=4, d_model=128, n_heads=2),
    "small": GPTConfig(n_layers=6, d_model=384, n_heads=6),
    "gpt2-small": GPTConfig(n_layers=12, d_model=768, n_heads=12, tie_embeddings=True),
    "gpt2-medium": GPTConfig(n_layers=24, d_model=1024, n_heads=16, tie_embeddings=True),
}

# The keys run-id rule 1 hashed for this family, frozen so that later keys never move old ids.
LEGACY_ID_KEYS = ("model.family", "model.n_layers", "model.d_model", "model.n_heads", "model.d_ff",
                  "model.seq_len", "model.vocab_size", "model.tie_embeddings")  # fmt: skip

FAMILY = Family(
    name=NAME,
    config=GPTConfig,
    data_kind="text",
    data_fields={"vocab_size": "vocab_size", "seq_len": "seq_len"},
    padded_fields=("vocab_size",),
    sequence_field="seq_len",
    count_params=count_params,
    forward_flops=forward_flops,
    flops_per_sample=flops_per_token,
    ladder=ladder,
    sizes=SIZES,
    module="scaling.models.gpt:GPT",
    default_model="gpt_debug",
    legacy_id_keys=LEGACY_ID_KEYS,
    width_field="d_model",
    depth_field="n_layers",
    head_dim=lambda shape: int(shape["d_model"]) // int(shape["n_heads"]),
    input_params=("wte.", "wpe."),
    output_params=("head.",),
)
