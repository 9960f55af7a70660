"""The progress lines of the run's log: on every evaluation, and at most every PROGRESS_EVERY_S
seconds otherwise (every row goes to metrics.jsonl regardless)."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Optional

from scaling.contracts import MetricsRow
from scaling.trainer.callbacks import Callback

if TYPE_CHECKING:
    from scaling.trainer.loop import Trainer

log = logging.getLogger("scaling.train")
PROGRESS_EVERY_S = 10.0


class ProgressLog(Callback):
    def __init__(self, every_s: float = PROGRESS_EVERY_S):
        self.every_s = every_s
        self.last = 0.0

    def on_step(self, trainer: Trainer, row: Optional[MetricsRow]) -> None:
        if row is None or (row.eval_loss is None and time.time() - self.last <= self.every_s):
            return
        self.last = time.time()
        steps, tokens_per_step = trainer.plan.steps, trainer.plan.tokens_per_step
        remaining = (steps - row.step) * tokens_per_step / row.tokens_per_s if row.tokens_per_s else 0
        extra = f" eval {row.eval_loss:.4f}" if row.eval_loss is not None else ""
        log.info(
            "step %d/%d (%.0f%%) loss %.4f%s lr %.2e %.0f tok/s ETA %.0fs",
            row.step, steps, 100 * row.step / steps, row.loss, extra, row.lr, row.tokens_per_s, remaining,
        )  # fmt: skip
