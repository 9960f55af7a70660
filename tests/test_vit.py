"""The ViT family, the registry's proof: exact counts against the module and FlopCounterMode,
its ladder, and training through the same DeepSpeed loop (ZeRO-2 on 2 processes = 1 process)."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from scaling.counting import count_params, flops_per_sample, forward_flops
from scaling.errors import ConfigError
from scaling.families.vit import ViTConfig
from scaling.ladder import shape_for_params
from scaling.models import build_model
from scaling.rundir import read_metrics, read_result
from trainer_utils import data_cache, run_train  # noqa: F401 - fixture

GRID = [
    ViTConfig(n_layers=L, d_model=d, n_heads=h, d_ff=ff, patch_size=p, pool=pool, image_size=img, in_channels=c,
              n_classes=k)
    for (L, d, h), ff, pool, (p, img, c, k) in itertools.product(
        [(1, 16, 1), (2, 32, 4)], [None, 40], ["cls", "mean"], [(2, 8, 1, 10), (4, 12, 3, 7)]
    )
]  # fmt: skip


@pytest.mark.parametrize("cfg", GRID, ids=str)
def test_param_count_matches_module(cfg):
    counted = count_params(cfg)
    assert counted.total == sum(p.numel() for p in build_model(cfg).parameters())
    assert counted.embedding == cfg.n_tokens * cfg.d_model + (cfg.d_model if cfg.pool == "cls" else 0)


@pytest.mark.parametrize("cfg", GRID, ids=str)
def test_forward_flops_match_flop_counter_term_by_term(cfg):
    B = 2
    counter = FlopCounterMode(display=False)
    with counter, sdpa_kernel(SDPBackend.MATH), torch.no_grad():
        build_model(cfg)(torch.zeros(B, cfg.in_channels, cfg.image_size, cfg.image_size))
    measured = {name: Counter({str(op): n for op, n in ops.items()}) for name, ops in counter.get_flop_counts().items()}

    def under(suffix: str) -> int:
        return sum(sum(ops.values()) for name, ops in measured.items() if "." in name and name.endswith(suffix))

    terms = forward_flops(cfg).matmul
    by_term = {
        "patch_embed": under("ViT.patch"),
        "attn_qkv": under(".attn.qkv"),
        "attn_proj": under(".attn.proj"),
        "mlp_fc": under(".mlp.fc"),
        "mlp_proj": under(".mlp.proj"),
        "head": under("ViT.head"),
    }
    assert by_term == {k: B * terms[k] for k in by_term}
    # Scores and values: the two bmm's of the math attention kernel, over the full T x T square.
    assert under(".attn") - by_term["attn_qkv"] - by_term["attn_proj"] == B * (terms["attn_scores"] + terms["attn_values"])
    assert sum(measured["Global"].values()) == B * forward_flops(cfg).matmul_total
    assert flops_per_sample(cfg, "kaplan") == flops_per_sample(cfg, "6n") == 3 * forward_flops(cfg).matmul_total


def test_ladder_is_monotonic_and_keeps_the_base_models_patches():
    data = {"image_size": 32, "in_channels": 3, "n_classes": 10}
    shapes = [shape_for_params("vit", n, patch_size=8, pool="mean", **data) for n in (3e4, 1e5, 1e6, 1e7, 1e8)]
    counts = [count_params(s).nonembedding for s in shapes]
    assert counts == sorted(counts) and len(set(counts)) == 5
    assert all(s.patch_size == 8 and s.pool == "mean" and s.d_model % s.n_heads == 0 for s in shapes)
    assert all(abs(c / n - 1) < 0.3 for c, n in zip(counts, (3e4, 1e5, 1e6, 1e7, 1e8)))
    assert shapes[-1].d_model / shapes[-1].n_layers == pytest.approx(32, rel=0.5)


def test_config_errors_name_the_key_and_the_fix():
    with pytest.raises(ConfigError, match=r"model.patch_size=3 does not divide model.image_size=8; pick one of \[1, 2, 4, 8\]"):
        build_model(ViTConfig(patch_size=3, image_size=8, in_channels=1, n_classes=10))
    with pytest.raises(ConfigError, match=r"model.pool='max'; use one of \('cls', 'mean'\)"):
        build_model(ViTConfig(pool="max", image_size=8, in_channels=1, n_classes=10))


VIT = ["model=vit_debug", "data=digits", "logger.wandb.mode=disabled", "train.global_batch_size=32",
       "train.eval_tokens=256", "train.lr=1e-3"]  # fmt: skip


def test_vit_trains_with_zero2_on_two_processes_as_on_one(data_cache, tmp_path):
    budget = "train.tokens=512"  # 16 steps of 32 images
    one = tmp_path / "one"
    proc = run_train(data_cache, one, budget, "train.zero_stage=0", base=VIT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = tmp_path / "two"
    proc = run_train(data_cache, two, budget, "train.zero_stage=2", nproc=2, base=VIT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = read_result(two)
    assert result["family"] == "vit" and result["world_size"] == 2 and result["steps"] == 16
    reference = [r["loss"] for r in read_metrics(one / "metrics.jsonl")]
    assert len(reference) == 16 and reference[0] > reference[-1]  # it learns
    assert [r["loss"] for r in read_metrics(two / "metrics.jsonl")] == pytest.approx(reference, abs=1e-4)
