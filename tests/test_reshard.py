"""A ZeRO run resumes on another number of processes, and its loss curve continues (scaling/reshard.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from scaling.rundir import checkpoint_dirs, read_metrics, read_result
from trainer_utils import data_cache, run_train  # noqa: F401 - fixture

# 8 steps, a checkpoint at step 4 (and the final one at step 8).
RUN = ("train.tokens=8192", "train.checkpoint_every_tokens=4096", "train.keep_checkpoints=3")


def _ok(proc) -> None:
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def runs(data_cache, tmp_path_factory):
    """Uninterrupted runs, trained on demand: (ZeRO stage, processes) -> run directory."""
    done: dict[tuple[int, int], Path] = {}

    def get(stage: int, nproc: int) -> Path:
        if (stage, nproc) not in done:
            run = tmp_path_factory.mktemp(f"z{stage}w{nproc}") / "run"
            _ok(run_train(data_cache, run, *RUN, f"train.zero_stage={stage}", nproc=nproc))
            done[stage, nproc] = run
        return done[stage, nproc]

    return get


def _killed_after_step4(source: Path, dest: Path) -> Path:
    """A copy of `source` as a kill after its step-4 checkpoint leaves it."""
    shutil.copytree(source, dest)
    (dest / "result.json").unlink()
    for ckpt in checkpoint_dirs(dest)[1:]:
        shutil.rmtree(ckpt)
    assert [p.name for p in checkpoint_dirs(dest)] == ["step00000004"]
    return dest


def _curve_difference(want: Path, got: Path) -> float:
    a, b = read_metrics(want / "metrics.jsonl"), read_metrics(got / "metrics.jsonl")
    assert [r["step"] for r in b] == list(range(1, 9))
    for x, y in zip(a, b):
        assert y["lr"] == pytest.approx(x["lr"], rel=1e-9)
    diffs = [abs(x["loss"] - y["loss"]) for x, y in zip(a, b)]
    diffs.append(abs(read_result(want)["eval_loss"] - read_result(got)["eval_loss"]))
    return max(diffs)


@pytest.mark.parametrize(
    "stage, saved, resumed",
    [
        (2, 2, 1),
        pytest.param(2, 1, 2, marks=pytest.mark.slow),
        pytest.param(3, 2, 1, marks=pytest.mark.slow),
        pytest.param(0, 2, 1, marks=pytest.mark.slow),
    ],
    ids=["zero2-2to1", "zero2-1to2", "zero3-2to1", "zero0-2to1"],
)
def test_a_run_resumed_on_another_world_size_continues_the_loss_curve(runs, data_cache, tmp_path, stage, saved, resumed):
    run = _killed_after_step4(runs(stage, saved), tmp_path / "run")
    proc = run_train(data_cache, run, *RUN, f"train.zero_stage={stage}", nproc=resumed)
    _ok(proc)
    assert f"resumed a run saved with {saved} processes on {resumed}" in proc.stderr
    ckpt = checkpoint_dirs(run)[0]
    assert (ckpt / f"reshard-w{resumed}").is_dir() == (stage > 0)  # ZeRO-0 loads as it is
    difference = _curve_difference(runs(stage, resumed), run)
    print(f"ZeRO-{stage} {saved} -> {resumed} processes: largest loss difference {difference:.2e}")
    assert difference < 1e-4


def _merged(ckpt: Path, stage: int) -> dict:
    """The fp32 master weights and Adam's moments of a ZeRO-2 checkpoint, merged over its ranks
    with the padding dropped; the fp32 weights of a ZeRO-3 one (through the export's reader)."""
    import math

    import torch

    from scaling.checkpoint import torch_load, zero_rank
    from scaling.export import read_model_state

    if stage == 3:
        return read_model_state(ckpt, None)[0]
    files = sorted((ckpt / "state").glob("*optim_states.pt"), key=zero_rank)
    osds = [torch_load(f)["optimizer_state_dict"] for f in files]
    shapes = torch_load(ckpt / "state" / "mp_rank_00_model_states.pt")["param_shapes"]
    out = {}
    for g, group in enumerate(shapes):
        content = sum(math.prod(s) for s in group.values())
        flats = {"fp32": torch.cat([o["single_partition_of_fp32_groups"][g] for o in osds])}
        for key in ("exp_avg", "exp_avg_sq"):
            flats[key] = torch.cat([o["base_optimizer_state"]["state"][g][key] for o in osds])
        for key, flat in flats.items():
            out[f"{g}.{key}"] = flat[:content]
            assert not flat[content:].any(), "the padding holds numbers"
    return out


@pytest.mark.parametrize("stage", [2, pytest.param(3, marks=pytest.mark.slow)])
def test_a_resharded_copy_holds_the_same_weights_and_is_built_once(runs, tmp_path, stage):
    from scaling.export import read_model_state
    from scaling.reshard import prepare

    ckpt = tmp_path / "step00000004"
    shutil.copytree(checkpoint_dirs(runs(stage, 2))[0], ckpt)
    want = _merged(ckpt, stage)
    for world in (1, 3, 4):  # 3: a world size whose alignment (2 x 3) pads the groups differently
        copy = prepare(ckpt, world)
        assert copy == ckpt / f"reshard-w{world}"
        assert len(list((copy / "state").glob("*optim_states.pt"))) == world
        got = _merged(copy, stage)
        assert got.keys() == want.keys()
        for name in want:
            assert (got[name] == want[name]).all(), name
    stamp = (ckpt / "reshard-w3").stat().st_mtime_ns
    assert prepare(ckpt, 3) == ckpt / "reshard-w3" and (ckpt / "reshard-w3").stat().st_mtime_ns == stamp  # cached
    assert prepare(ckpt, 2) == ckpt  # its own world size: loaded as saved
    assert not list(ckpt.glob(".tmp-*"))


def test_a_torn_checkpoint_is_named_and_leaves_no_copy(runs, tmp_path):
    from scaling.checkpoint import CheckpointError
    from scaling.reshard import prepare

    ckpt = tmp_path / "step00000004"
    shutil.copytree(checkpoint_dirs(runs(2, 2))[0], ckpt)
    (ckpt / "state" / "zero_pp_rank_1_mp_rank_00_optim_states.pt").write_bytes(b"torn")
    with pytest.raises(CheckpointError, match="zero_pp_rank_1"):
        prepare(ckpt, 1)
    assert not (ckpt / "reshard-w1").exists() and not list(ckpt.glob(".tmp-*"))


def test_a_world_size_that_does_not_divide_the_global_batch_names_both(data_cache, tmp_path, monkeypatch):
    from scaling.config import to_dataclass
    from scaling.data import prepare_dataset
    from scaling.distributed import World
    from scaling.errors import ConfigError
    from scaling.launch.plan import compose_train
    from scaling.train import plan_run
    from trainer_utils import TINY

    monkeypatch.setenv("SCALING_CACHE", str(data_cache))
    cfg = to_dataclass(compose_train([f"run.dir={tmp_path / 'run'}", *TINY, *RUN]))
    world = World(rank=0, world_size=3, local_rank=0, local_world_size=3, launcher="torchrun")
    with pytest.raises(ConfigError, match=r"train.global_batch_size=16 is not divisible by the world size 3"):
        plan_run(cfg, prepare_dataset(cfg.data), world)
