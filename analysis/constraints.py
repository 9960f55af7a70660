"""Constraints on a law's parameters: fix one, tie one to others, bound one.

As in lmfit, whose ``Parameter`` has a value, ``vary``, ``expr``, ``min`` and ``max``, every
parameter of every law can be

- fixed to a value: ``fix={"E": 1.69}`` (a known loss floor);
- tied to an expression of the others: ``tie={"beta": "alpha"}`` or ``tie={"B": "2*A"}``;
- bounded: ``bounds={"alpha": (0.05, 1.5)}``; ``None`` (or an infinite end) keeps the law's
  own bound on that side.

Names are the law's public parameters (``Law.param_names``: E, A, B, alpha, beta for
Chinchilla) and values are in their units (A, not log A). A tie is an expression of numbers,
parameter names, ``+ - * / **`` and parentheses; ties may chain (``B = A``, ``A = 2*alpha``)
but not loop.

How they are applied: the optimiser moves only the free internal parameters ``z``; at every
evaluation :meth:`Reparam.expand` rebuilds the full internal vector ``theta`` (a fixed one is a
constant, a tied one is its expression of the others) and :meth:`Reparam.pullback` carries the
gradient back by the chain rule. The grid search, L-BFGS, the bootstrap and everything derived
from the parameters (a, b, G, N_opt, D_opt) therefore all see the constrained law. A bound is
a box bound on the free internal parameter (the log of a scale parameter, so ``E=1:2`` bounds
``e`` to ``[0, log 2]``).
"""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

import numpy as np

from scaling.analysis.errors import AnalysisError
from scaling.analysis.laws import Law

Bound = tuple[float | None, float | None]

FREE, FIXED, TIED = "free", "fixed", "tied"


@dataclass(frozen=True)
class Constraints:
    """What the user asked for, in public names and units. Empty means a plain fit.

    fix: name -> value; tie: name -> expression text; bounds: name -> (low, high), where None
    or an infinite end keeps the law's own bound there.
    """

    fix: Mapping[str, float] = field(default_factory=dict)
    tie: Mapping[str, str] = field(default_factory=dict)
    bounds: Mapping[str, Bound] = field(default_factory=dict)

    def __post_init__(self):
        # Frozen in fact, not only in name: a FitResult keeps this object.
        object.__setattr__(self, "fix", MappingProxyType(dict(self.fix)))
        object.__setattr__(self, "tie", MappingProxyType({k: str(v).strip() for k, v in self.tie.items()}))
        object.__setattr__(self, "bounds", MappingProxyType(
            {k: tuple(v) if isinstance(v, (list, tuple)) else (v,) for k, v in self.bounds.items()}))

    @classmethod
    def of(cls, fix: Mapping | None = None, tie: Mapping | None = None,
           bounds: Mapping | None = None) -> "Constraints":
        return cls(dict(fix or {}), dict(tie or {}), dict(bounds or {}))

    def __bool__(self) -> bool:
        return bool(self.fix or self.tie or self.bounds)

    @property
    def equalities(self) -> int:
        """How many parameters the fixes and ties take away (the restrictions of a nested test)."""
        return len(self.fix) + len(self.tie)

    def relaxed(self) -> "Constraints":
        """The same bounds without fixes and ties: the larger law these constraints nest in."""
        return Constraints(bounds=dict(self.bounds))

    def describe(self) -> str:
        """``E fixed at 1.69; beta = alpha; alpha in [0.05, 1.5]``, or ``none``."""
        parts = [f"{k} fixed at {v:.6g}" for k, v in self.fix.items()]
        parts += [f"{k} = {v}" for k, v in self.tie.items()]
        parts += [_describe_bound(k, lo, hi) for k, (lo, hi) in self.bounds.items()]
        return "; ".join(parts) or "none"

    def to_json(self) -> dict:
        return {"fix": dict(self.fix), "tie": dict(self.tie),
                "bound": {k: [_json_end(lo), _json_end(hi)] for k, (lo, hi) in self.bounds.items()}}


def _describe_bound(name: str, lo, hi) -> str:
    """``alpha in [0.05, 1.5]``, or ``alpha >= 0.05`` when the high end is the law's own."""
    has_lo, has_hi = _end(lo, "") != "", _end(hi, "") != ""
    if has_lo and has_hi:
        return f"{name} in [{_end(lo, '')}, {_end(hi, '')}]"
    if has_lo or has_hi:
        return f"{name} >= {_end(lo, '')}" if has_lo else f"{name} <= {_end(hi, '')}"
    return f"{name} within the law's own bounds"


