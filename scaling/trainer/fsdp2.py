"""The model under PyTorch's FSDP2 (`train.engine=fsdp`): `fully_shard` on each repeated block and
on the whole model, so that parameters, gradients and AdamW's moments are cut across the processes
(as DeepSpeed's ZeRO-3), and a block's parameters are gathered only while it computes.

The step is DeepSpeed's at ZeRO-0, written out: each micro batch's loss scaled by 1/accumulation,
gradients averaged over the ranks once per optimizer step (FSDP2's reduce-scatter), the global
gradient norm clipped to `train.grad_clip`, then AdamW and the LR schedule. In bf16 the shards stay
fp32 (the master weights) and are gathered as bf16 for compute, with gradients reduced in fp32.
Checkpoints hold whole states (scaling/checkpoint.py), so they load on any number of processes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scaling.distributed import World
from scaling.trainer.engine import Engine, cross_entropy
from scaling.trainer.plan import RunPlan, uses_cuda


def repeated_blocks(model: Any) -> list[Any]:
    """The modules FSDP2 shards one by one: every member of an `nn.ModuleList` (a transformer's
    blocks, a CNN's stages), whatever the family. The rest (embeddings, heads, norms) is sharded
    with the root, so tied weights stay in one group."""
    import torch.nn as nn

    return [m for lst in model.modules() if isinstance(lst, nn.ModuleList) for m in lst]


class FSDP2Engine(Engine):
    """The run's model sharded by `fully_shard`, its AdamW optimizer over the shards, and the LR schedule."""

    name = "fsdp"

    def __init__(self, plan: RunPlan, world: World):
        import torch
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        if uses_cuda(plan.cfg):
            device, bf16_ok = torch.device("cuda", world.local_rank), torch.cuda.is_bf16_supported()
        else:
            device, bf16_ok = torch.device("cpu"), True
        super().__init__(plan, world, device, bf16_ok)
        model = self._build_model().to(self.device)
        mesh = init_device_mesh(self.device.type, (world.world_size,))
        if self.bf16:
            policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        else:
            policy = MixedPrecisionPolicy()
        for block in repeated_blocks(model):
            fully_shard(block, mesh=mesh, mp_policy=policy)
        fully_shard(model, mesh=mesh, mp_policy=policy)
        self.model = model
        # Built over the sharded parameters (DTensors): each rank's AdamW updates its own shard.
        self.optimizer, self.scheduler = self._optimizer(model)

    @property
    def module(self) -> Any:
        return self.model

    def describe(self) -> str:
        return "FSDP2"

    def train_step(self, x: Any, y: Any) -> float:
        import torch

        mb, accumulation = self.plan.micro_batch, self.plan.accumulation
        loss_sum = 0.0
        for i in range(accumulation):
            # Gradients accumulate unreduced on each rank; the last micro batch reduces them once.
            self.model.set_requires_gradient_sync(i == accumulation - 1)
            xb = x[i * mb : (i + 1) * mb].to(self.device)
            yb = y[i * mb : (i + 1) * mb].to(self.device)
            loss = cross_entropy(self.forward(xb), yb)  # logits (micro, seq, vocab) or (micro, classes)
            (loss / accumulation).backward()
            loss_sum += loss.item()
        clip = self.plan.cfg.train.grad_clip
        if clip > 0:  # 0 turns clipping off, as DeepSpeed's gradient_clipping
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)  # the norm over every shard
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        local = loss_sum / accumulation
        return self.all_reduce([local])[0] / self.world.world_size

    def save_state(self, folder: Path) -> None:
        from scaling.checkpoint import save_fsdp2_state

        save_fsdp2_state(self.model, self.optimizer, self.scheduler, folder, self.world.is_main)

    def load_state(self, folder: Path, trust: bool) -> dict | None:
        # FSDP2 checkpoints were never pickled: `trust` (for older DeepSpeed ones) changes nothing.
        from scaling.checkpoint import load_fsdp2_state

        load_fsdp2_state(self.model, self.optimizer, self.scheduler, folder)
        return None
