"""The built-in sets whose best achievable loss is known: `markov` (a k-th order Markov language)
and `shapes` (procedural images with label noise). Their recorded entropies and floors are
checked against independent computations, against Monte Carlo on the data the loader delivers,
and against the real trainer, which must end close to the floor."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import torch

from scaling.data import DataConfig, eval_batches, prepare_dataset, train_batches
from scaling.data.loader import read_shard
from scaling.data.markov import MAX_TRANSITIONS, MarkovSpec, position_floors, recorded_context_floors
from scaling.data.prepare import loss_floor
from scaling.data.shapes import bayes_loss, glyphs, read_class, shapes_images
from scaling.errors import ConfigError
from trainer_utils import data_cache, run_train  # noqa: F401 - data_cache is a fixture

TINY_CHAINS = [
    MarkovSpec(4, 1, 2, 1.0, 0.05),
    MarkovSpec(6, 2, 3, 1.2, 0.1, order_decay=0.5),
    MarkovSpec(3, 4, 2, 0.7, 0.02, order_decay=1.0),
    MarkovSpec(5, 3, 3, 1.0, 0.05, order_decay=0.2),
]


def dense_transitions(chain) -> np.ndarray:
    """The (V^k, V^k) transition matrix of the chain on contexts, written out from its definition:
    p(y | x) = eps u_y + sum_j w_j sum_r z_r [y = S_j(last j tokens)[r]]."""
    spec = chain.spec
    V, k, n = spec.vocab, spec.order, spec.contexts
    w = spec.weights()
    P = np.zeros((n, n))
    for c in range(n):
        row = w[0] * chain.u.copy()
        for j in range(1, k + 1):
            row[chain.tables[j - 1][c % V**j]] += w[j] * chain.z  # a table row holds distinct tokens
        P[c, (c % (n // V)) * V + np.arange(V)] += row
    return P


def true_nll(P: np.ndarray, V: int, k: int, doc: np.ndarray) -> np.ndarray:
    """-ln p(x_t | x_{t-k}..x_{t-1}) for t >= k of one document, from the dense transitions P."""
    c = int(sum(int(x) * V ** (k - 1 - i) for i, x in enumerate(doc[:k])))
    out = []
    for y in doc[k:].tolist():
        nxt = (c % V ** (k - 1)) * V + y
        out.append(-math.log(P[c, nxt]))
        c = nxt
    return np.array(out)


@pytest.mark.parametrize("spec", TINY_CHAINS, ids=str)
def test_markov_stationary_and_entropy_rate_exact(spec):
    chain = spec.build(seed=3)
    P = dense_transitions(chain)
    assert np.allclose(P.sum(1), 1) and (P > 0).sum(1).min() >= 1
    # Irreducible and aperiodic: some power of P is strictly positive (k steps reach every context).
    assert (np.linalg.matrix_power(P, spec.order) > 0).all()
    w, vecs = np.linalg.eig(P.T)
    pi = np.real(vecs[:, np.argmin(abs(w - 1))])
    pi /= pi.sum()
    assert np.abs(chain.stationary - pi).sum() < 1e-9
    row_h = -(P * np.log(np.where(P > 0, P, 1))).sum(1)
    assert chain.entropy_rate == pytest.approx(float(pi @ row_h), abs=1e-9)
    H = chain.conditional_entropies
    assert all(a >= b - 1e-12 for a, b in zip(H, H[1:]))  # more context never adds entropy
    assert chain.entropy_error() < 1e-8


@pytest.mark.parametrize("spec", TINY_CHAINS, ids=str)
def test_markov_entropy_rate_matches_monte_carlo(spec):
    """The generated documents' mean negative log-likelihood under the true chain."""
    chain = spec.build(seed=1)
    docs = chain.documents(200_000, mean_doc_tokens=2000, seed=1)
    P = dense_transitions(chain)
    nll = np.concatenate([true_nll(P, spec.vocab, spec.order, d) for d in docs if len(d) > spec.order])
    assert len(nll) > 150_000
    assert nll.mean() == pytest.approx(chain.entropy_rate, rel=0.01)
    # Document starts are stationary: the first token of each document follows the unigram law.
    first = np.bincount([d[0] for d in docs], minlength=spec.vocab) / len(docs)
    assert np.abs(first - chain.block(1)).max() < 5 / math.sqrt(len(docs))


