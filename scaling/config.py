"""Typed configuration: the schema Hydra validates YAML against, and the plain dataclasses that
everything below the entry points receives.

This module imports neither torch nor deepspeed: the planner (`launch/`) builds and counts run
configs on login nodes and laptops.

Config is typed once, at the door. An entry point composes YAML with Hydra, converts it with
`to_dataclass` (which calls `OmegaConf.to_object` and then `validate`), and passes the result on.
A misspelled or mistyped key fails in Hydra with the key named; a value that is well typed but
wrong fails in `validate`, which lists every problem at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Optional

from scaling.data.config import DataConfig
from scaling.errors import raise_if
from scaling.families import DEFAULT, FAMILIES, cnn as _cnn, gpt as _gpt
from scaling.families.base import FLOPS_CONVENTIONS
from scaling.schedule import DECAY_SHAPES, SCHEDULES
PRECISIONS = ("fp32", "bf16")
ENGINES = ("deepspeed", "fsdp")  # train.engine; the classes are in scaling/trainer/engine.py
WANDB_MODES = ("auto", "online", "offline", "disabled")


# The model configs live with their families (scaling/families/); these names stay importable
# from here, where older code and users' scripts import them.
GPTConfig = _gpt.GPTConfig
CNNConfig = _cnn.CNNConfig
ModelConfig = Any  # a registered family's config dataclass


def model_configs() -> dict[str, type]:
    """{family name: config class}, from the registry (read at call time: a family registered
    later is included)."""
    return {name: fam.config for name, fam in FAMILIES.items()}


@dataclass
class TrainConfig:
    """How one run trains. Budgets are in data (tokens, or images for the CNN) or in FLOPs, never
    in steps: the step count is derived from the budget and the global batch."""

    tokens: Optional[float] = None  # training budget in tokens (images for the CNN)
    flops: Optional[float] = None  # or in FLOPs, converted with flops_convention
    flops_convention: str = "6n"
    global_batch_size: int = 16  # sequences (images) per optimizer step, over all ranks
    micro_batch_size: Any = "auto"  # int, or "auto": largest that fits (GPU), whole rank batch (CPU)
    lr: float = 3e-3
    min_lr_ratio: float = 0.1  # the schedule decays to lr * min_lr_ratio
    schedule: str = "cosine"
    warmup_tokens: float = 0.0
    decay_fraction: float = 0.2  # WSD: the final fraction of the budget spent decaying
    decay_shape: str = "linear"  # WSD: the decay's shape, linear | cosine | 1-sqrt (scaling/schedule.py)
    # A cooldown branch: the run id of the trunk it forks from. The branch starts from the trunk's
    # checkpoint at its own decay start (a WSD schedule's stable phase is the trunk's constant LR)
    # and decays to its own budget; see scaling/trainer/branch.py. The trunk's directory is
    # run.parent_dir, else a sibling of run.dir named after it.
    parent: Optional[str] = None
    weight_decay: float = 0.1  # on matrices only
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    # The data-parallel engine: deepspeed (ZeRO stages, train.zero_stage) or fsdp (PyTorch's
    # fully_shard: parameters, gradients and optimizer state sharded, as ZeRO-3). In the run id
    # when not the default: a run directory's checkpoints are in its engine's layout.
    engine: str = "deepspeed"
    zero_stage: int = 0
    precision: str = "fp32"
    activation_checkpointing: bool = False
    # torch.compile the model (in place, so checkpoints keep their names). Off by default: on a
    # CPU, compiling costs more than a short run saves (bench/compile_check.py measures both).
    compile: bool = False
    # Callbacks added to the built-in ones, as import paths "package.module:Class" (see
    # scaling/trainer/callbacks/); they observe the run and do not change what it computes.
    callbacks: list[str] = field(default_factory=list)
    eval_every_tokens: Optional[float] = None  # None: evaluate only at the end
    eval_tokens: float = 32768  # held-out tokens (images) per evaluation, the same for every size
    log_every_steps: int = 1
    checkpoint_every_tokens: Optional[float] = None  # None: only on a signal and at the end
    # Checkpoint the final step (what scaling-export exports by default): weights, optimizer and
    # schedule, about 12 bytes a parameter in fp32 (the default study's models: under 0.1 s and 1 MB).
    # false skips it; exporting then needs --step N.
    final_checkpoint: bool = True
    # The newest, the final one included; a trunk keeps its run.fork_tokens besides until their branches complete.
    keep_checkpoints: int = 2
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    num_threads: Optional[int] = None  # CPU threads per process; None: cores / local processes
    nan_check: bool = True
    # Load checkpoints written by older versions (pickled state) as they are: arbitrary code runs
    # if a file was crafted, so only for checkpoints you or your job wrote. Off by default.
    trust_checkpoint: bool = False

    def problems(self, prefix: str = "train") -> list[str]:
        out = []
        if (self.tokens is None) == (self.flops is None):
            out.append(
                f"{prefix}.tokens={self.tokens} and {prefix}.flops={self.flops}: set exactly one budget, "
                f"e.g. {prefix}.tokens=2e6"
            )
        for key in ("tokens", "flops", "eval_every_tokens", "checkpoint_every_tokens"):
            value = getattr(self, key)
            if value is not None and not (math.isfinite(value) and value > 0):
                out.append(f"{prefix}.{key}={value} must be a positive number")
        if self.flops_convention not in FLOPS_CONVENTIONS:
            out.append(f"{prefix}.flops_convention={self.flops_convention!r}; use one of {FLOPS_CONVENTIONS}")
        if self.schedule not in SCHEDULES:
            out.append(f"{prefix}.schedule={self.schedule!r}; use one of {SCHEDULES}")
        if self.precision not in PRECISIONS:
            out.append(f"{prefix}.precision={self.precision!r}; use one of {PRECISIONS}")
        if self.zero_stage not in (0, 1, 2, 3):
            out.append(f"{prefix}.zero_stage={self.zero_stage}; use 0, 1, 2 or 3")
        if self.engine not in ENGINES:
            out.append(f"{prefix}.engine={self.engine!r}; use one of {ENGINES}")
        elif self.engine == "fsdp" and self.zero_stage != 0:
            out.append(
                f"{prefix}.zero_stage={self.zero_stage} is a DeepSpeed setting, but {prefix}.engine=fsdp always "
                f"shards parameters, gradients and optimizer state (as ZeRO-3); leave {prefix}.zero_stage at 0, "
                f"or use {prefix}.engine=deepspeed"
            )
        if self.global_batch_size <= 0:
            out.append(f"{prefix}.global_batch_size={self.global_batch_size} must be >= 1")
        mbs = self.micro_batch_size
        if not (mbs == "auto" or (isinstance(mbs, int) and mbs > 0)):
            out.append(f"{prefix}.micro_batch_size={mbs!r}; use a positive integer or auto")
        if not 0 <= self.decay_fraction <= 1:
            out.append(f"{prefix}.decay_fraction={self.decay_fraction} must lie in [0, 1]")
        if self.decay_shape not in DECAY_SHAPES:
            out.append(f"{prefix}.decay_shape={self.decay_shape!r}; use one of {DECAY_SHAPES}")
        if self.parent is not None:
            if self.schedule != "wsd":
                out.append(
                    f"{prefix}.parent={self.parent!r} makes this run a cooldown branch, but {prefix}.schedule="
                    f"{self.schedule!r}; a branch decays from its trunk's constant LR: use {prefix}.schedule=wsd"
                )
            elif not 0 < self.decay_fraction < 1:
                out.append(
                    f"{prefix}.decay_fraction={self.decay_fraction}: a branch forks at (1 - decay_fraction) of its "
                    f"budget, so it must lie in (0, 1), e.g. 0.2"
                )
        if not 0 <= self.min_lr_ratio <= 1:
            out.append(f"{prefix}.min_lr_ratio={self.min_lr_ratio} must lie in [0, 1]")
        if self.lr <= 0:
            out.append(f"{prefix}.lr={self.lr} must be positive")
        if self.warmup_tokens < 0:
            out.append(f"{prefix}.warmup_tokens={self.warmup_tokens} must be >= 0")
        if self.eval_tokens <= 0:
            out.append(f"{prefix}.eval_tokens={self.eval_tokens} must be positive")
        if self.keep_checkpoints < 1:
            out.append(f"{prefix}.keep_checkpoints={self.keep_checkpoints} must be >= 1")
        if self.log_every_steps < 1:
            out.append(f"{prefix}.log_every_steps={self.log_every_steps} must be >= 1")
        if self.device not in ("auto", "cpu", "cuda"):
            out.append(f"{prefix}.device={self.device!r}; use auto, cpu or cuda")
        return out


@dataclass
class WandbConfig:
    mode: str = "auto"  # auto: online when credentials exist, otherwise offline
    project: str = "scaling"
    entity: Optional[str] = None
    tags: list[str] = field(default_factory=list)
    # The dashboard gets a training row at most once per this many seconds, and every evaluation
    # row and a run's last row; 0 mirrors every row. metrics.jsonl keeps every row either way.
    # Sending one row costs about 1 ms of CPU, as much as a small model's whole step.
    min_interval_s: float = 1.0

    def problems(self, prefix: str = "logger.wandb") -> list[str]:
        out = []
        if self.mode not in WANDB_MODES:
            out.append(f"{prefix}.mode={self.mode!r}; use one of {WANDB_MODES}")
        if not self.min_interval_s >= 0:
            out.append(f"{prefix}.min_interval_s={self.min_interval_s} must be >= 0 (0 mirrors every row)")
        return out


@dataclass
class LoggerConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class RunConfig:
    dir: str = "runs/default"  # the run directory: config, metrics, result and checkpoints
    id: Optional[str] = None  # defaults to the directory's name
    group: Optional[str] = None  # the study this run belongs to (the wandb group)
    # A branch's trunk directory (train.parent); None: the sibling of run.dir named train.parent.
    parent_dir: Optional[str] = None
    # A trunk's fork points in tokens: checkpointed when reached and kept past
    # train.keep_checkpoints until every branch the study's plan forks there has completed, so that
    # each cooldown branch finds its start (scaling/trainer/branch.py). Here, not under train,
    # because it does not change what the run computes (run.* is out of the run id).
    fork_tokens: list[float] = field(default_factory=list)

    def problems(self, prefix: str = "run") -> list[str]:
        out = [] if self.dir else [f"{prefix}.dir is empty; set run.dir=PATH"]
        bad = [t for t in self.fork_tokens if not (math.isfinite(t) and t > 0)]
        if bad:
            out.append(f"{prefix}.fork_tokens has {bad}; fork points are positive token counts")
        return out


@dataclass
class TrainAppConfig:
    """The whole config of `scaling-train`."""

    model: Any = None  # a family's config (GPTConfig, CNNConfig, ...), picked by the `model` config group
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)


def validate(cfg: TrainAppConfig) -> TrainAppConfig:
    """Check every section and raise one ConfigError listing all problems."""
    problems: list[str] = []
    family = FAMILIES.get(getattr(cfg.model, "family", None))
    if family is None or not isinstance(cfg.model, family.config):
        name = getattr(cfg.model, "family", cfg.model)
        problems.append(f"model.family={name!r} is not a known family; use one of {sorted(FAMILIES)}")
    else:
        problems += cfg.model.problems()
    problems += cfg.data.problems()
    problems += cfg.train.problems()
    problems += cfg.run.problems()
    if cfg.run.fork_tokens and cfg.train.schedule not in ("constant", "wsd"):
        problems.append(
            f"run.fork_tokens={cfg.run.fork_tokens} pins cooldown fork points, but train.schedule="
            f"{cfg.train.schedule!r} decays from the start; a trunk trains with train.schedule=constant (or wsd)"
        )
    problems += cfg.logger.wandb.problems()
    raise_if(problems)
    return cfg


def register_configs() -> None:
    """Register the schemas in Hydra's ConfigStore. YAML files under conf/ extend them through
    their defaults lists (`- /schema/model/gpt@_here_`), so every key is typed."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainAppConfig)
    for name, family in FAMILIES.items():
        cs.store(group="schema/model", name=name, node=family.config)
    cs.store(group="schema/data", name="data", node=DataConfig)
    cs.store(group="schema/train", name="train", node=TrainConfig)


