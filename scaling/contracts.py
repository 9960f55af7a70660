"""The records that the trainer, the launchers and the analysis exchange, typed once.

    RUN_DIR/result.json     Result        write_result / read_result
    RUN_DIR/metrics.jsonl   MetricsRow    append_metrics / read_metrics (truncate_metrics on resume)
    STUDY/plan.json         Plan, RunSpec write_plan / read_plan

Each record is a dataclass with a version, written by one function and read by one; every package
reads through them. A run's state is a `RunStatus`, a str enum, so the JSON holds the same strings
as before.

Readers accept every file earlier versions wrote: a result or a metrics row without a `version`
is version 1, and a plan without a `format` is `scaling-plan/1`. A record of a later version than
this code reads is refused, naming the file. Keys a version does not know are kept in `extra` and
written back as they were. A reader raises ContractError naming the file, what is wrong and, where
there is one, the fix; views that must never fail (status, progress) use `result_if_readable`.

Every record is written atomically (`write_atomic`): a reader sees the old file or the new, never a
torn one; metrics rows are appended, and a reader skips a line torn by a kill.

Torch-free and Hydra-free: the launchers, `scaling-status` and the analysis read these on login
nodes and laptops.
"""

from __future__ import annotations

import functools
import json
import math
import os
import tempfile
import typing
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar, Optional

from scaling.errors import ScalingError

RESULT_NAME = "result.json"
METRICS_NAME = "metrics.jsonl"
PLAN_NAME = "plan.json"
RESULT_VERSION = 1
METRICS_VERSION = 1
PLAN_FORMAT = "scaling-plan/1"


class ContractError(ScalingError):
    """A record exists but is not what its contract says; the message names the file."""


class RunStatus(str, Enum):
    """The state of a run. result.json records completed or failed, and stopped.json stopped; a
    launcher derives the others from the run directory and the queue (scaling/launch/state.py)."""

    PLANNED = "planned"  # never launched, no progress
    QUEUED = "queued"  # its Slurm job is pending (or being requeued)
    RUNNING = "running"  # its Slurm job runs, or its local process is alive
    PARTIAL = "partial"  # launched before, no longer active, no result: a relaunch resumes it
    STOPPED = "stopped"  # the last attempt stopped cleanly on a signal, after a checkpoint
    COMPLETED = "completed"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value


RESULT_STATUSES = (RunStatus.COMPLETED, RunStatus.FAILED)


# ---- writing -------------------------------------------------------------------------------------
def write_atomic(path: Path | str, text: str) -> None:
    """Write a file so that readers see the old content or the new, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def json_default(value: Any) -> Any:
    """JSON for numbers that are not Python's own (a NumPy or torch scalar)."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def finite_or_none(record: dict) -> dict:
    """JSON has no NaN: a non-finite value (a loss that diverged) is recorded as null."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}


# ---- reading and checking JSON records ---------------------------------------------------------
def read_text(path: Path) -> str:
    """The file's text. Raises ContractError naming the file when it is binary or not UTF-8.

    A NUL byte is checked first: it is valid UTF-8, so a binary file (a pickle, a zip, a
    spreadsheet saved as .xlsx) would otherwise be parsed into nonsense."""
    raw = path.read_bytes()
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise ContractError(f"{str(path)!r} is a binary file, not text (a NUL byte at offset {nul})")
    try:
        # utf-8-sig: spreadsheet programs start a UTF-8 CSV with a byte-order mark.
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ContractError(
            f"{str(path)!r} is not UTF-8 text: byte 0x{raw[exc.start]:02x} at line {line} "
            f"(offset {exc.start}) cannot be decoded"
        ) from None


def _json_kind(value: Any) -> str:
    kinds = {list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)


def _read_object(path: Path, holding: str) -> dict | None:
    """The JSON object in `path`; None when there is no such file. `holding` says what it should hold."""
    try:
        text = read_text(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ContractError(f"{str(path)!r} cannot be read: {exc.strerror or exc}") from None
    except ContractError as exc:
        raise ContractError(f"{exc}, so not valid JSON") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ContractError(f"{str(path)!r} is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ContractError(f"{str(path)!r} holds a JSON {_json_kind(value)}, not an object {holding}")
    return value


_STATUS_VALUES = frozenset(s.value for s in RunStatus)


@dataclass(frozen=True)
class _Kind:
    """What a JSON value must be to fill a field: None where it is Optional, any number for a
    number (JSON does not tell 3 from 3.0), a run status's string, or a str, dict or list."""

    none: bool
    number: bool
    status: bool
    others: tuple

    @classmethod
    def of(cls, hint: Any) -> "_Kind":
        options = typing.get_args(hint) if typing.get_origin(hint) is typing.Union else (hint,)
        others = tuple(typing.get_origin(o) or o for o in options if o not in (int, float, RunStatus, type(None)))
        return cls(type(None) in options, int in options or float in options, RunStatus in options, others)

    def fits(self, value: Any) -> bool:
        if value is None:
            return self.none
        if isinstance(value, bool):  # JSON's true and false are not numbers
            return False
        if self.number and isinstance(value, (int, float)):
            return True
        if self.status and value in _STATUS_VALUES:
            return True
        return isinstance(value, self.others)

    def describe(self) -> str:
        words = {str: "a string", dict: "an object", list: "an array"}
        names = ["a number"] * self.number + ["a run status"] * self.status + [words[o] for o in self.others]
        return " or ".join(names)