def _end(v, default: str) -> str:
    return default if v is None or not math.isfinite(v) else f"{v:.6g}"


def _json_end(v):
    return None if v is None or not math.isfinite(v) else float(v)


# ---- parsing the command line's NAME=VALUE forms ---------------------------------------------

def parse_cli(fix: list[str] = (), tie: list[str] = (), bound: list[str] = ()) -> Constraints:
    """``--fix E=1.69``, ``--tie beta=alpha``, ``--bound alpha=0.05:1.5`` (either end may be
    empty: ``alpha=0.05:``). Every malformed item is listed in one error."""
    problems: list[str] = []
    fixes, ties, bounds = {}, {}, {}
    for flag, items, form, example in (("--fix", fix, "NAME=VALUE", "E=1.69"),
                                       ("--tie", tie, "NAME=EXPRESSION", "beta=alpha"),
                                       ("--bound", bound, "NAME=LOW:HIGH", "alpha=0.05:1.5")):
        for item in items:
            name, sep, value = item.partition("=")
            name, value = name.strip(), value.strip()
            if not sep or not name or not value:
                problems.append(f"{flag} {item!r}: expected {form}, e.g. {flag} {example}")
                continue
            if flag == "--fix":
                v = _float(value)
                if v is None:
                    problems.append(f"{flag} {item!r}: {value!r} is not a number; e.g. {flag} {example}")
                fixes[name] = v
            elif flag == "--tie":
                ties[name] = value
            else:
                lo_s, colon, hi_s = value.partition(":")
                lo, hi = _float(lo_s) if lo_s.strip() else None, _float(hi_s) if hi_s.strip() else None
                if not colon or (lo_s.strip() and lo is None) or (hi_s.strip() and hi is None):
                    problems.append(f"{flag} {item!r}: expected NAME=LOW:HIGH (either may be empty), "
                                    f"e.g. {flag} {example}")
                    continue
                bounds[name] = (lo, hi)
    if problems:
        raise AnalysisError("; ".join(problems))
    return Constraints(fixes, ties, bounds)


def _float(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


# ---- tie expressions ---------------------------------------------------------------------------

class _Expr:
    """A tie's right-hand side, parsed once; evaluates with its partial derivatives."""

    _OPS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow)

    def __init__(self, text: str):
        self.text = text
        try:
            self.tree = ast.parse(text, mode="eval").body
        except SyntaxError:
            raise ValueError("is not an expression") from None
        self.names: set[str] = set()
        self._check(self.tree)

    def _check(self, node) -> None:
        if isinstance(node, ast.Name):
            self.names.add(node.id)
        elif isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) \
                and not isinstance(node.value, bool):
            pass
        elif isinstance(node, ast.BinOp) and isinstance(node.op, self._OPS):
            self._check(node.left)
            self._check(node.right)
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
            self._check(node.operand)
        else:
            raise ValueError("uses something other than numbers, parameter names, + - * / ** "
                             "and parentheses")

    def eval(self, values: Mapping[str, np.ndarray]):
        """(value, {name: d value / d name}) for arrays of parameter values (forward mode)."""
        return self._eval(self.tree, values)

    def _eval(self, node, values):
        if isinstance(node, ast.Name):
            v = values[node.id]
            return v, {node.id: np.ones_like(v)}
        if isinstance(node, ast.Constant):
            return np.float64(node.value), {}  # numpy semantics: an overflow is inf, not an error
        if isinstance(node, ast.UnaryOp):
            v, d = self._eval(node.operand, values)
            return (-v, {k: -g for k, g in d.items()}) if isinstance(node.op, ast.USub) else (v, d)
        u, du = self._eval(node.left, values)
        w, dw = self._eval(node.right, values)
        op = node.op
        if isinstance(op, ast.Add):
            return u + w, _combine(du, 1.0, dw, 1.0)
        if isinstance(op, ast.Sub):
            return u - w, _combine(du, 1.0, dw, -1.0)
        if isinstance(op, ast.Mult):
            return u * w, _combine(du, w, dw, u)
        if isinstance(op, ast.Div):
            return u / w, _combine(du, 1.0 / w, dw, -u / (w * w))
        value = u**w
        # d(u^w) = w u^(w-1) du + u^w log(u) dw; the log term only where w varies.
        return value, _combine(du, w * u ** (w - 1.0), dw, value * np.log(u) if dw else 0.0)


