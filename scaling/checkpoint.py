"""The project's checkpoint format, and the only place that reads one. Nothing is unpickled.

    RUN_DIR/checkpoints/stepNNNNNNNN/
        state.json          format, provenance (run id, step, config hash, data checksum, parent),
                            the trainer state and the result-affecting config; written last by rank 0
        rng_rankR.json      each rank's RNG states (Python, NumPy, torch, CUDA) as plain numbers
        state/              the engine's model, optimizer and LR-schedule states (tensors and plain
                            types in torch's zip format), as the run's `train.engine` writes them:
            DeepSpeed:      its own files (`*model_states.pt`, and `*optim_states.pt` at ZeRO 1-3)
            FSDP2:          fsdp2_model_states.pt   {"module": the full fp32 state dict}
                            fsdp2_optim_states.pt   {"optimizer": the full optimizer state dict,
                                                     keyed by parameter name, "lr_scheduler": ...}

state.json records the engine (`engine`; absent: DeepSpeed). FSDP2's state is gathered whole to
rank 0 when saved and cut again for each rank when loaded, so its checkpoints load on any number of
processes, and its weights are read without knowing how they were sharded. (torch's own sharded
format, torch.distributed.checkpoint, keeps its metadata as a pickle, which this format never
reads; a whole state per file is what a study's model sizes allow.)

Loading is safe by construction: JSON is parsed, and DeepSpeed's files are read by
`SafeCheckpointEngine`, a DeepSpeed checkpoint engine whose `load` is `torch.load(weights_only=True)`
with three plain DeepSpeed types allow-listed (`SAFE_GLOBALS`); FSDP2's files hold only tensors and
plain data and are read the same way. A file that needs anything else (a crafted pickle, or a
checkpoint of an older version of this project) is refused. A checkpoint the user trusts can still
be loaded with `train.trust_checkpoint=true`, which reads it as before (arbitrary code, so off by
default); the next checkpoint the run writes is in this format.

Later features (cooldown branches, resuming on another world size) read checkpoints through this
module, and record the run they fork from in `parent`.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from scaling.errors import ScalingError
from scaling.rundir import write_json_atomic

log = logging.getLogger("scaling.checkpoint")

FORMAT = "scaling-checkpoint/1"
STATE_NAME = "state.json"
ENGINE_TAG = "state"
FSDP2_MODEL = "fsdp2_model_states.pt"
FSDP2_OPTIM = "fsdp2_optim_states.pt"
DEFAULT_ENGINE = "deepspeed"  # the engine of a state.json that names none (written before FSDP2)
TRUST_HINT = (
    "if you trust this checkpoint (you or your job wrote it), resume once with train.trust_checkpoint=true; "
    "the checkpoints written after that are in the safe format"
)


class CheckpointError(ScalingError):
    """A checkpoint file is missing, torn, corrupt or unsafe; the message names the file."""


_RANK = re.compile(r"zero_pp_rank_(\d+)_")


def zero_rank(path: Path) -> int:
    """The rank that wrote a DeepSpeed ZeRO file (`zero_pp_rank_R_...`); 0 for a file all ranks share."""
    match = _RANK.search(path.name)
    return int(match.group(1)) if match else 0


def safe_globals() -> list:
    """The only non-builtin types a DeepSpeed checkpoint file may contain: plain records with no
    code of their own (checked on ZeRO 0-3 checkpoints)."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address]


