"""Taking a run directory: its lease, the result of an earlier attempt, and the check that a rerun
or a resume is the same run (same result-affecting config, same data) or nothing.

Every function here is called on every rank; the main rank reads and writes, and the ranks agree
on the outcome, so that all of them go on or all of them stop.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from scaling.config import TrainAppConfig
from scaling.contracts import RESULT_NAME, ContractError, Result, RunStatus, read_result
from scaling.distributed import World
from scaling.errors import ConfigError
from scaling.rundir import checkpoint_dirs
from scaling.runid import config_differences, result_config
from scaling.runlock import RunLock, RunLocked
from scaling.trainer.checkpointing import identity_problems
from scaling.trainer.process import agree

log = logging.getLogger("scaling.train")


class RunRefused(ConfigError):
    """This trainer may not use the run directory (held by another trainer, not writable, or
    holding another run). Nothing in the directory is written."""


def take_run_dir(run_dir: Path, world: World) -> RunLock | None:
    """The main rank takes the run directory's lease; every rank learns whether it got it."""
    lock, refusal = None, ""
    if world.is_main:
        try:
            lock = RunLock(run_dir).acquire()
            if lock.takeover:
                log.warning("took over the run directory's lease: %s", lock.takeover)
        except RunLocked as e:
            refusal = str(e)
    if agree(world, bool(refusal)):
        raise RunRefused(refusal or f"run directory {run_dir} is in use by another trainer (see rank 0's log)")
    return lock


def prior_result(run_dir: Path, world: World) -> Result | None:
    """The result of an earlier attempt, if any. A malformed result.json (or a completed one that
    lacks what a completed run records) is reported and kept aside (never silently trained over);
    the run then resumes or starts as if it had none."""
    try:
        return read_result(run_dir, complete=True)
    except ContractError as e:
        agree(world, False)  # every rank has read the file before the main rank moves it
        if world.is_main:
            aside = run_dir / f"result.unreadable-{time.strftime('%Y%m%d-%H%M%S')}.json"
            os.replace(run_dir / RESULT_NAME, aside)
            log.error("%s; kept aside as %s, and the run resumes from its checkpoints (if any)", e, aside.name)
        return None


def _recorded_config(run_dir: Path) -> dict | None:
    """The result-affecting config in the run's config.yaml (the record of what it trained with)."""
    from omegaconf import OmegaConf

    from scaling.config import from_dict

    try:
        raw = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"))
        return result_config(from_dict(raw))
    except Exception:  # noqa: BLE001 - an unreadable record cannot vouch for anything
        return None


def check_same_run(run_dir: Path, cfg: TrainAppConfig, identity: dict, prior: Result | None) -> None:
    """A rerun or a resume is the same run or nothing: refuse (naming the keys that differ) when
    the directory's result or newest checkpoint records another config or other data."""
    from scaling.checkpoint import CheckpointError, read_meta

    current = result_config(cfg)
    records: list[tuple[str, dict]] = []
    if prior is not None and prior.status is RunStatus.COMPLETED:
        records.append((RESULT_NAME, prior.to_json()))
    ckpts = checkpoint_dirs(run_dir)
    if ckpts:
        try:
            records.append((f"checkpoint {ckpts[-1].name}", read_meta(ckpts[-1])))
        except CheckpointError:
            pass  # judged when it is loaded (and fallen back from)
    recorded_yaml = _recorded_config(run_dir) if (ckpts or records) else None
    problems = []
    for where, rec in records:
        problems += identity_problems(f"{run_dir} ({where})", rec, identity, current, recorded_yaml)
    if not problems and recorded_yaml is not None and not any("config_hash" in r for _, r in records):
        diffs = config_differences(recorded_yaml, current)  # a run of an older version: its config.yaml
        if diffs:
            problems.append(
                f"{run_dir} holds a run with another config (config.yaml): {'; '.join(diffs)}; rerun with the "
                f"config it was trained with, or pick a new run.dir"
            )
    if problems:
        raise RunRefused(problems)
