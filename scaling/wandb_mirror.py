"""The wandb dashboard: a mirror of `metrics.jsonl`, never the record.

`WandbMirror` is a trainer callback (scaling/trainer/callbacks/): each metrics row the loop logs is
mirrored to wandb, and the wandb run is finished when the attempt ends, however it ends. wandb runs
in a background thread of its own, off the training loop's path: its start-up (its service
process, about 1.5 s even offline) never delays the first step. The loop only queues rows; the
thread starts (or continues) the wandb run, then sends them in order.

Sending a row costs about 1 ms of CPU, as much as a small model's whole step, so the dashboard
gets a training row at most every `logger.wandb.min_interval_s` (1 s by default), and every
evaluation row and the run's last row; `min_interval_s=0` mirrors every row. metrics.jsonl,
the record, keeps every row. A wandb error is logged and never fails the run. The wandb
run id is decided at once (it lives in the run directory and in every checkpoint), so a resumed or
requeued run continues the same wandb run.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
import uuid
from pathlib import Path
from time import monotonic
from typing import Any, Callable, Optional

from scaling.contracts import MetricsRow
from scaling.rundir import write_atomic
from scaling.trainer.callbacks import Callback

log = logging.getLogger("scaling.wandb")

PROBE_TIMEOUT_S = 3.0  # mode=auto: how long the wandb server may take to accept a connection
FINISH_WAIT_S = 120.0  # how long the end of a run waits for a slow start before giving up on the mirror


def wandb_mode(mode: str) -> str:
    """The mode wandb runs in. `auto` honours WANDB_DISABLED and WANDB_MODE, goes online only with
    credentials and a server that answers within PROBE_TIMEOUT_S, and is offline otherwise: it
    never blocks a run on the network."""
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_DISABLED", "").strip().lower() in ("1", "true", "yes"):
        return "disabled"
    env_mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if env_mode in ("offline", "dryrun"):
        return "offline"
    if env_mode in ("disabled", "online"):
        return env_mode
    if not _credentials():
        return "offline"
    url = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    if not _reachable(url, PROBE_TIMEOUT_S):
        log.warning("wandb: %s did not answer within %.0f s; logging offline (upload later with `wandb sync`)",
                    url, PROBE_TIMEOUT_S)  # fmt: skip
        return "offline"
    return "online"


def _credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return "api.wandb.ai" in (Path.home() / ".netrc").read_text()
    except OSError:
        return False


def _reachable(url: str, timeout_s: float) -> bool:
    import socket
    from urllib.parse import urlparse

    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "", port), timeout=timeout_s):
            return True
    except OSError:
        return False


def call(fn: Callable, *args: Any, **kwargs: Any) -> None:
    """Call wandb; an error (say, its service process killed by the signal that stops the run) is
    logged, never raised."""
    try:
        fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001
        log.warning("wandb: %s: %s (metrics.jsonl is unaffected)", type(e).__name__, e)


class WandbMirror(Callback):
    """Mirror each metrics row to the run's wandb run (rank 0 only)."""

    def __init__(self, plan: Any, state: Any, config: dict, mode: str | None = None):
        wcfg = plan.cfg.logger.wandb
        run_dir = Path(plan.cfg.run.dir)
        if not state.wandb_id:  # a run started from scratch gets a wandb run of its own
            state.wandb_id = uuid.uuid4().hex[:16]
        write_atomic(run_dir / "wandb_id", state.wandb_id + "\n")
        config = dict(config)
        config["counts"] = {"N": plan.params, "N_nonembedding": plan.params_nonembedding, "D": plan.tokens,
                            "C": plan.flops}  # fmt: skip
        init = dict(
            project=wcfg.project, entity=wcfg.entity, group=plan.cfg.run.group, name=plan.run_id, id=state.wandb_id,
            resume="allow", dir=str(run_dir), mode=mode or wandb_mode(wcfg.mode), config=config, tags=list(wcfg.tags),
        )  # fmt: skip
        self.run: Any = None
        self.min_interval_s, self.last_step = wcfg.min_interval_s, plan.steps
        self._sent_at = -math.inf  # when the loop last queued a row
        self._rows: queue.SimpleQueue[Optional[MetricsRow]] = queue.SimpleQueue()  # None ends the attempt
        self._thread = threading.Thread(target=self._serve, args=(init,), name="wandb", daemon=True)
        self._thread.start()

    def _serve(self, init: dict) -> None:
        """Start the wandb run, then send the queued rows in order until the end of the attempt."""
        try:
            import wandb

            self.run = wandb.init(**init, settings=wandb.Settings(silent=True, console="off"))
        except Exception as e:  # noqa: BLE001 - the dashboard is a mirror, not the record
            log.warning("wandb could not start (%s: %s); training without a dashboard", type(e).__name__, e)
        while (row := self._rows.get()) is not None:
            if self.run is not None:
                call(self.run.log, row.values(), step=row.step)

    def on_step(self, trainer: Any, row: Optional[MetricsRow]) -> None:
        if row is None:
            return
        now = monotonic()
        if row.eval_loss is not None or row.step >= self.last_step or now - self._sent_at >= self.min_interval_s:
            self._sent_at = now
            self._rows.put(row)

    def on_end(self, trainer: Any, result: Any) -> None:
        self._rows.put(None)
        self._thread.join(FINISH_WAIT_S)
        if self._thread.is_alive():
            log.warning("wandb did not start and send within %.0f s; the dashboard misses this run's last rows",
                        FINISH_WAIT_S)  # fmt: skip
            return
        if self.run is not None:
            call(self.run.finish)
