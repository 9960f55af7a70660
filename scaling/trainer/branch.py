"""Cooldown branches: a run that starts from its trunk's checkpoint and decays to its own budget.

Hägele et al. (2024): a WSD schedule's stable phase is a constant LR, so one constant-LR trunk per
size, checkpointed at each fork point, and a short cooldown branched from each checkpoint give the
whole token axis for about the price of the longest run. A branch here is a run of its own:

- its config is a WSD run to its own budget D (`train.schedule=wsd`, `train.decay_fraction=f`)
  with `train.parent` = the trunk's run id;
- it forks at its own decay start, step S - round(f S) for its S steps (`wsd_decay_start`), from
  the trunk's checkpoint of that step, read in the safe format (scaling/checkpoint.py); the trunk
  must be the same run up to there (same config but for the keys in BRANCH_KEYS, same data) and
  at a constant LR there (`train.schedule=constant`, or wsd not yet decaying);
- from the fork on it trains exactly as an independent WSD run to D would: same weights, optimizer
  state, data position (a function of the seed and the step) and RNG. So its losses equal that
  run's, and its metrics continue the trunk's curve (rows after the fork step only: the trunk's
  rows are the trunk's);
- its provenance is the one exception to "a resume is the same run": the fork is not a resume of
  this run (its config hash is its own), so it is checked here against the trunk's checkpoint,
  and recorded in every checkpoint it saves (`parent` in state.json) and in result.json.

The trunk keeps its checkpoint at a fork step while a branch may still need it: until every branch
that the study's plan forks there has completed (`needed_forks`); then it is an ordinary
checkpoint, which rotation (`train.keep_checkpoints`) removes once newer ones push it out.

Torch-free at import: the planner and the analysis read `branch_curve`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection, Optional

from scaling.contracts import (
    METRICS_NAME, ContractError, MetricsRow, RunStatus, read_metrics, read_plan, result_if_readable,
)  # fmt: skip
from scaling.errors import ScalingError, raise_if
from scaling.schedule import wsd_decay_start

log = logging.getLogger("scaling.train")

# The keys in which a branch may differ from its trunk: the budget and how the LR decays.
BRANCH_KEYS = (
    "train.tokens", "train.flops", "train.schedule", "train.decay_fraction", "train.decay_shape",
    "train.min_lr_ratio", "train.parent",
)  # fmt: skip


class BranchNotReady(ScalingError):
    """The trunk's checkpoint at the fork step does not exist (yet)."""


@dataclass(frozen=True)
class Branch:
    """Where a branch forks: the trunk's run id and directory, and the fork step."""

    parent: str
    parent_dir: Path
    fork_step: int
    tokens_per_step: int

    @property
    def fork_tokens(self) -> int:
        return self.fork_step * self.tokens_per_step

    @property
    def checkpoint(self) -> Path:
        return self.parent_dir / "checkpoints" / f"step{self.fork_step:08d}"


def parent_dir(cfg: Any) -> Optional[Path]:
    """The trunk's run directory of a branch config (run.parent_dir, else the sibling of run.dir
    named train.parent); None for a run that is not a branch."""
    if cfg.train.parent is None:
        return None
    if cfg.run.parent_dir:
        return Path(cfg.run.parent_dir)
    return Path(cfg.run.dir).parent / cfg.train.parent


def branch_of(plan: Any) -> Optional[Branch]:
    """The branch a run plan describes, or None."""
    t = plan.cfg.train
    if t.parent is None:
        return None
    return Branch(parent=t.parent, parent_dir=parent_dir(plan.cfg),
                  fork_step=wsd_decay_start(plan.steps, t.decay_fraction),
                  tokens_per_step=plan.tokens_per_step)  # fmt: skip


def needed_forks(trunk_dir: Path, fork_steps: Collection[int]) -> frozenset[int]:
    """The fork steps of the trunk in `trunk_dir` whose checkpoints a branch may still need: all of
    `fork_steps` but those where the study's plan (plan.json, beside the study's runs/ folder)
    forks branches and every one of them has completed. A trunk without a plan (trained by hand)
    keeps all of them."""
    if not fork_steps:
        return frozenset()
    try:
        plan = read_plan(trunk_dir.parent.parent)
    except ContractError:
        plan = None
    completed: dict[int, bool] = {}  # fork step -> whether all its branches have completed
    for run in plan.runs if plan is not None else []:
        if run.extra.get("parent") == trunk_dir.name and run.extra.get("fork_step") is not None:
            result = result_if_readable(trunk_dir.parent / run.id)
            done = result is not None and result.status is RunStatus.COMPLETED
            step = int(run.extra["fork_step"])
            completed[step] = completed.get(step, True) and done
    return frozenset(s for s in fork_steps if not completed.get(s, False))


