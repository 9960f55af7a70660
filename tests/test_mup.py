"""muP: the coordinate check (activations flat in width and depth under mup, growing under sp),
the config errors, and the base shape as a true anchor (mup there is sp, bit for bit)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from scaling.coord_check import coord_check, slope
from scaling.errors import ConfigError
from scaling.families.base import MupConfig
from scaling.families.cnn import CNNConfig
from scaling.families.gpt import GPTConfig
from scaling.families.vit import ViTConfig
from scaling.models import build_model

# After a few Adam steps at a large LR, the log-log slope of an activation's RMS against width:
# at most FLAT in size under mup; above GROWS for the logits and some layer under sp.
FLAT = 0.25
GROWS = 0.5
STEPS = 3


def _gpt(width: int, depth: int, parametrization: str) -> GPTConfig:
    return GPTConfig(n_layers=depth, d_model=width, n_heads=1, seq_len=16, vocab_size=32,
                     parametrization=parametrization, mup=MupConfig(base_width=32, base_depth=2, base_head_dim=32))


def _cnn(width: int, parametrization: str) -> CNNConfig:
    return CNNConfig(width=width, depth=1, n_stages=2, image_size=8, in_channels=3, n_classes=10,
                     parametrization=parametrization, mup=MupConfig(base_width=8, base_depth=1))


@pytest.mark.parametrize("make,widths", [(lambda w, p: _gpt(w, 2, p), (32, 64, 128, 256)),
                                         (_cnn, (8, 16, 32, 64))], ids=["gpt", "cnn"])  # fmt: skip
def test_coordinate_check_is_flat_in_width_under_mup_and_grows_under_sp(make, widths):
    slopes = {}
    for p in ("sp", "mup"):
        records = coord_check([make(w, p) for w in widths], steps=STEPS, lr=1e-2)
        slopes[p] = {layer: slope(records, layer, STEPS) for layer in ("block.0", "block.last", "logits")}
    assert all(abs(s) < FLAT for s in slopes["mup"].values()), slopes
    assert slopes["sp"]["logits"] > GROWS, slopes


def test_coordinate_check_is_flat_in_depth_under_mup():
    # CompleteP (alpha = 1): the residual stream at the last block keeps its scale as depth grows;
    # under sp (GPT-2's 1/sqrt(2 L) init, one LR) it grows with depth once training starts.
    slopes = {}
    for p in ("sp", "mup"):
        records = coord_check([_gpt(32, depth, p) for depth in (2, 4, 8, 16)], steps=STEPS, lr=1e-2)
        slopes[p] = slope(records, "block.last", STEPS, by="depth")
    assert abs(slopes["mup"]) < FLAT and slopes["sp"] > GROWS, slopes


@pytest.mark.parametrize("cfg", [
    GPTConfig(n_layers=2, d_model=64, n_heads=2, seq_len=16, vocab_size=50),
    CNNConfig(width=8, depth=1, n_stages=2, image_size=8, in_channels=1, n_classes=10),
    ViTConfig(n_layers=2, d_model=32, n_heads=2, patch_size=2, image_size=8, in_channels=1, n_classes=10),
], ids=["gpt", "cnn", "vit"])  # fmt: skip
def test_mup_at_the_base_shape_is_sp(cfg):
    family_width = {"gpt": "d_model", "cnn": "width", "vit": "d_model"}[cfg.family]
    family_depth = {"gpt": "n_layers", "cnn": "depth", "vit": "n_layers"}[cfg.family]
    mup = dataclasses.replace(cfg, parametrization="mup",
                              mup=MupConfig(getattr(cfg, family_width), getattr(cfg, family_depth)))
    torch.manual_seed(0)
    a = build_model(cfg)
    torch.manual_seed(0)
    b = build_model(mup)
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())
    from scaling.families import family_of

    groups = family_of(mup).param_groups(b, mup, 1e-3, 0.1)
    assert {g["lr"] for g in groups} == {1e-3}  # every multiplier is 1 at the base shape


def test_mup_config_errors_name_the_key_and_the_fix():
    with pytest.raises(ConfigError, match=r"model.mup.base_width is not set: model.parametrization=mup needs the base "
                                          r"shape the LR was tuned at; set model.mup.base_width=N"):  # fmt: skip
        build_model(GPTConfig(seq_len=8, vocab_size=8, parametrization="mup"))
    with pytest.raises(ConfigError, match=r"model.tie_embeddings=true with model.parametrization=mup is not supported"):
        build_model(GPTConfig(seq_len=8, vocab_size=8, tie_embeddings=True, parametrization="mup",
                              mup=MupConfig(64, 2)))
    with pytest.raises(ConfigError, match=r"model.parametrization='mu'; use one of \('sp', 'mup'\)"):
        build_model(CNNConfig(image_size=8, in_channels=1, n_classes=2, parametrization="mu"))


# ---- through the trainer ------------------------------------------------------------------------
from scaling.rundir import read_metrics, read_result  # noqa: E402
from trainer_utils import ROOT, data_cache, env, run_train, train_cmd  # noqa: E402,F401 - fixture

BUDGET = "train.tokens=16384"  # 16 steps of 1024 tokens
MUP = ["model.parametrization=mup", "model.mup.base_width=16", "model.mup.base_depth=1"]  # x2 wider, x2 deeper


def _losses(run) -> list[float]:
    return [r["loss"] for r in read_metrics(run / "metrics.jsonl")]


def _ok(proc) -> None:
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_trainer_mup_at_base_shape_is_sp_and_zero2_matches_one_process(data_cache, tmp_path):
    _ok(run_train(data_cache, tmp_path / "sp", BUDGET))
    _ok(run_train(data_cache, tmp_path / "base", BUDGET, "model.parametrization=mup", "model.mup.base_width=32",
                  "model.mup.base_depth=2"))  # fmt: skip
    assert _losses(tmp_path / "base") == pytest.approx(_losses(tmp_path / "sp"), abs=1e-6)

    _ok(run_train(data_cache, tmp_path / "mup1", BUDGET, *MUP, "train.zero_stage=0"))
    _ok(run_train(data_cache, tmp_path / "mup2", BUDGET, *MUP, "train.zero_stage=2", nproc=2))
    one, two = _losses(tmp_path / "mup1"), _losses(tmp_path / "mup2")
    assert read_result(tmp_path / "mup2")["world_size"] == 2
    assert two == pytest.approx(one, abs=1e-4)
    assert one != pytest.approx(_losses(tmp_path / "sp"), abs=1e-3)  # the multipliers do act off the base shape


def test_a_killed_mup_run_resumes_with_its_group_lrs(data_cache, tmp_path):
    import subprocess
    import time

    budget = ("train.tokens=16384", "train.checkpoint_every_tokens=4096", *MUP)
    straight = tmp_path / "straight"
    _ok(run_train(data_cache, straight, *budget))
    run = tmp_path / "killed"
    proc = subprocess.Popen(train_cmd(run, *budget), cwd=ROOT, env=env(data_cache), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            rows = read_metrics(run / "metrics.jsonl")
            if rows and rows[-1]["step"] >= 10:
                break
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
    assert read_result(run) is None
    _ok(run_train(data_cache, run, *budget))
    assert _losses(run) == pytest.approx(_losses(straight), abs=1e-6)