@functools.cache
def _field_kinds(cls: type) -> dict[str, _Kind]:
    """The record's fields (but `extra`) and what each holds, read once from the type hints."""
    hints = typing.get_type_hints(cls)
    return {f.name: _Kind.of(hints[f.name]) for f in fields(cls) if f.name != "extra"}


def _from_json(cls: type, raw: dict, where: str) -> Any:
    """A record of type `cls` from a JSON object, each value checked against its field's type;
    keys the record does not know go to its `extra`."""
    kinds = _field_kinds(cls)
    values, extra = {}, {}
    for key, value in raw.items():
        if key not in kinds:
            extra[key] = value
        elif not kinds[key].fits(value):
            raise ContractError(f"{where} has {key}={value!r}, not {kinds[key].describe()}")
        else:
            values[key] = value
    return cls(**values, extra=extra)


def _check_version(version: Any, newest: int, where: str, what: str) -> None:
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ContractError(f"{where} has version={version!r}; a {what} version is a positive integer")
    if version > newest:
        raise ContractError(
            f"{where} is a {what} of version {version}, newer than this version of scaling reads ({newest}); "
            f"read it with a newer scaling"
        )


def _record_json(record: Any, always: tuple[str, ...] = ()) -> dict:
    """A record as JSON: the fields that have a value (and those in `always`), then its extra keys."""
    out = {}
    for f in fields(record):
        value = getattr(record, f.name)
        if f.name != "extra" and (value is not None or f.name in always):
            out[f.name] = value.value if isinstance(value, RunStatus) else value
    return out | record.extra


