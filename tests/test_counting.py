"""Analytic counts (scaling.counting) against the real modules.

Parameters must match `sum(p.numel())` exactly. Forward FLOPs are compared with torch's
FlopCounterMode term by term: matmul and convolution terms exactly. FlopCounterMode counts no
elementwise work, so the analytic `other` terms (norms, activations, softmax, biases, residual
adds) are estimates that cannot be measured this way; the stated tolerance for them is that they
stay below 15% of the matmul total on these shapes, so the matmul terms carry the count.
"""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from scaling.config import FLOPS_CONVENTIONS, CNNConfig, GPTConfig
from scaling.counting import count_params, flops_per_sample, flops_per_token, forward_flops
from scaling.errors import ConfigError
from scaling.models import build_model

OTHER_TOLERANCE = 0.15  # estimated elementwise FLOPs / matmul FLOPs, at most

GPT_GRID = [
    GPTConfig(n_layers=L, d_model=d, n_heads=h, d_ff=ff, vocab_size=V, seq_len=T, tie_embeddings=tie)
    for (L, d, h), ff, (V, T), tie in itertools.product(
        [(1, 16, 1), (2, 32, 4), (3, 48, 3)], [None, 40], [(61, 8), (128, 32)], [False, True]
    )
]
CNN_GRID = [
    CNNConfig(width=w, depth=dep, n_stages=s, image_size=img, in_channels=c, n_classes=k)
    for (w, dep, s), (img, c, k) in itertools.product(
        [(4, 1, 1), (8, 2, 3), (6, 1, 4), (16, 2, 2)], [(8, 3, 10), (9, 1, 7), (32, 3, 100)]
    )
]


