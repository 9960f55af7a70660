"""metrics.jsonl: one row per logged step, appended by the main rank (the run directory's record;
the dashboard is a mirror of it)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional, TextIO

from scaling.contracts import MetricsRow, Result, metrics_line, truncate_metrics
from scaling.trainer.callbacks import Callback

if TYPE_CHECKING:
    from scaling.trainer.loop import Trainer


class MetricsFile(Callback):
    """Appends each logged row to RUN_DIR/metrics.jsonl. On a resume, rows written after the
    checkpoint (by the attempt that was killed) are dropped first: the resumed run writes them
    again, identically. A run that starts from scratch starts a new file."""

    def __init__(self, path: Path, resumed_step: Optional[int]):
        self.path = path
        self.file: Optional[TextIO] = None
        if resumed_step is None:
            path.unlink(missing_ok=True)  # rows of an attempt that never checkpointed
        else:
            truncate_metrics(path, resumed_step)

    def on_step(self, trainer: Trainer, row: Optional[MetricsRow]) -> None:
        if row is None:
            return
        if self.file is None:  # held open: a row costs a write and a flush, not an open and a close
            self.file = open(self.path, "a")
        self.file.write(metrics_line(row))
        self.file.flush()  # in the OS's hands: a killed process loses no row it logged

    def on_end(self, trainer: Trainer, result: Optional[Result]) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