# ---- result.json ---------------------------------------------------------------------------------
@dataclass
class Result:
    """result.json: how a run ended, written atomically by the trainer's main rank (or, for a run
    it killed, by a launcher). A completed result says what was trained and the losses; a failed
    one says why."""

    status: RunStatus
    version: int = RESULT_VERSION
    run_id: Optional[str] = None
    family: Optional[str] = None
    params: Optional[int] = None
    params_nonembedding: Optional[int] = None
    tokens: Optional[float] = None  # trained tokens (images for an image family)
    flops: Optional[float] = None  # training FLOPs under flops_convention
    flops_convention: Optional[str] = None
    train_loss: Optional[float] = None  # nats per token (image); null when not finite
    eval_loss: Optional[float] = None
    steps: Optional[int] = None
    world_size: Optional[int] = None
    zero_stage: Optional[int] = None
    wall_time_s: Optional[float] = None
    group: Optional[str] = None  # the study (wandb group)
    config_hash: Optional[str] = None  # the identity of the run (scaling/runid.py)
    data_checksum: Optional[str] = None
    run_id_rule: Optional[int] = None
    epochs: Optional[float] = None  # passes over the training split
    unique_tokens: Optional[int] = None
    timing: Optional[dict] = None  # where the wall time went, in seconds (bench/study_overhead.py)
    budget_flops: Optional[float] = None  # the IsoFLOP budget, where a tool other than the trainer wrote it
    # A cooldown branch (scaling/trainer/branch.py): the trunk it forked from and the fork step.
    # Its `tokens` and `flops` are the model's whole training (the trunk up to the fork included:
    # what a law sees); `branch_tokens` and `branch_flops` are what the branch itself trained, so
    # that a study's compute adds up without counting the trunk twice.
    parent: Optional[str] = None
    fork_step: Optional[int] = None
    fork_tokens: Optional[float] = None
    branch_tokens: Optional[float] = None
    branch_flops: Optional[float] = None
    error: Optional[str] = None  # failed: what went wrong and the fix
    step: Optional[int] = None  # failed: the step it failed at, where known
    rank: Optional[int] = None  # failed: the rank that wrote the error
    extra: dict = field(default_factory=dict)

    # Keys written even when null: a completed run's group, a failure's error and step.
    ALWAYS: ClassVar[dict[RunStatus, tuple[str, ...]]] = {
        RunStatus.COMPLETED: ("group",), RunStatus.FAILED: ("error", "step"),
    }  # fmt: skip

    def __post_init__(self) -> None:
        self.status = RunStatus(self.status)

    @property
    def loss(self) -> Optional[float]:
        """The run's final loss: evaluation loss, else training loss."""
        return self.eval_loss if self.eval_loss is not None else self.train_loss

    def lacks(self, keys: tuple[str, ...]) -> list[str]:
        """The keys among `keys` that have no value."""
        return [k for k in keys if getattr(self, k) is None]

    def to_json(self) -> dict:
        return _record_json(self, self.ALWAYS.get(self.status, ()))


COMPLETED_KEYS = ("params", "tokens", "flops", "eval_loss", "steps")  # what a completed run always records


def read_result(run_dir: Path | str, complete: bool = False) -> Result | None:
    """The run's result; None when it has none yet. Raises ContractError naming result.json when
    it is not text, not JSON, not an object, has no or an unknown status, a value of the wrong
    type, or a newer version; with `complete`, also when it says completed but lacks one of
    COMPLETED_KEYS (a record the trainer would trust not to retrain)."""
    path = Path(run_dir) / RESULT_NAME
    raw = _read_object(path, "with a status and the run's counts and losses")
    if raw is None:
        return None
    where = repr(str(path))
    if "status" not in raw:
        raise ContractError(f"{where} lacks the key 'status'; the trainer writes it on every exit")
    if raw["status"] not in RESULT_STATUSES:
        expected = [s.value for s in RESULT_STATUSES]
        raise ContractError(f"{where} has status {raw['status']!r}; expected one of {expected}")
    _check_version(raw.get("version", 1), RESULT_VERSION, where, "result")
    result = _from_json(Result, raw, where)
    missing = result.lacks(COMPLETED_KEYS) if complete and result.status is RunStatus.COMPLETED else []
    if missing:
        raise ContractError(f"{where} is a completed result without {missing}")
    return result


def result_if_readable(run_dir: Path | str) -> Result | None:
    """The run's result, or None when it has none or it cannot be read: for views that must never
    fail on a run being written (status, progress), and which report a bad file elsewhere."""
    try:
        return read_result(run_dir)
    except ContractError:
        return None


def write_result(run_dir: Path | str, result: Result, only_if_absent: bool = False) -> bool:
    """Write result.json atomically. With `only_if_absent` (several ranks recording one failure),
    the first writer wins: returns False, writing nothing, when the file exists."""
    path = Path(run_dir) / RESULT_NAME
    text = json.dumps(finite_or_none(result.to_json()), indent=2, default=json_default) + "\n"
    if not only_if_absent:
        write_atomic(path, text)
        return True
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".result.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.link(tmp, path)  # atomic create-if-absent
        return True
    except FileExistsError:
        return False
    finally:
        Path(tmp).unlink(missing_ok=True)


