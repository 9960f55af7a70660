"""Saving and resuming a run's checkpoints in its run directory (the format is scaling/checkpoint.py).

A save is atomic across ranks: every rank writes into a hidden folder, and the main rank renames it
into place once all are done, so a kill during a save leaves the previous checkpoint as the latest
complete one. A resume takes the newest checkpoint that loads on every rank and belongs to this run
(`identity_problems`); one that fails is reported, set aside, and the one before is tried.

Rotation keeps the newest `train.keep_checkpoints`, and besides them a trunk's fork points
(`run.fork_tokens`) until every branch the study forks from one has completed
(`scaling.trainer.branch.needed_forks`). A trunk usually ends before its last branches do, so a
launcher rotates it again when a branch completes (`release_forks`), by the rule the trunk's newest
checkpoint records (`FORKS_KEY`).
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Collection

from scaling.errors import raise_if
from scaling.rundir import checkpoint_dirs, read_json
from scaling.runid import config_differences, result_config
from scaling.trainer.branch import needed_forks
from scaling.trainer.engine import Engine
from scaling.trainer.process import agree

log = logging.getLogger("scaling.train")

# A trunk's checkpoints record its rotation rule under this key of state.json: {"steps": its fork
# steps, "keep_checkpoints": K}, so that a launcher can rotate a trunk that has ended.
FORKS_KEY = "forks"


@dataclass
class TrainState:
    """What a checkpoint carries besides the engine's own state."""

    step: int = 0
    wall_time_s: float = 0.0
    wandb_id: str = ""
    world_size: int = 1


def identity_problems(
    where: str, record: dict, identity: dict, current: dict, fallback: dict | None = None
) -> list[str]:
    """What makes `record` (a result.json or a checkpoint's state.json, found at `where`) another
    run than this one: its config hash or its data checksum, the keys that differ named from the
    record's own config (else `fallback`, the run's config.yaml). A record without them (an older
    version's) is judged elsewhere."""
    problems = []
    if record.get("config_hash", identity["config_hash"]) != identity["config_hash"]:
        diffs = config_differences(record.get("config") or fallback or {}, current)
        problems.append(
            f"{where} holds a run with another config: {'; '.join(diffs) or 'the config hash differs'}; "
            f"rerun with the config it was trained with, or pick a new run.dir"
        )
    if record.get("data_checksum", identity["data_checksum"]) != identity["data_checksum"]:
        problems.append(
            f"{where} holds a run trained on other data (data checksum {record['data_checksum']}, now "
            f"{identity['data_checksum']}); restore the data it was trained on, or pick a new run.dir"
        )
    return problems