def _combine(da: dict, ca, db: dict, cb) -> dict:
    out = {k: ca * g for k, g in da.items()}
    for k, g in db.items():
        out[k] = out[k] + cb * g if k in out else cb * g
    return out


# ---- resolving constraints against a law -------------------------------------------------------

def constraint_problems(law: Law, c: Constraints, prefix: str = "") -> list[str]:
    """Every problem of ``c`` for ``law``, each naming the key, the bad value and the fix.

    ``prefix`` says where the constraints came from, so that each message names the key as the
    user wrote it: ``"--"`` for the command line (``--fix gamma=1``), ``"report."`` for a study
    spec (``report.fix.gamma=1``), ``""`` for the Python API (``fix gamma=1``).
    """
    names = law.param_names
    own = law.bounds
    known = ", ".join(names)
    out: list[str] = []

    def key(kind: str, name: str | None = None, shown=None) -> str:
        if prefix == "--":
            head = f"--{kind}"
            return head if name is None else f"{head} {name}={shown}"
        if prefix:
            head = f"{prefix}{kind}"
            return head if name is None else f"{head}.{name}={shown}"
        head = "bounds" if kind == "bound" else kind
        return head if name is None else f"{head} {name}={shown}"

    def unknown(kind: str, name: str, shown) -> str:
        return (f"{key(kind, name, shown)}: law {law.name} has no parameter {name!r}; its "
                f"parameters are {known}")

    for name, value in c.fix.items():
        if name not in names:
            out.append(unknown("fix", name, value))
        elif not (_real(value) and math.isfinite(value)):
            out.append(f"{key('fix', name, repr(value))} is not a finite number; give a number, "
                       f"e.g. {key('fix', name, 1.69 if name == 'E' else 0.3)}")
    for name, pair in c.bounds.items():
        if len(pair) != 2 or not all(e is None or _real(e) for e in pair):
            out.append(f"{key('bound', name, repr(pair))}: give a low and a high end, each a "
                       f"number (or empty/None for the law's own bound), e.g. "
                       f"{key('bound', name, _pair_example(prefix, '0.05', '1.5'))}")
            continue
        lo, hi = pair
        shown = (f"{_end(lo, '')}:{_end(hi, '')}" if prefix == "--"
                 else f"[{_end(lo, 'null')}, {_end(hi, 'null')}]" if prefix
                 else f"({_end(lo, 'None')}, {_end(hi, 'None')})")
        if name not in names:
            out.append(unknown("bound", name, shown))
            continue
        lo_eff, hi_eff = public_bounds(law, c.bounds).get(name, own[name])
        if not lo_eff < hi_eff:
            out.append(f"{key('bound', name, shown)}: the low end must be below the high end "
                       f"(the law's own bounds are {_g(own[name][0])} to {_g(own[name][1])})")
        if lo is not None and math.isfinite(lo) and lo < 0 and law.logged[law.encodes.index(name)]:
            out.append(f"{key('bound', name, shown)}: {name} is a positive scale (fitted as "
                       f"log {name}); give a low end of 0 or more")
        if name in c.tie:
            out.append(f"{key('bound', name, shown)}: {name} is tied ({name} = {c.tie[name]}), so a "
                       f"bound on it cannot be enforced; bound the parameters it is tied to instead")
    deps: dict[str, set[str]] = {}
    for name, text in c.tie.items():
        if name not in names:
            out.append(unknown("tie", name, text))
            continue
        if name in c.fix:
            out.append(f"{key('tie', name, text)}: {name} is also fixed ({name}={c.fix[name]}); "
                       f"fix it or tie it, not both")
        try:
            expr = _Expr(text)
        except ValueError as e:
            out.append(f"{key('tie', name, repr(text))} {e}; write e.g. beta=alpha or B=2*A")
            continue
        strangers = sorted(expr.names - set(names))
        if strangers:
            out.append(f"{key('tie', name, text)}: {', '.join(map(repr, strangers))} "
                       f"{'is not a parameter' if len(strangers) == 1 else 'are not parameters'} "
                       f"of law {law.name}; tie it to one of {known}")
        deps[name] = expr.names & set(names)
    cycle = _find_cycle({k: v & deps.keys() for k, v in deps.items()})
    if cycle:
        members = sorted(set(cycle))
        which = members[0] if len(members) == 1 else "one of " + ", ".join(members)
        out.append(f"{key('tie')}: the ties form a cycle ({' -> '.join(cycle)}); leave {which} free")
    for name, value in c.fix.items():
        if name in names and _real(value) and math.isfinite(value):
            lo, hi = public_bounds(law, c.bounds).get(name, own[name])
            if not lo <= value <= hi:
                src = "its bound" if name in c.bounds else f"law {law.name}'s bounds for it"
                wide = key('bound', name, _pair_example(prefix, 'LOW', 'HIGH'))
                out.append(f"{key('fix', name, f'{value:g}')} lies outside {src} "
                           f"[{_g(lo)}, {_g(hi)}]; fix it inside, or widen the bound with {wide}")
    if not out and len(set(c.fix) | set(c.tie)) >= len(names):
        out.append(f"{key('fix')}/{key('tie')}: every parameter of law {law.name} is fixed or "
                   f"tied, so nothing is left to fit; leave at least one of {known} free")
    return out


