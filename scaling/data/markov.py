"""A k-th order Markov language whose best achievable loss is known: the `markov` built-in set.

The chain (V tokens, order k, branching b, Zipf exponent a, smoothing eps, order decay rho)
-------------------------------------------------------------------------------------------
An interpolated n-gram model (Jelinek and Mercer 1980) with random sparse tables:

    u_y        = (y + 1)^-a / sum_i (i + 1)^-a        token weights: Zipf's law over ids
    S_j(c)     = b distinct tokens for each context c of the last j tokens, j = 1..k, drawn one
                 after another with probability proportional to u among those not yet drawn
                 (so frequent tokens tend to come first, and in front)
    z_r        = r^-a / sum_{s <= b} s^-a             the Zipf law over the b ranks
    w_j        = (1 - eps) rho^(j-1) (1 - rho) / (1 - rho^k),   j = 1..k
    p(y | x)   = eps u_y + sum_j w_j sum_r z_r [y = S_j(last j tokens of x)[r]]

Every order of context carries information: a model learns the V b entries of the first-order
table from little data, then the V^2 b of the second, and so on; each longer context holds V
times more entries and, with rho < 1, a smaller share of the mass, so what a model has not yet
learned shrinks by about rho for every factor V in what it stores: a power law of exponent
about ln(1/rho) / ln(V) in its capacity, smoothed by the Zipf-like frequencies of contexts
(frequent ones are learned first), as in natural text. With all the mass on the longest
context instead, shorter contexts say almost nothing and nothing is learned until the whole
k-token conjunction is: GPTs of 1e4 to 1e5 parameters stayed at the unigram entropy after 1M
tokens of such a chain (V = 64, k = 3).

That is the design; at laptop scale the orders are learned one at a time, not smoothly. GPTs of
2K to 90K parameters on at most 4M tokens learned the first-order table and none of the longer
contexts: on the defaults (k = 3), and on k = 2 with V = 64 and V = 32, the default study's
fitted E landed within 0.5% of F_1, the floor of the best 1-token predictor, 12-13% above the
chain's floor. `context_floors` (of a manifest: `recorded_context_floors`) gives F_1..F_k, so a
report can say which context a fitted E has reached; the `known_answer` study uses a first-order
chain, whose floor those models do reach.

Every transition has probability >= eps u_y > 0, so the chain on contexts reaches any context
from any other in k steps: it is irreducible and aperiodic by construction, and its stationary
distribution pi over the V^k contexts is unique.

What is computed exactly
------------------------
- pi, by power iteration on the V^k contexts (one sparse step costs V^k k b), until successive
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

# The largest expanded table (V^k contexts x k b successors) whose stationary distribution is
# computed exactly: about 1 GB of working memory and a second per power-iteration step.
MAX_TRANSITIONS = 2**25
MAX_ZIPF = 4.0  # above, the top successor of a context takes over 90% of its mass
STATIONARY_TOL = 1e-12
MAX_ITERATIONS = 10_000
ENTROPY_CHUNK = 65536  # contexts per vectorised block of `row_entropies`
SMALL_STATE_SPACE = 1000  # below this many contexts the state-frequency fit uses every rank


@dataclass(frozen=True)
class MarkovSpec:
    vocab: int
    order: int
    branching: int
    zipf: float
    smoothing: float
    order_decay: float = 0.5

    @property
    def contexts(self) -> int:
        return self.vocab**self.order

    @property
    def transitions(self) -> int:
        """Sparse entries of the expanded table: V^k contexts x k b successors."""
        return self.contexts * self.order * self.branching

    def weights(self) -> np.ndarray:
        """(k + 1,) [eps, w_1, ..., w_k]: the unigram's and each order's share of every row."""
        k, rho, eps = self.order, self.order_decay, self.smoothing
        w = rho ** np.arange(k) * ((1 - rho) / (1 - rho**k) if rho < 1 else 1.0 / k)
        return np.concatenate([[eps], (1 - eps) * w])

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


def plogp(p: np.ndarray) -> np.ndarray:
    return p * np.log(p)  # every p here is > 0


def binary_entropy(q: float) -> float:
    return 0.0 if q in (0.0, 1.0) else -q * math.log(q) - (1 - q) * math.log(1 - q)


class MarkovChain:
    """The chain of a MarkovSpec, drawn from a seed; see the module docstring."""

    def __init__(self, spec: MarkovSpec, seed: int):
        if spec.transitions > MAX_TRANSITIONS:
            raise DataError(too_large_message(spec))
        self.spec = spec
        V, k, b = spec.vocab, spec.order, spec.branching
        self.u = zipf_weights(V, spec.zipf)  # (V,)
        self.z = zipf_weights(b, spec.zipf)  # (b,)
        weights = spec.weights()
        self.eps = float(weights[0])
        # The sparse part of every row: k b (token, mass) entries, b from each order's table.
        self.masses = np.concatenate([w * self.z for w in weights[1:]])  # (k b,)
        rng = np.random.default_rng([seed, 11])
        self.tables = [successive_draws(V**j, b, self.u, rng).astype(np.int32) for j in range(1, k + 1)]  # (V^j, b) each
        self.stationary_iterations = 0
        self.stationary_error = math.inf  # L1, set by `stationary`

    def entries(self, contexts: np.ndarray) -> np.ndarray:
        """(n, k b) the tokens of the sparse entries of the rows of `contexts` (indices over V^k),
        in the order of `masses`."""
        V = self.spec.vocab
        return np.concatenate([table[contexts % V**j] for j, table in enumerate(self.tables, 1)], axis=1)

    def prob(self, contexts: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """p(token | context) for paired arrays of context indices and tokens."""
        hits = self.entries(contexts) == tokens[:, None]
        return self.eps * self.u[tokens] + (hits * self.masses[None, :]).sum(1)

    # ---- the transition step on contexts ----
    def _successors(self) -> np.ndarray:
        """(V^k, k b) index of the context after c when the next token is that of an entry."""
        V, n = self.spec.vocab, self.spec.contexts
        contexts = np.arange(n, dtype=np.int64)
        return (contexts % (n // V))[:, None] * V + self.entries(contexts)

    def step(self, dist: np.ndarray, successors: np.ndarray) -> np.ndarray:
        """One step of the chain on a distribution over contexts: dist P."""
        V = self.spec.vocab
        out = np.bincount(successors.ravel(), weights=(dist[:, None] * self.masses[None, :]).ravel(),
                          minlength=self.spec.contexts)
        out += self.eps * np.outer(dist.reshape(V, -1).sum(0), self.u).ravel()  # the unigram part: to (tail, y) w.p. eps u_y
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
        """h(c) = H(p(. | c)) for every context, (V^k,). A row is the unigram part plus k b
        entries, several of which may name the same token: entries are sorted by token within
        each row and each token's total mass is counted once."""
        base = self.eps * self.u  # (V,)
        n, m = self.spec.contexts, len(self.masses)
        out = np.full(n, -float(plogp(base).sum()))
        for lo in range(0, n, ENTROPY_CHUNK):
            tokens = self.entries(np.arange(lo, min(lo + ENTROPY_CHUNK, n)))  # (rows, k b)
            order = np.argsort(tokens, axis=1, kind="stable")
            tokens = np.take_along_axis(tokens, order, 1).ravel()
            masses = self.masses[order].ravel()
            first = np.ones(len(tokens), dtype=bool)  # the first entry of each (row, token) group
            first[1:] = tokens[1:] != tokens[:-1]
            first[::m] = True
            at = np.flatnonzero(first)
            total = base[tokens[at]] + np.add.reduceat(masses, at)
            gain = plogp(base[tokens[at]]) - plogp(total)
            out[lo : lo + len(order)] += np.bincount(at // m, weights=gain, minlength=len(order))
        return out

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
        V, k = self.spec.vocab, self.spec.order
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
        cum_u, cum_z, cum_w = np.cumsum(self.u), np.cumsum(self.z), np.cumsum(self.spec.weights())
        alive = len(lens)
        for t in range(int(lens_sorted[0])):
            while alive and lens_sorted[alive - 1] <= t:
                alive -= 1
            c = ctx[:alive]
            if t < k:  # the first k tokens are the digits of the starting k-gram
                y = (c // V ** (k - 1 - t)) % V
            else:
                part = np.minimum(np.searchsorted(cum_w, rng.random(alive) * cum_w[-1], side="right"), k)  # 0: unigram, j: order j
                rank = np.minimum(np.searchsorted(cum_z, rng.random(alive), side="right"), len(cum_z) - 1)
                y = np.minimum(np.searchsorted(cum_u, rng.random(alive), side="right"), V - 1)
                for j, table in enumerate(self.tables, 1):
                    sel = part == j
                    y[sel] = table[c[sel] % V**j, rank[sel]]
                ctx[:alive] = (c % (self.spec.contexts // V)) * V + y
            flat[starts_sorted[:alive] + t] = y
        return [flat[s : s + n] for s, n in zip(starts.tolist(), lens.tolist())]

    # ---- the Bayes predictor on actual windows ----
    def window_losses(self, rows: np.ndarray, eod: int, mean_doc_tokens: float,
                      context: int | None = None) -> np.ndarray:
        """-ln p(y_t | x_0..x_t) of the true generator at every predicted position of windows
        `rows` (n, seq_len + 1) as the loader delivers them: (n, seq_len) nats. With `context`
        = m < k, of the best predictor that reads at most m tokens back instead (the one
        `context_floors` scores)."""
        V, k = self.spec.vocab, self.spec.order if context is None else context
        if not 1 <= k <= self.spec.order:
            raise ValueError(f"context={context} must lie in [1, {self.spec.order}], the chain's order")
        q = 1.0 / mean_doc_tokens
        rows = np.asarray(rows, dtype=np.int64)
        n, width = rows.shape
        # p(next | the last m tokens of a document), m < k, from the stationary blocks.
        blocks = [np.ones(1)] + [self.block(m) for m in range(1, min(k + 1, self.spec.order) + 1)]
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
                if mm == self.spec.order:
                    row = self.prob(c, target)
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


def recorded_context_floors(manifest: dict) -> list[float] | None:
    """`context_floors` of a `markov` manifest (its JSON), from what it records (the chain's
    conditional entropies, mean document length and seq_len); None for any other data. Computed
    here rather than recorded, so that manifests, and the data checksum taken over them, stay
    as they were."""
    source = manifest.get("source") or {}
    H, doc, seq_len = source.get("conditional_entropies_nats"), source.get("mean_doc_tokens"), manifest.get("seq_len")
    if source.get("type") != "markov" or not H or not doc or not seq_len:
        return None
    return context_floors([float(h) for h in H], 1.0 / float(doc), int(seq_len))


def context_floors(conditional_entropies: list[float], q: float, seq_len: int) -> list[float]:
    """[F_1, ..., F_k]: F_m is the expected loss over the loader's windows of the best predictor
    that reads at most m tokens back (nats), the floor of a model that has learned the chain's
    m-token statistics and nothing longer; F_k is the floor. Within a stationary document the
    best such predictor loses H_m (the chain's m-token conditional entropy), so F_m is
    `window_floor` with the entropies cut at H_m."""
    return [window_floor(conditional_entropies[: m + 1], q, seq_len) for m in range(1, len(conditional_entropies))]


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
        f"{spec.order * spec.branching} successors ({prefix}.markov_order x {prefix}.markov_branching={spec.branching}) = "
        f"{spec.transitions:,} transitions, more than {MAX_TRANSITIONS:,} (2^25), the most whose stationary distribution "
        f"and entropy rate are computed exactly; lower markov_order, markov_vocab or markov_branching"
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
        "order_decay": spec.order_decay,
        "order_weights": spec.weights().tolist(),
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
