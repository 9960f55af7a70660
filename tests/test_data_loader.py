"""The loader's guarantee: global batches depend on (dataset, seed, global batch, streams, step)
only; ranks and workers read disjoint data; every sample is seen once per epoch; resume is exact;
a corrupt shard fails the run with a DataError naming it."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

from scaling.data import DataConfig, eval_batches, load_manifest, prepare_dataset, train_batches
from scaling.data.loader import Stream, stream_parts
from scaling.errors import ConfigError, DataError
from data_utils import SEQ, unique_dataset, uniq  # noqa: F401 - uniq is a fixture


def split_rows(m, split) -> set[int]:
    """First tokens of every row of a split, read straight from the shards."""
    from scaling.data.loader import read_shard

    rows = set()
    for i in range(len(m.shards(split))):
        rows |= {int(np.frombuffer(s["tokens"], dtype=m.dtype)[0]) for s in read_shard(m, split, i)}
    return rows


def row_ids(x: torch.Tensor) -> list[int]:
    return x[:, 0].tolist()


def global_batches(m, steps, world_size, num_workers=0, start_step=0, G=8, streams=4, seed=3):
    """Concatenate the ranks' parts into global batches."""
    its = [train_batches(m, global_batch_size=G, rank=r, world_size=world_size, seed=seed, start_step=start_step,
                         num_workers=num_workers, streams=streams) for r in range(world_size)]
    out = []
    for _ in range(steps):
        parts = [next(it) for it in its]
        out.append((torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])))
    for it in its:
        it.close()
    return out


def test_each_sample_once_per_epoch_with_2_ranks_2_workers(uniq):
    m = uniq
    train_rows = split_rows(m, "train")
    assert m.num_samples("train") == 128 and len(m.shards("train")) == 8
    # G=8, L=4: each stream holds 2 shards = 32 rows, 2 rows per step: one epoch is 16 steps.
    batches = global_batches(m, 32, world_size=2, num_workers=2)
    first, second = [sum((row_ids(x) for x, _ in batches[a:b]), []) for a, b in ((0, 16), (16, 32))]
    val = split_rows(m, "val")
    all_train = set(first)
    assert len(first) == len(all_train) == 128 and all_train == train_rows  # exactly once in epoch 0
    assert sorted(second) == sorted(first) and second != first  # and again, reshuffled, in epoch 1
    assert not all_train & val  # train and validation do not overlap
    for x, y in batches:
        assert x.shape == y.shape == (8, SEQ)
        assert torch.equal(x[:, 1:], y[:, :-1])  # y is x shifted by one token


def test_ranks_and_workers_do_not_change_global_batches(uniq):
    ref = global_batches(uniq, 20, world_size=1)
    for world_size, workers in ((2, 0), (2, 2), (4, 1), (1, 2)):
        got = global_batches(uniq, 20, world_size=world_size, num_workers=workers)
        for (a, b), (c, d) in zip(ref, got):
            assert torch.equal(a, c) and torch.equal(b, d), (world_size, workers)


def test_ranks_read_disjoint_shards(uniq):
    # Rank r owns streams [r*L/W, (r+1)*L/W): with 8 shards and 4 streams, rank 0 reads shards
    # {0, 4, 1, 5} and rank 1 reads {2, 6, 3, 7}.
    rows = {r: set(sum((row_ids(x) for x, _ in global_batches_rank(uniq, r)), [])) for r in (0, 1)}
    assert not rows[0] & rows[1] and len(rows[0]) == len(rows[1]) == 64


def global_batches_rank(m, rank):
    it = train_batches(m, global_batch_size=8, rank=rank, world_size=2, seed=3, streams=4)
    return [next(it) for _ in range(16)]


@pytest.mark.parametrize("k", [1, 7, 16, 23])
def test_resume_at_step_k_equals_uninterrupted(uniq, k):
    ref = global_batches(uniq, k + 6, world_size=1)
    resumed = global_batches(uniq, 6, world_size=2, start_step=k, num_workers=1)
    for (a, b), (c, d) in zip(ref[k:], resumed):
        assert torch.equal(a, c) and torch.equal(b, d)


def test_resume_uneven_shards_and_state_dict(tmp_path):
    # Shards of 13 rows: 128 rows in 9 shards of unequal streams; skipping crosses shard and epoch ends.
    m = unique_dataset(tmp_path / "u", shard_samples=13)
    it = train_batches(m, global_batch_size=12, rank=0, world_size=1, seed=1, streams=6)
    ref = [next(it) for _ in range(40)]
    assert it.state_dict() == {"step": 40, "seed": 1, "streams": 6, "global_batch_size": 12}
    for k in (5, 11, 33):
        again = train_batches(m, global_batch_size=12, rank=0, world_size=1, seed=1, streams=6, start_step=k)
        for a, b in zip(ref[k:], again):
            assert torch.equal(a[0], b[0])


