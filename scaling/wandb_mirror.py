"""The wandb dashboard: a mirror of `metrics.jsonl`, never the record.

`WandbMirror` is a trainer callback (scaling/trainer/callbacks/): each metrics row the loop logs is
sent to wandb, and the wandb run is finished when the attempt ends, however it ends. It starts (or
continues) the run's wandb run in a background thread: wandb's start-up (its service process,
about 1.5 s even offline) never delays the first step. Rows logged before it is ready are
buffered and sent in order once it is. A wandb error is logged and never fails the run. The wandb
run id is decided at once (it lives in the run directory and in every checkpoint), so a resumed or
requeued run continues the same wandb run.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from pathlib import Path
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
        self._ready = False
        self._pending: list[MetricsRow] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._start, args=(init,), name="wandb-start", daemon=True)
        self._thread.start()

    def _start(self, init: dict) -> None:
        run = None
        try:
            import wandb

            run = wandb.init(**init, settings=wandb.Settings(silent=True, console="off"))
        except Exception as e:  # noqa: BLE001 - the dashboard is a mirror, not the record
            log.warning("wandb could not start (%s: %s); training without a dashboard", type(e).__name__, e)
        with self._lock:
            self.run, self._ready = run, True
            for row in self._pending:
                self._send(row)
            self._pending.clear()

    def _send(self, row: MetricsRow) -> None:
        if self.run is not None:
            call(self.run.log, row.values(), step=row.step)

    def on_step(self, trainer: Any, row: Optional[MetricsRow]) -> None:
        if row is None:
            return
        with self._lock:
            if self._ready:
                self._send(row)
            else:
                self._pending.append(row)

    def on_end(self, trainer: Any, result: Any) -> None:
        self._thread.join(FINISH_WAIT_S)
        if self._thread.is_alive():
            log.warning("wandb did not start within %.0f s; the dashboard misses this run's rows", FINISH_WAIT_S)
            return
        if self.run is not None:
            call(self.run.finish)