def to_dataclass(dcfg: Any) -> TrainAppConfig:
    """Convert a composed DictConfig into validated plain dataclasses."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_object(dcfg)
    if isinstance(cfg, dict):  # composed without the schema (e.g. from a saved config.yaml)
        cfg = from_dict(cfg)
    return validate(cfg)


def from_dict(raw: dict) -> TrainAppConfig:
    """Build a TrainAppConfig from a plain dict such as a saved `config.yaml`, rejecting unknown
    keys with their full name."""
    raw = dict(raw)
    model_raw = dict(raw.pop("model", None) or {})
    from scaling.families import get

    config = get(model_raw.get("family", DEFAULT)).config
    sections = {
        "data": DataConfig,
        "train": TrainConfig,
        "run": RunConfig,
    }
    kwargs: dict[str, Any] = {"model": _build(config, model_raw, "model")}
    for key, cls in sections.items():
        kwargs[key] = _build(cls, raw.pop(key, None) or {}, key)
    logger = raw.pop("logger", None) or {}
    kwargs["logger"] = LoggerConfig(wandb=_build(WandbConfig, logger.get("wandb") or {}, "logger.wandb"))
    if raw:
        from scaling.errors import ConfigError

        raise ConfigError([f"unknown key {k!r}; remove it or check its spelling" for k in raw])
    return TrainAppConfig(**kwargs)


def _build(cls: type, values: dict, prefix: str) -> Any:
    names = {f.name for f in fields(cls)}
    unknown = [k for k in values if k not in names]
    if unknown:
        from scaling.errors import ConfigError

        raise ConfigError([f"unknown key {prefix}.{k}; valid keys are {sorted(names)}" for k in unknown])
    return cls(**values)


def to_dict(obj: Any) -> Any:
    """A dataclass tree as plain dicts and lists, for YAML and JSON."""
    if is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj
