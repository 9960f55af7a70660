"""WSD's decay shapes (linear, cosine, 1-sqrt) and the typed key that picks them."""

from __future__ import annotations

import math

import pytest

from scaling.config import TrainConfig
from scaling.schedule import DECAY_SHAPES, lr_factor, wsd_decay_start


def _wsd(shape: str, steps: int = 100, fraction: float = 0.2, floor: float = 0.0) -> list[float]:
    return [lr_factor(s, steps, schedule="wsd", decay_fraction=fraction, min_lr_ratio=floor, decay_shape=shape)
            for s in range(steps)]  # fmt: skip


def test_linear_is_the_default_and_unchanged():
    default = [lr_factor(s, 100, schedule="wsd", decay_fraction=0.2, min_lr_ratio=0.1) for s in range(100)]
    assert default == _wsd("linear", floor=0.1)
    assert default[79] == 1.0 and default[80] == pytest.approx(1 - 0.9 / 20) and default[99] == pytest.approx(0.1)
    assert TrainConfig().decay_shape == "linear"


@pytest.mark.parametrize("shape", DECAY_SHAPES)
def test_every_shape_is_stable_then_decays_monotonically_to_the_floor(shape):
    lrs = _wsd(shape, floor=0.1)
    assert lrs[:80] == [1.0] * 80
    assert all(a >= b for a, b in zip(lrs[79:], lrs[80:]))
    assert lrs[-1] == pytest.approx(0.1)


def test_shapes_differ_as_their_formulas_say():
    # Halfway through the decay (p = 0.5), to zero: linear 0.5, cosine 0.5, 1-sqrt 1 - sqrt(0.5).
    p = 10 / 20
    step = 80 + 10 - 1
    assert _wsd("linear")[step] == pytest.approx(1 - p)
    assert _wsd("cosine")[step] == pytest.approx(0.5 * (1 + math.cos(math.pi * p)))
    assert _wsd("1-sqrt")[step] == pytest.approx(1 - math.sqrt(p))
    assert _wsd("1-sqrt")[step] < _wsd("linear")[step]  # 1-sqrt drops fast, then flattens


def test_decay_start_is_where_the_lr_first_drops():
    for steps, fraction in [(100, 0.2), (16, 0.25), (10, 0.2), (7, 0.3)]:
        start = wsd_decay_start(steps, fraction)
        lrs = [lr_factor(s, steps, schedule="wsd", decay_fraction=fraction) for s in range(steps)]
        assert lrs[start - 1] == 1.0 and lrs[start] < 1.0


def test_unknown_shape_is_named():
    problems = TrainConfig(tokens=1e6, decay_shape="exp").problems()
    assert any("train.decay_shape='exp'" in p and "1-sqrt" in p for p in problems)
    with pytest.raises(ValueError, match="decay_shape"):
        lr_factor(90, 100, schedule="wsd", decay_shape="exp")


def test_default_run_ids_do_not_move():
    from scaling.config import TrainAppConfig
    from scaling.families import FAMILIES
    from scaling.runid import result_config

    cfg = TrainAppConfig(model=FAMILIES["gpt"].config())
    cfg.train.tokens = 1e6
    assert not any(k in result_config(cfg) for k in ("train.decay_shape", "train.parent"))
    cfg.train.schedule, cfg.train.decay_shape = "wsd", "1-sqrt"
    assert result_config(cfg)["train.decay_shape"] == "1-sqrt"
