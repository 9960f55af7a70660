"""Parameter and FLOP counts from a model config alone: no model is built and torch is not
imported, so the planner can size a sweep on a login node.

Every count here mirrors the modules in `scaling/models/` exactly; tests check the parameter
counts against `sum(p.numel())` and the matmul/convolution FLOPs against torch's FlopCounterMode.

Parameters (`count_params`)
---------------------------
GPT, with d = d_model, f = ffn_dim, V = vocab_size, T = seq_len, L = n_layers:
    per layer      = 4 d^2 + 2 d f + 9 d + f     (qkv and out projections with biases, MLP with
                                                  biases, two LayerNorms with weight and bias)
    non-embedding  = L * per layer + 2 d         (+ the final LayerNorm)
    embedding      = V d + T d  (+ V d for an untied head)
The untied output head counts as *embedding*: Kaplan et al. leave the vocabulary matrices out of
N, and with this choice the non-embedding count (Kaplan's N) does not depend on whether the head
is tied. `total` counts a tied matrix once, as `model.parameters()` does.
CNN: every parameter is non-embedding (`embedding` = 0).

FLOPs
-----
`forward_flops` is the forward pass of one sequence (GPT) or one image (CNN), as executed, split
into `matmul` terms (matrix multiplies and convolutions, 2 FLOPs per multiply-accumulate) and
`other` terms (elementwise work: norms, activations, softmax, biases, residual adds, pooling),
which are estimates. Attention scores and values are counted over the full T x T square, as
the kernels compute them and as FlopCounterMode counts them; the causal mask is not exploited.

`flops_per_token` (GPT) gives *training* FLOPs (forward + backward) per token under a named
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
CNN (`flops_per_sample`): 2 * multiply-accumulates of the convolutions and the head for one
image forward, times 3 for forward + backward. Elementwise work is not counted. Every
convention name gives the same CNN count.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from scaling.config import FLOPS_CONVENTIONS, CNNConfig, GPTConfig
from scaling.errors import ConfigError

ModelConfig = GPTConfig | CNNConfig

# Estimated FLOPs per element for the elementwise work in `FlopTerms.other`. FlopCounterMode does
# not count these, so they are estimates: mean, variance, normalize, scale and shift for a norm;
# GELU (erf) is a handful of operations.
NORM_FLOPS_PER_ELEMENT = 5
GELU_FLOPS_PER_ELEMENT = 8
SOFTMAX_FLOPS_PER_ELEMENT = 4  # scale, exp, sum, divide


@dataclass(frozen=True)
class ParamCount:
    total: int
    embedding: int
    nonembedding: int


@dataclass(frozen=True)
class FlopTerms:
    """Forward FLOPs of one sequence (GPT) or one image (CNN), term by term."""

    matmul: dict[str, int] = field(default_factory=dict)  # matmuls and convolutions, exact
    other: dict[str, int] = field(default_factory=dict)  # elementwise work, estimated

    @property
    def matmul_total(self) -> int:
        return sum(self.matmul.values())

    @property
    def other_total(self) -> int:
        return sum(self.other.values())

    @property
    def total(self) -> int:
        return self.matmul_total + self.other_total


def _require(cfg: ModelConfig, keys: tuple[str, ...], what: str) -> None:
    """Counting needs the data-derived sizes; name the missing ones and how to set them."""
    if not isinstance(cfg, (GPTConfig, CNNConfig)):
        family = getattr(cfg, "family", cfg)
        raise ConfigError(f"model.family={family!r} is not a known family; use gpt or cnn")
    problems = [
        f"model.{key} is None: {what} needs it; set model.{key} or let it come from the data manifest"
        for key in keys
        if getattr(cfg, key) is None
    ]
    problems += cfg.problems()
    if problems:
        raise ConfigError(problems)


def _check_convention(convention: str) -> None:
    if convention not in FLOPS_CONVENTIONS:
        raise ConfigError(f"flops_convention={convention!r} is not known; use one of {FLOPS_CONVENTIONS}")


# ---------------------------------------------------------------------------------------------
# GPT


def _gpt_layer_params(cfg: GPTConfig) -> int:
    d, f = cfg.d_model, cfg.ffn_dim
    attn = (3 * d * d + 3 * d) + (d * d + d)  # qkv and out projection, with biases
    mlp = (d * f + f) + (f * d + d)  # fc and proj, with biases
    norms = 2 * (2 * d)  # ln_1 and ln_2, weight and bias
    return attn + mlp + norms


def _gpt_params(cfg: GPTConfig) -> ParamCount:
    _require(cfg, ("vocab_size", "seq_len"), "counting GPT parameters")
    d, V, T = cfg.d_model, cfg.vocab_size, cfg.seq_len
    nonembedding = cfg.n_layers * _gpt_layer_params(cfg) + 2 * d  # + ln_f
    embedding = V * d + T * d + (0 if cfg.tie_embeddings else V * d)  # wte, wpe, untied head
    return ParamCount(total=embedding + nonembedding, embedding=embedding, nonembedding=nonembedding)


def _gpt_forward(cfg: GPTConfig) -> FlopTerms:
    _require(cfg, ("vocab_size", "seq_len"), "counting GPT FLOPs")
    L, d, f, V, T, H = cfg.n_layers, cfg.d_model, cfg.ffn_dim, cfg.vocab_size, cfg.seq_len, cfg.n_heads
    matmul = {
        "attn_qkv": L * 2 * T * d * 3 * d,
        "attn_scores": L * 2 * T * T * d,  # q @ k^T over all heads, full T x T square
        "attn_values": L * 2 * T * T * d,  # softmax @ v, full T x T square
        "attn_proj": L * 2 * T * d * d,
        "mlp_fc": L * 2 * T * d * f,
        "mlp_proj": L * 2 * T * f * d,
        "head": 2 * T * d * V,
    }
    other = {
        "embedding_add": T * d,
        "layernorm": (2 * L + 1) * NORM_FLOPS_PER_ELEMENT * T * d,
        "linear_bias": L * T * (3 * d + d + f + d),
        "attn_softmax": L * SOFTMAX_FLOPS_PER_ELEMENT * H * T * T,
        "gelu": L * GELU_FLOPS_PER_ELEMENT * T * f,
        "residual": L * 2 * T * d,
    }
    return FlopTerms(matmul=matmul, other=other)


def _chinchilla_forward(cfg: GPTConfig) -> int:
    """Hoffmann et al. 2022, appendix F: forward FLOPs of one sequence."""
    L, d, f, V, T, H = cfg.n_layers, cfg.d_model, cfg.ffn_dim, cfg.vocab_size, cfg.seq_len, cfg.n_heads
    kv = d  # key_size * num_heads
    embeddings = 2 * T * V * d
    attention = 2 * 3 * T * d * kv + 2 * T * T * kv + 3 * H * T * T + 2 * T * T * kv + 2 * T * kv * d
    dense = 2 * T * (d * f + d * f)
    logits = 2 * T * d * V
    return embeddings + L * (attention + dense) + logits


def flops_per_token(cfg: GPTConfig, convention: str = "6n") -> float:
    """Training FLOPs (forward + backward) per token of a GPT under `convention`; see the module
    docstring for the terms each convention counts."""
    _check_convention(convention)
    if not isinstance(cfg, GPTConfig):
        raise ConfigError(f"model.family={getattr(cfg, 'family', cfg)!r}: FLOPs per token need a GPT; "
                          f"use flops_per_sample for other families")
    params = _gpt_params(cfg)
    if convention == "kaplan":
        return 6.0 * params.nonembedding
    if convention == "6n":
        return 6.0 * params.total + 12.0 * cfg.n_layers * cfg.seq_len * cfg.d_model
    return 3.0 * _chinchilla_forward(cfg) / cfg.seq_len


# ---------------------------------------------------------------------------------------------
# CNN


def cnn_blocks(cfg: CNNConfig) -> list[tuple[int, int, int, bool]]:
    """(c_in, c_out, stride, has a projection shortcut) for every residual block, in order."""
    blocks = []
    c_in = cfg.width
    for stage in range(cfg.n_stages):
        c_out = cfg.width * 2**stage
        for i in range(cfg.depth):
            stride = 2 if (stage > 0 and i == 0) else 1
            blocks.append((c_in, c_out, stride, stride != 1 or c_in != c_out))
            c_in = c_out
    return blocks


def _cnn_params(cfg: CNNConfig) -> ParamCount:
    _require(cfg, ("in_channels", "n_classes"), "counting CNN parameters")
    total = 9 * cfg.in_channels * cfg.width + 2 * cfg.width  # stem conv (no bias) and its norm
    for c_in, c_out, _, proj in cnn_blocks(cfg):
        total += 9 * c_in * c_out + 9 * c_out * c_out + 2 * (2 * c_out)  # two convs, two norms
        if proj:
            total += c_in * c_out + 2 * c_out  # 1x1 conv and its norm
    c_last = cfg.width * 2 ** (cfg.n_stages - 1)
    total += c_last * cfg.n_classes + cfg.n_classes  # head, with bias
    return ParamCount(total=total, embedding=0, nonembedding=total)


def _cnn_forward(cfg: CNNConfig) -> FlopTerms:
    _require(cfg, ("image_size", "in_channels", "n_classes"), "counting CNN FLOPs")
    s = cfg.image_size  # side of the current feature map; a 3x3/pad 1 or 1x1 conv at stride 2 gives ceil(s/2)
    w = cfg.width
    matmul = {"stem_conv": 2 * 9 * cfg.in_channels * w * s * s, "block_convs": 0, "shortcut_convs": 0}
    norm = relu = residual = 0
    norm += w * s * s
    relu += w * s * s
    for c_in, c_out, stride, proj in cnn_blocks(cfg):
        s = (s + 1) // 2 if stride == 2 else s
        elements = c_out * s * s  # one output map of this block
        matmul["block_convs"] += 2 * 9 * c_in * c_out * s * s + 2 * 9 * c_out * c_out * s * s
        norm += 2 * elements
        relu += 2 * elements
        residual += elements
        if proj:
            matmul["shortcut_convs"] += 2 * c_in * c_out * s * s
            norm += elements
    c_last = w * 2 ** (cfg.n_stages - 1)
    matmul["head"] = 2 * c_last * cfg.n_classes
    other = {
        "norm": NORM_FLOPS_PER_ELEMENT * norm,
        "relu": relu,
        "residual": residual,
        "pool": c_last * s * s,
        "head_bias": cfg.n_classes,
    }
    return FlopTerms(matmul=matmul, other=other)


# ---------------------------------------------------------------------------------------------
# Generic entry points


def count_params(cfg: ModelConfig) -> ParamCount:
    """Parameters of the module `build_model(cfg)` would build, counted from the config."""
    if isinstance(cfg, GPTConfig):
        return _gpt_params(cfg)
    if isinstance(cfg, CNNConfig):
        return _cnn_params(cfg)
    _require(cfg, (), "counting parameters")  # raises: unknown family
    raise AssertionError("unreachable")


def forward_flops(cfg: ModelConfig) -> FlopTerms:
    """Forward FLOPs of one sequence (GPT, all `seq_len` tokens) or one image (CNN), by term."""
    if isinstance(cfg, GPTConfig):
        return _gpt_forward(cfg)
    if isinstance(cfg, CNNConfig):
        return _cnn_forward(cfg)
    _require(cfg, (), "counting FLOPs")
    raise AssertionError("unreachable")


def flops_per_sample(cfg: ModelConfig, convention: str = "6n") -> float:
    """Training FLOPs (forward + backward) per sample: per token for a GPT (see
    `flops_per_token`), per image for a CNN (3 * 2 * multiply-accumulates of the forward pass,
    whatever the convention). Training compute = this * tokens (or images) seen."""
    _check_convention(convention)
    if isinstance(cfg, GPTConfig):
        return flops_per_token(cfg, convention)
    return 3.0 * forward_flops(cfg).matmul_total
