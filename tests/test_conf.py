"""Every YAML file under conf/ composes against its typed schema, and bad keys fail early with
their names."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from scaling.config import register_configs, to_dataclass
from scaling.errors import ConfigError

CONF = Path(__file__).resolve().parent.parent / "conf"
PRIMARIES = sorted(p.stem for p in CONF.glob("*.yaml"))
# Options that need a value from the user (e.g. `data.path: ???`) get one here.
REQUIRED = {("data", "shards"): ["data.path=/data/my-shards"]}


def _register_all() -> None:
    register_configs()
    try:
        from scaling.launch.config import register_configs as register_launch
    except ImportError:  # the launch package registers its own schema
        return
    register_launch()


def _compose(primary: str, overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose(config_name=primary, overrides=overrides)


def _group_options() -> list[tuple[str, str]]:
    return sorted((p.parent.relative_to(CONF).as_posix(), p.stem) for p in CONF.glob("*/**/*.yaml"))


def test_there_is_a_train_and_a_study_primary_config():
    assert {"train", "study_app"} <= set(PRIMARIES)


@pytest.mark.parametrize("primary", PRIMARIES)
def test_primary_config_composes_and_converts(primary):
    _register_all()
    cfg = _compose(primary, [])
    obj = OmegaConf.to_object(cfg)  # runs the dataclass constructors: types are checked
    assert obj is not None


@pytest.mark.parametrize("group, name", _group_options(), ids=lambda v: str(v))
def test_every_yaml_file_composes_in_some_primary(group, name):
    """Each option of each config group composes, typed, into at least one primary config."""
    _register_all()
    extra = REQUIRED.get((group, name), [])
    errors = []
    for primary in PRIMARIES:
        for override in (f"{group}={name}", f"+{group}={name}"):
            try:
                cfg = _compose(primary, [override, *extra])
                OmegaConf.to_object(cfg)
                return
            except Exception as e:  # noqa: BLE001 - collected and shown if no primary takes it
                errors.append(f"{primary} {override}: {type(e).__name__}: {e}")
    pytest.fail(f"conf/{group}/{name}.yaml composes in no primary config:\n" + "\n".join(errors))


def test_misspelled_and_mistyped_keys_are_named():
    _register_all()
    with pytest.raises(Exception, match="d_modle"):
        _compose("train", ["model.d_modle=64"])
    with pytest.raises(Exception, match="n_layers"):
        OmegaConf.to_object(_compose("train", ["model.n_layers=many"]))


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["model.d_model=100", "model.n_heads=3"], "model.d_model=100 is not divisible by model.n_heads=3"),
        (["model.n_layers=-2"], "model.n_layers=-2 must be positive"),
        (["train.tokens=1e6", "train.flops=1e12"], "set exactly one budget"),
        (["train.zero_stage=4"], "train.zero_stage=4"),
        (["train.schedule=linear"], "train.schedule='linear'"),
    ],
)
def test_values_are_validated_before_anything_is_built(overrides, needle):
    _register_all()
    cfg = _compose("train", ["train.tokens=1e6", *overrides] if "train.tokens" not in str(overrides) else overrides)
    with pytest.raises(ConfigError) as err:
        to_dataclass(cfg)
    assert needle in str(err.value)


def test_all_problems_are_listed_at_once():
    _register_all()
    cfg = _compose("train", ["model.d_model=100", "model.n_heads=3", "train.zero_stage=7"])
    with pytest.raises(ConfigError) as err:
        to_dataclass(cfg)
    assert len(err.value.problems) >= 3  # the budget, the heads and the stage


def test_unknown_family_is_named():
    from scaling.config import from_dict

    with pytest.raises(ConfigError, match="model.family='rnn'"):
        from_dict({"model": {"family": "rnn"}})
