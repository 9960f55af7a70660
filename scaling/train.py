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
import math
import os
import shutil
import signal
import sys
import time
import traceback
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

from scaling.config import TrainAppConfig, register_configs, to_dataclass, to_dict
from scaling.distributed import World, detect_world
from scaling.errors import ConfigError, DataError, ScalingError, raise_if
from scaling.runid import RUN_ID_RULE, config_differences, config_hash, data_checksum, result_config
from scaling.rundir import (
    EXIT_COMPLETED, EXIT_CONFIG, EXIT_FAILED, EXIT_REQUEUE, STOP_NAME, RunFileError, append_metrics, checkpoint_dirs,
    load_result, read_metrics, truncate_metrics, write_atomic, write_json_atomic,
)  # fmt: skip
from scaling.runlock import RunLock, RunLocked
from scaling.wandb_mirror import WandbMirror, wandb_mode

log = logging.getLogger("scaling.train")
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
# Ctrl-C stops like SIGTERM (checkpoint, exit 75); a second Ctrl-C stops at once.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a process killed by Ctrl-C
LOG_FORMAT = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
PROGRESS_EVERY_S = 10.0  # how often a progress line is printed; every step goes to metrics.jsonl
SECRET_MARKERS = ("api_key", "apikey", "token_secret", "password", "secret")


class NonFiniteLoss(ScalingError):
    pass


@dataclass(frozen=True)
class RunPlan:
    """Everything derived from the config and the data before any model is built."""

    cfg: TrainAppConfig  # with model fields filled from the data manifest
    run_id: str
    family: str
    params: int
    params_nonembedding: int
    flops_per_sample: float  # training FLOPs per token (GPT) or image (CNN)
    samples_per_seq: int  # tokens per sequence (GPT) or 1 (CNN)
    steps: int
    per_rank_batch: int  # sequences (images) per rank per optimizer step
    micro_batch: int
    accumulation: int
    warmup_steps: int
    eval_samples: int

    @property
    def tokens_per_step(self) -> int:
        return self.cfg.train.global_batch_size * self.samples_per_seq

    @property
    def tokens(self) -> int:
        return self.steps * self.tokens_per_step

    @property
    def flops(self) -> float:
        return self.tokens * self.flops_per_sample

    def steps_for(self, tokens: float | None) -> int | None:
        return None if tokens is None else max(1, int(round(tokens / self.tokens_per_step)))


@dataclass
class TrainState:
    """What a checkpoint carries besides the engine's own state."""

    step: int = 0
    wall_time_s: float = 0.0
    wandb_id: str = ""
    world_size: int = 1


