"""Data-constrained runs (Muennighoff et al. 2023): `data.max_unique_tokens` restricts the training
split to a prefix of its samples, the loader repeats that prefix in epochs, and the manifest's
counts, the trainer's result.json and the planner's epochs all agree with the cap."""

from __future__ import annotations

import signal

import numpy as np
import pytest
from scaling.data import DataConfig, prepare_dataset, train_batches
from scaling.data.loader import prefix_parts, read_shard
from scaling.errors import ConfigError
from scaling.rundir import EXIT_REQUEUE, read_metrics, read_result
from trainer_utils import data_cache, run_train, wait_for_step  # noqa: F401 - fixture
from data_utils import SEQ, uniq  # noqa: F401 - uniq is a fixture


def rows_in_order(m, split="train") -> list[int]:
    """First tokens of the split's rows in shard order, read straight from the shards."""
    out = []
    for i in range(len(m.shards(split))):
        out += [int(np.frombuffer(s["tokens"], dtype=m.dtype)[0]) for s in read_shard(m, split, i)]
    return out


def global_rows(m, steps, world_size=1, num_workers=0, start_step=0, G=8, streams=4, seed=3) -> list[list[int]]:
    """The first-token ids of each global batch, the ranks' parts put together."""
    its = [train_batches(m, global_batch_size=G, rank=r, world_size=world_size, seed=seed, start_step=start_step,
                         num_workers=num_workers, streams=streams) for r in range(world_size)]
    out = []
    for _ in range(steps):
        out.append(sum((next(it)[0][:, 0].tolist() for it in its), []))
    for it in its:
        it.close()
    return out


# ---- the manifest ----


def test_the_cap_keeps_a_prefix_and_leaves_validation_and_the_files_alone(uniq):
    from scaling.runid import data_checksum

    m = uniq.capped(100)  # 100 tokens: 33 whole samples of 3 predicted tokens
    assert m.kept_samples("train") == m.unique_samples("train") == 33
    assert m.unique_tokens("train") == 99 and uniq.unique_tokens("train") == 128 * SEQ
    assert m.sample_counts("train") == [16, 16, 1] + [0] * 5
    assert m.epochs(99 * 4) == pytest.approx(4.0) and uniq.epochs(99 * 4) == pytest.approx(396 / 384)
    assert m.kept_samples("val") == uniq.num_samples("val")  # evaluation untouched
    assert m.to_json() == uniq.to_json() and data_checksum(m) == data_checksum(uniq)
    assert "max_unique_tokens=100" in m.summary()
    assert uniq.capped(None).max_unique_tokens is None
    # a cap at or above the split's size changes nothing
    big = uniq.capped(10**9)
    assert not big.is_capped("train") and big.unique_tokens("train") == uniq.unique_tokens("train")


def test_prepare_dataset_applies_the_cap_and_a_cap_below_one_sample_names_the_key(tmp_path):
    cfg = DataConfig(name="synthetic", seq_len=64, synthetic_tokens=32768, cache_dir=str(tmp_path))
    full = prepare_dataset(cfg)
    capped = prepare_dataset(DataConfig(**{**cfg.__dict__, "max_unique_tokens": 4.096e3}))  # as budgets are written
    assert capped.unique_tokens("train") == 4096 and capped.epochs(16384) == 4.0
    assert full.unique_tokens("train") > 4096 and capped.location == full.location  # the same prepared shards
    with pytest.raises(ConfigError, match=r"data.max_unique_tokens=10 holds no whole training sample of 64 tokens"):
        prepare_dataset(DataConfig(**{**cfg.__dict__, "max_unique_tokens": 10}))
    assert any("data.max_unique_tokens=0" in p for p in DataConfig(max_unique_tokens=0).problems())


# ---- the loader ----


def test_prefix_parts_deal_each_kept_sample_to_one_stream_in_equal_ranges():
    counts = [16, 16, 1, 0, 0]
    parts = prefix_parts(counts, 4)
    owned = [[(i, j) for i, c, a, b in ps for j in range(a, b, c)] for ps in parts]
    flat = sum(owned, [])
    assert len(flat) == len(set(flat)) == 33 and all(i < 3 for i, _ in flat)
    assert sorted(len(o) for o in owned) == [8, 8, 8, 9]


@pytest.mark.parametrize("cap_samples, G", [(32, 8), (33, 8), (20, 4)])
def test_a_capped_run_sees_only_the_prefix_once_per_epoch(uniq, cap_samples, G):
    m = uniq.capped(cap_samples * SEQ)
    prefix = rows_in_order(uniq)[:cap_samples]
    steps_per_epoch = cap_samples // G
    batches = global_rows(m, 4 * steps_per_epoch, G=G)
    seen = sum(batches, [])
    assert set(seen) == set(prefix)  # only the first samples, every one of them
    counts = np.bincount([prefix.index(r) for r in seen], minlength=cap_samples)
    # streams of equal length (within one sample): every sample is repeated equally often, within one
    assert counts.max() - counts.min() <= 1
    if cap_samples % G == 0:  # whole epochs: each sample exactly once per epoch, reshuffled
        epochs = [sum(batches[e * steps_per_epoch:(e + 1) * steps_per_epoch], []) for e in range(4)]
        assert all(sorted(e) == sorted(prefix) for e in epochs) and epochs[0] != epochs[1]


@pytest.mark.parametrize("k", [1, 3, 9])
def test_a_capped_run_resumes_exactly_whatever_the_ranks_and_workers(uniq, k):
    m = uniq.capped(33 * SEQ)  # 33 samples: streams of 8, 8, 8 and 9, epochs end mid-batch
    ref = global_rows(m, k + 8)
    assert global_rows(m, 8, world_size=2, num_workers=1, start_step=k) == ref[k:]
    assert global_rows(m, k + 8, world_size=2, num_workers=2) == ref


