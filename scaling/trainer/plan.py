"""What a run will do, derived from its config and its data before the engine is built: counts,
steps, the batch arithmetic, and the micro batch.

The micro batch is decided here and nowhere else (`micro_batch`). The planner (launch/plan.py)
never sets it; it passes `train.micro_batch_size` through to the trainer, and the engine, the
checkpoints and the log all read `RunPlan.micro_batch`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from scaling.config import TrainAppConfig
from scaling.distributed import World
from scaling.errors import ConfigError, ScalingError

log = logging.getLogger("scaling.train")

PROBE_SAMPLES = 8  # validation samples the GPU probe repeats into micro batches
PROBE_HEADROOM = 0.85  # the probe allocates no optimizer state: keep 15% of the largest fit free for it


@dataclass(frozen=True)
class RunPlan:
    """Everything derived from the config and the data before the engine is built."""

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


def plan_run(cfg: TrainAppConfig, manifest: Any, world: World) -> RunPlan:
    """Fill the model from the data, count it, check the batch and budget arithmetic, and decide
    the micro batch. Raises ConfigError naming every problem. Builds no engine (on a GPU with
    `train.micro_batch_size=auto`, a throwaway model to probe the memory)."""
    from scaling.counting import count_params, flops_per_sample
    from scaling.data import apply_manifest
    from scaling.families import family_of

    model_cfg = apply_manifest(cfg.model, manifest)
    cfg = replace(cfg, model=model_cfg)
    t = cfg.train
    problems = []
    family = family_of(model_cfg)
    samples_per_seq = family.tokens_per_sample(model_cfg)
    per_sample = flops_per_sample(model_cfg, t.flops_convention)
    counts = count_params(model_cfg)
    budget = t.tokens if t.tokens is not None else t.flops / per_sample
    tokens_per_step = t.global_batch_size * samples_per_seq
    steps = int(budget // tokens_per_step)
    if steps < 1:
        unit = family.unit
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
    if t.micro_batch_size != "auto" and per_rank and per_rank % int(t.micro_batch_size):
        problems.append(
            f"train.micro_batch_size={t.micro_batch_size} does not divide the per-rank batch {per_rank} "
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
    micro = micro_batch(cfg, per_rank, manifest, world)
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


def uses_cuda(cfg: TrainAppConfig) -> bool:
    """Whether the run trains on a GPU: `train.device=cuda`, or `auto` where one is visible."""
    import torch

    return cfg.train.device == "cuda" or (cfg.train.device == "auto" and torch.cuda.is_available())


def micro_batch(cfg: TrainAppConfig, per_rank: int, manifest: Any, world: World) -> int:
    """The micro batch, decided once: `train.micro_batch_size` when it is a number; for auto, the
    whole rank batch on a CPU (accumulation only costs time there), and on a GPU the largest
    divisor of the rank batch that fits (`pick_micro_batch`), the same on every rank."""
    if cfg.train.micro_batch_size != "auto":
        return int(cfg.train.micro_batch_size)
    if not uses_cuda(cfg):
        return per_rank
    import torch

    from scaling.data import eval_batches

    device = torch.device("cuda", world.local_rank)
    sample = eval_batches(manifest, num_samples=PROBE_SAMPLES, batch_size=per_rank, rank=world.rank,
                          world_size=world.world_size)[0]  # fmt: skip
    micro = pick_micro_batch(cfg, per_rank, device, sample)
    if world.world_size > 1:  # GPUs with less free memory decide: DeepSpeed's configs must agree
        import torch.distributed as dist

        agreed = torch.tensor([micro], device=device)
        dist.all_reduce(agreed, op=dist.ReduceOp.MIN)
        micro = int(agreed.item())
        while per_rank % micro:
            micro -= 1
    log.info("micro batch auto: %d (accumulation %d)", micro, per_rank // micro)
    return micro


def pick_micro_batch(cfg: TrainAppConfig, per_rank: int, device: Any, sample: tuple) -> int:
    """Largest divisor of the per-rank batch whose forward and backward fit on the GPU, found by
    trying from the largest down (accelerate's OOM test) on a throwaway model of the run's config.
    Gradient accumulation then keeps the global batch."""
    import torch
    from accelerate.utils.memory import release_memory, should_reduce_batch_size

    from scaling.models import build_model
    from scaling.trainer.engine import cross_entropy

    model = build_model(cfg.model).to(device)
    model.activation_checkpointing = cfg.train.activation_checkpointing
    x, y = sample
    try:
        for mb in [d for d in range(per_rank, 0, -1) if per_rank % d == 0]:
            try:
                reps = math.ceil(mb / x.shape[0])
                xb = x.repeat(reps, *[1] * (x.ndim - 1))[:mb].to(device)
                yb = y.repeat(reps, *[1] * (y.ndim - 1))[:mb].to(device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.train.precision == "bf16"):
                    loss = cross_entropy(model(xb), yb)
                loss.backward()
                model.zero_grad(set_to_none=True)
                release_memory()
                fits = max(1, int(mb * PROBE_HEADROOM))
                return max(d for d in range(1, mb + 1) if per_rank % d == 0 and d <= fits)
            except Exception as e:  # noqa: BLE001 - accelerate decides which errors mean out of memory
                model.zero_grad(set_to_none=True)
                release_memory()
                if not should_reduce_batch_size(e):
                    raise
        raise ScalingError("not even a micro batch of 1 fits on this device; use ZeRO-3 or a smaller model")
    finally:
        del model
        release_memory()
