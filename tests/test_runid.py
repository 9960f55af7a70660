"""Stable run ids: a new config key with a default moves no id, studies planned under the first rule
keep their directories, and the planner and the trainer hash the same resolved config."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import scaling.config as schema
import scaling.runid as runid
from scaling.launch.config import register_configs, to_dataclass
from scaling.launch.plan import CONF_DIR, make_plan
from scaling.runid import flatten

LEGACY = Path(__file__).parent / "data" / "plan_v1"


@dataclass
class TrainConfigPlus(schema.TrainConfig):
    label_smoothing: float = 0.0  # a future key whose default keeps today's behaviour


@dataclass
class AppPlus(schema.TrainAppConfig):
    train: TrainConfigPlus = field(default_factory=TrainConfigPlus)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SCALING_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


# The studies as they were specified when their legacy ids were recorded (before the tune phase):
# a hand-written LR rule, the standard parametrization, the earlier budgets.
AS_RECORDED = {
    "isoflop_tiny": ["study.sizes.span=4", "study.sizes.center_tokens_per_param=80",
                     "study.budgets.flops=[6e10,2e11,6e11]", "study.tune.lrs=[]", "study.verify.compute_multiple=null",
                     "study.rules.lr={coef:0.025,exponent:-1.3,ref_params:1.3e4,max:0.03}",
                     'study.overrides=["data.seq_len=64","train.warmup_tokens=16384","train.eval_tokens=65536"]'],
    "cnn_digits": ["study.tune.lrs=[]", "study.rules.lr={coef:3e-3,exponent:0.0}",
                   'study.overrides=["train.warmup_tokens=1024","train.eval_tokens=512"]'],
}  # fmt: skip


def study_spec(name: str, study_dir: Path, overrides: tuple[str, ...] = ()):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        dcfg = compose(config_name="study_app", overrides=[f"study={name}", f"study.dir={study_dir}", *overrides])
    return to_dataclass(dcfg).study


def plannable(spec):
    """A study with a tune phase at the middle LR of its grid (as its dry run shows it before the
    sweep has run)."""
    from scaling.launch.tune import planned_spec

    return planned_spec(spec)


def test_a_new_config_key_with_a_default_moves_no_run_id(tmp_path, monkeypatch):
    spec = plannable(study_spec("isoflop_tiny", tmp_path / "s"))
    before = [r.id for r in make_plan(spec).runs]

    for module in (schema, runid):
        monkeypatch.setattr(module, "TrainAppConfig", AppPlus)
    monkeypatch.setattr(schema, "TrainConfig", TrainConfigPlus)
    plan = make_plan(spec)
    assert [r.id for r in plan.runs] == before
    # The key really is in the resolved config the ids are computed from (rule 1 hashed it).
    cfg = runid.flatten(schema.to_dict(AppPlus(model=schema.GPTConfig())))
    assert "train.label_smoothing" in cfg


@pytest.mark.parametrize("study", ["isoflop_tiny", "cnn_digits"])
def test_a_study_planned_under_rule_1_relaunches_into_its_own_run_directories(tmp_path, study):
    # The ids that the planner of rule 1 gave these studies (recorded with that version).
    legacy_ids = (LEGACY / f"{study}.ids").read_text().split()
    spec = study_spec(study, tmp_path / "s", AS_RECORDED[study])
    spec.sizes.ladder_rule = 1  # the ladder those studies were planned with (before the depth rule)
    fresh = [r.id for r in make_plan(spec).runs]
    assert len(fresh) == len(legacy_ids) and not set(fresh) & set(legacy_ids)  # rule 2 names them anew
    for rid in legacy_ids:  # a study folder of the old version, its runs finished
        (tmp_path / "s" / "runs" / rid).mkdir(parents=True)
    assert [r.id for r in make_plan(spec).runs] == legacy_ids


def test_a_relaunch_plans_with_the_ladder_rule_its_plan_was_made_with(tmp_path):
    # A study folder planned before ladder rules were recorded (plan.json without `ladder_rule`)
    # was planned with rule 1: relaunched without naming a rule, it plans the same runs again.
    import json

    from scaling.launch.plan import write_plan

    spec = study_spec("isoflop_tiny", tmp_path / "s", AS_RECORDED["isoflop_tiny"])
    assert make_plan(spec).ladder_rule == 2  # a new study: today's rule
    spec.sizes.ladder_rule = 1
    old = make_plan(spec)
    write_plan(old)
    raw = json.loads((tmp_path / "s" / "plan.json").read_text())
    del raw["ladder_rule"]  # as the previous version wrote it
    (tmp_path / "s" / "plan.json").write_text(json.dumps(raw))
    spec.sizes.ladder_rule = None
    again = make_plan(spec)
    assert again.ladder_rule == 1 and [r.id for r in again.runs] == [r.id for r in old.runs]


def test_the_planner_and_the_trainer_hash_the_same_resolved_config(tmp_path):
    from scaling.launch.plan import compose_train
    from scaling.config import to_dataclass as train_dataclass
    from scaling.data import prepare_dataset
    from scaling.distributed import World
    from scaling.runid import config_hash
    from scaling.train import plan_run

    for study in ("isoflop_tiny", "cnn_digits"):
        plan = make_plan(plannable(study_spec(study, tmp_path / study)))
        for run in plan.runs[:3]:
            cfg = train_dataclass(compose_train(run.overrides))  # exactly what scaling-train composes
            trainer_plan = plan_run(cfg, prepare_dataset(cfg.data), World(rank=0, world_size=1, local_rank=0, local_world_size=1, launcher="single"))
            assert config_hash(trainer_plan.cfg) == run.config_hash == run.id.rsplit("-", 1)[1]


def test_the_hash_covers_result_keys_that_differ_from_the_defaults_only():
    base = schema.TrainAppConfig(model=schema.GPTConfig(seq_len=64, vocab_size=65))
    keys = runid.result_config(base)
    assert keys == {"model.family": "gpt", "model.seq_len": 64, "model.vocab_size": 65}
    lr = dataclasses.replace(base, train=dataclasses.replace(base.train, lr=1e-3))
    threads = dataclasses.replace(base, train=dataclasses.replace(base.train, num_threads=1, checkpoint_every_tokens=8))
    assert runid.config_hash(lr) != runid.config_hash(base)
    assert runid.config_hash(threads) == runid.config_hash(base)
    assert runid.config_differences(runid.result_config(base), runid.result_config(lr)) == ["train.lr: 0.003 -> 0.001"]
    assert set(flatten({"a": {"b": 1, "c": {"d": 2}}})) == {"a.b", "a.c.d"}
