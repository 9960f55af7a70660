"""Data preparation: round trips of text and images through shards, splits, built-in sets, the
manifest, the model following the data, the CLI and the conf/data files."""

from __future__ import annotations

import json
import multiprocessing as mp
import os

import numpy as np
import pytest

from scaling.config import CNNConfig, GPTConfig
from scaling.data import DataConfig, apply_manifest, load_manifest, prepare_dataset
from scaling.data.build import pack, split_documents
from scaling.data.cli import main as cli_main
from scaling.data.prepare import prepare_image_folder, prepare_text_files
from scaling.data.tokenizer import load_tokenizer
from scaling.errors import ConfigError, DataError

DOCS = [
    "def f(x):\n    return x + 1\n",
    "Ünïcödé text — with multi-byte characters. " * 5,
    "The quick brown fox jumps over the lazy dog.\n" * 7,
    "import os\nprint(os.getcwd())\n" * 3,
    "short",
    "A longer document about scaling laws: loss falls as a power of compute. " * 6,
]


def all_samples(manifest, split):
    from scaling.data.loader import read_shard

    out = []
    for i in range(len(manifest.shards(split))):
        out += read_shard(manifest, split, i)
    return out


def text_rows(manifest, split):
    """Rows of the split in their original (pre-shuffle) order, recovered from the sample keys."""
    samples = sorted(all_samples(manifest, split), key=lambda s: s["__key__"])
    assert [int(s["__key__"]) for s in samples] == list(range(len(samples)))
    return np.stack([np.frombuffer(s["tokens"], dtype=manifest.dtype).astype(np.int64) for s in samples])


