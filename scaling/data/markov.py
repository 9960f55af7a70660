"""A k-th order Markov language whose best achievable loss is known: the `markov` built-in set.

The chain (V tokens, order k, branching b, Zipf exponent a, smoothing eps)
-----------------------------------------------------------------------------
    u_j       = (j + 1)^-a / sum_i (i + 1)^-a                token weights: Zipf's law over ids
    S_c       = b distinct tokens drawn one after another, each with probability proportional to u
                among the tokens not yet drawn (so frequent tokens tend to come first), for each
                context c = (x_1, ..., x_k) in V^k
    z_r       = r^-a / sum_{s <= b} s^-a                     the Zipf law over the b ranks
    p(y | c)  = (1 - eps) z_r [y = S_c[r]]  +  eps u_y

Every transition has probability >= eps u_y > 0, so the chain on contexts reaches any context
from any other in k steps: it is irreducible and aperiodic by construction, and its stationary
distribution pi over the V^k contexts is unique. Because supports favour frequent tokens, token
frequencies follow Zipf's law and context frequencies are a product of such laws: heavy tailed,
so a model keeps gaining from more parameters (it stores more contexts' rows) and more data (it
sees rarer contexts often enough) over a wide range, instead of saturating at once.

What is computed exactly
------------------------
- pi, by power iteration on the V^k contexts (one sparse step costs V^k b), until successive
  iterates differ by less than `STATIONARY_TOL` in L1; its L1 error is bounded from the observed
  rate of convergence. A total-variation error T in pi moves each entropy below by at most
  2 (T k ln V + h(T)) (the Fannes-Audenaert continuity bound on the block entropies), which is
  recorded as the error of the entropies and the floor (about 1e-10 nats).
- H_m = H(X_{m+1} | X_1..X_m) under pi for m = 0..k: H_0 is the unigram entropy, H_k the
  entropy rate (nats per token), H_m for m < k from the block entropies of pi's marginals.
- The floor a model can reach on the shards. Documents are independent: each starts from a
  k-gram drawn from pi (so it is a stationary stretch of the chain) and ends after a geometric
  number of tokens (mean 1/q, at least 1), so after every token the document ends with
  probability q whatever came before. The loader cuts the packed stream (documents, each followed
  by an end-of-document token) into windows of seq_len + 1 tokens and the model predicts the
  last seq_len from the ones before, seeing nothing before the window. The Bayes predictor at a
  position that sees m tokens of the current document (m = 0 right after an end-of-document)
  therefore loses, in expectation,

        l(0) = H_0                                         (a document has at least one token)
        l(m) = h(q) + (1 - q) H_min(m, k),  m >= 1,        h(q) = -q ln q - (1-q) ln(1-q)

  and m follows a small Markov chain along the window: it starts at 0 with probability q/(1+q)
  (the stream's share of end-of-document tokens) and at 1 otherwise, goes to 0 with
  probability q and to min(m+1, k) otherwise, and from 0 to 1. The floor is the mean of l over
  the seq_len predicted positions, computed exactly by that recursion. It exceeds H_k by the
  context the window start hides and by the document boundaries. `window_losses` applies the
  same Bayes predictor to actual windows; the tests check the two agree.

Torch-free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from scaling.errors import DataError

# The largest transition table (V^k contexts x b successors) whose stationary distribution is
# computed exactly: about 0.5 GB of working memory and a second per power-iteration step.
MAX_TRANSITIONS = 2**25
MAX_ZIPF = 4.0  # above, the top successor of a context takes over 90% of its mass
STATIONARY_TOL = 1e-12
MAX_ITERATIONS = 10_000
SMALL_STATE_SPACE = 1000  # below this many contexts the state-frequency fit uses every rank


@dataclass(frozen=True)
class MarkovSpec:
    vocab: int
    order: int
    branching: int
    zipf: float
    smoothing: float

    @property
    def contexts(self) -> int:
        return self.vocab**self.order

    def build(self, seed: int) -> "MarkovChain":
        return MarkovChain(self, seed)


def zipf_weights(n: int, exponent: float) -> np.ndarray:
    """(i + 1)^-exponent for i < n, normalised to sum 1."""
    w = (np.arange(n) + 1.0) ** -exponent
    return w / w.sum()


def successive_draws(rows: int, b: int, weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(rows, b) distinct indices per row, drawn one after another with probability proportional
    to `weights` among those not yet drawn (sampling without replacement, Plackett-Luce order).

    Draws with replacement and redraws a row's collisions, which has exactly that law; the few
    rows still colliding after 32 rounds draw from the renormalised remaining weights."""
    cum = np.cumsum(weights)
    cum[-1] = 1.0
    out = np.empty((rows, b), dtype=np.int64)
    for r in range(b):
        todo = np.arange(rows)
        for _ in range(32):
            pick = np.minimum(np.searchsorted(cum, rng.random(len(todo)), side="right"), len(weights) - 1)
            out[todo, r] = pick
            clash = (out[todo, :r] == pick[:, None]).any(1)
            todo = todo[clash]
            if len(todo) == 0:
                break
        for i in todo:  # exact fallback: remaining weights only
            w = weights.copy()
            w[out[i, :r]] = 0.0
            out[i, r] = rng.choice(len(w), p=w / w.sum())
    return out


def entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def binary_entropy(q: float) -> float:
    return 0.0 if q in (0.0, 1.0) else -q * math.log(q) - (1 - q) * math.log(1 - q)


class MarkovChain:
    """The chain of a MarkovSpec, drawn from a seed; see the module docstring."""

    def __init__(self, spec: MarkovSpec, seed: int):
        if spec.contexts * spec.branching > MAX_TRANSITIONS:
            raise DataError(too_large_message(spec))
        self.spec = spec
        V, k, b = spec.vocab, spec.order, spec.branching
        self.u = zipf_weights(V, spec.zipf)  # (V,)
        self.z = zipf_weights(b, spec.zipf)  # (b,)
        rng = np.random.default_rng([seed, 11])
        self.support = successive_draws(spec.contexts, b, self.u, rng).astype(np.int32)  # (V^k, b)
        self.stationary_iterations = 0
        self.stationary_error = math.inf  # L1, set by `stationary`

    # ---- the transition step on contexts ----
    def _successors(self) -> np.ndarray:
        """(V^k, b) index of the context after c when the next token is S_c[r]."""
        tail = np.arange(self.spec.contexts, dtype=np.int64) % (self.spec.contexts // self.spec.vocab)
        return tail[:, None] * self.spec.vocab + self.support

    def step(self, dist: np.ndarray, successors: np.ndarray) -> np.ndarray:
        """One step of the chain on a distribution over contexts: dist P."""
        V, eps = self.spec.vocab, self.spec.smoothing
        out = np.bincount(successors.ravel(), weights=((1 - eps) * dist[:, None] * self.z[None, :]).ravel(),
                          minlength=self.spec.contexts)
        out += eps * np.outer(dist.reshape(V, -1).sum(0), self.u).ravel()  # the backoff part: to (tail, y) w.p. eps u_y
        return out

    @cached_property
    def stationary(self) -> np.ndarray:
        """pi over the V^k contexts (index sum_i x_i V^(k-i)), by power iteration. Records the
        iterations and a bound on the L1 error of pi (`stationary_error`): the last change times
        rho / (1 - rho), rho the observed rate of geometric convergence (the ratio of the last
        two changes)."""
        successors = self._successors()
        pi = np.full(self.spec.contexts, 1.0 / self.spec.contexts)
        diff = prev = math.inf
        for it in range(1, MAX_ITERATIONS + 1):
            new = self.step(pi, successors)
            new /= new.sum()
            prev, diff = diff, float(np.abs(new - pi).sum())
            pi = new
            if diff < STATIONARY_TOL:
                rho = min(diff / prev, 0.99) if prev > 0 else 0.0
                self.stationary_iterations, self.stationary_error = it, diff * rho / (1 - rho)
                return pi
        raise DataError(
            f"the stationary distribution of the markov chain {self.spec} did not converge in {MAX_ITERATIONS} "
            f"steps (L1 change {diff:.2e}); raise data.markov_smoothing"
        )

    def block(self, m: int) -> np.ndarray:
        """The stationary law of m consecutive tokens, m <= k, as an array over V^m."""
        V, k = self.spec.vocab, self.spec.order
        return self.stationary.reshape(V ** (k - m), V**m).sum(0)

    def row_entropies(self) -> np.ndarray:
        """h(c) = H(p(. | c)) for every context, (V^k,)."""
        eps = self.spec.smoothing
        base = eps * self.u  # (V,) the backoff part of every row
        in_support = base[self.support] + (1 - eps) * self.z[None, :]  # (V^k, b)
        backoff = base[self.support]
        plogp = lambda p: p * np.log(p)  # noqa: E731 - p > 0 everywhere here
        return -float(plogp(base).sum()) - (plogp(in_support) - plogp(backoff)).sum(1)

    @cached_property
    def conditional_entropies(self) -> list[float]:
        """[H_0, ..., H_k]: H_m = H(X_{m+1} | X_1..X_m) under pi, nats; H_k is the entropy rate."""
        k = self.spec.order
        blocks = [0.0] + [entropy(self.block(m)) for m in range(1, k + 1)]
        out = [blocks[m + 1] - blocks[m] for m in range(k)]
        out.append(float(self.stationary @ self.row_entropies()))
        return out

    @property
    def entropy_rate(self) -> float:
        return self.conditional_entropies[-1]

    def entropy_error(self) -> float:
        """A bound on the error of every H_m (and so of the floor) from the error of pi, nats."""
        self.stationary  # noqa: B018 - computes stationary_error
        tv = min(self.stationary_error / 2, 0.5)
        return 2 * (tv * self.spec.order * math.log(self.spec.vocab) + binary_entropy(tv))

    # ---- the floor over the loader's windows ----
    def floor(self, seq_len: int, mean_doc_tokens: float) -> float:
        """The Bayes predictor's expected loss per predicted token over windows of seq_len + 1
        tokens of the packed stream (nats); see the module docstring."""
        return window_floor(self.conditional_entropies, 1.0 / mean_doc_tokens, seq_len)

    def state_zipf_exponent(self) -> float:
        """The slope s of log frequency against log rank of the contexts under pi, so that
        frequency ~ rank^-s, fitted on ranks from 10 to V^k / 10 (every rank for tiny chains)."""
        freq = np.sort(self.stationary)[::-1]
        n = len(freq)
        lo, hi = (0, n) if n < SMALL_STATE_SPACE else (10, n // 10)
        rank = np.arange(lo, hi) + 1.0
        return float(-np.polyfit(np.log(rank), np.log(freq[lo:hi]), 1)[0])

    # ---- sampling ----
    def documents(self, total_tokens: int, mean_doc_tokens: float, seed: int) -> list[np.ndarray]:
        """Independent documents of at least `total_tokens` tokens in all: each starts from a
        k-gram drawn from pi and runs for a geometric number of tokens (mean `mean_doc_tokens`).
        All documents advance together, one vectorised step per position."""
        V, k, eps = self.spec.vocab, self.spec.order, self.spec.smoothing
        rng = np.random.default_rng([seed, 12])
        q = 1.0 / mean_doc_tokens
        lengths: list[int] = []
        have = 0
        while have < total_tokens:
            more = rng.geometric(q, size=max(16, int((total_tokens - have) * q * 1.1)))
            for n in more.tolist():
                lengths.append(n)
                have += n
                if have >= total_tokens:
                    break
        lens = np.array(lengths, dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
        by_length = np.argsort(-lens, kind="stable")  # the documents alive at step t are a prefix of this order
        lens_sorted, starts_sorted = lens[by_length], starts[by_length]
        flat = np.empty(int(lens.sum()), dtype=np.int64)
        ctx = np.searchsorted(np.cumsum(self.stationary), rng.random(len(lens)) * self.stationary.sum(), side="right")
        ctx = np.minimum(ctx, self.spec.contexts - 1)[by_length]  # (docs,) each document's first k-gram
        cum_u, cum_z = np.cumsum(self.u), np.cumsum(self.z)
        alive = len(lens)
        for t in range(int(lens_sorted[0])):
            while alive and lens_sorted[alive - 1] <= t:
                alive -= 1
            c = ctx[:alive]
            if t < k:  # the first k tokens are the digits of the starting k-gram
                y = (c // V ** (k - 1 - t)) % V
            else:
                backoff = rng.random(alive) < eps
                rank = np.minimum(np.searchsorted(cum_z, rng.random(alive), side="right"), len(cum_z) - 1)
                y = np.where(backoff, np.minimum(np.searchsorted(cum_u, rng.random(alive), side="right"), V - 1),
                             self.support[c, rank])
                ctx[:alive] = (c % (self.spec.contexts // V)) * V + y
            flat[starts_sorted[:alive] + t] = y
        return [flat[s : s + n] for s, n in zip(starts.tolist(), lens.tolist())]

    # ---- the Bayes predictor on actual windows ----
    def window_losses(self, rows: np.ndarray, eod: int, mean_doc_tokens: float) -> np.ndarray:
        """-ln p(y_t | x_0..x_t) of the true generator at every predicted position of windows
        `rows` (n, seq_len + 1) as the loader delivers them: (n, seq_len) nats."""
        V, k = self.spec.vocab, self.spec.order
        q = 1.0 / mean_doc_tokens
        rows = np.asarray(rows, dtype=np.int64)
        n, width = rows.shape
        # p(next | the last m tokens of a document), m < k, from the stationary blocks.
        blocks = [np.ones(1)] + [self.block(m) for m in range(1, k + 1)]
        eps = self.spec.smoothing
        out = np.empty((n, width - 1))
        seen = np.zeros(n, dtype=np.int64)  # tokens of the current document visible so far
        ctx = np.zeros(n, dtype=np.int64)  # index of its last min(seen, k) tokens
        for t in range(width - 1):
            x, y = rows[:, t], rows[:, t + 1]
            is_eod = x == eod
            seen = np.where(is_eod, 0, seen + 1)
            ctx = np.where(is_eod, 0, (ctx * V + np.minimum(x, V - 1)) % V**k)
            m = np.minimum(seen, k)
            tok = np.minimum(y, V - 1)  # an end-of-document target is scored apart below
            p = np.empty(n)
            for mm in range(k + 1):
                sel = m == mm
                if not sel.any():
                    continue
                c, target = ctx[sel], tok[sel]
                if mm == k:
                    row = eps * self.u[target] + (1 - eps) * ((self.support[c] == target[:, None]) * self.z[None, :]).sum(1)
                else:
                    row = blocks[mm + 1][c * V + target] / blocks[mm][c]
                ends = y[sel] == eod
                if mm == 0:  # right after an end-of-document: a document has at least one token
                    p[sel] = np.where(ends, 0.0, row)
                else:
                    p[sel] = np.where(ends, q, (1 - q) * row)
            with np.errstate(divide="ignore"):
                out[:, t] = -np.log(p)
        return out


def window_floor(conditional_entropies: list[float], q: float, seq_len: int) -> float:
    """The expected Bayes loss per predicted token over windows (nats): the mean over the
    seq_len positions of `position_floors`."""
    return float(np.mean(position_floors(conditional_entropies, q, seq_len)))


def position_floors(conditional_entropies: list[float], q: float, seq_len: int) -> np.ndarray:
    """(seq_len,) E[l(m_t)] at each predicted position t of a window, with l and the law of m_t
    as in the module docstring."""
    H = conditional_entropies
    k = len(H) - 1
    loss = np.array([H[0]] + [binary_entropy(q) + (1 - q) * H[min(m, k)] for m in range(1, k + 1)])  # l(m), m = 0..k
    dist = np.zeros(k + 1)
    dist[0], dist[1] = q / (1 + q), 1 / (1 + q)
    out = np.empty(seq_len)
    for t in range(seq_len):
        out[t] = dist @ loss
        new = np.zeros(k + 1)
        new[1] += dist[0]
        new[0] += q * dist[1:].sum()
        for m in range(1, k + 1):
            new[min(m + 1, k)] += (1 - q) * dist[m]
        dist = new
    return out


def too_large_message(spec: MarkovSpec, prefix: str = "data") -> str:
    return (
        f"{prefix}.markov_vocab={spec.vocab} ^ {prefix}.markov_order={spec.order} = {spec.contexts:,} contexts x "
        f"{prefix}.markov_branching={spec.branching} = {spec.contexts * spec.branching:,} transitions, more than "
        f"{MAX_TRANSITIONS:,} (2^25), the most whose stationary distribution and entropy rate are computed exactly; "
        f"lower markov_order, markov_vocab or markov_branching"
    )


def markov_documents(spec: MarkovSpec, total_tokens: int, mean_doc_tokens: float, seq_len: int,
                     seed: int) -> tuple[list[np.ndarray], dict[str, Any], MarkovChain]:
    """The documents of the `markov` set and the manifest's source record, with its entropies
    and floor."""
    chain = spec.build(seed)
    H = chain.conditional_entropies
    docs = chain.documents(total_tokens, mean_doc_tokens, seed)
    source = {
        "type": "markov",
        "vocab": spec.vocab,
        "order": spec.order,
        "branching": spec.branching,
        "zipf_exponent": spec.zipf,
        "smoothing": spec.smoothing,
        "mean_doc_tokens": mean_doc_tokens,
        "seed": seed,
        "entropy_rate_nats_per_token": H[-1],
        "conditional_entropies_nats": H,
        "loss_floor_nats": chain.floor(seq_len, mean_doc_tokens),
        "loss_floor_method": "exact: the Bayes predictor's expected loss over the loader's windows",
        "loss_floor_error_nats": chain.entropy_error(),
        "state_zipf_exponent": chain.state_zipf_exponent(),
        "stationary_iterations": chain.stationary_iterations,
        "stationary_l1_error": chain.stationary_error,
    }
    return docs, source, chain