def loader_rows(m, steps: int) -> np.ndarray:
    """Windows of seq_len + 1 tokens as the loader delivers them: every validation window and
    `steps` global training batches."""
    batches = eval_batches(m, num_samples=m.num_samples("val"), batch_size=256, rank=0, world_size=1)
    it = train_batches(m, global_batch_size=64, rank=0, world_size=1, seed=0)
    batches += [next(it) for _ in range(steps)]
    it.close()
    return torch.cat([torch.cat([x, y[:, -1:]], 1) for x, y in batches]).numpy()


@pytest.mark.parametrize(
    "overrides",
    [
        {"markov_vocab": 6, "markov_order": 2, "markov_branching": 3, "markov_doc_tokens": 24.0, "seq_len": 16},
        {"markov_vocab": 4, "markov_order": 3, "markov_branching": 2, "markov_zipf": 1.5, "markov_doc_tokens": 9.0, "seq_len": 8},
    ],
    ids=["V6k2", "V4k3-short-docs"],
)
def test_markov_floor_is_the_true_chains_loss_on_the_loaders_windows(tmp_path, overrides):
    cfg = DataConfig(name="markov", cache_dir=str(tmp_path), markov_tokens=300_000, val_fraction=0.2, shard_samples=512,
                     **overrides)
    m = prepare_dataset(cfg)
    src = m.source
    floor, rate = loss_floor(m), src["entropy_rate_nats_per_token"]
    assert floor == src["loss_floor_nats"] and floor > rate
    chain = MarkovSpec(cfg.markov_vocab, cfg.markov_order, cfg.markov_branching, cfg.markov_zipf, cfg.markov_smoothing).build(cfg.split_seed)
    assert chain.entropy_rate == rate
    rows = loader_rows(m, steps=200)
    losses = chain.window_losses(rows, m.eod_id, cfg.markov_doc_tokens)  # (windows, seq_len)
    assert np.isfinite(losses).all()  # the data never does what the chain rules out
    per_window = losses.mean(1)
    se = per_window.std() / math.sqrt(len(per_window))
    assert abs(per_window.mean() - floor) < 4 * se + src["loss_floor_error_nats"]
    # A window starts on an end-of-document as often as the recursion assumes, q / (1 + q).
    q = 1 / cfg.markov_doc_tokens
    starts_eod = (rows[:, 0] == m.eod_id).mean()
    assert abs(starts_eod - q / (1 + q)) < 4 * math.sqrt(q / (1 + q) / len(rows))
    # Position by position too: the first positions lack context, and the law of the visible
    # context follows the window start and the document ends.
    by_position = position_floors(src["conditional_entropies_nats"], q, cfg.seq_len)
    position_se = losses.std(0) / math.sqrt(len(losses))
    assert (abs(losses.mean(0) - by_position) < 4.5 * position_se).all()
    # The window starts and document ends matter: the entropy rate alone is far off.
    assert abs(per_window.mean() - rate) > 8 * se
    # The recorded check on the validation windows agrees too.
    assert abs(src["val_true_loss_nats"] - floor) < 4 * src["val_true_loss_se"]
    # The floors of shorter contexts: the best predictor that reads only j tokens back, scored
    # on the same windows, loses what recorded_context_floors computes, more for each token fewer.
    floors = recorded_context_floors(m.to_json())
    assert len(floors) == cfg.markov_order and floors[-1] == floor and (np.diff(floors) < 0).all()
    for j, expected in enumerate(floors[:-1], start=1):
        short = chain.window_losses(rows, m.eod_id, cfg.markov_doc_tokens, context=j).mean(1)
        assert abs(short.mean() - expected) < 4 * short.std() / math.sqrt(len(short)) + src["loss_floor_error_nats"]
        gap = short - per_window  # paired by window: what the longer context is worth there
        assert gap.mean() > 4 * gap.std() / math.sqrt(len(gap))


def test_markov_bayes_predictor_is_a_distribution():
    """window_losses scores a proper predictive distribution: over every possible next token
    (end-of-document included) its probabilities sum to one at every position."""
    spec = MarkovSpec(5, 2, 2, 1.0, 0.1)
    chain, eod, doc = spec.build(0), 5, 7.0
    docs = chain.documents(5000, doc, seed=0)
    from scaling.data.build import pack

    rows = pack(docs, eod, 13)[:50]
    for t in range(12):
        total = np.zeros(len(rows))
        for y in range(6):
            trial = rows.copy()
            trial[:, t + 1] = y
            total += np.exp(-chain.window_losses(trial[:, : t + 2], eod, doc)[:, t])
        assert np.allclose(total, 1.0), t


def test_markov_default_is_zipfian_and_every_order_pays():
    cfg = DataConfig()
    spec = MarkovSpec(cfg.markov_vocab, cfg.markov_order, cfg.markov_branching, cfg.markov_zipf, cfg.markov_smoothing,
                      cfg.markov_order_decay)
    chain = spec.build(0)
    unigram = np.sort(chain.block(1))[::-1]
    slope = -np.polyfit(np.log(np.arange(1, 65)), np.log(unigram), 1)[0]
    assert 0.7 < slope < 1.3  # Zipf's law for tokens, a = 1
    assert 0.8 < chain.state_zipf_exponent() < 1.6
    # Every longer context lowers the entropy, by less each time (rho = 0.5): what is left to
    # learn shrinks order by order instead of all at once.
    gains = -np.diff(chain.conditional_entropies)
    assert (gains > 0.05).all() and (np.diff(gains) < 0).all()


def test_markov_manifest_deterministic_and_reported(tmp_path):
    cfg = DataConfig(name="markov", cache_dir=str(tmp_path / "a"), markov_vocab=16, markov_order=2, markov_tokens=20_000, seq_len=16)
    m = prepare_dataset(cfg)
    again = prepare_dataset(DataConfig(**{**cfg.__dict__, "cache_dir": str(tmp_path / "b")}))
    assert [s.sha256 for s in m.shards("train")] == [s.sha256 for s in again.shards("train")]
    assert (m.vocab_size, m.eod_id, m.seq_len) == (17, 16, 16)
    raw = json.loads(open(m.url("manifest.json")).read())["source"]
    for key in ("entropy_rate_nats_per_token", "loss_floor_nats", "loss_floor_error_nats", "conditional_entropies_nats",
                "state_zipf_exponent", "val_true_loss_nats"):
        assert key in raw
    other = prepare_dataset(DataConfig(**{**cfg.__dict__, "markov_order": 1}))
    assert other.location != m.location and other.source["loss_floor_nats"] != m.source["loss_floor_nats"]


BAD_INPUT = [
    ("markov_zipf", 0.0, "data.markov_zipf=0.0 must lie in (0, 4.0]"),
    ("markov_zipf", 5.0, "data.markov_zipf=5.0 must lie in (0, 4.0]"),
    ("markov_smoothing", 0.0, "data.markov_smoothing=0.0 must lie in (0, 1]"),
    ("markov_branching", 65, "data.markov_branching=65 must lie in [1, markov_vocab=64]"),
    ("markov_vocab", 1, "data.markov_vocab=1 must lie in [2, 65534]"),
    ("markov_doc_tokens", 0.5, "data.markov_doc_tokens=0.5"),
    ("markov_order_decay", 0.0, "data.markov_order_decay=0.0 must lie in (0, 1]"),
    ("shapes_label_noise", 0.9, "data.shapes_label_noise=0.9 must lie in [0, (K-1)/K = 0.9)"),
    ("shapes_image_size", 15, "data.shapes_image_size=15 must be even and in [10, 64]"),
    ("shapes_classes", 1, "data.shapes_classes=1 must lie in [2, 64]"),
    ("shapes_distractors", 4, "data.shapes_distractors=4 must lie in [0, 3]"),
]