# ---- metrics.jsonl ---------------------------------------------------------------------------------
@dataclass
class MetricsRow:
    """One line of metrics.jsonl: the run at a logged step. The trainer appends one per logged
    step (every step by default); the dashboard mirrors them."""

    step: int
    version: int = METRICS_VERSION
    tokens: Optional[float] = None  # trained so far (images for an image family)
    flops: Optional[float] = None  # trained so far, under the run's FLOP convention
    loss: Optional[float] = None  # training loss at this step, mean over the global batch; null when not finite
    lr: Optional[float] = None  # the learning rate this step used
    tokens_per_s: Optional[float] = None  # throughput since the previous row, evaluation excluded
    flops_per_s: Optional[float] = None
    elapsed_s: Optional[float] = None  # the run's wall time at the previous row
    mfu: Optional[float] = None  # model FLOPs utilisation, on GPUs whose peak is known
    eval_loss: Optional[float] = None  # on evaluation steps
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return _record_json(self)

    def values(self) -> dict:
        """The measured values by name, for a dashboard: the row without its step and version."""
        return {k: v for k, v in self.to_json().items() if k not in ("step", "version")}


def metrics_line(row: MetricsRow) -> str:
    """A row as its line of metrics.jsonl."""
    return json.dumps(finite_or_none(row.to_json()), default=json_default) + "\n"


def append_metrics(path: Path | str, row: MetricsRow) -> None:
    with open(path, "a") as f:
        f.write(metrics_line(row))
        f.flush()


def parse_metrics_line(line: str, where: str = METRICS_NAME) -> MetricsRow | None:
    """The row on one line of metrics.jsonl, or None for a line that is not one (torn by a kill
    mid-write, or not a row of this contract). Raises ContractError for a row of a newer version."""
    try:
        raw = json.loads(line)
    except ValueError:
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("step"), int) or isinstance(raw["step"], bool):
        return None
    version = raw.get("version", 1)
    if isinstance(version, int) and version > METRICS_VERSION:
        _check_version(version, METRICS_VERSION, where, "metrics row")
    try:
        return _from_json(MetricsRow, raw, where)
    except ContractError:
        return None


def _metrics_lines(path: Path | str, tail_bytes: Optional[int] = None) -> list[str]:
    """The lines of metrics.jsonl, or of its last `tail_bytes` (less the line the seek cut)."""
    try:
        with open(path, "rb") as f:
            cut = False
            if tail_bytes is not None:
                size = f.seek(0, os.SEEK_END)
                cut = f.seek(max(0, size - tail_bytes)) > 0
            data = f.read().decode(errors="replace")  # an undecodable line fails to parse and is skipped
    except OSError:
        return []
    lines = data.splitlines()
    return lines[1:] if cut else lines


def read_metrics(path: Path | str) -> list[MetricsRow]:
    """The rows of metrics.jsonl in order. Lines that are not rows are skipped; a row of a newer
    version raises ContractError naming the file."""
    where = repr(str(path))
    return [row for row in (parse_metrics_line(line, where) for line in _metrics_lines(path)) if row is not None]


def last_loss_row(path: Path | str, tail_bytes: int = 8192) -> MetricsRow | None:
    """The last row of metrics.jsonl that has a loss, read from the file's last `tail_bytes` only:
    how far a long run has come, cheaply, for a status view."""
    where = repr(str(path))
    for line in reversed(_metrics_lines(path, tail_bytes)):
        row = parse_metrics_line(line, where)
        if row is not None and row.loss is not None:
            return row
    return None


def truncate_metrics(path: Path | str, last_step: int) -> None:
    """Keep rows up to `last_step`: rows a killed run wrote after its last checkpoint are
    written again, identically, by the resumed run."""
    path = Path(path)
    if path.exists():
        write_atomic(path, "".join(metrics_line(r) for r in read_metrics(path) if r.step <= last_step))


