"""The cached composition of the trainer's config (scaling/compose.py) gives what Hydra's compose
gives: for a planned study's runs, for bad keys, for overrides out of order, and after an edit of
conf/."""

from __future__ import annotations

import os
import shutil

import pytest
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

import scaling.compose as compose_mod
from scaling.compose import compose_full, compose_train
from scaling.launch.config import BudgetsConfig, SizesConfig, StudySpec
from scaling.launch.plan import make_plan


def _same(overrides: list[str]) -> None:
    full, cached = compose_full(overrides), compose_train(overrides)
    assert OmegaConf.to_container(cached) == OmegaConf.to_container(full)
    assert OmegaConf.is_struct(cached) and OmegaConf.is_struct(full)


def test_a_studys_runs_compose_as_hydra_composes_them(tmp_path):
    spec = StudySpec(name="c", data="synthetic", sizes=SizesConfig(targets=[5e3, 2e4]),
                     budgets=BudgetsConfig(flops=[2e10, 6e10]), dir=str(tmp_path), throughput_flops=1e9)  # fmt: skip
    runs = make_plan(spec).runs
    assert len({tuple(r.overrides) for r in runs}) > 1
    for run in runs:
        _same([*run.overrides, "train.num_threads=1"])
    # A run's values never leak into the next: each is applied to a copy of the base.
    assert not any(o.startswith("train.num_threads=") for o in runs[0].overrides)
    assert compose_train([*runs[0].overrides, "train.num_threads=3"]).train.num_threads == 3
    assert compose_train(runs[0].overrides).train.num_threads != 3


@pytest.mark.parametrize("overrides", [
    ["train.lr=0.01", "model=gpt_debug"],  # a value before a group choice: Hydra's order is kept
    ["model=gpt_debug", "+train.extra_key=1"],  # adding a key to the struct schema
    ["model=gpt_debug", "train.no_such_key=1"],  # a misspelled key
    ["model=gpt_debug", "train.lr=not_a_number"],  # a wrong type
    ["model=gpt_debug", "train.lr=[0.1"],  # unparsable
])  # fmt: skip
def test_odd_and_bad_overrides_behave_as_in_hydra(overrides):
    try:
        expected = OmegaConf.to_container(compose_full(overrides))
    except Exception as e:  # noqa: BLE001
        with pytest.raises(type(e)) as got:
            compose_train(overrides)
        assert str(got.value) == str(e)
    else:
        assert OmegaConf.to_container(compose_train(overrides)) == expected


def test_an_edited_config_file_is_composed_afresh(tmp_path, monkeypatch):
    conf = tmp_path / "conf"
    shutil.copytree(compose_mod.CONF_DIR, conf)
    monkeypatch.setattr(compose_mod, "CONF_DIR", conf)
    assert not GlobalHydra.instance().is_initialized()  # else Hydra's own search path is used
    overrides = ["model=gpt_debug", "train.seed=1"]
    assert compose_train(overrides).run.dir == "runs/default"
    text = (conf / "train.yaml").read_text()
    (conf / "train.yaml").write_text(text.replace("dir: runs/default", "dir: runs/edited"))
    stat = (conf / "train.yaml").stat()
    os.utime(conf / "train.yaml", (stat.st_atime, stat.st_mtime + 10))
    assert compose_train(overrides).run.dir == "runs/edited"
