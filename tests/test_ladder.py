"""The size ladder, parse_count and the scaling-size CLI.

Tolerance on the count: the ladder's shape counts within 10% (GPT) / 15% (CNN) of the target from
1e5 parameters up, and within 30% below 1e5, where widths step by 4 or 8 channels and one layer.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from scaling.config import CNNConfig, GPTConfig
from scaling.counting import count_params
from scaling.errors import ConfigError
from scaling.families.cnn import _rungs as _cnn_rungs
from scaling.families.gpt import _rungs as _gpt_rungs
from scaling.ladder import parse_count, shape_for_params
from scaling.size_cli import main

TARGETS = np.logspace(4, 10, 121)  # 20 per decade

GPT_DATA = {"vocab_size": 50304, "seq_len": 2048}
CNN_DATA = {"image_size": 32, "in_channels": 3, "n_classes": 10}
LADDERS = [
    ("gpt", {**GPT_DATA, "count": "nonembedding"}, "nonembedding", 0.10),
    ("gpt", {"vocab_size": 256, "seq_len": 64, "count": "total"}, "total", 0.10),
    ("gpt", {"vocab_size": 256, "seq_len": 64, "count": "total", "tie_embeddings": True}, "total", 0.10),
    ("cnn", CNN_DATA, "total", 0.15),
    ("cnn", {"image_size": 8, "in_channels": 1, "n_classes": 100}, "total", 0.15),
]


@pytest.mark.parametrize("family,kwargs,key,tolerance", LADDERS, ids=lambda v: str(v))
def test_ladder_is_monotonic_valid_and_close(family, kwargs, key, tolerance):
    previous = 0
    for target in TARGETS:
        cfg = shape_for_params(family, target, **kwargs)
        assert cfg.problems() == [], cfg
        if isinstance(cfg, GPTConfig):
            assert cfg.d_model % cfg.n_heads == 0 and min(cfg.n_layers, cfg.d_model, cfg.n_heads) >= 1
            assert cfg.d_model >= 256 and cfg.d_model // cfg.n_heads == 64 or cfg.d_model < 256
        else:
            assert min(cfg.width, cfg.depth, cfg.n_stages) >= 1
        n = getattr(count_params(cfg), key)
        assert n >= previous, f"target {target:.3g} got {n} after {previous}"
        previous = n
        allowed = tolerance if target >= 1e5 else 0.30
        assert abs(math.log(n / target)) <= math.log(1 + allowed), f"target {target:.3g} got {cfg} with {n}"


def test_ladder_is_monotonic_on_a_fine_grid():
    counts = [
        count_params(shape_for_params("gpt", t, **GPT_DATA)).nonembedding for t in np.logspace(4, 10, 2000)
    ]
    assert counts == sorted(counts)


def test_large_gpt_keeps_the_aspect_ratio():
    cfg = shape_for_params("gpt", 7e9, **GPT_DATA)
    assert cfg.d_model / cfg.n_layers == 64


def test_inlined_rung_counts_agree_with_count_params():
    counts, shapes = _gpt_rungs(1000, 128, "total", False)
    for count, (n_layers, d_model) in list(zip(counts, shapes))[::17]:
        cfg = GPTConfig(n_layers=n_layers, d_model=d_model, n_heads=1, vocab_size=1000, seq_len=128)
        assert count == count_params(cfg).total
    counts, shapes = _cnn_rungs(3, 10)
    for count, (width, depth) in list(zip(counts, shapes))[::17]:
        cfg = CNNConfig(width=width, depth=depth, n_stages=3, image_size=32, in_channels=3, n_classes=10)
        assert count == count_params(cfg).total


def test_ladder_errors_name_the_problem():
    with pytest.raises(ConfigError, match="outside the GPT \\(total\\) ladder.*use count=nonembedding"):
        shape_for_params("gpt", 1e4, **GPT_DATA, count="total")
    with pytest.raises(ConfigError, match="vocab_size is needed"):
        shape_for_params("gpt", 1e6, seq_len=128)
    with pytest.raises(ConfigError, match="image_size=-1 must be positive"):
        shape_for_params("cnn", 1e6, image_size=-1, in_channels=3, n_classes=10)
    with pytest.raises(ConfigError, match="family='rnn' is not a known family"):
        shape_for_params("rnn", 1e6)
    with pytest.raises(ConfigError, match="count='all'"):
        shape_for_params("gpt", 1e6, **GPT_DATA, count="all")


@pytest.mark.parametrize(
    "text,value",
    [("25M", 25_000_000), ("25m", 25_000_000), ("350k", 350_000), ("1.5B", 1_500_000_000),
     ("2G", 2_000_000_000), ("1T", 10**12), ("1.2e6", 1_200_000), ("1000", 1000), (" 7K ", 7000),
     ("1_000_000", 10**6), (3e5, 300_000)],
)
def test_parse_count(text, value):
    assert parse_count(text) == value


@pytest.mark.parametrize("text", ["abc", "25X", "", "M", "-5M", "1e", "0"])
def test_parse_count_rejects_bad_strings(text):
    with pytest.raises(ConfigError, match=f"params={text!r}"):
        parse_count(text)


def test_size_cli_prints_the_table(capsys):
    assert main(["gpt", "--params", "25M", "--vocab-size", "1000", "--seq-len", "256"]) == 0
    out = capsys.readouterr().out
    for word in ("n_layers", "non-embedding", "kaplan", "6n", "chinchilla", "tokens"):
        assert word in out
    assert main(["gpt", "--size", "debug"]) == 0
    assert main(["cnn", "--params", "1M", "--image-size", "8"]) == 0
    assert "FLOPs per image" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["gpt", "--params", "lots"], "params='lots' is not a count"),
        (["gpt", "--size", "huge"], "--size='huge' is not a gpt size"),
        (["cnn", "--params", "1M", "--classes", "0"], "n_classes=0 must be positive"),
    ],
)
def test_size_cli_bad_input_exits_2_without_traceback(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_size_cli_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["gpt"])  # neither --params nor --size
    assert info.value.code == 2


@pytest.mark.parametrize("data", [(257, 64), (50304, 2048), (1000, 128)])
def test_gpt_rungs_from_1e4_parameters_have_two_or_more_layers(data):
    # The depth rule (ladder rule 2): small models keep several layers instead of one wide one.
    from scaling.families.gpt import _rungs as gpt_rungs

    counts, shapes = gpt_rungs(*data, "nonembedding", False)
    assert all(n_layers >= 2 for n, (n_layers, _) in zip(counts, shapes) if n >= 1e4)
    # Rule 1, the ladder before it, had one-layer models up to d_model 127 (about 2e5 parameters).
    counts, shapes = gpt_rungs(*data, "nonembedding", False, 1)
    assert any(n_layers == 1 for n, (n_layers, _) in zip(counts, shapes) if n >= 1e4)