# ---- plan.json -------------------------------------------------------------------------------------
@dataclass
class RunSpec:
    """One planned run: what it trains and the exact trainer overrides that train it. The planner
    fills every field; a plan.json written by hand may hold only ids and directories."""

    id: str
    family: Optional[str] = None
    N: Optional[int] = None  # parameters, counted as the study's sizes.count says
    params_total: Optional[int] = None
    params_nonembedding: Optional[int] = None
    D: Optional[int] = None  # training tokens (images for an image family)
    C: Optional[float] = None  # training FLOPs under the study's convention, f * D
    budget_flops: Optional[float] = None  # the IsoFLOP budget this run belongs to; None in a size ladder
    tokens_per_param: Optional[float] = None  # D / N
    seed: Optional[int] = None
    batch: Optional[int] = None  # global batch, sequences (images)
    batch_tokens: Optional[int] = None  # global batch, tokens (images)
    steps: Optional[int] = None
    lr: Optional[float] = None
    nproc: Optional[int] = None
    shape: dict = field(default_factory=dict)  # the model fields the run sets
    overrides: list = field(default_factory=list)  # trainer overrides, run.dir included: `scaling-train *overrides`
    config_hash: Optional[str] = None
    dir: Optional[str] = None  # the run directory
    est_time_s: Optional[float] = None
    # D / the training split's unique tokens (images): how many times the run passes over its data.
    # None in plans written before the planner counted it.
    epochs: Optional[float] = None
    extra: dict = field(default_factory=dict)


@dataclass
class Plan:
    """plan.json: a study's runs, as the planner expanded its spec (`scaling-study`)."""

    runs: list[RunSpec]
    study: Optional[str] = None
    kind: Optional[str] = None  # "ladder" or "isoflop"
    dir: Optional[str] = None
    family: Optional[str] = None
    flops_convention: Optional[str] = None
    n_count: Optional[str] = None  # what N counts: "nonembedding" or "total"
    rules: dict = field(default_factory=dict)
    throughput_flops: Optional[float] = None  # per process, for the time estimates
    throughput_source: Optional[str] = None
    notes: list = field(default_factory=list)
    # The version of the ladder rule the sizes came from (scaling.ladder.LADDER_RULE); None in
    # plans written before it was recorded, which used rule 1.
    ladder_rule: Optional[int] = None
    format: str = PLAN_FORMAT
    extra: dict = field(default_factory=dict)

    @property
    def total_flops(self) -> float:
        return sum(r.C or 0.0 for r in self.runs)

    def by_id(self) -> dict[str, RunSpec]:
        return {r.id: r for r in self.runs}

    def to_json(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("runs", "extra")}
        if self.ladder_rule is None:  # a plan of the previous version writes back as it was read
            del out["ladder_rule"]
        runs = [asdict(r) | r.extra for r in self.runs]
        for r in runs:
            r.pop("extra")
        return out | {"runs": runs, "total_flops": self.total_flops} | self.extra


def write_plan(plan: Plan) -> Path:
    """Write STUDY/plan.json (in `plan.dir`) atomically."""
    path = Path(plan.dir) / PLAN_NAME
    write_atomic(path, json.dumps(plan.to_json(), indent=1) + "\n")
    return path


def read_plan(study_dir: Path | str) -> Plan | None:
    """The study's plan; None when the folder has no plan.json. Raises ContractError naming the
    file when it is not a plan of a format this version reads."""
    path = Path(study_dir) / PLAN_NAME
    raw = _read_object(path, "with the planned 'runs'")
    return None if raw is None else plan_from_json(raw, repr(str(path)))


def plan_from_json(raw: dict, where: str = PLAN_NAME) -> Plan:
    """A Plan from plan.json's JSON object (`where` names it in errors)."""
    if raw.get("format", PLAN_FORMAT) != PLAN_FORMAT:
        raise ContractError(f"{where} has format {raw['format']!r}; this version of scaling reads {PLAN_FORMAT!r}")
    runs = raw.get("runs")
    if not isinstance(runs, list) or not all(isinstance(r, dict) and isinstance(r.get("id"), str) for r in runs):
        raise ContractError(f"{where} needs 'runs', a list of objects each with a string 'id'")
    specs = [_from_json(RunSpec, r, f"{where} (runs[{i}])") for i, r in enumerate(runs)]
    rest = {k: v for k, v in raw.items() if k not in ("runs", "total_flops")}
    plan = _from_json(Plan, rest | {"runs": []}, where)
    plan.runs = specs
    return plan