@pytest.mark.parametrize("key,value,message", BAD_INPUT)
def test_bad_input_is_named(key, value, message):
    assert message in "\n".join(DataConfig(**{key: value}).problems())


def test_markov_state_space_limit():
    text = "\n".join(DataConfig(markov_vocab=64, markov_order=5).problems())
    assert "data.markov_vocab=64 ^ data.markov_order=5" in text and f"{MAX_TRANSITIONS:,}" in text and "lower markov_order" in text
    assert DataConfig(markov_vocab=256, markov_order=2, markov_branching=256).problems() == []  # 2^16 x 2 x 2^8 = 2^25
    assert "2^25" in "\n".join(DataConfig(markov_vocab=257, markov_order=2, markov_branching=256).problems())
    with pytest.raises(ConfigError, match=r"data.markov_zipf=9.0 must lie in \(0, 4.0\]"):
        prepare_dataset(DataConfig(name="markov", markov_zipf=9.0))


# ---- shapes ----


def test_shapes_every_image_shows_its_class():
    """No image is ambiguous: the class is read back from the pixels alone, for every image."""
    pixels, labels, true, src = shapes_images(10, 16, 3, 0.1, 3000, seed=5)
    pattern = glyphs(10, 5)
    assert [read_class(p, pattern) for p in pixels] == true.tolist()
    # A distractor alone shows no class; the rule needs the target's colour.
    assert read_class(np.zeros((16, 16, 3), np.uint8), pattern) == -1
    # Larger images, more classes, no distractors: still exact.
    pixels, _, true, _ = shapes_images(32, 24, 0, 0.0, 500, seed=2)
    assert [read_class(p, glyphs(32, 2)) for p in pixels] == true.tolist()


def test_shapes_label_flips_at_the_stated_rate():
    K, eps, n = 10, 0.1, 40_000
    _, labels, true, src = shapes_images(K, 10, 1, eps, n, seed=0)
    flipped = labels != true
    assert flipped.sum() == src["label_flips"]
    assert abs(flipped.mean() - eps) < 4 * math.sqrt(eps * (1 - eps) / n)
    # Flips go uniformly to the other K - 1 classes.
    offsets = np.bincount((labels - true)[flipped] % K, minlength=K)
    assert offsets[0] == 0
    expected = flipped.sum() / (K - 1)
    chi2 = float(((offsets[1:] - expected) ** 2 / expected).sum())
    assert chi2 < 30  # 8 degrees of freedom: p < 3e-4 above
    # The Bayes predictor's cross-entropy on these labels is the recorded floor.
    q = np.where(flipped, eps / (K - 1), 1 - eps)
    nll = -np.log(q)
    assert abs(nll.mean() - src["loss_floor_nats"]) < 4 * nll.std() / math.sqrt(n)


def test_shapes_bayes_loss_formula():
    for eps, K in ((0.1, 10), (0.25, 4), (0.0, 3)):
        p = np.array([1 - eps] + [eps / (K - 1)] * (K - 1))
        assert bayes_loss(eps, K) == pytest.approx(-(p[p > 0] * np.log(p[p > 0])).sum(), abs=1e-12)


def test_shapes_prepared_shards(tmp_path):
    cfg = DataConfig(name="shapes", cache_dir=str(tmp_path), shapes_images=600, shapes_classes=5, shard_samples=128)
    m = prepare_dataset(cfg)
    assert (m.image_size, m.in_channels, m.n_classes) == (16, 3, 5)
    assert loss_floor(m) == pytest.approx(bayes_loss(0.1, 5))
    pixels, labels, true, _ = shapes_images(5, 16, 3, 0.1, 600, seed=0)
    from scaling.data.build import decode_png

    seen = 0
    for split in ("train", "val"):
        for i in range(len(m.shards(split))):
            for s in read_shard(m, split, i):
                k = int(s["__key__"])
                np.testing.assert_array_equal(decode_png(s["png"]), pixels[k])
                assert int(s["cls"]) == labels[k]
                seen += 1
    assert seen == 600


# ---- preparation time of the defaults ----