def _numel(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # a tied matrix is yielded once


@pytest.mark.parametrize("cfg", GPT_GRID + CNN_GRID, ids=str)
def test_param_count_matches_module(cfg):
    counted = count_params(cfg)
    assert counted.total == _numel(build_model(cfg))
    assert counted.total == counted.embedding + counted.nonembedding


def test_gpt_embedding_split_and_tying():
    untied = GPTConfig(n_layers=2, d_model=32, n_heads=2, vocab_size=100, seq_len=16)
    tied = GPTConfig(n_layers=2, d_model=32, n_heads=2, vocab_size=100, seq_len=16, tie_embeddings=True)
    # The untied head counts as embedding, so Kaplan's N does not depend on tying.
    assert count_params(untied).nonembedding == count_params(tied).nonembedding
    assert count_params(untied).embedding - count_params(tied).embedding == 100 * 32
    model = build_model(untied)
    embedding_names = ("wte", "wpe", "head")
    nonembedding = sum(p.numel() for n, p in model.named_parameters() if n.split(".")[0] not in embedding_names)
    assert count_params(untied).nonembedding == nonembedding


def test_gpt2_small_matches_published_count():
    # GPT-2 small (tied, vocab 50257, context 1024) has 124,439,808 parameters.
    cfg = GPTConfig(n_layers=12, d_model=768, n_heads=12, vocab_size=50257, seq_len=1024, tie_embeddings=True)
    assert count_params(cfg).total == 124_439_808


def test_cnn_has_no_embedding():
    cfg = CNN_GRID[0]
    assert count_params(cfg).embedding == 0


def _measure(model: torch.nn.Module, x: torch.Tensor, backward: bool = False) -> dict[str, Counter]:
    """FLOPs per module name and op, for a forward (and optionally backward) pass."""
    counter = FlopCounterMode(display=False)
    # The math backend runs attention as two bmm's that FlopCounterMode counts (the fused CPU
    # kernel is not in its registry); both are counted over the full T x T square.
    with counter, sdpa_kernel(SDPBackend.MATH), torch.set_grad_enabled(backward):
        out = model(x)
        if backward:
            out.sum().backward()
    counts = counter.get_flop_counts()
    return {name: Counter({str(op): n for op, n in ops.items()}) for name, ops in counts.items()}


def _sum(measured: dict[str, Counter], suffix: str, op: str | None = None) -> int:
    """FLOPs of the submodules whose name ends with `suffix` (not "Global" or the root)."""
    total = 0
    for name, ops in measured.items():
        if "." in name and name.endswith(suffix):
            total += sum(n for o, n in ops.items() if op is None or o == op)
    return total


@pytest.mark.parametrize("cfg", [c for c in GPT_GRID if not c.tie_embeddings], ids=str)
def test_gpt_forward_flops_match_flop_counter(cfg):
    B = 2
    measured = _measure(build_model(cfg), torch.zeros(B, cfg.seq_len, dtype=torch.long))
    terms = forward_flops(cfg)
    by_term = {
        "attn_qkv": _sum(measured, ".attn.qkv"),
        "attn_proj": _sum(measured, ".attn.proj"),
        "mlp_fc": _sum(measured, ".mlp.fc"),
        "mlp_proj": _sum(measured, ".mlp.proj"),
        "head": _sum(measured, "GPT.head"),
        "attn_scores+attn_values": _sum(measured, ".attn", "aten.bmm"),
    }
    expected = dict(terms.matmul)
    expected["attn_scores+attn_values"] = expected.pop("attn_scores") + expected.pop("attn_values")
    assert by_term == {k: B * v for k, v in expected.items()}
    # Nothing else is counted: the measured total is the matmul total.
    assert sum(measured["Global"].values()) == B * terms.matmul_total
    assert 0 < terms.other_total < OTHER_TOLERANCE * terms.matmul_total


@pytest.mark.parametrize("cfg", CNN_GRID, ids=str)
def test_cnn_forward_flops_match_flop_counter(cfg):
    B = 2
    x = torch.zeros(B, cfg.in_channels, cfg.image_size, cfg.image_size)
    measured = _measure(build_model(cfg), x)
    terms = forward_flops(cfg)
    by_term = {
        "stem_conv": _sum(measured, "CNN.stem.0"),
        "block_convs": _sum(measured, ".conv1") + _sum(measured, ".conv2"),
        "shortcut_convs": _sum(measured, ".shortcut.0"),
        "head": _sum(measured, "CNN.head"),
    }
    assert by_term == {k: B * v for k, v in terms.matmul.items()}
    assert sum(measured["Global"].values()) == B * terms.matmul_total
    assert 0 < terms.other_total < OTHER_TOLERANCE * terms.matmul_total


def test_backward_is_twice_forward_for_gpt():
    # The x3 of every convention: backward costs two matmuls per forward matmul.
    cfg = GPT_GRID[2]
    measured = _measure(build_model(cfg), torch.zeros(1, cfg.seq_len, dtype=torch.long), backward=True)
    assert sum(measured["Global"].values()) == 3 * forward_flops(cfg).matmul_total


def test_flop_conventions():
    cfg = GPTConfig(n_layers=4, d_model=128, n_heads=2, vocab_size=1000, seq_len=256)
    L, d, V, T, H = 4, 128, 1000, 256, 2
    params = count_params(cfg)
    assert flops_per_token(cfg, "kaplan") == 6 * params.nonembedding
    assert flops_per_token(cfg, "6n") == 6 * params.total + 12 * L * T * d
    # Chinchilla counts what runs (matmuls, attention non-causal) plus the embedding lookup as a
    # matmul and 3 FLOPs per softmax element.
    forward = forward_flops(cfg).matmul_total + 2 * T * V * d + L * 3 * H * T * T
    assert flops_per_token(cfg, "chinchilla") == pytest.approx(3 * forward / T)
    for convention in FLOPS_CONVENTIONS:
        assert flops_per_sample(cfg, convention) == flops_per_token(cfg, convention)


def test_cnn_flops_per_sample_is_three_forward_passes():
    cfg = CNN_GRID[4]
    for convention in FLOPS_CONVENTIONS:
        assert flops_per_sample(cfg, convention) == 3 * forward_flops(cfg).matmul_total


def test_unknown_convention_names_itself():
    cfg = GPT_GRID[0]
    with pytest.raises(ConfigError, match="flops_convention='6N'.*use one of"):
        flops_per_sample(cfg, "6N")


def test_counting_needs_data_fields():
    with pytest.raises(ConfigError, match="model.vocab_size is None"):
        count_params(GPTConfig(seq_len=16))
    with pytest.raises(ConfigError, match="model.image_size is None"):
        forward_flops(CNNConfig(in_channels=3, n_classes=10))
