"""The manifest: one JSON file beside the shards that says what they hold.

It records the kind (text or image), the tokenizer and vocabulary size, the sequence length, the
image shape and classes, per split the sample and token counts and the shard list with sizes and
SHA-256 checksums, and the source. The model config takes its data-dependent sizes from it
(`apply_manifest`), so a user never sets them twice.

Torch-free: the planner reads manifests on login nodes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
from dataclasses import dataclass, field
from typing import Any, Optional

from scaling.errors import ConfigError, DataError
from scaling.data.config import DataConfig

FORMAT = "scaling-shards/1"
MANIFEST_NAME = "manifest.json"
SPLITS = ("train", "val")


@dataclass(frozen=True)
class ShardInfo:
    name: str  # file name relative to the dataset location, e.g. train-000000.tar
    samples: int
    bytes: int
    sha256: str


@dataclass
class Manifest:
    kind: str  # "text" | "image"
    name: str
    splits: dict[str, list[ShardInfo]]
    source: dict[str, Any] = field(default_factory=dict)
    tokenizer: Optional[dict[str, Any]] = None  # text: {"type", "vocab_size", "eod_id", "file"}
    seq_len: Optional[int] = None  # text: model context; every sample holds seq_len + 1 tokens
    dtype: Optional[str] = None  # text: "uint16" or "int32", how tokens are stored
    image: Optional[dict[str, Any]] = None  # image: {"size", "channels", "classes", "mean", "std"}
    unique: dict[str, int] = field(default_factory=dict)  # distinct samples per split
    location: str = ""  # folder or URL prefix the manifest was read from (not stored)
    # data.max_unique_tokens (not stored): the training split is its first samples holding at most
    # this many tokens (images); see `capped`. None: every sample.
    max_unique_tokens: Optional[float] = None

    # ---- sizes the model takes from the data ----
    @property
    def vocab_size(self) -> Optional[int]:
        return None if self.tokenizer is None else int(self.tokenizer["vocab_size"])

    @property
    def eod_id(self) -> Optional[int]:
        return None if self.tokenizer is None else self.tokenizer.get("eod_id")

    @property
    def image_size(self) -> Optional[int]:
        return None if self.image is None else int(self.image["size"])

    @property
    def in_channels(self) -> Optional[int]:
        return None if self.image is None else int(self.image["channels"])

    @property
    def n_classes(self) -> Optional[int]:
        return None if self.image is None else len(self.image["classes"])

    # ---- counts ----
    def shards(self, split: str) -> list[ShardInfo]:
        if split not in self.splits:
            raise DataError(f"{self._file()}: no split {split!r}; it has {sorted(self.splits)}")
        return self.splits[split]

    def num_samples(self, split: str) -> int:
        return sum(s.samples for s in self.shards(split))

    def units_per_sample(self) -> int:
        """Training units one sample holds: seq_len predicted tokens for text, one image for images."""
        return int(self.seq_len) if self.kind == "text" else 1

    def kept_samples(self, split: str) -> int:
        """Samples a run draws from: the whole split, or for a capped training split
        (`max_unique_tokens`) its first max_unique_tokens // units_per_sample samples."""
        n = self.num_samples(split)
        if split != "train" or self.max_unique_tokens is None:
            return n
        return min(n, int(self.max_unique_tokens) // self.units_per_sample())

    def is_capped(self, split: str) -> bool:
        """Whether the cap leaves samples of the split out (a cap at or above its size changes nothing)."""
        return self.kept_samples(split) < self.num_samples(split)

    def sample_counts(self, split: str) -> list[int]:
        """Per shard, the samples a run draws from it: a prefix of the split in shard order, so
        the shards past a cap are never read and the last one kept may be cut."""
        left, out = self.kept_samples(split), []
        for s in self.shards(split):
            out.append(min(s.samples, left))
            left -= out[-1]
        return out

    def unique_samples(self, split: str) -> int:
        """Distinct samples a run draws from. A study whose budget exceeds them repeats data."""
        return min(int(self.unique.get(split, self.num_samples(split))), self.kept_samples(split))

    def unique_tokens(self, split: str = "train") -> int:
        """Distinct training units (tokens or images) a run draws from: U_D of Muennighoff et al."""
        return self.unique_samples(split) * self.units_per_sample()

    def tokens(self, split: str) -> int:
        """Training units in the split: predicted tokens (samples * seq_len) for text, images for images."""
        return self.num_samples(split) * self.units_per_sample()

    def epochs(self, budget: float, split: str = "train") -> float:
        """How many times a budget (tokens or images) passes over the unique data a run draws from."""
        return budget / max(1, self.unique_tokens(split))

    def batch_problems(self, global_batch_size: int) -> list[str]:
        """A capped training split must hold one global batch: a problem naming the key, or none."""
        kept, per = self.kept_samples("train"), self.units_per_sample()
        if not self.is_capped("train") or kept >= global_batch_size:
            return []
        unit = "tokens" if self.kind == "text" else "images"
        return [
            f"data.max_unique_tokens={self.max_unique_tokens:g} keeps {kept} training samples ({kept * per} {unit}), "
            f"fewer than one global batch of train.global_batch_size={global_batch_size} samples; raise "
            f"data.max_unique_tokens to at least {global_batch_size * per}, or lower train.global_batch_size"
        ]

    def capped(self, max_unique_tokens: Optional[float]) -> "Manifest":
        """This manifest with its training split restricted to the first samples (in shard order)
        holding at most `max_unique_tokens` tokens (images): the unique data of a data-constrained
        run. The files and `to_json` are unchanged; None removes the cap."""
        if max_unique_tokens is not None:
            unit = "tokens" if self.kind == "text" else "images"
            per = self.units_per_sample()
            if not max_unique_tokens >= per:
                raise ConfigError(
                    f"data.max_unique_tokens={max_unique_tokens:g} holds no whole training sample of {per} {unit} "
                    f"({self._file()}); raise it to at least one global batch of {unit}, or set it to null for no cap"
                )
        return dataclasses.replace(self, max_unique_tokens=max_unique_tokens)

    def url(self, name: str) -> str:
        """Where a file beside the manifest lives: a local path, a URL, or a `pipe:` command."""
        return join_location(self.location, name)

    def _file(self) -> str:
        return self.url(MANIFEST_NAME) if self.location else MANIFEST_NAME

    # ---- (de)serialisation ----
    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "kind": self.kind,
            "name": self.name,
            "source": self.source,
            "tokenizer": self.tokenizer,
            "vocab_size": self.vocab_size,
            "seq_len": self.seq_len,
            "dtype": self.dtype,
            "image": self.image,
            "splits": {
                split: {
                    "samples": self.num_samples(split),
                    "tokens": self.tokens(split),
                    "unique_samples": int(self.unique.get(split, self.num_samples(split))),  # of the files, not the cap
                    "shards": [dataclasses.asdict(s) for s in shards],
                }
                for split, shards in self.splits.items()
            },
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any], location: str = "") -> "Manifest":
        where = join_location(location, MANIFEST_NAME) if location else MANIFEST_NAME
        try:
            if raw.get("format") != FORMAT:
                raise DataError(
                    f"{where}: format {raw.get('format')!r} is not {FORMAT!r}; re-create the shards with scaling-data"
                )
            splits = {k: [ShardInfo(**s) for s in v["shards"]] for k, v in raw["splits"].items()}
            m = cls(
                kind=raw["kind"],
                name=raw["name"],
                splits=splits,
                source=raw.get("source") or {},
                tokenizer=raw.get("tokenizer"),
                seq_len=raw.get("seq_len"),
                dtype=raw.get("dtype"),
                image=raw.get("image"),
                unique={k: int(v.get("unique_samples", 0)) or sum(s.samples for s in splits[k]) for k, v in raw["splits"].items()},
                location=location,
            )
        except (KeyError, TypeError, AttributeError) as exn:
            raise DataError(f"{where}: malformed manifest ({exn!r}); re-create it with scaling-data") from exn
        problems = m.problems()
        if problems:
            raise DataError(f"{where}: " + "; ".join(problems) + "; re-create it with scaling-data")
        return m

    def problems(self) -> list[str]:
        out = []
        if self.kind not in ("text", "image"):
            out.append(f"kind={self.kind!r} is neither text nor image")
        for split in SPLITS:
            if not self.splits.get(split):
                out.append(f"split {split!r} has no shards")
        if self.kind == "text":
            if not self.tokenizer or not self.seq_len or self.dtype not in ("uint16", "int32"):
                out.append("a text manifest needs tokenizer, seq_len and dtype")
        if self.kind == "image":
            if not self.image or not {"size", "channels", "classes", "mean", "std"} <= set(self.image):
                out.append("an image manifest needs image.size, channels, classes, mean and std")
        return out

    def save(self, folder: str) -> str:
        path = os.path.join(folder, MANIFEST_NAME)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.to_json(), f, indent=1)
            f.write("\n")
        os.replace(tmp, path)  # a reader never sees half a manifest
        return path

    def summary(self) -> str:
        parts = [f"{self.name} ({self.kind})"]
        if self.kind == "text":
            parts.append(f"tokenizer={self.tokenizer['type']} vocab_size={self.vocab_size} seq_len={self.seq_len}")
        else:
            parts.append(f"image={self.in_channels}x{self.image_size}x{self.image_size} n_classes={self.n_classes}")
        for split in self.splits:
            parts.append(
                f"{split}: {self.num_samples(split)} samples, {self.tokens(split)} "
                f"{'tokens' if self.kind == 'text' else 'images'}, {len(self.splits[split])} shards"
            )
        if self.is_capped("train"):
            parts.append(f"train capped by data.max_unique_tokens={self.max_unique_tokens:g}: the first "
                         f"{self.kept_samples('train')} samples, {self.unique_tokens('train')} unique "
                         f"{'tokens' if self.kind == 'text' else 'images'}")
        if "loss_floor_nats" in self.source:
            rate = self.source.get("entropy_rate_nats_per_token")
            parts.append(f"loss floor: {self.source['loss_floor_nats']:.6g} nats"
                         + (f" (entropy rate {rate:.6g} nats per token)" if rate is not None else ""))
        return "\n  ".join(parts)