@pytest.mark.slow
@pytest.mark.parametrize("name,limit_s", [("markov", 10), ("shapes", 30)])
def test_default_known_sets_prepare_in_seconds(tmp_path, name, limit_s):
    """CPU seconds of this process, not wall time, so that other load on the machine does not
    count (about 4 s and 11 s measured)."""
    t = time.process_time()
    m = prepare_dataset(DataConfig(name=name, cache_dir=str(tmp_path), **({"seq_len": 64} if name == "markov" else {})))
    assert time.process_time() - t < limit_s
    assert loss_floor(m) is not None


# ---- the trainer reaches the floor ----

GPT_SMALL = ["model=gpt_debug", "data=markov", "model.n_heads=2", "logger.wandb.mode=disabled", "train.num_threads=1"]


def trained(cache, run_dir, *overrides, base):
    proc = run_train(cache, run_dir, *overrides, base=base, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((run_dir / "result.json").read_text())


def floor_of(cache, name, overrides):
    cfg = DataConfig(name=name, cache_dir=str(cache), **overrides)
    return loss_floor(prepare_dataset(cfg))


def test_tiny_markov_trained_to_its_floor(data_cache, tmp_path):
    """A first-order chain of 4 tokens: a small GPT ends within 3% of the recorded floor."""
    data = {"markov_vocab": 4, "markov_order": 1, "markov_branching": 2, "markov_tokens": 400_000, "seq_len": 16,
            "val_fraction": 0.2}
    result = trained(data_cache, tmp_path / "run", *[f"data.{k}={v}" for k, v in data.items()], "model.n_layers=1",
                     "model.d_model=16", "train.tokens=1.2e5", "train.global_batch_size=32", "train.lr=1e-2",
                     "train.warmup_tokens=4096", "train.eval_tokens=65536", base=GPT_SMALL)
    floor = floor_of(data_cache, "markov", data)
    print(f"eval loss {result['eval_loss']:.4f}, floor {floor:.4f}")
    assert result["eval_loss"] == pytest.approx(floor, rel=0.03)


@pytest.mark.slow
def test_markov_trained_to_its_floor(data_cache, tmp_path):
    """A second-order chain of 8 tokens: the model must read two tokens back and handle the
    window starts and document ends the floor accounts for; it ends within 3% of it."""
    data = {"markov_vocab": 8, "markov_order": 2, "markov_branching": 3, "markov_tokens": 2_500_000, "seq_len": 32}
    result = trained(data_cache, tmp_path / "run", *[f"data.{k}={v}" for k, v in data.items()], "model.n_layers=2",
                     "model.d_model=32", "train.tokens=2e6", "train.global_batch_size=32", "train.lr=3e-3",
                     "train.warmup_tokens=20000", "train.eval_tokens=65536", base=GPT_SMALL)
    floor = floor_of(data_cache, "markov", data)
    assert result["epochs"] < 1
    print(f"eval loss {result['eval_loss']:.4f}, floor {floor:.4f}")
    assert result["eval_loss"] == pytest.approx(floor, rel=0.03)


@pytest.mark.slow
def test_shapes_trained_to_the_bayes_loss(data_cache, tmp_path):
    """A ResNet trained on fresh images (none seen twice) ends within 5% of the Bayes loss."""
    data = {"shapes_classes": 4, "shapes_images": 100_000, "shapes_distractors": 2}
    base = ["model=cnn_debug", "data=shapes", "logger.wandb.mode=disabled", "train.num_threads=1"]
    result = trained(data_cache, tmp_path / "run", *[f"data.{k}={v}" for k, v in data.items()], "model.width=16",
                     "train.tokens=9e4", "train.global_batch_size=64", "train.lr=3e-3", "train.warmup_tokens=2000",
                     "train.eval_tokens=4096", base=base)
    floor = floor_of(data_cache, "shapes", data)
    assert floor == pytest.approx(bayes_loss(0.1, 4))
    assert result["epochs"] < 1
    print(f"eval loss {result['eval_loss']:.4f}, Bayes loss {floor:.4f}")
    assert result["eval_loss"] == pytest.approx(floor, rel=0.05)
