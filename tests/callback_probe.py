"""A user's callback, imported by the trainer from `train.callbacks` (tests/test_callbacks.py puts
this folder on PYTHONPATH): it records every hook it sees in RUN_DIR/hooks.jsonl, and on its
first attempt stops the run with SIGTERM at step 6, as a scheduler's preemption would."""

from __future__ import annotations

import json
import os
import signal

from scaling.trainer.callbacks import Callback

STOP_AT = 6


class HookRecorder(Callback):
    def _record(self, trainer, *entry) -> None:
        if trainer.world.is_main:
            with open(trainer.run_dir / "hooks.jsonl", "a") as f:
                f.write(json.dumps(list(entry)) + "\n")

    def on_eval(self, trainer, eval_loss) -> None:
        self._record(trainer, "eval", trainer.state.step)

    def on_step(self, trainer, row) -> None:
        self._record(trainer, "step", trainer.state.step, row is not None)
        marker = trainer.run_dir / "probe-stopped"
        if trainer.state.step == STOP_AT and not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGTERM)

    def on_checkpoint(self, trainer, path) -> None:
        self._record(trainer, "checkpoint", trainer.state.step, path.name)

    def on_signal(self, trainer, signal_name) -> None:
        self._record(trainer, "signal", signal_name)

    def on_end(self, trainer, result) -> None:
        self._record(trainer, "end", None if result is None else str(result.status))


class NotACallback:
    pass


class NeedsArguments(Callback):
    def __init__(self, threshold: float):
        self.threshold = threshold
