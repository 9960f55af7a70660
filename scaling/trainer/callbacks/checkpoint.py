"""The checkpoint cadence: a checkpoint every `train.checkpoint_every_tokens`, and at each of a
trunk's fork points (`run.fork_tokens`, the last one included), on every rank (saving is
collective). A checkpoint on a stop signal, and the final one, are the loop's, not the cadence's."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from scaling.contracts import MetricsRow
from scaling.trainer.callbacks import Callback

if TYPE_CHECKING:
    from scaling.trainer.loop import Trainer


class CheckpointCadence(Callback):
    def __init__(self, every_steps: Optional[int]):
        self.every_steps = every_steps

    def on_step(self, trainer: Trainer, row: Optional[MetricsRow]) -> None:
        step = trainer.state.step
        # Not on the last step: the final checkpoint is the loop's (train.final_checkpoint), taken
        # when the run has finished, or none when the user turned it off.
        due = self.every_steps is not None and step % self.every_steps == 0 and step < trainer.plan.steps
        # A fork point is saved even at the last step: a branch needs it whatever final_checkpoint says.
        if due or (step in trainer.checkpointer.pinned_steps and trainer.saved_step != step):
            trainer.save_checkpoint()
