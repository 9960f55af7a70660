"""The process around a run: the device and CPU threads, the process group, the one collective the
run directory's checks need (`agree`), and the teardown that lets a warm worker (scaling/worker.py)
train the next run in the same process as if it were a fresh one.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from scaling.config import TrainAppConfig
from scaling.distributed import World
from scaling.errors import ConfigError

log = logging.getLogger("scaling.train")

_PRIVATE_STORES: list[Path] = []  # the file stores of one-process runs, removed at teardown


def configure_device(cfg: TrainAppConfig, world: World) -> None:
    """Pick the accelerator before DeepSpeed is imported, and set CPU threads on purpose
    (torchrun's default of one thread per process halves a CPU run's speed)."""
    import torch

    from scaling.trainer.plan import uses_cuda

    if cfg.train.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA device is visible; use train.device=auto or cpu")
    if not uses_cuda(cfg):
        os.environ["DS_ACCELERATOR"] = "cpu"
        threads = cfg.train.num_threads or max(1, (os.cpu_count() or 1) // max(world.local_world_size, 1))
        torch.set_num_threads(threads)
    else:
        torch.cuda.set_device(world.local_rank)


def init_process_group(world: World) -> None:
    import deepspeed

    if dist_ready():
        return
    backend = "nccl" if os.environ.get("DS_ACCELERATOR") != "cpu" else "gloo"
    if world.launcher == "single":
        # A file store private to this process: no TCP port to race other runs for. Removed in
        # `teardown`, not at exit: a warm worker trains many runs in one process.
        store = Path(tempfile.mkdtemp(prefix="scaling-dist-")) / "store"
        _PRIVATE_STORES.append(store.parent)
        deepspeed.init_distributed(dist_backend=backend, init_method=f"file://{store}", rank=0, world_size=1)
    else:
        deepspeed.init_distributed(dist_backend=backend)


def dist_ready() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def agree(world: World, flag: bool) -> bool:
    """Whether `flag` is true on any rank (a collective: every rank calls it)."""
    if world.world_size == 1 or not dist_ready():
        return flag
    import torch
    import torch.distributed as dist

    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def teardown() -> None:
    """Destroy the process group and forget DeepSpeed's handles on it."""
    if dist_ready():
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
