"""Resume a ZeRO-1/2/3 checkpoint on another number of processes, by resharding its files.

DeepSpeed refuses to load a ZeRO checkpoint saved with W processes into an engine of W' (its
elastic path pads the merged partitions with the old world size's alignment, and its universal
checkpoint converter unpickles every file). So, when the world size changed, `prepare` writes a
copy of the checkpoint's engine state laid out as a W'-process run would have saved it, and the
engine loads that copy with DeepSpeed's own `load_checkpoint`:

    RUN_DIR/checkpoints/stepNNNNNNNN/
        state/              the run's files, W processes
        reshard-wW'/state/  the same state for W' processes: built once, written to a hidden
                            folder and renamed into place, reused by every later resume

Only tensors and plain data are read (`scaling.checkpoint.torch_load`). The layouts, as DeepSpeed
0.19 writes them (`zero_to_fp32` reads the same ones):

- ZeRO-1/2: each param group is one flat fp32 vector (the parameters in `param_shapes` order,
  each followed by its `param_alignment_paddings`), zero-padded at its end to a multiple of
  2 x world and cut into `world` equal slices: rank r holds `single_partition_of_fp32_groups[g]`
  and Adam's `exp_avg`/`exp_avg_sq` for the same slice (`base_optimizer_state`), the padding is
  counted in the last rank's `group_paddings`. One `mp_rank_00_model_states.pt` holds the module.
- ZeRO-3: every parameter is cut into `world` slices of ceil(numel / world) numbers (the last
  zero-padded), and rank r's `fp32_flat_groups[g]` and Adam moments are its slices of the
  group's parameters, in order. Each rank writes a `zero_pp_rank_R_..._model_states.pt`.

Resharding merges the W slices, drops the padding, and cuts again for W'. The step count, the LR
schedule, the loss scaler and the module's own states are the same on every rank and are copied.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Any

from scaling.checkpoint import ENGINE_TAG, CheckpointError, torch_load, zero_rank

PREFIX = "reshard-w"
NCCL_ALIGNMENT = 2  # DeepSpeed's nccl_start_alignment_factor: a ZeRO-1/2 group pads to a multiple of 2 x world


def saved_world_size(folder: Path) -> int | None:
    """How many processes wrote the ZeRO optimizer files of checkpoint `folder`, or None for a
    ZeRO-0 checkpoint (its optimizer is not partitioned, so any world size loads it)."""
    files = list((folder / ENGINE_TAG).glob("zero_pp_rank_*_optim_states.pt"))
    return len(files) or None


def engine_folder(folder: Path, world_size: int) -> Path:
    """The folder whose `state/` an engine of `world_size` processes loads: the checkpoint itself,
    or its resharded copy (built by `prepare`; CheckpointError if it is not there)."""
    saved = saved_world_size(folder)
    if saved is None or saved == world_size:
        return folder
    copy = folder / f"{PREFIX}{world_size}"
    if not copy.is_dir():
        raise CheckpointError(f"{folder} was saved by {saved} processes and has no copy resharded for {world_size} "
                              f"({copy} is missing)")  # fmt: skip
    return copy


def prepare(folder: Path, world_size: int) -> Path:
    """Build (once) the copy of checkpoint `folder` resharded for `world_size` processes, and return
    the folder to load from. Called by one process while the others wait."""
    saved = saved_world_size(folder)
    if saved is None or saved == world_size:
        return folder
    final = folder / f"{PREFIX}{world_size}"
    if final.is_dir():
        return final
    tmp = folder / f".tmp-{PREFIX}{world_size}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / ENGINE_TAG).mkdir(parents=True)
    try:
        _write_resharded(folder / ENGINE_TAG, tmp / ENGINE_TAG, saved, world_size)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _write_resharded(src: Path, dst: Path, saved: int, world: int) -> None:
    import torch

    optim_files = sorted(src.glob("zero_pp_rank_*_optim_states.pt"), key=zero_rank)
    if [zero_rank(f) for f in optim_files] != list(range(saved)):
        raise CheckpointError(f"{src} should hold one optimizer file per rank 0..{saved - 1}: the checkpoint is torn")
    model_files = sorted(src.glob("*model_states.pt"), key=zero_rank)
    if not model_files:
        raise CheckpointError(f"{src} holds no model states file (*model_states.pt): the checkpoint is torn")
    model = torch_load(model_files[0], map_location="cpu")
    parts = [torch_load(f, map_location="cpu") for f in optim_files]
    try:
        stage = int(model["ds_config"]["zero_optimization"]["stage"])
        shapes = model["param_shapes"]
        osds = [p["optimizer_state_dict"] for p in parts]
        if stage == 3:
            new = _reshard_zero3(osds, shapes, world)
        else:
            new = _reshard_zero12(osds, shapes, world)
    except (KeyError, IndexError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{src}: the ZeRO partitions do not have the layout DeepSpeed writes "
                              f"({type(e).__name__}: {e}); the checkpoint is torn or of another DeepSpeed version") from None  # fmt: skip
    model["dp_world_size"] = world
    for rank, osd in enumerate(new):
        name = optim_files[0].name.replace("zero_pp_rank_0_", f"zero_pp_rank_{rank}_")
        torch.save({**parts[0], "optimizer_state_dict": osd}, dst / name)
        if stage == 3:
            torch.save(model, dst / model_files[0].name.replace("zero_pp_rank_0_", f"zero_pp_rank_{rank}_"))
    if stage != 3:
        torch.save(model, dst / model_files[0].name)


def _cut(flat: Any, world: int, total: int) -> list[Any]:
    """`flat` zero-padded to `total` numbers, in `world` equal slices."""
    import torch

    padded = torch.zeros(total, dtype=flat.dtype)
    padded[: flat.numel()] = flat
    return [s.clone() for s in padded.split(total // world)]


def _reshard_zero12(osds: list[dict], shapes: list[dict], world: int) -> list[dict]:
    import torch

    from deepspeed.utils.tensor_fragment import fragment_address

    paddings = osds[0].get("param_alignment_paddings")
    new = [dict(osds[0], base_optimizer_state={"state": {}, "param_groups": osds[0]["base_optimizer_state"]["param_groups"]},
                single_partition_of_fp32_groups=[], group_paddings=[], param_slice_mappings=[],
                partition_count=[world] * len(shapes)) for _ in range(world)]  # fmt: skip
    for g, group in enumerate(shapes):
        sizes = [math.prod(s) + (paddings[g][i] if paddings else 0) for i, s in enumerate(group.values())]
        content = sum(sizes)
        align = NCCL_ALIGNMENT * world
        total = math.ceil(content / align) * align

        def merged(get: Any) -> list[Any]:
            flat = torch.cat([get(o) for o in osds])
            if flat.numel() < content:
                raise CheckpointError(f"param group {g} holds {flat.numel()} numbers but its parameters take {content}")
            return _cut(flat[:content], world, total)

        fp32 = merged(lambda o: o["single_partition_of_fp32_groups"][g])
        saved_state = osds[0]["base_optimizer_state"]["state"][g]
        moments = {k: merged(lambda o, k=k: o["base_optimizer_state"]["state"][g][k])
                   for k, v in saved_state.items() if torch.is_tensor(v) and v.ndim == 1}  # fmt: skip
        size = total // world
        for rank in range(world):
            new[rank]["single_partition_of_fp32_groups"].append(fp32[rank])
            new[rank]["base_optimizer_state"]["state"][g] = {**saved_state, **{k: v[rank] for k, v in moments.items()}}
            new[rank]["group_paddings"].append(total - content if rank == world - 1 else 0)
            lo, hi, offset, mapping = rank * size, (rank + 1) * size, 0, {}
            for (name, shape), taken in zip(group.items(), sizes):  # where each parameter lies in this slice
                start, end = max(offset, lo), min(offset + math.prod(shape), hi)
                if end > start:
                    mapping[name] = fragment_address(numel=end - start, start=start - lo)
                offset += taken
            new[rank]["param_slice_mappings"].append(mapping)
    return new


def _reshard_zero3(osds: list[dict], shapes: list[dict], world: int) -> list[dict]:
    import torch

    saved = len(osds)
    base = osds[0]["optimizer_state_dict"]
    new = [dict(osds[0], partition_count=world, fp32_flat_groups=[],
                optimizer_state_dict={"state": {}, "param_groups": base["param_groups"]}) for _ in range(world)]  # fmt: skip
    if len(osds[0]["fp32_flat_groups"]) != len(shapes):
        raise CheckpointError(f"{len(osds[0]['fp32_flat_groups'])} ZeRO-3 sub-groups for {len(shapes)} param groups "
                              f"(zero_optimization.sub_group_size splits a group; not a layout this reads)")  # fmt: skip

    def reshard(flats: list[Any], group: dict) -> list[Any]:
        """Each rank's flat slices of the group's parameters, for `world` ranks."""
        out: list[list[Any]] = [[] for _ in range(world)]
        offset = 0
        for shape in group.values():
            n = math.prod(shape)
            old, new_slice = math.ceil(n / saved), math.ceil(n / world)
            full = torch.cat([f[offset : offset + old] for f in flats])[:n]
            for rank, piece in enumerate(_cut(full, world, new_slice * world)):
                out[rank].append(piece)
            offset += old
        if offset != flats[0].numel():
            raise CheckpointError(f"each rank holds {flats[0].numel()} numbers of a group whose parameters take {offset}")
        return [torch.cat(pieces) for pieces in out]

    for g, group in enumerate(shapes):
        fp32 = reshard([o["fp32_flat_groups"][g] for o in osds], group)
        saved_state = base["state"][g]
        moments = {k: reshard([o["optimizer_state_dict"]["state"][g][k] for o in osds], group)
                   for k, v in saved_state.items() if torch.is_tensor(v) and v.ndim == 1}  # fmt: skip
        for rank in range(world):
            new[rank]["fp32_flat_groups"].append(fp32[rank])
            new[rank]["optimizer_state_dict"]["state"][g] = {**saved_state, **{k: v[rank] for k, v in moments.items()}}
    return new