def test_a_cap_smaller_than_one_global_batch_names_the_key_and_the_fix(uniq):
    m = uniq.capped(7 * SEQ)
    with pytest.raises(ConfigError) as e:
        train_batches(m, global_batch_size=8, rank=0, world_size=1, seed=0, streams=4)
    assert "data.max_unique_tokens=21 keeps 7 training samples" in str(e.value)
    assert "raise data.max_unique_tokens to at least 24, or lower train.global_batch_size" in str(e.value)
    assert m.batch_problems(8) and not m.batch_problems(4)


def test_an_uncapped_split_keeps_its_data_order(uniq):
    # The cap's own dealing applies only where it cuts: an uncapped run, or a cap above the split,
    # sees the batches it saw before the key existed.
    assert global_rows(uniq.capped(10**9), 20) == global_rows(uniq, 20)


def test_an_image_set_is_capped_in_images(tmp_path):
    from scaling.data.loader import Decoder

    m = prepare_dataset(DataConfig(name="digits", cache_dir=str(tmp_path), max_unique_tokens=256))
    assert m.unique_tokens("train") == 256 and m.epochs(512) == 2.0
    x, _ = Decoder(m)(read_shard(m, "train", 0)[:256])
    prefix = {row.tobytes() for row in x}
    it = train_batches(m, global_batch_size=32, rank=0, world_size=1, seed=0)
    seen = [row.numpy().tobytes() for _ in range(16) for row in next(it)[0]]  # two epochs
    assert set(seen) == prefix and len(seen) == 2 * len(prefix)


# ---- run ids ----


def test_the_default_cap_moves_no_run_id_and_a_set_cap_does():
    import dataclasses

    import scaling.config as schema
    from scaling.runid import config_hash, result_config

    cfg = schema.TrainAppConfig(model=schema.GPTConfig())
    assert "data.max_unique_tokens" not in result_config(cfg)
    capped = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, max_unique_tokens=65536))
    assert result_config(capped)["data.max_unique_tokens"] == 65536
    assert config_hash(capped) != config_hash(cfg)


# ---- the trainer ----

CAPPED = ("data.max_unique_tokens=4096", "train.tokens=16384", "train.num_threads=1")  # 64 samples, 4 epochs


def test_the_trainer_records_the_capped_epochs_and_unique_tokens(data_cache, tmp_path):
    run = tmp_path / "run"
    proc = run_train(data_cache, run, *CAPPED)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = read_result(run)
    assert result["unique_tokens"] == 4096 and result["epochs"] == pytest.approx(4.0)
    assert "4.00 epochs over 4,096 unique tokens" in proc.stderr


@pytest.mark.slow
def test_a_stopped_capped_run_resumes_onto_the_uninterrupted_curve(data_cache, tmp_path):
    from test_hardening import _start

    straight, run = tmp_path / "straight", tmp_path / "run"
    overrides = (*CAPPED, "train.tokens=24576")  # 24 steps, 6 epochs
    assert run_train(data_cache, straight, *overrides).returncode == 0
    proc = _start(data_cache, run, *overrides)
    wait_for_step(run, 9, proc)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == EXIT_REQUEUE
    assert run_train(data_cache, run, *overrides).returncode == 0
    want, got = read_metrics(straight / "metrics.jsonl"), read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in got] == list(range(1, 25))
    assert [r["loss"] for r in got] == pytest.approx([r["loss"] for r in want], abs=1e-6)
    assert read_result(run)["epochs"] == pytest.approx(6.0) and read_result(run)["unique_tokens"] == 4096



# ---- the study ----


def test_the_data_constrained_study_plans_repetition_from_about_one_to_sixteen_epochs(tmp_path, monkeypatch):
    from dataclasses import replace

    from hydra import compose, initialize_config_dir

    from scaling.launch.config import LauncherConfig, register_configs, to_dataclass
    from scaling.launch.plan import CONF_DIR
    from scaling.launch.study import launch_study

    monkeypatch.setenv("SCALING_CACHE", str(tmp_path / "cache"))
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        dcfg = compose(config_name="study_app", overrides=["study=data_constrained_tiny", f"study.dir={tmp_path}/s",
                                                           "study.dry_run=true"])
    spec = to_dataclass(dcfg).study
    assert spec.dry_run and spec.budgets.max_epochs is None and spec.tune.enabled and not spec.verify.enabled
    lines: list[str] = []
    plan = launch_study(replace(spec, dry_run=True), LauncherConfig(), echo=lines.append).plan
    assert not (tmp_path / "s").exists()  # a dry run writes nothing
    cap = [o for o in spec.overrides if o.startswith("data.max_unique_tokens=")]
    assert len(cap) == 1 and all(cap[0] in r.overrides for r in plan.runs)
    unique = int(cap[0].split("=")[1])
    epochs = sorted(r.epochs for r in plan.runs)
    for r in plan.runs:  # the planner's epochs are the trainer's: D over the capped unique tokens
        assert r.epochs == pytest.approx(r.D / unique)
    assert epochs[0] <= 1.0 and 16 <= epochs[-1] <= 24
    sizes = sorted({r.N for r in plan.runs})
    assert 2 <= len(sizes) <= 3
    for n in sizes:  # every size repeats its data over a range of epochs, not at one count
        mine = [r.epochs for r in plan.runs if r.N == n]
        assert len(mine) >= 4 and max(mine) / min(mine) >= 7  # 8x in tokens per parameter, rounded to steps
    assert not any("data repetition" in note for note in plan.notes)  # repetition is intended