def plan_run(cfg: TrainAppConfig, manifest: Any, world: World) -> RunPlan:
    """Fill the model from the data, count it, and check the batch and budget arithmetic.
    Raises ConfigError naming every problem; builds nothing."""
    from scaling.counting import count_params, flops_per_sample
    from scaling.data import apply_manifest

    model_cfg = apply_manifest(cfg.model, manifest)
    cfg = replace(cfg, model=model_cfg)
    t = cfg.train
    problems = []
    samples_per_seq = model_cfg.seq_len if model_cfg.family == "gpt" else 1
    per_sample = flops_per_sample(model_cfg, t.flops_convention)
    counts = count_params(model_cfg)
    budget = t.tokens if t.tokens is not None else t.flops / per_sample
    tokens_per_step = t.global_batch_size * samples_per_seq
    steps = int(budget // tokens_per_step)
    if steps < 1:
        unit = "tokens" if model_cfg.family == "gpt" else "images"
        problems.append(
            f"the budget ({budget:.4g} {unit}) is smaller than one step (train.global_batch_size="
            f"{t.global_batch_size} x {samples_per_seq} = {tokens_per_step} {unit}); raise train.tokens "
            f"or train.flops, or lower train.global_batch_size"
        )
    per_rank = t.global_batch_size // world.world_size
    if t.global_batch_size % world.world_size:
        problems.append(
            f"train.global_batch_size={t.global_batch_size} is not divisible by the world size "
            f"{world.world_size}; pick a multiple of the number of processes"
        )
    micro = per_rank if t.micro_batch_size == "auto" else int(t.micro_batch_size)
    if per_rank and micro and per_rank % micro:
        problems.append(
            f"train.micro_batch_size={micro} does not divide the per-rank batch {per_rank} "
            f"(train.global_batch_size={t.global_batch_size} / {world.world_size} processes); "
            f"pick a divisor of {per_rank} or auto"
        )
    if problems:
        raise ConfigError(problems)
    eval_seqs = math.ceil(t.eval_tokens / samples_per_seq)
    eval_seqs = min(eval_seqs, manifest.num_samples("val"))
    eval_seqs -= eval_seqs % world.world_size  # every rank runs the same number of eval batches
    if eval_seqs < world.world_size:
        raise ConfigError(
            f"the validation split has {manifest.num_samples('val')} samples, fewer than the "
            f"{world.world_size} processes; prepare the data with a larger validation split"
        )
    return RunPlan(
        cfg=cfg,
        run_id=cfg.run.id or Path(cfg.run.dir).name,
        family=model_cfg.family,
        params=counts.total,
        params_nonembedding=counts.nonembedding,
        flops_per_sample=per_sample,
        samples_per_seq=samples_per_seq,
        steps=steps,
        per_rank_batch=per_rank,
        micro_batch=micro,
        accumulation=per_rank // micro,
        warmup_steps=int(math.ceil(t.warmup_tokens / tokens_per_step)),
        eval_samples=eval_seqs,
    )


def deepspeed_config(plan: RunPlan, world: World, bf16: bool) -> dict:
    """The DeepSpeed config, generated from the typed config. The batch arithmetic
    (global = micro x accumulation x world) was checked in plan_run."""
    t = plan.cfg.train
    zero: dict[str, Any] = {"stage": t.zero_stage}
    if t.zero_stage == 3:
        # Gather every parameter on every forward: small models, exact comparisons across stages.
        zero.update(stage3_param_persistence_threshold=0, stage3_prefetch_bucket_size=0)
    return {
        "train_batch_size": t.global_batch_size,
        "train_micro_batch_size_per_gpu": plan.micro_batch,
        "gradient_accumulation_steps": plan.accumulation,
        "gradient_clipping": t.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": bf16},
        "steps_per_print": 10**12,
        "wall_clock_breakdown": False,
        "zero_allow_untested_optimizer": True,
    }


def param_groups(model: Any, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on matrices (linear, conv and embedding weights) only; biases
    and norm gains are not decayed."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def pick_micro_batch(model: Any, plan: RunPlan, device: Any, sample: tuple) -> int:
    """Largest divisor of the per-rank batch whose forward and backward fit on the GPU, found by
    trying from the largest down (accelerate's OOM test). Gradient accumulation then keeps the
    global batch."""
    import torch
    from accelerate.utils.memory import release_memory, should_reduce_batch_size

    x, y = sample
    per_rank = plan.per_rank_batch
    for mb in [d for d in range(per_rank, 0, -1) if per_rank % d == 0]:
        try:
            reps = math.ceil(mb / x.shape[0])
            xb = x.repeat(reps, *[1] * (x.ndim - 1))[:mb].to(device)
            yb = y.repeat(reps, *[1] * (y.ndim - 1))[:mb].to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=plan.cfg.train.precision == "bf16"):
                loss = torch.nn.functional.cross_entropy(model(xb).flatten(0, -2).float(), yb.flatten())
            loss.backward()
            model.zero_grad(set_to_none=True)
            release_memory()
            # The probe allocates no optimizer state: keep 15% headroom for it.
            return max(d for d in range(1, mb + 1) if per_rank % d == 0 and d <= max(1, int(mb * 0.85)))
        except Exception as e:  # noqa: BLE001 - accelerate decides which errors mean out of memory
            model.zero_grad(set_to_none=True)
            release_memory()
            if not should_reduce_batch_size(e):
                raise
    raise ScalingError("not even a micro batch of 1 fits on this device; use ZeRO-3 or a smaller model")


class Trainer:
    """One run: set up the engine, resume if possible, train to the budget, write the result."""

    def __init__(self, plan: RunPlan, manifest: Any, world: World):
        import deepspeed
        import torch
        from deepspeed.accelerator import get_accelerator

        from scaling.models import build_model

        self.plan, self.manifest, self.world = plan, manifest, world
        self.cfg = plan.cfg
        self.run_dir = Path(self.cfg.run.dir)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.accel = get_accelerator()
        self.device = torch.device(self.accel.device_name(world.local_rank))
        self.bf16 = self.cfg.train.precision == "bf16"
        if self.bf16 and not self.accel.is_bf16_supported():
            raise ConfigError("train.precision=bf16 is not supported on this device; use train.precision=fp32")
        self.peak = None
        if self.device.type == "cuda":
            from scaling.hardware import peak_flops

            self.peak = peak_flops(torch.cuda.get_device_name(self.device))

        torch.manual_seed(self.cfg.train.seed)  # the same initial weights on every rank
        model = build_model(self.cfg.model)
        model.activation_checkpointing = self.cfg.train.activation_checkpointing
        if self.cfg.train.micro_batch_size == "auto" and self.device.type == "cuda":
            model.to(self.device)
            sample = self._eval_batches(8)[0]
            micro = pick_micro_batch(model, plan, self.device, sample)
            if world.world_size > 1:  # GPUs with less free memory decide: configs must agree
                import torch.distributed as dist

                agreed = torch.tensor([micro], device=self.device)
                dist.all_reduce(agreed, op=dist.ReduceOp.MIN)
                micro = int(agreed.item())
                while plan.per_rank_batch % micro:
                    micro -= 1
            self.plan = plan = replace(plan, micro_batch=micro, accumulation=plan.per_rank_batch // micro)
            log.info("micro batch auto: %d (accumulation %d)", micro, plan.accumulation)
        t = self.cfg.train
        optimizer = torch.optim.AdamW(
            param_groups(model, t.weight_decay), lr=t.lr, betas=(t.beta1, t.beta2), eps=1e-8,
            foreach=True,  # PyTorch picks the per-tensor loop on CPU by default, which is slower
        )
        from scaling.schedule import lr_factor

        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: lr_factor(
                step, plan.steps, schedule=t.schedule, warmup_steps=plan.warmup_steps,
                decay_fraction=t.decay_fraction, min_lr_ratio=t.min_lr_ratio,
            ),
        )  # fmt: skip
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=model,
            optimizer=optimizer,
            lr_scheduler=schedule,
            config=deepspeed_config(plan, world, self.bf16),
        )
        from scaling.checkpoint import make_safe_engine

        # Checkpoints are read with torch.load(weights_only=True): nothing in a run directory is
        # unpickled (scaling/checkpoint.py).
        self.engine.checkpoint_engine = make_safe_engine(self.engine._config, trust=t.trust_checkpoint)
        if world.world_size == 1 and t.zero_stage == 0:
            # Nothing to reduce across one process; DeepSpeed would still flatten and copy every
            # gradient each step.
            self.engine.enable_backward_allreduce = False
        self.state = TrainState(world_size=world.world_size)
        self.identity = {"config_hash": config_hash(self.cfg), "data_checksum": data_checksum(manifest)}
        self.stop_requested = False
        self.stop_signal = ""  # the signal's name, set by the handler in train()
        self.seconds = {"steps_s": 0.0, "eval_s": 0.0}  # this attempt's time in optimizer steps and evaluation
        self.row_sinks: list[Callable[[dict], None]] = []  # rank 0 only, e.g. the wandb mirror
        self.lease: Any = None  # the run directory's lease (rank 0), see scaling/runlock.py

    # ---- distributed helpers -------------------------------------------------------------
    def _all_reduce(self, values: list[float]) -> list[float]:
        """Sums over ranks."""
        import torch
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.world.world_size > 1:
            dist.all_reduce(t)
        return t.tolist()

    def _barrier(self) -> None:
        import torch.distributed as dist

        if self.world.world_size > 1:
            dist.barrier()

    # ---- checkpoints -----------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Every rank writes into a hidden folder; rank 0 renames it into place when all are done,
        so a kill during a save leaves the previous checkpoint as the latest complete one."""
        from scaling import checkpoint

        root = self.run_dir / "checkpoints"
        name = f"step{self.state.step:08d}"
        tmp = root / f".tmp-{name}"
        if self.world.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self._barrier()
        meta = {
            "run_id": self.plan.run_id, "step": self.state.step, "parent": None, **self.identity,
            "train_state": asdict(self.state), "config": result_config(self.cfg),
        }  # fmt: skip
        checkpoint.save(self.engine, tmp, self.world.rank, self.world.is_main, meta)
        self._barrier()
        final = root / name
        if self.world.is_main:
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            for old in checkpoint_dirs(self.run_dir)[: -self.cfg.train.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        self._barrier()
        log.info("checkpoint saved: %s", final)
        return final

    def resume(self) -> bool:
        """Load the newest checkpoint that loads on every rank, if any; one that fails (torn,
        truncated, missing a file, unsafe) is reported with its path, set aside, and the one before
        is tried. Returns whether the run resumed; raises CheckpointError when none loads, naming
        each one tried."""
        from scaling import checkpoint

        if self.world.is_main:  # saves that a kill interrupted: never complete, never read
            for torn in (self.run_dir / "checkpoints").glob(".tmp-*"):
                shutil.rmtree(torn, ignore_errors=True)
        self._barrier()
        ckpts = checkpoint_dirs(self.run_dir)
        failures: list[str] = []
        for path in reversed(ckpts):
            error = ""
            try:
                loaded = checkpoint.load(self.engine, path, self.world.rank, trust=self.cfg.train.trust_checkpoint)
            except checkpoint.CheckpointError as e:
                error = str(e)
            # Every rank must resume from the same step: a file torn on one rank fails them all.
            if _agree(self.world, bool(error)):
                failures.append(error or f"{path}: failed to load on another rank")
                log.error("checkpoint %s could not be loaded: %s; trying the one before", path,
                          error or "failed on another rank")  # fmt: skip
                self._barrier()
                if self.world.is_main:
                    checkpoint.set_aside(path)
                continue
            raise_if(identity_problems(f"checkpoint {path}", loaded.meta, self.identity, result_config(self.cfg)))
            self.state = TrainState(**{k: v for k, v in loaded.meta["train_state"].items()
                                       if k in TrainState.__dataclass_fields__})  # fmt: skip
            if self.state.world_size != self.world.world_size:
                log.warning("resuming a run saved with %d processes on %d", self.state.world_size,
                            self.world.world_size)  # fmt: skip
                self.state.world_size = self.world.world_size
            log.info("resumed from %s at step %d", path, self.state.step)
            return True
        if failures:
            raise checkpoint.CheckpointError(
                "no checkpoint could be loaded:\n" + "\n".join(f"  - {f}" for f in failures)
                + "\nmove the checkpoints folder aside to train from scratch"
            )
        return False

    # ---- evaluation --------------------------------------------------------------------------
    def _eval_batches(self, n: int) -> list:
        from scaling.data import eval_batches

        return eval_batches(self.manifest, num_samples=n, batch_size=self.plan.micro_batch,
                            rank=self.world.rank, world_size=self.world.world_size)

    def evaluate(self, batches: list) -> float:
        """Mean held-out loss per token (per image) over the fixed evaluation set."""
        import torch
        import torch.nn.functional as F

        t0 = time.perf_counter()

        self.engine.eval()
        total, count = 0.0, 0.0
        with torch.no_grad():
            for x, y in batches:
                logits = self._forward(x.to(self.device))
                loss = F.cross_entropy(logits.flatten(0, -2).float(), y.to(self.device).flatten(), reduction="sum")
                total += loss.item()
                count += y.numel()
        self.engine.train()
        total, count = self._all_reduce([total, count])
        self.seconds["eval_s"] += time.perf_counter() - t0
        return total / count

    def _forward(self, x: Any) -> Any:
        import torch

        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return self.engine(x)

    # ---- one optimizer step ---------------------------------------------------------------------
    def train_step(self, x: Any, y: Any) -> float:
        """Forward and backward over the micro batches of this rank's share of the global batch,
        then one optimizer step (DeepSpeed steps at the accumulation boundary). Returns the mean
        loss over the global batch."""
        import torch.nn.functional as F

        mb = self.plan.micro_batch
        loss_sum = 0.0
        for i in range(self.plan.accumulation):
            xb = x[i * mb : (i + 1) * mb].to(self.device)
            yb = y[i * mb : (i + 1) * mb].to(self.device)
            logits = self._forward(xb)  # (micro, seq, vocab) or (micro, classes)
            loss = F.cross_entropy(logits.flatten(0, -2).float(), yb.flatten())
            self.engine.backward(loss)
            self.engine.step()
            loss_sum += loss.item()
        local = loss_sum / self.plan.accumulation
        return self._all_reduce([local])[0] / self.world.world_size

    # ---- the loop ----------------------------------------------------------------------------
    def fit(self) -> dict:
        """Train from the current state to the end of the budget. Returns the result dict, or
        raises StopRequested after a checkpoint when a stop signal arrived."""
        from scaling.data import train_batches

        plan, t = self.plan, self.cfg.train
        start_time = time.time() - self.state.wall_time_s
        batches = train_batches(
            self.manifest, global_batch_size=t.global_batch_size, rank=self.world.rank,
            world_size=self.world.world_size, seed=t.seed, start_step=self.state.step,
            num_workers=self.cfg.data.num_workers, streams=getattr(self.cfg.data, "streams", None),
        )  # fmt: skip
        eval_set = self._eval_batches(plan.eval_samples)
        eval_every = plan.steps_for(t.eval_every_tokens)
        ckpt_every = plan.steps_for(t.checkpoint_every_tokens)
        last_eval: float | None = None
        window_start, window_tokens = time.time(), 0
        train_loss = float("nan")
        last_progress = 0.0

        def due(every: int | None) -> bool:
            return every is not None and self.state.step % every == 0

        log.info(
            "training %s: N=%s params (%s non-embedding), D=%s %s, C=%.3g FLOPs (%s), %d steps of %d, "
            "micro batch %d x %d accumulation x %d processes, ZeRO-%d",
            plan.run_id, f"{plan.params:,}", f"{plan.params_nonembedding:,}", f"{plan.tokens:,}",
            "tokens" if plan.family == "gpt" else "images", plan.flops, t.flops_convention, plan.steps,
            plan.tokens_per_step, plan.micro_batch, plan.accumulation, self.world.world_size, t.zero_stage,
        )  # fmt: skip
        while self.state.step < plan.steps:
            if self.lease is not None and self.lease.lost:
                raise ScalingError(
                    f"another trainer took over {self.run_dir} (this one did not refresh its lease in time); "
                    f"stopping without writing, so the two never share the directory"
                )
            x, y = next(batches)
            lr = self.scheduler.get_last_lr()[0]
            t0 = time.perf_counter()
            train_loss = self.train_step(x, y)
            self.seconds["steps_s"] += time.perf_counter() - t0
            self.state.step += 1
            window_tokens += plan.tokens_per_step
            if t.nan_check and not math.isfinite(train_loss):
                raise NonFiniteLoss(
                    f"loss is {train_loss} at step {self.state.step}; lower train.lr, raise warmup, or "
                    f"check the data"
                )
            last = self.state.step == plan.steps
            row: dict[str, Any] | None = None
            if due(eval_every) or last:
                elapsed = time.time() - window_start
                last_eval = self.evaluate(eval_set)
                window_start = time.time() - elapsed  # evaluation time is not training throughput
                row = {"eval_loss": last_eval}
            if row is not None or due(t.log_every_steps) or last:
                row = self._metrics_row(train_loss, lr, window_tokens, time.time() - window_start) | (row or {})
                window_start, window_tokens = time.time(), 0
                self.state.wall_time_s = time.time() - start_time
                if self.world.is_main:
                    append_metrics(self.metrics_path, row)
                    for sink in self.row_sinks:
                        sink(row)
                    if "eval_loss" in row or time.time() - last_progress > PROGRESS_EVERY_S:
                        self._log_progress(row)
                        last_progress = time.time()
            saved = False
            if due(ckpt_every) and not last:
                self.state.wall_time_s = time.time() - start_time
                self.save_checkpoint()
                saved = True
            # On the last step the run is about to finish: finishing beats a checkpoint that a
            # requeue would resume with nothing left to train.
            if not last and self._stop_agreed():
                self.state.wall_time_s = time.time() - start_time
                if not saved:
                    self.save_checkpoint()
                raise StopRequested()
        if last_eval is None:  # resumed from a checkpoint taken at the very end
            last_eval = self.evaluate(eval_set)
            rows = read_metrics(self.metrics_path)
            train_loss = rows[-1]["loss"] if rows else float("nan")
        self.state.wall_time_s = time.time() - start_time
        return {
            "status": "completed",
            "run_id": plan.run_id,
            "family": plan.family,
            "params": plan.params,
            "params_nonembedding": plan.params_nonembedding,
            "tokens": plan.tokens,
            "flops": plan.flops,
            "flops_convention": t.flops_convention,
            "train_loss": train_loss,
            "eval_loss": last_eval,
            "steps": self.state.step,
            "world_size": self.world.world_size,
            "zero_stage": t.zero_stage,
            "wall_time_s": round(self.state.wall_time_s, 3),
            "group": self.cfg.run.group,
        }

    def _metrics_row(self, loss: float, lr: float, tokens: int, seconds: float) -> dict:
        plan = self.plan
        tps = tokens / seconds if seconds > 0 else float("nan")
        row = {
            "step": self.state.step,
            "tokens": self.state.step * plan.tokens_per_step,
            "flops": self.state.step * plan.tokens_per_step * plan.flops_per_sample,
            "loss": loss,
            "lr": lr,
            "tokens_per_s": tps,
            "flops_per_s": tps * plan.flops_per_sample,
            "elapsed_s": round(self.state.wall_time_s, 3),
        }
        if self.peak:
            row["mfu"] = row["flops_per_s"] / (self.peak * self.world.world_size)
        return row

    def _log_progress(self, row: dict) -> None:
        steps = self.plan.steps
        remaining = (steps - row["step"]) * self.plan.tokens_per_step / row["tokens_per_s"] if row["tokens_per_s"] else 0
        extra = f" eval {row['eval_loss']:.4f}" if "eval_loss" in row else ""
        log.info(
            "step %d/%d (%.0f%%) loss %.4f%s lr %.2e %.0f tok/s ETA %.0fs",
            row["step"], steps, 100 * row["step"] / steps, row["loss"], extra, row["lr"], row["tokens_per_s"],
            remaining,
        )  # fmt: skip

    def _stop_agreed(self) -> bool:
        # Saving is collective, so every rank must agree to stop at the same step.
        agreed = _agree(self.world, self.stop_requested)
        if agreed:  # logged here, not in the signal handler: logging there can deadlock or lose the signal
            log.warning("received %s: saving a checkpoint and stopping", self.stop_signal or "a stop on another rank")
        return agreed


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


class StopRequested(Exception):
    """A stop signal arrived; a checkpoint has been saved."""


# ---- wandb ----------------------------------------------------------------------------------------
def scrub_secrets(obj: Any) -> Any:
    """Drop keys that look like credentials before a config is written or uploaded."""
    if isinstance(obj, dict):
        return {k: scrub_secrets(v) for k, v in obj.items() if not any(m in str(k).lower() for m in SECRET_MARKERS)}
    if isinstance(obj, list):
        return [scrub_secrets(v) for v in obj]
    return obj


# ---- entry points ---------------------------------------------------------------------------------
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


def _configure_device(cfg: TrainAppConfig, world: World) -> None:
    """Pick the accelerator before DeepSpeed is imported, and set CPU threads on purpose
    (torchrun's default of one thread per process halves a CPU run's speed)."""
    import torch

    use_cuda = cfg.train.device == "cuda" or (cfg.train.device == "auto" and torch.cuda.is_available())
    if cfg.train.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA device is visible; use train.device=auto or cpu")
    if not use_cuda:
        os.environ["DS_ACCELERATOR"] = "cpu"
        threads = cfg.train.num_threads or max(1, (os.cpu_count() or 1) // max(world.local_world_size, 1))
        torch.set_num_threads(threads)
    else:
        torch.cuda.set_device(world.local_rank)


class RunRefused(ConfigError):
    """This trainer may not use the run directory (held by another trainer, not writable, or
    holding another run). Nothing in the directory is written."""


def _agree(world: World, flag: bool) -> bool:
    """Whether `flag` is true on any rank (a collective: every rank calls it)."""
    if world.world_size == 1 or not _dist_ready():
        return flag
    import torch
    import torch.distributed as dist

    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


_PRIVATE_STORES: list[Path] = []


def _init_process_group(world: World) -> None:
    import deepspeed

    if _dist_ready():
        return
    backend = "nccl" if os.environ.get("DS_ACCELERATOR") != "cpu" else "gloo"
    if world.launcher == "single":
        # A file store private to this process: no TCP port to race other runs for. Removed in
        # train()'s teardown, not at exit: a warm worker trains many runs in one process.
        import tempfile

        store = Path(tempfile.mkdtemp(prefix="scaling-dist-")) / "store"
        _PRIVATE_STORES.append(store.parent)
        deepspeed.init_distributed(dist_backend=backend, init_method=f"file://{store}", rank=0, world_size=1)
    else:
        deepspeed.init_distributed(dist_backend=backend)


def _take_run_dir(run_dir: Path, world: World) -> RunLock | None:
    """The main rank takes the run directory's lease; every rank learns whether it got it."""
    lock, refusal = None, ""
    if world.is_main:
        try:
            lock = RunLock(run_dir).acquire()
            if lock.takeover:
                log.warning("took over the run directory's lease: %s", lock.takeover)
        except RunLocked as e:
            refusal = str(e)
    if _agree(world, bool(refusal)):
        raise RunRefused(refusal or f"run directory {run_dir} is in use by another trainer (see rank 0's log)")
    return lock