@pytest.fixture
def text_folder(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    for i, doc in enumerate(DOCS[:4]):
        (src / f"doc{i}.txt").write_text(doc, encoding="utf-8")
    with open(src / "sub" / "more.jsonl", "w", encoding="utf-8") as f:
        for doc in DOCS[4:]:
            f.write(json.dumps({"text": doc}) + "\n")
    (src / "sub" / "blob.bin").write_bytes(bytes(range(256)) * 4)  # binary: skipped
    return src


@pytest.mark.parametrize("tokenizer", ["byte", "bpe"])
def test_text_round_trip(tmp_path, text_folder, tokenizer):
    cfg = DataConfig(seq_len=15, val_fraction=0.2, shard_samples=7, tokenizer=tokenizer,
                     vocab_size=300 if tokenizer == "bpe" else None)
    m = prepare_text_files([str(text_folder)], str(tmp_path / "out"), cfg)
    tok = load_tokenizer(m)
    assert m.kind == "text" and m.seq_len == 15 and m.vocab_size == tok.vocab_size
    if tokenizer == "bpe":
        assert (tmp_path / "out" / "tokenizer.json").exists() and m.tokenizer["file"] == "tokenizer.json"
    else:
        assert m.vocab_size == 257
    # Rebuild the expected packing from the same documents (sorted walk: doc0..doc3, then JSONL).
    ids = [tok.encode(d) for d in DOCS]
    for d in DOCS:
        assert tok.decode(tok.encode(d)) == d
    train_idx, val_idx = split_documents([len(x) for x in ids], 0.2, 0)
    assert train_idx and val_idx and not set(train_idx) & set(val_idx)
    for split, idx in (("train", train_idx), ("val", val_idx)):
        rows = text_rows(m, split)
        assert rows.shape[1] == 16 and m.num_samples(split) == len(rows)
        np.testing.assert_array_equal(rows, pack([ids[i] for i in idx], m.eod_id, 16))
        # Decoding the packed rows gives the documents back, separated by end-of-document tokens.
        flat = rows.reshape(-1).tolist()
        pieces, cur = [], []
        for t in flat:
            if t == m.eod_id:
                pieces.append(cur)
                cur = []
            else:
                cur.append(t)
        assert [tok.decode(p) for p in pieces] == [DOCS[i] for i in idx][: len(pieces)]
    assert m.tokens("train") == m.num_samples("train") * 15
    assert m.source["documents"] == {"train": len(train_idx), "val": len(val_idx)}


def test_single_document_split_shares_no_token(tmp_path):
    f = tmp_path / "one.txt"
    f.write_text("x" * 1000)
    m = prepare_text_files([str(f)], str(tmp_path / "out"), DataConfig(seq_len=9, val_fraction=0.1))
    assert m.num_samples("train") + m.num_samples("val") == 1001 // 10
    assert m.num_samples("val") == 10


def make_image_folder(root, sizes=(5, 5), classes=("cat", "dog", "emu"), per_class=6, mode="L"):
    from PIL import Image

    rng = np.random.default_rng(0)
    expected = []
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            shape = (sizes[1], sizes[0]) if mode == "L" else (sizes[1], sizes[0], 3)
            px = rng.integers(0, 256, size=shape, dtype=np.uint8)
            Image.fromarray(px).save(root / name / f"{i:02d}.png")
            expected.append((px, c))
    return expected


def test_image_round_trip(tmp_path):
    expected = make_image_folder(tmp_path / "imgs", mode="RGB")
    m = prepare_image_folder(str(tmp_path / "imgs"), str(tmp_path / "out"), DataConfig(val_fraction=0.2, shard_samples=4))
    assert (m.kind, m.image_size, m.in_channels, m.n_classes) == ("image", 5, 3, 3)
    seen = set()
    from scaling.data.build import decode_png

    for split in ("train", "val"):
        for s in all_samples(m, split):
            px, label = expected[int(s["__key__"])]
            np.testing.assert_array_equal(decode_png(s["png"]), px)
            assert int(s["cls"]) == label
            assert s["__key__"] not in seen
            seen.add(s["__key__"])
    assert len(seen) == len(expected)
    assert m.num_samples("val") == 3  # one per class: round(6 * 0.2)
    # The loader's normalised pixels map back to the same values.
    from scaling.data import eval_batches

    x, y = eval_batches(m, num_samples=3, batch_size=3, rank=0, world_size=1)[0]
    mean = np.array(m.image["mean"])[:, None, None]
    std = np.array(m.image["std"])[:, None, None]
    pixels = np.round((x.numpy() * std + mean) * 255).astype(np.uint8)
    val_keys = [int(s["__key__"]) for s in all_samples(m, "val")]
    for k, p, lab in zip(val_keys, pixels, y.tolist()):
        np.testing.assert_array_equal(p.transpose(1, 2, 0), expected[k][0])
        assert lab == expected[k][1]


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        prepare_image_folder(str(tmp_path / "nope"), str(tmp_path / "o1"), DataConfig())
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class subfolders"):
        prepare_image_folder(str(tmp_path / "empty"), str(tmp_path / "o2"), DataConfig())
    (tmp_path / "empty" / "a").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        prepare_image_folder(str(tmp_path / "empty"), str(tmp_path / "o3"), DataConfig())
    make_image_folder(tmp_path / "rect", sizes=(6, 4))
    with pytest.raises(DataError, match="--image-size"):
        prepare_image_folder(str(tmp_path / "rect"), str(tmp_path / "o4"), DataConfig())
    m = prepare_image_folder(str(tmp_path / "rect"), str(tmp_path / "o5"), DataConfig(), image_size=4)
    assert m.image_size == 4 and m.in_channels == 1


def test_text_source_errors(tmp_path):
    with pytest.raises(DataError, match="no such file or folder"):
        prepare_text_files([str(tmp_path / "missing")], str(tmp_path / "o"), DataConfig())
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty"):
        prepare_text_files([str(tmp_path / "empty")], str(tmp_path / "o"), DataConfig())
    (tmp_path / "bad.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:1: no 'text' field; pass --text-key"):
        prepare_text_files([str(tmp_path / "bad.jsonl")], str(tmp_path / "o"), DataConfig())
    (tmp_path / "tiny.txt").write_text("ab")
    with pytest.raises(DataError, match="fewer than one sample"):
        prepare_text_files([str(tmp_path / "tiny.txt")], str(tmp_path / "o"), DataConfig(seq_len=64))


def test_builtin_synthetic_cached_and_reused(tmp_path):
    cfg = DataConfig(name="synthetic", cache_dir=str(tmp_path), seq_len=16, synthetic_tokens=8000, shard_samples=64)
    m1 = prepare_dataset(cfg)
    stamp = os.path.getmtime(m1.url("manifest.json"))
    m2 = prepare_dataset(cfg)
    assert m2.location == m1.location and os.path.getmtime(m2.url("manifest.json")) == stamp
    assert m1.vocab_size == 65 and m1.eod_id == 64 and m1.seq_len == 16
    assert 0 < m1.source["entropy_nats_per_token"] < np.log(64)
    assert m1.unique_samples("train") == m1.num_samples("train")
    assert m1.epochs(2 * m1.tokens("train")) == pytest.approx(2.0)
    train = {s["tokens"] for s in all_samples(m1, "train")}
    val = {s["tokens"] for s in all_samples(m1, "val")}
    assert len(train) == m1.num_samples("train") and not train & val
    # A changed knob prepares a different folder instead of reusing a stale one.
    assert prepare_dataset(DataConfig(**{**cfg.__dict__, "seq_len": 8})).location != m1.location


def _prepare_in_child(cache: str, q) -> None:
    cfg = DataConfig(name="synthetic", cache_dir=cache, seq_len=16, synthetic_tokens=30000, shard_samples=64)
    q.put(prepare_dataset(cfg).location)


def test_builtin_concurrent_prepare(tmp_path):
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_prepare_in_child, args=(str(tmp_path), q)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    locations = {q.get() for _ in procs}
    assert len(locations) == 1
    m = load_manifest(locations.pop())
    from scaling.data.manifest import check_shard_files

    check_shard_files(m, checksums=True)
    assert sorted(os.listdir(tmp_path)) == sorted([os.path.basename(m.location), os.path.basename(m.location) + ".lock"])


def test_builtin_digits(tmp_path):
    m = prepare_dataset(DataConfig(name="digits", cache_dir=str(tmp_path), shard_samples=512))
    assert (m.image_size, m.in_channels, m.n_classes) == (8, 1, 10)
    assert m.num_samples("train") + m.num_samples("val") == 1797
    assert m.unique_samples("train") == m.num_samples("train") == m.tokens("train")
    from sklearn.datasets import load_digits

    from scaling.data.build import decode_png

    d = load_digits()
    for s in all_samples(m, "val")[:20]:
        i = int(s["__key__"])
        np.testing.assert_array_equal(decode_png(s["png"])[:, :, 0], np.round(d.images[i] * 255 / 16).astype(np.uint8))
        assert int(s["cls"]) == d.target[i]


def test_builtin_stdlib_small(tmp_path):
    cfg = DataConfig(name="stdlib_text", cache_dir=str(tmp_path), max_source_mb=0.3, seq_len=64)
    m = prepare_dataset(cfg)
    assert m.vocab_size == 257 and m.source["type"] == "python-stdlib"
    assert m.source["chars"] == 300_000
    assert m.num_samples("train") > 10 * m.num_samples("val") > 0
    text = load_tokenizer(m).decode(text_rows(m, "train")[:200].reshape(-1))
    assert "def " in text and '"""' in text  # source and docstrings
    # Deterministic: a second cache prepares byte-identical shards.
    m2 = prepare_dataset(DataConfig(**{**cfg.__dict__, "cache_dir": str(tmp_path / "again")}))
    assert [s.sha256 for s in m2.shards("train")] == [s.sha256 for s in m.shards("train")]


@pytest.mark.slow
def test_builtin_stdlib_default_prepares_in_seconds(tmp_path):
    import time

    t = time.perf_counter()
    m = prepare_dataset(DataConfig(name="stdlib_text", cache_dir=str(tmp_path)))
    assert time.perf_counter() - t < 20
    assert m.tokens("train") > 3_000_000


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SCALING_CACHE", str(tmp_path / "envcache"))
    m = prepare_dataset(DataConfig(name="synthetic", seq_len=8, synthetic_tokens=4000))
    assert m.location.startswith(str(tmp_path / "envcache"))


# ---- the model follows the data ----


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return prepare_dataset(DataConfig(name="synthetic", cache_dir=str(cache), seq_len=16, synthetic_tokens=8000))


def test_apply_manifest_fills_and_checks(synth):
    model = apply_manifest(GPTConfig(), synth)
    assert (model.vocab_size, model.seq_len) == (65, 16)
    assert apply_manifest(GPTConfig(vocab_size=128, seq_len=16), synth).vocab_size == 128  # padding is fine
    with pytest.raises(ConfigError, match=r"model.vocab_size=32 .* vocab_size=65"):
        apply_manifest(GPTConfig(vocab_size=32), synth)
    with pytest.raises(ConfigError, match=r"model.seq_len=32 but .* seq_len=16.*data.seq_len=32"):
        apply_manifest(GPTConfig(seq_len=32), synth)
    with pytest.raises(ConfigError, match="model.family=cnn"):
        apply_manifest(CNNConfig(), synth)


def test_apply_manifest_cnn(tmp_path):
    m = prepare_dataset(DataConfig(name="digits", cache_dir=str(tmp_path)))
    model = apply_manifest(CNNConfig(), m)
    assert (model.image_size, model.in_channels, model.n_classes) == (8, 1, 10)
    with pytest.raises(ConfigError, match=r"model.n_classes=100 but .* n_classes=10"):
        apply_manifest(CNNConfig(n_classes=100), m)
    with pytest.raises(ConfigError, match="model.family=gpt"):
        apply_manifest(GPTConfig(), m)


# ---- manifest errors ----


def test_missing_path_and_manifest(tmp_path):
    with pytest.raises(DataError, match="no such folder; set data.path"):
        prepare_dataset(DataConfig(path=str(tmp_path / "nope")))
    with pytest.raises(DataError, match=r"manifest.json: missing; create the shards with `scaling-data"):
        prepare_dataset(DataConfig(path=str(tmp_path)))


def test_manifest_that_does_not_match_its_shards(tmp_path, synth):
    import shutil

    ds = tmp_path / "ds"
    shutil.copytree(synth.location, ds)
    raw = json.loads((ds / "manifest.json").read_text())
    raw["splits"]["train"]["shards"][0]["bytes"] += 512
    (ds / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(DataError, match=r"(?s)train-000000.tar: \d+ bytes but the manifest says \d+.*re-create"):
        load_manifest(str(ds))
    raw["splits"]["train"]["shards"][0]["bytes"] -= 512
    raw["splits"]["train"]["shards"].append({"name": "train-000099.tar", "samples": 3, "bytes": 10, "sha256": "0"})
    (ds / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(DataError, match="train-000099.tar: missing"):
        load_manifest(str(ds))
    (ds / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match="manifest.json: not valid JSON"):
        load_manifest(str(ds))
    (ds / "manifest.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(DataError, match="re-create the shards with scaling-data"):
        load_manifest(str(ds))


def test_data_config_problems():
    assert DataConfig().problems() == []
    probs = DataConfig(tokenizer="bpe", val_fraction=1.5, streams=0, shard_samples=0, max_source_mb=-1).problems()
    text = "\n".join(probs)
    for key in ("data.vocab_size", "data.val_fraction=1.5", "data.streams=0", "data.shard_samples=0", "data.max_source_mb=-1"):
        assert key in text
    with pytest.raises(ConfigError, match="data.name='nope'"):
        prepare_dataset(DataConfig(name="nope"))


# ---- CLI ----


def test_cli(tmp_path, text_folder, capsys):
    out = tmp_path / "ds"
    assert cli_main(["text", str(text_folder), "--out", str(out), "--seq-len", "8", "--shard-samples", "5"]) == 0
    assert "vocab_size=257 seq_len=8" in capsys.readouterr().out
    assert cli_main(["verify", str(out)]) == 0
    assert cli_main(["text", str(text_folder), "--out", str(out)]) == 1  # refuses to overwrite
    assert "exists; pick another --out" in capsys.readouterr().err
    make_image_folder(tmp_path / "imgs")
    assert cli_main(["images", str(tmp_path / "imgs"), "--out", str(tmp_path / "ids")]) == 0
    assert cli_main(["builtin", "synthetic", "--cache-dir", str(tmp_path / "c"), "--seq-len", "8"]) == 0
    with open(out / "train-000000.tar", "r+b") as f:
        f.seek(700)
        f.write(b"\xff")
    assert cli_main(["verify", str(out)]) == 1
    assert "train-000000.tar: SHA-256 differs" in capsys.readouterr().err
    assert cli_main(["show", str(tmp_path / "missing")]) == 1


# ---- conf/data ----


@pytest.mark.parametrize("name", sorted(f[:-5] for f in os.listdir("conf/data") if f.endswith(".yaml")))
def test_conf_data_composes(name):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from scaling.config import register_configs

    register_configs()
    overrides = [f"data={name}"] + (["data.path=/some/folder"] if name == "shards" else [])
    with initialize_config_dir(config_dir=os.path.abspath("conf"), version_base=None):
        cfg = compose(config_name="train", overrides=overrides)
    data = OmegaConf.to_object(cfg.data)
    assert isinstance(data, DataConfig) and data.problems() == []


def test_config_and_manifest_stay_torch_free(tmp_path):
    # The planner imports scaling.config (and with it scaling.data) on login nodes without torch.
    import subprocess
    import sys

    code = (
        "import sys, scaling.config, scaling.data\n"
        "from scaling.data import prepare_dataset, DataConfig, apply_manifest\n"
        f"prepare_dataset(DataConfig(name='synthetic', seq_len=8, synthetic_tokens=2000, cache_dir={str(tmp_path)!r}))\n"
        "assert 'torch' not in sys.modules and 'webdataset' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
