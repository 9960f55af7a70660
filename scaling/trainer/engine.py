"""The model under a training engine: built from the plan, stepped, and evaluated.

An engine owns the model, the AdamW optimizer and the LR schedule, and wraps them for data
parallelism; it knows nothing of the run directory, the loop or its callbacks. `train.engine`
picks one (`ENGINES`):

    deepspeed   DeepSpeed (`DeepSpeedEngine`): ZeRO stages 0-3, its config generated from the
                typed config (`deepspeed_config`)
    fsdp2       PyTorch's FSDP2 (`torch.distributed.fsdp.fully_shard`, scaling/trainer/fsdp2.py):
                parameters, gradients and optimizer state sharded over the processes, as ZeRO-3

Both build the same model from the same seed, the same AdamW groups and the same LR schedule,
step on the same batches, and save through the same checkpoint format (scaling/checkpoint.py), so
a run's loss curve does not depend on the engine beyond float rounding. The loss is
`cross_entropy`, the one definition the training step, the evaluation and the micro-batch probe
(scaling/trainer/plan.py) share.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from scaling.distributed import World
from scaling.errors import ConfigError
from scaling.trainer.plan import RunPlan


def cross_entropy(logits: Any, targets: Any, reduction: str = "mean") -> Any:
    """Cross-entropy in nats over every position: logits (..., classes), targets (...). Computed
    in fp32 whatever the autocast precision, so bf16 runs compare with fp32 ones."""
    import torch.nn.functional as F

    return F.cross_entropy(logits.flatten(0, -2).float(), targets.flatten(), reduction=reduction)


def deepspeed_config(plan: RunPlan, bf16: bool) -> dict:
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


def param_groups(model: Any, weight_decay: float, cfg: Any = None, lr: float | None = None) -> list[dict]:
    """AdamW groups, from the model's family (`Family.param_groups`): weight decay on matrices
    only; under muP one group per role, each with its LR multiplier. `cfg` defaults to the
    model's own config."""
    from scaling.families import family_of

    cfg = cfg if cfg is not None else model.cfg
    return family_of(cfg).param_groups(model, cfg, lr, weight_decay)


class Engine:
    """What every engine shares: the device, the precision, the model built from the run's seed,
    its AdamW optimizer and LR schedule, evaluation and the collectives the loop needs. A
    subclass wraps the model (`_wrap`), runs the optimizer step (`train_step`) and saves and
    loads its state (`save_state`, `load_state`)."""

    name = ""

    def __init__(self, plan: RunPlan, world: World, device: Any, bf16_supported: bool):
        import torch

        self.plan, self.world, self.device = plan, world, device
        t = plan.cfg.train
        self.bf16 = t.precision == "bf16"
        if self.bf16 and not bf16_supported:
            raise ConfigError("train.precision=bf16 is not supported on this device; use train.precision=fp32")
        self.peak_flops = None  # per device, for MFU; known for some GPUs
        if self.device.type == "cuda":
            from scaling.hardware import peak_flops

            self.peak_flops = peak_flops(torch.cuda.get_device_name(self.device))

    def _build_model(self) -> Any:
        import torch

        from scaling.models import build_model

        t = self.plan.cfg.train
        torch.manual_seed(t.seed)  # the same initial weights on every rank
        model = build_model(self.plan.cfg.model)
        model.activation_checkpointing = t.activation_checkpointing
        if t.compile:
            # In place (nn.Module.compile), so parameter names, and with them checkpoints, are the
            # same as an uncompiled run's; compilation happens at the first forward.
            model.compile()
        return model

    def _optimizer(self, model: Any) -> tuple[Any, Any]:
        """AdamW over the family's groups and the LR schedule, for `model` as the engine holds it
        (FSDP2 builds them over its sharded parameters)."""
        import torch

        from scaling.schedule import lr_factor

        plan, t = self.plan, self.plan.cfg.train
        optimizer = torch.optim.AdamW(
            param_groups(model, t.weight_decay, plan.cfg.model, t.lr), lr=t.lr, betas=(t.beta1, t.beta2), eps=1e-8,
            foreach=True,  # PyTorch picks the per-tensor loop on CPU by default, which is slower
        )
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: lr_factor(
                step, plan.steps, schedule=t.schedule, warmup_steps=plan.warmup_steps,
                decay_fraction=t.decay_fraction, min_lr_ratio=t.min_lr_ratio, decay_shape=t.decay_shape,
            ),
        )  # fmt: skip
        return optimizer, schedule

    @property
    def module(self) -> Any:
        """What the forward pass calls (the wrapped model)."""
        raise NotImplementedError

    def restart_schedule(self, step: int) -> None:
        """Set the LR schedule to `step` under this run's own schedule. A branch loads its trunk's
        scheduler state, whose LR is the trunk's for that step; the branch's update at `step` is
        already part of its decay."""
        sched = self.scheduler
        sched.last_epoch = step
        lrs = [base * fn(step) for base, fn in zip(sched.base_lrs, sched.lr_lambdas)]
        for group, lr in zip(sched.optimizer.param_groups, lrs):
            group["lr"] = lr
        sched._last_lr = lrs

    @property
    def lr(self) -> float:
        """The learning rate of the next optimizer step."""
        return self.scheduler.get_last_lr()[0]

    def describe(self) -> str:
        """The engine and its sharding, for the log."""
        return self.name

    def forward(self, x: Any) -> Any:
        import torch

        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return self.module(x)

    def train_step(self, x: Any, y: Any) -> float:
        """Forward and backward over the micro batches of this rank's share of the global batch,
        then one optimizer step. Returns the mean loss over the global batch."""
        raise NotImplementedError

    def save_state(self, folder: Path) -> None:
        """Write the model, optimizer and LR schedule into checkpoint `folder` (every rank calls it)."""
        raise NotImplementedError

    def load_state(self, folder: Path, trust: bool) -> dict | None:
        """Restore the model, optimizer and LR schedule from checkpoint `folder` (every rank calls
        it); returns the client state of a legacy DeepSpeed checkpoint, else None. Raises
        CheckpointError naming the file at fault."""
        raise NotImplementedError

    def evaluate(self, batches: list) -> float:
        """Mean held-out loss per token (per image) over the fixed evaluation set."""
        import torch

        self.module.eval()
        total, count = 0.0, 0.0
        with torch.no_grad():
            for x, y in batches:
                total += cross_entropy(self.forward(x.to(self.device)), y.to(self.device), reduction="sum").item()
                count += y.numel()
        self.module.train()
        total, count = self.all_reduce([total, count])
        return total / count

    def all_reduce(self, values: list[float]) -> list[float]:
        """Sums over ranks."""
        import torch
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.world.world_size > 1:
            dist.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        import torch.distributed as dist

        if self.world.world_size > 1:
            dist.barrier()