def torch_load(path: str | Path, map_location: Any = None, trust: bool = False, mmap: bool = False) -> Any:
    """torch.load that refuses arbitrary objects, with errors that name the file. `mmap`: tensors
    stay in the file's pages (shared by every process of a host that reads it) until used."""
    import pickle

    import torch

    try:
        if trust:
            return torch.load(path, map_location=map_location, weights_only=False, mmap=mmap)
        with torch.serialization.safe_globals(safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    except pickle.UnpicklingError as e:
        first = str(e).split("\n")
        detail = next((line.strip() for line in first if "Unsupported" in line or "GLOBAL" in line), first[0])
        raise CheckpointError(f"{path} holds objects other than tensors and plain data ({detail}); {TRUST_HINT}") from None
    except (RuntimeError, EOFError, OSError, ValueError, IndexError) as e:  # IndexError: a torn pickle stream
        raise CheckpointError(f"{path} is torn or corrupt ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None


def make_safe_engine(config_params: Any = None, trust: bool = False) -> Any:
    """A DeepSpeed checkpoint engine that saves as DeepSpeed does and loads through `torch_load`."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    class SafeCheckpointEngine(TorchCheckpointEngine):
        def load(self, path: str, map_location: Any = None) -> Any:
            return torch_load(path, map_location=map_location, trust=trust)

    return SafeCheckpointEngine(config_params)


# ---- RNG state as plain numbers ---------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    import numpy as np
    import torch

    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


# ---- save and load ------------------------------------------------------------------------------
@dataclass
class Loaded:
    """What a checkpoint restored besides the engine's own state."""

    path: Path
    meta: dict[str, Any]  # state.json: provenance, "train_state" and "config"


def save(engine: Any, folder: Path, rank: int, is_main: bool, meta: dict[str, Any]) -> None:
    """Write this rank's share of a checkpoint into `folder` (every rank calls it). `engine` is the
    trainer's (scaling/trainer/engine.py), which writes its own state into `folder/state`. The
    caller renames the folder into place once all ranks are done."""
    engine.save_state(folder)
    write_json_atomic(folder / f"rng_rank{rank}.json", rng_state())
    if is_main:
        write_json_atomic(folder / STATE_NAME, {"format": FORMAT, "engine": engine.name, **meta})


def save_deepspeed_state(ds: Any, folder: Path) -> None:
    """A DeepSpeed engine's state, as DeepSpeed writes it, into `folder/state` (every rank)."""
    ds.save_checkpoint(str(folder), tag=ENGINE_TAG, client_state={}, save_latest=False)


def save_fsdp2_state(model: Any, optimizer: Any, scheduler: Any, folder: Path, is_main: bool) -> None:
    """An FSDP2 model's state, gathered whole (a collective: every rank calls it) and written by
    the main rank into `folder/state`."""
    import torch
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
    )  # fmt: skip

    # Gathered to CPU on rank 0 only: the other ranks get empty dicts.
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    module = get_model_state_dict(model, options=options)
    optim = get_optimizer_state_dict(model, optimizer, options=options)
    if is_main:
        (folder / ENGINE_TAG).mkdir(parents=True, exist_ok=True)
        torch.save({"module": module}, folder / ENGINE_TAG / FSDP2_MODEL)
        torch.save({"optimizer": optim, "lr_scheduler": scheduler.state_dict()}, folder / ENGINE_TAG / FSDP2_OPTIM)


def read_meta(folder: Path) -> dict[str, Any]:
    path = folder / STATE_NAME
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(
            f"{path} is missing: the checkpoint is torn, or was written by an older version of this project "
            f"(pickled state); {TRUST_HINT}"
        ) from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not readable JSON ({e})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT or not isinstance(raw.get("train_state"), dict):
        raise CheckpointError(f"{path} is not a {FORMAT} state file (format {raw.get('format') if isinstance(raw, dict) else raw!r})")
    return raw


def load(engine: Any, folder: Path, rank: int, trust: bool = False) -> Loaded:
    """Restore the engine (model, optimizer, LR schedule; `engine` is the trainer's) and this
    rank's RNG from `folder`. Raises CheckpointError naming the file at fault.

    A ZeRO-1/2/3 checkpoint saved by another number of processes is loaded from its resharded
    copy (`scaling.reshard.prepare` builds it first); an FSDP2 one holds whole states, which any
    number of processes loads. Their RNG files then do not map one to one: a rank the saving run
    had restores its own, a new rank restores rank 0's. Nothing depends on them but the order of
    Python/NumPy/torch draws (the data order is a function of the seed and the step, and the
    models have no dropout)."""
    try:
        meta = read_meta(folder)
    except CheckpointError:
        if not trust:
            raise
        meta = {}  # an older checkpoint the user trusts: its state is in DeepSpeed's client state
    saved_by = meta.get("engine", DEFAULT_ENGINE)
    if saved_by != engine.name:
        raise CheckpointError(f"{folder / STATE_NAME} was saved by train.engine={saved_by}; this run has "
                              f"train.engine={engine.name}: resume it with train.engine={saved_by}")  # fmt: skip
    client = engine.load_state(folder, trust)
    if not meta:
        meta = {"format": "legacy", "train_state": dict((client or {}).get("train_state") or {})}
    rng = folder / f"rng_rank{rank}.json"
    saved_world = (meta.get("train_state") or {}).get("world_size")
    if isinstance(saved_world, int) and rank >= saved_world:  # a rank the saving run did not have
        rng = folder / "rng_rank0.json"
    legacy_rng = folder / f"rng_rank{rank}.pt"
    if rng.exists():
        try:
            set_rng_state(json.loads(rng.read_text()))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{rng} is not a readable RNG state ({type(e).__name__}: {e})") from None
    elif trust and legacy_rng.exists():
        _set_legacy_rng(torch_load(legacy_rng, trust=True))
    else:
        raise CheckpointError(f"{rng} is missing")
    return Loaded(path=folder, meta=meta)


def load_deepspeed_state(ds: Any, folder: Path) -> dict:
    """Load a DeepSpeed engine's state (its files read through `SafeCheckpointEngine`); returns
    DeepSpeed's client state."""
    from scaling.reshard import engine_folder

    source = engine_folder(folder, ds.dp_world_size)
    try:
        _, client = ds.load_checkpoint(str(source), tag=ENGINE_TAG, load_optimizer_states=True,
                                       load_lr_scheduler_states=True)  # fmt: skip
    except CheckpointError:
        raise
    except (AssertionError, FileNotFoundError, RuntimeError, KeyError, ValueError) as e:
        raise CheckpointError(f"{source / ENGINE_TAG} could not be loaded ({type(e).__name__}: {e})") from None
    if client is None:
        raise CheckpointError(f"{source / ENGINE_TAG} holds no DeepSpeed checkpoint (a model states file is missing)")
    return client


def read_fsdp2_module(folder: Path, mmap: bool = False) -> dict[str, Any]:
    """The full model state dict of an FSDP2 checkpoint `folder` (parameter name -> tensor)."""
    path = folder / ENGINE_TAG / FSDP2_MODEL
    raw = torch_load(path, map_location="cpu", mmap=mmap)
    if not isinstance(raw, dict) or not isinstance(raw.get("module"), dict):
        raise CheckpointError(f"{path} is not an FSDP2 model states file (no module)")
    return raw["module"]


def load_fsdp2_state(model: Any, optimizer: Any, scheduler: Any, folder: Path) -> None:
    """Load an FSDP2 checkpoint's whole states into `model` (sharded by `fully_shard`), its
    optimizer and LR schedule. Every rank reads the same files (memory-mapped: one copy in the
    host's page cache) and keeps its own shard, so a file at fault fails every rank alike."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions, set_model_state_dict, set_optimizer_state_dict,
    )  # fmt: skip

    module = read_fsdp2_module(folder, mmap=True)
    path = folder / ENGINE_TAG / FSDP2_OPTIM
    rest = torch_load(path, map_location="cpu", mmap=True)
    if not isinstance(rest, dict) or not isinstance(rest.get("optimizer"), dict) or "lr_scheduler" not in rest:
        raise CheckpointError(f"{path} is not an FSDP2 optimizer states file (no optimizer or lr_scheduler)")
    options = StateDictOptions(full_state_dict=True, strict=True)
    try:
        set_model_state_dict(model, module, options=options)
    except (RuntimeError, KeyError, ValueError) as e:
        raise CheckpointError(f"{folder / ENGINE_TAG / FSDP2_MODEL} does not fit the model "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:300]})") from None  # fmt: skip
    try:
        set_optimizer_state_dict(model, optimizer, rest["optimizer"], options=options)
        scheduler.load_state_dict(rest["lr_scheduler"])
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as e:
        raise CheckpointError(f"{path} does not fit the optimizer ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:300]})") from None  # fmt: skip


def _set_legacy_rng(state: dict) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def set_aside(folder: Path) -> Optional[Path]:
    """Rename a checkpoint that failed to load out of the resume order, keeping it for inspection."""
    target = folder.with_name(f"unreadable-{folder.name}")
    try:
        if target.exists():
            import shutil

            shutil.rmtree(target)
        os.replace(folder, target)
        return target
    except OSError as e:
        log.warning("could not set %s aside: %s", folder, e)
        return None
