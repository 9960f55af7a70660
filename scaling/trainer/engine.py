"""The model under DeepSpeed: built from the plan, stepped, and evaluated.

`Engine` owns the model, the AdamW optimizer, the LR schedule and the DeepSpeed engine that
wraps them; it knows nothing of the run directory, the loop or its callbacks. The loss is
`cross_entropy`, the one definition the training step, the evaluation and the micro-batch probe
(scaling/trainer/plan.py) share.
"""

from __future__ import annotations

from typing import Any

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
    """The run's model, optimizer and LR schedule inside a DeepSpeed engine (`ds`)."""

    def __init__(self, plan: RunPlan, world: World):
        import deepspeed
        import torch
        from deepspeed.accelerator import get_accelerator

        from scaling.checkpoint import make_safe_engine
        from scaling.models import build_model
        from scaling.schedule import lr_factor

        self.plan, self.world = plan, world
        t = plan.cfg.train
        accel = get_accelerator()
        self.device = torch.device(accel.device_name(world.local_rank))
        self.bf16 = t.precision == "bf16"
        if self.bf16 and not accel.is_bf16_supported():
            raise ConfigError("train.precision=bf16 is not supported on this device; use train.precision=fp32")
        self.peak_flops = None  # per device, for MFU; known for some GPUs
        if self.device.type == "cuda":
            from scaling.hardware import peak_flops

            self.peak_flops = peak_flops(torch.cuda.get_device_name(self.device))

        torch.manual_seed(t.seed)  # the same initial weights on every rank
        model = build_model(plan.cfg.model)
        model.activation_checkpointing = t.activation_checkpointing
        if t.compile:
            # In place (nn.Module.compile), so parameter names, and with them checkpoints, are the
            # same as an uncompiled run's; compilation happens at the first forward.
            model.compile()
        optimizer = torch.optim.AdamW(
            param_groups(model, t.weight_decay, plan.cfg.model, t.lr), lr=t.lr, betas=(t.beta1, t.beta2), eps=1e-8,
            foreach=True,  # PyTorch picks the per-tensor loop on CPU by default, which is slower
        )
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: lr_factor(
                step, plan.steps, schedule=t.schedule, warmup_steps=plan.warmup_steps,
                decay_fraction=t.decay_fraction, min_lr_ratio=t.min_lr_ratio,
            ),
        )  # fmt: skip
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
    def lr(self) -> float:
        """The learning rate of the next optimizer step."""
        return self.scheduler.get_last_lr()[0]

    def forward(self, x: Any) -> Any:
        import torch

        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return self.ds(x)

    def train_step(self, x: Any, y: Any) -> float:
        """Forward and backward over the micro batches of this rank's share of the global batch,
        then one optimizer step (DeepSpeed steps at the accumulation boundary). Returns the mean
        loss over the global batch."""
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

    def evaluate(self, batches: list) -> float:
        """Mean held-out loss per token (per image) over the fixed evaluation set."""
        import torch

        self.ds.eval()
        total, count = 0.0, 0.0
        with torch.no_grad():
            for x, y in batches:
                total += cross_entropy(self.forward(x.to(self.device)), y.to(self.device), reduction="sum").item()
                count += y.numel()
        self.ds.train()
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