class Checkpointer:
    """Saves and resumes `engine` under RUN_DIR/checkpoints, keeping the last `train.keep_checkpoints`."""

    def __init__(self, engine: Engine, run_dir: Path, identity: dict):
        self.engine, self.run_dir, self.identity = engine, run_dir, identity
        self.world, self.cfg, self.run_id = engine.world, engine.plan.cfg, engine.plan.run_id
        # A branch's provenance (scaling/trainer/branch.py), recorded in every checkpoint it saves.
        self.parent: dict | None = None
        # A trunk's fork points (run.fork_tokens) in steps: saved when reached, and kept until the
        # branches that fork from them have completed.
        self.pinned_steps = frozenset(engine.plan.steps_for(t) for t in self.cfg.run.fork_tokens)

    def save(self, state: TrainState) -> Path:
        """Every rank writes into a hidden folder; rank 0 renames it into place when all are done."""
        from scaling import checkpoint

        root = self.run_dir / "checkpoints"
        name = f"step{state.step:08d}"
        tmp = root / f".tmp-{name}"
        if self.world.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.engine.barrier()
        meta = {
            "run_id": self.run_id, "step": state.step, "parent": self.parent, **self.identity,
            "train_state": asdict(state), "config": result_config(self.cfg),
        }  # fmt: skip
        if self.pinned_steps:
            meta[FORKS_KEY] = {"steps": sorted(self.pinned_steps), "keep_checkpoints": self.cfg.train.keep_checkpoints}
        checkpoint.save(self.engine, tmp, self.world.rank, self.world.is_main, meta)
        self.engine.barrier()
        final = root / name
        if self.world.is_main:
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            rotate(self.run_dir, self.cfg.train.keep_checkpoints, needed_forks(self.run_dir, self.pinned_steps))
        self.engine.barrier()
        log.info("checkpoint saved: %s", final)
        return final

    def resume(self) -> TrainState | None:
        """The state of the newest checkpoint that loads on every rank (the engine loaded from it),
        or None when there is none. Raises CheckpointError when none loads, naming each one tried."""
        from scaling import checkpoint, reshard

        if self.world.is_main:  # saves that a kill interrupted: never complete, never read
            for torn in (self.run_dir / "checkpoints").glob(".tmp-*"):
                shutil.rmtree(torn, ignore_errors=True)
        self.engine.barrier()
        failures: list[str] = []
        trust = self.cfg.train.trust_checkpoint
        for path in reversed(checkpoint_dirs(self.run_dir)):
            error = ""
            if self.world.is_main and self.engine.name == "deepspeed":
                # A ZeRO checkpoint saved by another number of processes: reshard it once, here.
                try:
                    reshard.prepare(path, self.world.world_size)
                except checkpoint.CheckpointError as e:
                    error = str(e)
            if not agree(self.world, bool(error)):
                try:
                    loaded = checkpoint.load(self.engine, path, self.world.rank, trust=trust)
                except checkpoint.CheckpointError as e:
                    error = str(e)
            # Every rank must resume from the same step: a file torn on one rank fails them all.
            if agree(self.world, bool(error)):
                failures.append(error or f"{path}: failed to load on another rank")
                log.error("checkpoint %s could not be loaded: %s; trying the one before", path,
                          error or "failed on another rank")  # fmt: skip
                self.engine.barrier()
                if self.world.is_main:
                    checkpoint.set_aside(path)
                continue
            raise_if(identity_problems(f"checkpoint {path}", loaded.meta, self.identity, result_config(self.cfg)))
            state = TrainState(**{k: v for k, v in loaded.meta["train_state"].items()
                                  if k in TrainState.__dataclass_fields__})  # fmt: skip
            if state.world_size != self.world.world_size:
                # The batches are the same on any number of processes (scaling.data.train_batches
                # cuts each global batch by rank), so the loss curve continues.
                log.info("resumed a run saved with %d processes on %d", state.world_size,
                         self.world.world_size)  # fmt: skip
                state.world_size = self.world.world_size
            self.parent = loaded.meta.get("parent")
            log.info("resumed from %s at step %d", path, state.step)
            return state
        if failures:
            raise checkpoint.CheckpointError(
                "no checkpoint could be loaded:\n" + "\n".join(f"  - {f}" for f in failures)
                + "\nmove the checkpoints folder aside to train from scratch"
            )
        return None


def rotate(run_dir: Path, keep: int, pinned: Collection[int] = ()) -> list[Path]:
    """Delete all but the newest `keep` of a run's checkpoints, never one at a `pinned` step, and
    never the newest of all (the run resumes and exports from it); returns those deleted. Each is
    first renamed to a hidden `.old-` folder (atomic), so nothing ever finds half a checkpoint, and
    two processes rotating one run at once (a trunk saving, a launcher releasing its fork points)
    never both delete a folder: the second finds it gone."""
    rotating = [p for p in checkpoint_dirs(run_dir) if _step_of(p) not in pinned]
    deleted = []
    for old in rotating[: max(0, len(rotating) - max(keep, 1))]:
        try:
            os.replace(old, old.with_name(f".old-{os.getpid()}-{old.name}"))
        except OSError:  # already taken by another rotation
            continue
        deleted.append(old)
    # Then the folders themselves, with any that a process killed mid-delete left behind.
    for trash in Path(run_dir, "checkpoints").glob(".old-*"):
        shutil.rmtree(trash, ignore_errors=True)
    return deleted


def release_forks(trunk_dir: Path) -> list[Path]:
    """Rotate a trunk's checkpoints by the rule its newest checkpoint records (FORKS_KEY), keeping
    only the fork points that a branch still needs: what a launcher calls when a branch completes,
    since the trunk has often ended by then. Returns the checkpoints deleted; none for a run that
    is not a trunk."""
    from scaling.checkpoint import STATE_NAME

    checkpoints = checkpoint_dirs(trunk_dir)
    # None too when a save of the trunk rotated its newest away meanwhile: that save did the work.
    record = read_json(checkpoints[-1] / STATE_NAME) if checkpoints else None
    forks = (record or {}).get(FORKS_KEY)
    if not forks:
        return []
    return rotate(trunk_dir, int(forks["keep_checkpoints"]), needed_forks(trunk_dir, forks["steps"]))


def _step_of(path: Path) -> int | None:
    """The step of checkpoint folder `stepNNNNNNNN`."""
    try:
        return int(path.name[len("step"):])
    except ValueError:
        return None