def test_seed_changes_order_not_content(uniq):
    a = sum((row_ids(x) for x, _ in global_batches(uniq, 16, 1, seed=1)), [])
    b = sum((row_ids(x) for x, _ in global_batches(uniq, 16, 1, seed=2)), [])
    assert a != b and sorted(a) == sorted(b)


def test_fewer_shards_than_streams():
    # 3 shards, 8 streams: streams sharing a shard take alternate samples; one epoch of every stream
    # together covers every sample exactly once.
    parts = stream_parts([10, 10, 7], 8)
    owned = []
    for s, ps in enumerate(parts):
        for i, c, p in ps:
            owned += [(i, j) for j in range(p, [10, 10, 7][i], c)]
    assert len(owned) == len(set(owned)) == 27


def test_digits_fallback_world_size_invariant(tmp_path):
    m = prepare_dataset(DataConfig(name="digits", cache_dir=str(tmp_path), shard_samples=700))
    assert len(m.shards("train")) < 8
    one = global_batches(m, 5, world_size=1, G=16, streams=8)
    two = global_batches(m, 5, world_size=2, G=16, streams=8, num_workers=2)
    for (a, b), (c, d) in zip(one, two):
        assert torch.equal(a, c) and torch.equal(b, d)
    assert one[0][0].shape == (16, 1, 8, 8) and one[0][0].dtype == torch.float32
    # Per-stream epochs: the stream sequences cover the training split exactly once.
    parts = stream_parts([s.samples for s in m.shards("train")], 8)
    keys = []
    for s in range(8):
        st = Stream(m, "train", s, parts[s], seed=0)
        gen = st.samples(0)
        keys += [next(gen)["__key__"] for _ in range(st.epoch_len)]
    assert len(keys) == len(set(keys)) == m.num_samples("train")


def test_global_torch_rng_untouched(uniq):
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    global_batches(uniq, 3, world_size=1)
    assert torch.equal(torch.rand(3), expected)


def test_eval_batches_split_over_ranks(uniq):
    m = uniq
    full = torch.cat([x for x, _ in eval_batches(m, num_samples=50, batch_size=7, rank=0, world_size=1)])
    parts = [torch.cat([x for x, _ in eval_batches(m, num_samples=50, batch_size=7, rank=r, world_size=3)]) for r in range(3)]
    assert [len(p) for p in parts] == [16, 17, 17]
    assert torch.equal(torch.cat(parts), full)
    with pytest.raises(DataError, match="evaluation asks for 1000 samples but the val split has 128; lower train.eval_tokens"):
        eval_batches(m, num_samples=1000, batch_size=8, rank=0, world_size=1)


def test_batch_arithmetic_errors(uniq):
    with pytest.raises(ConfigError, match=r"global_batch_size=12 is not a multiple of data.streams=8"):
        train_batches(uniq, global_batch_size=12, rank=0, world_size=1, seed=0, streams=8)
    with pytest.raises(ConfigError, match=r"data.streams=4 is not a multiple of the world size 8"):
        train_batches(uniq, global_batch_size=8, rank=0, world_size=8, seed=0, streams=4)
    assert train_batches(uniq, global_batch_size=12, rank=0, world_size=2, seed=0).streams == 4  # gcd(12, 8)
    with pytest.raises(DataError, match="without samples.*lower data.streams"):
        train_batches(uniq, global_batch_size=256, rank=0, world_size=1, seed=0, streams=256)


# ---- corrupt shards mid-run ----


