"""Size ladder: the model shape for a target parameter count, by fixed rules, without torch.

The ladder is a fixed, sorted list of *rungs* (shapes) for each family and data shape, and
`shape_for_params` returns the rung whose count is nearest the target (in log space, ties to the
smaller). Picking the nearest point of a fixed set is monotonic by construction: a larger target
never gets a smaller model.

Rungs are chosen from candidate shapes best aspect ratio first: a candidate becomes a rung unless
a rung with a better aspect ratio already lies within 8% of its count. So the ladder keeps the
preferred aspect ratio wherever the integer grid allows, and other ratios only fill the gaps.
The returned count is within about 8% of the target from 1e5 parameters up (GPT; 15% for the
CNN, whose depth steps are coarser) and within about 30% below, where widths step by 4 or 8 channels.

Each family's rule (aspect ratio, head size, which shapes are candidates) is in its module under
`scaling/families/`; this module holds what the rules share: parsing a count, thinning
candidates to rungs, and picking the nearest rung.

Coverage: GPT rungs span about 1e3 to 1e12 non-embedding parameters, CNN rungs about 1e3 to 1e11.
A target whose nearest rung is more than 2x away (e.g. 1e4 *total* parameters with a 50k
vocabulary, whose embeddings alone are larger) raises ConfigError instead of returning a model of
the wrong size.
"""

from __future__ import annotations

import bisect
import math
import re
from functools import lru_cache

from typing import Any

from scaling.errors import ConfigError

LADDER_RULE = 2  # the current version of the families' ladder rules (see each family's module)
SPACING = 1.08  # rungs are at least 8% apart; within that, the better aspect ratio wins
MAX_MISS = 2.0  # the nearest rung must be within this factor of the target

_SUFFIXES = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9, "t": 10**12}
_COUNT_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmbgt]?)\s*$", re.IGNORECASE)


def parse_count(text: str | int | float, key: str = "params") -> int:
    """Parse a count such as `25M`, `1.2e6`, `350k`, `1.5B` (or `1.5G`), `2T` or `1000`.
    Suffixes are decimal (k = 1e3, M = 1e6, B/G = 1e9, T = 1e12) and case-insensitive."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        match = _COUNT_RE.match(str(text).replace("_", ""))
        if not match:
            raise ConfigError(f"{key}={text!r} is not a count; write e.g. 25M, 1.2e6, 350k or 1.5B")
        value = float(match.group(1)) * _SUFFIXES[match.group(2).lower()]
    if not (math.isfinite(value) and value >= 1):
        raise ConfigError(f"{key}={text!r} must be a positive count; write e.g. 25M")
    return int(round(value))


def thin_to_rungs(candidates: list[tuple[int, float, tuple]]) -> tuple[list[int], list[tuple]]:
    """Thin candidates (count, aspect penalty, shape) to rungs, best aspect first: a candidate
    becomes a rung unless a better-aspect rung already lies within a factor SPACING of its
    count. Poor-aspect shapes only fill gaps that good ones leave."""
    counts: list[int] = []
    shapes: list[tuple] = []
    for count, _, shape in sorted(candidates, key=lambda c: (c[1], c[0])):
        i = bisect.bisect_left(counts, count)
        if (i > 0 and count < counts[i - 1] * SPACING) or (i < len(counts) and counts[i] < count * SPACING):
            continue
        counts.insert(i, count)
        shapes.insert(i, shape)
    return counts, shapes


def _nearest(counts: list[int], target: float) -> int:
    """Index of the count nearest `target` in log space; ties go to the smaller."""
    i = bisect.bisect_left(counts, target)
    if i == 0:
        return 0
    if i == len(counts):
        return len(counts) - 1
    below, above = counts[i - 1], counts[i]
    return i - 1 if math.log(target / below) <= math.log(above / target) else i


def pick_rung(counts: list[int], target: float, what: str, fix: str) -> int:
    i = _nearest(counts, target)
    if not counts[i] / MAX_MISS <= target <= counts[i] * MAX_MISS:
        raise ConfigError(
            f"params={target:.3g} is outside the {what} ladder (nearest rung {counts[i]:.3g}, "
            f"range {counts[0]:.3g} to {counts[-1]:.3g}); {fix}"
        )
    return i


def check_sizes(what: str, given: tuple[tuple[str, int | None], ...]) -> None:
    problems = []
    for key, value in given:
        if value is None:
            problems.append(f"{key} is needed to size a {what}; pass {key}=N (from the data manifest)")
        elif value < 1:
            problems.append(f"{key}={value} must be positive; pass {key}=N >= 1")
    if problems:
        raise ConfigError(problems)


def shape_for_params(family: str, target_params: int | float | str, *, count: str = "nonembedding",
                     **base: Any) -> Any:
    """The ladder's shape for `target_params` in `family` (the family's module gives its rule).

    `base` holds the family's data fields (a GPT's `vocab_size` and `seq_len`, an image model's
    `image_size`, `in_channels` and `n_classes`) and any field the rule keeps from the study's
    base model (e.g. `tie_embeddings`, a ViT's `patch_size`); the returned config carries them.
    `count` picks what the target counts: "nonembedding" (Kaplan's N) or "total".
    """
    from scaling.families import get

    target = parse_count(target_params)
    if count not in ("nonembedding", "total"):
        raise ConfigError(f"count={count!r} is not known; use count=nonembedding or count=total")
    fam = get(family, "family")
    names = {f for f in fam.config.__dataclass_fields__} - {"family"}
    unknown = sorted(set(base) - names)
    if unknown:
        raise ConfigError(f"{unknown} are not {family} config fields; valid fields are {sorted(names)}")
    return fam.ladder(target, fam.config(**base), count)
