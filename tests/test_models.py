"""The model families: shapes, activation checkpointing, init, config errors before building,
the size registry, and the conf/model YAML files."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

import scaling.models as models
from scaling.config import CNNConfig, GPTConfig, register_configs
from scaling.counting import count_params
from scaling.errors import ConfigError
from scaling.models import FAMILIES, SIZES, build_model

CONF = Path(__file__).resolve().parents[1] / "conf"
GPT_DATA = {"vocab_size": 67, "seq_len": 16}
CNN_DATA = {"image_size": 8, "in_channels": 3, "n_classes": 5}


def gpt(**kw) -> GPTConfig:
    return GPTConfig(**{"n_layers": 2, "d_model": 32, "n_heads": 2, **GPT_DATA, **kw})


def cnn(**kw) -> CNNConfig:
    return CNNConfig(**{"width": 8, "depth": 1, "n_stages": 3, **CNN_DATA, **kw})


def test_gpt_forward_shape_and_shorter_sequences():
    torch.manual_seed(0)
    model = build_model(gpt())
    assert model(torch.randint(0, 67, (3, 16))).shape == (3, 16, 67)
    assert model(torch.randint(0, 67, (2, 5))).shape == (2, 5, 67)
    with pytest.raises(ValueError, match="seq_len=16"):
        model(torch.randint(0, 67, (1, 17)))


def test_gpt_is_causal():
    # Changing a later token must not change the logits at earlier positions.
    torch.manual_seed(0)
    model = build_model(gpt()).eval()
    idx = torch.randint(0, 67, (1, 16))
    changed = idx.clone()
    changed[0, 10] = (idx[0, 10] + 1) % 67
    a, b = model(idx), model(changed)
    assert torch.equal(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


@pytest.mark.parametrize("image_size,in_channels", [(8, 3), (7, 1), (1, 2), (32, 3)])
def test_cnn_forward_shape_any_image(image_size, in_channels):
    model = build_model(cnn(image_size=image_size, in_channels=in_channels, n_stages=4))
    assert model(torch.randn(2, in_channels, image_size, image_size)).shape == (2, 5)


def test_tied_embeddings_share_the_matrix():
    model = build_model(gpt(tie_embeddings=True))
    assert model.head.weight is model.wte.weight


def test_gpt_init_scales_residual_projections():
    torch.manual_seed(0)
    cfg = gpt(n_layers=8, d_model=256, n_heads=4)
    model = build_model(cfg)
    assert model.blocks[0].attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)
    residual_std = 0.02 / math.sqrt(2 * cfg.n_layers)
    assert model.blocks[0].mlp.proj.weight.std().item() == pytest.approx(residual_std, rel=0.05)
    assert model.blocks[0].attn.proj.weight.std().item() == pytest.approx(residual_std, rel=0.05)
    assert torch.count_nonzero(model.blocks[0].attn.qkv.bias) == 0


@pytest.mark.parametrize("family", ["gpt", "cnn"])
def test_activation_checkpointing_gives_the_same_loss_and_grads(family):
    torch.manual_seed(0)
    model = build_model(gpt() if family == "gpt" else cnn())
    x = torch.randint(0, 67, (2, 16)) if family == "gpt" else torch.randn(2, 3, 8, 8)
    assert model.activation_checkpointing is False

    def loss_and_grads():
        model.zero_grad()
        loss = model(x).float().pow(2).mean()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    plain_loss, plain_grads = loss_and_grads()
    model.activation_checkpointing = True
    ckpt_loss, ckpt_grads = loss_and_grads()
    assert torch.equal(plain_loss, ckpt_loss)
    for a, b in zip(plain_grads, ckpt_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_cnn_output_does_not_depend_on_the_batch_split():
    # GroupNorm normalizes each image on its own, so a data-parallel split (1 vs 2 ranks) sees
    # the same forward pass. BatchNorm in training mode would fail this.
    torch.manual_seed(0)
    model = build_model(cnn()).train()
    x = torch.randn(4, 3, 8, 8)
    whole = model(x)
    halves = torch.cat([model(x[:2]), model(x[2:])])
    torch.testing.assert_close(whole, halves, rtol=1e-5, atol=1e-6)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


# --- config errors are raised before anything is built ----------------------------------------


@pytest.fixture
def no_build(monkeypatch):
    """Make building any model fail the test, to prove errors come first."""

    def refuse(self, cfg):
        raise AssertionError("a model was built before the config was checked")

    import scaling.models.cnn
    import scaling.models.gpt
    import scaling.models.vit

    for module in (scaling.models.gpt.GPT, scaling.models.cnn.CNN, scaling.models.vit.ViT):
        monkeypatch.setattr(module, "__init__", refuse)


@pytest.mark.parametrize(
    "cfg,pattern",
    [
        (gpt(d_model=100, n_heads=3), r"model.d_model=100 is not divisible by model.n_heads=3; pick d_model"),
        (gpt(n_layers=-2), r"model.n_layers=-2 must be positive; pick"),
        (cnn(width=-8), r"model.width=-8 must be positive; pick"),
        (
            gpt(vocab_size=None),
            r"model.vocab_size is None: it comes from the data manifest; set data.\* or model.vocab_size",
        ),
        (cnn(n_classes=None), r"model.n_classes is None: it comes from the data manifest"),
        (
            dataclasses.replace(gpt(), family="rnn"),
            r"model.family='rnn' is not a known family; use one of \['cnn', 'gpt', 'vit'\]",
        ),
        ("transformer", r"model.family='transformer' is not a known family"),
    ],
)
def test_config_errors_name_key_value_and_fix(no_build, cfg, pattern):
    with pytest.raises(ConfigError, match=pattern):
        build_model(cfg)


def test_every_problem_is_listed_at_once(no_build):
    with pytest.raises(ConfigError) as info:
        build_model(gpt(d_model=100, n_heads=3, seq_len=None))
    assert len(info.value.problems) == 2


# --- the registry and the conf files ---------------------------------------------------------


def test_registry_is_plain_dicts_with_debug_sizes():
    assert set(FAMILIES) == set(SIZES) == {"gpt", "cnn", "vit"}
    for family, sizes in SIZES.items():
        assert "debug" in sizes
        for name, cfg in sizes.items():
            assert cfg.family == family, name
            data = GPT_DATA if family == "gpt" else {**CNN_DATA, "image_size": 32}
            assert cfg.problems() == [], name
            assert count_params(dataclasses.replace(cfg, **data)).total > 0


@pytest.mark.parametrize("family", ["gpt", "cnn"])
def test_debug_sizes_build_and_run(family):
    cfg = dataclasses.replace(SIZES[family]["debug"], **(GPT_DATA if family == "gpt" else CNN_DATA))
    model = build_model(cfg)
    x = torch.randint(0, 67, (1, 16)) if family == "gpt" else torch.randn(1, 3, 8, 8)
    assert torch.isfinite(model(x)).all()


def _compose_model(name: str):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    register_configs()
    with initialize_config_dir(config_dir=str(CONF / "model"), version_base=None):
        return OmegaConf.to_object(compose(config_name=name))


@pytest.mark.parametrize("path", sorted((CONF / "model").glob("*.yaml")), ids=lambda p: p.name)
def test_model_yaml_composes_against_the_schema(path):
    cfg = _compose_model(path.stem)
    assert isinstance(cfg, FAMILIES[cfg.family].config)
    assert cfg.problems() == []
    data_fields = models.DATA_FIELDS[cfg.family]
    # Data-derived fields stay null in YAML: the data manifest fills them.
    assert all(getattr(cfg, key) is None for key in data_fields)
    if path.stem.endswith("_debug"):
        assert cfg == SIZES[cfg.family]["debug"]
