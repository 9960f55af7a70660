"""The training loop: from the current state to the end of the budget.

`Trainer.fit` steps the engine, evaluates when due, builds the metrics row, stops cleanly
(checkpoint, then StopRequested) when every rank has seen a stop signal, and checkpoints the final
step (`train.final_checkpoint`). Everything else a run does as it goes (the metrics file, the
dashboard, the progress log, the checkpoint cadence, a user's own) is a callback
(scaling/trainer/callbacks/), called at the loop's seams.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Optional

from scaling.contracts import METRICS_NAME, MetricsRow, Result, RunStatus, read_metrics
from scaling.distributed import World
from scaling.errors import ScalingError
from scaling.families import family_of
from scaling.runid import config_hash, data_checksum
from scaling.trainer.callbacks import Callback
from scaling.trainer.branch import branch_of, fork
from scaling.trainer.checkpointing import Checkpointer, TrainState
from scaling.trainer.engine import build_engine
from scaling.trainer.plan import RunPlan
from scaling.trainer.process import agree

log = logging.getLogger("scaling.train")


class NonFiniteLoss(ScalingError):
    pass


class StopRequested(Exception):
    """A stop signal arrived; a checkpoint has been saved."""


class Trainer:
    """One run: the engine, its state and checkpoints, its callbacks, and the loop that trains it
    to the budget."""

    def __init__(self, plan: RunPlan, manifest: Any, world: World, callbacks: Optional[list[Callback]] = None):
        self.plan, self.manifest, self.world = plan, manifest, world
        self.cfg = plan.cfg
        self.run_dir = Path(self.cfg.run.dir)
        self.engine = build_engine(plan, world)
        self.identity = {"config_hash": config_hash(self.cfg), "data_checksum": data_checksum(manifest)}
        self.checkpointer = Checkpointer(self.engine, self.run_dir, self.identity)
        self.branch = branch_of(plan)  # a cooldown branch's fork (scaling/trainer/branch.py), or None
        self.state = TrainState(world_size=world.world_size)
        self.stop_requested = False
        self.stop_signal = ""  # the signal's name, set by the handler in train()
        # This attempt's time in optimizer steps, evaluation and checkpoint saves.
        self.seconds = {"steps_s": 0.0, "eval_s": 0.0, "checkpoint_s": 0.0}
        self.callbacks = list(callbacks or [])
        self.lease: Any = None  # the run directory's lease (rank 0), see scaling/runlock.py
        self.saved_step: Optional[int] = None  # the step of this attempt's latest checkpoint
        self._started = time.time()

    def train_step(self, x: Any, y: Any) -> float:
        return self.engine.train_step(x, y)

    def resume(self) -> bool:
        """Load the newest loadable checkpoint, if any; returns whether the run resumed. A branch
        without checkpoints of its own forks from its trunk's instead, which is a start, not a
        resume (raises BranchNotReady when the trunk's checkpoint is not there yet)."""
        state = self.checkpointer.resume()
        if state is not None:
            self.state = state
            self.saved_step = state.step  # on disk already: a stop or the end does not save it again
        elif self.branch is not None:
            self.state, self.checkpointer.parent = fork(self, self.branch)
        return state is not None

    def save_checkpoint(self) -> Path:
        """Checkpoint the current step (a collective: every rank calls it)."""
        self.state.wall_time_s = time.time() - self._started
        t0 = time.perf_counter()
        path = self.checkpointer.save(self.state)
        self.seconds["checkpoint_s"] += time.perf_counter() - t0
        self.saved_step = self.state.step
        for callback in self.callbacks:
            callback.on_checkpoint(self, path)
        return path

    def _evaluate(self, batches: list) -> float:
        t0 = time.perf_counter()
        loss = self.engine.evaluate(batches)
        self.seconds["eval_s"] += time.perf_counter() - t0
        return loss

    def _eval_batches(self) -> list:
        from scaling.data import eval_batches

        return eval_batches(self.manifest, num_samples=self.plan.eval_samples, batch_size=self.plan.micro_batch,
                            rank=self.world.rank, world_size=self.world.world_size)  # fmt: skip

    def fit(self) -> Result:
        """Train from the current state to the end of the budget. Returns the completed Result, or
        raises StopRequested after a checkpoint when a stop signal arrived."""
        from scaling.data import train_batches

        plan, t = self.plan, self.cfg.train
        self._started = time.time() - self.state.wall_time_s
        batches = train_batches(
            self.manifest, global_batch_size=t.global_batch_size, rank=self.world.rank,
            world_size=self.world.world_size, seed=t.seed, start_step=self.state.step,
            num_workers=self.cfg.data.num_workers, streams=getattr(self.cfg.data, "streams", None),
        )  # fmt: skip
        eval_set = self._eval_batches()
        eval_every = plan.steps_for(t.eval_every_tokens)
        last_eval: float | None = None
        window_start, window_tokens = time.time(), 0
        train_loss = float("nan")

        def due(every: int | None) -> bool:
            return every is not None and self.state.step % every == 0

        log.info(
            "training %s: N=%s params (%s non-embedding), D=%s %s, C=%.3g FLOPs (%s), %d steps of %d, "
            "micro batch %d x %d accumulation x %d processes, %s",
            plan.run_id, f"{plan.params:,}", f"{plan.params_nonembedding:,}", f"{plan.tokens:,}",
            family_of(plan.cfg.model).unit, plan.flops, t.flops_convention, plan.steps,
            plan.tokens_per_step, plan.micro_batch, plan.accumulation, self.world.world_size,
            self.engine.describe(),
        )  # fmt: skip
        while self.state.step < plan.steps:
            if self.lease is not None and self.lease.lost:
                raise ScalingError(
                    f"another trainer took over {self.run_dir} (this one did not refresh its lease in time); "
                    f"stopping without writing, so the two never share the directory"
                )
            x, y = next(batches)
            lr = self.engine.lr
            t0 = time.perf_counter()
            train_loss = self.engine.train_step(x, y)
            self.seconds["steps_s"] += time.perf_counter() - t0
            self.state.step += 1
            window_tokens += plan.tokens_per_step
            if t.nan_check and not math.isfinite(train_loss):
                raise NonFiniteLoss(
                    f"loss is {train_loss} at step {self.state.step}; lower train.lr, raise warmup, or "
                    f"check the data"
                )
            last = self.state.step == plan.steps
            eval_loss = None
            if due(eval_every) or last:
                elapsed = time.time() - window_start
                eval_loss = last_eval = self._evaluate(eval_set)
                window_start = time.time() - elapsed  # evaluation time is not training throughput
                for callback in self.callbacks:
                    callback.on_eval(self, eval_loss)
            row = None
            if eval_loss is not None or due(t.log_every_steps) or last:
                row = self._metrics_row(train_loss, lr, window_tokens, time.time() - window_start, eval_loss)
                window_start, window_tokens = time.time(), 0
                self.state.wall_time_s = time.time() - self._started
            for callback in self.callbacks:
                callback.on_step(self, row)
            # On the last step the run is about to finish: finishing beats a checkpoint that a
            # requeue would resume with nothing left to train.
            if not last and self._stop_agreed():
                for callback in self.callbacks:
                    callback.on_signal(self, self.stop_signal)
                if self.saved_step != self.state.step:
                    self.save_checkpoint()
                raise StopRequested()
        if last_eval is None:  # resumed from a checkpoint taken at the very end
            last_eval = self._evaluate(eval_set)
            rows = read_metrics(self.run_dir / METRICS_NAME)
            train_loss = rows[-1].loss if rows else float("nan")
        if t.final_checkpoint and self.saved_step != self.state.step:
            # The final weights, for scaling-export and for branching off a finished run. Saved
            # before result.json: a run killed in between resumes here, evaluates, and completes
            # without training a step again.
            self.save_checkpoint()
        self.state.wall_time_s = time.time() - self._started
        return Result(
            status=RunStatus.COMPLETED,
            run_id=plan.run_id,
            family=plan.family,
            params=plan.params,
            params_nonembedding=plan.params_nonembedding,
            tokens=plan.tokens,
            flops=plan.flops,
            flops_convention=t.flops_convention,
            train_loss=train_loss,
            eval_loss=last_eval,
            steps=self.state.step,
            world_size=self.world.world_size,
            zero_stage=t.zero_stage,
            wall_time_s=round(self.state.wall_time_s, 3),
            group=self.cfg.run.group,
            **self._branch_fields(),
        )

    def _branch_fields(self) -> dict:
        """A branch's provenance and its own share of the training, for result.json."""
        if self.branch is None:
            return {}
        plan, fork_step = self.plan, self.branch.fork_step
        own_tokens = (plan.steps - fork_step) * plan.tokens_per_step
        return {
            "parent": self.branch.parent, "fork_step": fork_step, "fork_tokens": self.branch.fork_tokens,
            "branch_tokens": own_tokens, "branch_flops": own_tokens * plan.flops_per_sample,
        }  # fmt: skip

    def _metrics_row(self, loss: float, lr: float, tokens: int, seconds: float, eval_loss: float | None) -> MetricsRow:
        plan, peak = self.plan, self.engine.peak_flops
        tps = tokens / seconds if seconds > 0 else float("nan")
        return MetricsRow(
            step=self.state.step,
            tokens=self.state.step * plan.tokens_per_step,
            flops=self.state.step * plan.tokens_per_step * plan.flops_per_sample,
            loss=loss,
            lr=lr,
            tokens_per_s=tps,
            flops_per_s=tps * plan.flops_per_sample,
            elapsed_s=round(self.state.wall_time_s, 3),
            mfu=tps * plan.flops_per_sample / (peak * self.world.world_size) if peak else None,
            eval_loss=eval_loss,
        )

    def _stop_agreed(self) -> bool:
        # Saving is collective, so every rank must agree to stop at the same step.
        stop = agree(self.world, self.stop_requested)
        if stop:  # logged here, not in the signal handler: logging there can deadlock or lose the signal
            log.warning("received %s: saving a checkpoint and stopping", self.stop_signal or "a stop on another rank")
        return stop