def _prior_result(run_dir: Path, world: World) -> dict | None:
    """The result of an earlier attempt, if any. A malformed result.json is reported and kept
    aside (never silently trained over); the run then resumes or starts as if it had none."""
    try:
        return load_result(run_dir)
    except RunFileError as e:
        _agree(world, False)  # every rank has read the file before the main rank moves it
        if world.is_main:
            aside = run_dir / f"result.unreadable-{time.strftime('%Y%m%d-%H%M%S')}.json"
            os.replace(run_dir / "result.json", aside)
            log.error("%s; kept aside as %s, and the run resumes from its checkpoints (if any)", e, aside.name)
        return None


def _recorded_config(run_dir: Path) -> dict | None:
    """The result-affecting config in the run's config.yaml (the record of what it trained with)."""
    from omegaconf import OmegaConf

    from scaling.config import from_dict

    try:
        raw = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"))
        return result_config(from_dict(raw))
    except Exception:  # noqa: BLE001 - an unreadable record cannot vouch for anything
        return None


def identity_problems(
    where: str, record: dict, identity: dict, current: dict, fallback: dict | None = None
) -> list[str]:
    """What makes `record` (a result.json or a checkpoint's state.json, found at `where`) another
    run than this one: its config hash or its data checksum, the keys that differ named from the
    record's own config (else `fallback`, the run's config.yaml). A record without them (an older
    version's) is judged elsewhere."""
    problems = []
    if record.get("config_hash", identity["config_hash"]) != identity["config_hash"]:
        diffs = config_differences(record.get("config") or fallback or {}, current)
        problems.append(
            f"{where} holds a run with another config: {'; '.join(diffs) or 'the config hash differs'}; "
            f"rerun with the config it was trained with, or pick a new run.dir"
        )
    if record.get("data_checksum", identity["data_checksum"]) != identity["data_checksum"]:
        problems.append(
            f"{where} holds a run trained on other data (data checksum {record['data_checksum']}, now "
            f"{identity['data_checksum']}); restore the data it was trained on, or pick a new run.dir"
        )
    return problems


