"""Train one run with DeepSpeed: the unit every study is made of.

    scaling-train run.dir=runs/a model=gpt_debug data=synthetic train.tokens=2e5
    torchrun --nproc_per_node 2 -m scaling.train run.dir=runs/a train.zero_stage=2 ...
    srun -n 2 python -m scaling.train ...            (ranks read from the Slurm environment)

The run directory is the contract (see scaling/rundir.py). Running again on a directory whose
run completed trains nothing; on one with checkpoints it resumes exactly: model, optimizer, LR
schedule, data position, RNG state and the wandb run.

Exit codes: 0 completed (or already completed), 1 failed (result.json says why), 2 invalid
config, 75 stopped by SIGTERM/SIGUSR1/SIGUSR2 after saving a checkpoint (run again to resume).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any

from scaling.compose import CONF_DIR
from scaling.config import TrainAppConfig, register_configs, to_dataclass, to_dict
from scaling.distributed import World, detect_world
from scaling.errors import ConfigError, DataError, ScalingError
from scaling.runid import RUN_ID_RULE, config_hash, data_checksum
from scaling.contracts import METRICS_NAME, RESULT_NAME, ContractError, Result, RunStatus, read_result, write_result
from scaling.rundir import (
    EXIT_COMPLETED, EXIT_CONFIG, EXIT_FAILED, EXIT_REQUEUE, STOP_NAME, write_atomic, write_json_atomic,
)  # fmt: skip
from scaling.runlock import RunLock
from scaling.trainer.callbacks import Callback, end_all, load_callbacks
from scaling.trainer.callbacks.checkpoint import CheckpointCadence
from scaling.trainer.callbacks.metrics import MetricsFile
from scaling.trainer.callbacks.progress import ProgressLog
from scaling.trainer.checkpointing import TrainState, identity_problems  # noqa: F401 - re-exported
from scaling.trainer.directory import RunRefused, check_same_run, prior_result, take_run_dir
from scaling.trainer.engine import deepspeed_config, param_groups  # noqa: F401 - re-exported
from scaling.trainer.loop import NonFiniteLoss, StopRequested, Trainer  # noqa: F401 - re-exported
from scaling.trainer.plan import RunPlan, pick_micro_batch, plan_run  # noqa: F401 - re-exported
from scaling.trainer.process import configure_device, init_process_group, teardown
from scaling.wandb_mirror import WandbMirror, wandb_mode

log = logging.getLogger("scaling.train")
# Ctrl-C stops like SIGTERM (checkpoint, exit 75); a second Ctrl-C stops at once.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a process killed by Ctrl-C
LOG_FORMAT = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
SECRET_MARKERS = ("api_key", "apikey", "token_secret", "password", "secret")


def train(cfg: TrainAppConfig, started: float | None = None) -> int:
    """Run one training run to completion, failure or a stop signal. Returns the exit code."""
    world = detect_world()
    run_dir = Path(cfg.run.dir)
    _setup_logging(world)
    stop: dict[str, Any] = {"flag": False}
    trainer: Trainer | None = None
    lock: RunLock | None = None
    timing = Timing(started)

    def on_signal(signum: int, _frame: Any) -> None:
        # Only flags here: the trainer checks them between steps and logs.
        if signum == signal.SIGINT and stop["flag"]:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without waiting for the checkpoint
        stop["flag"], stop["signal"] = True, signal.Signals(signum).name
        if trainer is not None:
            trainer.stop_requested, trainer.stop_signal = True, stop["signal"]

    previous = {s: signal.signal(s, on_signal) for s in STOP_SIGNALS}
    try:
        configure_device(cfg, world)
        init_process_group(world)
        lock = take_run_dir(run_dir, world)
        _log_to_file(run_dir, world)
        prior = prior_result(run_dir, world)
        from scaling.data import prepare_dataset

        try:
            manifest = prepare_dataset(cfg.data)
        except DataError as e:  # missing or unreadable data is a config error: nothing has started
            raise ConfigError(str(e)) from None
        plan = plan_run(cfg, manifest, world)
        identity = {"config_hash": config_hash(plan.cfg), "data_checksum": data_checksum(manifest)}
        check_same_run(run_dir, plan.cfg, identity, prior)
        if prior is not None and prior.status is RunStatus.COMPLETED:
            log.info("run %s already completed (eval loss %s); nothing to train", run_dir, prior.eval_loss)
            return EXIT_COMPLETED
        if world.is_main:
            (run_dir / STOP_NAME).unlink(missing_ok=True)
            if prior is not None:  # a retry: keep the old error beside the run
                os.replace(run_dir / RESULT_NAME, run_dir / "result.previous-failure.json")
        epochs = manifest.epochs(plan.tokens)
        unique_units = manifest.unique_samples("train") * plan.samples_per_seq
        if epochs > 1:
            log.warning("this run repeats its training data: %.2f epochs over %s unique %s", epochs,
                        f"{unique_units:,}", "tokens" if plan.samples_per_seq > 1 else "samples")  # fmt: skip
        # A user's callbacks are imported before the engine is built: a wrong name fails in seconds.
        user_callbacks = load_callbacks(_callback_paths(plan.cfg))
        timing.mark("setup_s")  # torch, data preparation, counting
        trainer = Trainer(plan, manifest, world)
        trainer.stop_requested, trainer.stop_signal = stop["flag"], stop.get("signal", "")
        trainer.lease = lock
        timing.mark("deepspeed_init_s")  # DeepSpeed import, process group, model, engine
        resumed = trainer.resume()
        if world.is_main and not resumed:
            # config.yaml records what the run trains with: written when it starts, never after.
            write_atomic(run_dir / "config.yaml", _to_yaml(scrub_secrets(to_dict(plan.cfg))))
        trainer.callbacks = _callbacks(trainer, resumed, user_callbacks)
        timing.mark("resume_and_wandb_s")
        result = None
        try:
            result = replace(trainer.fit(), **identity, run_id_rule=RUN_ID_RULE, epochs=round(epochs, 4),
                             unique_tokens=unique_units)  # fmt: skip
            timing.mark("train_s")  # the training loop, evaluation included
        finally:
            end_all(trainer.callbacks, trainer, result)
        timing.mark("finish_s")
        result.timing = timing.as_dict() | {k: round(v, 3) for k, v in trainer.seconds.items()}
        if world.is_main:
            write_result(run_dir, result)
            log.info("completed %s: train loss %.4f, eval loss %.4f, %.1f s", plan.run_id, result.train_loss,
                     result.eval_loss, result.wall_time_s)
        return EXIT_COMPLETED
    except StopRequested:
        step = trainer.state.step if trainer else 0
        if world.is_main:
            # torchrun reports any non-zero exit of a worker as its own exit 1: this record tells a
            # launcher that the stop was clean and the run should be requeued.
            record = {"status": RunStatus.STOPPED, "step": step, "signal": stop.get("signal")}
            write_json_atomic(run_dir / STOP_NAME, record)
        log.warning("stopped at step %d; run again on %s to resume", step, run_dir)
        return EXIT_REQUEUE
    except KeyboardInterrupt:
        log.error("interrupted twice: stopped at once, without a checkpoint; a rerun resumes from the last one")
        return EXIT_INTERRUPTED
    except RunRefused as e:
        log.error("%s", e)
        return EXIT_CONFIG
    except ConfigError as e:
        log.error("%s", e)
        _write_failure(run_dir, world, str(e), None)
        return EXIT_CONFIG
    except Exception as e:  # noqa: BLE001 - every failure must end in a failed result, not a bare traceback
        step = trainer.state.step if trainer is not None else None
        message = str(e) if isinstance(e, ScalingError) else f"{type(e).__name__}: {e}"
        if not isinstance(e, ScalingError):
            log.error("%s", traceback.format_exc())
        log.error("run failed at step %s: %s", step, message)
        _write_failure(run_dir, world, message, step)
        return EXIT_FAILED
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if lock is not None:
            lock.release()
        teardown()


def _callback_paths(cfg: TrainAppConfig) -> list[str]:
    return list(cfg.train.callbacks)


def _callbacks(trainer: Trainer, resumed: bool, user: list[Callback]) -> list[Callback]:
    """The loop's callbacks, in the order they are called: on the main rank the metrics file, the
    wandb mirror and the progress log; then the user's; last, on every rank, the checkpoint
    cadence, so that every other callback has seen a step before it is checkpointed."""
    plan, world = trainer.plan, trainer.world
    out: list[Callback] = []
    if world.is_main:
        out.append(MetricsFile(trainer.run_dir / METRICS_NAME, trainer.state.step if resumed else None))
        mode = wandb_mode(plan.cfg.logger.wandb.mode)
        if mode != "disabled":
            # The dashboard mirrors metrics.jsonl: every row written is also logged. It starts in
            # the background, so its start-up never delays the first step.
            out.append(WandbMirror(plan, trainer.state, scrub_secrets(to_dict(plan.cfg)), mode))
        out.append(ProgressLog())
    return out + user + [CheckpointCadence(plan.steps_for(plan.cfg.train.checkpoint_every_tokens))]


def _write_failure(run_dir: Path, world: World, error: str, step: int | None) -> None:
    """Record a failure. Every failing rank tries, and the first error written wins: the rank
    that failed first has the cause, the others only see a peer disappear."""
    try:
        prior = read_result(run_dir, complete=True)
    except ContractError:
        prior = None
    if prior is not None and prior.status is RunStatus.COMPLETED:
        return  # a finished run's record is never replaced by a later attempt's error
    failure = Result(status=RunStatus.FAILED, error=error, step=step, rank=world.rank)
    write_result(run_dir, failure, only_if_absent=world.world_size > 1)


def _to_yaml(obj: dict) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.create(obj))


class Timing:
    """Where a run's wall time goes, in seconds, for the benchmarks: `startup_s` is from the
    run's start (the process's start, or the moment a warm worker took the run) to the trainer's
    first line: the interpreter and imports, or Hydra's composition in a warm worker."""

    def __init__(self, started: float | None = None) -> None:
        self.marks: dict[str, float] = {"startup_s": time.time() - (started or _process_start_time())}
        self._last = time.time()

    def mark(self, name: str) -> None:
        now = time.time()
        self.marks[name] = round(now - self._last, 3)
        self._last = now

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in self.marks.items()}


