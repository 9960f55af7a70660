"""Read a wandb offline run file (`run-ID.wandb`) without a network or a wandb server.

The file is a LevelDB-style log: a 7-byte header (":W&B", magic, version), then 32 KiB blocks of
records, each with a 7-byte header (CRC32, little-endian length, type) and a protobuf payload
(`wandb.proto.wandb_internal_pb2.Record`), split across blocks when it does not fit.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK = 32768
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list:
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a wandb run file"
    out, pos, pending = [], HEADER, b""
    while pos + HEADER <= len(data):
        room = BLOCK - pos % BLOCK
        if room < HEADER:  # block trailer padding
            pos += room
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if kind == 0 and length == 0:
            pos += room
            continue
        payload = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == FULL:
            pending = payload
        elif kind == FIRST:
            pending = payload
            continue
        elif kind == MIDDLE:
            pending += payload
            continue
        elif kind == LAST:
            pending += payload
        record = pb.Record()
        record.ParseFromString(pending)
        out.append(record)
        pending = b""
    return out


def read_run(run_dir: Path) -> dict:
    """The run id, name, group, config and history rows logged offline under `run_dir/wandb`."""
    files = sorted(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb"))
    assert files, f"no offline wandb run under {run_dir}/wandb"
    run: dict = {"config": {}, "history": [], "ids": set()}
    for f in files:
        for r in records(f):
            kind = r.WhichOneof("record_type")
            if kind == "run":
                run["ids"].add(r.run.run_id)
                run["name"], run["group"] = r.run.display_name, r.run.run_group
                for item in r.run.config.update:
                    run["config"][item.key] = json.loads(item.value_json)
            elif kind == "config":
                for item in r.config.update:
                    run["config"][item.key] = json.loads(item.value_json)
            elif kind == "history":
                run["history"].append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item})
    return run
