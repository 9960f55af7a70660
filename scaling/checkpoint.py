"""The project's checkpoint format, and the only place that reads one. Nothing is unpickled.

    RUN_DIR/checkpoints/stepNNNNNNNN/
        state.json          format, provenance (run id, step, config hash, data checksum, parent),
                            the trainer state and the result-affecting config; written last by rank 0
        rng_rankR.json      each rank's RNG states (Python, NumPy, torch, CUDA) as plain numbers
        state/              DeepSpeed's model, optimizer and LR-schedule states (tensors and plain
                            types in torch's zip format)

Loading is safe by construction: JSON is parsed, and DeepSpeed's files are read by
`SafeCheckpointEngine`, a DeepSpeed checkpoint engine whose `load` is `torch.load(weights_only=True)`
with three plain DeepSpeed types allow-listed (`SAFE_GLOBALS`). A file that needs anything else (a
crafted pickle, or a checkpoint of an older version of this project) is refused. A checkpoint the
user trusts can still be loaded with `train.trust_checkpoint=true`, which reads it as before
(arbitrary code, so off by default); the next checkpoint the run writes is in this format.

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


def torch_load(path: str | Path, map_location: Any = None, trust: bool = False) -> Any:
    """torch.load that refuses arbitrary objects, with errors that name the file."""
    import pickle

    import torch

    try:
        if trust:
            return torch.load(path, map_location=map_location, weights_only=False)
        with torch.serialization.safe_globals(safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
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
    """Write this rank's share of a checkpoint into `folder` (every rank calls it). The caller
    renames the folder into place once all ranks are done."""
    engine.save_checkpoint(str(folder), tag=ENGINE_TAG, client_state={}, save_latest=False)
    write_json_atomic(folder / f"rng_rank{rank}.json", rng_state())
    if is_main:
        write_json_atomic(folder / STATE_NAME, {"format": FORMAT, **meta})


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
    """Restore the engine (model, optimizer, LR schedule) and this rank's RNG from `folder`.
    Raises CheckpointError naming the file at fault.

    A ZeRO-1/2/3 checkpoint saved by another number of processes is loaded from its resharded
    copy (`scaling.reshard.prepare` builds it first). Its RNG files then do not map one to one:
    a rank the saving run had restores its own, a new rank restores rank 0's. Nothing depends on
    them but the order of Python/NumPy/torch draws (the data order is a function of the seed and
    the step, and the models have no dropout)."""
    from scaling.reshard import engine_folder

    try:
        meta = read_meta(folder)
    except CheckpointError:
        if not trust:
            raise
        meta = {}  # an older checkpoint the user trusts: its state is in DeepSpeed's client state
    source = engine_folder(folder, engine.dp_world_size)
    try:
        _, client = engine.load_checkpoint(str(source), tag=ENGINE_TAG, load_optimizer_states=True,
                                           load_lr_scheduler_states=True)
    except CheckpointError:
        raise
    except (AssertionError, FileNotFoundError, RuntimeError, KeyError, ValueError) as e:
        raise CheckpointError(f"{source / ENGINE_TAG} could not be loaded ({type(e).__name__}: {e})") from None
    if client is None:
        raise CheckpointError(f"{source / ENGINE_TAG} holds no DeepSpeed checkpoint (a model states file is missing)")
    if not meta:
        meta = {"format": "legacy", "train_state": dict(client.get("train_state") or {})}
    rng = folder / f"rng_rank{rank}.json"
    if source != folder and not rng.exists():
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