def parent_problems(branch: Branch, meta: dict, identity: dict, current: dict) -> list[str]:
    """What keeps the trunk checkpoint `meta` (its state.json) from being this branch's start:
    another run id, other data, a config that differs outside BRANCH_KEYS, or an LR that is not
    constant at the fork."""
    from scaling.runid import config_differences

    where = f"trunk checkpoint {branch.checkpoint}"
    problems = []
    if meta.get("run_id") not in (None, branch.parent):
        problems.append(f"{where} belongs to run {meta.get('run_id')!r}, not train.parent={branch.parent!r}; "
                        f"point run.parent_dir at the trunk's directory")  # fmt: skip
    if meta.get("data_checksum", identity["data_checksum"]) != identity["data_checksum"]:
        problems.append(f"{where} was trained on other data (data checksum {meta['data_checksum']}, now "
                        f"{identity['data_checksum']}); a branch trains on its trunk's data")  # fmt: skip
    recorded = meta.get("config") or {}
    diffs = [d for d in config_differences(recorded, current) if d.split(":", 1)[0] not in BRANCH_KEYS]
    if diffs:
        problems.append(f"{where} was trained with another config: {'; '.join(diffs)}; a branch may differ from "
                        f"its trunk only in {', '.join(BRANCH_KEYS)}")  # fmt: skip
    schedule = recorded.get("train.schedule", "cosine")  # the schema's default when not recorded
    if schedule not in ("constant", "wsd"):
        problems.append(f"{where} was trained with train.schedule={schedule}: its LR decays from the start, so "
                        f"a cooldown cannot branch from it; train the trunk with train.schedule=constant")  # fmt: skip
    return problems


def fork(trainer: Any, branch: Branch) -> tuple[Any, dict]:
    """Load the trunk's checkpoint at the fork step into `trainer`'s engine (every rank calls it)
    and set the LR schedule to the branch's own. Returns the branch's TrainState at the fork and
    its provenance (recorded in its checkpoints and result). Raises BranchNotReady when the
    checkpoint is not there, ConfigError when it is another run's."""
    from scaling import checkpoint
    from scaling.runid import result_config
    from scaling.trainer.checkpointing import TrainState

    path = branch.checkpoint
    if not (path / checkpoint.STATE_NAME).exists():
        raise BranchNotReady(
            f"the trunk's checkpoint at the fork step {branch.fork_step} ({branch.fork_tokens:,} tokens) is not in "
            f"{path.parent}; train the trunk {branch.parent!r} to its fork points first (its run.fork_tokens must "
            f"include {branch.fork_tokens}), then run this branch again"
        )
    meta = checkpoint.read_meta(path)
    raise_if(parent_problems(branch, meta, trainer.identity, result_config(trainer.cfg)))
    loaded = checkpoint.load(trainer.engine, path, trainer.world.rank, trust=False)
    trainer.engine.restart_schedule(branch.fork_step)
    saved = loaded.meta.get("train_state") or {}
    provenance = {
        "run_id": branch.parent, "step": branch.fork_step, "tokens": branch.fork_tokens,
        "config_hash": meta.get("config_hash"), "wall_time_s": saved.get("wall_time_s"),
    }  # fmt: skip
    log.info("branched from %s at step %d (%s tokens)", path, branch.fork_step, f"{branch.fork_tokens:,}")
    state = TrainState(step=branch.fork_step, wall_time_s=0.0, wandb_id="", world_size=trainer.world.world_size)
    return state, provenance


def branch_curve(run_dir: Path | str, parent: Optional[Path | str] = None) -> list[MetricsRow]:
    """A run's whole training curve: for a branch, its trunk's rows up to the fork step followed by
    its own (which start after it); for any other run, its own rows."""
    from scaling.contracts import read_result

    run_dir = Path(run_dir)
    own = read_metrics(run_dir / METRICS_NAME)
    result = read_result(run_dir)
    if result is None or result.parent is None or result.fork_step is None:
        return own
    trunk = Path(parent) if parent is not None else run_dir.parent / result.parent
    before = [r for r in read_metrics(trunk / METRICS_NAME) if r.step <= result.fork_step]
    return before + [r for r in own if r.step > result.fork_step]