# ---- locations: local folders, URLs, pipe: commands ----


def is_remote(location: str) -> bool:
    return "://" in location or location.startswith("pipe:")


def join_location(location: str, name: str) -> str:
    """The address of `name` beside a manifest.

    `location` is a local folder, a URL prefix (http, https, file) or a template holding `{}`,
    e.g. `pipe:aws s3 cp s3://bucket/data/{} -`, where `{}` stands for the file name. `s3://` and
    `gs://` prefixes become such `pipe:` templates, because webdataset reads them through a pipe.
    """
    if "{}" in location:
        return location.replace("{}", name)
    if location.startswith("s3://"):
        return f"pipe:aws s3 cp {location.rstrip('/')}/{name} -"
    if location.startswith("gs://"):
        return f"pipe:gsutil cat {location.rstrip('/')}/{name}"
    if "://" in location:
        return location.rstrip("/") + "/" + name
    return os.path.join(location, name)


def read_bytes(url: str) -> bytes:
    """Read a whole file from a local path, a URL or a `pipe:` command."""
    if url.startswith("pipe:"):
        proc = subprocess.run(url[5:], shell=True, capture_output=True)
        if proc.returncode != 0:
            raise DataError(
                f"{url}: the command failed with status {proc.returncode} ({proc.stderr.decode(errors='replace')[-300:].strip()}); "
                f"check the data.path template and your storage credentials"
            )
        return proc.stdout
    if url.startswith(("http://", "https://")):
        import urllib.request

        try:
            with urllib.request.urlopen(url, timeout=60) as r:
                return r.read()
        except OSError as exn:
            raise DataError(f"{url}: cannot be read ({exn}); check data.path and that the server is reachable") from exn
    if url.startswith("file://"):
        url = url[7:]
    with open(url, "rb") as f:
        return f.read()


