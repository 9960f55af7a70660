"""The table every fit reads: one row per training run."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from numpy.typing import ArrayLike

from scaling.analysis.errors import DataError

REQUIRED = ("N", "D", "loss")


@dataclass(frozen=True, eq=False)
class Data:
    """Runs to fit, as parallel arrays (one entry per run).

    N: parameters [count]; D: tokens (or images) seen [count]; loss [nats]; C: training
    FLOPs (``6 N D`` when the source has none); run_id: a name per row for messages and
    reports; budget: the IsoFLOP budget a planner assigned [FLOPs], NaN where unknown;
    unique_tokens: the unique tokens (images) a run drew its D from [count], NaN where
    unknown, None when no run says (a run that repeats data saw D / unique_tokens epochs).
    Build it with :meth:`from_arrays`, which validates every row.
    """

    N: np.ndarray
    D: np.ndarray
    loss: np.ndarray
    C: np.ndarray
    run_id: tuple[str, ...]
    budget: np.ndarray
    source: str = ""
    # Rows dropped by the loader (only when it was asked to skip bad rows), as messages.
    rejected: tuple[str, ...] = field(default=())
    # Columns the source did not have (NaN here): a 1-D CSV holds only its x and loss.
    absent: tuple[str, ...] = field(default=())
    # True when C was computed as 6 N D because the source had no C column.
    c_derived: bool = False
    # The independent unit each run belongs to, for the bootstrap (a parent run and its
    # cooldown branches, or the seeds of one configuration); None: every run is its own unit.
    unit: tuple[str, ...] | None = None
    unique_tokens: np.ndarray | None = None

    @classmethod
    def from_arrays(
        cls,
        N: ArrayLike | None,
        D: ArrayLike | None,
        loss: ArrayLike,
        C: ArrayLike | None = None,
        run_id: list[str] | tuple[str, ...] | None = None,
        budget: ArrayLike | None = None,
        source: str = "",
        unit: list | tuple | np.ndarray | None = None,
        unique_tokens: ArrayLike | None = None,
    ) -> "Data":
        """Validate and wrap columns; C defaults to ``6 N D`` (``c_derived`` records it).

        N or D may be None for a source that lacks them (a 1-D law's data): they are NaN and
        listed in ``absent``, and so is C unless given. ``unit``: a label per row naming the
        independent unit it belongs to (rows that share a label are resampled together by
        the bootstrap); None makes every row its own unit. ``unique_tokens``: the unique
        tokens of each run (NaN where unknown), for the data-constrained law. Raises DataError naming every row with
        a NaN, missing, infinite or non-positive value, so the user can fix them all at once.
        """
        n = np.atleast_1d(np.asarray(loss, dtype=float)).shape[0]
        absent = tuple(k for k, v in (("N", N), ("D", D)) if v is None)
        cols = {"N": N, "D": D, "loss": loss}
        arrays = {k: np.atleast_1d(np.asarray(np.full(n, np.nan) if v is None else v, dtype=float))
                  for k, v in cols.items()}
        if C is None and absent:
            arrays["C"] = np.full(n, np.nan)
            absent += ("C",)
        elif C is None:
            with np.errstate(over="ignore"):  # an overflow is reported below, by row
                arrays["C"] = 6.0 * arrays["N"] * arrays["D"]
        else:
            arrays["C"] = np.atleast_1d(np.asarray(C, dtype=float))
        for k, v in arrays.items():
            if v.shape != (n,):
                raise DataError(f"column {k} has shape {v.shape}, expected ({n},) like N")
        ids = tuple(str(i) for i in (run_id if run_id is not None else range(n)))
        if len(ids) != n:
            raise DataError(f"run_id has {len(ids)} entries for {n} rows; give one per row")
        bud = (
            np.full(n, np.nan)
            if budget is None
            else np.atleast_1d(np.asarray(budget, dtype=float))
        )
        problems = bad_rows({k: v for k, v in arrays.items() if k not in absent}, ids,
                            c_derived=C is None)
        uniq = None
        if unique_tokens is not None:
            uniq = np.atleast_1d(np.asarray(unique_tokens, dtype=float))
            if uniq.shape != (n,):
                raise DataError(f"unique_tokens has shape {uniq.shape}, expected ({n},) like N")
            problems += [f"row {ids[i]}: unique_tokens={float(u)!r}" for i, u in enumerate(uniq)
                         if not np.isnan(u) and not (np.isfinite(u) and u > 0)]
        if problems:
            raise DataError(
                f"{len(problems)} bad row(s) in {source or 'data'}: "
                + "; ".join(problems)
                + ". Every N, D, loss (and C) must be a positive finite number; fix or drop them."
            )
        return cls(
            N=arrays["N"], D=arrays["D"], loss=arrays["loss"], C=arrays["C"],
            run_id=ids, budget=bud, source=source, absent=absent,
            c_derived=C is None and not absent, unique_tokens=uniq,
        ).with_units(unit)

    def __len__(self) -> int:
        return int(self.N.shape[0])

    def subset(self, rows: ArrayLike) -> "Data":
        """The runs at positions ``rows`` (indices or a boolean mask), order kept."""
        idx = np.arange(len(self))[np.asarray(rows)]
        return Data(
            N=self.N[idx], D=self.D[idx], loss=self.loss[idx], C=self.C[idx],
            run_id=tuple(self.run_id[i] for i in idx), budget=self.budget[idx],
            source=self.source, rejected=self.rejected, absent=self.absent,
            c_derived=self.c_derived,
            unit=None if self.unit is None else tuple(self.unit[i] for i in idx),
            unique_tokens=None if self.unique_tokens is None else self.unique_tokens[idx],
        )

    def unit_codes(self) -> np.ndarray:
        """The bootstrap's unit of each row as integers 0..k-1: rows that share a ``unit``
        label share a code; without labels every row is its own unit."""
        if self.unit is None:
            return np.arange(len(self))
        return np.unique(np.asarray(self.unit, dtype=object).astype(str), return_inverse=True)[1]

    def with_units(self, unit) -> "Data":
        """The same runs with a unit label per row (see :meth:`from_arrays`); None: every
        run its own unit."""
        labels = None
        if unit is not None:
            labels = tuple(str(u) for u in np.asarray(unit, dtype=object).reshape(-1))
            if len(labels) != len(self):
                raise DataError(f"unit has {len(labels)} labels for {len(self)} rows; give one "
                                f"per row (or none, to make every run its own unit)")
        return replace(self, unit=labels)

    def drop_highest_loss(self, k: int) -> "Data":
        """Drop the k runs with the highest loss (Epoch drops 5 from Chinchilla's Figure 4)."""
        if k < 0 or k >= len(self):
            raise DataError(f"drop_highest_loss k={k} must be in [0, {len(self) - 1}]")
        if k == 0:
            return self
        keep = np.sort(np.argsort(self.loss, kind="stable")[: len(self) - k])
        return self.subset(keep)

    def column(self, name: str) -> np.ndarray:
        """One of N, D, C or loss, by name; U is ``unique_tokens``, which every run must have."""
        if name == "U":
            u = self.unique_tokens
            unknown = [] if u is None else [r for r, v in zip(self.run_id, u) if np.isnan(v)]
            if u is None or unknown:
                which = "no run" if u is None else f"run(s) {', '.join(unknown[:5])}" + (
                    f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
                raise DataError(f"{which} in {self.source or 'the data'} record(s) unique "
                                f"tokens; the data-constrained law needs each run's "
                                f"unique_tokens (result.json's unique_tokens, or a CSV column "
                                f"unique_tokens)")
            return u
        if name not in ("N", "D", "C", "loss"):
            raise DataError(f"unknown column {name!r}; use one of N, D, C, loss, U")
        if name in self.absent:
            raise DataError(f"{self.source or 'the data'} has no {name} column (it has "
                            f"{', '.join(k for k in ('N', 'D', 'C') if k not in self.absent)} "
                            f"and loss); add {name}, or use a law or --x in the columns it has")
        return getattr(self, name)


def bad_rows(arrays: dict[str, np.ndarray], ids: tuple[str, ...], c_derived: bool = False) -> list[str]:
    """One message per row holding a NaN, infinite or non-positive value.

    With ``c_derived`` (C computed as ``6 N D``), a C that overflows while N and D are finite
    is reported as the overflow of the N and D given, since the caller never gave a C.
    """
    problems = []
    n = len(ids)
    for i in range(n):
        bad = [
            f"{k}={float(arrays[k][i])!r}"  # float: numpy 2 would print np.float64(...)
            for k in ("N", "D", "loss", "C")
            if k in arrays and not (np.isfinite(arrays[k][i]) and arrays[k][i] > 0)
        ]
        if c_derived and bad == ["C=inf"]:
            bad = [f"C = 6*N*D overflows to inf with N={float(arrays['N'][i])!r}, "
                   f"D={float(arrays['D'][i])!r} "
                   f"(C is derived from N and D; check their units, or pass C)"]
        if bad:
            problems.append(f"row {ids[i]}: " + ", ".join(bad))
    return problems