def _check_same_run(run_dir: Path, cfg: TrainAppConfig, identity: dict, prior: dict | None) -> None:
    """A rerun or a resume is the same run or nothing: refuse (naming the keys that differ) when
    the directory's result or newest checkpoint records another config or other data."""
    from scaling.checkpoint import CheckpointError, read_meta

    current = result_config(cfg)
    records: list[tuple[str, dict]] = []
    if prior is not None and prior.get("status") == "completed":
        records.append(("result.json", prior))
    ckpts = checkpoint_dirs(run_dir)
    if ckpts:
        try:
            records.append((f"checkpoint {ckpts[-1].name}", read_meta(ckpts[-1])))
        except CheckpointError:
            pass  # judged when it is loaded (and fallen back from)
    recorded_yaml = _recorded_config(run_dir) if (ckpts or records) else None
    problems = []
    for where, rec in records:
        problems += identity_problems(f"{run_dir} ({where})", rec, identity, current, recorded_yaml)
    if not problems and recorded_yaml is not None and not any("config_hash" in r for _, r in records):
        diffs = config_differences(recorded_yaml, current)  # a run of an older version: its config.yaml
        if diffs:
            problems.append(
                f"{run_dir} holds a run with another config (config.yaml): {'; '.join(diffs)}; rerun with the "
                f"config it was trained with, or pick a new run.dir"
            )
    if problems:
        raise RunRefused(problems)


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
        _configure_device(cfg, world)
        _init_process_group(world)
        lock = _take_run_dir(run_dir, world)
        _log_to_file(run_dir, world)
        prior = _prior_result(run_dir, world)
        from scaling.data import prepare_dataset

        try:
            manifest = prepare_dataset(cfg.data)
        except DataError as e:  # missing or unreadable data is a config error: nothing has started
            raise ConfigError(str(e)) from None
        plan = plan_run(cfg, manifest, world)
        identity = {"config_hash": config_hash(plan.cfg), "data_checksum": data_checksum(manifest)}
        _check_same_run(run_dir, plan.cfg, identity, prior)
        if prior is not None and prior.get("status") == "completed":
            log.info("run %s already completed (eval loss %s); nothing to train", run_dir, prior.get("eval_loss"))
            return EXIT_COMPLETED
        if world.is_main:
            (run_dir / STOP_NAME).unlink(missing_ok=True)
            if prior is not None:  # a retry: keep the old error beside the run
                os.replace(run_dir / "result.json", run_dir / "result.previous-failure.json")
        epochs = manifest.epochs(plan.tokens)
        unique_units = manifest.unique_samples("train") * plan.samples_per_seq
        if epochs > 1:
            log.warning("this run repeats its training data: %.2f epochs over %s unique %s", epochs,
                        f"{unique_units:,}", "tokens" if plan.samples_per_seq > 1 else "samples")  # fmt: skip
        timing.mark("setup_s")  # torch, data preparation, counting
        trainer = Trainer(plan, manifest, world)
        trainer.stop_requested, trainer.stop_signal = stop["flag"], stop.get("signal", "")
        trainer.lease = lock
        timing.mark("deepspeed_init_s")  # DeepSpeed import, process group, model, engine
        resumed = trainer.resume()
        plan = trainer.plan
        if world.is_main:
            if resumed:
                truncate_metrics(run_dir / "metrics.jsonl", trainer.state.step)
            else:
                # config.yaml records what the run trains with: written when it starts, never after.
                write_atomic(run_dir / "config.yaml", _to_yaml(scrub_secrets(to_dict(plan.cfg))))
                (run_dir / "metrics.jsonl").unlink(missing_ok=True)  # rows of a run that never checkpointed
        mirror = None
        mode = wandb_mode(plan.cfg.logger.wandb.mode) if world.is_main else "disabled"
        if mode != "disabled":
            # The dashboard mirrors metrics.jsonl: every row written is also logged. It starts in
            # the background, so its start-up never delays the first step.
            mirror = WandbMirror(plan, trainer.state, scrub_secrets(to_dict(plan.cfg)), mode)
            trainer.row_sinks.append(mirror.log)
        timing.mark("resume_and_wandb_s")
        try:
            result = trainer.fit()
            timing.mark("train_s")  # the training loop, evaluation included
        finally:
            if mirror is not None:
                mirror.finish()
        timing.mark("finish_s")
        result |= {**identity, "run_id_rule": RUN_ID_RULE, "epochs": round(epochs, 4), "unique_tokens": unique_units}
        result["timing"] = timing.as_dict() | {k: round(v, 3) for k, v in trainer.seconds.items()}
        if world.is_main:
            write_json_atomic(run_dir / "result.json", result)
            log.info("completed %s: train loss %.4f, eval loss %.4f, %.1f s", plan.run_id, result["train_loss"],
                     result["eval_loss"], result["wall_time_s"])
        return EXIT_COMPLETED
    except StopRequested:
        step = trainer.state.step if trainer else 0
        if world.is_main:
            # torchrun reports any non-zero exit of a worker as its own exit 1: this record tells a
            # launcher that the stop was clean and the run should be requeued.
            write_json_atomic(run_dir / STOP_NAME, {"status": "stopped", "step": step, "signal": stop.get("signal")})
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
        if _dist_ready():
            # Left to interpreter shutdown, gloo's threads can abort the process ("terminate called
            # without an active exception") after the run has finished.
            import torch.distributed as dist

            try:
                dist.destroy_process_group()
            except Exception as e:  # noqa: BLE001 - the run's outcome is already recorded
                log.warning("could not tear down the process group: %s", e)
            _forget_deepspeed_groups()
        while _PRIVATE_STORES:
            shutil.rmtree(_PRIVATE_STORES.pop(), ignore_errors=True)