def load_manifest(location: str, check_files: bool = True) -> Manifest:
    """Read `manifest.json` from a folder or URL prefix. For local folders, check that every shard
    exists with the recorded size, so a truncated or missing shard fails here, not mid-run."""
    location = str(location)
    path = join_location(location, MANIFEST_NAME)
    if not is_remote(location):
        if not os.path.exists(location):
            raise DataError(f"{location}: no such folder; set data.path to a folder made by scaling-data, or null for a built-in set")
        if not os.path.isdir(location):
            raise DataError(f"{location}: not a folder; set data.path to the folder that holds {MANIFEST_NAME}")
        if not os.path.exists(path):
            raise DataError(f"{path}: missing; create the shards with `scaling-data text|images ... --out {location}`")
    try:
        raw = json.loads(read_bytes(path))
    except json.JSONDecodeError as exn:
        raise DataError(f"{path}: not valid JSON ({exn}); re-create it with scaling-data") from exn
    except OSError as exn:
        raise DataError(f"{path}: cannot be read ({exn}); check data.path") from exn
    m = Manifest.from_json(raw, location)
    if check_files and not is_remote(location):
        check_shard_files(m)
    return m


def check_shard_files(m: Manifest, checksums: bool = False) -> None:
    """Check every shard of a local dataset against the manifest: present, the recorded size, and
    (with `checksums`) the recorded SHA-256. Lists every mismatch in one error."""
    problems = []
    for split, shards in m.splits.items():
        for s in shards:
            path = m.url(s.name)
            if not os.path.exists(path):
                problems.append(f"{path}: missing")
                continue
            size = os.path.getsize(path)
            if size != s.bytes:
                problems.append(f"{path}: {size} bytes but the manifest says {s.bytes} (truncated or replaced)")
            elif checksums and sha256_file(path) != s.sha256:
                problems.append(f"{path}: SHA-256 differs from the manifest (corrupt or replaced)")
    if problems:
        raise DataError(
            f"{m.url(MANIFEST_NAME)} does not match its shards:\n  - "
            + "\n  - ".join(problems[:20])
            + ("\n  - ..." if len(problems) > 20 else "")
            + "\nre-create the dataset with scaling-data (for a built-in set, delete its cache folder)"
        )


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---- the model follows the data ----