def _pair_example(prefix: str, lo: str, hi: str) -> str:
    return f"{lo}:{hi}" if prefix == "--" else f"[{lo}, {hi}]" if prefix else f"({lo}, {hi})"


def _real(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _g(v: float) -> str:
    return f"{v:.4g}"


def _find_cycle(deps: Mapping[str, set[str]]) -> list[str] | None:
    """A cycle in the tie graph as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(deps.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if state.get(nxt) is None:
                found = visit(nxt, path + [nxt])
                if found:
                    return found
        state[node] = 2
        return None

    for start in sorted(deps):
        if start not in state:
            found = visit(start, [start])
            if found:
                return found
    return None


def public_bounds(law: Law, user: Mapping[str, Bound]) -> dict[str, tuple[float, float]]:
    """Effective bounds in public units for the parameters the user bounded; an open end (None
    or infinite) is the law's own bound, and 0 for a scale parameter is its own low bound."""
    own = law.bounds
    out = {}
    for name, pair in user.items():
        if name not in own or len(pair) != 2 or not all(e is None or _real(e) for e in pair):
            continue  # constraint_problems reports these
        lo, hi = pair
        lo_own, hi_own = own[name]
        log = law.logged[law.encodes.index(name)]
        lo_eff = lo_own if lo is None or not math.isfinite(lo) or (log and lo == 0) else float(lo)
        hi_eff = hi_own if hi is None or not math.isfinite(hi) else float(hi)
        out[name] = (lo_eff, hi_eff)
    return out


@dataclass(frozen=True, eq=False)
class Reparam:
    """Constraints resolved against a law: which internal parameters are free, and how the
    others are rebuilt from them. Built by :func:`resolve`."""

    law: Law
    constraints: Constraints
    free_idx: np.ndarray  # internal indices the optimiser moves, in theta order
    status: Mapping[str, str]  # public name -> "free" | "fixed" | "tied"
    lower: np.ndarray  # (n_free,) box of the free internal parameters
    upper: np.ndarray
    fixed: tuple[tuple[int, float], ...]  # (internal index, internal value)
    ties: tuple[tuple[int, str, _Expr], ...]  # (internal index, name, expression), in order
    identity: bool  # nothing fixed or tied: z is theta

    @property
    def n_free(self) -> int:
        return int(self.free_idx.size)

    @property
    def free(self) -> tuple[str, ...]:
        """Public names of the free parameters, in ``param_names`` order."""
        return tuple(n for n in self.law.param_names if self.status[n] == FREE)

    @property
    def free_theta_names(self) -> tuple[str, ...]:
        return tuple(self.law.theta_names[i] for i in self.free_idx)

    def reduce(self, theta: np.ndarray) -> np.ndarray:
        """Full internal vectors (batch, p) -> the free part (batch, n_free)."""
        return np.asarray(theta, dtype=float)[:, self.free_idx]

    def expand(self, z: np.ndarray, jacobian: bool = False):
        """Free internal parameters (batch, n_free) -> full theta (batch, p); with
        ``jacobian``, also d theta / d z for the tied rows ({internal index: (batch, n_free)}).
        """
        if self.identity:
            return (z, None) if jacobian else z
        law = self.law
        theta = np.empty((z.shape[0], law.n_params))
        theta[:, self.free_idx] = z
        for i, value in self.fixed:
            theta[:, i] = value
        jac: dict[int, np.ndarray] = {}
        if self.ties:
            col = {j: k for k, j in enumerate(self.free_idx)}
            with np.errstate(all="ignore"):  # a tie driven outside its domain gives NaN: a bad start
                for i, _, expr in self.ties:
                    values, dvalue = {}, {}
                    for name in expr.names:
                        j = law.encodes.index(name)
                        values[name] = np.exp(theta[:, j]) if law.logged[j] else theta[:, j]
                    v, partial = expr.eval(values)
                    v = np.broadcast_to(np.asarray(v, dtype=float), (z.shape[0],))
                    theta[:, i] = np.log(v) if law.logged[i] else v
                    if jacobian:
                        d = np.zeros((z.shape[0], self.n_free))
                        for name, dv in partial.items():
                            j = law.encodes.index(name)
                            scale = dv * (values[name] if law.logged[j] else 1.0)  # d p_j / d theta_j
                            if j in col:
                                d[:, col[j]] += scale
                            elif j in jac:
                                d += scale[:, None] * jac[j]
                        jac[i] = d / v[:, None] if law.logged[i] else d
        return (theta, jac) if jacobian else theta

    def pullback(self, grad: np.ndarray, jac: dict[int, np.ndarray] | None) -> np.ndarray:
        """Gradient in theta (batch, p) -> gradient in z (batch, n_free), by the chain rule."""
        if self.identity:
            return grad
        gz = grad[:, self.free_idx]
        for i, d in (jac or {}).items():
            gz = gz + grad[:, i : i + 1] * d
        return gz

    def starts(self, grid: np.ndarray) -> np.ndarray:
        """Grid rows in the free parameters: constrained columns dropped, rows clipped into the
        bounds, duplicates removed (first occurrence kept, so the order is the grid's)."""
        grid = np.asarray(grid, dtype=float)
        if grid.shape[1] == self.law.n_params:
            grid = grid[:, self.free_idx]
        z = np.clip(grid, self.lower, self.upper)
        _, first = np.unique(z, axis=0, return_index=True)
        return z[np.sort(first)]

    def tied_outside_bounds(self, theta: np.ndarray) -> list[str]:
        """Tied parameters whose value at ``theta`` (p,) falls outside the law's own bounds."""
        out = []
        for i, name, expr in self.ties:
            if not self.law.lower[i] <= theta[i] <= self.law.upper[i]:
                lo, hi = self.law.bounds[name]
                value = math.exp(theta[i]) if self.law.logged[i] else theta[i]
                out.append(f"{name} = {expr.text} = {value:.4g} (bounds {_g(lo)}..{_g(hi)})")
        return out


def resolve(law: Law, constraints: Constraints | None, prefix: str = "") -> Reparam:
    """Check ``constraints`` against ``law`` (one error listing every problem) and build the
    reparametrisation the fit uses."""
    c = constraints or Constraints()
    problems = constraint_problems(law, c, prefix)
    if problems:
        raise AnalysisError("; ".join(problems))
    status = {n: FIXED if n in c.fix else TIED if n in c.tie else FREE for n in law.param_names}
    lower, upper = law.lower.copy(), law.upper.copy()
    for name, (lo, hi) in public_bounds(law, c.bounds).items():
        i = law.encodes.index(name)
        lower[i], upper[i] = (math.log(lo), math.log(hi)) if law.logged[i] else (lo, hi)
    fixed = []
    for name, value in c.fix.items():
        i = law.encodes.index(name)
        fixed.append((i, math.log(value) if law.logged[i] else float(value)))
    exprs = {name: _Expr(text) for name, text in c.tie.items()}
    order: list[str] = []
    while len(order) < len(exprs):  # a topological order; resolve() has ruled out cycles
        for name, expr in exprs.items():
            if name not in order and all(d not in exprs or d in order for d in expr.names):
                order.append(name)
    ties = tuple((law.encodes.index(n), n, exprs[n]) for n in order)
    free_idx = np.array([i for i, n in enumerate(law.encodes) if status[n] == FREE], dtype=int)
    return Reparam(
        law=law, constraints=c, free_idx=free_idx, status=MappingProxyType(status),
        lower=lower[free_idx], upper=upper[free_idx], fixed=tuple(fixed), ties=ties,
        identity=not c.fix and not c.tie,
    )
