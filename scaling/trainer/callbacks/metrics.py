"""metrics.jsonl: one row per logged step, appended by the main rank (the run directory's record;
the dashboard is a mirror of it)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

from scaling.contracts import MetricsRow, append_metrics, truncate_metrics
from scaling.trainer.callbacks import Callback

if TYPE_CHECKING:
    from scaling.trainer.loop import Trainer


class MetricsFile(Callback):
    """Appends each logged row to RUN_DIR/metrics.jsonl. On a resume, rows written after the
    checkpoint (by the attempt that was killed) are dropped first: the resumed run writes them
    again, identically. A run that starts from scratch starts a new file."""

    def __init__(self, path: Path, resumed_step: Optional[int]):
        self.path = path
        if resumed_step is None:
            path.unlink(missing_ok=True)  # rows of an attempt that never checkpointed
        else:
            truncate_metrics(path, resumed_step)

    def on_step(self, trainer: Trainer, row: Optional[MetricsRow]) -> None:
        if row is not None:
            append_metrics(self.path, row)