_DATA_KEYS = {f.name for f in dataclasses.fields(DataConfig)}  # manifest attributes a user sets as data.*


def apply_manifest(model_cfg: Any, manifest: Manifest) -> Any:
    """Return a copy of a model config whose None data-dependent fields (its family's
    `data_fields`) are filled from the manifest. A set field that contradicts the data raises
    ConfigError naming both values.

    A padded field (a GPT's vocabulary) may be larger than the data's, never smaller: a token id
    past the embedding table would fail mid-run. Every other field (sequence length, image
    shape, class count) must match exactly, because every sample holds exactly those."""
    from scaling.families import FAMILIES, family_of

    family = family_of(model_cfg)
    where = manifest._file()
    if manifest.kind != family.data_kind:
        others = sorted(name for name, f in FAMILIES.items() if f.data_kind == manifest.kind)
        raise ConfigError(
            f"model.family={family.name} trains on {family.data_kind} data but {where} holds {manifest.kind} data; "
            f"use a {family.data_kind} dataset, or a model of a family for {manifest.kind} data ({', '.join(others)})"
        )
    problems: list[str] = []
    updates: dict[str, Any] = {}
    for key, attr in family.data_fields.items():
        mine, theirs = getattr(model_cfg, key), getattr(manifest, attr)
        if mine is None:
            updates[key] = theirs
        elif key in family.padded_fields and mine < theirs:
            problems.append(
                f"model.{key}={mine} is smaller than the data's in {where}, {attr}={theirs}; "
                f"remove model.{key} (it comes from the data) or set it >= {theirs}"
            )
        elif key not in family.padded_fields and mine != theirs:
            remedy = f" or prepare the data with data.{attr}={mine}" if attr in _DATA_KEYS else ""
            problems.append(
                f"model.{key}={mine} but {where} has {attr}={theirs}; remove model.{key} (it comes from the data)"
                + remedy
            )
    if problems:
        raise ConfigError(problems)
    return dataclasses.replace(model_cfg, **updates)
