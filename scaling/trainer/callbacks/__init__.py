"""The loop's seams: what the trainer calls as a run goes, one small class per concern.

A callback overrides the hooks it needs; the others do nothing. The loop calls them on every
rank, in the order of the list, with the Trainer (its `plan`, `state`, `world`, `run_dir`):

    on_eval(trainer, eval_loss)       after an evaluation, before that step's on_step
    on_step(trainer, row)             after every optimizer step; `row` is the MetricsRow logged
                                      at this step, or None on a step that logs none
    on_checkpoint(trainer, path)      after a checkpoint is saved (on every rank), the final one
                                      (train.final_checkpoint) included, before on_end
    on_signal(trainer, signal)        when every rank has seen a stop signal, before the run
                                      checkpoints and stops for requeue
    on_end(trainer, result)           once, when the attempt ends: the Result when the run
                                      completed (its timing is added after), None when it
                                      stopped or failed

Built in, in this order: `MetricsFile` (metrics.jsonl), `WandbMirror` (scaling/wandb_mirror.py) and
`ProgressLog` (the log's progress lines) on the main rank; then the user's; last, on every rank,
`CheckpointCadence` (`train.checkpoint_every_tokens`), so that every other callback has seen a step
before it is checkpointed. A user adds their own from config, as import paths of classes built
without arguments:

    scaling-train ... 'train.callbacks=[mypkg.callbacks:GradNormLogger]'

A callback that changes what a run computes would break resume exactness and the run id's
promise: callbacks observe (log, export, alert); they do not train.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from scaling.errors import ConfigError

if TYPE_CHECKING:
    from scaling.contracts import MetricsRow, Result
    from scaling.trainer.loop import Trainer

log = logging.getLogger("scaling.train")


class Callback:
    """A hook for each seam of the loop; each does nothing unless overridden."""

    def on_eval(self, trainer: Trainer, eval_loss: float) -> None:
        pass

    def on_step(self, trainer: Trainer, row: Optional[MetricsRow]) -> None:
        pass

    def on_checkpoint(self, trainer: Trainer, path: Path) -> None:
        pass

    def on_signal(self, trainer: Trainer, signal: str) -> None:
        pass

    def on_end(self, trainer: Trainer, result: Optional[Result]) -> None:
        pass


def load_callbacks(paths: list[str], key: str = "train.callbacks") -> list[Callback]:
    """Build the callbacks named by import paths (`package.module:Class`). Raises one ConfigError
    naming each entry that cannot be imported or built, with the fix."""
    out, problems = [], []
    for i, path in enumerate(paths):
        where = f"{key}[{i}]={path!r}"
        module_name, _, attr = str(path).partition(":")
        if not module_name or not attr:
            problems.append(f"{where} is not an import path; write it as package.module:ClassName")
            continue
        try:
            cls: Any = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as e:
            problems.append(f"{where} cannot be imported ({type(e).__name__}: {e}); check the name, and that its "
                            f"package is installed or on PYTHONPATH")  # fmt: skip
            continue
        try:
            callback = cls()
        except Exception as e:  # noqa: BLE001 - a user's class: name whatever it raised
            problems.append(f"{where} cannot be built without arguments ({type(e).__name__}: {e}); give it "
                            f"defaults for every argument")  # fmt: skip
            continue
        if not isinstance(callback, Callback):
            problems.append(f"{where} is a {type(callback).__name__}, not a scaling.trainer.callbacks.Callback; "
                            f"subclass Callback")  # fmt: skip
            continue
        out.append(callback)
    if problems:
        raise ConfigError(problems)
    return out


def end_all(callbacks: list[Callback], trainer: Trainer, result: Optional[Result]) -> None:
    """Call every callback's on_end. When the run did not complete (result None: it is stopping or
    failing already), a callback's error is logged and the others still run; after a completed run
    it fails the run."""
    for callback in callbacks:
        try:
            callback.on_end(trainer, result)
        except Exception:
            if result is not None:
                raise
            log.exception("%s.on_end failed while the run was ending", type(callback).__name__)