class DeepSpeedEngine(Engine):
    """The run's model, optimizer and LR schedule inside a DeepSpeed engine (`ds`)."""

    name = "deepspeed"

    def __init__(self, plan: RunPlan, world: World):
        import deepspeed
        import torch
        from deepspeed.accelerator import get_accelerator

        from scaling.checkpoint import make_safe_engine

        accel = get_accelerator()
        super().__init__(plan, world, torch.device(accel.device_name(world.local_rank)), accel.is_bf16_supported())
        t = plan.cfg.train
        model = self._build_model()
        optimizer, schedule = self._optimizer(model)
        self.ds, _, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=schedule, config=deepspeed_config(plan, self.bf16),
        )  # fmt: skip
        # Checkpoints are read with torch.load(weights_only=True): nothing in a run directory is
        # unpickled (scaling/checkpoint.py).
        self.ds.checkpoint_engine = make_safe_engine(self.ds._config, trust=t.trust_checkpoint)
        if world.world_size == 1 and t.zero_stage == 0:
            # Nothing to reduce across one process; DeepSpeed would still flatten and copy every
            # gradient each step.
            self.ds.enable_backward_allreduce = False

    @property
    def module(self) -> Any:
        return self.ds

    def describe(self) -> str:
        return f"DeepSpeed ZeRO-{self.plan.cfg.train.zero_stage}"

    def train_step(self, x: Any, y: Any) -> float:
        # DeepSpeed scales each micro batch's loss by 1/accumulation and steps at the boundary.
        mb = self.plan.micro_batch
        loss_sum = 0.0
        for i in range(self.plan.accumulation):
            xb = x[i * mb : (i + 1) * mb].to(self.device)
            yb = y[i * mb : (i + 1) * mb].to(self.device)
            loss = cross_entropy(self.forward(xb), yb)  # logits (micro, seq, vocab) or (micro, classes)
            self.ds.backward(loss)
            self.ds.step()
            loss_sum += loss.item()
        local = loss_sum / self.plan.accumulation
        return self.all_reduce([local])[0] / self.world.world_size

    def save_state(self, folder: Path) -> None:
        from scaling.checkpoint import save_deepspeed_state

        save_deepspeed_state(self.ds, folder)

    def load_state(self, folder: Path, trust: bool) -> dict | None:
        from scaling.checkpoint import load_deepspeed_state

        return load_deepspeed_state(self.ds, folder)


def _fsdp2() -> type:
    from scaling.trainer.fsdp2 import FSDP2Engine

    return FSDP2Engine


# train.engine -> the engine's class (FSDP2's module is imported only when picked).
ENGINES: dict[str, Callable[[], type]] = {"deepspeed": lambda: DeepSpeedEngine, "fsdp": _fsdp2}


def build_engine(plan: RunPlan, world: World) -> Engine:
    """The engine `train.engine` names, built for this run."""
    return ENGINES[plan.cfg.train.engine]()(plan, world)