def _forget_deepspeed_groups() -> None:
    """Drop DeepSpeed's module-level handles on the process group just destroyed (its world and
    data-parallel groups, its communication backend), so that the next run in the same process (a
    warm worker, scaling/worker.py) builds them afresh instead of using dead ones."""
    import torch.distributed as dist
    from deepspeed import comm
    from deepspeed.utils import groups

    for name, value in list(vars(groups).items()):
        if name.startswith("_") and name.isupper() and isinstance(value, dict):
            value.clear()
        elif name.startswith("_") and name.isupper() and isinstance(value, dist.ProcessGroup):
            setattr(groups, name, None)
    groups.mpu = groups.mesh_device = None
    comm.comm.cdb = None


def _dist_ready() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def _write_failure(run_dir: Path, world: World, error: str, step: int | None) -> None:
    """Record a failure. Every failing rank tries, and the first error written wins: the rank
    that failed first has the cause, the others only see a peer disappear."""
    import json
    import tempfile

    try:
        if (load_result(run_dir) or {}).get("status") == "completed":
            return  # a finished run's record is never replaced by a later attempt's error
    except RunFileError:
        pass
    run_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=".result.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump({"status": "failed", "error": error, "step": step, "rank": world.rank}, f, indent=2)
    try:
        if world.world_size == 1:
            os.replace(tmp, run_dir / "result.json")
        else:
            os.link(tmp, run_dir / "result.json")  # atomic create-if-absent
    except FileExistsError:
        pass
    finally:
        Path(tmp).unlink(missing_ok=True)


def _to_yaml(obj: dict) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.create(obj))


def run_overrides(overrides: list[str], started: float | None = None) -> int:
    """Compose conf/train.yaml with Hydra overrides and train; for launchers that run the trainer
    in-process (submitit jobs, warm workers; `started` is when the run was handed over). Returns
    the exit code."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            dcfg = compose(config_name="train", overrides=list(overrides))
        cfg = to_dataclass(dcfg)
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