def _process_start_time() -> float:
    """The wall-clock time this process started (Linux /proc); now, where unknown."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


def scrub_secrets(obj: Any) -> Any:
    """Drop keys that look like credentials before a config is written or uploaded."""
    if isinstance(obj, dict):
        return {k: scrub_secrets(v) for k, v in obj.items() if not any(m in str(k).lower() for m in SECRET_MARKERS)}
    if isinstance(obj, list):
        return [scrub_secrets(v) for v in obj]
    return obj


def _setup_logging(world: World) -> None:
    root = logging.getLogger("scaling")
    for handler in root.handlers:  # a warm worker's previous run: its train.log stays open otherwise
        handler.close()
    root.handlers.clear()
    root.propagate = False
    root.setLevel(logging.INFO if world.is_main else logging.WARNING)
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(LOG_FORMAT)
    root.addHandler(stream)
    # DeepSpeed and torch are chatty at INFO and with deprecation warnings.
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")


def _log_to_file(run_dir: Path, world: World) -> None:
    """train.log in the run directory, once this trainer holds it."""
    if world.is_main:
        file = logging.FileHandler(run_dir / "train.log")
        file.setFormatter(LOG_FORMAT)
        logging.getLogger("scaling").addHandler(file)


def run_overrides(overrides: list[str], started: float | None = None) -> int:
    """Compose conf/train.yaml with Hydra overrides and train; for launchers that run the trainer
    in-process (submitit jobs, warm workers; `started` is when the run was handed over). Returns
    the exit code."""
    from scaling.compose import compose_train

    try:
        cfg = to_dataclass(compose_train(list(overrides)))
    except ConfigError as e:
        print(f"scaling-train: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except Exception as e:  # noqa: BLE001 - Hydra's composition errors name the bad key
        print(f"scaling-train: invalid config: {e}", file=sys.stderr)
        return EXIT_CONFIG
    return train(cfg, started)


def main() -> None:
    """Console script `scaling-train`: Hydra overrides on the command line."""
    register_configs()
    import hydra

    code: dict[str, int] = {}

    @hydra.main(config_path=str(CONF_DIR), config_name="train", version_base=None)
    def app(dcfg: Any) -> None:
        try:
            cfg = to_dataclass(dcfg)
        except ConfigError as e:
            print(f"scaling-train: {e}", file=sys.stderr)
            code["rc"] = EXIT_CONFIG
            return
        code["rc"] = train(cfg)

    try:
        app()
    except SystemExit as e:
        # Hydra exits 1 on its own errors (a misspelled key, a wrong type, an unknown choice), before
        # the task runs: that is a config error. Its --help and --cfg exit 0.
        if "rc" not in code and e.code not in (0, None):
            sys.exit(EXIT_CONFIG)
        raise
    sys.exit(code.get("rc", EXIT_COMPLETED))


if __name__ == "__main__":
    main()