def corrupt_copy(src, dst, how):
    shutil.copytree(src.location, dst)
    m = load_manifest(str(dst))  # loaded (and checked) before the damage, as a running job would
    path = os.path.join(dst, "train-000002.tar")
    data = open(path, "rb").read()
    if how == "truncate":
        data = data[: len(data) // 2]
    else:
        data = data[:2000] + bytes(b ^ 0xFF for b in data[2000:2600]) + data[2600:]
    open(path, "wb").write(data)
    return m


def test_a_shard_is_read_once_per_process_until_its_file_changes(uniq, tmp_path, monkeypatch):
    """Every stream of a run, and every run a warm worker trains, reads the same shards: a process
    reads and checks each once, and again once its file has changed."""
    from scaling.data import loader

    monkeypatch.setattr(loader, "_SHARDS", loader._ShardCache())
    shutil.copytree(uniq.location, tmp_path / "ds")
    m = load_manifest(str(tmp_path / "ds"))
    first = loader.read_shard(m, "train", 1)
    again = loader.read_shard(m, "train", 1)
    assert again == first and again is not first  # the caller's own list
    assert all(a is b for a, b in zip(first, again))  # of the samples read the first time
    path = tmp_path / "ds" / "train-000001.tar"
    data = path.read_bytes()
    path.write_bytes(data[:2000] + bytes(b ^ 0xFF for b in data[2000:2600]) + data[2600:])
    with pytest.raises(DataError, match="train-000001.tar: SHA-256 differs"):
        loader.read_shard(m, "train", 1)
    # The oldest shard leaves when the next would exceed the cap.
    monkeypatch.setattr(loader, "SHARD_CACHE_BYTES", m.shards("train")[0].bytes + m.shards("train")[2].bytes)
    a = loader.read_shard(m, "train", 0)
    loader.read_shard(m, "train", 2)
    assert loader.read_shard(m, "train", 0)[0] is a[0]
    loader.read_shard(m, "train", 3)  # 0 was used last, so 2 goes
    assert loader.read_shard(m, "train", 0)[0] is a[0] and loader._SHARDS.bytes <= loader.SHARD_CACHE_BYTES
    assert [k[0] for k in loader._SHARDS.entries] == [m.url(m.shards("train")[i].name) for i in (3, 0)]


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("how", ["truncate", "flip"])
def test_corrupt_shard_mid_run_fails_cleanly(uniq, tmp_path, how, workers):
    m = corrupt_copy(uniq, tmp_path / "ds", how)
    msg = "truncated or replaced" if how == "truncate" else "SHA-256 differs"
    with pytest.raises(DataError, match=rf"(?s)train-000002.tar: .*{msg}"):
        global_batches(m, 40, world_size=1, num_workers=workers)
    if how == "truncate":  # a fresh start fails before training, naming the shard
        with pytest.raises(DataError, match="(?s)train-000002.tar: .*truncated"):
            load_manifest(m.location)


def test_manifest_sample_count_mismatch_mid_run(uniq, tmp_path):
    shutil.copytree(uniq.location, tmp_path / "ds")
    raw = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    raw["splits"]["train"]["shards"][1]["samples"] = 15
    (tmp_path / "ds" / "manifest.json").write_text(json.dumps(raw))
    m = load_manifest(str(tmp_path / "ds"))
    with pytest.raises(DataError, match="train-000001.tar: holds 16 samples but the manifest says 15"):
        global_batches(m, 40, world_size=1)


def test_pipe_url_location(uniq, tmp_path):
    m = load_manifest("pipe:cat " + os.path.join(uniq.location, "{}"))
    assert m.num_samples("train") == 128
    a = global_batches(m, 3, world_size=1)
    b = global_batches(uniq, 3, world_size=1)
    assert all(torch.equal(p[0], q[0]) for p, q in zip(a, b))
    with pytest.raises(DataError, match="the command failed"):
        load_manifest("pipe:cat " + str(tmp_path / "nothing" / "{}"))


@pytest.mark.skipif(shutil.which("curl") is None, reason="webdataset reads http through curl")
def test_http_location(uniq):
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=uniq.location)
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        m = load_manifest(f"http://127.0.0.1:{server.server_address[1]}/")
        a = global_batches(m, 3, world_size=2, num_workers=1)
        b = global_batches(uniq, 3, world_size=1)
        assert all(torch.equal(p[0], q[0]) for p, q in zip(a, b))
    finally:
        server.shutdown()


def test_the_plain_tar_reader_equals_webdataset_and_defers_to_it_for_other_tars(uniq, tmp_path):
    import io
    import tarfile

    from webdataset.tariterators import group_by_keys, tar_file_iterator

    from scaling.data.loader import _plain_tar_samples

    def general(data: bytes) -> list[dict]:
        files = ({**f, "__url__": "u"} for f in tar_file_iterator(io.BytesIO(data)))
        return [{k: v for k, v in s.items() if k != "__local_path__"} for s in group_by_keys(files)]

    digits = prepare_dataset(DataConfig(name="digits", cache_dir=str(tmp_path / "d"), shard_samples=700))
    for m in (uniq, digits):
        for split in ("train", "val"):
            for info in m.shards(split):
                data = open(m.url(info.name), "rb").read()
                assert _plain_tar_samples(data, "u") == general(data), info.name
    # A tar with a pax header (a long name) is not plain: the general reader takes it.
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        payload = b"\x01\x02"
        member = tarfile.TarInfo("d" * 120 + "/000001.tokens")
        member.size = len(payload)
        tar.addfile(member, io.BytesIO(payload))
    assert _plain_tar_samples(buf.getvalue(), "u") is None
